//! `RawLock`: a futex lock with explicit `lock`/`unlock`, for the channel lock.
//!
//! Channels need a lock that `select` can take for several channels at once (in address order,
//! as Go's `sellock` does) and release from g0 after the goroutine has parked, with no guard
//! object tying the unlock to a scope. States: 0 unlocked, 1 locked, 2 locked with waiters.
//! Lock: CAS 0 -> 1, else spin a little, else swap in 2 and futex-wait while it stays 2.
//! Unlock: swap in 0; if it was 2, wake one waiter (Drepper's "Futexes Are Tricky", mutex 2).
//! Holders never park a goroutine while holding it; hold times are a few dozen instructions.

use std::sync::atomic::{AtomicU32, Ordering};

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
