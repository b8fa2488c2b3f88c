//! Channels with Go's semantics: `goro::chan::channel::<T>(cap)`.
//!
//! - `cap == 0`: unbuffered; a send completes only when a receiver takes the value (rendezvous).
//! - `cap > 0`: buffered FIFO; a send blocks only while the buffer is full.
//! - `close`: receivers drain the buffer, then receive `None`; a send on a closed channel panics
//!   with Go's message "send on closed channel"; closing twice panics with "close of closed
//!   channel". Dropping the last `Sender` closes the channel too (what a Rust programmer expects
//!   of a channel whose writers are gone).
//!
//! Structure (Go's `hchan`): one lock over the buffer and two wait queues. A blocked party puts a
//! waiter record into the queue and parks (see `park`); the party that completes the operation
//! moves the value directly into or out of that record, removes it from the queue, and wakes its
//! owner. So an unbuffered send copies the value once, from the sender to the receiver's
//! record, as in Go. A goroutine's record lives in its G when it fits (Go's `sudog`, without
//! the allocation), so that nobody touches the parked goroutine's stack and its memory can be
//! released while it waits (see `shrink`); a larger one, a thread's, and a `select`'s records
//! live on the blocked party's stack.
//!
//! Values waiting in a buffer or in a parked goroutine's record are found by the collector: the
//! buffer is a heap block reachable from every end's `Arc`, and the record is in a G or on a
//! stack, both roots.

use crate::lock::RawLock;
use crate::park::{Waiter, park, park_releasable, wait_space};
use crate::runtime2::{Sched, current_sched};
use crate::stw;
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Creates a channel with a buffer of `cap` values (0 = unbuffered), returning both ends.
pub fn channel<T: Send>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        cap,
        lock: RawLock::new(),
        state: UnsafeCell::new(State {
            buffer: VecDeque::with_capacity(cap.min(1024)),
            closed: false,
            receivers_waiting: VecDeque::new(),
            senders_waiting: VecDeque::new(),
            senders: 1,
            receivers: 1,
        }),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

struct Chan<T> {
    cap: usize,
    /// Guards `state`. A raw lock so that `select` can hold several at once and g0 can release
    /// them after the goroutine parks.
    lock: RawLock,
    state: UnsafeCell<State<T>>,
}

// SAFETY: `state` is only accessed with `lock` held (through `ChanGuard`); values cross threads
// (`T: Send`).
unsafe impl<T: Send> Sync for Chan<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Chan<T> {}

impl<T> Chan<T> {
    fn locked(&self) -> ChanGuard<'_, T> {
        self.lock.lock();
        ChanGuard { chan: self }
    }
}

/// The channel lock, held; unlocks on drop.
struct ChanGuard<'a, T> {
    chan: &'a Chan<T>,
}

impl<T> Deref for ChanGuard<'_, T> {
    type Target = State<T>;
    fn deref(&self) -> &State<T> {
        // SAFETY: the guard holds the channel lock.
        unsafe { &*self.chan.state.get() }
    }
}

impl<T> DerefMut for ChanGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut State<T> {
        // SAFETY: the guard holds the channel lock.
        unsafe { &mut *self.chan.state.get() }
    }
}

impl<T> Drop for ChanGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock it took in `locked`.
        unsafe { self.chan.lock.unlock() };
    }
}

struct State<T> {
    buffer: VecDeque<T>,
    closed: bool,
    receivers_waiting: VecDeque<RecordRef<T>>,
    senders_waiting: VecDeque<RecordRef<T>>,
    /// Live `Sender`s; the channel closes when the last one goes.
    senders: usize,
    /// Live `Receiver`s; a ticker stops when none is left.
    receivers: usize,
}

/// Why a send under the lock did not complete; the value comes back.
enum SendBlocked<T> {
    Full(T),
    Closed(T),
}

impl<T> State<T> {
    /// Receives under the lock: `Some(Some(v))` a value, `Some(None)` closed and drained, `None`
    /// it would block.
    fn recv_locked(&mut self, cap: usize) -> Option<Option<T>> {
        while let Some(sender) = self.senders_waiting.pop_front() {
            // SAFETY: under the lock, just dequeued.
            if !unsafe { sender.claim() } {
                continue; // a select that another channel already completed
            }
            // SAFETY: as above; a blocked sender's record holds its value.
            let offered = unsafe { sender.take_value() };
            let value = if cap == 0 {
                offered
            } else {
                // The buffer is full (the sender blocked): take its head, append the offer.
                let head = self
                    .buffer
                    .pop_front()
                    .expect("a sender blocks only on a full buffer");
                self.buffer.push_back(offered);
                head
            };
            // SAFETY: as above.
            unsafe { sender.complete(None, false) };
            return Some(Some(value));
        }
        if let Some(value) = self.buffer.pop_front() {
            return Some(Some(value));
        }
        self.closed.then_some(None)
    }

    /// Sends under the lock.
    fn send_locked(&mut self, cap: usize, value: T) -> Result<(), SendBlocked<T>> {
        if self.closed {
            return Err(SendBlocked::Closed(value));
        }
        while let Some(receiver) = self.receivers_waiting.pop_front() {
            // SAFETY: under the lock, just dequeued.
            if unsafe { receiver.claim() } {
                // SAFETY: as above.
                unsafe { receiver.complete(Some(value), false) };
                return Ok(());
            }
        }
        if self.buffer.len() < cap {
            self.buffer.push_back(value);
            return Ok(());
        }
        Err(SendBlocked::Full(value))
    }
}

/// A blocked party's record, on its own stack. `value` and `closed` are written by the party that
/// completes the operation, under the channel lock, before it wakes the owner; the owner reads
/// them after waking (the run queue's or parker's lock orders the two). A record of a `select`
/// shares its waiter with the select's other records through `select`; the completing party
/// must first *claim* the select, since another channel may complete it first.
struct Record<T> {
    waiter: UnsafeCell<Option<Waiter>>,
    select: Option<(*const SelectShared, usize)>,
    value: UnsafeCell<Option<T>>,
    closed: UnsafeCell<bool>,
}

impl<T> Record<T> {
    fn new(
        waiter: Option<Waiter>,
        select: Option<(*const SelectShared, usize)>,
        value: Option<T>,
    ) -> Self {
        Record {
            waiter: UnsafeCell::new(waiter),
            select,
            value: UnsafeCell::new(value),
            closed: UnsafeCell::new(false),
        }
    }
}

/// A pointer to a `Record` in a wait queue.
struct RecordRef<T>(*mut Record<T>);

// SAFETY: the record is accessed only under the channel lock (by the completing party) or by its
// owner after being woken; `T: Send` because the value crosses threads.
unsafe impl<T: Send> Send for RecordRef<T> {}

impl<T> RecordRef<T> {
    /// Makes this record's operation the one that happens: always true for a plain blocked
    /// operation; for a select, true only for the first channel to claim it.
    ///
    /// # Safety
    /// May be called only under the channel lock, on a record just removed from its queue.
    unsafe fn claim(&self) -> bool {
        // SAFETY: the owner is parked (or still selecting with this channel locked), so the
        // record and its select state are live.
        match unsafe { (*self.0).select } {
            None => true,
            Some((shared, index)) => {
                // SAFETY: the select state lives in the selecting party's frame, which waits
                // (parked, or holding this lock while it selects) until its records are gone.
                let shared = unsafe { &*shared };
                // AcqRel: the winner's writes to the record happen before the owner reads them
                // (the owner also learns the winner from this word).
                shared
                    .state
                    .compare_exchange(SELECT_OPEN, index, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            }
        }
    }

    /// Completes a claimed record: `value` for a receiver (None = closed), `closed` for a
    /// sender; then wakes its owner.
    ///
    /// # Safety
    /// May be called only under the channel lock, once, on a record this party claimed.
    unsafe fn complete(self, value: Option<T>, closed: bool) {
        // SAFETY: the record's owner is parked (it queued the record under the lock we hold and
        // parks before anyone can claim it), so its stack frame is live; we claimed the record,
        // so nobody else touches it.
        unsafe {
            let record = &*self.0;
            if value.is_some() {
                *record.value.get() = value;
            }
            *record.closed.get() = closed;
            let waiter = match record.select {
                None => (*record.waiter.get()).take(),
                Some((shared, _)) => (*(*shared).waiter.get()).take(),
            };
            waiter.expect("a claimed record has a waiter").wake();
        }
    }

    /// Takes the value a blocked sender offers.
    ///
    /// # Safety
    /// As for `complete`.
    unsafe fn take_value(&self) -> T {
        // SAFETY: as for `complete`; a blocked sender's record holds its value while queued.
        unsafe {
            (*(*self.0).value.get())
                .take()
                .expect("a blocked sender's record holds a value")
        }
    }
}

/// Blocks the caller on the queue `pick` chooses, with a record holding `value`; returns the
/// record's outcome `(value, closed)` once a completing party has woken it.
fn block_on<'a, T>(
    chan: &'a Chan<T>,
    mut state: ChanGuard<'a, T>,
    pick: fn(&mut State<T>) -> &mut VecDeque<RecordRef<T>>,
    value: Option<T>,
) -> (Option<T>, bool) {
    let waiter = Waiter::current();
    let parker = waiter.thread_parker();
    // The record goes in the G when it fits, so that the goroutine's stack memory may be
    // released while it waits; otherwise on the stack, which then stays.
    let mut on_stack = MaybeUninit::<Record<T>>::uninit();
    let in_g = wait_space::<Record<T>>();
    let slot = in_g.map_or(on_stack.as_mut_ptr(), NonNull::as_ptr);
    // SAFETY: `slot` is writable room for a record, unused: our own frame, or the G's wait
    // space, which only the operation a goroutine is blocked in uses.
    unsafe { slot.write(Record::new(Some(waiter), None, value)) };
    pick(&mut state).push_back(RecordRef(slot));
    loop {
        if in_g.is_some() {
            park_releasable(state, parker.clone());
        } else {
            park(state, parker.clone());
        }
        state = chan.locked();
        // A completing party takes the waiter out of the record as it wakes us; anything else is
        // a spurious wake-up of a thread parker.
        // SAFETY: we hold the channel lock, so no completing party touches the record.
        if unsafe { (*(*slot).waiter.get()).is_none() } {
            drop(state);
            // SAFETY: the record is completed and out of every queue; we own it, and drop it
            // here (its value taken, what is left needs no drop, but its type decides).
            return unsafe {
                let outcome = ((*(*slot).value.get()).take(), *(*slot).closed.get());
                slot.drop_in_place();
                outcome
            };
        }
    }
}

fn receivers_waiting<T>(state: &mut State<T>) -> &mut VecDeque<RecordRef<T>> {
    &mut state.receivers_waiting
}

fn senders_waiting<T>(state: &mut State<T>) -> &mut VecDeque<RecordRef<T>> {
    &mut state.senders_waiting
}

/// The error of [`Sender::try_send`].
#[derive(PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The buffer is full (or, unbuffered, no receiver is waiting); the value is handed back.
    Full(T),
    /// The channel is closed; the value is handed back.
    Closed(T),
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("channel full: no receiver ready and no room"),
            TrySendError::Closed(_) => f.write_str("send on closed channel"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// The error of [`Receiver::try_recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing to receive now.
    Empty,
    /// The channel is closed and drained.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("channel empty"),
            TryRecvError::Closed => f.write_str("channel closed"),
        }
    }
}

impl std::error::Error for TryRecvError {}

impl<T> Chan<T> {
    /// Sends without blocking; `Err` hands the value back, with the lock still held.
    fn try_send(&self, value: T) -> Result<(), (TrySendError<T>, ChanGuard<'_, T>)> {
        let mut state = self.locked();
        match state.send_locked(self.cap, value) {
            Ok(()) => Ok(()),
            Err(SendBlocked::Full(value)) => Err((TrySendError::Full(value), state)),
            Err(SendBlocked::Closed(value)) => Err((TrySendError::Closed(value), state)),
        }
    }

    /// Receives without blocking; `Err` keeps the lock held.
    fn try_recv(&self) -> Result<T, (TryRecvError, ChanGuard<'_, T>)> {
        let mut state = self.locked();
        match state.recv_locked(self.cap) {
            Some(Some(value)) => Ok(value),
            Some(None) => Err((TryRecvError::Closed, state)),
            None => Err((TryRecvError::Empty, state)),
        }
    }

    #[track_caller]
    fn close(&self, explicit: bool) {
        let mut state = self.locked();
        if state.closed {
            if explicit {
                drop(state);
                panic!("close of closed channel");
            }
            return;
        }
        state.closed = true;
        while let Some(receiver) = state.receivers_waiting.pop_front() {
            // SAFETY: under the lock, just dequeued; a select another channel completed is
            // skipped.
            unsafe {
                if receiver.claim() {
                    receiver.complete(None, false);
                }
            }
        }
        while let Some(sender) = state.senders_waiting.pop_front() {
            // SAFETY: as above; the sender panics when it wakes.
            unsafe {
                if sender.claim() {
                    sender.complete(None, true);
                }
            }
        }
    }
}

/// The sending end of a channel. Clone it for more senders.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// The receiving end of a channel. Clone it for more receivers.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T: Send> Sender<T> {
    /// Sends `value`, blocking while the buffer is full (unbuffered: until a receiver takes it).
    /// This is a safe point.
    ///
    /// # Panics
    /// Panics with "send on closed channel" if the channel is closed, or closes while blocked.
    #[track_caller]
    pub fn send(&self, value: T) {
        stw::safe_point();
        match self.chan.try_send(value) {
            Ok(()) => {}
            Err((TrySendError::Closed(_), state)) => {
                drop(state);
                panic!("send on closed channel");
            }
            Err((TrySendError::Full(value), state)) => {
                let (_, closed) = block_on(&self.chan, state, senders_waiting, Some(value));
                if closed {
                    panic!("send on closed channel");
                }
            }
        }
    }

    /// Sends without blocking: `Err(Full(v))` when it would block, `Err(Closed(v))` when closed.
    /// This is a safe point.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        stw::safe_point();
        self.chan.try_send(value).map_err(|(error, _)| error)
    }

    /// Closes the channel (Go's `close(ch)`): receivers drain what is buffered, then get `None`;
    /// blocked and later senders panic.
    ///
    /// # Panics
    /// Panics with "close of closed channel" if it is already closed.
    #[track_caller]
    pub fn close(&self) {
        self.chan.close(true);
    }
}

impl<T: Send> Receiver<T> {
    /// Receives a value, blocking until one is sent; `None` once the channel is closed and
    /// drained (Go's `v, ok := <-ch` with `ok == false`). This is a safe point.
    pub fn recv(&self) -> Option<T> {
        stw::safe_point();
        match self.chan.try_recv() {
            Ok(value) => Some(value),
            Err((TryRecvError::Closed, _)) => None,
            Err((TryRecvError::Empty, state)) => {
                block_on(&self.chan, state, receivers_waiting, None).0
            }
        }
    }

    /// Receives without blocking. This is a safe point.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        stw::safe_point();
        self.chan.try_recv().map_err(|(error, _)| error)
    }

    /// An iterator that receives until the channel is closed (Go's `for v := range ch`).
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { receiver: self }
    }
}

/// What both ends can tell about their channel.
macro_rules! channel_queries {
    ($end:ident) => {
        impl<T> $end<T> {
            /// Values buffered now (Go's `len(ch)`).
            pub fn len(&self) -> usize {
                self.chan.locked().buffer.len()
            }

            /// Whether nothing is buffered.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// The buffer's capacity (Go's `cap(ch)`).
            pub fn capacity(&self) -> usize {
                self.chan.cap
            }

            /// Whether the channel is closed.
            pub fn is_closed(&self) -> bool {
                self.chan.locked().closed
            }
        }
    };
}

channel_queries!(Sender);
channel_queries!(Receiver);

impl<T> Sender<T> {
    /// Whether any `Receiver` of the channel is still alive.
    pub fn has_receivers(&self) -> bool {
        self.chan.locked().receivers > 0
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.locked().senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.chan.locked();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.chan.close(false);
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.chan.locked().receivers += 1;
        Receiver {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.locked().receivers -= 1;
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.chan.cap)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.chan.cap)
            .finish_non_exhaustive()
    }
}

/// Receives until the channel is closed and drained.
pub struct Iter<'a, T> {
    receiver: &'a Receiver<T>,
}

impl<T: Send> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.recv()
    }
}

/// Receives until the channel is closed and drained, owning the receiver (`for v in rx`).
pub struct IntoIter<T> {
    receiver: Receiver<T>,
}

impl<T: Send> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.recv()
    }
}

impl<T: Send> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter { receiver: self }
    }
}

impl<'a, T: Send> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

/// A channel that receives the time once, after `duration` (Go's `time.After`). Use it in
/// `select!` for a timeout.
///
/// # Panics
/// Panics outside a running goro runtime.
#[track_caller]
pub fn after(duration: Duration) -> Receiver<Instant> {
    let sched = current_sched()
        .unwrap_or_else(|| panic!("goro::chan::after called outside a goro runtime"));
    let (tx, rx) = channel(1);
    sched.add_timer(
        Instant::now() + duration,
        Box::new(move || drop(tx.try_send(Instant::now()))),
    );
    rx
}

/// A channel that receives the time every `period` (Go's `time.Tick`); ticks a slow receiver
/// misses are dropped, and the ticker stops once every receiver is gone.
///
/// # Panics
/// Panics outside a running goro runtime, or if `period` is zero.
#[track_caller]
pub fn tick(period: Duration) -> Receiver<Instant> {
    assert!(
        !period.is_zero(),
        "goro::chan::tick: non-positive interval for tick"
    );
    let sched =
        current_sched().unwrap_or_else(|| panic!("goro::chan::tick called outside a goro runtime"));
    let (tx, rx) = channel(1);
    arm_tick(sched, tx, Instant::now() + period, period);
    rx
}

fn arm_tick(sched: &'static Sched, tx: Sender<Instant>, when: Instant, period: Duration) {
    sched.add_timer(
        when,
        Box::new(move || {
            if tx.has_receivers() {
                drop(tx.try_send(Instant::now()));
                arm_tick(sched, tx, when + period, period);
            }
        }),
    );
}

/// `select!`'s runtime (Go's `selectgo`). Hidden: use the `goro::select!` macro.
///
/// What the macro needs across crates, and nothing more, all safe in any order: a
/// [`RecvCase`] or [`SendCase`] per case, each lent to [`select`] as an opaque [`Case`], and
/// `take` on the case that ran. The steps that assume channel locks are held (poll, queue and
/// dequeue a case's record) are methods of a private trait, called only by `select`.
///
/// ```
/// use goro_sched::chan::{__select, channel};
/// let (tx, rx) = channel::<u8>(1);
/// tx.send(7);
/// let mut case = __select::RecvCase::new(&rx);
/// assert_eq!(__select::select(&mut [case.as_case()], true), Some(0));
/// assert_eq!(case.take(), Some(7));
/// ```
///
/// The steps that assume a lock is held cannot be called from outside, with or without
/// `unsafe` (`tests/ui/select_locked_methods.rs`, `select_internals.rs`).
#[doc(hidden)]
pub mod __select {
    pub use super::{Case, RecvCase, SendCase, select};
}

/// `SelectShared::state` while no case has completed.
const SELECT_OPEN: usize = usize::MAX;

/// What a blocked select's records share: which case won, and who to wake. Lives in
/// `select`'s frame while its records are queued.
struct SelectShared {
    /// `SELECT_OPEN`, then the index of the case that completed (set once, by CAS).
    state: AtomicUsize,
    /// The selecting party; taken by the winner's completer.
    waiter: UnsafeCell<Option<Waiter>>,
}

/// One case of a select, type-erased: [`RecvCase`] and [`SendCase`] implement it. Private:
/// the `*_locked` methods assume locks that only `select` knows it holds (Go's naming: the
/// caller holds the lock).
trait SelectCase {
    /// The channel's address: locks are taken in address order.
    fn chan_addr(&self) -> usize;
    /// Takes the channel lock, one of a select's, which takes them in `chan_addr` order.
    fn lock(&self);
    /// Releases the channel lock.
    ///
    /// # Safety
    /// May be called only by the party that took it with `lock`.
    unsafe fn unlock(&self);
    /// Completes the case now if it can.
    ///
    /// # Safety
    /// May be called only with the channel lock held.
    unsafe fn poll_locked(&mut self) -> bool;
    /// Queues this case's record for the blocked select `shared`, as case `index`.
    ///
    /// # Safety
    /// May be called only with the channel lock held, and only if `shared` stays live and
    /// `self` stays in place until [`dequeue_locked`](Self::dequeue_locked) has run (the
    /// queued record points into both).
    unsafe fn enqueue_locked(&mut self, shared: *const SelectShared, index: usize);
    /// Removes this case's record from its queue if it is still there.
    ///
    /// # Safety
    /// May be called only with the channel lock held.
    unsafe fn dequeue_locked(&mut self);
    /// This case won while the select was blocked: collect the outcome from the record.
    fn finish(&mut self);
}

/// A case of a select, lent to [`select`]: made by [`RecvCase::as_case`] or
/// [`SendCase::as_case`]. Opaque: nothing can be done with it but pass it to `select`.
pub struct Case<'a> {
    case: &'a mut (dyn SelectCase + 'a),
}

/// `&mut State<T>` of a case's channel, inside an unsafe `*_locked` method (whose caller holds
/// the lock).
macro_rules! locked_state {
    ($case:expr) => {
        // SAFETY: only `*_locked` methods use this, and their callers hold the channel lock;
        // the borrow ends within the statement.
        unsafe { &mut *$case.chan.state.get() }
    };
}

/// The channel half of a `SelectCase` impl, the same for both kinds of case (each has a
/// `chan: &Chan<T>` field).
macro_rules! case_channel_plumbing {
    () => {
        fn chan_addr(&self) -> usize {
            std::ptr::from_ref(self.chan) as usize
        }
        fn lock(&self) {
            self.chan.lock.lock_in_order(self.chan_addr());
        }
        unsafe fn unlock(&self) {
            // SAFETY: caller's contract: we took the lock in `lock`.
            unsafe { self.chan.lock.unlock() }
        }
    };
}

/// Puts a select's record for one case (holding `value` for a send) into `slot` and `queue`.
fn queue_select_record<T>(
    queue: &mut VecDeque<RecordRef<T>>,
    slot: &mut Option<Record<T>>,
    select: (*const SelectShared, usize),
    value: Option<T>,
) {
    let record: *mut Record<T> = slot.insert(Record::new(None, Some(select), value));
    queue.push_back(RecordRef(record));
}

/// Takes a select's record for one case out of `queue`, if it is still there.
fn remove_select_record<T>(queue: &mut VecDeque<RecordRef<T>>, slot: &Option<Record<T>>) {
    if let Some(record) = slot {
        let record: *const Record<T> = record;
        queue.retain(|r| !std::ptr::eq(r.0.cast_const(), record));
    }
}

/// A `recv(rx) -> v` case: `v` is `Some(value)`, or `None` once the channel is closed.
#[doc(hidden)]
pub struct RecvCase<'a, T> {
    chan: &'a Chan<T>,
    record: Option<Record<T>>,
    result: Option<Option<T>>,
}

impl<'a, T> RecvCase<'a, T> {
    /// A case receiving from `rx`.
    pub fn new(rx: &'a Receiver<T>) -> Self {
        RecvCase {
            chan: &rx.chan,
            record: None,
            result: None,
        }
    }

    /// This case, lent to [`select`].
    pub fn as_case(&mut self) -> Case<'_> {
        Case { case: self }
    }

    /// The received value (`None`: closed). Called once, on the selected case.
    ///
    /// # Panics
    /// Panics if the case has no result: it was not the one `select` ran, or `take` was
    /// called already.
    pub fn take(&mut self) -> Option<T> {
        self.result
            .take()
            .expect("select!: the selected case has a result")
    }
}

impl<T> SelectCase for RecvCase<'_, T> {
    case_channel_plumbing!();
    unsafe fn poll_locked(&mut self) -> bool {
        let cap = self.chan.cap;
        match locked_state!(self).recv_locked(cap) {
            Some(outcome) => {
                self.result = Some(outcome);
                true
            }
            None => false,
        }
    }
    unsafe fn enqueue_locked(&mut self, shared: *const SelectShared, index: usize) {
        let queue = &mut locked_state!(self).receivers_waiting;
        queue_select_record(queue, &mut self.record, (shared, index), None);
    }
    unsafe fn dequeue_locked(&mut self) {
        remove_select_record(&mut locked_state!(self).receivers_waiting, &self.record);
    }
    fn finish(&mut self) {
        let record = self
            .record
            .as_mut()
            .expect("a blocked select queued every case");
        self.result = Some(record.value.get_mut().take());
    }
}

/// A `send(tx, value) -> r` case; sending on a closed channel panics, as in Go.
#[doc(hidden)]
pub struct SendCase<'a, T> {
    chan: &'a Chan<T>,
    value: Option<T>,
    record: Option<Record<T>>,
    /// `Some(true)` sent, `Some(false)` the channel was closed.
    result: Option<bool>,
}

impl<'a, T> SendCase<'a, T> {
    /// A case sending `value` on `tx`.
    pub fn new(tx: &'a Sender<T>, value: T) -> Self {
        SendCase {
            chan: &tx.chan,
            value: Some(value),
            record: None,
            result: None,
        }
    }

    /// This case, lent to [`select`].
    pub fn as_case(&mut self) -> Case<'_> {
        Case { case: self }
    }

    /// Completes the selected send case.
    ///
    /// # Panics
    /// Panics with "send on closed channel" if the channel was closed; panics if the case has
    /// no result (it was not the one `select` ran, or `take` was called already).
    pub fn take(&mut self) {
        if !self
            .result
            .take()
            .expect("select!: the selected case has a result")
        {
            panic!("send on closed channel");
        }
    }
}

impl<T> SelectCase for SendCase<'_, T> {
    case_channel_plumbing!();
    unsafe fn poll_locked(&mut self) -> bool {
        let cap = self.chan.cap;
        let value = self
            .value
            .take()
            .expect("a send case holds its value until it runs");
        match locked_state!(self).send_locked(cap, value) {
            Ok(()) => {
                self.result = Some(true);
                true
            }
            Err(SendBlocked::Closed(_)) => {
                // Selected: `take` panics once every lock is released.
                self.result = Some(false);
                true
            }
            Err(SendBlocked::Full(value)) => {
                self.value = Some(value);
                false
            }
        }
    }
    unsafe fn enqueue_locked(&mut self, shared: *const SelectShared, index: usize) {
        let value = self.value.take();
        let queue = &mut locked_state!(self).senders_waiting;
        queue_select_record(queue, &mut self.record, (shared, index), value);
    }
    unsafe fn dequeue_locked(&mut self) {
        remove_select_record(&mut locked_state!(self).senders_waiting, &self.record);
    }
    fn finish(&mut self) {
        let record = self
            .record
            .as_mut()
            .expect("a blocked select queued every case");
        self.result = Some(!*record.closed.get_mut());
    }
}

/// The most cases one `select!` may have (its bookkeeping lives on the stack, no allocation).
pub const MAX_SELECT_CASES: usize = 64;

/// The channel locks of a select, held in address order; released on drop (by g0 when the
/// selecting goroutine parks).
struct SelectLocks {
    /// Pointers to the cases, one per distinct channel, in lock order (`cases[..len]`). The cases
    /// outlive the guard (`select` borrows them for its whole call, which waits for the park
    /// to end).
    cases: [*const dyn SelectCase; MAX_SELECT_CASES],
    len: usize,
}

impl SelectLocks {
    fn lock(cases: &[Case<'_>]) -> SelectLocks {
        let mut order = [0usize; MAX_SELECT_CASES];
        let order = &mut order[..cases.len()];
        for (i, slot) in order.iter_mut().enumerate() {
            *slot = i;
        }
        order.sort_unstable_by_key(|&i| cases[i].case.chan_addr());
        let placeholder: *const dyn SelectCase = std::ptr::null::<RecvCase<'static, ()>>();
        let mut locks = SelectLocks {
            cases: [placeholder; MAX_SELECT_CASES],
            len: 0,
        };
        let mut last = None;
        for &i in order.iter() {
            let address = cases[i].case.chan_addr();
            if last == Some(address) {
                continue; // two cases on one channel: lock it once
            }
            last = Some(address);
            let case: &dyn SelectCase = &*cases[i].case;
            // SAFETY: only the lifetime is erased; see the field docs.
            locks.cases[locks.len] =
                unsafe { std::mem::transmute::<&dyn SelectCase, *const dyn SelectCase>(case) };
            locks.len += 1;
        }
        for &case in &locks.cases[..locks.len] {
            // SAFETY: the case is live (field docs).
            unsafe { (*case).lock() };
        }
        locks
    }
}

impl Drop for SelectLocks {
    fn drop(&mut self) {
        for &case in self.cases[..self.len].iter().rev() {
            // SAFETY: the case is live, and `lock` above took its channel's lock.
            unsafe { (*case).unlock() };
        }
    }
}

/// Runs a select over `cases` (Go's `selectgo`): if any case can proceed, one of them chosen
/// uniformly at random does; otherwise `None` if there is a default; otherwise the caller blocks
/// until one case completes. Returns the index of the case that ran; its `take` gives the
/// outcome. A safe point.
///
/// # Panics
/// Panics with the reason if there are more than [`MAX_SELECT_CASES`] cases, and if a
/// [`SendCase`] is used again after a select that did not run it.
pub fn select(cases: &mut [Case<'_>], has_default: bool) -> Option<usize> {
    assert!(
        cases.len() <= MAX_SELECT_CASES,
        "select! has {} cases; at most {MAX_SELECT_CASES} are supported",
        cases.len()
    );
    stw::safe_point();
    let locks = SelectLocks::lock(cases);
    let mut order = [0usize; MAX_SELECT_CASES];
    let order = random_order(&mut order[..cases.len()]);
    for &i in order.iter() {
        // SAFETY: `locks` holds every case's channel lock.
        if unsafe { cases[i].case.poll_locked() } {
            drop(locks);
            return Some(i);
        }
    }
    if has_default {
        drop(locks);
        return None;
    }
    let waiter = Waiter::current();
    let parker = waiter.thread_parker();
    let shared = SelectShared {
        state: AtomicUsize::new(SELECT_OPEN),
        waiter: UnsafeCell::new(Some(waiter)),
    };
    for (index, case) in cases.iter_mut().enumerate() {
        // SAFETY: `locks` holds the lock. `shared` is a local of this frame and the cases are
        // borrowed for this whole call; every record is dequeued below, before either goes,
        // and nothing in between unwinds (parking does not).
        unsafe { case.case.enqueue_locked(&shared, index) };
    }
    // With no cases nothing can wake us: Go's `select {}` blocks forever.
    park(locks, parker);
    // Acquire: pairs with the winner's claim.
    let winner = shared.state.load(Ordering::Acquire);
    let locks = SelectLocks::lock(cases);
    for case in cases.iter_mut() {
        // SAFETY: `locks` holds the lock.
        unsafe { case.case.dequeue_locked() };
    }
    drop(locks);
    cases[winner].case.finish();
    Some(winner)
}

/// Fills `order` with `0..order.len()` in a random order (xorshift, seeded per thread), for
/// Go's uniform choice among ready cases.
fn random_order(order: &mut [usize]) -> &[usize] {
    thread_local! {
        static SEED: std::cell::Cell<u64> = std::cell::Cell::new(
            0x9E37_79B9_7F4A_7C15 ^ (std::ptr::from_ref(&0u8) as u64)
        );
    }
    for (i, slot) in order.iter_mut().enumerate() {
        *slot = i;
    }
    SEED.with(|seed| {
        let mut x = seed.get();
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        seed.set(x);
    });
    order
}
