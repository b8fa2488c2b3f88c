//! The marker: the work list of one cycle, and the conservative scan that finds heap blocks in
//! arbitrary memory (stacks, statics, malloc blocks). `Tracer` (trace.rs) wraps it for `Trace`
//! impls; the cycle (collector.rs) drives it.

use crate::header::{CONSTRUCTING, header_of};
use crate::workbuf::WorkStack;
use goro_alloc::{Block, SpanKind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One unit of marking work.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// A marked Gc object to trace precisely: its start and its header word.
    Object(usize, usize),
    /// Memory of a collected object to scan conservatively (a `GcCell`'s bytes, a half-built
    /// object, an object scanned again at termination).
    Range(usize, usize),
    /// A marked malloc block: memory without a barrier (see [`TERMINATING`]).
    Block(usize, usize),
    /// Pages of a large malloc block written since marking scanned it, rescanned beside the
    /// mutators before termination (tracked.rs: `preclean`); scanned as a `Block`, its interior
    /// words noted.
    Pages(usize, usize),
    /// Root memory to scan conservatively (stacks, registers, thread-locals, statics): at
    /// termination, every marked object it points into is scanned again (see [`TERMINATING`]).
    Root(usize, usize),
}

/// Where a scanned word was read, which decides what termination does with a pointer into an
/// object marked already.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A collected object (or a logged cell in one): nothing more.
    Object,
    /// A malloc block: an interior pointer makes the object scanned again.
    Block,
    /// Root memory: any pointer makes the object scanned again.
    Root,
}

/// True while mark termination rescans, with the world stopped. A `GcCell` whose mutable borrow
/// is still open then may hold what its holder wrote since the cell was scanned, and nothing
/// was logged for it (barrier.rs): the borrow is found instead through what it left in memory
/// without a barrier, and the object holding the cell is scanned again, whole and
/// conservatively.
///
/// - In registers or on a stack, the compiler may have reduced a guard to any pointer into the
///   object (its start included), so every marked object a root word points into is rescanned.
/// - In a malloc block, a guard (a `Vec` or `Box` of guards) holds its cell's address plus one
///   (cell.rs), and a `&mut` it lent (a leaked guard's, kept in a heap block) points into the
///   cell's value; both are interior pointers, never an object's start, since a cell begins
///   with its flag. So a word of a malloc block that points into a marked object other than at
///   its start makes the object rescanned. Words in `Vec<Gc<T>>` storage point at starts and
///   cost nothing more.
/// - A guard or a `&mut` cannot be stored in a collected object (they are not `Trace`), so words
///   read from objects need nothing.
pub(crate) static TERMINATING: AtomicBool = AtomicBool::new(false);

/// Whether markers may skip a word they saw lately ([`Marker::recent`]): only while the world is
/// stopped, when the answer cannot change. Beside the mutators a block may be freed, its span
/// carved again, and a new block appear unmarked at the same address.
pub(crate) static CACHE_RECENT: AtomicBool = AtomicBool::new(false);

/// The marking state behind a [`Tracer`].
pub(crate) struct Marker {
    pub(crate) work: WorkStack<Work>,
    /// Words the conservative scan marked from lately, direct-mapped by address: stacks repeat
    /// the same few pointers (the goroutine's G, the channel it waits on) from frame to frame,
    /// and a repeat needs no second lookup: the block it reached is marked, and a Gc slot that
    /// was free is allocated black if it is allocated while the cycle marks. Forgotten when
    /// termination begins, whose rescan must see every word.
    pub(crate) recent: [usize; RECENT_WORDS],
    /// [`Marker::recent`] for malloc blocks' words at termination, apart from collected objects':
    /// a block's interior word must reach the open-borrow rule (`marked_again`) even if a cell
    /// showed the same word first (a `GcCell<usize>` may hold the address a leaked guard's
    /// `&mut` points at).
    pub(crate) recent_blocks: [usize; RECENT_WORDS],
    /// Words the conservative scans read since the driver last looked at the barrier's log
    /// (helper.rs: `take_log_if_filling`).
    pub(crate) scanned_words: usize,
    /// Set while a concurrent scan of a large malloc block notes the words that point into Gc
    /// objects other than at their start (tracked.rs).
    pub(crate) noting: bool,
}

/// Entries of [`Marker::recent`].
pub(crate) const RECENT_WORDS: usize = 64;

/// Words a conservative scan has in flight (see [`Marker::scan`]).
const PIPELINE: usize = 16;

impl Marker {
    /// A marker with nothing to do.
    pub(crate) fn new() -> Marker {
        Marker {
            work: WorkStack::new(),
            recent: [0; RECENT_WORDS],
            recent_blocks: [0; RECENT_WORDS],
            scanned_words: 0,
            noting: false,
        }
    }

    /// Forgets the words marked lately: a new cycle cleared their marks.
    pub(crate) fn forget_recent(&mut self) {
        self.recent = [0; RECENT_WORDS];
        self.recent_blocks = [0; RECENT_WORDS];
    }

    /// Marks the Gc object starting at `start` (a precise pointer from a `Trace` impl).
    #[inline]
    pub(crate) fn mark_object(&mut self, start: usize) {
        self.mark_word(start);
    }

    /// Marks whatever allocated block `word` (read from a collected object, or reported
    /// precisely) points into, if any.
    #[inline]
    pub(crate) fn mark_word(&mut self, word: usize) {
        self.mark_word_from(word, Source::Object);
    }

    /// Marks whatever allocated block `word`, read from `source`, points into, if any.
    #[inline]
    fn mark_word_from(&mut self, word: usize, source: Source) {
        if let Some(block) = goro_alloc::find_block(word) {
            let first = self.mark_block_from(block, source == Source::Root);
            if block.kind == SpanKind::Gc && source != Source::Object {
                if !first {
                    self.marked_again(block, word, source);
                } else if self.noting {
                    note_if_interior(block, word);
                }
            }
        }
    }

    /// Takes `word` as termination's rescan of a malloc block would have read it (tracked.rs:
    /// a word noted by the concurrent scan of a large block whose page was not written since).
    pub(crate) fn mark_word_as_block(&mut self, word: usize) {
        self.mark_word_from(word, Source::Block);
    }

    /// `word`, read from `source`, points into `block`, a Gc object marked already: at
    /// termination, schedules the object for a second, conservative scan if the word may stand
    /// for an open `GcCell` borrow (see [`TERMINATING`]).
    #[cold]
    fn marked_again(&mut self, block: Block, word: usize, source: Source) {
        if !TERMINATING.load(Ordering::Relaxed) {
            if self.noting {
                note_if_interior(block, word);
            }
            return;
        }
        let start = block.start as usize;
        if source == Source::Block && word == start {
            return;
        }
        // SAFETY: `block` is a slot of a Gc span; its header word lies inside it.
        let header = unsafe { read_word(header_of(block.start, block.size)) };
        if header != 0 {
            self.work
                .push(Work::Range(start, start + block.size - WORD));
        }
    }

    /// Marks `block` (found in the arena index) and schedules it for tracing or scanning, if
    /// this is the first time the cycle reaches it; returns whether it was. A free Gc slot is
    /// not marked, and reads as reached already.
    #[inline]
    pub(crate) fn mark_block(&mut self, block: Block) -> bool {
        self.mark_block_from(block, false)
    }

    /// [`Marker::mark_block`]; with `root`, a Gc slot whose header is still 0 is marked too.
    /// Such a slot may be one the allocator has just handed a thread, which writes the header
    /// right after `allocate` returns but can be stopped, or kept off its CPU for a whole cycle,
    /// in between. Allocated black in an earlier cycle, it would read as free in this one and
    /// be freed under its builder; so a root word (the builder's stack or registers) marks it.
    /// A slot that is really free keeps the mark until the next cycle: condemning skips slots
    /// whose header is 0. What the builder will write is on its stack, a root too, or is
    /// shaded by `Gc::new` while marking lasts. Found by `churn_1p_stress` in
    /// tests/attack_epochs.rs.
    #[inline]
    fn mark_block_from(&mut self, block: Block, root: bool) -> bool {
        let start = block.start as usize;
        match block.kind {
            SpanKind::Gc => {
                // Marked already (a cycle marks only allocated slots): the header, the last
                // word of the slot, need not be read. Reading it is a cache miss for most
                // objects; their mark bits sit together in the span's metadata.
                let bit = block.mark_bit();
                if bit.is_set() {
                    return false;
                }
                if block.is_pointer_free() {
                    // Nothing to trace, and no cell to scan again at termination: the mark is
                    // all, and the object is not read. A free slot (header 0) marked this way
                    // keeps the mark until the next cycle, as a root's does below.
                    mark_pointer_free(bit);
                    return true;
                }
                // Acquire: pairs with `Gc::new`'s Release stores, so a built object's value is
                // seen (marking runs beside the mutators).
                // SAFETY: `block` is a slot of a Gc span; its header word lies inside it, and
                // every access to a header is atomic.
                let header = unsafe { AtomicUsize::from_ptr(header_of(block.start, block.size)) }
                    .load(Ordering::Acquire);
                if header == 0 {
                    if root {
                        let _ = bit.set();
                    }
                    return true;
                }
                if !bit.set() {
                    return false;
                }
                if header & CONSTRUCTING != 0 {
                    // Half-built (by a stopped thread, or by one running beside a concurrent
                    // marker): any layout, scan it all. The builder logs it when it is built.
                    self.work
                        .push(Work::Range(start, start + block.size - WORD));
                } else {
                    self.work.push(Work::Object(start, header));
                }
                true
            }
            SpanKind::Malloc => {
                if block.mark() {
                    self.work.push(Work::Block(start, start + block.size));
                }
                true
            }
        }
    }

    /// Scans `[lo, hi)`, read from `source`, conservatively.
    pub(crate) fn scan(&mut self, lo: usize, hi: usize, source: Source) {
        self.scanned_words += hi.saturating_sub(lo) / WORD;
        if scans_unaligned() {
            self.scan_every_byte(lo, hi, source);
            return;
        }
        let cache = CACHE_RECENT.load(Ordering::Relaxed);
        // At termination a root word must reach `marked_again` even if a heap block showed the
        // same word first: roots keep a cache of their own; blocks one apart from objects'.
        let terminating = TERMINATING.load(Ordering::Relaxed);
        let own_cache = source == Source::Root && terminating;
        let blocks_cache = source == Source::Block && terminating;
        let mut own = [0usize; RECENT_WORDS];
        let mut ring = [0usize; PIPELINE];
        // Words taken out of the ring, and words in it.
        let (mut taken, mut waiting) = (0usize, 0usize);
        let mut at = lo.next_multiple_of(WORD);
        while at + WORD <= hi {
            // SAFETY: the range was reported as readable root memory, or is an allocated block
            // of goro's heap (arena memory is never unmapped).
            let word = unsafe { read_word(at as *const usize) };
            at += WORD;
            if !goro_alloc::may_be_heap(word) {
                continue;
            }
            // A malloc block's pointers into itself add nothing to the scan under way, and
            // must not schedule another: a block freed and allocated again while it is scanned
            // has its mark bit cleared, and would be scanned again and again as long as the
            // mutator kept doing so (a retirement never ended on a thread cloning a large
            // `Vec` in a loop).
            if source == Source::Block && (lo..hi).contains(&word) {
                continue;
            }
            if cache {
                let index = (word / WORD) % RECENT_WORDS;
                let seen = if own_cache {
                    &mut own[index]
                } else if blocks_cache {
                    &mut self.recent_blocks[index]
                } else {
                    &mut self.recent[index]
                };
                if *seen == word {
                    continue;
                }
                *seen = word;
            }
            if hi - lo <= 2 * WORD {
                // A cell's or a pointer's worth: nothing to overlap.
                self.mark_word_from(word, source);
                continue;
            }
            // Marking a word costs up to three cache misses in a row (the arena index's entry,
            // the span's line, its mark word), and a heap scattered over many spans misses on
            // all three for most words: 85 % of the marker's time on gc_latency went to the
            // first two. So a word waits in a ring: as it goes in, its index entry is asked
            // for; half the ring later, its span; as it comes out it is marked, mostly from
            // cache by then. The ring is emptied before the scan returns.
            if waiting == PIPELINE {
                self.mark_word_from(ring[taken % PIPELINE], source);
                taken += 1;
                waiting -= 1;
            }
            if waiting >= PIPELINE / 2 {
                goro_alloc::prefetch_span(ring[(taken + waiting - PIPELINE / 2) % PIPELINE]);
            }
            goro_alloc::prefetch_span_entry(word);
            ring[(taken + waiting) % PIPELINE] = word;
            waiting += 1;
        }
        for k in taken..taken + waiting {
            self.mark_word_from(ring[k % PIPELINE], source);
        }
    }

    /// Scans `[lo, hi)` for a pointer at every byte offset (`GORO_DEBUG=gcunaligned=1`): a `Gc`
    /// in a `#[repr(packed)]` struct sits at an unaligned offset. Each pair of aligned words
    /// gives the 8 words that start in the first one; only aligned reads are made.
    fn scan_every_byte(&mut self, lo: usize, hi: usize, source: Source) {
        let mut at = lo.next_multiple_of(WORD);
        let mut word = if at + WORD <= hi {
            // SAFETY: as in `scan`.
            unsafe { read_word(at as *const usize) }
        } else {
            0
        };
        while at + WORD <= hi {
            self.mark_word_from(word, source);
            let next_at = at + WORD;
            if next_at + WORD > hi {
                break;
            }
            // SAFETY: as in `scan`.
            let next = unsafe { read_word(next_at as *const usize) };
            for byte in 1..WORD {
                let shift = 8 * byte as u32;
                // Little-endian: the word at `at + byte` is the high bytes of `word` followed by
                // the low bytes of `next`.
                self.mark_word_from((word >> shift) | (next << (usize::BITS - shift)), source);
            }
            word = next;
            at = next_at;
        }
    }
}

/// Notes `word` for termination if it points into the Gc object `block` other than at its
/// start: it may stand for an open `GcCell` borrow (see [`TERMINATING`] and tracked.rs).
#[cold]
fn note_if_interior(block: Block, word: usize) {
    if word != block.start as usize {
        note_interior(word);
    }
}

/// Most interior words a cycle notes before tracked.rs gives up on skipping unwritten pages.
pub(crate) const INTERIOR_MAX: usize = 4096;

/// Interior words noted this cycle, complemented: statics are roots, and the plain words would
/// keep their objects alive for another cycle.
pub(crate) static INTERIOR: [AtomicUsize; INTERIOR_MAX] =
    [const { AtomicUsize::new(0) }; INTERIOR_MAX];
/// Notes taken this cycle (may run past [`INTERIOR_MAX`]: then some were dropped).
pub(crate) static INTERIOR_LEN: AtomicUsize = AtomicUsize::new(0);

/// Notes `word`, read by a concurrent scan of a large block, which points into a Gc object other
/// than at its start (tracked.rs, rule 3).
#[cold]
pub(crate) fn note_interior(word: usize) {
    let at = INTERIOR_LEN.fetch_add(1, Ordering::Relaxed);
    if at < INTERIOR_MAX {
        INTERIOR[at].store(!word, Ordering::Relaxed);
    }
}

/// Sets a pointer-free object's mark bit. Out of line: inlined into `mark_block_from`, this
/// made the marking and allocation of objects with pointers slower by a quarter (binary_trees;
/// the code around it laid out differently), where the call costs a pointer-free object little
/// beside the cache miss of its mark word.
#[inline(never)]
fn mark_pointer_free(bit: goro_alloc::MarkBit) {
    let _ = bit.set();
}

/// Bytes in a word.
const WORD: usize = core::mem::size_of::<usize>();

/// Whether conservative scans look for pointers at every byte offset (see `scan_every_byte`).
static SCAN_UNALIGNED: AtomicBool = AtomicBool::new(false);

/// Whether conservative scans look for pointers at every byte offset (`gcunaligned`).
pub(crate) fn scans_unaligned() -> bool {
    SCAN_UNALIGNED.load(Ordering::Relaxed)
}

/// Turns `GORO_DEBUG=gcunaligned=1` on or off: conservative scans (stacks, TLS, statics, malloc
/// blocks) look for a pointer at every byte offset, so that a `Gc` kept only in a
/// `#[repr(packed)]` struct outside the collected heap is found. Costs about eight times the
/// scanning work (docs/soundness.md has the measured cost).
pub fn set_scan_unaligned(on: bool) {
    SCAN_UNALIGNED.store(on, Ordering::Relaxed);
}

/// Reads a word that another thread may be writing: the collector's one deliberate departure
/// from the memory model.
///
/// Marking runs beside the mutators: a `GcCell` or a malloc block may be written while the
/// marker reads it (what the write leaves is scanned again, see barrier.rs). With the world
/// stopped, the stash-trap thread may be putting bytes back into a stack, and a thread may have
/// been stopped in the middle of writing a block.
/// A volatile read of an aligned word cannot tear on the platforms goro supports. Memory past a
/// container's length may be uninitialised: the scan reads it as plain bits, which can only keep
/// garbage alive.
///
/// # Safety
/// May be called only with an aligned pointer into mapped, readable memory.
#[inline]
unsafe fn read_word(at: *const usize) -> usize {
    // SAFETY: the caller guarantees alignment and that the memory is mapped and readable.
    unsafe { core::ptr::read_volatile(at) }
}

#[cfg(test)]
mod tests {
    use super::{CACHE_RECENT, Marker, Source, TERMINATING, Work};
    use std::sync::atomic::Ordering;

    /// At termination, a word pointing into a marked object other than at its start, read from
    /// a malloc block, schedules the object's rescan (the open-borrow rule) even when a
    /// collected object's scan read the same word just before: the two keep separate caches.
    #[test]
    fn a_blocks_interior_word_reaches_the_borrow_rule_after_a_cell_showed_it() {
        let size = 64;
        let object = goro_alloc::alloc_gc(size, 8);
        let block = goro_alloc::find_block(object as usize).expect("a Gc slot");
        // SAFETY: the slot is ours; its last word is the header, set to anything but 0 (built).
        unsafe { (object.add(size - 8) as *mut usize).write(1 << 3) };
        assert!(block.mark());
        let interior = object as usize + 16;
        let cell = [interior; 2];
        let heap_block = Box::new([interior, 0]);
        let mut marker = Marker::new();
        CACHE_RECENT.store(true, Ordering::Relaxed);
        TERMINATING.store(true, Ordering::Relaxed);
        let at = cell.as_ptr() as usize;
        marker.scan(at, at + 16, Source::Object);
        let at = heap_block.as_ptr() as usize;
        marker.scan(at, at + 16, Source::Block);
        TERMINATING.store(false, Ordering::Relaxed);
        CACHE_RECENT.store(false, Ordering::Relaxed);
        let mut rescans = 0;
        while let Some(work) = marker.work.pop() {
            if let Work::Range(lo, _) = work {
                assert_eq!(lo, object as usize);
                rescans += 1;
            }
        }
        assert_eq!(rescans, 1, "the block's interior word was skipped");
        // SAFETY: our slot, freed once (its header is left set: nothing condemns in this test).
        unsafe { goro_alloc::free_gc(object) };
    }

    /// A slot the allocator handed out whose builder has not written its header yet reads as
    /// free; a root pointing at it marks it all the same (`Marker::mark_block_from`), and a word
    /// in an object does not. Without that, a thread kept off its CPU between `allocate` and
    /// the header's store for a whole cycle had its object freed under it.
    #[test]
    fn a_root_marks_a_slot_handed_out_and_not_yet_built() {
        let held = goro_alloc::alloc_gc(40, 8);
        let other = goro_alloc::alloc_gc(40, 8);
        let block = |p: *mut u8| goro_alloc::find_block(p as usize).expect("a Gc slot");
        assert!(!block(held).is_marked() && !block(other).is_marked());
        let words = [held as usize, other as usize];
        let at = words.as_ptr() as usize;
        let mut marker = Marker::new();
        marker.scan(at, at + 8, Source::Root);
        marker.scan(at + 8, at + 16, Source::Object);
        assert!(
            block(held).is_marked(),
            "a root's slot with header 0 was left unmarked"
        );
        assert!(
            !block(other).is_marked(),
            "an object's word marked a slot with header 0"
        );
        // SAFETY: both slots are ours, never built (header 0), freed once.
        unsafe {
            goro_alloc::free_gc(held);
            goro_alloc::free_gc(other);
        }
    }
}
