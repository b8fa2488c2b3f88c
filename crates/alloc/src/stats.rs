//! Heap statistics in the spirit of Go's `runtime.MemStats`.
//!
//! Byte and span counters are updated under the heap lock (so they are exact). Object counts
//! are kept per span class in each thread cache as plain (non-atomic) increments and added to
//! the global per-class counters in batches: a class's counts when the cache refills that
//! class, a thread's remote-free count every [`FLUSH_EVERY`] frees, everything at thread exit.
//! A reading therefore lags by at most about one span's worth of objects per class per thread,
//! as Go's MemStats lags between GCs. Reading is a few hundred relaxed loads (no lock).
//!
//! Both snapshot types print themselves for people (`Display`): byte counts in binary units
//! (B, KiB, MiB, GiB, TiB, one decimal), the per-class table without its empty rows. Printing
//! allocates nothing (it writes straight to the formatter), like the rest of the crate.

use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

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

/// Heap in use (`HEAP_INUSE`) at or past which carving a span calls the pressure hook;
/// `usize::MAX` for never. Set by the collector's pacer to its trigger.
static PRESSURE_AT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The collector's pressure hook (a `fn()`), or null.
static PRESSURE_HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Sets the heap in use past which carving a span calls the pressure hook.
pub fn set_pressure_threshold(bytes: usize) {
    PRESSURE_AT.store(bytes, Ordering::Relaxed);
}

/// Sets the function a thread calls when it carves a span with the heap in use past the
/// pressure threshold: the collector's, which makes that thread's next Gc allocation compare
/// the heap with the trigger. Malloc allocation does not reach the pacer otherwise: Gc objects
/// that each own a 1 MiB buffer would grow the heap by 2 GiB per 64 KiB batch of Gc
/// allocation.
///
/// # Safety
/// The hook runs inside the allocator (inside any `alloc` of any thread, the collector's
/// included): it must not allocate, take a lock, block or panic (the collector's sets a bit in a
/// thread-local).
pub unsafe fn set_pressure_hook(hook: fn()) {
    PRESSURE_HOOK.store(hook as *mut (), Ordering::Relaxed);
}

/// Called with the heap in use after a span was carved, on the carving thread, with no lock held.
#[inline]
pub(crate) fn note_in_use(in_use: usize) {
    if in_use >= PRESSURE_AT.load(Ordering::Relaxed) {
        let hook = PRESSURE_HOOK.load(Ordering::Relaxed);
        if !hook.is_null() {
            // SAFETY: only `set_pressure_hook` stores here, and it stores a `fn()`, which its
            // caller promised may run inside the allocator.
            let hook: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(hook) };
            hook();
        }
    }
}

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
        let row = &mut by_size[crate::span::spc_size_class(spc)];
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

impl ClassStats {
    /// Objects of this class allocated and not yet freed (0 if the batched counts briefly
    /// show more frees than allocations).
    pub fn live(&self) -> u64 {
        self.mallocs.saturating_sub(self.frees)
    }
}

impl AllocStats {
    /// Heap objects allocated and not yet freed (Go's `Mallocs - Frees`; 0 if the batched
    /// counts briefly show more frees than allocations).
    pub fn live_objects(&self) -> u64 {
        self.mallocs.saturating_sub(self.frees)
    }
}

/// A byte count in binary units, for people: `512 B`, `1.5 KiB`, `64.0 MiB` (the stats' `Display`
/// impls here and in goro-gc use it).
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        // The largest unit that keeps the number at least 1 (TiB at most).
        let step = ((usize::BITS - 1 - self.0.leading_zeros()) / 10).min(4) as usize;
        let value = self.0 as f64 / (1u64 << (10 * step)) as f64;
        write!(f, "{value:.1} {}", UNITS[step - 1])
    }
}

/// One row: `8 B: 1000 allocated, 900 freed, 100 live`, or `large: ...` for the row of large
/// objects (size 0).
impl fmt::Display for ClassStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.size == 0 {
            f.write_str("large")?;
        } else {
            write!(f, "{} B", self.size)?;
        }
        write!(
            f,
            ": {} allocated, {} freed, {} live",
            self.mallocs,
            self.frees,
            self.live()
        )
    }
}

/// A summary, then a table of the size classes that have allocated anything:
///
/// ```text
/// heap: 64.0 MiB reserved, 1.3 MiB in use in 9 spans (256.0 KiB of them Gc spans), 62.7 MiB idle
/// released to the OS: 62.0 MiB of the idle memory, in 3 scavenges
/// objects: 1200 allocated, 200 freed, 1000 live
///   size (B)    allocated        freed         live
///          8         1000          100          900
///      large          200          100          100
/// ```
impl fmt::Display for AllocStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "heap: {} reserved, {} in use in {} spans ({} of them Gc spans), {} idle",
            Bytes(self.heap_sys),
            Bytes(self.heap_inuse),
            self.spans_inuse,
            Bytes(self.gc_spans_inuse_bytes),
            Bytes(self.heap_idle),
        )?;
        writeln!(
            f,
            "released to the OS: {} of the idle memory, in {} scavenges",
            Bytes(self.heap_released),
            self.scavenges,
        )?;
        write!(
            f,
            "objects: {} allocated, {} freed, {} live",
            self.mallocs,
            self.frees,
            self.live_objects(),
        )?;
        if self.by_size.iter().all(|row| row.mallocs == 0) {
            return Ok(());
        }
        write!(
            f,
            "\n  {:>8} {:>12} {:>12} {:>12}",
            "size (B)", "allocated", "freed", "live"
        )?;
        // Small classes in size order, then the large objects (row 0).
        let small = self.by_size.iter().skip(1).filter(|row| row.mallocs > 0);
        let large = self.by_size.iter().take(1).filter(|row| row.mallocs > 0);
        for row in small.chain(large) {
            f.write_str("\n  ")?;
            if row.size == 0 {
                write!(f, "{:>8}", "large")?;
            } else {
                write!(f, "{:>8}", row.size)?;
            }
            write!(
                f,
                " {:>12} {:>12} {:>12}",
                row.mallocs,
                row.frees,
                row.live()
            )?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_in_binary_units_with_one_decimal() {
        let shown = |n: usize| Bytes(n).to_string();
        assert_eq!(shown(0), "0 B");
        assert_eq!(shown(1023), "1023 B");
        assert_eq!(shown(1024), "1.0 KiB");
        assert_eq!(shown(1536), "1.5 KiB");
        assert_eq!(shown(64 << 20), "64.0 MiB");
        assert_eq!(shown((3 << 30) + (512 << 20)), "3.5 GiB");
        assert_eq!(shown(2 << 40), "2.0 TiB");
        assert_eq!(shown(5000 << 40), "5000.0 TiB");
        assert_eq!(shown(4 << 20), "4.0 MiB");
        assert_eq!(shown(3 << 30), "3.0 GiB");
        assert_eq!(shown(usize::MAX), "16777216.0 TiB");
    }

    #[test]
    fn a_class_row_names_its_size_and_counts_the_live_objects() {
        let row = ClassStats {
            size: 48,
            mallocs: 1000,
            frees: 900,
        };
        assert_eq!(row.to_string(), "48 B: 1000 allocated, 900 freed, 100 live");
        let large = ClassStats {
            size: 0,
            mallocs: 3,
            frees: 1,
        };
        assert_eq!(large.to_string(), "large: 3 allocated, 1 freed, 2 live");
    }

    #[test]
    fn more_frees_than_mallocs_in_batched_counts_show_zero_live() {
        let row = ClassStats {
            size: 8,
            mallocs: 5,
            frees: 7,
        };
        assert_eq!(row.live(), 0);
        assert!(row.to_string().ends_with("0 live"), "{row}");
    }

    #[test]
    fn heap_stats_print_a_summary_and_only_the_classes_in_use() {
        let mut stats = AllocStats {
            heap_sys: 64 << 20,
            heap_inuse: (1 << 20) + (300 << 10),
            heap_idle: (64 << 20) - (1 << 20) - (300 << 10),
            heap_released: 62 << 20,
            mallocs: 1200,
            frees: 200,
            gc_spans_inuse_bytes: 256 << 10,
            spans_inuse: 9,
            scavenges: 3,
            ..AllocStats::default()
        };
        stats.by_size[0] = ClassStats {
            size: 0,
            mallocs: 200,
            frees: 100,
        };
        stats.by_size[1] = ClassStats {
            size: 8,
            mallocs: 1000,
            frees: 100,
        };
        stats.by_size[2] = ClassStats {
            size: 16,
            mallocs: 0,
            frees: 0,
        };
        assert_eq!(
            stats.to_string(),
            "heap: 64.0 MiB reserved, 1.3 MiB in use in 9 spans (256.0 KiB of them Gc spans), \
             62.7 MiB idle\n\
             released to the OS: 62.0 MiB of the idle memory, in 3 scavenges\n\
             objects: 1200 allocated, 200 freed, 1000 live\n  \
             size (B)    allocated        freed         live\n         \
             8         1000          100          900\n     \
             large          200          100          100"
        );
    }

    #[test]
    fn an_empty_heap_prints_no_table() {
        let text = AllocStats::default().to_string();
        assert_eq!(
            text,
            "heap: 0 B reserved, 0 B in use in 0 spans (0 B of them Gc spans), 0 B idle\n\
             released to the OS: 0 B of the idle memory, in 0 scavenges\n\
             objects: 0 allocated, 0 freed, 0 live"
        );
    }

    #[test]
    fn a_snapshot_of_the_live_heap_prints_its_classes() {
        use core::alloc::{GlobalAlloc, Layout};
        let layout = Layout::new::<[u64; 4]>();
        // SAFETY: a non-zero-sized layout; the block is freed below with the same layout.
        let block = unsafe { crate::GoroAlloc.alloc(layout) };
        assert!(!block.is_null());
        let text = crate::stats().to_string();
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { crate::GoroAlloc.dealloc(block, layout) };
        assert!(text.starts_with("heap: "), "{text}");
        assert!(text.contains("size (B)"), "{text}");
    }
}
