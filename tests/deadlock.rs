//! Fatal errors, in child processes: when every goroutine waits forever, the program dies with
//! Go's deadlock message and exit status 2 (a program that only waits for a timer is left alone);
//! a goroutine that overflows its stack dies with Go's overflow message, and a null-pointer fault
//! is not mistaken for one.
//!
//! Runs without libtest (`harness = false`): deadlock detection never fires while threads other
//! than the runtime's exist, and libtest keeps one.

use std::process::Command;
use std::time::Duration;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

const SCENARIO: &str = "GORO_DEADLOCK_SCENARIO";

fn scenario(name: &str) {
    let runtime = goro::Runtime::builder().max_procs(2).build().unwrap();
    match name {
        "main_waits_forever" => runtime.run(|| {
            let (_tx, rx) = goro::chan::channel::<u32>(0);
            let _ = rx.recv();
        }),
        "everyone_waits" => runtime.run(|| {
            let (tx, rx) = goro::chan::channel::<u32>(0);
            let rx2 = rx.clone();
            let h = goro::go(move || rx2.recv());
            goro::sleep(Duration::from_millis(10));
            let _ = h.join();
            drop((tx, rx));
        }),
        "sleeper_finishes" => runtime.run(|| {
            let (tx, rx) = goro::chan::channel::<u32>(0);
            goro::go(move || {
                goro::sleep(Duration::from_millis(50));
                tx.send(7);
            });
            assert_eq!(rx.recv(), Some(7));
            println!("finished");
        }),
        "overflow" => runtime.run(|| {
            #[allow(unconditional_recursion, reason = "the scenario is the overflow")]
            fn recurse(depth: u64) -> u64 {
                let frame = std::hint::black_box([depth; 32]);
                frame[1] + recurse(depth + 1)
            }
            goro::go(|| recurse(0)).join().map(drop).unwrap_or_default();
        }),
        "null_pointer" => runtime.run(|| {
            goro::go(|| {
                let null = std::hint::black_box(std::ptr::null_mut::<u64>());
                // SAFETY: deliberately invalid, to check the fault is not called an overflow.
                unsafe { null.write_volatile(1) };
            })
            .join()
            .map(drop)
            .unwrap_or_default();
        }),
        other => panic!("unknown scenario {other}"),
    }
}

fn run_child(name: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .env(SCENARIO, name)
        .output()
        .expect("the child process")
}

fn main() {
    if let Ok(name) = std::env::var(SCENARIO) {
        scenario(&name);
        return;
    }
    let mut passed = 0;
    for name in ["main_waits_forever", "everyone_waits"] {
        let out = run_child(name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: status {:?}, stderr {stderr}",
            out.status
        );
        assert!(
            stderr.starts_with("fatal error: all goroutines are asleep - deadlock!"),
            "{name}: stderr {stderr}"
        );
        println!("test {name} ... ok");
        passed += 1;
    }
    let out = run_child("overflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = stderr.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("goroutine ") && first.ends_with("stack exceeds 1048576-byte limit"),
        "overflow: stderr {stderr}"
    );
    assert_eq!(
        lines.next(),
        Some("fatal error: stack overflow"),
        "overflow: stderr {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "overflow: status {:?}",
        out.status
    );
    println!("test overflow ... ok");
    passed += 1;

    let out = run_child("null_pointer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("stack exceeds"),
        "null_pointer: misreported as overflow: {stderr}"
    );
    assert!(
        !out.status.success(),
        "null_pointer: status {:?}",
        out.status
    );
    println!("test null_pointer ... ok");
    passed += 1;

    let out = run_child("sleeper_finishes");
    assert!(
        out.status.success(),
        "sleeper_finishes: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "finished");
    println!("test sleeper_finishes ... ok");
    passed += 1;
    println!("{passed} passed, 0 failed");
}
