//! The sweeper thread: where condemned objects are dropped and freed.
//!
//! Drop glue is the only code of a user's type (through manual `Trace` impls; the derive forbids
//! `Drop`) that the collector runs. It runs on a thread of its own, after the world restarted,
//! so that a drop that waits (for a lock a goroutine holds, say) blocks neither the stopped
//! world nor the M of the goroutine that triggered the cycle, which may be the M the lock's
//! holder is bound to. Go sweeps in the background too (`bgsweep`).
//!
//! One job at a time: a cycle hands its sweep over and returns; the next cycle cannot start
//! before the sweep ends (the `COLLECTING` flag), which the job clears as it ends.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Condvar, Mutex};

/// A sweep, as the cycle that handed it over wrapped it (`collector::sweep` and its job).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

struct State {
    /// The job handed over and not yet taken.
    pending: Option<Job>,
    /// Whether a job is running.
    busy: bool,
    started: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    pending: None,
    busy: false,
    started: false,
});
static WORK: Condvar = Condvar::new();

/// The sweeper thread's kernel id, or 0 before it starts.
static TID: AtomicI32 = AtomicI32::new(0);

/// The kernel thread id of the sweeper thread, if it runs. It is goro's own: it holds no `Gc`
/// and wakes no goroutine but through drop glue.
pub fn sweeper_thread_id() -> Option<i32> {
    let tid = TID.load(Ordering::Relaxed);
    (tid != 0).then_some(tid)
}

/// Gives `job` to the sweeper to run once the job it runs now is over; returns false, keeping
/// nothing, when it runs none (or has one waiting already).
pub(crate) fn hand_over_after_current(job: Job) -> bool {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if !state.busy || state.pending.is_some() {
        return false;
    }
    state.pending = Some(job);
    true
}

/// Gives `job` to the sweeper.
pub(crate) fn hand_over(job: Job) {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    debug_assert!(state.pending.is_none(), "a sweep handed over twice");
    state.pending = Some(job);
    if !state.started {
        state.started = true;
        std::thread::Builder::new()
            .name("goro-sweeper".into())
            .spawn(sweeper_main)
            .unwrap_or_else(|error| {
                eprintln!("fatal error: goro-gc: cannot start the sweeper thread: {error}");
                std::process::abort()
            });
    }
    WORK.notify_all();
}

fn sweeper_main() {
    // SAFETY: gettid has no preconditions.
    TID.store(unsafe { libc::gettid() }, Ordering::Relaxed);
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let Some(job) = state.pending.take() else {
            state.busy = false;
            // SAFETY: a condition-variable wait only sleeps and takes its mutex back: the
            // collector may count this thread as stopped meanwhile (goro-alloc's `parked`).
            state = unsafe { goro_alloc::parked::while_parked(|| WORK.wait(state)) }
                .unwrap_or_else(|p| p.into_inner());
            continue;
        };
        state.busy = true;
        drop(state);
        job();
        // What drop glue freed sits in this thread's cache, linked through the free blocks; the
        // marker scans this thread's TLS, and a free list reached from there would be scanned
        // block by block, stale contents and all (keeping garbage alive). Give it back.
        goro_alloc::flush_thread_cache();
        state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    }
}
