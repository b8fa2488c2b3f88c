//! goro-alloc: Go's heap (mheap / mcentral / mcache) rebuilt in Rust, serving both the garbage
//! collector (`Gc`-kind spans) and the whole process as its `#[global_allocator]`
//! ([`GoroAlloc`]).
//!
//! # Vocabulary (Go's)
//!
//! - *page*: 8 KiB ([`PAGE_SIZE`]). *arena*: 64 MiB of address space reserved at once
//!   ([`ARENA_SIZE`]).
//! - *span* (`mspan`): a run of pages; in use it holds equal *slots* of one *size class*
//!   ([`size_class`], 67 classes from 8 B to 32 KiB) or one *large* object (> 32 KiB).
//! - *span class*: size class × kind, kind being [`SpanKind::Malloc`] (ordinary Rust heap
//!   blocks) or [`SpanKind::Gc`] (collector objects), the latter split in two like Go's
//!   *scan* and *noscan* classes: objects that may hold pointers ([`alloc_gc`]) and
//!   pointer-free ones ([`alloc_gc_pointer_free`]). The kinds never share a span.
//! - *mcache*: per-thread cache owning one current span per span class (`mcache.rs`).
//! - *mcentral*: per span class, the unowned spans with free slots (`mcentral.rs`).
//! - *mheap*: the page heap carving spans out of arenas and coalescing freed runs (`mheap.rs`).
//! - *arena index*: the two-level map from any address to its span (`arena.rs`), which makes
//!   [`find_block`] O(1) and lock-free for interior pointers.
//!
//! # Allocation, in order of cost
//!
//! 1. Small (`size <= 32 KiB`): size → class by table lookup; the thread cache pops the class's
//!    *bin* (a stack of slot addresses this thread freed), else its current span's free list
//!    (no atomics, no lock; `mcache.rs`).
//! 2. The span is exhausted: collect frees other threads pushed on its remote stack; else trade
//!    it for a span from the central list (a spin lock per span class); else carve a new span
//!    from the page heap (one global spin lock).
//! 3. Large: a span of its own straight from the page heap.
//!
//! A [`GoroAlloc`] free of a small block gets its class from the layout and goes on the bin of
//! that class. Other frees (a full bin, `free_gc`, large blocks) look the span up through the
//! arena index: the owning thread pushes on the span's local list, any other thread on its
//! lock-free remote stack (`mcentral.rs` argues why a span never gets lost or listed twice).
//!
//! ```text
//!   address --arena index (L1[addr>>26] -> L2[page])--> Span { start, elem_size, nelems, ... }
//!                                                             |
//!   | slot 0 | slot 1 | ... | slot n-1 | tail |  <-----------+   index = (addr-start)*magic>>32
//! ```
//!
//! # The Gc slot convention
//!
//! The collector (goro-gc) relies on this layout, and the allocator keeps it:
//!
//! - In a Gc-kind span the **last word** of every slot (`slot + elem_size - 8`) is the client's
//!   *header word*. The allocator never reads or writes it, except that it is **0 in every free
//!   slot**: the allocator zeroes all headers when it carves a Gc span (reused pages may be
//!   dirty), and the client must zero the header before calling [`free_gc`].
//! - The allocator's free-list link lives in the word before the header of a free Gc slot (on
//!   the header's cache line, so that freeing a dead object touches one line of it), so Gc
//!   slots are at least 16 bytes ([`gc_slot_size`]); in word 0 of a free malloc slot.
//! - A large Gc object (> 32 KiB) has its own span with one slot: `elem_size` is the size rounded
//!   up to 8 and the header is at `start + elem_size - 8`.
//! - When `alloc_gc` is asked for an alignment above 8, the slot may come from a larger class than
//!   `gc_slot_size(size)` (the first whose size is a multiple of the alignment); the true slot
//!   size is `find_block(ptr).size` / [`GcSpan::elem_size`].
//! - Mark bits: one per slot, kept in the span (16 words: at most 1024 slots), cleared when a span
//!   is carved and by [`clear_marks`]. Malloc-kind spans have mark bits too (the collector may
//!   use them for conservative scanning of non-GC blocks).
//!
//! # Re-entrance and thread exit
//!
//! Nothing here allocates through the global allocator, panics, or unwinds: locks are spin locks
//! (`sync.rs`), metadata comes from `mmap`, out of memory returns null. A thread's cache is
//! released by its thread-local destructor; later calls on that thread (from other destructors)
//! use a shared cache under a lock.
//!
//! Memory goes back to the OS through the scavenger (a background thread, `mheap.rs`) and
//! [`release_memory`]; `fork` is handled with `pthread_atfork` (`mheap.rs`). Left for later
//! (see docs/alloc.md): per-P caches, Go's radix-tree page allocator.

pub mod size_class;

mod arena;
pub mod dirty;
mod fork;
mod mcache;
mod mcentral;
mod mheap;
pub mod nosuspend;
mod os;
pub mod parked;
mod scavenger;
mod span;
mod stats;
mod sync;

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use size_class::{MAX_SMALL_SIZE, SizeClass};
use span::{MAX_OBJECTS, POINTER_FREE_BASE, STATE_LARGE, STATE_SMALL, Span};

pub use stats::ClassStats;

pub use stats::{AllocStats, Bytes, set_pressure_hook, set_pressure_threshold};

pub use os::{futex_wait, futex_wake, thread_cpu_time};
pub use scavenger::scavenger_thread_id;
pub use sync::{SpinGuard, SpinLock};

/// Bytes per page: the unit spans are made of.
pub const PAGE_SIZE: usize = 8192;
/// Bytes per arena: the unit of address space reserved from the OS.
pub const ARENA_SIZE: usize = 64 << 20;
/// The most slots a span holds ([`GcSpan::len`] never exceeds it).
pub const MAX_SPAN_SLOTS: usize = MAX_OBJECTS;

/// Which allocator interface a span serves.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Ordinary heap blocks from [`GoroAlloc`] (Box, Vec, ...).
    Malloc = 0,
    /// Collector objects from [`alloc_gc`], following the Gc slot convention.
    Gc = 1,
}

/// Ends the process with a grep-able message (Go's `throw`); never unwinds.
#[cold]
pub(crate) fn throw(msg: &str) -> ! {
    os::write_stderr("fatal error: goro-alloc: ");
    os::write_stderr(msg);
    os::write_stderr("\n");
    os::abort()
}

/// Allocates `size` bytes aligned to `align` (a power of two) in a span of `kind`. The caller
/// guarantees `size <= isize::MAX` (a `Layout` does), so `size + 7` does not wrap.
///
/// The fast path (size <= 2040 bytes, align <= 8, a cached class with a free slot): one combined
/// size/alignment compare, a table lookup giving the span class, then for Malloc blocks
/// `MCache::alloc_binned` (the thread's cache at a fixed `%fs` offset: pop the class's bin, 17
/// instructions with the `ret` and two branches in all) or, when the bin is empty, and always
/// for Gc slots, `MCache::alloc` (pop the current span's free list: 20 instructions, three
/// branches, for a Malloc block; 17 for a Gc slot). Measured with callgrind in BENCHMARKS.md.
#[inline(always)]
fn malloc(size: usize, align: usize, kind: SpanKind) -> *mut u8 {
    debug_assert!(size <= isize::MAX as usize);
    let idx = size.wrapping_add(7) >> 3;
    // `idx < 256` (size <= FAST_SIZE_MAX) and `align < 16` in one compare, without the overflow
    // of `align << k` for huge alignments: both are below 16 iff their OR is.
    if (idx >> 4) | align < 16 {
        // SAFETY: `idx >> 4 < 16` was just checked; this lets the `u8` index below compile to
        // nothing.
        unsafe { core::hint::assert_unchecked(idx < 256) };
        let spc = SizeClass::small_spc(idx as u8) | kind as u8;
        return match kind {
            SpanKind::Malloc => mcache::alloc_binned(spc),
            SpanKind::Gc => mcache::alloc_small(spc),
        };
    }
    malloc_slow(size, align, kind)
}

#[cold]
#[inline(never)]
fn malloc_slow(size: usize, align: usize, kind: SpanKind) -> *mut u8 {
    match SizeClass::for_size_align(size, align) {
        Some(c) => mcache::alloc_small((c.index() * 2 + kind as usize) as u8),
        None => alloc_large(size, align, kind as usize),
    }
}

/// Whether the collector allocates black ([`set_allocate_black`]).
pub(crate) static ALLOCATE_BLACK: AtomicBool = AtomicBool::new(false);

/// Tells the allocator that the collector allocates black from now on (`on`), as it does from
/// the start of its marking until it has condemned what it did not mark. Two kinds of new
/// spans are then marked as they are carved:
/// - a large malloc block: it has a span of its own, whose mark bit a new allocation would
///   clear, so a marker reaching a large buffer that the mutator frees and allocates again in a
///   loop would find it unmarked, and scan it, every time. A marked malloc block is scanned
///   again when the marking ends (the collector rescans every one), so marking it early loses
///   nothing;
/// - every slot of a small Gc span: all free, so the marks cost nothing (the collector skips a
///   marked slot whose header is 0, and marks every slot allocated while this lasts anyway),
///   and the allocations from the span find their mark set, which saves each an atomic
///   read-modify-write (15 % of binary_trees' mutator time went to them).
pub fn set_allocate_black(on: bool) {
    ALLOCATE_BLACK.store(on, Ordering::Relaxed);
}

/// A large object: its own span from the page heap, of span class `spc` (0 Malloc, 1 Gc,
/// [`POINTER_FREE_BASE`] pointer-free Gc). With `align > PAGE_SIZE` the span is over-allocated
/// by `align - PAGE_SIZE` bytes and the object starts at the first aligned address.
#[cold]
fn alloc_large(size: usize, align: usize, spc: usize) -> *mut u8 {
    let Some(elem) = size.max(16).checked_next_multiple_of(8) else {
        return core::ptr::null_mut();
    };
    let extra = align.saturating_sub(PAGE_SIZE);
    let Some(npages) = elem.checked_add(extra).map(|b| b.div_ceil(PAGE_SIZE)) else {
        return core::ptr::null_mut();
    };
    let Some(s) = mheap::alloc_span(npages) else {
        return core::ptr::null_mut();
    };
    scavenger::ensure_started();
    let start = s.start.load(Ordering::Relaxed);
    let obj = start.next_multiple_of(align.max(8));
    let gc = span::spc_is_gc(spc);
    // Malloc objects may grow in place up to the end of the span; Gc objects keep the exact
    // (8-rounded) size so the header word sits where the collector expects it.
    let elem_size = if gc {
        elem
    } else {
        start + npages * PAGE_SIZE - obj
    };
    s.init_large(obj, elem_size, spc);
    if !gc && ALLOCATE_BLACK.load(Ordering::Relaxed) {
        s.mark_black();
    }
    mheap::publish(s, STATE_LARGE);
    stats::LARGE_MALLOCS.fetch_add(1, Ordering::Relaxed);
    obj as *mut u8
}

/// Frees a block from `malloc`.
///
/// # Safety
/// `p` must be a live block start returned by this allocator, freed once.
#[inline(always)]
unsafe fn free(p: *mut u8) {
    // SAFETY: caller's contract.
    unsafe { mcache::free(p) }
}

/// The free of a block whose span is not a small span this thread owns and not small at all:
/// a large object, or misuse.
///
/// # Safety
/// As [`free`].
#[cold]
unsafe fn free_not_small(s: &'static Span, p: *mut u8) {
    match s.state.load(Ordering::Acquire) {
        STATE_LARGE => {
            if s.obj_base.load(Ordering::Relaxed) != p as usize {
                throw("free of a pointer inside a large object");
            }
            stats::LARGE_FREES.fetch_add(1, Ordering::Relaxed);
            mheap::free_span(s);
        }
        _ => throw("free of a pointer in a free span (double free?)"),
    }
}

/// The process's global allocator: `#[global_allocator] static A: GoroAlloc = GoroAlloc;`.
///
/// Never unwinds (out of memory returns null), never allocates through itself, and keeps working
/// on a thread whose cache was already destroyed.
pub struct GoroAlloc;

// SAFETY: `malloc` returns null or a block of at least `size` bytes aligned to `align` that no
// other live allocation overlaps; `free` accepts exactly such blocks; nothing unwinds.
unsafe impl GlobalAlloc for GoroAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        malloc(layout.size(), layout.align(), SpanKind::Malloc)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` was allocated by us and is freed once.
        unsafe { mcache::free_sized(ptr, layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = malloc(layout.size(), layout.align(), SpanKind::Malloc);
        if !p.is_null() {
            // SAFETY: `p` is a fresh block of at least `layout.size()` bytes.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if let Some(b) = find_block(ptr as usize) {
            let in_place = match SizeClass::for_size_align(new_size, align) {
                Some(c) => b.size <= MAX_SMALL_SIZE && c.size() == b.size,
                // Large stays in place while it fits and keeps at least half its pages busy.
                None => b.size > MAX_SMALL_SIZE && new_size <= b.size && new_size * 2 > b.size,
            };
            if in_place && b.start == ptr {
                return ptr;
            }
        }
        let new = malloc(new_size, align, SpanKind::Malloc);
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `min(old, new)` bytes long.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: GlobalAlloc's contract: `ptr` is ours, allocated with `layout`, and is
            // not used after realloc.
            unsafe { mcache::free_sized(ptr, layout.size(), align) };
        }
        new
    }
}

/// The slot that contains an address, as found by [`find_block`] (allocated or free).
#[derive(Copy, Clone, Debug)]
pub struct Block {
    /// First byte of the slot.
    pub start: *mut u8,
    /// Slot size (`elem_size`).
    pub size: usize,
    /// Kind of the span holding the slot.
    pub kind: SpanKind,
    pointer_free: bool,
    span: &'static Span,
    index: usize,
}

/// A slot's mark bit in the current marking epoch ([`Block::mark_bit`]): a marker tests it and
/// then claims it without validating the span's epoch twice.
#[derive(Clone, Copy, Debug)]
pub struct MarkBit {
    word: Option<&'static AtomicU64>,
    bit: u64,
}

impl MarkBit {
    /// Whether the bit is set.
    #[inline]
    pub fn is_set(self) -> bool {
        // Acquire: pairs with the AcqRel in `set`.
        self.word
            .is_some_and(|w| w.load(Ordering::Acquire) & self.bit != 0)
    }

    /// Sets the bit; true if it was clear (the caller's claim).
    #[inline]
    pub fn set(self) -> bool {
        match self.word {
            // A plain load first: most words a conservative scan finds point at blocks already
            // marked, and a locked RMW costs several times a load.
            // Relaxed: a set bit stays set for the cycle; the RMW below is the claim.
            Some(w) if w.load(Ordering::Relaxed) & self.bit != 0 => false,
            // AcqRel: the bit is the collector's "grey" claim; pairs with other markers' RMWs.
            Some(w) => w.fetch_or(self.bit, Ordering::AcqRel) & self.bit == 0,
            None => false,
        }
    }
}

impl Block {
    /// This slot's mark bit, for a marker about to test and set it: the span's bits are cleared
    /// first if they belong to an older marking epoch.
    #[inline]
    pub fn mark_bit(&self) -> MarkBit {
        MarkBit {
            word: self.span.current_marks().get(self.index / 64),
            bit: 1u64 << (self.index % 64),
        }
    }

    /// Sets this slot's mark bit; true if it was clear.
    #[inline]
    pub fn mark(&self) -> bool {
        self.mark_bit().set()
    }

    /// Whether this slot's mark bit is set.
    #[inline]
    pub fn is_marked(&self) -> bool {
        self.span.slot_marked(self.index)
    }

    /// Whether the slot lies in a span of pointer-free Gc objects ([`alloc_gc_pointer_free`]).
    #[inline]
    pub fn is_pointer_free(&self) -> bool {
        self.pointer_free
    }
}

impl core::fmt::Debug for Span {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Span")
            .field("start", &(self.start.load(Ordering::Relaxed) as *const u8))
            .field("npages", &self.npages.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The slot containing `addr` (interior pointers too), in O(1) without a lock. `None` when `addr`
/// is not inside a slot of an in-use span (free pages, tail waste, alignment padding of a large
/// span, memory that is not goro's). Safe to call while other threads allocate and free; the
/// answer may then be stale.
#[inline]
pub fn find_block(addr: usize) -> Option<Block> {
    if !arena::within_arenas(addr) {
        return None;
    }
    let s = arena::span_of(addr);
    if s.is_null() {
        return None;
    }
    // SAFETY: span metadata is never unmapped and made of atomics.
    let s: &'static Span = unsafe { &*s };
    let (start, size, index) = s.locate(addr)?;
    debug_assert!(index < MAX_OBJECTS);
    let spc = s.spc.load(Ordering::Relaxed) as usize;
    let kind = if span::spc_is_gc(spc) {
        SpanKind::Gc
    } else {
        SpanKind::Malloc
    };
    Some(Block {
        start: start as *mut u8,
        size,
        kind,
        pointer_free: span::spc_is_pointer_free(spc),
        span: s,
        index,
    })
}

/// Asks the CPU for the first line [`find_block`] would load for `addr`: the arena index's entry
/// for its page. A marker that calls this, then [`prefetch_span`] a few words later, then
/// `find_block` a few words after that, has the cache misses of many words in flight at once
/// instead of taking two or three in a row for each. A hint: no effect on what any call returns.
#[inline(always)]
pub fn prefetch_span_entry(addr: usize) {
    if arena::within_arenas(addr)
        && let Some(meta) = arena::meta_of(addr)
    {
        prefetch(core::ptr::from_ref(meta.entry(addr)).cast());
    }
}

/// Asks the CPU for the lines of `addr`'s span that [`find_block`] and a mark read: its first
/// line (state, bounds, slot size) and its first mark words. Loads the index entry, which
/// [`prefetch_span_entry`] should have asked for some time before.
#[inline(always)]
pub fn prefetch_span(addr: usize) {
    if !arena::within_arenas(addr) {
        return;
    }
    let span = arena::span_of(addr);
    if !span.is_null() {
        prefetch(span.cast());
        // SAFETY: span metadata is never unmapped; only the field's address is taken.
        prefetch(unsafe { core::ptr::addr_of!((*span).marks) }.cast());
    }
}

/// A prefetch of the line holding `at` for reading.
#[inline(always)]
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and changes no memory, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// False when `addr` cannot be in the goro heap: it lies outside every arena. Two compares of
/// values that stay in cache, where [`find_block`] walks the arena index; a conservative scan
/// calls it on every word first.
#[inline(always)]
pub fn may_be_heap(addr: usize) -> bool {
    arena::within_arenas(addr)
}

/// Whether `addr` lies inside a slot of the goro heap (`find_block(addr).is_some()`).
#[inline]
pub fn is_goro_heap(addr: usize) -> bool {
    find_block(addr).is_some()
}

/// The slot size `alloc_gc(size, align <= 8)` returns: `max(size, 16)` rounded up to its size
/// class, or above 32 KiB rounded up to 8.
pub const fn gc_slot_size(size: usize) -> usize {
    let s = if size < 16 { 16 } else { size };
    match SizeClass::for_size(s) {
        Some(c) => c.size(),
        None => s.next_multiple_of(8),
    }
}

/// Allocates a Gc-kind slot of at least `gc_slot_size(size)` bytes aligned to `align` (a power of
/// two). Its header word (last word) is 0. Null when out of memory.
#[inline]
pub fn alloc_gc(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() || size > isize::MAX as usize {
        return core::ptr::null_mut();
    }
    malloc(size.max(16), align, SpanKind::Gc)
}

/// [`alloc_gc`] for an object the collector need not scan: its slot lies in a span of
/// pointer-free Gc objects ([`Block::is_pointer_free`]), Go's *noscan* spans. A marker marks
/// such an object without reading it, its header included (a cache miss per object
/// otherwise). Same slot convention and sizes as [`alloc_gc`].
#[inline]
pub fn alloc_gc_pointer_free(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() || size > isize::MAX as usize {
        return core::ptr::null_mut();
    }
    let size = size.max(16);
    let idx = size.wrapping_add(7) >> 3;
    // As in `malloc`: `idx < 256` and `align < 16` in one compare.
    if (idx >> 4) | align < 16 {
        // SAFETY: `idx >> 4 < 16` was just checked.
        unsafe { core::hint::assert_unchecked(idx < 256) };
        let class = SizeClass::small_spc(idx as u8) as usize / 2;
        return mcache::alloc_small((POINTER_FREE_BASE + class) as u8);
    }
    alloc_gc_pointer_free_slow(size, align)
}

#[cold]
#[inline(never)]
fn alloc_gc_pointer_free_slow(size: usize, align: usize) -> *mut u8 {
    match SizeClass::for_size_align(size, align) {
        Some(c) => mcache::alloc_small((POINTER_FREE_BASE + c.index()) as u8),
        None => alloc_large(size, align, POINTER_FREE_BASE),
    }
}

/// Frees a Gc slot, from any thread.
///
/// # Safety
/// May be called only with a slot start returned by [`alloc_gc`] that is not freed yet, whose
/// header word the caller has set back to 0, and that nobody uses afterwards.
pub unsafe fn free_gc(ptr: *mut u8) {
    // SAFETY: caller's contract.
    unsafe { free(ptr) }
}

/// Clears the mark bits of every span (both kinds), by starting a new marking epoch: one
/// atomic add, whatever the heap (each span's bits are cleared by its first mark in the epoch;
/// see `span.rs`). Called with the world stopped.
pub fn clear_marks() {
    span::new_mark_epoch();
}

/// An in-use Gc-kind span, as seen by [`for_each_gc_span`]. Its geometry is a snapshot; the slots'
/// memory stays mapped forever, so a handle outliving the span is harmless.
#[derive(Copy, Clone)]
pub struct GcSpan {
    span: &'static Span,
    base: usize,
    elem_size: usize,
    len: usize,
}

impl GcSpan {
    /// Address of slot 0.
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.base as *mut u8
    }
    /// Slot size; a slot's header word is at `slot(i) + elem_size() - 8`.
    #[inline]
    pub fn elem_size(&self) -> usize {
        self.elem_size
    }
    /// Number of slots (1 for a large object).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the span holds one large object (above 32 KiB) rather than size-class slots.
    #[inline]
    pub fn is_large(&self) -> bool {
        // Acquire: pairs with the Release in `mheap::publish`.
        self.span.state.load(Ordering::Acquire) == STATE_LARGE
    }
    /// Whether the span has no slots (never true for an in-use span).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Address of slot `i` (not checked against `len`).
    #[inline]
    pub fn slot(&self, i: usize) -> *mut u8 {
        self.base.wrapping_add(i.wrapping_mul(self.elem_size)) as *mut u8
    }
    /// Whether every slot of the span was marked as it was carved, in this marking epoch
    /// ([`set_allocate_black`]): then a marked slot may be free (its header 0).
    #[inline]
    pub fn marked_whole(&self) -> bool {
        self.span.marked_whole()
    }

    /// Mark bits of slots `64 * w .. 64 * w + 64` (bit `i % 64` for slot `i`); 0 past the end.
    #[inline]
    pub fn mark_word(&self, w: usize) -> u64 {
        // Acquire: pairs with the AcqRel in `Block::mark`.
        self.span
            .marks_if_current()
            .and_then(|marks| marks.get(w))
            .map_or(0, |word| word.load(Ordering::Acquire))
    }

    /// Sets mark bits of slots `64 * w .. 64 * w + 64` (a no-op past the end).
    #[inline]
    pub fn or_mark_word(&self, w: usize, bits: u64) {
        if let Some(word) = self.span.current_marks().get(w) {
            // AcqRel: as a marker's claim in `Block::mark`.
            word.fetch_or(bits, Ordering::AcqRel);
        }
    }

    /// Frees the given slots of this span, which the caller has dropped and whose header words
    /// it has zeroed, in one batch (one atomic push for a small span).
    ///
    /// # Safety
    /// May be called only with distinct, allocated slot starts of this span (from
    /// [`GcSpan::slot`]) whose header words are 0 and that nobody uses afterwards.
    pub unsafe fn free_slots(&self, slots: &[*mut u8]) {
        let (Some(&first), Some(&last)) = (slots.first(), slots.last()) else {
            return;
        };
        if self.span.state.load(Ordering::Acquire) != STATE_SMALL {
            for &slot in slots {
                // SAFETY: caller's contract (a large span's one slot).
                unsafe { free(slot) };
            }
            return;
        }
        for pair in slots.windows(2) {
            // SAFETY: the slots are dead and ours (caller); the link word lies inside each.
            unsafe { self.span.link_of(pair[0] as usize).write(pair[1] as usize) };
        }
        // SAFETY: the chain links exactly `slots`, all allocated slots of this small span.
        unsafe { mcache::free_chain(self.span, first, last, slots.len()) };
    }

    /// Whether slot `i`'s mark bit is set (false when `i >= len`).
    #[inline]
    pub fn is_marked(&self, i: usize) -> bool {
        i < self.len && self.span.slot_marked(i)
    }
}

/// Calls `f` on every in-use Gc-kind span (small and large). No lock is held while `f` runs, so
/// `f` may allocate (even `alloc_gc`) and call `free_gc`; spans created during the walk may or may
/// not be visited.
pub fn for_each_gc_span(mut f: impl FnMut(GcSpan)) {
    mheap::for_each_span(|s| {
        // A first look without the handshake: most structs are free runs or malloc spans.
        // Acquire: pairs with the Release in `mheap::publish`.
        let st = s.state.load(Ordering::Acquire);
        if (st != STATE_SMALL && st != STATE_LARGE) || !s.is_gc() {
            return;
        }
        // The geometry is read once the span is held: it stays so until `f` returns.
        s.visit(|| {
            let g = GcSpan {
                span: s,
                base: s.obj_base.load(Ordering::Relaxed),
                elem_size: s.elem_size.load(Ordering::Relaxed),
                len: s.nelems.load(Ordering::Relaxed).min(MAX_OBJECTS),
            };
            if s.is_gc() && g.elem_size != 0 {
                f(g);
            }
        });
    });
}

/// Calls `f(start, end, black)` on every marked slot of every in-use malloc-kind span: the
/// blocks a collection reached, which its termination scans again; `black` says that a large
/// block was allocated while the collector marked (marked, and not scanned for it). No lock is
/// taken (the collector calls it with every other thread stopped); a block freed since it was
/// marked is visited too, and its bytes stay mapped.
pub fn for_each_marked_malloc_block(mut f: impl FnMut(usize, usize, bool)) {
    // Only the malloc spans marked in this epoch, not every span (on a 700 MB heap of Gc
    // objects, walking them all took 230-310 us of the termination). A span pushed after this
    // load was marked by a marker draining beside the caller, which scans what it marks.
    // Acquire: pairs with the Release of `push_marked_malloc`.
    let mut at = span::MARKED_MALLOC.load(Ordering::Acquire);
    while !at.is_null() {
        // SAFETY: span structs live in chunks that are never unmapped; the list holds spans.
        let s: &'static Span = unsafe { &*at };
        at = s.marked_next.load(Ordering::Relaxed);
        // Acquire: pairs with the Release in `mheap::publish`. The span may have been freed
        // and carved again since it was pushed: it counts only as it is now.
        let st = s.state.load(Ordering::Acquire);
        if (st != STATE_SMALL && st != STATE_LARGE) || s.is_gc() {
            continue;
        }
        let base = s.obj_base.load(Ordering::Relaxed);
        let size = s.elem_size.load(Ordering::Relaxed);
        let len = s.nelems.load(Ordering::Relaxed).min(MAX_OBJECTS);
        let Some(marks) = s.marks_if_current() else {
            continue; // nothing in it marked this cycle
        };
        if size == 0 {
            continue;
        }
        let black = st == STATE_LARGE && s.allocated_black();
        for (w, word) in marks.iter().enumerate().take(len.div_ceil(64)) {
            let mut marks = word.load(Ordering::Acquire);
            while marks != 0 {
                let i = 64 * w + marks.trailing_zeros() as usize;
                marks &= marks - 1;
                if i < len {
                    let start = base + i * size;
                    f(start, start + size, black);
                }
            }
        }
    }
}

/// Bytes of the spans in use that hold malloc blocks (`Box`, `Vec`, ... storage): the spans in
/// use that are not Gc spans. Two loads; a span being carved may count on either side.
pub fn malloc_spans_in_use_bytes() -> usize {
    stats::HEAP_INUSE
        .load(Ordering::Relaxed)
        .saturating_sub(stats::GC_SPANS_INUSE_BYTES.load(Ordering::Relaxed))
}

/// Bytes of the Gc spans in use (small and large), which hold every allocated Gc slot: one load,
/// where [`stats`] gathers every counter.
pub fn gc_spans_in_use_bytes() -> usize {
    stats::GC_SPANS_INUSE_BYTES.load(Ordering::Relaxed)
}

/// Gives every span that no cache holds and that has no live object back to the page heap (Go's
/// sweeper frees a span it finds empty): after a collection has freed whole spans, so that the
/// heap's in-use bytes (and, once the scavenger releases them, its RSS) drop at once. Takes each
/// central list's lock once per batch of 32 spans, never for a whole list; no system call.
pub fn release_empty_spans() {
    mcentral::release_empty_spans();
}

/// The heap's counters, like Go's `runtime.ReadMemStats` but without stopping anything: this
/// thread's batched counts are flushed, then a few hundred relaxed loads.
pub fn stats() -> AllocStats {
    mcache::flush_local_stats();
    stats::snapshot()
}

#[cfg(test)]
mod tests;

/// `[start, end)` of the calling thread's allocation cache, a thread-local at the same offset
/// from the thread pointer in every thread. It holds free slots and span pointers, never the
/// only reference to a live block, so a conservative scan of thread-local storage may skip it
/// (it is most of a thread's TLS, and scanning it would mark free blocks and keep what their
/// stale contents point to).
pub fn thread_cache_range() -> (usize, usize) {
    mcache::cache_range()
}

/// Gives the calling thread's cached memory back to the shared heap: the freed slots in its bins
/// and its cached spans that hold no live object (which the scavenger can then release). Cheap
/// next to [`release_memory`] (no system call); for a thread about to sit idle, as goro's Ms call
/// it before they sleep (at most once per half second each).
pub fn flush_thread_cache() {
    mcache::release_local_empties();
}

/// Returns free memory to the OS at once (Go's `debug.FreeOSMemory` without the GC): this
/// thread's cached empty spans and every central span with no live object go back to the page
/// heap, and every free page run is released with `MADV_DONTNEED`. The background scavenger does
/// the same, every second, for runs free for two seconds. Returns the bytes released.
pub fn release_memory() -> usize {
    mcache::release_local_empties();
    mcentral::release_empty_spans();
    mheap::release_all()
}
