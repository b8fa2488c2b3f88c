//! goro-gc: `Gc<T>` objects and the collector that reclaims them.
//!
//! Vocabulary (Go's `mgc.go`): an *object* is a value behind a `Gc<T>`, living in a slot of a
//! Gc-kind span of goro-alloc; a *root* is memory outside the collected heap that may hold pointers
//! to objects (goroutine stacks and their saved registers, the scheduler's G structs, blocks of the
//! malloc heap reachable from those); *marking* finds every object reachable from the roots;
//! *sweeping* drops and frees every object that marking did not reach.
//!
//! This version marks with the world stopped and sweeps with it going:
//!
//! 1. A cycle starts when the Gc heap has grown by GOGC percent over what the last cycle found live
//!    (see [`pacer`]), or on [`collect`], on any thread.
//! 2. The [`Mutators`] implementation (the `goro` facade, joining the collector to the scheduler)
//!    stops every goroutine at a safe point and every other thread of the process by signal, and
//!    runs the cycle on the system stack of one M.
//! 3. Mark bits of every span are cleared; the roots are scanned *conservatively*: every aligned word
//!    that resolves, through goro-alloc's arena index, to an allocated slot marks it. A Gc object
//!    found this way is traced *precisely* through its [`Trace`] impl; a malloc block is scanned
//!    conservatively in turn, over its whole allocation (it may be a `Box`, a `Vec` buffer or a
//!    channel's queue holding `Gc`s), but it is never freed by the collector. With two or more
//!    Ps a helper thread, left running by the stop, marks half of the work beside the collector
//!    (`helper`). Unmarked objects are condemned.
//! 4. The world restarts; sweeping drops and frees the condemned objects, running their drop glue
//!    outside the stopped world; the pacer sets the next goal.
//!
//! The concurrent collector (tri-color marking with the hybrid barrier, assists, background
//! workers) replaces steps 2-4 in a later issue; the interfaces here ([`Mutators`], [`Trace`],
//! [`GcCell`]) are the ones it keeps.
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
//! bottom; `mark` (the work list and the conservative scan); `trace` (the `Trace` trait and
//! `Tracer`) and `cell`; `object` (the per-type table); `helper` (draining the work list, with a
//! second thread when the runtime has two Ps); `collector` (a cycle: stop, mark,
//! condemn and free, sweep); `ptr` (`Gc<T>`, whose `new` may start a cycle).

#![deny(unsafe_op_in_unsafe_fn)]

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
mod stats;
mod sweeper;
mod trace;
mod workbuf;
mod worker;

pub use cell::{BorrowError, GcCell, GcRef, GcRefMut};
pub use collector::{POISON, collect, keep_alive, retire, set_checkmark, set_clobber_free};
pub use helper::{helper_thread_id, start_mark_helper};
pub use mark::set_scan_unaligned;
pub use pacer::{set_memory_limit, set_percent};
pub use ptr::Gc;
pub use roots::{Mutators, RootVisitor, install, uninstall};
pub use stats::{GcStats, set_trace, stats};
pub use sweeper::sweeper_thread_id;
pub use trace::{Trace, Tracer};
pub use worker::worker_thread_id;
