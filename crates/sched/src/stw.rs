//! Stopping the world for the collector.
//!
//! Protocol (the pairing of `Sched::stopping` and `M::running`, both SeqCst):
//!
//! ```text
//! initiator (on its g0, running = false)      each other M
//!   generation odd, stopping = true              before running a G:  running = true
//!   for each M: wait until !running                                    if stopping: running = false, back off
//!   ... world stopped: every G switched out ...  at a safe point in a G: switch to g0 (Request::Stop),
//!   stopping = false, generation even, wake all                        running = false, notify, wait
//! ```
//!
//! The Ms that stopped, and every other thread the collector holds, wait on goro-alloc's world
//! generation, which the initiator makes odd before it sets `stopping`
//! ([`goro_alloc::parked::begin_stop`], which first waits for the last stop's restart) and even
//! again after it clears it, with one wake-up for them all
//! ([`goro_alloc::parked::restart_world`], which takes no lock: a thread stopped by signal may
//! hold `stw_lock`).
//!
//! The two SeqCst store-then-load pairs form a Dekker handshake: an M that stores `running = true`
//! either sees `stopping` and backs off, or the initiator sees it running and waits for it to reach
//! a safe point. An M that has set `running = false` has saved its goroutine's registers (the
//! switch happens first), so the collector reads every saved stack pointer after the handshake.
//! Ms that are idle or busy in g0 code (readying, unlocking) are not running a goroutine and so
//! count as stopped; they run no user code until the world restarts.
//!
//! A goroutine that never reaches a safe point within [`SAFE_POINT_GRACE`] (a loop without
//! channel operations, allocation or yields; a call inside `blocking`; a wait on a std lock) is
//! not waited for: the initiator goes on, and the collector stops its thread by signal along with
//! every other thread of the process (the facade's `world` module), where it stands. Runtime
//! paths that must not be cut in half defer that signal (`goro_alloc::nosuspend`).

use crate::lock::lock;
use crate::runtime2::{self, M, Request, Sched, StopRequest, current_m, switch_to_g0};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A safe point: if the world is stopping, the calling goroutine stops here until it restarts;
/// if sysmon flagged its time slice as used up, it yields.
#[inline]
pub fn safe_point() {
    if let Some(m) = current_m()
        && (m.sched().stopping.load(Ordering::Relaxed) || m.preempt.load(Ordering::Relaxed))
    {
        stop_at_safe_point(m);
    }
}

#[cold]
fn stop_at_safe_point(m: &M) {
    if !runtime2::is_goroutine() {
        return;
    }
    if m.sched().stopping.load(Ordering::Relaxed) {
        switch_to_g0(Request::Stop);
    } else {
        m.preempt.store(false, Ordering::Relaxed);
        switch_to_g0(Request::Yield);
    }
}

/// Stops every goroutine of the running runtime at a safe point (or for `SAFE_POINT_GRACE`,
/// 100 µs, after which the caller must stop the laggards by other means), runs `f` on this M's
/// system stack, and restarts them. `f` does not run if the runtime is ending (its
/// main goroutine has returned): the collector must not run once roots are leaving the
/// runtime's view.
///
/// # Panics
/// Panics if the caller is not a goroutine.
///
/// # Safety
/// May be called only if `f` neither unwinds (it runs on g0, where an unwind would leave the
/// world stopped) nor waits for a goroutine (they are stopped), nor parks, and likewise
/// `restarted`.
///
/// Once the world runs again, g0 calls `restarted` (if `f` ran) with how long it stood stopped
/// (from the moment goroutines were asked to stop until every thread was let go), before it
/// runs any goroutine: the caller may be resumed much later (another goroutine of its M may run
/// first and block the M).
pub unsafe fn stop_the_world(f: &mut dyn FnMut(), restarted: &mut dyn FnMut(Duration)) {
    if !runtime2::is_goroutine() {
        panic!("stop_the_world called outside a goroutine");
    }
    // SAFETY: only the lifetimes are erased; g0 runs the closures while this goroutine is
    // switched out, before it can resume, so the frame they borrow from is live throughout.
    let request = unsafe {
        StopRequest {
            cycle: std::mem::transmute::<*mut dyn FnMut(), *mut (dyn FnMut() + 'static)>(f),
            restarted: std::mem::transmute::<
                *mut dyn FnMut(Duration),
                *mut (dyn FnMut(Duration) + 'static),
            >(restarted),
        }
    };
    switch_to_g0(Request::StopTheWorld(&raw const request));
}

/// [`stop_the_world`] for a thread that is not a goroutine (the main thread, a std thread): stops
/// every goroutine of the running runtime at a safe point (or for `SAFE_POINT_GRACE`), runs
/// `f` on this thread, restarts them and calls `restarted` with how long the world stood
/// stopped. Returns false, without running either, if no runtime runs or it is ending. The
/// thread needs no P: a thread that holds a lock every goroutine waits for can still collect.
///
/// # Panics
/// Panics if the caller is a goroutine (use [`stop_the_world`]).
///
/// # Safety
/// As for [`stop_the_world`].
pub unsafe fn stop_the_world_from_thread(
    f: &mut dyn FnMut(),
    restarted: &mut dyn FnMut(Duration),
) -> bool {
    assert!(
        !runtime2::is_goroutine(),
        "stop_the_world_from_thread called on a goroutine"
    );
    let Some(sched) = runtime2::current_sched() else {
        return false;
    };
    if sched.shutdown.load(Ordering::SeqCst) {
        return false;
    }
    with_world_stopped(sched, f, restarted)
}

/// Stops the world, runs `f` unless the runtime is ending, restarts the world, and calls
/// `restarted` with how long it stood stopped if `f` ran; returns whether it did. On the
/// initiator's g0 (for a goroutine) or on the thread that asked.
pub(crate) fn with_world_stopped(
    sched: &Sched,
    f: &mut dyn FnMut(),
    restarted: &mut dyn FnMut(Duration),
) -> bool {
    let stopped = stop(sched);
    // Once the main goroutine has finished, the runtime is ending: its result is held only by
    // `run`'s frame, which no root covers, so no cycle may start any more. (The main goroutine
    // sets `shutdown` before it stops running, and `stop` waited for that.)
    let ran = !sched.shutdown.load(Ordering::SeqCst);
    if ran {
        f();
    }
    let pause = start(sched, stopped);
    if ran {
        restarted(pause);
    }
    ran
}

/// How long the initiator waits for goroutines to reach a safe point. Past it, the goroutines
/// still running are stopped where they stand with the rest of the process's threads (the
/// facade's `world` module): a loop that never calls the runtime, a goroutine inside
/// [`crate::blocking`] or on a std lock cannot hold a collection up.
pub(crate) const SAFE_POINT_GRACE: Duration = Duration::from_micros(100);

/// Called on the initiator's g0: returns when no other M runs a goroutine, or when
/// [`SAFE_POINT_GRACE`] has passed (the caller then stops the laggards by signal), with the
/// moment the world began to stop.
pub(crate) fn stop(sched: &Sched) -> Instant {
    let mut guard = lock(&sched.stw_lock);
    // Another initiator is active: this M is already stopped (not running); wait our turn.
    while sched.stopping.load(Ordering::SeqCst) {
        guard = guard.wait(&sched.stw_cv);
    }
    goro_alloc::parked::begin_stop();
    let stopped = Instant::now();
    sched.stopping.store(true, Ordering::SeqCst);
    let deadline = stopped + SAFE_POINT_GRACE;
    for m in sched.ms() {
        while m.running.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                return stopped;
            }
            // `notify` wakes us as soon as an M stops.
            guard = guard.wait_timeout(&sched.stw_cv, deadline - now);
        }
    }
    stopped
}

/// Restarts the world that began to stop at `stopped`, and returns how long it stood stopped
/// (until `restart_world` let the last thread go). Every thread the stop holds goes on at its
/// one wake-up; initiators queued behind this one are told after it.
pub(crate) fn start(sched: &Sched, stopped: Instant) -> Duration {
    sched.stopping.store(false, Ordering::SeqCst);
    let let_go = goro_alloc::parked::restart_world();
    let pause = let_go.duration_since(stopped);
    let _guard = lock(&sched.stw_lock);
    sched.stw_cv.notify_all();
    pause
}

/// Wakes the initiator (and waiters): an M has stopped running goroutines.
pub(crate) fn notify(sched: &Sched) {
    let _guard = lock(&sched.stw_lock);
    sched.stw_cv.notify_all();
}

/// Blocks an M's g0 while the world is stopped, published as parked (so the collector claims
/// it rather than signals it).
pub(crate) fn wait_while_stopped(sched: &Sched) {
    if !sched.stopping.load(Ordering::SeqCst) {
        return;
    }
    // The generation turned odd before `stopping` was set, and turns even after it is cleared.
    // SAFETY: futex waits only: they allocate nothing, move nothing, cannot unwind.
    unsafe { goro_alloc::parked::while_parked(goro_alloc::parked::wait_while_world_stopped) };
}
