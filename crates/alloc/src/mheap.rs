//! The page heap (Go's `mheap`): arenas, free page runs, span carving and coalescing, and the
//! span-metadata allocator.
//!
//! Algorithm (all under the one heap lock):
//!
//! 1. `alloc_pages(n)`: take the smallest non-empty exact-size free list with at least `n` pages
//!    (a `u128` bitmap of non-empty lists for runs of 1..=127 pages makes this one
//!    `trailing_zeros`), else a good fit among the size buckets of runs of 128+ pages, else reserve
//!    new arenas (64 MiB each, 64 MiB aligned) and retry. A bigger run is split: the front becomes
//!    the span, the rest stays a free run.
//! 2. The caller initialises the span outside the lock (state `CARVING` keeps neighbours from
//!    coalescing with it) and publishes it (state `SMALL`/`LARGE`, Release).
//! 3. `free_span(s)`: the run merges with a free run ending at its first page and one starting
//!    right after its last page (found through the arena index, where a free run keeps its first
//!    and last page entries pointing at it), then goes on its list.
//!
//! Span structs come from 1 MiB metadata chunks mapped on demand and are recycled through a free
//! list, never unmapped, so a racing `find_block` always reads valid atomics. The chunks form an
//! append-only list that `for_each_span` walks without the lock.
//!
//! Free runs of 128 pages or more sit in power-of-two size buckets (`Heap::find` explains the
//! good-fit search). `Heap::scavenge` (end of this file) releases free runs to the OS: the
//! background thread of `scavenger.rs` every period for runs free for two ticks, and
//! `release_all` for all of them at once. The heap imports nothing of the caches above it; the
//! fork handlers that take every allocator lock live in `fork.rs`, at the top.
//!
//! Left for later (docs/alloc.md): Go's radix tree of page-bitmap summaries.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::span::{STATE_FREE, STATE_LARGE, STATE_SMALL, STATE_UNUSED, Span};
use crate::stats::{
    GC_SPANS_INUSE_BYTES, HEAP_INUSE, HEAP_RELEASED, HEAP_SYS, SCAVENGES, SPANS_INUSE,
};
use crate::sync::SpinLock;
use crate::{ARENA_SIZE, PAGE_SIZE, arena, dirty, os, stats};

/// `state` of a span taken from the heap but not yet published.
pub(crate) const STATE_CARVING: u8 = 4;

/// Free runs of fewer pages than this sit on exact-size lists.
const SMALL_RUNS: usize = 128;

/// The size bucket of a run of `npages >= SMALL_RUNS` pages: `floor(log2(npages))`.
fn large_bucket(npages: usize) -> usize {
    (usize::BITS - 1 - npages.leading_zeros()) as usize
}

/// Span structs per metadata chunk.
const CHUNK_SPANS: usize = 4000;

/// A metadata chunk: a header and an array of span structs (zero bytes are valid unused spans).
struct Chunk {
    /// The previously mapped chunk (immutable after publication).
    next: *mut Chunk,
    /// Structs handed out from `spans` so far; written under the heap lock (Release), read by
    /// walkers (Acquire).
    used: AtomicUsize,
    spans: [Span; CHUNK_SPANS],
}

/// Newest metadata chunk; the list is append-only at the head. Release on push, Acquire on walk.
static CHUNKS: AtomicPtr<Chunk> = AtomicPtr::new(null_mut());

/// Page-heap state guarded by [`HEAP`].
struct Heap {
    /// `free[n]`: runs of exactly `n` pages (n in 1..128), doubly linked through `next`/`prev`.
    free: [*mut Span; SMALL_RUNS],
    /// Bit n set iff `free[n]` is non-empty.
    nonempty: u128,
    /// Runs of `SMALL_RUNS` pages or more, by size: `large[b]` holds runs of `[2^b, 2^(b+1))`
    /// pages (b in 7..64), doubly linked, unsorted.
    large: [*mut Span; 64],
    /// Bit b set iff `large[b]` is non-empty.
    large_nonempty: u64,
    /// Recycled span structs, linked through `next`.
    meta_free: *mut Span,
}

// SAFETY: the raw pointers point at never-freed span metadata; the struct is only touched under
// the heap lock.
unsafe impl Send for Heap {}

static HEAP: SpinLock<Heap> = SpinLock::new(Heap {
    free: [null_mut(); SMALL_RUNS],
    nonempty: 0,
    large: [null_mut(); 64],
    large_nonempty: 0,
    meta_free: null_mut(),
});

#[inline]
fn sp(p: *mut Span) -> &'static Span {
    // SAFETY: every non-null span pointer the heap stores comes from a metadata chunk, which is
    // never unmapped, and all fields are atomics.
    unsafe { &*p }
}

impl Heap {
    fn head(&mut self, npages: usize) -> &mut *mut Span {
        if npages < SMALL_RUNS {
            &mut self.free[npages]
        } else {
            &mut self.large[large_bucket(npages)]
        }
    }

    fn set_nonempty(&mut self, n: usize, nonempty: bool) {
        let (bits, bit) = if n < SMALL_RUNS {
            (&mut self.nonempty, 1u128 << n)
        } else {
            let b = large_bucket(n);
            self.large_nonempty = (self.large_nonempty & !(1 << b)) | ((nonempty as u64) << b);
            return;
        };
        if nonempty {
            *bits |= bit;
        } else {
            *bits &= !bit;
        }
    }

    fn insert(&mut self, s: &'static Span) {
        let n = s.npages.load(Ordering::Relaxed);
        let head = self.head(n);
        let old = *head;
        s.next.store(old, Ordering::Relaxed);
        s.prev.store(null_mut(), Ordering::Relaxed);
        if !old.is_null() {
            sp(old)
                .prev
                .store(s as *const Span as *mut Span, Ordering::Relaxed);
        }
        *head = s as *const Span as *mut Span;
        self.set_nonempty(n, true);
    }

    fn remove(&mut self, s: &'static Span) {
        let n = s.npages.load(Ordering::Relaxed);
        let next = s.next.load(Ordering::Relaxed);
        let prev = s.prev.load(Ordering::Relaxed);
        if !next.is_null() {
            sp(next).prev.store(prev, Ordering::Relaxed);
        }
        if prev.is_null() {
            *self.head(n) = next;
        } else {
            sp(prev).next.store(next, Ordering::Relaxed);
        }
        if self.head(n).is_null() {
            self.set_nonempty(n, false);
        }
        s.next.store(null_mut(), Ordering::Relaxed);
        s.prev.store(null_mut(), Ordering::Relaxed);
    }

    /// A free run with at least `npages` pages, without a linear scan of the heap:
    ///
    /// 1. below 128 pages, the smallest non-empty exact-size list that fits (one
    ///    `trailing_zeros` on a `u128`);
    /// 2. else the head of the first non-empty size bucket whose every run fits (buckets are
    ///    powers of two; one `trailing_zeros` on a `u64`): good fit, as in TLSF;
    /// 3. else first fit inside the request's own bucket (the one bucket that may hold runs both
    ///    too small and big enough; only reached when no larger bucket has anything).
    fn find(&self, npages: usize) -> Option<&'static Span> {
        if npages < SMALL_RUNS {
            let mask = self.nonempty & (!0u128 << npages);
            if mask != 0 {
                let head = self.free[mask.trailing_zeros() as usize];
                return (!head.is_null()).then(|| sp(head));
            }
        }
        let own = large_bucket(npages.max(SMALL_RUNS));
        let fits_all = if npages.max(SMALL_RUNS).is_power_of_two() {
            own
        } else {
            own + 1
        };
        let mask = if fits_all >= 64 {
            0
        } else {
            self.large_nonempty & (!0u64 << fits_all)
        };
        if mask != 0 {
            let head = self.large[mask.trailing_zeros() as usize];
            return (!head.is_null()).then(|| sp(head));
        }
        let mut p = self.large[own];
        while !p.is_null() {
            let s = sp(p);
            if s.npages.load(Ordering::Relaxed) >= npages {
                return Some(s);
            }
            p = s.next.load(Ordering::Relaxed);
        }
        None
    }

    /// A span struct from the recycle list or a metadata chunk.
    fn new_struct(&mut self) -> Option<&'static Span> {
        if !self.meta_free.is_null() {
            let s = sp(self.meta_free);
            self.meta_free = s.next.load(Ordering::Relaxed);
            s.next.store(null_mut(), Ordering::Relaxed);
            return Some(s);
        }
        // Acquire: pairs with the Release store below (we hold the lock, so this is our own).
        let mut c = CHUNKS.load(Ordering::Acquire);
        // SAFETY: chunks are never unmapped; `used` is an atomic.
        let full = c.is_null() || unsafe { (*c).used.load(Ordering::Relaxed) } >= CHUNK_SPANS;
        if full {
            let bytes = size_of::<Chunk>().next_multiple_of(4096);
            let n = os::map(bytes)?.as_ptr().cast::<Chunk>();
            // SAFETY: `n` is a fresh zeroed mapping big enough for a Chunk; zero is a valid
            // value for every field (null pointer, zero atomics).
            unsafe { (*n).next = c };
            // Release: pairs with the Acquire in `for_each_span`, publishing `next`.
            CHUNKS.store(n, Ordering::Release);
            c = n;
        }
        // SAFETY: `c` is a live chunk (see above); only the heap-lock holder bumps `used`.
        let chunk = unsafe { &*c };
        let i = chunk.used.load(Ordering::Relaxed);
        let s = chunk.spans.get(i)?;
        // Release: pairs with the Acquire in `for_each_span`.
        chunk.used.store(i + 1, Ordering::Release);
        Some(s)
    }

    fn recycle_struct(&mut self, s: &'static Span) {
        s.state.store(STATE_UNUSED, Ordering::Release);
        s.elem_size.store(0, Ordering::Relaxed);
        s.next.store(self.meta_free, Ordering::Relaxed);
        self.meta_free = s as *const Span as *mut Span;
    }

    /// Marks `s` free, merges it with free neighbours, and lists it.
    fn insert_free(&mut self, s: &'static Span) {
        let mut released = s.released.load(Ordering::Relaxed);
        s.state.store(STATE_FREE, Ordering::Release);
        s.elem_size.store(0, Ordering::Relaxed);
        s.owner.store(0, Ordering::Relaxed);
        let mut start = s.start.load(Ordering::Relaxed);
        let mut npages = s.npages.load(Ordering::Relaxed);
        // Coalesce with the run that ends at `start`.
        let before = arena::span_of(start.wrapping_sub(PAGE_SIZE));
        if !before.is_null() && !core::ptr::eq(before, s) {
            let b = sp(before.cast_mut());
            let bstart = b.start.load(Ordering::Relaxed);
            let bn = b.npages.load(Ordering::Relaxed);
            if b.state.load(Ordering::Relaxed) == STATE_FREE && bstart + bn * PAGE_SIZE == start {
                self.remove(b);
                released += b.released.load(Ordering::Relaxed);
                self.recycle_struct(b);
                start = bstart;
                npages += bn;
            }
        }
        // Coalesce with the run that starts right after us.
        let end = start + npages * PAGE_SIZE;
        let after = arena::span_of(end);
        if !after.is_null() && !core::ptr::eq(after, s) {
            let a = sp(after.cast_mut());
            if a.state.load(Ordering::Relaxed) == STATE_FREE
                && a.start.load(Ordering::Relaxed) == end
            {
                let an = a.npages.load(Ordering::Relaxed);
                self.remove(a);
                released += a.released.load(Ordering::Relaxed);
                self.recycle_struct(a);
                npages += an;
            }
        }
        s.start.store(start, Ordering::Relaxed);
        s.npages.store(npages, Ordering::Relaxed);
        s.released.store(released, Ordering::Relaxed);
        s.free_since
            .store(TICKS.load(Ordering::Relaxed), Ordering::Relaxed);
        arena::set_span(start, s);
        arena::set_span(start + (npages - 1) * PAGE_SIZE, s);
        self.insert(s);
    }

    /// Reserves arenas for at least `npages` pages and adds them as a free run.
    fn grow(&mut self, npages: usize) -> Option<()> {
        let bytes = npages
            .checked_mul(PAGE_SIZE)?
            .checked_next_multiple_of(ARENA_SIZE)?;
        let base = os::map_aligned(bytes, ARENA_SIZE)?.as_ptr() as usize;
        for a in (base..base + bytes).step_by(ARENA_SIZE) {
            if !arena::register_arena(a) {
                return None;
            }
        }
        dirty::register_new_arenas(base, bytes);
        let s = self.new_struct()?;
        s.start.store(base, Ordering::Relaxed);
        s.npages.store(bytes / PAGE_SIZE, Ordering::Relaxed);
        // Never touched: it costs no RSS, like released pages (Go counts it so too).
        s.released.store(bytes, Ordering::Relaxed);
        HEAP_SYS.fetch_add(bytes, Ordering::Relaxed);
        HEAP_RELEASED.fetch_add(bytes, Ordering::Relaxed);
        self.insert_free(s);
        Some(())
    }

    /// Carves `npages` pages; the span comes back in state `CARVING`, every page indexed to it.
    fn alloc_pages(&mut self, npages: usize) -> Option<&'static Span> {
        let run = match self.find(npages) {
            Some(r) => r,
            None => {
                self.grow(npages)?;
                self.find(npages)?
            }
        };
        self.remove(run);
        let total = run.npages.load(Ordering::Relaxed);
        let start = run.start.load(Ordering::Relaxed);
        // The carved pages take their share of the run's released bytes (exact when the run is
        // all released or not at all; proportional otherwise).
        let run_released = run.released.load(Ordering::Relaxed);
        let carved_released = if total == npages {
            run_released
        } else {
            ((run_released as u128 * npages as u128) / total as u128) as usize
        };
        run.released
            .store(run_released - carved_released, Ordering::Relaxed);
        HEAP_RELEASED.fetch_sub(carved_released, Ordering::Relaxed);
        let s = if total == npages {
            run
        } else {
            let s = match self.new_struct() {
                Some(s) => s,
                None => {
                    run.released.store(run_released, Ordering::Relaxed);
                    HEAP_RELEASED.fetch_add(carved_released, Ordering::Relaxed);
                    self.insert(run);
                    return None;
                }
            };
            s.start.store(start, Ordering::Relaxed);
            s.npages.store(npages, Ordering::Relaxed);
            run.start
                .store(start + npages * PAGE_SIZE, Ordering::Relaxed);
            run.npages.store(total - npages, Ordering::Relaxed);
            arena::set_span(start + npages * PAGE_SIZE, run);
            self.insert(run);
            s
        };
        s.state.store(STATE_CARVING, Ordering::Relaxed);
        arena::set_span_range(start, npages, s);
        HEAP_INUSE.fetch_add(npages * PAGE_SIZE, Ordering::Relaxed);
        Some(s)
    }
}

/// Takes `npages` pages from the heap as a span in state `CARVING` (not yet visible to
/// `find_block`). `None` when out of memory.
pub(crate) fn alloc_span(npages: usize) -> Option<&'static Span> {
    if npages == 0 {
        return None;
    }
    let s = HEAP.lock().alloc_pages(npages)?;
    // Outside the lock: the collector's pressure hook needs none.
    stats::note_in_use(HEAP_INUSE.load(Ordering::Relaxed));
    Some(s)
}

/// Makes an initialised span visible as in use (`STATE_SMALL` or `STATE_LARGE`).
pub(crate) fn publish(s: &Span, state: u8) {
    SPANS_INUSE.fetch_add(1, Ordering::Relaxed);
    if s.is_gc() {
        GC_SPANS_INUSE_BYTES.fetch_add(s.bytes(), Ordering::Relaxed);
    }
    // Release: pairs with the Acquire in `Span::locate` and the walkers.
    s.state.store(state, Ordering::Release);
}

/// Returns an in-use span's pages to the heap. The caller is the span's last user: nothing may
/// allocate from or free into it any more.
pub(crate) fn free_span(s: &'static Span) {
    let mut h = HEAP.lock();
    let state = s.state.load(Ordering::Relaxed);
    if state == STATE_SMALL || state == STATE_LARGE {
        SPANS_INUSE.fetch_sub(1, Ordering::Relaxed);
        if s.is_gc() {
            GC_SPANS_INUSE_BYTES.fetch_sub(s.bytes(), Ordering::Relaxed);
        }
    }
    HEAP_INUSE.fetch_sub(s.bytes(), Ordering::Relaxed);
    s.released.store(0, Ordering::Relaxed);
    h.insert_free(s);
}

/// Calls `f` on every span struct ever handed out (any state), without holding a lock. Structs
/// added during the walk may or may not be visited.
pub(crate) fn for_each_span(mut f: impl FnMut(&'static Span)) {
    // Acquire: pairs with the Release in `new_struct`.
    let mut c = CHUNKS.load(Ordering::Acquire);
    while !c.is_null() {
        // SAFETY: chunks are never unmapped and `next` is immutable after publication.
        let chunk = unsafe { &*c };
        // Acquire: pairs with the Release in `new_struct`.
        let used = chunk.used.load(Ordering::Acquire).min(CHUNK_SPANS);
        for s in &chunk.spans[..used] {
            f(s);
        }
        c = chunk.next;
    }
}

// ---------------------------------------------------------------------------------------------
// The scavenger: returning free pages to the OS.

/// Scavenger ticks (one per period of the scavenger thread, `scavenger.rs`); free runs remember the tick they became
/// free at (`Span::free_since`).
static TICKS: AtomicUsize = AtomicUsize::new(0);
impl Heap {
    /// Releases every free run that has been free for at least `min_age` ticks and is not yet
    /// released. Returns the bytes released. Holds the heap lock across the `madvise` calls
    /// (simple; Go drops the lock per chunk, which is left for later).
    fn scavenge(&mut self, min_age: usize) -> usize {
        let now = TICKS.load(Ordering::Relaxed);
        let mut total = 0;
        let heads = self.free.iter().chain(self.large.iter());
        for &head in heads {
            let mut p = head;
            while !p.is_null() {
                let s = sp(p);
                let bytes = s.bytes();
                let released = s.released.load(Ordering::Relaxed);
                let age = now.wrapping_sub(s.free_since.load(Ordering::Relaxed));
                if released < bytes && age >= min_age {
                    // SAFETY: a free run of our arenas: nobody uses its pages.
                    unsafe { os::release(s.start.load(Ordering::Relaxed), bytes) };
                    s.released.store(bytes, Ordering::Relaxed);
                    HEAP_RELEASED.fetch_add(bytes - released, Ordering::Relaxed);
                    total += bytes - released;
                }
                p = s.next.load(Ordering::Relaxed);
            }
        }
        if total > 0 {
            SCAVENGES.fetch_add(1, Ordering::Relaxed);
        }
        total
    }
}

/// Releases every free page run to the OS now (`goro_alloc::release_memory`). Returns bytes.
pub(crate) fn release_all() -> usize {
    HEAP.lock().scavenge(0)
}

/// Advances the scavenger's clock one tick, then releases the runs free for `min_age` ticks or
/// more (the background scavenger's period, see `scavenger.rs`).
pub(crate) fn tick_and_scavenge(min_age: usize) {
    TICKS.fetch_add(1, Ordering::Relaxed);
    HEAP.lock().scavenge(min_age);
}

/// Takes the heap lock across a `fork` (see `fork.rs`).
pub(crate) fn lock_for_fork() {
    HEAP.lock_raw();
}

/// Releases the heap lock after a `fork`.
///
/// # Safety
/// May be called only by the thread that called [`lock_for_fork`], once per call (in the child,
/// the forking thread's copy).
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: the caller took it in `lock_for_fork`.
    unsafe { HEAP.unlock_raw() };
}
