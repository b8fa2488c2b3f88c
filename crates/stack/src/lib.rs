//! Goroutine stacks for goro: lazily committed slots with guard pages, Go-style overflow
//! reports, memory release for parked goroutines, and the context switch.
//!
//! Vocabulary (Go's): a *G* (goroutine) runs on its own *stack*; a *context switch* saves the
//! registers of the running G and resumes another. This crate provides:
//!
//! - [`Stack`]: an owned slot of address space, `[limit, top)` usable, an inaccessible guard
//!   region just below `limit`. Slots are carved from large `MAP_NORESERVE` reservations (1,024
//!   slots each), so a stack costs address space, not memory: the kernel commits a page when the
//!   goroutine first touches it. That is how stacks *grow*: a slot is sized to the goroutine's
//!   maximum stack and fills in page by page; nothing ever moves (see docs/stacks.md, "Growth",
//!   for why and for what large maxima cost). Dropped stacks go to a per-thread cache, then to a
//!   pool per size (`slot.rs`).
//! - Overflow reported Go's way ([`install_overflow_handler`], [`prepare_thread`], `overflow.rs`):
//!   a fault in a slot's guard prints `goroutine N stack exceeds LIMIT-byte limit` and
//!   `fatal error: stack overflow` and exits with status 2; other faults go to the previous
//!   handler unchanged.
//! - Memory release: [`Stack::release_below`] for parked goroutines, [`trim`] for pooled slots,
//!   [`Stack::stash`] to keep only a parked goroutine's live bytes, with the stash trap
//!   ([`enable_stash_trap`], `trap.rs`) putting them back if anything else touches the stack
//!   (but not for I/O that pins pages: the scheduler stashes only where the user opted in).
//! - [`init_stack`] and [`switch`]: the context switch, in assembly per architecture (`arch/`).
//!   A suspended context's registers are pushed on its own stack, so `[saved sp, top)` is the
//!   whole state a conservative collector has to scan.
//!
//! One slot (the stack grows down from `top`, towards the guard):
//!
//! ```text
//!   top   +-----------------------+  16-byte aligned, one past the highest usable byte
//!         |  frames of the G      |  |  grows down
//!         |  ...                  |  v
//!   sp -> |  (saved registers)    |  the saved StackPointer of a suspended G
//!         |                       |
//!         |  untouched pages:     |  reserved, never committed until touched;
//!         |  no memory used       |  released again by release_below / trim / stash
//!  limit  +-----------------------+  lowest usable address
//!         |  guard (4 KiB)        |  MADV_GUARD_INSTALL or PROT_NONE: any access is SIGSEGV,
//!  base   +-----------------------+  reported as "goroutine N stack exceeds LIMIT-byte limit"
//! ```
//!
//! Guard pages (`guard.rs`): `MADV_GUARD_INSTALL` (Linux 6.13+) costs no VMA, so a million stacks
//! do not approach `vm.max_map_count`; where the kernel lacks it, `mprotect(PROT_NONE)` is used
//! within a VMA budget and running out is a [`StackError`] that says how to raise the limit.
//!
//! Example: run a function on a fresh stack and come back.
//!
//! ```
//! use goro_stack::{Stack, StackPointer, init_stack, switch};
//! use core::cell::Cell;
//!
//! struct Ctx { main: Cell<StackPointer>, co: Cell<StackPointer>, out: Cell<u64> }
//!
//! unsafe extern "C" fn entry(arg: usize) -> ! {
//!     // SAFETY: `arg` is the address of the Ctx in main, which outlives this context.
//!     let ctx = unsafe { &*(arg as *const Ctx) };
//!     ctx.out.set((1..=10).product());
//!     // Switch away for the last time; nothing resumes this context again.
//!     // SAFETY: main's pointer was saved by its switch and is resumed once.
//!     unsafe { switch(ctx.co.as_ptr(), ctx.main.get()) };
//!     unreachable!()
//! }
//!
//! let stack = Stack::new()?;
//! let null = StackPointer(core::ptr::null_mut());
//! let ctx = Ctx { main: Cell::new(null), co: Cell::new(null), out: Cell::new(0) };
//! // SAFETY: the stack is fresh and outlives the context; the context is resumed once.
//! unsafe {
//!     ctx.co.set(init_stack(stack.top(), entry, &ctx as *const Ctx as usize));
//!     switch(ctx.main.as_ptr(), ctx.co.get());
//! }
//! assert_eq!(ctx.out.get(), 3_628_800);
//! # Ok::<(), goro_stack::StackError>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

mod arch;
mod guard;
mod os;
mod overflow;
mod slot;
mod stash;
mod trap;

pub use arch::{StackPointer, init_stack, switch};
pub use guard::{GuardKind, guard_kind};
pub use overflow::{install_overflow_handler, prepare_thread};
pub use slot::adapt_stack_prefill;
pub use slot::{DEFAULT_STACK_SIZE, GUARD_SIZE, RED_ZONE, Stack, slot_bounds, trim};
pub use stash::{MAX_STASH, enable_stash_trap, stashes, trap_restores};
pub use trap::trap_thread_id;

use std::fmt;
use std::io;

/// Whether the stash trap is running in this process (started by [`enable_stash_trap`]),
/// without starting it. Every stack reservation is then registered with it.
pub fn stash_trap_running() -> bool {
    trap::fd().is_some()
}

/// Why a stack could not be allocated. Its message names the cause and the fix.
#[derive(Debug)]
pub struct StackError {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    /// `mmap` of a reservation failed.
    Reserve { bytes: usize, err: io::Error },
    /// Installing a guard failed for a reason other than the VMA budget.
    Guard { err: io::Error },
    /// The mprotect fallback would exceed `vm.max_map_count`.
    VmaBudget { max_map_count: usize, guards: usize },
    /// The requested size is absurd.
    TooLarge { requested: usize },
    /// The static table of reservations is full.
    TooManyChunks { max: usize },
}

impl StackError {
    pub(crate) fn reserve(bytes: usize, err: io::Error) -> StackError {
        StackError {
            kind: ErrorKind::Reserve { bytes, err },
        }
    }

    pub(crate) fn guard(err: io::Error) -> StackError {
        StackError {
            kind: ErrorKind::Guard { err },
        }
    }

    pub(crate) fn vma_budget(max_map_count: usize, guards: usize) -> StackError {
        StackError {
            kind: ErrorKind::VmaBudget {
                max_map_count,
                guards,
            },
        }
    }

    pub(crate) fn too_many_chunks(max: usize) -> StackError {
        StackError {
            kind: ErrorKind::TooManyChunks { max },
        }
    }

    pub(crate) fn too_large(requested: usize) -> StackError {
        StackError {
            kind: ErrorKind::TooLarge { requested },
        }
    }
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Reserve { bytes, err } => write!(
                f,
                "goro: cannot reserve {bytes} bytes of address space for goroutine stacks: {err}; \
                 check `ulimit -v` (virtual memory limit) and vm.overcommit_memory (mode 2 \
                 refuses MAP_NORESERVE reservations), or use smaller stacks"
            ),
            ErrorKind::Guard { err } => write!(
                f,
                "goro: cannot install the guard page of a goroutine stack: {err}; \
                 if MADV_GUARD_INSTALL misbehaves on this kernel, set \
                 GORO_DEBUG=stackguard=mprotect"
            ),
            ErrorKind::VmaBudget {
                max_map_count,
                guards,
            } => write!(
                f,
                "goro: too many goroutine stacks for vm.max_map_count={max_map_count}: \
                 {guards} stacks already use mprotect guard pages (about 2 memory mappings \
                 each, because this kernel lacks MADV_GUARD_INSTALL, Linux 6.13+); \
                 raise the limit with `sudo sysctl -w vm.max_map_count={}` (persist it in \
                 /etc/sysctl.d/), or run on Linux 6.13 or later",
                max_map_count.saturating_mul(4).max(262_144)
            ),
            ErrorKind::TooLarge { requested } => write!(
                f,
                "goro: goroutine stack size {requested} bytes is too large \
                 (at most 1 TiB per stack)"
            ),
            ErrorKind::TooManyChunks { max } => write!(
                f,
                "goro: too many goroutine stacks: all {max} stack reservations are in use; \
                 use fewer goroutines or fewer distinct stack sizes"
            ),
        }
    }
}

impl std::error::Error for StackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Reserve { err, .. } | ErrorKind::Guard { err } => Some(err),
            _ => None,
        }
    }
}
