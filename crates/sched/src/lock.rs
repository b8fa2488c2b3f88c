//! The runtime's locks and thread sleeps (Go's `lock_futex.go`: mutexes and notes): [`lock`] for
//! std mutexes, `RawLock` for channels, `ThreadParker` for an OS thread that sleeps until woken.
//! This file imports nothing of the scheduler; everything else may use it.
//!
//! **`_locked` names.** A function or method whose name ends in `_locked` may be called only
//! while the caller holds the lock it names (Go's `fooLocked`); where the type system can carry
//! it, the guard (or the `&mut` it derefs to) is a parameter, so the call cannot be written
//! without the lock (tokio's `push(&self, synced: &mut Synced)`). A function that takes the lock
//! itself has no suffix.
//!
//! **Ranks.** Every lock here has a [`Rank`], its place in the lock order of `docs/HACKING.md`
//! (Go's `lockrank.go`): [`RankedMutex`] carries one, `RawLock` is always `Rank::Chan`, a
//! `ThreadParker` is `Rank::ThreadParker`. In debug builds each thread records the ranks it holds
//! (a fixed array in a thread-local: these locks are taken where the runtime must not allocate)
//! and taking a lock out of order panics with both names; release builds keep neither the rank
//! field nor the record, so a `RankedMutex` is a std mutex and its guard is std's.
//!
//! **`RawLock`**: a futex lock with explicit `lock`/`unlock`, for the channel lock.
//!
//! Channels need a lock that `select` can take for several channels at once (in address order,
//! as Go's `sellock` does) and release from g0 after the goroutine has parked, with no guard
//! object tying the unlock to a scope. States: 0 unlocked, 1 locked, 2 locked with waiters.
//! Lock: CAS 0 -> 1, else spin a little, else swap in 2 and futex-wait while it stays 2.
//! Unlock: swap in 0; if it was 2, wake one waiter (Drepper's "Futexes Are Tricky", mutex 2).
//! Holders never park a goroutine while holding it; hold times are a few dozen instructions.

use crate::sync_prims::{Condvar, Mutex};
use goro_alloc::{futex_wait, futex_wake};
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicU32, Ordering};

/// Locks a runtime mutex; a poisoned lock is still usable (no runtime code panics while holding
/// one, and the data is always consistent between statements). Debug builds check its rank first.
pub(crate) fn lock<T>(mutex: &RankedMutex<T>) -> RankedGuard<'_, T> {
    let held = HeldRank::acquire(mutex.rank(), std::ptr::from_ref(mutex) as usize);
    let inner = mutex.inner.lock().unwrap_or_else(|p| p.into_inner());
    RankedGuard { inner, held }
}

/// A runtime lock's place in the lock order (Go's `lockRank`, `lockrank.go`), outermost first:
/// a thread may take a lock only if its rank comes after the rank of every lock it holds. Debug
/// builds check this on every acquisition ([`RankedMutex`], `RawLock`, `ThreadParker`) and panic
/// with both names ("lock order: taking allg while holding pidle"); release builds keep no record.
///
/// Beyond the order, the check knows (see `rank_check`):
/// - Two ranks nest with themselves, in address order: `Chan` (`select` locks its channels sorted
///   by address, as Go's `sellock`) and `Allg` (`RootsLock::new` and `abandoned_roots` lock every
///   list in index order, which is address order in the boxed slice).
/// - The leaves (`StwLock` and below) are taken with no other lock held but `Run` (held by the
///   thread in `run` for the whole run, which is M0) and nothing is taken under them. One
///   exception: `StwLock` may be taken under object locks (`Chan` to `TimerHeap`), as g0 takes it
///   in `proc::execute` (`stw::notify`) after a goroutine parked and before it releases the
///   parked goroutine's lock.
/// - The object ranks (`Chan` to `TimerHeap`) are one level: none is taken under another of a
///   different kind (a goroutine parks holding one kind). Their order among themselves is only
///   the order of the enum.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Rank {
    /// `start::RUN_LOCK`: one runtime per process, held for the whole `run`.
    Run,
    /// A channel's `RawLock`.
    Chan,
    /// The queues of `WaitGroup`, `Mutex`, `RwLock` and `Once`.
    SyncQueue,
    /// A `JoinHandle`'s packet.
    JoinPacket,
    /// A P's timer heap (`sleep` holds it across `timer_added` and its park).
    TimerHeap,
    /// `Sched::allg[i]`.
    Allg,
    /// `Sched::pidle`.
    Pidle,
    /// `M::ready`.
    Ready,
    /// `Sched::global`.
    Global,
    /// `Sched::gfree`.
    Gfree,
    /// `ThreadParker::notified`: every unpark takes it.
    ThreadParker,
    /// Leaf: `Sched::stw_lock` (only with its condvar).
    StwLock,
    /// Leaf: `Sched::sysmon_lock` (only with its condvar).
    SysmonLock,
    /// Leaf: `Sched::threads` (held across spawning an M's thread).
    Threads,
    /// Leaf: `deadlock::RUNTIME_THREADS`.
    RuntimeThreads,
}

/// The rank check (debug builds; not under loom, whose threads share one OS thread's
/// thread-locals). Per OS thread, the ranks held, as groups of one rank each in increasing rank
/// order, so a fixed array of one slot per rank always suffices: no allocation, as these locks
/// are taken where the runtime must not allocate.
///
/// A lock is released on the thread that took it: guards are `!Send`, and the paths that
/// release elsewhere than where they were taken (`park_goroutine` hands the guard to g0;
/// `RawLock::unlock` of a parked goroutine's channels runs on g0) stay on the same OS thread, as
/// g0 and the goroutine it switched out share it.
#[cfg(all(debug_assertions, not(loom)))]
mod rank_check {
    use super::Rank;
    use std::cell::RefCell;

    const RANKS: usize = Rank::RuntimeThreads as usize + 1;

    /// Some held locks of one rank.
    #[derive(Clone, Copy)]
    struct Group {
        rank: Rank,
        /// The address of the last one taken: the next one of a rank that nests must be above
        /// it. Kept when an earlier one is released (conservative: a rank that nests is only
        /// released all together, before it is taken again).
        last: usize,
        count: usize,
    }

    struct Held {
        groups: [Group; RANKS],
        len: usize,
    }

    thread_local! {
        static HELD: RefCell<Held> = const {
            RefCell::new(Held {
                groups: [Group { rank: Rank::Run, last: 0, count: 0 }; RANKS],
                len: 0,
            })
        };
    }

    impl Rank {
        fn name(self) -> &'static str {
            match self {
                Rank::Run => "RUN_LOCK",
                Rank::Chan => "chan",
                Rank::SyncQueue => "sync queue",
                Rank::JoinPacket => "join packet",
                Rank::TimerHeap => "timer heap",
                Rank::Allg => "allg",
                Rank::Pidle => "pidle",
                Rank::Ready => "ready",
                Rank::Global => "global",
                Rank::Gfree => "gfree",
                Rank::ThreadParker => "thread parker",
                Rank::StwLock => "stw_lock",
                Rank::SysmonLock => "sysmon_lock",
                Rank::Threads => "threads",
                Rank::RuntimeThreads => "RUNTIME_THREADS",
            }
        }

        /// Several may be held at once, taken in increasing address order.
        fn nests_in_address_order(self) -> bool {
            matches!(self, Rank::Chan | Rank::Allg)
        }

        /// One of the object locks, which are not nested with one another.
        fn is_object(self) -> bool {
            (Rank::Chan..=Rank::TimerHeap).contains(&self)
        }

        fn is_leaf(self) -> bool {
            self >= Rank::StwLock
        }

        /// Whether this leaf may be taken while `held` is the innermost rank held.
        fn may_be_taken_under(self, held: Rank) -> bool {
            // g0 notifies a stop's initiator (`stw::notify` in `proc::execute`) after switching
            // out a goroutine that parks and before it runs the park's unlock, so under the
            // parked goroutine's object lock(s). No deadlock: nothing waits for an object lock
            // while holding `stw_lock`.
            held == Rank::Run || (self == Rank::StwLock && held <= Rank::TimerHeap)
        }
    }

    /// Records that this thread takes a lock of `rank` at `addr` (before blocking on it).
    pub(super) fn acquire(rank: Rank, addr: usize) {
        let violation = HELD.with_borrow_mut(|held| {
            let Some(top) = held.len.checked_sub(1).map(|i| &mut held.groups[i]) else {
                held.groups[0] = Group {
                    rank,
                    last: addr,
                    count: 1,
                };
                held.len = 1;
                return None;
            };
            if rank.is_leaf() && !rank.may_be_taken_under(top.rank) {
                return Some((top.rank, ""));
            }
            if top.rank > rank || (rank.is_object() && top.rank.is_object() && top.rank != rank) {
                return Some((top.rank, ""));
            }
            if top.rank == rank {
                if !rank.nests_in_address_order() {
                    return Some((top.rank, ""));
                }
                if addr <= top.last {
                    return Some((top.rank, " (not in address order)"));
                }
                top.last = addr;
                top.count += 1;
                return None;
            }
            held.groups[held.len] = Group {
                rank,
                last: addr,
                count: 1,
            };
            held.len += 1;
            None
        });
        if let Some((holding, detail)) = violation {
            panic!(
                "lock order: taking {} while holding {}{detail}",
                rank.name(),
                holding.name()
            );
        }
    }

    /// Records that this thread released a lock of `rank`.
    pub(super) fn release(rank: Rank) {
        let held_it = HELD.with_borrow_mut(|held| {
            let Some(i) = held.groups[..held.len].iter().rposition(|g| g.rank == rank) else {
                return false;
            };
            held.groups[i].count -= 1;
            if held.groups[i].count == 0 {
                held.groups.copy_within(i + 1..held.len, i);
                held.len -= 1;
            }
            true
        });
        assert!(
            held_it,
            "lock order: releasing {}, which this thread does not hold",
            rank.name()
        );
    }
}

/// Checks and records that this thread takes a lock of `rank` at `addr`; nothing in release
/// builds.
#[inline(always)]
fn note_acquire(rank: Rank, addr: usize) {
    #[cfg(all(debug_assertions, not(loom)))]
    rank_check::acquire(rank, addr);
    #[cfg(not(all(debug_assertions, not(loom))))]
    let _ = (rank, addr);
}

/// Records that this thread released a lock of `rank`; nothing in release builds.
#[inline(always)]
fn note_release(rank: Rank) {
    #[cfg(all(debug_assertions, not(loom)))]
    rank_check::release(rank);
    #[cfg(not(all(debug_assertions, not(loom))))]
    let _ = rank;
}

/// The record that a lock of some rank is held, removed when dropped; zero-sized in release
/// builds.
struct HeldRank {
    #[cfg(all(debug_assertions, not(loom)))]
    rank: Rank,
}

impl HeldRank {
    /// Checks and records that this thread takes the lock of `rank` at `addr`.
    #[inline]
    fn acquire(rank: Rank, addr: usize) -> HeldRank {
        note_acquire(rank, addr);
        HeldRank {
            #[cfg(all(debug_assertions, not(loom)))]
            rank,
        }
    }
}

#[cfg(all(debug_assertions, not(loom)))]
impl Drop for HeldRank {
    fn drop(&mut self) {
        note_release(self.rank);
    }
}

/// A std mutex with a [`Rank`] (Go's `lockInit(&l, rank)`); in release builds, only the mutex.
pub(crate) struct RankedMutex<T> {
    inner: std::sync::Mutex<T>,
    #[cfg(all(debug_assertions, not(loom)))]
    rank: Rank,
}

impl<T> RankedMutex<T> {
    pub(crate) const fn new(rank: Rank, value: T) -> RankedMutex<T> {
        #[cfg(not(all(debug_assertions, not(loom))))]
        let _ = rank;
        RankedMutex {
            inner: std::sync::Mutex::new(value),
            #[cfg(all(debug_assertions, not(loom)))]
            rank,
        }
    }

    #[inline]
    fn rank(&self) -> Rank {
        #[cfg(all(debug_assertions, not(loom)))]
        return self.rank;
        #[cfg(not(all(debug_assertions, not(loom))))]
        Rank::Run // unused: `HeldRank::acquire` ignores it
    }
}

// Release builds: a ranked mutex and its guard are std's, no bigger (the zero cost of the check).
#[cfg(not(debug_assertions))]
const _: () = {
    assert!(size_of::<RankedMutex<u64>>() == size_of::<std::sync::Mutex<u64>>());
    assert!(size_of::<RankedGuard<'static, u64>>() == size_of::<MutexGuard<'static, u64>>());
    assert!(size_of::<HeldRank>() == 0);
};

/// A held [`RankedMutex`]. `!Send` (as std's guard): it is released on the thread that took it.
pub(crate) struct RankedGuard<'a, T> {
    // Declared first so it is dropped first: the mutex is unlocked, then the record removed.
    inner: MutexGuard<'a, T>,
    held: HeldRank,
}

/// Runs `wait`, a condition-variable wait, with the thread published as parked, so that a
/// collection counts it as stopped without signalling it (goro-alloc's `parked`).
#[inline]
fn asleep<R>(wait: impl FnOnce() -> R) -> R {
    #[cfg(not(loom))]
    // SAFETY: every caller passes a condition-variable wait: it only sleeps and takes its mutex
    // back; it neither allocates, nor moves anything the collector reads, nor unwinds (poison is
    // an `Err`).
    return unsafe { goro_alloc::parked::while_parked(wait) };
    #[cfg(loom)]
    wait()
}

impl<'a, T> RankedGuard<'a, T> {
    /// `Condvar::wait`: the record stays while the thread sleeps (it takes nothing meanwhile).
    pub(crate) fn wait(self, condvar: &std::sync::Condvar) -> RankedGuard<'a, T> {
        let RankedGuard { inner, held } = self;
        let inner = asleep(|| condvar.wait(inner)).unwrap_or_else(|p| p.into_inner());
        RankedGuard { inner, held }
    }

    /// `Condvar::wait_timeout`, as [`RankedGuard::wait`].
    pub(crate) fn wait_timeout(
        self,
        condvar: &std::sync::Condvar,
        timeout: std::time::Duration,
    ) -> RankedGuard<'a, T> {
        let RankedGuard { inner, held } = self;
        let (inner, _) =
            asleep(|| condvar.wait_timeout(inner, timeout)).unwrap_or_else(|p| p.into_inner());
        RankedGuard { inner, held }
    }
}

impl<T> std::ops::Deref for RankedGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for RankedGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// A mutual-exclusion lock without a guard.
#[derive(Default)]
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    pub(crate) const fn new() -> RawLock {
        RawLock {
            state: AtomicU32::new(UNLOCKED),
        }
    }

    /// Acquires the lock. Acquire: pairs with the Release in `unlock`.
    #[inline]
    pub(crate) fn lock(&self) {
        self.lock_in_order(std::ptr::from_ref(self) as usize);
    }

    /// Acquires the lock, one of several that the caller takes in increasing `key` order (`select`
    /// sorts its channels by their address). `key` matters only to the debug rank check.
    #[inline]
    pub(crate) fn lock_in_order(&self, key: usize) {
        note_acquire(Rank::Chan, key);
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..100 {
            std::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED, None);
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// May be called only by the holder of the lock (any thread: g0 releases what its goroutine
    /// took, on the same thread in practice).
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        note_release(Rank::Chan);
        // Release: pairs with the Acquire in `lock`.
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state, 1);
        }
    }
}

/// A sleeping OS thread with a wake-up token.
#[derive(Default)]
pub(crate) struct ThreadParker {
    notified: Mutex<bool>,
    condvar: Condvar,
}

impl ThreadParker {
    /// Checks and records the rank of `notified`, which the caller takes next (and releases
    /// before the record is dropped).
    #[inline]
    fn held(&self) -> HeldRank {
        HeldRank::acquire(
            Rank::ThreadParker,
            std::ptr::from_ref(&self.notified) as usize,
        )
    }

    pub(crate) fn park(&self) {
        let _held = self.held();
        let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        while !*notified {
            notified = asleep(|| self.condvar.wait(notified)).unwrap_or_else(|p| p.into_inner());
        }
        *notified = false;
    }

    /// Sleeps until unparked or until `timeout` has passed.
    pub(crate) fn park_timeout(&self, timeout: std::time::Duration) {
        let _held = self.held();
        let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        if !*notified {
            notified = asleep(|| self.condvar.wait_timeout(notified, timeout))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *notified = false;
    }

    pub(crate) fn unpark(&self) {
        let _held = self.held();
        let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        *notified = true;
        self.condvar.notify_one();
    }
}

#[cfg(all(test, debug_assertions, not(loom)))]
mod rank_tests {
    //! The debug rank check. Each test runs on its own thread, so starts holding nothing.

    use super::{Rank, RankedMutex, RawLock, lock};
    use std::time::Duration;

    #[test]
    #[should_panic(expected = "lock order: taking allg while holding pidle")]
    fn taking_an_outer_lock_while_holding_an_inner_one_panics_naming_both() {
        let pidle = RankedMutex::new(Rank::Pidle, ());
        let allg = RankedMutex::new(Rank::Allg, ());
        let _pidle = lock(&pidle);
        let _allg = lock(&allg);
    }

    #[test]
    fn locks_taken_in_rank_order_may_be_released_in_any_order() {
        let allg = RankedMutex::new(Rank::Allg, ());
        let pidle = RankedMutex::new(Rank::Pidle, ());
        let global = RankedMutex::new(Rank::Global, ());
        for _ in 0..3 {
            let a = lock(&allg);
            let p = lock(&pidle);
            let g = lock(&global);
            drop(a);
            drop(g);
            drop(p);
        }
    }

    #[test]
    #[should_panic(expected = "lock order: taking pidle while holding pidle")]
    fn a_rank_that_does_not_nest_panics_when_taken_twice() {
        let one = RankedMutex::new(Rank::Pidle, ());
        let two = RankedMutex::new(Rank::Pidle, ());
        let _one = lock(&one);
        let _two = lock(&two);
    }

    #[test]
    fn allg_lists_nest_in_index_order() {
        let lists: Box<[RankedMutex<()>]> =
            (0..40).map(|_| RankedMutex::new(Rank::Allg, ())).collect();
        for _ in 0..2 {
            let guards: Vec<_> = lists.iter().map(lock).collect();
            drop(guards);
        }
    }

    #[test]
    #[should_panic(expected = "lock order: taking allg while holding allg (not in address order)")]
    fn allg_lists_out_of_index_order_panic() {
        let lists: Box<[RankedMutex<()>]> =
            (0..2).map(|_| RankedMutex::new(Rank::Allg, ())).collect();
        let _second = lock(&lists[1]);
        let _first = lock(&lists[0]);
    }

    #[test]
    fn channel_locks_nest_in_key_order_and_unlock_in_reverse() {
        let chans = [RawLock::new(), RawLock::new(), RawLock::new()];
        for _ in 0..2 {
            chans[1].lock_in_order(10);
            chans[0].lock_in_order(20);
            chans[2].lock_in_order(30);
            for chan in chans.iter().rev() {
                // SAFETY: this thread took every one of them just above.
                unsafe { chan.unlock() };
            }
        }
    }

    #[test]
    #[should_panic(expected = "lock order: taking chan while holding chan (not in address order)")]
    fn channel_locks_out_of_key_order_panic() {
        let chans = [RawLock::new(), RawLock::new()];
        chans[0].lock_in_order(20);
        chans[1].lock_in_order(10);
    }

    #[test]
    #[should_panic(expected = "lock order: taking stw_lock while holding global")]
    fn a_leaf_taken_under_another_lock_panics() {
        let global = RankedMutex::new(Rank::Global, ());
        let stw = RankedMutex::new(Rank::StwLock, ());
        let _global = lock(&global);
        let _stw = lock(&stw);
    }

    #[test]
    #[should_panic(expected = "lock order: taking global while holding sysmon_lock")]
    fn nothing_is_taken_under_a_leaf() {
        let sysmon = RankedMutex::new(Rank::SysmonLock, ());
        let global = RankedMutex::new(Rank::Global, ());
        let _sysmon = lock(&sysmon);
        let _global = lock(&global);
    }

    #[test]
    fn stw_lock_may_be_taken_under_a_parked_goroutines_object_lock() {
        let chans = [RawLock::new(), RawLock::new()];
        let stw = RankedMutex::new(Rank::StwLock, ());
        chans[0].lock_in_order(1);
        chans[1].lock_in_order(2);
        drop(lock(&stw));
        for chan in &chans {
            // SAFETY: this thread took both just above.
            unsafe { chan.unlock() };
        }
    }

    #[test]
    #[should_panic(expected = "lock order: taking sysmon_lock while holding chan")]
    fn other_leaves_may_not_be_taken_under_an_object_lock() {
        let chan = RawLock::new();
        let sysmon = RankedMutex::new(Rank::SysmonLock, ());
        chan.lock();
        drop(lock(&sysmon));
    }

    #[test]
    #[should_panic(expected = "lock order: taking timer heap while holding chan")]
    fn object_locks_of_two_kinds_are_not_nested() {
        let chan = RawLock::new();
        let timers = RankedMutex::new(Rank::TimerHeap, ());
        chan.lock();
        drop(lock(&timers));
    }

    #[test]
    fn a_leaf_may_be_taken_under_run_lock() {
        let run = RankedMutex::new(Rank::Run, ());
        let threads = RankedMutex::new(Rank::Threads, ());
        let _run = lock(&run);
        drop(lock(&threads));
    }

    #[test]
    fn a_condvar_wait_keeps_the_lock_recorded_until_the_guard_drops() {
        let stw = RankedMutex::new(Rank::StwLock, ());
        let cv = std::sync::Condvar::new();
        let guard = lock(&stw).wait_timeout(&cv, Duration::from_millis(1));
        let nested = std::panic::catch_unwind(|| {
            drop(lock(&RankedMutex::new(Rank::Global, ())));
        });
        assert!(
            nested.is_err(),
            "a lock taken under a leaf after a wait must panic"
        );
        drop(guard);
        drop(lock(&RankedMutex::new(Rank::Global, ())));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The idle-M protocol of `proc::find_runnable` (see `proc`'s essay) with the real `ThreadParker`: the M stores
    //! `idle = true` (SeqCst), re-checks the queue, parks; a waker pushes work, then swaps `idle`
    //! to false (SeqCst) and unparks if it was set. Every interleaving must end with the work
    //! taken: no lost wake-up. `RUSTFLAGS="--cfg loom" cargo test -p goro-sched --lib loom`.

    use super::ThreadParker;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::sync::{Arc, Mutex};

    struct M {
        idle: AtomicBool,
        parker: ThreadParker,
        queue: Mutex<Vec<u32>>,
    }

    #[test]
    fn an_idle_m_never_misses_work() {
        loom::model(|| {
            let m = Arc::new(M {
                idle: AtomicBool::new(false),
                parker: ThreadParker::default(),
                queue: Mutex::new(Vec::new()),
            });
            let waker = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    m.queue.lock().unwrap().push(7);
                    if m.idle.swap(false, Ordering::SeqCst) {
                        m.parker.unpark();
                    }
                })
            };
            // The M: look, go idle, look again, sleep, look after waking.
            let mut got = m.queue.lock().unwrap().pop();
            if got.is_none() {
                m.idle.store(true, Ordering::SeqCst);
                got = m.queue.lock().unwrap().pop();
                if got.is_some() {
                    m.idle.store(false, Ordering::SeqCst);
                } else {
                    m.parker.park();
                    m.idle.store(false, Ordering::SeqCst);
                    got = m.queue.lock().unwrap().pop();
                }
            }
            waker.join().unwrap();
            assert_eq!(got, Some(7));
        });
    }
}
