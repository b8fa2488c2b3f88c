//! Guard pages, slot pooling at scale, and the mprotect fallback (in a re-executed child).

mod common;

use goro_stack::{GUARD_SIZE, GuardKind, Stack, guard_kind};

/// Set in the environment of the re-executed test binary.
const CHILD_ENV: &str = "GORO_STACK_TEST_CHILD";

fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Forks a child that writes one byte at `addr` and exits; returns its wait status.
/// The child only runs async-signal-safe code (setrlimit, a store, _exit), so forking from a
/// multi-threaded test process is fine.
fn write_in_child(addr: *mut u8) -> libc::c_int {
    // SAFETY: fork has no preconditions; the child below only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: in the child: no core dump for the expected SIGSEGV; then a plain store to
        // memory that is either ours and writable or a guard (which kills the child, as tested).
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            core::ptr::write_volatile(addr, 1);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    status
}

fn assert_segv(status: libc::c_int, what: &str) {
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
        "{what}: expected SIGSEGV, wait status {status:#x}"
    );
}

fn assert_exit_ok(status: libc::c_int, what: &str) {
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what}: expected a clean exit, wait status {status:#x}"
    );
}

fn check_guard(stack: &Stack) {
    let limit = stack.limit();
    let guard = stack.guard();
    assert_eq!(guard.end, limit as usize);
    assert!(guard.len() >= GUARD_SIZE);
    assert_segv(
        write_in_child(limit.wrapping_sub(1)),
        "one byte below limit",
    );
    assert_segv(
        write_in_child(guard.start as *mut u8),
        "bottom of the guard",
    );
    assert_exit_ok(write_in_child(limit), "at limit");
    assert_exit_ok(
        write_in_child(stack.top().wrapping_sub(1)),
        "just below top",
    );
}

#[test]
fn guard_kind_is_madvise_on_this_kernel() {
    if std::env::var_os(CHILD_ENV).is_none() {
        assert_eq!(guard_kind(), GuardKind::MadviseGuard);
    }
}

#[test]
fn writing_below_limit_faults() {
    check_guard(&Stack::new().unwrap());
    check_guard(&Stack::with_size(64 * 1024).unwrap());
}

#[test]
fn reused_slot_keeps_its_guard() {
    let size = 11 * 4096; // used by no other test
    let top = {
        let s = Stack::with_size(size).unwrap();
        s.top()
    };
    let again = Stack::with_size(size).unwrap();
    assert_eq!(again.top(), top, "freed slot comes back from the pool");
    check_guard(&again);
}

#[test]
fn ten_thousand_stacks_without_ten_thousand_mappings() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let size = 13 * 4096; // a size of its own, so the count below is this test's
    let before = map_count();
    let stacks: Vec<Stack> = (0..10_000)
        .map(|_| Stack::with_size(size).unwrap())
        .collect();
    for s in &stacks {
        // Commit one page per stack and check the slots do not overlap.
        // SAFETY: top - 8 is inside the usable part of a slot we own.
        unsafe { s.top().cast::<usize>().sub(1).write(s.top() as usize) };
    }
    for s in &stacks {
        // SAFETY: as above.
        let word = unsafe { s.top().cast::<usize>().sub(1).read() };
        assert_eq!(word, s.top() as usize);
    }
    let after = map_count();
    // 10 reservations of 1024 slots; other tests' threads add a few mappings meanwhile.
    assert!(after < before + 200, "maps grew from {before} to {after}");
    let mut tops: Vec<*mut u8> = stacks.iter().map(Stack::top).collect();
    drop(stacks);
    let again: Vec<Stack> = (0..10_000)
        .map(|_| Stack::with_size(size).unwrap())
        .collect();
    let mut tops_again: Vec<*mut u8> = again.iter().map(Stack::top).collect();
    tops.sort_unstable();
    tops_again.sort_unstable();
    assert_eq!(
        tops, tops_again,
        "the second round is served entirely from the pool"
    );
}

#[test]
fn mprotect_fallback_in_a_child_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let stdout = common::run_test_in_child(
        "mprotect_child",
        &[(CHILD_ENV, "1"), ("GORO_DEBUG", "stackguard=mprotect")],
    );
    assert!(stdout.contains("budget exhausted after"), "{stdout}");
}

/// Runs only in the child started above, with `GORO_DEBUG=stackguard=mprotect`.
#[test]
fn mprotect_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    assert_eq!(guard_kind(), GuardKind::Mprotect);
    let s = Stack::new().unwrap();
    check_guard(&s);

    // Each mprotect guard splits the reservation: the maps grow with the stack count...
    let before = map_count();
    let mut stacks: Vec<Stack> = (0..100).map(|_| Stack::with_size(4096).unwrap()).collect();
    let after = map_count();
    assert!(
        after >= before + 150,
        "maps grew only from {before} to {after}"
    );

    // ...until the VMA budget stops it with an error naming the sysctl, below the kernel limit.
    let err = loop {
        match Stack::with_size(4096) {
            Ok(s) => stacks.push(s),
            Err(e) => break e,
        }
        assert!(stacks.len() < 100_000, "the budget never ran out");
    };
    let msg = err.to_string();
    assert!(msg.contains("vm.max_map_count"), "{msg}");
    assert!(msg.contains("sysctl -w vm.max_map_count="), "{msg}");
    let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        map_count() < max,
        "the budget kept the process below vm.max_map_count"
    );
    println!("budget exhausted after {} stacks: {msg}", stacks.len());

    // Freed slots keep their guard and are reused without spending budget.
    let top = stacks.pop().unwrap().top();
    let again = Stack::with_size(4096).unwrap();
    assert_eq!(again.top(), top);
    check_guard(&again);
}
