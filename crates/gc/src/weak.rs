//! Weak pointers ([`Weak`], Go's `weak.Pointer`) and cleanups ([`add_cleanup`], Go's
//! `runtime.AddCleanup`): the public face of special.rs, whose registries and deciding window
//! make them safe beside concurrent marking.

use crate::ptr::Gc;
use crate::special::{self, WeakSlot};
use crate::trace::{Trace, Tracer};
use core::fmt;
use core::hash::{Hash, Hasher};
use core::marker::PhantomData;
use std::sync::Arc;

/// A weak pointer to a collected object: Go's `weak.Pointer[T]`.
///
/// It does not keep the object alive. [`upgrade`](Weak::upgrade) gives a [`Gc`] to it as long
/// as the object lives, and `None` once a collection found it unreachable, from the moment that
/// collection's marking ended; both answers are consistent across threads (an upgrade that
/// races with the collection either keeps the object alive or sees it dead, never a freed one).
/// A weak pointer whose object lived through the end of its runtime stays valid, as the object
/// does.
///
/// Weak pointers made from the same object are equal, before and after it dies, as Go's are.
/// A `Weak` holds no `Gc`, so it can sit in a collected object (its [`Trace`] impl does
/// nothing): a cache of weak pointers keeps none of its entries alive.
pub struct Weak<T> {
    slot: Arc<WeakSlot>,
    _object: PhantomData<Gc<T>>,
}

// SAFETY: a `Weak<T>` hands out `Gc<T>`s on any thread that holds it: the same bounds as `Gc`'s.
unsafe impl<T: Send + Sync> Send for Weak<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Weak<T> {}

impl<T> Weak<T> {
    /// A weak pointer to `object` (Go's `weak.Make`).
    pub fn new(object: &Gc<T>) -> Weak<T> {
        Weak {
            slot: WeakSlot::of(object.as_ptr() as usize),
            _object: PhantomData,
        }
    }

    /// The object, if it still lives (Go's `Pointer.Value`).
    pub fn upgrade(&self) -> Option<Gc<T>> {
        let address = self.slot.upgrade()?;
        // SAFETY: the slot held the address of a live `T` made by `Gc::new` (`WeakSlot::upgrade`
        // returns only an object the last termination marked, or one newer).
        Some(unsafe { Gc::from_address(address) })
    }

    /// Whether the object is known to be dead (`upgrade` would give `None`). It upgrades to
    /// find out, which may leave the object's address in the caller's frame for a while: a loop
    /// that polls it between collections on one stack can keep the object alive (conservative
    /// scanning); poll from a goroutine of its own, or hold the answer of `upgrade` briefly.
    pub fn is_dead(&self) -> bool {
        self.upgrade().is_none()
    }
}

impl<T> Clone for Weak<T> {
    fn clone(&self) -> Self {
        Weak {
            slot: self.slot.clone(),
            _object: PhantomData,
        }
    }
}

impl<T> PartialEq for Weak<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.slot, &other.slot)
    }
}

impl<T> Eq for Weak<T> {}

impl<T> Hash for Weak<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.slot).hash(state);
    }
}

impl<T> fmt::Debug for Weak<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.slot.peek() {
            Some(address) => write!(f, "Weak({address:#x})"),
            None => f.write_str("Weak(dead)"),
        }
    }
}

// SAFETY: a `Weak` holds no `Gc` (only the hidden address), so it has nothing to trace; its drop
// glue releases an `Arc` of its own and touches no collected object.
unsafe impl<T> Trace for Weak<T> {
    fn trace(&self, _: &mut Tracer) {}
}

/// A cleanup registered with [`add_cleanup`]; [`stop`](Cleanup::stop) cancels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cleanup {
    id: u64,
}

impl Cleanup {
    /// Cancels the cleanup if it has not been queued to run yet (Go's `Cleanup.Stop`): its
    /// function and argument are dropped here, on the caller's thread. Once the object was
    /// found dead the call does nothing.
    pub fn stop(self) {
        // Dropped here, outside the registry's lock: the argument's drop glue is user code.
        drop(special::cancel_cleanup(self.id));
    }
}

/// Runs `cleanup(arg)` once, some time after `object` has become unreachable (Go 1.24's
/// `runtime.AddCleanup`).
///
/// The cleanup never sees the object: it gets only `arg`, and runs after the collection that
/// found the object dead, on a goroutine of its own that runs cleanups one at a time (so a
/// long one should hand its work to another goroutine). `arg` and the closure are kept alive
/// until then; if either reaches the object, the object never becomes unreachable and the
/// cleanup never runs (as in Go). Several cleanups may be added to one object; they run in no
/// particular order. Cleanups of objects still alive, or not yet run, when the runtime ends
/// are never run (their argument and closure are leaked, not dropped); a cleanup that panics
/// panics its goroutine, as any goroutine's panic does.
///
/// This is what a `Drop` impl would be for a collected type: `#[derive(Trace)]` rejects `Drop`,
/// since a drop could reach objects freed in the same sweep, while a cleanup reaches only what
/// its argument keeps alive.
///
/// # Panics
/// Panics if `arg` is a `Gc` to `object` itself (the cleanup could never run; Go panics too).
pub fn add_cleanup<T: 'static, A: Send + 'static>(
    object: &Gc<T>,
    arg: A,
    cleanup: impl FnOnce(A) + Send + 'static,
) -> Cleanup {
    if let Some(same) = (&arg as &dyn core::any::Any).downcast_ref::<Gc<T>>()
        && Gc::ptr_eq(same, object)
    {
        panic!(
            "goro::gc::add_cleanup: the argument is the object itself, which would keep it \
             reachable for ever: pass the cleanup what it needs instead"
        );
    }
    let id = special::register_cleanup(object.as_ptr() as usize, Box::new(move || cleanup(arg)));
    Cleanup { id }
}
