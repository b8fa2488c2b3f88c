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

use crate::proc::{self, GRef};
use std::sync::{Arc, Condvar, Mutex};

/// Who to wake.
pub(crate) enum Waiter {
    Goroutine(GRef),
    Thread(Arc<ThreadParker>),
}

impl Waiter {
    /// The waiter for the calling context.
    pub(crate) fn current() -> Waiter {
        match proc::current_g() {
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
    match parker {
        None => proc::park_goroutine(guard),
        Some(parker) => {
            drop(guard);
            parker.park();
        }
    }
}

/// A sleeping OS thread with a wake-up token.
#[derive(Default)]
pub(crate) struct ThreadParker {
    notified: Mutex<bool>,
    condvar: Condvar,
}

impl ThreadParker {
    pub(crate) fn park(&self) {
        let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        while !*notified {
            notified = self
                .condvar
                .wait(notified)
                .unwrap_or_else(|p| p.into_inner());
        }
        *notified = false;
    }

    /// Sleeps until unparked or until `timeout` has passed.
    pub(crate) fn park_timeout(&self, timeout: std::time::Duration) {
        let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        if !*notified {
            notified = self
                .condvar
                .wait_timeout(notified, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *notified = false;
    }

    pub(crate) fn unpark(&self) {
        let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        *notified = true;
        self.condvar.notify_one();
    }
}
