//! Precise tracing: the [`Trace`] trait and the [`Tracer`] that marks what it reports.
//!
//! A `Trace` impl reports the `Gc`s a value owns. Three shapes of impl, by what std does to the
//! value while user code runs (a collection can start at any `Gc::new` or `collect` in a user
//! closure, a user iterator, a `Hash` or `Ord` impl called by std):
//!
//! 1. **Leaves** (`u64`, `String`, ...) own no `Gc`: nothing to do.
//! 2. **Fixed shapes** (`Gc`, `Box`, `Arc`, `[T]`, `[T; N]`, `Option`, `Result`, tuples) are traced
//!    precisely, member by member: their shape is part of the type (or of a fat pointer) and no
//!    std method runs user code while a member is moved out or dropped but still in place. Each
//!    impl says why.
//! 3. **Containers with a length** (`Vec`, `VecDeque`, `BinaryHeap`, `LinkedList`, `BTreeMap`,
//!    `BTreeSet`, `HashMap`, `HashSet`) are never traced through their length or `iter()`: std
//!    lowers the length while user code runs (`Vec::extract_if`, `retain` and `drain` set it to
//!    0 or to the drain's start, `Vec::splice` hides the tail while it pulls the user's iterator,
//!    `VecDeque::drain` hides the drained range and the tail, `BinaryHeap::peek_mut` sets it to
//!    1), and it drops elements before fixing the length (`Vec::dedup_by` drops each duplicate
//!    in place and then calls the user's closure with the dropped value still below `len`; a
//!    hash table's in-place rehash marks every full bucket deleted while it calls the user's
//!    `Hash`). Trusting the length frees what is hidden; iterating follows pointers out of
//!    dropped elements. Instead [`Tracer::scan_bytes_of`] scans the container's own bytes
//!    conservatively: its storage is one or more malloc blocks of goro's heap (a `Vec`'s buffer,
//!    a `BTreeMap`'s nodes linked by pointers, a hash table whose `ctrl` pointer points into the
//!    middle of its block), which the collector marks and scans whole, over the allocation, and
//!    every `Gc` found that way is traced precisely. The words of the struct also cover a
//!    hasher's fields. The price: storage is scanned whole even where the element type holds no
//!    `Gc` (a `Vec<u8>` in a collected object), as every malloc block reached from a stack is,
//!    and a word left past `len` (a popped element) keeps what it points to alive until it is
//!    overwritten (at most a capacity's worth).
//!
//! **Type parameters.** Every parameter of every impl is bounded by `Trace` (only `PhantomData`,
//! which owns nothing, takes any `T`). A parameter the value stores is then covered by the trace
//! (or the scan), and by `Trace`'s contract its drop glue runs no code that touches a `Gc`:
//! this is what keeps a `HashMap`'s hasher `S` from holding an untraced `Gc` or bringing a user
//! `Drop` into the sweep (a derived `Trace` rejects user `Drop` impls). Types that are never
//! traced have no impl on purpose: `Cell`, `RefCell` and `Mutex` would let a store bypass the
//! collector's write barrier (use `GcCell`).
//!
//! **Storage outside goro's heap.** The scan finds a container's storage only in goro's heap,
//! which holds every allocation when `#[global_allocator]` is `GoroAlloc`: `goro::run` refuses to
//! start otherwise, and a program that drives goro-gc through its own [`Mutators`] must use it too.
//! (No fallback that iterates: marking runs with every other thread stopped and may not allocate
//! to find out which allocator is in use.)
//!
//! [`Mutators`]: crate::Mutators

use crate::mark::{Marker, Source};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, LinkedList, VecDeque};
use std::hash::{BuildHasherDefault, RandomState};
use std::sync::Arc;

/// A type whose `Gc` pointers the collector can find.
///
/// Derive it with `#[derive(Trace)]`, which traces every field and rejects user `Drop` impls.
///
/// # Safety
/// May be implemented only if `trace` reports, through [`Tracer::visit`], every `Gc` the value
/// owns or can reach without going through another `Gc` (fields, elements, boxed contents), and if
/// the type's drop glue never dereferences a `Gc` (a collected object is dropped while sweeping,
/// when the objects it points to may already be gone) and never reaches a point where a
/// collection can run (`Gc::new`, `collect`, a channel operation, a `goro::sync` wait, a yield,
/// spawn or join): a value may be dropped in place inside a live object
/// (`*cell.borrow_mut() = None`), and a collection that ran halfway would trace its members
/// already freed.
///
/// `trace` itself runs while every other thread of the process is stopped where it stood, on the
/// collecting thread (a goroutine's M runs it on its scheduler stack): it must only call
/// `Tracer` methods and read the value. It must not allocate, take a lock, block, print, or
/// panic: the thread holding the allocator's or the lock's other side may be one of the stopped
/// ones, which hangs the process, and a panic would unwind out of the stopped world.
///
/// A value inside a std container (`Vec`, `HashMap`, ...; see the module docs) is found by a
/// conservative scan of the container's storage instead of through `trace`: each `Gc` it owns
/// must also be held as a plain, aligned pointer, in the value itself or in blocks of goro's heap
/// that it owns (every field of a Rust struct is; a pointer hidden in a packed struct, an XOR or
/// a tag bit is not).
///
/// An impl that sets [`POINTER_FREE`](Trace::POINTER_FREE) to `true` promises more: no value of
/// the type owns or reaches a `Gc`, a `GcCell`, an `AtomicGc` or memory that holds one, at any
/// time (its `trace` reports nothing). The collector then never reads the object of a
/// `Gc<Self>` while marking.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be traced by goro's collector: it does not implement `Trace`",
    label = "`{Self}` does not implement `Trace`",
    note = "derive it with `#[derive(goro::Trace)]`; every type parameter of a traced type must be \
            `Trace` too, a `HashMap`'s or `HashSet`'s hasher included",
    note = "`Cell`, `RefCell` and `Mutex` have no `Trace` impl on purpose: use `goro::GcCell`"
)]
pub unsafe trait Trace {
    /// True when no value of the type can hold a `Gc` (Go's *noscan*): a `Gc<Self>` is
    /// allocated among pointer-free objects, which the collector marks without reading them
    /// (their header included, a cache miss per object otherwise) and whose `trace` it never
    /// calls. `false` unless an impl says otherwise; leaves (`u64`, `String`, ...) say `true`,
    /// fixed shapes (`[T; N]`, `Option<T>`, tuples) and derived types take it from their
    /// members, and `Gc`, `GcCell`, boxes and std containers keep `false`. See the trait's
    /// safety section.
    const POINTER_FREE: bool = false;

    /// True when tracing a value finds nothing that a conservative scan of its bytes would not
    /// (`Gc` and `GcCell` say so; slices and arrays of such types too). A slice of them is then
    /// traced as one scan of its bytes, which marks many words at once with their cache misses
    /// overlapped, where a call per element would take the misses one after another. `false`
    /// unless an impl says otherwise; an impl that says `true` must hold every `Gc` it reports
    /// as a plain, aligned pointer in the value or in blocks of goro's heap that it owns.
    const SCANNED_AS_BYTES: bool = false;

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
    /// A tracer with nothing to do.
    pub(crate) fn new() -> Tracer {
        Tracer {
            marker: Marker::new(),
        }
    }

    /// Scans the bytes of `value` itself conservatively, as the collector scans a stack: every
    /// aligned word that points into a block of goro's heap keeps that block alive, and a malloc
    /// block found this way is scanned whole, over its allocation rather than over what a length
    /// field says is in use. For containers whose length std lowers while user code runs
    /// (`Vec::extract_if`, `VecDeque::drain`, `BinaryHeap::peek_mut`).
    ///
    /// The bytes are scanned here and now, not scheduled as a work item of their own: a scan
    /// only marks and schedules what it finds, so it cannot recurse, and an object of many
    /// cells (an array of 1,024 `GcCell`s) costs one work item instead of 1,025.
    #[inline]
    pub(crate) fn scan_bytes_of<T: ?Sized>(&mut self, value: &T) {
        let lo = std::ptr::from_ref(value).cast::<u8>() as usize;
        self.marker
            .scan(lo, lo + std::mem::size_of_val(value), Source::Object);
    }
}

/// Types that own no `Gc`: tracing them does nothing.
macro_rules! trace_leaf {
    ($($ty:ty),* $(,)?) => {$(
        // SAFETY: the type owns no `Gc`, and its drop glue touches none.
        unsafe impl Trace for $ty {
            const POINTER_FREE: bool = true;

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
    const POINTER_FREE: bool = true;

    #[inline]
    fn trace(&self, _: &mut Tracer) {}
}

// SAFETY: the hashers std provides own no `Gc` and have no drop glue that could touch one
// (`BuildHasherDefault<H>` holds no `H` at all, only `PhantomData<fn() -> H>`).
unsafe impl Trace for RandomState {
    const POINTER_FREE: bool = true;

    #[inline]
    fn trace(&self, _: &mut Tracer) {}
}

// SAFETY: as above.
unsafe impl<H> Trace for BuildHasherDefault<H> {
    const POINTER_FREE: bool = true;

    #[inline]
    fn trace(&self, _: &mut Tracer) {}
}

/// Containers of shape 3 (module docs): scanned over their storage, never through `len`.
macro_rules! trace_container {
    ($($ty:ident<$($param:ident),*>),* $(,)?) => {$(
        // SAFETY: the container's own bytes are scanned, and through them its storage in goro's
        // heap, whole (module docs): every element it still owns is found whatever its length
        // says, and no element it dropped is traced. Every parameter is `Trace`, so neither the
        // elements' nor a hasher's drop glue touches a `Gc`.
        unsafe impl<$($param: Trace),*> Trace for $ty<$($param),*> {
            #[inline]
            fn trace(&self, tracer: &mut Tracer) {
                tracer.scan_bytes_of(self);
            }
        }
    )*};
}

trace_container!(
    Vec<T>,
    VecDeque<T>,
    BinaryHeap<T>,
    LinkedList<T>,
    BTreeSet<T>,
    HashSet<T, S>,
    BTreeMap<K, V>,
    HashMap<K, V, S>,
);

// SAFETY: every element is traced. A slice's length is fixed (in its type or its fat pointer),
// and std's in-place algorithms that call user code (`sort_by`, `select_nth_unstable_by`,
// `fill_with`) keep a valid element in every slot (a moved-out one is copied, not dropped, and
// sits on the stack or in a scratch buffer of goro's heap, both scanned).
unsafe impl<T: Trace> Trace for [T] {
    const POINTER_FREE: bool = T::POINTER_FREE;
    const SCANNED_AS_BYTES: bool = T::SCANNED_AS_BYTES;

    fn trace(&self, tracer: &mut Tracer) {
        if T::SCANNED_AS_BYTES {
            tracer.scan_bytes_of(self);
            return;
        }
        for element in self {
            element.trace(tracer);
        }
    }
}

// SAFETY: every element is traced; a slice of fixed length `N`, as above.
unsafe impl<T: Trace, const N: usize> Trace for [T; N] {
    const POINTER_FREE: bool = T::POINTER_FREE;
    const SCANNED_AS_BYTES: bool = T::SCANNED_AS_BYTES;

    fn trace(&self, tracer: &mut Tracer) {
        self.as_slice().trace(tracer);
    }
}

// SAFETY: the contents are traced; dropping the box drops them. A `Box` owns exactly one `T`
// from its creation to its drop (an uninitialised one is a `Box<MaybeUninit<T>>`, which has no
// `Trace` impl).
unsafe impl<T: Trace + ?Sized> Trace for Box<T> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        (**self).trace(tracer);
    }
}

// SAFETY: the contents are traced. Other owners of the same `Arc` are roots in their own right
// (their blocks are scanned conservatively), so tracing through this one only adds reachability.
// The `T` is dropped only with the last strong owner, so it is whole while this one exists.
unsafe impl<T: Trace + ?Sized> Trace for Arc<T> {
    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        (**self).trace(tracer);
    }
}

// SAFETY: the contents, when present, are traced. std's methods that call user code
// (`get_or_insert_with`, `take_if`, `map`, ...) either leave the payload in place and whole or
// have moved it out (onto the stack, which is scanned) and left `None`.
unsafe impl<T: Trace> Trace for Option<T> {
    const POINTER_FREE: bool = T::POINTER_FREE;

    #[inline]
    fn trace(&self, tracer: &mut Tracer) {
        if let Some(value) = self {
            value.trace(tracer);
        }
    }
}

// SAFETY: whichever side is present is traced; as for `Option`, the payload is whole in place
// or moved out.
unsafe impl<T: Trace, E: Trace> Trace for Result<T, E> {
    const POINTER_FREE: bool = T::POINTER_FREE && E::POINTER_FREE;

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
        // SAFETY: every member is traced; a tuple's members are fixed by its type.
        unsafe impl<$($name: Trace),+> Trace for ($($name,)+) {
            const POINTER_FREE: bool = true $(&& $name::POINTER_FREE)+;

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
