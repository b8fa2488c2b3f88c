//! Deadlock detection (Go's `checkdead`), run by sysmon, and the registry of the runtime's own
//! threads it needs: an M or sysmon lists itself in [`RUNTIME_THREADS`] while it runs. Reads the
//! scheduler's state through `runtime2` only; it never changes it.

use crate::lock::{Rank, RankedMutex, lock};
use crate::runtime2::{GStatus, Sched};
use std::sync::atomic::Ordering;

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
///    the runtime's (see [`RuntimeThread`]) could wake a goroutine: `Unprovable`. So could the
///    collector's threads while a cycle is under way (drop glue on the sweeper, cleanups
///    started from the mark worker; `Config::collector_busy`): `Unprovable` too. With every
///    goroutine parked and no other thread, nothing can start a cycle that is not under way.
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
    if sched.config.collector_busy.is_some_and(|busy| busy()) {
        return Deadlock::Unprovable(
            "the collector is at work (drop glue on its sweeper, cleanups it queued) and could \
             wake one"
                .into(),
        );
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
    !sched.runnable_anywhere() && sched.ms().iter().all(|m| lock(&m.ready).is_empty())
}

/// Whether every G that has not exited is parked.
fn every_goroutine_parked(sched: &Sched) -> bool {
    sched.allg.iter().all(|list| {
        lock(list).iter().all(|g| {
            // Acquire: pairs with the Release in `destroy` (the Waiting and Runnable writes are
            // ordered by the queue locks, see `deadlocked`).
            let status = g.g().status(Ordering::Acquire);
            status == GStatus::Waiting || status == GStatus::Dead
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
static RUNTIME_THREADS: RankedMutex<Vec<i32>> = RankedMutex::new(Rank::RuntimeThreads, Vec::new());

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
/// heap's scavenger, the stack trap thread and `Config::runtime_threads`. An entry of `/proc/self/task` that is not a
/// number is an error (it cannot be told apart from a thread of the user's).
fn threads_outside_runtime(sched: &Sched) -> std::io::Result<Vec<i32>> {
    let mut ours = lock(&RUNTIME_THREADS).clone();
    ours.extend(goro_alloc::scavenger_thread_id());
    ours.extend(goro_stack::trap_thread_id());
    ours.extend(
        sched
            .config
            .runtime_threads
            .into_iter()
            .flat_map(|tids| tids()),
    );
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
