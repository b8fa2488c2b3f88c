//! Heap statistics in the spirit of Go's `runtime.MemStats`.
//!
//! Byte and span counters are updated under the heap lock (so they are exact). `mallocs` and
//! `frees` are counted per thread cache and added to the global counters in batches (at refill,
//! every [`FLUSH_EVERY`] operations, and at thread exit), so a reading can lag by a few hundred
//! operations per thread; Go's MemStats has the same property between GCs.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Batched counter flush threshold.
pub(crate) const FLUSH_EVERY: u64 = 256;

pub(crate) static HEAP_SYS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static HEAP_INUSE: AtomicUsize = AtomicUsize::new(0);
pub(crate) static GC_SPANS_INUSE_BYTES: AtomicUsize = AtomicUsize::new(0);
pub(crate) static SPANS_INUSE: AtomicUsize = AtomicUsize::new(0);
pub(crate) static MALLOCS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FREES: AtomicU64 = AtomicU64::new(0);

/// A snapshot of the heap's counters (see [`crate::stats`]).
#[derive(Copy, Clone, Debug, Default)]
pub struct AllocStats {
    /// Bytes of heap memory obtained from the OS: every arena reserved (Go's `HeapSys`). Arenas are
    /// `MAP_NORESERVE` reservations, so this is address space, not resident memory.
    pub heap_sys: usize,
    /// Bytes in in-use spans (Go's `HeapInuse`): pages holding at least one slot or a large
    /// object, including free slots inside those spans and tail waste.
    pub heap_inuse: usize,
    /// Bytes in free page runs (Go's `HeapIdle`): `heap_sys - heap_inuse`. Nothing is returned to
    /// the OS yet (no scavenger), so this is also Go's `HeapIdle - HeapReleased`.
    pub heap_idle: usize,
    /// Cumulative count of heap objects allocated (Go's `Mallocs`), both kinds, batched per thread.
    pub mallocs: u64,
    /// Cumulative count of heap objects freed (Go's `Frees`), both kinds, batched per thread.
    pub frees: u64,
    /// Bytes in in-use spans of the Gc kind (small and large): the part of `heap_inuse` that the
    /// collector owns.
    pub gc_spans_inuse_bytes: usize,
    /// Number of in-use spans (Go's `MSpanInuse` counts bytes of span structs; this counts spans).
    pub spans_inuse: usize,
}

/// Reads the counters (a few relaxed loads).
pub(crate) fn snapshot() -> AllocStats {
    let sys = HEAP_SYS.load(Ordering::Relaxed);
    let inuse = HEAP_INUSE.load(Ordering::Relaxed);
    AllocStats {
        heap_sys: sys,
        heap_inuse: inuse,
        heap_idle: sys.saturating_sub(inuse),
        mallocs: MALLOCS.load(Ordering::Relaxed),
        frees: FREES.load(Ordering::Relaxed),
        gc_spans_inuse_bytes: GC_SPANS_INUSE_BYTES.load(Ordering::Relaxed),
        spans_inuse: SPANS_INUSE.load(Ordering::Relaxed),
    }
}
