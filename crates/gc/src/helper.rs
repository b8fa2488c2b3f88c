//! Draining the mark work list, with a second CPU when there is one: the mark helper thread.
//!
//! While the world is stopped every CPU but the collector's sits idle, and most of a pause with
//! many goroutines is reading their stacks and G structs, each in its own cold page. So a cycle
//! that runs with two or more Ps shares its work with one helper thread, as Go's mark workers
//! share theirs, but without stealing: the collector hands over half of its work list whenever
//! the helper has none and it has enough, and the helper never hands work back. Marks are
//! atomic (goro-alloc's `Block::mark` is the claim), so a block reached by both markers is
//! scanned once, by whichever claims it.
//!
//! The helper is goro's own thread, started once by the first cycle with two Ps. It holds no
//! `Gc` (it runs nothing but the marker) and takes no lock and allocates nothing while helping,
//! so the stop leaves it running ([`helper_thread_id`]). The two agree through one word:
//!
//! ```text
//!   IDLE --collector, at mark start--> ARMED --helper, awake--> HUNGRY
//!   HUNGRY --collector, after filling the helper's list--> FED --helper, list empty--> HUNGRY
//!   ARMED | HUNGRY --collector, its own list empty (CAS)--> IDLE
//! ```
//!
//! The collector never waits for an ARMED helper: one that is slow to wake (or was stopped
//! because it had not published its id before the stop began) is simply not used. It waits for
//! a FED one, whose list it filled. The helper's Release store of HUNGRY (and the collector's
//! Acquire CAS) make the helper's marks visible before the collector condemns what is unmarked.

use crate::mark::{Source, Work};
use crate::object::vtable_of;
use crate::trace::Tracer;
use std::cell::UnsafeCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// No cycle wants help; the helper sleeps (or is about to).
const IDLE: u32 = 0;
/// A cycle wants help; the helper has not yet answered.
const ARMED: u32 = 1;
/// The helper waits for work, spinning.
const HUNGRY: u32 = 2;
/// The helper's work list holds work the collector gave it.
const FED: u32 = 3;

/// Where the collector and the helper stand (see the module docs).
static PHASE: AtomicU32 = AtomicU32::new(IDLE);

/// The helper thread, once started.
static HELPER: OnceLock<Option<Thread>> = OnceLock::new();

/// The helper's kernel thread id, or 0 before it published it.
static TID: AtomicI32 = AtomicI32::new(0);

/// The process the helper runs in: a child forked later has no helper, and its id may go to
/// one of the child's threads once the parent's helper is gone.
static PID: AtomicI32 = AtomicI32::new(0);

/// The helper's tracer. Only the thread that PHASE names may touch it: the collector while it
/// is HUNGRY (to fill its list), the helper otherwise.
struct Share(UnsafeCell<Option<Tracer>>);

// SAFETY: access is handed back and forth through PHASE with Release/Acquire (see `Share`),
// so the tracer is used by one thread at a time, and a tracer holds only addresses and its
// own mapping.
unsafe impl Sync for Share {}

static SHARE: Share = Share(UnsafeCell::new(None));

/// Work items a list must hold before half of it is handed over: fewer cost more to hand over
/// than to scan.
const MIN_SHARED: usize = 16;

/// The kernel thread id of the mark helper, if it runs. It is goro's own: it holds no `Gc`,
/// wakes no goroutine, and must not be stopped with the world (it marks while the world is
/// stopped).
pub fn helper_thread_id() -> Option<i32> {
    let tid = TID.load(Ordering::Acquire);
    // SAFETY: getpid has no preconditions.
    (tid != 0 && PID.load(Ordering::Relaxed) == unsafe { libc::getpid() }).then_some(tid)
}

/// Starts the mark helper thread if it is not running yet, and waits (a little) until it can
/// help. A runtime with two or more Ps calls it as it starts; the first cycle with two Ps
/// calls it too. The helper sleeps until a cycle wakes it. Called with the world running.
pub fn start_mark_helper() {
    HELPER.get_or_init(|| {
        let helper = std::thread::Builder::new()
            .name("goro-gc-helper".into())
            .spawn(helper_main)
            .ok()
            .map(|handle| handle.thread().clone());
        let began = Instant::now();
        while helper.is_some() && TID.load(Ordering::Acquire) == 0 && began.elapsed() < START_WAIT {
            std::thread::yield_now();
        }
        helper
    });
}

/// How long [`start_mark_helper`] waits for a new helper to publish its id.
const START_WAIT: Duration = Duration::from_millis(10);

/// How long an early-woken helper waits for the cycle to arm it before it sleeps again.
const EARLY_WAIT: Duration = Duration::from_millis(2);

/// Wakes the helper ahead of a cycle that is about to stop the world, if it runs: a thread
/// asleep on an idle virtual CPU takes tens of microseconds to run again, which would otherwise
/// come out of the pause. It waits (yielding its CPU to the threads that must reach a safe point)
/// for [`arm`], and sleeps again after [`EARLY_WAIT`] if no cycle comes.
pub(crate) fn wake_early() {
    if let Some(Some(helper)) = HELPER.get() {
        helper.unpark();
    }
}

/// Asks the helper to wake for the cycle under way, if it runs and has published its id. Called
/// by the collector with the world stopped; it neither allocates nor blocks.
pub(crate) fn arm() -> bool {
    let Some(Some(helper)) = HELPER.get() else {
        return false;
    };
    if helper_thread_id().is_none() {
        return false;
    }
    debug_assert_eq!(PHASE.load(Ordering::Relaxed), IDLE);
    // Release: the cycle's cleared marks are visible to the helper before it marks.
    PHASE.store(ARMED, Ordering::Release);
    // Futex-based and allocation-free.
    helper.unpark();
    true
}

/// Marks until `tracer`'s work list is empty, handing half of it to the helper whenever the
/// helper is hungry (`shared`: the cycle armed it), then releases the helper once it is done.
/// Returns how many work items it handed over. Called only by the thread that runs the cycle
/// (or a retirement's, or gccheckmark's marking, with the barrier off): it takes the barrier's
/// log as it goes.
pub(crate) fn drain(tracer: &mut Tracer, shared: bool) -> usize {
    let mut given = 0;
    if shared {
        let mut wait = Backoff::default();
        loop {
            given += drain_sharing(tracer);
            // Our list is empty: release the helper once it finished what it was given.
            match PHASE.load(Ordering::Acquire) {
                // Acquire on success: the helper's marks happen before whatever follows.
                phase @ (ARMED | HUNGRY) => {
                    if PHASE
                        .compare_exchange(phase, IDLE, Ordering::Acquire, Ordering::Acquire)
                        .is_ok()
                    {
                        return given;
                    }
                }
                FED => wait.snooze(),
                _ => return given,
            }
        }
    }
    let mut since_log = 0;
    while let Some(work) = tracer.marker.work.pop() {
        take_log_if_filling(tracer, &mut since_log);
        process(tracer, work);
    }
    given
}

/// Items between two looks at the barrier's log while a pass marks.
const LOG_LOOK_EVERY: usize = 256;

/// Every [`LOG_LOOK_EVERY`] items, takes the barrier's log onto the work list if it is filling:
/// a mutator that finds the log full waits for the marker, which must not make it wait for a
/// whole pass over a large heap. Only the thread that runs the cycle drains the log (its one
/// consumer); `drain` is called only by that thread.
#[inline]
fn take_log_if_filling(tracer: &mut Tracer, since_log: &mut usize) {
    *since_log += 1;
    if *since_log >= LOG_LOOK_EVERY {
        *since_log = 0;
        if crate::barrier::filling() {
            crate::barrier::drain(&mut tracer.marker, false);
        }
    }
}

/// Drains `tracer`, feeding the helper; returns how many items it handed over.
fn drain_sharing(tracer: &mut Tracer) -> usize {
    let mut given = 0;
    let mut since_log = 0;
    while let Some(work) = tracer.marker.work.pop() {
        if PHASE.load(Ordering::Relaxed) == HUNGRY && tracer.marker.work.len() >= MIN_SHARED {
            given += feed(tracer);
        }
        take_log_if_filling(tracer, &mut since_log);
        process(tracer, work);
    }
    given
}

fn drain_alone(tracer: &mut Tracer) {
    while let Some(work) = tracer.marker.work.pop() {
        process(tracer, work);
    }
}

#[inline]
fn process(tracer: &mut Tracer, work: Work) {
    match work {
        Work::Object(start, header) => {
            // SAFETY: the header came from an allocated slot of a Gc span; the object is live
            // (every mutator is stopped) and of the vtable's type.
            unsafe { (vtable_of(header).trace)(start as *const u8, tracer) };
        }
        Work::Range(lo, hi) => tracer.marker.scan(lo, hi, Source::Object),
        Work::Block(lo, hi) => tracer.marker.scan(lo, hi, Source::Block),
        Work::Root(lo, hi) => tracer.marker.scan(lo, hi, Source::Root),
    }
}

/// Moves half of `tracer`'s work to the hungry helper; returns how many items.
#[cold]
fn feed(tracer: &mut Tracer) -> usize {
    // Acquire: pairs with the helper's Release store of HUNGRY, after which it no longer
    // touches its tracer.
    if PHASE.load(Ordering::Acquire) != HUNGRY {
        return 0;
    }
    // SAFETY: the helper is HUNGRY, so its tracer is ours until we store FED (see `Share`).
    let Some(helper) = (unsafe { &mut *SHARE.0.get() }) else {
        return 0;
    };
    let given = tracer.marker.work.give_half(&mut helper.marker.work);
    // Release: publishes the handed-over items.
    PHASE.store(FED, Ordering::Release);
    given
}

/// Waiting for the other marker: spinning a little, then yielding the CPU. The two may share one
/// CPU (the kernel put the helper where it found room), and a waiter that only spins keeps the
/// other off it for a whole time slice, milliseconds.
#[derive(Default)]
struct Backoff {
    spins: u32,
}

impl Backoff {
    /// Spins before the first yield: a few microseconds.
    const SPINS: u32 = 1 << 10;

    fn snooze(&mut self) {
        if self.spins < Self::SPINS {
            self.spins += 1;
            std::hint::spin_loop();
        } else {
            // sched_yield: allocation-free and lock-free.
            std::thread::yield_now();
        }
    }
}

/// Moves the calling thread off the CPU it runs on (to any other it may use), then lets it run
/// anywhere again. A new thread starts on its creator's CPU, and later wake-ups prefer the CPU
/// a thread last ran on: a helper left there would wait behind the collector that woke it,
/// which runs without yielding.
fn leave_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the masks are plain bitsets that
    // sched_getaffinity fills and sched_setaffinity reads, for the calling thread (0).
    unsafe {
        let here = libc::sched_getcpu();
        let mut allowed: libc::cpu_set_t = core::mem::zeroed();
        if here < 0
            || libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed) != 0
            || libc::CPU_COUNT(&allowed) < 2
        {
            return;
        }
        let mut elsewhere = allowed;
        libc::CPU_CLR(here as usize, &mut elsewhere);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &elsewhere) == 0 {
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &allowed);
        }
    }
}

fn helper_main() {
    leave_this_cpu();
    // SAFETY: nobody else touches the cell before TID is published below (`arm` needs it).
    unsafe { *SHARE.0.get() = Some(Tracer::new()) };
    // SAFETY: gettid and getpid have no preconditions.
    let (tid, pid) = unsafe { (libc::gettid(), libc::getpid()) };
    PID.store(pid, Ordering::Relaxed);
    // Release: publishes the tracer to the collector's Acquire load in `arm`.
    TID.store(tid, Ordering::Release);
    loop {
        // Acquire: pairs with `arm`'s Release.
        while PHASE.load(Ordering::Acquire) == IDLE {
            std::thread::park();
            // Woken early (`wake_early`): the cycle arms us once the world is stopped.
            let woken = Instant::now();
            let mut wait = Backoff::default();
            while PHASE.load(Ordering::Relaxed) == IDLE && woken.elapsed() < EARLY_WAIT {
                wait.snooze();
            }
        }
        // A new cycle: forget the words the last one marked (the marks were cleared since).
        // SAFETY: the tracer is ours until we store HUNGRY.
        if let Some(tracer) = unsafe { (*SHARE.0.get()).as_mut() } {
            tracer.marker.forget_recent();
        }
        if PHASE
            .compare_exchange(ARMED, HUNGRY, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // The cycle was over before we woke.
            continue;
        }
        let session = crate::stats::thread_cpu();
        let mut wait = Backoff::default();
        loop {
            match PHASE.load(Ordering::Acquire) {
                HUNGRY => wait.snooze(),
                FED => {
                    wait = Backoff::default();
                    // SAFETY: FED hands the tracer to us until we store HUNGRY.
                    let tracer = unsafe { (*SHARE.0.get()).as_mut() }
                        .expect("the helper's tracer is set before its id is published");
                    drain_alone(tracer);
                    // Release: our marks, and the end of our use of the tracer, to the
                    // collector.
                    PHASE.store(HUNGRY, Ordering::Release);
                }
                // IDLE: the cycle is over; ARMED: the next one already began.
                _ => break,
            }
        }
        let used = crate::stats::thread_cpu().saturating_sub(session);
        CPU_NANOS.fetch_add(
            u64::try_from(used.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// CPU time the helper spent armed (marking or waiting for work), over all cycles.
static CPU_NANOS: AtomicU64 = AtomicU64::new(0);

/// The helper's CPU time so far (see [`CPU_NANOS`]); a session under way is counted when it
/// ends.
pub(crate) fn cpu_used() -> Duration {
    Duration::from_nanos(CPU_NANOS.load(Ordering::Relaxed))
}
