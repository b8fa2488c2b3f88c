//! Precise tracing: the [`Trace`] trait and the [`Tracer`] that marks what it reports.

use crate::collector::Marker;
use crate::ptr::Gc;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, LinkedList, VecDeque};
use std::sync::Arc;

/// A type whose `Gc` pointers the collector can find.
///
/// Derive it with `#[derive(Trace)]`, which traces every field and rejects user `Drop` impls.
///
/// # Safety
/// May be implemented only if `trace` reports, through [`Tracer::visit`], every `Gc` the value
/// owns or can reach without going through another `Gc` (fields, elements, boxed contents), and if
/// the type's drop glue never dereferences a `Gc` (a collected object is dropped while sweeping,
/// when the objects it points to may already be gone).
pub unsafe trait Trace {
    /// Reports every `Gc` directly owned by `self` to `tracer`.
    fn trace(&self, tracer: &mut Tracer);
}

/// Receives the `Gc` pointers a [`Trace`] impl reports, and marks them.
///
/// Only the collector creates one; user code sees it only as the argument of [`Trace::trace`].
pub struct Tracer {
    pub(crate) marker: Marker,
}

impl Tracer {
    /// Marks the object behind `gc` as reachable (and schedules its own fields for tracing).
    #[inline]
    pub fn visit<T: Trace + ?Sized>(&mut self, gc: &Gc<T>) {
        self.marker.mark_object(gc.as_ptr().cast::<u8>() as usize);
    }

    /// Scans the bytes of `value` itself conservatively, as the collector scans a stack: every
    /// aligned word that points into a block of goro's heap keeps that block alive, and a malloc
    /// block found this way is scanned whole, over its allocation rather than over what a length
    /// field says is in use. For containers whose length std lowers while user code runs
    /// (`Vec::extract_if`, `VecDeque::drain`, `BinaryHeap::peek_mut`).
    #[inline]
    #[allow(
        dead_code,
        reason = "the std container impls switch to it in the next change"
    )]
    pub(crate) fn scan_bytes_of<T: ?Sized>(&mut self, value: &T) {
        let lo = std::ptr::from_ref(value).cast::<u8>() as usize;
        self.marker
            .push_range(lo, lo + std::mem::size_of_val(value));
    }
}

/// Types that own no `Gc`: tracing them does nothing.
macro_rules! trace_leaf {
    ($($ty:ty),* $(,)?) => {$(
        // SAFETY: the type owns no `Gc`, and its drop glue touches none.
        unsafe impl Trace for $ty {
            #[inline]
            fn trace(&self, _: &mut Tracer) {}
        }
    )*};
}

trace_leaf!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    str,
    String,
    std::time::Duration,
    std::time::Instant,
    std::time::SystemTime,
    std::sync::atomic::AtomicBool,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicIsize,
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16,
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicI64,
    std::path::PathBuf,
    std::ffi::OsString,
    std::num::NonZeroUsize,
    std::num::NonZeroU64,
    std::num::NonZeroU32,
);

// SAFETY: a `PhantomData` owns nothing.
unsafe impl<T: ?Sized> Trace for core::marker::PhantomData<T> {
    #[inline]
    fn trace(&self, _: &mut Tracer) {}
}

// SAFETY: the pointee is reported; `Gc` has no drop glue.
unsafe impl<T: Trace + ?Sized> Trace for Gc<T> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        tracer.visit(self);
    }
}

/// Containers whose elements are reached by `iter()`: each element is traced.
macro_rules! trace_iterable {
    ($($ty:ident<$($param:ident),*>),* $(,)?) => {$(
        // SAFETY: every element is traced; the container's drop glue only drops its elements.
        unsafe impl<$($param: Trace),*> Trace for $ty<$($param),*> {
            fn trace(&self, tracer: &mut Tracer) {
                for element in self.iter() {
                    element.trace(tracer);
                }
            }
        }
    )*};
}

trace_iterable!(
    Vec<T>,
    VecDeque<T>,
    LinkedList<T>,
    BTreeSet<T>,
    HashSet<T>,
    BinaryHeap<T>
);

// SAFETY: every key and value is traced.
unsafe impl<K: Trace, V: Trace, S> Trace for HashMap<K, V, S> {
    fn trace(&self, tracer: &mut Tracer) {
        for (key, value) in self {
            key.trace(tracer);
            value.trace(tracer);
        }
    }
}

// SAFETY: every key and value is traced.
unsafe impl<K: Trace, V: Trace> Trace for BTreeMap<K, V> {
    fn trace(&self, tracer: &mut Tracer) {
        for (key, value) in self {
            key.trace(tracer);
            value.trace(tracer);
        }
    }
}

// SAFETY: every element is traced.
unsafe impl<T: Trace> Trace for [T] {
    fn trace(&self, tracer: &mut Tracer) {
        for element in self {
            element.trace(tracer);
        }
    }
}

// SAFETY: every element is traced.
unsafe impl<T: Trace, const N: usize> Trace for [T; N] {
    fn trace(&self, tracer: &mut Tracer) {
        self.as_slice().trace(tracer);
    }
}

// SAFETY: the contents are traced; dropping the box drops them.
unsafe impl<T: Trace + ?Sized> Trace for Box<T> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        (**self).trace(tracer);
    }
}

// SAFETY: the contents are traced. Other owners of the same `Arc` are roots in their own right
// (their blocks are scanned conservatively), so tracing through this one only adds reachability.
unsafe impl<T: Trace + ?Sized> Trace for Arc<T> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        (**self).trace(tracer);
    }
}

// SAFETY: the contents, when present, are traced.
unsafe impl<T: Trace> Trace for Option<T> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        if let Some(value) = self {
            value.trace(tracer);
        }
    }
}

// SAFETY: whichever side is present is traced.
unsafe impl<T: Trace, E: Trace> Trace for Result<T, E> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        match self {
            Ok(value) => value.trace(tracer),
            Err(error) => error.trace(tracer),
        }
    }
}

macro_rules! trace_tuple {
    ($(($($name:ident),+)),* $(,)?) => {$(
        // SAFETY: every member is traced.
        unsafe impl<$($name: Trace),+> Trace for ($($name,)+) {
            #[inline]
            #[allow(non_snake_case, reason = "the bindings reuse the type parameter names")]
            fn trace(&self, tracer: &mut Tracer) {
                let ($($name,)+) = self;
                $($name.trace(tracer);)+
            }
        }
    )*};
}

trace_tuple!(
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
    (A, B, C, D, E, F)
);
