//! `gc_latency MIB`: how long a collector stalls a mutator that keeps a large live heap.
//!
//! 1. A live heap of `MIB` MiB of 256-byte objects is held in an array: `MIB * 4096` slots (the
//!    issue's size, 256, is 1 Mi slots and 256 MiB of payload). goro's array is a `Gc` object
//!    holding a `Box<[GcCell<Gc<Obj>>]>` (one malloc block of 16 bytes per slot: 16 MiB at the
//!    issue's size); dumpster's a `dumpster::unsync::Gc` holding `RefCell`s; Arc's a
//!    `Box<[Arc<Obj>]>`; Go's a `[]*T` (`benches/go/gc_latency.go`). `goro_chunked` is goro
//!    with the array split into `Gc` chunks of [`CHUNK_SLOTS`] cells each (the slots in
//!    collected objects, not in one large malloc block), to tell the two apart.
//! 2. [`OPS`] (10M) random slot replacements, each allocating a new object (its 32 words
//!    written) and storing it in the slot (through `GcCell::set` for goro), the old object
//!    becoming garbage (freed at once for Arc and dumpster, whose counts reach zero).
//! 3. Every [`STAMP_EVERY`] (256) operations the mutator takes a timestamp; the timestamps live
//!    in memory mapped outside every heap, so that no collector scans them. A gap between two
//!    consecutive timestamps is 256 operations plus whatever stalled the mutator meanwhile.
//!
//! Keys: `gap_max_us` and `gap_p99_us` (the largest and the 99th-percentile gap), `ns_per_op`,
//! `gc_cycles` (cycles that completed during step 2), `stw_max_us` and `stw_p99_us` (goro: the
//! stop-the-world pauses of those cycles from `goro::gc::stats().pauses`, two per cycle, of
//! which the stats keep the last 256: `stw_samples` says how many were seen), `stw_total_ms`,
//! `gc_cpu_share` and `vmhwm_kib`.
//!
//! `gc_cpu_share` for goro is the CPU time of the collector's own threads (named
//! `goro-gc-worker`, `goro-gc-helper`, `goro-gc-sweeper`, or any other `goro-gc-*`, and
//! `goro-sweeper`), read from `/proc/self/task/*/stat`, over the process's CPU time, both over
//! step 2. Collector work done on the mutator's thread (the pauses, assists) counts as mutator
//! time there: `stw_total_ms` shows the pauses' share of it. dumpster frees and looks for
//! cycles inside `drop`, on the mutator's thread, with no hook to time it apart: its share is
//! `na` (absent), and `gc_cycles` counts the times its collect condition (the default one)
//! started a cycle search. Arc has no collector: `gc_cpu_share=0`, no cycles, no pauses.
//! `stw_*` is `na` for both.

use crate::{Options, Workload, report};
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The workload.
pub const WORKLOADS: &[Workload] = &[Workload {
    name: "gc_latency",
    default_size: "64",
    variants: &[],
    implementations: &["goro", "goro_chunked", "dumpster", "arc", "go"],
    run,
}];

/// The payload of one object, in bytes.
pub const OBJECT_BYTES: usize = 256;
/// Slot replacements in the measured loop.
pub const OPS: u64 = 10_000_000;
/// Operations between two timestamps.
pub const STAMP_EVERY: u64 = 256;
/// Slots per chunk of `goro_chunked`'s array.
pub const CHUNK_SLOTS: usize = 1024;

fn run(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let mib: usize = crate::parse_size("gc_latency", size)?;
    if mib == 0 {
        return Err("gc_latency: the live heap must be at least 1 MiB".into());
    }
    let slots = mib * (1 << 20) / OBJECT_BYTES;
    match implementation {
        "goro" => crate::goro_runtime(options)?.run(move || goro(mib, slots)),
        "goro_chunked" => crate::goro_runtime(options)?.run(move || goro_chunked(mib, slots)),
        "dumpster" => dumpster(mib, slots),
        "arc" => arc(mib, slots),
        "go" => crate::go::run("gc_latency", &[mib.to_string(), OPS.to_string()]),
        other => Err(format!("no implementation {other}")),
    }
}

/// The random slot sequence (xorshift64, the same in Go's program).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15)
    }

    /// A slot index below `slots` (the high 32 bits scaled, no division).
    #[inline]
    fn slot(&mut self, slots: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (((x >> 32) * slots as u64) >> 32) as usize
    }
}

/// The timestamps of the measured loop, in memory mapped for them (outside every heap: no
/// collector scans or moves them).
struct Timeline {
    stamps: *mut u64,
    capacity: usize,
    len: usize,
    start: Instant,
}

impl Timeline {
    /// Room for `capacity` timestamps, mapped and touched before the clock starts.
    fn new(capacity: usize) -> Result<Timeline, String> {
        let bytes = (capacity.max(1) * size_of::<u64>()).next_multiple_of(4096);
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing; nothing
        // else is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "gc_latency: cannot map {bytes} bytes for the timestamps"
            ));
        }
        Ok(Timeline {
            stamps: base.cast(),
            capacity,
            len: 0,
            start: Instant::now(),
        })
    }

    /// Starts the clock: gaps are measured from here.
    fn start(&mut self) {
        self.len = 0;
        self.start = Instant::now();
    }

    /// Records the time since `start`, in nanoseconds.
    #[inline]
    fn stamp(&mut self) {
        if self.len < self.capacity {
            let now = self.start.elapsed().as_nanos() as u64;
            // SAFETY: `len < capacity` and the mapping holds `capacity` u64s.
            unsafe { self.stamps.add(self.len).write(now) };
            self.len += 1;
        }
    }

    /// The gaps between consecutive timestamps (the first from `start`), sorted, in ns.
    fn sorted_gaps(&self) -> Vec<u64> {
        // SAFETY: the first `len` entries were written by `stamp`; the mapping lives as long as
        // `self`.
        let stamps = unsafe { std::slice::from_raw_parts(self.stamps, self.len) };
        let mut last = 0;
        let mut gaps: Vec<u64> = stamps
            .iter()
            .map(|&t| {
                let gap = t - last;
                last = t;
                gap
            })
            .collect();
        gaps.sort_unstable();
        gaps
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        let bytes = (self.capacity.max(1) * size_of::<u64>()).next_multiple_of(4096);
        // SAFETY: the mapping made in `new`, of that length, unmapped once.
        unsafe { libc::munmap(self.stamps.cast(), bytes) };
    }
}

/// The `q`-quantile of sorted values (nearest rank, the largest for `q = 1`).
fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The measured loop's outcome, common to every implementation.
struct Measured {
    elapsed: Duration,
    gaps: Vec<u64>,
}

/// Runs `ops` replacements through `replace(slot, i)`, with a timestamp every `STAMP_EVERY`.
#[inline(always)]
fn measure(slots: usize, mut replace: impl FnMut(usize, u64)) -> Result<Measured, String> {
    let mut timeline = Timeline::new((OPS / STAMP_EVERY) as usize)?;
    let mut rng = Rng::new();
    timeline.start();
    let began = Instant::now();
    for i in 0..OPS {
        replace(rng.slot(slots), i);
        if i % STAMP_EVERY == STAMP_EVERY - 1 {
            timeline.stamp();
        }
    }
    let elapsed = began.elapsed();
    Ok(Measured {
        elapsed,
        gaps: timeline.sorted_gaps(),
    })
}

/// The RESULT line's common part.
fn result(implementation: &str, mib: usize, slots: usize, measured: &Measured) -> report::Result {
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1e3);
    report::Result::new("gc_latency", implementation)
        .key("live_mib", mib)
        .key("slots", slots)
        .key("ops", OPS)
        .key("gap_max_us", us(quantile(&measured.gaps, 1.0)))
        .key("gap_p99_us", us(quantile(&measured.gaps, 0.99)))
        .key(
            "ns_per_op",
            format!("{:.1}", measured.elapsed.as_nanos() as f64 / OPS as f64),
        )
}

/// A 256-byte object of goro's heap.
#[derive(goro::Trace)]
struct GoroObj {
    words: [u64; OBJECT_BYTES / 8],
}

/// goro's array: one `Gc` object owning the slots.
#[derive(goro::Trace)]
struct GoroSlots {
    slots: Box<[goro::GcCell<goro::Gc<GoroObj>>]>,
}

fn goro(mib: usize, slots: usize) -> Result<(), String> {
    let array = goro::Gc::new(GoroSlots {
        slots: (0..slots as u64)
            .map(|i| goro::GcCell::new(goro_obj(i)))
            .collect(),
    });
    let before = goro::gc::stats();
    let cpu_before = CpuTicks::now();
    let measured = measure(slots, |slot, i| array.slots[slot].set(goro_obj(i)))?;
    let cpu = CpuTicks::now().since(&cpu_before);
    let after = goro::gc::stats();
    goro::gc::keep_alive(&array);
    goro_result("goro", mib, slots, &measured, &before, &after, &cpu);
    Ok(())
}

/// A chunk of `goro_chunked`'s array.
#[derive(goro::Trace)]
struct GoroChunk {
    slots: [goro::GcCell<goro::Gc<GoroObj>>; CHUNK_SLOTS],
}

/// `goro_chunked`'s array: a `Gc` object holding `Gc` chunks.
#[derive(goro::Trace)]
struct GoroChunks {
    chunks: Box<[goro::Gc<GoroChunk>]>,
}

fn goro_chunked(mib: usize, slots: usize) -> Result<(), String> {
    let array = goro::Gc::new(GoroChunks {
        chunks: (0..slots.div_ceil(CHUNK_SLOTS))
            .map(|c| {
                let first = (c * CHUNK_SLOTS) as u64;
                goro::Gc::new(GoroChunk {
                    slots: std::array::from_fn(|i| goro::GcCell::new(goro_obj(first + i as u64))),
                })
            })
            .collect(),
    });
    let before = goro::gc::stats();
    let cpu_before = CpuTicks::now();
    let measured = measure(slots, |slot, i| {
        array.chunks[slot / CHUNK_SLOTS].slots[slot % CHUNK_SLOTS].set(goro_obj(i))
    })?;
    let cpu = CpuTicks::now().since(&cpu_before);
    let after = goro::gc::stats();
    goro::gc::keep_alive(&array);
    goro_result("goro_chunked", mib, slots, &measured, &before, &after, &cpu);
    Ok(())
}

/// A new object for goro, every word `i`.
#[inline(always)]
fn goro_obj(i: u64) -> goro::Gc<GoroObj> {
    goro::Gc::new(GoroObj {
        words: [i; OBJECT_BYTES / 8],
    })
}

/// Prints goro's RESULT line: the cycles and pauses between `before` and `after`.
fn goro_result(
    implementation: &str,
    mib: usize,
    slots: usize,
    measured: &Measured,
    before: &goro::gc::GcStats,
    after: &goro::gc::GcStats,
    cpu: &CpuTicks,
) {
    let cycles = after.cycles - before.cycles;
    // Two pauses per cycle; the stats keep the last PAUSE_HISTORY of them.
    let wanted = (2 * cycles) as usize;
    let mut pauses: Vec<Duration> = after.pauses.iter().rev().take(wanted).copied().collect();
    pauses.sort_unstable();
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    result(implementation, mib, slots, measured)
        .key("gc_cycles", cycles)
        .key("stw_max_us", us(quantile(&pauses, 1.0)))
        .key("stw_p99_us", us(quantile(&pauses, 0.99)))
        .key("stw_samples", format!("{}/{wanted}", pauses.len()))
        .key(
            "stw_total_ms",
            format!(
                "{:.1}",
                (after.pause_total - before.pause_total).as_secs_f64() * 1e3
            ),
        )
        .key("gc_cpu_share", cpu.gc_share())
        .key("gc_cpu_ms", cpu.gc_ms())
        .key("cpu_ms", cpu.process_ms())
        .print(measured.elapsed);
}

/// A 256-byte object of dumpster's heap.
#[derive(dumpster::Trace)]
struct DumpsterObj {
    words: [u64; OBJECT_BYTES / 8],
}

/// Cycle searches dumpster started during the run.
static DUMPSTER_CYCLES: AtomicU64 = AtomicU64::new(0);

/// dumpster's default collect condition, counted.
fn counted_condition(info: &dumpster::unsync::CollectInfo) -> bool {
    let collect = dumpster::unsync::default_collect_condition(info);
    if collect {
        DUMPSTER_CYCLES.fetch_add(1, Ordering::Relaxed);
    }
    collect
}

fn dumpster(mib: usize, slots: usize) -> Result<(), String> {
    use dumpster::unsync::Gc;
    dumpster::unsync::set_collect_condition(counted_condition);
    let array: Gc<Box<[RefCell<Gc<DumpsterObj>>]>> = Gc::new(
        (0..slots as u64)
            .map(|i| {
                RefCell::new(Gc::new(DumpsterObj {
                    words: [i; OBJECT_BYTES / 8],
                }))
            })
            .collect(),
    );
    let cycles_before = DUMPSTER_CYCLES.load(Ordering::Relaxed);
    let cpu_before = CpuTicks::now();
    let measured = measure(slots, |slot, i| {
        *array[slot].borrow_mut() = Gc::new(DumpsterObj {
            words: [i; OBJECT_BYTES / 8],
        });
    })?;
    let cpu = CpuTicks::now().since(&cpu_before);
    drop(array);
    result("dumpster", mib, slots, &measured)
        .key(
            "gc_cycles",
            DUMPSTER_CYCLES.load(Ordering::Relaxed) - cycles_before,
        )
        .key("stw_max_us", "na")
        .key("stw_p99_us", "na")
        .key("gc_cpu_share", "na")
        .key("cpu_ms", cpu.process_ms())
        .print(measured.elapsed);
    Ok(())
}

fn arc(mib: usize, slots: usize) -> Result<(), String> {
    let mut array: Box<[Arc<[u64; OBJECT_BYTES / 8]>]> = (0..slots as u64)
        .map(|i| Arc::new([i; OBJECT_BYTES / 8]))
        .collect();
    let cpu_before = CpuTicks::now();
    let measured = measure(slots, |slot, i| {
        array[slot] = Arc::new([i; OBJECT_BYTES / 8]);
    })?;
    let cpu = CpuTicks::now().since(&cpu_before);
    drop(array);
    result("arc", mib, slots, &measured)
        .key("gc_cycles", 0)
        .key("stw_max_us", "na")
        .key("stw_p99_us", "na")
        .key("gc_cpu_share", 0)
        .key("cpu_ms", cpu.process_ms())
        .print(measured.elapsed);
    Ok(())
}

/// CPU time in clock ticks (`/proc` units, `sysconf(_SC_CLK_TCK)` per second): the whole
/// process's, and that of goro's collector threads, by thread id.
struct CpuTicks {
    process: u64,
    collector: Vec<(u32, u64)>,
}

/// Whether a thread named `name` (as `/proc` shows it, at most 15 bytes) is one of goro's
/// collector threads.
fn is_collector_thread(name: &str) -> bool {
    name.starts_with("goro-gc-") || name == "goro-sweeper"
}

impl CpuTicks {
    fn now() -> CpuTicks {
        let process = stat_ticks("/proc/self/stat").map_or(0, |(_, ticks)| ticks);
        let mut collector = Vec::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                let path = task.path().join("stat");
                if let Some((name, ticks)) = stat_ticks(&path.to_string_lossy())
                    && is_collector_thread(&name)
                {
                    collector.push((tid, ticks));
                }
            }
        }
        CpuTicks { process, collector }
    }

    /// The ticks spent since `before` (a collector thread absent then started meanwhile).
    fn since(&self, before: &CpuTicks) -> CpuTicks {
        let collector = self
            .collector
            .iter()
            .map(|&(tid, ticks)| {
                let then = before
                    .collector
                    .iter()
                    .find(|&&(t, _)| t == tid)
                    .map_or(0, |&(_, ticks)| ticks);
                (tid, ticks - then)
            })
            .collect();
        CpuTicks {
            process: self.process - before.process,
            collector,
        }
    }

    fn collector_total(&self) -> u64 {
        self.collector.iter().map(|&(_, ticks)| ticks).sum()
    }

    fn gc_share(&self) -> String {
        format!(
            "{:.3}",
            self.collector_total() as f64 / self.process.max(1) as f64
        )
    }

    fn gc_ms(&self) -> String {
        format!("{:.0}", ticks_ms(self.collector_total()))
    }

    fn process_ms(&self) -> String {
        format!("{:.0}", ticks_ms(self.process))
    }
}

fn ticks_ms(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 * 1e3 / per_second as f64
}

/// A `/proc/.../stat` file's command name and user + system time in ticks.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The name is in parentheses and may hold spaces or parentheses: it ends at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    // After the name: state (field 3), ..., utime (field 14), stime (field 15).
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let values: Vec<u64> = (1..=200).collect();
        assert_eq!(quantile(&values, 1.0), 200);
        assert_eq!(quantile(&values, 0.99), 198);
        assert_eq!(quantile(&values, 0.5), 100);
        assert_eq!(quantile::<u64>(&[], 0.99), 0);
    }

    #[test]
    fn slots_stay_in_range_and_spread() {
        let mut rng = Rng::new();
        let mut seen = [0u32; 10];
        for _ in 0..100_000 {
            seen[rng.slot(10)] += 1;
        }
        assert!(
            seen.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{seen:?}"
        );
    }

    #[test]
    fn this_thread_has_a_name_and_cpu_time_in_proc() {
        let (name, _) = stat_ticks("/proc/thread-self/stat").unwrap();
        assert!(!name.is_empty());
        assert!(is_collector_thread("goro-gc-worker"));
        assert!(is_collector_thread("goro-gc-sweeper"));
        assert!(!is_collector_thread("goro-m1"));
    }
}
