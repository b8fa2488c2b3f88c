//! How the collector reaches the mutators: the [`Mutators`] trait.
//!
//! goro-gc knows nothing of goroutines or threads. Whoever runs mutators (the `goro` facade,
//! joining the scheduler and the stacks; a test's fake) implements [`Mutators`] and
//! [`install`]s it: the collector asks it to stop the world, to report the roots, and to poll for
//! a stop at safe points. While one is installed, every thread of the process may allocate `Gc`
//! objects: the implementation stops and scans them all.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

/// The world of mutators, as the collector sees it.
///
/// # Safety
/// May be implemented only if, while `stop_the_world` runs its closure, no thread of the process
/// but the one running the closure executes code that can load or store a `Gc` (every other
/// thread is stopped), and `roots` reports every memory range in which any thread may hold a
/// `Gc` (its stack from its stack pointer up, its saved registers, its TLS, static data) along
/// with every heap block only the runtime owns that may hold one (but for what it may leave to
/// `parked_roots` when [`RootVisitor::parked_later`] says so). `parked_roots` reports only
/// ranges that stay mapped and readable until the visitor returns. The closure must not be run
/// while a stopped thread holds a lock the closure needs; the collector's part of it allocates
/// nothing and takes no lock but its own.
pub unsafe trait Mutators: Sync {
    /// Stops every thread of the process, runs `cycle`, lets them go on, and calls `restarted`
    /// with how long the world stood stopped (from the first thread asked to stop until the
    /// last one let go), on the thread that restarted it and before it runs anything else (a
    /// goroutine that asked may resume much later). Returns false, without running either,
    /// when no cycle may run any more (the runtime is ending). Called on any thread, the
    /// collector's own mark worker included (which ends each cycle while the mutators run);
    /// both closures may run on another stack of the caller's thread, and neither may block.
    fn stop_the_world(&self, cycle: &mut dyn FnMut(), restarted: &mut dyn FnMut(Duration)) -> bool;

    /// Reports the roots to `visitor`. Called only inside `stop_the_world`'s closure. Where
    /// [`RootVisitor::parked_later`] is true (a cycle's first pause), it may leave out parked
    /// goroutines, which `parked_roots` reports once the world runs again.
    fn roots(&self, visitor: &mut RootVisitor<'_>);

    /// Reports, with the world going, the roots of the goroutines `roots` left out in the first
    /// pause of the cycle under way, or some of them: each one's ranges stay as they were
    /// (mapped, and unchanged by their goroutine) until the visitor returns, which reads them
    /// at once. Called by the mark worker after the first pause; what it misses, the cycle's
    /// termination finds (it rescans every root). The default reports nothing.
    fn parked_roots(&self, visitor: &mut RootVisitor<'_>) {
        let _ = visitor;
    }

    /// A safe point: if a stop of the world is pending, the caller stops here until it is over.
    fn safe_point(&self);

    /// How many Ps run mutators (for the gctrace line, and the mark helpers a cycle may use).
    fn procs(&self) -> usize;

    /// How many Ps have nothing to run now: marking beside the mutators takes one CPU for the
    /// mark worker, and a mark helper joins only while the busy Ps leave a further CPU free, so
    /// that the collector does not take CPU time from running goroutines (Go's idle-P marking).
    fn idle_procs(&self) -> usize;

    /// Called before each stop, with the world running: work the stop would otherwise do with
    /// it stopped (the facade reads `/proc/self/maps` here when a thread it has not stopped
    /// before exists).
    fn prepare_stop(&self) {}

    /// Waits about `duration` without holding up other mutators or a stop of the world (a
    /// goroutine parks on a timer, so its M can run others; a thread sleeps): `collect` and
    /// an allocation far past the goal wait so for the cycle, each wait longer than the last
    /// (see `collector::wait_on_cycle`).
    fn pause(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    /// Called with the world going when cleanups ([`crate::add_cleanup`]) are queued and no one
    /// runs them: runs them, off the collector's threads (the facade starts a goroutine). The
    /// default starts a thread; if it cannot, dropping `cleanups` leaves them queued.
    fn cleanups_ready(&self, cleanups: Cleanups) {
        let _ = std::thread::Builder::new()
            .name("goro-cleanups".into())
            .spawn(move || cleanups.run());
    }
}

/// Receives root memory from [`Mutators::roots`].
pub struct RootVisitor<'a> {
    pub(crate) sink: &'a mut dyn FnMut(Root),
    pub(crate) parked_later: bool,
    /// Bytes of static data reported ([`RootVisitor::global_range`]), for gctrace's globals.
    pub(crate) globals: usize,
}

/// One root as [`RootVisitor`] hands it to the marker.
pub(crate) enum Root {
    /// Memory outside the heap (or a part of a block) to scan conservatively: `[lo, hi)`.
    Range(usize, usize),
    /// A heap block the runtime owns, kept alive and scanned whole, once per cycle however
    /// many roots and heap words reach it.
    Block(usize),
}

impl Root {
    /// Whether this is the range of memory that holds `address`: with the address of a local,
    /// whether it is the calling thread's own stack (which the collector's threads leave out).
    pub(crate) fn holds(&self, address: usize) -> bool {
        matches!(*self, Root::Range(lo, hi) if (lo..hi).contains(&address))
    }
}

impl RootVisitor<'_> {
    /// Whether [`Mutators::roots`] may leave out the goroutines that are parked now: true in a
    /// cycle's first pause, after which the mark worker asks for them with
    /// [`Mutators::parked_roots`] (the first pause's roots only start the marking; the
    /// termination rescans every root).
    pub fn parked_later(&self) -> bool {
        self.parked_later
    }

    /// Scans `[lo, hi)` conservatively: every aligned word that points into an allocated block of
    /// goro's heap keeps that block alive.
    ///
    /// # Safety
    /// May be called only if `[lo, hi)` is mapped and readable for the whole cycle (from
    /// [`Mutators::parked_roots`]: until this call returns).
    pub unsafe fn range(&mut self, lo: *const u8, hi: *const u8) {
        (self.sink)(Root::Range(lo as usize, hi as usize));
    }

    /// [`RootVisitor::range`] for static data (a loaded object's writable segments), counted
    /// apart as Go's gctrace counts globals apart from stacks.
    ///
    /// # Safety
    /// As for [`RootVisitor::range`].
    pub unsafe fn global_range(&mut self, lo: *const u8, hi: *const u8) {
        self.globals += (hi as usize).saturating_sub(lo as usize);
        // SAFETY: the caller's promise is `range`'s.
        unsafe { self.range(lo, hi) };
    }

    /// Keeps the heap block that contains `ptr` (e.g. a G struct) alive and scans it
    /// conservatively, whole. A block reached both from here and from other roots is scanned
    /// once.
    pub fn block(&mut self, ptr: *const u8) {
        (self.sink)(Root::Block(ptr as usize));
    }
}

/// The right to run the queued cleanups ([`crate::add_cleanup`]), handed to
/// [`Mutators::cleanups_ready`]: at most one exists at a time, and only the collector makes one.
/// [`run`](Cleanups::run) runs them; dropping it without running gives the right back, and the
/// cleanups stay queued for the next runner (the next cycle that queues one starts it).
pub struct Cleanups {
    /// Set by `run`: only a runner that ran looks for cleanups queued meanwhile when it ends
    /// (one dropped unrun, say because the runtime is ending, just gives the right back).
    pub(crate) ran: bool,
}

struct Installed(&'static dyn Mutators);

static MUTATORS: AtomicPtr<Installed> = AtomicPtr::new(core::ptr::null_mut());

/// Makes `mutators` the world the collector stops and scans.
///
/// # Panics
/// Panics if another `Mutators` is installed.
///
/// # Safety
/// May be called only by the runtime whose world `mutators` describes, while it runs: from now
/// on every `Gc` of the process is collected through it.
pub unsafe fn install(mutators: &'static dyn Mutators) {
    let installed = Box::into_raw(Box::new(Installed(mutators)));
    // AcqRel: publishes the box to `current`'s Acquire loads.
    if MUTATORS
        .compare_exchange(
            core::ptr::null_mut(),
            installed,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: `installed` came from `Box::into_raw` just above and was never shared.
        drop(unsafe { Box::from_raw(installed) });
        panic!("goro-gc: a Mutators implementation is already installed (one runtime at a time)");
    }
}

/// Removes the installed `Mutators`; from now on `Gc::new` panics until the next `install`.
///
/// The box is leaked rather than freed: a thread may have loaded the pointer just before.
///
/// # Safety
/// May be called only by the runtime that installed it, as it ends (before [`crate::retire`]).
pub unsafe fn uninstall() {
    MUTATORS.swap(core::ptr::null_mut(), Ordering::AcqRel);
}

#[inline]
pub(crate) fn current() -> Option<&'static dyn Mutators> {
    // Acquire: pairs with the AcqRel in `install`.
    let installed = MUTATORS.load(Ordering::Acquire);
    // SAFETY: a non-null pointer came from `Box::into_raw` in `install` and is never freed.
    (!installed.is_null()).then(|| unsafe { (*installed).0 })
}
