//! Stopping every thread of the process for a collection, and finding where each one keeps its
//! roots.
//!
//! Goroutines stop at safe points (goro-sched's handshake), but a `Gc` can live anywhere a thread
//! keeps data: on the stack of the main thread, of a `std::thread`, of a C library's thread, in
//! their `thread_local!`s, or in the registers of a goroutine that spins without calling the
//! runtime. Scanning such a thread while it runs is not enough: it can move a `Gc` from a part
//! the marker has not read into a part it has already read (`rotate_left` on a shared `Vec`).
//! So a collection stops *every* thread, as Boehm's collector does:
//!
//! 1. goro's own threads that sleep (idle Ms, Ms waiting for the world to restart, sysmon, the
//!    scavenger, the sweeper) published where they sleep (goro-alloc's `parked`): the collector
//!    claims each with a compare-and-swap and counts it stopped at the stack pointer it
//!    published, below its saved registers, without waking it. Then it lists `/proc/self/task`
//!    and sends each other thread [`SUSPEND_SIGNAL`] (`tgkill`). It leaves out only itself, the
//!    stash-trap thread (which blocks every signal, holds no `Gc`, and must go on answering
//!    stack faults), goro-gc's mark helpers (which hold no `Gc` and mark while the world is
//!    stopped) and its mark worker (which holds no `Gc` either: claimed if it sleeps, never
//!    scanned, since its frames keep words of what it marked before).
//! 2. The handler runs on the thread's current stack (no `SA_ONSTACK`), so the kernel's signal
//!    frame, holding every register of the interrupted code, lies between the handler's frame
//!    and the interrupted stack pointer. The handler records the address of one of its own
//!    locals (below that frame) and the thread pointer, acknowledges, and waits until the world
//!    restarts (goro-alloc's world generation). Everything it calls is async-signal-safe: atomics, `gettid`,
//!    `pthread_self`, `futex`. The handler that stops the last thread of a pass wakes the
//!    collector (one wake-up per pass, not one per thread).
//! 3. The collector lists the tasks again until a pass finds no thread it has not stopped: a
//!    thread created by one that was still running is caught by the next pass; once every
//!    listed thread is stopped, nothing can create another.
//! 4. Each stopped thread is a root: its stack from the recorded address to the top of the stack
//!    it is on (the goroutine slot, found through goro-stack, or else the end of the memory
//!    mapping, read from `/proc/self/maps` the first time the thread is stopped and checked
//!    with `process_vm_readv` after that), and its static TLS block and thread descriptor, at
//!    fixed offsets from its thread pointer (the same for every thread; learnt from
//!    `dl_iterate_phdr` on the collecting thread and glibc's `_thread_db_sizeof_pthread`). The
//!    descriptor holds a starting thread's closure until the thread first runs. A thread
//!    stopped inside another handler that runs on its alternate signal stack is scanned from the
//!    stack pointer that handler interrupted (`interrupted_sp`), plus the alternate stack's live
//!    part.
//! 5. Dropping the stop releases the claimed threads; the one wake-up that restarts the world
//!    (`goro_alloc::parked::restart_world`, which goro-sched's restart or the caller gives once
//!    everything else is set down) resumes every thread at once.
//!
//! While threads are stopped the collector must not wait on anything a stopped thread may hold:
//! it allocates nothing (the marker's work list is `mmap`ed), and takes no lock besides those it
//! took *before* sending the signals (the scheduler's `allg` lists). Runtime code that must not
//! be stopped half-way (a goroutine's first run, a switch of stack segment) defers the handler
//! through goro-alloc's [`goro_alloc::nosuspend::defer_suspend`]; the deferred thread stops itself when the
//! window closes. Warnings during a stop go straight to `write(2)`: a stopped thread may hold
//! std's stderr lock.
//!
//! A thread that blocks the signal cannot be stopped. After a second of waiting the collector
//! checks the thread's blocked set; if the signal is blocked it warns once and goes on without
//! that thread, whose roots are then not seen (docs/soundness.md lists this route as open) —
//! unless the thread is runnable and has not had a CPU since the last check (glibc blocks every
//! signal in a thread it is creating until it first runs), or sleeps in the kernel
//! uninterruptibly (glibc's `posix_spawn` waiting for its child's exec): `may_give_up`. A
//! thread that has exited (a zombie thread-group leader, which stays listed and accepts signals
//! it never takes) counts as gone.
//! Rejected: `ptrace` (a process cannot trace its own threads), scanning threads without
//! stopping them (the `rotate_left` race above), and stopping only threads that registered
//! (users cannot be asked to register every thread a C library starts).

mod procfs;

use goro_sched::{futex_wait, futex_wake};
use procfs::{CpuUse, Maps, blocks_the_signal, cpu_use, for_each_task, pages_readable};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The signal that stops a thread for a collection (Boehm's collector uses it on Linux too).
pub(crate) const SUSPEND_SIGNAL: libc::c_int = libc::SIGPWR;

/// The most threads one stop can hold: more than a process can have under Linux's default
/// `pid_max` (4,194,304) would need, as slots of a table mapped with `MAP_NORESERVE` (only the
/// pages of slots in use are ever touched).
const MAX_THREADS: usize = 1 << 22;

/// Slot states.
const REQUESTED: u32 = 1;
const SUSPENDED: u32 = 2;
/// The thread exited before it stopped.
const GONE: u32 = 3;
/// The thread blocks [`SUSPEND_SIGNAL`]: it runs on, unscanned.
const UNSTOPPABLE: u32 = 4;
/// The thread was asleep in `goro_alloc::parked::while_parked`: claimed, not signalled.
const CLAIMED: u32 = 5;

/// One thread of the stop under way. Written by the collector before it signals the thread
/// (`tid`, `state = REQUESTED`), then by the thread's handler (`sp`, `tp`, then `state`).
struct Slot {
    tid: AtomicI32,
    state: AtomicU32,
    /// An address in the handler's frame: below the signal frame with the saved registers.
    sp: AtomicUsize,
    /// `pthread_self()`: the base that static TLS offsets are relative to.
    tp: AtomicUsize,
    /// The thread's alternate signal stack `[lo, hi)` if the handler runs on it (another
    /// handler was running there when the signal came), else zeros.
    alt_lo: AtomicUsize,
    alt_hi: AtomicUsize,
    /// The return address the kernel put below the handler's context (the restorer, glibc's
    /// `__restore_rt` for a handler installed through it): the first frame on the alternate
    /// stack has the same one when its handler was installed the same way (`interrupted_sp`).
    restorer: AtomicUsize,
    /// The thread's use of the CPU at the last check of a thread that blocks the signal
    /// (`may_give_up`): nanoseconds on a CPU, and times put on one plus one (0: not checked).
    seen_ran_ns: AtomicU64,
    seen_runs: AtomicU64,
}

/// The slot table, mapped by [`install`] (all-zero bytes are an unused slot), never unmapped.
static SLOT_TABLE: AtomicUsize = AtomicUsize::new(0);

/// The first `len` slots. Async-signal-safe.
fn slots(len: usize) -> &'static [Slot] {
    // Acquire: pairs with the Release in `install`, which mapped the table.
    let table = SLOT_TABLE.load(Ordering::Acquire);
    if table == 0 {
        return &[];
    }
    // SAFETY: a mapping of MAX_THREADS zero-initialised slots (atomics, valid when zero), never
    // unmapped; `len` is clamped to it.
    unsafe { core::slice::from_raw_parts(table as *const Slot, len.min(MAX_THREADS)) }
}
/// Slots in use by the stop under way. Release: publishes the slot's `tid` and `state` to
/// handlers (Acquire).
static USED: AtomicUsize = AtomicUsize::new(0);
/// Threads signalled and not yet stopped (or found gone); the collector futex-waits on it, and
/// the handler that brings it to zero wakes the collector, once per pass rather than once per
/// thread.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Whether the handler is installed (once per process).
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Whether the "thread blocks the signal" warning was printed.
static WARNED_BLOCKED: AtomicBool = AtomicBool::new(false);

/// Installs the handler of [`SUSPEND_SIGNAL`] (once per process), and tells goro-sched how a
/// thread whose stop it deferred stops itself.
///
/// # Panics
/// Panics if `sigaction` fails.
pub(crate) fn install() {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    let table = map_anonymous(MAX_THREADS * size_of::<Slot>());
    // Release: publishes the mapping to `slots`.
    SLOT_TABLE.store(table as usize, Ordering::Release);
    goro_alloc::nosuspend::set_deferred_suspend_hook(stop_self);
    // SAFETY: `action` is fully initialised before `sigaction` reads it; the handler is
    // async-signal-safe (see `on_suspend_signal`).
    let installed = unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = on_suspend_signal as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // Nothing else runs inside the handler but synchronous faults, which must not wait.
        libc::sigfillset(&mut action.sa_mask);
        for fault in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            libc::sigdelset(&mut action.sa_mask, fault);
        }
        libc::sigaction(SUSPEND_SIGNAL, &action, core::ptr::null_mut())
    };
    assert_eq!(
        installed,
        0,
        "goro: cannot install the collector's SIGPWR handler: {}",
        std::io::Error::last_os_error()
    );
}

/// The handler of [`SUSPEND_SIGNAL`]. Async-signal-safe: atomics, `gettid`, `pthread_self`,
/// `futex`; errno is restored.
extern "C" fn on_suspend_signal(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    if goro_alloc::nosuspend::defer_suspend() {
        return;
    }
    // SAFETY: `__errno_location` returns this thread's errno slot.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above; the slot is valid for the thread's life.
    let saved_errno = unsafe { *errno };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // Acquire: pairs with the Release store of `USED`, so the slots below it are visible.
    let used = USED.load(Ordering::Acquire);
    if let Some(slot) = slots(used)
        .iter()
        .find(|slot| slot.tid.load(Ordering::Relaxed) == tid)
    {
        let here = 0usize;
        let sp = core::hint::black_box(&here) as *const usize as usize;
        slot.sp.store(sp, Ordering::Relaxed);
        // SAFETY: pthread_self reads the thread pointer; it has no preconditions.
        slot.tp
            .store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
        // The kernel records the thread's alternate stack in the handler's context, whether
        // or not the handler runs on it.
        // SAFETY: the kernel passes a valid `ucontext_t` to an `SA_SIGINFO` handler.
        let alt = unsafe { (*context.cast::<libc::ucontext_t>()).uc_stack };
        let (alt_lo, alt_hi) = (alt.ss_sp as usize, alt.ss_sp as usize + alt.ss_size);
        let on_alt = (alt_lo..alt_hi).contains(&sp);
        slot.alt_lo
            .store(if on_alt { alt_lo } else { 0 }, Ordering::Relaxed);
        slot.alt_hi
            .store(if on_alt { alt_hi } else { 0 }, Ordering::Relaxed);
        // SAFETY: the kernel's signal frame holds the restorer's address in the word below the
        // context it passes.
        let restorer = unsafe { context.cast::<usize>().sub(1).read() };
        slot.restorer.store(restorer, Ordering::Relaxed);
        // Release: publishes `sp` and `tp`, and every write the thread made before the
        // signal, to the collector's Acquire load of the state.
        if slot
            .state
            .compare_exchange(REQUESTED, SUSPENDED, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            // Read once the slot is ours and before the acknowledgement: the stop that asked
            // (the generation odd) holds the world until every acknowledgement, so the restart
            // changes what is read here. Read before the exchange, it could predate the stop: a
            // signal given up on earlier and taken late, the handler preempted before the
            // exchange while a new stop began and asked this thread again, would leave at once.
            let generation = goro_alloc::parked::world_generation();
            // Counted in before the acknowledgement, so that the next stop waits until this
            // thread has left the handler (`begin_stop`).
            goro_alloc::parked::hold_in_stop();
            if PENDING.fetch_sub(1, Ordering::Release) == 1 {
                futex_wake(&PENDING, 1);
            }
            goro_alloc::parked::wait_held(generation);
        }
    }
    // SAFETY: as above.
    unsafe { *errno = saved_errno };
}

/// goro-sched's hook for a thread whose stop it deferred: signal ourselves again now that the
/// window is closed (the slot is still `REQUESTED`).
fn stop_self() {
    // SAFETY: tgkill to the calling thread with a signal whose handler is installed.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            SUSPEND_SIGNAL,
        );
    }
}

/// Where the stopping thread's own stack is scanned from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OwnStack {
    /// From the frame of the scan up: the collecting thread's live frames.
    Here,
    /// Not at all, nor its TLS: one of the collector's own threads, which holds no `Gc`.
    Skip,
}

/// The other threads of the process, stopped. Dropping it resumes them.
pub(crate) struct Stopped {
    used: usize,
    me: i32,
    /// Where this thread's own stack is scanned from.
    own: OwnStack,
    /// The static TLS area and the thread descriptor, as offsets from a thread's
    /// `pthread_self()` (`thread_data_offsets`).
    tls: (isize, isize),
    /// goro-alloc's thread cache, as offsets from a thread's `pthread_self()` (see `skip`).
    cache: (isize, isize),
    /// goro-gc's mark worker (0 if none): stopped if it sleeps, like goro's other threads, but
    /// no root (see `stop_others`).
    worker: i32,
}

/// Where one thread keeps its roots.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThreadRoots {
    /// The live part of its current stack: `[sp, top)`.
    pub(crate) stack: (usize, usize),
    /// Its static TLS block, if readable.
    pub(crate) tls: Option<(usize, usize)>,
    /// When it was stopped on its alternate signal stack, inside another handler: that
    /// stack's live part (`stack` is then the stack the first handler there interrupted, from
    /// the stack pointer it interrupted).
    pub(crate) alternate: Option<(usize, usize)>,
    /// A part of either to leave out: the thread's goro-alloc cache, which holds no root
    /// (`goro_alloc::thread_cache_range`).
    pub(crate) skip: (usize, usize),
}

/// Stops every other thread of the process but the stash-trap thread and the mark helpers (see
/// the module docs). The caller must have begun the stop (`goro_alloc::parked::begin_stop`,
/// goro-sched's stop of its world or the caller's own); the threads go on at its
/// `goro_alloc::parked::restart_world`, after the returned value is dropped.
///
/// Must be called with no lock held that a thread of the process may wait for in a way that
/// keeps it from stopping (a signal handler interrupts futex waits, so ordinary locks are fine),
/// and must not allocate or take a lock until the returned value is dropped, except locks taken
/// before.
pub(crate) fn stop_others() -> Stopped {
    install();
    let tls = thread_data_offsets();
    let cache = {
        // SAFETY: pthread_self has no preconditions.
        let tp = unsafe { libc::pthread_self() } as usize;
        let (lo, hi) = goro_alloc::thread_cache_range();
        (lo.wrapping_sub(tp) as isize, hi.wrapping_sub(tp) as isize)
    };
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let trap = goro_stack::trap_thread_id();
    let helpers = goro_gc::helper_threads();
    // The mark worker runs nothing but the collector, so it holds no mutator's `Gc`; its frames
    // keep words of the objects it marked in earlier cycles, which would keep them alive (and
    // at the end of a runtime, make them immortal). A sleeping worker is claimed like the
    // others, so that it stays put; a running one is left to run.
    let worker = goro_gc::collector_threads().mark_worker().unwrap_or(0);
    USED.store(0, Ordering::Release);
    PENDING.store(0, Ordering::Relaxed);
    let mut used = 0;
    // SAFETY: this is the collector stopping the world; `Stopped::drop` releases the claims.
    unsafe {
        goro_alloc::parked::claim_parked(me, |parked| {
            let slot = take_slot(&mut used, parked.tid, CLAIMED);
            slot.sp.store(parked.sp, Ordering::Relaxed);
            slot.tp.store(parked.tp, Ordering::Relaxed);
        });
    }
    // Release: the handler's Acquire load of `USED` sees the claimed slots (never its own).
    USED.store(used, Ordering::Release);
    loop {
        let before = used;
        for_each_task(|tid| {
            if tid == me
                || tid == worker
                || Some(tid) == trap
                || helpers.contains(tid)
                || slots(used)
                    .iter()
                    .any(|s| s.tid.load(Ordering::Relaxed) == tid)
            {
                return;
            }
            let slot = take_slot(&mut used, tid, REQUESTED);
            PENDING.fetch_add(1, Ordering::Relaxed);
            // Release: the handler's Acquire load of `USED` sees the slot (and the count).
            USED.store(used, Ordering::Release);
            if !signal(tid) {
                give_up_on(slot, GONE);
            }
        });
        if used == before {
            break;
        }
        wait_for(&slots(used)[before..]);
    }
    Stopped {
        used,
        me,
        own: OwnStack::Here,
        tls,
        cache,
        worker,
    }
}

/// The next unused slot of the stop under way, given to thread `tid` in `state`.
fn take_slot(used: &mut usize, tid: i32, state: u32) -> &'static Slot {
    if *used == MAX_THREADS {
        fatal("more threads than a collection can stop (4,194,304)");
    }
    let slot = &slots(*used + 1)[*used];
    slot.tid.store(tid, Ordering::Relaxed);
    slot.state.store(state, Ordering::Relaxed);
    slot.seen_runs.store(0, Ordering::Relaxed);
    slot.alt_lo.store(0, Ordering::Relaxed);
    slot.alt_hi.store(0, Ordering::Relaxed);
    slot.restorer.store(0, Ordering::Relaxed);
    *used += 1;
    slot
}

/// Whether a suspend signal went to `tid` (false: the thread is gone).
fn signal(tid: i32) -> bool {
    // SAFETY: tgkill with a valid signal number; an exited tid gives ESRCH.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, SUSPEND_SIGNAL) == 0 }
}

/// Waits until every slot in `slots` left `REQUESTED`.
fn wait_for(slots: &[Slot]) {
    let began = Instant::now();
    let mut warned = false;
    loop {
        // Acquire: the handlers' writes (their slots) are visible once the count they brought
        // down is read.
        let pending = PENDING.load(Ordering::Acquire);
        if pending == 0 {
            return;
        }
        // Checks that cost a system call each wait until the slow path: most threads stop
        // within microseconds, and thousands may be waited for at once.
        let waited = began.elapsed();
        if waited > Duration::from_millis(20) {
            for slot in slots {
                if slot.state.load(Ordering::Relaxed) != REQUESTED {
                    continue;
                }
                let tid = slot.tid.load(Ordering::Relaxed);
                if !signal_target_exists(tid) || cpu_use(tid).is_some_and(CpuUse::exited) {
                    give_up_on(slot, GONE);
                } else if waited > Duration::from_secs(1)
                    && blocks_the_signal(tid, SUSPEND_SIGNAL)
                    && may_give_up(slot, tid)
                    && give_up_on(slot, UNSTOPPABLE)
                    && !WARNED_BLOCKED.swap(true, Ordering::Relaxed)
                {
                    warn(b"goro: a thread blocks SIGPWR, so the collector cannot stop it; Gc values only that thread holds are not seen (docs/soundness.md)\n");
                }
            }
        }
        if !warned && waited > Duration::from_secs(5) {
            warned = true;
            warn(b"goro: a collection has waited 5 s for a thread to stop (is it in uninterruptible sleep?)\n");
        }
        futex_wait(&PENDING, pending, Some(Duration::from_millis(2)));
    }
}

/// Stops waiting for the thread of `slot`, which is gone or blocks the signal, unless it has
/// just stopped after all; returns whether it gave up.
fn give_up_on(slot: &Slot, state: u32) -> bool {
    let gave_up = slot
        .state
        .compare_exchange(REQUESTED, state, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok();
    if gave_up {
        PENDING.fetch_sub(1, Ordering::Relaxed);
    }
    gave_up
}

/// Whether the collector may give up on the thread of `slot` (`tid`), which blocks the signal:
/// unless it is runnable and has not been on a CPU since the last check, or sleeps in the
/// kernel uninterruptibly (`CpuUse::may_be_given_up`). glibc blocks every
/// signal in a thread it is creating until the thread first runs, so a new thread kept off the
/// CPUs looks like one that blocks the signal; yet it stops as soon as it runs, and until then
/// the closure `std::thread::spawn` gave it is reachable only from its descriptor, which no
/// scan reads. A thread that really blocks the signal either sleeps or, runnable, gets a CPU
/// sooner or later and is given up on at the check after that.
fn may_give_up(slot: &Slot, tid: i32) -> bool {
    let Some(now) = cpu_use(tid) else {
        // Gone, or /proc unreadable: the caller's next check finds out which.
        return false;
    };
    let seen = match slot.seen_runs.load(Ordering::Relaxed) {
        0 => None,
        runs => Some((slot.seen_ran_ns.load(Ordering::Relaxed), runs - 1)),
    };
    slot.seen_ran_ns.store(now.ran_ns, Ordering::Relaxed);
    slot.seen_runs.store(now.runs + 1, Ordering::Relaxed);
    now.may_be_given_up(seen)
}

/// Whether the thread `tid` of this process still exists.
fn signal_target_exists(tid: i32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) == 0 }
}

impl Stopped {
    /// Sets where the stopping thread's own stack is scanned from (from the scan's frame up
    /// unless told otherwise).
    pub(crate) fn set_own_stack(&mut self, own: OwnStack) {
        self.own = own;
    }

    /// Calls `f` with the roots of every stopped thread, and of the calling thread (as
    /// [`set_own_stack`](Stopped::set_own_stack) says).
    pub(crate) fn for_each_thread(&self, mut f: impl FnMut(ThreadRoots)) {
        let mut places = ThreadPlaces::take();
        let here = 0usize;
        let my_sp = core::hint::black_box(&here) as *const usize as usize;
        // SAFETY: pthread_self has no preconditions.
        let my_tp = unsafe { libc::pthread_self() } as usize;
        let mut report =
            |tid: i32, sp: usize, tp: usize, alternate: Option<(usize, usize, usize)>| {
                if tid == self.worker {
                    return;
                }
                // Stopped on its alternate signal stack: scan that stack's live part, and the
                // interrupted stack as if the thread had stopped where the first handler took it.
                let (sp, alternate) = match alternate.and_then(|(lo, hi, restorer)| {
                    Some((interrupted_sp(lo, hi, sp, restorer)?, (sp, hi)))
                }) {
                    Some((interrupted, live)) => {
                        (interrupted, pages_readable(live.0, live.1).then_some(live))
                    }
                    None => (sp, None),
                };
                let slot_top = goro_stack::slot_bounds(sp).map(|(_, top)| top);
                let Some(place) = places.find(tid, sp, tp, slot_top.is_some(), self.tls) else {
                    return;
                };
                let top = slot_top.unwrap_or(place.stack_end);
                let tls = {
                    let (lo, hi) = self.tls;
                    let (lo, hi) = (tp.wrapping_add_signed(lo), tp.wrapping_add_signed(hi));
                    // glibc puts a thread's TLS and descriptor at the top of its stack mapping:
                    // scanned already.
                    let in_stack = lo >= sp && hi <= top;
                    (!in_stack && place.tls_readable).then_some((lo, hi))
                };
                let skip = (
                    tp.wrapping_add_signed(self.cache.0),
                    tp.wrapping_add_signed(self.cache.1),
                );
                f(ThreadRoots {
                    stack: (sp, top),
                    tls,
                    alternate,
                    skip,
                });
            };
        match self.own {
            OwnStack::Here => report(self.me, my_sp, my_tp, None),
            OwnStack::Skip => {}
        }
        for slot in slots(self.used) {
            // Acquire: pairs with the handler's Release.
            if matches!(slot.state.load(Ordering::Acquire), SUSPENDED | CLAIMED) {
                let alternate = (
                    slot.alt_lo.load(Ordering::Relaxed),
                    slot.alt_hi.load(Ordering::Relaxed),
                    slot.restorer.load(Ordering::Relaxed),
                );
                report(
                    slot.tid.load(Ordering::Relaxed),
                    slot.sp.load(Ordering::Relaxed),
                    slot.tp.load(Ordering::Relaxed),
                    (alternate.0 != 0).then_some(alternate),
                );
            }
        }
        places.put_back();
        // Maps read before this stop and not needed: too old for the next one.
        drop(Maps::take_preread());
    }
}

/// Dropping the stop releases the claimed threads; the signalled ones (and claimed ones that
/// woke) wait for the caller's `goro_alloc::parked::restart_world`.
impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: the claims of this stop, which is ending.
        unsafe { goro_alloc::parked::release_claimed() };
    }
}

/// Where a thread keeps its stack and whether its static TLS block can be read, as
/// `/proc/self/maps` said when the thread was first stopped.
#[derive(Clone, Copy)]
struct ThreadPlace {
    /// 0 in an unused entry.
    tid: i32,
    /// The thread pointer the place was learnt with: a thread keeps it for life, and a new
    /// thread with a recycled id and the same thread pointer lives in the same stack block.
    tp: usize,
    /// The mapping that held the thread's stack pointer, from its start to where the scan of
    /// the thread's stack ends: the mapping's end, or the end of the thread's descriptor when
    /// the thread pointer lies above the stack pointer in that mapping (`own_block`).
    stack_start: usize,
    stack_end: usize,
    /// glibc's layout: the stack block holds, from the bottom, the stack, the static TLS and
    /// the thread descriptor at the thread pointer, and nothing else. The part scanned lies in
    /// the thread's own block, which stays as it is while the thread lives: a known place needs
    /// no check. (The scan stops at the end of the descriptor: the mapping may go on into
    /// another thread's block, whose guard page faults.)
    own_block: bool,
    /// Whether the static TLS area and the descriptor can be read.
    tls_readable: bool,
}

/// The places of threads seen by earlier stops, so that a stop reads `/proc/self/maps` (tens of
/// microseconds for the kernel to format) only when a thread it has not seen is stopped, or
/// one whose stack pointer left the mapping it was in. A table in its own mapping (no
/// allocator while threads are stopped), open addressing by thread id; kept between stops like
/// the maps buffer, and cleared when it fills.
struct ThreadPlaces {
    table: *mut ThreadPlace,
    used: usize,
    /// `/proc/self/maps`, once this stop had to read it.
    maps: Option<Maps>,
}

/// Entries of the [`ThreadPlaces`] table (a power of two).
const PLACES: usize = 1 << 14;

/// The table of the last [`ThreadPlaces`] and its entry count (`table | used` would not fit:
/// kept as two words, the table swapped out by whoever takes it).
static SPARE_PLACES: AtomicUsize = AtomicUsize::new(0);
static SPARE_PLACES_USED: AtomicUsize = AtomicUsize::new(0);

impl ThreadPlaces {
    fn take() -> ThreadPlaces {
        // Acquire: pairs with the Release in `put_back`, which may have run on another thread.
        let table = SPARE_PLACES.swap(0, Ordering::Acquire);
        if table == 0 {
            return ThreadPlaces {
                table: map_anonymous(PLACES * size_of::<ThreadPlace>()).cast(),
                used: 0,
                maps: None,
            };
        }
        ThreadPlaces {
            table: table as *mut ThreadPlace,
            used: SPARE_PLACES_USED.load(Ordering::Relaxed),
            maps: None,
        }
    }

    /// Whether thread `tid` has an entry (its place may have changed since).
    fn knows(&mut self, tid: i32) -> bool {
        let home = home_of(tid);
        let mut at = home;
        loop {
            match self.entries()[at].tid {
                0 => return false,
                known if known == tid => return true,
                _ => {}
            }
            at = (at + 1) % PLACES;
            if at == home {
                return false;
            }
        }
    }

    fn put_back(self) {
        let table = self.table as usize;
        SPARE_PLACES_USED.store(self.used, Ordering::Relaxed);
        // Release: publishes the entries to the next `take`.
        if SPARE_PLACES
            .compare_exchange(0, table, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: the mapping `take` made; nothing refers to it any more.
            unsafe {
                libc::munmap(
                    table as *mut libc::c_void,
                    PLACES * size_of::<ThreadPlace>(),
                )
            };
        }
    }

    fn entries(&mut self) -> &mut [ThreadPlace] {
        // SAFETY: a mapping of `PLACES` entries, all-zero bytes being a valid unused entry,
        // held by this value alone.
        unsafe { core::slice::from_raw_parts_mut(self.table, PLACES) }
    }

    /// The place of thread `tid`, stopped with its stack pointer at `sp` (in a goroutine's
    /// stack slot if `on_goroutine_stack`, whose bounds the caller knows) and thread pointer
    /// `tp`; `None` if its stack pointer lies in no readable mapping.
    fn find(
        &mut self,
        tid: i32,
        sp: usize,
        tp: usize,
        on_goroutine_stack: bool,
        tls: (isize, isize),
    ) -> Option<ThreadPlace> {
        let home = home_of(tid);
        let mut at = home;
        loop {
            let entry = self.entries()[at];
            if entry.tid == 0 {
                break;
            }
            if entry.tid == tid {
                let known = entry.tp == tp
                    && (on_goroutine_stack
                        || (entry.stack_start..entry.stack_end).contains(&sp)
                            && (entry.own_block || pages_readable(sp, entry.stack_end)));
                if known {
                    return Some(entry);
                }
                break;
            }
            at = (at + 1) % PLACES;
            if at == home {
                break;
            }
        }
        // The maps read before the stop (`prepare_stop`), if the mapping they give is still
        // there; else a fresh read.
        let (stack_start, mapping_end, tls_readable) = loop {
            let maps = self.maps.get_or_insert_with(|| match Maps::take_preread() {
                Some(maps) => maps,
                None => Maps::read_fresh(),
            });
            let mapping = maps.readable_mapping(sp);
            let valid = maps.fresh
                || match mapping {
                    Some((_, end)) => pages_readable(sp, end),
                    None => on_goroutine_stack,
                };
            if !valid {
                self.maps = Some(Maps::read_fresh());
                continue;
            }
            let (start, end) = match mapping {
                Some(mapping) => mapping,
                None if on_goroutine_stack => (0, 0),
                None => return None,
            };
            let tls_readable =
                maps.is_readable(tp.wrapping_add_signed(tls.0), tp.wrapping_add_signed(tls.1));
            break (start, end, tls_readable);
        };
        let descriptor_end = tp.wrapping_add_signed(tls.1);
        let own_block = sp < tp && tp < descriptor_end && descriptor_end <= mapping_end;
        let place = ThreadPlace {
            tid,
            tp,
            stack_start,
            stack_end: if own_block {
                descriptor_end
            } else {
                mapping_end
            },
            own_block,
            tls_readable,
        };
        if self.entries()[at].tid != tid {
            if self.used >= PLACES / 2 {
                // Mostly threads that are gone: start again.
                self.entries().fill(ThreadPlace::EMPTY);
                self.used = 0;
                at = home;
            }
            self.used += 1;
        }
        self.entries()[at] = place;
        Some(place)
    }
}

impl ThreadPlace {
    const EMPTY: ThreadPlace = ThreadPlace {
        tid: 0,
        tp: 0,
        stack_start: 0,
        stack_end: 0,
        own_block: false,
        tls_readable: false,
    };
}

/// The first entry of the [`ThreadPlaces`] table where thread `tid` may be.
fn home_of(tid: i32) -> usize {
    (tid as usize).wrapping_mul(0x9E37_79B9) % PLACES
}

/// Reads `/proc/self/maps` ahead of a stop when a thread exists that no stop has seen (the
/// first stop of a program, or the first after threads were started): the kernel takes tens of
/// microseconds to format it, better spent before the world stops than in the pause. The stop
/// uses what it says only where every page is still readable (`pages_readable`), and reads afresh for
/// the rest. Called with the world running; allocation-free like the stop itself.
pub(crate) fn prepare_stop() {
    // A fresh, empty table if none was kept (the first stop) or a stop under way holds it.
    let mut places = ThreadPlaces::take();
    let trap = goro_stack::trap_thread_id();
    let helpers = goro_gc::helper_threads();
    let mut unknown = false;
    for_each_task(|tid| {
        unknown |= Some(tid) != trap && !helpers.contains(tid) && !places.knows(tid);
    });
    places.put_back();
    if unknown {
        Maps::read().keep_for_next_stop();
    }
}

/// The stack pointer a thread had when a signal first took it onto its alternate stack
/// `[lo, hi)`, which it is still on at `sp`: read from the kernel's signal frame nearest the top
/// of that stack (the first one pushed there), whose `ucontext_t` names the alternate stack it
/// was delivered on (`uc_stack`) and holds the interrupted registers. A candidate must also
/// have the kernel frame's shape: `restorer` (the stop handler's own return address, the same
/// for every handler installed through glibc) in the word below it, and its FP state pointer
/// pointing above it, inside the stack (the FP save area above a frame holds the interrupted
/// vector registers, which user code can fill with the very words `uc_stack` holds). `None` if
/// no frame there passes, or on an architecture whose frame this does not read.
fn interrupted_sp(lo: usize, hi: usize, sp: usize, restorer: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::mem::offset_of;
        let stack = offset_of!(libc::ucontext_t, uc_stack);
        let base = stack + offset_of!(libc::stack_t, ss_sp);
        let size = stack + offset_of!(libc::stack_t, ss_size);
        let rsp = offset_of!(libc::ucontext_t, uc_mcontext)
            + offset_of!(libc::mcontext_t, gregs)
            + libc::REG_RSP as usize * size_of::<libc::greg_t>();
        let fpregs =
            offset_of!(libc::ucontext_t, uc_mcontext) + offset_of!(libc::mcontext_t, fpregs);
        let word = |at: usize| {
            // SAFETY: `at` is an aligned word inside the alternate stack, mapped while the
            // thread runs on it; the thread is stopped.
            unsafe { core::ptr::read_volatile(at as *const usize) }
        };
        // Every frame lies between the stop handler's frame and the top: the live part, which
        // the kernel wrote (a guard page may sit at the range's bottom).
        let bottom = lo.max(sp) + size_of::<usize>();
        if !pages_readable(bottom - size_of::<usize>(), hi) {
            return None;
        }
        let last = rsp.max(fpregs) + size_of::<usize>();
        let mut at = hi.checked_sub(last)? & !(size_of::<usize>() - 1);
        while at >= bottom {
            if word(at + base) == lo
                && word(at + size) == hi - lo
                && word(at - size_of::<usize>()) == restorer
                && (at + last..hi).contains(&word(at + fpregs))
            {
                let interrupted = word(at + rsp);
                if !(lo..hi).contains(&interrupted) {
                    return Some(interrupted);
                }
            }
            at -= size_of::<usize>();
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (lo, hi, sp, restorer);
        None
    }
}

/// A thread's data beside its stack, as offsets `[lo, hi)` from its `pthread_self()`: its
/// static TLS area and its descriptor (glibc's `struct pthread`, which begins at
/// `pthread_self()`). The descriptor holds the start argument: the closure `std::thread::spawn`
/// boxed for the thread, which glibc reads only after the thread unblocks signals, so a thread
/// stopped during its creation (its pending stop signal is taken right there) keeps the only
/// copy in it. It also holds the values of the first 32 `pthread_setspecific` keys.
/// Called before the threads stop (`dlsym` may take the loader's lock).
fn thread_data_offsets() -> (isize, isize) {
    let (lo, hi) = static_tls_offsets().unwrap_or((0, 0));
    (lo.min(0), hi.max(descriptor_bytes() as isize))
}

/// The size of a thread descriptor: glibc publishes it for debuggers
/// (`_thread_db_sizeof_pthread`, which libthread_db reads); where it does not, the descriptor's
/// first words (its header, with the dynamic TLS vector).
fn descriptor_bytes() -> usize {
    const HEADER: usize = 64;
    static BYTES: AtomicUsize = AtomicUsize::new(0);
    let known = BYTES.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // SAFETY: a NUL-terminated name looked up in every loaded object.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_thread_db_sizeof_pthread".as_ptr()) };
    let published = if symbol.is_null() {
        0
    } else {
        // SAFETY: glibc defines the symbol as a `const uint32_t`.
        (unsafe { symbol.cast::<u32>().read() }) as usize
    };
    // A descriptor larger than a page would be glibc's layout no more.
    let bytes = if (HEADER..=PAGE).contains(&published) {
        published
    } else {
        HEADER
    };
    BYTES.store(bytes, Ordering::Relaxed);
    bytes
}

/// The static TLS area of a thread as offsets `[lo, hi)` from its `pthread_self()`: the blocks
/// `dl_iterate_phdr` reports for the calling thread that lie near its thread pointer (blocks of
/// `dlopen`ed libraries allocated elsewhere are left out; each range is checked against the
/// mappings before it is read).
fn static_tls_offsets() -> Option<(isize, isize)> {
    /// `dl_iterate_phdr`'s callback.
    ///
    /// # Safety
    /// Only `dl_iterate_phdr` may call it, with `data` the `(tp, lo, hi)` of the caller.
    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the call, and
        // `data` is the tuple `static_tls_offsets` passed in.
        let (info, area) = unsafe { (&*info, &mut *data.cast::<(usize, isize, isize)>()) };
        if info.dlpi_tls_data.is_null() {
            return 0;
        }
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let header = unsafe { &*info.dlpi_phdr.add(i) };
            if header.p_type != libc::PT_TLS {
                continue;
            }
            let offset = (info.dlpi_tls_data as usize).wrapping_sub(area.0) as isize;
            // Static TLS sits next to the thread pointer; farther blocks are dynamic.
            if offset.unsigned_abs() < 64 << 20 {
                area.1 = area.1.min(offset);
                area.2 = area.2.max(offset + header.p_memsz as isize);
            }
        }
        0
    }
    // SAFETY: pthread_self has no preconditions.
    let tp = unsafe { libc::pthread_self() } as usize;
    let mut area: (usize, isize, isize) = (tp, isize::MAX, isize::MIN);
    // SAFETY: the callback only reads the headers it is given and writes `area`.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&raw mut area).cast());
    }
    (area.1 < area.2).then_some((area.1, area.2))
}

/// The page size of x86-64 and of the aarch64 kernels goro runs on.
pub(crate) const PAGE: usize = 4096;

/// A private anonymous read-write mapping of `len` bytes.
fn map_anonymous(len: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fatal("mmap failed while the world was stopped");
    }
    p.cast()
}

/// Writes `message` to stderr without std's lock.
fn warn(message: &[u8]) {
    // SAFETY: writes a valid buffer to file descriptor 2.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

/// Go's kind of fatal error, written without allocating, then abort.
fn fatal(what: &str) -> ! {
    warn(b"fatal error: goro: ");
    warn(what.as_bytes());
    warn(b"\n");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes the tests that use the process-wide places table and maps read ahead.
    pub(super) static PLACES_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn thread_places_are_learnt_once_and_checked_after() {
        let _serial = PLACES_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: gettid and pthread_self have no preconditions.
        let (tid, tp) = unsafe { (libc::gettid(), libc::pthread_self() as usize) };
        let here = 0usize;
        let sp = core::hint::black_box(&here) as *const usize as usize;
        let tls = thread_data_offsets();
        let mut places = ThreadPlaces::take();
        let first = places
            .find(tid, sp, tp, false, tls)
            .expect("this stack is mapped");
        assert!(
            places.maps.is_some(),
            "an unknown thread is looked up in the maps"
        );
        places.put_back();

        let mut places = ThreadPlaces::take();
        let again = places.find(tid, sp, tp, false, tls).expect("known");
        assert!(places.maps.is_none(), "a known thread needs no maps");
        assert_eq!(
            (again.stack_start, again.stack_end, again.tls_readable),
            (first.stack_start, first.stack_end, first.tls_readable)
        );
        let maps = Maps::read();
        let (start, end) = maps.readable_mapping(sp).expect("mapped");
        assert_eq!(first.stack_start, start);
        // A test thread is a glibc thread: its scan ends at the end of its descriptor.
        assert!(
            first.own_block,
            "a std thread's stack block holds its thread pointer"
        );
        assert_eq!(first.stack_end, tp + descriptor_bytes());
        assert!(first.stack_end > sp && first.stack_end <= end);

        // Another thread pointer under the same id (the id was recycled): learnt afresh.
        let moved = places.find(tid, sp, tp ^ PAGE, false, tls).expect("mapped");
        assert!(places.maps.is_some());
        assert_eq!(moved.tp, tp ^ PAGE);
        places.put_back();
    }

    #[test]
    fn a_starting_threads_argument_lies_in_what_its_scan_covers() {
        // glibc reads a new thread's start argument from its descriptor only after the thread
        // has unblocked signals, where a pending stop is taken: the scan must cover it.
        extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
            // SAFETY: gettid and pthread_self have no preconditions.
            let (tid, tp) = unsafe { (libc::gettid(), libc::pthread_self() as usize) };
            let here = 0usize;
            let sp = core::hint::black_box(&here) as *const usize as usize;
            let mut places = ThreadPlaces::take();
            let place = places
                .find(tid, sp, tp, false, thread_data_offsets())
                .expect("mapped");
            places.put_back();
            let covered = (sp..place.stack_end)
                .step_by(size_of::<usize>())
                // SAFETY: the live part of this thread's stack block, readable.
                .any(|at| unsafe { (at as *const usize).read() } == arg as usize);
            usize::from(covered) as *mut libc::c_void
        }
        let _serial = PLACES_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            descriptor_bytes() > 1024,
            "glibc publishes the size of its thread descriptor"
        );
        let argument = Box::into_raw(Box::new(0u64));
        let mut thread: libc::pthread_t = 0;
        // SAFETY: `start` is a valid start routine; the thread is joined below.
        let covered = unsafe {
            assert_eq!(
                libc::pthread_create(&mut thread, core::ptr::null(), start, argument.cast()),
                0
            );
            let mut result = core::ptr::null_mut();
            assert_eq!(libc::pthread_join(thread, &mut result), 0);
            drop(Box::from_raw(argument));
            result as usize
        };
        assert_eq!(covered, 1, "the start argument lies outside the scan");
    }

    #[test]
    fn maps_read_before_a_stop_are_used_only_where_still_mapped() {
        let _serial = PLACES_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        // A thread no stop has seen: the maps are read ahead.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let unseen = std::thread::spawn(move || rx.recv());
        prepare_stop();
        let ahead = Maps::take_preread().expect("maps read ahead for an unseen thread");
        assert!(!ahead.fresh);
        let here = 0usize;
        let sp = core::hint::black_box(&here) as *const usize as usize;
        assert!(ahead.readable_mapping(sp).is_some());
        drop(ahead);
        tx.send(()).unwrap();
        unseen.join().unwrap().unwrap();

        // A mapping made unreadable since the maps were read ahead is not trusted.
        let base = map_anonymous(4 * PAGE) as usize;
        Maps::read().keep_for_next_stop();
        // SAFETY: the mapping made above, used by nothing.
        unsafe { libc::mprotect(base as *mut libc::c_void, 4 * PAGE, libc::PROT_NONE) };
        let mut places = ThreadPlaces::take();
        let no_such_thread = i32::MAX - 7;
        assert!(
            places
                .find(no_such_thread, base + PAGE, PAGE, false, (0, 0))
                .is_none(),
            "a stack pointer in a mapping made unreadable since the read ahead was trusted"
        );
        assert!(places.maps.as_ref().is_some_and(|maps| maps.fresh));
        places.put_back();
    }

    #[test]
    fn a_known_place_with_a_guard_page_since_is_learnt_again() {
        let _serial = PLACES_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let base = map_anonymous(4 * PAGE) as usize;
        let no_such_thread = i32::MAX - 9;
        let mut places = ThreadPlaces::take();
        let learnt = places
            .find(no_such_thread, base + PAGE, PAGE, false, (0, 0))
            .expect("mapped");
        assert!(learnt.stack_end >= base + 4 * PAGE && !learnt.own_block);
        places.put_back();
        // A guard page appears above the stack pointer (another thread's stack, say).
        // SAFETY: a page of the mapping made above, used by nothing.
        unsafe {
            libc::mprotect(
                (base + 3 * PAGE) as *mut libc::c_void,
                PAGE,
                libc::PROT_NONE,
            )
        };
        let mut places = ThreadPlaces::take();
        let again = places
            .find(no_such_thread, base + PAGE, PAGE, false, (0, 0))
            .expect("still mapped below the guard");
        assert_eq!(
            again.stack_end,
            base + 3 * PAGE,
            "the known place was trusted over a guard page"
        );
        places.put_back();
    }
}
