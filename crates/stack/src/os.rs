//! The few Linux primitives the stack crate needs, each returning an `io::Error` on failure.
//!
//! Nothing here knows about slots or pools: callers hand in page-aligned ranges they own.
//! The crate is Linux-only (it relies on `MAP_NORESERVE`, `MADV_NOHUGEPAGE` and
//! `MADV_GUARD_INSTALL`); this module is the one place that would change for another OS.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `MADV_GUARD_INSTALL` from the kernel's uapi `asm-generic/mman-common.h` (Linux 6.13+).
/// libc does not define it yet.
pub(crate) const MADV_GUARD_INSTALL: libc::c_int = 102;

/// Whether `GORO_DEBUG` (comma-separated `key=value` settings, like GODEBUG) holds `setting`.
pub(crate) fn goro_debug(setting: &str) -> bool {
    std::env::var("GORO_DEBUG")
        .map(|v| v.split(',').any(|kv| kv.trim() == setting))
        .unwrap_or(false)
}

/// Cached page size; 0 until first read. Relaxed is enough: every thread computes the same value.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The OS page size in bytes (4096 on x86_64 Linux; 4 KiB, 16 KiB or 64 KiB on aarch64).
pub(crate) fn page_size() -> usize {
    let cached = PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE is always supported on Linux.
    let raw = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = if raw > 0 { raw as usize } else { 4096 };
    PAGE_SIZE.store(size, Ordering::Relaxed);
    size
}

/// Reserves `len` bytes of read-write, private, anonymous address space without committing
/// memory or swap (`MAP_NORESERVE`); pages are committed by the kernel when first touched.
/// Transparent huge pages are turned off for the range so that touching one 4 KiB stack page
/// does not commit 2 MiB.
pub(crate) fn reserve(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous mapping at an address chosen by the kernel cannot overlap
    // anything Rust owns; the arguments are plain integers.
    let addr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: [addr, addr + len) is the mapping created just above and owned by the caller.
    // Failure (EINVAL when THP is compiled out) is harmless: there are no huge pages then.
    unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
    Ok(addr.cast())
}

/// Unmaps a range obtained from [`reserve`].
///
/// # Safety
/// May be called only if `[addr, addr + len)` was returned by `reserve` (or lies inside such a
/// range) and nothing will access it again.
pub(crate) unsafe fn release(addr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees that the range is ours and no longer used.
    unsafe { libc::munmap(addr.cast(), len) };
}

/// Gives the pages of `[addr, addr + len)` back to the OS (`MADV_DONTNEED`): the range stays
/// mapped and reads as zeros afterwards, committing fresh pages on the next touch. Guards
/// installed with `MADV_GUARD_INSTALL` survive it. Returns false if the kernel refused (EINVAL
/// for locked pages under `mlockall`, EAGAIN): the memory then stays committed, contents and
/// all, which is harmless unless the caller relies on the release.
///
/// # Safety
/// May be called only if `[addr, addr + len)` is page-aligned, lies inside a private anonymous
/// mapping owned by the caller, and holds nothing anyone will read again.
pub(crate) unsafe fn discard(addr: *mut u8, len: usize) -> bool {
    // SAFETY: the caller guarantees the range is ours and dead.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) == 0 }
}

/// Installs a guard region with `MADV_GUARD_INSTALL`: any access to `[addr, addr + len)` then
/// raises SIGSEGV, without splitting the mapping into more VMAs.
///
/// # Safety
/// May be called only if `[addr, addr + len)` is page-aligned, lies inside a private anonymous
/// mapping owned by the caller, and holds no data anyone still needs (its contents are zapped).
pub(crate) unsafe fn madvise_guard(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is ours and disposable.
    let rc = unsafe { libc::madvise(addr.cast(), len, MADV_GUARD_INSTALL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `[addr, addr + len)` inaccessible with `mprotect(PROT_NONE)`. Inside a larger mapping
/// this splits it: about two more VMAs per guard.
///
/// # Safety
/// May be called only if `[addr, addr + len)` is page-aligned, inside a mapping owned by the
/// caller, and no Rust reference points into it.
pub(crate) unsafe fn mprotect_guard(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is ours and unreferenced.
    let rc = unsafe { libc::mprotect(addr.cast(), len, libc::PROT_NONE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The system-wide limit on mappings per process (`/proc/sys/vm/max_map_count`), if readable.
pub(crate) fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How many mappings (VMAs) this process has now: the line count of `/proc/self/maps`.
pub(crate) fn map_count() -> Option<usize> {
    Some(
        std::fs::read_to_string("/proc/self/maps")
            .ok()?
            .lines()
            .count(),
    )
}
