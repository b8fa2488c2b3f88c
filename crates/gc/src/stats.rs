//! Collector statistics (`goro::gc::stats()`) and the gctrace line.

use crate::pacer;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many recent pauses [`GcStats::pauses`] keeps (Go's `PauseNs` ring has 256).
pub const PAUSE_HISTORY: usize = 256;

/// A snapshot of the collector's counters, like the GC half of Go's `runtime.MemStats`.
#[derive(Clone, Debug, Default)]
pub struct GcStats {
    /// Completed cycles (Go's `NumGC`).
    pub cycles: u64,
    /// Cycles started by `collect()` (Go's `NumForcedGC`).
    pub forced_cycles: u64,
    /// Total stop-the-world time (Go's `PauseTotalNs`).
    pub pause_total: Duration,
    /// The most recent pauses, oldest first, at most [`PAUSE_HISTORY`].
    pub pauses: Vec<Duration>,
    /// Gc bytes found live by the last cycle.
    pub heap_live: usize,
    /// Gc objects found live by the last cycle.
    pub live_objects: usize,
    /// Gc heap size now: live at the last cycle plus allocated since (Go's `HeapAlloc`, Gc part).
    pub heap_alloc: usize,
    /// Heap size at which the next cycle starts (Go's `NextGC`).
    pub heap_goal: usize,
    /// Root bytes (stacks, runtime structures) scanned by the last cycle.
    pub roots_scanned: usize,
    /// Bytes of Gc objects freed by all cycles.
    pub total_freed: u64,
    /// Gc objects freed by all cycles (Go's `Frees`, Gc part).
    pub freed_objects: u64,
    /// GOGC in force.
    pub percent: i32,
    /// The memory limit in force (`usize::MAX` when none).
    pub memory_limit: usize,
}

impl GcStats {
    /// The most recent pause, if any cycle ran.
    pub fn last_pause(&self) -> Option<Duration> {
        self.pauses.last().copied()
    }
}

struct Counters {
    stats: GcStats,
    started: Option<Instant>,
    busy: Duration,
}

static COUNTERS: Mutex<Counters> = Mutex::new(Counters {
    stats: stats_zero(),
    started: None,
    busy: Duration::ZERO,
});
static TRACE: AtomicBool = AtomicBool::new(false);

const fn stats_zero() -> GcStats {
    GcStats {
        cycles: 0,
        forced_cycles: 0,
        pause_total: Duration::ZERO,
        pauses: Vec::new(),
        heap_live: 0,
        live_objects: 0,
        heap_alloc: 0,
        heap_goal: 0,
        roots_scanned: 0,
        total_freed: 0,
        freed_objects: 0,
        percent: 100,
        memory_limit: usize::MAX,
    }
}

/// Turns the gctrace line (Go's `GODEBUG=gctrace=1`) on or off: one line on stderr per cycle.
pub fn set_trace(on: bool) {
    TRACE.store(on, Ordering::Relaxed);
}

/// The collector's counters now.
pub fn stats() -> GcStats {
    let counters = COUNTERS.lock().unwrap_or_else(|poison| poison.into_inner());
    let mut stats = counters.stats.clone();
    stats.heap_alloc = pacer::heap_alloc();
    stats.heap_goal = pacer::goal();
    stats.percent = pacer::percent();
    stats.memory_limit = pacer::memory_limit();
    stats
}

/// What one cycle measured.
pub(crate) struct CycleReport {
    pub(crate) forced: bool,
    pub(crate) heap_before: usize,
    pub(crate) stop: Duration,
    pub(crate) mark: Duration,
    pub(crate) sweep: Duration,
    pub(crate) live_bytes: usize,
    pub(crate) live_objects: usize,
    pub(crate) freed_bytes: usize,
    pub(crate) freed_objects: usize,
    pub(crate) roots: usize,
    pub(crate) procs: usize,
    pub(crate) began: Instant,
}

pub(crate) fn record(report: &CycleReport) {
    let mut counters = COUNTERS.lock().unwrap_or_else(|poison| poison.into_inner());
    let started = *counters.started.get_or_insert(report.began);
    // The world is stopped while the cycle stops it and marks; the sweep runs with it going.
    let pause = report.stop + report.mark;
    counters.busy += pause + report.sweep;
    let stats = &mut counters.stats;
    stats.cycles += 1;
    stats.forced_cycles += u64::from(report.forced);
    stats.pause_total += pause;
    if stats.pauses.len() == PAUSE_HISTORY {
        stats.pauses.remove(0);
    }
    stats.pauses.push(pause);
    stats.heap_live = report.live_bytes;
    stats.live_objects = report.live_objects;
    stats.roots_scanned = report.roots;
    stats.total_freed += report.freed_bytes as u64;
    stats.freed_objects += report.freed_objects as u64;
    if TRACE.load(Ordering::Relaxed) {
        let elapsed = report.began.duration_since(started) + pause + report.sweep;
        let share = 100.0 * counters.busy.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mb = |b: usize| b >> 20;
        eprintln!(
            "gc {} @{:.3}s {:.0}%: {:.3}+{:.3}+{:.3} ms clock, {}->{}->{} MB, {} MB goal, \
             {} MB stacks, 0 MB globals, {} P{}",
            counters.stats.cycles,
            elapsed.as_secs_f64(),
            share,
            ms(report.stop),
            ms(report.mark),
            ms(report.sweep),
            mb(report.heap_before),
            mb(report.heap_before),
            mb(report.live_bytes),
            mb(pacer::goal()),
            mb(report.roots),
            report.procs,
            if report.forced { " (forced)" } else { "" },
        );
    }
}
