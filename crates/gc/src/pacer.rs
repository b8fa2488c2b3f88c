//! The GOGC pacer: when the next cycle starts.
//!
//! As in Go 1.18, the heap goal after a cycle is
//!
//! ```text
//! goal = live + (live + roots) * GOGC / 100      (at least 4 MiB * GOGC / 100)
//! ```
//!
//! where `live` is the Gc bytes the cycle marked and `roots` the bytes of root memory it scanned
//! (stacks, G structs), since scanning roots is work that grows with them just as marking does. A
//! cycle starts when the Gc heap (live bytes plus bytes allocated since) has covered 70 % of the
//! way from `live` to the goal, so that concurrent marking ends near the goal; an allocation
//! past the goal while a cycle runs waits for it a little, and one an eighth past it waits
//! until the cycle has decided what is dead. GOGC < 0
//! ("off") disables the trigger; a memory limit (GOMEMLIMIT) caps the goal, but never below
//! `live + live / 8`, so that a heap over its limit does not collect back-to-back forever (Go
//! bounds that case by capping the collector at half the CPU; this is the stop-the-world version's
//! equivalent).
//!
//! Allocation is counted per thread and added here in batches (see `collector::allocate`), so the
//! trigger fires within one batch per thread of the goal.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// Go's heap minimum: the goal never drops below this times GOGC / 100.
pub const HEAP_MINIMUM: usize = 4 << 20;

static PERCENT: AtomicI32 = AtomicI32::new(100);
static MEMORY_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static ROOTS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
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

/// Sets a soft limit on the Gc heap in bytes (Go's `debug.SetMemoryLimit`); `usize::MAX` means
/// none. Returns the previous limit.
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

/// The Gc heap now: live bytes at the last cycle plus bytes allocated since (counted in batches).
pub fn heap_alloc() -> usize {
    LIVE.load(Ordering::Relaxed) + ALLOCATED.load(Ordering::Relaxed)
}

pub(crate) fn add_allocated(bytes: usize) {
    ALLOCATED.fetch_add(bytes, Ordering::Relaxed);
}

/// Whether the heap has reached the point where the next cycle starts.
pub(crate) fn should_trigger() -> bool {
    heap_alloc() >= TRIGGER.load(Ordering::Relaxed)
}

/// Called at the end of each cycle with what it found.
pub(crate) fn cycle_done(live: usize, roots: usize) {
    LIVE.store(live, Ordering::Relaxed);
    ROOTS.store(roots, Ordering::Relaxed);
    ALLOCATED.store(0, Ordering::Relaxed);
    recompute_goal();
}

fn recompute_goal() {
    let live = LIVE.load(Ordering::Relaxed);
    let roots = ROOTS.load(Ordering::Relaxed);
    let goal = compute_goal(live, roots, percent(), memory_limit());
    GOAL.store(goal, Ordering::Relaxed);
    TRIGGER.store(trigger_for(live, goal), Ordering::Relaxed);
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
    fn memory_limit_caps_the_goal_but_leaves_headroom() {
        assert_eq!(compute_goal(100 << 20, 0, 100, 150 << 20), 150 << 20);
        assert_eq!(
            compute_goal(100 << 20, 0, 100, 50 << 20),
            (100 << 20) + (100 << 20) / 8
        );
        assert_eq!(compute_goal(100 << 20, 0, -1, 300 << 20), 300 << 20);
    }
}
