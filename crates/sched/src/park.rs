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
use crate::sync_prims::{Condvar, Mutex};
use std::sync::Arc;

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
    park_as(guard, parker, false)
}

/// [`park`] for a waiter whose record is not on its stack (it is in the heap, in the waited-on
/// object, or in `proc::wait_space`): wakers never touch the parked goroutine's stack, so the
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

#[cfg(all(test, loom))]
mod loom_tests {
    //! The idle-M protocol of `proc::find_runnable` with the real `ThreadParker`: the M stores
    //! `idle = true` (SeqCst), re-checks the queue, parks; a waker pushes work, then swaps `idle`
    //! to false (SeqCst) and unparks if it was set. Every interleaving must end with the work
    //! taken: no lost wake-up. `RUSTFLAGS="--cfg loom" cargo test -p goro-sched --lib loom`.

    use super::ThreadParker;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::sync::{Arc, Mutex};

    struct M {
        idle: AtomicBool,
        parker: ThreadParker,
        queue: Mutex<Vec<u32>>,
    }

    #[test]
    fn an_idle_m_never_misses_work() {
        loom::model(|| {
            let m = Arc::new(M {
                idle: AtomicBool::new(false),
                parker: ThreadParker::default(),
                queue: Mutex::new(Vec::new()),
            });
            let waker = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    m.queue.lock().unwrap().push(7);
                    if m.idle.swap(false, Ordering::SeqCst) {
                        m.parker.unpark();
                    }
                })
            };
            // The M: look, go idle, look again, sleep, look after waking.
            let mut got = m.queue.lock().unwrap().pop();
            if got.is_none() {
                m.idle.store(true, Ordering::SeqCst);
                got = m.queue.lock().unwrap().pop();
                if got.is_some() {
                    m.idle.store(false, Ordering::SeqCst);
                } else {
                    m.parker.park();
                    m.idle.store(false, Ordering::SeqCst);
                    got = m.queue.lock().unwrap().pop();
                }
            }
            waker.join().unwrap();
            assert_eq!(got, Some(7));
        });
    }
}
