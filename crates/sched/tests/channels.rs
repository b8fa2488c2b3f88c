//! Channel semantics: rendezvous, FIFO buffering, close, panics with Go's messages.

mod common;

use common::*;

use goro_sched::chan::{TryRecvError, TrySendError, channel};
use goro_sched::{go, yield_now};
use std::sync::{Arc, Mutex};

#[test]
fn unbuffered_send_waits_for_a_receiver() {
    let log = on(1, || {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel::<u32>(0);
        let sender_log = log.clone();
        let sender = go(move || {
            sender_log.lock().unwrap().push("send start");
            tx.send(7);
            sender_log.lock().unwrap().push("send done");
        });
        yield_now(); // the sender runs and blocks: nobody receives yet
        log.lock().unwrap().push("receiving");
        assert_eq!(rx.recv(), Some(7));
        sender.join().unwrap();
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    });
    assert_eq!(log, ["send start", "receiving", "send done"]);
}

#[test]
fn buffered_channels_are_fifo_and_block_when_full() {
    on(1, || {
        let (tx, rx) = channel::<u32>(3);
        for i in 0..3 {
            tx.send(i);
        }
        assert_eq!((tx.len(), tx.capacity()), (3, 3));
        assert!(matches!(tx.try_send(9), Err(TrySendError::Full(9))));
        let blocked = go(move || {
            tx.send(3); // blocks: buffer full
            tx.send(4);
        });
        yield_now();
        let got: Vec<u32> = rx.iter().collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        blocked.join().unwrap();
    });
}

#[test]
fn close_drains_then_reports_closed() {
    on(1, || {
        let (tx, rx) = channel::<u32>(4);
        tx.send(1);
        tx.send(2);
        tx.close();
        assert!(rx.is_closed());
        assert_eq!(rx.recv(), Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.recv(), None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    });
}

#[test]
fn close_wakes_every_blocked_receiver() {
    let results = on(2, || {
        let (tx, rx) = channel::<u32>(0);
        let receivers: Vec<_> = (0..8)
            .map(|_| {
                let rx = rx.clone();
                go(move || rx.recv())
            })
            .collect();
        for _ in 0..4 {
            yield_now();
        }
        tx.close();
        receivers
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(results, vec![None; 8]);
}

#[test]
fn send_on_closed_channel_panics_like_go() {
    let (immediate, blocked, double_close, try_send) = on(1, || {
        let (tx, rx) = channel::<u32>(0);
        tx.close();
        let immediate = go(move || tx.send(1)).join().unwrap_err();
        let (tx, rx2) = channel::<u32>(0);
        let tx2 = tx.clone();
        let blocked = go(move || tx2.send(1));
        yield_now();
        tx.close();
        let blocked = blocked.join().unwrap_err();
        let double_close = go(move || tx.close()).join().unwrap_err();
        let (tx3, _rx3) = channel::<u32>(1);
        tx3.close();
        let try_send = tx3.try_send(5).unwrap_err().to_string();
        drop((rx, rx2));
        (
            message(immediate.into_payload()),
            message(blocked.into_payload()),
            message(double_close.into_payload()),
            try_send,
        )
    });
    assert_eq!(immediate, "send on closed channel");
    assert_eq!(blocked, "send on closed channel");
    assert_eq!(double_close, "close of closed channel");
    assert_eq!(try_send, "send on closed channel");
}

#[test]
fn dropping_every_sender_closes() {
    on(1, || {
        let (tx, rx) = channel::<u32>(0);
        let tx2 = tx.clone();
        drop(tx);
        assert!(!rx.is_closed());
        drop(tx2);
        assert_eq!(rx.recv(), None);
    });
}

#[test]
fn many_producers_many_consumers_lose_nothing() {
    for procs in [1, 2] {
        let total = on(procs, || {
            let (tx, rx) = channel::<u64>(16);
            let (sum_tx, sum_rx) = channel::<u64>(0);
            for p in 0..8u64 {
                let tx = tx.clone();
                go(move || {
                    for i in 0..1000 {
                        tx.send(p * 1000 + i);
                    }
                });
            }
            drop(tx);
            for _ in 0..4 {
                let (rx, sum_tx) = (rx.clone(), sum_tx.clone());
                go(move || sum_tx.send(rx.iter().sum()));
            }
            drop(sum_tx);
            sum_rx.iter().sum::<u64>()
        });
        assert_eq!(total, (0..8000u64).sum::<u64>(), "procs = {procs}");
    }
}

#[test]
fn ping_pong_over_unbuffered_channels() {
    for procs in [1, 2] {
        let n = on(procs, || {
            let (ping_tx, ping_rx) = channel::<u32>(0);
            let (pong_tx, pong_rx) = channel::<u32>(0);
            go(move || {
                for v in ping_rx.iter() {
                    pong_tx.send(v + 1);
                }
            });
            let mut v = 0;
            for _ in 0..10_000 {
                ping_tx.send(v);
                v = pong_rx.recv().unwrap();
            }
            v
        });
        assert_eq!(n, 10_000);
    }
}
