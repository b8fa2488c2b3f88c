//! `AtomicGc<T>`: an `Option<Gc<T>>` that threads load and store without a lock, for lock-free
//! structures inside collected objects (Go's `atomic.Pointer[T]`), with the write barrier.
//!
//! The barrier is the `GcCell` one's, per store instead of per borrow: a store, swap or
//! successful compare-exchange made while the collector marks logs the stored pointer after the
//! store (`barrier::shade_stored`), so an object that moved from unbarriered memory (a stack, a
//! `Vec`) into a cell the marker has scanned already is marked anyway. What the store
//! overwrote needs nothing: if it is still reachable, it is so from somewhere else, which is
//! either a barriered cell (logged when written) or unbarriered memory (rescanned at
//! termination). A thread stopped between its store and its log holds the pointer it is about
//! to log, where the termination's scan of its registers finds it. With marking off a store
//! costs one more load and a predictable branch.

use crate::barrier;
use crate::ptr::Gc;
use crate::trace::{Trace, Tracer};
use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicPtr, Ordering};

/// An `Option<Gc<T>>` with atomic loads, stores, swaps and compare-exchanges: Go's
/// `atomic.Pointer[T]` for collected objects. It may sit in a collected object (its [`Trace`]
/// impl marks what it holds), in a `static`, or anywhere else.
pub struct AtomicGc<T> {
    ptr: AtomicPtr<T>,
    _holds: PhantomData<Gc<T>>,
}

// SAFETY: the cell hands `Gc<T>`s from one thread to another: the bounds of `Gc<T>: Send + Sync`.
unsafe impl<T: Send + Sync> Send for AtomicGc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for AtomicGc<T> {}

fn raw<T>(value: Option<Gc<T>>) -> *mut T {
    value.map_or(core::ptr::null_mut(), |gc| gc.as_ptr().cast_mut())
}

/// The `Gc` a cell held.
///
/// # Safety
/// `ptr` must be null or have been stored into an `AtomicGc<T>` from a `Gc<T>`, whose object is
/// still reachable through the cell (the cell is, as its caller holds it).
unsafe fn from_raw<T>(ptr: *mut T) -> Option<Gc<T>> {
    // SAFETY: the caller's contract: a `Gc<T>`'s address, reachable, hence live.
    (!ptr.is_null()).then(|| unsafe { Gc::from_address(ptr as usize) })
}

impl<T> AtomicGc<T> {
    /// A cell holding `value`.
    pub fn new(value: Option<Gc<T>>) -> AtomicGc<T> {
        AtomicGc {
            ptr: AtomicPtr::new(raw(value)),
            _holds: PhantomData,
        }
    }

    /// A cell holding nothing (for `static`s).
    pub const fn empty() -> AtomicGc<T> {
        AtomicGc {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            _holds: PhantomData,
        }
    }

    /// Loads the value (as `AtomicPtr::load`; `order` may not be `Release` or `AcqRel`).
    #[inline]
    pub fn load(&self, order: Ordering) -> Option<Gc<T>> {
        // SAFETY: the cell only ever holds null or a stored `Gc`'s address, kept alive by the
        // cell (traced through it, or found by a scan of the memory holding it).
        unsafe { from_raw(self.ptr.load(order)) }
    }

    /// Stores `value` (as `AtomicPtr::store`; `order` may not be `Acquire` or `AcqRel`).
    #[inline]
    pub fn store(&self, value: Option<Gc<T>>, order: Ordering) {
        let ptr = raw(value);
        self.ptr.store(ptr, order);
        shade(ptr);
    }

    /// Stores `value` and returns what the cell held (as `AtomicPtr::swap`).
    #[inline]
    pub fn swap(&self, value: Option<Gc<T>>, order: Ordering) -> Option<Gc<T>> {
        let ptr = raw(value);
        let old = self.ptr.swap(ptr, order);
        shade(ptr);
        // SAFETY: as in `load`; the old value was reachable through the cell a moment ago, and
        // the collector frees nothing that a register of a running thread holds.
        unsafe { from_raw(old) }
    }

    /// Stores `new` if the cell holds `current` (the same object, or both `None`); returns the
    /// value the cell held, `Ok` if it was `current` (as `AtomicPtr::compare_exchange`).
    #[inline]
    pub fn compare_exchange(
        &self,
        current: Option<Gc<T>>,
        new: Option<Gc<T>>,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Option<Gc<T>>, Option<Gc<T>>> {
        let ptr = raw(new);
        match self
            .ptr
            .compare_exchange(raw(current), ptr, success, failure)
        {
            Ok(old) => {
                shade(ptr);
                // SAFETY: as in `swap`.
                Ok(unsafe { from_raw(old) })
            }
            // SAFETY: as in `load`.
            Err(held) => Err(unsafe { from_raw(held) }),
        }
    }

    /// The value, through exclusive access.
    pub fn into_inner(self) -> Option<Gc<T>> {
        // SAFETY: as in `load`.
        unsafe { from_raw(self.ptr.into_inner()) }
    }
}

/// The barrier: tells a marking collector about a pointer just stored.
#[inline(always)]
fn shade<T>(ptr: *mut T) {
    // The flag changes only with the world stopped, and a thread is stopped between two of its
    // own instructions: the store must come before the look at the flag in this thread's
    // program order (a signal fence, no instruction), or a thread stopped between the look and
    // a store moved after it would store unlogged into a marking heap.
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    barrier::when_marking(|| {
        if !ptr.is_null() {
            barrier::shade_stored(ptr as usize);
        }
    });
}

impl<T> Default for AtomicGc<T> {
    fn default() -> Self {
        AtomicGc::empty()
    }
}

impl<T> fmt::Debug for AtomicGc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ptr.load(Ordering::Relaxed) {
            ptr if ptr.is_null() => f.write_str("AtomicGc(None)"),
            ptr => write!(f, "AtomicGc({ptr:p})"),
        }
    }
}

// SAFETY: marks the object the cell holds when traced. A store made while the marker reads the
// cell (or after) is logged by the store's barrier, so the marker sees every value the cell
// holds from the time it traced it on.
unsafe impl<T: Trace> Trace for AtomicGc<T> {
    fn trace(&self, tracer: &mut Tracer) {
        if let Some(gc) = self.load(Ordering::Acquire) {
            tracer.visit(&gc);
        }
    }
}
