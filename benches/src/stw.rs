//! How long the world stops for a collection.
//!
//! - `stw_threads N`: with threads goro did not start alive. 1,000 goroutines park on a
//!   channel; with the `threads` variant 8 std threads run beside them (7 blocked on a lock, 1
//!   spinning without calling anything), each holding a `Gc`. The program forces N collections.
//! - `stw_large_blocks MIB`: with large unbarriered memory alive. A goroutine holds a
//!   `Vec<Option<Gc<T>>>` of MIB MiB (an object per entry) and replaces a random entry every
//!   100 us, while a std thread forces 40 collections. Mark termination rescans malloc blocks,
//!   which have no write barrier: with the `tracked` variant only the pages the kernel saw
//!   written since marking scanned them, with `whole` (`goro::gc::set_track_writes(false)`)
//!   the whole block.
//!
//! Both report the longest, the 99th-percentile and the median stop (each of a cycle's two
//! stop-the-world pauses, from `goro::gc::stats().pauses`).

use crate::{Options, Workload, report};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The workload.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "stw_threads",
        default_size: "200",
        variants: &["threads", "no_threads"],
        implementations: &["goro"],
        run,
    },
    Workload {
        name: "stw_large_blocks",
        default_size: "16",
        variants: &["tracked", "whole"],
        implementations: &["goro"],
        run: run_large_blocks,
    },
];

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

/// The longest, median and 99th-percentile of the pauses of the last `cycles` cycles.
fn pause_quantiles(cycles: usize) -> (Duration, Duration, Duration) {
    let stats = goro::gc::stats();
    // Two pauses per cycle: its start and its mark termination.
    let mut pauses: Vec<Duration> = stats
        .pauses
        .iter()
        .rev()
        .take(2 * cycles)
        .copied()
        .collect();
    pauses.sort();
    let max = pauses.last().copied().unwrap_or_default();
    let median = pauses.get(pauses.len() / 2).copied().unwrap_or_default();
    let p99 = pauses
        .get((pauses.len() * 99 / 100).min(pauses.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    (max, median, p99)
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
    let ran = (goro::gc::stats().cycles - before) as usize;
    let (max, median, p99) = pause_quantiles(ran);
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

/// Collections `stw_large_blocks` forces.
const LARGE_BLOCK_CYCLES: usize = 40;

fn run_large_blocks(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    if implementation != "goro" {
        return Err(format!("no implementation {implementation}"));
    }
    let mib: usize = crate::parse_size("stw_large_blocks", size)?;
    let variant = options.variant.clone().unwrap_or_else(|| "tracked".into());
    let tracked = match variant.as_str() {
        "tracked" => true,
        "whole" => false,
        other => return Err(format!("stw_large_blocks: unknown variant {other}")),
    };
    crate::goro_runtime(options)?.run(move || measure_large_blocks(mib, tracked, &variant));
    Ok(())
}

fn measure_large_blocks(mib: usize, tracked: bool, variant: &str) {
    goro::gc::set_track_writes(tracked);
    let entries = (mib << 20) / size_of::<Option<goro::Gc<Payload>>>();
    let mut table: Vec<Option<goro::Gc<Payload>>> = (0..entries as u64)
        .map(|value| Some(goro::Gc::new(Payload { value })))
        .collect();
    // Goroutines stay on their thread: this one mutates, and a std thread collects (joined only
    // once it is done, so that the wait blocks nobody).
    let done = Arc::new(AtomicBool::new(false));
    let collector = {
        let done = done.clone();
        std::thread::spawn(move || {
            let before = goro::gc::stats().cycles;
            let began = Instant::now();
            let mut skipped = 0usize;
            for _ in 0..LARGE_BLOCK_CYCLES {
                goro::gc::collect();
                skipped += goro::gc::stats().rescan_skipped;
            }
            let ran = (goro::gc::stats().cycles - before) as usize;
            done.store(true, Ordering::Relaxed);
            (began.elapsed(), ran, skipped / LARGE_BLOCK_CYCLES)
        })
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut replaced = 0u64;
    while !done.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = (rng % entries as u64) as usize;
        table[at] = Some(goro::Gc::new(Payload { value: rng }));
        replaced += 1;
        let idle = Instant::now();
        while idle.elapsed() < Duration::from_micros(100) {
            std::hint::spin_loop();
        }
    }
    let (total, ran, skipped) = collector.join().unwrap();
    assert_eq!(
        table.iter().flatten().count(),
        entries,
        "an entry went missing"
    );
    let (max, median, p99) = pause_quantiles(ran);
    report::Result::new("stw_large_blocks", "goro")
        .key("variant", variant)
        .key("n", ran)
        .key("block_mib", mib)
        .key("replaced", replaced)
        .key(
            "skipped_mib_per_cycle",
            format!("{:.1}", skipped as f64 / (1 << 20) as f64),
        )
        .key("stw_max_us", max.as_micros())
        .key("stw_p50_us", median.as_micros())
        .key("stw_p99_us", p99.as_micros())
        .print(total);
}
