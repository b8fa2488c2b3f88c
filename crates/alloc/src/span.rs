//! Spans (Go's `mspan`): a run of whole 8 KiB pages, either free in the page heap or in use,
//! carved into equal slots of one size class (small) or holding one large object.
//!
//! ```text
//!   start (page aligned)                                              start + npages * 8 KiB
//!   | slot 0 | slot 1 | slot 2 | ...                 | slot nelems-1 | tail waste |
//!   ^obj_base = start (small)            find_block(tail waste) = None
//!
//!   Gc-kind slot:  | ... | free-list link when free | last word: client header (0 = free) |
//!   Malloc slot:   | word 0: free-list link when free | ... |
//!   Large span:    | (alignment padding) | obj_base: the object, elem_size bytes | rest |
//! ```
//!
//! Allocation state of a small span (who may touch which field):
//!
//! - `free_head`, `bump`, `allocated` belong to the span's *owner*: the cache whose id is in
//!   `owner`, or the holder of the central lock while the span is on a central list, or the
//!   walk of `mcentral::release_empty_spans` that took it off its list in a batch. They are
//!   atomics only so that `Span` is `Sync`; they are read and written with Relaxed by one thread
//!   at a time, ownership being handed over through the central lock or the `owner` CAS.
//! - `remote` is the lock-free remote-free stack (Treiber push by any thread, `swap(0)` by the
//!   owner). It links through the freed slots' link words ([`Span::link_of`]).
//! - `owner` is the ownership word: a cache id (>= [`FIRST_CACHE_ID`]), [`OWNER_CENTRAL`],
//!   [`OWNER_DETACHED`], or [`OWNER_NONE`]; see `mcentral` for the protocol.
//! - Geometry fields (`start`, `npages`, `obj_base`, `elem_size`, `nelems`, `div_magic`, `spc`)
//!   are written under the heap lock before `state` is published (Release) and are read lock-free
//!   by `find_block` (Acquire on `state`, then Relaxed): a stale answer is possible, UB is not.
//!
//! Mark bits: one per slot, `marks[i / 64] >> (i % 64)`, at most 1024 slots per span, valid
//! for the marking epoch `marks_epoch` only. A cycle starts a new epoch ([`new_mark_epoch`], one
//! atomic add in its first pause) instead of clearing every span's bits there (1.5 ms for a
//! 700 MB heap of small objects): a span whose epoch is older holds no mark of this cycle, and
//! the first mark of the cycle clears its bits ([`Span::current_marks`]; Go gives each span
//! fresh mark bits at its sweep for the same reason).

use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::PAGE_SIZE;
use crate::size_class::SizeClass;

/// The remote-free word keeps the stack's length above this bit, so that the owner takes the
/// stack and its length in one swap instead of walking it (user-space addresses fit in 47 bits
/// on x86_64 and 48 on aarch64; a span has at most 1024 slots).
pub(crate) const REMOTE_COUNT_SHIFT: u32 = 48;
const REMOTE_ADDRESS_MASK: usize = (1 << REMOTE_COUNT_SHIFT) - 1;

/// Words of mark bits per span (1024 slots at most).
pub(crate) const MARK_WORDS: usize = 16;
/// Largest slot count a span may have.
pub(crate) const MAX_OBJECTS: usize = MARK_WORDS * 64;

/// `state`: struct unused (on the metadata free list or never handed out).
pub(crate) const STATE_UNUSED: u8 = 0;
/// `state`: a free page run in the page heap.
pub(crate) const STATE_FREE: u8 = 1;
/// `state`: an in-use span of small slots.
pub(crate) const STATE_SMALL: u8 = 2;
/// `state`: an in-use span holding one large object.
pub(crate) const STATE_LARGE: u8 = 3;

/// `owner`: not a small span in use (free, large, unused).
pub(crate) const OWNER_NONE: usize = 0;
/// `owner`: on its central list (or being pushed there by the winner of the detach CAS, or in a
/// batch `mcentral::release_empty_spans` took off the list).
pub(crate) const OWNER_CENTRAL: usize = 1;
/// `owner`: released by its cache while full; the next remote free moves it to central.
pub(crate) const OWNER_DETACHED: usize = 2;
/// `owner` of spans held by the shared fallback cache (threads whose cache is gone).
pub(crate) const GLOBAL_CACHE_ID: usize = 3;
/// First id handed to a thread cache.
pub(crate) const FIRST_CACHE_ID: usize = 16;

/// `allocated` of a cache's current span when it became current (see `Span::allocated`).
pub(crate) const CURRENT_BIAS: usize = 1 << 40;

/// `cache_list`: on the owning cache's partial list.
pub(crate) const IN_PARTIAL: u8 = 1;

/// Number of span classes: size class × {Malloc, Gc, pointer-free Gc}. Malloc and Gc classes
/// interleave (`size_class * 2 + kind`, which the allocation fast path's table gives directly);
/// the pointer-free Gc classes follow them (`POINTER_FREE_BASE + size_class`).
pub(crate) const NUM_SPAN_CLASSES: usize = crate::size_class::NUM_SIZE_CLASSES * 3;

/// The first pointer-free Gc span class (see [`NUM_SPAN_CLASSES`]); also a large pointer-free
/// Gc span's class.
pub(crate) const POINTER_FREE_BASE: usize = crate::size_class::NUM_SIZE_CLASSES * 2;

/// Whether span class `spc` holds Gc-kind slots (pointer-free or not).
#[inline(always)]
pub(crate) const fn spc_is_gc(spc: usize) -> bool {
    spc & 1 == 1 || spc >= POINTER_FREE_BASE
}

/// Whether span class `spc` holds pointer-free Gc objects.
#[inline(always)]
pub(crate) const fn spc_is_pointer_free(spc: usize) -> bool {
    spc >= POINTER_FREE_BASE
}

/// The size class of span class `spc`.
#[inline(always)]
pub(crate) const fn spc_size_class(spc: usize) -> usize {
    if spc >= POINTER_FREE_BASE {
        spc - POINTER_FREE_BASE
    } else {
        spc / 2
    }
}

/// A value alone on its cache line(s).
#[repr(C, align(64))]
pub(crate) struct CacheLine<T>(pub(crate) T);

impl<T> core::ops::Deref for CacheLine<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Span metadata. Lives in the span allocator (`mheap`), never unmapped, recycled.
///
/// Layout (`repr(C)`, 64-byte aligned), three cache lines: (1) what every freer reads and only
/// the heap lock or an ownership change writes (`owner`, `spc`, the geometry `find_block`
/// reads); (2) what the owner writes on every allocation and local free (`free_head`,
/// `allocated`, `bump`, the partial-FIFO links); (3) `remote`, the CAS target of cross-thread
/// frees, alone. A thread freeing into a span another thread is allocating from thus reads
/// line 1 without bouncing line 2.
#[repr(C)]
pub(crate) struct Span {
    /// Ownership word, see the module docs and `mcentral`.
    pub(crate) owner: AtomicUsize,
    /// The cache id that last owned the span before detaching it (written by that owner before
    /// its SeqCst store of `OWNER_DETACHED`, read Relaxed by frees as a hint: see
    /// `mcache::adopt`; correctness rests on the `owner` CAS alone).
    pub(crate) last_owner: AtomicUsize,
    /// `SizeClass::div_magic` of a small span. Heap lock.
    pub(crate) div_magic: AtomicU32,
    /// `STATE_*`. Heap lock; Release on publish, Acquire in readers.
    pub(crate) state: AtomicU8,
    /// Span class (see [`NUM_SPAN_CLASSES`]); for a large span 0 (Malloc), 1 (Gc) or
    /// [`POINTER_FREE_BASE`] (pointer-free Gc).
    pub(crate) spc: AtomicU8,
    /// Owner-only: whether the span is on its cache's partial list ([`IN_PARTIAL`]).
    pub(crate) cache_list: AtomicU8,
    /// First page address. Heap lock.
    pub(crate) start: AtomicUsize,
    /// Pages in the span. Heap lock.
    pub(crate) npages: AtomicUsize,
    /// Address of slot 0 (start, or the aligned object of a large span). Heap lock.
    pub(crate) obj_base: AtomicUsize,
    /// Slot size; 0 while not in use. Heap lock.
    pub(crate) elem_size: AtomicUsize,
    /// Slot count. Heap lock.
    pub(crate) nelems: AtomicUsize,
    /// Owner-only local free list head (slot address, 0 = empty).
    pub(crate) free_head: AtomicUsize,
    /// Owner-only: slots handed out and not yet seen freed by the owner. While the span is a
    /// cache's *current* span (whose pops are not counted) it is [`CURRENT_BIAS`] minus the
    /// owner's frees into it, so that the free path needs no "current?" test and never sees 0;
    /// set by [`Span::settle_allocated`] when the span stops being current.
    pub(crate) allocated: AtomicUsize,
    /// Owner-only: slots `[bump, nelems)` were never handed out.
    pub(crate) bump: AtomicUsize,
    /// Where a free slot keeps its free-list link: word 0 of a malloc slot; in a Gc slot the
    /// word before the header, on the header's cache line (but for a header that begins its
    /// line), so that the collector freeing a dead object touches one line of it, not two. Set
    /// as the span is carved (heap lock), before any slot of it is free.
    link: AtomicUsize,
    /// Intrusive links: page-heap free lists and metadata free list (heap lock), central lists
    /// (central lock), a cache's partial FIFO (owner).
    pub(crate) next: AtomicPtr<Span>,
    /// Back link for the page-heap free lists (heap lock) and a cache's partial FIFO.
    pub(crate) prev: AtomicPtr<Span>,
    /// Free runs only (heap lock): bytes of the run returned to the OS and counted in
    /// `stats::HEAP_RELEASED` (the whole run once the scavenger has passed).
    pub(crate) released: AtomicUsize,
    /// Free runs only (heap lock): the scavenger tick at which the run became free.
    pub(crate) free_since: AtomicUsize,
    /// Remote-free stack: head slot address in the low 48 bits, number of slots on the stack in
    /// the high 16 (see [`REMOTE_COUNT_SHIFT`]); 0 = empty.
    pub(crate) remote: CacheLine<AtomicUsize>,
    /// The marking epoch the mark bits belong to ([`MARK_EPOCH`]); [`CLEARING`] while a marker
    /// clears them for the current one; 0 for bits that belong to no epoch.
    pub(crate) marks_epoch: AtomicU64,
    /// Mark bits, one per slot: read them through [`Span::marks_if_current`] or
    /// [`Span::current_marks`].
    pub(crate) marks: [AtomicU64; MARK_WORDS],
    /// The last epoch in which this span, as a malloc span, went onto [`MARKED_MALLOC`].
    listed_in: AtomicU64,
    /// The epoch in which [`Span::mark_every_slot`] marked every slot of this span, free ones
    /// included: in it, a marked slot is not necessarily an object.
    marked_whole_in: AtomicU64,
    /// The epoch in which this span, as a large malloc block, was allocated black
    /// ([`Span::mark_black`]): marked, and never scanned in that epoch.
    black_in: AtomicU64,
    /// The next span on [`MARKED_MALLOC`] (set once per epoch, when the span goes onto it).
    pub(crate) marked_next: AtomicPtr<Span>,
    /// Walkers of the Gc spans ([`crate::for_each_gc_span`]) visiting this span now: while
    /// non-zero, a small span that empties is listed centrally instead of going back to the page
    /// heap, so that its pages keep the geometry the walker read (see [`Span::visit`]).
    visitors: AtomicU32,
}

/// The malloc spans with a block marked in the current epoch (pushed by their first mark of the
/// epoch, emptied by [`new_mark_epoch`]): what the collector's termination rescans, without
/// walking every span.
pub(crate) static MARKED_MALLOC: AtomicPtr<Span> = AtomicPtr::new(core::ptr::null_mut());

/// The marking epoch: a span's bits count only if they belong to it. Starts at 1 (0 marks bits
/// that belong to no epoch); never wraps.
pub(crate) static MARK_EPOCH: AtomicU64 = AtomicU64::new(1);

/// `marks_epoch` while a marker clears the bits: greater than any epoch.
const CLEARING: u64 = u64::MAX;

/// Starts a new marking epoch: every mark bit of every span reads as clear from now on. Called
/// with the world stopped, at a cycle's start (and by gccheckmark's marking from scratch).
pub(crate) fn new_mark_epoch() {
    MARK_EPOCH.fetch_add(1, Ordering::Relaxed);
    // No span is pushed meanwhile: markers are idle in a pause, and a mutator's first mark of an
    // epoch runs in a window the pause waits out.
    MARKED_MALLOC.store(core::ptr::null_mut(), Ordering::Relaxed);
}

const _: () = assert!(core::mem::offset_of!(Span, free_head) == 64);

impl Span {
    /// A span with nothing to give: every cache's "no current span" (its free list is empty, so
    /// the fast path falls through to the refill without a null check).
    pub(crate) const fn empty() -> Span {
        Span {
            start: AtomicUsize::new(0),
            npages: AtomicUsize::new(0),
            obj_base: AtomicUsize::new(0),
            elem_size: AtomicUsize::new(0),
            nelems: AtomicUsize::new(0),
            div_magic: AtomicU32::new(0),
            state: AtomicU8::new(STATE_UNUSED),
            spc: AtomicU8::new(0),
            next: AtomicPtr::new(core::ptr::null_mut()),
            prev: AtomicPtr::new(core::ptr::null_mut()),
            owner: AtomicUsize::new(OWNER_NONE),
            remote: CacheLine(AtomicUsize::new(0)),
            free_head: AtomicUsize::new(0),
            bump: AtomicUsize::new(0),
            link: AtomicUsize::new(0),
            allocated: AtomicUsize::new(0),
            last_owner: AtomicUsize::new(0),
            cache_list: AtomicU8::new(0),
            released: AtomicUsize::new(0),
            free_since: AtomicUsize::new(0),
            marks_epoch: AtomicU64::new(0),
            marks: [const { AtomicU64::new(0) }; MARK_WORDS],
            listed_in: AtomicU64::new(0),
            marked_whole_in: AtomicU64::new(0),
            black_in: AtomicU64::new(0),
            marked_next: AtomicPtr::new(core::ptr::null_mut()),
            visitors: AtomicU32::new(0),
        }
    }

    /// Bytes covered by the span.
    #[inline]
    pub(crate) fn bytes(&self) -> usize {
        self.npages.load(Ordering::Relaxed) * PAGE_SIZE
    }

    /// Whether the span holds Gc-kind slots.
    #[inline]
    pub(crate) fn is_gc(&self) -> bool {
        spc_is_gc(self.spc.load(Ordering::Relaxed) as usize)
    }

    /// Makes every mark bit read as clear (the bits belong to no epoch). Waits out a marker
    /// clearing them (one that holds a stale word into the span as it is freed): overwriting
    /// its CLEARING would let it go on zeroing the bits after a new owner set one.
    pub(crate) fn clear_marks(&self) {
        loop {
            let epoch = self.marks_epoch.load(Ordering::Acquire);
            if epoch == CLEARING {
                self.wait_for_clearing();
                continue;
            }
            // Release: pairs with `marks_if_current`'s Acquire.
            if self
                .marks_epoch
                .compare_exchange(epoch, 0, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// The mark bits if they belong to the current epoch; `None` if no slot of the span has
    /// been marked in it (every bit reads as clear).
    #[inline]
    pub(crate) fn marks_if_current(&self) -> Option<&[AtomicU64; MARK_WORDS]> {
        // Acquire: pairs with the Release in `renew_marks`: the clearing is seen before the
        // bits set since.
        let epoch = self.marks_epoch.load(Ordering::Acquire);
        (epoch == MARK_EPOCH.load(Ordering::Relaxed)).then_some(&self.marks)
    }

    /// Marks this large malloc span's block as allocated while the collector marks: it is
    /// marked without being scanned, and [`Span::allocated_black`] says so for the epoch.
    pub(crate) fn mark_black(&self) {
        self.current_marks()[0].store(1, Ordering::Relaxed);
        // The epoch read after the marks were renewed: if a pause began a new one in between,
        // the block reads as black in the new epoch too, which only makes it rescanned whole.
        self.black_in
            .store(MARK_EPOCH.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether this span's block was allocated black in the current epoch ([`Span::mark_black`]).
    pub(crate) fn allocated_black(&self) -> bool {
        self.black_in.load(Ordering::Relaxed) == MARK_EPOCH.load(Ordering::Relaxed)
    }

    /// Whether [`Span::mark_every_slot`] marked this span in the current epoch.
    pub(crate) fn marked_whole(&self) -> bool {
        self.marked_whole_in.load(Ordering::Relaxed) == MARK_EPOCH.load(Ordering::Relaxed)
    }

    /// Whether slot `i`'s mark bit is set in the current epoch.
    #[inline]
    pub(crate) fn slot_marked(&self, i: usize) -> bool {
        // Acquire: pairs with the AcqRel of a marker's claim (`MarkBit::set`).
        self.marks_if_current()
            .and_then(|marks| marks.get(i / 64))
            .is_some_and(|w| w.load(Ordering::Acquire) & (1u64 << (i % 64)) != 0)
    }

    /// The mark bits, for setting one: clears them first if they belong to an older epoch.
    #[inline]
    pub(crate) fn current_marks(&self) -> &[AtomicU64; MARK_WORDS] {
        let now = MARK_EPOCH.load(Ordering::Relaxed);
        // Acquire: as in `marks_if_current`.
        let epoch = self.marks_epoch.load(Ordering::Acquire);
        // A thread that read the epoch before a new one began (a mutator between its look at
        // the barrier and its allocation's mark) sees a newer one here and marks in it: its
        // mark then counts for the new cycle, as it would had the bits been cleared at the
        // cycle's start. Bits never go back to an older epoch.
        if epoch < now {
            self.renew_marks(now);
        } else if epoch == CLEARING {
            self.wait_for_clearing();
        }
        &self.marks
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn renew_marks(&self, now: u64) {
        loop {
            let epoch = self.marks_epoch.load(Ordering::Acquire);
            if epoch == CLEARING {
                self.wait_for_clearing();
                continue;
            }
            if epoch >= now {
                return;
            }
            // A mutator marking its new object must not be stopped while others wait for its
            // clearing: the collector's marker would wait with it, and the collector waits for
            // the marker.
            // SAFETY: the window holds a CAS and at most 17 stores: no lock, no allocation, no
            // wait.
            let _window = unsafe { crate::nosuspend::NoSuspend::new() };
            // The caller read the epoch before the window: a pause may have begun a new one
            // since. Inside the window it cannot change, so the bits are renewed for the epoch
            // that is current while they are, and the span is listed on that epoch's list
            // (listed with an older epoch, on the new list, it would go onto it a second time
            // at its next mark and tie the list into a loop).
            let now = now.max(MARK_EPOCH.load(Ordering::Relaxed));
            if epoch >= now {
                return;
            }
            // Acquire: the bits set in the old epoch are ours to clear now.
            if self
                .marks_epoch
                .compare_exchange(epoch, CLEARING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                for w in &self.marks {
                    w.store(0, Ordering::Relaxed);
                }
                // Release: markers that see the epoch see the bits clear.
                self.marks_epoch.store(now, Ordering::Release);
                if !self.is_gc() && self.listed_in.swap(now, Ordering::Relaxed) != now {
                    self.push_marked_malloc();
                }
                return;
            }
        }
    }

    /// Pushes this malloc span onto [`MARKED_MALLOC`] (once per epoch: `listed_in`).
    fn push_marked_malloc(&self) {
        let me = core::ptr::from_ref(self).cast_mut();
        let mut head = MARKED_MALLOC.load(Ordering::Relaxed);
        loop {
            self.marked_next.store(head, Ordering::Relaxed);
            // Release: the walker that sees this span sees its link.
            match MARKED_MALLOC.compare_exchange_weak(
                head,
                me,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn wait_for_clearing(&self) {
        while self.marks_epoch.load(Ordering::Acquire) == CLEARING {
            core::hint::spin_loop();
        }
    }

    /// Runs `visit` with the span held as it is: an in-use span stays the span it is (its pages,
    /// its geometry) until `visit` returns, though its owner may empty it meanwhile. Does not run
    /// `visit` for a span that is not in use or is being given back to the page heap.
    ///
    /// A walker reads a span's geometry and then its slots' headers with the world going; were
    /// the span emptied, given back and its pages carved again in between, it would read
    /// another span's bytes as headers and free slots it does not hold (seen: condemning read
    /// an emptied span while its pages went to another). The walker and the releaser of an
    /// empty small span ([`Span::may_leave_for_the_heap`]) run a Dekker handshake: the walker
    /// counts itself in `visitors` and then reads `owner`, the releaser stores `OWNER_NONE` and
    /// then reads `visitors`, all SeqCst. Whichever comes second sees the other: the walker
    /// skips the span, or the releaser lists it centrally instead (a later release finds it
    /// empty and unvisited). Large spans need no handshake: only the collector frees a large
    /// Gc object, and it is the walker.
    pub(crate) fn visit(&self, visit: impl FnOnce()) {
        // SeqCst: the walker half of the handshake.
        self.visitors.fetch_add(1, Ordering::SeqCst);
        // The owner first: a span carved again since gets its owner (Release) after its state
        // left SMALL, so a state read after an owner that is not NONE is the carve's at least.
        let owner = self.owner.load(Ordering::SeqCst);
        let state = self.state.load(Ordering::Acquire);
        let held = state == STATE_LARGE || (state == STATE_SMALL && owner != OWNER_NONE);
        if held {
            visit();
        }
        // Release: the walker's reads of the span are done before a releaser sees it gone.
        self.visitors.fetch_sub(1, Ordering::Release);
    }

    /// For the releaser of a small span with no live slot, which has just stored `OWNER_NONE`
    /// (SeqCst): whether no walker holds the span, so that it may go back to the page heap
    /// (see [`Span::visit`]).
    pub(crate) fn may_leave_for_the_heap(&self) -> bool {
        // SeqCst: the releaser half of the handshake.
        self.visitors.load(Ordering::SeqCst) == 0
    }

    /// Initialises a freshly carved small span of `class`. Heap lock held, struct not yet
    /// published as in use.
    pub(crate) fn init_small(&self, spc: usize, class: SizeClass, owner: usize) {
        let start = self.start.load(Ordering::Relaxed);
        self.obj_base.store(start, Ordering::Relaxed);
        self.elem_size.store(class.size(), Ordering::Relaxed);
        self.nelems
            .store(class.objects_per_span(), Ordering::Relaxed);
        self.div_magic.store(class.div_magic(), Ordering::Relaxed);
        self.spc.store(spc as u8, Ordering::Relaxed);
        self.link.store(
            if spc_is_gc(spc) { class.size() - 16 } else { 0 },
            Ordering::Relaxed,
        );
        self.reset_alloc_state(owner);
        if spc_is_gc(spc) {
            // Gc convention: the header word (last word of every slot) is 0 in free slots. The
            // pages may be dirty from an earlier span, so zero every header now.
            let size = class.size();
            for i in 0..class.objects_per_span() {
                let hdr = (start + (i + 1) * size - 8) as *mut u64;
                // SAFETY: the span's pages belong to the caller (carved under the heap lock, not
                // yet published); `hdr` is an 8-aligned word inside slot i.
                unsafe { hdr.write(0) };
            }
        }
    }

    /// Sets the mark bit of every slot, in the epoch now current (see `set_allocate_black`).
    pub(crate) fn mark_every_slot(&self) {
        let slots = self.nelems.load(Ordering::Relaxed);
        let marks = self.current_marks();
        // Read after `current_marks` renewed the bits: the epoch they now belong to.
        self.marked_whole_in
            .store(MARK_EPOCH.load(Ordering::Relaxed), Ordering::Relaxed);
        for (w, word) in marks.iter().enumerate() {
            if 64 * w >= slots {
                break;
            }
            word.fetch_or(
                u64::MAX >> (64 - (slots - 64 * w).min(64)),
                Ordering::Relaxed,
            );
        }
    }

    /// Initialises a large span whose object starts at `obj_base` with `elem_size` bytes.
    pub(crate) fn init_large(&self, obj_base: usize, elem_size: usize, spc: usize) {
        let gc = spc_is_gc(spc);
        self.obj_base.store(obj_base, Ordering::Relaxed);
        self.elem_size.store(elem_size, Ordering::Relaxed);
        self.nelems.store(1, Ordering::Relaxed);
        self.div_magic.store(0, Ordering::Relaxed);
        self.spc.store(spc as u8, Ordering::Relaxed);
        self.reset_alloc_state(OWNER_NONE);
        if gc {
            // SAFETY: the object's last word lies inside the span's pages, which belong to the
            // caller; `elem_size` is a multiple of 8 and obj_base is page aligned.
            unsafe { ((obj_base + elem_size - 8) as *mut u64).write(0) };
        }
    }

    fn reset_alloc_state(&self, owner: usize) {
        // Release: a walker that reads this owner reads the span's state as it is now, not
        // SMALL from before it was given back (see `Span::visit`).
        self.owner.store(owner, Ordering::Release);
        self.remote.store(0, Ordering::Relaxed);
        self.free_head.store(0, Ordering::Relaxed);
        self.bump.store(0, Ordering::Relaxed);
        self.allocated.store(0, Ordering::Relaxed);
        self.last_owner.store(0, Ordering::Relaxed);
        self.cache_list.store(0, Ordering::Relaxed);
        self.next.store(core::ptr::null_mut(), Ordering::Relaxed);
        self.prev.store(core::ptr::null_mut(), Ordering::Relaxed);
        self.clear_marks();
    }

    /// The word of free slot `slot` that holds its free-list link ([`Span::link`]).
    #[inline(always)]
    pub(crate) fn link_of(&self, slot: usize) -> *mut usize {
        slot.wrapping_add(self.link.load(Ordering::Relaxed)) as *mut usize
    }

    /// Pops a slot off the owner's local free list; null when it is empty. The fast path: five
    /// instructions and one branch (load head, test, load the link's offset from the span's
    /// line the head is on, load link, store head). It counts nothing:
    /// `allocated` of a cache's current span is settled when the span stops being current
    /// (see [`Span::settle_allocated`]).
    ///
    /// # Safety
    /// May be called only by the span's owner (see the module docs).
    #[inline(always)]
    pub(crate) unsafe fn pop_local(&self) -> *mut u8 {
        let head = self.free_head.load(Ordering::Relaxed);
        if head == 0 {
            return core::ptr::null_mut();
        }
        // SAFETY: `head` is a free slot of this span on the owner's list; its link word holds
        // the next, written by the owner or published by the remote stack's Acquire swap.
        let next = unsafe { self.link_of(head).read() };
        self.free_head.store(next, Ordering::Relaxed);
        head as *mut u8
    }

    /// Owner: the number of slots on the local free list (a walk; only when a current span with
    /// a non-empty list is given up or counted: thread exit, `stats()`).
    ///
    /// # Safety
    /// May be called only by the owner.
    pub(crate) unsafe fn local_len(&self) -> usize {
        let mut n = 0;
        let mut p = self.free_head.load(Ordering::Relaxed);
        while p != 0 && n < MAX_OBJECTS {
            n += 1;
            // SAFETY: every node of the owner's list is a free slot of this span, linked
            // through its link word (the list ends with 0).
            p = unsafe { self.link_of(p).read() };
        }
        n
    }

    /// Owner: makes `allocated` exact for a span that stops being a cache's current span (whose
    /// pops and frees are not counted): every slot below `bump` is live except the `listed` ones
    /// on the local list (remote frees not collected yet count as live, as everywhere).
    pub(crate) fn settle_allocated(&self, listed: usize) {
        let b = self.bump.load(Ordering::Relaxed);
        self.allocated
            .store(b.saturating_sub(listed), Ordering::Relaxed);
    }

    /// Owner: threads up to 4 KiB worth (at least one) of never-used slots onto the local free
    /// list, in address order (a batch refill: the fast path then only pops). Returns how many.
    ///
    /// # Safety
    /// May be called only by the owner.
    pub(crate) unsafe fn extend_free(&self) -> usize {
        let b = self.bump.load(Ordering::Relaxed);
        let n = self.nelems.load(Ordering::Relaxed);
        let size = self.elem_size.load(Ordering::Relaxed);
        if b >= n || size == 0 {
            return 0;
        }
        let count = (4096 / size).clamp(1, n - b);
        let base = self.obj_base.load(Ordering::Relaxed) + b * size;
        let mut link = self.free_head.load(Ordering::Relaxed);
        for i in (0..count).rev() {
            let slot = base + i * size;
            // SAFETY: slot `b + i` was never handed out, so it belongs to the owner; its link
            // word lies inside it, below the Gc header word (slots are >= 16 bytes).
            unsafe { self.link_of(slot).write(link) };
            link = slot;
        }
        self.free_head.store(link, Ordering::Relaxed);
        self.bump.store(b + count, Ordering::Relaxed);
        count
    }

    /// Whether the owner could pop a slot without collecting remote frees.
    #[inline]
    pub(crate) fn has_local_free(&self) -> bool {
        self.free_head.load(Ordering::Relaxed) != 0
            || self.bump.load(Ordering::Relaxed) < self.nelems.load(Ordering::Relaxed)
    }

    /// Owner free: pushes `p` on the local free list (the caller keeps `allocated`).
    ///
    /// # Safety
    /// May be called only by the owner, with `p` an allocated slot start of this span.
    #[inline]
    pub(crate) unsafe fn push_local(&self, p: *mut u8) {
        // SAFETY: the slot is ours now (being freed); its link word becomes the link.
        unsafe {
            self.link_of(p as usize)
                .write(self.free_head.load(Ordering::Relaxed))
        };
        self.free_head.store(p as usize, Ordering::Relaxed);
    }

    /// Any-thread free: pushes `p` on the remote-free stack (lock-free).
    ///
    /// # Safety
    /// `p` must be an allocated slot start of this span, freed exactly once.
    #[inline]
    pub(crate) unsafe fn push_remote(&self, p: *mut u8) {
        // SAFETY: caller's contract, for a chain of one.
        unsafe { self.push_remote_chain(p, p, 1) }
    }

    /// Pushes a chain of slots, already linked through their link words from `first` to `last`,
    /// onto the remote-free stack with one CAS (the sweeper frees a span's dead slots this way).
    ///
    /// # Safety
    /// Every slot of the chain must be an allocated slot start of this span, freed exactly once,
    /// and `last` must be the chain's end (its link is overwritten here).
    pub(crate) unsafe fn push_remote_chain(&self, first: *mut u8, last: *mut u8, count: usize) {
        debug_assert_eq!(
            first as usize & !REMOTE_ADDRESS_MASK,
            0,
            "slot above 2^48: {first:p}"
        );
        let mut head = self.remote.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is ours until the CAS below publishes it.
            unsafe {
                self.link_of(last as usize)
                    .write(head & REMOTE_ADDRESS_MASK)
            };
            let length = (head >> REMOTE_COUNT_SHIFT) + count;
            // SeqCst: Release publishes the links to the owner's Acquire swap in
            // `collect_remote`; the SeqCst total order is the Dekker handshake with `release`
            // in mcentral (see there).
            match self.remote.compare_exchange_weak(
                head,
                first as usize | (length << REMOTE_COUNT_SHIFT),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Owner of a span that is not a cache's current span: moves the remote-free stack onto the
    /// local free list and takes the slots off `allocated`. Returns how many slots moved.
    ///
    /// # Safety
    /// May be called only by the owner.
    pub(crate) unsafe fn collect_remote(&self) -> usize {
        // SAFETY: caller's contract.
        let n = unsafe { self.take_remote() };
        if n > 0 {
            let a = self.allocated.load(Ordering::Relaxed);
            self.allocated.store(a.saturating_sub(n), Ordering::Relaxed);
        }
        n
    }

    /// Owner: moves the remote-free stack onto the local free list, leaving `allocated` alone
    /// (for a cache's current span, whose slots on the list count as lent). Returns how many
    /// slots moved.
    ///
    /// # Safety
    /// May be called only by the owner.
    pub(crate) unsafe fn take_remote(&self) -> usize {
        if self.remote.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        // Acquire: pairs with the Release part of the CAS in `push_remote_chain` (the links).
        let word = self.remote.swap(0, Ordering::Acquire);
        let list = word & REMOTE_ADDRESS_MASK;
        let n = word >> REMOTE_COUNT_SHIFT;
        if n == 0 {
            return 0;
        }
        let local = self.free_head.load(Ordering::Relaxed);
        if local != 0 {
            // Splice in front of the local list: find the remote list's end (rare: refills
            // come when the local list is empty).
            let mut last = list;
            loop {
                // SAFETY: every node is a freed slot of this span linked through its link word
                // (visible through the Acquire swap); the list ends with 0.
                let next = unsafe { self.link_of(last).read() };
                if next == 0 {
                    break;
                }
                last = next;
            }
            // SAFETY: `last` is the list's last slot, now owned by us.
            unsafe { self.link_of(last).write(local) };
        }
        self.free_head.store(list, Ordering::Relaxed);
        n
    }

    /// Slot index of `addr` if it lies inside one of this span's slots, validating everything
    /// (the span may be stale). Returns `(slot start, slot size, index)`.
    #[inline]
    pub(crate) fn locate(&self, addr: usize) -> Option<(usize, usize, usize)> {
        // Acquire: pairs with the Release store of `state` in mheap's publish.
        let state = self.state.load(Ordering::Acquire);
        if state != STATE_SMALL && state != STATE_LARGE {
            return None;
        }
        let base = self.obj_base.load(Ordering::Relaxed);
        let size = self.elem_size.load(Ordering::Relaxed);
        let n = self.nelems.load(Ordering::Relaxed);
        let start = self.start.load(Ordering::Relaxed);
        let end = start.wrapping_add(self.bytes());
        if addr < base || addr >= end || addr < start || size == 0 {
            return None;
        }
        let off = addr - base;
        let idx = if state == STATE_SMALL {
            let magic = self.div_magic.load(Ordering::Relaxed) as u64;
            if off >= n.wrapping_mul(size) {
                return None;
            }
            ((off as u64).wrapping_mul(magic) >> 32) as usize
        } else {
            if off >= size {
                return None;
            }
            0
        };
        if idx >= n || idx >= MAX_OBJECTS {
            return None;
        }
        Some((base.wrapping_add(idx.wrapping_mul(size)), size, idx))
    }
}
