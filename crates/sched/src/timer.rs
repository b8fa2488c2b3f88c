//! Timers, one heap per P (Go's per-P timers since 1.14): `sleep`, `after`, `tick`.
//!
//! A timer is a deadline and a callback. `sleep` parks the goroutine with a timer whose callback
//! readies it; `after` and `tick` return channels that a timer's callback fills. Timers go on the
//! current P's heap (P 0's from a thread that is not an M). An M runs the expired timers of its own
//! P every time it looks for work; an M about to go idle runs expired timers of every P and sleeps
//! no longer than the earliest deadline of any P, so a timer fires even when its P's M is busy.
//! Callbacks run on an M's system stack with no lock held; they must not block.

use crate::chan::{self, Receiver, Sender};
use crate::park::{Waiter, park_releasable};
use crate::proc::{self, Sched, lock};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a timer does when it fires.
pub(crate) type Callback = Box<dyn FnOnce() + Send>;

struct Timer {
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
#[derive(Default)]
pub(crate) struct Timers {
    heap: Mutex<BinaryHeap<Timer>>,
    /// Timers in `heap`, readable without the lock: an M looks at its P's timers on every
    /// schedule, and most of the time there are none. Written under the lock; a stale zero only
    /// delays a timer until the next look, which idle Ms bound by the deadline they sleep to.
    pending: AtomicUsize,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Timers {
    fn push(&self, when: Instant, callback: Callback) {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut heap = lock(&self.heap);
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

/// Arms a timer on the caller's P (or P 0), waking an idle M to account for it.
pub(crate) fn add(sched: &Sched, when: Instant, callback: Callback) {
    sched.timers_for_caller().push(when, callback);
    sched.timer_added();
}

/// Blocks the calling goroutine for at least `duration` (Go's `time.Sleep`); a thread that is not
/// a goroutine sleeps with `std::thread::sleep`. Sleeping is a safe point.
pub fn sleep(duration: Duration) {
    crate::stw::safe_point();
    let (Some(sched), Some(_)) = (proc::current_sched(), proc::current_g()) else {
        std::thread::sleep(duration);
        return;
    };
    if duration.is_zero() {
        proc::yield_now();
        return;
    }
    let when = Instant::now() + duration;
    let waiter = Waiter::current();
    let timers = sched.timers_for_caller();
    // Queue the timer and park under the heap's lock: the callback (which readies us) needs that
    // lock, so it cannot run before we are parked.
    let mut heap = lock(&timers.heap);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    heap.push(Timer {
        when,
        seq,
        callback: Box::new(move || waiter.wake()),
    });
    timers.pending.store(heap.len(), Ordering::Relaxed);
    sched.timer_added();
    // The waker is a closure in the timer heap: nothing reads our stack.
    park_releasable(heap, None);
}

/// A channel that receives the time once, after `duration` (Go's `time.After`). Use it in
/// `select!` for a timeout.
///
/// # Panics
/// Panics outside a running goro runtime.
pub fn after(duration: Duration) -> Receiver<Instant> {
    let sched = proc::current_sched()
        .unwrap_or_else(|| panic!("goro::chan::after called outside a goro runtime"));
    let (tx, rx) = chan::channel(1);
    add(
        sched,
        Instant::now() + duration,
        Box::new(move || drop(tx.try_send(Instant::now()))),
    );
    rx
}

/// A channel that receives the time every `period` (Go's `time.Tick`); ticks a slow receiver
/// misses are dropped, and the ticker stops once every receiver is gone.
///
/// # Panics
/// Panics outside a running goro runtime, or if `period` is zero.
pub fn tick(period: Duration) -> Receiver<Instant> {
    assert!(
        !period.is_zero(),
        "goro::chan::tick: non-positive interval for tick"
    );
    let sched = proc::current_sched()
        .unwrap_or_else(|| panic!("goro::chan::tick called outside a goro runtime"));
    let (tx, rx) = chan::channel(1);
    arm_tick(sched, tx, Instant::now() + period, period);
    rx
}

fn arm_tick(sched: &'static Sched, tx: Sender<Instant>, when: Instant, period: Duration) {
    add(
        sched,
        when,
        Box::new(move || {
            if tx.has_receivers() {
                drop(tx.try_send(Instant::now()));
                arm_tick(sched, tx, when + period, period);
            }
        }),
    );
}
