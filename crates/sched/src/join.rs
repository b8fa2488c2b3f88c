//! `JoinHandle`: waiting for a goroutine's result, and `Panic`: what a failed goroutine left.

use crate::lock::{Rank, RankedMutex, lock};
use crate::park::{Waiter, park_releasable};
use crate::runtime2::{Run, current_goroutine_id};
use crate::stw;
use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The unwind payload of `goro::exit()` (Go's `runtime.Goexit`).
pub(crate) struct Goexit;

/// Why a goroutine did not return a value: it panicked, or it called `goro::exit()`.
pub struct Panic {
    payload: Box<dyn Any + Send + 'static>,
}

impl Panic {
    pub(crate) fn new(payload: Box<dyn Any + Send + 'static>) -> Panic {
        Panic { payload }
    }

    /// True if the goroutine ended with `goro::exit()` rather than a panic.
    pub fn is_exit(&self) -> bool {
        self.payload.is::<Goexit>()
    }

    /// The panic message, when the payload is a string (as for `panic!("...")`).
    pub fn message(&self) -> Option<&str> {
        if let Some(s) = self.payload.downcast_ref::<&'static str>() {
            Some(s)
        } else {
            self.payload.downcast_ref::<String>().map(String::as_str)
        }
    }

    /// The payload, as `std::thread::JoinHandle::join` would return it.
    pub fn into_payload(self) -> Box<dyn Any + Send + 'static> {
        self.payload
    }

    /// Continues unwinding with the payload on the calling thread.
    pub fn resume(self) -> ! {
        std::panic::resume_unwind(self.payload)
    }
}

impl fmt::Debug for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_exit() {
            f.write_str("Panic(goro::exit)")
        } else {
            f.debug_tuple("Panic")
                .field(&self.message().unwrap_or("<non-string payload>"))
                .finish()
        }
    }
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_exit(), self.message()) {
            (true, _) => f.write_str("goroutine ended with goro::exit()"),
            (false, Some(message)) => write!(f, "goroutine panicked: {message}"),
            (false, None) => f.write_str("goroutine panicked with a non-string payload"),
        }
    }
}

enum State<R> {
    Running(Option<Waiter>),
    /// Running, and its handle was dropped: nobody will take the result.
    Detached,
    Done(Result<R, Panic>),
    Taken,
}

/// Whether a panic no handle will see ends the process (`Config::detached_panics_exit`); set by
/// `run`.
pub(crate) static DETACHED_PANICS_EXIT: AtomicBool = AtomicBool::new(true);

/// A goroutine panicked and no `JoinHandle` will ever see it: Go ends the program for that, and so
/// does goro unless told otherwise (the panic hook has printed the panic and where it happened).
fn detached_panic(id: u64, panic: &Panic) {
    // Relaxed: a setting written before the runtime started its goroutines.
    if panic.is_exit() || !DETACHED_PANICS_EXIT.load(Ordering::Relaxed) {
        return;
    }
    eprintln!(
        "panic: {} [goroutine {id}, whose JoinHandle was dropped]\n\n\
         goro ends the program, as Go does when a goroutine panics; join the goroutine to handle \
         its panic, or build the runtime with `Builder::detached_panics_exit(false)`",
        panic.message().unwrap_or("(a non-string payload)")
    );
    std::process::exit(2);
}

/// Where a goroutine leaves its result for its `JoinHandle`.
pub(crate) struct Packet<R> {
    state: RankedMutex<State<R>>,
}

impl<R> Packet<R> {
    pub(crate) fn new() -> Packet<R> {
        Packet {
            state: RankedMutex::new(Rank::JoinPacket, State::Running(None)),
        }
    }

    /// Stores the result and wakes the joiner, if one waits. `id` is the goroutine's.
    pub(crate) fn complete(&self, id: u64, result: Result<R, Panic>) {
        let mut state = lock(&self.state);
        if let State::Detached = *state {
            *state = State::Taken;
            drop(state);
            if let Err(panic) = &result {
                detached_panic(id, panic);
            }
            return;
        }
        let previous = std::mem::replace(&mut *state, State::Done(result));
        drop(state);
        if let State::Running(Some(waiter)) = previous {
            waiter.wake();
        }
    }

    /// Takes the result if the goroutine is done.
    pub(crate) fn take(&self) -> Option<Result<R, Panic>> {
        let mut state = lock(&self.state);
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(result) => Some(result),
            other => {
                *state = other;
                None
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(*lock(&self.state), State::Done(_))
    }
}

/// A goroutine's closure and the packet for its result, in one allocation shared by the G (which
/// runs the closure once) and the `JoinHandle` (which reads the packet).
pub(crate) struct Task<F, R> {
    packet: Packet<R>,
    /// Taken by the goroutine when it starts; nobody else touches it.
    f: UnsafeCell<Option<F>>,
}

// SAFETY: `f` is touched only by `run`, which the one goroutine of the task calls once (it moves
// `F: Send` to that goroutine's thread); `packet` is behind its mutex and holds an `R: Send`.
unsafe impl<F: Send, R: Send> Sync for Task<F, R> {}

impl<F, R> Task<F, R> {
    pub(crate) fn new(f: F) -> Task<F, R> {
        Task {
            packet: Packet::new(),
            f: UnsafeCell::new(Some(f)),
        }
    }
}

impl<F: FnOnce() -> R + Send, R: Send> Run for Task<F, R> {
    unsafe fn run(&self) {
        // SAFETY: the caller's contract: we are the only, and first, user of `f`.
        let f = unsafe { (*self.f.get()).take() }.expect("a goroutine's task runs once");
        let result = catch_unwind(AssertUnwindSafe(f)).map_err(Panic::new);
        let id = current_goroutine_id().unwrap_or(0);
        self.packet.complete(id, result);
    }
}

/// The handle's side of a task: its packet.
pub(crate) trait Joinable<R>: Send + Sync {
    fn packet(&self) -> &Packet<R>;
}

impl<F: Send, R: Send> Joinable<R> for Task<F, R> {
    fn packet(&self) -> &Packet<R> {
        &self.packet
    }
}

/// An owned permission to wait for a goroutine and take its result.
///
/// Dropping the handle detaches the goroutine. The handle may be sent to any thread; `join` parks
/// a goroutine, or blocks a thread that is not one.
pub struct JoinHandle<R> {
    task: Arc<dyn Joinable<R>>,
    id: u64,
}

impl<R> JoinHandle<R> {
    pub(crate) fn new(task: Arc<dyn Joinable<R>>, id: u64) -> JoinHandle<R> {
        JoinHandle { task, id }
    }

    /// The goroutine's id (as Go prints in tracebacks: the main goroutine is 1).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the goroutine has finished.
    pub fn is_finished(&self) -> bool {
        self.task.packet().is_done()
    }

    /// Waits for the goroutine to finish; returns its value, or the [`Panic`] it ended with.
    pub fn join(self) -> Result<R, Panic> {
        stw::safe_point();
        loop {
            let mut state = lock(&self.task.packet().state);
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => return result,
                State::Taken | State::Detached => {
                    unreachable!("a JoinHandle's result is taken only by join")
                }
                State::Running(_) => {
                    let waiter = Waiter::current();
                    let parker = waiter.thread_parker();
                    *state = State::Running(Some(waiter));
                    // The waiter is in the packet: nothing reads our stack.
                    park_releasable(state, parker);
                }
            }
        }
    }
}

impl<R> Drop for JoinHandle<R> {
    /// Detaches the goroutine; if it already ended with a panic, that panic is one nobody will
    /// see (see [`Config::detached_panics_exit`](crate::Config::detached_panics_exit)).
    fn drop(&mut self) {
        let mut state = lock(&self.task.packet().state);
        match std::mem::replace(&mut *state, State::Taken) {
            State::Running(_) => *state = State::Detached,
            State::Done(Err(panic)) => {
                drop(state);
                detached_panic(self.id, &panic);
            }
            State::Done(Ok(_)) | State::Detached | State::Taken => {}
        }
    }
}

impl<R> fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
