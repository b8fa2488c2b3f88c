//! The marker: the work list of one cycle, and the conservative scan that finds heap blocks in
//! arbitrary memory (stacks, statics, malloc blocks). `Tracer` (trace.rs) wraps it for `Trace`
//! impls; the cycle (collector.rs) drives it.

use crate::header::{CONSTRUCTING, header_of};
use crate::workbuf::WorkStack;
use goro_alloc::{Block, SpanKind};
use std::sync::atomic::{AtomicBool, Ordering};

/// One unit of marking work.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// A marked Gc object to trace precisely: its start and its header word.
    Object(usize, usize),
    /// Memory to scan conservatively.
    Range(usize, usize),
}

/// The marking state behind a [`Tracer`].
pub(crate) struct Marker {
    pub(crate) work: WorkStack<Work>,
    /// Words the conservative scan marked from lately, direct-mapped by address: stacks repeat
    /// the same few pointers (the goroutine's G, the channel it waits on) from frame to frame,
    /// and a repeat needs no second lookup (the world is stopped, so the answer is the same).
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
        if let Some(block) = goro_alloc::find_block(word) {
            self.mark_block(block);
        }
    }

    /// Marks `block` (found in the arena index) and schedules it for tracing or scanning, if
    /// this is the first time the cycle reaches it.
    #[inline]
    pub(crate) fn mark_block(&mut self, block: Block) {
        let start = block.start as usize;
        match block.kind {
            SpanKind::Gc => {
                // SAFETY: `block` is a slot of a Gc span; its header word lies inside it.
                let header = unsafe { read_word(header_of(block.start, block.size)) };
                if header != 0 && block.mark() {
                    if header & CONSTRUCTING != 0 {
                        // Half-built by a stopped thread: any layout, scan it all.
                        self.work
                            .push(Work::Range(start, start + block.size - WORD));
                    } else {
                        self.work.push(Work::Object(start, header));
                    }
                }
            }
            SpanKind::Malloc => {
                if block.mark() {
                    self.work.push(Work::Range(start, start + block.size));
                }
            }
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
/// Every other thread is stopped while the marker runs, but the stash-trap thread may be putting
/// bytes back into a stack, and a thread may have been stopped in the middle of writing a block.
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
