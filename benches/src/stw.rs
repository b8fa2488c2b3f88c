//! `stw_threads N`: how long the world stops for a collection when threads goro did not start
//! are alive. 1,000 goroutines park on a channel; with the `threads` variant 8 std threads run
//! beside them (7 blocked on a lock, 1 spinning without calling anything), each holding a `Gc`.
//! The program forces N collections and reports the longest, the 99th-percentile and the
//! median stop (each of a cycle's two stop-the-world pauses, from `goro::gc::stats().pauses`).

use crate::{Options, Workload, report};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The workload.
pub const WORKLOADS: &[Workload] = &[Workload {
    name: "stw_threads",
    default_size: "200",
    variants: &["threads", "no_threads"],
    implementations: &["goro"],
    run,
}];

/// Parked goroutines.
const GOROUTINES: usize = 1_000;
/// Std threads with the `threads` variant, one of them spinning.
const THREADS: usize = 8;

fn run(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    if implementation != "goro" {
        return Err(format!("no implementation {implementation}"));
    }
    let cycles: usize = crate::parse_size("stw_threads", size)?;
    let variant = options.variant.clone().unwrap_or_else(|| "threads".into());
    let threads = match variant.as_str() {
        "threads" => THREADS,
        "no_threads" => 0,
        other => return Err(format!("stw_threads: unknown variant {other}")),
    };
    crate::goro_runtime(options)?.run(move || measure(cycles, threads, &variant));
    Ok(())
}

#[derive(goro::Trace)]
struct Payload {
    value: u64,
}

fn measure(cycles: usize, threads: usize, variant: &str) {
    let (tx, rx) = goro::chan::channel::<()>(0);
    let parked: Vec<_> = (0..GOROUTINES)
        .map(|i| {
            let rx = rx.clone();
            goro::go(move || {
                let mine = goro::Gc::new(Payload { value: i as u64 });
                rx.recv();
                goro::gc::keep_alive(&mine);
            })
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, gate) = (stop.clone(), gate.clone());
            std::thread::spawn(move || {
                let mine = goro::Gc::new(Payload { value: i as u64 });
                if i == 0 {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                } else {
                    let (lock, woken) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = woken.wait(open).unwrap();
                    }
                }
                mine.value
            })
        })
        .collect();
    // Let the goroutines park and the threads settle.
    goro::sleep(Duration::from_millis(50));
    let before = goro::gc::stats().cycles;
    let began = Instant::now();
    for _ in 0..cycles {
        goro::gc::collect();
    }
    let total = began.elapsed();
    let stats = goro::gc::stats();
    let ran = (stats.cycles - before) as usize;
    // Two pauses per cycle: its start and its mark termination.
    let mut pauses: Vec<Duration> = stats.pauses.iter().rev().take(2 * ran).copied().collect();
    pauses.sort();
    let max = pauses.last().copied().unwrap_or_default();
    let median = pauses.get(pauses.len() / 2).copied().unwrap_or_default();
    let p99 = pauses
        .get((pauses.len() * 99 / 100).min(pauses.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for worker in workers {
        goro::blocking(|| worker.join().unwrap());
    }
    drop(tx);
    for goroutine in parked {
        goroutine.join().unwrap();
    }
    report::Result::new("stw_threads", "goro")
        .key("variant", variant)
        .key("n", ran)
        .key("goroutines", GOROUTINES)
        .key("threads", threads)
        .key("stw_max_us", max.as_micros())
        .key("stw_p50_us", median.as_micros())
        .key("stw_p99_us", p99.as_micros())
        .print(total);
}
