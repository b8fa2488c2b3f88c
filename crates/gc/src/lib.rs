//! goro-gc: `Gc<T>` objects and the collector that reclaims them.
//!
//! Vocabulary (Go's `mgc.go`): an *object* is a value behind a `Gc<T>`, living in a slot of a
//! Gc-kind span of goro-alloc; a *root* is memory outside the collected heap that may hold pointers
//! to objects (goroutine stacks and their saved registers, the scheduler's G structs, blocks of the
//! malloc heap reachable from those); *marking* finds every object reachable from the roots;
//! *sweeping* drops and frees every object that marking did not reach.
//!
//! A cycle marks concurrently, between two short pauses (docs/gc.md has the steps):
//!
//! 1. A cycle starts when the Gc heap has grown most of the way to its goal (GOGC percent over
//!    what the last cycle found live; see [`pacer`]), or on [`collect`], on any thread.
//! 2. The first pause: the [`Mutators`] implementation (the `goro` facade, joining the collector
//!    to the scheduler) stops every goroutine at a safe point and every other thread of the
//!    process by signal; the collector clears the marks, turns the write barrier on (`barrier`)
//!    and scans the roots *conservatively*: every aligned word that resolves, through
//!    goro-alloc's arena index, to an allocated slot marks it.
//! 3. Marking, with the world going, on the mark worker thread (`worker`) and, with two or more
//!    Ps, a helper thread (`helper`): a Gc object is traced *precisely* through its [`Trace`]
//!    impl; a malloc block is scanned conservatively over its whole allocation (a `Box`, a `Vec`
//!    buffer, a channel's queue). Objects allocated meanwhile are black; `GcCell` borrows log
//!    what they leave behind.
//! 4. Mark termination, the second pause: everything without a barrier (roots, marked malloc
//!    blocks, objects open borrows may have written) is scanned again and the log drained.
//! 5. With the world going again: weak pointers and cleanups of the dead are settled (`special`),
//!    the unmarked objects are condemned, and a sweeper thread drops and frees them, running drop
//!    glue outside the stopped world; the pacer sets the next goal.
//!
//! Object layout (the slot convention of goro-alloc: the last word of a Gc slot is ours):
//!
//! ```text
//!  slot start = Gc<T> pointer                                   slot + elem_size
//!  |                                                            |
//!  v                                                            v
//!  +---------------------------+---------------+----------------+
//!  | T (at offset 0)           | padding       | header word    |
//!  +---------------------------+---------------+----------------+
//!                                               &'static VTable | IMMORTAL, CONDEMNED bits; 0 = free
//! ```
//!
//! The header sits at the *end* so that a pointer one past the end of `T` (an exhausted slice
//! iterator over an array field, say) still resolves to the same slot.
//!
//! The files form layers, none importing one above it: `header` (the header word's bits),
//! `workbuf`, `pacer`, `roots`, `sweeper` (a thread that runs the jobs it is handed) at the
//! bottom; `mark` (the work list and the conservative scan) and `barrier` (the write barrier's
//! log); `trace` (the `Trace` trait and `Tracer`) and `cell`; `object` (the per-type table);
//! `helper` (draining the work list, with a second thread when the runtime has two Ps) and
//! `worker` (the mark worker thread); `checkmark`; `special` (the registries of weak pointers
//! and cleanups); `collector` (a cycle: the pauses, marking, condemning and freeing, sweeping);
//! `ptr` (`Gc<T>`, whose `new` may start a cycle); `weak` (`Weak` and `add_cleanup`) and `atomic`
//! (`AtomicGc`).

#![deny(unsafe_op_in_unsafe_fn)]

mod atomic;
mod barrier;
mod cell;
mod checkmark;
mod collector;
mod header;
mod helper;
mod mark;
mod object;
pub mod pacer;
mod ptr;
mod roots;
#[cfg(all(test, loom))]
mod session_model;
mod special;
mod stats;
mod sweeper;
mod trace;
mod tracked;
mod weak;
mod workbuf;
mod worker;

/// A value alone on its cache lines (a pair of them, against the adjacent-line prefetcher), for
/// hot statics: the linker places statics side by side in an order any change to the crate may
/// shuffle, and a flag every allocation reads sharing a line with a word the mark worker writes
/// for every object it marks made binary_trees a third slower (BENCHMARKS.md).
#[repr(C, align(128))]
pub(crate) struct Alone<T>(pub(crate) T);

impl<T> core::ops::Deref for Alone<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

pub use atomic::AtomicGc;
pub use cell::{BorrowError, GcCell, GcRef, GcRefMut};
pub use collector::{
    CollectorThreads, POISON, collect, collector_threads, is_busy, is_collector_thread, keep_alive,
    retire, set_checkmark, set_clobber_free, set_stress, wait_for_retirement,
    wait_for_retirement_at_exit, wait_until_retirement_decided,
};
pub use helper::{HelperThreads, MAX_HELPERS, helper_threads, start_mark_helpers};
pub use mark::set_scan_unaligned;
pub use pacer::{set_memory_limit, set_percent};
pub use ptr::Gc;
pub use roots::{Cleanups, Mutators, RootVisitor, install, uninstall};
pub use stats::{GcStats, set_trace, stats};
pub use sweeper::sweeper_thread_id;
pub use trace::{Trace, Tracer};
pub use tracked::set_track_writes;
pub use weak::{Cleanup, Weak, add_cleanup};
pub use worker::worker_thread_id;
