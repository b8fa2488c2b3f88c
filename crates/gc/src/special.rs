//! What the collector does for an object beyond keeping or freeing it (Go's "specials"): the
//! registries behind weak pointers (`Weak`, Go's `weak.Pointer`) and cleanups (`add_cleanup`,
//! Go's `runtime.AddCleanup`), both in weak.rs.
//!
//! Both are kept in registries of their own, keyed by the object's address *hidden* (its bitwise
//! complement, a non-canonical address no scan takes for a pointer), so that being registered
//! keeps nothing alive. The registries live in the malloc heap behind statics, which every
//! cycle scans (the [`Mutators`](crate::Mutators) contract): what a cleanup will be handed is
//! reachable until it has run.
//!
//! # When an object's specials are settled
//!
//! Marks are final once mark termination ends, and no object is freed before condemning, which
//! follows it with the world going. Between the two, the *deciding window*, the collector's mark
//! worker [`settle`]s: it clears the weak pointers of every unmarked object and queues the
//! cleanups of every unmarked object; then condemning frees them. The world runs through the
//! window, so `Weak::upgrade` must not hand out an object the window finds dead:
//!
//! - [`STATE`] counts the window's edges: termination makes it odd (with the world stopped),
//!   the end of the settling makes it even again, after every dead object's pointers are
//!   cleared.
//! - `upgrade` reads the state, then the pointer, then the state again, and retries when the two
//!   reads differ: between them no termination ran, so either the pointer was read after the
//!   last settling cleared it (it reads 0 then), or the object was marked by the last
//!   termination and lives; inside the window (odd state) the object's mark decides. Once the
//!   second read is made the upgraded `Gc` sits in the caller's registers or stack, where every
//!   later termination finds it.
//! - A thread stopped by a termination between its two reads (with the object's address only in
//!   the hidden form, which no scan can see) finds the state changed and reads the pointer again.
//!
//! A retirement (the end of a runtime) settles the same way, but leaks the cleanups of the
//! objects it frees instead of running them: no goroutine is left to run them on, and Go makes
//! no promise to run cleanups before a program exits either.

use crate::roots::{Cleanups, Mutators};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The deciding window's edge count: odd from mark termination until the settling is done.
static STATE: AtomicU64 = AtomicU64::new(0);

/// An object's address as the registries keep it: its complement, which no conservative scan
/// resolves to a heap block (on x86-64 and AArch64 it is not even a canonical address).
#[inline]
fn hide(address: usize) -> usize {
    !address
}

#[inline]
fn reveal(hidden: usize) -> usize {
    !hidden
}

/// Whether the object at `address` was marked by the last termination.
fn marked(address: usize) -> bool {
    goro_alloc::find_block(address).is_some_and(|block| block.is_marked())
}

/// Locks a registry; a panic while one was held (an allocation failure) leaves it consistent.
fn lock<T>(registry: &Mutex<T>) -> MutexGuard<'_, T> {
    registry.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The shared part of every weak pointer made from one object: the object's hidden address, or
/// 0 once the object is dead.
pub(crate) struct WeakSlot {
    hidden: AtomicUsize,
}

impl WeakSlot {
    /// The slot of the object at `address`, which the caller holds a `Gc` to.
    pub(crate) fn of(address: usize) -> Arc<WeakSlot> {
        let hidden = hide(address);
        lock(&WEAK_SLOTS)
            .get_or_insert_with(HashMap::new)
            .entry(hidden)
            .or_insert_with(|| {
                Arc::new(WeakSlot {
                    hidden: AtomicUsize::new(hidden),
                })
            })
            .clone()
    }

    /// The object's address if it lives (see the module docs).
    pub(crate) fn upgrade(&self) -> Option<usize> {
        loop {
            // SeqCst (all four accesses): the two state reads must bracket the slot's read in
            // the single order that also holds the collector's state changes and its clearing.
            let before = STATE.load(Ordering::SeqCst);
            let hidden = self.hidden.load(Ordering::SeqCst);
            if hidden == 0 {
                return None;
            }
            let address = reveal(hidden);
            // Inside the deciding window the mark decides: condemning has not begun, so the
            // slot still holds the object the weak pointer was made from.
            let dead = before % 2 == 1 && !marked(address);
            // Keeps `address` in a register or on the stack from here on, where a termination
            // that comes before the next read would find it.
            let address = core::hint::black_box(address);
            if STATE.load(Ordering::SeqCst) != before {
                continue;
            }
            return (!dead).then_some(address);
        }
    }

    /// The object's address, or `None` once it is dead, as last written (for `Debug`).
    pub(crate) fn peek(&self) -> Option<usize> {
        let hidden = self.hidden.load(Ordering::Relaxed);
        (hidden != 0).then(|| reveal(hidden))
    }
}

/// The weak slot of every object that has one, by hidden address.
static WEAK_SLOTS: Mutex<Option<HashMap<usize, Arc<WeakSlot>>>> = Mutex::new(None);

/// A cleanup waiting for its object to die.
struct Registered {
    hidden: usize,
    run: Box<dyn FnOnce() + Send>,
}

/// Every registered cleanup, by its id.
static CLEANUPS: Mutex<Option<HashMap<u64, Registered>>> = Mutex::new(None);
/// Ids for `Cleanup` handles.
static NEXT_CLEANUP: AtomicU64 = AtomicU64::new(1);

/// Registers `run` to be queued once the object at `address` dies; returns its id.
pub(crate) fn register_cleanup(address: usize, run: Box<dyn FnOnce() + Send>) -> u64 {
    let id = NEXT_CLEANUP.fetch_add(1, Ordering::Relaxed);
    let registered = Registered {
        hidden: hide(address),
        run,
    };
    lock(&CLEANUPS)
        .get_or_insert_with(HashMap::new)
        .insert(id, registered);
    id
}

/// Removes the cleanup `id` if its object has not been found dead yet; the closure is dropped
/// by the caller, outside the lock.
pub(crate) fn cancel_cleanup(id: u64) -> Option<Box<dyn FnOnce() + Send>> {
    lock(&CLEANUPS)
        .as_mut()
        .and_then(|cleanups| cleanups.remove(&id))
        .map(|registered| registered.run)
}
/// Cleanups whose objects died, in the order their cycles found them, waiting to run.
static READY: Mutex<VecDeque<Box<dyn FnOnce() + Send>>> = Mutex::new(VecDeque::new());
/// Whether a [`Cleanups`] runner exists (one runs at a time, as Go's cleanup goroutine).
static RUNNING: AtomicBool = AtomicBool::new(false);

impl Cleanups {
    /// Runs the queued cleanups one by one on the calling thread until none is left.
    pub fn run(mut self) {
        self.ran = true;
        loop {
            let next = lock(&READY).pop_front();
            match next {
                Some(cleanup) => cleanup(),
                None => break,
            }
        }
        // `Drop` gives the right back, and takes it again if a cleanup was queued meanwhile.
    }
}

impl Drop for Cleanups {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
        // A settling that queued cleanups after our last look found RUNNING set and left them
        // to us: look again (SeqCst pairs with `settle`'s store-then-check). Only after a run:
        // a runner dropped unrun (its hand-over failed) would hand itself over again for ever.
        if self.ran
            && !lock(&READY).is_empty()
            && let Some(mutators) = crate::roots::current()
            && let Some(runner) = claim_runner()
        {
            mutators.cleanups_ready(runner);
        }
    }
}

/// Whether cleanups are queued or being run (which may wake goroutines).
pub(crate) fn cleanups_pending() -> bool {
    RUNNING.load(Ordering::SeqCst) || !lock(&READY).is_empty()
}

/// A runner, if none exists.
fn claim_runner() -> Option<Cleanups> {
    RUNNING
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
        .then_some(Cleanups { ran: false })
}

/// Opens the deciding window: called by mark termination, with the world stopped.
pub(crate) fn open_window() {
    let was = STATE.fetch_add(1, Ordering::SeqCst);
    debug_assert_eq!(was % 2, 0, "a deciding window opened twice");
}

/// Settles the specials of every object the last termination left unmarked, then closes the
/// deciding window. Runs with the world going, before anything unmarked is freed. A cycle
/// hands the cleanups it queued to `mutators` to run; a retirement leaks them.
pub(crate) fn settle(mutators: Option<&dyn Mutators>) {
    if let Some(slots) = lock(&WEAK_SLOTS).as_mut() {
        slots.retain(|&hidden, slot| {
            let alive = marked(reveal(hidden));
            if !alive {
                // SeqCst: ordered before the window closes (see `Weak::upgrade`).
                slot.hidden.store(0, Ordering::SeqCst);
            }
            alive
        });
    }
    let mut dead = Vec::new();
    if let Some(cleanups) = lock(&CLEANUPS).as_mut() {
        cleanups.retain(|_, registered| {
            let alive = marked(reveal(registered.hidden));
            if !alive {
                dead.push(core::mem::replace(&mut registered.run, Box::new(|| {})));
            }
            alive
        });
    }
    let closed = STATE.fetch_add(1, Ordering::SeqCst);
    debug_assert_eq!(closed % 2, 1, "a deciding window closed that was not open");
    match mutators {
        Some(mutators) if !dead.is_empty() => {
            lock(&READY).extend(dead);
            if let Some(runner) = claim_runner() {
                mutators.cleanups_ready(runner);
            }
        }
        Some(_) => {}
        None => {
            // Leaked, not dropped: the argument's drop glue is user code, which must not run on
            // the collector's threads, and a retirement has no goroutine left to run it on. The
            // queue goes the same way, and a runner the runtime abandoned gives its right back.
            dead.into_iter().for_each(core::mem::forget);
            core::mem::take(&mut *lock(&READY))
                .into_iter()
                .for_each(core::mem::forget);
            RUNNING.store(false, Ordering::SeqCst);
        }
    }
}
