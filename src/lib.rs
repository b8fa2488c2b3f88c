//! goro: Go's runtime as a Rust library.
//!
//! Goroutines by the million on an M:P:G scheduler, channels, a size-class heap that is also the
//! process's global allocator, and `Gc<T>` objects reclaimed by a tracing collector whose roots
//! are found by scanning goroutine stacks.
//!
//! ```
//! use goro::{Gc, GcCell, Trace};
//!
//! #[global_allocator]
//! static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;
//!
//! #[derive(Trace)]
//! struct Node { value: u64, next: GcCell<Option<Gc<Node>>> }
//!
//! let sum = goro::run(|| {
//!     let (tx, rx) = goro::chan::channel(16);
//!     for i in 0..10 {
//!         let tx = tx.clone();
//!         goro::go(move || tx.send(Gc::new(Node { value: i, next: GcCell::new(None) })));
//!     }
//!     drop(tx);
//!     rx.iter().map(|node: Gc<Node>| node.value).sum::<u64>()
//! });
//! assert_eq!(sum, 45);
//! ```
//!
//! `select!`, `WaitGroup` and goroutine-local storage (the examples of `goro-derive` and
//! `goro-sched`, which cannot run in those crates):
//!
//! ```
//! # #[global_allocator]
//! # static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;
//! use std::cell::Cell;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! static CALLS: goro::Local<Cell<u32>> = goro::Local::new(|| Cell::new(0));
//!
//! let (first, got) = goro::run(|| {
//!     let wg = Arc::new(goro::sync::WaitGroup::new());
//!     let (tx, rx) = goro::chan::channel::<u32>(4);
//!     for i in 0..4 {
//!         let (wg, tx) = (wg.clone(), tx.clone());
//!         wg.add(1);
//!         goro::go(move || {
//!             // Each goroutine has its own counter.
//!             CALLS.with(|c| c.set(c.get() + 1));
//!             tx.send(i + CALLS.with(Cell::get));
//!             wg.done();
//!         });
//!     }
//!     wg.wait();
//!     let first = goro::select! {
//!         recv(rx) -> v => v,
//!         recv(goro::chan::after(Duration::from_secs(5))) -> _ => None,
//!     };
//!     // With `default`, select! never blocks: the timer is not due yet.
//!     let nothing_ready = goro::select! {
//!         recv(goro::chan::after(Duration::from_secs(5))) -> _ => false,
//!         default => true,
//!     };
//!     assert!(nothing_ready);
//!     (first, rx.len())
//! });
//! assert!(first.is_some_and(|v| (1..=4).contains(&v)));
//! assert_eq!(got, 3);
//! ```
//!
//! The pieces, one crate each: goro-alloc (the heap), goro-stack (goroutine stacks and the
//! context switch), goro-sched (Gs, Ms and Ps, channels, sync), goro-gc (`Gc<T>` and the
//! collector). This crate starts and stops a runtime ([`run`], [`Runtime`]) and joins the
//! collector to the scheduler: its `roots` module is the one place that knows both.

#![deny(unsafe_op_in_unsafe_fn)]

mod roots;
mod runtime;
mod world;

pub use goro_derive::{Trace, select};
pub use goro_gc::{Gc, GcCell};
/// Goroutine stacks that grow past their slot (Go's growable stacks, with the check written by
/// hand): [`maybe_grow`](stack::maybe_grow) runs the rest of a deep recursion on a new segment.
///
/// ```
/// #[global_allocator]
/// static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;
///
/// fn depth_sum(n: u64) -> u64 {
///     goro::stack::maybe_grow(64 * 1024, || if n == 0 { 0 } else { n + depth_sum(n - 1) })
/// }
/// // 1,000,000 frames: far beyond the goroutine's 1 MiB slot.
/// assert_eq!(goro::run(|| depth_sum(1_000_000)), 500_000_500_000);
/// ```
pub mod stack {
    pub use goro_sched::stack::{maybe_grow, remaining_stack};

    /// Starts the stash trap if this process may run it (once per process; later calls report
    /// the first one's outcome), or says why it cannot. The trap is what lets a runtime built
    /// with the `unsafe` [`Builder::stash_parked_stacks`](crate::Builder::stash_parked_stacks)
    /// stash: the live bytes of a goroutine parked for a second or so leave its stack for the
    /// heap and the whole stack's memory goes back to the OS, and anything in this process
    /// touching that stack meanwhile (a scoped thread reading a borrowed local, a `read(2)`
    /// into a buffer on it) waits while the bytes are put back. It needs the right to catch
    /// kernel-mode faults with `userfaultfd` (root, `CAP_SYS_PTRACE` or
    /// `vm.unprivileged_userfaultfd=1`); `GORO_DEBUG=stacktrap=off` keeps it off.
    ///
    /// The trap stashes nothing by itself: a runtime stashes only when built with one of the
    /// `unsafe` stash options; by default it releases only the pages below a long-parked
    /// goroutine's stack pointer. Once running, the trap serves the first touch of every
    /// fresh stack page below the top few (a few microseconds each, see docs/stacks.md).
    pub fn stash_trap() -> Result<(), String> {
        goro_stack::enable_stash_trap()
    }

    /// Whether the stash trap is running in this process, without starting it. The default
    /// runtime never starts it.
    pub fn stash_trap_running() -> bool {
        goro_stack::stash_trap_running()
    }

    /// How many times the stash trap has put a stashed stack back because something other than
    /// its goroutine touched it.
    pub fn trap_restores() -> u64 {
        goro_stack::trap_restores()
    }

    /// How many parked goroutines' stacks have been stashed in this process (0 unless a
    /// runtime was built with one of the `unsafe` stash options).
    pub fn stashes() -> u64 {
        goro_stack::stashes()
    }
}
pub use goro_sched::{
    JoinHandle, Local, Panic, blocking, exit, go, num_goroutine, set_max_procs, sleep, yield_now,
};
pub use runtime::{BuildError, Builder, Runtime, run};

/// Channels (Go's `chan T`): `channel(cap)`, `Sender`, `Receiver`.
pub mod chan {
    pub use goro_sched::chan::{
        __select, IntoIter, Iter, Receiver, Sender, TryRecvError, TrySendError, after, channel,
        tick,
    };
}

/// Synchronisation that parks goroutines, never OS threads.
pub mod sync {
    pub use goro_sched::sync::{
        Mutex, MutexGuard, Once, RwLock, RwLockReadGuard, RwLockWriteGuard, WaitGroup,
    };
}

/// The collector: `Gc<T>`, tracing, statistics and knobs (Go's `runtime` and `runtime/debug` GC
/// functions).
pub mod gc {
    pub use goro_gc::{
        AtomicGc, BorrowError, Cleanup, Gc, GcCell, GcRef, GcRefMut, GcStats, POISON, Trace,
        Tracer, Weak, add_cleanup, collect, keep_alive, pacer, set_checkmark, set_clobber_free,
        set_memory_limit, set_percent, set_scan_unaligned, set_stress, set_track_writes, stats,
        wait_for_retirement,
    };
}

/// The heap: the global allocator and its statistics.
pub mod alloc {
    pub use goro_alloc::{
        AllocStats, ClassStats, GoroAlloc, flush_thread_cache, release_memory, stats,
    };
}
