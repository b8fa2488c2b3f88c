//! The marker: the work list of one cycle, and the conservative scan that finds heap blocks in
//! arbitrary memory (stacks, statics, malloc blocks). `Tracer` (trace.rs) wraps it for `Trace`
//! impls; the cycle (collector.rs) drives it.

use crate::header::{CONSTRUCTING, GUARD_TAG, WRITING, header_of};
use crate::workbuf::WorkStack;
use goro_alloc::{Block, SpanKind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One unit of marking work.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// A marked Gc object to trace precisely: its start and its header word.
    Object(usize, usize),
    /// Memory to scan conservatively.
    Range(usize, usize),
    /// Root memory to scan conservatively (stacks, registers, thread-locals, statics): at
    /// termination, every marked object it points into is scanned again (see [`TERMINATING`]).
    Root(usize, usize),
}

/// True while mark termination rescans, with the world stopped. A `GcCell` whose mutable borrow
/// is still open then may hold what its holder wrote since the cell was scanned, and nothing
/// was logged for it (barrier.rs): its guard is found instead, and the object holding the cell
/// is scanned again, whole and conservatively.
///
/// - A guard in registers or on a stack may have been reduced by the compiler to any pointer
///   into the cell (or into the value it lends), so every marked object a root word points
///   into is rescanned.
/// - A guard stored in memory (a `Vec` or `Box` of guards, a thread-local) holds its cell's
///   address plus one (cell.rs): an odd word into a marked object whose preceding byte starts
///   a word reading "mutably borrowed" is such a guard. Aligned words (every `Gc` in a
///   `Vec<Gc<T>>`) cost nothing more.
pub(crate) static TERMINATING: AtomicBool = AtomicBool::new(false);

/// The marking state behind a [`Tracer`].
pub(crate) struct Marker {
    pub(crate) work: WorkStack<Work>,
    /// Words the conservative scan marked from lately, direct-mapped by address: stacks repeat
    /// the same few pointers (the goroutine's G, the channel it waits on) from frame to frame,
    /// and a repeat needs no second lookup: the block it reached is marked, and a Gc slot that
    /// was free is allocated black if it is allocated while the cycle marks. Forgotten when
    /// termination begins, whose rescan must see every word.
    pub(crate) recent: [usize; RECENT_WORDS],
}

/// Entries of [`Marker::recent`].
pub(crate) const RECENT_WORDS: usize = 64;

impl Marker {
    /// A marker with nothing to do.
    pub(crate) fn new() -> Marker {
        Marker {
            work: WorkStack::new(),
            recent: [0; RECENT_WORDS],
        }
    }

    /// Forgets the words marked lately: a new cycle cleared their marks.
    pub(crate) fn forget_recent(&mut self) {
        self.recent = [0; RECENT_WORDS];
    }

    /// Schedules `[lo, hi)` for a conservative scan.
    #[inline]
    pub(crate) fn push_range(&mut self, lo: usize, hi: usize) {
        if lo < hi {
            self.work.push(Work::Range(lo, hi));
        }
    }

    /// Marks the Gc object starting at `start` (a precise pointer from a `Trace` impl).
    #[inline]
    pub(crate) fn mark_object(&mut self, start: usize) {
        self.mark_word(start);
    }

    /// Marks whatever allocated block `word` points into, if any.
    #[inline]
    pub(crate) fn mark_word(&mut self, word: usize) {
        if let Some(block) = goro_alloc::find_block(word)
            && !self.mark_block(block)
            && block.kind == SpanKind::Gc
        {
            self.marked_again(block, word, false);
        }
    }

    /// Like [`Marker::mark_word`], for a word of root memory.
    #[inline]
    fn mark_root_word(&mut self, word: usize) {
        if let Some(block) = goro_alloc::find_block(word)
            && !self.mark_block(block)
            && block.kind == SpanKind::Gc
        {
            self.marked_again(block, word, true);
        }
    }

    /// `word` points into `block`, a Gc object marked already: at termination, schedules the
    /// object for a second, conservative scan if the word may be a `GcCell`'s open guard (see
    /// [`TERMINATING`]).
    #[inline]
    fn marked_again(&mut self, block: Block, word: usize, from_root: bool) {
        if !TERMINATING.load(Ordering::Relaxed) {
            return;
        }
        let start = block.start as usize;
        let guard = from_root || (word % WORD == GUARD_TAG && open_guard(word, start));
        if guard {
            // SAFETY: `block` is a slot of a Gc span; its header word lies inside it.
            let header = unsafe { read_word(header_of(block.start, block.size)) };
            if header != 0 {
                self.work
                    .push(Work::Range(start, start + block.size - WORD));
            }
        }
    }

    /// Marks `block` (found in the arena index) and schedules it for tracing or scanning, if
    /// this is the first time the cycle reaches it; returns whether it was. A free Gc slot is
    /// not marked, and reads as reached already.
    #[inline]
    pub(crate) fn mark_block(&mut self, block: Block) -> bool {
        let start = block.start as usize;
        match block.kind {
            SpanKind::Gc => {
                // Acquire: pairs with `Gc::new`'s Release stores, so a built object's value is
                // seen (marking runs beside the mutators).
                // SAFETY: `block` is a slot of a Gc span; its header word lies inside it, and
                // every access to a header is atomic.
                let header = unsafe { AtomicUsize::from_ptr(header_of(block.start, block.size)) }
                    .load(Ordering::Acquire);
                if header == 0 {
                    return true;
                }
                if !block.mark() {
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
                    self.work.push(Work::Range(start, start + block.size));
                }
                true
            }
        }
    }

    /// Scans root memory `[lo, hi)` conservatively (see [`Work::Root`]).
    pub(crate) fn scan_root(&mut self, lo: usize, hi: usize) {
        if !TERMINATING.load(Ordering::Relaxed) {
            self.scan(lo, hi);
            return;
        }
        let mut at = lo.next_multiple_of(WORD);
        while at + WORD <= hi {
            // SAFETY: the range was reported as readable root memory.
            let word = unsafe { read_word(at as *const usize) };
            if goro_alloc::may_be_heap(word) {
                let seen = &mut self.recent[(word / WORD) % RECENT_WORDS];
                if *seen != word {
                    *seen = word;
                    self.mark_root_word(word);
                }
            }
            at += WORD;
        }
        if SCAN_UNALIGNED.load(Ordering::Relaxed) {
            // A packed struct's `Gc`: the unaligned pass marks; a guard is never packed.
            self.scan_every_byte(lo, hi);
        }
    }

    /// Scans `[lo, hi)` conservatively.
    pub(crate) fn scan(&mut self, lo: usize, hi: usize) {
        if SCAN_UNALIGNED.load(Ordering::Relaxed) {
            self.scan_every_byte(lo, hi);
            return;
        }
        let mut at = lo.next_multiple_of(WORD);
        while at + WORD <= hi {
            // SAFETY: the range was reported as readable root memory, or is an allocated block
            // of goro's heap (arena memory is never unmapped).
            let word = unsafe { read_word(at as *const usize) };
            if goro_alloc::may_be_heap(word) {
                let seen = &mut self.recent[(word / WORD) % RECENT_WORDS];
                if *seen != word {
                    *seen = word;
                    self.mark_word(word);
                }
            }
            at += WORD;
        }
    }

    /// Scans `[lo, hi)` for a pointer at every byte offset (`GORO_DEBUG=gcunaligned=1`): a `Gc`
    /// in a `#[repr(packed)]` struct sits at an unaligned offset. Each pair of aligned words
    /// gives the 8 words that start in the first one; only aligned reads are made.
    fn scan_every_byte(&mut self, lo: usize, hi: usize) {
        let mut at = lo.next_multiple_of(WORD);
        let mut word = if at + WORD <= hi {
            // SAFETY: as in `scan`.
            unsafe { read_word(at as *const usize) }
        } else {
            0
        };
        while at + WORD <= hi {
            self.mark_word(word);
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
                self.mark_word((word >> shift) | (next << (usize::BITS - shift)));
            }
            word = next;
            at = next_at;
        }
    }
}

/// Whether `word` (odd, into the allocated Gc slot starting at `start`) may be an open
/// `GcRefMut`: the word before it reads "mutably borrowed".
#[inline]
fn open_guard(word: usize, start: usize) -> bool {
    let flag = word - GUARD_TAG;
    // SAFETY: `flag` is an aligned address inside the allocated slot (it is at least `start`,
    // and below `word`, which lies inside it).
    flag >= start && unsafe { read_word(flag as *const usize) } == WRITING
}

/// Bytes in a word.
const WORD: usize = core::mem::size_of::<usize>();

/// Whether conservative scans look for pointers at every byte offset (see `scan_every_byte`).
static SCAN_UNALIGNED: AtomicBool = AtomicBool::new(false);

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
