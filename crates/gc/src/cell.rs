//! `GcCell<T>`: interior mutability for the fields of collected objects.
//!
//! A `GcCell` is a `RefCell` whose borrow flag is atomic, so that a `Gc` to an object holding one
//! can be shared between goroutines (`Gc<T>` needs `T: Sync` to cross threads). Conflicting
//! borrows panic with the reason instead of blocking: a `GcCell` is not a lock, it is the place a
//! store of a `Gc` into the heap goes through, where the collector's write barrier is.
//! Goroutines that need mutual exclusion across blocking points use `goro::sync::Mutex` around
//! the `Gc` instead.
//!
//! **The barrier** (barrier.rs) is at the end of a mutable borrow: while the collector marks, the
//! cell's bytes are logged for a second scan before the flag is released, so whatever the borrow
//! left in the cell is seen. With marking off it costs one load and one branch. What the borrow
//! took out of the cell went to memory without a barrier (a stack, a malloc block: scanned again
//! at termination) or into another cell (logged in turn) or a new object (shaded by `Gc::new`).
//! A borrow still open at termination is found through its guard, which holds the cell's address
//! plus [`GUARD_TAG`] (see `mark::TERMINATING`); the flag is the cell's first word for that.
//!
//! Flag states: 0 = unborrowed, `n > 0` = `n` shared borrows, `WRITING` = one mutable borrow.

use crate::barrier;
use crate::header::{GUARD_TAG, WRITING};
use crate::trace::{Trace, Tracer};
use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A mutable memory location inside a collected object, with dynamically checked borrows.
#[repr(C)]
pub struct GcCell<T: ?Sized> {
    flag: AtomicUsize,
    value: UnsafeCell<T>,
}

// SAFETY: the atomic flag serialises access exactly like `RwLock::try_*`: `&T` is shared between
// threads only while no `&mut T` exists (needs `T: Sync`), and `&mut T` moves `T` access to
// another thread (needs `T: Send`).
unsafe impl<T: ?Sized + Send + Sync> Sync for GcCell<T> {}

/// The error of [`GcCell::try_borrow`] and [`GcCell::try_borrow_mut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BorrowError {
    /// The cell is mutably borrowed.
    MutablyBorrowed,
    /// The cell is borrowed (shared), so it cannot be borrowed mutably.
    Borrowed,
}

impl fmt::Display for BorrowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BorrowError::MutablyBorrowed => f.write_str("GcCell already mutably borrowed"),
            BorrowError::Borrowed => f.write_str("GcCell already borrowed"),
        }
    }
}

impl std::error::Error for BorrowError {}

impl<T> GcCell<T> {
    /// A new cell holding `value`.
    pub const fn new(value: T) -> GcCell<T> {
        GcCell {
            flag: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Replaces the contents, returning the old value.
    ///
    /// # Panics
    /// Panics if the cell is borrowed.
    #[track_caller]
    pub fn replace(&self, value: T) -> T {
        core::mem::replace(&mut *self.borrow_mut(), value)
    }

    /// Stores `value`, dropping the old contents.
    ///
    /// # Panics
    /// Panics if the cell is borrowed.
    #[track_caller]
    pub fn set(&self, value: T) {
        drop(self.replace(value));
    }

    /// Consumes the cell, returning its contents.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: Copy> GcCell<T> {
    /// A copy of the contents.
    ///
    /// # Panics
    /// Panics if the cell is mutably borrowed.
    #[track_caller]
    pub fn get(&self) -> T {
        *self.borrow()
    }
}

impl<T: Default> GcCell<T> {
    /// Takes the contents, leaving `T::default()`.
    ///
    /// # Panics
    /// Panics if the cell is borrowed.
    #[track_caller]
    pub fn take(&self) -> T {
        self.replace(T::default())
    }
}

impl<T: ?Sized> GcCell<T> {
    /// Borrows the contents immutably.
    ///
    /// # Panics
    /// Panics with "GcCell already mutably borrowed" if a mutable borrow is live.
    #[track_caller]
    pub fn borrow(&self) -> GcRef<'_, T> {
        match self.try_borrow() {
            Ok(guard) => guard,
            Err(error) => panic!("{error}"),
        }
    }

    /// Borrows the contents immutably, or says why not.
    pub fn try_borrow(&self) -> Result<GcRef<'_, T>, BorrowError> {
        let mut flag = self.flag.load(Ordering::Relaxed);
        loop {
            if flag >= WRITING - 1 {
                return Err(BorrowError::MutablyBorrowed);
            }
            // Acquire: pairs with the Release in `GcRefMut::drop`, so the writer's stores are
            // visible to this reader.
            match self.flag.compare_exchange_weak(
                flag,
                flag + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(GcRef { cell: self }),
                Err(current) => flag = current,
            }
        }
    }

    /// Borrows the contents mutably.
    ///
    /// # Panics
    /// Panics with "GcCell already borrowed" (or "already mutably borrowed") if any borrow is live.
    #[track_caller]
    pub fn borrow_mut(&self) -> GcRefMut<'_, T> {
        match self.try_borrow_mut() {
            Ok(guard) => guard,
            Err(error) => panic!("{error}"),
        }
    }

    /// Borrows the contents mutably, or says why not.
    pub fn try_borrow_mut(&self) -> Result<GcRefMut<'_, T>, BorrowError> {
        // Acquire: pairs with the Release in both guards' drops, so earlier accesses happen before.
        match self
            .flag
            .compare_exchange(0, WRITING, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => Ok(GcRefMut {
                // SAFETY: the cell is at least a word long (its flag), so one byte past its
                // address lies inside it.
                tagged: unsafe { NonNull::from(self).byte_add(GUARD_TAG) },
                _cell: PhantomData,
            }),
            Err(WRITING) => Err(BorrowError::MutablyBorrowed),
            Err(_) => Err(BorrowError::Borrowed),
        }
    }
}

impl<T: Default> Default for GcCell<T> {
    fn default() -> Self {
        GcCell::new(T::default())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for GcCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_borrow() {
            Ok(value) => f.debug_struct("GcCell").field("value", &&*value).finish(),
            Err(_) => f.write_str("GcCell { <mutably borrowed> }"),
        }
    }
}

// SAFETY: the contents are scanned conservatively, never traced precisely: the marker runs beside
// the mutators, and a thread may be stopped by the collector's signal anywhere, halfway through
// a write through a `GcRefMut` (an enum's tag swapped but not its payload, a value half dropped
// in place), where the contents' own `Trace` would misread the layout or follow a freed
// pointer. A conservative scan of the bytes (and of the heap blocks they point to, whole) finds
// every `Gc` wherever the write left it, and follows nothing it cannot read; what a write
// changes after the scan is logged by the barrier. The value's bytes lie in the cell, inside
// the object being traced, which stays allocated for the whole cycle.
unsafe impl<T: Trace + ?Sized> Trace for GcCell<T> {
    // The cell's flag is an integer: a scan of the whole cell finds what the scan of its value
    // does.
    const SCANNED_AS_BYTES: bool = true;

    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        // SAFETY: the reference is used only for the value's address and size; its bytes are
        // read by the marker's one racy-read helper (docs/soundness.md, "Deliberate departures":
        // reading a cell a stopped thread may be writing through).
        tracer.scan_bytes_of(unsafe { &*self.value.get() });
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for GcRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for GcRefMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// A shared borrow of a [`GcCell`].
pub struct GcRef<'a, T: ?Sized> {
    cell: &'a GcCell<T>,
}

impl<T: ?Sized> Deref for GcRef<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the flag counts this shared borrow, so no `&mut T` exists.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T: ?Sized> Drop for GcRef<'_, T> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `try_borrow_mut`.
        self.cell.flag.fetch_sub(1, Ordering::Release);
    }
}

/// A mutable borrow of a [`GcCell`].
pub struct GcRefMut<'a, T: ?Sized> {
    /// The cell's address plus [`GUARD_TAG`], as the termination scan recognises a guard.
    tagged: NonNull<GcCell<T>>,
    _cell: PhantomData<&'a GcCell<T>>,
}

// SAFETY: the guard lends `&mut T` and `&T`: sharing it shares `&T`.
unsafe impl<T: ?Sized + Sync> Sync for GcRefMut<'_, T> {}

/// The barrier's slow path for a `borrow_mut` that ends while the collector marks: logs the
/// cell's value for the marker (out of line, so that the check inlined at every release needs
/// nothing computed for it).
#[cold]
#[inline(never)]
fn log_borrowed<T: ?Sized>(cell: &GcCell<T>) {
    let lo = cell.value.get().cast::<u8>() as usize;
    // SAFETY: the caller's guard owns the borrow; only the value's address and size are used.
    barrier::log_range(lo, lo + size_of_val(unsafe { &*cell.value.get() }));
}

impl<'a, T: ?Sized> GcRefMut<'a, T> {
    #[inline(always)]
    fn cell(&self) -> &'a GcCell<T> {
        // SAFETY: `tagged` is the address of a cell borrowed for 'a, plus the tag, which lies
        // inside the cell.
        unsafe { self.tagged.byte_sub(GUARD_TAG).as_ref() }
    }
}

impl<T: ?Sized> Deref for GcRefMut<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the flag is WRITING and this guard owns it.
        unsafe { &*self.cell().value.get() }
    }
}

impl<T: ?Sized> DerefMut for GcRefMut<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the flag is WRITING and this guard owns it: no other borrow exists.
        unsafe { &mut *self.cell().value.get() }
    }
}

impl<T: ?Sized> Drop for GcRefMut<'_, T> {
    #[inline]
    fn drop(&mut self) {
        let cell = self.cell();
        // Logged before the flag is released: a thread stopped in between still holds the
        // borrow, and termination finds it by its guard.
        barrier::when_marking(|| log_borrowed(cell));
        // Release: pairs with the Acquire in `try_borrow` / `try_borrow_mut`.
        cell.flag.store(0, Ordering::Release);
    }
}
