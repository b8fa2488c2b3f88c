//! Stack overflow reported Go's way: a SIGSEGV/SIGBUS handler that recognises a fault in the
//! guard region of a goroutine stack.
//!
//! Rust code on a goroutine stack that runs past the stack's `limit` touches the guard below it
//! (Rust's stack probes make sure a large frame touches every page it skips), and the kernel
//! raises SIGSEGV (SIGBUS is handled the same way, for completeness). Without this module the
//! process dies with a bare "Segmentation fault". With it:
//!
//! ```text
//! goroutine 17 stack exceeds 262144-byte limit
//! fatal error: stack overflow
//!
//! runtime: fault addr=0x7f0e3c5ffff8 stack=[0x7f0e3c600000, 0x7f0e3c640000]
//! ```
//!
//! and exit status 2, like a Go program. The pieces:
//!
//! 1. [`install_overflow_handler`] (once per process, idempotent) saves the current SIGSEGV and
//!    SIGBUS dispositions, then installs [`handle_fault`] with `SA_SIGINFO | SA_ONSTACK`. Flags:
//!    no `SA_NODEFER` (a fault inside the handler kills the process instead of recursing), no
//!    `SA_RESTART` (synchronous faults interrupt no system call).
//! 2. [`prepare_thread`] (once on every thread that will run goroutines, before the first
//!    switch) makes sure the thread has an alternate signal stack: the handler cannot run on
//!    the goroutine stack that just overflowed. Threads started by `std::thread` already have
//!    one from std (its own overflow handler needs it); other threads get a 64 KiB one, freed
//!    when the thread exits.
//! 3. On a fault, the handler takes the fault address from `siginfo` and asks the slot table
//!    (`slot::guard_hit`, lock-free, append-only) whether it lies in a slot's guard. If so, it
//!    formats the message into a buffer on the alternate stack, `write(2)`s it to fd 2 and calls
//!    `_exit(2)`: no allocation, no locks, nothing but async-signal-safe calls.
//! 4. Any other fault (a null pointer, a fault in a thread's own guard, a signal sent with
//!    `kill`) is passed on unchanged: to the previous `sa_sigaction` (or `sa_handler`) with the
//!    same arguments, e.g. std's handler, which reports overflows of OS thread stacks; or, if
//!    the previous disposition was the default (or ignore), by restoring `SIG_DFL` and
//!    returning, so that the faulting instruction runs again and the kernel's default action
//!    (death by SIGSEGV, core dump) happens exactly as if goro had never been there. A signal
//!    sent by `kill` is re-raised instead, since returning would not repeat it.
//!
//! Limits: the previous handler's `sa_mask` and `SA_RESETHAND` are not re-applied when it is
//! called through ours (std's handler does not rely on them). A handler installed by someone
//! else *after* ours replaces it; call [`install_overflow_handler`] last, or have that handler
//! chain to the previous one as ours does.

use crate::{guard, os, slot};
use core::cell::Cell;
use core::ffi::c_void;
use std::io;
use std::sync::OnceLock;

/// Dispositions found before ours was installed. Written once, then read by the handler.
struct Previous {
    segv: libc::sigaction,
    bus: libc::sigaction,
}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();

/// The result of the one installation, as an errno (0 = success).
static INSTALLED: OnceLock<i32> = OnceLock::new();

/// Alternate signal stack size for threads that have none: room for the kernel's signal frame
/// (up to ~10 KiB with AVX-512 state), our handler, and a chained handler.
const ALT_STACK_SIZE: usize = 64 * 1024;

/// Installs the process-wide SIGSEGV/SIGBUS handler that turns a fault in a goroutine stack's
/// guard into Go's "stack exceeds ...-byte limit" message. Idempotent: only the first call
/// installs; later calls return its result. Call it once before starting goroutines (the
/// scheduler does, when a runtime starts), and [`prepare_thread`] on every thread that runs
/// goroutines.
pub fn install_overflow_handler() -> io::Result<()> {
    match *INSTALLED.get_or_init(|| match install_once() {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
    }) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn install_once() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
    let mut previous: Previous = unsafe { core::mem::zeroed() };
    for (sig, old) in [
        (libc::SIGSEGV, &mut previous.segv),
        (libc::SIGBUS, &mut previous.bus),
    ] {
        // SAFETY: a null new action only queries; `old` is a valid out-pointer.
        if unsafe { libc::sigaction(sig, core::ptr::null(), old) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Saved before the handler can run, so the handler always finds it.
    let _ = PREVIOUS.set(previous);
    // SAFETY: as above, zero is a valid starting value.
    let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
    action.sa_sigaction = handle_fault as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: `action` is fully initialised and `handle_fault` has the SA_SIGINFO signature.
        if unsafe { libc::sigaction(sig, &action, core::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes sure the calling thread has an alternate signal stack, so that the overflow handler
/// can run when this thread's goroutine stack is exhausted. Call it on every thread that will
/// run goroutines, before its first switch to one. Idempotent and cheap after the first call
/// (one `sigaltstack` query). A thread without an alternate stack dies with a plain SIGSEGV on
/// overflow (the kernel cannot push the signal frame on the full stack).
pub fn prepare_thread() -> io::Result<()> {
    // SAFETY: an all-zero stack_t is a valid out-value.
    let mut current: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: a null new stack only queries; `current` is a valid out-pointer.
    if unsafe { libc::sigaltstack(core::ptr::null(), &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if current.ss_flags & libc::SS_DISABLE == 0 && current.ss_size >= libc::SIGSTKSZ {
        return Ok(()); // std's (or ours from an earlier call)
    }
    ALT_STACK.with(AltStack::install)
}

thread_local! {
    /// The alternate signal stack this module made for the thread, if any.
    static ALT_STACK: AltStack = const { AltStack { base: Cell::new(0) } };
}

/// An alternate signal stack: a guard page then [`ALT_STACK_SIZE`] bytes. Owned by its thread.
struct AltStack {
    /// Start of the mapping (the guard), 0 if none was made.
    base: Cell<usize>,
}

impl AltStack {
    fn install(&self) -> io::Result<()> {
        let guard = slot::guard_len();
        if self.base.get() == 0 {
            let base = os::reserve(guard + ALT_STACK_SIZE)?;
            // SAFETY: the first page of the mapping made just above holds nothing.
            if let Err(e) = unsafe { guard::install(base, guard) } {
                // SAFETY: the mapping is ours and unused.
                unsafe { os::release(base, guard + ALT_STACK_SIZE) };
                return Err(io::Error::other(e.to_string()));
            }
            self.base.set(base as usize);
        }
        let stack = libc::stack_t {
            ss_sp: (self.base.get() + guard) as *mut c_void,
            ss_flags: 0,
            ss_size: ALT_STACK_SIZE,
        };
        // SAFETY: the range is a live mapping owned by this thread's AltStack, which outlives
        // its use as the alternate stack (Drop disables it before unmapping).
        if unsafe { libc::sigaltstack(&stack, core::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let base = self.base.get();
        if base == 0 {
            return;
        }
        let guard = slot::guard_len();
        // SAFETY: an all-zero stack_t is a valid out-value.
        let mut current: libc::stack_t = unsafe { core::mem::zeroed() };
        // SAFETY: a query with a valid out-pointer.
        unsafe { libc::sigaltstack(core::ptr::null(), &mut current) };
        if current.ss_sp as usize == base + guard {
            let off = libc::stack_t {
                ss_sp: core::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disabling the alternate stack has no memory preconditions. We are not
            // on it (thread exit does not run in a signal handler).
            unsafe { libc::sigaltstack(&off, core::ptr::null_mut()) };
        } else if current.ss_flags & libc::SS_DISABLE == 0 {
            return; // someone installed another stack over ours and may still point at ours
        }
        // SAFETY: the mapping is ours and no longer the alternate stack.
        unsafe { os::release(base as *mut u8, guard + ALT_STACK_SIZE) };
    }
}

/// The SIGSEGV/SIGBUS handler. Runs on the alternate signal stack; async-signal-safe only.
extern "C" fn handle_fault(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: raised by the kernel for a fault, so si_addr is the faulting address (for
    // kill/tgkill/sigqueue it is <= 0 and the field holds something else).
    if code > 0
        && let Some(hit) = slot::guard_hit(addr)
    {
        report_overflow(&hit, addr);
    }
    pass_on(sig, info, context);
}

/// Hands a fault that is not a goroutine stack overflow to whoever would have had it.
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let previous = PREVIOUS
        .get()
        .map(|p| if sig == libc::SIGBUS { &p.bus } else { &p.segv });
    match previous.map(|p| (p.sa_sigaction, p.sa_flags)) {
        Some((handler, flags)) if handler != libc::SIG_DFL && handler != libc::SIG_IGN => {
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous disposition was installed with SA_SIGINFO, so its
                // handler has this signature; we pass it our own arguments unchanged.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { core::mem::transmute(handler) };
                f(sig, info, context);
            } else {
                // SAFETY: without SA_SIGINFO the handler takes the signal number only.
                let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(handler) };
                f(sig);
            }
        }
        _ => {
            // Default (or ignore, which the kernel does not honour for faults anyway): restore
            // SIG_DFL and let the fault happen again on return, or re-raise a sent signal.
            // SAFETY: signal(2) is async-signal-safe; SIG_DFL needs no handler.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
            // SAFETY: as above.
            if unsafe { (*info).si_code } <= 0 {
                // SAFETY: raise is async-signal-safe; the signal is blocked until we return.
                unsafe { libc::raise(sig) };
            }
        }
    }
}

/// Writes Go's overflow message and exits with status 2, as Go's `throw` does.
fn report_overflow(hit: &slot::GuardHit, addr: usize) -> ! {
    let mut w = Line::new();
    w.str("goroutine ");
    w.dec(hit.owner);
    w.str(" stack exceeds ");
    w.dec(hit.usable as u64);
    w.str("-byte limit\nfatal error: stack overflow\n\nruntime: fault addr=");
    w.hex(addr);
    w.str(" stack=[");
    w.hex(hit.limit);
    w.str(", ");
    w.hex(hit.top);
    w.str(
        "]\n\nA goroutine's stack is its slot (goro::Builder::stack_size) plus the segments that\n",
    );
    w.str("goro::stack::maybe_grow adds around deep code (up to Builder::max_stack_size).\n");
    w.write_stderr();
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(2) }
}

/// A fixed buffer for formatting in a signal handler (no allocation, no `fmt` machinery).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    fn str(&mut self, s: &str) {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn digits(&mut self, mut v: u64, radix: u64) {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b"0123456789abcdef"[(v % radix) as usize];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        for &b in &tmp[i..] {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn dec(&mut self, v: u64) {
        self.digits(v, 10);
    }

    fn hex(&mut self, v: usize) {
        self.str("0x");
        self.digits(v as u64, 16);
    }

    /// `write(2)` to fd 2 until done or an error other than EINTR.
    fn write_stderr(&self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: the range is inside `buf`; write is async-signal-safe.
            let n = unsafe { libc::write(2, self.buf[done..].as_ptr().cast(), self.len - done) };
            if n > 0 {
                done += n as usize;
            } else if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_formats_numbers() {
        let mut w = Line::new();
        w.dec(0);
        w.str(" ");
        w.dec(262_144);
        w.str(" ");
        w.hex(0x7f00_dead_beef);
        w.str(" ");
        w.dec(u64::MAX);
        assert_eq!(
            core::str::from_utf8(&w.buf[..w.len]).unwrap(),
            "0 262144 0x7f00deadbeef 18446744073709551615"
        );
    }

    #[test]
    fn guard_hit_finds_owner_and_limit() {
        let s = crate::Stack::with_size(17 * 4096).unwrap();
        s.set_owner(4242);
        let hit = slot::guard_hit(s.limit() as usize - 8).expect("a guard address");
        assert_eq!(hit.owner, 4242);
        assert_eq!(hit.usable, 17 * 4096);
        assert_eq!(hit.limit, s.limit() as usize);
        assert_eq!(hit.top, s.top() as usize);
        assert!(slot::guard_hit(s.limit() as usize).is_none(), "usable byte");
        assert!(
            slot::guard_hit(s.top() as usize - 1).is_none(),
            "usable byte"
        );
        assert!(slot::guard_hit(8).is_none(), "null page");
    }
}
