//! Root listing for the collector: every goroutine's G block, its stack from the saved stack
//! pointer up (or the bytes sysmon stashed), and its stack segments ([`RootRange`]), read under
//! [`RootsLock`] with the world stopped, or, for goroutines parked at a cycle's start, with the
//! world going, each held parked while it is read ([`for_each_parked_goroutine`]).

use crate::lock::{RankedGuard, lock};
use crate::runtime2::{GRef, GStatus, NO_HOME, current_sched};
use std::sync::atomic::Ordering;

/// Memory the collector must scan for one goroutine.
#[derive(Clone, Copy, Debug)]
pub enum RootRange {
    /// A heap block owned by the runtime (a G struct, holding the closure of a goroutine that has
    /// not run yet): scan it whole.
    Block(*const u8),
    /// The live part of a switched-out goroutine's stack, from its saved stack pointer (which
    /// points at its saved registers) to the top. For a goroutine that was running when its
    /// thread was stopped, the saved pointer is stale and may lie outside the stack: the
    /// collector scans such a range only if it lies within one stack slot, and finds the live
    /// frames through the stopped thread's own stack pointer.
    Stack {
        /// The saved stack pointer.
        lo: *const u8,
        /// The top of the stack.
        hi: *const u8,
    },
    /// The bytes of a parked goroutine's stack that sysmon stashed in the heap (its stack pages
    /// are released): `[lo, hi)` holds `[sp, top)` as it was.
    Stashed {
        /// First stashed byte.
        lo: *const u8,
        /// One past the last.
        hi: *const u8,
    },
}

/// Every goroutine of the running runtime, held still for a collection: the `allg` lists are
/// locked (sysmon stashes under them, threads that are not Ms add Gs under them), so a stopped
/// thread cannot be holding one. Take it *before* stopping threads that do not reach a safe point
/// and drop it after they resume.
pub struct RootsLock {
    lists: Vec<RankedGuard<'static, Vec<GRef>>>,
}

impl RootsLock {
    /// Locks the goroutine lists of the running runtime.
    ///
    /// # Panics
    /// Panics if no runtime runs or its world is not stopped.
    ///
    /// # Safety
    /// May be called only inside the closure of [`crate::stop_the_world`] or
    /// [`crate::stop_the_world_from_thread`] (no goroutine runs
    /// but on threads the caller stops by other means before calling [`RootsLock::for_each`]),
    /// and the value must be dropped before that closure returns.
    #[allow(
        clippy::new_without_default,
        reason = "locking is not a default value: it may only happen with the world stopped"
    )]
    pub unsafe fn new() -> RootsLock {
        let sched = current_sched().expect("RootsLock::new outside a goro runtime");
        assert!(
            sched.stopping.load(Ordering::SeqCst),
            "RootsLock::new with the world running"
        );
        RootsLock {
            lists: sched.allg.iter().map(lock).collect(),
        }
    }

    /// Reports the roots of every goroutine. Allocates nothing and takes no lock.
    pub fn for_each(&self, visit: &mut dyn FnMut(RootRange)) {
        roots_of(&self.lists, visit);
    }

    /// Reports the roots of every goroutine but those parked now, which
    /// [`for_each_parked_goroutine`] reads once the world runs again. Allocates nothing and
    /// takes no lock.
    pub fn for_each_but_parked(&self, visit: &mut dyn FnMut(RootRange)) {
        roots_but_parked(&self.lists, true, visit);
    }
}

pub(crate) fn roots_of(lists: &[RankedGuard<'_, Vec<GRef>>], visit: &mut dyn FnMut(RootRange)) {
    roots_but_parked(lists, false, visit);
}

/// [`roots_of`], leaving out the goroutines parked now if `leave_parked`.
fn roots_but_parked(
    lists: &[RankedGuard<'_, Vec<GRef>>],
    leave_parked: bool,
    visit: &mut dyn FnMut(RootRange),
) {
    for g in lists.iter().flat_map(|list| list.iter()) {
        let gg = g.g();
        // Acquire: pairs with the release in `destroy`. A dead G holds nothing live (its stale
        // bytes would only keep garbage alive); one that is being reused by a spawner is not
        // possible here, since spawners on Ms are stopped goroutines.
        if gg.status(Ordering::Acquire) == GStatus::Dead {
            continue;
        }
        // An M in g0 code may ready it meanwhile: then neither this pause nor
        // `for_each_parked_goroutine` reads it, and the cycle's termination finds its roots.
        if leave_parked && gg.parked_stack.is_parked() {
            continue;
        }
        // The world stays stopped (or the runtime is over) until the collection ends, and we
        // hold the G's allg list's lock: its M cannot take stashed bytes back, sysmon does not
        // stash (`release_parked_stacks`), and the G cannot exit.
        // SAFETY: so the G is switched out, its stack fields are stable and its stacks and
        // stashed bytes stay until `visit` is done.
        unsafe { report_goroutine(*g, visit) };
    }
}

/// Reports one goroutine's G block and stacks.
///
/// # Safety
/// The goroutine is switched out and stays so until `visit` has returned for the last time; its
/// stacks stay mapped meanwhile, and stashed bytes allocated.
unsafe fn report_goroutine(g: GRef, visit: &mut dyn FnMut(RootRange)) {
    let gg = g.g();
    visit(RootRange::Block(g.as_ptr().cast::<u8>()));
    // SAFETY: the caller's contract: the G's stack fields are stable.
    if let Some(stack) = unsafe { gg.current_stack() } {
        // SAFETY: as above.
        let sp = unsafe { *gg.sp.get() };
        // A stashed goroutine's roots are its stashed bytes (the trap may put them back
        // meanwhile, but never frees them).
        // SAFETY: the caller's contract: the bytes stay allocated.
        visit(match unsafe { stack.stashed_bytes() } {
            Some(bytes) => RootRange::Stashed {
                lo: bytes.as_ptr(),
                hi: bytes.as_ptr_range().end,
            },
            None => RootRange::Stack {
                lo: sp.0.cast_const(),
                hi: stack.top().cast_const(),
            },
        });
    }
    // The stacks the goroutine grew from, each from where it left it.
    // SAFETY: as above.
    let segments = unsafe { &*gg.segments.get() };
    for (i, segment) in segments.iter().enumerate() {
        let below = match i {
            // SAFETY: as above.
            0 => unsafe { (*gg.stack.get()).as_ref() },
            _ => Some(&segments[i - 1].stack),
        };
        if let Some(below) = below {
            visit(RootRange::Stack {
                lo: segment.caller_sp.0,
                hi: below.top(),
            });
        }
    }
}

/// Goroutines looked at under one lock acquisition of an allg list by
/// [`for_each_parked_goroutine`]: a spawner on the list's P waits at most this many reads.
const PARKED_CHUNK: usize = 32;

/// Reports the roots of every goroutine of the running runtime that is parked now (those
/// [`RootsLock::for_each_but_parked`] left out), with the world going, one goroutine at a
/// time. Each is held parked while `visit` reads its roots: its M waits if it wants to resume
/// it meanwhile, so the ranges stay mapped and the goroutine's own frames unchanged until
/// `visit` returns (a waker may still write into a record on its stack or in its G, and a
/// thread it lent a local to may write that local). A goroutine that is not parked when its
/// turn comes (it was readied, or the runtime migrates goroutines and its parks publish
/// nothing) is left out. The ranges may not be read after `visit` returns.
pub fn for_each_parked_goroutine(visit: &mut dyn FnMut(RootRange)) {
    let Some(sched) = current_sched() else {
        return;
    };
    for list in sched.allg.iter() {
        let mut index = 0;
        loop {
            // Taken again for each chunk: sysmon stashes under it, spawners add Gs under it.
            let gs = lock(list);
            let Some(chunk) = gs.get(index..(index + PARKED_CHUNK).min(gs.len())) else {
                break;
            };
            if chunk.is_empty() {
                break;
            }
            index += chunk.len();
            for g in chunk {
                let gg = g.g();
                let home = gg.home.load(Ordering::Relaxed);
                if home == NO_HOME || gg.status(Ordering::Acquire) == GStatus::Dead {
                    continue;
                }
                let mut read = || {
                    // SAFETY: `while_parked` holds the goroutine parked (switched out, its stack
                    // fields unchanged, its stashed bytes, if any, left alone by sysmon) until
                    // this closure returns.
                    unsafe { report_goroutine(*g, visit) }
                };
                // SAFETY: the first closure locks the ready queue of the M read as the
                // goroutine's home; the second says whether that M is its home now.
                unsafe {
                    gg.parked_stack.while_parked(
                        || lock(&sched.ms[home].ready),
                        || gg.home.load(Ordering::Relaxed) == home,
                        &mut read,
                    )
                };
            }
        }
    }
}
