//! `Mutex`, `RwLock`, `Once`: exclusion, fairness under contention, parking instead of blocking.

mod common;

use common::*;

use goro_sched::sync::{Mutex, Once, RwLock, WaitGroup};
use goro_sched::{go, sleep, yield_now};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn mutex_excludes_and_parks_goroutines() {
    for procs in [1, 2, 4] {
        let total = on(procs, || {
            let counter = Arc::new(Mutex::new(0u64));
            let wg = Arc::new(WaitGroup::new());
            for _ in 0..50 {
                wg.add(1);
                let (counter, wg) = (counter.clone(), wg.clone());
                go(move || {
                    for _ in 0..200 {
                        let mut guard = counter.lock();
                        let seen = *guard;
                        yield_now(); // hold the lock across a scheduling point
                        *guard = seen + 1;
                    }
                    wg.done();
                });
            }
            wg.wait();
            *counter.lock()
        });
        assert_eq!(total, 10_000, "procs = {procs}");
    }
}

#[test]
fn a_goroutine_waiting_for_a_mutex_does_not_block_its_thread() {
    let order = on(1, || {
        let mutex = Arc::new(Mutex::new(Vec::new()));
        let guard_holder = {
            let mutex = mutex.clone();
            go(move || {
                let mut guard = mutex.lock();
                guard.push("holder locked");
                sleep(Duration::from_millis(20));
                guard.push("holder unlocks");
            })
        };
        yield_now();
        // On one P this goroutine parks on the lock; the holder's sleep must still end.
        let waiter = {
            let mutex = mutex.clone();
            go(move || mutex.lock().push("waiter locked"))
        };
        guard_holder.join().unwrap();
        waiter.join().unwrap();
        Arc::try_unwrap(mutex).unwrap().into_inner()
    });
    assert_eq!(order, ["holder locked", "holder unlocks", "waiter locked"]);
}

#[test]
fn try_lock_fails_while_locked() {
    let mutex = Mutex::new(1);
    let guard = mutex.lock();
    assert!(mutex.try_lock().is_none());
    drop(guard);
    assert_eq!(*mutex.try_lock().unwrap(), 1);
}

#[test]
fn rwlock_shares_reads_and_excludes_writes() {
    for procs in [1, 2] {
        let (max_readers, writes) = on(procs, || {
            let lock = Arc::new(RwLock::new(0u64));
            let readers_in = Arc::new(AtomicUsize::new(0));
            let max_readers = Arc::new(AtomicUsize::new(0));
            let wg = Arc::new(WaitGroup::new());
            for i in 0..40 {
                wg.add(1);
                let (lock, readers_in, max_readers, wg) = (
                    lock.clone(),
                    readers_in.clone(),
                    max_readers.clone(),
                    wg.clone(),
                );
                go(move || {
                    for _ in 0..50 {
                        if i % 4 == 0 {
                            let mut guard = lock.write();
                            assert_eq!(
                                readers_in.load(Ordering::SeqCst),
                                0,
                                "a writer with readers"
                            );
                            *guard += 1;
                        } else {
                            let _guard = lock.read();
                            let now = readers_in.fetch_add(1, Ordering::SeqCst) + 1;
                            max_readers.fetch_max(now, Ordering::SeqCst);
                            yield_now();
                            readers_in.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    wg.done();
                });
            }
            wg.wait();
            let writes = *lock.read();
            (max_readers.load(Ordering::SeqCst), writes)
        });
        assert_eq!(writes, 10 * 50);
        assert!(max_readers > 1, "reads never overlapped (procs = {procs})");
    }
}

#[test]
fn once_runs_once_and_waiters_see_its_effect() {
    let (runs, seen) = on(2, || {
        let once = Arc::new(Once::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let (once, runs) = (once.clone(), runs.clone());
                go(move || {
                    once.call_once(|| {
                        sleep(Duration::from_millis(10));
                        runs.fetch_add(1, Ordering::SeqCst);
                    });
                    runs.load(Ordering::SeqCst)
                })
            })
            .collect();
        let seen: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (runs.load(Ordering::SeqCst), seen)
    });
    assert_eq!(runs, 1);
    assert!(
        seen.iter().all(|&s| s == 1),
        "a caller returned before f finished: {seen:?}"
    );
}

#[test]
fn a_panicking_once_counts_as_done() {
    let once = Once::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        once.call_once(|| panic!("first call fails"));
    }));
    assert!(result.is_err());
    assert!(once.is_completed());
    once.call_once(|| panic!("must not run"));
}

#[test]
fn an_unlock_racing_a_locker_that_queues_itself_wakes_it() {
    // A locker that saw the lock held queues itself; if the holder's fast-path unlock lands
    // between the locker's look and its WAITERS flag, the locker must notice instead of parking
    // with nobody left to wake it. Two goroutines on two Ps pass a lock with a short critical
    // section back and forth, many times: with the race open, about one run in three of this
    // test hung (it then aborts through the watchdog), and `safe_api`'s try-lock test hung in
    // CI.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watched = done.clone();
    std::thread::spawn(move || {
        let began = std::time::Instant::now();
        while !watched.load(Ordering::Acquire) {
            if began.elapsed() > Duration::from_secs(120) {
                eprintln!("a goroutine waiting for a released Mutex was never woken");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    for _ in 0..200 {
        let total = on(2, || {
            let counter = Arc::new(Mutex::new(0u64));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let counter = counter.clone();
                    go(move || {
                        for _ in 0..100_000 {
                            *counter.lock() += 1;
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            *counter.lock()
        });
        assert_eq!(total, 200_000);
    }
    done.store(true, Ordering::Release);
}
