//! Stack slots: carved from large reservations, handed out as [`Stack`], pooled when dropped.
//!
//! Vocabulary: a *reservation* (or chunk) is one `MAP_NORESERVE` mapping holding up to
//! [`SLOTS_PER_CHUNK`] *slots* of one size; a *slot* is a guard region followed by the usable
//! stack; a *size class* is the set of slots with the same usable size.
//!
//! ```text
//!  reservation (one VMA with MADV_GUARD_INSTALL)
//!  +--------+-------------+--------+-------------+-----     -----+--------+-------------+
//!  | guard  |  slot 0     | guard  |  slot 1     |      ...      | guard  |  slot 1023  |
//!  +--------+-------------+--------+-------------+-----     -----+--------+-------------+
//!  ^ base                          ^ base + slot_len
//! ```
//!
//! Allocation, under the pool lock:
//! 1. find the size class for the rounded-up usable size (a short linear scan: few sizes exist);
//! 2. pop a freed slot from its free list (LIFO, so the most recently used, still committed
//!    pages are reused first); if there is one, done;
//! 3. otherwise carve the next slot of the class's current reservation, installing its guard
//!    now (so the mprotect fallback only spends VMAs on slots actually used);
//! 4. when the reservation is used up, reserve a new one.
//!
//! Frees go to a per-thread cache of 32 slots first (`cache`), which spills half to the pool when
//! full, and allocations look there first: no lock on the spawn/exit path of one thread.
//! Each reservation is also published in a static table that the overflow handler searches
//! without locks ([`guard_hit`]), with an owner cell per slot ([`Stack::set_owner`]).
//!
//! Reservations are never unmapped: the address space of a slot that was once a stack stays a
//! stack (with its guard) until the process exits, like Go's stack spans before scavenging.
//! Rejected: one `mmap` per stack (2 VMAs each with mprotect, a syscall per spawn); a single
//! fixed reservation (a hard cap on goroutines).

use crate::{StackError, guard, os};
use core::ops::Range;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Mutex, PoisonError};

/// Usable bytes per slot of [`Stack::new`] (the guard is extra).
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// Size of the guard region below each stack: one 4 KiB page. On a system with larger pages
/// the guard is one page of that size instead (see [`Stack::guard`]).
pub const GUARD_SIZE: usize = 4096;

/// Bytes below a saved stack pointer that may still hold live data: the System V x86_64 ABI's
/// red zone (128 bytes; aarch64 has none). [`Stack::release_below`] keeps them.
pub const RED_ZONE: usize = 128;

/// Slots per reservation, unless that would exceed [`MAX_CHUNK_BYTES`].
pub(crate) const SLOTS_PER_CHUNK: usize = 1024;

/// Upper bound on one reservation's size: 64 GiB, i.e. 1,024 slots of 64 MiB or 64 slots of
/// 1 GiB. Untouched reserved address space costs nothing, and fewer, larger reservations keep
/// the chunk table (and `/proc/self/maps`) short.
const MAX_CHUNK_BYTES: usize = 64 << 30;

/// Largest usable size accepted (well below any address-space limit, far above any sane stack).
const MAX_USABLE: usize = 1 << 40;

/// How many reservations the process may make. The table is static (the overflow handler reads
/// it without locks); 16,384 chunks hold 16 million small stacks, or more 64 MiB stacks than
/// the 128 TiB of x86_64 user address space can.
const MAX_CHUNKS: usize = 16_384;

/// An owned stack slot: `[limit, top)` is usable, `guard()` lies just below `limit`.
///
/// A `Stack` is a plain owner of address space: it may be sent to and used from any thread.
/// Dropping it returns the slot to the pool of its size with its pages still committed (the
/// next goroutine reuses them warm); [`trim`](crate::trim) releases the pages of pooled slots
/// and [`release_below`](Stack::release_below) those of a parked goroutine.
#[derive(Debug)]
pub struct Stack {
    /// Lowest address of the slot (the guard's start). Immutable.
    base: usize,
    /// Usable bytes, a multiple of the page size. Immutable.
    usable: usize,
    /// The slot's entry in its chunk's table: the owner id the overflow handler reads, the
    /// stash state the trap reads.
    pub(crate) meta: &'static SlotMeta,
}

impl Stack {
    /// A stack of [`DEFAULT_STACK_SIZE`] usable bytes.
    ///
    /// ```
    /// let s = goro_stack::Stack::new().unwrap();
    /// assert_eq!(s.top() as usize - s.limit() as usize, goro_stack::DEFAULT_STACK_SIZE);
    /// ```
    pub fn new() -> Result<Stack, StackError> {
        Stack::with_size(DEFAULT_STACK_SIZE)
    }

    /// A stack of at least `usable` bytes, rounded up to whole pages (at least one page).
    /// Stacks of the same rounded size share a pool.
    ///
    /// `usable` is the goroutine's *maximum* stack size: the slot is address space, and pages
    /// are committed only as the goroutine's frames first touch them (see docs/stacks.md,
    /// "Growth"). A 64 MiB stack whose goroutine uses 4 KiB costs one page.
    pub fn with_size(usable: usize) -> Result<Stack, StackError> {
        let page = os::page_size();
        if usable > MAX_USABLE {
            return Err(StackError::too_large(usable));
        }
        let usable = usable.max(1).next_multiple_of(page);
        let (base, meta) = match cache::pop(usable) {
            Some(slot) => slot,
            None => {
                let slot = POOL
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .alloc(usable)?;
                if let Some(fd) = slot.1.trap_fd() {
                    // A slot from the pool may be fresh or released: its top pages are touched
                    // first thing, so fill them now rather than through the trap thread (as
                    // many as recent goroutines used: `adapt_stack_prefill`).
                    let top_page = base_to_top(slot.0, usable) - page;
                    let extra = prefill_pages() - 1;
                    let limit = slot.0 + guard_len();
                    // SAFETY: a free slot of a trapped reservation holds nothing (a stack
                    // dropped while stashed drops its bytes); `zero_fill` stays above `limit`.
                    unsafe { crate::trap::zero_fill(fd, top_page, limit, extra, false) };
                }
                slot
            }
        };
        Ok(Stack { base, usable, meta })
    }

    /// One past the highest usable byte: where a fresh stack's stack pointer starts.
    /// Page-aligned, hence 16-byte aligned.
    #[inline]
    pub fn top(&self) -> *mut u8 {
        (self.base + guard_len() + self.usable) as *mut u8
    }

    /// The lowest usable address, just above the guard.
    #[inline]
    pub fn limit(&self) -> *mut u8 {
        (self.base + guard_len()) as *mut u8
    }

    /// The guard region's addresses: any access faults.
    #[inline]
    pub fn guard(&self) -> Range<usize> {
        self.base..self.base + guard_len()
    }

    /// Usable bytes, `top - limit`: the most this stack can grow to. An overflow reports it as
    /// the limit ("goroutine 7 stack exceeds 262144-byte limit").
    #[inline]
    pub fn size(&self) -> usize {
        self.usable
    }

    /// Names the goroutine running on this stack, for the overflow message. Cheap (one relaxed
    /// store); call it whenever the stack is given to a new goroutine. 0 until set, and again
    /// after the slot returns to the pool.
    #[inline]
    pub fn set_owner(&self, id: u64) {
        // Relaxed: the id is only read by the overflow handler on the thread that runs the
        // goroutine, after the scheduler's own synchronisation handed it the stack.
        self.meta.owner.store(id, Ordering::Relaxed);
    }

    /// The id given to [`set_owner`](Stack::set_owner), or 0.
    #[inline]
    pub fn owner(&self) -> u64 {
        self.meta.owner.load(Ordering::Relaxed)
    }

    /// Releases (`MADV_DONTNEED`) the whole pages of this stack that lie entirely below
    /// `sp - RED_ZONE`: the frames of a suspended context live in `[sp, top)`, so everything
    /// under them is dead and its memory can go back to the OS. The pages stay mapped; the next
    /// touch commits a fresh zero page. Returns the number of bytes released (0 when `sp` is
    /// within a page of `limit`).
    ///
    /// Cost: one `madvise` when there is something to release (a few microseconds per MiB that
    /// was committed), none otherwise. The guard survives.
    ///
    /// # Safety
    /// May be called only if nothing lives in `[limit, sp - RED_ZONE)` that anyone will read
    /// again: typically `sp` is the saved [`StackPointer`](crate::StackPointer) of the
    /// goroutine suspended on this stack, or the current stack pointer of the calling code if
    /// it runs on this stack (no frame below it exists). `sp` outside `[limit, top]` is allowed
    /// and clamped (below `limit`: nothing released; above `top`: the whole stack, which then
    /// requires that no context uses it).
    pub unsafe fn release_below(&self, sp: *mut u8) -> usize {
        let page = os::page_size();
        let end = (sp as usize)
            .saturating_sub(RED_ZONE)
            .min(self.top() as usize);
        let end = end - end % page;
        let start = self.limit() as usize;
        if end <= start {
            return 0;
        }
        // SAFETY: [start, end) is page-aligned, inside this slot's usable part (a mapping the
        // pool owns), and the caller guarantees nothing in it is live.
        if !unsafe { os::discard(start as *mut u8, end - start) } {
            return 0;
        }
        end - start
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.forget_stash();
        self.meta.owner.store(0, Ordering::Relaxed);
        if !cache::push(self.usable, (self.base, self.meta)) {
            free_to_pool(&[(self.usable, (self.base, self.meta))]);
        }
    }
}

/// `top` of the slot at `base` with `usable` bytes.
#[inline]
fn base_to_top(base: usize, usable: usize) -> usize {
    base + guard_len() + usable
}

/// Returns slots to the process-wide pool under one lock acquisition.
fn free_to_pool(slots: &[(usize, FreeSlot)]) {
    // Poisoning cannot leave the pool inconsistent: every critical section either completes
    // its Vec operation or returns an error before modifying anything.
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    for &(usable, (base, meta)) in slots {
        pool.free(base, usable, meta);
    }
}

/// A small per-thread cache of free slots in front of the pool (Go's per-P `stackcache`):
/// spawning and exiting goroutines on one thread reuse slots without the pool lock.
///
/// Owned by its thread (a `thread_local!`, never shared). Up to [`CACHE_SLOTS`] slots of any
/// sizes, most recently freed last; when full, the older half goes back to the pool in one
/// lock acquisition; at thread exit all of it does. A `Stack` dropped while the thread's
/// locals are being destroyed bypasses the cache. Cached slots keep their pages committed
/// (they are the warmest); [`trim`] flushes the calling thread's cache into the pool first,
/// other threads' caches (at most 32 slots each) stay warm.
///
/// [`CACHE_SLOTS`]: cache::CACHE_SLOTS
mod cache {
    use super::{FreeSlot, free_to_pool};
    use core::cell::RefCell;

    /// Capacity of each thread's cache.
    pub(crate) const CACHE_SLOTS: usize = 32;

    struct Cache {
        /// (usable size, slot), oldest first.
        slots: Vec<(usize, FreeSlot)>,
    }

    impl Drop for Cache {
        fn drop(&mut self) {
            free_to_pool(&self.slots);
        }
    }

    thread_local! {
        static CACHE: RefCell<Cache> = const { RefCell::new(Cache { slots: Vec::new() }) };
    }

    /// The most recently cached slot of `usable` bytes, if any. O(CACHE_SLOTS) at worst.
    pub(super) fn pop(usable: usize) -> Option<FreeSlot> {
        CACHE
            .try_with(|cache| {
                let mut cache = cache.try_borrow_mut().ok()?;
                let i = cache.slots.iter().rposition(|&(u, _)| u == usable)?;
                Some(cache.slots.remove(i).1)
            })
            .ok()
            .flatten()
    }

    /// Moves every slot of this thread's cache to the pool.
    pub(super) fn flush() {
        let slots = CACHE
            .try_with(|cache| {
                cache
                    .try_borrow_mut()
                    .map(|mut c| core::mem::take(&mut c.slots))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        free_to_pool(&slots);
    }

    /// Caches a freed slot; false if this thread's cache is gone (the caller frees it to the
    /// pool then).
    pub(super) fn push(usable: usize, slot: FreeSlot) -> bool {
        CACHE
            .try_with(|cache| {
                let Ok(mut cache) = cache.try_borrow_mut() else {
                    return false;
                };
                if cache.slots.len() == CACHE_SLOTS {
                    let older: Vec<_> = cache.slots.drain(..CACHE_SLOTS / 2).collect();
                    free_to_pool(&older);
                }
                if cache.slots.capacity() == 0 {
                    cache.slots.reserve_exact(CACHE_SLOTS);
                }
                cache.slots.push((usable, slot));
                true
            })
            .unwrap_or(false)
    }
}

/// Guard length: [`GUARD_SIZE`], or one page where pages are larger.
#[inline]
pub(crate) fn guard_len() -> usize {
    GUARD_SIZE.max(os::page_size())
}

/// Releases the pages of pooled (free) stack slots, keeping the `keep` most recently freed
/// slots of each size warm; returns how many slots were released. Their address space and
/// guards stay; the next goroutine on such a slot commits pages afresh as it touches them.
///
/// The scheduler calls this at the end of a collection and when it has been idle a while
/// (Go frees stack spans at GC); `trim(0)` returns every free slot's memory. Cost: one
/// `madvise` per slot not yet released since it was freed, under the pool lock.
pub fn trim(keep: usize) -> usize {
    cache::flush();
    POOL.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .trim(keep)
}

/// Where the overflow handler and the stash trap look for slots: one entry per reservation,
/// append-only.
///
/// Written by the pool under its lock (fields first, then `len` with Release); read by the
/// signal handler and the trap thread without locks (`len` with Acquire, then the fields of
/// entries below it). Entries are never removed (reservations are never unmapped).
struct ChunkTable {
    /// Number of published entries.
    len: AtomicUsize,
    entries: [ChunkEntry; MAX_CHUNKS],
}

/// One reservation as the overflow handler sees it. Written once before publication.
struct ChunkEntry {
    base: AtomicUsize,
    slot_len: AtomicUsize,
    slots: AtomicUsize,
    /// Address of the chunk's leaked `[SlotMeta; slots]` table.
    metas: AtomicUsize,
}

static CHUNKS: ChunkTable = ChunkTable {
    len: AtomicUsize::new(0),
    entries: [const {
        ChunkEntry {
            base: AtomicUsize::new(0),
            slot_len: AtomicUsize::new(0),
            slots: AtomicUsize::new(0),
            metas: AtomicUsize::new(0),
        }
    }; MAX_CHUNKS],
};

/// The slot an address lies in, as found by [`slot_at`].
#[derive(Copy, Clone)]
pub(crate) struct SlotAt {
    /// The slot's shared state.
    pub(crate) meta: &'static SlotMeta,
    /// The slot's usable range.
    pub(crate) limit: usize,
    pub(crate) top: usize,
}

/// The slot whose guard or usable part holds `addr`, if any. Async-signal-safe: atomic loads and
/// arithmetic only, no locks, no allocation; O(number of reservations).
pub(crate) fn slot_at(addr: usize) -> Option<SlotAt> {
    // Acquire: pairs with the Release in `ChunkTable::publish`, so the fields of every entry
    // below `len` are visible.
    let len = CHUNKS.len.load(Ordering::Acquire).min(MAX_CHUNKS);
    for e in &CHUNKS.entries[..len] {
        let base = e.base.load(Ordering::Relaxed);
        let slot_len = e.slot_len.load(Ordering::Relaxed);
        let slots = e.slots.load(Ordering::Relaxed);
        if addr < base || addr - base >= slot_len * slots {
            continue;
        }
        let index = (addr - base) / slot_len;
        let slot_base = base + index * slot_len;
        let metas = e.metas.load(Ordering::Relaxed) as *const SlotMeta;
        // SAFETY: `metas` points at a leaked table of `slots` entries (never freed), and
        // `index < slots`.
        let meta = unsafe { &*metas.add(index) };
        return Some(SlotAt {
            meta,
            limit: slot_base + guard_len(),
            top: slot_base + slot_len,
        });
    }
    None
}

/// The usable range `[limit, top)` of the stack slot whose guard or usable part holds `addr`,
/// if `addr` lies in a goro stack reservation. Async-signal-safe (see `slot_at`); a collector
/// uses it to find where a thread's current stack ends.
pub fn slot_bounds(addr: usize) -> Option<(usize, usize)> {
    slot_at(addr).map(|slot| (slot.limit, slot.top))
}

/// A fault address that lies in the guard of a stack slot, as found by [`guard_hit`].
#[derive(Copy, Clone, Debug)]
pub(crate) struct GuardHit {
    /// The goroutine id set with [`Stack::set_owner`] (0 if none).
    pub(crate) owner: u64,
    /// Usable bytes of the slot (the limit in the message).
    pub(crate) usable: usize,
    /// The slot's usable range.
    pub(crate) limit: usize,
    pub(crate) top: usize,
}

/// Whether `addr` lies in the guard region of a slot, and whose. Async-signal-safe, like
/// [`slot_at`].
pub(crate) fn guard_hit(addr: usize) -> Option<GuardHit> {
    let slot = slot_at(addr)?;
    if addr >= slot.limit {
        return None; // inside the usable part: not an overflow
    }
    Some(GuardHit {
        owner: slot.meta.owner.load(Ordering::Relaxed),
        usable: slot.top - slot.limit,
        limit: slot.limit,
        top: slot.top,
    })
}

impl ChunkTable {
    /// Adds a reservation; returns its slot table. Called under the pool lock only.
    fn publish(
        &self,
        base: usize,
        slot_len: usize,
        slots: usize,
    ) -> Result<&'static [SlotMeta], StackError> {
        let n = self.len.load(Ordering::Relaxed);
        if n == MAX_CHUNKS {
            return Err(StackError::too_many_chunks(MAX_CHUNKS));
        }
        // Mapped, not allocated: a table this size (tens of MiB for a million slots) in goro's
        // heap would be scanned whole by every collection (it is reached from this static), and
        // it holds no `Gc`. Zeroed pages are fresh `SlotMeta`s, so only the entries of slots in
        // use are ever touched.
        let bytes = slots * size_of::<SlotMeta>();
        let table = os::reserve(bytes).map_err(|err| StackError::reserve(bytes, err))?;
        // SAFETY: a fresh zeroed mapping of `slots` entries, never unmapped; all-zero bytes are a
        // valid `SlotMeta` (atomics and a null pointer): a LIVE slot with no owner or record.
        let metas: &'static [SlotMeta] =
            unsafe { core::slice::from_raw_parts(table.cast::<SlotMeta>(), slots) };
        let e = &self.entries[n];
        e.base.store(base, Ordering::Relaxed);
        e.slot_len.store(slot_len, Ordering::Relaxed);
        e.slots.store(slots, Ordering::Relaxed);
        e.metas.store(metas.as_ptr() as usize, Ordering::Relaxed);
        // Release: pairs with the Acquire in `slot_at`.
        self.len.store(n + 1, Ordering::Release);
        Ok(metas)
    }

    /// Registers the reservation of entry `index` with the stash trap and marks its slots
    /// trapped. Called under the pool lock only.
    fn trap(&self, index: usize, fd: i32) {
        let e = &self.entries[index];
        let (base, slot_len, slots) = (
            e.base.load(Ordering::Relaxed),
            e.slot_len.load(Ordering::Relaxed),
            e.slots.load(Ordering::Relaxed),
        );
        if crate::trap::register(fd, base, slot_len * slots).is_err() {
            return; // its slots stay untrapped: they are trimmed, never stashed
        }
        let metas = e.metas.load(Ordering::Relaxed) as *const SlotMeta;
        // SAFETY: as in `slot_at`: a leaked table of `slots` entries.
        let metas = unsafe { core::slice::from_raw_parts(metas, slots) };
        for meta in metas {
            meta.trapped.store(true, Ordering::Release);
        }
    }
}

/// Registers every stack reservation with the trap `fd`, now and later (the pool registers each
/// new one once `fd` is published). Idempotent: the first call publishes.
pub(crate) fn trap_every_chunk(fd: i32) {
    let _pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if crate::trap::fd().is_none() {
        for index in 0..CHUNKS.len.load(Ordering::Relaxed) {
            CHUNKS.trap(index, fd);
        }
        crate::trap::publish(fd);
    }
}

/// The reservation a size class is currently carving new slots from.
struct Chunk {
    /// Start of the reservation.
    base: usize,
    /// Slots it holds.
    slots: usize,
    /// Slots carved so far (the next one is `base + next * slot_len`).
    next: usize,
    /// Its slot table in [`CHUNKS`].
    metas: &'static [SlotMeta],
}

/// A free slot: its base address and its entry in the slot table.
type FreeSlot = (usize, &'static SlotMeta);

/// All slots of one usable size. Owned by the pool, only touched under its lock.
struct SizeClass {
    /// Usable bytes of each slot (page multiple).
    usable: usize,
    /// Freed slots, reused last-in first-out.
    free: Vec<FreeSlot>,
    /// `free[..released]` have had their pages released by `trim` since they were freed (the
    /// list only changes at its end, so the released ones stay a prefix).
    released: usize,
    /// The reservation new slots are carved from; `None` before the first allocation.
    chunk: Option<Chunk>,
}

impl SizeClass {
    fn slot_len(&self) -> usize {
        guard_len() + self.usable
    }

    fn alloc(&mut self) -> Result<FreeSlot, StackError> {
        if let Some(slot) = self.free.pop() {
            self.released = self.released.min(self.free.len());
            return Ok(slot);
        }
        self.carve()
    }

    #[cold]
    fn carve(&mut self) -> Result<FreeSlot, StackError> {
        let slot_len = self.slot_len();
        if self.chunk.as_ref().is_none_or(|c| c.next == c.slots) {
            let slots = (MAX_CHUNK_BYTES / slot_len).clamp(1, SLOTS_PER_CHUNK);
            let len = slots
                .checked_mul(slot_len)
                .ok_or_else(|| StackError::too_large(self.usable))?;
            let base = os::reserve(len).map_err(|e| StackError::reserve(len, e))?;
            let metas = match CHUNKS.publish(base as usize, slot_len, slots) {
                Ok(metas) => metas,
                Err(e) => {
                    // SAFETY: the reservation was made just above and nothing refers to it.
                    unsafe { os::release(base, len) };
                    return Err(e);
                }
            };
            // The previous chunk, if any, is fully carved: all its slots are live or free.
            self.chunk = Some(Chunk {
                base: base as usize,
                slots,
                next: 0,
                metas,
            });
            if let Some(fd) = crate::trap::fd() {
                CHUNKS.trap(CHUNKS.len.load(Ordering::Relaxed) - 1, fd);
            }
        }
        let chunk = self.chunk.as_mut().expect("a chunk was just ensured");
        let base = chunk.base + chunk.next * slot_len;
        // SAFETY: [base, base + guard_len) is the first page(s) of a slot that was never handed
        // out, inside a reservation this pool owns; it holds nothing.
        unsafe { guard::install(base as *mut u8, guard_len()) }?;
        let meta = &chunk.metas[chunk.next];
        chunk.next += 1;
        Ok((base, meta))
    }

    /// Releases the pages of all but the last `keep` free slots; returns how many it released.
    fn trim(&mut self, keep: usize) -> usize {
        let end = self.free.len().saturating_sub(keep);
        let guard = guard_len();
        let mut count = 0;
        for &(base, _) in self.free.get(self.released..end).unwrap_or(&[]) {
            // SAFETY: the slot is free (in this list, under the pool lock): no context runs
            // on it and nothing points into it; its usable part is inside our reservation.
            let _ = unsafe { os::discard((base + guard) as *mut u8, self.usable) };
            count += 1;
        }
        self.released = self.released.max(end);
        count
    }
}

/// The process-wide pool: one size class per usable size seen so far.
struct Pool {
    /// Size classes in order of first use. Few distinct sizes exist in practice.
    classes: Vec<SizeClass>,
}

/// Shared by all threads; every access takes the lock (the per-thread `cache` is in front of it).
static POOL: Mutex<Pool> = Mutex::new(Pool {
    classes: Vec::new(),
});

impl Pool {
    fn class(&mut self, usable: usize) -> &mut SizeClass {
        let i = match self.classes.iter().position(|c| c.usable == usable) {
            Some(i) => i,
            None => {
                self.classes.push(SizeClass {
                    usable,
                    free: Vec::new(),
                    released: 0,
                    chunk: None,
                });
                self.classes.len() - 1
            }
        };
        &mut self.classes[i]
    }

    fn alloc(&mut self, usable: usize) -> Result<FreeSlot, StackError> {
        self.class(usable).alloc()
    }

    fn free(&mut self, base: usize, usable: usize, meta: &'static SlotMeta) {
        self.class(usable).free.push((base, meta));
    }

    fn trim(&mut self, keep: usize) -> usize {
        self.classes.iter_mut().map(|c| c.trim(keep)).sum()
    }
}

/// The per-slot state shared by everyone who may look at a slot without owning it.
/// Its states and the stash that moves between them are in `stash.rs`. All bytes zero is a LIVE slot with no owner and no record: the slot tables are zeroed mappings.
pub(crate) struct SlotMeta {
    /// The goroutine id set with [`Stack::set_owner`] (0 if none).
    pub(crate) owner: AtomicU64,
    /// LIVE, STASHING, STASHED, CLAIMED or FILLING.
    pub(crate) state: AtomicU8,
    /// Whether the slot's reservation is registered with the trap. Set once.
    pub(crate) trapped: AtomicBool,
    /// The kernel thread id of the stasher while STASHING.
    pub(crate) stasher: AtomicI32,
    /// The stashed bytes `[top - len, top)`, a leaked `Box<[u8]>`, or null. Owned by whoever the
    /// state says; in LIVE a record left by a restore is the stack owner's to free.
    pub(crate) record: AtomicPtr<u8>,
    pub(crate) record_len: AtomicUsize,
}

impl core::fmt::Debug for SlotMeta {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotMeta")
            .field("owner", &self.owner.load(Ordering::Relaxed))
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Pages the allocating thread fills at the top of a fresh or released slot while the trap is
/// on (Go's adaptive starting stack size, in pages): each first touch below them costs a round
/// trip to the trap thread (8-20 us) instead of a page fault (1 us).
static PREFILL_PAGES: AtomicUsize = AtomicUsize::new(1);
/// The most pages a slot is prefilled with: the RSS a fresh goroutine may be given up front.
const MAX_PREFILL_PAGES: usize = 16;
/// Slots prefilled since the last [`adapt_stack_prefill`].
static PREFILLED_SLOTS: AtomicUsize = AtomicUsize::new(0);
/// First touches of live slots the trap answered since then (counted by `stash.rs`).
pub(crate) static TRAP_FILLS: AtomicUsize = AtomicUsize::new(0);
/// Consecutive periods in which almost no slot needed the trap.
static QUIET_PERIODS: AtomicUsize = AtomicUsize::new(0);
/// Fewer slot allocations than this in a period say too little to adapt on.
const ADAPT_MIN_SLOTS: usize = 256;

/// How many pages to fill at the top of a slot taken from the pool; counts the slot.
pub(crate) fn prefill_pages() -> usize {
    PREFILLED_SLOTS.fetch_add(1, Ordering::Relaxed);
    PREFILL_PAGES.load(Ordering::Relaxed)
}

/// Adapts the pages given to fresh slots (`PREFILL_PAGES`) to what goroutines used since
/// the last call. If the trap answered more first touches than an eighth of the slots
/// prefilled meanwhile, slots get more pages: one per touch per slot, up to four at a time. If
/// it answered fewer than a sixty-fourth of them for two periods in a row, half as many. A
/// few deep recursions among many small goroutines therefore do not make every goroutine
/// start big, and a burst of small goroutines after deep ones gets small slots within a
/// second (a long-parked goroutine's pages are released by stashing anyway). Called by the
/// scheduler's sysmon every half second; a no-op without the trap.
pub fn adapt_stack_prefill() {
    let slots = PREFILLED_SLOTS.load(Ordering::Relaxed);
    if slots < ADAPT_MIN_SLOTS {
        return;
    }
    PREFILLED_SLOTS.store(0, Ordering::Relaxed);
    let fills = TRAP_FILLS.swap(0, Ordering::Relaxed);
    let current = PREFILL_PAGES.load(Ordering::Relaxed);
    let next = if fills * 8 > slots {
        QUIET_PERIODS.store(0, Ordering::Relaxed);
        current + fills.div_ceil(slots).min(4)
    } else if fills * 64 < slots {
        if QUIET_PERIODS.fetch_add(1, Ordering::Relaxed) + 1 < 2 {
            return;
        }
        QUIET_PERIODS.store(0, Ordering::Relaxed);
        current / 2
    } else {
        QUIET_PERIODS.store(0, Ordering::Relaxed);
        return;
    };
    PREFILL_PAGES.store(next.clamp(1, MAX_PREFILL_PAGES), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let s = Stack::with_size(10_000).unwrap();
        let (top, limit) = (s.top() as usize, s.limit() as usize);
        assert_eq!(top % 16, 0);
        assert_eq!(top - limit, 12_288, "10,000 rounds up to three pages");
        assert_eq!(s.guard(), limit - GUARD_SIZE..limit);
    }

    #[test]
    fn freed_slot_is_reused() {
        // A size no other test uses, so that no concurrent test takes the freed slot.
        let a = Stack::with_size(5 * 4096 - 7).unwrap();
        let top = a.top();
        drop(a);
        let b = Stack::with_size(5 * 4096).unwrap();
        assert_eq!(b.top(), top);
    }

    #[test]
    fn sizes_are_pooled_separately() {
        let a = Stack::with_size(7 * 4096).unwrap();
        let b = Stack::with_size(9 * 4096).unwrap();
        assert_eq!(a.top() as usize - a.limit() as usize, 7 * 4096);
        assert_eq!(b.top() as usize - b.limit() as usize, 9 * 4096);
        let top_a = a.top();
        drop(a);
        let c = Stack::with_size(9 * 4096).unwrap();
        assert_ne!(c.top(), top_a);
    }

    #[test]
    fn whole_slot_is_writable() {
        let s = Stack::with_size(3 * 4096).unwrap();
        let len = s.top() as usize - s.limit() as usize;
        // SAFETY: [limit, top) is the usable part of a slot we own.
        unsafe { core::ptr::write_bytes(s.limit(), 0xa5, len) };
        // SAFETY: as above; top - 1 is the highest usable byte.
        assert_eq!(unsafe { s.top().sub(1).read() }, 0xa5);
    }

    #[test]
    fn absurd_size_is_an_error_with_a_message() {
        let err = Stack::with_size(usize::MAX / 2).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("too large"), "{msg}");
    }

    #[test]
    fn slot_carving_crosses_reservations() {
        // 1 GiB / (1 MiB + 4 KiB) = 1020 slots per chunk: allocate just past it.
        let usable = 1 << 20;
        let slot_len = usable + guard_len();
        let per_chunk = (MAX_CHUNK_BYTES / slot_len).clamp(1, SLOTS_PER_CHUNK);
        let stacks: Vec<Stack> = (0..per_chunk + 2)
            .map(|_| Stack::with_size(usable).unwrap())
            .collect();
        let mut tops: Vec<usize> = stacks.iter().map(|s| s.top() as usize).collect();
        tops.sort_unstable();
        tops.dedup();
        assert_eq!(tops.len(), per_chunk + 2);
    }
}
