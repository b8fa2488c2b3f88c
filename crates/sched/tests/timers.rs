//! Timers: sleep, after, tick.

mod common;

use common::*;

use goro_sched::{go, sleep};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn sleep_waits_at_least_its_duration_and_frees_the_proc() {
    for procs in [1, 2] {
        let (slept, others_ran) = on(procs, || {
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let worker = {
                let counter = counter.clone();
                go(move || {
                    for _ in 0..1000 {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        goro_sched::yield_now();
                    }
                })
            };
            let start = Instant::now();
            sleep(Duration::from_millis(30));
            let slept = start.elapsed();
            worker.join().unwrap();
            (slept, counter.load(std::sync::atomic::Ordering::Relaxed))
        });
        assert!(slept >= Duration::from_millis(30), "slept only {slept:?}");
        assert!(slept < Duration::from_secs(2), "slept {slept:?}");
        assert_eq!(others_ran, 1000);
    }
}

#[test]
fn sleepers_wake_in_deadline_order() {
    let order = on(2, || {
        let order = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = [50u64, 10, 30, 20, 40]
            .into_iter()
            .map(|ms| {
                let order = order.clone();
                go(move || {
                    sleep(Duration::from_millis(ms));
                    order.lock().unwrap().push(ms);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    });
    assert_eq!(order, [10, 20, 30, 40, 50]);
}

#[test]
fn after_delivers_once_and_tick_repeats() {
    let (after_elapsed, second, ticks) = on(1, || {
        let start = Instant::now();
        let rx = goro_sched::chan::after(Duration::from_millis(20));
        let fired = rx.recv().unwrap();
        let after_elapsed = fired.duration_since(start);
        let second = rx.try_recv().is_err();
        let ticker = goro_sched::chan::tick(Duration::from_millis(5));
        let ticks: Vec<Instant> = (0..4).map(|_| ticker.recv().unwrap()).collect();
        (after_elapsed, second, ticks)
    });
    assert!(after_elapsed >= Duration::from_millis(20));
    assert!(second, "after fires once");
    for pair in ticks.windows(2) {
        assert!(pair[1] > pair[0]);
    }
}

#[test]
fn tick_rejects_a_zero_period_with_gos_message() {
    let message = on(1, || {
        let error =
            std::panic::catch_unwind(|| goro_sched::chan::tick(Duration::ZERO)).unwrap_err();
        error.downcast_ref::<&str>().unwrap().to_string()
    });
    assert_eq!(message, "goro::chan::tick: non-positive interval for tick");
}

#[test]
fn sleep_outside_a_goroutine_sleeps_the_thread() {
    let start = Instant::now();
    sleep(Duration::from_millis(5));
    assert!(start.elapsed() >= Duration::from_millis(5));
}

#[test]
fn many_sleepers_all_wake() {
    let woke = on(2, || {
        let handles: Vec<_> = (0..2000u64)
            .map(|i| go(move || sleep(Duration::from_micros(100 * (i % 50)))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().is_ok() as usize)
            .sum::<usize>()
    });
    assert_eq!(woke, 2000);
}
