//! The mark worker: the thread that marks beside the mutators and ends each cycle.
//!
//! A cycle's first pause (collector.rs, `start_marking`) fills the worker's work list with the
//! roots and turns the barrier on; once the world runs again, this thread drains that list and
//! the barrier's log, with the mark helper's help where there are two Ps or more, and then stops
//! the world a second time to finish (`collector::terminate`). Go's dedicated mark worker runs on
//! a P; this one is a thread of its own beside the Ps, so that a runtime with one P still marks
//! while its goroutines run.
//!
//! The work list is the worker's, except while the first pause fills it: the worker is then
//! waiting for the cycle ([`LOADED`] not yet set), and every other thread is stopped.

use crate::trace::Tracer;
use std::cell::UnsafeCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// The worker waits for a cycle.
const IDLE: u32 = 0;
/// A cycle's first pause filled the work list; the worker has not taken it yet.
const LOADED: u32 = 1;
/// The worker is marking.
const RUNNING: u32 = 2;

/// The state, and the futex the worker sleeps on: the first pause wakes it with a system call,
/// which takes no lock a stopped thread could hold. (It cannot wait for the thread that
/// started the cycle to wake it once the world runs: a goroutine that stopped the world goes
/// back through the scheduler and, with one P whose M then blocks, may not run for a while.)
static STATE: AtomicU32 = AtomicU32::new(IDLE);

/// The worker's tracer, made by the worker when it starts. On cache lines of its own (pairs of
/// them, against the adjacent-line prefetcher): marking reads and writes its work stack's
/// fields for every object, and a static the mutators write that the linker happened to put
/// next to it made binary_trees a third slower, from a change elsewhere in the crate.
#[repr(align(128))]
struct Slot(UnsafeCell<Option<Tracer>>);

// SAFETY: see the module docs: the tracer is touched by the worker, or by the first pause of a
// cycle while the worker waits (state IDLE) and every other thread is stopped.
unsafe impl Sync for Slot {}

static TRACER: Slot = Slot(UnsafeCell::new(None));

/// The process the worker runs in (0 before it starts): a forked child has no worker yet.
static PID: AtomicI32 = AtomicI32::new(0);

/// Serialises starts.
static STARTING: Mutex<()> = Mutex::new(());

/// The worker's kernel thread id (0 before it starts).
static TID: AtomicI32 = AtomicI32::new(0);

/// The kernel thread id of the mark worker, if it runs in this process. It is goro's own: it
/// runs nothing but the collector (drop glue runs on the sweeper), so it wakes no goroutine.
pub fn worker_thread_id() -> Option<i32> {
    let tid = TID.load(Ordering::Acquire);
    // SAFETY: getpid has no preconditions.
    (tid != 0 && PID.load(Ordering::Acquire) == unsafe { libc::getpid() }).then_some(tid)
}

/// Starts the worker, to run `run` for each cycle, if this process has none. Called before a
/// cycle stops the world.
pub(crate) fn start(run: fn()) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if PID.load(Ordering::Acquire) == pid {
        return;
    }
    let _serial = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    if PID.load(Ordering::Acquire) == pid {
        return;
    }
    STATE.store(IDLE, Ordering::Relaxed);
    // The worker makes its tracer before it runs; the tracer is in place before `PID` says so.
    let (made, ready) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("goro-gc-worker".into())
        .spawn(move || {
            // SAFETY: no cycle can use the slot before `PID` is published below.
            unsafe { *TRACER.0.get() = Some(Tracer::new()) };
            // SAFETY: gettid has no preconditions.
            TID.store(unsafe { libc::gettid() }, Ordering::Release);
            let _ = made.send(());
            worker_main(run);
        });
    if spawned.is_err() || ready.recv().is_err() {
        eprintln!("fatal error: goro-gc: cannot start the mark worker thread");
        std::process::abort();
    }
    // Release: the tracer is made before a cycle reads `PID`.
    PID.store(pid, Ordering::Release);
}

/// The worker's tracer, for the first pause of a cycle to fill.
///
/// # Safety
/// May be called only with every other thread stopped, while the worker waits for a cycle
/// (after [`start`], before [`go`]), and the reference must be gone before the world restarts.
pub(crate) unsafe fn tracer_while_idle() -> &'static mut Tracer {
    debug_assert_eq!(STATE.load(Ordering::Relaxed), IDLE);
    // SAFETY: the caller's contract; `start` made the tracer.
    unsafe { (*TRACER.0.get()).as_mut() }.expect("the mark worker's tracer is made at its start")
}

/// Hands the loaded cycle to the worker and wakes it (it runs once the world restarts). Called
/// with the world stopped, by the first pause.
pub(crate) fn load() {
    // Release: the tracer's contents are written before the worker takes them.
    STATE.store(LOADED, Ordering::Release);
    goro_alloc::futex_wake(&STATE, 1);
}

/// The tracer, for the worker's own use while it runs a cycle.
///
/// # Safety
/// May be called only on the worker thread (the function the worker runs, and what it calls).
pub(crate) unsafe fn tracer() -> &'static mut Tracer {
    // SAFETY: the caller's contract: the worker owns the tracer while it runs.
    unsafe { (*TRACER.0.get()).as_mut() }.expect("the mark worker's tracer is made at its start")
}

/// Tells the worker's own state machine that the cycle no longer needs the tracer (its
/// termination is done, or it was abandoned): the next cycle's first pause may fill it.
pub(crate) fn done() {
    // Release: the worker's uses of the tracer happen before the next pause fills it.
    STATE.store(IDLE, Ordering::Release);
}

/// Runs `run` for every cycle handed over, sleeping in between.
fn worker_main(run: fn()) {
    loop {
        // Acquire: pairs with `load`.
        loop {
            let state = STATE.load(Ordering::Acquire);
            if state == LOADED {
                break;
            }
            // SAFETY: a futex wait only sleeps: the collector may count this thread as stopped
            // meanwhile (goro-alloc's `parked`).
            unsafe {
                goro_alloc::parked::while_parked(|| goro_alloc::futex_wait(&STATE, state, None))
            };
        }
        STATE.store(RUNNING, Ordering::Relaxed);
        run();
    }
}
