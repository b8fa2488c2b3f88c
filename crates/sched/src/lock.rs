//! The runtime's locks and thread sleeps (Go's `lock_futex.go`: mutexes and notes): [`lock`] for
//! std mutexes, `RawLock` for channels, `ThreadParker` for an OS thread that sleeps until woken.
//! This file imports nothing of the scheduler; everything else may use it.
//!
//! **`_locked` names.** A function or method whose name ends in `_locked` may be called only
//! while the caller holds the lock it names (Go's `fooLocked`); where the type system can carry
//! it, the guard (or the `&mut` it derefs to) is a parameter, so the call cannot be written
//! without the lock (tokio's `push(&self, synced: &mut Synced)`). A function that takes the lock
//! itself has no suffix.
//!
//! **`RawLock`**: a futex lock with explicit `lock`/`unlock`, for the channel lock.
//!
//! Channels need a lock that `select` can take for several channels at once (in address order,
//! as Go's `sellock` does) and release from g0 after the goroutine has parked, with no guard
//! object tying the unlock to a scope. States: 0 unlocked, 1 locked, 2 locked with waiters.
//! Lock: CAS 0 -> 1, else spin a little, else swap in 2 and futex-wait while it stays 2.
//! Unlock: swap in 0; if it was 2, wake one waiter (Drepper's "Futexes Are Tricky", mutex 2).
//! Holders never park a goroutine while holding it; hold times are a few dozen instructions.

use crate::sync_prims::{Condvar, Mutex};
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicU32, Ordering};

/// Locks a runtime mutex; a poisoned lock is still usable (no runtime code panics while holding
/// one, and the data is always consistent between statements).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// A mutual-exclusion lock without a guard.
#[derive(Default)]
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    pub(crate) const fn new() -> RawLock {
        RawLock {
            state: AtomicU32::new(UNLOCKED),
        }
    }

    /// Acquires the lock. Acquire: pairs with the Release in `unlock`.
    #[inline]
    pub(crate) fn lock(&self) {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..100 {
            std::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED);
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// May be called only by the holder of the lock (any thread: g0 releases what its goroutine
    /// took, on the same thread in practice).
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        // Release: pairs with the Acquire in `lock`.
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state);
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live, aligned u32 with no timeout; it only sleeps if the word
    // still holds `expected`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE of one waiter on a live, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
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
    //! The idle-M protocol of `proc::find_runnable` (see `proc`'s essay) with the real `ThreadParker`: the M stores
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
