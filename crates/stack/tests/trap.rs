//! The stash trap: with it on, a stashed stack is put back the moment another thread or the
//! kernel touches it, and a write racing with the stash is never lost. These tests need the
//! privilege to catch kernel-mode faults (root or CAP_SYS_PTRACE; CI runs as root); without it
//! they check that the trap refuses to start and says why.

mod common;

use common::{Coro, recurse, resident_pages, run_test_in_child};
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use goro_stack::{Stack, enable_stash_trap};

/// Whether this process may catch kernel-mode faults, as userfaultfd requires.
fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Turns the trap on; false (after checking the refusal's message) where it cannot work.
fn trap_on() -> bool {
    match enable_stash_trap() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                !privileged() && why.contains("userfaultfd"),
                "the trap should start as root; it said: {why}"
            );
            false
        }
    }
}

/// Runs a coroutine that keeps `initial` in its frame, stashes its stack once it has suspended,
/// calls `touch` with the local's address while every page is released, and checks that the
/// touch put the stack back; the resumed coroutine then hands its local to `check`.
fn touch_a_stashed_local<T: Copy>(initial: T, touch: impl FnOnce(usize), check: impl FnOnce(&T)) {
    let shared = AtomicUsize::new(0);
    let coro = Coro::with_stack(Stack::with_size(1 << 20).unwrap(), |y| {
        let local = initial;
        shared.store(&raw const local as usize, Ordering::SeqCst);
        y.suspend();
        check(black_box(&local));
    });
    assert!(coro.resume());
    let (limit, top) = (coro.stack().limit(), coro.stack().top());
    // SAFETY: the coroutine is suspended at its saved sp and is not resumed before unstash.
    assert!(unsafe { coro.stack().stash(coro.saved_sp(), false) });
    assert_eq!(resident_pages(limit, top), 0, "every page released");
    touch(shared.load(Ordering::SeqCst));
    assert!(!coro.stack().is_stashed(), "the touch put the stack back");
    // SAFETY: we resume it next, and nothing else does.
    unsafe { coro.stack().unstash() };
    assert!(!coro.resume());
}

#[test]
fn another_thread_reads_and_writes_a_stashed_stack() {
    if !trap_on() {
        return;
    }
    let touch = |addr: usize| {
        std::thread::scope(|s| {
            s.spawn(|| {
                let local = addr as *mut u64;
                // SAFETY: `local` is the coroutine's array, alive while it is suspended; only
                // this thread touches it now.
                unsafe {
                    assert_eq!(local.add(6).read_volatile(), 0x5eed, "the trap put it back");
                    local.add(5).write_volatile(0xfeed);
                }
            });
        });
    };
    touch_a_stashed_local([0x5eed_u64; 64], touch, |local| {
        // The other thread's write, made while this stack was stashed, is here.
        assert_eq!(local[5], 0xfeed);
        assert_eq!(local[6], 0x5eed);
    });
}

#[test]
fn the_kernel_writes_into_a_stashed_stack() {
    if !trap_on() {
        return;
    }
    let touch = |buf: usize| {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: writes 5 bytes from a static string to our pipe.
        let written = unsafe { libc::write(fds[1], b"hello".as_ptr().cast(), 5) };
        assert_eq!(written, 5);
        // SAFETY: `buf` is the coroutine's 16-byte array, alive while it is suspended; the
        // kernel writes 5 bytes into it (a kernel-mode fault on a released page, caught by the
        // trap).
        let n = unsafe { libc::read(fds[0], buf as *mut libc::c_void, 5) };
        let err = std::io::Error::last_os_error();
        assert_eq!(n, 5, "read(2) into a stashed stack: {err}");
        // SAFETY: our descriptors.
        unsafe { libc::close(fds[0]) };
        // SAFETY: as above.
        unsafe { libc::close(fds[1]) };
    };
    touch_a_stashed_local([0u8; 16], touch, |buf| assert_eq!(&buf[..5], b"hello"));
}

#[test]
fn writes_racing_with_stashes_are_never_lost() {
    if !trap_on() {
        return;
    }
    const ROUNDS: usize = 300;
    let shared = AtomicUsize::new(0);
    let coro = Coro::with_stack(Stack::with_size(1 << 20).unwrap(), |y| {
        let counter = AtomicU64::new(0);
        shared.store(&raw const counter as usize, Ordering::SeqCst);
        for _ in 0..ROUNDS {
            y.suspend();
        }
        // The writer's total is checked by the resumer through the same counter.
        black_box(&counter);
        y.suspend();
    });
    assert!(coro.resume());
    // SAFETY: the counter lives in the coroutine's first frame until it finishes, after the
    // scope below has ended.
    let counter = unsafe { &*(shared.load(Ordering::SeqCst) as *const AtomicU64) };
    let stop = AtomicUsize::new(0);
    let written = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            while stop.load(Ordering::Relaxed) == 0 {
                counter.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            n
        });
        for _ in 0..ROUNDS {
            // SAFETY: suspended at its saved sp, not resumed before unstash; other threads may
            // touch the stack (the trap is on).
            unsafe { coro.stack().stash(coro.saved_sp(), false) };
            std::thread::yield_now();
            // SAFETY: resumed next, by us only.
            unsafe { coro.stack().unstash() };
            assert!(coro.resume());
        }
        stop.store(1, Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert_eq!(
        counter.load(Ordering::Relaxed),
        written,
        "no increment lost"
    );
    assert!(!coro.resume());
}

#[test]
fn a_stack_grows_through_the_trap() {
    if !trap_on() {
        return;
    }
    // Fresh slots of a size no other test uses: every page below the first comes through the
    // trap thread.
    for _ in 0..3 {
        let stack = Stack::with_size((64 << 20) + 4096).unwrap();
        let sum = AtomicU64::new(0);
        let coro = Coro::with_stack(stack, |_| {
            sum.store(recurse(0, 100_000), Ordering::Relaxed); // 13-20 MiB of frames
        });
        assert!(!coro.resume());
        // depth 100,000 at the bottom, plus one for each of the 50,000 odd depths above it.
        assert_eq!(sum.load(Ordering::Relaxed), 150_000);
        goro_stack::trim(0);
    }
}

#[test]
fn the_trap_can_be_turned_off() {
    if std::env::var_os("GORO_TRAP_CHILD").is_some() {
        let err = enable_stash_trap().expect_err("GORO_DEBUG=stacktrap=off");
        assert!(err.contains("GORO_DEBUG=stacktrap=off"), "{err}");
        let coro = Coro::new(|y| y.suspend());
        assert!(coro.resume());
        // SAFETY: suspended at its saved sp, not resumed before unstash.
        let stashed = unsafe { coro.stack().stash(coro.saved_sp(), false) };
        assert!(!stashed, "without the trap only an unchecked stash stashes");
        assert!(!coro.resume());
        return;
    }
    run_test_in_child(
        "the_trap_can_be_turned_off",
        &[("GORO_TRAP_CHILD", "1"), ("GORO_DEBUG", "stacktrap=off")],
    );
}

#[test]
fn a_stash_the_kernel_will_not_release_is_undone() {
    if std::env::var_os("GORO_MLOCK_CHILD").is_some() {
        // Locked memory cannot be released with MADV_DONTNEED: the stash must give up cleanly.
        // SAFETY: mlockall has no memory-safety preconditions.
        let rc =
            unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
        assert_eq!(rc, 0, "mlockall: {}", std::io::Error::last_os_error());
        let trapped = trap_on();
        let coro = Coro::with_stack(Stack::with_size(1 << 20).unwrap(), |y| {
            let local = black_box([0x1234_u64; 32]);
            y.suspend();
            assert_eq!(black_box(&local)[9], 0x1234);
        });
        assert!(coro.resume());
        // SAFETY: suspended at its saved sp, not resumed before unstash.
        let stashed = unsafe { coro.stack().stash(coro.saved_sp(), !trapped) };
        assert!(!stashed, "a stash of locked pages reported success");
        assert!(!coro.stack().is_stashed());
        // The stack is still writable where it was protected for the copy.
        // SAFETY: resumed next, by us only (a no-op: nothing is stashed).
        unsafe { coro.stack().unstash() };
        assert!(!coro.resume());
        return;
    }
    run_test_in_child(
        "a_stash_the_kernel_will_not_release_is_undone",
        &[("GORO_MLOCK_CHILD", "1")],
    );
}
