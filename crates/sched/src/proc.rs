//! Gs, Ms and Ps, the scheduler loop, spawning, and the start and end of a runtime.
//!
//! ```text
//!   M0 (caller of run)      M1 (thread "goro-m1")        ...
//!   g0: schedule() loop      g0: schedule() loop
//!     |  switch  ^             |  switch  ^
//!     v          | request     v          | request
//!   G (on its own stack)     G
//!   P0.runq                  P1.runq          global queue (unstarted Gs only)
//! ```
//!
//! A goroutine returns control to g0 by [`switch_to_g0`] with a [`Request`] saying why (yield,
//! park, exit, stop for the collector, run a stop-the-world closure); g0 acts on it after the
//! switch, when the goroutine's registers are saved on its stack.

use crate::grow::{self, Segment};
use crate::join::{JoinHandle, Packet, Panic, Run, Task};
use crate::park::ThreadParker;
use crate::runq::LocalQueue;
use crate::shrink::{ParkedStack, Released, StashMode};
use crate::stw;
use crate::timer::Timers;
use goro_alloc::nosuspend::NoSuspend;
use goro_stack::{Stack, StackPointer, init_stack, switch};
use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Beyond this many queued Gs, new goroutines go to the global queue instead of the local one.
pub const LOCAL_QUEUE_SOFT_LIMIT: usize = 256;
/// Every this many schedules an M looks at the global queue first (Go's fairness rule).
const GLOBAL_QUEUE_INTERVAL: u32 = 61;
/// `G::home` of a goroutine that has not run yet (and may still move to any M).
const NO_HOME: usize = usize::MAX;
/// `M::p` of an M that holds no P.
const NO_P: usize = usize::MAX;
/// Ms a runtime may start beyond its first GOMAXPROCS, for goroutines in `blocking` calls and
/// the Ms that take over their Ps.
const EXTRA_MS: usize = 64;
/// Go's maximum stack size: the default of `Config::max_stack_size`.
pub const DEFAULT_MAX_STACK_SIZE: usize = 1 << 30;
/// The most Ps `set_max_procs` can enable.
pub const MAX_PROCS: usize = 256;

/// Settings of one runtime.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of Ps (GOMAXPROCS), and so of worker threads. At least 1.
    pub procs: usize,
    /// Usable bytes of each goroutine stack.
    pub stack_size: usize,
    /// Called on every M thread (the caller of `run` included) before it schedules anything.
    pub on_thread_start: Option<fn()>,
    /// Called on every M thread after it has stopped scheduling.
    pub on_thread_stop: Option<fn()>,
    /// Called on an M thread about to sleep for want of work, at most once per sysmon epoch
    /// (half a second) per M: the facade gives the thread's allocator cache back here.
    pub on_idle: Option<fn()>,
    /// `GORO_DEBUG=schedtrace=MS`: print Go's scheduler line this often.
    pub schedtrace: Option<std::time::Duration>,
    /// The most bytes a goroutine's stacks may hold together, its slot and the segments
    /// `maybe_grow` adds (Go's 1 GiB maximum stack size).
    pub max_stack_size: usize,
    /// Let goroutines that have run move to another M at their blocking points (a readied
    /// goroutine runs on the M that readied it or wherever a thief takes it), as Go's do. Sound
    /// only under the contract of `goro::Builder::migrate_goroutines`.
    pub migrate: Promised,
    /// Stash long-parked goroutines' stacks (see `shrink`) even where the stash trap cannot run,
    /// instead of only releasing the pages below their stack pointers. Sound only under the
    /// contract of `goro::Builder::stash_parked_stacks`. (Where the trap runs, stacks are
    /// stashed under it whatever this says.)
    pub stash_parked_stacks: Promised,
    /// The kernel id of another thread of the runtime's that the deadlock check must not count
    /// as one that could wake a goroutine, if it runs (the collector's sweeper).
    pub runtime_thread: Option<fn() -> Option<i32>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            procs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stack_size: goro_stack::DEFAULT_STACK_SIZE,
            on_thread_start: None,
            on_thread_stop: None,
            on_idle: None,
            schedtrace: None,
            stash_parked_stacks: Promised::OFF,
            migrate: Promised::OFF,
            max_stack_size: DEFAULT_MAX_STACK_SIZE,
            runtime_thread: None,
        }
    }
}

/// A setting of [`Config`] that is sound only under a promise its user makes: it can be turned
/// on only in an `unsafe` block, so that safe code using goro-sched directly cannot bypass the
/// contracts `goro::Builder` puts on the same settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Promised(bool);

impl Promised {
    /// Off: the safe default.
    pub const OFF: Promised = Promised(false);

    /// On.
    ///
    /// # Safety
    /// May be called only under the contract of the setting it is given to (see the field of
    /// [`Config`]: `goro::Builder::migrate_goroutines` for `migrate`,
    /// `goro::Builder::stash_parked_stacks` or `stash_parked_stacks_unchecked` for
    /// `stash_parked_stacks`).
    pub const unsafe fn on() -> Promised {
        Promised(true)
    }

    /// Whether it is on.
    pub const fn is_on(self) -> bool {
        self.0
    }
}

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
    id: AtomicU64,
    sched: &'static Sched,
    /// Informational state; written by whoever moves the G, read for decisions only by the
    /// deadlock check (see `deadlocked`).
    status: AtomicU8,
    /// Index of the M (= P) this goroutine is bound to since its first run, or `NO_HOME`.
    /// Written once by that M before the first switch; read by thieves under a run queue lock
    /// and by `ready` (which only readies Gs that parked, hence ran, hence have a home).
    home: AtomicUsize,
    /// Saved stack pointer while switched out. Written by the switch on the thread running the G;
    /// read by that thread, or by the collector with the world stopped (ordered by `M::running`).
    sp: UnsafeCell<StackPointer>,
    /// The stack, from the first run on (taken lazily, so that queued goroutines that never ran
    /// cost no stack memory). Written by the home M before the first switch; read by it, and by
    /// the collector with the world stopped.
    stack: UnsafeCell<Option<Stack>>,
    /// The closure, until the first run takes it. Owned by whoever holds the G.
    entry: UnsafeCell<Option<Entry>>,
    /// When the G was last queued (see `Sched::stamp`): the owner runs its two queues in one
    /// FIFO order by comparing the heads' stamps.
    queued_at: AtomicU64,
    /// Goroutine-local values (`goro::Local`). Only the running goroutine touches them; dropped
    /// when it exits, on its own stack, until none is left (see `drop_locals`).
    locals: UnsafeCell<Locals>,
    /// Whether sysmon has released the stack's memory while the goroutine is parked.
    parked_stack: ParkedStack,
    /// Stack segments beyond the slot, innermost last (see `grow`). Changed only by the
    /// goroutine itself; read by its M, by sysmon while it is parked and by the collector.
    segments: UnsafeCell<Vec<Segment>>,
    /// Room for the wait record of the one operation the goroutine is blocked in (see
    /// [`wait_space`]). Only that operation touches it.
    wait_space: UnsafeCell<MaybeUninit<[usize; WAIT_SPACE_WORDS]>>,
}

/// The size of a G's `wait_space`, in words: a channel record with a value of up to 64 bytes.
const WAIT_SPACE_WORDS: usize = 14;

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

    fn g(&self) -> &G {
        // SAFETY: a G lives until `destroy` frees it, after it has exited and left every queue
        // (or forever, when its runtime abandons it).
        unsafe { self.0.as_ref() }
    }
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
    /// Asked g0 to stop the world and run the closure.
    StopTheWorld(*mut dyn FnMut()),
    /// Back from `blocking`: queue the goroutine until this M holds a P again.
    Reschedule,
}

/// A worker thread.
pub(crate) struct M {
    id: usize,
    /// The runtime this M belongs to (leaked, so valid forever).
    sched: NonNull<Sched>,
    /// g0's saved stack pointer while a goroutine runs. Own thread only.
    g0_sp: UnsafeCell<StackPointer>,
    /// The goroutine running on this M, if any. Own thread only.
    curg: Cell<Option<GRef>>,
    /// The request of the goroutine that last switched to g0. Own thread only.
    request: Cell<Request>,
    /// True while this M runs a goroutine. SeqCst, paired with `Sched::stopping` (see `stw`).
    pub(crate) running: AtomicBool,
    /// True while this M looks for work or sleeps; a waker that swaps it to false must unpark.
    /// On its own lines: wakers on other threads read and swap it.
    idle: Padded<AtomicBool>,
    parker: ThreadParker,
    /// Schedules so far, for the global queue's fairness rule. Own thread only.
    tick: Cell<u32>,
    /// Goroutines this M has started running; sysmon reads it to see a goroutine that runs long.
    pub(crate) schedtick: AtomicU64,
    /// Goroutines made and retired on this M; written only by this M (no read-modify-write),
    /// summed by `Sched::live` (a shared counter would bounce between the spawning and the
    /// running M on every goroutine).
    spawned: AtomicUsize,
    exited: AtomicUsize,
    /// Set by sysmon when the running goroutine has had its time slice; the goroutine yields at
    /// its next safe point.
    pub(crate) preempt: AtomicBool,
    /// The id of the goroutine this M last switched to; read by sysmon to name a goroutine that
    /// runs too long. Written only by this M.
    pub(crate) running_goroutine: AtomicU64,
    /// The P this M holds, or `NO_P`. Set by the M when it takes a P from the free list, or by
    /// the M that hands it one (under `Sched::pidle`, before unparking it); cleared by the M.
    p: AtomicUsize,
    /// Goroutines bound to this M that can run again (readied, yielded, stopped for the
    /// collector, back from `blocking`): any thread pushes, only this M pops.
    /// On its own lines: wakers on other threads lock it.
    ready: Padded<Mutex<VecDeque<GRef>>>,
    /// `ready`'s length, written under its lock: a spinning M polls it without the lock.
    ready_len: Padded<AtomicUsize>,
    /// Go's `runnext`: the goroutine this M's running goroutine (or g0) last readied, run next
    /// and in the readier's time slice. Own thread only; set only while the M holds a P, and
    /// moved to the front of `ready` when it gives the P up.
    runnext: Cell<Option<GRef>>,
    /// The sysmon epoch in which this M last ran `Config::on_idle`. Own thread only.
    idle_hook_epoch: Cell<u64>,
    /// The goroutine `find_runnable` returned came from `runnext`: it inherits the time slice
    /// (sysmon's `schedtick` does not move), so a pair that readies each other cannot keep the
    /// M from its other goroutines for longer than one slice. Own thread only.
    inherit_slice: Cell<bool>,
}

// SAFETY: the `Cell`/`UnsafeCell` fields are touched only by the M's own thread (documented per
// field); other threads use only the atomics and the parker.
unsafe impl Sync for M {}

/// A processor: the right to run goroutines, with its queue of never-run goroutines, its timers
/// and a cache of stacks.
struct P {
    /// Goroutines that have not run yet: lock-free; the holder pushes and pops, thieves steal.
    runq: LocalQueue,
    /// Stacks of exited goroutines, reused by the next first runs. Only the holder touches it.
    stacks: UnsafeCell<Vec<Stack>>,
    /// Exited Gs for the next spawns (Go's `gFree`). Only the holder touches it.
    gfree: UnsafeCell<Vec<GRef>>,
    /// This P's timers (`sleep`, `after`, `tick`).
    timers: Timers,
    /// Whether an M holds this P. Changed under `Sched::pidle`.
    held: AtomicBool,
    /// The `Sched::stack_release` generation this P's stack cache was last released for. Only
    /// the holder touches it.
    stacks_released_for: Cell<u64>,
}

// SAFETY: `stacks` and `stacks_released_for` are touched only by the M holding the P (ownership
// moves under `Sched::pidle`); `runq` is lock-free.
unsafe impl Sync for P {}

/// Stacks a P keeps before it returns half of them to goro-stack's global pool.
const STACK_CACHE_MAX: usize = 64;

/// A value alone on its cache lines (two, against the adjacent-line prefetcher): counters that
/// every spawn or enqueue writes must not share a line with the flags every schedule reads.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One runtime's scheduler state. Leaked when the runtime ends, because wakers on threads goro
/// does not own may still hold pointers to its Gs (and ignore them, seeing `shutdown`).
pub(crate) struct Sched {
    config: Config,
    /// How sysmon releases the stacks of long-parked goroutines, decided at start.
    stash: StashMode,
    ms: Box<[M]>,
    ps: Box<[P]>,
    /// Gs that have never run, from threads that are not Ms and from full local queues.
    global: Mutex<VecDeque<GRef>>,
    /// Exited Gs beyond what the Ps keep, moved in batches (Go's `sched.gFree`).
    gfree: Mutex<Vec<GRef>>,
    /// `gfree`'s length, written under its lock: spawners skip the lock when it is empty.
    gfree_len: Padded<AtomicUsize>,
    /// `pidle.free`'s length, written under `pidle`: a spawn wakes no M while no P is free (an
    /// idle M could not run the goroutine without one; Go's `npidle` test in `wakep`).
    idle_ps: Padded<AtomicUsize>,
    /// Every G ever made, in the list of the P that made it (from other threads: list 0). Gs
    /// never leave: an exited one is marked dead and reused (Go's `allgs`). The collector's
    /// root set, and the set sysmon's stack passes walk.
    allg: Box<[Mutex<Vec<GRef>>]>,
    /// Goroutines made by threads that are not Ms of this runtime (the main one included); see
    /// `live`.
    spawned_elsewhere: Padded<AtomicUsize>,
    next_id: Padded<AtomicU64>,
    /// Set when the main goroutine returns: every M leaves its loop.
    pub(crate) shutdown: AtomicBool,
    /// The stop-the-world flag and its lock (see `stw`).
    pub(crate) stopping: AtomicBool,
    pub(crate) stw_lock: Mutex<()>,
    pub(crate) stw_cv: Condvar,
    /// sysmon sleeps here between ticks; `begin_shutdown` wakes it.
    sysmon_lock: Mutex<()>,
    sysmon_cv: Condvar,
    /// GOMAXPROCS: Ps `0..gomaxprocs` may run goroutines. Changed under `pidle`.
    gomaxprocs: AtomicUsize,
    /// Ms started so far (`ms[..started]`).
    started: AtomicUsize,
    /// Free Ps, and Ms that wait for one to run goroutines bound to them.
    pidle: Mutex<PIdle>,
    /// Threads of the Ms started after `run` began.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Stamps queue entries with one FIFO order where there is no time-stamp counter (see
    /// `stamp`).
    #[cfg_attr(
        target_arch = "x86_64",
        allow(dead_code, reason = "x86_64 stamps with RDTSC")
    )]
    enqueued: Padded<AtomicU64>,
    /// Ms spinning for work before they sleep (Go's `nmspinning`); wakers skip the futex while
    /// one spins.
    spinning: Padded<AtomicUsize>,
    /// sysmon's epoch for releasing parked stacks (see `shrink`); read at every park.
    pub(crate) stack_epoch: AtomicU64,
    /// Set (if clear) at every park, cleared by sysmon when it starts a pass: a pass is worth
    /// doing only if something parked since the last one.
    pub(crate) parks_since_pass: AtomicBool,
    /// Set by [`release_stack_memory`].
    pub(crate) stack_pass_requested: AtomicBool,
    /// Bumped by [`release_stack_memory`]: each M releases its P's cached stacks when it sees a
    /// new value.
    stack_release: AtomicU64,
}

/// The idle-P list and the Ms waiting for a P.
#[derive(Default)]
struct PIdle {
    free: Vec<usize>,
    waiting: VecDeque<usize>,
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
    fn stamp(&self, g: GRef) {
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

    pub(crate) fn global_queue(&self) -> &Mutex<VecDeque<GRef>> {
        &self.global
    }

    /// The timers a new timer of the caller goes on: its M's P, or P 0 from other threads.
    pub(crate) fn timers_for_caller(&self) -> &Timers {
        match current_m() {
            Some(m) if std::ptr::eq(m.sched(), self) && m.p() != NO_P => &self.ps[m.p()].timers,
            _ => &self.ps[0].timers,
        }
    }

    /// A timer was added: make sure an idle M's sleep accounts for it.
    pub(crate) fn timer_added(&self) {
        wake_idle(self, current_m().map(|m| m.id));
    }

    /// Runs every expired timer of every P; returns how many fired.
    fn run_all_timers(&self, now: Instant) -> usize {
        self.ps.iter().map(|p| p.timers.run_expired(now)).sum()
    }

    /// The earliest pending deadline over all Ps.
    fn next_deadline(&self) -> Option<Instant> {
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
            let _ = self.sysmon_cv.wait_timeout(guard, delay);
        }
    }
}

impl M {
    fn new(id: usize, sched: NonNull<Sched>) -> M {
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
            idle: Padded(AtomicBool::new(false)),
            parker: ThreadParker::default(),
            tick: Cell::new(0),
            schedtick: AtomicU64::new(0),
            spawned: AtomicUsize::new(0),
            exited: AtomicUsize::new(0),
            preempt: AtomicBool::new(false),
            running_goroutine: AtomicU64::new(0),
            p: AtomicUsize::new(NO_P),
            ready: Padded(Mutex::new(VecDeque::new())),
        }
    }

    /// The P this M holds. Only the M itself calls this while it runs goroutines.
    fn p(&self) -> usize {
        self.p.load(Ordering::Acquire)
    }

    /// Queues a goroutine bound to this M (any thread); `front` puts it first.
    fn push_ready(&self, g: GRef, front: bool) {
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
static CURRENT: AtomicPtr<Sched> = AtomicPtr::new(std::ptr::null_mut());
/// One runtime at a time per process; later `run` calls wait.
static RUN_LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    static CURRENT_M: Cell<*const M> = const { Cell::new(std::ptr::null()) };
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

    /// Reports the roots of the goroutines still alive when the main goroutine returned. They
    /// never run again; their stacks and closures stay allocated (as in Go, nothing of theirs is
    /// dropped).
    pub fn for_each_abandoned_root(&self, visit: &mut dyn FnMut(RootRange)) {
        let lists: Vec<_> = self.sched.allg.iter().map(lock).collect();
        roots_of(&lists, visit);
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
    let _one_at_a_time = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(error) = goro_stack::install_overflow_handler() {
        panic!("goro::run: cannot install the stack overflow handler: {error}");
    }
    let procs = config.procs.clamp(1, MAX_PROCS);
    // Ps that set_max_procs may enable later, within reason for a leaked structure.
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
        global: Mutex::new(VecDeque::new()),
        gfree: Mutex::new(Vec::new()),
        gfree_len: Padded(AtomicUsize::new(0)),
        idle_ps: Padded(AtomicUsize::new(0)),
        allg: (0..nps).map(|_| Mutex::new(Vec::new())).collect(),
        spawned_elsewhere: Padded(AtomicUsize::new(0)),
        next_id: Padded(AtomicU64::new(1)),
        shutdown: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        stw_lock: Mutex::new(()),
        stw_cv: Condvar::new(),
        sysmon_lock: Mutex::new(()),
        sysmon_cv: Condvar::new(),
        gomaxprocs: AtomicUsize::new(procs),
        started: AtomicUsize::new(procs),
        pidle: Mutex::new(PIdle::default()),
        threads: Mutex::new(Vec::new()),
        enqueued: Padded(AtomicU64::new(1)),
        spinning: Padded(AtomicUsize::new(0)),
        stack_epoch: AtomicU64::new(0),
        parks_since_pass: AtomicBool::new(false),
        stack_pass_requested: AtomicBool::new(false),
        stack_release: AtomicU64::new(0),
    });
    // M i starts with P i.
    for (i, m) in sched.ms[..procs].iter().enumerate() {
        m.p.store(i, Ordering::Release);
    }
    // Release: pairs with the Acquire in `current_sched`.
    CURRENT.store(sched as *const Sched as *mut Sched, Ordering::Release);

    let packet = Arc::new(Packet::new());
    let main_packet = packet.clone();
    let g = new_g(
        sched,
        Entry::Closure(Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(main)).map_err(Panic::new);
            main_packet.complete(result);
            begin_shutdown(current_m().expect("main goroutine runs on an M").sched());
        })),
    );
    // The main goroutine starts from the global queue: this thread is not yet M 0.
    lock(&sched.global).push_back(g);

    let threads: Vec<_> = (1..procs)
        .map(|id| {
            std::thread::Builder::new()
                .name(format!("goro-m{id}"))
                .spawn(move || m_main(&sched.ms[id]))
                .unwrap_or_else(|e| panic!("goro::run: cannot start worker thread {id}: {e}"))
        })
        .collect();
    let sysmon = std::thread::Builder::new()
        .name("goro-sysmon".into())
        .spawn(move || crate::sysmon::run(sched))
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
            if g.g().status.load(Ordering::Acquire) != GStatus::Dead as u8 {
                return true; // abandoned: a root of the retired heap, kept forever
            }
            // SAFETY: a dead G is in no queue or free list any more (cleared above) and no M
            // runs; it came from `Box::leak` in `new_g`.
            drop(unsafe { Box::from_raw(g.0.as_ptr()) });
            false
        });
    }
    let result = packet.take().unwrap_or_else(|| {
        unreachable!("the runtime shut down before the main goroutine finished")
    });
    Finished { result, sched }
}

fn m_main(m: &'static M) {
    let _runtime_thread = RuntimeThread::register();
    CURRENT_M.with(|c| c.set(m));
    // An alternate signal stack, so that a goroutine overflowing into its guard page is reported
    // as Go reports it rather than dying on the same exhausted stack.
    if let Err(error) = goro_stack::prepare_thread() {
        throw(&format!(
            "cannot prepare M {} for goroutines: {error}",
            m.id
        ));
    }
    if let Some(start) = m.sched().config.on_thread_start {
        start();
    }
    schedule(m);
    if let Some(stop) = m.sched().config.on_thread_stop {
        stop();
    }
    CURRENT_M.with(|c| c.set(std::ptr::null()));
}

fn begin_shutdown(sched: &Sched) {
    sched.shutdown.store(true, Ordering::Release);
    {
        let _guard = lock(&sched.sysmon_lock);
        sched.sysmon_cv.notify_all();
    }
    for m in sched.ms().iter() {
        m.idle.store(false, Ordering::SeqCst);
        m.parker.unpark();
    }
}

/// The scheduler loop of one M, on its g0.
fn schedule(m: &'static M) {
    let sched = m.sched();
    loop {
        if sched.shutdown.load(Ordering::Acquire) {
            release_p(m);
            return;
        }
        stw::wait_while_stopped(sched);
        if m.p() == NO_P {
            // Goroutines bound to this M need a P: wait for one. Otherwise take a free P if
            // there is one, or sleep until there is work.
            let bound_work = !lock(&m.ready).is_empty();
            if !acquire_p(m, bound_work) {
                idle_without_p(m);
                continue;
            }
        }
        let p = m.p();
        if p >= sched.gomaxprocs() {
            disable_p(m, p);
            continue;
        }
        if let Some(g) = find_runnable(m) {
            execute(m, g);
        }
    }
}

/// Takes a free P for `m`, or (with `wait`) queues `m` until an M hands it one. False when no P
/// was taken (or the runtime is ending).
fn acquire_p(m: &M, wait: bool) -> bool {
    let sched = m.sched();
    loop {
        {
            let mut idle = lock(&sched.pidle);
            if m.p() != NO_P {
                idle.waiting.retain(|&w| w != m.id);
                return true;
            }
            if sched.shutdown.load(Ordering::Acquire) {
                idle.waiting.retain(|&w| w != m.id);
                return false;
            }
            let limit = sched.gomaxprocs();
            idle.free.retain(|&p| p < limit);
            let taken = idle.free.pop();
            sched.idle_ps.store(idle.free.len(), Ordering::Relaxed);
            if let Some(p) = taken {
                sched.ps[p].held.store(true, Ordering::Relaxed);
                m.p.store(p, Ordering::Release);
                idle.waiting.retain(|&w| w != m.id);
                return true;
            }
            if !wait {
                return false;
            }
            if !idle.waiting.contains(&m.id) {
                idle.waiting.push_back(m.id);
            }
        }
        // Woken by a hand-off (which set `m.p`), or spuriously: look again.
        m.parker.park();
    }
}

/// Gives up `m`'s P: to an M waiting for one, else to the free list (unless it is disabled).
fn release_p(m: &M) {
    let sched = m.sched();
    // `runnext` lives only while the M holds a P: an M without one must see its bound work in
    // `ready` (to wait for a P instead of sleeping), and so must deadlock detection.
    if let Some(g) = m.runnext.take() {
        if sched.config.migrate.is_on() {
            lock(&sched.global).push_back(g);
        } else {
            m.push_ready(g, true);
        }
    }
    let p = m.p.swap(NO_P, Ordering::AcqRel);
    if p == NO_P {
        return;
    }
    let mut idle = lock(&sched.pidle);
    if p >= sched.gomaxprocs() {
        // A disabled P: nobody will hold it again until GOMAXPROCS rises, so its never-run
        // goroutines move to the global queue (we still own its ring: it is in no list).
        while let Some(g) = sched.ps[p].runq.pop() {
            lock(&sched.global).push_back(g);
        }
        sched.ps[p].held.store(false, Ordering::Relaxed);
        return;
    }
    if let Some(waiter) = idle.waiting.pop_front() {
        let waiter = &sched.ms[waiter];
        // Release: the next holder sees this holder's writes to the P's queues and caches.
        waiter.p.store(p, Ordering::Release);
        drop(idle);
        waiter.parker.unpark();
        return;
    }
    sched.ps[p].held.store(false, Ordering::Relaxed);
    idle.free.push(p);
    sched.idle_ps.store(idle.free.len(), Ordering::Relaxed);
}

/// `m` holds a P above GOMAXPROCS: give it up (its never-run goroutines go to the global queue,
/// see `release_p`) and wake an M to run them.
fn disable_p(m: &M, p: usize) {
    debug_assert_eq!(m.p(), p);
    let sched = m.sched();
    release_p(m);
    wake_idle(sched, Some(m.id));
}

/// Sleeps an M that holds no P until it has something to do.
fn idle_without_p(m: &M) {
    let sched = m.sched();
    // SeqCst: pairs with the wakers' swap of `idle` (see `find_runnable`).
    m.idle.store(true, Ordering::SeqCst);
    let fired = sched.run_all_timers(Instant::now());
    let work = fired > 0
        || !lock(&m.ready).is_empty()
        || (!lock(&sched.pidle).free.is_empty() && runnable_anywhere(sched))
        || sched.shutdown.load(Ordering::Acquire);
    if !work {
        sleep_until_work_or_timer(m);
    }
    m.idle.store(false, Ordering::SeqCst);
}

/// How long an M looks for work before it sleeps: a futex sleep and wake-up costs more than this
/// when work comes back quickly (a ping-pong between Ms, a producer slightly ahead).
const SPIN: std::time::Duration = std::time::Duration::from_micros(20);

/// Looks for work for a short while before sleeping (Go's spinning Ms). At most one M per P
/// spins: unlike Go, a readied goroutine must run on its own M, so that M itself must be awake
/// to pick it up cheaply (a ping-pong between two Ms would otherwise pay a futex wake-up per
/// message whenever the other M happens to spin).
fn spin(m: &M) -> Option<GRef> {
    let sched = m.sched();
    let limit = sched.gomaxprocs();
    if sched.spinning.fetch_add(1, Ordering::SeqCst) >= limit {
        sched.spinning.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let deadline = Instant::now() + SPIN;
    let mut round = 0u32;
    let found = loop {
        // A PAUSE takes up to ~140 cycles on recent x86: look at this M's ready queue (one
        // load) after each (a goroutine readied on another M waits for this), at the shared
        // queues every 64.
        std::hint::spin_loop();
        round = round.wrapping_add(1);
        let found = if round.is_multiple_of(64) {
            pop_local(m).or_else(|| pop_global(m)).or_else(|| steal(m))
        } else if m.ready_len.load(Ordering::Relaxed) > 0 {
            pop_local(m)
        } else {
            None
        };
        // The clock (a vDSO call, ~20 ns) only every 16 rounds.
        if found.is_some()
            || (round.is_multiple_of(16) && Instant::now() >= deadline)
            || sched.stopping.load(Ordering::Relaxed)
            || sched.shutdown.load(Ordering::Relaxed)
        {
            break found;
        }
    };
    sched.spinning.fetch_sub(1, Ordering::SeqCst);
    // SeqCst fence: pairs with the fence in `wake_idle`. Either the waker sees this M still
    // spinning (and this M's idle re-check, after the fence, sees the waker's work), or the
    // waker sees no spinner and unparks an idle M.
    std::sync::atomic::fence(Ordering::SeqCst);
    found
}

/// Sleeps `m` until it is woken, or until the earliest timer of any P is due.
fn sleep_until_work_or_timer(m: &M) {
    let sched = m.sched();
    if let Some(on_idle) = sched.config.on_idle {
        let epoch = sched.stack_epoch.load(Ordering::Relaxed);
        if m.idle_hook_epoch.replace(epoch) != epoch {
            on_idle();
        }
    }
    match m.sched().next_deadline() {
        Some(deadline) => m
            .parker
            .park_timeout(deadline.saturating_duration_since(Instant::now())),
        None => m.parker.park(),
    }
}

/// Whether any never-run goroutine waits in a P's queue or the global queue.
fn runnable_anywhere(sched: &Sched) -> bool {
    !lock(&sched.global).is_empty() || sched.ps.iter().any(|p| !p.runq.is_empty())
}

/// The next goroutine for `m` (which holds a P), or `None` after `m` went idle and gave its P
/// up (the scheduler loop then takes a P again).
fn find_runnable(m: &M) -> Option<GRef> {
    let sched = m.sched();
    loop {
        if sched.shutdown.load(Ordering::Acquire) {
            return None;
        }
        let p = m.p();
        if p >= sched.gomaxprocs() {
            return None;
        }
        let tick = m.tick.get().wrapping_add(1);
        m.tick.set(tick);
        release_cached_stacks_if_asked(m);
        let timers = &sched.ps[p].timers;
        if timers.maybe_pending() {
            timers.run_expired(Instant::now());
        }
        if tick.is_multiple_of(GLOBAL_QUEUE_INTERVAL) {
            if let Some(g) = pop_global(m) {
                return Some(g);
            }
            // Fairness for Ms whose bound goroutines wait for a P: hand ours over now and then.
            if !lock(&sched.pidle).waiting.is_empty() {
                release_p(m);
                return None;
            }
        }
        if let Some(g) = m.runnext.take() {
            m.inherit_slice.set(true);
            return Some(g);
        }
        if let Some(g) = pop_local(m) {
            return Some(g);
        }
        if let Some(g) = pop_global(m).or_else(|| steal(m)) {
            return Some(g);
        }
        if let Some(g) = spin(m) {
            return Some(g);
        }
        // Going idle. SeqCst: pairs with the swap in `wake_idle`/`ready` (see `park`'s docs): either
        // a waker sees `idle` and unparks, or the re-check below sees its work.
        m.idle.store(true, Ordering::SeqCst);
        let fired = sched.run_all_timers(Instant::now());
        let found = pop_local_locked(m).or_else(|| pop_global(m));
        let found = found.or_else(|| steal(m));
        if found.is_some() || fired > 0 || sched.shutdown.load(Ordering::Acquire) {
            m.idle.store(false, Ordering::SeqCst);
            if found.is_some() {
                return found;
            }
            continue;
        }
        // Give the P up while asleep, so that an M with bound goroutines can run them.
        release_p(m);
        // SeqCst fence, then a last look at the global queue: pairs with the fence in
        // `wake_idle_for_work`. A thread that queued a goroutine there and saw no free P
        // (before `release_p` counted ours) woke nobody, so its goroutine must be visible here.
        // (A goroutine queued in a P's own queue is run by that P's M in any case.)
        std::sync::atomic::fence(Ordering::SeqCst);
        if lock(&sched.global).is_empty() {
            sleep_until_work_or_timer(m);
        }
        m.idle.store(false, Ordering::SeqCst);
        return None;
    }
}

/// What sysmon's deadlock check found (see [`deadlocked`]).
pub(crate) enum Deadlock {
    /// A goroutine runs or can run, a timer is pending, or the runtime is ending or stopped.
    No,
    /// Every goroutine is blocked and nothing in the runtime can wake one, but something outside
    /// it might: not reported (Go counts a goroutine in a cgo call as running for the same
    /// reason). The text says why, for schedtrace.
    Unprovable(String),
    /// Every goroutine waits forever.
    Proven,
}

/// Whether nothing can ever run again (Go's `checkdead`): every M is idle, no goroutine is
/// queued, no timer is pending, goroutines exist (so the main one is blocked), every goroutine
/// is parked, and no thread besides the runtime's own exists that could wake one (a user thread
/// holding a channel end, say). The last rule makes the check miss deadlocks in programs with
/// other threads, but it never fires falsely.
///
/// The steps, in this order, and why a report is not false:
///
/// 1. The scheduler's [`Progress`], then [`quiescent`]: idle Ms, empty queues, no timers,
///    goroutines alive.
/// 2. The process's threads (`/proc/self/task`, by kernel id, never by name: a thread inherits
///    the name of the thread that made it), twice: a thread that starts another and exits
///    while the directory is read could hide both from one reading. Any thread that is not
///    the runtime's (see [`RuntimeThread`]) could wake a goroutine: `Unprovable`.
/// 3. [`quiescent`] again, then every live G parked, then the same progress as in step 1. A
///    thread outside the runtime that woke a goroutine and exited before step 2 left the
///    goroutine queued, or popped by an M that has not yet cleared its idle flag (then it is
///    still `Runnable` here: the queue's lock orders the readier's status write before this
///    read), or run, which moves the progress (the first goroutine an idle M runs comes from a
///    queue, not `runnext`, so it counts in `schedtick`). A thread made after step 2 was made
///    by a goroutine that ran after step 1, which moves the progress too.
///
/// (The argument takes the Relaxed counters as read in program order, as on x86-64; see
/// docs/sched.md.)
pub(crate) fn deadlocked(sched: &Sched) -> Deadlock {
    let before = progress(sched);
    if !quiescent(sched) {
        return Deadlock::No;
    }
    for _ in 0..2 {
        match threads_outside_runtime(sched) {
            Ok(outside) if outside.is_empty() => {}
            Ok(outside) => return Deadlock::Unprovable(describe_outside(&outside)),
            Err(error) => {
                return Deadlock::Unprovable(format!(
                    "cannot list the process's threads (/proc/self/task: {error}), so another \
                     thread could wake one"
                ));
            }
        }
    }
    if !quiescent(sched) || !every_goroutine_parked(sched) || progress(sched) != before {
        return Deadlock::No;
    }
    Deadlock::Proven
}

/// The scheduler's progress, for [`deadlocked`]: Ms started and the sum of goroutines started
/// running (`schedtick`), spawned and exited. Each term only grows, so an equal sum means
/// nothing moved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Progress {
    started: usize,
    moves: u64,
}

fn progress(sched: &Sched) -> Progress {
    let moves = sched.ms().iter().fold(
        sched.spawned_elsewhere.load(Ordering::Relaxed) as u64,
        |n, m| {
            n.wrapping_add(m.schedtick.load(Ordering::Relaxed))
                .wrapping_add(m.spawned.load(Ordering::Relaxed) as u64)
                .wrapping_add(m.exited.load(Ordering::Relaxed) as u64)
        },
    );
    Progress {
        started: sched.started.load(Ordering::Acquire),
        moves,
    }
}

/// Whether every M is idle, no goroutine is queued, no timer is pending and goroutines exist
/// (and the runtime is neither ending nor stopped for the collector).
fn quiescent(sched: &Sched) -> bool {
    if sched.shutdown.load(Ordering::Acquire) || sched.stopping.load(Ordering::SeqCst) {
        return false;
    }
    if sched.has_timers() || !sched.ms().iter().all(|m| m.idle.load(Ordering::SeqCst)) {
        return false;
    }
    // After the idle flags: each M wrote its counters before it went idle.
    if sched.live() == 0 {
        return false;
    }
    !runnable_anywhere(sched) && sched.ms().iter().all(|m| lock(&m.ready).is_empty())
}

/// Whether every G that has not exited is parked.
fn every_goroutine_parked(sched: &Sched) -> bool {
    sched.allg.iter().all(|list| {
        lock(list).iter().all(|g| {
            // Acquire: pairs with the Release in `destroy` (the Waiting and Runnable writes are
            // ordered by the queue locks, see `deadlocked`).
            let status = g.g().status.load(Ordering::Acquire);
            status == GStatus::Waiting as u8 || status == GStatus::Dead as u8
        })
    })
}

/// The schedtrace text for threads outside the runtime.
fn describe_outside(outside: &[i32]) -> String {
    let ids: Vec<String> = outside.iter().map(i32::to_string).collect();
    match outside.len() {
        1 => format!(
            "1 thread outside the runtime could wake one (thread id {})",
            ids[0]
        ),
        n => format!(
            "{n} threads outside the runtime could wake one (thread ids {})",
            ids.join(", ")
        ),
    }
}

/// Kernel thread ids of the running runtime's Ms (M0, the caller of `run`, while it schedules)
/// and its sysmon, each added by the thread itself (see [`RuntimeThread`]). The heap's scavenger
/// and the stack trap thread are goro's too; their crates report their ids.
static RUNTIME_THREADS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// The calling thread's kernel id.
fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// A registration of the calling thread as one of the runtime's, in [`RUNTIME_THREADS`] until it
/// drops. Only the runtime's own loops (an M's, sysmon's) hold one: code that might wake a
/// goroutine from outside (a user's thread) must never be listed. A thread not yet listed (just
/// started) counts as a stranger, which only delays a report.
pub(crate) struct RuntimeThread(i32);

impl RuntimeThread {
    pub(crate) fn register() -> RuntimeThread {
        let tid = gettid();
        lock(&RUNTIME_THREADS).push(tid);
        RuntimeThread(tid)
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        lock(&RUNTIME_THREADS).retain(|&tid| tid != self.0);
    }
}

/// The kernel ids of this process's threads that are not goro's: [`RUNTIME_THREADS`], the
/// heap's scavenger, the stack trap thread and `Config::runtime_thread`. An entry of `/proc/self/task` that is not a
/// number is an error (it cannot be told apart from a thread of the user's).
fn threads_outside_runtime(sched: &Sched) -> std::io::Result<Vec<i32>> {
    let mut ours = lock(&RUNTIME_THREADS).clone();
    ours.extend(goro_alloc::scavenger_thread_id());
    ours.extend(goro_stack::trap_thread_id());
    ours.extend(sched.config.runtime_thread.and_then(|tid| tid()));
    let mut outside = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let name = task?.file_name();
        let tid = name
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
            .ok_or_else(|| std::io::Error::other(format!("unexpected entry {name:?}")))?;
        if !ours.contains(&tid) {
            outside.push(tid);
        }
    }
    Ok(outside)
}

/// Go's fatal error for a program whose goroutines all wait forever; exits with status 2.
#[cold]
pub(crate) fn throw_deadlock() -> ! {
    eprintln!("fatal error: all goroutines are asleep - deadlock!");
    std::process::exit(2)
}

/// The most goroutines `pop_global` moves to a local queue at once. Go moves up to half a local
/// queue; here that made skynet ~1.6x slower than 8 (breadth-first: an M takes whole batches
/// of siblings), while 8 keeps most of the gain for spawn (measured same session, both noisy).
const GLOBAL_BATCH: usize = 8;

/// Takes a goroutine from the global queue for `m` (which holds a P), and moves a fair share
/// more into its P's queue (Go's `globrunqget`: the queue's length over GOMAXPROCS, here at most
/// [`GLOBAL_BATCH`]), so that an M draining the global queue takes its lock once per batch.
fn pop_global(m: &M) -> Option<GRef> {
    let sched = m.sched();
    let mut global = lock(&sched.global);
    let g = global.pop_front()?;
    let share = (global.len() / sched.gomaxprocs().max(1)).min(GLOBAL_BATCH);
    let runq = &sched.ps[m.p()].runq;
    for _ in 0..share {
        let Some(next) = global.pop_front() else {
            break;
        };
        if let Err(next) = runq.push(next) {
            global.push_front(next);
            break;
        }
    }
    Some(g)
}

/// The owner's next goroutine: whichever head of its two queues (ready, never-run) was queued
/// first, so the P runs one FIFO order and neither queue starves the other.
///
/// The ready queue's lock is skipped while its lock-free length reads zero (most schedules of a
/// spawn-heavy M find only never-run goroutines); a push racing with that read is seen at the
/// next schedule, and the idle re-check uses [`pop_local_locked`].
fn pop_local(m: &M) -> Option<GRef> {
    if m.ready_len.load(Ordering::Relaxed) == 0
        && let Some(g) = m.sched().ps[m.p()].runq.pop()
    {
        return Some(g);
    }
    pop_local_locked(m)
}

/// [`pop_local`] that always looks at the ready queue under its lock.
fn pop_local_locked(m: &M) -> Option<GRef> {
    let p = &m.sched().ps[m.p()];
    let mut ready = lock(&m.ready);
    let ready_first = match (ready.front(), p.runq.peek()) {
        (Some(r), Some(n)) => {
            r.g().queued_at.load(Ordering::Relaxed) <= n.g().queued_at.load(Ordering::Relaxed)
        }
        (Some(_), None) => true,
        (None, _) => false,
    };
    if ready_first {
        pop_ready(m, &mut ready)
    } else {
        drop(ready);
        p.runq.pop().or_else(|| pop_ready(m, &mut lock(&m.ready)))
    }
}

/// Pops the next goroutine of `m`'s locked ready queue, taking its stack out of sysmon's reach
/// (see `shrink`).
fn pop_ready(m: &M, ready: &mut VecDeque<GRef>) -> Option<GRef> {
    let g = ready.pop_front()?;
    m.ready_len.store(ready.len(), Ordering::Relaxed);
    g.g().parked_stack.popped();
    Some(g)
}

/// Takes half of another P's never-run goroutines; returns one, queues the rest locally.
fn steal(m: &M) -> Option<GRef> {
    let sched = m.sched();
    let n = sched.ps.len();
    let own = m.p();
    let start = m.tick.get() as usize;
    for k in 0..n {
        let victim = (start + k) % n;
        if victim == own || lone_and_fresh(sched, victim) {
            continue;
        }
        if let Some(g) = sched.ps[victim].runq.steal_into(&sched.ps[own].runq) {
            return Some(g);
        }
    }
    None
}

/// Time-stamp-counter ticks a lone goroutine is left to its own busy P before thieves take it
/// (about 5 us at 3 GHz; Go leaves a P's `runnext` alone for ~3 us the same way).
#[cfg(target_arch = "x86_64")]
const LONE_STEAL_DELAY_TICKS: u64 = 15_000;

/// Whether P `victim` is held and has exactly one queued goroutine, queued moments ago: its M
/// will most likely run it as soon as the current goroutine blocks (a goroutine that spawns
/// another and then waits for it), and stealing it would bind the two to different Ms for good.
fn lone_and_fresh(sched: &Sched, victim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let p = &sched.ps[victim];
        if !p.held.load(Ordering::Relaxed) || p.runq.len() != 1 {
            return false;
        }
        // A thief's peek may see a G that was popped (and even exited and reused) meanwhile:
        // Gs are never freed while the runtime runs and the stamp is atomic, so the worst case
        // is a wrong guess, and the steal below is exact anyway.
        let Some(g) = p.runq.peek() else {
            return false;
        };
        // SAFETY: RDTSC exists on every x86_64 CPU and has no side effects.
        let now = unsafe { core::arch::x86_64::_rdtsc() };
        now.wrapping_sub(g.g().queued_at.load(Ordering::Relaxed)) < LONE_STEAL_DELAY_TICKS
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (sched, victim);
        false
    }
}

fn execute(m: &M, g: GRef) {
    let sched = m.sched();
    // SeqCst: pairs with the store of `stopping` in `stw::stop` (Dekker: one of the two sees the
    // other).
    m.running.store(true, Ordering::SeqCst);
    if sched.stopping.load(Ordering::SeqCst) {
        m.running.store(false, Ordering::SeqCst);
        stw::notify(sched);
        m.push_ready(g, true);
        return;
    }
    let gg = g.g();
    if gg.home.load(Ordering::Relaxed) == NO_HOME {
        first_run(m, g);
    }

    debug_assert!(
        sched.config.migrate.is_on() || gg.home.load(Ordering::Relaxed) == m.id,
        "a started goroutine changed M"
    );
    gg.status.store(GStatus::Running as u8, Ordering::Relaxed);
    if !m.inherit_slice.replace(false) {
        // Only this M writes its tick (sysmon reads it): no read-modify-write needed.
        let tick = m.schedtick.load(Ordering::Relaxed);
        m.schedtick.store(tick.wrapping_add(1), Ordering::Relaxed);
        m.preempt.store(false, Ordering::Relaxed);
    }
    m.curg.set(Some(g));
    m.running_goroutine.store(gg.id(), Ordering::Relaxed);
    // SAFETY: only the goroutine changes its stacks, and it is switched out.
    let stack = unsafe { gg.current_stack() };
    // SAFETY: this is the goroutine's home M, about to resume it; the stack is its own.
    unsafe { gg.parked_stack.reclaim(stack) };
    grow::set_stack_limit(stack.map_or(0, |s| s.limit() as usize));
    // SAFETY: `g` was switched out (or freshly initialised) with its stack pointer in `sp`; only
    // this M runs it (it is bound here), and g0's context is saved into `g0_sp`, which only this
    // thread reads.
    unsafe { switch(m.g0_sp.get(), *gg.sp.get()) };
    grow::set_stack_limit(0);
    m.curg.set(None);
    m.running.store(false, Ordering::SeqCst);
    if sched.stopping.load(Ordering::SeqCst) {
        stw::notify(sched);
    }
    match m.request.replace(Request::None) {
        Request::None => unreachable!("a goroutine switched to g0 without a request"),
        Request::Yield => {
            gg.status.store(GStatus::Runnable as u8, Ordering::Relaxed);
            if sched.config.migrate.is_on() {
                // Any M may run it next: to the back of this P's queue, where thieves look.
                enqueue_new(sched, g);
            } else {
                m.push_ready(g, false);
            }
        }
        Request::Park(unlock, releasable) => {
            // SAFETY: the closure lives on the parked goroutine's stack, which stays intact
            // until the goroutine is readied, which cannot happen before this call releases the
            // lock it queued itself under.
            unsafe { (*unlock)() };
            if sched.config.migrate.is_on() {
                // A waker may already have readied the goroutine and another M may be running
                // it: nothing here may touch it any more. (So sysmon leaves the stacks of
                // migrating goroutines alone.)
                return;
            }
            // After the unlock: the closure above is on the stack sysmon may release from now
            // on. A waker may already have readied the goroutine; only this M resumes it, and
            // it reclaims the stack first.
            let epoch = sched.stack_epoch.load(Ordering::Relaxed);
            let stashable = releasable && sched.stash != StashMode::TrimOnly;
            gg.parked_stack.parked(stashable, epoch);
            if !sched.parks_since_pass.load(Ordering::Relaxed) {
                sched.parks_since_pass.store(true, Ordering::Relaxed);
            }
        }
        Request::Exit => destroy(m, g),
        Request::Reschedule => {
            // Back from `blocking` without a P: run again once this M has one.
            gg.status.store(GStatus::Runnable as u8, Ordering::Relaxed);
            m.push_ready(g, true);
        }
        Request::Stop => {
            gg.status.store(GStatus::Runnable as u8, Ordering::Relaxed);
            m.push_ready(g, true);
        }
        Request::StopTheWorld(f) => {
            stw::stop(sched);
            // Once the main goroutine has finished, the runtime is ending: its result is held
            // only by `run`'s frame, which no root covers, so no cycle may start any more. (The
            // main goroutine sets `shutdown` before it stops running, and `stop` waited for that.)
            if !sched.shutdown.load(Ordering::SeqCst) {
                // SAFETY: the closure lives on the requesting goroutine's stack, which is
                // switched out until this M resumes it after this call.
                unsafe { (*f)() };
            }
            stw::start(sched);
            gg.status.store(GStatus::Runnable as u8, Ordering::Relaxed);
            m.push_ready(g, true);
        }
    }
}

/// Binds a goroutine to `m` and gives it a stack, on its first run.
fn first_run(m: &M, g: GRef) {
    let gg = g.g();
    gg.home.store(m.id, Ordering::Relaxed);
    // SAFETY: only the M holding a P touches its stack cache, and `m` holds it.
    let cache = unsafe { &mut *m.sched().ps[m.p()].stacks.get() };
    let stack = match cache.pop() {
        Some(stack) => stack,
        None => Stack::with_size(m.sched().config.stack_size).unwrap_or_else(|error| {
            throw(&format!(
                "cannot allocate a stack for goroutine {}: {error}",
                gg.id()
            ))
        }),
    };
    stack.set_owner(gg.id());
    let top = stack.top();
    // The stack was taken above, outside the window (taking one may lock goro-stack's pool):
    // the collector must see the G's stack fields whole.
    // SAFETY: two field writes follow, no lock, no allocation.
    let _window = unsafe { NoSuspend::new() };
    // SAFETY: the G has not run, so nothing else reads its stack fields; `top` is the top of a
    // stack nothing else uses; the entry never returns (it ends by switching to g0 with `Exit`).
    unsafe {
        *gg.stack.get() = Some(stack);
        *gg.sp.get() = init_stack(top, g_entry, g.0.as_ptr() as usize);
    }
}

/// A broken runtime invariant or an unrecoverable runtime failure: Go's `throw`. Prints
/// `fatal error: ...` and aborts; never unwinds (it may run on g0).
#[cold]
pub(crate) fn throw(message: &str) -> ! {
    eprintln!("fatal error: {message}");
    std::process::abort()
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

/// Parks the running goroutine; g0 drops `guard` once the goroutine's context is saved.
/// `releasable` promises that no waker reads or writes the goroutine's stack while it is parked
/// (its wait record is in the heap or in [`wait_space`]), so sysmon may stash it.
pub(crate) fn park_goroutine<Guard>(guard: Guard, releasable: bool) {
    let g = current_g().expect("park_goroutine outside a goroutine");
    g.g()
        .status
        .store(GStatus::Waiting as u8, Ordering::Relaxed);
    let mut guard = Some(guard);
    let mut unlock = || drop(guard.take());
    let unlock: &mut dyn FnMut() = &mut unlock;
    // SAFETY: only the lifetime is erased; g0 calls the closure before this goroutine can be
    // resumed, so the stack frame it borrows from is still live.
    let unlock: *mut (dyn FnMut() + 'static) = unsafe { std::mem::transmute(unlock) };
    switch_to_g0(Request::Park(unlock, releasable));
}

/// Makes a parked goroutine runnable on its M.
pub(crate) fn ready(g: GRef) {
    let gg = g.g();
    let sched = gg.sched;
    if sched.shutdown.load(Ordering::Acquire) {
        // The runtime has ended; the goroutine is abandoned and never runs again.
        return;
    }
    gg.status.store(GStatus::Runnable as u8, Ordering::Relaxed);
    if sched.config.migrate.is_on() {
        ready_anywhere(sched, g);
        return;
    }
    let home = gg.home.load(Ordering::Relaxed);
    debug_assert_ne!(home, NO_HOME, "readied a goroutine that never ran");
    if let Some(m) = current_m()
        && m.id == home
        && std::ptr::eq(m.sched(), sched)
        && m.p() != NO_P
    {
        // Readied on its own M (which is awake, running us): it runs next (Go's `runnext`),
        // and the goroutine it displaces goes to the back of the ready queue.
        gg.parked_stack.readied_directly();
        if let Some(displaced) = m.runnext.replace(Some(g)) {
            m.push_ready(displaced, false);
        }
        return;
    }
    sched.ms[home].push_ready(g, false);
    let m = &sched.ms[home];
    // SeqCst fence, then a load before the swap: pairs with the SeqCst store in `find_runnable`
    // before its re-check (either it sees our push, or we see it idle); an M that is awake
    // (spinning, running) is not written to, so its line stays where it is.
    std::sync::atomic::fence(Ordering::SeqCst);
    if m.idle.load(Ordering::Relaxed) && m.idle.swap(false, Ordering::SeqCst) {
        m.parker.unpark();
    }
}

/// `ready` with migration on (Go's `ready`): the goroutine runs next on the readier's M if it
/// has a P (the goroutine it displaces goes to that P's queue), else from the global queue.
///
/// No stack claim is needed: with migration on, parks publish nothing for sysmon (see the
/// `Request::Park` branch of `execute`).
fn ready_anywhere(sched: &Sched, g: GRef) {
    match current_m() {
        Some(m) if std::ptr::eq(m.sched(), sched) && m.p() != NO_P => {
            if let Some(displaced) = m.runnext.replace(Some(g)) {
                enqueue_new(sched, displaced);
            }
        }
        _ => {
            lock(&sched.global).push_back(g);
            wake_idle(sched, None);
        }
    }
}

/// Yields the processor (Go's `runtime.Gosched`): the goroutine goes to the back of its P's queue.
/// Outside a goroutine it yields the OS thread.
pub fn yield_now() {
    if is_goroutine() {
        switch_to_g0(Request::Yield);
    } else {
        std::thread::yield_now();
    }
}

/// Starts a goroutine running `f` (Go's `go f()`).
///
/// This is a safe point. From a thread that is not one of the runtime's Ms (a user thread) the
/// goroutine goes to the global queue.
///
/// # Panics
/// Panics outside a running goro runtime, or if no stack can be allocated (the message says why).
pub fn go<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let Some(sched) = current_sched() else {
        panic!("goro::go called outside a goro runtime: start one with goro::run(|| ...)");
    };
    stw::safe_point();
    let task = Arc::new(Task::new(f));
    let g = new_g(sched, Entry::Task(task.clone()));
    let id = g.g().id();
    if enqueue_new(sched, g) {
        // The goroutines queued so far outnumber what the Ms keep up with: run some of them
        // here before making more. Each queued goroutine holds its G and task (~450 B), so an
        // unbounded backlog costs page faults, and those cost more than the yield (spawn 1M:
        // ~145 MB peak at ~155 ns a spawn, against ~50 MB at ~120 when the backlog stays low).
        yield_now();
    }
    JoinHandle::new(task, id)
}

/// What a G runs on its first switch.
enum Entry {
    /// A plain closure (the main goroutine).
    Closure(Box<dyn FnOnce() + Send>),
    /// A spawned goroutine's task: closure and result packet in one allocation.
    Task(Arc<dyn Run>),
}

fn new_g(sched: &'static Sched, entry: Entry) -> GRef {
    // Per-P lists keep spawn and exit on different Ms from contending on one lock.
    let own_p = match current_m() {
        Some(m) if std::ptr::eq(m.sched(), sched) && m.p() != NO_P => Some(m.p()),
        _ => None,
    };
    if let Some(g) = own_p.and_then(|p| take_free_g(sched, p)) {
        // A collection must not see the G half-reinitialised.
        // SAFETY: field writes and a counter bump follow, no lock, no allocation.
        let _window = unsafe { NoSuspend::new() };
        let gg = g.g();
        // SAFETY: a G from a free list is dead: no queue, waker, collector or sysmon pass uses
        // its plain fields (they skip dead Gs, and a collection cannot run while this goroutine
        // spawns); it is still in its allg list, so it stays there.
        unsafe {
            debug_assert!((*gg.stack.get()).is_none() && (*gg.segments.get()).is_empty());
            debug_assert!((*gg.locals.get()).is_empty(), "a reused G holds locals");
            *gg.sp.get() = StackPointer(std::ptr::null_mut());
            *gg.entry.get() = Some(entry);
        }
        gg.id.store(
            sched.next_id.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        gg.home.store(NO_HOME, Ordering::Relaxed);
        gg.queued_at.store(0, Ordering::Relaxed);
        gg.status.store(GStatus::Runnable as u8, Ordering::Release);
        count_spawn(sched);
        return g;
    }
    let allg_list = own_p.unwrap_or(0);
    let g = Box::new(G {
        id: AtomicU64::new(sched.next_id.fetch_add(1, Ordering::Relaxed)),
        sched,
        status: AtomicU8::new(GStatus::Runnable as u8),
        home: AtomicUsize::new(NO_HOME),
        sp: UnsafeCell::new(StackPointer(std::ptr::null_mut())),
        stack: UnsafeCell::new(None),
        entry: UnsafeCell::new(Some(entry)),
        queued_at: AtomicU64::new(0),
        locals: UnsafeCell::new(Locals::new()),
        parked_stack: ParkedStack::new(),
        segments: UnsafeCell::new(Vec::new()),
        wait_space: UnsafeCell::new(MaybeUninit::uninit()),
    });
    let g = GRef(NonNull::from(Box::leak(g)));
    lock(&sched.allg[allg_list]).push(g);
    count_spawn(sched);
    g
}

/// Counts a new goroutine: on the calling M's own counter, or the shared one from elsewhere.
fn count_spawn(sched: &Sched) {
    match current_m() {
        Some(m) if std::ptr::eq(m.sched(), sched) => bump(&m.spawned),
        _ => {
            sched.spawned_elsewhere.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Adds one to a counter only its owner thread writes. Release: see `Sched::live`.
fn bump(counter: &AtomicUsize) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Release,
    );
}

/// Global-queue length past which a goroutine that spawns yields (see `go`).
const SPAWN_BACKLOG: usize = 4096;

/// Queues a runnable goroutine on the calling M's P (else the global queue). Returns true when it
/// overflowed into a global queue longer than [`SPAWN_BACKLOG`].
fn enqueue_new(sched: &Sched, g: GRef) -> bool {
    match current_m() {
        Some(m) if std::ptr::eq(m.sched(), sched) && m.p() != NO_P => {
            sched.stamp(g);
            let runq = &sched.ps[m.p()].runq;
            let mut backlog = false;
            if let Err(g) = runq.push(g) {
                // A full local queue moves its older half and the newcomer to the global queue
                // in one batch (oldest first, keeping FIFO), so that the next pushes stay local.
                let older = runq.take_older_half();
                let mut global = lock(&sched.global);
                global.extend(older);
                global.push_back(g);
                backlog = global.len() > SPAWN_BACKLOG;
            }
            wake_idle_for_work(sched, Some(m.id));
            backlog
        }
        _ => {
            lock(&sched.global).push_back(g);
            wake_idle_for_work(sched, None);
            false
        }
    }
}

/// [`wake_idle`] for new goroutines in a queue: only if a P is free to run them. (A P can be
/// freed just after the check; its M re-checks the queues before it sleeps, and sysmon's
/// hand-off covers the rest.)
fn wake_idle_for_work(sched: &Sched, except: Option<usize>) {
    // SeqCst fence: the work pushed before it is visible to whoever frees a P after this load.
    std::sync::atomic::fence(Ordering::SeqCst);
    if sched.idle_ps.load(Ordering::Relaxed) > 0 {
        wake_idle(sched, except);
    }
}

/// Wakes one idle M (not `except`) so it can take new work; false if none was idle. A spinning
/// M will find the work by itself, so no M is woken while one spins.
fn wake_idle(sched: &Sched, except: Option<usize>) -> bool {
    // SeqCst fence: pairs with the fence in `spin` (store-buffer pattern: the queued work is
    // visible to a spinner that has not yet given up, or the spinner's exit is visible here).
    std::sync::atomic::fence(Ordering::SeqCst);
    if sched.spinning.load(Ordering::SeqCst) > 0 {
        return true;
    }
    wake_idle_m(sched, except)
}

/// sysmon's hand-off for an M that has run one goroutine for a whole sysmon tick without
/// reaching the scheduler: if its P has never-run goroutines queued, wakes an idle M to steal
/// them (thieves may take from any P's queue at any time). Returns whether an M was woken (or
/// one spins already).
///
/// The P itself stays with its M: taking it while the M may be inside the runtime using it
/// needs the M to announce where it is (Go's entersyscall), which `blocking` does and arbitrary
/// code does not. Goroutines bound to the M wait for it, by the migration rule.
pub(crate) fn hand_off_queued_work(sched: &Sched, m: &M) -> bool {
    let p = m.p.load(Ordering::Acquire);
    if p == NO_P || sched.ps[p].runq.is_empty() {
        return false;
    }
    // No new M is started here: a P freed by `blocking` gets one there, and an M that gave its
    // P up a moment ago is still waking (starting another would only add a thread to fight it
    // for the P).
    wake_idle(sched, Some(m.id))
}

/// Unparks one idle M (not `except`), spinning or not; false if none was idle.
fn wake_idle_m(sched: &Sched, except: Option<usize>) -> bool {
    for m in sched.ms().iter() {
        // SeqCst: pairs with the store in `find_runnable` before its re-check.
        if Some(m.id) != except
            && m.idle.load(Ordering::Relaxed)
            && m.idle.swap(false, Ordering::SeqCst)
        {
            m.parker.unpark();
            return true;
        }
    }
    false
}

/// Starts another M (it takes a free P, or sleeps until there is one). No-op once every M slot
/// is used or the runtime is ending.
fn start_m(sched: &Sched) {
    if sched.shutdown.load(Ordering::Acquire) {
        return;
    }
    let mut threads = lock(&sched.threads);
    let id = sched.started.load(Ordering::Acquire);
    if id >= sched.ms.len() {
        return;
    }
    // SAFETY: the Sched is leaked, so the reference is valid for the thread's whole life.
    let sched: &'static Sched = unsafe { &*(sched as *const Sched) };
    match std::thread::Builder::new()
        .name(format!("goro-m{id}"))
        .spawn(move || m_main(&sched.ms[id]))
    {
        Ok(thread) => {
            // Release: the new M's struct is initialised; `ms()` readers may see it.
            sched.started.store(id + 1, Ordering::Release);
            threads.push(thread);
        }
        Err(error) => eprintln!("goro: cannot start another M: {error}"),
    }
}

/// Runs `f`, a call that may block its thread (a syscall, a lock, C code), without holding up
/// other goroutines (Go's `entersyscall`/`exitsyscall`): the goroutine's P goes to another M
/// for the duration, so never-run goroutines and goroutines bound to other Ms keep running.
/// Goroutines bound to this M wait, since they may only run on it.
///
/// The collector still counts the goroutine as running: a stop of the world waits until `f`
/// returns, so `f` should not wait for other goroutines. Outside a goroutine, `f` just runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let Some(m) = current_m() else { return f() };
    if m.curg.get().is_none() {
        return f();
    }
    stw::safe_point();
    let sched = m.sched();
    release_p(m);
    // Someone must take the P over: an idle M, else a new one (Go's `handoffp` / `startm`).
    if !wake_idle_m(sched, Some(m.id)) {
        start_m(sched);
    }
    struct Exit;
    impl Drop for Exit {
        fn drop(&mut self) {
            // Reacquire a P from g0 (queued on this M's ready queue), even if `f` panicked.
            switch_to_g0(Request::Reschedule);
        }
    }
    let _exit = Exit;
    f()
}

/// Sets GOMAXPROCS (Go's `runtime.GOMAXPROCS`): the number of Ps that run goroutines at once;
/// `0` only reads it. Returns the previous value. Values above the Ps the runtime allocated at
/// start (at least 16, 4 per core, at most 256) are clamped. Outside a runtime, returns 0.
pub fn set_max_procs(n: usize) -> usize {
    let Some(sched) = current_sched() else {
        return 0;
    };
    let mut idle = lock(&sched.pidle);
    let old = sched.gomaxprocs();
    if n == 0 {
        return old;
    }
    let n = n.min(sched.ps.len());
    sched.gomaxprocs.store(n, Ordering::Release);
    // Newly enabled Ps that nobody holds become free; disabled ones leave the free list here and
    // their holders give them up at their next schedule.
    for p in old..n {
        if !sched.ps[p].held.load(Ordering::Relaxed) && !idle.free.contains(&p) {
            idle.free.push(p);
        }
    }
    idle.free.retain(|&p| p < n);
    // Hand new Ps to Ms waiting for one.
    while !idle.free.is_empty() && !idle.waiting.is_empty() {
        let p = idle.free.pop().expect("checked non-empty");
        let waiter = &sched.ms[idle.waiting.pop_front().expect("checked non-empty")];
        sched.ps[p].held.store(true, Ordering::Relaxed);
        waiter.p.store(p, Ordering::Release);
        waiter.parker.unpark();
    }
    let spare = idle.free.len();
    sched.idle_ps.store(spare, Ordering::Relaxed);
    drop(idle);
    for _ in 0..spare {
        if !wake_idle_m(sched, current_m().map(|m| m.id)) {
            start_m(sched);
        }
    }
    old
}

/// The first code on a goroutine's stack.
///
/// # Safety
/// May be called only by the first switch to a stack prepared by `new_g`, with `arg` its G.
unsafe extern "C" fn g_entry(arg: usize) -> ! {
    let g = GRef(NonNull::new(arg as *mut G).expect("g_entry without a G"));
    // SAFETY: the entry is taken once, by the G's first run, on the only thread running it.
    let entry = unsafe { (*g.g().entry.get()).take() };
    // Both catch panics themselves (see `go` and `run`).
    match entry {
        Some(Entry::Closure(f)) => f(),
        // SAFETY: this is the task's goroutine, starting: the one call of `run`.
        Some(Entry::Task(task)) => unsafe { task.run() },
        None => {}
    }
    // Goroutine-local values die with the goroutine, here on its stack, before the G can be
    // reused; a panicking destructor must not unwind into this frame.
    if catch_unwind(AssertUnwindSafe(|| drop_locals(g))).is_err() {
        throw("a goroutine-local value's destructor panicked");
    }
    switch_to_g0(Request::Exit);
    // g0 never resumes an exited goroutine.
    std::process::abort()
}

/// Gs a P keeps in its free list before it moves a batch to the global one (Go's 64 and 32).
const GFREE_MAX: usize = 64;
const GFREE_BATCH: usize = 32;

/// Takes an exited G for a spawn on P `p` (held by the caller): from the P's free list, else a
/// batch from the global one.
fn take_free_g(sched: &Sched, p: usize) -> Option<GRef> {
    // SAFETY: only the M holding a P touches its free list, and the caller holds `p`.
    let local = unsafe { &mut *sched.ps[p].gfree.get() };
    if local.is_empty() && sched.gfree_len.load(Ordering::Relaxed) > 0 {
        let mut global = lock(&sched.gfree);
        let keep = global.len().saturating_sub(GFREE_BATCH);
        local.extend(global.drain(keep..));
        sched.gfree_len.store(global.len(), Ordering::Relaxed);
    }
    local.pop()
}

/// Retires an exited goroutine: its stack goes to its P's cache and the G to its P's free list
/// (it stays in `allg`, marked dead, as in Go). Runs on the goroutine's home M.
fn destroy(m: &M, g: GRef) {
    let sched = g.g().sched;
    let gg = g.g();
    bump(&m.exited);
    // SAFETY: a take and a store follow, no lock, no allocation; the stack is dropped later.
    let window = unsafe { NoSuspend::new() };
    // SAFETY: the G exited: it is in no queue and nothing refers to it any more; only this M
    // touches it until it is dead and listed.
    let stack = unsafe { (*gg.stack.get()).take() };
    // Release: a spawner that takes the G from a list sees it dead after these writes.
    gg.status.store(GStatus::Dead as u8, Ordering::Release);
    drop(window);
    // SAFETY: only the M holding a P touches its free list, and `m` holds it.
    let gfree = unsafe { &mut *sched.ps[m.p()].gfree.get() };
    gfree.push(g);
    if gfree.len() > GFREE_MAX {
        let batch = gfree.split_off(gfree.len() - GFREE_BATCH);
        let mut global = lock(&sched.gfree);
        global.extend(batch);
        sched.gfree_len.store(global.len(), Ordering::Relaxed);
    }
    if let Some(stack) = stack {
        // SAFETY: only the M holding a P touches its stack cache, and `m` holds it.
        let cache = unsafe { &mut *sched.ps[m.p()].stacks.get() };
        if cache.len() == STACK_CACHE_MAX {
            // Dropping a `Stack` returns it to goro-stack's global pool.
            cache.truncate(STACK_CACHE_MAX / 2);
        }
        cache.push(stack);
    }
}

/// Memory the collector must scan for one goroutine.
#[derive(Clone, Copy, Debug)]
pub enum RootRange {
    /// A heap block owned by the runtime (a G struct, holding the closure of a goroutine that has
    /// not run yet): scan it whole.
    Block(*const u8),
    /// The live part of a switched-out goroutine's stack, from its saved stack pointer (which
    /// points at its saved registers) to the top. For a goroutine that was running when its
    /// thread was stopped, the saved pointer is stale and may lie outside the stack: the
    /// collector scans such a range only if it lies within one stack slot, and finds the live
    /// frames through the stopped thread's own stack pointer.
    Stack {
        /// The saved stack pointer.
        lo: *const u8,
        /// The top of the stack.
        hi: *const u8,
    },
    /// The bytes of a parked goroutine's stack that sysmon stashed in the heap (its stack pages
    /// are released): `[lo, hi)` holds `[sp, top)` as it was.
    Stashed {
        /// First stashed byte.
        lo: *const u8,
        /// One past the last.
        hi: *const u8,
    },
}

/// Every goroutine of the running runtime, held still for a collection: the `allg` lists are
/// locked (sysmon stashes under them, threads that are not Ms add Gs under them), so a stopped
/// thread cannot be holding one. Take it *before* stopping threads that do not reach a safe point
/// and drop it after they resume.
pub struct RootsLock {
    lists: Vec<MutexGuard<'static, Vec<GRef>>>,
}

impl RootsLock {
    /// Locks the goroutine lists of the running runtime.
    ///
    /// # Panics
    /// Panics if no runtime runs or its world is not stopped.
    ///
    /// # Safety
    /// May be called only inside the closure of [`crate::stop_the_world`] or
    /// [`crate::stop_the_world_from_thread`] (no goroutine runs
    /// but on threads the caller stops by other means before calling [`RootsLock::for_each`]),
    /// and the value must be dropped before that closure returns.
    #[allow(
        clippy::new_without_default,
        reason = "locking is not a default value: it may only happen with the world stopped"
    )]
    pub unsafe fn new() -> RootsLock {
        let sched = current_sched().expect("RootsLock::new outside a goro runtime");
        assert!(
            sched.stopping.load(Ordering::SeqCst),
            "RootsLock::new with the world running"
        );
        RootsLock {
            lists: sched.allg.iter().map(lock).collect(),
        }
    }

    /// Reports the roots of every goroutine. Allocates nothing and takes no lock.
    pub fn for_each(&self, visit: &mut dyn FnMut(RootRange)) {
        roots_of(&self.lists, visit);
    }
}

fn roots_of(lists: &[MutexGuard<'_, Vec<GRef>>], visit: &mut dyn FnMut(RootRange)) {
    for g in lists.iter().flat_map(|list| list.iter()) {
        let gg = g.g();
        // Acquire: pairs with the release in `destroy`. A dead G holds nothing live (its stale
        // bytes would only keep garbage alive); one that is being reused by a spawner is not
        // possible here, since spawners on Ms are stopped goroutines.
        if gg.status.load(Ordering::Acquire) == GStatus::Dead as u8 {
            continue;
        }
        visit(RootRange::Block(g.0.as_ptr().cast::<u8>()));
        // SAFETY: the world is stopped (or the runtime is over), so the G is switched out and
        // its stack fields are stable; we hold its allg list's lock, so sysmon is not stashing
        // it.
        if let Some(stack) = unsafe { gg.current_stack() } {
            // SAFETY: as above.
            let sp = unsafe { *gg.sp.get() };
            // A stashed goroutine's roots are its stashed bytes (the trap may put them back
            // meanwhile, but never frees them).
            // SAFETY: until the collection ends the world stays stopped, so its M cannot take
            // the bytes back, sysmon does not stash (`release_parked_stacks`), and it cannot
            // exit.
            visit(match unsafe { stack.stashed_bytes() } {
                Some(bytes) => RootRange::Stashed {
                    lo: bytes.as_ptr(),
                    hi: bytes.as_ptr_range().end,
                },
                None => RootRange::Stack {
                    lo: sp.0.cast_const(),
                    hi: stack.top().cast_const(),
                },
            });
        }
        // The stacks the goroutine grew from, each from where it left it.
        // SAFETY: as above.
        let segments = unsafe { &*gg.segments.get() };
        for (i, segment) in segments.iter().enumerate() {
            let below = match i {
                // SAFETY: as above.
                0 => unsafe { (*gg.stack.get()).as_ref() },
                _ => Some(&segments[i - 1].stack),
            };
            if let Some(below) = below {
                visit(RootRange::Stack {
                    lo: segment.caller_sp.0,
                    hi: below.top(),
                });
            }
        }
    }
}

/// Where a pass over every G's stack memory (see `shrink`) has got to.
#[derive(Default, Debug)]
pub(crate) struct StackPass {
    /// Goroutines parked in this epoch or later are left alone.
    before: u64,
    list: usize,
    index: usize,
    /// Some parked goroutine was too young: the next epoch needs a pass too.
    pub(crate) found_young: bool,
}

impl StackPass {
    /// A pass over goroutines parked before `epoch - 1`, so for at least one whole epoch.
    pub(crate) fn new(epoch: u64) -> StackPass {
        StackPass {
            before: epoch.saturating_sub(1),
            ..StackPass::default()
        }
    }
}

/// Goroutines a pass looks at under one lock acquisition of an allg list.
const PASS_CHUNK: usize = 256;

/// Continues `pass` until `deadline`; returns true when it has covered every G.
pub(crate) fn release_parked_stacks(
    sched: &Sched,
    pass: &mut StackPass,
    deadline: Instant,
) -> bool {
    while pass.list < sched.allg.len() {
        let list = lock(&sched.allg[pass.list]);
        if sched.stopping.load(Ordering::SeqCst) {
            // A collection has stopped the world and may have taken its roots already: the
            // stacks it has yet to scan must keep their pages until it is done. (It takes these
            // locks after stopping the world, so under this lock `stopping` is up to date.)
            return false;
        }
        let end = (pass.index + PASS_CHUNK).min(list.len());
        for g in list.get(pass.index..end).unwrap_or(&[]) {
            let gg = g.g();
            let home = gg.home.load(Ordering::Relaxed);
            // SAFETY: we are sysmon and hold the G's allg lock. The stack fields of a parked G
            // are written only by its home M before its first run and at its exit, neither of
            // which can happen while it is parked.
            let released = unsafe {
                gg.parked_stack.release(
                    pass.before,
                    sched.stash == StashMode::Unchecked,
                    || lock(&sched.ms[home].ready),
                    || {
                        let stack = gg.current_stack()?;
                        Some((stack as *const Stack, *gg.sp.get()))
                    },
                )
            };
            match released {
                Released::TooYoung => pass.found_young = true,
                Released::Nothing | Released::Done => {}
            }
        }
        if end >= list.len() {
            pass.list += 1;
            pass.index = 0;
        } else {
            pass.index = end;
        }
        drop(list);
        if Instant::now() >= deadline {
            return false;
        }
    }
    true
}

/// Releases the pages of the cached stacks of Ps that were idle at the previous call and still
/// are, and returns those stacks to goro-stack's pool (Go frees idle Ps' stack caches at each GC;
/// sysmon does this every epoch). Returns the number of stacks released.
pub(crate) fn trim_idle_stack_caches(sched: &Sched, idle_before: &mut Vec<bool>) -> usize {
    idle_before.resize(sched.ps.len(), false);
    let mut taken: Vec<Stack> = Vec::new();
    // (Stacks from here go to the pool with their pages released.)
    {
        let pidle = lock(&sched.pidle);
        for (p, was_idle) in idle_before.iter_mut().enumerate() {
            let idle = pidle.free.contains(&p);
            if idle && *was_idle {
                // SAFETY: a P on the free list is held by no M, and it cannot leave the list
                // while we hold `pidle`: its stack cache is ours meanwhile.
                taken.append(unsafe { &mut *sched.ps[p].stacks.get() });
            }
            *was_idle = idle;
        }
    }
    let count = taken.len();
    for stack in taken {
        // SAFETY: a cached stack belongs to no goroutine: nothing runs on it or points into it.
        unsafe { stack.release_below(stack.top()) };
        // Dropping a `Stack` returns it to goro-stack's pool.
    }
    count
}

/// Asks the runtime to give stack memory back to the OS soon (the collector calls this after
/// each cycle, as Go frees stack memory at GC): every M releases the pages of its P's cached
/// stacks (all but a warm few) and flushes its thread's slot cache at its next schedule, and
/// sysmon trims long-parked goroutines at its next epoch. Does nothing outside a runtime.
pub fn release_stack_memory() {
    if let Some(sched) = current_sched() {
        sched.stack_pass_requested.store(true, Ordering::Relaxed);
        sched.stack_release.fetch_add(1, Ordering::Relaxed);
    }
}

/// Stacks a P keeps committed when it releases its cache after a collection.
const CACHED_STACKS_KEPT_WARM: usize = 4;

/// `m`'s part of [`release_stack_memory`], if a release was asked since its P's last one.
fn release_cached_stacks_if_asked(m: &M) {
    let sched = m.sched();
    let p = &sched.ps[m.p()];
    let asked = sched.stack_release.load(Ordering::Relaxed);
    if p.stacks_released_for.get() == asked {
        return;
    }
    p.stacks_released_for.set(asked);
    // SAFETY: only the M holding a P touches its stack cache, and `m` holds it.
    let cache = unsafe { &*p.stacks.get() };
    let cold = cache.len().saturating_sub(CACHED_STACKS_KEPT_WARM);
    for stack in &cache[..cold] {
        // SAFETY: a cached stack belongs to no goroutine: nothing runs on it or points into it.
        unsafe { stack.release_below(stack.top()) };
    }
    // Pooled slots beyond a warm few, and this thread's slot cache.
    goro_stack::trim(POOLED_STACKS_KEPT_WARM);
}

/// Free slots in goro-stack's pool whose pages stay committed after a release.
const POOLED_STACKS_KEPT_WARM: usize = 16;

impl G {
    fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// The stack the goroutine runs on (or was switched out on): its innermost segment, else its
    /// slot; `None` before its first run.
    ///
    /// # Safety
    /// The caller must be the goroutine itself, or the goroutine must be switched out and the
    /// caller its M, sysmon holding its allg lock while it is parked, or the collector.
    unsafe fn current_stack(&self) -> Option<&Stack> {
        // SAFETY: the caller's contract: nobody changes the fields meanwhile.
        unsafe {
            match (*self.segments.get()).last() {
                Some(segment) => Some(&segment.stack),
                None => (*self.stack.get()).as_ref(),
            }
        }
    }
}

/// Adds a stack segment to the running goroutine `g` for `grow`: twice the size of its current
/// stack, at least twice `red_zone`, within `Config::max_stack_size`. Returns the segment's
/// index and top, or `Err(max_stack_size)` when it would pass that.
pub(crate) fn push_segment(g: GRef, red_zone: usize) -> Result<(usize, *mut u8), usize> {
    let gg = g.g();
    let max = gg.sched.config.max_stack_size;
    // SAFETY: the running goroutine is the only one that changes its stacks.
    let segments = unsafe { &mut *gg.segments.get() };
    // SAFETY: as above.
    let slot = unsafe { (*gg.stack.get()).as_ref() }.map_or(0, Stack::size);
    let used: usize = slot + segments.iter().map(|s| s.stack.size()).sum::<usize>();
    let current = segments.last().map_or(slot, |s| s.stack.size());
    let wanted = current.saturating_mul(2).max(red_zone.saturating_mul(2));
    let size = wanted.min(max.saturating_sub(used));
    if size < red_zone.saturating_mul(2).max(64 << 10) {
        return Err(max);
    }
    let stack = Stack::with_size(size).unwrap_or_else(|error| {
        throw(&format!(
            "cannot allocate a stack segment for goroutine {}: {error}",
            gg.id()
        ))
    });
    stack.set_owner(gg.id());
    let top = stack.top();
    // The push below must not allocate: it runs in the window (opened next, closed by the
    // segment's first frame) in which the segment is listed with a null `caller_sp`.
    segments.reserve(1);
    // SAFETY: closed by the segment's first frame (`segment_entry`) after a push into reserved
    // room and the switch: no lock, no allocation.
    unsafe { goro_alloc::nosuspend::enter() };
    grow::set_stack_limit(stack.limit() as usize);
    segments.push(Segment {
        stack,
        caller_sp: StackPointer(std::ptr::null_mut()),
    });
    Ok((segments.len() - 1, top))
}

/// Where the switch onto segment `index` of the running goroutine `g` saves (and its last frame
/// finds) the context to return to.
pub(crate) fn segment_caller_sp(g: GRef, index: usize) -> *mut StackPointer {
    // SAFETY: the running goroutine is the only one that changes its stacks.
    let segments = unsafe { &mut *g.g().segments.get() };
    &raw mut segments[index].caller_sp
}

/// Removes the running goroutine's innermost segment (number `index`) once the call on it has
/// returned, and gives it back to the pool.
/// Unlists segment `index` of the running goroutine `g` and returns its stack, which the caller
/// drops (returning it to goro-stack's pool takes a lock: not inside a `NoSuspend` window).
pub(crate) fn pop_segment(g: GRef, index: usize) -> Stack {
    let gg = g.g();
    // SAFETY: the running goroutine is the only one that changes its stacks.
    let segments = unsafe { &mut *gg.segments.get() };
    debug_assert_eq!(segments.len(), index + 1, "segments end innermost first");
    let segment = segments.pop().expect("a segment to pop");
    // SAFETY: as above.
    let below = unsafe { gg.current_stack() };
    grow::set_stack_limit(below.map_or(0, |s| s.limit() as usize));
    segment.stack
}

/// Ends the program because goroutine `g` needs more than `limit` bytes of stack (Go's
/// "goroutine stack exceeds ...-byte limit").
pub(crate) fn throw_stack_overflow(g: GRef, limit: usize) -> ! {
    eprintln!(
        "goroutine {} stack exceeds {limit}-byte limit\nfatal error: stack overflow",
        g.g().id()
    );
    std::process::exit(2)
}

/// Room in the running goroutine's G for the record of the operation it is about to block in, if
/// the caller is a goroutine and an `R` fits. A record there outlives the goroutine's stack
/// memory, which sysmon may release while it is parked (see `shrink`); wakers may use it.
///
/// The caller must not block in another operation that uses the space until it has finished
/// with this record (a goroutine blocks in one operation at a time, so that holds when the record
/// lives only while the caller is blocked), and must drop the record itself.
pub(crate) fn wait_space<R>() -> Option<NonNull<R>> {
    if size_of::<R>() > WAIT_SPACE_WORDS * size_of::<usize>()
        || align_of::<R>() > align_of::<usize>()
    {
        return None;
    }
    let g = current_g()?;
    NonNull::new(g.g().wait_space.get().cast::<R>())
}

/// Locks a runtime mutex; a poisoned lock is still usable (no runtime code panics while holding
/// one, and the data is always consistent between statements).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A goroutine-local value: each goroutine sees its own, created on first use by `init` and
/// dropped when the goroutine exits. It replaces `thread_local!` for code running on goroutines
/// (an M runs many goroutines, so its thread-locals are shared between them).
///
/// ```text
/// static COUNTER: goro::Local<std::cell::Cell<u32>> = goro::Local::new(|| std::cell::Cell::new(0));
/// COUNTER.with(|c| c.set(c.get() + 1));
/// ```
///
/// **At exit** (after the goroutine's closure has returned or unwound, on its own stack and
/// thread), its values are dropped one at a time, the last made first (as std drops
/// thread-locals); the others stay usable from the destructors. A destructor may use any local:
/// one still alive gives its value, one already dropped (or being dropped) or never used gets a
/// new value from `init`, which is dropped next. Exit ends when no value is left, so nothing of
/// the goroutine reaches the next one that reuses its G. A value made by a destructor is one
/// generation younger than the value being dropped; past four generations (POSIX's
/// `PTHREAD_DESTRUCTOR_ITERATIONS`, 4 in glibc) `with` panics instead of making a value (a
/// destructor that re-creates its own local would otherwise never end). A panic that escapes a
/// destructor at exit ends the program (`fatal error: a goroutine-local value's destructor
/// panicked`): it has no caller to unwind into.
pub struct Local<T: 'static> {
    init: fn() -> T,
}

/// How many generations of goroutine-locals destructors may make at exit (see [`Local`]).
pub(crate) const LOCAL_GENERATIONS_AT_EXIT: u32 = 4;

/// One goroutine's [`Local`] values (`G::locals`). Only the running goroutine touches it: its
/// closure and, at exit, `drop_locals` and the destructors it runs.
pub(crate) struct Locals {
    /// In order of creation.
    values: Vec<LocalValue>,
    /// While the goroutine exits, the generation of the value whose destructor runs; `None`
    /// before.
    dropping: Option<u32>,
}

/// A value of a [`Local`], boxed: pushing more values does not move it.
struct LocalValue {
    /// The `Local`'s address.
    key: usize,
    /// 0 for a value made while the goroutine ran, n + 1 for one made while a value of
    /// generation n was being dropped.
    generation: u32,
    value: Box<dyn std::any::Any>,
}

impl Locals {
    pub(crate) const fn new() -> Locals {
        Locals {
            values: Vec::new(),
            dropping: None,
        }
    }

    /// Whether the goroutine holds no value and is not exiting: the state a reused G starts in.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty() && self.dropping.is_none()
    }

    fn get(&self, key: usize) -> Option<&dyn std::any::Any> {
        let found = self.values.iter().find(|v| v.key == key)?;
        Some(&*found.value)
    }
}

impl<T: 'static> Local<T> {
    /// A goroutine-local whose value starts as `init()` in each goroutine.
    pub const fn new(init: fn() -> T) -> Local<T> {
        Local { init }
    }

    /// Calls `f` with this goroutine's value.
    ///
    /// # Panics
    /// Panics when called outside a goroutine, and when called by a destructor at goroutine exit
    /// to make a value more than four generations deep (see [`Local`]).
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        let Some(g) = current_g() else {
            panic!("goro::Local::with called outside a goroutine; use thread_local! there");
        };
        let key = std::ptr::from_ref(self) as usize;
        // SAFETY: only the running goroutine touches its locals, and the borrow ends with the
        // statement (the value itself is boxed).
        let value = match unsafe { (*g.g().locals.get()).get(key) } {
            Some(value) => std::ptr::from_ref(downcast::<T>(value)),
            None => self.make(g, key),
        };
        // SAFETY: the box lives until `drop_locals` pops it, which happens only at exit and
        // only between destructors, so not while this call (of the goroutine or of a
        // destructor) is running.
        f(unsafe { &*value })
    }

    /// Makes the running goroutine `g`'s value for the local at `key`, which it has none of.
    #[cold]
    fn make(&'static self, g: GRef, key: usize) -> *const T {
        let locals = g.g().locals.get();
        // SAFETY: only the running goroutine touches its locals; no borrow outlives the
        // statement.
        let generation = unsafe { (*locals).dropping }.map_or(0, |dropping| dropping + 1);
        if generation > LOCAL_GENERATIONS_AT_EXIT {
            panic!(
                "goro::Local::with: goroutine {} is exiting, and the destructors of its \
                 goroutine-locals have re-created locals {LOCAL_GENERATIONS_AT_EXIT} generations \
                 deep (the limit); does a destructor re-create the local it drops?",
                g.g().id()
            );
        }
        // `init` may use other locals (even this one): no borrow of the list across it.
        let value = Box::new((self.init)());
        // SAFETY: as above.
        if let Some(made) = unsafe { (*locals).get(key) } {
            // `init` used this local itself: the value it made stays, as later calls find it.
            let made = std::ptr::from_ref(downcast::<T>(made));
            drop(value);
            return made;
        }
        let made = std::ptr::from_ref::<T>(&value);
        // SAFETY: as above.
        unsafe {
            (*locals).values.push(LocalValue {
                key,
                generation,
                value,
            });
        }
        made
    }
}

fn downcast<T: 'static>(value: &dyn std::any::Any) -> &T {
    value
        .downcast_ref::<T>()
        .expect("a Local's value has its type")
}

/// Drops the exiting goroutine `g`'s locals, the last made first, each with the others still
/// usable, until none is left (the rule is in [`Local`]'s docs). Runs on the goroutine, after its
/// closure. Ends: a value of generation [`LOCAL_GENERATIONS_AT_EXIT`] cannot make more, so (as
/// long as each destructor returns) the values made at exit form a finite tree.
fn drop_locals(g: GRef) {
    let locals = g.g().locals.get();
    loop {
        // SAFETY: only the running goroutine touches its locals, and no borrow outlives the
        // statement: the destructors may use the list meanwhile.
        let Some(last) = (unsafe { (*locals).values.pop() }) else {
            break;
        };
        // SAFETY: as above.
        unsafe { (*locals).dropping = Some(last.generation) };
        drop(last.value);
    }
    // SAFETY: as above.
    unsafe { (*locals).dropping = None };
}

impl<T: 'static> std::fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}
