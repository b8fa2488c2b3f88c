//! The stash trap: `userfaultfd` over every stack reservation, so that a stashed stack whose
//! pages are gone is put back the moment anything touches it.
//!
//! [`Stack::stash`](crate::Stack::stash) moves a parked goroutine's live bytes to the heap and
//! releases its pages. That is only sound if nothing reads or writes the stack until the
//! goroutine runs again, and safe Rust can break that: a goroutine may lend its locals to
//! `std::thread::scope` threads and then block on a channel. The trap makes such an access
//! correct instead of forbidden:
//!
//! - Every reservation is registered with one process-wide userfaultfd in *missing* and
//!   *write-protect* modes. A touch of a page that is not there, from user code or from the
//!   kernel (a `read(2)` into the buffer), stops the touching thread and queues a message.
//! - One thread, `goro-stack-trap`, reads the messages and finds the slot of each address in the
//!   chunk table. If the slot is stashed it copies the bytes back (`UFFDIO_COPY`, which also
//!   wakes the thread); if not, the page simply never held anything and gets zeros (with a
//!   few pages below it, since a stack that faults once is usually growing).
//! - A stash write-protects the live pages before copying them, so a write racing with the
//!   copy waits too: nothing written to a stack through the page tables is lost. (I/O that pins
//!   pages and writes them directly, such as an `O_DIRECT` read in flight into a buffer on the
//!   stack, is not seen, and userspace cannot see the pins: so stashing is never a default,
//!   only an `unsafe` opt-in of the runtime whose contract excludes such I/O; docs/soundness.md
//!   lists the routes the trap does not cover.)
//!
//! Each slot's stash state (in its `SlotMeta`) says who may touch its stashed bytes:
//!
//! ```text
//!   LIVE --stasher (CAS)--> STASHING --stasher--> STASHED --claim (CAS)--> CLAIMED
//!   CLAIMED --restorer--> LIVE        CLAIMED --collector, after scanning--> STASHED
//!   LIVE --trap, to fill a zero page (CAS)--> FILLING --trap--> LIVE
//! ```
//!
//! A fault in a STASHING or CLAIMED slot is left waiting: the thread that holds the slot wakes
//! the whole slot when it lets go, and the woken thread touches the page again, which faults
//! afresh and finds the new state. A missing-page fault of the stasher itself (a page of the
//! live range that was never touched) is answered with a write-protected zero page.
//!
//! The trap thread never takes a lock and never allocates after it starts: a thread stopped on a
//! stack fault may hold the allocator's locks. A restore by the goroutine's own M uses
//! `UFFDIO_COPY` too: copying by hand would fault into the trap, which would wait for the M.
//!
//! Without the privilege to handle kernel-mode faults (root, `CAP_SYS_PTRACE`, or
//! `vm.unprivileged_userfaultfd=1`), a `read(2)` into a stashed page would fail with `EFAULT`,
//! so the trap is not enabled then, and a runtime that opted into the trapped stash only trims
//! stacks (one that opted into the unchecked stash stashes without it).
//! `GORO_DEBUG=stacktrap=off` keeps it off. Nothing starts it but
//! [`enable_stash_trap`](crate::enable_stash_trap), which goro calls for the trapped opt-in. A
//! forked child inherits no registration: it sees zeros where a stack was stashed, which
//! matters only to a child that keeps running goroutines' stacks instead of calling `exec`.

use crate::os;
use core::sync::atomic::{AtomicI32, Ordering};
use std::io;
use std::sync::OnceLock;

// The kernel's uapi `linux/userfaultfd.h` (Debian's libc crate has none of these).
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// `_IOWR(0xAA, nr, size)` / `_IOR(0xAA, nr, size)` as the kernel encodes them.
const fn ioctl_rw(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const fn ioctl_r(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = ioctl_rw(0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioctl_rw(0x00, size_of::<UffdioRegister>());
const UFFDIO_WAKE: u64 = ioctl_r(0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioctl_rw(0x03, size_of::<UffdioCopy>());
const UFFDIO_WRITEPROTECT: u64 = ioctl_rw(0x06, size_of::<UffdioWriteprotect>());

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
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
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg` for a page fault (the only event we ask for): 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    ptid: u32,
    pad: u32,
}

/// The trap's userfaultfd, or -1 while it is not enabled. Set once, under the pool lock.
static FD: AtomicI32 = AtomicI32::new(-1);
/// The trap thread's kernel id, or 0 before it starts. It blocks every signal, so whoever stops
/// threads by signal (the collector) must leave it out.
static TRAP_TID: AtomicI32 = AtomicI32::new(0);

/// The kernel thread id of the trap thread, if it runs. The thread blocks every signal and never
/// holds a `Gc` or a lock of anyone else's: a stop of the world leaves it running (it must go on
/// answering faults while other threads are stopped).
pub fn trap_thread_id() -> Option<i32> {
    // Relaxed: the id is written once, before the thread reports ready.
    let tid = TRAP_TID.load(Ordering::Relaxed);
    (tid != 0).then_some(tid)
}

/// Why the trap is off, once it has been tried.
static STATE: OnceLock<Result<i32, String>> = OnceLock::new();

/// The trap's file descriptor, if it is on.
#[inline]
pub(crate) fn fd() -> Option<i32> {
    let fd = FD.load(Ordering::Acquire);
    (fd >= 0).then_some(fd)
}

/// What the trap thread does with each fault: `stash.rs`'s `answer_fault`, passed in so that this
/// file (the userfaultfd mechanics) depends on nothing above it.
pub(crate) type FaultHandler =
    fn(fd: i32, addr: usize, write_protected: bool, tid: i32, restore_buf: &mut PageBuf);

/// Opens the userfaultfd and starts the trap thread, which hands every fault to `answer`, once
/// per process; the pool then registers every reservation with it. Returns the descriptor, or
/// why the trap cannot work here.
pub(crate) fn open(answer: FaultHandler) -> Result<i32, String> {
    STATE.get_or_init(|| open_once(answer)).clone()
}

/// Publishes the descriptor: from now on the pool registers each new reservation. Called under
/// the pool lock, after registering the existing ones.
pub(crate) fn publish(fd: i32) {
    FD.store(fd, Ordering::Release);
}

#[cold]
fn open_once(answer: FaultHandler) -> Result<i32, String> {
    if os::goro_debug("stacktrap=off") {
        return Err("turned off by GORO_DEBUG=stacktrap=off".into());
    }
    // No UFFD_USER_MODE_ONLY: faults taken by the kernel on a user's behalf must be caught too.
    // SAFETY: a plain syscall with an integer argument.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as i32;
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(format!(
            "userfaultfd: {err} (catching kernel-mode faults needs root, CAP_SYS_PTRACE or \
             vm.unprivileged_userfaultfd=1)"
        ));
    }
    let wanted = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: wanted,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `api` is.
    if unsafe { libc::ioctl(fd, UFFDIO_API as _, &mut api) } != 0 {
        let err = io::Error::last_os_error();
        // SAFETY: the descriptor was opened above and is not shared yet.
        unsafe { libc::close(fd) };
        return Err(format!(
            "UFFDIO_API with write-protect and thread ids: {err}"
        ));
    }
    // The thread must be done allocating before any fault can reach it: a thread stopped on a
    // stack fault may hold the allocator's locks. So it reports ready once it has set up.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("goro-stack-trap".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            block_signals();
            TRAP_TID.store(thread_id(), Ordering::Relaxed);
            let restore_buf = PageBuf::new();
            let _ = ready_tx.send(());
            drop(ready_tx);
            serve(fd, restore_buf, answer)
        });
    if let Err(err) = spawned.map(|_| ()).and_then(|()| {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("it exited while starting"))
    }) {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        return Err(format!("cannot start the stack trap thread: {err}"));
    }
    Ok(fd)
}

/// Blocks every signal on the calling thread (the trap thread): a process-directed signal's
/// handler must not run here, where waiting for a lock held by a thread stopped on a stack
/// fault would stop every stack fault in the process.
fn block_signals() {
    // SAFETY: `set` is a local sigset_t that sigfillset initialises before pthread_sigmask
    // reads it; a null old set is allowed.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut());
    }
}

/// Registers a reservation with the trap: from now on a missing or write-protected page in it
/// stops the toucher until the trap thread answers.
pub(crate) fn register(fd: i32, base: usize, len: usize) -> io::Result<()> {
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: base as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`; the range is a
    // private anonymous reservation of ours.
    if unsafe { libc::ioctl(fd, UFFDIO_REGISTER as _, &mut reg) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fills the missing pages `[dst, dst + len)` from `src` (page-aligned, `len` bytes);
/// `write_protect` maps them read-only to user writes, `wake` wakes the threads waiting on
/// the range. Returns the bytes copied, or the errno (`EEXIST` when a page is already there,
/// after copying the ones before it).
///
/// # Safety
/// `src` is readable for `len` bytes, and `[dst, dst + len)` lies in a registered reservation
/// whose missing pages there should now read as those bytes: it holds no data kept elsewhere
/// (a missing page of a stashed slot may be filled only with its stashed bytes).
pub(crate) unsafe fn copy(
    fd: i32,
    dst: usize,
    src: *const u8,
    len: usize,
    write_protect: bool,
    wake: bool,
) -> Result<usize, i32> {
    let mut mode = 0;
    if write_protect {
        mode |= UFFDIO_COPY_MODE_WP;
    }
    if !wake {
        mode |= UFFDIO_COPY_MODE_DONTWAKE;
    }
    loop {
        let mut op = UffdioCopy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `struct uffdio_copy`; the kernel reads `len`
        // bytes at `src` (the caller's buffer) and fills only missing pages of `dst`.
        let rc = unsafe { libc::ioctl(fd, UFFDIO_COPY as _, &mut op) };
        if rc == 0 {
            return Ok(len);
        }
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if errno == libc::EAGAIN && op.copy <= 0 {
            continue; // the mappings were changing: try again
        }
        if errno == libc::EAGAIN {
            // A partial copy: carry on after it.
            let done = op.copy as usize;
            // SAFETY: the rest of the caller's ranges.
            let rest = unsafe {
                copy(
                    fd,
                    dst + done,
                    src.wrapping_add(done),
                    len - done,
                    write_protect,
                    wake,
                )
            };
            return rest.map(|rest| done + rest);
        }
        return Err(errno);
    }
}

/// Write-protects (or unprotects) the present pages of `[start, start + len)`: a user write to
/// them then waits for the trap. Unprotecting wakes the waiters.
pub(crate) fn write_protect(fd: i32, start: usize, len: usize, on: bool) {
    let mut op = UffdioWriteprotect {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
    };
    loop {
        // SAFETY: UFFDIO_WRITEPROTECT reads a `struct uffdio_writeprotect` over our range.
        let rc = unsafe { libc::ioctl(fd, UFFDIO_WRITEPROTECT as _, &mut op) };
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if rc == 0 {
            return;
        }
        if errno != libc::EAGAIN {
            fatal("UFFDIO_WRITEPROTECT", errno);
        }
    }
}

/// Wakes every thread waiting on a fault in `[start, start + len)`; each touches its page again.
pub(crate) fn wake(fd: i32, start: usize, len: usize) {
    let mut range = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range`. It cannot fail for a valid range.
    unsafe { libc::ioctl(fd, UFFDIO_WAKE as _, &mut range) };
}

/// The calling thread's kernel id (what fault messages name).
pub(crate) fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The trap cannot go on: a thread would wait forever. Go's kind of message, then abort.
#[cold]
pub(crate) fn fatal(what: &str, errno: i32) -> ! {
    eprintln!(
        "fatal error: goroutine stack trap: {what}: {}",
        io::Error::from_raw_os_error(errno)
    );
    std::process::abort()
}

/// Pages of zeros the trap copies into fresh stack pages (in `.bss`: costs nothing until read,
/// and reading maps the shared zero page).
#[repr(C, align(65536))]
struct Zeros([u8; ZERO_PAGES_BYTES]);
const ZERO_PAGES_BYTES: usize = 256 * 1024;
static ZEROS: Zeros = Zeros([0; ZERO_PAGES_BYTES]);

/// The trap thread: answers every fault until the process ends. Allocates nothing.
fn serve(fd: i32, mut restore_buf: PageBuf, answer: FaultHandler) -> ! {
    loop {
        let mut msg = UffdMsg::default();
        // SAFETY: reads one 32-byte `struct uffd_msg` into `msg`.
        let n = unsafe { libc::read(fd, (&raw mut msg).cast(), size_of::<UffdMsg>()) };
        if n < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno == libc::EINTR || errno == libc::EAGAIN {
                continue;
            }
            fatal("read", errno);
        }
        if n as usize != size_of::<UffdMsg>() || msg.event != UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let write_protected = msg.flags & UFFD_PAGEFAULT_FLAG_WP != 0;
        answer(
            fd,
            msg.address as usize,
            write_protected,
            msg.ptid as i32,
            &mut restore_buf,
        );
    }
}

/// Fills the missing page at `page` with zeros, and up to `extra` missing pages below it down
/// to `floor` (a growing stack will touch them next); wakes the faulting thread.
///
/// # Safety
/// As for [`copy`]: the missing pages of `[floor, page]` hold nothing (not part of a stash).
pub(crate) unsafe fn zero_fill(
    fd: i32,
    page: usize,
    floor: usize,
    extra: usize,
    write_protect: bool,
) {
    let size = os::page_size();
    let extra = extra
        .min((page - floor.min(page)) / size)
        .min(ZERO_PAGES_BYTES / size - 1);
    if extra > 0 {
        // Best effort: a page already there just ends the prefetch.
        // SAFETY: `ZEROS` is larger than `extra` pages; the caller vouches for the range.
        let _ = unsafe {
            copy(
                fd,
                page - extra * size,
                ZEROS.0.as_ptr(),
                extra * size,
                write_protect,
                false,
            )
        };
    }
    // SAFETY: as above, one page.
    match unsafe { copy(fd, page, ZEROS.0.as_ptr(), size, write_protect, true) } {
        Ok(_) => {}
        // Someone else filled it (a stale message): the waiter only needs waking.
        Err(libc::EEXIST) => wake(fd, page, size),
        Err(errno) => fatal("UFFDIO_COPY of a zero page", errno),
    }
}

/// A page-aligned, page-sized buffer: `UFFDIO_COPY` wants a page-aligned source.
pub(crate) struct PageBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl PageBuf {
    pub(crate) fn new() -> PageBuf {
        let size = os::page_size();
        let layout = std::alloc::Layout::from_size_align(size, size).expect("a page layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        PageBuf { ptr, layout }
    }

    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is our allocation of `layout.size()` bytes, borrowed mutably with self.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}
