//! `Builder::migrate_goroutines`: started goroutines move between threads at blocking points
//! and every scenario still computes the right answer; by default they never move.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn runtime(procs: usize, migrate: bool) -> goro::Runtime {
    // SAFETY: the goroutines below hold nothing thread-bound across blocking points.
    let builder = unsafe { goro::Runtime::builder().migrate_goroutines(migrate) };
    builder.max_procs(procs).build().unwrap()
}

/// Runs `goroutines` goroutines that each yield `yields` times and note every OS thread they
/// ran on; returns how many ran on more than one, and the total of their results.
fn yielders(procs: usize, migrate: bool, goroutines: usize, yields: usize) -> (usize, usize) {
    runtime(procs, migrate).run(move || {
        let handles: Vec<_> = (0..goroutines)
            .map(|i| {
                goro::go(move || {
                    let mut threads = HashSet::new();
                    for _ in 0..yields {
                        threads.insert(std::thread::current().id());
                        // Some CPU work, so that several Ms are busy and thieves find work.
                        std::hint::black_box((0..200).sum::<u64>());
                        goro::yield_now();
                    }
                    (threads.len() > 1, i)
                })
            })
            .collect();
        let mut moved = 0;
        let mut sum = 0;
        for handle in handles {
            let (did_move, i) = handle.join().unwrap();
            moved += usize::from(did_move);
            sum += i;
        }
        (moved, sum)
    })
}

#[test]
fn with_migration_goroutines_move_between_threads_and_finish() {
    for procs in [2, 4] {
        let (moved, sum) = yielders(procs, true, 1000, 100);
        assert_eq!(sum, 999 * 1000 / 2, "procs = {procs}");
        assert!(moved > 0, "no goroutine changed thread at {procs} Ps");
    }
}

#[test]
fn without_migration_no_started_goroutine_moves() {
    let (moved, sum) = yielders(2, false, 1000, 100);
    assert_eq!(sum, 999 * 1000 / 2);
    assert_eq!(moved, 0, "a goroutine changed thread without migration");
}

#[test]
fn channels_select_sleep_and_sync_work_with_migration() {
    for procs in [1, 2, 4] {
        let total = runtime(procs, true).run(|| {
            let (tx, rx) = goro::chan::channel::<u64>(0);
            let (done_tx, done_rx) = goro::chan::channel::<u64>(8);
            let counter = Arc::new(goro::sync::Mutex::new(0u64));
            let wg = Arc::new(goro::sync::WaitGroup::new());
            for _ in 0..8 {
                let (rx, done_tx, counter, wg) =
                    (rx.clone(), done_tx.clone(), counter.clone(), wg.clone());
                wg.add(1);
                goro::go(move || {
                    let mut got = 0;
                    loop {
                        goro::select! {
                            recv(rx) -> v => match v {
                                Some(v) => {
                                    got += v;
                                    *counter.lock() += 1;
                                }
                                None => break,
                            },
                            recv(goro::chan::after(std::time::Duration::from_secs(10))) -> _ => {
                                panic!("no value for 10 s")
                            },
                        }
                        if got % 7 == 0 {
                            goro::sleep(std::time::Duration::from_micros(50));
                        }
                    }
                    done_tx.send(got);
                    wg.done();
                });
            }
            for v in 1..=10_000u64 {
                tx.send(v);
            }
            drop(tx);
            wg.wait();
            drop(done_tx);
            let sum: u64 = done_rx.iter().sum();
            assert_eq!(*counter.lock(), 10_000);
            sum
        });
        assert_eq!(total, 10_000 * 10_001 / 2, "procs = {procs}");
    }
}

#[test]
fn pingpong_with_migration_settles_on_one_thread() {
    let (same_thread, rounds) = runtime(2, true).run(|| {
        let (ping_tx, ping_rx) = goro::chan::channel::<usize>(0);
        let (pong_tx, pong_rx) = goro::chan::channel::<usize>(0);
        let last_thread = Arc::new(std::sync::Mutex::new(None));
        let last = last_thread.clone();
        let echo = goro::go(move || {
            while let Some(v) = ping_rx.recv() {
                *last.lock().unwrap() = Some(std::thread::current().id());
                pong_tx.send(v + 1);
            }
        });
        let same = Arc::new(AtomicUsize::new(0));
        let mut v = 0;
        for _ in 0..100_000 {
            ping_tx.send(v);
            v = pong_rx.recv().unwrap();
            if *last_thread.lock().unwrap() == Some(std::thread::current().id()) {
                same.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(ping_tx);
        echo.join().unwrap();
        (same.load(Ordering::Relaxed), v)
    });
    assert_eq!(rounds, 100_000);
    // The echo runs on the thread that readied it (runnext), so nearly every round trip stays
    // on one thread.
    assert!(
        same_thread > 90_000,
        "only {same_thread} of 100,000 round trips stayed on one thread"
    );
}
