//! Fatal errors, in child processes: when every goroutine waits forever, the program dies with
//! Go's deadlock message and exit status 2 (a program that only waits for a timer is left alone,
//! and so is one that waits for a thread of its own, which could still wake a goroutine: schedtrace
//! says why it is not reported; once that thread has ended, the deadlock is reported again); a
//! goroutine that overflows its stack dies with Go's overflow message, and a null-pointer fault
//! is not mistaken for one.
//!
//! The children run with goro's allocator, so the heap's scavenger and (where userfaultfd works)
//! the stack trap thread exist besides the Ms and sysmon: a deadlock is reported only if each of
//! them is known as goro's.
//!
//! Runs without libtest (`harness = false`): deadlock detection never fires while threads other
//! than the runtime's exist, and libtest keeps one.

use std::process::Command;
use std::time::Duration;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

const SCENARIO: &str = "GORO_DEADLOCK_SCENARIO";

/// Runs `f` once, in a goroutine on another thread than `main_thread` (so on an M other than
/// M0), and returns its value.
fn on_another_m<R: Send + 'static>(
    main_thread: std::thread::ThreadId,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let f = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    loop {
        // Never-run goroutines are stolen by the idle M.
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let f = f.clone();
                goro::go(move || {
                    if std::thread::current().id() == main_thread {
                        return None;
                    }
                    let f = f.lock().unwrap().take()?;
                    Some(f())
                })
            })
            .collect();
        let mut value = None;
        for handle in handles {
            value = value.or(handle.join().unwrap());
        }
        if let Some(value) = value {
            return value;
        }
    }
}

fn scenario(name: &str) {
    let runtime = goro::Runtime::builder().max_procs(2).build().unwrap();
    let main_thread = std::thread::current().id();
    match name {
        "main_waits_forever" => runtime.run(|| {
            let (_tx, rx) = goro::chan::channel::<u32>(0);
            let _ = rx.recv();
        }),
        "deadlock_after_collections" => runtime.run(|| {
            // The collector's own threads (the sweeper) cannot wake a goroutine.
            for _ in 0..3 {
                goro::gc::collect();
            }
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
        // A goroutine on an M other than M0 starts an unnamed std thread (on Linux it inherits
        // the M's name), which sends after a second while every goroutine is blocked.
        "foreign_thread_sends" => runtime.run(move || {
            let (tx, rx) = goro::chan::channel::<u32>(0);
            let sender = on_another_m(main_thread, move || {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    tx.send(42);
                })
            });
            println!("received {:?}", rx.recv());
            sender.join().unwrap();
        }),
        // The same thread sends at once and ends; then the main goroutine waits forever.
        "deadlock_after_foreign_thread" => runtime.run(move || {
            let (tx, rx) = goro::chan::channel::<u32>(1);
            on_another_m(main_thread, move || std::thread::spawn(move || tx.send(42)))
                .join()
                .unwrap();
            assert_eq!(rx.recv(), Some(42));
            let (_tx, rx) = goro::chan::channel::<u32>(0);
            let _ = rx.recv();
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
    run_child_with(name, &[])
}

/// Runs scenario `name` in a child process with `env` added; a child still running after
/// [`CHILD_TIMEOUT`] (a deadlock that is never reported) is killed and fails the test.
fn run_child_with(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SCENARIO, name)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the child process");
    let start = std::time::Instant::now();
    // (The children print a few lines at most: the pipes cannot fill meanwhile.)
    while child.try_wait().expect("the child's status").is_none() {
        if start.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("the child's output");
            panic!(
                "{name}: still running after {CHILD_TIMEOUT:?}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("the child's output")
}

/// How long a scenario may run (they take a second at most).
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    if let Ok(name) = std::env::var(SCENARIO) {
        scenario(&name);
        return;
    }
    let mut passed = 0;
    for name in [
        "main_waits_forever",
        "everyone_waits",
        "deadlock_after_foreign_thread",
        "deadlock_after_collections",
    ] {
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

    // A thread that is not goro's could still wake a goroutine: no deadlock is reported, and the
    // program ends normally once it has.
    let start = std::time::Instant::now();
    let out = run_child("foreign_thread_sends");
    assert!(
        out.status.success(),
        "foreign_thread_sends: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "received Some(42)"
    );
    assert!(start.elapsed() >= Duration::from_secs(1));
    println!("test a_goroutine_waiting_for_a_std_thread_it_started_is_not_a_deadlock ... ok");
    passed += 1;

    // schedtrace says why it is not reported.
    let out = run_child_with("foreign_thread_sends", &[("GORO_DEBUG", "schedtrace=50")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schedtrace: {:?} {stderr}",
        out.status
    );
    let line = "  all goroutines are blocked; not reported as a deadlock: 1 thread outside the \
                runtime could wake one (thread id ";
    assert!(
        stderr.lines().any(|l| l.starts_with(line)),
        "schedtrace: no line {line:?} in {stderr}"
    );
    println!("test schedtrace_says_why_a_blocked_program_is_not_a_deadlock ... ok");
    passed += 1;
    println!("{passed} passed, 0 failed");
}
