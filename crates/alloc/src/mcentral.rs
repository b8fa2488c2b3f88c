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

/// One central list: three stacks of spans linked through `Span::next`, every span on them
/// listed. `head` is where spans are pushed. While [`release_empty_spans`] walks the list,
/// `to_walk` holds what `head` held when the walk began (the walk takes its batches from it) and
/// `walked` the spans it has looked at and kept, until it puts them back on top of `head`.
/// `take` pops `head`, then `to_walk`, then `walked`.
struct CentralList {
    head: *mut Span,
    to_walk: *mut Span,
    walked: *mut Span,
    /// The last span of `walked` (null when it is empty).
    walked_tail: *mut Span,
}

impl CentralList {
    const fn new() -> CentralList {
        CentralList {
            head: null_mut(),
            to_walk: null_mut(),
            walked: null_mut(),
            walked_tail: null_mut(),
        }
    }

    /// Pops `head`, else `to_walk`, else `walked`.
    fn pop(&mut self) -> Option<&'static Span> {
        if !self.head.is_null() {
            return Some(pop_stack(&mut self.head));
        }
        if !self.to_walk.is_null() {
            return Some(pop_stack(&mut self.to_walk));
        }
        if self.walked.is_null() {
            return None;
        }
        let s = pop_stack(&mut self.walked);
        if self.walked.is_null() {
            self.walked_tail = null_mut();
        }
        Some(s)
    }

    /// Pushes the chain `first ..= last` (linked through `next`) onto `walked`.
    fn push_walked(&mut self, first: *mut Span, last: *mut Span) {
        // SAFETY: `last` ends a chain of span metadata structs, which are never unmapped.
        unsafe { &*last }.next.store(self.walked, Ordering::Relaxed);
        if self.walked.is_null() {
            self.walked_tail = last;
        }
        self.walked = first;
    }

    /// Puts the walked spans back on top of `head`.
    fn restore_walked(&mut self) {
        if self.walked.is_null() {
            return;
        }
        // SAFETY: `walked_tail` is the last span of the non-empty `walked` stack.
        unsafe { &*self.walked_tail }
            .next
            .store(self.head, Ordering::Relaxed);
        self.head = self.walked;
        self.walked = null_mut();
        self.walked_tail = null_mut();
    }
}

/// Pops the non-empty stack `top`.
fn pop_stack(top: &mut *mut Span) -> &'static Span {
    // SAFETY: listed spans are live metadata structs (never unmapped).
    let s: &'static Span = unsafe { &**top };
    *top = s.next.load(Ordering::Relaxed);
    s.next.store(null_mut(), Ordering::Relaxed);
    s
}

// SAFETY: the pointers refer to never-freed span metadata; the list is only used under its lock.
unsafe impl Send for CentralList {}

static CENTRAL: [SpinLock<CentralList>; NUM_SPAN_CLASSES] =
    [const { SpinLock::new(CentralList::new()) }; NUM_SPAN_CLASSES];

/// One per central list, held for a whole walk of it by [`release_empty_spans`]: one walk of a
/// list at a time (the sweep, the scavenger and `release_memory` may all walk at once, and a
/// walk that began second would miss the spans the first has in hand), and none across a
/// `fork` (the fork handlers take them all, so a child never inherits spans that a walk had off
/// its list).
static WALKING: [SpinLock<()>; NUM_SPAN_CLASSES] = [const { SpinLock::new(()) }; NUM_SPAN_CLASSES];

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
    let s = CENTRAL.get(spc)?.lock().pop()?;
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

/// Spans [`release_empty_spans`] takes off a list per hold of its lock.
const RELEASE_BATCH: usize = 32;

/// Returns every listed span with no live object to the page heap (the collector's sweep, the
/// scavenger and `release_memory`). A list is walked [`RELEASE_BATCH`] spans at a time, one
/// walk of it at a time ([`WALKING`]): the walk moves `head` to `to_walk`, and each batch is
/// taken off `to_walk` under the list's lock (a span off every list, its owner word still
/// CENTRAL, is the walk's alone), looked at without the lock, and what stays goes onto
/// `walked`, still listed; once `to_walk` is empty, `walked` goes back on top of `head`.
/// Holding the lock for a whole list, thousands of spans each a cache miss or two, kept a
/// mutator that needed a span of the class spinning on it for milliseconds (gc_latency's worst
/// stalls).
pub(crate) fn release_empty_spans() {
    for (list, walking) in CENTRAL.iter().zip(&WALKING) {
        let _walking = walking.lock();
        {
            let mut l = list.lock();
            if l.to_walk.is_null() {
                l.to_walk = l.head;
                l.head = null_mut();
            }
        }
        loop {
            let mut batch = [null_mut::<Span>(); RELEASE_BATCH];
            let mut taken = 0;
            {
                let mut l = list.lock();
                while taken < RELEASE_BATCH && !l.to_walk.is_null() {
                    batch[taken] = core::ptr::from_ref(pop_stack(&mut l.to_walk)).cast_mut();
                    taken += 1;
                }
            }
            if taken == 0 {
                break;
            }
            // The spans kept, chained through `next`, first to last.
            let (mut first, mut last) = (null_mut::<Span>(), null_mut::<Span>());
            for &p in &batch[..taken] {
                // SAFETY: span metadata is never unmapped; the batch's spans are ours (taken
                // off the list under its lock, on no list now, their owner word CENTRAL).
                let s: &'static Span = unsafe { &*p };
                // SAFETY: as above, we own `s`.
                unsafe { s.collect_remote() };
                if s.allocated.load(Ordering::Relaxed) == 0 && leaves_for_the_heap(s) {
                    mheap::free_span(s);
                    continue;
                }
                s.next.store(first, Ordering::Relaxed);
                if last.is_null() {
                    last = p;
                }
                first = p;
            }
            if !first.is_null() {
                list.lock().push_walked(first, last);
            }
        }
        list.lock().restore_walked();
    }
}

/// For `release_empty_spans`, owning the empty span `s` taken off its list: gives it up unless a
/// walker of the Gc spans holds it (`Span::visit`), which leaves it to be listed again.
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

/// Takes every central list's walk lock, then every central lock (fork prepare; each in class
/// order). A walk holds its walk lock while it takes its list's lock and the page heap's, never
/// the other way round.
pub(crate) fn lock_all() {
    for walking in &WALKING {
        walking.lock_raw();
    }
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
    for walking in &WALKING {
        // SAFETY: caller's contract (`lock_all` took the walk locks too).
        unsafe { walking.unlock_raw() };
    }
}
