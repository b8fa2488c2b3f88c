//! Parking and readying: the one blocking primitive every other one is built on.
//!
//! A blocked party is a [`Waiter`]: a goroutine, or an OS thread that is not a goroutine (a user
//! thread, or an M's system stack running drop glue). The protocol, for both:
//!
//! 1. Under the lock of the thing waited on (a channel, a join packet), the party stores its
//!    `Waiter` where a waker will find it.
//! 2. It calls [`park`] with that lock's guard. A goroutine switches to g0 and g0 drops the guard;
//!    a thread drops the guard and sleeps on its parker.
//! 3. A waker takes the `Waiter` out under the same lock and calls [`Waiter::wake`] once.
//!
//! A goroutine cannot be woken before its registers are saved, because the waker needs the lock
//! that only g0 releases. A thread's parker keeps a wake-up token, so a wake that comes between
//! dropping the guard and sleeping is not lost. Callers re-check their condition after `park`
//! returns (a thread parker may wake spuriously).
//!
//! [`sleep`] is the simplest use: a goroutine parks under its P's timer heap lock, and the timer's
//! callback wakes it.

use crate::lock::ThreadParker;
use crate::proc;
use crate::runtime2::{GRef, WAIT_SPACE_WORDS, current_g, current_sched};
use crate::stw;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who to wake.
pub(crate) enum Waiter {
    Goroutine(GRef),
    Thread(Arc<ThreadParker>),
}

impl Waiter {
    /// The waiter for the calling context.
    pub(crate) fn current() -> Waiter {
        match current_g() {
            Some(g) => Waiter::Goroutine(g),
            None => Waiter::Thread(Arc::new(ThreadParker::default())),
        }
    }

    /// Makes the waiter runnable again.
    pub(crate) fn wake(self) {
        match self {
            Waiter::Goroutine(g) => proc::ready(g),
            Waiter::Thread(parker) => parker.unpark(),
        }
    }

    /// A second handle to the same waiter (for a thread parker, which the parked side also holds).
    pub(crate) fn thread_parker(&self) -> Option<Arc<ThreadParker>> {
        match self {
            Waiter::Goroutine(_) => None,
            Waiter::Thread(parker) => Some(parker.clone()),
        }
    }
}

/// Blocks the caller until its waiter is woken; `guard` is released once the caller is parked.
///
/// `parker` is the caller's thread parker when the waiter stored in step 1 was a thread's.
pub(crate) fn park<G>(guard: G, parker: Option<Arc<ThreadParker>>) {
    park_as(guard, parker, false)
}

/// [`park`] for a waiter whose record is not on its stack (it is in the heap, in the waited-on
/// object, or in [`wait_space`]): wakers never touch the parked goroutine's stack, so the
/// runtime may move its live bytes off the stack slot and release the slot's memory while it
/// stays parked (see `shrink`).
pub(crate) fn park_releasable<G>(guard: G, parker: Option<Arc<ThreadParker>>) {
    park_as(guard, parker, true)
}

fn park_as<G>(guard: G, parker: Option<Arc<ThreadParker>>, releasable: bool) {
    match parker {
        None => proc::park_goroutine(guard, releasable),
        Some(parker) => {
            drop(guard);
            parker.park();
        }
    }
}

/// Room in the running goroutine's G for the record of the operation it is about to block in, if
/// the caller is a goroutine and an `R` fits. A record there outlives the goroutine's stack
/// memory, which sysmon may release while it is parked (see `shrink`); wakers may use it.
///
/// The caller must not block in another operation that uses the space until it has finished
/// with this record (a goroutine blocks in one operation at a time, so that holds when the record
/// lives only while the caller is blocked), and must drop the record itself.
pub(crate) fn wait_space<R>() -> Option<NonNull<R>> {
    if size_of::<R>() > WAIT_SPACE_WORDS * size_of::<usize>()
        || align_of::<R>() > align_of::<usize>()
    {
        return None;
    }
    let g = current_g()?;
    NonNull::new(g.g().wait_space.get().cast::<R>())
}

/// Blocks the calling goroutine for at least `duration` (Go's `time.Sleep`); a thread that is not
/// a goroutine sleeps with `std::thread::sleep`. Sleeping is a safe point.
pub fn sleep(duration: Duration) {
    stw::safe_point();
    let (Some(sched), Some(_)) = (current_sched(), current_g()) else {
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
    let mut heap = timers.lock();
    timers.push_locked(&mut heap, when, Box::new(move || waiter.wake()));
    sched.timer_added();
    // The waker is a closure in the timer heap: nothing reads our stack.
    park_releasable(heap, None);
}
