//! The cycle: allocation accounting, marking beside the mutators between two short pauses,
//! sweeping with the world going, and retirement at the end of a runtime.
//!
//! 1. **Mark start** (first pause). The [`Mutators`] stop every thread of the process
//!    (goroutines at a safe point, everything else where it stands; see the facade's `world`
//!    module). From here until the world restarts, a stopped thread may hold any lock, the
//!    allocator's included, so the collector allocates nothing and takes no lock a mutator can
//!    hold: work lists are mapped memory ([`crate::workbuf`]). Mark bits are cleared, the write
//!    barrier turned on ([`crate::barrier`]), and the roots scanned (conservatively) into the
//!    mark worker's work list, of two kinds of work:
//!    - `Object(start, header)`: a marked Gc object, traced precisely through its vtable;
//!    - `Range(lo, hi)`: a marked malloc block (or a logged cell), scanned conservatively.
//! 2. **Concurrent marking**, by the mark worker thread ([`crate::worker`], with the mark helper
//!    where there are two Ps or more), while the mutators run: the work list and the barrier's
//!    log are drained with an explicit stack (never recursion). New objects are black.
//! 3. **Mark termination** (second pause, run by the worker): what has no barrier is scanned
//!    again (roots, marked malloc blocks, objects an open `GcCell` borrow may have written), the
//!    log taken, marking finished, the barrier turned off; `gccheckmark` checks it here.
//! 4. **Condemn**, by the worker once the world runs again (new objects stay black until it is
//!    done): every allocated, unmarked, mortal object without drop glue in a small span is freed,
//!    and every other one gets the [`CONDEMNED`] bit in its header. No user code runs.
//! 5. **Restart**, then **sweep**: the condemned objects whose type has no drop glue are freed at
//!    once, skipping marked slots by their mark bits; the objects with drop glue go to the
//!    sweeper thread ([`crate::sweeper`]), where they are dropped, poisoned under
//!    `GORO_DEBUG=clobberfree=1`, and freed. Drop glue runs there, with the world going and on a
//!    thread of its own: a drop that takes a lock a goroutine holds waits for it without
//!    blocking any M (so the holder can run and let go), and a drop that panics aborts the
//!    process with the reason (it cannot unwind out of the collector and leave it disabled).
//!    Condemned objects are unreachable, so nothing the mutators do can reach them; new objects
//!    never carry the bit. A new cycle cannot start until the sweep is done; `collect` waits
//!    for its own cycle's sweep (pausing the caller as [`Mutators::pause`] says, which lets a
//!    goroutine's M run others).
//!
//! docs/soundness.md argues why concurrent marking still marks every reachable object.

use crate::header::{CONDEMNED, IMMORTAL, header_of};
use crate::mark::{Source, Work};
use crate::object::vtable_of;
use crate::pacer;
use crate::roots::{self, Mutators, Root, RootVisitor};
use crate::stats::{self, CycleReport};
use crate::sweeper;
use crate::trace::Tracer;
use crate::{barrier, checkmark, helper, mark, special, tracked, worker};
use goro_alloc::GcSpan;
use std::cell::{Cell, UnsafeCell};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Allocation is added to the pacer in batches of this many bytes per thread; each batch is also a
/// safe point.
const ALLOCATION_BATCH: usize = 64 << 10;

/// True from the start of a cycle's mark to the end of its sweep: no other cycle may start.
static COLLECTING: AtomicBool = AtomicBool::new(false);

/// Whether freed objects are overwritten with [`POISON`] (`GORO_DEBUG=clobberfree=1`): a root
/// the collector missed then shows at once as a wrong value instead of a rare corruption.
static CLOBBER_FREE: AtomicBool = AtomicBool::new(false);

/// Whether each cycle's marking is checked by a second, stop-the-world marking
/// (`GORO_DEBUG=gccheckmark=1`, see checkmark.rs).
static CHECKMARK: AtomicBool = AtomicBool::new(false);

/// Turns `GORO_DEBUG=gccheckmark=1` on or off (the facade reads the variable).
pub fn set_checkmark(on: bool) {
    CHECKMARK.store(on, Ordering::Relaxed);
}

/// Whether every allocation starts a cycle when none is under way (`GORO_DEBUG=gcstress=1`).
static STRESS: AtomicBool = AtomicBool::new(false);

/// Turns `GORO_DEBUG=gcstress=1` on or off: every `Gc::new` that finds no cycle under way starts
/// one (without waiting for it), so that cycles run back to back and every allocation, link and
/// borrow of a test program meets a marking collector. For tests: it makes allocation slow.
pub fn set_stress(on: bool) {
    STRESS.store(on, Ordering::Relaxed);
}

/// The word `clobberfree` fills freed objects with (Go's `clobberdeadPtr` in spirit).
pub const POISON: usize = 0xdead_beef_dead_beef;

thread_local! {
    /// Bytes this thread allocated that the pacer has not been told of. It starts at a whole
    /// batch, so that a thread's first allocation goes through `count_batch`, which arms
    /// [`EXIT_COUNT`].
    static UNCOUNTED: Cell<usize> = const { Cell::new(ALLOCATION_BATCH) };
    /// Whether this thread tells the pacer what it left uncounted when it exits.
    static EXIT_COUNT: ExitCount = const { ExitCount(Cell::new(false)) };
}

/// Set in a thread's [`UNCOUNTED`] by [`pressed`]: its next Gc allocation goes through
/// `count_batch` at once.
const PRESSED: usize = 1 << 62;

/// The allocator's pressure hook (`goro_alloc::set_pressure_hook`): this thread carved a span
/// with the heap's spans past the trigger, which it may have reached through malloc blocks alone
/// (no Gc allocation batch counts those). Its next Gc allocation compares the heap with the
/// trigger then rather than at its next 64 KiB batch, at no cost to allocations in between.
/// Runs inside the allocator: a thread-local bit, nothing else.
fn pressed() {
    let _ = UNCOUNTED.try_with(|cell| cell.set(cell.get() | PRESSED));
}

/// Tells the pacer, as its thread exits, what the thread allocated since its last batch. The
/// pacer's heap is exact (frees are taken off it as the collector makes them), so bytes a thread
/// took away uncounted would make it read smaller than it is for good: a program that ran many
/// short threads each allocating under a batch hid the whole heap from the pacer and its memory
/// limit (a helper's attack, tests/pacer_drift.rs).
struct ExitCount(Cell<bool>);

impl Drop for ExitCount {
    fn drop(&mut self) {
        if self.0.get() {
            pacer::add_allocated(UNCOUNTED.with(|cell| cell.replace(0)) & !PRESSED);
        }
    }
}

/// Turns `GORO_DEBUG=clobberfree=1` on or off (the facade reads the variable).
pub fn set_clobber_free(on: bool) {
    CLOBBER_FREE.store(on, Ordering::Relaxed);
}

/// Allocates a slot for a new object: the allocation half of `Gc::new`; returns it and its size
/// (`slot`, which the caller computed for alignment 8, unless the type is over-aligned). A
/// `pointer_free` object goes among the pointer-free ones, which marking never reads
/// (`Trace::POINTER_FREE`).
#[inline]
#[track_caller]
pub(crate) fn allocate(
    request: usize,
    align: usize,
    slot: usize,
    pointer_free: bool,
) -> (*mut u8, usize) {
    if roots::current().is_none() {
        not_in_a_runtime();
    }
    let uncounted = UNCOUNTED.with(|cell| {
        let bytes = cell.get() + slot;
        cell.set(bytes);
        bytes
    });
    if uncounted >= ALLOCATION_BATCH {
        count_batch(uncounted);
    }
    if STRESS.load(Ordering::Relaxed) {
        stress();
    }
    let ptr = if pointer_free {
        goro_alloc::alloc_gc_pointer_free(request, align)
    } else {
        goro_alloc::alloc_gc(request, align)
    };
    if ptr.is_null() {
        out_of_memory(request, align);
    }
    if barrier::allocating_black() {
        allocate_black(ptr);
    }
    if align > 8 {
        return (ptr, count_over_aligned(ptr, slot));
    }
    (ptr, slot)
}

/// The real size of an over-aligned type's slot, which may be another size class than the
/// one `slot` (alignment 8) names, or a large slot of its own; the pacer counted `slot` and is
/// put right, as the collector takes the real size off when the object dies.
#[cold]
#[inline(never)]
fn count_over_aligned(ptr: *mut u8, slot: usize) -> usize {
    let real = goro_alloc::find_block(ptr as usize).map_or(slot, |block| block.size);
    if real > slot {
        pacer::add_allocated(real - slot);
    } else {
        pacer::add_freed(slot - real);
    }
    real
}

/// Marks a slot allocated while the collector marks: the cycle keeps it (its value is traced
/// when `Gc::new` has written it, see barrier.rs).
#[cold]
#[inline(never)]
fn allocate_black(slot: *mut u8) {
    // The barrier is looked at again inside a window the collector's stop waits out: a thread
    // preempted after `allocate` saw it on could otherwise mark its slot after the cycle ended
    // and the next one began, where the mark would count without the value being traced.
    // Inside the window the look and the mark belong to one cycle: the next one's first pause,
    // which turns the barrier on, cannot come between them.
    // SAFETY: a load, a lock-free index lookup and an atomic or (at most a span's 16 stores of
    // a new marking epoch): no lock, no allocation, no wait.
    let _window = unsafe { goro_alloc::nosuspend::NoSuspend::new() };
    if !barrier::allocating_black() {
        return;
    }
    if let Some(block) = goro_alloc::find_block(slot as usize) {
        block.mark();
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn not_in_a_runtime() -> ! {
    panic!("Gc::new called outside a goro runtime: start one with goro::run(|| ...)");
}

#[cold]
#[inline(never)]
fn out_of_memory(request: usize, align: usize) -> ! {
    match std::alloc::Layout::from_size_align(request, align) {
        Ok(layout) => std::alloc::handle_alloc_error(layout),
        Err(_) => panic!("Gc::new: object of {request} bytes cannot be laid out"),
    }
}

#[cold]
#[inline(never)]
fn count_batch(bytes: usize) {
    let bytes = bytes & !PRESSED;
    UNCOUNTED.with(|cell| cell.set(0));
    // A thread's first batch: it started at a whole batch (see `UNCOUNTED`). Once destroyed,
    // at the thread's exit, the counter reads as armed.
    let first = EXIT_COUNT
        .try_with(|armed| !armed.0.replace(true))
        .unwrap_or(false);
    if first {
        // SAFETY: `pressed` sets a bit in a thread-local with a const initialiser and no
        // destructor: no allocation, lock, wait or panic.
        unsafe { goro_alloc::set_pressure_hook(pressed) };
    }
    pacer::add_allocated(if first {
        bytes - ALLOCATION_BATCH
    } else {
        bytes
    });
    let Some(mutators) = roots::current() else {
        return;
    };
    mutators.safe_point();
    if !pacer::should_trigger() {
        return;
    }
    if COLLECTING.load(Ordering::Relaxed) && pacer::heap_paced() < pacer::goal() {
        // The cycle under way started before the goal: let it catch up.
        return;
    }
    // Far past the goal with a cycle marking: wait until it has decided what is dead and freed
    // what needs no drop (Go parks an allocating goroutine that finds no marking work to assist
    // with until the cycle ends), so that however little CPU the collector gets, allocation
    // cannot run away from it. Marking and condemning run no user code, so this cannot wait for
    // a lock this thread holds. A goroutine parks meanwhile (`pause`), and a thread is stopped
    // by signal where it sleeps, so the second pause does not wait for the waiters.
    if pacer::heap_paced() >= pacer::ceiling() {
        // Acquire: pairs with the sweep's Release of `COLLECTING`.
        wait_on_cycle(mutators, ALLOCATION_PAUSE_CAP, || {
            COLLECTING.load(Ordering::Acquire) && deciding()
        });
    }
    // Past the goal with a cycle under way: wait for it a little per batch (which slows
    // allocation down to the collector's pace without long stalls), but not forever (drop glue
    // runs in its sweep, and may wait for a lock this thread holds), and no longer than the heap
    // stays past the goal.
    let began = Instant::now();
    wait_on_cycle(mutators, ALLOCATION_PAUSE_CAP, || {
        COLLECTING.load(Ordering::Acquire)
            && pacer::heap_paced() >= pacer::goal()
            && began.elapsed() < SWEEP_WAIT
    });
    if !COLLECTING.load(Ordering::Relaxed) {
        run_cycle(mutators, false);
    }
}

/// Waits while `busy` says so, finishing the cycle's after-restart work if nobody has taken it
/// (see [`finish_pending`]) and otherwise pausing, each pause twice as long as the last, from
/// [`FIRST_PAUSE`] up to `cap`. Every wake-up of a waiting goroutine costs a timer, a trip
/// through the scheduler and, with the markers on every CPU, a context switch that takes a
/// marker off its CPU: a forced collection that polled every 50 us took 1.6x the wall time of
/// one that polled every millisecond with two Ps (BENCHMARKS.md, full_gc).
fn wait_on_cycle(mutators: &dyn Mutators, cap: Duration, busy: impl Fn() -> bool) {
    let mut pause = FIRST_PAUSE;
    while busy() {
        if !finish_pending() {
            mutators.pause(pause);
            pause = (pause * 2).min(cap);
        }
    }
}

/// The first pause of a wait for the cycle.
const FIRST_PAUSE: Duration = Duration::from_micros(50);

/// The longest pause of `collect`'s waits: how late it may notice the end of its cycle.
const COLLECT_PAUSE_CAP: Duration = Duration::from_millis(1);

/// The longest pause of an allocation's waits past the goal, which stall the allocating
/// goroutine (and are bounded by [`SWEEP_WAIT`] or by the cycle's decision anyway).
const ALLOCATION_PAUSE_CAP: Duration = Duration::from_micros(200);

/// Whether the cycle under way has yet to decide what is dead and free what needs no drop: it
/// marks, condemns (new objects black), or its after-restart work waits for a taker.
fn deciding() -> bool {
    barrier::allocating_black() || PENDING.state.load(Ordering::Acquire) == PENDING_READY
}

/// `gcstress`: starts a cycle unless one is under way.
#[cold]
#[inline(never)]
fn stress() {
    if !COLLECTING.load(Ordering::Relaxed)
        && let Some(mutators) = roots::current()
    {
        run_cycle(mutators, false);
    }
}

/// How long an allocation past the heap goal waits for the cycle under way.
const SWEEP_WAIT: Duration = Duration::from_millis(1);

/// Runs a full collection now (Go's `runtime.GC`): returns when a whole cycle that started after
/// the call is complete, sweep included (its own, or one another thread started meanwhile).
/// Works on any thread of the process while a runtime runs.
///
/// # Panics
/// Panics when called while no goro runtime runs, or from drop glue the collector runs (the
/// next cycle cannot start until that drop returns).
#[track_caller]
pub fn collect() {
    let Some(mutators) = roots::current() else {
        panic!("goro::gc::collect called outside a goro runtime: start one with goro::run");
    };
    if is_collector_thread() {
        panic!(
            "goro::gc::collect called from drop glue the collector runs: the next cycle cannot \
             start until this drop returns (run it from a cleanup: goro::gc::add_cleanup)"
        );
    }
    run_cycle(mutators, true);
}

/// Whether the collector is at work in a way that may still wake a goroutine with none running:
/// a cycle under way (its sweep runs drop glue, its settling queues cleanups) or cleanups queued
/// or running. The scheduler's deadlock check asks (`goro_sched::Config::collector_busy`).
pub fn is_busy() -> bool {
    // Acquire: pairs with the sweep's Release, after its drop glue ran.
    COLLECTING.load(Ordering::Acquire) || special::cleanups_pending()
}

/// Keeps `value` (and what it points to) reachable up to this point (Go's `runtime.KeepAlive`).
#[inline]
pub fn keep_alive<T: ?Sized>(value: &T) {
    std::hint::black_box(value);
}

/// What a cycle learnt by the end of its second pause.
pub(crate) struct Marked {
    /// From the end of the first pause's work to the end of the concurrent marking.
    concurrent: Duration,
    /// How long the world stood stopped for the second pause.
    end_pause: Duration,
    heap_before: usize,
    roots: usize,
    /// The part of `roots` that was static data.
    globals: usize,
    /// Work items handed to the mark helper.
    shared_work: usize,
    census: Census,
    /// CPU time of the worker and the helper between the pauses.
    marking_cpu: Duration,
    /// CPU time of the worker's settling and condemning.
    condemning_cpu: Duration,
}

/// The work a cycle leaves for after the world restarts, published with the world stopped: see
/// [`finish_pending`].
struct Pending {
    forced: bool,
    requested: Instant,
    marked: Marked,
    procs: usize,
}

/// The one [`Pending`] job: written by the collector with the world stopped (state `EMPTY`),
/// taken by whoever wins `READY` -> `TAKEN`.
struct PendingSlot {
    state: AtomicU8,
    job: UnsafeCell<Option<Pending>>,
}

// SAFETY: `job` is written only in state EMPTY by the thread that holds `COLLECTING` (with the
// world stopped), and read only by the thread that moved the state from READY to TAKEN; the
// state's Release/Acquire orders the accesses.
unsafe impl Sync for PendingSlot {}

static PENDING: PendingSlot = PendingSlot {
    state: AtomicU8::new(PENDING_EMPTY),
    job: UnsafeCell::new(None),
};
const PENDING_EMPTY: u8 = 0;
const PENDING_READY: u8 = 1;
const PENDING_TAKEN: u8 = 2;

/// Cycles run so far, and cycles whose sweep has finished: a forced collection waits for the
/// sweep of its own cycle.
static CYCLES_RUN: AtomicU64 = AtomicU64::new(0);
static CYCLES_SWEPT: AtomicU64 = AtomicU64::new(0);

/// Runs the after-restart work of the last cycle if nobody has taken it yet: frees the condemned
/// objects without drop glue (relisting the spans their slots went back to), then sweeps the
/// rest at once or hands it to the sweeper thread, which ends the cycle (`COLLECTING`). Returns
/// whether there was work to take.
///
/// The collecting thread runs it as soon as the world restarts; so does any thread that finds
/// `COLLECTING` set and waits for the cycle to end. A goroutine that collected may go back
/// through the scheduler before it resumes, and with one P, or bound to an M whose thread now
/// waits for the waiting thread (a `join`), it may not run again until that thread goes on: the
/// cycle must not wait for it.
fn finish_pending() -> bool {
    if PENDING
        .state
        .compare_exchange(
            PENDING_READY,
            PENDING_TAKEN,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false;
    }
    // SAFETY: TAKEN gives the slot to this thread alone (see `PendingSlot`).
    let pending = unsafe { (*PENDING.job.get()).take() };
    // Release: the slot is empty before the next cycle (which needs `COLLECTING` clear, after
    // this) writes it.
    PENDING.state.store(PENDING_EMPTY, Ordering::Release);
    let Some(pending) = pending else {
        return true;
    };
    // Objects without drop glue are freed here, at once; those with drop glue go to the
    // sweeper thread.
    let swept = sweep_condemned(Glue::Defer);
    let job = Sweep::Cycle {
        forced: pending.forced,
        requested: pending.requested,
        marked: pending.marked,
        procs: pending.procs,
        swept,
    };
    if job.needs_sweeper() {
        sweeper::hand_over(Box::new(move || sweep(job)));
    } else {
        sweep(job);
    }
    true
}

fn run_cycle(mutators: &'static dyn Mutators, forced: bool) {
    helper::start_mark_helpers(mutators.procs());
    barrier::prepare();
    worker::start(mark_concurrently);
    // A forced collection wants a whole cycle that starts after this call (Go's `runtime.GC`):
    // the one under way may have marked before the caller dropped what it wants collected. A
    // cycle another thread starts meanwhile will do: waiting to win the start itself, against
    // allocating threads that start one the moment the last ends, could wait for ever.
    // Relaxed: cycles are numbered by this counter alone, under the world's stop.
    let wanted = CYCLES_RUN.load(Ordering::Relaxed) + 1;
    loop {
        if forced {
            // A cycle's marking and sweep run with the world going: wait for them (or finish
            // the sweep), then run our own unless another thread started one after our call.
            wait_on_cycle(mutators, COLLECT_PAUSE_CAP, || {
                COLLECTING.load(Ordering::Acquire) && CYCLES_RUN.load(Ordering::Relaxed) < wanted
            });
            if CYCLES_RUN.load(Ordering::Relaxed) >= wanted {
                wait_until_swept(mutators, wanted);
                return;
            }
        }
        mutators.prepare_stop();
        let requested = Instant::now();
        let ran = Cell::new(None);
        let open = mutators.stop_the_world(
            &mut || {
                // Another thread may have started a cycle while this one waited for the world to
                // stop (for a forced collection, one that started after the call will do).
                let due = if forced {
                    CYCLES_RUN.load(Ordering::Relaxed) < wanted
                } else {
                    STRESS.load(Ordering::Relaxed) || pacer::should_trigger()
                };
                if due && !COLLECTING.swap(true, Ordering::Acquire) {
                    start_marking(mutators, forced, requested, false);
                    ran.set(Some(CYCLES_RUN.fetch_add(1, Ordering::Relaxed) + 1));
                }
            },
            &mut |pause| {
                if ran.get().is_some() {
                    publish_start_pause(pause);
                }
            },
        );
        if !open {
            // The runtime is ending: its retirement collects instead.
            return;
        }
        if !forced {
            return;
        }
        if let Some(cycle) = ran.get() {
            wait_until_swept(mutators, cycle);
            return;
        }
    }
}

/// Waits until cycle number `cycle` (of `CYCLES_RUN`) has been swept, finishing its
/// after-restart work if nobody has taken it.
fn wait_until_swept(mutators: &dyn Mutators, cycle: u64) {
    // Acquire: pairs with the Release in `sweep`, so the sweep's frees are seen.
    wait_on_cycle(mutators, COLLECT_PAUSE_CAP, || {
        CYCLES_SWEPT.load(Ordering::Acquire) < cycle
    });
}

/// The first pause of the cycle under way, as long as the world stood stopped (published by
/// the thread that stopped it as soon as the world runs again, so after the worker may have
/// taken the cycle): its nanoseconds plus one, 0 until then.
static START_PAUSE: AtomicU64 = AtomicU64::new(0);

fn publish_start_pause(pause: Duration) {
    let nanos = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX - 1);
    // Release: pairs with `published_start_pause`.
    START_PAUSE.store(nanos + 1, Ordering::Release);
}

/// The first pause of the cycle being reported. The thread that restarted the world publishes
/// it before it does anything else, long before the cycle's sweep ends (it waits for nothing
/// meanwhile); if a report gets here first, it waits the few instructions that remain.
fn published_start_pause() -> Duration {
    loop {
        // Acquire: pairs with `publish_start_pause`.
        let published = START_PAUSE.load(Ordering::Acquire);
        if published != 0 {
            return Duration::from_nanos(published - 1);
        }
        std::thread::yield_now();
    }
}

/// A cycle between its two pauses, as its first pause hands it to the mark worker.
struct Started {
    mutators: &'static dyn Mutators,
    forced: bool,
    /// A runtime's retirement ([`retire`]) rather than a cycle.
    retiring: bool,
    requested: Instant,
    /// When the first pause's work ended (the concurrent marking's start).
    restarted: Instant,
    heap_before: usize,
    roots: usize,
    /// The part of `roots` that was static data (the first pause's).
    globals: usize,
}

/// The cycle the mark worker runs: written by the first pause while the worker waits, read by
/// the worker (the hand-over is `worker::load`'s Release and the worker's Acquire).
struct StartedSlot(UnsafeCell<Option<Started>>);

// SAFETY: see `StartedSlot`: never accessed by two threads at once.
unsafe impl Sync for StartedSlot {}

static STARTED: StartedSlot = StartedSlot(UnsafeCell::new(None));

/// The first pause: with every thread stopped, turns the barrier on and loads the mark worker's
/// work list with the roots. New objects are black from here on (`allocate`).
fn start_marking(
    mutators: &'static dyn Mutators,
    forced: bool,
    requested: Instant,
    retiring: bool,
) {
    let heap_before = pacer::heap_alloc();
    START_PAUSE.store(0, Ordering::Relaxed);
    goro_alloc::clear_marks();
    barrier::discard_stale();
    barrier::set_marking(true);
    barrier::set_allocate_black(true);
    // SAFETY: every other thread is stopped and the worker waits for a cycle (the last one
    // ended before `COLLECTING` was cleared); the reference dies with this function.
    let tracer = unsafe { worker::tracer_while_idle() };
    tracer.marker.forget_recent();
    mark::CACHE_RECENT.store(true, Ordering::Relaxed);
    let mut roots = 0;
    // Root memory is scanned now, with its owners stopped: a stack may be gone by the time the
    // worker would get to it. What it reaches is traced once the world runs.
    let mut sink = |root| {
        if let Root::Range(lo, hi) = root {
            tracer.marker.scan(lo, hi, Source::Root);
            roots += hi.saturating_sub(lo);
        } else {
            roots += tracer.push_root(root);
        }
    };
    let mut visitor = RootVisitor {
        sink: &mut sink,
        parked_later: true,
        globals: 0,
    };
    mutators.roots(&mut visitor);
    let globals = visitor.globals;
    mark::CACHE_RECENT.store(false, Ordering::Relaxed);
    // SAFETY: as above; the worker reads the slot only after `worker::load`.
    unsafe {
        *STARTED.0.get() = Some(Started {
            mutators,
            forced,
            retiring,
            requested,
            restarted: Instant::now(),
            heap_before,
            roots,
            globals,
        });
    }
    worker::load();
}

/// The mark worker's part of a cycle: marks beside the mutators until the work list and the
/// barrier's log are empty, then stops the world to terminate. Runs on the worker thread.
fn mark_concurrently() {
    // SAFETY: the worker took the cycle (`worker::load`'s Release, its Acquire): the slot and the
    // tracer are this thread's until `worker::done`.
    let mut started = unsafe { (*STARTED.0.get()).take() }.expect("a loaded cycle has its start");
    // SAFETY: as above.
    let tracer = unsafe { worker::tracer() };
    let (worker_cpu, helper_cpu) = (stats::thread_cpu(), helper::cpu_used());
    // Before anything of the cycle is scanned (tracked.rs, rule 1).
    tracked::arm();
    // Objects that earlier runtimes left immortal are marked now rather than in the first
    // pause, which they would lengthen by their number (nothing is freed before termination,
    // which finds them marked either way).
    mark_immortals(tracer);
    // The goroutines the first pause left out (those parked), each read while it is held
    // parked: a range may change or go once the visitor returns, so it is scanned here.
    started.mutators.parked_roots(&mut RootVisitor {
        sink: &mut |root| {
            started.roots += match root {
                Root::Range(lo, hi) => {
                    tracer.marker.scan(lo, hi, Source::Root);
                    hi.saturating_sub(lo)
                }
                Root::Block(_) => tracer.push_root(root),
            };
        },
        parked_later: false,
        globals: 0,
    });
    let mut shared_work = 0;
    // Passes that took log entries after the work list first ran dry. Mutators that keep
    // rewriting cells keep logging them: past a few such passes, termination takes what is left
    // (the log is bounded, and a drain scans each cell once however often it was logged).
    let mut refills = 0;
    let mut caught_up = false;
    let mut precleaned = tracked::Precleaned::default();
    loop {
        let took = barrier::drain(&mut tracer.marker, false);
        if tracer.marker.work.len() == 0 && !barrier::has_ready() {
            // Large blocks written meanwhile are rescanned now rather than in the pause.
            if !tracked::preclean(&mut tracer.marker, &mut precleaned) {
                break;
            }
        }
        if caught_up && took > 0 {
            refills += 1;
            if refills > MAX_REFILLS {
                break;
            }
        }
        let shared = helper::arm(started.mutators.procs(), true);
        shared_work += helper::drain(tracer, shared);
        // The work list is empty now: what comes next is the log's.
        caught_up = true;
    }
    let marked_until = Instant::now();
    let marking_cpu = stats::thread_cpu().saturating_sub(worker_cpu)
        + helper::cpu_used().saturating_sub(helper_cpu);
    started.mutators.prepare_stop();
    if started.mutators.procs() >= 2 {
        helper::wake_early();
    }
    let mut marked = None;
    let mut pause = Duration::ZERO;
    started.mutators.stop_the_world(
        &mut || {
            marked = Some(terminate(&started, tracer, marked_until, shared_work));
            // The tracer is free for the next cycle, which cannot start before this one's
            // sweep.
            worker::done();
        },
        &mut |stood| pause = stood,
    );
    let Some(mut marked) = marked else {
        // The runtime is ending (its retirement marks on its own): abandon the cycle.
        barrier::set_marking(false);
        barrier::set_allocate_black(false);
        tracked::disarm();
        while tracer.marker.work.pop().is_some() {}
        worker::done();
        // Release: a forced collection waiting for this cycle (in a later runtime) goes on.
        CYCLES_SWEPT.fetch_add(1, Ordering::Release);
        // Release: the retirement waiting for the collector sees it free.
        COLLECTING.store(false, Ordering::Release);
        return;
    };
    marked.end_pause = pause;
    if started.retiring {
        finish_retirement();
        return;
    }
    // With the world going: unmarked objects are unreachable (nothing can reach them again but
    // a weak pointer, which `settle` clears first), and objects allocated since termination are
    // black until the condemning is done.
    let condemning = stats::thread_cpu();
    special::settle(Some(started.mutators));
    marked.census = condemn(false);
    marked.marking_cpu = marking_cpu;
    marked.condemning_cpu = stats::thread_cpu().saturating_sub(condemning);
    barrier::set_allocate_black(false);
    debug_assert_eq!(PENDING.state.load(Ordering::Relaxed), PENDING_EMPTY);
    // SAFETY: the slot is EMPTY (the last cycle's job was taken before its sweep cleared
    // `COLLECTING`, which this cycle holds): nobody else touches it.
    unsafe {
        *PENDING.job.get() = Some(Pending {
            forced: started.forced,
            requested: started.requested,
            marked,
            procs: started.mutators.procs(),
        });
    }
    // Release: publishes the job to `finish_pending`'s Acquire.
    PENDING.state.store(PENDING_READY, Ordering::Release);
    finish_pending();
}

/// Passes of concurrent marking that may find nothing but new barrier entries before the cycle
/// goes to termination anyway.
const MAX_REFILLS: usize = 8;

/// The second pause: with every thread stopped, scans again what has no barrier (every root,
/// every marked malloc block, the objects open `GcCell` guards point into), takes the barrier's
/// log, marks what all that reaches, and turns the barrier off. Condemning follows once the world
/// runs again.
fn terminate(
    started: &Started,
    tracer: &mut Tracer,
    marked_until: Instant,
    shared_work: usize,
) -> Marked {
    mark::TERMINATING.store(true, Ordering::Relaxed);
    mark::CACHE_RECENT.store(true, Ordering::Relaxed);
    tracer.marker.forget_recent();
    let shared = helper::arm(started.mutators.procs(), false);
    // This runs on the mark worker, whose own stack is no root: the thread runs only the
    // collector and holds no mutator's `Gc`, and its frames keep words of the objects it marked
    // (this cycle or an earlier one), which would keep them alive for another cycle.
    let here = 0usize;
    let here = core::hint::black_box(&here) as *const usize as usize;
    started.mutators.roots(&mut RootVisitor {
        sink: &mut |root| {
            if !root.holds(here) {
                tracer.push_root(root);
            }
        },
        parked_later: false,
        globals: 0,
    });
    tracked::rescan_marked_blocks(&mut tracer.marker);
    barrier::drain(&mut tracer.marker, true);
    let shared_work = shared_work + helper::drain(tracer, shared);
    barrier::set_marking(false);
    mark::TERMINATING.store(false, Ordering::Relaxed);
    mark::CACHE_RECENT.store(false, Ordering::Relaxed);
    if CHECKMARK.load(Ordering::Relaxed) {
        checkmark::verify(started.mutators, mark_immortals);
    }
    // Marks are final: weak pointers now answer by them until `settle` clears the dead ones.
    special::open_window();
    Marked {
        concurrent: marked_until.duration_since(started.restarted),
        // Set once the world runs again.
        end_pause: Duration::ZERO,
        heap_before: started.heap_before,
        roots: started.roots,
        globals: started.globals,
        shared_work,
        census: Census::default(),
        marking_cpu: Duration::ZERO,
        condemning_cpu: Duration::ZERO,
    }
}

/// What is left to sweep of a cycle (or a retirement) once the world runs again.
#[allow(
    clippy::large_enum_variant,
    reason = "one value per cycle, made and moved with the world going"
)]
pub(crate) enum Sweep {
    /// A cycle's: drop and free what has drop glue, then account for the cycle.
    Cycle {
        forced: bool,
        requested: Instant,
        marked: Marked,
        procs: usize,
        /// What the collecting thread freed already (the objects without drop glue).
        swept: Swept,
    },
    /// A retirement's: sweep only.
    Retirement,
}

impl Sweep {
    /// Whether objects with drop glue wait for the sweeper thread.
    fn needs_sweeper(&self) -> bool {
        match self {
            Sweep::Cycle { marked, .. } => marked.census.with_glue > 0,
            Sweep::Retirement => true,
        }
    }
}

/// Step 5: drops and frees the condemned objects that are left (on the sweeper thread, where
/// drop glue runs), accounts for the cycle, and lets the next one start.
pub(crate) fn sweep(job: Sweep) {
    let began = Instant::now();
    let cpu = stats::thread_cpu();
    let ends_a_cycle = matches!(job, Sweep::Cycle { .. });
    let swept = if job.needs_sweeper() {
        sweep_condemned(Glue::Run)
    } else {
        Swept::default()
    };
    if let Sweep::Cycle {
        forced,
        requested,
        marked,
        procs,
        swept: inline,
    } = job
    {
        pacer::cycle_done(
            marked.census.live_bytes,
            marked.roots,
            goro_alloc::gc_spans_in_use_bytes(),
        );
        stats::record(&CycleReport {
            forced,
            heap_before: marked.heap_before,
            start_pause: published_start_pause(),
            mark: marked.concurrent,
            end_pause: marked.end_pause,
            sweep: inline.took + began.elapsed(),
            live_bytes: marked.census.live_bytes,
            live_objects: marked.census.live_objects,
            freed_bytes: marked.census.freed.bytes + inline.bytes + swept.bytes,
            freed_objects: marked.census.freed.objects + inline.objects + swept.objects,
            roots: marked.roots,
            globals: marked.globals,
            shared_work: marked.shared_work,
            procs,
            began: requested,
            marking_cpu: marked.marking_cpu,
            // The inline part ran without blocking: its wall time is its CPU time.
            sweeping_cpu: marked.condemning_cpu
                + inline.took
                + stats::thread_cpu().saturating_sub(cpu),
        });
    }
    // The spans the cycle emptied go back to the page heap (the scavenger returns their pages
    // to the OS later), as Go's sweeper frees the spans it finds empty.
    goro_alloc::release_empty_spans();
    pacer::malloc_settled(goro_alloc::malloc_spans_in_use_bytes());
    if ends_a_cycle {
        // Release: a forced collection waiting for this cycle sees the sweep's frees.
        CYCLES_SWEPT.fetch_add(1, Ordering::Release);
    } else {
        // Release: `wait_for_retirement`'s Acquire sees the retirement's frees and drops.
        RETIRING.fetch_sub(1, Ordering::Release);
    }
    // Release: the next cycle's Acquire sees the sweep's frees.
    COLLECTING.store(false, Ordering::Release);
}

/// Ends the life of a runtime's heap: marks from the roots of `world` (what outlives the
/// runtime: the value `run` returns, the stacks of goroutines it abandoned, every thread of the
/// process), drops every object not reached, and makes every object reached *immortal*: no later
/// cycle frees it.
///
/// Only the first pause runs here: the retirement is a cycle like the others, marked by the
/// mark worker while the caller goes on (its threads are mutators like any thread outside a
/// runtime: stopped and scanned in the pauses, their `GcCell` stores caught by the barrier),
/// ended by a second pause, and swept on the sweeper thread. No object can be allocated until
/// it is over ([`wait_for_retirement`]; the next runtime waits for it before it starts), so what
/// is unreachable now stays so.
///
/// # Safety
/// May be called only by the runtime that is ending, after it stopped every goroutine for good
/// and uninstalled its [`Mutators`], with a `world` that stops every thread of the process and
/// whose roots are every place a thread of the process can keep a `Gc` (as [`Mutators::roots`]
/// must), the abandoned goroutines' stacks included, until the retirement is over: whatever it
/// misses is freed while still reachable.
pub unsafe fn retire(world: &'static dyn Mutators) {
    RETIRING.fetch_add(1, Ordering::Relaxed);
    RETIREMENT_DECIDING.store(true, Ordering::Relaxed);
    while COLLECTING.swap(true, Ordering::Acquire) {
        // The last cycle may wait for its after-restart work, which its collecting goroutine
        // (stopped for good now) may never do.
        if finish_pending() {
            continue;
        }
        // Or it may be sweeping: its drop glue may wait for a lock the caller holds, so the
        // retirement does not wait for it here but starts on the sweeper once it is over.
        // (Nothing can be allocated meanwhile, so what is unreachable now stays so.)
        RETIREMENT_QUEUED.store(true, Ordering::Relaxed);
        if !deciding()
            && sweeper::hand_over_after_current(Box::new(move || {
                while COLLECTING.swap(true, Ordering::Acquire) {
                    std::thread::sleep(Duration::from_micros(50));
                }
                RETIREMENT_QUEUED.store(false, Ordering::Relaxed);
                start_retirement(world);
            }))
        {
            return;
        }
        RETIREMENT_QUEUED.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(50));
    }
    start_retirement(world);
}

/// The first pause of a retirement, `COLLECTING` held.
fn start_retirement(world: &'static dyn Mutators) {
    helper::start_mark_helpers(world.procs());
    barrier::prepare();
    worker::start(mark_concurrently);
    world.prepare_stop();
    let requested = Instant::now();
    let stopped = world.stop_the_world(
        &mut || start_marking(world, true, requested, true),
        &mut |_| {},
    );
    assert!(
        stopped,
        "goro-gc: the world of a retirement refused to stop"
    );
}

/// Retirements ([`retire`]) under way, each from its start until its sweep is done: two at most
/// (a runtime starts once the last retirement has decided, so the next runtime's may start
/// while the last one's sweep still drops).
static RETIRING: AtomicUsize = AtomicUsize::new(0);

/// Whether a retirement has yet to decide what lives: from its start until every object it
/// reached is immortal and the dead are condemned (only their drop glue is left to run).
static RETIREMENT_DECIDING: AtomicBool = AtomicBool::new(false);

/// Whether a retirement waits for the sweep of the last cycle to end before it starts (see
/// [`retire`]).
static RETIREMENT_QUEUED: AtomicBool = AtomicBool::new(false);

/// Objects dropped and spans visited by sweeps so far: how a wait at the process's exit tells a
/// sweep that goes on from one stuck in a drop.
static SWEEP_PROGRESS: AtomicU64 = AtomicU64::new(0);

/// How long the process's exit waits for the last retirement's drop glue once it makes no
/// progress (a drop waiting for a lock the exiting thread holds would wait for ever).
const EXIT_PATIENCE: Duration = Duration::from_secs(1);

/// Waits until the heap of the runtime that ended last is retired: every object it left
/// unreachable dropped, every object still reachable made immortal. `goro::run` returns while
/// the retirement goes on beside the caller; the next runtime waits for its decision (what
/// lives) before it starts, and the process's exit for its drop glue (an `atexit` handler the
/// facade registers, see [`wait_for_retirement_at_exit`]). Returns at once when none is under
/// way, or when called on one of the collector's own threads (a drop that waits for its own
/// sweep would wait for ever).
///
/// A caller that holds a lock the drop glue of what the runtime left behind takes waits for
/// ever, as with any thread that waits for a drop needing its lock.
pub fn wait_for_retirement() {
    wait_while(&retiring, None);
}

fn retiring() -> bool {
    // Acquire: pairs with the sweep's Release, so the retirement's frees and drops are seen.
    RETIRING.load(Ordering::Acquire) > 0
}

fn retirement_deciding() -> bool {
    // Acquire: pairs with `finish_retirement`'s Release.
    RETIREMENT_DECIDING.load(Ordering::Acquire)
}

/// Waits until the last retirement has decided what lives (see [`wait_for_retirement`]). A
/// runtime starts after it; the retirement's sweep may still be dropping, as a cycle's may. The
/// retirement runs no user code before its decision, but it may have had to wait for the sweep
/// of the runtime's last cycle to end (see [`retire`]): a caller that holds a lock that sweep's
/// drop glue takes waits for ever, as it would for any drop needing its lock.
pub fn wait_until_retirement_decided() {
    wait_while(&retirement_deciding, None);
}

/// The process's exit: waits for the last retirement, unboundedly while it marks (no user code
/// runs there), and while its drop glue (or the sweep it waits behind) makes progress. When a
/// drop has held it up for [`EXIT_PATIENCE`] (it waits for a lock the exiting thread or a stuck
/// one holds, say), says so on stderr and lets the process exit without the rest: Rust runs no
/// destructor of another thread's at exit either.
pub fn wait_for_retirement_at_exit() {
    if !wait_while(&retiring, Some(EXIT_PATIENCE)) {
        let message = b"goro: exiting before the drop glue of what the last runtime left \
behind has run: a drop made no progress for a second (does it wait for a lock the exiting thread \
holds?)\n";
        // SAFETY: writes a static buffer to stderr; no lock is taken (a stuck thread may hold
        // std's).
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
    }
}

/// Waits while `busy`, finishing the cycle's after-restart work if nobody has; with
/// `patience`, gives up once what it waits for is drop glue (the retirement's sweep, or the
/// sweep a queued retirement waits behind) and the sweeps have made no progress for that long.
/// Returns whether it is no longer busy. Returns at once on the collector's own threads.
fn wait_while(busy: &dyn Fn() -> bool, patience: Option<Duration>) -> bool {
    if is_collector_thread() {
        return !busy();
    }
    let mut progress = (SWEEP_PROGRESS.load(Ordering::Relaxed), Instant::now());
    while busy() {
        if finish_pending() {
            continue;
        }
        std::thread::sleep(Duration::from_micros(100));
        if let Some(patience) = patience {
            let swept = SWEEP_PROGRESS.load(Ordering::Relaxed);
            let on_drops = !RETIREMENT_DECIDING.load(Ordering::Relaxed)
                || RETIREMENT_QUEUED.load(Ordering::Relaxed);
            if swept != progress.0 || !on_drops {
                progress = (swept, Instant::now());
            } else if progress.1.elapsed() >= patience {
                return false;
            }
        }
    }
    true
}

/// Whether the calling thread is one of the collector's own (its sweeper, where drop glue runs;
/// its mark worker and helpers): one that a wait for the collector would wait for itself.
pub fn is_collector_thread() -> bool {
    // SAFETY: gettid has no preconditions.
    let here = unsafe { libc::gettid() };
    collector_threads().contains(here)
}

/// The kernel thread ids of the collector's own threads that run: its sweeper, mark worker and
/// mark helpers (the scheduler's deadlock check counts them as no mutator's).
pub fn collector_threads() -> CollectorThreads {
    CollectorThreads {
        sweeper: sweeper::sweeper_thread_id().unwrap_or(0),
        worker: worker::worker_thread_id().unwrap_or(0),
        helpers: helper::helper_threads(),
    }
}

/// What [`collector_threads`] found. Copy, allocation-free.
#[derive(Clone, Copy)]
pub struct CollectorThreads {
    sweeper: i32,
    worker: i32,
    helpers: helper::HelperThreads,
}

impl CollectorThreads {
    /// The mark worker's, if it runs.
    pub fn mark_worker(&self) -> Option<i32> {
        (self.worker != 0).then_some(self.worker)
    }

    /// Whether `tid` is one of them.
    pub fn contains(&self, tid: i32) -> bool {
        self.iter().any(|ours| ours == tid)
    }

    /// Their kernel thread ids.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        [self.sweeper, self.worker]
            .into_iter()
            .filter(|&tid| tid != 0)
            .chain(self.helpers.iter())
    }
}

/// The end of a retirement, on the mark worker once its second pause is over: clears the weak
/// pointers to the dead (their cleanups are leaked with the runtime that would have run them),
/// condemns the dead and makes the living immortal, then hands the dropping to the sweeper.
fn finish_retirement() {
    special::settle(None);
    condemn(true);
    // A thread that was inside `Gc::new` as the runtime ended has its object by now (condemn
    // left the black ones alone): from here on, objects are born white again.
    barrier::set_allocate_black(false);
    list_immortals();
    pacer::cycle_done(0, 0, goro_alloc::gc_spans_in_use_bytes());
    // Release: the next runtime, which starts once the decision is made, sees it.
    RETIREMENT_DECIDING.store(false, Ordering::Release);
    // The objects left behind are dropped on the sweeper thread; a drop that waits for a lock
    // a thread of the caller's holds waits there, not in the caller's way.
    sweeper::hand_over(Box::new(|| sweep(Sweep::Retirement)));
}

/// Objects made immortal by [`retire`]. They are roots of every later cycle: whoever holds them
/// outside any runtime (the caller of `run`, say) may reach, through their `GcCell`s, objects a
/// later runtime stored there. (The facade's scan of static data would find this list's buffer
/// too; marking it here keeps the rule independent of that scan.) Locked only by the collector.
static IMMORTALS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

pub(crate) fn mark_immortals(tracer: &mut Tracer) {
    let immortals = IMMORTALS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    for &object in immortals.iter() {
        tracer.marker.mark_object(object);
    }
}

/// Rebuilds [`IMMORTALS`] from the headers (after a retirement, with the world going: it
/// allocates).
fn list_immortals() {
    let mut list = Vec::new();
    goro_alloc::for_each_gc_span(|span| {
        for i in 0..span.len() {
            let slot = span.slot(i);
            if header(span, slot) & IMMORTAL != 0 {
                list.push(slot as usize);
            }
        }
    });
    *IMMORTALS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner()) = list;
}

/// The header word of `slot`, read atomically (threads may be allocating in the span).
#[inline]
fn header_cell(span: GcSpan, slot: *mut u8) -> &'static AtomicUsize {
    // SAFETY: `slot` is a slot of the Gc span `span`; its header word lies inside it, is
    // aligned, and span memory stays mapped forever. Every access to a header is atomic.
    unsafe { AtomicUsize::from_ptr(header_of(slot, span.elem_size())) }
}

#[inline]
fn header(span: GcSpan, slot: *mut u8) -> usize {
    // Acquire: pairs with the Release store in `Gc::new`.
    header_cell(span, slot).load(Ordering::Acquire)
}

/// Live, freed and condemned objects, as counted by [`condemn`].
#[derive(Default)]
struct Census {
    live_bytes: usize,
    live_objects: usize,
    /// Dead objects without drop glue, freed at once.
    freed: Swept,
    /// Condemned objects whose type has drop glue (dropped on the sweeper thread).
    with_glue: usize,
}

/// Step 3, one pass over the heap's Gc slots: frees every allocated, unmarked, mortal object
/// without drop glue in a small span and flags the others [`CONDEMNED`] for the sweeps that
/// follow; with `immortalize`, flags every marked object [`IMMORTAL`]. A cycle runs it with the
/// world going and black allocation on (a slot allocated meanwhile is marked: its mark is read
/// again once its header is seen), and so does a retirement (a thread may be inside `Gc::new`
/// as its runtime ends). It allocates nothing. The freed slots can be allocated at once (a span
/// whose owner had let go of it goes back on its central list, under that list's lock), and
/// their bytes leave the pacer's heap span by span: an allocation that waits at the goal for
/// the cycle goes on as soon as enough is freed, into the slots freed, not into new spans.
/// Only unmarked slots' headers are read (a marked slot holds an object), so a group of 64
/// marked slots costs one load.
fn condemn(immortalize: bool) -> Census {
    let began = Instant::now();
    let clobber = CLOBBER_FREE.load(Ordering::Relaxed);
    let mut census = Census::default();
    goro_alloc::for_each_gc_span(|span| {
        let size = span.elem_size();
        let small = !span.is_large();
        // A span marked whole as it was carved counts its marked slots by their headers: the
        // free ones among them are no objects (the only marked slots whose headers are read).
        let marked_whole = span.marked_whole();
        // One chain per span, in address order: the allocator hands the slots out in the order
        // they are chained, and ascending addresses keep its next allocations in cache.
        let mut dead = [core::ptr::null_mut(); goro_alloc::MAX_SPAN_SLOTS];
        let mut dying = 0;
        for w in 0..span.len().div_ceil(64) {
            let slots = (span.len() - 64 * w).min(64);
            let in_span = u64::MAX >> (64 - slots);
            let marks = span.mark_word(w) & in_span;
            let marked = if marked_whole {
                built_among(span, w, marks)
            } else {
                marks.count_ones() as usize
            };
            census.live_objects += marked;
            census.live_bytes += marked * size;
            let mut visit = if immortalize {
                in_span
            } else {
                in_span & !marks
            };
            prefetch_dead(span, w, visit, size);
            while visit != 0 {
                let bit = visit.trailing_zeros() as usize;
                visit &= visit - 1;
                let slot = span.slot(64 * w + bit);
                let cell = header_cell(span, slot);
                // Acquire: pairs with `Gc::new`'s Release stores, so a slot allocated since the
                // mark word was read shows its mark (set before its header) below.
                let word = cell.load(Ordering::Acquire);
                if word == 0 {
                    continue;
                }
                let marked_before = marks & (1 << bit) != 0;
                if !marked_before && span.is_marked(64 * w + bit) {
                    // Allocated (black) while this pass ran with the world going: by a mutator
                    // during a cycle, or during a retirement by a thread that was inside
                    // `Gc::new` as its runtime ended. Its header may still be in the making.
                    census.live_objects += 1;
                    census.live_bytes += size;
                    continue;
                }
                debug_assert_eq!(word & CONDEMNED, 0, "an object condemned twice");
                if marked_before {
                    // Counted above; only `immortalize` visits marked slots. An atomic OR: the
                    // header of an object a straggler was building may be written meanwhile.
                    cell.fetch_or(IMMORTAL, Ordering::Relaxed);
                } else if word & IMMORTAL != 0 {
                    census.live_objects += 1;
                    census.live_bytes += size;
                // SAFETY: a non-zero header was written by `Gc::new` (flags aside).
                } else if unsafe { vtable_of(word) }.drop.is_some() {
                    cell.store(word | CONDEMNED, Ordering::Relaxed);
                    census.with_glue += 1;
                } else if small {
                    if clobber {
                        poison(slot, size);
                    }
                    // Release: the zero is written before the slot is on a free list again.
                    cell.store(0, Ordering::Release);
                    dead[dying] = slot;
                    dying += 1;
                } else {
                    // A large span's pages go back under the page heap's lock: freed by the
                    // collecting thread's sweep, once the world runs.
                    cell.store(word | CONDEMNED, Ordering::Relaxed);
                }
            }
        }
        if dying > 0 {
            // SAFETY: distinct dead slots of this small span, headers zeroed, unreachable
            // (nothing the marker could see points at them, nor can any mutator now).
            unsafe { span.free_slots(&dead[..dying]) };
            census.freed.objects += dying;
            census.freed.bytes += dying * size;
            pacer::add_freed(dying * size);
            // This frame's bytes stay on the collecting thread's stack, which the next cycle
            // scans: left there, the slot addresses would keep the objects allocated in those
            // slots meanwhile alive (black_box keeps the stores from being elided).
            dead[..dying].fill(core::ptr::null_mut());
            std::hint::black_box(&dead);
        }
    });
    census.freed.took = began.elapsed();
    census
}

/// How many of the slots of mark word `w` whose bits `marks` holds have a header: built
/// objects, or objects being built (a slot handed out whose header is not written yet is not
/// counted, which only the statistics see).
#[cold]
fn built_among(span: GcSpan, w: usize, mut marks: u64) -> usize {
    let mut built = 0;
    while marks != 0 {
        let slot = span.slot(64 * w + marks.trailing_zeros() as usize);
        marks &= marks - 1;
        built += usize::from(header(span, slot) != 0);
    }
    built
}

/// Asks the CPU for the cache lines `condemn` is about to touch in the slots of mark word `w`
/// whose bits `visit` holds: each header, read and then written, and the word before it, where
/// the free list links a dead slot (the same line but where the header begins its line). A
/// dead object is otherwise a cache miss after the one before; asked for together they overlap
/// (the lines of one mark word are all in flight at once).
#[inline]
fn prefetch_dead(span: GcSpan, w: usize, mut visit: u64, size: usize) {
    #[cfg(target_arch = "x86_64")]
    while visit != 0 {
        use core::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
        let slot = span.slot(64 * w + visit.trailing_zeros() as usize);
        visit &= visit - 1;
        // SAFETY: `slot` is a slot of the Gc span `span`, `size` its element size; a prefetch
        // is a hint: it never faults and changes no memory, whatever the address.
        unsafe {
            let header = header_of(slot, size).cast::<i8>();
            _mm_prefetch::<_MM_HINT_ET0>(header);
            if (header as usize).is_multiple_of(64) {
                _mm_prefetch::<_MM_HINT_ET0>(header.wrapping_sub(8));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (span, w, visit, size);
}

/// What [`sweep_condemned`] freed.
#[derive(Default)]
pub(crate) struct Swept {
    bytes: usize,
    objects: usize,
    took: Duration,
}

/// What [`sweep_condemned`] does with condemned objects that have drop glue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Glue {
    /// Leave them condemned, for the sweeper thread (the collecting thread's pass, which also
    /// relists the spans `condemn` freed slots of while their owners had let go of them).
    Defer,
    /// Drop them (the sweeper thread's pass).
    Run,
}

/// Frees condemned objects, span by span, with the world going: with [`Glue::Defer`] those
/// without drop glue (only large spans still hold such, see [`condemn`]), with [`Glue::Run`]
/// every one, after dropping it. Marked slots are skipped by their mark bits (valid until the
/// next cycle, which cannot start before the sweep ends); only an unmarked slot's header is
/// read.
fn sweep_condemned(glue: Glue) -> Swept {
    let began = Instant::now();
    let mut swept = Swept::default();
    let mut dead: Vec<*mut u8> = Vec::new();
    let clobber = CLOBBER_FREE.load(Ordering::Relaxed);
    goro_alloc::for_each_gc_span(|span| {
        if glue == Glue::Defer && !span.is_large() {
            // `condemn` freed the small spans' dead objects without drop glue already.
            return;
        }
        SWEEP_PROGRESS.fetch_add(1, Ordering::Relaxed);
        let size = span.elem_size();
        dead.clear();
        for w in 0..span.len().div_ceil(64) {
            let marks = span.mark_word(w);
            if marks == u64::MAX {
                continue;
            }
            for i in 64 * w..(64 * w + 64).min(span.len()) {
                if marks & (1 << (i % 64)) != 0 {
                    continue;
                }
                let slot = span.slot(i);
                let word = header(span, slot);
                if word & CONDEMNED == 0 {
                    continue;
                }
                // SAFETY: a condemned header was written by `Gc::new` (flags aside).
                let drop = unsafe { vtable_of(word) }.drop;
                match (drop, glue) {
                    (None, _) => dead.push(slot),
                    (Some(_), Glue::Defer) => {}
                    (Some(drop), Glue::Run) => {
                        // Drop glue may allocate and free; the condemned slots stay allocated
                        // meanwhile, so the span cannot be released or re-carved under us.
                        drop_or_abort(drop, slot);
                        SWEEP_PROGRESS.fetch_add(1, Ordering::Relaxed);
                        dead.push(slot);
                    }
                }
            }
        }
        if dead.is_empty() {
            return;
        }
        for &slot in &dead {
            if clobber {
                poison(slot, size);
            }
            // Release: the zero is written before the slot is on a free list again.
            header_cell(span, slot).store(0, Ordering::Release);
        }
        // SAFETY: distinct condemned slots of this span, dropped, headers zeroed, unreachable.
        unsafe { span.free_slots(&dead) };
        swept.objects += dead.len();
        swept.bytes += dead.len() * size;
        pacer::add_freed(dead.len() * size);
    });
    // Freed heap blocks keep their bytes, and a conservative scan reads a free block that a
    // stale word still points at: left in the list's buffer, these slot addresses would keep
    // the objects later allocated there alive.
    dead.clear();
    dead.spare_capacity_mut()
        .fill(core::mem::MaybeUninit::new(core::ptr::null_mut()));
    swept.took = began.elapsed();
    swept
}

/// Runs an object's drop glue; a panic there aborts with the reason (Go's kind of fatal error),
/// since nothing could catch it meaningfully: the object is unreachable.
fn drop_or_abort(drop: unsafe fn(*mut u8), slot: *mut u8) {
    let outcome = std::panic::catch_unwind(|| {
        // SAFETY: as in `sweep_condemned`: a condemned, live, unreachable object, dropped once.
        unsafe { drop(slot) }
    });
    if outcome.is_err() {
        eprintln!(
            "fatal error: the drop glue of a collected object panicked (objects are dropped by \
             the collector; a Trace type's drop must not panic)"
        );
        std::process::abort();
    }
}

/// Fills a freed object (all but the header word) with [`POISON`].
fn poison(slot: *mut u8, size: usize) {
    for at in (0..size - 8).step_by(8) {
        // SAFETY: inside the dropped object's slot, which is still allocated and ours.
        unsafe { slot.add(at).cast::<usize>().write(POISON) };
    }
}

impl Tracer {
    /// Schedules a root for marking; returns the bytes it adds to the cycle's root count (a
    /// block counts once, when this root is the first to reach it).
    pub(crate) fn push_root(&mut self, root: Root) -> usize {
        match root {
            Root::Range(lo, hi) => {
                if lo < hi {
                    self.marker.work.push(Work::Root(lo, hi));
                }
                hi.saturating_sub(lo)
            }
            Root::Block(ptr) => match goro_alloc::find_block(ptr) {
                Some(block) if !block.is_marked() => {
                    let size = block.size;
                    // A marked malloc block is scanned again at termination anyway.
                    let _ = self.marker.mark_block(block);
                    size
                }
                _ => 0,
            },
        }
    }
}
