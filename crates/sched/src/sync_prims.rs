//! The atomics lock-free code in this crate uses: std's, or loom's under `cfg(loom)` so that the
//! loom models (`RUSTFLAGS="--cfg loom" cargo test -p goro-sched --lib loom`) check every
//! interleaving of the same code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex};
