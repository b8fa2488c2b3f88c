//! Which pages of the heap were written since a moment: the kernel keeps the record, so that the
//! collector's mark termination rescans only the written pages of a large malloc block rather
//! than all of it.
//!
//! Every arena is registered with one userfaultfd in *asynchronous write-protect* mode
//! (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7): [`write_protect`] sets the page-table entries' uffd-wp
//! bit over a range, the first write to a protected page clears it in the kernel's fault path
//! (no message, no handler thread: a minor fault), and [`for_each_written`] asks
//! `PAGEMAP_SCAN` (on `/proc/self/pagemap`) for the pages whose bit is clear. So a page reported
//! unwritten has not been written through the page tables since it was last protected. A page
//! the kernel drops (`MADV_DONTNEED`, the scavenger) reads back as zeros, and one faulted in
//! afresh carries no bit: it reads as written. Writes that bypass the page tables (a device's DMA
//! into pages pinned before the protection, `io_uring`'s registered buffers) are not seen: what
//! they carry comes from outside memory, where no `Gc` may be hidden (docs/soundness.md).
//!
//! The userfaultfd is opened with `UFFD_USER_MODE_ONLY`, which needs no privilege; asynchronous
//! write faults never reach the user-mode check, so the kernel's own writes (`read(2)` into a
//! buffer, `O_DIRECT`) resolve like a user's. Nothing is opened until the collector first asks
//! ([`start`]); where the kernel lacks the feature, or a sandbox refuses `userfaultfd`, every call
//! answers `false` and the caller rescans whole blocks as before.
//!
//! After `fork` the child's mappings are not registered (no `UFFD_FEATURE_EVENT_FORK`) and the
//! inherited descriptors still name the parent's memory: the child forgets them
//! ([`forget_in_child`]) and starts over if its collector asks.

use crate::{ARENA_SIZE, arena};
use core::sync::atomic::{AtomicI32, Ordering, fence};

// The kernel's uapi: `linux/userfaultfd.h` and `linux/fs.h` (the libc crate has neither).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;

/// `_IOWR(kind, nr, size)` as the kernel encodes it.
const fn ioctl_rw(kind: u64, nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (kind << 8) | nr
}
const UFFDIO_API: u64 = ioctl_rw(0xAA, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioctl_rw(0xAA, 0x00, size_of::<UffdioRegister>());
const UFFDIO_WRITEPROTECT: u64 = ioctl_rw(0xAA, 0x06, size_of::<UffdioWriteprotect>());
const PAGEMAP_SCAN: u64 = ioctl_rw(b'f' as u64, 16, size_of::<PmScanArg>());

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// Not asked for yet.
const UNTRIED: i32 = -1;
/// Asked for and refused (the kernel, a sandbox, `/proc` missing): never asked again.
const UNAVAILABLE: i32 = -2;

/// The userfaultfd every arena is registered with, or [`UNTRIED`] / [`UNAVAILABLE`]. An arena
/// mapped while it is set is registered by [`start`] or by whoever maps it.
static UFFD: AtomicI32 = AtomicI32::new(UNTRIED);
/// `/proc/self/pagemap`, opened with the userfaultfd.
static PAGEMAP: AtomicI32 = AtomicI32::new(-1);
/// The process that opened both: a child of `fork` that missed [`forget_in_child`] (a raw
/// `clone`) must not touch its parent's memory through them.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// The OS page, the unit the kernel tracks.
const OS_PAGE: usize = 4096;

/// Opens the tracking and registers every arena, once; returns whether tracking works in this
/// process. Cheap after the first call.
pub fn start() -> bool {
    match UFFD.load(Ordering::Acquire) {
        UNAVAILABLE => return false,
        UNTRIED => {}
        _ => return owned(),
    }
    let Some((uffd, pagemap)) = open() else {
        // A lost race with another opener leaves its descriptors in place.
        let _ = UFFD.compare_exchange(UNTRIED, UNAVAILABLE, Ordering::AcqRel, Ordering::Acquire);
        return start();
    };
    let mut all = true;
    arena::for_each_arena(|base| all &= register(uffd, base, ARENA_SIZE));
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    if all {
        PAGEMAP.store(pagemap, Ordering::Relaxed);
        OWNER.store(me, Ordering::Relaxed);
    }
    let published = all
        && UFFD
            .compare_exchange(UNTRIED, uffd, Ordering::SeqCst, Ordering::Acquire)
            .is_ok();
    if !published {
        if !all {
            let _ =
                UFFD.compare_exchange(UNTRIED, UNAVAILABLE, Ordering::AcqRel, Ordering::Acquire);
        }
        // SAFETY: both descriptors were opened above and published nowhere; closing the
        // userfaultfd unregisters what this call registered.
        unsafe {
            libc::close(uffd);
            libc::close(pagemap);
        }
        return start();
    }
    // An arena the heap indexed after the walk above, and before it could see the descriptor,
    // is registered here; one indexed later registers itself (`register_new_arenas`): the heap
    // indexes, fences, then reads `UFFD`; this stores `UFFD`, fences, then reads the index.
    fence(Ordering::SeqCst);
    arena::for_each_arena(|base| {
        register(uffd, base, ARENA_SIZE);
    });
    true
}

/// Opens a userfaultfd with asynchronous write-protect and `/proc/self/pagemap`.
fn open() -> Option<(i32, i32)> {
    // SAFETY: userfaultfd takes flags only.
    let uffd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
        )
    } as i32;
    if uffd < 0 {
        return None;
    }
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC,
        ioctls: 0,
    };
    // SAFETY: `api` is a live `struct uffdio_api` the kernel reads and writes.
    let handshake = unsafe { libc::ioctl(uffd, UFFDIO_API as _, &mut api) };
    // SAFETY: a path literal, flags only.
    let pagemap = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if handshake != 0 || api.features & UFFD_FEATURE_WP_ASYNC == 0 || pagemap < 0 {
        // SAFETY: closing descriptors this function opened.
        unsafe {
            libc::close(uffd);
            if pagemap >= 0 {
                libc::close(pagemap);
            }
        }
        return None;
    }
    Some((uffd, pagemap))
}

/// Registers `[base, base + len)` in write-protect mode.
fn register(uffd: i32, base: usize, len: usize) -> bool {
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: base as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `reg` is a live `struct uffdio_register`; the range is an arena, mapped for ever.
    unsafe { libc::ioctl(uffd, UFFDIO_REGISTER as _, &mut reg) == 0 }
}

/// Registers arenas the heap has just mapped and indexed, if tracking has started (or is
/// starting: see [`start`]).
pub(crate) fn register_new_arenas(base: usize, bytes: usize) {
    fence(Ordering::SeqCst);
    let uffd = UFFD.load(Ordering::SeqCst);
    if uffd >= 0 && owned() && !register(uffd, base, bytes) {
        // An arena left unregistered would read as written throughout: still sound, only
        // slower. Say so once rather than fail the allocation.
        crate::os::write_stderr("goro: heap write tracking could not register an arena\n");
    }
}

/// Whether the descriptors belong to this process.
fn owned() -> bool {
    // SAFETY: getpid has no preconditions.
    OWNER.load(Ordering::Relaxed) == unsafe { libc::getpid() }
}

/// The userfaultfd and pagemap descriptors, if tracking runs in this process.
fn usable() -> Option<(i32, i32)> {
    // Acquire: pairs with `start`'s Release.
    let uffd = UFFD.load(Ordering::Acquire);
    (uffd >= 0 && owned()).then(|| (uffd, PAGEMAP.load(Ordering::Relaxed)))
}

/// The OS pages covering `[lo, hi)`.
fn os_pages(lo: usize, hi: usize) -> (usize, usize) {
    (lo & !(OS_PAGE - 1), hi.next_multiple_of(OS_PAGE))
}

/// Write-protects the pages covering `[lo, hi)` (heap memory): from now on [`for_each_written`]
/// reports those of them that are written. Returns false if tracking does not run.
///
/// # Safety
/// Protecting a page erases the record of the writes made to it so far, which the collector
/// trusts to skip rescanning it (goro-gc's `tracked.rs`). Only the collector may call this, at
/// the points its soundness argument names.
pub unsafe fn write_protect(lo: usize, hi: usize) -> bool {
    let Some((uffd, _)) = usable() else {
        return false;
    };
    let (lo, hi) = os_pages(lo, hi);
    let mut wp = UffdioWriteprotect {
        range: UffdioRange {
            start: lo as u64,
            len: (hi - lo) as u64,
        },
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: `wp` is a live `struct uffdio_writeprotect`; the range lies in registered arenas
    // (or the kernel refuses it), and protecting pages changes nothing a program can observe
    // but the cost of its next write.
    unsafe { libc::ioctl(uffd, UFFDIO_WRITEPROTECT as _, &mut wp) == 0 }
}

/// Calls `f(lo, hi)` for each run of pages within `[lo, hi)` (clipped to it) that may have been
/// written since [`write_protect`] (or [`take_written`]) last covered them: written, never
/// protected, or faulted in afresh. Returns false, having called `f` for some runs or none, if
/// the kernel could not answer: the caller must then treat the whole range as written.
pub fn for_each_written(lo: usize, hi: usize, f: impl FnMut(usize, usize)) -> bool {
    scan(lo, hi, 0, f)
}

/// [`for_each_written`], and write-protects each run it reports in the same walk: a write that
/// lands after the kernel read a page's bit is reported by the next call. Returns false as
/// [`for_each_written`] does; the runs reported so far are protected again.
///
/// # Safety
/// As for [`write_protect`]: the caller (the collector) must rescan every run reported.
pub unsafe fn take_written(lo: usize, hi: usize, f: impl FnMut(usize, usize)) -> bool {
    scan(lo, hi, PM_SCAN_WP_MATCHING, f)
}

/// One `PAGEMAP_SCAN` walk over `[lo, hi)` for written pages, with `flags`.
fn scan(lo: usize, hi: usize, flags: u64, mut f: impl FnMut(usize, usize)) -> bool {
    let Some((_, pagemap)) = usable() else {
        return false;
    };
    let (first, end) = os_pages(lo, hi);
    let mut regions = [PageRegion::default(); 32];
    let mut at = first;
    while at < end {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags,
            start: at as u64,
            end: end as u64,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        // SAFETY: `arg` is a live `struct pm_scan_arg` whose `vec` points at `regions`, of
        // `vec_len` entries the kernel may write.
        let found = unsafe { libc::ioctl(pagemap, PAGEMAP_SCAN as _, &mut arg) };
        if found < 0 || found as usize > regions.len() {
            return false;
        }
        for r in &regions[..found as usize] {
            let (from, to) = ((r.start as usize).max(lo), (r.end as usize).min(hi));
            if from < to {
                f(from, to);
            }
        }
        let walked = arg.walk_end as usize;
        if walked <= at {
            return false; // no progress: do not trust the answer
        }
        at = walked;
    }
    true
}

/// In a child of `fork`: the descriptors name the parent's memory. Forget them (closing ours
/// leaves the parent's registration as it is); the child opens its own if it collects.
pub(crate) fn forget_in_child() {
    let uffd = UFFD.load(Ordering::Relaxed);
    if uffd >= 0 {
        // SAFETY: the child's copies of descriptors this module opened; nothing else uses them.
        unsafe {
            libc::close(uffd);
            libc::close(PAGEMAP.load(Ordering::Relaxed));
        }
        UFFD.store(UNTRIED, Ordering::Relaxed);
    }
}
