//! Guard regions: the inaccessible page at the bottom of every stack slot.
//!
//! A stack overflow runs off the bottom of the slot into its guard and faults (Rust emits stack
//! probes for frames larger than a page, so one page catches every overflow). Two mechanisms:
//!
//! 1. `madvise(addr, len, MADV_GUARD_INSTALL)` (Linux 6.13+). The guard is a property of the
//!    page table entries, not a VMA: a reservation of 1,024 slots with 1,024 guards stays one
//!    line in `/proc/self/maps`. Preferred whenever it works.
//! 2. `mprotect(addr, len, PROT_NONE)`. Each guard splits the reservation: about 2 VMAs per
//!    stack, and the kernel refuses new mappings beyond `vm.max_map_count` (65,530 by default,
//!    i.e. ~32,000 stacks). We keep a budget so that running out is a clear [`StackError`]
//!    naming the sysctl, not an `ENOMEM` from some unrelated `mmap` later.
//!
//! [`guard_kind`] probes once per process: it maps two pages, tries `MADV_GUARD_INSTALL` on one
//! and unmaps them. `GORO_DEBUG=stackguard=mprotect` forces the fallback (for testing it, or for
//! kernels where the probe succeeds but the guard misbehaves).

use crate::StackError;
use crate::os;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which mechanism makes guard regions inaccessible in this process.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GuardKind {
    /// `madvise(MADV_GUARD_INSTALL)`: no extra VMA per stack (Linux 6.13+).
    MadviseGuard,
    /// `mprotect(PROT_NONE)`: about two VMAs per stack, bounded by `vm.max_map_count`.
    Mprotect,
}

/// Probed once, then read-only.
static KIND: OnceLock<GuardKind> = OnceLock::new();

/// Which guard mechanism this process uses (probed on first call, then fixed).
pub fn guard_kind() -> GuardKind {
    *KIND.get_or_init(probe)
}

/// Whether `GORO_DEBUG` (comma-separated `key=value`, like GODEBUG) asks for the mprotect path.
fn forced_mprotect() -> bool {
    os::goro_debug("stackguard=mprotect")
}

#[cold]
fn probe() -> GuardKind {
    if forced_mprotect() {
        return GuardKind::Mprotect;
    }
    let page = os::page_size();
    let Ok(base) = os::reserve(2 * page) else {
        return GuardKind::Mprotect;
    };
    // SAFETY: the first page of the two-page mapping created just above holds nothing.
    let works = unsafe { os::madvise_guard(base, page) }.is_ok();
    // SAFETY: the probe mapping is ours and nothing refers to it any more.
    unsafe { os::release(base, 2 * page) };
    if works {
        GuardKind::MadviseGuard
    } else {
        GuardKind::Mprotect
    }
}

/// How many mprotect guards this process may still install without risking `vm.max_map_count`.
///
/// `limit` is fixed at first use; `used` only grows (guards are never removed: a freed slot
/// keeps its guard in the pool).
pub(crate) struct VmaBudget {
    /// Maximum number of guards; computed once, read-only afterwards.
    limit: usize,
    /// The `vm.max_map_count` the limit was derived from (for the error message).
    max_map_count: usize,
    /// Guards installed so far. Relaxed: a counter, no data is published through it.
    used: AtomicUsize,
}

impl VmaBudget {
    /// A budget for a process that has `in_use` mappings under a limit of `max_map_count`.
    /// Keeps a margin of an eighth of the limit (at least 1,024) for thread stacks, the heap,
    /// shared libraries and everything else that maps memory; each guard costs two VMAs.
    pub(crate) fn new(max_map_count: usize, in_use: usize) -> VmaBudget {
        let margin = (max_map_count / 8).max(1024);
        let limit = max_map_count.saturating_sub(in_use + margin) / 2;
        VmaBudget {
            limit,
            max_map_count,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes one guard from the budget, or explains why not.
    pub(crate) fn take(&self) -> Result<(), StackError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .map(|_| ())
            .map_err(|used| StackError::vma_budget(self.max_map_count, used))
    }

    /// Gives back a guard taken by [`take`](Self::take) that could not be installed.
    pub(crate) fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::Relaxed);
    }
}

static BUDGET: OnceLock<VmaBudget> = OnceLock::new();

fn budget() -> &'static VmaBudget {
    BUDGET.get_or_init(|| {
        // 65530 is the kernel default; a process that cannot read /proc assumes it.
        let max = os::max_map_count().unwrap_or(65530);
        VmaBudget::new(max, os::map_count().unwrap_or(0))
    })
}

/// Makes `[addr, addr + len)` a guard region with this process's mechanism.
///
/// # Safety
/// May be called only if the range is page-aligned, lies inside a reservation owned by the
/// caller, and holds nothing anyone still needs.
pub(crate) unsafe fn install(addr: *mut u8, len: usize) -> Result<(), StackError> {
    match guard_kind() {
        GuardKind::MadviseGuard => {
            // SAFETY: forwarded from the caller's contract.
            unsafe { os::madvise_guard(addr, len) }.map_err(StackError::guard)
        }
        GuardKind::Mprotect => {
            let budget = budget();
            budget.take()?;
            // SAFETY: forwarded from the caller's contract.
            let res = unsafe { os::mprotect_guard(addr, len) };
            res.map_err(|e| {
                budget.give_back();
                StackError::guard(e)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_madvise_guards() {
        // Kernel 6.18 on the development machine; the fallback is tested in tests/guard.rs.
        if !forced_mprotect() {
            assert_eq!(guard_kind(), GuardKind::MadviseGuard);
        }
    }

    #[test]
    fn budget_is_exhausted_with_a_message_naming_the_sysctl() {
        let b = VmaBudget::new(2048 + 1024 + 4, 2048);
        assert_eq!(b.limit, 2);
        b.take().unwrap();
        b.take().unwrap();
        let err = b.take().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("vm.max_map_count"), "{msg}");
        assert!(msg.contains("sysctl -w vm.max_map_count="), "{msg}");
        assert!(msg.contains("3076"), "names the current limit: {msg}");
        b.give_back();
        b.take().unwrap();
    }

    #[test]
    fn default_limit_leaves_room_for_tens_of_thousands_of_stacks() {
        let b = VmaBudget::new(65530, 40);
        assert!(b.limit > 25_000 && b.limit < 32_765, "limit {}", b.limit);
    }
}
