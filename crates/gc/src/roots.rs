//! How the collector reaches the mutators: the [`Mutators`] trait.
//!
//! goro-gc knows nothing of goroutines. Whoever runs mutators (the `goro` facade, joining the
//! scheduler and the stacks; a test's fake) implements [`Mutators`] and [`install`]s it: the
//! collector asks it to stop the world, to report the roots, and to poll for a stop at safe points.
//! Threads whose stacks the implementation reports register themselves with [`MutatorThread`]; only
//! they may allocate `Gc` objects.

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The world of mutators, as the collector sees it.
///
/// # Safety
/// May be implemented only if, while `stop_the_world` runs its closure, no thread registered with
/// [`MutatorThread`] executes mutator code, and `roots` reports every memory range in which such a
/// thread may hold a `Gc` (its stack from the saved stack pointer up, its saved registers) along
/// with every heap block only the runtime owns that may hold one.
pub unsafe trait Mutators: Sync {
    /// Stops every mutator at a safe point, runs `cycle`, then lets them go on.
    ///
    /// Called on a registered mutator thread; `cycle` may run on another stack of the same thread.
    fn stop_the_world(&self, cycle: &mut dyn FnMut());

    /// Reports the roots to `visitor`. Called only inside `stop_the_world`'s closure.
    fn roots(&self, visitor: &mut RootVisitor<'_>);

    /// A safe point: if a stop of the world is pending, the caller stops here until it is over.
    fn safe_point(&self);

    /// How many Ps run mutators (for the gctrace line).
    fn procs(&self) -> usize;
}

/// Receives root memory from [`Mutators::roots`].
pub struct RootVisitor<'a> {
    pub(crate) sink: &'a mut dyn FnMut(usize, usize),
}

impl RootVisitor<'_> {
    /// Scans `[lo, hi)` conservatively: every aligned word that points into an allocated block of
    /// goro's heap keeps that block alive.
    ///
    /// # Safety
    /// May be called only if `[lo, hi)` is mapped and readable for the whole cycle.
    pub unsafe fn range(&mut self, lo: *const u8, hi: *const u8) {
        (self.sink)(lo as usize, hi as usize);
    }

    /// Scans the heap block that contains `ptr` (e.g. a G struct) conservatively, whole.
    pub fn block(&mut self, ptr: *const u8) {
        if let Some(block) = goro_alloc::find_block(ptr as usize) {
            let start = block.start as usize;
            (self.sink)(start, start + block.size);
        }
    }
}

struct Installed(&'static dyn Mutators);

static MUTATORS: AtomicPtr<Installed> = AtomicPtr::new(core::ptr::null_mut());

/// Makes `mutators` the world the collector stops and scans.
///
/// # Panics
/// Panics if another `Mutators` is installed.
pub fn install(mutators: &'static dyn Mutators) {
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
pub fn uninstall() {
    MUTATORS.swap(core::ptr::null_mut(), Ordering::AcqRel);
}

pub(crate) fn current() -> Option<&'static dyn Mutators> {
    // Acquire: pairs with the AcqRel in `install`.
    let installed = MUTATORS.load(Ordering::Acquire);
    // SAFETY: a non-null pointer came from `Box::into_raw` in `install` and is never freed.
    (!installed.is_null()).then(|| unsafe { (*installed).0 })
}

thread_local! {
    static IS_MUTATOR: Cell<bool> = const { Cell::new(false) };
}

/// Registration of the current thread as a mutator thread (one whose stack the installed
/// [`Mutators`] reports). Dropping it ends the registration.
pub struct MutatorThread {
    _not_send: core::marker::PhantomData<*const ()>,
}

impl MutatorThread {
    /// Registers the current thread.
    pub fn register() -> MutatorThread {
        IS_MUTATOR.with(|flag| flag.set(true));
        MutatorThread {
            _not_send: core::marker::PhantomData,
        }
    }
}

impl Drop for MutatorThread {
    fn drop(&mut self) {
        IS_MUTATOR.with(|flag| flag.set(false));
    }
}

#[inline]
pub(crate) fn is_mutator_thread() -> bool {
    IS_MUTATOR.try_with(Cell::get).unwrap_or(false)
}
