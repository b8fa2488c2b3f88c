//! `Gc<T>`: a copyable pointer to a collected object.

use crate::collector;
use crate::header::header_of;
use crate::object::Layout;
use crate::trace::{Trace, Tracer};
use core::fmt;
use core::hash::{Hash, Hasher};
use core::ops::Deref;
use core::ptr::NonNull;

/// A pointer to a `T` in the collected heap: Go's `*T`.
///
/// `Gc<T>` is `Copy`: copies are free and need no bookkeeping. Objects are immutable through a
/// `Gc` except through [`GcCell`](crate::GcCell) fields. [`Gc::new`] works on any thread of the
/// process while a goro runtime runs, since a collection stops and scans every thread.
///
/// # How objects are released
///
/// There is no `free` and no reference count. Because `Gc` is `Copy`, `drop(gc)`, or a `Gc`
/// going out of scope, releases nothing: it ends one copy, and no copy knows of the others. An
/// object is freed by a *later collection* that finds its address in no reachable place:
///
/// - the stack or the registers of a goroutine, or of any thread of the process (the main
///   thread, `std::thread`s and threads started by C libraries too), or a thread's
///   `thread_local!`s;
/// - a `static`;
/// - a heap block reachable from those: a `Box`, the buffer of a `Vec` or `HashMap`, a
///   channel's buffer, the closure of a goroutine that has not started yet;
/// - a field of another object that is itself reachable.
///
/// So to release a graph, make it unreachable: let the locals that hold its `Gc`s go out of
/// scope, clear or drop the collections that hold them, and overwrite the
/// [`GcCell`](crate::GcCell) fields of objects you keep that point into it (set them to `None`,
/// say). Cycles need nothing more: objects that point at each other but are reached from no
/// root are freed together.
///
/// *When*: a collection starts at an allocation once the collected heap has grown by GOGC
/// percent over what the last one found live ([`set_percent`](crate::set_percent); a negative
/// percent turns that off), or at once on [`collect`](crate::collect), which returns when the
/// objects it found dead are dropped and freed.
///
/// *Not sooner, maybe later*: stacks, registers, thread-locals, statics and ordinary heap blocks
/// are scanned conservatively, word by word, so any word that happens to hold an object's
/// address (a stale local, an integer) keeps the object alive for that collection. A collection
/// never frees an object early (docs/soundness.md argues each route), but no particular
/// collection is promised to free it. Objects still reachable when the runtime ends (when
/// `goro::run` returns) are never freed afterwards. [`keep_alive`](crate::keep_alive) keeps an
/// object reachable up to a point of the caller's choosing.
///
/// *Where the drop runs*: the objects of a type with drop glue (one that owns a `String`, a
/// `Vec`, a `Box`, ...) are dropped on the collector's sweeper thread (`goro-sweeper`), after the
/// stopped threads have resumed, not on a thread that made or used them (one reason a `Gc<T>`
/// is `Send` only if `T` is). The others are freed without a call. Dead objects are dropped in
/// no particular order, and no drop dereferences another `Gc`: `#[derive(Trace)]` rejects a type
/// that implements `Drop`, and a hand-written [`Trace`] impl promises as much. A drop that
/// panics aborts the process.
pub struct Gc<T: ?Sized> {
    ptr: NonNull<T>,
}

// SAFETY: sharing a `Gc<T>` across threads shares `&T` (hence `T: Sync`) and lets another thread
// be the last to reach it, so that the sweeper drops it elsewhere (hence `T: Send`).
unsafe impl<T: ?Sized + Send + Sync> Send for Gc<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send + Sync> Sync for Gc<T> {}

impl<T: Trace + Send + 'static> Gc<T> {
    /// Moves `value` into the collected heap.
    ///
    /// This is a safe point: if a collection is due, it runs here first.
    ///
    /// Works on any thread of the process while a runtime runs (every thread is a root: a
    /// collection stops and scans them all).
    ///
    /// # Panics
    /// Panics when called while no goro runtime runs.
    #[inline]
    #[track_caller]
    pub fn new(value: T) -> Gc<T> {
        // Over-aligned types may get another class than `gc_slot_size` says (the first class
        // whose size is a multiple of the alignment): the header sits at the real slot's end.
        let (slot, slot_size) = collector::allocate(
            Layout::<T>::REQUEST,
            Layout::<T>::ALIGN,
            Layout::<T>::SLOT,
            T::POINTER_FREE,
        );
        // SAFETY: `slot` is a fresh, exclusively owned slot of `slot_size` bytes, aligned for
        // `T`, and its last word (the header) lies past `size_of::<T>()` within it.
        unsafe {
            let vtable: &'static crate::object::VTable = &Layout::<T>::VTABLE;
            let header = core::sync::atomic::AtomicUsize::from_ptr(header_of(slot, slot_size));
            // A thread stopped while the value is written leaves the object half-built: marked
            // CONSTRUCTING, it is scanned conservatively, wherever the value's `Gc`s are so far
            // (the compiler may build the value in place, so they may be nowhere else).
            // Release: a mark set at allocation (black allocation) is seen by whoever sees
            // the header (the collector condemns with the world going).
            header.store(
                vtable as *const _ as usize | crate::header::CONSTRUCTING,
                core::sync::atomic::Ordering::Release,
            );
            // The flag is in place before the value's first byte, as this thread's signal
            // handler sees it (C's `atomic_signal_fence`).
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
            // The slot's bytes between the value and the header are zeroed: an object is
            // sometimes scanned whole and conservatively (mark termination rescans objects a
            // root points into), and a recycled slot's tail would keep whatever its last
            // occupant pointed to alive. (A constant length for most types.)
            let value_end = size_of::<T>().next_multiple_of(8);
            slot.add(value_end)
                .write_bytes(0, slot_size - size_of::<usize>() - value_end);
            slot.cast::<T>().write(value);
            // Release: the value's bytes are written before the slot reads as built.
            header.store(
                vtable as *const _ as usize,
                core::sync::atomic::Ordering::Release,
            );
            // Allocated black: what the value points to must be shaded (it may have come from
            // a stack the marker scanned already). A pointer-free value points to nothing.
            if !T::POINTER_FREE {
                crate::barrier::when_marking(|| {
                    crate::barrier::shade_new(slot as usize, value_end)
                });
            }
            Gc {
                ptr: NonNull::new_unchecked(slot.cast::<T>()),
            }
        }
    }
}

impl<T> Gc<T> {
    /// The `Gc` to the object at `address`.
    ///
    /// # Safety
    /// `address` must be that of a live `T` made by [`Gc::new`].
    #[inline]
    pub(crate) unsafe fn from_address(address: usize) -> Gc<T> {
        // SAFETY: the caller's contract; a live object's address is not null.
        let ptr = unsafe { NonNull::new_unchecked(address as *mut T) };
        Gc { ptr }
    }
}

impl<T: ?Sized> Gc<T> {
    /// Whether two `Gc`s point to the same object (Go's `p == q`).
    #[inline]
    pub fn ptr_eq(this: &Gc<T>, other: &Gc<T>) -> bool {
        core::ptr::addr_eq(this.ptr.as_ptr(), other.ptr.as_ptr())
    }

    /// The address of the object.
    #[inline]
    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }
}

impl<T: ?Sized> Clone for Gc<T> {
    #[inline]
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Gc<T> {}

impl<T: ?Sized> Deref for Gc<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: a `Gc` only comes from `Gc::new`, and the collector keeps every object that a
        // mutator can still reach (docs/soundness.md argues each route); `self` is such a route.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> AsRef<T> for Gc<T> {
    fn as_ref(&self) -> &T {
        self
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Gc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for Gc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized> fmt::Pointer for Gc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Pointer::fmt(&self.ptr, f)
    }
}

impl<T: ?Sized + PartialEq> PartialEq for Gc<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: ?Sized + Eq> Eq for Gc<T> {}

impl<T: ?Sized + PartialOrd> PartialOrd for Gc<T> {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        (**self).partial_cmp(&**other)
    }
}

impl<T: ?Sized + Ord> Ord for Gc<T> {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl<T: ?Sized + Hash> Hash for Gc<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl Tracer {
    /// Marks the object behind `gc` as reachable (and schedules its own fields for tracing).
    #[inline]
    pub fn visit<T: Trace + ?Sized>(&mut self, gc: &Gc<T>) {
        self.marker.mark_object(gc.as_ptr().cast::<u8>() as usize);
    }
}

// SAFETY: the pointee is reported; `Gc` has no drop glue.
unsafe impl<T: Trace + ?Sized> Trace for Gc<T> {
    // A `Gc` is the object's address, which a scan marks as `visit` does.
    const SCANNED_AS_BYTES: bool = true;

    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        tracer.visit(self);
    }
}
