//! Starting runtimes: builder values, environment, panics and exits of the main goroutine.

mod common;

use goro::{BuildError, Runtime};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

/// The tests of this file run one at a time, so "outside a runtime" really is outside.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .expect("a string panic payload")
}

#[test]
fn bad_builder_values_name_the_fix() {
    let _serial = serial();
    let error = Runtime::builder().max_procs(0).build().unwrap_err();
    assert_eq!(error, BuildError::MaxProcs(0));
    assert_eq!(
        error.to_string(),
        "max_procs must be between 1 and 256, got 0"
    );
    let error = Runtime::builder().stack_size(100).build().unwrap_err();
    assert_eq!(
        error.to_string(),
        "stack_size must be between 16384 and 1073741824 bytes, got 100"
    );
}

#[test]
fn runs_return_values_and_can_follow_each_other() {
    let _serial = serial();
    for procs in 1..=3 {
        let runtime = Runtime::builder().max_procs(procs).build().unwrap();
        assert_eq!(runtime.max_procs(), procs);
        let n = runtime.run(move || {
            assert_eq!(goro_procs(), procs);
            goro::go(|| 2).join().unwrap() + 1
        });
        assert_eq!(n, 3);
    }
}

fn goro_procs() -> usize {
    // The number of Ps shows as parallel workers: spawn one blocked goroutine per P and count
    // the threads they ran on.
    let (tx, rx) = goro::chan::channel::<()>(0);
    let wg = std::sync::Arc::new(goro::sync::WaitGroup::new());
    let ids = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut handles = Vec::new();
    for _ in 0..64 {
        wg.add(1);
        let (wg, ids, rx) = (wg.clone(), ids.clone(), rx.clone());
        handles.push(goro::go(move || {
            ids.lock().unwrap().insert(std::thread::current().id());
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(2) {}
            wg.done();
            rx.recv();
        }));
    }
    wg.wait();
    drop(tx);
    for h in handles {
        h.join().unwrap();
    }
    ids.lock().unwrap().len()
}

#[test]
fn a_panic_in_main_reaches_the_caller() {
    let _serial = serial();
    let error = std::panic::catch_unwind(|| goro::run(|| panic!("main failed"))).unwrap_err();
    assert_eq!(*error.downcast_ref::<&str>().unwrap(), "main failed");
}

#[test]
fn exit_in_main_says_so() {
    let _serial = serial();
    let error = std::panic::catch_unwind(|| goro::run(|| goro::exit())).unwrap_err();
    let message = message(&*error);
    assert!(
        message.starts_with("goro::exit called in the main goroutine"),
        "{message}"
    );
}

#[test]
fn gc_new_outside_a_runtime_says_so() {
    let _serial = serial();
    let error = std::panic::catch_unwind(|| goro::Gc::new(1u8)).unwrap_err();
    let message = message(&*error);
    assert!(
        message.starts_with("Gc::new called outside a goro runtime"),
        "{message}"
    );
}

#[test]
fn wait_group_waits_for_all() {
    let _serial = serial();
    let total = goro::run(|| {
        let wg = std::sync::Arc::new(goro::sync::WaitGroup::new());
        let sum = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for i in 0..1000 {
            wg.add(1);
            let (wg, sum) = (wg.clone(), sum.clone());
            goro::go(move || {
                sum.fetch_add(i, std::sync::atomic::Ordering::Relaxed);
                wg.done();
            });
        }
        wg.wait();
        sum.load(std::sync::atomic::Ordering::Relaxed)
    });
    assert_eq!(total, 999 * 1000 / 2);
    let error = std::panic::catch_unwind(|| goro::sync::WaitGroup::new().done()).unwrap_err();
    assert_eq!(
        *error.downcast_ref::<&str>().unwrap(),
        "sync: negative WaitGroup counter"
    );
}

#[test]
fn schedtrace_prints_gos_line() {
    if std::env::var("GORO_SCHEDTRACE_CHILD").is_ok() {
        let runtime = Runtime::builder().max_procs(2).build().unwrap();
        runtime.run(|| {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(80) {
                let handles: Vec<_> = (0..100).map(|i| goro::go(move || i * 2)).collect();
                for h in handles {
                    h.join().unwrap();
                }
                goro::sleep(std::time::Duration::from_millis(1));
            }
        });
        return;
    }
    let _serial = serial();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "schedtrace_prints_gos_line", "--nocapture"])
        .env("GORO_SCHEDTRACE_CHILD", "1")
        .env("GORO_DEBUG", "schedtrace=10")
        .output()
        .expect("the child process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("SCHED ")).collect();
    assert!(lines.len() >= 3, "too few SCHED lines in: {stderr}");
    for line in lines {
        // SCHED 10ms: gomaxprocs=2 idleprocs=1 threads=4 spinningthreads=0 idlethreads=1
        // runqueue=0 [0 0]
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 10, "line: {line}");
        assert!(fields[1].ends_with("ms:"), "line: {line}");
        assert_eq!(fields[2], "gomaxprocs=2", "line: {line}");
        for (field, key) in fields[3..8].iter().zip([
            "idleprocs",
            "threads",
            "spinningthreads",
            "idlethreads",
            "runqueue",
        ]) {
            let (k, v) = field.split_once('=').expect("key=value");
            assert_eq!(k, key, "line: {line}");
            let n: usize = v.parse().expect("a count");
            if key == "spinningthreads" || key == "idleprocs" {
                assert!(n <= 2, "line: {line}");
            }
        }
        assert!(
            fields[8].starts_with('[') && fields[9].ends_with(']'),
            "line: {line}"
        );
    }
}

#[derive(goro::Trace)]
struct Pair {
    left: Option<goro::Gc<Pair>>,
    right: Option<goro::Gc<Pair>>,
}

fn tree(depth: u32) -> goro::Gc<Pair> {
    let child = || (depth > 0).then(|| tree(depth - 1));
    goro::Gc::new(Pair {
        left: child(),
        right: child(),
    })
}

#[test]
fn gctrace_prints_gos_line_with_the_cpu_split_and_stats_keep_it() {
    if std::env::var("GORO_GCTRACE_CHILD").is_ok() {
        let runtime = Runtime::builder().max_procs(2).build().unwrap();
        runtime.run(|| {
            let kept = tree(12);
            for _ in 0..20 {
                goro::gc::keep_alive(&tree(10));
            }
            for _ in 0..3 {
                goro::gc::collect();
            }
            goro::gc::keep_alive(&kept);
            let stats = goro::gc::stats();
            assert!(stats.cpu.pauses > std::time::Duration::ZERO, "{stats:?}");
            assert!(stats.cpu.sweeping > std::time::Duration::ZERO, "{stats:?}");
            assert_eq!(
                stats.cpu.total(),
                stats.cpu.pauses + stats.cpu.marking + stats.cpu.sweeping
            );
            assert!(
                stats.cpu_fraction > 0.0 && stats.cpu_fraction.is_finite(),
                "{stats:?}"
            );
            assert!(stats.to_string().contains("of the Ps' time"), "{stats}");
            // The static data scanned is counted apart (gctrace's globals): this binary's
            // touched `.data` and `.bss`, a part of the roots.
            assert!(
                stats.globals_scanned > 0 && stats.globals_scanned < stats.roots_scanned,
                "{stats:?}"
            );
        });
        return;
    }
    let _serial = serial();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "gctrace_prints_gos_line_with_the_cpu_split_and_stats_keep_it",
            "--nocapture",
        ])
        .env("GORO_GCTRACE_CHILD", "1")
        .env("GORO_DEBUG", "gctrace=1")
        .output()
        .expect("the child process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("gc ")).collect();
    assert!(lines.len() >= 3, "too few gc lines in: {stderr}");
    for line in lines {
        // gc 7 @0.052s 12%: 0.175+4.985+0.381 ms clock, 0.351+0.811+0.761 ms cpu, 13->13->6 MB,
        // 12 MB goal, 0 MB stacks, 0 MB globals, 2 P
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(
            fields[2].starts_with('@') && fields[3].ends_with("%:"),
            "line: {line}"
        );
        for (at, unit) in [(4, "clock,"), (7, "cpu,")] {
            let phases: Vec<f64> = fields[at]
                .split('+')
                .map(|ms| ms.parse().expect("milliseconds"))
                .collect();
            assert_eq!(phases.len(), 3, "line: {line}");
            assert_eq!(
                (fields[at + 1], fields[at + 2]),
                ("ms", unit),
                "line: {line}"
            );
        }
        assert!(line.contains(" MB goal, ") && line.ends_with(" P") || line.ends_with("(forced)"));
        let at = fields
            .iter()
            .position(|&field| field == "globals,")
            .expect("a globals field");
        assert_eq!(fields[at - 1], "MB", "line: {line}");
        fields[at - 2]
            .parse::<usize>()
            .expect("megabytes of globals");
    }
}

#[test]
fn a_spawned_and_joined_goroutine_reuses_its_g_and_stack_and_allocates_one_task() {
    // The heap's counters are the process's: other tests' threads (winding down, printing a
    // caught panic) would count too. Measure in a process of its own.
    if std::env::var_os("GORO_TEST_ALONE").is_none() {
        common::run_test_in_child(
            "a_spawned_and_joined_goroutine_reuses_its_g_and_stack_and_allocates_one_task",
            &[("GORO_TEST_ALONE", "1")],
        );
        return;
    }
    let _serial = serial();
    const N: u64 = 10_000;
    let runtime = Runtime::builder().max_procs(1).build().unwrap();
    let (mallocs, spans_before, spans_after) = runtime.run(|| {
        let cycle = |i: u64| goro::go(move || i + 1).join().unwrap();
        // Warm up: the first goroutines make the G and stack the later ones reuse.
        for i in 0..100 {
            assert_eq!(cycle(i), i + 1);
        }
        let before = goro::alloc::stats();
        for i in 0..N {
            assert_eq!(cycle(i), i + 1);
        }
        let after = goro::alloc::stats();
        (
            after.mallocs - before.mallocs,
            before.spans_inuse,
            after.spans_inuse,
        )
    });
    // One allocation per goroutine, its task (closure and result packet), from this thread's
    // cache; the G comes from the P's free list and the stack from the P's cache. The count is
    // the process's: another runtime thread (sysmon, the sweeper) may flush a few batched
    // allocations of its own meanwhile, so a handful more is not this loop's.
    assert!(
        (N..N + 8).contains(&mallocs),
        "{mallocs} allocations for {N} spawn-and-join cycles"
    );
    // Other runtime threads (sysmon) may take a span for their own first allocations; the
    // cycles themselves take none (10,000 Gs or stacks would need hundreds).
    assert!(
        spans_after <= spans_before + 2,
        "spans grew from {spans_before} to {spans_after} over {N} spawn-and-join cycles"
    );
}

/// Set in the child process of `an_out_of_range_goro_max_procs_is_named_in_the_error`.
const MAX_PROCS_CHILD: &str = "GORO_TEST_MAX_PROCS_CHILD";

#[test]
fn an_out_of_range_goro_max_procs_is_named_in_the_error() {
    if std::env::var_os(MAX_PROCS_CHILD).is_some() {
        let error = Runtime::builder().build().unwrap_err();
        println!("error: {error}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_out_of_range_goro_max_procs_is_named_in_the_error",
            "--nocapture",
        ])
        .env(MAX_PROCS_CHILD, "1")
        .env("GORO_MAX_PROCS", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "error: cannot parse GORO_MAX_PROCS=\"0\": expected a number of Ps from 1 to 256"
        ),
        "stdout: {stdout}"
    );
}

/// Where the panics `f` raises are reported (file, line), through a panic hook.
fn panic_location(f: impl FnOnce()) -> (String, u32) {
    static WHERE: std::sync::Mutex<Option<(String, u32)>> = std::sync::Mutex::new(None);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().expect("a panic location");
        *WHERE.lock().unwrap() = Some((location.file().to_string(), location.line()));
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    assert!(outcome.is_err(), "no panic");
    WHERE.lock().unwrap().take().expect("the hook ran")
}

#[test]
fn panics_on_bad_use_point_at_the_callers_line() {
    let _serial = serial();
    let line = line!() + 2;
    let (file, at) = panic_location(|| {
        std::hint::black_box(goro::Gc::new(1u8));
    });
    assert_eq!((file.as_str(), at), ("tests/runtime.rs", line));
    let line = line!() + 1;
    let (file, at) = panic_location(|| goro::gc::collect());
    assert_eq!((file.as_str(), at), ("tests/runtime.rs", line));
    let cell = goro::gc::GcCell::new(1u32);
    let _reading = cell.borrow();
    let line = line!() + 1;
    let (file, at) = panic_location(|| cell.set(2));
    assert_eq!((file.as_str(), at), ("tests/runtime.rs", line));
}

#[test]
fn channel_panics_point_at_the_callers_line() {
    let _serial = serial();
    goro::run(|| {
        let (tx, rx) = goro::chan::channel::<u32>(1);
        tx.close();
        let line = line!() + 1;
        let (file, at) = panic_location(|| tx.send(1));
        assert_eq!((file.as_str(), at), ("tests/runtime.rs", line));
        let line = line!() + 1;
        let (file, at) = panic_location(|| tx.close());
        assert_eq!((file.as_str(), at), ("tests/runtime.rs", line));
        drop(rx);
    });
}

#[test]
fn a_receiver_iterates_by_value_until_closed() {
    let _serial = serial();
    let sum = goro::run(|| {
        let (tx, rx) = goro::chan::channel::<u32>(0);
        goro::go(move || {
            for i in 1..=10 {
                tx.send(i);
            }
        });
        let mut sum = 0;
        for v in rx {
            sum += v;
        }
        sum
    });
    assert_eq!(sum, 55);
}

/// Set in the child processes of the detached-panic tests: which program to run.
const DETACHED_CHILD: &str = "GORO_TEST_DETACHED_PANIC_CHILD";

/// Runs this test binary's test `name` in a child process with `DETACHED_CHILD=mode`.
fn run_child(name: &str, mode: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(DETACHED_CHILD, mode)
        .output()
        .unwrap()
}

/// A goroutine that panics after its handle is gone, in a runtime built with `exit`.
fn detached_panic_program(exit: bool) -> u32 {
    goro::Runtime::builder()
        .detached_panics_exit(exit)
        .build()
        .unwrap()
        .run(|| {
            let (tx, rx) = goro::chan::channel::<()>(0);
            drop(goro::go(move || {
                rx.recv();
                panic!("boom in a detached goroutine");
            }));
            tx.send(());
            goro::sleep(std::time::Duration::from_millis(200));
            7
        })
}

#[test]
fn a_panic_nobody_can_join_ends_the_program_as_in_go() {
    match std::env::var(DETACHED_CHILD).as_deref() {
        Ok("exit") => {
            detached_panic_program(true);
            println!("still running");
            return;
        }
        Ok(_) => return,
        Err(_) => {}
    }
    let out = run_child("a_panic_nobody_can_join_ends_the_program_as_in_go", "exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stdout.contains("still running"), "stdout: {stdout}");
    assert!(
        stderr.contains("panic: boom in a detached goroutine [goroutine ")
            && stderr.contains("whose JoinHandle was dropped"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_detached_panic_is_printed_and_the_program_goes_on_when_asked() {
    match std::env::var(DETACHED_CHILD).as_deref() {
        Ok("ignore") => {
            println!("returned {}", detached_panic_program(false));
            return;
        }
        Ok(_) => return,
        Err(_) => {}
    }
    let out = run_child(
        "a_detached_panic_is_printed_and_the_program_goes_on_when_asked",
        "ignore",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.contains("returned 7"), "stdout: {stdout}");
    // The panic hook's report, with the goroutine named (the main goroutine is 1, this is 2).
    assert!(
        stderr.contains("goroutine 2 panicked:") && stderr.contains("boom in a detached goroutine"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_joined_panic_comes_back_from_join_and_ends_nothing() {
    let _serial = serial();
    let message = goro::run(|| {
        let handle = goro::go(|| -> u32 { panic!("joined boom") });
        handle.join().unwrap_err().message().map(str::to_string)
    });
    assert_eq!(message.as_deref(), Some("joined boom"));
}

/// A collector switch set in code before the runtime is built stays set, unless `GORO_DEBUG`
/// names it (then the variable wins). Before, `run` reset every switch from the variable, so
/// tests that turned on clobberfree and gccheckmark before building ran with both off.
#[test]
fn collector_switches_set_in_code_stay_unless_goro_debug_names_them() {
    if std::env::var_os("GORO_SWITCH_CHILD").is_some() {
        goro::gc::set_stress(true);
        let cycles = goro::run(|| {
            let before = goro::gc::stats().cycles;
            // A few hundred small objects, slowly: the pacer starts no cycle for a heap this
            // small, and each stressed cycle has time to end before the next allocation.
            let kept: Vec<goro::Gc<u64>> = (0..200)
                .map(|i| {
                    std::thread::sleep(std::time::Duration::from_micros(300));
                    goro::Gc::new(i)
                })
                .collect();
            assert_eq!(kept.iter().map(|g| **g).sum::<u64>(), 199 * 100);
            goro::gc::stats().cycles - before
        });
        goro::gc::set_stress(false);
        println!("stress cycles: {cycles}");
        return;
    }
    let _serial = serial();
    let cycles = |debug: Option<&str>| {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "collector_switches_set_in_code_stay_unless_goro_debug_names_them",
                "--nocapture",
            ])
            .env("GORO_SWITCH_CHILD", "1")
            .env_remove("GORO_DEBUG");
        if let Some(debug) = debug {
            child.env("GORO_DEBUG", debug);
        }
        let out = child.output().expect("the child process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        stdout
            .lines()
            .find_map(|l| l.split("stress cycles: ").nth(1))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no cycle count in: {stdout}"))
    };
    assert!(
        cycles(None) > 0,
        "gcstress set in code was reset by the runtime"
    );
    assert!(
        cycles(Some("gctrace=0")) > 0,
        "a GORO_DEBUG without gcstress reset it"
    );
    assert_eq!(
        cycles(Some("gcstress=0")),
        0,
        "GORO_DEBUG=gcstress=0 did not win"
    );
}
