//! `goro::select!`: Go's select over receives, sends, default and timeouts.

use goro::chan::{after, channel};
use goro::select;
use std::time::Duration;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn on<R: Send + 'static>(procs: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    goro::Runtime::builder()
        .max_procs(procs)
        .build()
        .unwrap()
        .run(f)
}

#[test]
fn a_ready_case_runs_and_default_runs_when_none_is() {
    on(1, || {
        let (tx1, rx1) = channel::<u32>(1);
        let (_tx2, rx2) = channel::<u32>(1);
        let got = select! {
            recv(rx1) -> v => v,
            recv(rx2) -> v => v.map(|x| x + 100),
            default => Some(999),
        };
        assert_eq!(got, Some(999));
        tx1.send(5);
        let got = select! {
            recv(rx1) -> v => v,
            recv(rx2) -> v => v.map(|x| x + 100),
            default => Some(999),
        };
        assert_eq!(got, Some(5));
    });
}

#[test]
fn the_choice_among_ready_cases_is_uniform() {
    let counts = on(1, || {
        let (tx1, rx1) = channel::<u8>(1);
        let (tx2, rx2) = channel::<u8>(1);
        let mut counts = [0u32; 2];
        for _ in 0..2000 {
            tx1.send(0);
            tx2.send(1);
            let which = select! {
                recv(rx1) -> v => v.unwrap(),
                recv(rx2) -> v => v.unwrap(),
            };
            counts[which as usize] += 1;
            // Drain the other one.
            let _ = rx1.try_recv();
            let _ = rx2.try_recv();
        }
        counts
    });
    assert!(
        counts[0] > 800 && counts[1] > 800,
        "skewed choice: {counts:?}"
    );
}

#[test]
fn a_blocked_select_wakes_for_a_sender_and_for_a_receiver() {
    for procs in [1, 2] {
        on(procs, || {
            let (tx, rx) = channel::<u32>(0);
            let (other_tx, other_rx) = channel::<u32>(0);
            let sender = goro::go(move || {
                goro::sleep(Duration::from_millis(5));
                tx.send(7);
            });
            let got = select! {
                recv(rx) -> v => v,
                recv(other_rx) -> v => v.map(|x| x + 1000),
            };
            assert_eq!(got, Some(7));
            sender.join().unwrap();

            let (out_tx, out_rx) = channel::<u32>(0);
            let receiver = goro::go(move || {
                goro::sleep(Duration::from_millis(5));
                out_rx.recv()
            });
            select! {
                send(out_tx, 42) -> () => {},
                send(other_tx, 1) -> () => panic!("nobody receives there"),
            }
            assert_eq!(receiver.join().unwrap(), Some(42));
        });
    }
}

#[test]
fn after_gives_a_timeout() {
    on(1, || {
        let (_tx, rx) = channel::<u32>(0);
        let start = std::time::Instant::now();
        let timed_out = select! {
            recv(rx) -> _ => false,
            recv(after(Duration::from_millis(20))) -> _ => true,
        };
        assert!(timed_out);
        assert!(start.elapsed() >= Duration::from_millis(20));
    });
}

#[test]
fn closed_channels_are_ready_and_sends_on_them_panic() {
    on(1, || {
        let (tx, rx) = channel::<u32>(0);
        tx.close();
        let got = select! {
            recv(rx) -> v => v,
        };
        assert_eq!(got, None);
        let error = goro::go(move || {
            select! {
                send(tx, 1) -> () => {},
            }
        })
        .join()
        .unwrap_err();
        assert_eq!(error.message(), Some("send on closed channel"));
    });
}

#[test]
fn two_selects_meet() {
    for procs in [1, 2] {
        let total = on(procs, || {
            let (tx, rx) = channel::<u64>(0);
            let (quit_tx, quit_rx) = channel::<()>(0);
            let consumer = goro::go(move || {
                let mut total = 0;
                loop {
                    select! {
                        recv(rx) -> v => total += v.unwrap(),
                        recv(quit_rx) -> _ => return total,
                    }
                }
            });
            let (_never_tx, never_rx) = channel::<()>(0);
            for i in 1..=1000u64 {
                select! {
                    send(tx, i) -> () => {},
                    recv(never_rx) -> _ => unreachable!(),
                }
            }
            quit_tx.send(());
            consumer.join().unwrap()
        });
        assert_eq!(total, 500_500, "procs = {procs}");
    }
}

#[test]
fn many_selectors_lose_nothing() {
    for procs in [1, 2] {
        let total = on(procs, || {
            let (a_tx, a_rx) = channel::<u64>(4);
            let (b_tx, b_rx) = channel::<u64>(0);
            let (sum_tx, sum_rx) = channel::<u64>(0);
            for _ in 0..4 {
                let (a_rx, b_rx, sum_tx) = (a_rx.clone(), b_rx.clone(), sum_tx.clone());
                goro::go(move || {
                    let mut sum = 0;
                    let (mut a_open, mut b_open) = (true, true);
                    while a_open || b_open {
                        select! {
                            recv(a_rx) -> v => match v { Some(v) => sum += v, None => a_open = false },
                            recv(b_rx) -> v => match v { Some(v) => sum += v, None => b_open = false },
                        }
                    }
                    sum_tx.send(sum);
                });
            }
            drop(sum_tx);
            for i in 0..2000u64 {
                if i % 2 == 0 {
                    a_tx.send(i)
                } else {
                    b_tx.send(i)
                }
            }
            drop((a_tx, b_tx));
            sum_rx.iter().sum::<u64>()
        });
        assert_eq!(total, (0..2000u64).sum::<u64>(), "procs = {procs}");
    }
}
