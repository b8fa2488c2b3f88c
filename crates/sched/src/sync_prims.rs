//! The atomics lock-free code in this crate uses: std's, or loom's under `cfg(loom)` so that the
//! loom models (`RUSTFLAGS="--cfg loom" cargo test -p goro-sched --lib loom`) check every
//! interleaving of the same code. The run queue, the stash states and the parker use them; so
//! do the three atomics of the idle handshake (`M::idle`, `Sched::spinning`, `Sched::idle_ps`)
//! and its fences, so that the scheduler builds with loom's atomics under `cfg(loom)`.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex};

/// A busy-wait step: a PAUSE, or under loom a yield so the model lets the other thread progress.
#[inline]
pub(crate) fn spin_wait() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// A longer wait step: gives the CPU to the thread waited for if it is waiting for one (it may
/// share this CPU).
pub(crate) fn yield_thread() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}
