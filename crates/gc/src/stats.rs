//! Collector statistics (`goro::gc::stats()`) and the gctrace line.
//!
//! [`GcStats`] prints itself for people (`Display`): byte counts in binary units (B, KiB, MiB,
//! GiB, TiB, one decimal), pauses in milliseconds, GOGC `off` when negative and the memory limit
//! `none` when unset (`usize::MAX`), as Go's `GOGC=off` and `GOMEMLIMIT=off` read.

use crate::pacer;
use goro_alloc::Bytes;
use std::fmt;
use std::io::Write;
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
    /// The most recent pauses, oldest first, at most `PAUSE_HISTORY` (256): two per cycle (its
    /// first pause, then its mark termination), as Go's `PauseNs` records them.
    pub pauses: Vec<Duration>,
    /// Gc bytes found live by the last cycle.
    pub heap_live: usize,
    /// Gc objects found live by the last cycle.
    pub live_objects: usize,
    /// Gc heap size now: live at the last cycle plus allocated since (Go's `HeapAlloc`, Gc part).
    pub heap_alloc: usize,
    /// The malloc heap in use now: the spans holding `Box`, `Vec`, ... blocks. The pacer measures
    /// `heap_alloc` plus this against `heap_goal`, as Go measures its whole heap.
    pub malloc_in_use: usize,
    /// Heap size (Gc and malloc) at which the next cycle starts (Go's `NextGC`).
    pub heap_goal: usize,
    /// Root bytes (stacks, runtime structures, static data) scanned by the last cycle.
    pub roots_scanned: usize,
    /// The part of `roots_scanned` that was static data (the loaded objects' writable segments,
    /// the pages of them the process has touched): gctrace's globals.
    pub globals_scanned: usize,
    /// Work items (objects and ranges to scan) the last cycle handed to the mark helper thread,
    /// which marks beside the collector when the runtime has two or more Ps.
    pub shared_work: usize,
    /// Bytes of large malloc blocks (256 KiB and up) that the last cycle's mark termination did
    /// not scan again: the kernel saw their pages unwritten since marking scanned them.
    pub rescan_skipped: usize,
    /// Bytes of Gc objects freed by all cycles.
    pub total_freed: u64,
    /// Gc objects freed by all cycles (Go's `Frees`, Gc part).
    pub freed_objects: u64,
    /// GOGC in force.
    pub percent: i32,
    /// The memory limit in force (`usize::MAX` when none).
    pub memory_limit: usize,
    /// Whether the CPU limiter has set the memory limit aside: the collector took more than
    /// half of the Ps' time for the last second's worth of it, so the goal follows GOGC alone
    /// until the mutators have had their share again (Go 1.19's GC CPU limiter).
    pub cpu_limited: bool,
    /// Cycles that ended with the CPU limiter on.
    pub cpu_limited_cycles: u64,
    /// CPU time the collector took, by phase, over all cycles.
    pub cpu: GcCpu,
    /// The share of the Ps' time the collector took since its first cycle began (Go's
    /// `GCCPUFraction`): `cpu.total()` over the wall time since then times the Ps.
    pub cpu_fraction: f64,
}

/// CPU time the collector took, by phase (the CPU half of Go's gctrace line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcCpu {
    /// Stop-the-world pauses, counted as Go counts them: each pause's wall time times the Ps it
    /// held up.
    pub pauses: Duration,
    /// Concurrent marking: the CPU time of the mark worker and the mark helper threads between
    /// the pauses, busy waiting included.
    pub marking: Duration,
    /// Condemning and sweeping (freeing the dead, running their drop glue), with the world going.
    pub sweeping: Duration,
}

impl GcCpu {
    /// All of it.
    pub fn total(&self) -> Duration {
        self.pauses + self.marking + self.sweeping
    }
}

/// The CPU time the calling thread has used.
pub(crate) use goro_alloc::thread_cpu_time as thread_cpu;

impl GcStats {
    /// The most recent pause, if any cycle ran.
    pub fn last_pause(&self) -> Option<Duration> {
        self.pauses.last().copied()
    }
}

/// A duration in milliseconds with microsecond digits, as gctrace prints them: `0.350 ms`.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} ms", self.0.as_secs_f64() * 1e3)
    }
}

/// Four lines: the cycles and their pauses, the heap, what all cycles freed, the settings.
///
/// ```text
/// gc: 12 cycles (3 forced); pauses 4.210 ms in total, the last 0.350 ms, the longest of the last 12 0.512 ms
/// heap: 12.3 MiB Gc and 2.0 MiB malloc now, the next cycle at 16.0 MiB; the last cycle found 4.0 MiB live in 10234 objects and scanned 256.0 KiB of roots
/// freed: 120.5 MiB in 2000000 objects by all cycles
/// settings: GOGC=100, memory limit none
/// ```
impl fmt::Display for GcStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last_pause() {
            None => writeln!(f, "gc: no cycle yet")?,
            Some(last) => {
                let longest = self.pauses.iter().max().copied().unwrap_or(last);
                writeln!(
                    f,
                    "gc: {} cycles ({} forced); pauses {} in total, the last {}, the longest of \
                     the last {} {}",
                    self.cycles,
                    self.forced_cycles,
                    Millis(self.pause_total),
                    Millis(last),
                    self.pauses.len(),
                    Millis(longest),
                )?;
                writeln!(
                    f,
                    "cpu: {} in pauses, {} marking, {} sweeping: {:.1} % of the Ps' time",
                    Millis(self.cpu.pauses),
                    Millis(self.cpu.marking),
                    Millis(self.cpu.sweeping),
                    self.cpu_fraction * 100.0,
                )?;
            }
        }
        write!(
            f,
            "heap: {} Gc and {} malloc now, the next cycle at {}",
            Bytes(self.heap_alloc),
            Bytes(self.malloc_in_use),
            Bytes(self.heap_goal),
        )?;
        if self.cycles > 0 {
            write!(
                f,
                "; the last cycle found {} live in {} objects and scanned {} of roots",
                Bytes(self.heap_live),
                self.live_objects,
                Bytes(self.roots_scanned),
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "freed: {} in {} objects by all cycles",
            Bytes(usize::try_from(self.total_freed).unwrap_or(usize::MAX)),
            self.freed_objects,
        )?;
        f.write_str("settings: GOGC=")?;
        if self.percent < 0 {
            f.write_str("off")?;
        } else {
            write!(f, "{}", self.percent)?;
        }
        f.write_str(", memory limit ")?;
        if self.memory_limit == usize::MAX {
            f.write_str("none")
        } else if self.cpu_limited {
            write!(
                f,
                "{} (set aside by the CPU limiter)",
                Bytes(self.memory_limit)
            )
        } else {
            write!(f, "{}", Bytes(self.memory_limit))
        }
    }
}

struct Counters {
    stats: GcStats,
    started: Option<Instant>,
    /// The Ps' time since `started` up to the last cycle's end (wall time times Ps, summed
    /// cycle by cycle, so that a change of the P count is weighed as it happened).
    available: Duration,
    /// When the last cycle ended.
    last_end: Option<Instant>,
}

static COUNTERS: Mutex<Counters> = Mutex::new(Counters {
    stats: stats_zero(),
    started: None,
    available: Duration::ZERO,
    last_end: None,
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
        malloc_in_use: 0,
        heap_goal: 0,
        roots_scanned: 0,
        globals_scanned: 0,
        shared_work: 0,
        rescan_skipped: 0,
        total_freed: 0,
        freed_objects: 0,
        percent: 100,
        memory_limit: usize::MAX,
        cpu_limited: false,
        cpu_limited_cycles: 0,
        cpu: GcCpu {
            pauses: Duration::ZERO,
            marking: Duration::ZERO,
            sweeping: Duration::ZERO,
        },
        cpu_fraction: 0.0,
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
    stats.malloc_in_use = goro_alloc::malloc_spans_in_use_bytes();
    stats.heap_goal = pacer::goal();
    stats.percent = pacer::percent();
    stats.memory_limit = pacer::memory_limit();
    (stats.cpu_limited, stats.cpu_limited_cycles) = pacer::limiter_state();
    stats.rescan_skipped = crate::tracked::last_skipped();
    stats
}

/// What one cycle measured.
pub(crate) struct CycleReport {
    pub(crate) forced: bool,
    pub(crate) heap_before: usize,
    /// The first pause: from the request to the restart (the world's stop, the roots).
    pub(crate) start_pause: Duration,
    /// Concurrent marking, from the first pause to the second.
    pub(crate) mark: Duration,
    /// The second pause (mark termination and condemning).
    pub(crate) end_pause: Duration,
    pub(crate) sweep: Duration,
    pub(crate) live_bytes: usize,
    pub(crate) live_objects: usize,
    pub(crate) freed_bytes: usize,
    pub(crate) freed_objects: usize,
    pub(crate) roots: usize,
    /// The part of `roots` that was static data.
    pub(crate) globals: usize,
    pub(crate) shared_work: usize,
    pub(crate) procs: usize,
    pub(crate) began: Instant,
    /// CPU time of the mark worker and helper threads during concurrent marking.
    pub(crate) marking_cpu: Duration,
    /// CPU time of condemning and sweeping.
    pub(crate) sweeping_cpu: Duration,
}

pub(crate) fn record(report: &CycleReport) {
    let mut counters = COUNTERS.lock().unwrap_or_else(|poison| poison.into_inner());
    let started = *counters.started.get_or_insert(report.began);
    // Two pauses per cycle, as Go records them; marking and the sweep run with the world going.
    let pause = report.start_pause + report.end_pause;
    let procs = u32::try_from(report.procs.max(1)).unwrap_or(u32::MAX);
    let end = report.began + pause + report.mark + report.sweep;
    let since = counters.last_end.unwrap_or(started).min(report.began);
    let window = end.saturating_duration_since(since) * procs;
    counters.available += window;
    counters.last_end = Some(end);
    let available = counters.available;
    let stats = &mut counters.stats;
    let collector = pause * procs + report.marking_cpu + report.sweeping_cpu;
    pacer::account_cycle_cpu(collector, window, report.procs);
    stats.cpu.pauses += pause * procs;
    stats.cpu.marking += report.marking_cpu;
    stats.cpu.sweeping += report.sweeping_cpu;
    stats.cpu_fraction = stats.cpu.total().as_secs_f64() / available.as_secs_f64().max(1e-9);
    stats.cycles += 1;
    stats.forced_cycles += u64::from(report.forced);
    stats.pause_total += pause;
    for one in [report.start_pause, report.end_pause] {
        if stats.pauses.len() == PAUSE_HISTORY {
            stats.pauses.remove(0);
        }
        stats.pauses.push(one);
    }
    stats.heap_live = report.live_bytes;
    stats.live_objects = report.live_objects;
    stats.roots_scanned = report.roots;
    stats.globals_scanned = report.globals;
    stats.shared_work = report.shared_work;
    stats.total_freed += report.freed_bytes as u64;
    stats.freed_objects += report.freed_objects as u64;
    if !TRACE.load(Ordering::Relaxed) {
        return;
    }
    let elapsed = end.duration_since(started);
    let share = 100.0 * counters.stats.cpu_fraction;
    let cycles = counters.stats.cycles;
    // Printed after the counters' lock is released: a thread that holds stderr's lock and then
    // reads `stats()` would otherwise wait for us while we wait for it.
    drop(counters);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mb = |b: usize| b >> 20;
    // Written, not `eprintln!`ed: a closed stderr must not panic the collector's thread.
    let _ = writeln!(
        std::io::stderr(),
        "gc {} @{:.3}s {:.0}%: {:.3}+{:.3}+{:.3} ms clock, {:.3}+{:.3}+{:.3} ms cpu, \
         {}->{}->{} MB, {} MB goal, {} MB stacks, {} MB globals, {} P{}",
        cycles,
        elapsed.as_secs_f64(),
        share,
        ms(report.start_pause),
        ms(report.mark),
        ms(report.end_pause),
        ms(report.start_pause * procs),
        ms(report.marking_cpu),
        ms(report.end_pause * procs),
        mb(report.heap_before),
        mb(report.heap_before),
        mb(report.live_bytes),
        mb(pacer::goal()),
        mb(report.roots.saturating_sub(report.globals)),
        mb(report.globals),
        report.procs,
        if report.forced { " (forced)" } else { "" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn pauses_print_in_milliseconds() {
        assert_eq!(Millis(micros(350)).to_string(), "0.350 ms");
        assert_eq!(
            Millis(Duration::from_millis(1234)).to_string(),
            "1234.000 ms"
        );
    }

    #[test]
    fn stats_before_any_cycle_print_the_settings_and_no_pause() {
        let stats = stats_zero();
        assert_eq!(
            stats.to_string(),
            "gc: no cycle yet\n\
             heap: 0 B Gc and 0 B malloc now, the next cycle at 0 B\n\
             freed: 0 B in 0 objects by all cycles\n\
             settings: GOGC=100, memory limit none"
        );
    }

    #[test]
    fn stats_after_cycles_print_pauses_heap_and_frees_with_units() {
        let stats = GcStats {
            cycles: 12,
            forced_cycles: 3,
            pause_total: micros(4210),
            pauses: vec![micros(200), micros(512), micros(350)],
            heap_live: 4 << 20,
            live_objects: 10234,
            heap_alloc: (12 << 20) + (300 << 10),
            malloc_in_use: 2 << 20,
            heap_goal: 16 << 20,
            roots_scanned: 256 << 10,
            globals_scanned: 64 << 10,
            shared_work: 0,
            rescan_skipped: 0,
            total_freed: (120 << 20) + (512 << 10),
            freed_objects: 2_000_000,
            percent: 100,
            memory_limit: 512 << 20,
            cpu_limited: false,
            cpu_limited_cycles: 0,
            cpu: GcCpu {
                pauses: micros(8420),
                marking: micros(20_000),
                sweeping: micros(5_500),
            },
            cpu_fraction: 0.125,
        };
        assert_eq!(
            stats.to_string(),
            "gc: 12 cycles (3 forced); pauses 4.210 ms in total, the last 0.350 ms, the \
             longest of the last 3 0.512 ms\n\
             cpu: 8.420 ms in pauses, 20.000 ms marking, 5.500 ms sweeping: 12.5 % of the Ps' \
             time\n\
             heap: 12.3 MiB Gc and 2.0 MiB malloc now, the next cycle at 16.0 MiB; the last cycle \
             found 4.0 MiB live \
             in 10234 objects and scanned 256.0 KiB of roots\n\
             freed: 120.5 MiB in 2000000 objects by all cycles\n\
             settings: GOGC=100, memory limit 512.0 MiB"
        );
    }

    #[test]
    fn an_unset_memory_limit_reads_none_and_a_negative_percent_off() {
        let stats = GcStats {
            percent: -1,
            memory_limit: usize::MAX,
            ..stats_zero()
        };
        let text = stats.to_string();
        assert!(
            text.ends_with("settings: GOGC=off, memory limit none"),
            "{text}"
        );
        assert!(!text.contains("18446744073709551615"), "{text}");
    }

    #[test]
    fn a_memory_limit_the_cpu_limiter_set_aside_says_so() {
        let stats = GcStats {
            memory_limit: 64 << 20,
            cpu_limited: true,
            ..stats_zero()
        };
        let text = stats.to_string();
        assert!(
            text.ends_with("memory limit 64.0 MiB (set aside by the CPU limiter)"),
            "{text}"
        );
    }
}
