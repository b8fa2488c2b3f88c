//! `LocalQueue`: a P's queue of goroutines that have not run yet (Go's `runq`).
//!
//! A fixed ring of 256 slots with two indices, lock-free: the owning M pushes at `tail` and pops
//! at `head`; any other M may *steal* half of it by copying a window and moving `head` past it
//! with one CAS. Only never-run goroutines go here, so any of them may move to the thief (the
//! migration rule); goroutines that have run wait in their P's `ready` queue instead.
//!
//! ```text
//!   head (CAS by owner pop and by thieves)          tail (stored by the owner only)
//!     v                                               v
//!   [ . . . g1 g2 g3 g4 g5 . . . . . . . . . . . . . ]   256 slots, indices wrap (u32)
//! ```
//!
//! Protocol (Go's `runqput`/`runqget`/`runqgrab`):
//! - push (owner): read `head` (Acquire: pairs with the Release CAS of pop/steal, so slots they
//!   took are free), write the slot, then store `tail + 1` with Release (publishes the slot).
//! - pop (owner): read `head`, `tail`; read the slot at `head`; CAS `head` to `head + 1`
//!   (Release). A thief's CAS may win first; then retry.
//! - steal (thief): read `head` (Acquire), `tail` (Acquire: pairs with push's Release, so the
//!   slots up to `tail` are written); copy half of `[head, tail)` into its own ring past its own
//!   `tail`; CAS the victim's `head` to `head + n` (AcqRel). If the CAS fails the copy is
//!   discarded and it retries; if it wins, it publishes its own `tail + n` with Release.
//!
//! Slots are atomics, so a copy that races with a push into a recycled slot reads a stale value
//! at worst, never tears, and a failed CAS discards it.

use crate::sync_prims::{AtomicPtr, AtomicU32, Ordering};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// Slots in a local queue (Go's `len(p.runq)`).
pub(crate) const CAPACITY: u32 = 256;

/// What a queue holds: a non-null pointer in a newtype (the scheduler's `GRef`), copied in and
/// out of the slots by value. The queue never dereferences it.
pub(crate) trait Item: Copy {
    /// The pointer to store in a slot.
    fn into_raw(self) -> NonNull<()>;
    /// The item back from a pointer `into_raw` made.
    fn from_raw(raw: NonNull<()>) -> Self;
}

/// The ring. `head` and `tail` are shared with thieves as the protocol above says; the slots are
/// written only by the owner (push) and by a thief copying into its own ring (`steal_into`, as
/// that ring's owner).
pub(crate) struct LocalQueue<T: Item> {
    head: AtomicU32,
    tail: AtomicU32,
    slots: Box<[AtomicPtr<()>]>,
    _items: PhantomData<T>,
}

impl<T: Item> LocalQueue<T> {
    pub(crate) fn new() -> LocalQueue<T> {
        LocalQueue {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            slots: (0..CAPACITY)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            _items: PhantomData,
        }
    }

    fn slot(&self, index: u32) -> &AtomicPtr<()> {
        &self.slots[(index % CAPACITY) as usize]
    }

    /// Owner only: appends `g`, or hands it back when the ring is full.
    pub(crate) fn push(&self, g: T) -> Result<(), T> {
        // Acquire: pairs with the Release CAS in `pop`/`steal_into`: the slots they took are
        // free to overwrite.
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Relaxed);
        if tail.wrapping_sub(head) >= CAPACITY {
            return Err(g);
        }
        self.slot(tail)
            .store(g.into_raw().as_ptr(), Ordering::Relaxed);
        // Release: publishes the slot to `pop` and to thieves' Acquire loads of `tail`.
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Owner only: takes the oldest goroutine.
    pub(crate) fn pop(&self) -> Option<T> {
        loop {
            // Acquire: pairs with thieves' CAS, so a slot they moved is not taken twice.
            let head = self.head.load(Ordering::Acquire);
            let tail = self.tail.load(Ordering::Relaxed);
            if head == tail {
                return None;
            }
            let g = self.slot(head).load(Ordering::Relaxed);
            // Release: pairs with `push`'s Acquire load of `head` (the slot becomes reusable).
            if self
                .head
                .compare_exchange(
                    head,
                    head.wrapping_add(1),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return NonNull::new(g).map(T::from_raw);
            }
        }
    }

    /// Owner only: takes the older half of the queue, oldest first (Go's `runqputslow`: a full
    /// ring moves half of itself to the global queue in one batch, so that the pushes after it
    /// stay local). Claims the window with one CAS of `head`, as a thief does.
    pub(crate) fn take_older_half(&self) -> Vec<T> {
        let mut batch = Vec::new();
        let taken = self.claim_window(
            |available| available / 2,
            |head, take| {
                batch.clear();
                batch.extend(
                    (0..take).map(|i| self.slot(head.wrapping_add(i)).load(Ordering::Relaxed)),
                );
                true
            },
        );
        // A copy from a lost CAS may be left over when the retry found nothing to take.
        batch.truncate(taken as usize);
        batch
            .into_iter()
            .filter_map(|g| NonNull::new(g).map(T::from_raw))
            .collect()
    }

    /// Claims `[head, head + n)` with one CAS of `head` (the owner's batch move and thieves'
    /// steals), where `n = how_many(queued)`; `copy(head, n)` copies the window out first and
    /// may refuse it. After a failed CAS it tries again, so the caller must use only the last
    /// copy, and only when the result is not 0. Returns `n`, or 0 when there was nothing to
    /// take or `copy` refused.
    fn claim_window(
        &self,
        how_many: impl Fn(u32) -> u32,
        mut copy: impl FnMut(u32, u32) -> bool,
    ) -> u32 {
        loop {
            let head = self.head.load(Ordering::Acquire);
            // Acquire: pairs with the owner's Release store of `tail`: slots below are written.
            let tail = self.tail.load(Ordering::Acquire);
            let available = tail.wrapping_sub(head);
            if available > CAPACITY {
                continue; // read `head` and `tail` at different moments: look again
            }
            let take = how_many(available);
            if take == 0 || !copy(head, take) {
                return 0;
            }
            // AcqRel: claims the window against the owner's pop and other thieves, and frees its
            // slots for `push`.
            if self
                .head
                .compare_exchange(
                    head,
                    head.wrapping_add(take),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return take;
            }
        }
    }

    /// Owner only: the goroutine `pop` would take now (a thief may take it first).
    pub(crate) fn peek(&self) -> Option<T> {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Relaxed);
        if head == tail {
            return None;
        }
        NonNull::new(self.slot(head).load(Ordering::Relaxed)).map(T::from_raw)
    }

    /// Thief: moves half of `self`'s goroutines into `into` (the thief's own, empty-enough
    /// queue) and returns one of them to run now.
    pub(crate) fn steal_into(&self, into: &LocalQueue<T>) -> Option<T> {
        let into_tail = into.tail.load(Ordering::Relaxed);
        let take = self.claim_window(
            |available| available - available / 2,
            |head, take| {
                let into_head = into.head.load(Ordering::Acquire);
                if into_tail.wrapping_sub(into_head).wrapping_add(take) > CAPACITY {
                    return false; // our own ring cannot take them (not when we are idle)
                }
                for i in 0..take {
                    let g = self.slot(head.wrapping_add(i)).load(Ordering::Relaxed);
                    into.slot(into_tail.wrapping_add(i))
                        .store(g, Ordering::Relaxed);
                }
                true
            },
        );
        if take == 0 {
            return None;
        }
        // Keep the last one to run now; publish the rest.
        let last = into
            .slot(into_tail.wrapping_add(take - 1))
            .load(Ordering::Relaxed);
        // Release: as in `push`.
        into.tail
            .store(into_tail.wrapping_add(take - 1), Ordering::Release);
        NonNull::new(last).map(T::from_raw)
    }

    /// Goroutines queued now (racy when read by another M).
    pub(crate) fn len(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(CAPACITY) as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The stand-in the tests queue: an address, never dereferenced.
#[cfg(test)]
mod fake_item {
    use super::Item;
    use core::ptr::NonNull;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct Fake(NonNull<u8>);

    // SAFETY: a `Fake` is never dereferenced; it is only an address moved between threads.
    unsafe impl Send for Fake {}
    // SAFETY: as above.
    unsafe impl Sync for Fake {}

    impl Fake {
        pub(super) fn as_ptr(self) -> *mut u8 {
            self.0.as_ptr()
        }
    }

    impl Item for Fake {
        fn into_raw(self) -> NonNull<()> {
            self.0.cast()
        }
        fn from_raw(raw: NonNull<()>) -> Fake {
            Fake(raw.cast())
        }
    }

    /// A stand-in goroutine: never dereferenced, the queue only moves pointers.
    pub(super) fn fake(i: usize) -> Fake {
        Fake(NonNull::new((0x1000 * (i + 1)) as *mut u8).unwrap())
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Every interleaving of an owner pushing and popping while a thief steals: each goroutine
    //! comes out exactly once. `RUSTFLAGS="--cfg loom" cargo test -p goro-sched --lib loom`.

    use super::fake_item::{Fake, fake};
    use super::*;

    use loom::sync::Arc;

    /// A thief that steals once from `victim` and runs what it took.
    fn spawn_thief(
        victim: Arc<LocalQueue<Fake>>,
        thief_queue: Arc<LocalQueue<Fake>>,
    ) -> loom::thread::JoinHandle<Vec<usize>> {
        loom::thread::spawn(move || {
            let mut got = Vec::new();
            if let Some(g) = victim.steal_into(&thief_queue) {
                got.push(g.as_ptr() as usize);
            }
            while let Some(g) = thief_queue.pop() {
                got.push(g.as_ptr() as usize);
            }
            got
        })
    }

    /// Between them, the owner and the thief took each of goroutines `0..n` exactly once.
    fn assert_each_once(mine: Vec<usize>, theirs: Vec<usize>, n: usize) {
        let mut all: Vec<usize> = mine.into_iter().chain(theirs).collect();
        all.sort_unstable();
        let expected: Vec<usize> = (0..n).map(|i| fake(i).as_ptr() as usize).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn push_pop_and_steal_lose_and_duplicate_nothing() {
        loom::model(|| {
            let victim = Arc::new(LocalQueue::new());
            let thief_queue = Arc::new(LocalQueue::new());
            for i in 0..3 {
                victim.push(fake(i)).unwrap();
            }
            let thief = spawn_thief(victim.clone(), thief_queue.clone());
            let mut mine = Vec::new();
            victim.push(fake(3)).unwrap();
            while let Some(g) = victim.pop() {
                mine.push(g.as_ptr() as usize);
            }
            assert_each_once(mine, thief.join().unwrap(), 4);
        });
    }

    #[test]
    fn taking_half_while_a_thief_steals_loses_and_duplicates_nothing() {
        // With 2 queued, a thief that wins the race leaves too few to take again: the owner's
        // retry takes nothing and must not return its first, lost copy.
        for queued in [2, 4] {
            loom::model(move || {
                let victim = Arc::new(LocalQueue::new());
                let thief_queue = Arc::new(LocalQueue::new());
                for i in 0..queued {
                    victim.push(fake(i)).unwrap();
                }
                let thief = spawn_thief(victim.clone(), thief_queue.clone());
                let mut mine: Vec<usize> = victim
                    .take_older_half()
                    .into_iter()
                    .map(|g| g.as_ptr() as usize)
                    .collect();
                while let Some(g) = victim.pop() {
                    mine.push(g.as_ptr() as usize);
                }
                assert_each_once(mine, thief.join().unwrap(), queued);
            });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::fake_item::{Fake, fake};
    use super::*;

    #[test]
    fn fifo_and_overflow() {
        let q = LocalQueue::new();
        for i in 0..CAPACITY as usize {
            q.push(fake(i)).unwrap();
        }
        assert!(
            q.push(fake(999)).is_err(),
            "a full ring hands the goroutine back"
        );
        assert_eq!(q.len(), CAPACITY as usize);
        for i in 0..CAPACITY as usize {
            assert_eq!(q.pop().unwrap().as_ptr(), fake(i).as_ptr());
        }
        assert!(q.pop().is_none());
    }

    #[test]
    fn taking_the_older_half_leaves_the_newer_half_in_order() {
        let q = LocalQueue::new();
        for i in 0..CAPACITY as usize {
            q.push(fake(i)).unwrap();
        }
        let older: Vec<usize> = q
            .take_older_half()
            .into_iter()
            .map(|g| g.as_ptr() as usize)
            .collect();
        let expected: Vec<usize> = (0..128).map(|i| fake(i).as_ptr() as usize).collect();
        assert_eq!(older, expected);
        assert_eq!(q.len(), 128);
        q.push(fake(999)).unwrap();
        assert_eq!(q.pop().unwrap().as_ptr(), fake(128).as_ptr());
    }

    #[test]
    fn steal_takes_half() {
        let victim = LocalQueue::new();
        let thief = LocalQueue::new();
        for i in 0..10 {
            victim.push(fake(i)).unwrap();
        }
        let first = victim.steal_into(&thief).unwrap();
        assert_eq!(first.as_ptr(), fake(4).as_ptr());
        assert_eq!((victim.len(), thief.len()), (5, 4));
        assert_eq!(victim.pop().unwrap().as_ptr(), fake(5).as_ptr());
        assert_eq!(thief.pop().unwrap().as_ptr(), fake(0).as_ptr());
    }

    #[test]
    fn concurrent_steals_lose_nothing() {
        let victim = std::sync::Arc::new(LocalQueue::<Fake>::new());
        let total = 100_000usize;
        let thieves: Vec<_> = (0..2)
            .map(|_| {
                let victim = victim.clone();
                std::thread::spawn(move || {
                    let mine = LocalQueue::new();
                    let mut got = Vec::new();
                    let start = std::time::Instant::now();
                    while start.elapsed() < std::time::Duration::from_millis(300) {
                        if let Some(g) = victim.steal_into(&mine) {
                            got.push(g.as_ptr() as usize);
                        }
                        while let Some(g) = mine.pop() {
                            got.push(g.as_ptr() as usize);
                        }
                    }
                    got
                })
            })
            .collect();
        let mut mine = Vec::new();
        let mut next = 0;
        while next < total {
            while next < total && victim.push(fake(next)).is_ok() {
                next += 1;
            }
            if let Some(g) = victim.pop() {
                mine.push(g.as_ptr() as usize);
            }
        }
        while let Some(g) = victim.pop() {
            mine.push(g.as_ptr() as usize);
        }
        let mut all = mine;
        for t in thieves {
            all.extend(t.join().unwrap());
        }
        all.sort_unstable();
        let expected: Vec<usize> = (0..total).map(|i| fake(i).as_ptr() as usize).collect();
        assert_eq!(all.len(), expected.len(), "lost or duplicated goroutines");
        assert_eq!(all, expected);
    }
}
