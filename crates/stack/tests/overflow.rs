//! The overflow handler end to end, in re-executed children: an unbounded recursion on a goroutine
//! stack reports Go's message; a null-pointer write in the same program still dies by SIGSEGV;
//! deep recursion within a large stack works; released pages really leave the RSS.

mod common;

use common::{Coro, recurse, resident_pages};
use core::hint::black_box;
use goro_stack::{Stack, install_overflow_handler, prepare_thread};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

/// Set in the environment of the re-executed test binary: which scenario to run.
const CHILD_ENV: &str = "GORO_STACK_OVERFLOW_CHILD";

/// Runs the scenario named by `CHILD_ENV` in this process (which then exits) or returns.
fn run_child_scenario() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    if scenario == "null-dfl" {
        // No previous handler at all (std installs one in test binaries): the pass-on path
        // that restores SIG_DFL and lets the fault repeat.
        // SAFETY: setting the default disposition has no preconditions.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    }
    install_overflow_handler().unwrap();
    prepare_thread().unwrap();
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid struct; no core files for the expected crashes.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    let stack = Stack::with_size(256 * 1024).unwrap();
    stack.set_owner(17);
    let coro = Coro::with_stack(stack, |_| match scenario.as_str() {
        "overflow" => {
            black_box(recurse(0, u64::MAX));
        }
        "null" | "null-dfl" => {
            let p: *mut u64 = black_box(core::ptr::null_mut());
            // SAFETY: deliberately invalid: the test checks how the process dies.
            unsafe { p.write_volatile(1) };
        }
        other => panic!("unknown scenario {other}"),
    });
    coro.resume();
    // Neither scenario comes back.
    std::process::exit(0)
}

fn child(scenario: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .output()
        .unwrap()
}

/// Entry point of the children (does nothing in the parent run).
#[test]
fn child_entry() {
    run_child_scenario();
}

#[test]
fn unbounded_recursion_reports_go_style_overflow() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let out = child("overflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "goroutine 17 stack exceeds 262144-byte limit\nfatal error: stack overflow\n"
        ),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("goro::Builder::stack_size") && stderr.contains("goro::stack::maybe_grow"),
        "the message says how to get more stack: {stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "exit status {:?}", out.status);
}

#[test]
fn null_pointer_is_not_an_overflow() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    for scenario in ["null", "null-dfl"] {
        let out = child(scenario);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("stack overflow"), "{scenario}: {stderr}");
        assert!(!stderr.contains("exceeds"), "{scenario}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSEGV),
            "{scenario}: status {:?}, stderr: {stderr}",
            out.status
        );
    }
}

#[test]
fn deep_recursion_in_a_large_stack() {
    // 100,000 frames of ~128 bytes need ~13-20 MiB: a 64 MiB slot commits them as touched.
    let coro = Coro::with_stack(Stack::with_size(64 << 20).unwrap(), |_| {
        assert_eq!(recurse(0, 100_000), 100_000 + 50_000 - 1 + 1);
    });
    assert!(!coro.resume());
}

#[test]
fn release_below_gives_pages_back() {
    let stack = Stack::with_size(32 << 20).unwrap();
    let coro = Coro::with_stack(stack, |y| {
        black_box(recurse(0, 10_000));
        y.suspend();
    });
    assert!(coro.resume());
    let (limit, top) = (coro.stack().limit(), coro.stack().top());
    let before = resident_pages(limit, top);
    assert!(before > 256, "the recursion committed {before} pages");
    // SAFETY: the coroutine is suspended; nothing lives below its saved stack pointer.
    let released = unsafe { coro.stack().release_below(coro.saved_sp().0) };
    let after = resident_pages(limit, top);
    assert!(released >= (before - 4) * 4096, "released {released}");
    assert!(after <= 4, "{after} pages still resident");
    // The context still resumes and finishes.
    assert!(!coro.resume());
}

#[test]
fn trim_releases_pooled_slots() {
    let size = 6 << 20; // a size of its own
    let stack = Stack::with_size(size).unwrap();
    let (limit, top) = (stack.limit(), stack.top());
    // SAFETY: [limit, top) is the usable part of a stack we own.
    unsafe { core::ptr::write_bytes(limit, 1, size) };
    drop(stack);
    assert_eq!(
        resident_pages(limit, top),
        size / 4096,
        "freed slots stay warm"
    );
    goro_stack::trim(0);
    assert_eq!(resident_pages(limit, top), 0);
    let again = Stack::with_size(size).unwrap();
    assert_eq!(again.top(), top);
    // SAFETY: the first usable byte of a stack we own; released pages read as zero.
    assert_eq!(unsafe { again.limit().read() }, 0);
}

#[test]
fn stash_releases_the_slot_and_unstash_resumes() {
    let stack = Stack::with_size(1 << 20).unwrap();
    let coro = Coro::with_stack(stack, |y| {
        let local = black_box([0x5eed_u64; 8]);
        let before = black_box(recurse(0, 1_000));
        y.suspend();
        // The frames, their locals and a pointer into the stack survive the round trip.
        let p = black_box(&local);
        assert_eq!(p[7], 0x5eed);
        assert_eq!(recurse(0, 1_000), before);
    });
    assert!(coro.resume());
    let (limit, top) = (coro.stack().limit(), coro.stack().top());
    assert!(resident_pages(limit, top) > 4);
    let live = coro.stack().top() as usize - coro.saved_sp().0 as usize;
    assert!(live < 4096, "a small parked frame set: {live} bytes");
    // SAFETY: the coroutine is suspended at its saved sp and nothing points into its stack
    // (unchecked: this test binary never turns the trap on); it is not resumed before unstash.
    assert!(unsafe { coro.stack().stash(coro.saved_sp(), true) });
    assert_eq!(resident_pages(limit, top), 0, "every page released");
    assert!(coro.stack().is_stashed());
    // SAFETY: nothing stashes, unstashes or drops the stack while we look.
    let seen = unsafe { coro.stack().stashed_bytes() }.map(<[u8]>::len);
    assert_eq!(seen, Some(live), "the collector sees the live bytes");
    // SAFETY: we resume it next, and nothing else does.
    unsafe { coro.stack().unstash() };
    assert!(!coro.stack().is_stashed());
    assert!(!coro.resume());
}
