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
//!    preempted (docs/design.md, section 3).
//!    And if the same goroutine has run for a whole sysmon tick while its P has never-run
//!    goroutines queued, sysmon wakes an idle M to steal them (the P stays with its M, which may
//!    be inside the runtime using it; `blocking` is how code hands the P itself over).
//! 2. **Deadlock detection.** When no M runs a goroutine, sysmon checks whether anything can
//!    ever run again (see `deadlock::deadlocked`) and, if not, ends the program with Go's
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

use crate::deadlock::{self, Deadlock, RuntimeThread};
use crate::lock::lock;
use crate::proc;
use crate::runtime2::{M, NO_HOME, Sched};
use crate::shrink::{self, Released, StashMode};
use goro_stack::Stack;
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
            proc::hand_off_queued_work(sched, m);
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
            deadlock::deadlocked(sched)
        };
        let blocked = match verdict {
            Deadlock::Proven => deadlock::throw_deadlock(),
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
fn warn_hog(m: &M, waiting: usize, running: Duration) {
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
            if home == NO_HOME {
                continue; // never ran (or reused since, and not yet run): nothing parked
            }
            // SAFETY: we are sysmon and hold the G's allg lock. The stack fields of a parked G
            // are written only by its home M before its first run and at its exit, neither of
            // which can happen while it is parked.
            let released = unsafe {
                gg.parked_stack.release(
                    pass.before,
                    sched.stash == StashMode::Unchecked,
                    || lock(&sched.ms[home].ready),
                    || gg.home.load(Ordering::Relaxed) == home,
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
