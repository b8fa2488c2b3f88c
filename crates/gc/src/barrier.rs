//! The write barrier: what mutators tell the collector while it marks beside them.
//!
//! Marking runs concurrently with the mutators (collector.rs has the cycle). Two kinds of memory
//! can then change under the marker:
//!
//! - **Memory without a barrier** (stacks, registers, thread-locals, statics, malloc blocks) is
//!   scanned again at mark termination, with the world stopped. The marker needs nothing from
//!   the mutators for it.
//! - **Collected objects** change only through their `GcCell`s (`Trace` exists for no other
//!   interior mutability). A mutable borrow that ends while the collector marks logs the cell's
//!   bytes here, and the marker scans them again: a Dijkstra barrier at the granularity of a
//!   borrow, whatever the borrow wrote. A borrow still open at termination is found instead by
//!   the guard that holds it (mark.rs, [`crate::mark::TERMINATING`]).
//! - **`AtomicGc` cells** (atomic.rs) log the pointer each store puts there, after the store.
//! - **New objects** are allocated black during marking, and `Gc::new` logs, once the value is
//!   in place, every block the value points into that is not marked yet, so that it is shaded
//!   (the value's `Gc`s may have come from a stack already scanned).
//!
//! A mutator never marks anything itself: a thread may be stopped by signal anywhere, halfway
//! through a barrier, and a mark bit set by a thread stopped before it pushed the object would
//! hide the object's children from the marker. It only appends to [`LOG`], a bounded
//! multi-producer queue in memory mapped for it (Vyukov's sequence-numbered ring). An entry a
//! stopped producer reserved but did not fill is missed at termination, and that is safe: the
//! producer logs before it releases the borrow, so the cell still reads as mutably borrowed and
//! the producer holds a pointer to it, which the termination scan of its registers finds.

use crate::Alone;
use crate::header::header_of;
use crate::mark::{Marker, Work};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// Non-zero from mark start to mark termination (both with the world stopped): the barrier
/// logs. A byte compared with zero rather than a `bool`: the check is then one compare with
/// memory and a branch (a `bool` is loaded into a register and tested, one instruction more).
static MARKING: Alone<AtomicU8> = Alone(AtomicU8::new(0));

/// Whether the collector is marking: the barrier's one branch.
#[inline(always)]
pub(crate) fn marking() -> bool {
    MARKING.load(Ordering::Relaxed) != 0
}

/// Runs `slow` if the collector is marking: the barrier's check where it is hot (a `GcCell`
/// borrow's release, `Gc::new`, `AtomicGc`'s stores). On x86-64 it is one compare of the flag in
/// memory with zero and one branch; an atomic load is not folded into the compare by the
/// compiler, which makes it a load, a test and a branch.
#[inline(always)]
pub(crate) fn when_marking(slow: impl FnOnce()) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the assembly reads the byte of `MARKING` (its first, `Alone` being `repr(C)`: an
    // aligned byte read, atomic on x86-64, the relaxed load `marking` makes), writes no memory
    // and no stack, and jumps to the label block, ordinary Rust code, or falls through.
    unsafe {
        core::arch::asm!(
            "cmp byte ptr [rip + {flag}], 0",
            "jne {slow}",
            flag = sym MARKING,
            slow = label { slow() },
            options(nostack, readonly),
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    if marking() {
        slow();
    }
}

/// Turns the barrier on or off. Called with the world stopped only, so every mutator sees the
/// change when it runs again.
pub(crate) fn set_marking(on: bool) {
    MARKING.store(u8::from(on), Ordering::Relaxed);
}

/// True from mark start until the cycle has condemned what it did not mark, which it does with
/// the world going, after mark termination: an object allocated meanwhile must not look dead.
static ALLOCATE_BLACK: Alone<AtomicBool> = Alone(AtomicBool::new(false));

/// Whether new objects get their mark bit at allocation.
#[inline(always)]
pub(crate) fn allocating_black() -> bool {
    ALLOCATE_BLACK.load(Ordering::Relaxed)
}

/// Turns black allocation on (with the world stopped, at mark start) or off (once the cycle has
/// condemned; an allocation that raced with the store is marked, which only keeps it one cycle).
pub(crate) fn set_allocate_black(on: bool) {
    ALLOCATE_BLACK.store(on, Ordering::Relaxed);
    goro_alloc::set_allocate_black(on);
}

/// Entries of the log (a power of two).
const ENTRIES: usize = 1 << 16;

/// One logged item: `[lo, hi)` to scan conservatively, or with `hi == 0` a word to mark what it
/// points into. `seq` is the ring's sequence number for the slot.
#[repr(C)]
struct Entry {
    seq: AtomicUsize,
    lo: AtomicUsize,
    hi: AtomicUsize,
}

/// The ring's memory, mapped by [`prepare`] before the first cycle.
static RING: Alone<AtomicPtr<Entry>> = Alone(AtomicPtr::new(core::ptr::null_mut()));
/// The next position a producer reserves.
static TAIL: Alone<AtomicUsize> = Alone(AtomicUsize::new(0));
/// The next position the consumer takes (the consumer is the one thread that marks).
static HEAD: Alone<AtomicUsize> = Alone(AtomicUsize::new(0));

/// Maps the log if it is not yet mapped. Called before a cycle stops the world (mapping and
/// touching it is work the pause can do without).
pub(crate) fn prepare() {
    if !RING.load(Ordering::Acquire).is_null() {
        return;
    }
    let bytes = ENTRIES * size_of::<Entry>();
    let base = crate::workbuf::map(bytes);
    let ring = base.cast::<Entry>();
    for i in 0..ENTRIES {
        // SAFETY: entry `i` lies inside the fresh mapping, which nobody else sees yet.
        unsafe { (*ring.add(i)).seq.store(i, Ordering::Relaxed) };
    }
    // Only the collecting thread prepares (it holds no lock, but cycles are serial); a second
    // mapping would only leak. Release: the sequence numbers are in place before the ring is.
    if RING
        .compare_exchange(
            core::ptr::null_mut(),
            ring,
            Ordering::Release,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: our own mapping, made by `map` and never published.
        unsafe { crate::workbuf::unmap(base, bytes) };
    }
}

#[inline]
fn entry(ring: *mut Entry, position: usize) -> &'static Entry {
    // SAFETY: the ring has ENTRIES entries and is never unmapped.
    unsafe { &*ring.add(position % ENTRIES) }
}

/// Logs `[lo, hi)` (the bytes of a `GcCell` whose mutable borrow ends) for a scan. Memory outside
/// goro's heap (a cell on a stack, in a static) is scanned again at termination anyway, and may
/// be gone by the time the marker would read it: it is not logged.
///
/// A cell this thread logged last and the marker has not taken yet is not logged again: the
/// marker reads the cell when it takes the entry, after this write (the fences order the two).
/// A loop that rewrites one cell then adds one entry per marker pass, not one per write.
#[cold]
#[inline(never)]
pub(crate) fn log_range(lo: usize, hi: usize) {
    if !goro_alloc::may_be_heap(lo) || lo >= hi || holds_nothing_unmarked(lo, hi) {
        return;
    }
    let last = LAST_LOGGED.get();
    if last.1 == !lo {
        // SeqCst: this thread's writes to the cell are ordered before the look at the entry,
        // as the marker's take of the entry is before its read of the cell (`drain`).
        core::sync::atomic::fence(Ordering::SeqCst);
        let ring = RING.load(Ordering::Acquire);
        if !ring.is_null() {
            let slot = entry(ring, last.0);
            if slot.seq.load(Ordering::Relaxed) == last.0 + 1
                && slot.lo.load(Ordering::Relaxed) == lo
            {
                return;
            }
        }
    }
    if let Some(position) = push(lo, hi) {
        LAST_LOGGED.set((position, !lo));
    }
}

/// Whether the small cell `[lo, hi)` holds no word that points into a block the marker has not
/// marked: then a scan of it would add nothing, and it need not be logged. A marked block is
/// traced or scanned by whoever marked it. The common write during marking stores a new
/// object, allocated black, whose span this thread has just allocated from (its metadata in
/// this CPU's cache); logged, the cell cost the marker a read of memory another CPU wrote and a
/// span lookup that missed, for every store (half the mark worker's time on gc_latency, whose
/// mutator stores a new object 650,000 times per cycle). Larger cells are logged unlooked-at,
/// and every cell under `GORO_DEBUG=gcunaligned=1`, whose scans read every byte offset where
/// this look reads aligned words only.
#[inline]
fn holds_nothing_unmarked(lo: usize, hi: usize) -> bool {
    if hi - lo > LOOKED_AT_BYTES || crate::mark::scans_unaligned() {
        return false;
    }
    let mut at = lo.next_multiple_of(8);
    while at + 8 <= hi {
        // SAFETY: an aligned word of the cell this thread holds mutably borrowed (its guard is
        // being dropped), read as the marker reads it (`mark::read_word`: padding is plain bits).
        let word = unsafe { core::ptr::read_volatile(at as *const usize) };
        at += 8;
        if goro_alloc::may_be_heap(word)
            && let Some(block) = goro_alloc::find_block(word)
            && !block.is_marked()
        {
            return false;
        }
    }
    true
}

/// The largest cell [`holds_nothing_unmarked`] looks into before logging it.
const LOOKED_AT_BYTES: usize = 32;

thread_local! {
    /// The position and start of the cell this thread logged last, the start complemented:
    /// thread-locals are roots, and the plain address would keep the cell's object alive.
    static LAST_LOGGED: core::cell::Cell<(usize, usize)> = const { core::cell::Cell::new((0, 0)) };
}

/// Shades what a new object points to: `Gc::new` calls it once the value is in place, while the
/// collector marks. The object itself is black already (allocated so), so the marker never
/// traces it: every word of it that points into a block the marker has not marked is logged
/// for the marker to mark (a word pointing into a marked block needs nothing: that block is
/// traced or scanned by whoever marked it). In a tree built bottom-up every child is new, hence
/// black, and nothing is logged. The value's bytes are read as the marker reads them
/// (`read_word`), padding included (a stale word only keeps garbage alive); the rest of the
/// slot up to its header is zeros (`Gc::new`).
#[cold]
#[inline(never)]
pub(crate) fn shade_new(start: usize, value_bytes: usize) {
    for at in (start..start + value_bytes).step_by(8) {
        // SAFETY: an aligned word of the object this thread has just built, inside its slot.
        let word = unsafe { core::ptr::read_volatile(at as *const usize) };
        if goro_alloc::may_be_heap(word) {
            shade_word(word);
        }
    }
}

/// Shades the object at `word`, just stored into an `AtomicGc` while the collector marks.
#[cold]
#[inline(never)]
pub(crate) fn shade_stored(word: usize) {
    shade_word(word);
}

/// Logs `word` for the marker to mark, unless the block it points into is marked already (whoever
/// marked it traces or scans it) or is a free Gc slot.
fn shade_word(word: usize) {
    let Some(block) = goro_alloc::find_block(word) else {
        return;
    };
    if block.is_marked() {
        return;
    }
    if block.kind == goro_alloc::SpanKind::Gc {
        // SAFETY: `block` is a slot of a Gc span; its header word lies inside it, and every
        // access to a header is atomic.
        let header = unsafe { AtomicUsize::from_ptr(header_of(block.start, block.size)) }
            .load(Ordering::Acquire);
        if header == 0 {
            return;
        }
    }
    push(word, 0);
}

/// Appends an item; returns its position, or `None` when it was dropped (no ring, or marking
/// ended while the ring was full).
fn push(lo: usize, hi: usize) -> Option<usize> {
    // Acquire: pairs with `prepare`'s Release. Marking starts only after `prepare`.
    let ring = RING.load(Ordering::Acquire);
    if ring.is_null() {
        return None;
    }
    let mut position = TAIL.load(Ordering::Relaxed);
    loop {
        let slot = entry(ring, position);
        // Acquire: pairs with the consumer's Release when it frees the slot.
        let seq = slot.seq.load(Ordering::Acquire);
        let lag = seq.wrapping_sub(position) as isize;
        if lag == 0 {
            match TAIL.compare_exchange_weak(
                position,
                position + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    slot.lo.store(lo, Ordering::Relaxed);
                    slot.hi.store(hi, Ordering::Relaxed);
                    // Release: the item is written before the slot reads as full.
                    slot.seq.store(position + 1, Ordering::Release);
                    return Some(position);
                }
                Err(now) => position = now,
            }
        } else if lag < 0 {
            // Full: the marker is behind. Wait for it; once marking has ended the item is not
            // needed (termination scanned this thread, which holds the cell, with the world
            // stopped).
            if !marking() {
                return None;
            }
            std::thread::yield_now();
            position = TAIL.load(Ordering::Relaxed);
        } else {
            position = TAIL.load(Ordering::Relaxed);
        }
    }
}

/// Moves logged items onto `marker`'s work list; returns how many. Called by the one thread that
/// marks. With `everything` (at termination, the world stopped) it also takes items that follow
/// a slot a stopped producer reserved but did not fill; those stay in the ring and are taken
/// again by a later drain, which costs a second scan and nothing else.
pub(crate) fn drain(marker: &mut Marker, everything: bool) -> usize {
    let mut taken = 0;
    // A range needs one scan per drain, however often it was logged.
    let mut seen = [(0usize, 0usize); 128];
    walk(everything, |lo, hi| {
        // The cells are read after this drain (its fence): one scan covers every entry.
        // Fibonacci hashing: cells of one size class lie at multiples of the class size, which
        // a plain modulo would send to one entry.
        let index = lo.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (usize::BITS - 7);
        let repeat = &mut seen[index];
        if *repeat != (lo, hi) {
            *repeat = (lo, hi);
            take(marker, lo, hi);
            taken += 1;
        }
    });
    // SeqCst: the entries are taken before the cells are read (see `log_range`).
    core::sync::atomic::fence(Ordering::SeqCst);
    taken
}

/// Drops the items earlier cycles left in the log (called at mark start, with the world
/// stopped): a finished cycle's marks are final, and a cell logged then may since have been freed
/// and its memory reused, so scanning it would only keep garbage alive. An item still being
/// written (its producer stopped half-way) stays, and is scanned in this cycle: harmless.
pub(crate) fn discard_stale() {
    walk(false, |_, _| {});
}

/// The consumer's walk over the ring: hands `each` every filled item from the head on, frees the
/// slots of the leading run of filled ones, and stops at the first unfilled one (or, with
/// `everything`, goes on past it, leaving what follows in the ring).
fn walk(everything: bool, mut each: impl FnMut(usize, usize)) {
    let ring = RING.load(Ordering::Acquire);
    if ring.is_null() {
        return;
    }
    let mut head = HEAD.load(Ordering::Relaxed);
    let tail = TAIL.load(Ordering::Acquire);
    let mut contiguous = true;
    let mut position = head;
    while position != tail {
        let slot = entry(ring, position);
        // Acquire: pairs with the producer's Release.
        if slot.seq.load(Ordering::Acquire) == position + 1 {
            let lo = slot.lo.load(Ordering::Relaxed);
            let hi = slot.hi.load(Ordering::Relaxed);
            if contiguous {
                // Release: the item is read before a producer may reuse the slot.
                slot.seq.store(position + ENTRIES, Ordering::Release);
                head = position + 1;
            }
            each(lo, hi);
        } else if everything {
            contiguous = false;
        } else {
            break;
        }
        position += 1;
    }
    HEAD.store(head, Ordering::Relaxed);
}

/// Whether the collector marks and a quarter of the log or more is taken: the marker should
/// take it before mutators find it full.
#[inline]
pub(crate) fn filling() -> bool {
    marking()
        && TAIL
            .load(Ordering::Relaxed)
            .wrapping_sub(HEAD.load(Ordering::Relaxed))
            >= ENTRIES / 4
}

/// Whether the log holds an item the consumer could take now.
pub(crate) fn has_ready() -> bool {
    let ring = RING.load(Ordering::Acquire);
    if ring.is_null() {
        return false;
    }
    let head = HEAD.load(Ordering::Relaxed);
    head != TAIL.load(Ordering::Acquire)
        && entry(ring, head).seq.load(Ordering::Acquire) == head + 1
}

fn take(marker: &mut Marker, lo: usize, hi: usize) {
    if hi == 0 {
        // A word a new object holds (`shade_new`); a stale entry from an earlier cycle only
        // keeps what it points to alive for one cycle.
        marker.mark_word(lo);
    } else {
        marker.work.push(Work::Range(lo, hi));
    }
}
