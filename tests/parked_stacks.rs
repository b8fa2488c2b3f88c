//! The stack memory of long-parked goroutines goes back to the OS, and they resume intact. By
//! default sysmon only trims the pages below a parked goroutine's stack pointer, and never
//! stashes (nor starts the stash trap), whatever `GORO_DEBUG` says; opted in with the unsafe
//! `stash_parked_stacks` (under the trap) or `stash_parked_stacks_unchecked`, it moves the live
//! bytes off the stack and releases the whole slot, and a thread touching a stashed stack gets
//! its bytes back. (Its own file: it reads the process's RSS; one runtime runs at a time, so
//! the tests do not overlap.)

use goro::gc::Gc;
use std::time::{Duration, Instant};

mod common;
use common::{rss_bytes, touch_stack};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

/// Waits (sleeping as a goroutine) until `done()` holds, for at most `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        goro::sleep(Duration::from_millis(50));
    }
    true
}

/// A frame that must survive the goroutine's parking: filled before, checked after.
fn pattern(seed: u64) -> [u64; 16] {
    std::array::from_fn(|i| seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64)
}

/// Spawns `n` goroutines that each keep `pattern(seed)` in their frame, run `before_park(seed)`,
/// block receiving from `rx`, then check the frame and return `after_wake(kept, seed, got)`.
/// Returns once every one of them has reached its receive.
fn spawn_parkers<K: 'static>(
    n: u64,
    rx: &goro::chan::Receiver<u64>,
    before_park: fn(u64) -> K,
    after_wake: fn(K, u64, u64) -> u64,
) -> Vec<goro::JoinHandle<u64>> {
    let parked = std::sync::Arc::new(goro::sync::WaitGroup::new());
    let handles = (0..n)
        .map(|seed| {
            let (rx, parked) = (rx.clone(), parked.clone());
            parked.add(1);
            goro::go(move || {
                let mine = std::hint::black_box(pattern(seed));
                let kept = before_park(seed);
                parked.done();
                let got = rx.recv().unwrap();
                assert_eq!(std::hint::black_box(mine), pattern(seed), "a frame changed");
                after_wake(kept, seed, got)
            })
        })
        .collect();
    parked.wait();
    handles
}

/// 200 goroutines commit 256 KiB of stack each, then park in a channel receive with a pattern
/// in their frames. Waits until sysmon has released most of those pages, and two more epochs
/// (a goroutine is trimmed or stashed once per park, so nothing can happen to them later);
/// then wakes them, checks their frames, and returns how many stacks were stashed meanwhile.
fn park_deep_goroutines_until_released(builder: goro::Builder) -> u64 {
    const GOROUTINES: u64 = 200;
    const DEPTH: usize = 256 << 10;
    let runtime = builder.max_procs(2).build().unwrap();
    runtime.run(|| {
        let stashes = goro::stack::stashes();
        let (tx, rx) = goro::chan::channel::<u64>(0);
        let base = rss_bytes();
        let handles = spawn_parkers(
            GOROUTINES,
            &rx,
            |_| touch_stack(DEPTH),
            |depth, _, got| depth + got,
        );
        goro::sleep(Duration::from_millis(20));
        let committed = rss_bytes().saturating_sub(base);
        assert!(
            committed >= (GOROUTINES as usize * DEPTH) / 2,
            "the goroutines committed only {committed} bytes of stack"
        );
        let released = wait_until(Duration::from_secs(10), || {
            rss_bytes().saturating_sub(base) < committed / 4
        });
        let kept = rss_bytes().saturating_sub(base);
        assert!(
            released,
            "{kept} of {committed} bytes stayed committed 10 s after the goroutines parked"
        );
        goro::sleep(Duration::from_millis(1_100));
        for _ in 0..GOROUTINES {
            tx.send(1);
        }
        for handle in handles {
            assert_eq!(handle.join().unwrap(), 65 + 1);
        }
        goro::stack::stashes() - stashes
    })
}

#[test]
fn pages_below_a_long_parked_goroutine_go_back_and_its_frames_stay() {
    let stashed = park_deep_goroutines_until_released(goro::Runtime::builder());
    assert_eq!(stashed, 0, "the default runtime stashed {stashed} stacks");
}

/// Runs only in the children started below: trims with the builder `GORO_TRIM_CHILD` names,
/// under the `GORO_DEBUG` the parent chose, and checks that nothing was stashed and the trap
/// never started.
#[test]
fn trim_only_child() {
    let Some(which) = std::env::var_os("GORO_TRIM_CHILD") else {
        return;
    };
    let builder = goro::Runtime::builder();
    let builder = match which.to_str() {
        Some("default") => builder,
        // SAFETY: no goroutine here lends its stack to anyone or does I/O into it.
        Some("stash") => unsafe { builder.stash_parked_stacks(true) },
        // SAFETY: as above.
        Some("unchecked") => unsafe { builder.stash_parked_stacks_unchecked(true) },
        other => panic!("GORO_TRIM_CHILD={other:?}"),
    };
    let stashed = park_deep_goroutines_until_released(builder);
    assert_eq!(stashed, 0, "{which:?} stashed {stashed} stacks");
    assert_eq!(goro::stack::stashes(), 0);
    assert!(
        !goro::stack::stash_trap_running(),
        "{which:?} started the stash trap"
    );
}

#[test]
fn by_default_long_parked_goroutines_are_trimmed_never_stashed_and_the_trap_never_starts() {
    common::run_test_in_child(
        "trim_only_child",
        &[("GORO_TRIM_CHILD", "default"), ("GORO_DEBUG", "")],
    );
}

#[test]
fn no_goro_debug_setting_turns_a_stash_on() {
    for (builder, debug) in [
        // Keys that do not exist must not mean "on".
        ("default", "stackstash=on,stacktrap=on,stash=on"),
        // The trapped opt-in without its trap trims: the promise it carries does not cover
        // other threads touching the stack.
        ("stash", "stacktrap=off"),
        // `stackstash=off` overrides both opt-ins.
        ("stash", "stackstash=off"),
        ("unchecked", "stackstash=off"),
    ] {
        common::run_test_in_child(
            "trim_only_child",
            &[("GORO_TRIM_CHILD", builder), ("GORO_DEBUG", debug)],
        );
    }
}

/// Whether the stash trap runs here; where it cannot (not root), checks that it says why.
fn trap_runs() -> bool {
    match goro::stack::stash_trap() {
        Ok(()) => true,
        Err(why) => {
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            let off = std::env::var("GORO_DEBUG").is_ok_and(|v| v.contains("stacktrap=off"));
            assert!(!root || off, "the stash trap should run as root: {why}");
            assert!(why.contains("userfaultfd") || off, "{why}");
            false
        }
    }
}

/// 20,000 goroutines park holding a `Gc` only in their frames; sysmon stashes them; a
/// collection runs while they are stashed; they resume intact.
fn stashed_goroutines_cost_their_live_bytes(builder: goro::Builder) {
    const GOROUTINES: u64 = 20_000;
    let runtime = builder.max_procs(2).build().unwrap();
    runtime.run(|| {
        let (tx, rx) = goro::chan::channel::<u64>(0);
        goro::gc::collect();
        let stashes = goro::stack::stashes();
        let base = rss_bytes();
        let handles = spawn_parkers(
            GOROUTINES,
            &rx,
            // Held only by the goroutine's frame: the collector must find it in the stashed bytes.
            |seed| std::hint::black_box(Gc::new(seed * 3)),
            |boxed, seed, got| {
                assert_eq!(*boxed, seed * 3, "a Gc held by a stashed stack was freed");
                got + seed
            },
        );
        goro::sleep(Duration::from_millis(20));
        let per_goroutine = || rss_bytes().saturating_sub(base) / GOROUTINES as usize;
        let resident = per_goroutine();
        assert!(
            resident >= 4096,
            "a parked goroutine costs only {resident} bytes before stashing"
        );
        // Each gives back its page but keeps its live bytes in the heap: a few hundred in a
        // release build (about half of what it cost), up to 3 KiB in a debug one. At least a
        // tenth must go in either (9 MB over all of them).
        let stashed = wait_until(Duration::from_secs(10), || {
            per_goroutine() * 10 <= resident * 9
        });
        let after = per_goroutine();
        assert!(
            stashed,
            "parked goroutines still cost {after} bytes each (from {resident}) after 10 s"
        );
        let all_stashed = wait_until(Duration::from_secs(10), || {
            goro::stack::stashes() - stashes >= GOROUTINES
        });
        let count = goro::stack::stashes() - stashes;
        assert!(
            all_stashed,
            "only {count} of {GOROUTINES} stacks were stashed after 10 s"
        );
        // A collection while they are stashed, then objects of the same size to reuse any slot
        // it wrongly freed.
        goro::gc::collect();
        let fillers: Vec<Gc<u64>> = (0..GOROUTINES).map(|_| Gc::new(u64::MAX)).collect();
        for _ in 0..GOROUTINES {
            tx.send(7);
        }
        let mut sum = 0;
        for handle in handles {
            sum += handle.join().unwrap();
        }
        assert_eq!(sum, GOROUTINES * 7 + GOROUTINES * (GOROUTINES - 1) / 2);
        drop(fillers);
    });
}

#[test]
fn stashed_goroutines_cost_their_live_bytes_and_resume_intact() {
    let builder = goro::Runtime::builder();
    if trap_runs() {
        // SAFETY: no goroutine here does I/O into its stack, and no other process reads it.
        stashed_goroutines_cost_their_live_bytes(unsafe { builder.stash_parked_stacks(true) });
    } else {
        // SAFETY: no goroutine here lends its stack to another thread or does I/O into it.
        stashed_goroutines_cost_their_live_bytes(unsafe {
            builder.stash_parked_stacks_unchecked(true)
        });
    }
}

/// Runs only in the child started below, with the trap turned off.
#[test]
fn unchecked_stash_child() {
    if std::env::var_os("GORO_UNCHECKED_CHILD").is_none() {
        return;
    }
    assert!(!trap_runs(), "GORO_DEBUG=stacktrap=off leaves the trap off");
    // SAFETY: no goroutine here lends its stack to another thread or does I/O into it.
    stashed_goroutines_cost_their_live_bytes(unsafe {
        goro::Runtime::builder().stash_parked_stacks_unchecked(true)
    });
}

#[test]
fn without_the_trap_the_unchecked_option_still_stashes() {
    common::run_test_in_child(
        "unchecked_stash_child",
        &[
            ("GORO_UNCHECKED_CHILD", "1"),
            ("GORO_DEBUG", "stacktrap=off"),
        ],
    );
}

#[test]
fn a_thread_borrowing_a_parked_goroutines_locals_uses_them_while_it_is_stashed() {
    if !trap_runs() {
        return;
    }
    // SAFETY: the thread below touches the goroutine's stack through the page tables only (the
    // trap catches that); no I/O goes into it and no other process reads it.
    let builder = unsafe { goro::Runtime::builder().stash_parked_stacks(true) };
    let runtime = builder.max_procs(2).build().unwrap();
    runtime.run(|| {
        let restores = goro::stack::trap_restores();
        let stashes = goro::stack::stashes();
        let (tx, rx) = goro::chan::channel::<()>(0);
        let sum = goro::go(move || {
            let mut local = std::hint::black_box([0x5eed_u64; 32]);
            std::thread::scope(|s| {
                let borrowed = &mut local;
                s.spawn(move || {
                    // Sysmon stashes a goroutine parked for one to two 500 ms epochs: wait for
                    // both parked goroutines (this one and the main one, in `join`).
                    let start = std::time::Instant::now();
                    while goro::stack::stashes() < stashes + 2 {
                        assert!(
                            start.elapsed() < Duration::from_secs(30),
                            "no stash in 30 s"
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    assert_eq!(borrowed[7], 0x5eed, "a stashed local read back");
                    borrowed[3] = 99;
                    tx.send(());
                });
                // Parks the goroutine (its stack is stashed) while the thread uses its local.
                rx.recv().unwrap();
            });
            local[3] + local[7]
        })
        .join()
        .unwrap();
        assert_eq!(sum, 99 + 0x5eed, "the thread's write landed");
        assert!(
            goro::stack::trap_restores() > restores,
            "the goroutine was stashed and the thread's touch put its bytes back"
        );
    });
}
