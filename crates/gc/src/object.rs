//! The header word of a collected object and the per-type table it points to.
//!
//! Every `Gc<T>` slot ends with one header word (see the crate docs for the layout). It holds the
//! address of `T`'s [`VTable`] — a `&'static` with alignment of at least 8, so its low bits are
//! free — with [`IMMORTAL`](crate::header::IMMORTAL) in bit 0. A header of 0 means the slot is free: goro-alloc guarantees
//! that for slots it has never handed out, and the sweeper zeroes the header before freeing.
//!
//! While `Gc::new` writes the value, the header carries `CONSTRUCTING` (header.rs), and a marker
//! that finds the object then scans it conservatively.

use crate::header::FLAGS;
use crate::trace::{Trace, Tracer};
use core::mem::{align_of, size_of};

/// What the collector needs to know about a `T` to trace and drop it through a type-erased pointer.
#[repr(C, align(8))]
pub(crate) struct VTable {
    /// Calls `<T as Trace>::trace` on the object at the pointer.
    pub(crate) trace: unsafe fn(*const u8, &mut Tracer),
    /// Drops the `T` at the pointer in place; `None` when `T` has no drop glue.
    pub(crate) drop: Option<unsafe fn(*mut u8)>,
    /// `size_of::<T>()`, for statistics.
    pub(crate) size: usize,
    /// `T`'s name, for gccheckmark's report.
    pub(crate) name: fn() -> &'static str,
}

/// The per-type constants of a `Gc<T>` slot.
pub(crate) struct Layout<T>(core::marker::PhantomData<T>);

impl<T: Trace> Layout<T> {
    /// Bytes requested from goro-alloc: `T` rounded up to a word, plus the header word.
    pub(crate) const REQUEST: usize = size_of::<T>().next_multiple_of(8) + 8;
    /// Alignment requested from goro-alloc.
    pub(crate) const ALIGN: usize = if align_of::<T>() > 8 {
        align_of::<T>()
    } else {
        8
    };
    /// The slot size goro-alloc gives a request of [`Self::REQUEST`] bytes at alignment 8.
    pub(crate) const SLOT: usize = goro_alloc::gc_slot_size(Self::REQUEST);
    pub(crate) const VTABLE: VTable = VTable {
        trace: trace_erased::<T>,
        drop: if core::mem::needs_drop::<T>() {
            Some(drop_erased::<T>)
        } else {
            None
        },
        size: size_of::<T>(),
        name: core::any::type_name::<T>,
    };
}

/// # Safety
/// May be called only with a pointer to a live, initialised `T`.
unsafe fn trace_erased<T: Trace>(object: *const u8, tracer: &mut Tracer) {
    // SAFETY: the caller passes a live `T` (the header named this vtable).
    let object = unsafe { &*object.cast::<T>() };
    object.trace(tracer);
}

/// # Safety
/// May be called only once, with a pointer to a live `T` that nothing will use afterwards.
unsafe fn drop_erased<T>(object: *mut u8) {
    // SAFETY: the caller guarantees the object is live and dead to every mutator.
    unsafe { core::ptr::drop_in_place(object.cast::<T>()) }
}

/// Reads the vtable out of a non-zero header word.
///
/// # Safety
/// May be called only with a header word that `Gc::new` wrote.
#[inline]
pub(crate) unsafe fn vtable_of(header: usize) -> &'static VTable {
    // SAFETY: a non-zero header is the address of a `'static` VTable, possibly with flags set.
    unsafe { &*((header & !FLAGS) as *const VTable) }
}
