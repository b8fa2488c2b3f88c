//! The operating-system primitives the heap needs, and nothing else (mimalloc's `prim.h`).
//!
//! Every mapping is anonymous, private, read-write and `MAP_NORESERVE`: the kernel commits a page
//! on first touch, so reserving 64 MiB arenas or the 32 MiB arena index costs address space only.
//! Nothing here is ever unmapped except the trimmed ends of an over-sized reservation.
//! This is the only file of the crate that names a target OS.

use core::ptr::NonNull;

/// Extra flags for reservations: `MAP_NORESERVE` where the OS has it.
const NORESERVE: libc::c_int = cfg_select! {
    any(target_os = "linux", target_os = "android") => libc::MAP_NORESERVE,
    unix => 0,
    _ => compile_error!("goro-alloc supports unix targets only"),
};

/// Maps `size` bytes (a multiple of the OS page size) of zeroed, lazily committed memory.
/// Returns `None` when the kernel refuses.
pub(crate) fn map(size: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous mapping with a null hint touches no existing memory.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast::<u8>())
    }
}

/// Maps `size` bytes aligned to `align` (both multiples of the OS page size, `align` a power of
/// two) by over-reserving `size + align` and unmapping the slack at both ends.
pub(crate) fn map_aligned(size: usize, align: usize) -> Option<NonNull<u8>> {
    let total = size.checked_add(align)?;
    let raw = map(total)?.as_ptr() as usize;
    let start = raw.next_multiple_of(align);
    let head = start - raw;
    let tail = total - head - size;
    if head > 0 {
        unmap(raw, head);
    }
    if tail > 0 {
        unmap(start + size, tail);
    }
    NonNull::new(start as *mut u8)
}

/// Unmaps the trimmed slack of [`map_aligned`].
fn unmap(addr: usize, size: usize) {
    // SAFETY: [addr, addr+size) is slack of a mapping made by `map` in `map_aligned` and not yet
    // handed to anyone.
    unsafe {
        libc::munmap(addr as *mut libc::c_void, size);
    }
}

/// Writes `msg` to standard error without allocating (for fatal errors).
pub(crate) fn write_stderr(msg: &str) {
    // SAFETY: writes `msg.len()` bytes from a live `&str`; the result is deliberately ignored
    // (nothing more can be done about a failing stderr while dying).
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

/// Ends the process without unwinding.
pub(crate) fn abort() -> ! {
    // SAFETY: abort(3) has no preconditions.
    unsafe { libc::abort() }
}
