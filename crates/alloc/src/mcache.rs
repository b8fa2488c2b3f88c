//! Per-thread caches (Go's `mcache`, per thread here instead of per P).
//!
//! A cache has two layers. The *bins* (jemalloc's tcache bins): per Malloc span class, a stack
//! of free slot addresses in an array of the cache's own, filled by the thread's frees and
//! popped by its allocations; the slots' memory is not touched. Under them, the *span layer*:
//! per span class (size class × {Malloc, Gc}), one *current* span and a FIFO of *partial*
//! spans: spans the cache owns that have free slots. Only the owner allocates from a span and
//! frees onto its local list, so neither needs an atomic. Allocation:
//!
//! 1. Malloc classes: pop the class's bin (`MCache::alloc_binned`; a slot counts as allocated
//!    in its span while it sits in a bin);
//! 2. pop the current span's local free list (no counting, see `span::Span::pop_local`;
//!    allocations are counted when slots reach that list, see `mallocs`);
//! 3. else (cold, `refill`): thread never-used slots onto the list in a batch
//!    (`Span::extend_free`), or collect the span's remote frees;
//! 4. else release the span (`mcentral::release`: to the page heap when empty, to the central
//!    list when it has remote frees, *detached* when full) and take the head of the partial FIFO,
//!    else a span from the central list, else carve a fresh span.
//!
//! Frees through [`crate::GoroAlloc`] know their layout, hence their span class (the same table
//! lookup as the allocation fast path): a small one is pushed on its bin, without looking up the
//! span (`MCache::bin_free`). A full bin, a thread without bins (it never allocated, or it is
//! exiting), `free_gc` and large or over-aligned blocks take the span path (`free`): the span's
//! `owner` word says who owns it. If it is this cache: push on the local list (no atomics). If
//! it is `DETACHED` and this cache detached it (`last_owner`), the cache *adopts* it back with
//! one CAS and appends it to the partial FIFO, so a thread that frees its own objects pays one
//! atomic per span, not per object (the sliding-window pattern of most programs). Any other
//! free is a lock-free push on the span's remote stack; a remote free into a detached span lists
//! it centrally (`mcentral.rs`), so memory freed by thread B for objects of thread A becomes
//! reusable by everyone even if A never allocates again, and never piles up.
//!
//! Why bins: a free list is linked through the free slots, so every free writes the slot and
//! every pop reads it. Between threads (producer-consumer, xmalloc) that moved each object's
//! cache line from core to core and back, and a LIFO-cold slot popped off a span list is a miss
//! even on one thread; a bin hands back the slot this thread freed last, and neither its push
//! nor its pop touches the slot. Bins are sized for bursts (64 KiB of slots per class, 16 to
//! 1024 slots, in a lazily mapped array recycled between threads), because a burst larger than
//! the bin pays the span path plus the bin check; a thread only pays for the classes it uses.
//! Their slots stay counted live in their spans, so spans with slots in some bin cannot be
//! released; `stats()`, `release_memory()` and thread exit give the calling thread's bins back.
//!
//! Partial spans are appended at the tail and taken from the head: by the time a span is reused,
//! the frees that followed its adoption have accumulated on it (mimalloc's page queues have the
//! same property). A partial span whose last object is freed goes back to the page heap at once
//! (so a thread that frees most of its heap gives the pages to the scavenger).
//!
//! The cache lives in a `thread_local!` with a const initialiser whose `Drop` releases every span
//! at thread exit. Code that runs after that (other TLS destructors calling `free` or `malloc`)
//! finds the thread-local gone (`try_with` fails) and uses the shared [`GLOBAL`] cache under a
//! spin lock for allocation, and the remote path for frees. The allocator never calls the global
//! allocator, so the `UnsafeCell` borrow inside `try_with` is never re-entered.

use core::cell::UnsafeCell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arena::{ARENA_SHIFT, ArenaMeta};
use crate::span::{
    CURRENT_BIAS, FIRST_CACHE_ID, GLOBAL_CACHE_ID, IN_PARTIAL, NUM_SPAN_CLASSES, OWNER_DETACHED,
    POINTER_FREE_BASE, STATE_SMALL, Span, spc_is_gc, spc_size_class,
};
use crate::stats::{CLASS_FREES, CLASS_MALLOCS, FLUSH_EVERY, add};
use crate::sync::SpinLock;
use crate::{arena, mcentral, mheap};

/// Span classes rounded up to a power of two, so that a `u8` index needs no bounds check.
const SLOTS: usize = 256;
const _: () = assert!(NUM_SPAN_CLASSES <= SLOTS);

/// Empty spans a cache keeps per span class on its partial FIFO (more go to the page heap).
const MAX_EMPTIES: u8 = 4;

/// Id of a cache that has not been given one yet: matches no `owner` word.
const NO_ID: usize = usize::MAX;

/// The "no current span" sentinel: its free list is always empty.
static EMPTY: Span = Span::empty();

/// A span cache. Used by one thread at a time (its thread, or the holder of [`GLOBAL`]'s lock).
pub(crate) struct MCache {
    /// Owner id written into the spans this cache holds; [`NO_ID`] until the first refill.
    id: usize,
    /// Current span per span class ([`EMPTY`] = none).
    alloc: [*const Span; SLOTS],
    /// Head and tail of the partial FIFO per span class (linked through `Span::next`/`prev`,
    /// which belong to the owner while a cache owns the span).
    partial: [(*const Span, *const Span); NUM_SPAN_CLASSES],
    /// Slots per span class handed to the fast path (on the current span's free list when it
    /// became current, or added to that list since) and not yet added to
    /// `stats::CLASS_MALLOCS`. The fast path counts nothing: a slot is counted when it reaches
    /// the current span's list, and the refill, which finds that list empty, flushes an exact
    /// count (thread exit and `stats()` subtract what is still listed).
    mallocs: [u64; SLOTS],
    /// Frees per span class not yet added to `stats::CLASS_FREES`.
    frees: [u64; SLOTS],
    /// Frees since the last flush of `frees`.
    pending_frees: u64,
    /// Per span class, how many spans on the partial FIFO have no live object.
    empties: [u8; NUM_SPAN_CLASSES],
    /// `addr >> ARENA_SHIFT` of the arena the last free looked up ([`NO_ARENA`] = none) and
    /// its metadata: the free path finds a span with one dependent load instead of three
    /// (the arena index's root, its L1 entry, then the page entry).
    arena_key: usize,
    arena: *const ArenaMeta,
    /// Per span class: remote frees into one span, chained through their link words and not
    /// pushed yet (see [`MCache::free_remote_batched`]).
    pending: [Pending; NUM_SPAN_CLASSES],
    /// Per Malloc span class, the *bin* (see the module docs): a stack of free slots in this
    /// cache's bin array (`bins`; [`BIN_LAYOUT`] places each class), `bin_low[i] <= bin_top[i]
    /// <= bin_high[i]`; the next push goes to `bin_top[i]`. Owner: this cache alone. All three
    /// are null until the cache's first refill (and again after thread exit), so that the
    /// allocation fast path finds the bin empty and the free fast path finds it full.
    bin_top: [*mut usize; SLOTS],
    bin_low: [*mut usize; SLOTS],
    bin_high: [*mut usize; SLOTS],
    /// This cache's bin array (null until its first refill and after thread exit).
    bins: *mut usize,
    /// Per span class: frees pushed on the bin since its last count, and the slots it held at
    /// that count (see [`MCache::count_bin`]).
    bin_pushes: [u64; SLOTS],
    bin_counted: [u64; SLOTS],
}

/// A chain of this thread's frees into one span it does not own, waiting to be pushed onto the
/// span's remote stack with one CAS. At most `limit` slots (see [`PENDING_BYTES`]); the slots stay
/// counted live in their span (so it cannot be released) until the push.
#[derive(Copy, Clone)]
struct Pending {
    span: *const Span,
    first: usize,
    last: usize,
    count: usize,
    limit: usize,
}

/// Bytes a pending remote chain holds before it is pushed (a span's worth for most classes),
/// within 8 ..= 128 slots (more delays the owner's reuse: alloc_churn prodcons slows down).
const PENDING_BYTES: usize = 16 << 10;

/// An `arena_key` no address has (keys are below 2^38).
const NO_ARENA: usize = usize::MAX;

// SAFETY: the span pointers refer to never-freed metadata; a cache is used by one thread at a
// time (the global one under its lock).
unsafe impl Send for MCache {}

static NEXT_ID: AtomicUsize = AtomicUsize::new(FIRST_CACHE_ID);

/// The cache of threads whose own cache is gone.
static GLOBAL: SpinLock<MCache> = SpinLock::new(MCache::new(GLOBAL_CACHE_ID));

#[inline(always)]
fn sp(p: *const Span) -> &'static Span {
    // SAFETY: every span pointer a cache holds is `EMPTY` or never-unmapped span metadata.
    unsafe { &*p }
}

impl MCache {
    const fn new(id: usize) -> Self {
        MCache {
            id,
            alloc: [&raw const EMPTY; SLOTS],
            partial: [(null_mut(), null_mut()); NUM_SPAN_CLASSES],
            mallocs: [0; SLOTS],
            frees: [0; SLOTS],
            pending_frees: 0,
            empties: [0; NUM_SPAN_CLASSES],
            arena_key: NO_ARENA,
            arena: core::ptr::null(),
            pending: [Pending {
                span: null_mut(),
                first: 0,
                last: 0,
                count: 0,
                limit: 0,
            }; NUM_SPAN_CLASSES],
            bin_top: [null_mut(); SLOTS],
            bin_low: [null_mut(); SLOTS],
            bin_high: [null_mut(); SLOTS],
            bins: null_mut(),
            bin_pushes: [0; SLOTS],
            bin_counted: [0; SLOTS],
        }
    }

    /// Allocates one slot of span class `spc`; null when out of memory. The fast path: index the
    /// current span (no bounds check: `spc` is a `u8`), pop its free list (one branch). Nothing
    /// is counted here (see `mallocs`).
    #[inline(always)]
    fn alloc(&mut self, spc: u8) -> *mut u8 {
        // SAFETY: we own our current span (or it is EMPTY, whose list is always empty).
        let p = unsafe { sp(self.alloc[spc as usize]).pop_local() };
        if p.is_null() {
            return self.refill(spc);
        }
        p
    }

    /// Gives a cache its id at its thread's first refill or batched remote free, registering
    /// the thread-exit hook. If TLS destructors already ran (`try_with` fails), the thread is
    /// exiting: the cache becomes dead.
    #[cold]
    fn ensure_id(&mut self) {
        if self.id == NO_ID {
            if EXIT.try_with(|_| ()).is_ok() {
                self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            } else {
                self.id = DEAD_ID;
            }
        }
    }

    /// Counts `n` slots added to the free list of class `i`'s current span.
    #[inline]
    fn lend(&mut self, i: usize, n: usize) {
        if let Some(m) = self.mallocs.get_mut(i) {
            *m += n as u64;
        }
    }

    /// Counts the owner's frees into the current span `s` of class `i` so far as lent (they went
    /// back on its list) and restarts its `allocated` at [`CURRENT_BIAS`].
    fn count_current_frees(&mut self, i: usize, s: &Span) {
        let a = s.allocated.load(Ordering::Relaxed);
        self.lend(i, CURRENT_BIAS.saturating_sub(a));
        s.allocated.store(CURRENT_BIAS, Ordering::Relaxed);
    }

    /// The current span `s` of class `i` stops being current with `listed` slots on its list:
    /// count its frees, and make `allocated` exact.
    fn leave_current(&mut self, i: usize, s: &Span, listed: usize) {
        self.count_current_frees(i, s);
        if let Some(m) = self.mallocs.get_mut(i) {
            *m = m.saturating_sub(listed as u64);
        }
        s.settle_allocated(listed);
    }

    #[cold]
    #[inline(never)]
    fn refill(&mut self, spc: u8) -> *mut u8 {
        let i = spc as usize;
        if i >= NUM_SPAN_CLASSES {
            return null_mut();
        }
        self.count_bin(i);
        self.flush_class(i);
        self.push_pending(i);
        self.ensure_id();
        if self.id == DEAD_ID {
            return GLOBAL.lock().alloc(spc);
        }
        self.ensure_bins();
        let cur = sp(self.alloc[i]);
        if !core::ptr::eq(cur, &EMPTY) {
            // SAFETY: we own our current span.
            let mut n = unsafe { cur.extend_free() };
            if n == 0 {
                // SAFETY: as above.
                n = unsafe { cur.take_remote() };
            }
            if n > 0 {
                self.lend(i, n);
                return self.alloc(spc);
            }
            // The local list is empty: every slot below `bump` is live.
            self.leave_current(i, cur, 0);
            self.alloc[i] = &raw const EMPTY;
            cur.last_owner.store(self.id, Ordering::Relaxed);
            // SAFETY: we own `cur` and dropped our pointer to it.
            unsafe { mcentral::release(cur) };
        }
        let s = loop {
            if let Some(s) = self.pop_partial(i) {
                // SAFETY: we own partial spans.
                unsafe { s.collect_remote() };
                if s.has_local_free() {
                    break s;
                }
                // SAFETY: as above; a partial span always has a free slot, but be safe.
                unsafe { mcentral::release(s) };
                continue;
            }
            match mcentral::take(i, self.id) {
                Some(s) => {
                    // SAFETY: `take` made us the owner.
                    unsafe { s.collect_remote() };
                    if s.has_local_free() {
                        break s;
                    }
                    // A full span can reach the list through a recycled struct (see mcentral).
                    // SAFETY: we own `s`.
                    unsafe { mcentral::release(s) };
                }
                None => match new_small_span(i, self.id) {
                    Some(s) => break s,
                    None => return null_mut(),
                },
            }
        };
        // `allocated` is exact for a span that is not current, and its remote frees were just
        // collected: the slots below `bump` that are not live are on the local list.
        let listed = s
            .bump
            .load(Ordering::Relaxed)
            .saturating_sub(s.allocated.load(Ordering::Relaxed));
        self.lend(i, listed);
        s.allocated.store(CURRENT_BIAS, Ordering::Relaxed);
        self.alloc[i] = s;
        if s.free_head.load(Ordering::Relaxed) == 0 {
            // SAFETY: we own `s`; an empty local list with a bump region gets a batch.
            let n = unsafe { s.extend_free() };
            self.lend(i, n);
        }
        self.alloc(spc)
    }

    /// Appends an owned span to the partial FIFO of its class.
    fn push_partial(&mut self, s: &'static Span) {
        let i = s.spc.load(Ordering::Relaxed) as usize;
        let Some((head, tail)) = self.partial.get_mut(i) else {
            crate::throw("span class out of range in push_partial");
        };
        s.cache_list.store(IN_PARTIAL, Ordering::Relaxed);
        s.next.store(null_mut(), Ordering::Relaxed);
        s.prev.store(tail.cast_mut(), Ordering::Relaxed);
        if tail.is_null() {
            *head = s;
        } else {
            sp(*tail)
                .next
                .store(s as *const Span as *mut Span, Ordering::Relaxed);
        }
        *tail = s;
    }

    /// Unlinks an owned span from its partial FIFO.
    fn unlink_partial(&mut self, s: &'static Span) {
        let i = s.spc.load(Ordering::Relaxed) as usize;
        let Some((head, tail)) = self.partial.get_mut(i) else {
            crate::throw("span class out of range in unlink_partial");
        };
        let next = s.next.load(Ordering::Relaxed);
        let prev = s.prev.load(Ordering::Relaxed);
        if prev.is_null() {
            *head = next;
        } else {
            sp(prev).next.store(next, Ordering::Relaxed);
        }
        if next.is_null() {
            *tail = prev;
        } else {
            sp(next).prev.store(prev, Ordering::Relaxed);
        }
        s.next.store(null_mut(), Ordering::Relaxed);
        s.prev.store(null_mut(), Ordering::Relaxed);
        s.cache_list.store(0, Ordering::Relaxed);
    }

    fn pop_partial(&mut self, i: usize) -> Option<&'static Span> {
        let head = self.partial.get(i)?.0;
        if head.is_null() {
            return None;
        }
        let s = sp(head);
        self.unlink_partial(s);
        if s.allocated.load(Ordering::Relaxed) == 0 {
            self.empties[i] = self.empties[i].saturating_sub(1);
        }
        Some(s)
    }

    /// Local free into a span we own: the current span of its class (its `allocated` is biased,
    /// see `Span::allocated`) or one on the partial FIFO.
    ///
    /// # Safety
    /// We own `s`, and `p` is one of its allocated slots, freed once.
    #[inline(always)]
    unsafe fn free_owned(&mut self, s: &'static Span, p: *mut u8) {
        self.frees[s.spc.load(Ordering::Relaxed) as usize] += 1;
        // SAFETY: caller's contract.
        unsafe { self.give_back_owned(s, p) }
    }

    /// [`MCache::free_owned`] without counting the free (a slot leaving this cache's bin was
    /// counted when it entered it).
    ///
    /// # Safety
    /// As [`MCache::free_owned`].
    #[inline(always)]
    unsafe fn give_back_owned(&mut self, s: &'static Span, p: *mut u8) {
        // SAFETY: caller's contract.
        unsafe { s.push_local(p) };
        // No "current?" test: a current span's `allocated` is biased and never reaches 0.
        let a = s.allocated.load(Ordering::Relaxed).wrapping_sub(1);
        s.allocated.store(a, Ordering::Relaxed);
        if a == 0 && s.cache_list.load(Ordering::Relaxed) != 0 {
            self.retire(s);
        }
    }

    /// A partial span lost its last object: it stays for reuse while its class has at most
    /// [`MAX_EMPTIES`] empty spans, else it goes back to the page heap.
    #[cold]
    fn retire(&mut self, s: &'static Span) {
        let i = s.spc.load(Ordering::Relaxed) as usize;
        let Some(n) = self.empties.get_mut(i) else {
            return;
        };
        if *n < MAX_EMPTIES {
            *n += 1;
            return;
        }
        self.unlink_partial(s);
        // SAFETY: we own `s` and hold no pointer to it any more.
        unsafe { mcentral::release(s) };
    }

    /// A free by this cache into a span it does not own (yet).
    ///
    /// # Safety
    /// `p` is an allocated slot of the small span `s`, freed once.
    #[cold]
    #[inline(never)]
    unsafe fn free_slow(&mut self, s: &'static Span, p: *mut u8) {
        if s.state.load(Ordering::Acquire) != STATE_SMALL {
            // SAFETY: caller's contract.
            return unsafe { crate::free_not_small(s, p) };
        }
        // Adopt a span this cache detached: one CAS, then every later free of ours is local.
        // `last_owner` outlives the detachment (another cache may own the span by now), so the
        // CAS is tried only on a span that looks detached: a failing CAS would still take the
        // span's most-read cache line (`owner`) away from its owner on every such free.
        // Acquire: pairs with the releaser's SeqCst store of DETACHED (its writes to the span).
        if self.id != NO_ID
            && self.id != DEAD_ID
            && s.last_owner.load(Ordering::Relaxed) == self.id
            && s.owner.load(Ordering::Relaxed) == OWNER_DETACHED
            && s.owner
                .compare_exchange(OWNER_DETACHED, self.id, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            // The CAS made us the owner. Remote frees that raced in stay on the remote stack
            // (counted live) until the span is reused or released, which collects them: reading
            // that cache line here would cost a miss per adoption.
            self.push_partial(s);
            // SAFETY: caller's contract; we own `s`.
            unsafe { self.free_owned(s, p) };
            return;
        }
        let spc = s.spc.load(Ordering::Relaxed);
        self.frees[spc as usize] += 1;
        self.pending_frees += 1;
        if self.pending_frees >= FLUSH_EVERY {
            self.flush_frees();
        }
        if self.id == NO_ID {
            self.ensure_id();
        }
        // SAFETY: caller's contract.
        unsafe { self.give_back_remote(s, p, spc) }
    }

    /// A free (already counted) into a span this cache does not own: batched onto the span's
    /// remote stack (Malloc spans in a live thread cache) or pushed directly.
    ///
    /// # Safety
    /// `p` is an allocated slot of the small span `s` of span class `spc`, freed once.
    #[inline(always)]
    unsafe fn give_back_remote(&mut self, s: &'static Span, p: *mut u8, spc: u8) {
        // Batch only Malloc spans, and only in a live thread cache with an id (its exit hook,
        // registered with the id, pushes the chains): a thread that never allocated registers
        // it at its first remote free (a pure consumer batches too); not a dying thread
        // (DEAD_ID), not the shared cache. Gc frees take the direct path.
        if !spc_is_gc(spc as usize) && (FIRST_CACHE_ID..DEAD_ID).contains(&self.id) {
            // SAFETY: caller's contract.
            return unsafe { self.free_remote_batched(s, p, spc as usize) };
        }
        // SAFETY: caller's contract.
        unsafe { free_remote(s, p) }
    }

    /// A remote free, batched: frees into the same span chain up locally and are pushed with one
    /// CAS when the chain holds [`PENDING_BYTES`], when a free of the class goes to another
    /// span, when this cache refills the class, and at `stats()`, `release_memory()` and thread
    /// exit. A producer-consumer pair thus pays one contended CAS per chain instead of per
    /// object; at most `PENDING_BYTES` (128 slots) per class wait on the freeing thread.
    ///
    /// # Safety
    /// `p` is an allocated slot of the small span `s` of span class `i`, freed once.
    unsafe fn free_remote_batched(&mut self, s: &'static Span, p: *mut u8, i: usize) {
        let Some(pd) = self.pending.get_mut(i) else {
            // SAFETY: caller's contract.
            return unsafe { free_remote(s, p) };
        };
        if core::ptr::eq(pd.span, s) {
            // SAFETY: the slot is ours (being freed); its link word becomes the chain link.
            unsafe { s.link_of(p as usize).write(pd.first) };
            pd.first = p as usize;
            pd.count += 1;
            if pd.count >= pd.limit {
                self.push_pending(i);
            }
            return;
        }
        self.push_pending(i);
        let pd = &mut self.pending[i];
        // SAFETY: as above; the chain of one ends here.
        unsafe { s.link_of(p as usize).write(0) };
        *pd = Pending {
            span: s,
            first: p as usize,
            last: p as usize,
            count: 1,
            limit: (PENDING_BYTES / s.elem_size.load(Ordering::Relaxed).max(1)).clamp(8, 128),
        };
    }

    /// Pushes class `i`'s pending remote chain, if any.
    fn push_pending(&mut self, i: usize) {
        let Some(pd) = self.pending.get_mut(i) else {
            return;
        };
        if pd.count == 0 {
            return;
        }
        let Pending {
            span, first, last, ..
        } = *pd;
        let count = core::mem::take(&mut pd.count);
        pd.span = null_mut();
        let s = sp(span);
        // SAFETY: the chain links `count` distinct slots of `s` freed by this thread, each once
        // (they stayed counted live in `s`, so `s` is still the span they belong to).
        unsafe { s.push_remote_chain(first as *mut u8, last as *mut u8, count) };
        // SeqCst: the freer half of the handshake in mcentral's docs.
        if s.owner.load(Ordering::SeqCst) == OWNER_DETACHED {
            mcentral::reclaim_detached(s);
        }
    }

    /// Pushes every pending remote chain.
    fn push_all_pending(&mut self) {
        for i in 0..NUM_SPAN_CLASSES {
            self.push_pending(i);
        }
    }

    /// Adds class `i`'s batched counters to the global ones.
    fn flush_class(&mut self, i: usize) {
        if let (Some(m), Some(f), Some(gm), Some(gf)) = (
            self.mallocs.get_mut(i),
            self.frees.get_mut(i),
            CLASS_MALLOCS.get(i),
            CLASS_FREES.get(i),
        ) {
            add(gm, core::mem::take(m));
            add(gf, core::mem::take(f));
        }
    }

    /// Adds every class's batched free counts to the global ones.
    fn flush_frees(&mut self) {
        self.pending_frees = 0;
        for (f, g) in self.frees.iter_mut().zip(&CLASS_FREES) {
            add(g, core::mem::take(f));
        }
    }

    /// Releases every span (thread exit).
    fn release_all(&mut self) {
        self.drop_bins();
        self.push_all_pending();
        for i in 0..NUM_SPAN_CLASSES {
            let cur = sp(self.alloc[i]);
            if !core::ptr::eq(cur, &EMPTY) {
                // SAFETY: we own our current span.
                let listed = unsafe { cur.local_len() };
                self.leave_current(i, cur, listed);
            }
            self.flush_class(i);
            if !core::ptr::eq(cur, &EMPTY) {
                self.alloc[i] = &raw const EMPTY;
                cur.last_owner.store(0, Ordering::Relaxed);
                // SAFETY: we own `cur` and dropped our pointer to it.
                unsafe { mcentral::release(cur) };
            }
            self.empties[i] = 0;
            while let Some(s) = self.pop_partial(i) {
                s.last_owner.store(0, Ordering::Relaxed);
                // SAFETY: we own partial spans and just unlinked `s`.
                unsafe { mcentral::release(s) };
            }
        }
    }
}

/// Carves a fresh small span of span class `spc` owned by `owner`.
fn new_small_span(spc: usize, owner: usize) -> Option<&'static Span> {
    let class = crate::size_class::SizeClass::from_index(spc_size_class(spc))?;
    let s = mheap::alloc_span(class.pages())?;
    crate::scavenger::ensure_started();
    s.init_small(spc, class, owner);
    if crate::span::spc_is_gc(spc) {
        // The look at the flag and the marks belong to one marking epoch: inside the window,
        // the collector's stop (which begins a new epoch) cannot come between them. Marks
        // set for a later epoch would let a slot allocated before that epoch's marking began
        // pass for marked, and go untraced.
        // SAFETY: a load and at most 16 atomic ors (and a renewal's stores): no lock, no
        // allocation, no wait.
        let _window = unsafe { crate::nosuspend::NoSuspend::new() };
        if crate::ALLOCATE_BLACK.load(Ordering::Relaxed) {
            s.mark_every_slot();
        }
    }
    mheap::publish(s, crate::span::STATE_SMALL);
    Some(s)
}

thread_local! {
    /// The thread's cache. It has no destructor, so accessing it costs no "alive?" check: the
    /// thread-exit work is done by [`EXIT`], registered at the cache's first refill.
    static CACHE: UnsafeCell<MCache> = const { UnsafeCell::new(MCache::new(NO_ID)) };
    /// Releases the thread's spans at thread exit and marks the cache dead.
    static EXIT: ExitGuard = const { ExitGuard };
}

/// Id of a cache whose thread is exiting: matches no `owner` word; its refills go to [`GLOBAL`].
/// Live thread caches have ids in `FIRST_CACHE_ID..DEAD_ID`.
const DEAD_ID: usize = usize::MAX - 1;

/// The thread-exit hook of [`CACHE`].
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        CACHE.with(|c| {
            // SAFETY: the allocator is not running on this thread (we are in a TLS destructor,
            // outside any allocator call), so this is the only reference to the cache.
            let c = unsafe { &mut *c.get() };
            c.release_all();
            c.id = DEAD_ID;
        });
    }
}

/// Runs `f` on this thread's cache.
#[inline(always)]
/// `[start, end)` of the calling thread's cache: free slots and span pointers only, never the one
/// reference to a live block (a block leaves the cache when it is allocated).
pub(crate) fn cache_range() -> (usize, usize) {
    CACHE.with(|c| {
        let start = c.get() as usize;
        (start, start + size_of::<MCache>())
    })
}

fn with_cache<R>(f: impl FnOnce(&mut MCache) -> R) -> R {
    // SAFETY: the allocator never re-enters itself on one thread, so this is the only live
    // reference to the thread's cache.
    CACHE.with(|c| f(unsafe { &mut *c.get() }))
}

/// Allocates a slot of span class `spc` from this thread's cache (or the global one once the
/// thread's cache is gone). Null when out of memory.
#[inline(always)]
pub(crate) fn alloc_small(spc: u8) -> *mut u8 {
    with_cache(|c| c.alloc(spc))
}

impl MCache {
    /// A free whose arena is not the remembered one: finds the span through the arena index,
    /// remembers `p`'s arena for the next free, and frees. Aborts when `p` is not in the goro
    /// heap.
    ///
    /// # Safety
    /// As [`free`].
    #[cold]
    #[inline(never)]
    unsafe fn free_new_arena(&mut self, p: *mut u8) {
        let Some(m) = arena::meta_of(p as usize) else {
            crate::throw("free of a pointer that is not in the goro heap");
        };
        self.arena_key = p as usize >> ARENA_SHIFT;
        self.arena = m;
        let s = m.span_at(p as usize);
        if s.is_null() {
            crate::throw("free of a pointer that is not in the goro heap");
        }
        // SAFETY: span metadata is never unmapped; caller's contract for `p`.
        unsafe { self.free_in(&*s, p) }
    }

    /// Frees `p`, a live block of `s`: onto the local list when this cache owns `s` (one
    /// compare and branch), else the slow paths (adopt, remote free, large object).
    ///
    /// # Safety
    /// As [`free`], and `s` is the span recorded for `p`'s page.
    #[inline(always)]
    unsafe fn free_in(&mut self, s: &'static Span, p: *mut u8) {
        // Only this cache moves a span out of its ownership, so reading our id means we own it.
        if s.owner.load(Ordering::Relaxed) == self.id {
            // SAFETY: we own `s`; `p` is a live slot of it (caller).
            unsafe { self.free_owned(s, p) }
        } else {
            // SAFETY: caller's contract.
            unsafe { self.free_slow(s, p) }
        }
    }
}

/// Frees block `p`: finds its span through the arena index (the cache remembers the arena of
/// the previous free, so this is usually a compare and one load from that arena's page map; a
/// miss is a tail call, so the hot path saves no registers), then `MCache::free_in`.
///
/// # Safety
/// `p` must be a live block start returned by this allocator, freed once.
#[inline(always)]
pub(crate) unsafe fn free(p: *mut u8) {
    // SAFETY: caller's contract.
    with_cache(|c| unsafe { c.free_ptr(p) })
}

impl MCache {
    /// [`free`] on this cache.
    ///
    /// # Safety
    /// As [`free`].
    #[inline(always)]
    unsafe fn free_ptr(&mut self, p: *mut u8) {
        if p as usize >> ARENA_SHIFT == self.arena_key {
            // SAFETY: `arena` is the never-unmapped metadata of arena `arena_key`.
            let s = unsafe { &*self.arena }.span_at(p as usize);
            if !s.is_null() {
                // SAFETY: span metadata is never unmapped; caller's contract for `p`.
                return unsafe { self.free_in(&*s, p) };
            }
        }
        // SAFETY: caller's contract.
        unsafe { self.free_new_arena(p) }
    }
}

/// Bytes of slots one bin holds when full (its capacity, within 16 ..= 1024 slots).
const BIN_BYTES: usize = 64 << 10;

/// Capacity of the bin of span class `spc` (0 for Gc classes, which have none).
const fn bin_cap(spc: usize) -> usize {
    if spc_is_gc(spc) {
        return 0;
    }
    match crate::size_class::SizeClass::from_index(spc_size_class(spc)) {
        Some(c) => {
            let n = BIN_BYTES / c.size();
            if n < 16 {
                16
            } else if n > 1024 {
                1024
            } else {
                n
            }
        }
        None => 0,
    }
}

/// Per span class, the offset of its bin in a cache's bin array (in slots) and its capacity.
static BIN_LAYOUT: [(u16, u16); SLOTS] = {
    let mut t = [(0u16, 0u16); SLOTS];
    let mut off = 0;
    let mut i = 0;
    while i < NUM_SPAN_CLASSES {
        let cap = bin_cap(i);
        t[i] = (off as u16, cap as u16);
        off += cap;
        i += 1;
    }
    t
};

/// Slots in all bins of one thread.
const BINS_LEN: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < NUM_SPAN_CLASSES {
        n += bin_cap(i);
        i += 1;
    }
    n
};

const _: () = assert!(BINS_LEN <= u16::MAX as usize, "bin offsets are u16");

/// Bytes of one cache's bin array (mapped lazily, so only the entries a thread uses cost
/// memory).
const BINS_BYTES: usize = (BINS_LEN * 8).next_multiple_of(4096);

/// Bin arrays of exited threads, for reuse: a stack linked through word 0 (0 = empty). The
/// innermost allocator lock (it takes none), taken last by `fork`.
static BIN_POOL: SpinLock<usize> = SpinLock::new(0);

/// A bin array: from [`BIN_POOL`], else freshly mapped; null when out of memory.
fn take_bin_array() -> *mut usize {
    {
        let mut pool = BIN_POOL.lock();
        let a = *pool;
        if a != 0 {
            // SAFETY: pooled arrays are ours under the lock; word 0 is the link.
            *pool = unsafe { (a as *const usize).read() };
            return a as *mut usize;
        }
    }
    match crate::os::map(BINS_BYTES) {
        Some(p) => p.as_ptr().cast::<usize>(),
        None => null_mut(),
    }
}

/// Gives a bin array back for another thread (thread exit).
///
/// # Safety
/// `a` must be a bin array from [`take_bin_array`] that nobody uses any more.
unsafe fn put_bin_array(a: *mut usize) {
    let mut pool = BIN_POOL.lock();
    // SAFETY: the array is ours; word 0 becomes the link.
    unsafe { a.write(*pool) };
    *pool = a as usize;
}

/// Takes the bin-pool lock (fork prepare).
pub(crate) fn lock_bin_pool() {
    BIN_POOL.lock_raw();
}

/// Releases the lock taken by [`lock_bin_pool`].
///
/// # Safety
/// As `SpinLock::unlock_raw`.
pub(crate) unsafe fn unlock_bin_pool() {
    // SAFETY: caller's contract.
    unsafe { BIN_POOL.unlock_raw() };
}

impl MCache {
    /// Allocates a Malloc slot of span class `spc`: pop the class's bin when it holds a slot
    /// (load its top, compare with its bottom, step down, load the slot: one branch, the slot's
    /// memory untouched), else the span fast path ([`MCache::alloc`]).
    #[inline(always)]
    fn alloc_binned(&mut self, spc: u8) -> *mut u8 {
        let top = self.bin_top[spc as usize];
        if top != self.bin_low[spc as usize] {
            // SAFETY: `low < top <= high` within this thread's bin array; the entries below
            // `top` are free slots of class `spc` (the bins' invariant).
            return unsafe {
                let top = top.sub(1);
                self.bin_top[spc as usize] = top;
                top.read() as *mut u8
            };
        }
        self.alloc(spc)
    }

    /// Sets up this cache's bins (all Malloc classes at once) at its first refill; only a live
    /// thread cache has them.
    fn ensure_bins(&mut self) {
        // Span class 2 (8-byte Malloc slots) has a bin once any has.
        if !self.bin_high[2].is_null() || !(FIRST_CACHE_ID..DEAD_ID).contains(&self.id) {
            return;
        }
        let base = take_bin_array();
        if base.is_null() {
            return;
        }
        self.bins = base;
        for (i, &(off, cap)) in BIN_LAYOUT.iter().enumerate().take(NUM_SPAN_CLASSES) {
            if cap == 0 {
                continue;
            }
            // SAFETY: `off + cap <= BINS_LEN` by construction of the layout.
            let low = unsafe { base.add(off as usize) };
            self.bin_low[i] = low;
            self.bin_top[i] = low;
            // SAFETY: as above.
            self.bin_high[i] = unsafe { low.add(cap as usize) };
        }
    }

    /// Frees a Malloc slot of span class `spc` (the class its layout maps to) into its bin:
    /// compare the bin's top with its end, store the address, step up, count (one branch, the
    /// slot's memory and its span untouched). A full bin, or none yet, sends the slot down the
    /// span path instead ([`MCache::free_ptr`]): a burst of frees larger than the bin costs
    /// what it costs without bins.
    ///
    /// # Safety
    /// As [`free`], and `p` is a slot of span class `spc`.
    #[inline(always)]
    unsafe fn bin_free(&mut self, spc: u8, p: *mut u8) {
        let top = self.bin_top[spc as usize];
        if top == self.bin_high[spc as usize] {
            // SAFETY: caller's contract.
            return unsafe { self.free_ptr(p) };
        }
        // SAFETY: `low <= top < high` within this thread's bin array.
        unsafe {
            top.write(p as usize);
            self.bin_top[spc as usize] = top.add(1);
        }
        self.bin_pushes[spc as usize] += 1;
    }

    /// Counts the bin of `spc`: the fast paths count nothing but the pushes, so the pops since
    /// the last count are the slots it held then plus those pushed since, minus those it holds
    /// now. Both become exact `frees` / `mallocs` of the class.
    fn count_bin(&mut self, spc: usize) {
        let i = spc % SLOTS;
        let (low, top) = (self.bin_low[i], self.bin_top[i]);
        let len = if low.is_null() {
            0
        } else {
            // SAFETY: `low <= top` in one bin.
            unsafe { top.offset_from(low) as u64 }
        };
        let pushes = core::mem::take(&mut self.bin_pushes[i]);
        self.frees[i] += pushes;
        self.mallocs[i] += (self.bin_counted[i] + pushes).saturating_sub(len);
        self.bin_counted[i] = len;
    }

    /// Gives every slot of the bin of `spc` back to its span (local list or remote batch,
    /// uncounted: the frees were counted as they entered the bin) and empties the bin. Call
    /// [`MCache::count_bin`] first.
    fn bin_release_all(&mut self, spc: u8) {
        let (low, top) = (self.bin_low[spc as usize], self.bin_top[spc as usize]);
        if low.is_null() {
            return;
        }
        let mut e = low;
        while e != top {
            // SAFETY: `low <= e < top`: an entry of this bin, a slot this thread freed (counted
            // live in its span), given back once.
            let q = unsafe { e.read() } as *mut u8;
            // SAFETY: as above.
            e = unsafe { e.add(1) };
            let s = self.span_of(q as usize);
            if s.owner.load(Ordering::Relaxed) == self.id {
                // SAFETY: we own `s`; `q` is one of its allocated slots (see above).
                unsafe { self.give_back_owned(s, q) };
            } else {
                // SAFETY: as above, for a span we do not own.
                unsafe { self.give_back_remote(s, q, spc) };
            }
        }
        self.bin_top[spc as usize] = low;
        self.bin_counted[spc as usize] = 0;
    }

    /// The span holding `p` (a slot of the goro heap), through the remembered arena.
    fn span_of(&mut self, p: usize) -> &'static Span {
        if p >> ARENA_SHIFT != self.arena_key {
            let Some(m) = arena::meta_of(p) else {
                crate::throw("binned slot not in the goro heap");
            };
            self.arena_key = p >> ARENA_SHIFT;
            self.arena = m;
        }
        // SAFETY: `arena` is the never-unmapped metadata of arena `arena_key`.
        let s = unsafe { &*self.arena }.span_at(p);
        if s.is_null() {
            crate::throw("binned slot not in the goro heap");
        }
        // SAFETY: span metadata is never unmapped.
        unsafe { &*s }
    }

    /// Counts every bin's pops and gives all their slots back to the spans (`stats()`,
    /// `release_memory()`, thread exit).
    fn flush_all_bins(&mut self) {
        for spc in (0..POINTER_FREE_BASE as u8).step_by(2) {
            self.count_bin(spc as usize);
            self.bin_release_all(spc);
        }
    }

    /// Thread exit: empties the bins and removes them (later calls take the span paths).
    fn drop_bins(&mut self) {
        self.flush_all_bins();
        self.bin_top = [null_mut(); SLOTS];
        self.bin_low = [null_mut(); SLOTS];
        self.bin_high = [null_mut(); SLOTS];
        let a = core::mem::replace(&mut self.bins, null_mut());
        if !a.is_null() {
            // SAFETY: no bin pointer into `a` is left.
            unsafe { put_bin_array(a) };
        }
    }
}

/// Allocates a Malloc slot of span class `spc` (see [`MCache::alloc_binned`]).
#[inline(always)]
pub(crate) fn alloc_binned(spc: u8) -> *mut u8 {
    with_cache(|c| c.alloc_binned(spc))
}

/// Frees a Malloc block allocated with `size` and `align` (`GoroAlloc::dealloc`). In a thread
/// with bins, the layout gives the span class without a span lookup (the same computation as
/// `malloc`'s fast path) and a small block goes on its bin ([`MCache::bin_free`]): 20
/// instructions with the `ret`, three branches (bins?, size/alignment, bin full?). The "bins?"
/// test comes first and does not depend on `size`: in a thread without bins (a pure consumer)
/// the span path does not wait for the caller's load of the size, often a miss on the block
/// another thread wrote. Anything else takes the span path ([`free`]).
///
/// # Safety
/// `p` must be a live Malloc block returned by `malloc(size, align, SpanKind::Malloc)` (or
/// resized in place to `size` by `realloc`), freed once.
#[inline(always)]
pub(crate) unsafe fn free_sized(p: *mut u8, size: usize, align: usize) {
    with_cache(|c| {
        if !c.bins.is_null() {
            let idx = size.wrapping_add(7) >> 3;
            if (idx >> 4) | align < 16 {
                // SAFETY: `idx >> 4 < 16` was just checked.
                unsafe { core::hint::assert_unchecked(idx < 256) };
                let spc = crate::size_class::SizeClass::small_spc(idx as u8);
                // SAFETY: caller's contract: `malloc` took this class for this layout.
                return unsafe { c.bin_free(spc, p) };
            }
        }
        // SAFETY: caller's contract.
        unsafe { c.free_ptr(p) }
    })
}

/// Frees a chain of slots of the small span `s`, linked through their link words
/// ([`Span::link_of`]) from `first` to `last`, as remote frees, with one push.
///
/// # Safety
/// As [`free`], for every slot of the chain.
pub(crate) unsafe fn free_chain(s: &'static Span, first: *mut u8, last: *mut u8, count: usize) {
    if let Some(c) = CLASS_FREES.get(s.spc.load(Ordering::Relaxed) as usize) {
        add(c, count as u64);
    }
    // SAFETY: caller's contract.
    unsafe { s.push_remote_chain(first, last, count) };
    // SeqCst: the freer half of the handshake in mcentral's docs.
    if s.owner.load(Ordering::SeqCst) == OWNER_DETACHED {
        mcentral::reclaim_detached(s);
    }
}

/// # Safety
/// As [`free`].
#[inline]
unsafe fn free_remote(s: &'static Span, p: *mut u8) {
    // SAFETY: caller's contract.
    unsafe { s.push_remote(p) };
    // SeqCst: the freer half of the handshake in mcentral's docs.
    if s.owner.load(Ordering::SeqCst) == OWNER_DETACHED {
        mcentral::reclaim_detached(s);
    }
}

/// Flushes this thread's batched counters (so that `stats()` right after is exact for it).
pub(crate) fn flush_local_stats() {
    with_cache(|c| {
        c.flush_all_bins();
        c.push_all_pending();
        for i in 0..NUM_SPAN_CLASSES {
            // What is still on the current span's list was counted but not allocated yet.
            let cur = sp(c.alloc[i]);
            if !core::ptr::eq(cur, &EMPTY) {
                c.count_current_frees(i, cur);
            }
            // SAFETY: we own our current span (EMPTY's list is empty).
            let listed = unsafe { cur.local_len() } as u64;
            let m = c.mallocs[i];
            c.mallocs[i] = m.saturating_sub(listed);
            c.flush_class(i);
            c.mallocs[i] = m.min(listed);
        }
    });
}

/// Gives this thread's cached empty spans back to the page heap (`release_memory`).
pub(crate) fn release_local_empties() {
    with_cache(|c| {
        c.flush_all_bins();
        c.push_all_pending();
        for i in 0..NUM_SPAN_CLASSES {
            let mut p = c.partial[i].0;
            while !p.is_null() {
                let s = sp(p);
                let next = s.next.load(Ordering::Relaxed);
                if s.allocated.load(Ordering::Relaxed) == 0 {
                    c.unlink_partial(s);
                    // SAFETY: we own partial spans and just unlinked `s`.
                    unsafe { mcentral::release(s) };
                }
                p = next;
            }
            c.empties[i] = 0;
        }
    });
}

/// Takes the fallback cache's lock (fork prepare).
pub(crate) fn lock_global() {
    GLOBAL.lock_raw();
}

/// Releases the lock taken by [`lock_global`].
///
/// # Safety
/// As `SpinLock::unlock_raw`.
pub(crate) unsafe fn unlock_global() {
    // SAFETY: caller's contract.
    unsafe { GLOBAL.unlock_raw() };
}
