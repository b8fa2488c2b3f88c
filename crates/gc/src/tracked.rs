//! Large malloc blocks at mark termination: rescanned where they were written, not whole.
//!
//! Malloc blocks have no write barrier, so termination scans every marked one again: a
//! 64 MiB `Vec<Gc<T>>` alive costs its whole scan inside the pause, every cycle. For blocks of
//! [`TRACK_MIN`] bytes or more, the kernel records which pages were written
//! (`goro_alloc::dirty`: userfaultfd asynchronous write-protect, `PAGEMAP_SCAN`), and
//! termination scans only those.
//!
//! Why that is sound, given termination's rescan is what makes up for the missing barrier:
//!
//! 1. Pages are write-protected only in [`arm`], which the mark worker calls before it scans
//!    anything of the cycle: every malloc block scanned this cycle is scanned after every
//!    protection its pages carry (this cycle's, or an older one's left in place).
//! 2. So a page still protected at termination has not been written through the page tables
//!    since before any scan of the cycle, and a marked block was scanned whole during the cycle
//!    (or is still on the work list, which termination drains): the words on its protected
//!    pages are the words the scan read. What they point to is marked already.
//! 3. One more thing the rescan did: a word of a malloc block pointing *into* a marked Gc object
//!    (not at its start) may stand for an open `GcCell` borrow, whose object termination must
//!    scan again (rule 5 of docs/soundness.md, `mark::TERMINATING`). The concurrent scan of a
//!    large block notes every such word ([`note_interior`]); termination treats each as if its
//!    rescan had read it. A word that changed since lies on a written page, which is rescanned.
//!    Past [`INTERIOR_MAX`] notes, the cycle rescans every block whole.
//! 4. Pages the kernel drops (the scavenger) read back as zeros; pages faulted in afresh, and
//!    pages never protected, read as written. Writes that bypass the page tables (DMA into
//!    pinned pages) carry bytes from outside memory, where no `Gc` may hide.
//! 5. A large block allocated while marking is marked black and never scanned (goro-alloc's
//!    `set_allocate_black`): rule 2 does not cover it, since [`arm`] may protect its pages after
//!    its owner wrote them (its extent can match a block the last cycle tracked). It is
//!    rescanned whole.
//!
//! Which blocks to protect: those of [`TRACK_MIN`] bytes or more that the last termination
//! found marked (kept in [`TRACKED`]), each checked to still be a large malloc block. A block
//! that is new this cycle has unprotected pages and is rescanned whole, as before. Each
//! protected page costs the mutator one minor fault at its first write of the cycle (~1.6 us).

use crate::mark::{INTERIOR, INTERIOR_LEN, INTERIOR_MAX, Marker, Work};
use goro_alloc::SpanKind;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The smallest block whose pages are tracked: asking the kernel about a range costs ~2 us,
/// rescanning 256 KiB of pointers tens of microseconds.
pub(crate) const TRACK_MIN: usize = 256 << 10;

/// Whether the collector tracks writes at all (`GORO_DEBUG=gctrackwrites=0` turns it off).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether this cycle's concurrent scans of large blocks note their interior words: set by
/// [`arm`] before the cycle's first scan, cleared when termination begins.
static NOTING: AtomicBool = AtomicBool::new(false);

/// Whether termination may skip unwritten pages: [`arm`] ran this cycle with noting on.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Most blocks protected per cycle.
const TRACKED_MAX: usize = 512;
/// The large marked blocks the last termination found, complemented as [`INTERIOR`] is: start
/// and end.
static TRACKED: [[AtomicUsize; 2]; TRACKED_MAX] =
    [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; TRACKED_MAX];
static TRACKED_LEN: AtomicUsize = AtomicUsize::new(0);

/// Bytes of large blocks the last termination did not rescan (`GcStats::rescan_skipped`).
static LAST_SKIPPED: AtomicUsize = AtomicUsize::new(0);
/// Bytes of large blocks the last termination asked the kernel about.
static LAST_TRACKED: AtomicUsize = AtomicUsize::new(0);

/// Bytes of large blocks the last termination did not rescan.
pub(crate) fn last_skipped() -> usize {
    LAST_SKIPPED.load(Ordering::Relaxed)
}

/// Turns write tracking on or off (`GORO_DEBUG=gctrackwrites=0`); on by default. Takes effect
/// at the next cycle.
pub fn set_track_writes(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The cycle's start, on the mark worker before it scans anything: write-protects the large
/// blocks the last cycle found, and turns noting on.
pub(crate) fn arm() {
    INTERIOR_LEN.store(0, Ordering::Relaxed);
    ARMED.store(false, Ordering::Relaxed);
    if !ENABLED.load(Ordering::Relaxed) || !goro_alloc::dirty::start() {
        return;
    }
    for entry in TRACKED.iter().take(TRACKED_LEN.load(Ordering::Relaxed)) {
        let lo = !entry[0].load(Ordering::Relaxed);
        let hi = !entry[1].load(Ordering::Relaxed);
        // The block may be gone and its pages carved again: protecting another block's pages
        // is harmless (rule 1 holds for any page), but it costs faults where nothing is gained.
        let still = goro_alloc::find_block(lo).is_some_and(|b| {
            b.kind == SpanKind::Malloc && b.start as usize == lo && b.start as usize + b.size == hi
        });
        if still {
            // SAFETY: the cycle's arming, before any scan of it (rule 1).
            unsafe { goro_alloc::dirty::write_protect(lo, hi) };
        }
    }
    // Relaxed: the helpers that scan this cycle's blocks are armed after this, through the
    // helper session's own synchronisation.
    NOTING.store(true, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
}

/// An abandoned cycle's end (the runtime is ending): nothing more to note.
pub(crate) fn disarm() {
    NOTING.store(false, Ordering::Relaxed);
    ARMED.store(false, Ordering::Relaxed);
    INTERIOR_LEN.store(0, Ordering::Relaxed);
}

/// Whether concurrent scans of large malloc blocks (and of their pages) note their interior
/// words now.
#[inline]
pub(crate) fn noting() -> bool {
    NOTING.load(Ordering::Relaxed)
}

/// Passes of [`preclean`] a cycle makes at most.
const PRECLEANS: usize = 2;

/// What a [`preclean`] pass found, for the next pass to decide by.
#[derive(Default)]
pub(crate) struct Precleaned {
    passes: usize,
    /// Bytes of large blocks the last pass asked about, and bytes it took as written.
    tracked: usize,
    taken: usize,
}

/// Whether to preclean once more: rescanning pages beside the mutators pays only if fewer are
/// written again before termination. A mutator that writes all over its blocks (a
/// `Box<[GcCell<..>]>` replaced at random, gc_latency) would have every page rescanned twice:
/// the first pass runs only if the last termination skipped at least half of what it tracked,
/// a second only if the first took at most a quarter of what it asked about.
fn worth_precleaning(last: &Precleaned) -> bool {
    match last.passes {
        0 => {
            let (skipped, asked) = (
                LAST_SKIPPED.load(Ordering::Relaxed),
                LAST_TRACKED.load(Ordering::Relaxed),
            );
            asked == 0 || 2 * skipped >= asked
        }
        passes => passes < PRECLEANS && 4 * last.taken <= last.tracked,
    }
}

/// Beside the mutators, once concurrent marking has run dry: takes the pages of the marked large
/// blocks written since they were scanned, protecting them again in the same walk, and pushes
/// them for a rescan (as `Work::Pages`, which notes interior words). Termination then rescans
/// only what is written after this. Returns whether it pushed anything.
///
/// Sound for the same reason as the rest (rule 2): a page protected again here is rescanned
/// after the protection, so at termination, unwritten since, it holds what that rescan read.
pub(crate) fn preclean(marker: &mut Marker, last: &mut Precleaned) -> bool {
    if !ARMED.load(Ordering::Relaxed) || !NOTING.load(Ordering::Relaxed) || !worth_precleaning(last)
    {
        return false;
    }
    let (mut tracked, mut taken) = (0, 0);
    // Beside the mutators the list may name blocks freed since (their pages stay mapped, and a
    // freed block's words only keep garbage a cycle longer) or spans carved again.
    goro_alloc::for_each_marked_malloc_block(|lo, hi, black| {
        if hi - lo < TRACK_MIN || black {
            return;
        }
        tracked += hi - lo;
        // SAFETY: every run taken is pushed for a rescan, which the mark loop runs before
        // termination (rule 2).
        unsafe {
            goro_alloc::dirty::take_written(lo, hi, |from, to| {
                marker.work.push(Work::Pages(from, to));
                taken += to - from;
            })
        };
    });
    *last = Precleaned {
        passes: last.passes + 1,
        tracked,
        taken,
    };
    taken > 0
}

/// Termination, with the world stopped: pushes every marked malloc block for a rescan, the
/// large ones only where written when this cycle tracked them, and replays the noted interior
/// words. Remembers the large blocks for the next cycle's [`arm`].
pub(crate) fn rescan_marked_blocks(marker: &mut Marker) {
    NOTING.store(false, Ordering::Relaxed);
    let skipping =
        ARMED.load(Ordering::Relaxed) && INTERIOR_LEN.load(Ordering::Relaxed) <= INTERIOR_MAX;
    let enabled = ENABLED.load(Ordering::Relaxed);
    let mut tracked = 0;
    let mut skipped = 0;
    let mut asked = 0;
    goro_alloc::for_each_marked_malloc_block(|lo, hi, black| {
        if hi - lo < TRACK_MIN || !enabled {
            marker.work.push(Work::Block(lo, hi));
            return;
        }
        if tracked < TRACKED_MAX {
            TRACKED[tracked][0].store(!lo, Ordering::Relaxed);
            TRACKED[tracked][1].store(!hi, Ordering::Relaxed);
            tracked += 1;
        }
        // A block allocated black was never scanned this cycle (rule 5 above).
        let mut written = 0;
        let answered = skipping
            && !black
            && goro_alloc::dirty::for_each_written(lo, hi, |from, to| {
                marker.work.push(Work::Block(from, to));
                written += to - from;
            });
        if answered {
            asked += hi - lo;
            skipped += (hi - lo) - written;
        } else {
            marker.work.push(Work::Block(lo, hi));
        }
    });
    TRACKED_LEN.store(tracked, Ordering::Relaxed);
    LAST_SKIPPED.store(skipped, Ordering::Relaxed);
    LAST_TRACKED.store(asked, Ordering::Relaxed);
    if skipping {
        for entry in INTERIOR.iter().take(INTERIOR_LEN.load(Ordering::Relaxed)) {
            marker.mark_word_as_block(!entry.load(Ordering::Relaxed));
        }
    }
    INTERIOR_LEN.store(0, Ordering::Relaxed);
    ARMED.store(false, Ordering::Relaxed);
}
