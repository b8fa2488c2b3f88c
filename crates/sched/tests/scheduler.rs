//! Scheduler behaviour through the public API: spawn, join, yield, exit, panics, binding.

use goro_sched::{Config, go, run, yield_now};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The tests of this file run one at a time: "outside a runtime" must really be outside one, and
/// timing-sensitive scenarios should not share the two cores with each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn config(procs: usize) -> Config {
    Config {
        procs,
        stack_size: 1 << 20,
        ..Config::default()
    }
}

#[test]
fn run_returns_the_main_goroutines_value() {
    let _serial = serial();
    let finished = run(config(1), || 6 * 7);
    assert_eq!(finished.into_result().unwrap(), 42);
}

#[test]
fn spawned_goroutines_run_and_join_at_one_and_two_procs() {
    let _serial = serial();
    for procs in [1, 2] {
        let total = run(config(procs), || {
            let handles: Vec<_> = (0..1000u64).map(|i| go(move || i * 2)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
        });
        assert_eq!(total.into_result().unwrap(), 999 * 1000, "procs = {procs}");
    }
}

#[test]
fn yield_interleaves_goroutines_on_one_proc() {
    let _serial = serial();
    let log = run(config(1), || {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let log = log.clone();
                go(move || {
                    for round in 0..3 {
                        log.lock().unwrap().push((id, round));
                        yield_now();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    })
    .into_result()
    .unwrap();
    // FIFO local queue: each round visits the goroutines in spawn order.
    let expected: Vec<_> = (0..3)
        .flat_map(|round| (0..3).map(move |id| (id, round)))
        .collect();
    assert_eq!(log, expected);
}

#[test]
fn a_started_goroutine_stays_on_its_thread() {
    let _serial = serial();
    let moved = run(config(2), || {
        let moved = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let moved = moved.clone();
                go(move || {
                    let first = std::thread::current().id();
                    for _ in 0..200 {
                        yield_now();
                        if std::thread::current().id() != first {
                            moved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        moved.load(Ordering::Relaxed)
    });
    assert_eq!(finished_ok(moved), 0);
}

fn finished_ok<R>(f: goro_sched::Finished<R>) -> R {
    f.into_result().unwrap()
}

#[test]
fn work_spreads_to_the_second_proc_before_it_starts() {
    let _serial = serial();
    let threads = run(config(2), || {
        let handles: Vec<_> = (0..400)
            .map(|_| {
                go(|| {
                    // Long enough that the idle M steals some of the queue, even on a busy host.
                    let t = std::time::Instant::now();
                    while t.elapsed() < std::time::Duration::from_micros(500) {}
                    std::thread::current().id()
                })
            })
            .collect();
        let ids: std::collections::HashSet<_> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        ids.len()
    });
    assert_eq!(finished_ok(threads), 2);
}

#[test]
fn a_panic_is_caught_and_returned_by_join() {
    let _serial = serial();
    let message = run(config(1), || {
        let h = go(|| -> u32 { panic!("boom in goroutine") });
        let panic = h.join().unwrap_err();
        assert!(!panic.is_exit());
        assert_eq!(panic.to_string(), "goroutine panicked: boom in goroutine");
        panic.message().unwrap().to_owned()
    });
    assert_eq!(finished_ok(message), "boom in goroutine");
}

#[test]
fn exit_unwinds_and_runs_destructors() {
    let _serial = serial();
    struct Flag(Arc<AtomicUsize>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (dropped, is_exit) = run(config(1), || {
        let dropped = Arc::new(AtomicUsize::new(0));
        let flag = Flag(dropped.clone());
        let h = go(move || {
            let _flag = flag;
            goro_sched::exit();
        });
        let is_exit = h.join().unwrap_err().is_exit();
        (dropped.load(Ordering::SeqCst), is_exit)
    })
    .into_result()
    .unwrap();
    assert!(is_exit);
    assert_eq!(dropped, 1);
}

#[test]
fn exit_outside_a_goroutine_panics_with_the_reason() {
    let _serial = serial();
    let error = std::panic::catch_unwind(|| goro_sched::exit()).unwrap_err();
    assert_eq!(
        *error.downcast_ref::<&str>().unwrap(),
        "goro::exit called outside a goroutine"
    );
}

#[test]
fn go_outside_a_runtime_panics_with_the_reason() {
    let _serial = serial();
    let error = std::panic::catch_unwind(|| go(|| ())).unwrap_err();
    let message = error.downcast_ref::<&str>().unwrap();
    assert!(
        message.starts_with("goro::go called outside a goro runtime"),
        "{message}"
    );
}

#[test]
fn nested_run_panics_with_the_reason() {
    let _serial = serial();
    let result = run(config(1), || {
        std::panic::catch_unwind(|| run(config(1), || ())).is_err()
    });
    assert!(finished_ok(result));
}

#[test]
fn goroutine_ids_and_counts() {
    let _serial = serial();
    let (main_id, count_during, count_after) = run(config(1), || {
        let main_id = goro_sched::current_goroutine_id().unwrap();
        let (tx, rx) = goro_sched::chan::channel::<()>(0);
        let hs: Vec<_> = (0..10)
            .map(|_| {
                let rx = rx.clone();
                go(move || rx.recv())
            })
            .collect();
        yield_now();
        let during = goro_sched::num_goroutine();
        drop(tx);
        for h in hs {
            assert_eq!(h.join().unwrap(), None);
        }
        (main_id, during, goro_sched::num_goroutine())
    })
    .into_result()
    .unwrap();
    assert_eq!(main_id, 1);
    assert_eq!(count_during, 11);
    assert_eq!(count_after, 1);
}

#[test]
fn abandoned_goroutines_do_not_block_the_end_of_run() {
    let _serial = serial();
    let finished = run(config(1), || {
        let (tx, rx) = goro_sched::chan::channel::<u32>(0);
        for _ in 0..10 {
            let rx = rx.clone();
            go(move || rx.recv());
        }
        yield_now();
        std::mem::forget(tx);
        7
    });
    let (mut stacks, mut blocks) = (0, 0);
    finished.abandoned_roots().for_each(&mut |root| match root {
        goro_sched::RootRange::Stack { lo, hi } | goro_sched::RootRange::Stashed { lo, hi } => {
            assert!(lo < hi);
            stacks += 1;
        }
        goro_sched::RootRange::Block(_) => blocks += 1,
    });
    // On one P the main goroutine's yield let all ten run and park on the channel.
    assert_eq!((stacks, blocks), (10, 10));
    assert_eq!(finished.into_result().unwrap(), 7);
}

#[test]
fn plain_threads_join_goroutines_and_use_channels() {
    let _serial = serial();
    let value = run(config(1), || {
        let h = go(|| {
            yield_now();
            99
        });
        let (tx, rx) = goro_sched::chan::channel::<i32>(0);
        // A thread that is not an M blocks itself in `join` and `send`; the goroutine waiting in
        // `recv` parks, leaving the only M free to run `h`.
        std::thread::spawn(move || tx.send(h.join().unwrap() + 1));
        rx.recv().unwrap()
    });
    assert_eq!(finished_ok(value), 100);
}

#[test]
fn a_busy_goroutine_that_calls_the_runtime_is_preempted() {
    let _serial = serial();
    use std::sync::atomic::AtomicBool;
    let spins = run(config(1), || {
        let stop = Arc::new(AtomicBool::new(false));
        let (_tx, rx) = goro_sched::chan::channel::<()>(0);
        let busy = {
            let stop = stop.clone();
            go(move || {
                let mut spins = 0u64;
                // Never blocks: only the time-slice flag lets the other goroutine run.
                while !stop.load(Ordering::Relaxed) {
                    let _ = rx.try_recv();
                    spins += 1;
                }
                spins
            })
        };
        let stopper = go(move || stop.store(true, Ordering::Relaxed));
        stopper.join().unwrap();
        busy.join().unwrap()
    });
    assert!(finished_ok(spins) > 0);
}

static VISITS: goro_sched::Local<std::cell::Cell<u32>> =
    goro_sched::Local::new(|| std::cell::Cell::new(0));

#[test]
fn goroutine_locals_are_per_goroutine_and_dropped_at_exit() {
    let _serial = serial();
    struct Tracked(Arc<AtomicUsize>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    static TRACKED: goro_sched::Local<std::cell::RefCell<Option<Tracked>>> =
        goro_sched::Local::new(|| std::cell::RefCell::new(None));
    let (counts, dropped) = run(config(1), || {
        let dropped = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (1..=5u32)
            .map(|n| {
                let dropped = dropped.clone();
                go(move || {
                    TRACKED.with(|t| *t.borrow_mut() = Some(Tracked(dropped)));
                    for _ in 0..n {
                        VISITS.with(|v| v.set(v.get() + 1));
                        yield_now(); // others run on the same thread in between
                    }
                    VISITS.with(|v| v.get())
                })
            })
            .collect();
        let counts: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (counts, dropped.load(Ordering::SeqCst))
    })
    .into_result()
    .unwrap();
    assert_eq!(counts, [1, 2, 3, 4, 5]);
    assert_eq!(dropped, 5, "every goroutine's local was dropped at exit");
    let error = std::panic::catch_unwind(|| VISITS.with(|v| v.get())).unwrap_err();
    assert!(
        error
            .downcast_ref::<&str>()
            .unwrap()
            .starts_with("goro::Local::with called outside")
    );
}

#[test]
fn ten_thousand_goroutines_yield_a_hundred_times_at_1_2_and_4_procs() {
    let _serial = serial();
    for procs in [1, 2, 4] {
        let total = run(config(procs), || {
            let yields = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..10_000)
                .map(|_| {
                    let yields = yields.clone();
                    go(move || {
                        for _ in 0..100 {
                            yields.fetch_add(1, Ordering::Relaxed);
                            yield_now();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            yields.load(Ordering::Relaxed)
        });
        assert_eq!(finished_ok(total), 1_000_000, "procs = {procs}");
    }
}

#[test]
fn a_hundred_thousand_spawns_and_exits_leave_nothing_behind() {
    let _serial = serial();
    for procs in [1, 2, 4] {
        let left = run(config(procs), || {
            for _ in 0..100 {
                let wg = Arc::new(goro_sched::sync::WaitGroup::new());
                for _ in 0..1000 {
                    wg.add(1);
                    let wg = wg.clone();
                    go(move || wg.done());
                }
                wg.wait();
            }
            // Exited goroutines leave the count once their M has freed them.
            while goro_sched::num_goroutine() > 1 {
                yield_now();
            }
            goro_sched::num_goroutine()
        });
        assert_eq!(finished_ok(left), 1, "procs = {procs}");
    }
}

#[test]
fn a_goroutine_in_blocking_does_not_stop_others_on_its_proc() {
    let _serial = serial();
    let (progress, value) = run(config(1), || {
        let counter = Arc::new(AtomicUsize::new(0));
        // Queued first, so it runs first: on one P, the only M then blocks its thread for
        // 300 ms inside `blocking`, and the P goes to another M, which runs the workers (never
        // run yet, so free to move) meanwhile.
        let counter2 = counter.clone();
        let blocker = go(move || {
            goro_sched::blocking(|| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                counter2.load(Ordering::SeqCst)
            })
        });
        let workers: Vec<_> = (0..10)
            .map(|_| {
                let counter = counter.clone();
                go(move || {
                    for _ in 0..100 {
                        counter.fetch_add(1, Ordering::SeqCst);
                        yield_now();
                    }
                })
            })
            .collect();
        let seen_by_blocker = blocker.join().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        (seen_by_blocker, counter.load(Ordering::SeqCst))
    })
    .into_result()
    .unwrap();
    assert_eq!(value, 1000);
    assert_eq!(
        progress, 1000,
        "the workers did not run while the blocker held its thread"
    );
}

#[test]
fn set_max_procs_reads_raises_and_lowers_while_work_runs() {
    let _serial = serial();
    let (initial, after_raise, after_lower, sum) = run(config(1), || {
        let initial = goro_sched::set_max_procs(0);
        let total = Arc::new(AtomicUsize::new(0));
        let spawn_work = |total: &Arc<AtomicUsize>| -> Vec<goro_sched::JoinHandle<()>> {
            (0..50)
                .map(|_| {
                    let total = total.clone();
                    go(move || {
                        for _ in 0..20 {
                            total.fetch_add(1, Ordering::SeqCst);
                            yield_now();
                        }
                    })
                })
                .collect()
        };
        let first = spawn_work(&total);
        assert_eq!(goro_sched::set_max_procs(4), 1);
        let after_raise = goro_sched::set_max_procs(0);
        let second = spawn_work(&total);
        assert_eq!(goro_sched::set_max_procs(2), 4);
        let after_lower = goro_sched::procs();
        for h in first.into_iter().chain(second) {
            h.join().unwrap();
        }
        (
            initial,
            after_raise,
            after_lower,
            total.load(Ordering::SeqCst),
        )
    })
    .into_result()
    .unwrap();
    assert_eq!((initial, after_raise, after_lower), (1, 4, 2));
    assert_eq!(sum, 2 * 50 * 20);
}

#[test]
fn a_goroutine_readied_by_the_running_one_runs_next() {
    let _serial = serial();
    let order = run(config(1), || {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (to_first, first_rx) = goro_sched::chan::channel::<()>(0);
        let (to_second, second_rx) = goro_sched::chan::channel::<()>(0);
        let spawn_waiter = |rx: goro_sched::chan::Receiver<()>, name: &'static str| {
            let log = log.clone();
            go(move || {
                rx.recv();
                log.lock().unwrap().push(name);
            })
        };
        let first = spawn_waiter(first_rx, "readied first");
        let second = spawn_waiter(second_rx, "readied last");
        // On one P, yielding lets both run and park in their receives.
        for _ in 0..3 {
            yield_now();
        }
        // Ready both, in this order, then yield: the last one readied runs next (runnext),
        // the one it displaced after it, and this goroutine after both.
        to_first.send(());
        to_second.send(());
        yield_now();
        let order = log.lock().unwrap().clone();
        first.join().unwrap();
        second.join().unwrap();
        order
    });
    assert_eq!(
        finished_ok(order),
        vec!["readied last", "readied first"],
        "runnext runs the last goroutine readied first, then the displaced one, then the yielder"
    );
}

#[test]
fn goroutines_spawned_by_plain_threads_run_while_the_ms_go_idle() {
    let _serial = serial();
    for procs in [1, 2] {
        let total = run(config(procs), || {
            let (tx, rx) = goro_sched::chan::channel::<u64>(1024);
            // A thread that is not an M spawns goroutines into the global queue, at moments when
            // the Ms are going idle (the main goroutine waits in `recv`): each must still run.
            let spawner = std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let tx = tx.clone();
                    drop(go(move || tx.send(i)));
                    if i % 100 == 0 {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                }
            });
            let sum: u64 = (0..2000).map(|_| rx.recv().unwrap()).sum();
            spawner.join().unwrap();
            sum
        });
        assert_eq!(finished_ok(total), 1999 * 2000 / 2, "procs = {procs}");
    }
}
