//! The GOGC pacer: when the next cycle starts.
//!
//! As in Go 1.18, the heap goal after a cycle is
//!
//! ```text
//! goal = live + (live + roots) * GOGC / 100      (at least 4 MiB * GOGC / 100)
//! ```
//!
//! where `live` is the Gc bytes the cycle marked plus the malloc heap in use once its sweep has
//! run (the spans holding `Box`, `Vec`, ... blocks), and `roots` the bytes of root memory it
//! scanned (stacks, G structs), since scanning roots is work that grows with them just as marking
//! does. The malloc heap counts as Go counts its whole heap: Gc objects that own 48 MB of `Vec`s
//! beside a 1 MiB Gc heap have every cycle scan the 48 MB, and a goal of 4 MiB had the collector
//! take 85 % of the CPU. The heap measured against the goal is the same sum: the Gc heap (the
//! bytes of allocated slots: allocation adds to it, the cycle's frees take off it as they are
//! made) plus the malloc spans in use now. Once the heap's spans in use pass the trigger, a
//! thread that carves a span compares the heap at its next Gc allocation rather than at its
//! next 64 KiB batch: Gc objects that each own a 1 MiB buffer would otherwise grow the heap by
//! 2 GiB between two looks. A cycle starts when that heap has covered 70 % of the
//! way from `live` to the goal, so that concurrent marking ends near the goal; an allocation
//! past the goal while a cycle runs waits for it a little, and one an eighth past it waits
//! until the cycle has decided what is dead. GOGC < 0
//! ("off") disables the trigger; a memory limit (GOMEMLIMIT) caps the goal, but never below
//! `live + live / 8`.
//!
//! A heap that cannot fit under its memory limit would still make the collector run cycle after
//! cycle. As in Go 1.19, a CPU limiter caps it: a bucket that holds one second of CPU time per P
//! fills with the collector's CPU time (its pauses times the Ps, marking, condemning, sweeping)
//! and drains with the rest of the Ps' time. Once the bucket is full, the memory limit no longer
//! lowers the goal (GOGC alone sets it, or nothing when GOGC is off) until the mutators have
//! drained it to half: the heap grows past the limit instead of the collector taking more than
//! about half of the Ps' time. (Go's limiter turns assists off mid-cycle; here a cycle's cost is
//! paid in whole, so the limiter spaces cycles out instead, with the half-bucket as hysteresis.)
//!
//! Allocation is counted per thread and added here in batches (see `collector::allocate`), so the
//! trigger fires within one batch per thread of the goal. The heap is exact, not reset by each
//! cycle, so every slot must be counted at its real size (an over-aligned type's too) and a
//! thread's last, partial batch when it exits; and at the end of each cycle the count is kept
//! between the bytes found live and the bytes of the spans in use, so that no miscount can
//! outlive a cycle (tests/pacer_drift.rs).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Go's heap minimum: the goal never drops below this times GOGC / 100.
pub const HEAP_MINIMUM: usize = 4 << 20;

static PERCENT: AtomicI32 = AtomicI32::new(100);
static MEMORY_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The malloc heap in use after the last cycle's sweep (see the module docs).
static MALLOC_LIVE: AtomicUsize = AtomicUsize::new(0);
static ROOTS: AtomicUsize = AtomicUsize::new(0);
/// Bytes in allocated Gc slots: added in batches as threads allocate, taken off as the cycle's
/// condemning and sweeping free slots. Wrapping, read as signed: a slot freed before the batch
/// that allocated it was counted may take it below zero for a moment.
static HEAP: AtomicUsize = AtomicUsize::new(0);
static GOAL: AtomicUsize = AtomicUsize::new(HEAP_MINIMUM);
static TRIGGER: AtomicUsize = AtomicUsize::new(trigger_for(0, HEAP_MINIMUM));

/// How far from the live heap to the goal a cycle starts, in tenths: marking runs beside the
/// mutators, which keep allocating, so it starts before the goal (Go's trigger bounds are 0.7
/// and 0.95 of the runway).
const TRIGGER_TENTHS: usize = 7;

const fn trigger_for(live: usize, goal: usize) -> usize {
    if goal == usize::MAX || goal <= live {
        return goal;
    }
    live + (goal - live) / 10 * TRIGGER_TENTHS
}

/// Sets GOGC (Go's `debug.SetGCPercent`): a cycle starts when the heap has grown by `percent`
/// percent over the live heap; a negative value turns automatic collection off. Returns the
/// previous setting.
pub fn set_percent(percent: i32) -> i32 {
    let previous = PERCENT.swap(percent, Ordering::Relaxed);
    recompute_goal();
    previous
}

/// Sets a soft limit on the heap in bytes, Gc objects and malloc blocks together (Go's
/// `debug.SetMemoryLimit`); `usize::MAX` means none. Returns the previous limit.
pub fn set_memory_limit(bytes: usize) -> usize {
    let previous = MEMORY_LIMIT.swap(bytes, Ordering::Relaxed);
    recompute_goal();
    previous
}

/// The current GOGC setting.
pub fn percent() -> i32 {
    PERCENT.load(Ordering::Relaxed)
}

/// The current memory limit (`usize::MAX` when none).
pub fn memory_limit() -> usize {
    MEMORY_LIMIT.load(Ordering::Relaxed)
}

/// The heap size at which the next cycle starts.
pub fn goal() -> usize {
    GOAL.load(Ordering::Relaxed)
}

/// The heap past which allocation waits for the cycle under way to decide what is dead: an
/// eighth over the goal. Between the goal and here, each allocation batch waits a little.
pub(crate) fn ceiling() -> usize {
    let goal = goal();
    goal.saturating_add(goal / 8)
}

/// The Gc heap now: the bytes of allocated slots, dead ones not yet freed included (allocation
/// is counted in batches per thread). A cycle's frees count as they are made, so an allocation
/// waiting for the cycle at the goal goes on as soon as condemning has freed enough.
pub fn heap_alloc() -> usize {
    (HEAP.load(Ordering::Relaxed) as isize).max(0) as usize
}

pub(crate) fn add_allocated(bytes: usize) {
    HEAP.fetch_add(bytes, Ordering::Relaxed);
}

pub(crate) fn add_freed(bytes: usize) {
    HEAP.fetch_sub(bytes, Ordering::Relaxed);
}

/// The heap the goal is measured against: the Gc heap ([`heap_alloc`]) plus the malloc spans in
/// use.
pub fn heap_paced() -> usize {
    heap_alloc().saturating_add(goro_alloc::malloc_spans_in_use_bytes())
}

/// Whether the heap has reached the point where the next cycle starts.
pub(crate) fn should_trigger() -> bool {
    if LIMITING.load(Ordering::Relaxed) {
        drain_limiter();
    }
    heap_paced() >= TRIGGER.load(Ordering::Relaxed)
}

/// The CPU limiter's bucket (see the module docs).
struct Limiter {
    bucket: CpuBucket,
    /// When the bucket was last brought up to date, and the Ps then.
    updated: Option<Instant>,
    procs: u32,
}

static LIMITER: Mutex<Limiter> = Mutex::new(Limiter {
    bucket: CpuBucket {
        fill: Duration::ZERO,
        limiting: false,
    },
    updated: None,
    procs: 1,
});

/// Whether the limiter is on (`CpuBucket::limiting`): the memory limit is set aside.
static LIMITING: AtomicBool = AtomicBool::new(false);

/// Cycles that ended with the limiter on (Go's `/gc/limiter/last-enabled:gc-cycle`, counted).
static LIMITED_CYCLES: AtomicU64 = AtomicU64::new(0);

/// CPU time one P adds to the bucket's capacity (Go's `capacityPerProc`).
const CAPACITY_PER_P: Duration = Duration::from_secs(1);

/// The limiter's arithmetic, separate so it can be tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuBucket {
    fill: Duration,
    /// On from the moment the bucket is full until it is drained to half.
    limiting: bool,
}

impl CpuBucket {
    /// Adds `collector` CPU time out of `available` Ps' time (the rest was the mutators'),
    /// capped at `capacity`; returns whether the limiter is on.
    fn add(&mut self, collector: Duration, available: Duration, capacity: Duration) -> bool {
        let mutators = available.saturating_sub(collector);
        self.fill = (self.fill + collector)
            .saturating_sub(mutators)
            .min(capacity);
        self.limiting = if self.limiting {
            self.fill > capacity / 2
        } else {
            self.fill >= capacity
        };
        self.limiting
    }
}

/// Called as each cycle ends with the CPU time the collector took for it and the Ps' time
/// since the last cycle ended (`stats::record` measures both).
pub(crate) fn account_cycle_cpu(collector: Duration, available: Duration, procs: usize) {
    let mut limiter = LIMITER.lock().unwrap_or_else(|poison| poison.into_inner());
    let procs = u32::try_from(procs.max(1)).unwrap_or(u32::MAX);
    limiter.procs = procs;
    limiter.updated = Some(Instant::now());
    let limiting = limiter
        .bucket
        .add(collector, available, CAPACITY_PER_P * procs);
    if limiting {
        LIMITED_CYCLES.fetch_add(1, Ordering::Relaxed);
    }
    if LIMITING.swap(limiting, Ordering::Relaxed) != limiting {
        recompute_goal();
    }
}

/// While the limiter is on: drains the bucket by the Ps' time since it was last brought up to
/// date (no cycle ran since, or one is under way and adds its CPU time when it ends), and sets
/// the memory limit back in force once the bucket is down to half.
fn drain_limiter() {
    let Ok(mut limiter) = LIMITER.try_lock() else {
        return;
    };
    let now = Instant::now();
    let Some(updated) = limiter.updated else {
        return;
    };
    let procs = limiter.procs;
    let idle = now.saturating_duration_since(updated) * procs;
    // A millisecond at least, so that allocation batches do not each take the lock.
    if idle < Duration::from_millis(1) {
        return;
    }
    limiter.updated = Some(now);
    if !limiter
        .bucket
        .add(Duration::ZERO, idle, CAPACITY_PER_P * procs)
    {
        LIMITING.store(false, Ordering::Relaxed);
        recompute_goal();
    }
}

/// Whether the CPU limiter has set the memory limit aside, and how many cycles ended with it on.
pub(crate) fn limiter_state() -> (bool, u64) {
    (
        LIMITING.load(Ordering::Relaxed),
        LIMITED_CYCLES.load(Ordering::Relaxed),
    )
}

/// Called at the end of each cycle with what it found: its live bytes, its root bytes, and the
/// bytes of the Gc spans in use (which hold every allocated slot).
pub(crate) fn cycle_done(live: usize, roots: usize, spans_in_use: usize) {
    LIVE.store(live, Ordering::Relaxed);
    ROOTS.store(roots, Ordering::Relaxed);
    // The counted heap cannot be below what the cycle found live, nor above what the spans in
    // use can hold: whatever a count missed (a slot size told wrong, a thread's batch lost) is
    // put right here, so no drift outlives a cycle.
    let counted = HEAP.load(Ordering::Relaxed) as isize;
    let bounded = counted.clamp(live as isize, spans_in_use.max(live) as isize);
    HEAP.fetch_add(bounded.wrapping_sub(counted) as usize, Ordering::Relaxed);
    recompute_goal();
}

/// Called once a cycle's sweep has dropped what it freed and given back the spans it emptied:
/// the malloc heap in use then counts as live for the next goal.
pub(crate) fn malloc_settled(bytes: usize) {
    MALLOC_LIVE.store(bytes, Ordering::Relaxed);
    recompute_goal();
}

fn recompute_goal() {
    let live = LIVE
        .load(Ordering::Relaxed)
        .saturating_add(MALLOC_LIVE.load(Ordering::Relaxed));
    let roots = ROOTS.load(Ordering::Relaxed);
    let limit = if LIMITING.load(Ordering::Relaxed) {
        usize::MAX
    } else {
        memory_limit()
    };
    let goal = compute_goal(live, roots, percent(), limit);
    GOAL.store(goal, Ordering::Relaxed);
    let trigger = trigger_for(live, goal);
    TRIGGER.store(trigger, Ordering::Relaxed);
    // A span carved past the trigger makes its thread's next Gc allocation look
    // (`collector::pressed`), so that malloc blocks alone bring a cycle on.
    goro_alloc::set_pressure_threshold(trigger);
}

/// The goal formula, separate so it can be tested.
pub(crate) fn compute_goal(live: usize, roots: usize, percent: i32, limit: usize) -> usize {
    let by_percent = if percent < 0 {
        usize::MAX
    } else {
        let percent = percent as usize;
        let growth = (live + roots).saturating_mul(percent) / 100;
        (live + growth).max(HEAP_MINIMUM.saturating_mul(percent) / 100)
    };
    if limit == usize::MAX {
        return by_percent;
    }
    by_percent.min(limit).max(live + live / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_follows_gogc() {
        assert_eq!(compute_goal(0, 0, 100, usize::MAX), HEAP_MINIMUM);
        assert_eq!(compute_goal(100 << 20, 0, 100, usize::MAX), 200 << 20);
        assert_eq!(
            compute_goal(100 << 20, 10 << 20, 100, usize::MAX),
            210 << 20
        );
        assert_eq!(compute_goal(100 << 20, 0, 50, usize::MAX), 150 << 20);
        assert_eq!(compute_goal(0, 0, 200, usize::MAX), 2 * HEAP_MINIMUM);
    }

    #[test]
    fn negative_percent_turns_the_trigger_off() {
        assert_eq!(compute_goal(100 << 20, 0, -1, usize::MAX), usize::MAX);
    }

    #[test]
    fn the_cpu_bucket_fills_with_the_collectors_time_and_drains_with_the_rest() {
        let ms = Duration::from_millis;
        let capacity = ms(2_000);
        let mut bucket = CpuBucket {
            fill: ms(0),
            limiting: false,
        };
        // The collector took 40 % of the Ps' time: the bucket stays empty.
        assert!(!bucket.add(ms(40), ms(100), capacity));
        assert_eq!(bucket.fill, ms(0));
        // 75 %: it fills by the difference, 50 ms of the Ps' 100 each time.
        assert!(!bucket.add(ms(75), ms(100), capacity));
        assert_eq!(bucket.fill, ms(50));
        for _ in 0..38 {
            assert!(!bucket.add(ms(75), ms(100), capacity));
        }
        assert_eq!(bucket.fill, ms(1_950));
        assert!(
            bucket.add(ms(75), ms(100), capacity),
            "full: the limiter is on"
        );
        assert!(
            bucket.add(ms(75), ms(100), capacity),
            "and stays at its capacity"
        );
        assert_eq!(bucket.fill, capacity);
        // Mutator time alone drains it; the limiter stays on down to half.
        assert!(bucket.add(ms(0), ms(999), capacity));
        assert_eq!(bucket.fill, ms(1_001));
        assert!(
            !bucket.add(ms(0), ms(1), capacity),
            "half: the limiter is off"
        );
        // And comes on again only once the bucket is full.
        assert!(!bucket.add(ms(75), ms(100), capacity));
        assert_eq!(bucket.fill, ms(1_050));
    }

    #[test]
    fn memory_limit_caps_the_goal_but_leaves_headroom() {
        assert_eq!(compute_goal(100 << 20, 0, 100, 150 << 20), 150 << 20);
        assert_eq!(
            compute_goal(100 << 20, 0, 100, 50 << 20),
            (100 << 20) + (100 << 20) / 8
        );
        assert_eq!(compute_goal(100 << 20, 0, -1, 300 << 20), 300 << 20);
    }
}
