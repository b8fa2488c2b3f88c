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
//! waiter record *on its own stack* into the queue and parks (see `park`); the party that completes
//! the operation moves the value directly into or out of that record, removes it from the queue,
//! and wakes its owner. So an unbuffered send copies the value once, from the sender's stack to
//! the receiver's, as in Go.
//!
//! Values waiting in a buffer or in a parked goroutine's record are found by the collector: the
//! buffer is a heap block reachable from every end's `Arc`, and the record is on a stack.

use crate::park::{Waiter, park};
use crate::proc::lock;
use crate::stw;
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::timer::{after, tick};

/// Creates a channel with a buffer of `cap` values (0 = unbuffered), returning both ends.
pub fn channel<T: Send>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        cap,
        state: Mutex::new(State {
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
    state: Mutex<State<T>>,
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

/// A blocked party's record, on its own stack. `value` and `closed` are written by the party that
/// completes the operation, under the channel lock, before it wakes the owner; the owner reads
/// them after waking (the run queue's or parker's lock orders the two).
struct Record<T> {
    waiter: UnsafeCell<Option<Waiter>>,
    value: UnsafeCell<Option<T>>,
    closed: UnsafeCell<bool>,
}

/// A pointer to a `Record` in a wait queue.
struct RecordRef<T>(*const Record<T>);

// SAFETY: the record is accessed only under the channel lock (by the completing party) or by its
// owner after being woken; `T: Send` because the value crosses threads.
unsafe impl<T: Send> Send for RecordRef<T> {}

impl<T> RecordRef<T> {
    /// Completes the blocked party's operation: `value` for a receiver (None = closed), `closed`
    /// for a sender; then wakes it.
    ///
    /// # Safety
    /// May be called only under the channel lock, once, on a record just removed from its queue.
    unsafe fn complete(self, value: Option<T>, closed: bool) {
        // SAFETY: the record's owner is parked (it queued the record and parked under the lock we
        // hold), so its stack frame is live and nobody else touches the record.
        unsafe {
            let record = &*self.0;
            if value.is_some() {
                *record.value.get() = value;
            }
            *record.closed.get() = closed;
            let waiter = (*record.waiter.get())
                .take()
                .expect("a queued record has a waiter");
            waiter.wake();
        }
    }

    /// Takes the value a blocked sender offers.
    ///
    /// # Safety
    /// As for `complete`.
    unsafe fn take_value(&self) -> T {
        // SAFETY: as for `complete`; a sender's record always holds its value while queued.
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
    mutex: &'a Mutex<State<T>>,
    mut state: MutexGuard<'a, State<T>>,
    pick: fn(&mut State<T>) -> &mut VecDeque<RecordRef<T>>,
    value: Option<T>,
) -> (Option<T>, bool) {
    let waiter = Waiter::current();
    let parker = waiter.thread_parker();
    let record = Record {
        waiter: UnsafeCell::new(Some(waiter)),
        value: UnsafeCell::new(value),
        closed: UnsafeCell::new(false),
    };
    pick(&mut state).push_back(RecordRef(&record));
    loop {
        park(state, parker.clone());
        state = lock(mutex);
        // A completing party takes the waiter out of the record as it wakes us; anything else is
        // a spurious wake-up of a thread parker.
        // SAFETY: we hold the channel lock, so no completing party touches the record.
        if unsafe { (*record.waiter.get()).is_none() } {
            drop(state);
            // SAFETY: the record is completed and out of every queue; we own it.
            return unsafe { ((*record.value.get()).take(), *record.closed.get()) };
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
    /// Sends without blocking; `Err` hands the value back.
    fn try_send(&self, value: T) -> Result<(), (TrySendError<T>, MutexGuard<'_, State<T>>)> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err((TrySendError::Closed(value), state));
        }
        if let Some(receiver) = state.receivers_waiting.pop_front() {
            // SAFETY: under the lock, just dequeued.
            unsafe { receiver.complete(Some(value), false) };
            return Ok(());
        }
        if state.buffer.len() < self.cap {
            state.buffer.push_back(value);
            return Ok(());
        }
        Err((TrySendError::Full(value), state))
    }

    /// Receives without blocking.
    fn try_recv(&self) -> Result<T, (TryRecvError, MutexGuard<'_, State<T>>)> {
        let mut state = lock(&self.state);
        if let Some(sender) = state.senders_waiting.pop_front() {
            // SAFETY: under the lock, just dequeued.
            let offered = unsafe { sender.take_value() };
            let value = if self.cap == 0 {
                offered
            } else {
                // The buffer is full (the sender blocked): take its head, append the offer.
                let head = state
                    .buffer
                    .pop_front()
                    .expect("a sender blocks only on a full buffer");
                state.buffer.push_back(offered);
                head
            };
            // SAFETY: as above.
            unsafe { sender.complete(None, false) };
            return Ok(value);
        }
        if let Some(value) = state.buffer.pop_front() {
            return Ok(value);
        }
        let error = if state.closed {
            TryRecvError::Closed
        } else {
            TryRecvError::Empty
        };
        Err((error, state))
    }

    fn close(&self, explicit: bool) {
        let mut state = lock(&self.state);
        if state.closed {
            if explicit {
                drop(state);
                panic!("close of closed channel");
            }
            return;
        }
        state.closed = true;
        while let Some(receiver) = state.receivers_waiting.pop_front() {
            // SAFETY: under the lock, just dequeued.
            unsafe { receiver.complete(None, false) };
        }
        while let Some(sender) = state.senders_waiting.pop_front() {
            // SAFETY: under the lock, just dequeued; the sender panics when it wakes.
            unsafe { sender.complete(None, true) };
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
    pub fn send(&self, value: T) {
        stw::safe_point();
        match self.chan.try_send(value) {
            Ok(()) => {}
            Err((TrySendError::Closed(_), state)) => {
                drop(state);
                panic!("send on closed channel");
            }
            Err((TrySendError::Full(value), state)) => {
                let (_, closed) = block_on(&self.chan.state, state, senders_waiting, Some(value));
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
                block_on(&self.chan.state, state, receivers_waiting, None).0
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

impl<T> Sender<T> {
    /// Values buffered now (Go's `len(ch)`).
    pub fn len(&self) -> usize {
        lock(&self.chan.state).buffer.len()
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
        lock(&self.chan.state).closed
    }

    /// Whether any `Receiver` of the channel is still alive.
    pub fn has_receivers(&self) -> bool {
        lock(&self.chan.state).receivers > 0
    }
}

impl<T> Receiver<T> {
    /// Values buffered now (Go's `len(ch)`).
    pub fn len(&self) -> usize {
        lock(&self.chan.state).buffer.len()
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
        lock(&self.chan.state).closed
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.chan.state).senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = lock(&self.chan.state);
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
        lock(&self.chan.state).receivers += 1;
        Receiver {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        lock(&self.chan.state).receivers -= 1;
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

impl<'a, T: Send> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}
