//! Heap statistics in the spirit of Go's `runtime.MemStats`.
//!
//! Byte and span counters are updated under the heap lock (so they are exact). Object counts
//! are kept per span class in each thread cache as plain (non-atomic) increments and added to
//! the global per-class counters in batches: a class's counts when the cache refills that
//! class, a thread's remote-free count every [`FLUSH_EVERY`] frees, everything at thread exit.
//! A reading therefore lags by at most about one span's worth of objects per class per thread,
//! as Go's MemStats lags between GCs. Reading is a few hundred relaxed loads (no lock).

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::size_class::{NUM_SIZE_CLASSES, SizeClass};
use crate::span::NUM_SPAN_CLASSES;

/// Batched remote-free counter flush threshold.
pub(crate) const FLUSH_EVERY: u64 = 256;

pub(crate) static HEAP_SYS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static HEAP_INUSE: AtomicUsize = AtomicUsize::new(0);
pub(crate) static HEAP_RELEASED: AtomicUsize = AtomicUsize::new(0);
pub(crate) static GC_SPANS_INUSE_BYTES: AtomicUsize = AtomicUsize::new(0);
pub(crate) static SPANS_INUSE: AtomicUsize = AtomicUsize::new(0);
/// Large objects allocated / freed (class 0 of Go's `BySize`).
pub(crate) static LARGE_MALLOCS: AtomicU64 = AtomicU64::new(0);
pub(crate) static LARGE_FREES: AtomicU64 = AtomicU64::new(0);
/// Small objects allocated per span class (flushed from the caches).
pub(crate) static CLASS_MALLOCS: [AtomicU64; NUM_SPAN_CLASSES] =
    [const { AtomicU64::new(0) }; NUM_SPAN_CLASSES];
/// Small objects freed per span class (flushed from the caches).
pub(crate) static CLASS_FREES: [AtomicU64; NUM_SPAN_CLASSES] =
    [const { AtomicU64::new(0) }; NUM_SPAN_CLASSES];
/// Times the scavenger (or `release_memory`) returned pages to the OS.
pub(crate) static SCAVENGES: AtomicU64 = AtomicU64::new(0);

/// Adds `n` to a counter with a relaxed RMW (only for batched flushes).
#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Objects of one size class (Go's `MemStats.BySize` entry).
#[derive(Copy, Clone, Debug, Default)]
pub struct ClassStats {
    /// Slot size in bytes (0 for the large-object row).
    pub size: usize,
    /// Cumulative objects allocated (both kinds).
    pub mallocs: u64,
    /// Cumulative objects freed (both kinds).
    pub frees: u64,
}

/// A snapshot of the heap's counters (see [`crate::stats`]).
#[derive(Copy, Clone, Debug)]
pub struct AllocStats {
    /// Bytes of heap memory obtained from the OS: every arena reserved (Go's `HeapSys`). Arenas are
    /// `MAP_NORESERVE` reservations, so this is address space, not resident memory.
    pub heap_sys: usize,
    /// Bytes in in-use spans (Go's `HeapInuse`): pages holding at least one slot or a large
    /// object, including free slots inside those spans and tail waste.
    pub heap_inuse: usize,
    /// Bytes in free page runs (Go's `HeapIdle`): `heap_sys - heap_inuse`, released or not.
    pub heap_idle: usize,
    /// Bytes of idle pages returned to the OS by the scavenger or [`crate::release_memory`] and
    /// not reused since (Go's `HeapReleased`). `heap_idle - heap_released` is what idle memory
    /// may still cost in RSS.
    pub heap_released: usize,
    /// Cumulative count of heap objects allocated (Go's `Mallocs`), both kinds, batched per thread.
    pub mallocs: u64,
    /// Cumulative count of heap objects freed (Go's `Frees`), both kinds, batched per thread.
    pub frees: u64,
    /// Bytes in in-use spans of the Gc kind (small and large): the part of `heap_inuse` that the
    /// collector owns.
    pub gc_spans_inuse_bytes: usize,
    /// Number of in-use spans (Go's `MSpanInuse` counts bytes of span structs; this counts spans).
    pub spans_inuse: usize,
    /// Times pages were returned to the OS (scavenger passes that released something, and
    /// `release_memory` calls).
    pub scavenges: u64,
    /// Per size class (Go's `BySize`): index 0 is large objects, index `i` size class `i`.
    pub by_size: [ClassStats; NUM_SIZE_CLASSES],
}

/// Reads the counters (relaxed loads only).
pub(crate) fn snapshot() -> AllocStats {
    let sys = HEAP_SYS.load(Ordering::Relaxed);
    let inuse = HEAP_INUSE.load(Ordering::Relaxed);
    let mut by_size = [ClassStats::default(); NUM_SIZE_CLASSES];
    by_size[0].mallocs = LARGE_MALLOCS.load(Ordering::Relaxed);
    by_size[0].frees = LARGE_FREES.load(Ordering::Relaxed);
    for (spc, (m, f)) in CLASS_MALLOCS.iter().zip(&CLASS_FREES).enumerate() {
        let row = &mut by_size[spc / 2];
        row.mallocs += m.load(Ordering::Relaxed);
        row.frees += f.load(Ordering::Relaxed);
    }
    for (i, row) in by_size.iter_mut().enumerate().skip(1) {
        row.size = SizeClass::from_index(i).map_or(0, |c| c.size());
    }
    AllocStats {
        heap_sys: sys,
        heap_inuse: inuse,
        heap_idle: sys.saturating_sub(inuse),
        heap_released: HEAP_RELEASED.load(Ordering::Relaxed),
        mallocs: by_size.iter().map(|r| r.mallocs).sum(),
        frees: by_size.iter().map(|r| r.frees).sum(),
        gc_spans_inuse_bytes: GC_SPANS_INUSE_BYTES.load(Ordering::Relaxed),
        spans_inuse: SPANS_INUSE.load(Ordering::Relaxed),
        scavenges: SCAVENGES.load(Ordering::Relaxed),
        by_size,
    }
}

impl Default for AllocStats {
    fn default() -> Self {
        AllocStats {
            heap_sys: 0,
            heap_inuse: 0,
            heap_idle: 0,
            heap_released: 0,
            mallocs: 0,
            frees: 0,
            gc_spans_inuse_bytes: 0,
            spans_inuse: 0,
            scavenges: 0,
            by_size: [ClassStats::default(); NUM_SIZE_CLASSES],
        }
    }
}
