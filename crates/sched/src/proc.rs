//! The scheduler (Go's `proc.go`): how an M finds work, runs it and goes idle, and how work is
//! submitted and an idle M woken for it. The types are in `runtime2`; the vocabulary (G, M, P,
//! g0, the migration rule) is in the crate docs.
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
//! A goroutine returns control to g0 by `switch_to_g0` with a [`Request`] saying why (yield,
//! park, exit, stop for the collector, run a stop-the-world closure); g0 acts on it in
//! [`execute`] after the switch, when the goroutine's registers are saved on its stack.
//!
//! # Where work goes
//!
//! Work reaches an M by one of four doors, and each door names who must be woken:
//!
//! 1. **A new goroutine** ([`newproc`] -> [`enqueue_new`]): on an M holding a P it goes to that
//!    P's lock-free `runq` (a full ring moves its older half to the global queue); from any other
//!    thread to the global queue. Then [`wake_idle_for_work`]: an idle M is woken only if a P is
//!    free for it (Go's `npidle` test in `wakep`), and not while another M spins.
//! 2. **A readied goroutine** ([`ready`]): readied on its own M (which is awake: it is running
//!    the readier), it goes to `runnext`, and nobody is woken. Otherwise it goes to its home M's
//!    `ready` queue, and *that* M is woken if it is idle: by the migration rule no other M may
//!    run it. (With migration on, [`ready_anywhere`] uses the readier's `runnext` or the global
//!    queue and wakes any M.)
//! 3. **A timer** (`Sched::add_timer`, `sleep`): [`wake_idle`], so that a sleeping M re-arms its
//!    sleep for the new deadline.
//! 4. **A P** (`blocking`, `set_max_procs`, [`release_p`] to a waiting M): the P is handed to an
//!    M waiting for one under `Sched::pidle`, or an idle M is woken (else a new one started) to
//!    take it from the free list.
//!
//! # How an M goes idle, and why no wake-up is lost
//!
//! [`find_runnable`] looks at `runnext`, its queues, the global queue and the other Ps' rings;
//! then it *spins* ([`spin`]) for up to 20 µs; then it goes idle:
//!
//! ```text
//!   M going idle (find_runnable)               waker (ready, wake_idle, wake_idle_for_work)
//!   spinning -= 1; fence(SeqCst)         [A]    push work
//!   idle = true (SeqCst)                 [B]    fence(SeqCst)
//!   re-check: timers, ready under its lock,     if spinning > 0: done (a spinner looks)   [A]
//!             global queue, steal               if idle_ps > 0 (new goroutines only)      [C]
//!   found: idle = false, run it                    for an M: if idle && swap(idle, false):
//!   release_p (idle_ps += 1 under pidle)   [C]           unpark it                         [B]
//!   fence(SeqCst); global queue empty?     [C]
//!   park (with a timeout: earliest timer)
//!   idle = false
//! ```
//!
//! Three pairs, each a store-buffer (Dekker) pattern: each side writes, fences, then reads what
//! the other side wrote, so at least one of the two sees the other.
//!
//! - **[B] The idle flag: swap and re-check.** The M stores `idle = true` (SeqCst) *before* its
//!   last look at the queues; a waker pushes *before* it reads `idle`. Either the waker sees the
//!   flag, or the M's re-check sees the work. The re-check of the `ready` queue takes its lock
//!   ([`pop_local_exact`], not the lock-free length hint): if the waker's push came first in
//!   the lock's order the M sees it, and if the M's look came first, its flag store happened
//!   before the waker's read. The waker *swaps* the flag to false, so of several wakers exactly
//!   one unparks; it loads first and swaps only if set, so the line of an awake M is not
//!   written. A wake that comes before the M parks is kept by the parker's token.
//! - **[A] The spinning count and its fence.** While an M spins, wakers skip the futex: the
//!   spinner polls its `ready` length every round and the shared queues every 64. A spinner that
//!   gives up decrements `spinning` and fences before it stores `idle` and re-checks; a waker
//!   fences after its push and before it reads `spinning`. Either the waker sees the spinner
//!   (whose re-check, after its fence, sees the push) or it sees no spinner and unparks an idle
//!   M through [B].
//! - **[C] The global-queue fence after a P is released.** New goroutines wake an M only if a
//!   P is free ([`wake_idle_for_work`] reads `idle_ps` after a fence). An M that found nothing
//!   releases its P (counting it in `idle_ps`), fences, and looks at the global queue once more
//!   before it sleeps: a goroutine queued there by a thread that read `idle_ps` before the
//!   release (and so woke nobody) is seen here. A goroutine queued in a P's own ring needs no
//!   such look: that P's M runs it, and thieves look at every ring.
//!
//! An M without a P ([`idle_without_p`]) follows [B] as well: it stores `idle`, re-checks its
//! `ready` queue (under the lock), the free Ps with runnable work, and the timers, then parks.
//!
//! # Rejected designs
//!
//! - **Waking an M on every submission.** A futex wake-up costs more than the work of most
//!   goroutines; a spinning M, or an M whose own goroutine was readied into `runnext`, finds the
//!   work without one. Hence the spinning count and the `runnext` door.
//! - **Go's bound on spinners** (at most half the busy Ps spin). Here at most one M per P spins:
//!   a readied goroutine must run on its own M, so that M itself must be awake to pick it up
//!   cheaply (a ping-pong between two Ms would otherwise pay a futex wake-up per message
//!   whenever the other M happens to spin).
//! - **Sleeping at once, without spinning.** A futex sleep and wake-up costs more than the 20 µs
//!   spin when work comes back quickly (a ping-pong between Ms, a producer slightly ahead).
//! - **Waking any idle M for new goroutines while no P is free.** It could not run them; the M
//!   that frees a P looks at the global queue first ([C]).
//! - **Taking a P from an M that runs one goroutine too long** (Go's `retake`). The M may be
//!   inside the runtime using its P; that needs the M to announce where it is (Go's
//!   `entersyscall`), which `blocking` does and arbitrary code does not. sysmon instead wakes an
//!   idle M to steal the P's queued goroutines ([`hand_off_queued_work`]).
//! - **Go's `resetspinning`** (a spinner that finds work wakes another to replace it) is not
//!   done: work queued meanwhile waits for the next look of some M, and sysmon's hand-off covers
//!   a P whose queue waits behind a long-running goroutine.

use crate::deadlock::RuntimeThread;
use crate::grow;
use crate::local::drop_locals;
use crate::lock::lock;
use crate::panic::throw;
use crate::runtime2::{
    CURRENT_M, Entry, G, GRef, GStatus, Locals, M, NO_HOME, NO_P, PIdle, Request, Sched, current_g,
    current_m, current_sched, is_goroutine, switch_to_g0,
};
use crate::shrink::{ParkedStack, StashMode};
use crate::stw;
use crate::sync_prims;
use crate::timer;
use goro_alloc::nosuspend::NoSuspend;
use goro_stack::{Stack, StackPointer, init_stack, switch};
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Beyond this many queued Gs, new goroutines go to the global queue instead of the local one.
pub const LOCAL_QUEUE_SOFT_LIMIT: usize = 256;

/// Every this many schedules an M looks at the global queue first (Go's fairness rule).
const GLOBAL_QUEUE_INTERVAL: u32 = 61;

/// Stacks a P keeps before it returns half of them to goro-stack's global pool.
const STACK_CACHE_MAX: usize = 64;

pub(crate) fn m_main(m: &'static M) {
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

pub(crate) fn begin_shutdown(sched: &Sched) {
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
    if let Some(waiter) = hand_p_locked(sched, &mut idle, p) {
        drop(idle);
        waiter.parker.unpark();
        return;
    }
    sched.ps[p].held.store(false, Ordering::Relaxed);
    idle.free.push(p);
    sched.idle_ps.store(idle.free.len(), Ordering::Relaxed);
}

/// Hands P `p` to the first M waiting for one, if any, and returns that M for the caller to
/// unpark. The caller holds `Sched::pidle` (`idle` is the list it guards) and owns `p`.
fn hand_p_locked<'s>(sched: &'s Sched, idle: &mut PIdle, p: usize) -> Option<&'s M> {
    let waiter = &sched.ms[idle.waiting.pop_front()?];
    debug_assert_eq!(
        waiter.p(),
        NO_P,
        "M {} waited for a P while holding one",
        waiter.id
    );
    sched.ps[p].held.store(true, Ordering::Relaxed);
    // Release: the next holder sees this holder's writes to the P's queues and caches.
    waiter.p.store(p, Ordering::Release);
    Some(waiter)
}

/// `m` holds a P above GOMAXPROCS: give it up (its never-run goroutines go to the global queue,
/// see `release_p`) and wake an M to run them.
fn disable_p(m: &M, p: usize) {
    debug_assert_eq!(m.p(), p);
    let sched = m.sched();
    release_p(m);
    wake_idle(sched, Some(m.id));
}

impl Sched {
    /// A timer was added: make sure an idle M's sleep accounts for it.
    pub(crate) fn timer_added(&self) {
        wake_idle(self, current_m().map(|m| m.id));
    }

    /// Arms a timer on the caller's P (or P 0), waking an idle M to account for it.
    pub(crate) fn add_timer(&self, when: Instant, callback: timer::Callback) {
        self.timers_for_caller().push(when, callback);
        self.timer_added();
    }
}

/// Sleeps an M that holds no P until it has something to do.
fn idle_without_p(m: &M) {
    let sched = m.sched();
    // SeqCst: [B] in the module docs, as in `find_runnable`.
    m.idle.store(true, Ordering::SeqCst);
    let fired = sched.run_all_timers(Instant::now());
    let work = fired > 0
        || !lock(&m.ready).is_empty()
        || (!lock(&sched.pidle).free.is_empty() && sched.runnable_anywhere())
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
    // SeqCst fence: the spinner's half of [A] in the module docs (pairs with `wake_idle`'s).
    sync_prims::fence(Ordering::SeqCst);
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
        // Going idle: [B] in the module docs. SeqCst: pairs with the wakers' fence and swap.
        m.idle.store(true, Ordering::SeqCst);
        let fired = sched.run_all_timers(Instant::now());
        let found = pop_local_exact(m).or_else(|| pop_global(m));
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
        // SeqCst fence, then a last look at the global queue: [C] in the module docs (pairs
        // with the fence in `wake_idle_for_work`).
        sync_prims::fence(Ordering::SeqCst);
        if lock(&sched.global).is_empty() {
            sleep_until_work_or_timer(m);
        }
        m.idle.store(false, Ordering::SeqCst);
        return None;
    }
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
/// next schedule, and the idle re-check uses [`pop_local_exact`].
fn pop_local(m: &M) -> Option<GRef> {
    if m.ready_len.load(Ordering::Relaxed) == 0
        && let Some(g) = m.sched().ps[m.p()].runq.pop()
    {
        return Some(g);
    }
    pop_local_exact(m)
}

/// [`pop_local`] that always looks at the ready queue under its lock, never at the lock-free
/// length hint: the idle re-check needs the lock's order ([B] in the module docs).
fn pop_local_exact(m: &M) -> Option<GRef> {
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
        pop_ready_locked(m, &mut ready)
    } else {
        drop(ready);
        p.runq
            .pop()
            .or_else(|| pop_ready_locked(m, &mut lock(&m.ready)))
    }
}

/// Pops the next goroutine of `m`'s ready queue, which the caller has locked (`ready` is the
/// guarded queue), taking its stack out of sysmon's reach
/// (see `shrink`).
fn pop_ready_locked(m: &M, ready: &mut VecDeque<GRef>) -> Option<GRef> {
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
    gg.set_status(GStatus::Running, Ordering::Relaxed);
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
            gg.set_status(GStatus::Runnable, Ordering::Relaxed);
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
            gg.set_status(GStatus::Runnable, Ordering::Relaxed);
            m.push_ready(g, true);
        }
        Request::Stop => {
            gg.set_status(GStatus::Runnable, Ordering::Relaxed);
            m.push_ready(g, true);
        }
        Request::StopTheWorld(request) => {
            // SAFETY: the request and the closures it points to live on the requesting
            // goroutine's stack, which is switched out until this M resumes it after this call.
            let (f, restarted) = unsafe { (&mut *(*request).cycle, &mut *(*request).restarted) };
            stw::with_world_stopped(sched, f, restarted);
            gg.set_status(GStatus::Runnable, Ordering::Relaxed);
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
        *gg.sp.get() = init_stack(top, g_entry, g.as_ptr() as usize);
    }
}

/// Parks the running goroutine; g0 drops `guard` once the goroutine's context is saved.
/// `releasable` promises that no waker reads or writes the goroutine's stack while it is parked
/// (its wait record is in the heap or in [`wait_space`]), so sysmon may stash it.
pub(crate) fn park_goroutine<Guard>(guard: Guard, releasable: bool) {
    let g = current_g().expect("park_goroutine outside a goroutine");
    g.g().set_status(GStatus::Waiting, Ordering::Relaxed);
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
    gg.set_status(GStatus::Runnable, Ordering::Relaxed);
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
    // SeqCst fence, then a load before the swap: the waker's half of [B] in the module docs
    // (pairs with the SeqCst store in `find_runnable` before its re-check).
    sync_prims::fence(Ordering::SeqCst);
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

/// Makes a goroutine running `entry` and queues it (Go's `newproc`); returns its id.
pub(crate) fn newproc(sched: &'static Sched, entry: Entry) -> u64 {
    let g = new_g(sched, entry);
    let id = g.g().id();
    if enqueue_new(sched, g) {
        // The goroutines queued so far outnumber what the Ms keep up with: run some of them
        // here before making more. Each queued goroutine holds its G and task (~450 B), so an
        // unbounded backlog costs page faults, and those cost more than the yield (spawn 1M:
        // ~145 MB peak at ~155 ns a spawn, against ~50 MB at ~120 when the backlog stays low).
        yield_now();
    }
    id
}

pub(crate) fn new_g(sched: &'static Sched, entry: Entry) -> GRef {
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
        gg.set_status(GStatus::Runnable, Ordering::Release);
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
    let g = GRef::from_non_null(NonNull::from(Box::leak(g)));
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
    // SeqCst fence: the submitter's half of [C] in the module docs (pairs with the fence after
    // `release_p` in `find_runnable`).
    sync_prims::fence(Ordering::SeqCst);
    if sched.idle_ps.load(Ordering::Relaxed) > 0 {
        wake_idle(sched, except);
    }
}

/// Wakes one idle M (not `except`) so it can take new work; false if none was idle. A spinning
/// M will find the work by itself, so no M is woken while one spins.
fn wake_idle(sched: &Sched, except: Option<usize>) -> bool {
    // SeqCst fence: the waker's half of [A] in the module docs (pairs with the fence in `spin`).
    sync_prims::fence(Ordering::SeqCst);
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
        // SeqCst swap: [B] in the module docs (pairs with the store in `find_runnable`).
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
    while !idle.waiting.is_empty()
        && let Some(p) = idle.free.pop()
    {
        let waiter = hand_p_locked(sched, &mut idle, p).expect("checked non-empty");
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
    let g = GRef::from_non_null(NonNull::new(arg as *mut G).expect("g_entry without a G"));
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
    gg.set_status(GStatus::Dead, Ordering::Release);
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
