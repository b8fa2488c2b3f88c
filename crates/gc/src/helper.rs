//! Draining the mark work list on every CPU the cycle may use: the mark helper threads, and
//! the packets through which markers share work.
//!
//! The thread that runs a cycle (the mark worker, or a retirement's or a pause's collector)
//! marks from its own work list; with two Ps or more, up to one helper thread per further P
//! (and per further CPU the process may run on) marks beside it, as Go's mark workers do.
//! Each marker keeps a work list of its own, a stack: it pushes what it finds and pops the
//! newest, so its list stays as short as a depth-first walk. A marker with work to spare that
//! sees a hungry one moves its oldest items (the ones nearest the roots, which lead to the most
//! work) into a packet on a shared list; a hungry marker takes a whole packet onto its own
//! list. Marks are atomic (goro-alloc's `Block::mark` is the claim), so a block reached by two
//! markers is scanned once, by whichever claims it.
//!
//! **A session** is one drain with helpers: `arm` opens it, and the cycle's own thread (the
//! driver) closes it once no work is left anywhere. "Anywhere" is one counter, [`PENDING`]:
//! the markers that hold work, plus the packets on the shared list. A marker holds one unit
//! while it has work; a shared packet adds one before it is published; a marker that runs dry
//! gives its unit back, after taking a packet (whose unit it keeps) if there is one; an idle
//! marker that takes a packet takes over its unit. So the count reaches 0 only when every
//! marker is idle and the list is empty, and nothing can raise it again except the driver,
//! which is the only one that reads it to decide. The driver's Acquire load of 0 follows every
//! helper's Release decrement, so their marks happen before whatever the cycle does next.
//!
//! The helpers are goro's own threads, started with the world running by a runtime with two
//! Ps or more (or the first cycle that has them). They hold no `Gc` (they run nothing but the
//! marker), and take no lock but the packet list's spin lock and allocate nothing while they
//! mark, so the stop leaves them running ([`helper_threads`]). The driver never waits for a
//! helper: one slow to wake (or stopped because it had not published its id before the stop
//! began) joins late or not at all, and a helper that wakes after its session ended finds the
//! shared list closed to it (each packet list is stamped with its session).

use crate::mark::{Source, Work};
use crate::object::vtable_of;
use crate::trace::Tracer;
use core::mem::MaybeUninit;
use goro_alloc::SpinLock;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most helper threads a process starts (eight markers with the driver).
pub const MAX_HELPERS: usize = 7;

/// Work items in a packet.
const PACKET_ITEMS: usize = 256;

/// Work items a marker must hold before it shares: fewer cost more to hand over than to scan.
const MIN_SHARED: usize = 16;

/// Bit 0 of [`SESSION`]: a session is open.
const OPEN: u32 = 1;

/// The session under way (its number times two, plus [`OPEN`] while it is open). Helpers sleep
/// on it as a futex.
static SESSION: AtomicU32 = AtomicU32::new(0);

/// Helpers the open session uses (the first ones by index).
static WANTED: AtomicUsize = AtomicUsize::new(0);

/// Whether the open session marks beside running goroutines, where a helper takes work only
/// while a CPU is free for it ([`admitted`]).
static BESIDE_MUTATORS: AtomicBool = AtomicBool::new(false);

/// Markers holding work plus packets on the shared list (see the module docs).
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Markers waiting for work: a hint for those that hold some to share. Each marker adds itself
/// when it goes idle (a helper as it joins a session) and takes itself off when it takes work
/// or leaves the session, so the count is never reset (a late helper would then take off what
/// it added before the reset). A helper still in a closed session counts for the next one
/// until it notices, which costs a packet shared for nobody, taken back by its owner.
static HUNGRY: AtomicUsize = AtomicUsize::new(0);

/// Packets on the shared list (changed with the lists' lock held, so it never runs below 0).
static FULL: AtomicUsize = AtomicUsize::new(0);

/// Work items shared through packets, over all sessions.
static SHARED_ITEMS: AtomicUsize = AtomicUsize::new(0);

/// A batch of work items on its way from one marker to another, in collector-mapped memory.
struct Packet {
    next: *mut Packet,
    len: usize,
    items: [MaybeUninit<Work>; PACKET_ITEMS],
}

/// Packets mapped at a time.
const PACKETS_PER_MAPPING: usize = 16;

/// The shared packet lists, behind [`LISTS`]'s lock.
struct Lists {
    /// The session whose markers may take packets.
    session: u32,
    full: *mut Packet,
    free: *mut Packet,
}

// SAFETY: the lists hold only pointers into collector-mapped packets, which are never unmapped;
// a packet belongs to whoever holds the lock while it is linked, and to the marker that took
// it off a list otherwise.
unsafe impl Send for Lists {}

/// The packet lists, behind goro-alloc's spin lock, not a futex: markers run while every other
/// thread is stopped, possibly with a mutex held, and a marker holds this one only to link or
/// unlink a packet (or to map more). The lock's Release and Acquire order a packet's items,
/// written before it is linked, before the reads of the marker that takes it.
static LISTS: SpinLock<Lists> = SpinLock::new(Lists {
    session: 0,
    full: core::ptr::null_mut(),
    free: core::ptr::null_mut(),
});

/// A packet off the free list, or from a fresh mapping. Its contents are garbage.
fn free_packet() -> *mut Packet {
    let mut lists = LISTS.lock();
    if lists.free.is_null() {
        let packets =
            crate::workbuf::map(PACKETS_PER_MAPPING * size_of::<Packet>()).cast::<Packet>();
        for i in 0..PACKETS_PER_MAPPING {
            // SAFETY: `i` is inside the fresh mapping, which nothing else uses; packets are
            // never unmapped.
            unsafe {
                let packet = packets.add(i);
                (*packet).next = lists.free;
                lists.free = packet;
            }
        }
    }
    let packet = lists.free;
    // SAFETY: a packet of the free list, which we now take off it.
    lists.free = unsafe { (*packet).next };
    packet
}

/// Moves some of the oldest items of `tracer`'s list onto the shared list, for a hungry marker.
/// Called by a marker that holds work (a unit of [`PENDING`]), so the session stays open.
#[cold]
fn share(tracer: &mut Tracer) {
    let count = (tracer.marker.work.len() / 2).min(PACKET_ITEMS);
    let packet = free_packet();
    // SAFETY: the packet is ours (off the free list) until it is linked below; nothing else
    // refers to it.
    let owned = unsafe { &mut *packet };
    tracer.marker.work.take_oldest(&mut owned.items[..count]);
    owned.len = count;
    // Before the packet can be taken (and its taker give a unit back).
    PENDING.fetch_add(1, Ordering::Relaxed);
    let mut lists = LISTS.lock();
    owned.next = lists.full;
    lists.full = packet;
    FULL.fetch_add(1, Ordering::Relaxed);
    drop(lists);
    SHARED_ITEMS.fetch_add(count, Ordering::Relaxed);
}

/// Takes a packet of `session` onto `tracer`'s list, if one is shared; returns whether it did.
/// The packet's unit of [`PENDING`] is the caller's from here on.
fn take_packet(tracer: &mut Tracer, session: u32) -> bool {
    let packet = {
        let mut lists = LISTS.lock();
        let packet = lists.full;
        if lists.session != session || packet.is_null() {
            return false;
        }
        // SAFETY: a packet of the full list, which we now take off it.
        lists.full = unsafe { (*packet).next };
        FULL.fetch_sub(1, Ordering::Relaxed);
        packet
    };
    // SAFETY: the packet is ours (off the list) until it is linked again below.
    let owned = unsafe { &mut *packet };
    // SAFETY: `share` wrote its first `len` items before it linked it (the lock's Release and
    // Acquire order them before this read).
    let items =
        unsafe { core::slice::from_raw_parts(owned.items.as_ptr().cast::<Work>(), owned.len) };
    tracer.marker.work.push_all(items);
    let mut lists = LISTS.lock();
    owned.next = lists.free;
    lists.free = packet;
    true
}

/// Each helper's kernel thread id, by index, or 0 before it published it. Helpers publish in
/// any order, so every slot is read.
static HELPER_TIDS: [AtomicI32; MAX_HELPERS] = [const { AtomicI32::new(0) }; MAX_HELPERS];

/// The process the helpers run in: a child forked later has none, and their ids may go to the
/// child's own threads.
static PID: AtomicI32 = AtomicI32::new(0);

/// Helpers started in this process (under the mutex) and helpers that published their id.
static STARTED: Mutex<usize> = Mutex::new(0);
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// CPUs the process may run on, once known (0 before).
static CPUS: AtomicUsize = AtomicUsize::new(0);

/// Helpers a cycle with `procs` Ps uses: one per further P the CPUs can run at once.
fn helpers_for(procs: usize) -> usize {
    let cpus = CPUS.load(Ordering::Relaxed).max(1);
    procs.min(cpus).saturating_sub(1).min(MAX_HELPERS)
}

/// Helpers that run in this process and have published their id.
fn running_here() -> usize {
    // SAFETY: getpid has no preconditions.
    if PID.load(Ordering::Acquire) == unsafe { libc::getpid() } {
        RUNNING.load(Ordering::Acquire)
    } else {
        0
    }
}

/// The kernel thread ids of the mark helpers that run in this process, for a stop of the world
/// to leave running (they mark while it is stopped). Copy, allocation-free.
#[derive(Clone, Copy, Default)]
pub struct HelperThreads {
    tids: [i32; MAX_HELPERS],
}

impl HelperThreads {
    /// Whether `tid` is one of them.
    pub fn contains(&self, tid: i32) -> bool {
        tid != 0 && self.tids.contains(&tid)
    }

    /// Their ids.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        self.tids.iter().copied().filter(|&tid| tid != 0)
    }
}

/// The mark helpers that run in this process. They are goro's own: they hold no `Gc`, wake no
/// goroutine, and must not be stopped with the world.
pub fn helper_threads() -> HelperThreads {
    let mut threads = HelperThreads::default();
    if running_here() > 0 {
        for (tid, published) in threads.tids.iter_mut().zip(&HELPER_TIDS) {
            *tid = published.load(Ordering::Acquire);
        }
    }
    threads
}

/// Starts the mark helpers a runtime with `procs` Ps uses, if they are not running yet, and
/// waits (a little) until they can help. A runtime with two or more Ps calls it as it starts;
/// a cycle with two Ps or more calls it too. Helpers sleep until a cycle wakes them. Called
/// with the world running.
pub fn start_mark_helpers(procs: usize) {
    if CPUS.load(Ordering::Relaxed) == 0 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        CPUS.store(cpus, Ordering::Relaxed);
    }
    let wanted = helpers_for(procs);
    if running_here() >= wanted {
        return;
    }
    let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if PID.load(Ordering::Acquire) != pid {
        // A forked child: the parent's helpers are not here (and a session the fork cut short
        // left the packet lists as they were): start afresh.
        *started = 0;
        RUNNING.store(0, Ordering::Relaxed);
        for tid in &HELPER_TIDS {
            tid.store(0, Ordering::Relaxed);
        }
        SESSION.store(SESSION.load(Ordering::Relaxed) & !OPEN, Ordering::Relaxed);
        // SAFETY: the child of a fork whose parent's marker may have held the lock; no thread
        // of this process marks (its helpers are not started, and no cycle runs while a cycle
        // starts them).
        unsafe { LISTS.unlock_raw() };
        LISTS.lock().full = core::ptr::null_mut();
        FULL.store(0, Ordering::Relaxed);
        PID.store(pid, Ordering::Release);
    }
    while *started < wanted {
        let index = *started;
        let spawned = std::thread::Builder::new()
            .name("goro-gc-helper".into())
            .spawn(move || helper_main(index));
        if spawned.is_err() {
            break;
        }
        *started += 1;
    }
    let began = Instant::now();
    while running_here() < *started && began.elapsed() < START_WAIT {
        std::thread::yield_now();
    }
}

/// How long [`start_mark_helpers`] waits for new helpers to publish their ids.
const START_WAIT: Duration = Duration::from_millis(10);

/// How long an early-woken helper waits for the cycle to arm it before it sleeps again.
const EARLY_WAIT: Duration = Duration::from_millis(2);

/// Wakes the helpers ahead of a cycle that is about to stop the world: a thread asleep on an
/// idle virtual CPU takes tens of microseconds to run again, which would otherwise come out of
/// the pause. They wait (yielding their CPU to the threads that must reach a safe point) for
/// [`arm`], and sleep again after [`EARLY_WAIT`] if no cycle comes.
pub(crate) fn wake_early() {
    if running_here() > 0 {
        goro_alloc::futex_wake(&SESSION, i32::MAX);
    }
}

/// Opens a session for a cycle with `procs` Ps: wakes the helpers it uses, if any run, and
/// returns whether there are any. `beside_mutators`: the session marks while goroutines run,
/// and helpers take work only on CPUs their Ps leave idle ([`admitted`]). Called by the thread
/// that runs the cycle (the world stopped or not) before it drains; allocation-free, lock-free
/// but for the packet lists' spin lock.
pub(crate) fn arm(procs: usize, beside_mutators: bool) -> bool {
    let helpers = helpers_for(procs);
    if helpers == 0 || running_here() == 0 {
        return false;
    }
    let session = (SESSION.load(Ordering::Relaxed) | OPEN).wrapping_add(2);
    {
        let mut lists = LISTS.lock();
        debug_assert!(lists.full.is_null(), "a closed session left packets shared");
        lists.session = session;
    }
    // The driver holds a unit until its own list runs dry.
    PENDING.store(1, Ordering::Relaxed);
    WANTED.store(helpers, Ordering::Relaxed);
    BESIDE_MUTATORS.store(beside_mutators, Ordering::Relaxed);
    // Release: the cycle's cleared marks, and the stores above, are seen by a helper that sees
    // the session.
    SESSION.store(session, Ordering::Release);
    goro_alloc::futex_wake(&SESSION, i32::MAX);
    true
}

/// Marks until no work is left: `tracer`'s list alone, or, in a session `arm` opened
/// (`shared`), every marker's and the shared packets, then closes the session. Returns how many
/// work items were shared through packets. Called only by the thread that runs the cycle (or a
/// retirement's, or gccheckmark's marking, with the barrier off): it takes the barrier's log as
/// it goes.
pub(crate) fn drain(tracer: &mut Tracer, shared: bool) -> usize {
    if !shared {
        let mut since_log = 0;
        while let Some(work) = tracer.marker.work.pop() {
            take_log_if_filling(tracer, &mut since_log);
            process(tracer, work);
        }
        return 0;
    }
    let before = SHARED_ITEMS.load(Ordering::Relaxed);
    let session = SESSION.load(Ordering::Relaxed);
    mark_in_session(tracer, session, Role::Driver);
    // Release: nothing a helper reads; it sees the session closed and leaves.
    SESSION.store(session & !OPEN, Ordering::Release);
    SHARED_ITEMS.load(Ordering::Relaxed) - before
}

/// Who marks in a session.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The cycle's thread: it holds a unit at the start, takes the barrier's log, and closes
    /// the session once no work is left.
    Driver,
    /// A helper thread (its index): it starts idle and leaves when the session is closed.
    Helper(usize),
}

/// Whether helper `index` may take work now. Beside running goroutines (Go's idle-P marking),
/// only while the busy Ps leave a CPU free for it beyond the mark worker's: with two Ps and one
/// running goroutine, a helper would take turns on the CPUs with the goroutine and the worker,
/// and the goroutine would wait a scheduler time slice (4 ms here) at each turn. CPUs, not idle
/// Ps: with more Ps than CPUs, Ps sit idle while every CPU is taken. A runtime that has ended
/// (its retirement marks) has no goroutine to make room for.
fn admitted(index: usize) -> bool {
    if !BESIDE_MUTATORS.load(Ordering::Relaxed) {
        return true;
    }
    crate::roots::current().is_none_or(|mutators| {
        let busy = mutators.procs().saturating_sub(mutators.idle_procs());
        CPUS.load(Ordering::Relaxed).saturating_sub(busy) >= index + 2
    })
}

/// How long a helper that may not take work sleeps before it looks again.
const NOT_ADMITTED_NAP: Duration = Duration::from_millis(1);

/// Marks in `session` until it is over for `role` (see [`Role`]).
fn mark_in_session(tracer: &mut Tracer, session: u32, role: Role) {
    let mut busy = role == Role::Driver;
    loop {
        if busy {
            mark_own(tracer, role);
            // Our list is empty. Taking a packet, we keep one unit for both; otherwise we go
            // idle. (Release: our marks to the driver's Acquire load of the count.)
            if !take_packet(tracer, session) {
                if role != Role::Driver {
                    count_cpu();
                }
                HUNGRY.fetch_add(1, Ordering::Relaxed);
                PENDING.fetch_sub(1, Ordering::Release);
                busy = false;
            } else {
                PENDING.fetch_sub(1, Ordering::Release);
            }
            continue;
        }
        let mut wait = Backoff::default();
        // Whether we are counted in HUNGRY (an idle marker is, unless it may not take work).
        let mut counted = true;
        while !busy {
            if let Role::Helper(index) = role
                && !admitted(index)
            {
                if counted {
                    HUNGRY.fetch_sub(1, Ordering::Relaxed);
                    counted = false;
                }
                if SESSION.load(Ordering::Acquire) != session {
                    return;
                }
                goro_alloc::futex_wait(&SESSION, session, Some(NOT_ADMITTED_NAP));
                continue;
            }
            if !counted {
                HUNGRY.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            if FULL.load(Ordering::Relaxed) > 0 && take_packet(tracer, session) {
                // The packet's unit is ours now.
                busy = true;
            } else if role == Role::Driver {
                // Acquire: every helper's marks happen before the cycle goes on.
                if PENDING.load(Ordering::Acquire) == 0 {
                    HUNGRY.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                if crate::barrier::filling() {
                    // Only the driver decides the session is over, so it may hold a unit
                    // again.
                    PENDING.fetch_add(1, Ordering::Relaxed);
                    crate::barrier::drain(&mut tracer.marker, false);
                    busy = true;
                }
            } else if SESSION.load(Ordering::Acquire) != session {
                HUNGRY.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            if busy {
                HUNGRY.fetch_sub(1, Ordering::Relaxed);
            } else {
                wait.snooze();
            }
        }
    }
}

/// Drains `tracer`'s own list, sharing its oldest work when other markers are hungry; the
/// driver takes the barrier's log as it goes.
fn mark_own(tracer: &mut Tracer, role: Role) {
    let mut since_log = 0;
    while let Some(work) = tracer.marker.work.pop() {
        if HUNGRY.load(Ordering::Relaxed) > FULL.load(Ordering::Relaxed)
            && tracer.marker.work.len() >= MIN_SHARED
        {
            share(tracer);
        }
        if role == Role::Driver {
            take_log_if_filling(tracer, &mut since_log);
        }
        process(tracer, work);
    }
}

/// Items between two looks at the barrier's log while a pass marks.
const LOG_LOOK_EVERY: usize = 256;

/// Words scanned between two looks at the barrier's log (128 KiB: a few hundred microseconds).
const LOG_LOOK_WORDS: usize = 16 << 10;

/// Every [`LOG_LOOK_EVERY`] items or [`LOG_LOOK_WORDS`] words scanned, whichever comes first,
/// takes the barrier's log onto the work list if it is filling: a mutator that finds the log
/// full waits for the marker, which must not make it wait for a whole pass over a large heap.
/// Items alone were not enough: 256 objects of 1,024 cells each (gc_latency's chunks) are
/// 2 MiB to scan, and a mutator waited 10 ms for them on the full log, its worst stall. Only
/// the thread that runs the cycle drains the log (its one consumer).
#[inline]
fn take_log_if_filling(tracer: &mut Tracer, since_log: &mut usize) {
    *since_log += 1;
    if *since_log >= LOG_LOOK_EVERY || tracer.marker.scanned_words >= LOG_LOOK_WORDS {
        *since_log = 0;
        tracer.marker.scanned_words = 0;
        if crate::barrier::filling() {
            crate::barrier::drain(&mut tracer.marker, false);
        }
    }
}

#[inline]
fn process(tracer: &mut Tracer, work: Work) {
    match work {
        Work::Object(start, header) => {
            // SAFETY: the header was read (Acquire, after the object was built) from a slot
            // this cycle marked, and a marked slot is neither freed nor reused before the
            // cycle's sweep: the object is live and of the vtable's type.
            unsafe { (vtable_of(header).trace)(start as *const u8, tracer) };
        }
        Work::Range(lo, hi) => tracer.marker.scan(lo, hi, Source::Object),
        Work::Block(lo, hi) | Work::Pages(lo, hi) => {
            // Pages are a large block's, whatever their own length.
            let large = matches!(work, Work::Pages(..)) || hi - lo >= crate::tracked::TRACK_MIN;
            tracer.marker.noting = large && crate::tracked::noting();
            tracer.marker.scan(lo, hi, Source::Block);
            tracer.marker.noting = false;
        }
        Work::Root(lo, hi) => tracer.marker.scan(lo, hi, Source::Root),
    }
}

/// Waiting for another marker: spinning a little, then yielding the CPU. Markers may share one
/// CPU (the kernel put a helper where it found room), and a waiter that only spins keeps the
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

fn helper_main(index: usize) {
    leave_this_cpu();
    let mut tracer = Tracer::new();
    // SAFETY: gettid has no preconditions.
    HELPER_TIDS[index].store(unsafe { libc::gettid() }, Ordering::Release);
    RUNNING.fetch_add(1, Ordering::Release);
    loop {
        // Acquire: pairs with `arm`'s Release.
        let session = SESSION.load(Ordering::Acquire);
        if session & OPEN == 0 || index >= WANTED.load(Ordering::Relaxed) {
            goro_alloc::futex_wait(&SESSION, session, None);
            // Woken early (`wake_early`), or by a session: wait a little for it.
            let woken = Instant::now();
            let mut wait = Backoff::default();
            while SESSION.load(Ordering::Relaxed) == session && woken.elapsed() < EARLY_WAIT {
                wait.snooze();
            }
            continue;
        }
        // A new session: forget the words the last one marked from (the marks may have been
        // cleared since).
        tracer.marker.forget_recent();
        CPU_MARK.with(|mark| mark.set(crate::stats::thread_cpu()));
        HUNGRY.fetch_add(1, Ordering::Relaxed);
        mark_in_session(&mut tracer, session, Role::Helper(index));
        count_cpu();
    }
}

std::thread_local! {
    /// The helper's CPU time when it last counted it.
    static CPU_MARK: core::cell::Cell<Duration> = const { core::cell::Cell::new(Duration::ZERO) };
}

/// Adds the helper's CPU time since it last counted to [`CPU_NANOS`].
fn count_cpu() {
    let now = crate::stats::thread_cpu();
    let used = now.saturating_sub(CPU_MARK.with(|mark| mark.replace(now)));
    CPU_NANOS.fetch_add(
        u64::try_from(used.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// CPU time the helpers spent in sessions (marking or waiting for work), over all cycles.
static CPU_NANOS: AtomicU64 = AtomicU64::new(0);

/// The helpers' CPU time so far (see [`CPU_NANOS`]): a helper counts what it used each time it
/// runs out of work, so a session's marking is counted before the session closes.
pub(crate) fn cpu_used() -> Duration {
    Duration::from_nanos(CPU_NANOS.load(Ordering::Relaxed))
}
