//! Root listing for the collector: every goroutine's G block, its stack from the saved stack
//! pointer up (or the bytes sysmon stashed), and its stack segments ([`RootRange`]), read under
//! [`RootsLock`] with the world stopped.

use crate::lock::{RankedGuard, lock};
use crate::runtime2::{GRef, GStatus, current_sched};
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
}

pub(crate) fn roots_of(lists: &[RankedGuard<'_, Vec<GRef>>], visit: &mut dyn FnMut(RootRange)) {
    for g in lists.iter().flat_map(|list| list.iter()) {
        let gg = g.g();
        // Acquire: pairs with the release in `destroy`. A dead G holds nothing live (its stale
        // bytes would only keep garbage alive); one that is being reused by a spawner is not
        // possible here, since spawners on Ms are stopped goroutines.
        if gg.status(Ordering::Acquire) == GStatus::Dead {
            continue;
        }
        visit(RootRange::Block(g.as_ptr().cast::<u8>()));
        // SAFETY: the world is stopped (or the runtime is over), so the G is switched out and
        // its stack fields are stable; we hold its allg list's lock, so sysmon is not stashing
        // it.
        if let Some(stack) = unsafe { gg.current_stack() } {
            // SAFETY: as above.
            let sp = unsafe { *gg.sp.get() };
            // A stashed goroutine's roots are its stashed bytes (the trap may put them back
            // meanwhile, but never frees them).
            // SAFETY: until the collection ends the world stays stopped, so its M cannot take
            // the bytes back, sysmon does not stash (`release_parked_stacks`), and it cannot
            // exit.
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
}
