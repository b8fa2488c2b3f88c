//! The operating-system primitives the heap needs, and nothing else (mimalloc's `prim.h`).
//!
//! Every mapping is anonymous, private, read-write and `MAP_NORESERVE`: the kernel commits a page
//! on first touch, so reserving 64 MiB arenas or the 32 MiB arena index costs address space only.
//! Nothing here is ever unmapped except the trimmed ends of an over-sized reservation.
//! This is the only file of the crate that names a target OS.

use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

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

/// Gives the pages of `[addr, addr + size)` back to the OS; they read as zero afterwards and
/// cost no RSS until touched again. `MADV_DONTNEED`, not `MADV_FREE`: RSS must fall at once
/// (go#42330).
///
/// # Safety
/// May be called only on memory of this allocator's mappings that nobody uses.
pub(crate) unsafe fn release(addr: usize, size: usize) {
    // SAFETY: caller's contract; madvise on a mapped private anonymous range only drops pages.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, size, libc::MADV_DONTNEED);
    }
}

/// Starts a detached OS thread running `f` (without allocating through the global allocator),
/// named `name` (at most 15 bytes plus the NUL; the runtime's threads are `goro-*`, which the
/// scheduler's deadlock check relies on). Returns false when the thread cannot be created.
pub(crate) fn spawn_detached(
    name: &core::ffi::CStr,
    f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
) -> bool {
    let mut t: libc::pthread_t = 0;
    // SAFETY: `t` is a valid out pointer; a null attribute means defaults; `f` ignores its
    // argument.
    let rc = unsafe { libc::pthread_create(&mut t, core::ptr::null(), f, core::ptr::null_mut()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: `t` is a live thread and `name` a NUL-terminated string of at most 16 bytes.
    unsafe { libc::pthread_setname_np(t, name.as_ptr()) };
    // SAFETY: `t` is the thread just created and not yet joined or detached.
    unsafe { libc::pthread_detach(t) };
    true
}

/// Sleeps for `ms` milliseconds, however many signals arrive meanwhile: a collection stops every
/// thread with a signal, which cuts `nanosleep` short, and a scavenger woken after every cycle
/// would return the spans the cycle just emptied to the page heap before anyone reuses them.
pub(crate) fn sleep_ms(ms: u64) {
    let mut left = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        let asked = left;
        // SAFETY: both are valid timespecs; the kernel writes the time left into `left`.
        if unsafe { libc::nanosleep(&asked, &mut left) } == 0 {
            return;
        }
        // Only EINTR is possible with valid arguments: sleep on for what is left.
    }
}

/// Registers fork handlers (`pthread_atfork`). Returns false on failure.
pub(crate) fn at_fork(
    prepare: extern "C" fn(),
    parent: extern "C" fn(),
    child: extern "C" fn(),
) -> bool {
    // SAFETY: the handlers are plain functions that live for the whole program.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) == 0 }
}

/// Whether environment variable `name` (NUL-terminated) equals `value`, without allocating.
pub(crate) fn env_is(name: &str, value: &str) -> bool {
    if !name.ends_with('\0') {
        return false;
    }
    // SAFETY: `name` is NUL-terminated; getenv returns null or a NUL-terminated string that we
    // only read right away.
    let p = unsafe { libc::getenv(name.as_ptr().cast()) };
    if p.is_null() {
        return false;
    }
    // SAFETY: as above.
    let v = unsafe { core::ffi::CStr::from_ptr(p) };
    v.to_bytes() == value.as_bytes()
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

/// Sleeps while `word` holds `expected` (a private futex), for at most `timeout`; returns on a
/// wake-up, a signal, the timeout, or at once if the word already differs. Takes no lock and
/// allocates nothing: the collector's stop handler waits with it.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<std::time::Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(core::ptr::null(), |ts| ts as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a live, aligned u32; it sleeps only while the word holds
    // `expected`, at most `timeout` (a valid timespec or null).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes up to `count` threads sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        );
    }
}

/// The CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec; the thread's own CPU clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    std::time::Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}
