//! Per-thread caches (Go's `mcache`, per thread here instead of per P).
//!
//! A cache holds the current span of every span class (size class × {Malloc, Gc}) and owns it:
//! only this thread allocates from it and frees into its local list. Allocation:
//!
//! 1. pop the current span's local free list, else bump-allocate a never-used slot (fast path,
//!    `Span::pop_local`);
//! 2. else collect the span's remote frees and retry (`refill`, cold);
//! 3. else release the span (see `mcentral::release`) and take one from the central list,
//!    collecting its remote frees;
//! 4. else carve a fresh span from the page heap.
//!
//! The cache lives in a `thread_local!` with a const initialiser whose `Drop` releases every span
//! at thread exit. Code that runs after that (other TLS destructors calling `free` or `malloc`)
//! finds the thread-local gone (`try_with` fails) and uses the shared [`GLOBAL`] cache under a
//! spin lock for allocation, and the remote path for frees. The allocator never calls the global
//! allocator, so the `UnsafeCell` borrow inside `try_with` is never re-entered.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::span::{FIRST_CACHE_ID, GLOBAL_CACHE_ID, NUM_SPAN_CLASSES, OWNER_DETACHED, Span};
use crate::stats::{FLUSH_EVERY, FREES, MALLOCS};
use crate::sync::SpinLock;
use crate::{mcentral, mheap};

/// A span cache. Used by one thread at a time (its thread, or the holder of [`GLOBAL`]'s lock).
pub(crate) struct MCache {
    /// Owner id written into the spans this cache holds; 0 until first refill.
    id: usize,
    /// Current span per span class (null = none).
    alloc: [*const Span; NUM_SPAN_CLASSES],
    /// Allocations not yet added to `stats::MALLOCS`.
    mallocs: u64,
    /// Frees not yet added to `stats::FREES`.
    frees: u64,
}

// SAFETY: the span pointers refer to never-freed metadata; a cache is used by one thread at a
// time (the global one under its lock).
unsafe impl Send for MCache {}

static NEXT_ID: AtomicUsize = AtomicUsize::new(FIRST_CACHE_ID);

/// The cache of threads whose own cache is gone.
static GLOBAL: SpinLock<MCache> = SpinLock::new(MCache::new(GLOBAL_CACHE_ID));

impl MCache {
    const fn new(id: usize) -> Self {
        MCache {
            id,
            alloc: [core::ptr::null(); NUM_SPAN_CLASSES],
            mallocs: 0,
            frees: 0,
        }
    }

    /// Allocates one slot of span class `spc`; null when out of memory.
    #[inline]
    fn alloc(&mut self, spc: usize) -> *mut u8 {
        if let Some(&s) = self.alloc.get(spc)
            && !s.is_null()
        {
            // SAFETY: `s` is this cache's current span, so we are its owner; span metadata is
            // never unmapped.
            let p = unsafe { (*s).pop_local() };
            if !p.is_null() {
                self.mallocs += 1;
                if self.mallocs >= FLUSH_EVERY {
                    self.flush_stats();
                }
                return p;
            }
        }
        self.refill(spc)
    }

    #[cold]
    fn refill(&mut self, spc: usize) -> *mut u8 {
        self.flush_stats();
        if self.id == 0 {
            self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        }
        let Some(slot) = self.alloc.get_mut(spc) else {
            return core::ptr::null_mut();
        };
        if !slot.is_null() {
            // SAFETY: the current span is live metadata owned by this cache.
            let s: &'static Span = unsafe { &**slot };
            // SAFETY: we own `s`.
            if unsafe { s.collect_remote() } > 0 {
                self.mallocs += 1;
                // SAFETY: we own `s`.
                return unsafe { s.pop_local() };
            }
            *slot = core::ptr::null();
            // SAFETY: we own `s` and dropped our pointer to it.
            unsafe { mcentral::release(s) };
        }
        let s = loop {
            match mcentral::take(spc, self.id) {
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
                None => match new_small_span(spc, self.id) {
                    Some(s) => break s,
                    None => return core::ptr::null_mut(),
                },
            }
        };
        self.alloc[spc] = s;
        self.mallocs += 1;
        // SAFETY: we own `s` and it has a free slot.
        unsafe { s.pop_local() }
    }

    /// Adds the batched counters to the global ones.
    fn flush_stats(&mut self) {
        if self.mallocs > 0 {
            MALLOCS.fetch_add(self.mallocs, Ordering::Relaxed);
            self.mallocs = 0;
        }
        if self.frees > 0 {
            FREES.fetch_add(self.frees, Ordering::Relaxed);
            self.frees = 0;
        }
    }

    /// Releases every span (thread exit).
    fn release_all(&mut self) {
        self.flush_stats();
        for slot in self.alloc.iter_mut() {
            if !slot.is_null() {
                // SAFETY: current spans are live metadata owned by this cache.
                let s: &'static Span = unsafe { &**slot };
                *slot = core::ptr::null();
                // SAFETY: we own `s` and dropped our pointer to it.
                unsafe { mcentral::release(s) };
            }
        }
    }
}

/// Carves a fresh small span of span class `spc` owned by `owner`.
fn new_small_span(spc: usize, owner: usize) -> Option<&'static Span> {
    let class = crate::size_class::SizeClass::from_index(spc / 2)?;
    let s = mheap::alloc_span(class.pages())?;
    s.init_small(spc, class, owner);
    mheap::publish(s, crate::span::STATE_SMALL);
    Some(s)
}

/// The thread's cache; dropping it (thread exit) releases its spans.
struct LocalCache(UnsafeCell<MCache>);

impl Drop for LocalCache {
    fn drop(&mut self) {
        self.0.get_mut().release_all();
    }
}

thread_local! {
    static CACHE: LocalCache = const { LocalCache(UnsafeCell::new(MCache::new(0))) };
}

/// Allocates a slot of span class `spc` from this thread's cache (or the global one once the
/// thread's cache is gone). Null when out of memory.
#[inline]
pub(crate) fn alloc_small(spc: usize) -> *mut u8 {
    // SAFETY: the allocator never re-enters itself on one thread, so this is the only live
    // reference to the thread's cache.
    match CACHE.try_with(|c| unsafe { (*c.0.get()).alloc(spc) }) {
        Ok(p) => p,
        Err(_) => alloc_global(spc),
    }
}

#[cold]
fn alloc_global(spc: usize) -> *mut u8 {
    GLOBAL.lock().alloc(spc)
}

/// Frees slot `p` of the small span `s`: onto the local list when this thread's cache owns `s`,
/// else onto its remote stack.
///
/// # Safety
/// `p` must be a live slot start of `s`, freed once.
#[inline]
pub(crate) unsafe fn free_small(s: &'static Span, p: *mut u8) {
    let local = CACHE.try_with(|c| {
        // SAFETY: as in `alloc_small`, this is the only reference to the thread's cache.
        let c = unsafe { &mut *c.0.get() };
        c.frees += 1;
        if c.frees >= FLUSH_EVERY {
            c.flush_stats();
        }
        if c.id != 0 && s.owner.load(Ordering::Relaxed) == c.id {
            // SAFETY: only this cache moves `s` out of our ownership, so reading our id means we
            // own it; `p` is a live slot of `s` (caller).
            unsafe { s.push_local(p) };
            true
        } else {
            false
        }
    });
    match local {
        Ok(true) => {}
        Ok(false) => {
            // SAFETY: caller's contract.
            unsafe { free_remote(s, p) }
        }
        Err(_) => {
            FREES.fetch_add(1, Ordering::Relaxed);
            // SAFETY: caller's contract.
            unsafe { free_remote(s, p) }
        }
    }
}

/// Frees a chain of slots of the small span `s` (linked through word 0 from `first` to `last`)
/// as remote frees, with one push.
///
/// # Safety
/// As [`free_small`], for every slot of the chain.
pub(crate) unsafe fn free_chain(s: &'static Span, first: *mut u8, last: *mut u8, count: usize) {
    FREES.fetch_add(count as u64, Ordering::Relaxed);
    // SAFETY: caller's contract.
    unsafe { s.push_remote_chain(first, last, count) };
    // SeqCst: the freer half of the handshake in mcentral's docs.
    if s.owner.load(Ordering::SeqCst) == OWNER_DETACHED {
        mcentral::reclaim_detached(s);
    }
}

/// # Safety
/// As [`free_small`].
unsafe fn free_remote(s: &'static Span, p: *mut u8) {
    // SAFETY: caller's contract.
    unsafe { s.push_remote(p) };
    // SeqCst: the freer half of the handshake in mcentral's docs.
    if s.owner.load(Ordering::SeqCst) == OWNER_DETACHED {
        mcentral::reclaim_detached(s);
    }
}
