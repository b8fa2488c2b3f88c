//! The arena index: any address to its span in O(1), without a lock (Go's `spanOf`).
//!
//! The heap is made of 64 MiB arenas, each reserved by one aligned `mmap`. Like Go on
//! linux/amd64, the index has two levels:
//!
//! ```text
//!   addr (48 bits):  | L1 index: 22 bits | page in arena: 13 bits | offset in page: 13 bits |
//!                         addr >> 26          (addr >> 13) & 8191
//!
//!   L1: [AtomicPtr<ArenaMeta>; 1 << 22]   32 MiB, one MAP_NORESERVE mapping, touched lazily
//!          |
//!          v  (one per arena, mapped when the arena is reserved, never freed)
//!   ArenaMeta { spans: [AtomicPtr<Span>; 8192] }     page -> span that covers it
//!          |
//!          v
//!   Span (metadata from the span allocator, never unmapped)
//! ```
//!
//! Writers hold the heap lock. An in-use span has every one of its pages pointing at it; a free
//! page run has (at least) its first and last page pointing at its free `Span` (used to coalesce
//! neighbours). Other entries may be stale: readers must check that the span they get is in use
//! and actually covers the address. Entries are published with Release and read with Acquire, so a
//! reader that sees a fresh entry sees the span fields written before it.

use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::span::Span;
use crate::{ARENA_SIZE, PAGE_SIZE, os};

/// Bits of address the index covers (x86-64 and aarch64 user space with 4-level page tables).
const ADDR_BITS: u32 = 48;
/// log2 of [`ARENA_SIZE`].
pub(crate) const ARENA_SHIFT: u32 = ARENA_SIZE.trailing_zeros();
/// Entries in the first level.
const L1_ENTRIES: usize = 1 << (ADDR_BITS - ARENA_SHIFT);
/// Pages per arena (entries in the second level).
pub(crate) const PAGES_PER_ARENA: usize = ARENA_SIZE / PAGE_SIZE;

/// Per-arena metadata: the page → span map.
pub(crate) struct ArenaMeta {
    /// `spans[i]`: the span covering page `i` of the arena. Written under the heap lock with
    /// Release, read anywhere with Acquire.
    spans: [AtomicPtr<Span>; PAGES_PER_ARENA],
}

/// The first level, mapped on first use (under the heap lock); null until then. Not a 32 MiB
/// static: the collector scans the data and bss segments as roots, and would read all of it.
static L1: AtomicPtr<AtomicPtr<ArenaMeta>> = AtomicPtr::new(core::ptr::null_mut());

/// The lowest registered arena's base and the highest one's end: every heap address lies in
/// `[ARENAS_LO, ARENAS_HI)`. A conservative scan rejects most words (small integers, code and
/// stack addresses) with these two compares, without touching the 32 MiB first level, whose
/// entries for random words miss every cache.
static ARENAS_LO: AtomicUsize = AtomicUsize::new(usize::MAX);
static ARENAS_HI: AtomicUsize = AtomicUsize::new(0);

impl ArenaMeta {
    /// The span recorded for the page of this arena holding `addr` (only the page bits of
    /// `addr` are used), or null; validated by callers as for [`span_of`].
    #[inline(always)]
    pub(crate) fn span_at(&self, addr: usize) -> *const Span {
        self.entry(addr)
            .load(Ordering::Acquire) // Acquire: pairs with the Release in `set_span`.
            .cast_const()
    }

    /// The entry of the page holding `addr`.
    #[inline(always)]
    pub(crate) fn entry(&self, addr: usize) -> &AtomicPtr<Span> {
        &self.spans[(addr >> PAGE_SIZE.trailing_zeros()) & (PAGES_PER_ARENA - 1)]
    }
}

/// The metadata of the arena holding `addr`, if it is registered. Arena metadata is never
/// unmapped, so callers may cache the answer (the free path keeps the last one per thread).
#[inline(always)]
pub(crate) fn meta_of(addr: usize) -> Option<&'static ArenaMeta> {
    // Acquire: pairs with the Release store in `register_arena` that published the mapping.
    let l1 = L1.load(Ordering::Acquire);
    if l1.is_null() {
        return None;
    }
    // The mask replaces a bounds check: an address above 2^48 aliases a lower entry, and every
    // caller validates that the span it finds covers the address.
    let i = (addr >> ARENA_SHIFT) & (L1_ENTRIES - 1);
    // SAFETY: a non-null L1 is a live, never unmapped, zero-initialised mapping of L1_ENTRIES
    // atomics (all-zero is a valid null AtomicPtr), and `i < L1_ENTRIES`.
    let m = unsafe { &*l1.add(i) }.load(Ordering::Acquire); // Acquire: pairs with `register_arena`.
    // SAFETY: non-null entries point at ArenaMeta mappings that are never unmapped.
    (!m.is_null()).then(|| unsafe { &*m })
}

/// Whether `addr` lies between the lowest and the highest registered arena. False means it is
/// not a heap address; true means it may be one.
#[inline(always)]
pub(crate) fn within_arenas(addr: usize) -> bool {
    // Relaxed: an address of a newly registered arena reaches a reader only through memory
    // published after `register_arena` widened the bounds (the heap lock, a span's publish).
    addr >= ARENAS_LO.load(Ordering::Relaxed) && addr < ARENAS_HI.load(Ordering::Relaxed)
}

/// The span recorded for the page holding `addr`, or null. The answer may be stale or belong to
/// a recycled span: callers validate it (see the module docs).
#[inline(always)]
pub(crate) fn span_of(addr: usize) -> *const Span {
    match meta_of(addr) {
        Some(m) => m.span_at(addr),
        None => core::ptr::null(),
    }
}

/// Records `span` for the page holding `addr`. The caller holds the heap lock and the arena of
/// `addr` is registered.
#[inline]
pub(crate) fn set_span(addr: usize, span: *const Span) {
    if let Some(m) = meta_of(addr) {
        // Release: pairs with the Acquire in `span_of`, publishing the span's fields.
        m.spans[(addr >> PAGE_SIZE.trailing_zeros()) & (PAGES_PER_ARENA - 1)]
            .store(span.cast_mut(), Ordering::Release);
    }
}

/// Records `span` for every page of `[start, start + npages * PAGE_SIZE)`.
pub(crate) fn set_span_range(start: usize, npages: usize, span: *const Span) {
    for i in 0..npages {
        set_span(start + i * PAGE_SIZE, span);
    }
}

/// Calls `f` with the base of every registered arena (those registered while it runs may be
/// left out).
pub(crate) fn for_each_arena(mut f: impl FnMut(usize)) {
    let (lo, hi) = (
        ARENAS_LO.load(Ordering::Relaxed),
        ARENAS_HI.load(Ordering::Relaxed),
    );
    let mut base = lo;
    while base < hi {
        if meta_of(base).is_some() {
            f(base);
        }
        base += ARENA_SIZE;
    }
}

/// Makes the arena at `base` (ARENA_SIZE-aligned) indexable. Called with the heap lock held.
/// Returns false when a mapping fails or the address is outside the indexed range.
pub(crate) fn register_arena(base: usize) -> bool {
    if base >> ADDR_BITS != 0 {
        return false;
    }
    let mut l1 = L1.load(Ordering::Acquire);
    if l1.is_null() {
        let Some(p) = os::map(L1_ENTRIES * size_of::<AtomicPtr<ArenaMeta>>()) else {
            return false;
        };
        l1 = p.as_ptr().cast();
        // Release: pairs with the Acquire in `meta_of`. Only the heap-lock holder stores here.
        L1.store(l1, Ordering::Release);
    }
    // SAFETY: `l1` is the live L1 mapping and `base >> ARENA_SHIFT < L1_ENTRIES` (checked above).
    let slot = unsafe { &*l1.add(base >> ARENA_SHIFT) };
    if !slot.load(Ordering::Relaxed).is_null() {
        return true;
    }
    let Some(m) = os::map(size_of::<ArenaMeta>()) else {
        return false;
    };
    ARENAS_LO.fetch_min(base, Ordering::Relaxed);
    ARENAS_HI.fetch_max(base + ARENA_SIZE, Ordering::Relaxed);
    // Release: pairs with the Acquire in `meta_of`.
    slot.store(m.as_ptr().cast(), Ordering::Release);
    true
}
