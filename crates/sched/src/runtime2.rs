//! The scheduler's types: G, M, P and `Sched`, with who owns each field and how it is
//! synchronised (Go's `runtime2.go`, kept apart from the logic in `proc.go`). The essay on how
//! they are used is in `proc`; this file holds the data, its constructors, accessors that read
//! one field or sum a few, and the G status state machine ([`GStatus`]).
//!
//! Layering: this file imports only the leaves below the scheduler (`config`, `lock`, `runq`,
//! `timer`, `shrink`'s per-G state) and nothing that imports it back. The types other files
//! own but the G holds (goroutine-locals, stack segments) are defined here and given their
//! behaviour in their own files (`local`, `grow`), as inherent impls.
//!
//! Ownership at a glance:
//!
//! ```text
//!   Sched (leaked, one per runtime)   read by every thread; each field says how it is guarded
//!   ├── ms[i]: M   own thread for Cells; others use the atomics, `ready` (mutex), the parker
//!   ├── ps[i]: P   the M holding it (handed over under `pidle`); thieves use `runq` lock-free
//!   └── allg[i]    mutex-guarded lists of every G, never shrunk while the runtime runs
//!   G              whoever holds it: a queue, a waiter record, the M running it; its stack
//!                  fields also by sysmon (under its allg lock) and by the collector (world stopped)
//! ```

use crate::config::{Config, MAX_PROCS};
use crate::lock::{Rank, RankedMutex, ThreadParker, lock};
use crate::panic::throw;
use crate::runq::{self, LocalQueue};
use crate::shrink::{ParkedStack, StashMode};
use crate::sync_prims;
use crate::timer::Timers;
use goro_stack::{Stack, StackPointer, switch};
use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar};
use std::time::Instant;

/// `G::home` of a goroutine that has not run yet (and may still move to any M).
pub(crate) const NO_HOME: usize = usize::MAX;

/// `M::p` of an M that holds no P.
pub(crate) const NO_P: usize = usize::MAX;

/// Ms a runtime may start beyond its first GOMAXPROCS, for goroutines in `blocking` calls and
/// the Ms that take over their Ps.
const EXTRA_MS: usize = 64;

/// Goroutine states, as Go's `_Grunnable`, `_Grunning`, `_Gwaiting`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GStatus {
    Runnable = 0,
    Running = 1,
    Waiting = 2,
    /// Exited; the G waits in a free list for reuse (Go's `_Gdead`).
    Dead = 3,
}

/// A goroutine.
pub(crate) struct G {
    /// The goroutine's number; a G reused from a free list gets a new one.
    pub(crate) id: AtomicU64,
    pub(crate) sched: &'static Sched,
    /// Informational state; written by whoever moves the G, read for decisions only by the
    /// deadlock check (see `deadlocked`).
    pub(crate) status: AtomicU8,
    /// Index of the M (= P) this goroutine is bound to since its first run, or `NO_HOME`.
    /// Written once by that M before the first switch; read by thieves under a run queue lock
    /// and by `ready` (which only readies Gs that parked, hence ran, hence have a home).
    pub(crate) home: AtomicUsize,
    /// Saved stack pointer while switched out. Written by the switch on the thread running the G;
    /// read by that thread, or by the collector with the world stopped (ordered by `M::running`).
    pub(crate) sp: UnsafeCell<StackPointer>,
    /// The stack, from the first run on (taken lazily, so that queued goroutines that never ran
    /// cost no stack memory). Written by the home M before the first switch; read by it, and by
    /// the collector with the world stopped.
    pub(crate) stack: UnsafeCell<Option<Stack>>,
    /// The closure, until the first run takes it. Owned by whoever holds the G.
    pub(crate) entry: UnsafeCell<Option<Entry>>,
    /// When the G was last queued (see `Sched::stamp`): the owner runs its two queues in one
    /// FIFO order by comparing the heads' stamps.
    pub(crate) queued_at: AtomicU64,
    /// Goroutine-local values (`goro::Local`). Only the running goroutine touches them; dropped
    /// when it exits, on its own stack, until none is left (see `drop_locals`).
    pub(crate) locals: UnsafeCell<Locals>,
    /// Whether sysmon has released the stack's memory while the goroutine is parked.
    pub(crate) parked_stack: ParkedStack,
    /// Stack segments beyond the slot, innermost last (see `grow`). Changed only by the
    /// goroutine itself; read by its M, by sysmon while it is parked and by the collector.
    pub(crate) segments: UnsafeCell<Vec<Segment>>,
    /// Room for the wait record of the one operation the goroutine is blocked in (see
    /// [`wait_space`]). Only that operation touches it.
    pub(crate) wait_space: UnsafeCell<MaybeUninit<[usize; WAIT_SPACE_WORDS]>>,
}

/// The size of a G's `wait_space`, in words: a channel record with a value of up to 64 bytes.
pub(crate) const WAIT_SPACE_WORDS: usize = 14;

/// A pointer to a G, passed between threads through run queues and wait queues.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct GRef(NonNull<G>);

// SAFETY: a G is handed from thread to thread only through mutex-protected queues, and its
// interior-mutable fields are accessed only by the thread that currently runs or owns it (see the
// field docs), so sharing the pointer is sound.
unsafe impl Send for GRef {}

// SAFETY: as above.
unsafe impl Sync for GRef {}

impl GRef {
    pub(crate) fn as_ptr(self) -> *mut G {
        self.0.as_ptr()
    }

    pub(crate) fn from_non_null(g: NonNull<G>) -> GRef {
        GRef(g)
    }

    pub(crate) fn g(&self) -> &G {
        // SAFETY: a G lives until `destroy` frees it, after it has exited and left every queue
        // (or forever, when its runtime abandons it).
        unsafe { self.0.as_ref() }
    }
}

/// What a goroutine asks g0 to do with the world stopped: run `cycle`, restart the world, and
/// call `restarted` with how long it stood stopped.
pub(crate) struct StopRequest {
    pub(crate) cycle: *mut dyn FnMut(),
    pub(crate) restarted: *mut dyn FnMut(std::time::Duration),
}

/// Why a goroutine switched to g0; set by the goroutine, consumed by g0.
#[derive(Clone, Copy)]
pub(crate) enum Request {
    None,
    Yield,
    /// Parked; g0 runs the closure (which releases the lock the goroutine queued itself under).
    /// The flag says whether wakers leave the goroutine's stack alone (see `shrink`).
    Park(*mut dyn FnMut(), bool),
    Exit,
    /// Stopped at a safe point because the world is stopping.
    Stop,
    /// Asked g0 to stop the world and run what the request (on the goroutine's stack) says.
    /// One thin pointer: every switch copies a `Request`.
    StopTheWorld(*const StopRequest),
    /// Back from `blocking`: queue the goroutine until this M holds a P again.
    Reschedule,
}

/// A worker thread.
pub(crate) struct M {
    pub(crate) id: usize,
    /// The runtime this M belongs to (leaked, so valid forever).
    pub(crate) sched: NonNull<Sched>,
    /// g0's saved stack pointer while a goroutine runs. Own thread only.
    pub(crate) g0_sp: UnsafeCell<StackPointer>,
    /// The goroutine running on this M, if any. Own thread only.
    pub(crate) curg: Cell<Option<GRef>>,
    /// The request of the goroutine that last switched to g0. Own thread only.
    pub(crate) request: Cell<Request>,
    /// True while this M runs a goroutine. SeqCst, paired with `Sched::stopping` (see `stw`).
    pub(crate) running: AtomicBool,
    /// True while this M looks for work or sleeps; a waker that swaps it to false must unpark.
    /// On its own lines: wakers on other threads read and swap it.
    pub(crate) idle: Padded<sync_prims::AtomicBool>,
    pub(crate) parker: ThreadParker,
    /// Schedules so far, for the global queue's fairness rule. Own thread only.
    pub(crate) tick: Cell<u32>,
    /// Goroutines this M has started running; sysmon reads it to see a goroutine that runs long.
    pub(crate) schedtick: AtomicU64,
    /// Goroutines made and retired on this M; written only by this M (no read-modify-write),
    /// summed by `Sched::live` (a shared counter would bounce between the spawning and the
    /// running M on every goroutine).
    pub(crate) spawned: AtomicUsize,
    pub(crate) exited: AtomicUsize,
    /// Set by sysmon when the running goroutine has had its time slice; the goroutine yields at
    /// its next safe point.
    pub(crate) preempt: AtomicBool,
    /// The id of the goroutine this M last switched to; read by sysmon to name a goroutine that
    /// runs too long. Written only by this M.
    pub(crate) running_goroutine: AtomicU64,
    /// The P this M holds, or `NO_P`. Set by the M when it takes a P from the free list, or by
    /// the M that hands it one (under `Sched::pidle`, before unparking it); cleared by the M.
    pub(crate) p: AtomicUsize,
    /// Goroutines bound to this M that can run again (readied, yielded, stopped for the
    /// collector, back from `blocking`): any thread pushes, only this M pops.
    /// On its own lines: wakers on other threads lock it.
    pub(crate) ready: Padded<RankedMutex<VecDeque<GRef>>>,
    /// `ready`'s length, written under its lock: a spinning M polls it without the lock.
    pub(crate) ready_len: Padded<AtomicUsize>,
    /// Go's `runnext`: the goroutine this M's running goroutine (or g0) last readied, run next
    /// and in the readier's time slice. Own thread only; set only while the M holds a P, and
    /// moved to the front of `ready` when it gives the P up.
    pub(crate) runnext: Cell<Option<GRef>>,
    /// The sysmon epoch in which this M last ran `Config::on_idle`. Own thread only.
    pub(crate) idle_hook_epoch: Cell<u64>,
    /// The goroutine `find_runnable` returned came from `runnext`: it inherits the time slice
    /// (sysmon's `schedtick` does not move), so a pair that readies each other cannot keep the
    /// M from its other goroutines for longer than one slice. Own thread only.
    pub(crate) inherit_slice: Cell<bool>,
}

// SAFETY: the `Cell`/`UnsafeCell` fields are touched only by the M's own thread (documented per
// field); other threads use only the atomics and the parker.
unsafe impl Sync for M {}

/// A processor: the right to run goroutines, with its queue of never-run goroutines, its timers
/// and a cache of stacks.
pub(crate) struct P {
    /// Goroutines that have not run yet: lock-free; the holder pushes and pops, thieves steal.
    pub(crate) runq: LocalQueue<GRef>,
    /// Stacks of exited goroutines, reused by the next first runs. Only the holder touches it.
    pub(crate) stacks: UnsafeCell<Vec<Stack>>,
    /// Exited Gs for the next spawns (Go's `gFree`). Only the holder touches it.
    pub(crate) gfree: UnsafeCell<Vec<GRef>>,
    /// This P's timers (`sleep`, `after`, `tick`).
    pub(crate) timers: Timers,
    /// Whether an M holds this P. Changed under `Sched::pidle`.
    pub(crate) held: AtomicBool,
    /// The `Sched::stack_release` generation this P's stack cache was last released for. Only
    /// the holder touches it.
    pub(crate) stacks_released_for: Cell<u64>,
}

// SAFETY: `stacks` and `stacks_released_for` are touched only by the M holding the P (ownership
// moves under `Sched::pidle`); `runq` is lock-free.
unsafe impl Sync for P {}

/// A value alone on its cache lines (two, against the adjacent-line prefetcher): counters that
/// every spawn or enqueue writes must not share a line with the flags every schedule reads.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One runtime's scheduler state. Leaked when the runtime ends, because wakers on threads goro
/// does not own may still hold pointers to its Gs (and ignore them, seeing `shutdown`).
pub(crate) struct Sched {
    pub(crate) config: Config,
    /// How sysmon releases the stacks of long-parked goroutines, decided at start.
    pub(crate) stash: StashMode,
    pub(crate) ms: Box<[M]>,
    pub(crate) ps: Box<[P]>,
    /// Gs that have never run, from threads that are not Ms and from full local queues.
    pub(crate) global: RankedMutex<VecDeque<GRef>>,
    /// Exited Gs beyond what the Ps keep, moved in batches (Go's `sched.gFree`).
    pub(crate) gfree: RankedMutex<Vec<GRef>>,
    /// `gfree`'s length, written under its lock: spawners skip the lock when it is empty.
    pub(crate) gfree_len: Padded<AtomicUsize>,
    /// `pidle.free`'s length, written under `pidle`: a spawn wakes no M while no P is free (an
    /// idle M could not run the goroutine without one; Go's `npidle` test in `wakep`).
    pub(crate) idle_ps: Padded<sync_prims::AtomicUsize>,
    /// Every G ever made, in the list of the P that made it (from other threads: list 0). Gs
    /// never leave: an exited one is marked dead and reused (Go's `allgs`). The collector's
    /// root set, and the set sysmon's stack passes walk.
    pub(crate) allg: Box<[RankedMutex<Vec<GRef>>]>,
    /// Goroutines made by threads that are not Ms of this runtime (the main one included); see
    /// `live`.
    pub(crate) spawned_elsewhere: Padded<AtomicUsize>,
    pub(crate) next_id: Padded<AtomicU64>,
    /// Set when the main goroutine returns: every M leaves its loop.
    pub(crate) shutdown: AtomicBool,
    /// The stop-the-world flag and its lock (see `stw`).
    pub(crate) stopping: AtomicBool,
    pub(crate) stw_lock: RankedMutex<()>,
    pub(crate) stw_cv: Condvar,
    /// sysmon sleeps here between ticks; `begin_shutdown` wakes it.
    pub(crate) sysmon_lock: RankedMutex<()>,
    pub(crate) sysmon_cv: Condvar,
    /// GOMAXPROCS: Ps `0..gomaxprocs` may run goroutines. Changed under `pidle`.
    pub(crate) gomaxprocs: AtomicUsize,
    /// Ms started so far (`ms[..started]`).
    pub(crate) started: AtomicUsize,
    /// Free Ps, and Ms that wait for one to run goroutines bound to them.
    pub(crate) pidle: RankedMutex<PIdle>,
    /// Threads of the Ms started after `run` began.
    pub(crate) threads: RankedMutex<Vec<std::thread::JoinHandle<()>>>,
    /// Stamps queue entries with one FIFO order where there is no time-stamp counter (see
    /// `stamp`).
    #[cfg_attr(
        target_arch = "x86_64",
        allow(dead_code, reason = "x86_64 stamps with RDTSC")
    )]
    pub(crate) enqueued: Padded<AtomicU64>,
    /// Ms spinning for work before they sleep (Go's `nmspinning`); wakers skip the futex while
    /// one spins.
    pub(crate) spinning: Padded<sync_prims::AtomicUsize>,
    /// sysmon's epoch for releasing parked stacks (see `shrink`); read at every park.
    pub(crate) stack_epoch: AtomicU64,
    /// Set (if clear) at every park, cleared by sysmon when it starts a pass: a pass is worth
    /// doing only if something parked since the last one.
    pub(crate) parks_since_pass: AtomicBool,
    /// Set by [`release_stack_memory`].
    pub(crate) stack_pass_requested: AtomicBool,
    /// Bumped by [`release_stack_memory`]: each M releases its P's cached stacks when it sees a
    /// new value.
    pub(crate) stack_release: AtomicU64,
}

/// The idle-P list and the Ms waiting for a P.
#[derive(Default)]
pub(crate) struct PIdle {
    pub(crate) free: Vec<usize>,
    pub(crate) waiting: VecDeque<usize>,
}

impl Sched {
    /// The Ms started so far.
    pub(crate) fn ms(&self) -> &[M] {
        &self.ms[..self.started.load(Ordering::Acquire).min(self.ms.len())]
    }

    /// Stamps `g` with its queue position: the CPU's invariant time-stamp counter where there
    /// is one (an uncontended read, where a shared counter would bounce between cores on every
    /// cross-M wake-up; a few cycles of skew between cores only blurs the order of goroutines
    /// queued within them), else the next value of a shared counter.
    pub(crate) fn stamp(&self, g: GRef) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: RDTSC exists on every x86_64 CPU and has no side effects.
        let at = unsafe { core::arch::x86_64::_rdtsc() };
        #[cfg(not(target_arch = "x86_64"))]
        let at = self.enqueued.fetch_add(1, Ordering::Relaxed);
        g.g().queued_at.store(at, Ordering::Relaxed);
    }

    /// GOMAXPROCS now.
    pub(crate) fn gomaxprocs(&self) -> usize {
        self.gomaxprocs.load(Ordering::Acquire)
    }

    /// Goroutines not yet exited (Go's `gcount`): exact while the Ms are idle, a moment's
    /// estimate while they run.
    ///
    /// Exits are read first, with acquire: a goroutine's exit happens after its spawn (the
    /// queue hand-off orders them), so every spawn behind a counted exit is counted too, and
    /// the sum is never below the number live when the reading began.
    pub(crate) fn live(&self) -> usize {
        let ms = self.ms();
        let retired = ms.iter().fold(0usize, |n, m| {
            n.wrapping_add(m.exited.load(Ordering::Acquire))
        });
        let made = ms
            .iter()
            .fold(self.spawned_elsewhere.load(Ordering::Relaxed), |n, m| {
                n.wrapping_add(m.spawned.load(Ordering::Relaxed))
            });
        made.saturating_sub(retired)
    }

    /// Free Ps now (for schedtrace).
    pub(crate) fn idle_procs(&self) -> usize {
        lock(&self.pidle).free.len()
    }

    /// Ms spinning for work now (for schedtrace).
    pub(crate) fn spinning_ms(&self) -> usize {
        self.spinning.load(Ordering::Relaxed)
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn local_queue_len(&self, p: usize) -> usize {
        self.ps[p].runq.len()
    }

    pub(crate) fn global_queue(&self) -> &RankedMutex<VecDeque<GRef>> {
        &self.global
    }

    /// The timers a new timer of the caller goes on: its M's P, or P 0 from other threads.
    pub(crate) fn timers_for_caller(&self) -> &Timers {
        match current_m() {
            Some(m) if std::ptr::eq(m.sched(), self) && m.p() != NO_P => &self.ps[m.p()].timers,
            _ => &self.ps[0].timers,
        }
    }

    /// Whether any never-run goroutine waits in a P's queue or the global queue.
    pub(crate) fn runnable_anywhere(&self) -> bool {
        !lock(&self.global).is_empty() || self.ps.iter().any(|p| !p.runq.is_empty())
    }

    /// Runs every expired timer of every P; returns how many fired.
    pub(crate) fn run_all_timers(&self, now: Instant) -> usize {
        self.ps.iter().map(|p| p.timers.run_expired(now)).sum()
    }

    /// The earliest pending deadline over all Ps.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.ps
            .iter()
            .filter_map(|p| p.timers.next_deadline())
            .min()
    }

    /// Whether any P has a pending timer.
    pub(crate) fn has_timers(&self) -> bool {
        self.ps.iter().any(|p| !p.timers.is_empty())
    }

    /// Sleeps for `delay`, or until the runtime shuts down.
    pub(crate) fn sysmon_sleep(&self, delay: std::time::Duration) {
        let guard = lock(&self.sysmon_lock);
        if !self.shutdown.load(Ordering::Acquire) {
            let _ = guard.wait_timeout(&self.sysmon_cv, delay);
        }
    }
}

impl M {
    pub(crate) fn new(id: usize, sched: NonNull<Sched>) -> M {
        M {
            id,
            sched,
            g0_sp: UnsafeCell::new(StackPointer(std::ptr::null_mut())),
            curg: Cell::new(None),
            request: Cell::new(Request::None),
            ready_len: Padded(AtomicUsize::new(0)),
            runnext: Cell::new(None),
            inherit_slice: Cell::new(false),
            idle_hook_epoch: Cell::new(u64::MAX),
            running: AtomicBool::new(false),
            idle: Padded(sync_prims::AtomicBool::new(false)),
            parker: ThreadParker::default(),
            tick: Cell::new(0),
            schedtick: AtomicU64::new(0),
            spawned: AtomicUsize::new(0),
            exited: AtomicUsize::new(0),
            preempt: AtomicBool::new(false),
            running_goroutine: AtomicU64::new(0),
            p: AtomicUsize::new(NO_P),
            ready: Padded(RankedMutex::new(Rank::Ready, VecDeque::new())),
        }
    }

    /// The P this M holds. Only the M itself calls this while it runs goroutines.
    pub(crate) fn p(&self) -> usize {
        self.p.load(Ordering::Acquire)
    }

    /// Queues a goroutine bound to this M (any thread); `front` puts it first.
    pub(crate) fn push_ready(&self, g: GRef, front: bool) {
        let mut ready = lock(&self.ready);
        if front {
            g.g().queued_at.store(0, Ordering::Relaxed);
            ready.push_front(g);
        } else {
            self.sched().stamp(g);
            ready.push_back(g);
        }
        self.ready_len.store(ready.len(), Ordering::Relaxed);
    }

    /// Whether the M is looking for work or asleep.
    /// Goroutines bound to this M that wait to run (for sysmon's report).
    pub(crate) fn waiting(&self) -> usize {
        self.ready_len.load(Ordering::Relaxed)
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    pub(crate) fn sched(&self) -> &'static Sched {
        // SAFETY: an M is created only by `run`, pointing at the leaked Sched that owns it, which
        // is initialised before any thread reads an M.
        unsafe { self.sched.as_ref() }
    }
}

/// The running runtime (null when none).
pub(crate) static CURRENT: AtomicPtr<Sched> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    pub(crate) static CURRENT_M: Cell<*const M> = const { Cell::new(std::ptr::null()) };
}

pub(crate) fn current_m() -> Option<&'static M> {
    let m = CURRENT_M.with(Cell::get);
    // SAFETY: CURRENT_M points into a leaked `Sched` while this thread is its M.
    unsafe { m.as_ref() }
}

pub(crate) fn current_sched() -> Option<&'static Sched> {
    if let Some(m) = current_m() {
        return Some(m.sched());
    }
    // Acquire: pairs with the Release store in `run`.
    let sched = CURRENT.load(Ordering::Acquire);
    // SAFETY: a published Sched is leaked, never freed.
    unsafe { sched.as_ref() }
}

/// The goroutine running on this thread, if the caller is one.
pub(crate) fn current_g() -> Option<GRef> {
    current_m().and_then(|m| m.curg.get())
}

/// Whether the caller runs on a goroutine.
pub fn is_goroutine() -> bool {
    current_g().is_some()
}

/// The id of the calling goroutine (1 is the main goroutine).
pub fn current_goroutine_id() -> Option<u64> {
    current_g().map(|g| g.g().id())
}

/// How many goroutines exist in the running runtime (Go's `runtime.NumGoroutine`).
pub fn num_goroutine() -> usize {
    current_sched().map_or(0, Sched::live)
}

/// How many Ps the running runtime has (GOMAXPROCS), or 0 outside a runtime.
pub fn procs() -> usize {
    current_sched().map_or(0, |s| s.gomaxprocs())
}

/// How many of the running runtime's Ps are idle (no M runs goroutines on them), 0 outside a
/// runtime: a hint, read without a lock, for work that should take only CPUs the goroutines
/// leave (the collector's mark helpers).
pub fn idle_procs() -> usize {
    current_sched().map_or(0, |s| s.idle_ps.load(Ordering::Relaxed))
}

/// Switches from the running goroutine to its M's g0 with `request`; returns when g0 resumes it.
///
/// # Panics
/// Panics if the caller is not a goroutine.
pub(crate) fn switch_to_g0(request: Request) {
    let m = current_m().expect("switch_to_g0 outside an M");
    let g = m.curg.get().expect("switch_to_g0 outside a goroutine");
    m.request.set(request);
    // SAFETY: we run on `g`'s stack; its context is saved into `g.sp` (read later only by this M
    // or by the collector with the world stopped) and g0's context, saved by `execute`, resumes.
    unsafe { switch(g.g().sp.get(), *m.g0_sp.get()) };
}

/// What a G runs on its first switch.
pub(crate) enum Entry {
    /// A plain closure (the main goroutine).
    Closure(Box<dyn FnOnce() + Send>),
    /// A spawned goroutine's task: closure and result packet in one allocation.
    Task(Arc<dyn Run>),
}

impl G {
    pub(crate) fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// The stack the goroutine runs on (or was switched out on): its innermost segment, else its
    /// slot; `None` before its first run.
    ///
    /// # Safety
    /// The caller must be the goroutine itself, or the goroutine must be switched out and the
    /// caller its M, sysmon holding its allg lock while it is parked, or the collector.
    pub(crate) unsafe fn current_stack(&self) -> Option<&Stack> {
        // SAFETY: the caller's contract: nobody changes the fields meanwhile.
        unsafe {
            match (*self.segments.get()).last() {
                Some(segment) => Some(&segment.stack),
                None => (*self.stack.get()).as_ref(),
            }
        }
    }
}

/// One goroutine's [`Local`] values (`G::locals`). Only the running goroutine touches it: its
/// closure and, at exit, `drop_locals` and the destructors it runs.
pub(crate) struct Locals {
    /// In order of creation.
    pub(crate) values: Vec<LocalValue>,
    /// While the goroutine exits, the generation of the value whose destructor runs; `None`
    /// before.
    pub(crate) dropping: Option<u32>,
}

/// A value of a [`Local`], boxed: pushing more values does not move it.
pub(crate) struct LocalValue {
    /// The `Local`'s address.
    pub(crate) key: usize,
    /// 0 for a value made while the goroutine ran, n + 1 for one made while a value of
    /// generation n was being dropped.
    pub(crate) generation: u32,
    pub(crate) value: Box<dyn std::any::Any>,
}

impl Sched {
    /// Makes (and leaks) the scheduler of a new runtime: Ps for what `set_max_procs` may enable
    /// later, within reason for a leaked structure, and Ms for them and for `blocking` calls;
    /// M i holds P i for the first `config.procs`. Not yet published in `CURRENT`.
    pub(crate) fn new(config: Config) -> &'static Sched {
        let procs = config.procs.clamp(1, MAX_PROCS);
        let nps = procs
            .max(4 * std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(16, MAX_PROCS)
            .max(procs);
        // The Ms point back at the Sched that owns them: reserve its (leaked) memory first.
        let slot = Box::leak(Box::<Sched>::new_uninit());
        let address = NonNull::from(&mut *slot).cast::<Sched>();
        let sched: &'static Sched = slot.write(Sched {
            ms: (0..nps + EXTRA_MS).map(|id| M::new(id, address)).collect(),
            ps: (0..nps)
                .map(|p| P {
                    runq: LocalQueue::new(),
                    stacks: UnsafeCell::new(Vec::new()),
                    gfree: UnsafeCell::new(Vec::new()),
                    timers: Timers::default(),
                    held: AtomicBool::new(p < procs),
                    stacks_released_for: Cell::new(0),
                })
                .collect(),
            stash: StashMode::choose(&config),
            config,
            global: RankedMutex::new(Rank::Global, VecDeque::new()),
            gfree: RankedMutex::new(Rank::Gfree, Vec::new()),
            gfree_len: Padded(AtomicUsize::new(0)),
            idle_ps: Padded(sync_prims::AtomicUsize::new(0)),
            allg: (0..nps)
                .map(|_| RankedMutex::new(Rank::Allg, Vec::new()))
                .collect(),
            spawned_elsewhere: Padded(AtomicUsize::new(0)),
            next_id: Padded(AtomicU64::new(1)),
            shutdown: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stw_lock: RankedMutex::new(Rank::StwLock, ()),
            stw_cv: Condvar::new(),
            sysmon_lock: RankedMutex::new(Rank::SysmonLock, ()),
            sysmon_cv: Condvar::new(),
            gomaxprocs: AtomicUsize::new(procs),
            started: AtomicUsize::new(procs),
            pidle: RankedMutex::new(Rank::Pidle, PIdle::default()),
            threads: RankedMutex::new(Rank::Threads, Vec::new()),
            enqueued: Padded(AtomicU64::new(1)),
            spinning: Padded(sync_prims::AtomicUsize::new(0)),
            stack_epoch: AtomicU64::new(0),
            parks_since_pass: AtomicBool::new(false),
            stack_pass_requested: AtomicBool::new(false),
            stack_release: AtomicU64::new(0),
        });
        // M i starts with P i.
        for (i, m) in sched.ms[..procs].iter().enumerate() {
            m.p.store(i, Ordering::Release);
        }
        sched
    }
}

/// A stack segment of a goroutine (see `grow`).
pub(crate) struct Segment {
    pub(crate) stack: Stack,
    /// The stack pointer saved on the previous stack when this segment began: the previous
    /// stack's live part is `[caller_sp, its top)`.
    pub(crate) caller_sp: StackPointer,
}

/// A goroutine's task: run once, on the goroutine, by its first switch (see `join::Task`).
pub(crate) trait Run: Send + Sync {
    /// Runs the closure and stores its outcome.
    ///
    /// # Safety
    /// May be called only once, by the goroutine the task was made for.
    unsafe fn run(&self);
}

impl runq::Item for GRef {
    fn into_raw(self) -> NonNull<()> {
        self.0.cast()
    }

    fn from_raw(raw: NonNull<()>) -> GRef {
        GRef(raw.cast())
    }
}

impl GStatus {
    fn from_u8(status: u8) -> GStatus {
        match status {
            0 => GStatus::Runnable,
            1 => GStatus::Running,
            2 => GStatus::Waiting,
            3 => GStatus::Dead,
            _ => throw(&format!("goroutine status {status}")),
        }
    }

    /// The transitions `proc` makes (Go's `casgstatus` table, smaller):
    ///
    /// ```text
    ///   new ──> Runnable ──execute──> Running ──park──> Waiting ──ready──> Runnable
    ///              ^  ^                 │  │
    ///              │  └─yield, stop, ───┘  └──exit──> Dead ──reuse (new_g)──> Runnable
    ///              │    back from blocking
    /// ```
    fn may_become(self, to: GStatus) -> bool {
        use GStatus::*;
        matches!(
            (self, to),
            (Runnable, Running)
                | (Running, Runnable | Waiting | Dead)
                | (Waiting, Runnable)
                | (Dead, Runnable)
        )
    }
}

impl G {
    /// The goroutine's status now (informational outside the deadlock check and the root walk;
    /// see `status`).
    pub(crate) fn status(&self, order: Ordering) -> GStatus {
        GStatus::from_u8(self.status.load(order))
    }

    /// Moves the goroutine to `to`, checking in debug builds that the move is one of the
    /// transitions [`GStatus::may_become`] allows (one Relaxed load: the writer of a status is
    /// the G's current holder, so it reads its own or a happens-before write).
    pub(crate) fn set_status(&self, to: GStatus, order: Ordering) {
        debug_assert!(
            self.status(Ordering::Relaxed).may_become(to),
            "goroutine {}: status {:?} may not become {:?}",
            self.id(),
            self.status(Ordering::Relaxed),
            to
        );
        self.status.store(to as u8, order);
    }
}
