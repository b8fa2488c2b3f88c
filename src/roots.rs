//! The roots of a collection: where the collector looks for `Gc` pointers outside its own heap.
//!
//! This module is the single place that joins goro-gc to goro-sched and goro-stack: it implements
//! [`goro_gc::Mutators`] by stopping the scheduler's world (goroutines at a safe point) and then
//! every thread of the process by signal (`world`), and reports:
//!
//! - for every goroutine, its G struct (a heap block holding the closure of a goroutine that has
//!   not run yet) and the live part of its stacks, from each saved stack pointer (which points at
//!   the callee-saved registers the switch pushed) to the top, or its stashed bytes;
//! - for every thread (Ms, sysmon, the main thread, std and C threads alike), its stack from
//!   where it stopped (the signal frame with its registers lies above that point) to the top of
//!   that stack, and its static TLS block (`thread_local!`);
//! - the writable segments of every loaded ELF object (`.data`, `.bss`), so that a `static`
//!   holding a `Gc` (or a `Mutex<Vec<Gc<T>>>` whose buffer is in the heap) keeps it alive.
//!
//! Which routes this covers, and which are still open, is argued in docs/soundness.md.

use crate::world::{self, OwnStack, PAGE, Stopped};
use goro_gc::{Mutators, RootVisitor};
use goro_sched::{RootRange, RootsLock};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Free stack slots per size whose pages a collection leaves committed.
const STACKS_KEPT_WARM: usize = 16;

/// What the cycle under way reports, gathered before the other threads stopped (gathering
/// allocates and takes locks; reporting must do neither).
struct CycleRoots<'a> {
    /// The goroutines' roots: the running runtime's, or the abandoned ones of a runtime that
    /// ended.
    goroutines: &'a GoroutineRootsFn<'a>,
    statics: &'a [(usize, usize)],
    threads: &'a Stopped,
}

/// Hands every goroutine root (`RootsLock::for_each`, `AbandonedRoots::for_each`) to its second
/// argument; all but those of parked goroutines if the first is true and the world can report
/// those later (`RootsLock::for_each_but_parked`).
type GoroutineRootsFn<'a> = dyn Fn(bool, &mut dyn FnMut(RootRange)) + 'a;

thread_local! {
    /// The roots of the cycle this thread runs, while it runs it.
    static ACTIVE: Cell<*const CycleRoots<'static>> = const { Cell::new(std::ptr::null()) };
}

/// The goroutines of the running runtime, as the collector sees them.
pub(crate) struct GoroutineRoots;

pub(crate) static GOROUTINE_ROOTS: GoroutineRoots = GoroutineRoots;

// SAFETY: `stop_the_world` runs the cycle on an M's system stack after every goroutine has
// stopped at a safe point or by signal, and every other thread of the process but the stash-trap
// thread (which holds no `Gc`) has stopped by signal (`world::stop_others`); before that it
// takes the goroutine lists' locks and gathers the static segments, so the cycle needs no lock
// or allocation a stopped thread could hold up. `roots` reports every goroutine's G struct and
// stacks (in a first pause, all but the parked goroutines'), every thread's stack and static
// TLS, and the static data of every loaded object; `parked_roots` reports each parked
// goroutine's while goro-sched holds it parked (`for_each_parked_goroutine`), so its ranges stay
// mapped until the visitor returns. docs/soundness.md lists the routes left open.
unsafe impl Mutators for GoroutineRoots {
    fn stop_the_world(&self, cycle: &mut dyn FnMut(), restarted: &mut dyn FnMut(Duration)) -> bool {
        let ran = Cell::new(false);
        let mut stopped = || {
            ran.set(true);
            stopped_cycle(cycle);
        };
        if goro_sched::is_goroutine() {
            // SAFETY: the cycle neither unwinds (the collector's marking panics only on broken
            // runtime invariants, which abort) nor waits for a goroutine nor parks; `restarted`
            // neither.
            unsafe { goro_sched::stop_the_world(&mut stopped, restarted) };
        } else {
            // A thread that is not a goroutine stops the world itself: it needs no P, so it can
            // collect while it holds a lock every goroutine waits for.
            // SAFETY: as above.
            unsafe { goro_sched::stop_the_world_from_thread(&mut stopped, restarted) };
        }
        let ran = ran.get();
        if ran {
            // Go frees stack memory at GC: release the pages of pooled stack slots beyond a warm
            // few, so a burst of deep goroutines does not keep its RSS after it is gone.
            goro_stack::trim(STACKS_KEPT_WARM);
            // And the Ps' cached stacks (each M, at its next schedule) and the pages below
            // long-parked goroutines' stack pointers (sysmon, at its next epoch).
            goro_sched::release_stack_memory();
        }
        ran
    }

    fn roots(&self, visitor: &mut RootVisitor<'_>) {
        let active = ACTIVE.with(Cell::get);
        assert!(!active.is_null(), "roots asked for outside a cycle");
        // SAFETY: `stopped_cycle` set it to a value of its frame for the duration of the cycle,
        // which calls us.
        let active = unsafe { &*active };
        report_active(visitor, active);
    }

    fn parked_roots(&self, visitor: &mut RootVisitor<'_>) {
        goro_sched::for_each_parked_goroutine(&mut |root| report(visitor, root));
    }

    fn safe_point(&self) {
        goro_sched::safe_point();
    }

    fn procs(&self) -> usize {
        goro_sched::procs()
    }

    fn idle_procs(&self) -> usize {
        goro_sched::idle_procs()
    }

    fn prepare_stop(&self) {
        world::prepare_stop();
    }

    fn cleanups_ready(&self, cleanups: goro_gc::Cleanups) {
        // Go runs cleanups on a goroutine of their own. A runtime that is ending refuses the
        // goroutine: the runner, dropped unrun, gives its right back and the cleanups stay
        // queued; the retirement leaks them.
        let _ = goro_sched::try_go(move || cleanups.run());
    }

    fn pause(&self, duration: Duration) {
        if goro_sched::is_goroutine() {
            goro_sched::sleep(duration);
        } else {
            std::thread::sleep(duration);
        }
    }
}

/// Runs `cycle` with every other thread of the process stopped. Called with the scheduler's world
/// stopped, on an M's g0 or on the thread (not a goroutine) that asked for the cycle.
fn stopped_cycle(cycle: &mut dyn FnMut()) {
    // SAFETY: called only inside `stop_the_world`'s closure; every thread that may still run a
    // goroutine is stopped by `stop_others` before the cycle reads the Gs, and the lock is
    // dropped before the closure returns.
    let goroutines = unsafe { RootsLock::new() };
    let report = |leave_parked, visit: &mut dyn FnMut(RootRange)| {
        if leave_parked {
            goroutines.for_each_but_parked(visit);
        } else {
            goroutines.for_each(visit);
        }
    };
    run_stopped(&report, OwnStack::Here, cycle);
    drop(goroutines);
}

/// Stops every other thread of the process, runs `cycle` with `goroutines` and them as the
/// roots [`report_active`] gives, and releases them: they go on at the caller's
/// `goro_alloc::parked::restart_world` (goro-sched's, when the scheduler's world is stopped).
fn run_stopped(goroutines: &GoroutineRootsFn<'_>, own: OwnStack, cycle: &mut dyn FnMut()) {
    let statics = writable_segments();
    let mut threads = world::stop_others();
    threads.set_own_stack(own);
    let roots = CycleRoots {
        goroutines,
        statics: &statics,
        threads: &threads,
    };
    ACTIVE.with(|active| active.set((&raw const roots).cast()));
    cycle();
    ACTIVE.with(|active| active.set(std::ptr::null()));
    drop(threads);
}

/// Reports the roots of the stop under way on this thread.
fn report_active(visitor: &mut RootVisitor<'_>, active: &CycleRoots<'_>) {
    let leave_parked = visitor.parked_later();
    (active.goroutines)(leave_parked, &mut |root| report(visitor, root));
    report_segments(visitor, active.statics);
    report_threads(visitor, active.threads);
}

/// The world of a runtime that has ended, while the collector retires its heap
/// (`goro_gc::retire`): every thread of the process, stopped by signal (none is a goroutine
/// any more), the static data, and the goroutines the runtime abandoned.
pub(crate) struct RetiredWorld {
    ended: std::sync::Mutex<Option<Ended>>,
}

/// The runtime that ended, as the retired world needs it.
#[derive(Clone, Copy)]
struct Ended {
    abandoned: goro_sched::Abandoned,
    procs: usize,
    /// The thread that ran it: a pause there scans its stack from the pause's frame up, as a
    /// cycle's does; a pause on any other thread (a collector's) scans none of its own.
    caller: i32,
}

pub(crate) static RETIRED_WORLD: RetiredWorld = RetiredWorld {
    ended: std::sync::Mutex::new(None),
};

impl RetiredWorld {
    /// Makes this the world of the runtime that just ended, which left `abandoned` behind and
    /// ran `procs` Ps (the collector marks with a helper thread where it had two or more), on
    /// the calling thread.
    pub(crate) fn set(&self, abandoned: goro_sched::Abandoned, procs: usize) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        *self
            .ended
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(Ended {
            abandoned,
            procs,
            caller: tid,
        });
    }

    fn ended(&self) -> Ended {
        self.ended
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .expect("the retired world is set before its retirement starts")
    }
}

// SAFETY: `stop_the_world` stops every other thread of the process by signal (but the
// stash-trap thread and the mark helper, which hold no `Gc`), after locking the abandoned
// goroutines' lists and gathering the static segments (so the cycle needs no lock or allocation
// a stopped thread could hold up; `ended` is locked only by the collector's threads and `run`,
// never by a stopped thread in a way that blocks the stop). No goroutine runs: the runtime's Ms
// have exited. `roots` reports every thread's stack and static TLS, the static data, and every
// abandoned goroutine's G struct and stacks (which stay allocated for ever).
unsafe impl Mutators for RetiredWorld {
    fn stop_the_world(&self, cycle: &mut dyn FnMut(), restarted: &mut dyn FnMut(Duration)) -> bool {
        let ended = self.ended();
        let abandoned = ended.abandoned.roots();
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        // The runtime's thread from here up; a collector thread (the sweeper, which may start a
        // retirement queued behind a sweep, or the mark worker) not at all.
        let own = if me == ended.caller {
            OwnStack::Here
        } else {
            OwnStack::Skip
        };
        goro_alloc::parked::begin_stop();
        let stopped = Instant::now();
        // No goroutine runs any more: parked or not, the pause reads them all.
        run_stopped(&|_, visit| abandoned.for_each(visit), own, cycle);
        let let_go = goro_alloc::parked::restart_world();
        restarted(let_go.duration_since(stopped));
        true
    }

    fn roots(&self, visitor: &mut RootVisitor<'_>) {
        let active = ACTIVE.with(Cell::get);
        assert!(
            !active.is_null(),
            "roots asked for outside a retirement's pause"
        );
        // SAFETY: `run_stopped` set it to a value of its frame for the duration of the pause,
        // which calls us.
        report_active(visitor, unsafe { &*active });
    }

    fn safe_point(&self) {}

    fn procs(&self) -> usize {
        self.ended().procs
    }

    /// Every P: no goroutine runs once a runtime has ended.
    fn idle_procs(&self) -> usize {
        self.ended().procs
    }

    fn prepare_stop(&self) {
        world::prepare_stop();
    }
}

/// Reports every stopped thread's stack and TLS, and the collecting thread's own, less its
/// goro-alloc cache.
fn report_threads(visitor: &mut RootVisitor<'_>, threads: &Stopped) {
    threads.for_each_thread(|thread| {
        for range in [Some(thread.stack), thread.tls, thread.alternate]
            .into_iter()
            .flatten()
        {
            for (lo, hi) in without(range, thread.skip) {
                // SAFETY: `[lo, hi)` lies in one readable mapping (or goroutine stack slot) of a
                // thread that is stopped (or is this one, below the caller's frame) until the
                // cycle ends.
                unsafe { visitor.range(lo as *const u8, hi as *const u8) };
            }
        }
    });
}

/// `range` less `hole`: zero, one or two ranges.
fn without((lo, hi): (usize, usize), (hole_lo, hole_hi): (usize, usize)) -> [(usize, usize); 2] {
    if hole_hi <= lo || hole_lo >= hi {
        return [(lo, hi), (hi, hi)];
    }
    [(lo, hole_lo.max(lo)), (hole_hi.min(hi), hi)]
}

/// Hands one goroutine root to the collector. A stack range is scanned only if it lies within
/// one stack slot: a goroutine that was running when its thread stopped has a stale saved stack
/// pointer (its live frames are found through the thread's own stack pointer instead).
pub(crate) fn report(visitor: &mut RootVisitor<'_>, root: RootRange) {
    match root {
        RootRange::Block(block) => visitor.block(block),
        RootRange::Stack { lo, hi } => {
            let (lo_addr, hi_addr) = (lo as usize, hi as usize);
            if let Some((limit, top)) = goro_stack::slot_bounds(lo_addr)
                && lo_addr >= limit
                && hi_addr <= top
            {
                // A stack is freed only when its goroutine exits; released pages read as zeros
                // or are put back by the stash trap.
                // SAFETY: inside one stack slot's usable part, which stays mapped while the
                // world is stopped or the goroutine is held parked (`parked_roots`).
                unsafe { visitor.range(lo, hi) };
            }
        }
        // SAFETY: stashed bytes are a heap block that the stack's owner frees only when it
        // takes them back or exits, neither of which happens while the world is stopped
        // (`parked_roots` reads no stashed goroutine).
        RootRange::Stashed { lo, hi } => unsafe { visitor.range(lo, hi) },
    }
}

fn report_segments(visitor: &mut RootVisitor<'_>, segments: &[(usize, usize)]) {
    for &(lo, hi) in segments {
        for_each_resident_run(lo, hi, |lo, hi| {
            // SAFETY: a writable PT_LOAD segment of a loaded object is mapped and readable while
            // the object stays loaded; objects are unloaded only by dlclose, which no thread runs
            // while the world is stopped.
            unsafe { visitor.global_range(lo as *const u8, hi as *const u8) };
        });
    }
}

/// Calls `f` with each run of `[lo, hi)` whose pages this process has touched: present in its
/// page tables or swapped out, as `/proc/self/pagemap` says (bits 63 and 62). A page of a
/// writable segment with neither was never written since it was mapped (or was a clean file
/// page, dropped): a `.bss` page never touched is zeros, a `.data` page never copied on write
/// holds the file's bytes, and neither can hold a `Gc` (every `Gc` address is made at run
/// time). The `.bss` of a binary can hold large tables that are never touched (jemalloc's,
/// goro-stack's chunk table), which the marker would otherwise read word by word every cycle.
/// (`mincore` would not do: it calls a swapped-out page absent.) Runs with the world stopped,
/// so no page can be touched between the check and the scan; allocation-free.
fn for_each_resident_run(lo: usize, hi: usize, mut f: impl FnMut(usize, usize)) {
    const BATCH: usize = 512;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        // Cannot tell: scan it all.
        f(lo, hi);
        return;
    }
    let mut entries = [0u64; BATCH];
    let mut page = lo & !(PAGE - 1);
    let mut run_start: Option<usize> = None;
    while page < hi {
        let pages = (hi - page).div_ceil(PAGE).min(BATCH);
        let offset = (page / PAGE * 8) as libc::off_t;
        // SAFETY: reads at most `pages` 8-byte entries into `entries`.
        let read = unsafe { libc::pread(fd, entries.as_mut_ptr().cast(), pages * 8, offset) };
        let complete = read == (pages * 8) as isize;
        for (i, &entry) in entries[..pages].iter().enumerate() {
            let at = page + i * PAGE;
            // A short read: scan what it did not cover.
            let touched = !complete || entry & (PRESENT | SWAPPED) != 0;
            match (touched, run_start) {
                (true, None) => run_start = Some(at.max(lo)),
                (false, Some(start)) => {
                    f(start, at.min(hi));
                    run_start = None;
                }
                _ => {}
            }
        }
        page += pages * PAGE;
    }
    if let Some(start) = run_start {
        f(start, hi);
    }
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
}

/// `[start, end)` of each writable loadable segment, from the dynamic loader's list, less its
/// RELRO part: the loader makes `PT_GNU_RELRO` read-only once it has relocated the object, before
/// any of the object's code runs, so no `Gc` can be stored there (a program would need an
/// `unsafe` `mprotect` to write it). Vtables, GOTs and other relocated constants fill it: skipping
/// it halves the static roots of a typical Rust binary.
pub(crate) fn writable_segments() -> Vec<(usize, usize)> {
    /// `dl_iterate_phdr`'s callback.
    ///
    /// # Safety
    /// Only `dl_iterate_phdr` may call it, with `data` the `Vec` passed to it.
    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the call, and
        // `data` is the `Vec` that `writable_segments` passed in.
        let (info, segments) = unsafe { (&*info, &mut *data.cast::<Vec<(usize, usize)>>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: a non-null `dlpi_phdr` points to `dlpi_phnum` program headers.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let base = info.dlpi_addr as usize;
        let range = |header: &libc::Elf64_Phdr| {
            let start = base + header.p_vaddr as usize;
            (start, start + header.p_memsz as usize)
        };
        // The loader protects whole pages: from the page holding the start to the page boundary
        // at or below the end (linkers pad the end to one).
        let relro = headers
            .iter()
            .find(|header| header.p_type == libc::PT_GNU_RELRO)
            .map_or((0, 0), |header| {
                let (start, end) = range(header);
                (start & !(PAGE - 1), end & !(PAGE - 1))
            });
        for header in headers {
            if header.p_type == libc::PT_LOAD && header.p_flags & libc::PF_W != 0 {
                for (lo, hi) in without(range(header), relro) {
                    if lo < hi {
                        segments.push((lo, hi));
                    }
                }
            }
        }
        0
    }
    let mut segments: Vec<(usize, usize)> = Vec::new();
    // SAFETY: the callback only reads the headers it is given and pushes onto `segments`.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&mut segments as *mut Vec<_>).cast());
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static WRITTEN_AT_RUN_TIME: AtomicUsize = AtomicUsize::new(1);

    /// `(start, end, writable)` of each mapping of this process.
    fn mappings() -> Vec<(usize, usize, bool)> {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        text.lines()
            .map(|line| {
                let (range, rest) = line.split_once(' ').unwrap();
                let (start, end) = range.split_once('-').unwrap();
                let hex = |s| usize::from_str_radix(s, 16).unwrap();
                (hex(start), hex(end), rest.as_bytes()[1] == b'w')
            })
            .collect()
    }

    #[test]
    fn static_roots_cover_writable_statics_and_only_writable_pages() {
        WRITTEN_AT_RUN_TIME.fetch_add(1, Ordering::Relaxed);
        let segments = writable_segments();
        let at = &raw const WRITTEN_AT_RUN_TIME as usize;
        assert!(
            segments.iter().any(|&(lo, hi)| lo <= at && at < hi),
            "a writable static is a root"
        );
        let maps = mappings();
        for &(lo, hi) in &segments {
            let mut page = lo & !(PAGE - 1);
            while page < hi {
                let writable = maps
                    .iter()
                    .find(|&&(start, end, _)| start <= page && page < end)
                    .is_some_and(|&(_, _, writable)| writable);
                assert!(
                    writable,
                    "page {page:#x} of segment {lo:#x}..{hi:#x} is read-only (RELRO)"
                );
                page += PAGE;
            }
        }
    }
}
