//! Channel semantics against a reference model: proptest programs of non-blocking sends,
//! receives, closes and selects-with-default over a few channels of small capacities, checked
//! step by step against `VecDeque`s. (Blocking behaviour is covered by `channels.rs`.)

use goro_sched::chan::{__select, Receiver, Sender, TryRecvError, TrySendError, channel};
use proptest::prelude::*;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
enum Op {
    TrySend(usize, u32),
    TryRecv(usize),
    Close(usize),
    /// Non-blocking select over receives on these channels.
    SelectRecv(Vec<usize>),
}

fn op(channels: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..channels, any::<u32>()).prop_map(|(c, v)| Op::TrySend(c, v)),
        4 => (0..channels).prop_map(Op::TryRecv),
        1 => (0..channels).prop_map(Op::Close),
        2 => proptest::collection::vec(0..channels, 1..4).prop_map(Op::SelectRecv),
    ]
}

struct Model {
    cap: usize,
    buffer: VecDeque<u32>,
    closed: bool,
}

fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn channels_behave_like_the_model(
        caps in proptest::collection::vec(0usize..4, 1..4),
        ops in proptest::collection::vec(op(3), 1..80),
    ) {
        let ends: Vec<(Sender<u32>, Receiver<u32>)> = caps.iter().map(|&c| channel(c)).collect();
        let mut models: Vec<Model> =
            caps.iter().map(|&cap| Model { cap, buffer: VecDeque::new(), closed: false }).collect();
        for op in ops {
            match op {
                Op::TrySend(c, v) if c < ends.len() => {
                    let model = &mut models[c];
                    let got = ends[c].0.try_send(v);
                    if model.closed {
                        prop_assert_eq!(got, Err(TrySendError::Closed(v)));
                    } else if model.buffer.len() < model.cap {
                        prop_assert_eq!(got, Ok(()));
                        model.buffer.push_back(v);
                    } else {
                        prop_assert_eq!(got, Err(TrySendError::Full(v)));
                    }
                }
                Op::TryRecv(c) if c < ends.len() => {
                    let model = &mut models[c];
                    let got = ends[c].1.try_recv();
                    match model.buffer.pop_front() {
                        Some(v) => prop_assert_eq!(got, Ok(v)),
                        None if model.closed => prop_assert_eq!(got, Err(TryRecvError::Closed)),
                        None => prop_assert_eq!(got, Err(TryRecvError::Empty)),
                    }
                }
                Op::Close(c) if c < ends.len() => {
                    let sender = &ends[c].0;
                    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sender.close()));
                    if models[c].closed {
                        prop_assert_eq!(message(got.unwrap_err()), "close of closed channel");
                    } else {
                        prop_assert!(got.is_ok());
                        models[c].closed = true;
                    }
                    prop_assert!(ends[c].1.is_closed());
                }
                Op::SelectRecv(set) => {
                    let set: Vec<usize> = set.into_iter().filter(|&c| c < ends.len()).collect();
                    if set.is_empty() {
                        continue;
                    }
                    let mut cases: Vec<__select::RecvCase<'_, u32>> =
                        set.iter().map(|&c| __select::RecvCase::new(&ends[c].1)).collect();
                    let chosen = {
                        let mut refs: Vec<__select::Case<'_>> =
                            cases.iter_mut().map(|c| c.as_case()).collect();
                        __select::select(&mut refs, true)
                    };
                    let ready: Vec<usize> = set
                        .iter()
                        .copied()
                        .filter(|&c| !models[c].buffer.is_empty() || models[c].closed)
                        .collect();
                    match chosen {
                        None => prop_assert!(ready.is_empty(), "default taken with {:?} ready", ready),
                        Some(i) => {
                            let c = set[i];
                            prop_assert!(ready.contains(&c), "channel {} chosen but not ready", c);
                            let got = cases[i].take();
                            prop_assert_eq!(got, models[c].buffer.pop_front());
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
