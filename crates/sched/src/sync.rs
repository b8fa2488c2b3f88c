//! Synchronisation that parks goroutines, never OS threads: `WaitGroup`, `Mutex`, `RwLock`,
//! `Once` (Go's `sync` package).
//!
//! Each primitive keeps its waiters in a queue of records on the waiters' own stacks, under a
//! short internal lock that is released by g0 once the goroutine has parked (see `park`). A
//! waiter is woken once, by the party that dequeues its record; where ownership is handed over
//! (a starving `Mutex`, every `RwLock` grant) the record says so and the woken party does not
//! compete again.

use crate::lock::{Rank, RankedGuard, RankedMutex, lock};
use crate::park::{Waiter, park, park_releasable, wait_space};
use crate::stw;
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Waits for a collection of goroutines to finish (Go's `sync.WaitGroup`).
///
/// ```text
/// let wg = Arc::new(WaitGroup::new());
/// for _ in 0..10 {
///     wg.add(1);
///     let wg = wg.clone();
///     goro::go(move || { /* work */ wg.done(); });
/// }
/// wg.wait();
/// ```
pub struct WaitGroup {
    /// The counter. Changed without a lock; only a change to zero takes `waiters`' lock.
    counter: AtomicI64,
    /// Goroutines (or threads) in `wait`. A waiter reads the counter under this lock, and a
    /// change to zero takes it before waking, so no wake-up falls between the two.
    waiters: RankedMutex<Vec<Waiter>>,
}

impl WaitGroup {
    /// A wait group with a zero counter.
    pub const fn new() -> WaitGroup {
        WaitGroup {
            counter: AtomicI64::new(0),
            waiters: RankedMutex::new(Rank::SyncQueue, Vec::new()),
        }
    }

    /// Adds `delta` (which may be negative) to the counter; at zero, every waiter wakes.
    ///
    /// # Panics
    /// Panics with Go's message "sync: negative WaitGroup counter" if the counter drops below 0.
    #[track_caller]
    pub fn add(&self, delta: i64) {
        // SeqCst: the counter's changes and `wait`'s read under the lock form one order.
        let now = self.counter.fetch_add(delta, Ordering::SeqCst) + delta;
        if now < 0 {
            self.counter.fetch_sub(delta, Ordering::SeqCst);
            panic!("sync: negative WaitGroup counter");
        }
        if now == 0 && delta != 0 {
            let waiters = std::mem::take(&mut *lock(&self.waiters));
            for waiter in waiters {
                waiter.wake();
            }
        }
    }

    /// Decrements the counter by one.
    #[track_caller]
    pub fn done(&self) {
        self.add(-1);
    }

    /// Blocks until the counter is zero. This is a safe point.
    pub fn wait(&self) {
        stw::safe_point();
        loop {
            if self.counter.load(Ordering::SeqCst) == 0 {
                return;
            }
            let mut waiters = lock(&self.waiters);
            // Re-read under the lock: a change to zero after this read takes the lock after us
            // and finds us queued.
            if self.counter.load(Ordering::SeqCst) == 0 {
                return;
            }
            let waiter = Waiter::current();
            let parker = waiter.thread_parker();
            waiters.push(waiter);
            park_releasable(waiters, parker);
            // Re-check: the counter may have been raised again before we ran (Go's WaitGroup
            // forbids reuse before Wait returns; we tolerate it).
        }
    }

    /// The counter now.
    pub fn count(&self) -> i64 {
        self.counter.load(Ordering::SeqCst)
    }
}

impl Default for WaitGroup {
    fn default() -> Self {
        WaitGroup::new()
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup")
            .field("counter", &self.count())
            .finish()
    }
}

/// A queued waiter: in the waiting goroutine's G, or on a waiting thread's stack.
struct WaitRecord {
    waiter: UnsafeCell<Option<Waiter>>,
    since: Instant,
    /// Set by the waker when it handed the lock (or a read/write grant) to this waiter.
    granted: UnsafeCell<bool>,
}

/// A pointer to a `WaitRecord` in a queue (only touched under the queue's lock, or by the owner
/// after it was woken).
#[derive(Clone, Copy)]
struct RecordPtr(*const WaitRecord);

// SAFETY: records are touched only under their queue's lock, or by their owner once woken.
unsafe impl Send for RecordPtr {}

impl RecordPtr {
    /// Wakes the owner, telling it whether it was granted the lock.
    ///
    /// # Safety
    /// May be called once, under the queue's lock, on a record just removed from the queue.
    unsafe fn wake(self, granted: bool) {
        // SAFETY: the owner is parked until this wake, so the record is live and ours.
        unsafe {
            *(*self.0).granted.get() = granted;
            (*(*self.0).waiter.get())
                .take()
                .expect("a queued record has a waiter")
                .wake();
        }
    }
}

/// Queues a record for the caller on the locked `queue`, parks (g0 releases the queue lock), and
/// returns whether the waker granted the lock.
fn wait_in_queue(queue: RankedGuard<'_, VecDeque<RecordPtr>>) -> bool {
    park_with_record(queue, |queue, record| queue.push_back(record))
}

/// Makes a record for the caller, lets `enqueue` queue it in the locked state `guard`, parks (g0
/// releases the lock), and returns whether the waker granted the lock.
///
/// A goroutine's record goes in its G (so its stack memory may be released while it waits),
/// anyone else's on the stack.
fn park_with_record<Guard>(mut guard: Guard, enqueue: impl FnOnce(&mut Guard, RecordPtr)) -> bool {
    let waiter = Waiter::current();
    let parker = waiter.thread_parker();
    let mut on_stack = MaybeUninit::<WaitRecord>::uninit();
    let in_g = wait_space::<WaitRecord>();
    let slot = in_g.map_or(on_stack.as_mut_ptr(), NonNull::as_ptr);
    // SAFETY: `slot` is unused room for a record: our frame, or the G's wait space, which only
    // the operation a goroutine is blocked in uses.
    unsafe {
        slot.write(WaitRecord {
            waiter: UnsafeCell::new(Some(waiter)),
            since: Instant::now(),
            granted: UnsafeCell::new(false),
        })
    };
    enqueue(&mut guard, RecordPtr(slot));
    if in_g.is_some() {
        park_releasable(guard, parker);
    } else {
        park(guard, parker);
    }
    // SAFETY: the waker removed the record and woke us (a thread parker returns only after its
    // wake); nobody else touches it now, and we drop it once.
    unsafe {
        let granted = *(*slot).granted.get();
        slot.drop_in_place();
        granted
    }
}

const LOCKED: u32 = 1;
const WAITERS: u32 = 2;
/// A waiter that has waited this long gets the lock handed to it (Go's starvation mode).
const STARVATION: Duration = Duration::from_millis(1);

/// A mutual-exclusion lock that parks goroutines (Go's `sync.Mutex`, holding its data like
/// `std::sync::Mutex`).
///
/// Normal mode lets a goroutine that arrives while the lock is free take it even if others wait
/// (the fast path, good throughput). When the waiter at the head of the queue has waited more
/// than 1 ms, unlock hands the lock straight to it instead, so tail latency stays bounded (Go's
/// starvation mode). There is no poisoning: a panic while holding the lock unlocks it.
pub struct Mutex<T: ?Sized> {
    /// `LOCKED | WAITERS`; `WAITERS` changes only under `queue`'s lock.
    state: AtomicU32,
    queue: RankedMutex<VecDeque<RecordPtr>>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock gives one goroutine at a time access to `data` (`T: Send` moves it between
// threads); the queue is a mutex.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            state: AtomicU32::new(0),
            queue: RankedMutex::new(Rank::SyncQueue, VecDeque::new()),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the mutex, returning its data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks, parking the goroutine while another holds the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        // Acquire: pairs with the Release in `unlock`.
        if self
            .state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        MutexGuard::new(self)
    }

    /// Locks if the lock is free now.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // `then`, not `then_some`: a guard made eagerly would be dropped when the lock is not
        // taken, and its drop would unlock the holder's lock.
        let state = self.state.load(Ordering::Relaxed);
        (state & LOCKED == 0
            && self
                .state
                .compare_exchange(state, state | LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok())
        .then(|| MutexGuard::new(self))
    }

    #[cold]
    fn lock_slow(&self) {
        stw::safe_point();
        loop {
            let queue = lock(&self.queue);
            let state = self.state.load(Ordering::Relaxed);
            if state & LOCKED == 0 {
                // Acquire: as in `lock`; under the queue lock nobody else changes WAITERS.
                if self
                    .state
                    .compare_exchange(state, state | LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            // The holder's fast-path unlock (a CAS from exactly LOCKED) may have released the lock
            // since the load above: then nobody would ever wake us, so take it instead. Once
            // WAITERS is set, an unlock takes the slow path, which needs the queue lock we hold
            // until we are queued and parked.
            if self.state.fetch_or(WAITERS, Ordering::Relaxed) & LOCKED == 0 {
                continue;
            }
            if wait_in_queue(queue) {
                return; // handed over: we hold the lock
            }
        }
    }

    /// # Safety
    /// May be called only by the holder of the lock.
    unsafe fn unlock(&self) {
        // Release: pairs with the Acquire of the next locker.
        if self
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        let mut queue = lock(&self.queue);
        let Some(first) = queue.pop_front() else {
            self.state.store(0, Ordering::Release);
            return;
        };
        if queue.is_empty() {
            self.state.fetch_and(!WAITERS, Ordering::Relaxed);
        }
        // SAFETY: `first` was queued by a parked waiter and is still live.
        let starving = unsafe { (*first.0).since.elapsed() } >= STARVATION;
        if !starving {
            // Release: as above; the woken waiter competes with newcomers.
            self.state.fetch_and(!LOCKED, Ordering::Release);
        }
        // SAFETY: just removed from the queue, under its lock.
        unsafe { first.wake(starving) };
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(guard) => f.debug_struct("Mutex").field("data", &&*guard).finish(),
            None => f.write_str("Mutex { <locked> }"),
        }
    }
}

/// The lock of a [`Mutex`], held; unlocks on drop. It may be sent to and dropped on another
/// thread (the unlock does not care which); it is `Sync` only where `T` is.
/// (`tests/ui/mutex_guard_of_cell_is_not_sync.rs`.)
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    /// Makes the guard `Sync` only when `T: Sync`, as std's is: a shared `&MutexGuard` derefs
    /// to `&T` on every thread that holds it, which `Mutex<T>: Sync` (it needs only `T: Send`)
    /// does not cover. Without it a `MutexGuard<Cell<_>>` could be shared between threads.
    _derefs_to: PhantomData<&'a mut T>,
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// The guard of a lock the caller has just taken.
    fn new(mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
        MutexGuard {
            mutex,
            _derefs_to: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock.
        unsafe { self.mutex.unlock() };
    }
}

/// A reader-writer lock that parks goroutines (Go's `sync.RWMutex`, holding its data).
///
/// Writers are preferred: once a writer waits, new readers queue behind it, so writers cannot
/// starve. Grants are handed over in queue order: a writer, or every reader at the head.
pub struct RwLock<T: ?Sized> {
    state: RankedMutex<RwState>,
    data: UnsafeCell<T>,
}

#[derive(Default)]
struct RwState {
    readers: usize,
    writer: bool,
    /// Waiters in arrival order, each marked as a writer or not.
    queue: VecDeque<(bool, RecordPtr)>,
}

// SAFETY: readers share `&T` across threads (`T: Sync`), a writer gets `&mut T` (`T: Send`).
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}

impl<T> RwLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> RwLock<T> {
        RwLock {
            state: RankedMutex::new(
                Rank::SyncQueue,
                RwState {
                    readers: 0,
                    writer: false,
                    queue: VecDeque::new(),
                },
            ),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the lock, returning its data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Locks for reading, parking while a writer holds or waits for the lock.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        stw::safe_point();
        let mut state = lock(&self.state);
        if !state.writer && state.queue.is_empty() {
            state.readers += 1;
        } else {
            self.wait(state, false);
        }
        RwLockReadGuard { lock: self }
    }

    /// Locks for writing, parking while anyone holds the lock.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        stw::safe_point();
        let mut state = lock(&self.state);
        if !state.writer && state.readers == 0 && state.queue.is_empty() {
            state.writer = true;
        } else {
            self.wait(state, true);
        }
        RwLockWriteGuard { lock: self }
    }

    /// Queues and parks until a grant hands the lock over.
    fn wait(&self, state: RankedGuard<'_, RwState>, writer: bool) {
        let granted = park_with_record(state, |state, record| {
            state.queue.push_back((writer, record))
        });
        debug_assert!(granted, "RwLock waiters wake only on a grant");
    }

    /// Hands the lock to the waiters at the head: one writer, or every reader up to a writer.
    fn grant(state: &mut RwState) {
        while let Some(&(writer, record)) = state.queue.front() {
            if writer {
                if state.readers == 0 && !state.writer {
                    state.queue.pop_front();
                    state.writer = true;
                    // SAFETY: just removed, under the lock.
                    unsafe { record.wake(true) };
                }
                return;
            }
            if state.writer {
                return;
            }
            state.queue.pop_front();
            state.readers += 1;
            // SAFETY: just removed, under the lock.
            unsafe { record.wake(true) };
        }
    }

    fn read_unlock(&self) {
        let mut state = lock(&self.state);
        state.readers -= 1;
        Self::grant(&mut state);
    }

    fn write_unlock(&self) {
        let mut state = lock(&self.state);
        state.writer = false;
        Self::grant(&mut state);
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> Self {
        RwLock::new(T::default())
    }
}

impl<T: ?Sized> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock").finish_non_exhaustive()
    }
}

/// A shared lock of a [`RwLock`].
pub struct RwLockReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read grant: no writer holds the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.read_unlock();
    }
}

/// The exclusive lock of a [`RwLock`].
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write grant is exclusive.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write grant is exclusive.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.write_unlock();
    }
}

const ONCE_NEW: u8 = 0;
const ONCE_RUNNING: u8 = 1;
const ONCE_DONE: u8 = 2;

/// Runs a function exactly once (Go's `sync.Once`); callers that arrive while it runs park until
/// it is done. As in Go, a function that panics still counts as done.
pub struct Once {
    state: AtomicU8,
    waiters: RankedMutex<Vec<Waiter>>,
}

impl Once {
    /// A `Once` that has not run.
    pub const fn new() -> Once {
        Once {
            state: AtomicU8::new(ONCE_NEW),
            waiters: RankedMutex::new(Rank::SyncQueue, Vec::new()),
        }
    }

    /// Runs `f` if no call has yet; otherwise waits until the first call's `f` has returned.
    pub fn call_once(&self, f: impl FnOnce()) {
        // Acquire: pairs with the Release in `finish`, so `f`'s effects are visible.
        if self.state.load(Ordering::Acquire) == ONCE_DONE {
            return;
        }
        if self
            .state
            .compare_exchange(ONCE_NEW, ONCE_RUNNING, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
        {
            struct Finish<'a>(&'a Once);
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    self.0.finish();
                }
            }
            let _finish = Finish(self);
            f();
            return;
        }
        loop {
            let mut waiters = lock(&self.waiters);
            if self.state.load(Ordering::Acquire) == ONCE_DONE {
                return;
            }
            let waiter = Waiter::current();
            let parker = waiter.thread_parker();
            waiters.push(waiter);
            park_releasable(waiters, parker);
        }
    }

    /// Whether `call_once` has completed.
    pub fn is_completed(&self) -> bool {
        self.state.load(Ordering::Acquire) == ONCE_DONE
    }

    fn finish(&self) {
        let waiters = {
            let mut waiters = lock(&self.waiters);
            // Release: pairs with the Acquire loads of later callers.
            self.state.store(ONCE_DONE, Ordering::Release);
            std::mem::take(&mut *waiters)
        };
        for waiter in waiters {
            waiter.wake();
        }
    }
}

impl Default for Once {
    fn default() -> Self {
        Once::new()
    }
}

impl fmt::Debug for Once {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Once")
            .field("done", &self.is_completed())
            .finish()
    }
}
