//! Timers, one heap per P (Go's per-P timers since 1.14): `sleep`, `after`, `tick`.
//!
//! A timer is a deadline and a callback. `sleep` parks the goroutine with a timer whose callback
//! readies it; `after` and `tick` return channels that a timer's callback fills. Timers go on the
//! current P's heap (P 0's from a thread that is not an M). An M runs the expired timers of its own
//! P every time it looks for work; an M about to go idle runs expired timers of every P and sleeps
//! no longer than the earliest deadline of any P, so a timer fires even when its P's M is busy.
//! Callbacks run on an M's system stack with no lock held; they must not block.
//!
//! Layering: this file is the heap only, and imports nothing of the scheduler (a P holds its
//! `Timers`). Arming a timer for the caller is `Sched::add_timer` (`proc`, which wakes an idle M);
//! `sleep` is in `park`, and `after`/`tick` are in `chan`, which build on it.

use crate::lock::{Rank, RankedGuard, RankedMutex, lock};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// What a timer does when it fires.
pub(crate) type Callback = Box<dyn FnOnce() + Send>;

pub(crate) struct Timer {
    when: Instant,
    /// Breaks ties in insertion order.
    seq: u64,
    callback: Callback,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.when, self.seq) == (other.when, other.seq)
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.when, other.seq).cmp(&(self.when, self.seq))
    }
}

/// One P's timers.
pub(crate) struct Timers {
    heap: RankedMutex<BinaryHeap<Timer>>,
    /// Timers in `heap`, readable without the lock: an M looks at its P's timers on every
    /// schedule, and most of the time there are none. Written under the lock; a stale zero only
    /// delays a timer until the next look, which idle Ms bound by the deadline they sleep to.
    pending: AtomicUsize,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            heap: RankedMutex::new(Rank::TimerHeap, BinaryHeap::new()),
            pending: AtomicUsize::new(0),
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A P's timer heap, locked: the proof [`Timers::push_locked`] asks for.
pub(crate) type Heap<'a> = RankedGuard<'a, BinaryHeap<Timer>>;

impl Timers {
    /// Locks the heap (for a caller that must park under its lock, as `sleep` does).
    pub(crate) fn lock(&self) -> Heap<'_> {
        lock(&self.heap)
    }

    /// Adds a timer.
    pub(crate) fn push(&self, when: Instant, callback: Callback) {
        self.push_locked(&mut self.lock(), when, callback);
    }

    /// Adds a timer to this P's heap, which the caller has locked (`heap` is its guard).
    pub(crate) fn push_locked(&self, heap: &mut Heap<'_>, when: Instant, callback: Callback) {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        heap.push(Timer {
            when,
            seq,
            callback,
        });
        self.pending.store(heap.len(), Ordering::Relaxed);
    }

    /// Whether any timer may be pending (no lock).
    #[inline]
    pub(crate) fn maybe_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) != 0
    }

    /// Runs every timer due by `now`; returns how many fired.
    pub(crate) fn run_expired(&self, now: Instant) -> usize {
        let mut fired = 0;
        loop {
            let timer = {
                let mut heap = lock(&self.heap);
                let due = match heap.peek() {
                    Some(first) if first.when <= now => heap.pop(),
                    _ => None,
                };
                self.pending.store(heap.len(), Ordering::Relaxed);
                due
            };
            let Some(timer) = timer else { return fired };
            (timer.callback)();
            fired += 1;
        }
    }

    /// The earliest deadline, if any timer is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        lock(&self.heap).peek().map(|t| t.when)
    }

    /// Whether any timer is pending.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.heap).is_empty()
    }
}
