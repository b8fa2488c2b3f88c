//! Starting a runtime ([`run`]) and a goroutine ([`go`]): the entry points that hand back
//! results ([`Finished`], [`JoinHandle`]). They sit on top of the scheduler (`proc`), sysmon and
//! the join packets, and nothing in the crate imports them.

use crate::config::Config;
use crate::join::{JoinHandle, Packet, Panic, Task};
use crate::lock::{Rank, RankedGuard, RankedMutex, lock};
use crate::proc::{self, begin_shutdown, m_main, new_g};
use crate::roots::{RootRange, roots_of};
use crate::runtime2::{CURRENT, Entry, GRef, GStatus, Sched, current_m, current_sched};
use crate::{stw, sysmon};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The goroutines a finished runtime left behind, held still (see [`Finished::abandoned_roots`]).
pub struct AbandonedRoots<'a> {
    lists: Vec<RankedGuard<'a, Vec<GRef>>>,
}

impl AbandonedRoots<'_> {
    /// Reports every abandoned goroutine's G struct and live stack ranges; allocates nothing.
    pub fn for_each(&self, visit: &mut dyn FnMut(RootRange)) {
        roots_of(&self.lists, visit);
    }
}

/// The goroutines a finished runtime left behind (see [`Finished::abandoned`]).
#[derive(Clone, Copy)]
pub struct Abandoned {
    sched: &'static Sched,
}

impl Abandoned {
    /// Holds the abandoned goroutines still, to report their roots
    /// ([`AbandonedRoots::for_each`]). They never run again; their stacks and closures stay
    /// allocated (as in Go, nothing of theirs is dropped). Take it *before* stopping the threads
    /// that do not reach a safe point, as [`RootsLock`](crate::RootsLock): it locks the `allg`
    /// lists and allocates, and a stopped thread may hold either lock.
    pub fn roots(&self) -> AbandonedRoots<'static> {
        AbandonedRoots {
            lists: self.sched.allg.iter().map(lock).collect(),
        }
    }
}

/// One runtime at a time per process; later `run` calls wait.
static RUN_LOCK: RankedMutex<()> = RankedMutex::new(Rank::Run, ());

/// The outcome of [`run`]: the main goroutine's result, and the goroutines left behind.
pub struct Finished<R> {
    result: Result<R, Panic>,
    sched: &'static Sched,
}

impl<R> Finished<R> {
    /// The main goroutine's result.
    pub fn result(&self) -> &Result<R, Panic> {
        &self.result
    }

    /// Holds the goroutines still alive when the main goroutine returned, to report their roots
    /// ([`AbandonedRoots::for_each`]). See [`Abandoned::roots`].
    pub fn abandoned_roots(&self) -> AbandonedRoots<'static> {
        self.abandoned().roots()
    }

    /// The goroutines still alive when the main goroutine returned, as a handle that outlives
    /// this value (the collector retires the heap after `run` has returned).
    pub fn abandoned(&self) -> Abandoned {
        Abandoned { sched: self.sched }
    }

    /// The main goroutine's result.
    pub fn into_result(self) -> Result<R, Panic> {
        self.result
    }
}

/// Runs `main` as the main goroutine of a new runtime with `config`, on this thread (M0) and
/// `config.procs - 1` more; returns when `main` returns. Goroutines still running then are
/// abandoned at their next scheduling point.
///
/// # Panics
/// Panics if called from a goroutine, or if the main goroutine's stack cannot be allocated.
pub fn run<R, F>(config: Config, main: F) -> Finished<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if current_m().is_some() {
        panic!("goro::run called inside a running goro runtime; use goro::go to start goroutines");
    }
    let _one_at_a_time = lock(&RUN_LOCK);
    if let Err(error) = goro_stack::install_overflow_handler() {
        panic!("goro::run: cannot install the stack overflow handler: {error}");
    }
    // Relaxed: read by goroutines this runtime starts, after the thread spawns that order it.
    crate::join::DETACHED_PANICS_EXIT.store(config.detached_panics_exit, Ordering::Relaxed);
    let sched = Sched::new(config);
    // Release: pairs with the Acquire in `current_sched`.
    CURRENT.store(sched as *const Sched as *mut Sched, Ordering::Release);

    let packet = Arc::new(Packet::new());
    let main_packet = packet.clone();
    let g = new_g(
        sched,
        Entry::Closure(Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(main)).map_err(Panic::new);
            main_packet.complete(1, result);
            begin_shutdown(current_m().expect("main goroutine runs on an M").sched());
        })),
    );
    // The main goroutine starts from the global queue: this thread is not yet M 0.
    lock(&sched.global).push_back(g);

    let threads: Vec<_> = (1..sched.gomaxprocs())
        .map(|id| {
            std::thread::Builder::new()
                .name(format!("goro-m{id}"))
                .spawn(move || m_main(&sched.ms[id]))
                .unwrap_or_else(|e| panic!("goro::run: cannot start worker thread {id}: {e}"))
        })
        .collect();
    let sysmon = std::thread::Builder::new()
        .name("goro-sysmon".into())
        .spawn(move || sysmon::run(sched))
        .unwrap_or_else(|e| panic!("goro::run: cannot start the sysmon thread: {e}"));
    m_main(&sched.ms[0]);
    for thread in threads.into_iter().chain([sysmon]) {
        if thread.join().is_err() {
            std::process::abort();
        }
    }
    // Ms started later (no new ones start once `shutdown` is set).
    let extra = std::mem::take(&mut *lock(&sched.threads));
    for thread in extra {
        if thread.join().is_err() {
            std::process::abort();
        }
    }
    CURRENT.store(std::ptr::null_mut(), Ordering::Release);
    // The scheduler structure outlives the runtime (see `Sched`), its stack caches and dead
    // Gs need not.
    for p in sched.ps.iter() {
        // SAFETY: every M has exited, so no P is held.
        for stack in std::mem::take(unsafe { &mut *p.stacks.get() }) {
            // SAFETY: a cached stack belongs to no goroutine.
            unsafe { stack.release_below(stack.top()) };
        }
        // SAFETY: as above.
        unsafe { (*p.gfree.get()).clear() };
    }
    lock(&sched.gfree).clear();
    sched.gfree_len.store(0, Ordering::Relaxed);
    for list in sched.allg.iter() {
        lock(list).retain(|&g| {
            if g.g().status(Ordering::Acquire) != GStatus::Dead {
                return true; // abandoned: a root of the retired heap, kept forever
            }
            // SAFETY: a dead G is in no queue or free list any more (cleared above) and no M
            // runs; it came from `Box::leak` in `new_g`.
            drop(unsafe { Box::from_raw(g.as_ptr()) });
            false
        });
    }
    let result = packet.take().unwrap_or_else(|| {
        unreachable!("the runtime shut down before the main goroutine finished")
    });
    Finished { result, sched }
}

/// Starts a goroutine running `f` if a runtime runs and its main goroutine has not returned;
/// otherwise gives `f` back. For runtime parts that start goroutines from their own threads
/// (the collector's cleanups), where [`go`]'s panic would be out of place.
pub fn try_go<F>(f: F) -> Result<(), F>
where
    F: FnOnce() + Send + 'static,
{
    match current_sched() {
        Some(sched) if !sched.shutdown.load(Ordering::SeqCst) => {
            // Detached at once: a panic is reported as any detached goroutine's.
            drop(spawn(sched, f));
            Ok(())
        }
        _ => Err(f),
    }
}

/// Starts a goroutine running `f` (Go's `go f()`).
///
/// This is a safe point. From a thread that is not one of the runtime's Ms (a user thread) the
/// goroutine goes to the global queue.
///
/// # Panics
/// Panics outside a running goro runtime, or if no stack can be allocated (the message says why).
#[track_caller]
pub fn go<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let Some(sched) = current_sched() else {
        panic!("goro::go called outside a goro runtime: start one with goro::run(|| ...)");
    };
    spawn(sched, f)
}

/// [`go`] and [`try_go`] once the runtime is found: a safe point, then the new goroutine.
#[track_caller]
fn spawn<F, R>(sched: &'static Sched, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    stw::safe_point();
    let task = Arc::new(Task::new(f));
    let id = proc::newproc(sched, Entry::Task(task.clone()));
    JoinHandle::new(task, id)
}
