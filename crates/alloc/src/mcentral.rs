//! Central lists (Go's `mcentral`): per span class, the spans no cache owns that have free slots.
//!
//! A span's `owner` word moves through these states:
//!
//! ```text
//!             take (central lock)                 release: has free slots (central lock)
//!   CENTRAL ------------------------> cache id ----------------------------------------> CENTRAL
//!      ^                                 |  \  release: no live object
//!      |  remote free: CAS               |   `---------------------------> NONE (page heap)
//!      |  DETACHED -> CENTRAL            |  release: full
//!      `------------------------- DETACHED <-'
//! ```
//!
//! Only the owner (the cache whose id is in `owner`) moves a span out of "owned", so an owner that
//! reads its own id knows it still owns the span; that is what lets the owner free onto the local
//! list without atomics. Every other free is a lock-free push on the span's `remote` stack.
//!
//! **Why a detached span is neither lost nor listed twice.** A full span released by its cache
//! is not put on the central list (it has nothing to give). It must come back as soon as one of
//! its slots is freed remotely. The releaser and every remote freer run:
//!
//! ```text
//!   releaser (owner):                      remote freer:
//!     collect remote; decide "full"          push slot on `remote`       (SeqCst CAS)
//!     owner := DETACHED        (SeqCst)      if owner == DETACHED        (SeqCst load)
//!     if remote != empty       (SeqCst)          reclaim()
//!         reclaim()
//!   reclaim(): if CAS owner DETACHED -> CENTRAL (SeqCst) succeeds: push on the central list
//! ```
//!
//! All four accesses are SeqCst, so they are totally ordered: if the freer's load comes before the
//! releaser's store, then its push comes before the releaser's load of `remote`, which therefore
//! sees a non-empty stack (only an owner empties it, and there is none). So at least one side
//! calls `reclaim` after a remote free on a detached span (nothing is lost), and the CAS lets
//! exactly one caller push it (nothing is listed twice). A freer may also read `owner` after the
//! span was emptied, returned to the heap and its struct recycled for another detached span; it
//! then lists a full span. `take` tolerates that: a span from the list with no free slot is
//! released again.

use core::ptr::null_mut;
use core::sync::atomic::Ordering;

use crate::mheap;
use crate::span::{NUM_SPAN_CLASSES, OWNER_CENTRAL, OWNER_DETACHED, OWNER_NONE, Span};
use crate::sync::SpinLock;

/// One central list: a stack of spans linked through `Span::next`.
struct CentralList {
    head: *mut Span,
}

// SAFETY: the pointers refer to never-freed span metadata; the list is only used under its lock.
unsafe impl Send for CentralList {}

static CENTRAL: [SpinLock<CentralList>; NUM_SPAN_CLASSES] =
    [const { SpinLock::new(CentralList { head: null_mut() }) }; NUM_SPAN_CLASSES];

/// Lists `s` on its class's central list.
fn push(s: &'static Span) {
    let spc = s.spc.load(Ordering::Relaxed) as usize;
    let Some(list) = CENTRAL.get(spc) else {
        crate::throw("span class out of range in mcentral push");
    };
    let mut l = list.lock();
    // A span is listed by its owner (a cache id) or by whoever won it from DETACHED (which set
    // CENTRAL): never twice, and never one nobody owns.
    debug_assert!(
        !matches!(s.owner.load(Ordering::Relaxed), OWNER_NONE | OWNER_DETACHED),
        "a span listed without being owned"
    );
    s.owner.store(OWNER_CENTRAL, Ordering::Relaxed);
    s.next.store(l.head, Ordering::Relaxed);
    l.head = s as *const Span as *mut Span;
}

/// Takes a span of class `spc` off the central list and makes `id` its owner.
pub(crate) fn take(spc: usize, id: usize) -> Option<&'static Span> {
    let mut l = CENTRAL.get(spc)?.lock();
    let p = l.head;
    if p.is_null() {
        return None;
    }
    // SAFETY: listed spans are live metadata structs (never unmapped).
    let s: &'static Span = unsafe { &*p };
    l.head = s.next.load(Ordering::Relaxed);
    s.next.store(null_mut(), Ordering::Relaxed);
    debug_assert_eq!(
        s.owner.load(Ordering::Relaxed),
        OWNER_CENTRAL,
        "a listed span is owned by the list"
    );
    // Relaxed: the central lock orders this with every other owner change of a listed span.
    s.owner.store(id, Ordering::Relaxed);
    Some(s)
}

/// Gives up ownership of `s`: back to the page heap when no slot is live, onto the central list
/// when it has free slots, detached when full.
///
/// # Safety
/// May be called only by the owner of `s`, which must not use `s` afterwards.
pub(crate) unsafe fn release(s: &'static Span) {
    debug_assert!(
        !matches!(
            s.owner.load(Ordering::Relaxed),
            OWNER_NONE | OWNER_CENTRAL | OWNER_DETACHED
        ),
        "a span released by a cache that does not own it"
    );
    // SAFETY: we are the owner (caller's contract).
    unsafe { s.collect_remote() };
    if s.allocated.load(Ordering::Relaxed) == 0 {
        // No live slot: nobody can free into the span any more, so nobody else can touch it,
        // but a walker of the Gc spans may be reading it (`Span::visit`).
        let owner = s.owner.load(Ordering::Relaxed);
        // SeqCst: the releaser half of the handshake with walkers.
        s.owner.store(OWNER_NONE, Ordering::SeqCst);
        if s.may_leave_for_the_heap() {
            mheap::free_span(s);
        } else {
            // Held: listed with its free slots, for `release_empty_spans` to give back later.
            s.owner.store(owner, Ordering::Relaxed);
            push(s);
        }
        return;
    }
    if s.has_local_free() {
        push(s);
        return;
    }
    // SeqCst: the releaser half of the handshake in the module docs.
    s.owner.store(OWNER_DETACHED, Ordering::SeqCst);
    if s.remote.load(Ordering::SeqCst) != 0 {
        reclaim_detached(s);
    }
}

/// Called after a remote free saw `owner == DETACHED` (or by the releaser): lists the span
/// unless someone else already did.
pub(crate) fn reclaim_detached(s: &'static Span) {
    // SeqCst: the CAS of the handshake; success also acquires the releaser's writes.
    if s.owner
        .compare_exchange(
            OWNER_DETACHED,
            OWNER_CENTRAL,
            Ordering::SeqCst,
            Ordering::Relaxed,
        )
        .is_ok()
    {
        push(s);
    }
}

/// Returns every listed span with no live object to the page heap (the scavenger and
/// `release_memory`). Holding a list's lock makes us the owner of its spans.
pub(crate) fn release_empty_spans() {
    for list in &CENTRAL {
        let mut l = list.lock();
        let mut prev: *mut Span = null_mut();
        let mut p = l.head;
        while !p.is_null() {
            // SAFETY: listed spans are live metadata structs (never unmapped).
            let s: &'static Span = unsafe { &*p };
            let next = s.next.load(Ordering::Relaxed);
            // SAFETY: the list lock makes us the owner of listed spans.
            unsafe { s.collect_remote() };
            if s.allocated.load(Ordering::Relaxed) == 0 && leaves_for_the_heap(s) {
                if prev.is_null() {
                    l.head = next;
                } else {
                    // SAFETY: `prev` is a listed span, as above.
                    unsafe { &*prev }.next.store(next, Ordering::Relaxed);
                }
                s.next.store(null_mut(), Ordering::Relaxed);
                mheap::free_span(s);
            } else {
                prev = p;
            }
            p = next;
        }
    }
}

/// For `release_empty_spans`, holding the list's lock: gives up the listed empty span `s` unless
/// a walker of the Gc spans holds it (`Span::visit`), which leaves it listed.
fn leaves_for_the_heap(s: &Span) -> bool {
    // No live slot: nobody can free into it any more.
    // SeqCst: the releaser half of the handshake with walkers.
    s.owner.store(OWNER_NONE, Ordering::SeqCst);
    if s.may_leave_for_the_heap() {
        return true;
    }
    s.owner.store(OWNER_CENTRAL, Ordering::Relaxed);
    false
}

/// Takes every central lock (fork prepare; the order is the class order).
pub(crate) fn lock_all() {
    for list in &CENTRAL {
        list.lock_raw();
    }
}

/// Releases every central lock taken by [`lock_all`].
///
/// # Safety
/// As `SpinLock::unlock_raw`: only the thread that called `lock_all` (or its fork child).
pub(crate) unsafe fn unlock_all() {
    for list in &CENTRAL {
        // SAFETY: caller's contract.
        unsafe { list.unlock_raw() };
    }
}
