//! Deadlock detection, in child processes: when every goroutine waits forever, the program dies
//! with Go's message and exit status 2; a program that only waits for a timer is left alone.
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
