//! goro-sched: goroutines scheduled M:P:G over OS threads, channels, and the sync primitives that
//! park goroutines instead of threads.
//!
//! Vocabulary (Go's `proc.go`):
//!
//! - **G**: a goroutine: a closure, a stack slot of goro-stack, and the stack pointer saved when it
//!   is switched out.
//! - **M**: a worker thread. Its own OS stack is *g0*, the system stack: the scheduler loop runs
//!   there, and goroutines switch to it to block, yield or exit.
//! - **P**: a processor: the right to run Go code, and a local run queue. There are GOMAXPROCS Ps.
//!
//! Ms and Ps are separate: an M holds a P while it runs goroutines, hands it back when it blocks
//! in [`blocking`] or goes idle, and takes a free one (or waits for one) to run again. Scheduling:
//!
//! 1. `go(f)` makes a G and puts it on the current P's local queue (the global queue from threads
//!    that are not Ms, or when the local queue holds more than [`LOCAL_QUEUE_SOFT_LIMIT`]), then
//!    wakes an idle M so it can steal.
//! 2. An M's loop takes work in this order: the global queue first on every 61st tick (fairness, as
//!    in Go), its local queue, the global queue, stealing half of another P's queue; then it parks
//!    on its own futex-backed parker until woken.
//! 3. **Migration rule** (docs/design.md, section 3): a goroutine may move to another M only before it
//!    first runs. Its stack may hold `!Send` values and thread-local addresses once it has run, so
//!    after the first run it is *bound* to that M: when readied it goes back to that M's P, and
//!    stealing takes only Gs that have never run.
//! 4. A goroutine blocks by *parking*: it queues itself where a waker will find it (a channel's
//!    wait queue, a join handle), then switches to g0, which releases the lock the goroutine held
//!    (Go's `gopark(unlockf)`), so no waker can see the goroutine before its registers are saved.
//!    Blocking operations called outside a goroutine park the OS thread instead.
//! 5. The collector stops the world by raising a flag that every goroutine polls at safe points
//!    (channel operations, spawn, yield, join, `Gc` allocation batches); a goroutine at a safe point
//!    switches to g0 and waits there, so its stack is scannable from its saved stack pointer.
//!
//! 6. Stacks: a goroutine's slot is committed as it is touched; [`stack::maybe_grow`] continues
//!    deep code on segments; sysmon gives back the stack memory of long-parked goroutines
//!    (`shrink`).
//!
//! Rejected: signal-based preemption (unsound to switch inside a handler); sysmon sets a preempt
//! flag that goroutines check at safe points instead.

#![deny(unsafe_op_in_unsafe_fn)]

// The files, in layers: each imports only files of the layers above it in this list, so there
// is no import cycle. (Inherent impls follow the same rule: `runtime2` declares `Locals` and
// `Segment`, whose behaviour `local` and `grow` add.)
//
//   leaves     sync_prims, panic, config, lock (locks, ThreadParker), runq (generic), timer (heap)
//   per-G      shrink (ParkedStack)
//   types      runtime2 (G, M, P, Sched, GRef, Request, switch_to_g0)
//   behaviour  local, grow, roots, deadlock, stw
//   scheduler  proc
//   blocking   park (Waiter, park, sleep, wait_space), join, sync, chan
//   monitor    sysmon
//   entry      start (run, go)
pub mod chan;
mod config;
mod deadlock;
pub mod stack {
    //! Growing a goroutine's stack past its slot: see [`maybe_grow`].
    pub use crate::grow::{maybe_grow, remaining_stack};
}
mod grow;
#[cfg(all(test, loom))]
mod idle_model;
mod join;
mod local;
mod lock;
mod panic;
mod park;
mod proc;
mod roots;
mod runq;
mod runtime2;
mod shrink;
mod start;
mod stw;
pub mod sync;
mod sync_prims;
mod sysmon;
mod timer;

pub use config::{Config, DEFAULT_MAX_STACK_SIZE, MAX_PROCS, Promised};
pub use goro_alloc::{futex_wait, futex_wake};
pub use join::{JoinHandle, Panic};
pub use local::Local;
pub use park::sleep;
pub use proc::{LOCAL_QUEUE_SOFT_LIMIT, blocking, release_stack_memory, set_max_procs, yield_now};
pub use roots::{RootRange, RootsLock, for_each_parked_goroutine};
pub use runtime2::{current_goroutine_id, idle_procs, is_goroutine, num_goroutine, procs};
pub use start::{Abandoned, AbandonedRoots, Finished, go, run, try_go};
pub use stw::{safe_point, stop_the_world, stop_the_world_from_thread};
pub use sysmon::TIME_SLICE;

/// Ends the calling goroutine (Go's `runtime.Goexit`): it unwinds, running destructors, and its
/// `JoinHandle` reports [`Panic::is_exit`].
///
/// # Panics
/// Panics when called outside a goroutine.
#[track_caller]
pub fn exit() -> ! {
    if !is_goroutine() {
        panic!("goro::exit called outside a goroutine");
    }
    std::panic::resume_unwind(Box::new(join::Goexit))
}
