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
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

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
    Done(Result<R, Panic>),
    Taken,
}

/// `Packet::phase`: the handle was dropped without a join.
const HANDLE_GONE: u8 = 1;
/// `Packet::phase`: the goroutine ended with a panic (not `goro::exit`), stored in the packet.
const PANICKED: u8 = 2;

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
    /// `HANDLE_GONE` and `PANICKED`: whichever of the handle's drop and a panicking goroutine's
    /// end comes second (in the order of their RMWs on this byte) reports the panic nobody will
    /// see. A handle that is dropped or joined costs no lock beyond the result's own.
    phase: AtomicU8,
}

impl<R> Packet<R> {
    pub(crate) fn new() -> Packet<R> {
        Packet {
            state: RankedMutex::new(Rank::JoinPacket, State::Running(None)),
            phase: AtomicU8::new(0),
        }
    }

    /// Stores the result and wakes the joiner, if one waits. `id` is the goroutine's.
    pub(crate) fn complete(&self, id: u64, result: Result<R, Panic>) {
        let panicked = matches!(&result, Err(panic) if !panic.is_exit());
        let mut state = lock(&self.state);
        let previous = std::mem::replace(&mut *state, State::Done(result));
        drop(state);
        if let State::Running(Some(waiter)) = previous {
            waiter.wake();
        }
        // AcqRel: orders the stored result before the bit for the handle's drop, and that drop's
        // bit before our reading of it.
        if panicked && self.phase.fetch_or(PANICKED, Ordering::AcqRel) & HANDLE_GONE != 0 {
            self.report_detached_panic(id);
        }
    }

    /// The handle is gone without a join: a panic stored already is one nobody will see.
    fn handle_dropped(&self, id: u64) {
        // AcqRel: as in `complete`.
        if self.phase.fetch_or(HANDLE_GONE, Ordering::AcqRel) & PANICKED != 0 {
            self.report_detached_panic(id);
        }
    }

    fn report_detached_panic(&self, id: u64) {
        if let State::Done(Err(panic)) = &*lock(&self.state) {
            detached_panic(id, panic);
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
    /// The task; `None` only once `join` has taken it (so that the drop that follows does not
    /// count the handle as dropped unjoined).
    task: Option<Arc<dyn Joinable<R>>>,
    id: u64,
}

impl<R> JoinHandle<R> {
    pub(crate) fn new(task: Arc<dyn Joinable<R>>, id: u64) -> JoinHandle<R> {
        JoinHandle {
            task: Some(task),
            id,
        }
    }

    fn packet(&self) -> &Packet<R> {
        self.task
            .as_ref()
            .expect("a JoinHandle has its task until join consumes it")
            .packet()
    }

    /// The goroutine's id (as Go prints in tracebacks: the main goroutine is 1).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the goroutine has finished.
    pub fn is_finished(&self) -> bool {
        self.packet().is_done()
    }

    /// Waits for the goroutine to finish; returns its value, or the [`Panic`] it ended with.
    pub fn join(mut self) -> Result<R, Panic> {
        stw::safe_point();
        let task = self
            .task
            .take()
            .expect("a JoinHandle has its task until join consumes it");
        loop {
            let mut state = lock(&task.packet().state);
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => return result,
                State::Taken => unreachable!("a JoinHandle's result is taken only by join"),
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
        if let Some(task) = &self.task {
            task.packet().handle_dropped(self.id);
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
