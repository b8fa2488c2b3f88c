//! sysmon: the runtime's monitor thread (Go's `sysmon`).
//!
//! It runs without a P, wakes every 20 µs while goroutines run (backing off to 10 ms when the
//! runtime is idle), and:
//!
//! 1. **Preemption flag.** If an M has been running the same schedule (its `schedtick` has not
//!    moved) for [`TIME_SLICE`], sysmon sets the M's `preempt` flag. The running goroutine sees it
//!    at its next safe point (allocation batch, channel operation, spawn, join, yield) and yields,
//!    so a goroutine that calls into the runtime cannot hold its P forever. Nothing is ever
//!    switched inside a signal handler: a goroutine that never reaches a safe point is not
//!    preempted (DESIGN.md section 3).
//!    And if the same goroutine has run for a whole sysmon tick while its P has never-run
//!    goroutines queued, sysmon wakes an idle M to steal them (the P stays with its M, which may
//!    be inside the runtime using it; `blocking` is how code hands the P itself over).
//! 2. **Deadlock detection.** When no M runs a goroutine, sysmon checks whether anything can
//!    ever run again (see `proc::deadlocked`) and, if not, ends the program with Go's
//!    "fatal error: all goroutines are asleep - deadlock!" and exit status 2. A thread that is
//!    not goro's (told apart by kernel thread id, never by name) could still wake a goroutine, so
//!    while one exists nothing is reported; schedtrace says so.
//! 3. **Parked stacks.** Every [`shrink::EPOCH`] it starts a new epoch and, if goroutines
//!    parked since the last pass (or a collection asked), walks every G in slices of
//!    [`shrink::SLICE`], stashing or trimming the stacks of goroutines parked for at least one
//!    epoch (see `shrink`); and it returns the cached stacks of Ps idle for a whole epoch to
//!    the pool, releasing their pages.
//! 4. **schedtrace.** With `GORO_DEBUG=schedtrace=MS`, every MS milliseconds it prints Go's line:
//!    `SCHED 1004ms: gomaxprocs=2 idleprocs=1 threads=4 spinningthreads=0 idlethreads=1
//!    runqueue=0 [0 3]`, and below it, while every goroutine is blocked but no deadlock can be
//!    reported, why: `  all goroutines are blocked; not reported as a deadlock: 1 thread outside
//!    the runtime could wake one (thread id 4242)`.

use crate::proc::{
    Deadlock, RuntimeThread, Sched, StackPass, lock, release_parked_stacks, trim_idle_stack_caches,
};
use crate::shrink;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a goroutine may run before sysmon asks it to yield (Go's `forcePreemptNS`).
pub const TIME_SLICE: Duration = Duration::from_millis(10);
const MIN_DELAY: Duration = Duration::from_micros(20);
const MAX_DELAY: Duration = Duration::from_millis(10);
/// sysmon's sleep between slices of a stack pass.
const PASS_DELAY: Duration = Duration::from_millis(1);

/// What sysmon last saw of one M.
#[derive(Clone, Copy)]
struct Seen {
    schedtick: u64,
    since: Instant,
    /// When the M began running the schedule it still runs.
    running_since: Instant,
    /// Whether the warning about this schedule was printed.
    warned: bool,
}

/// How long one goroutine may run without a safe point, while goroutines bound to its M wait,
/// before sysmon names it on stderr (once per schedule).
const HOG_WARNING: Duration = Duration::from_secs(1);

/// The monitor loop; returns when the runtime shuts down.
pub(crate) fn run(sched: &'static Sched) {
    let started = Instant::now();
    let mut seen: Vec<Seen> = Vec::new();
    let mut delay = MIN_DELAY;
    let mut next_trace = sched.config().schedtrace.map(|every| started + every);
    let mut next_epoch = started + shrink::EPOCH;
    let mut pass: Option<StackPass> = None;
    let mut young_left = false;
    let mut idle_ps = Vec::new();
    let _runtime_thread = RuntimeThread::register();
    while !sched.shutdown.load(Ordering::Acquire) {
        sched.sysmon_sleep(delay);
        let now = Instant::now();
        let mut busy = false;
        for (i, m) in sched.ms().iter().enumerate() {
            let tick = m.schedtick.load(Ordering::Relaxed);
            if seen.len() <= i {
                seen.push(Seen {
                    schedtick: tick,
                    since: now,
                    running_since: now,
                    warned: false,
                });
            }
            let running = m.running.load(Ordering::Relaxed);
            busy |= running;
            if seen[i].schedtick != tick || !running {
                seen[i] = Seen {
                    schedtick: tick,
                    since: now,
                    running_since: now,
                    warned: false,
                };
                continue;
            }
            if !seen[i].warned && now.duration_since(seen[i].running_since) >= HOG_WARNING {
                let waiting = m.waiting();
                if waiting > 0 {
                    seen[i].warned = true;
                    warn_hog(m, waiting, now.duration_since(seen[i].running_since));
                }
            }
            // The same goroutine for a whole tick: its P's queued goroutines go to another M.
            crate::proc::hand_off_queued_work(sched, m);
            if now.duration_since(seen[i].since) >= TIME_SLICE {
                m.preempt.store(true, Ordering::Relaxed);
                seen[i].since = now;
            }
        }
        delay = if busy {
            MIN_DELAY
        } else {
            (delay * 2).min(MAX_DELAY)
        };
        // Deadlock detection runs here rather than in the last M to go idle: sysmon looks again
        // every tick, so a thread of the runtime's that was still starting (not yet listed as
        // one of its own) when the Ms went idle cannot hide a deadlock for good.
        // Why every goroutine is blocked but no deadlock is reported (for schedtrace).
        let verdict = if busy {
            Deadlock::No
        } else {
            crate::proc::deadlocked(sched)
        };
        let blocked = match verdict {
            Deadlock::Proven => crate::proc::throw_deadlock(),
            Deadlock::Unprovable(why) => Some(why),
            Deadlock::No => None,
        };
        if now >= next_epoch {
            next_epoch = now + shrink::EPOCH;
            let epoch = sched.stack_epoch.fetch_add(1, Ordering::Relaxed) + 1;
            let parks = sched.parks_since_pass.swap(false, Ordering::Relaxed);
            let asked = sched.stack_pass_requested.swap(false, Ordering::Relaxed);
            if pass.is_none() && (parks || asked || young_left) {
                pass = Some(StackPass::new(epoch));
            }
            trim_idle_stack_caches(sched, &mut idle_ps);
            goro_stack::adapt_stack_prefill();
        }
        if let Some(current) = &mut pass {
            if release_parked_stacks(sched, current, Instant::now() + shrink::SLICE) {
                young_left = current.found_young;
                pass = None;
            } else {
                delay = delay.min(PASS_DELAY);
            }
        }
        if let (Some(at), Some(every)) = (next_trace, sched.config().schedtrace)
            && now >= at
        {
            trace_line(sched, now.duration_since(started), blocked.as_deref());
            next_trace = Some(at + every);
        }
    }
}

/// Names a goroutine that keeps its M from the goroutines bound to it: started goroutines stay
/// on their thread, so they wait until it reaches a safe point. (A collection does not wait for
/// it: it is stopped by signal where it stands.)
#[cold]
fn warn_hog(m: &crate::proc::M, waiting: usize, running: Duration) {
    eprintln!(
        "goro: goroutine {} has run for {:.1} s on one thread without reaching a safe point \
         (a channel operation, an allocation, goro::yield_now); {waiting} goroutine(s) bound to \
         that thread wait for it",
        m.running_goroutine.load(Ordering::Relaxed),
        running.as_secs_f64(),
    );
}

/// Prints Go's schedtrace line, and under it, when every goroutine is blocked but the deadlock
/// check cannot report it, why not (indented, as Go's `scheddetail` lines are).
fn trace_line(sched: &Sched, elapsed: Duration, blocked: Option<&str>) {
    let ms = sched.ms();
    let idle_threads = ms.iter().filter(|m| m.is_idle()).count();
    let procs = sched.gomaxprocs();
    let local: Vec<String> = (0..procs)
        .map(|i| sched.local_queue_len(i).to_string())
        .collect();
    eprintln!(
        "SCHED {}ms: gomaxprocs={} idleprocs={} threads={} spinningthreads={} idlethreads={} \
         runqueue={} [{}]",
        elapsed.as_millis(),
        procs,
        sched.idle_procs(),
        ms.len() + 1,
        sched.spinning_ms(),
        idle_threads,
        lock(sched.global_queue()).len(),
        local.join(" "),
    );
    if let Some(why) = blocked {
        eprintln!("  all goroutines are blocked; not reported as a deadlock: {why}");
    }
}
