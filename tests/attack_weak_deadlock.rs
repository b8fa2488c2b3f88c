//! Adversarial review of cleanups (safe code only): a program whose main goroutine waits for a
//! cleanup that the cycle under way is about to queue must not be reported as deadlocked: the
//! collector's mark worker (which sysmon counts as one of the runtime's own threads) starts the
//! cleanup goroutine at the end of that cycle (`special::settle` -> `cleanups_ready` ->
//! `goro_sched::try_go`), but the deadlock check (`goro_sched::deadlock::deadlocked`) sees only
//! idle Ms, no queued goroutine and no timer, and ends the program.
//!
//! Two scenarios, each with control runs that wait on a timer first (which keeps deadlock
//! detection off) and then see the cleanup's value: `registry` (a settling made long by 400 000
//! registered cleanups; the main goroutine blocks once it sees the settling under way) and
//! `plain` (a 400 000-object live heap, GOGC 1: the main goroutine lets go of the object,
//! allocates a little garbage and blocks on the channel the cleanup sends on).
//!
//! On 3abd60d: "fatal error: all goroutines are asleep - deadlock!", exit status 2, in 4 of 4
//! `registry` runs and 4 of 6 `plain` runs; every control run saw the cleanup run.
//!
//! Runs without libtest (`harness = false`), since deadlock detection never fires while
//! libtest's threads exist; the scenarios run in child processes.

use goro::Gc;
use goro::gc::{Weak, add_cleanup};
use std::process::Command;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

const SCENARIO: &str = "ATTACK_WEAK_DEADLOCK_SCENARIO";
const CONTROL: &str = "ATTACK_WEAK_DEADLOCK_CONTROL";

#[inline(never)]
fn scrub_stack() {
    let buf = std::hint::black_box([0u64; 8192]);
    std::hint::black_box(&buf);
}

/// On a thread that is gone before any cycle: an object whose cleanup sends on `tx`, and 64
/// objects whose weak pointers tell when a cycle has settled them (they die with it).
fn dying(tx: goro::chan::Sender<u64>) -> Vec<Weak<u64>> {
    std::thread::spawn(move || {
        #[inline(never)]
        fn make(tx: goro::chan::Sender<u64>) -> Vec<Weak<u64>> {
            let x = Gc::new(1u64);
            add_cleanup(&x, tx, |tx| {
                tx.send(42);
            });
            (0..64u64).map(|k| Weak::new(&Gc::new(k))).collect()
        }
        let w = make(tx);
        scrub_stack();
        w
    })
    .join()
    .unwrap()
}

fn scenario() {
    // An object that outlives its runtime with 400 000 cleanups: every later cycle's settling
    // goes through them, which takes a while.
    let keep = goro::Runtime::builder()
        .max_procs(1)
        .build()
        .unwrap()
        .run(|| {
            let keep = Gc::new(7u64);
            for _ in 0..400_000 {
                add_cleanup(&keep, (), |()| {});
            }
            keep
        });
    let got = goro::Runtime::builder()
        .max_procs(1)
        .build()
        .unwrap()
        .run(|| {
            let (tx, rx) = goro::chan::channel(1);
            let probes = dying(tx);
            // Allocate (garbage) until a cycle, started by allocation, has cleared one of the
            // probes' weak pointers: its settling is under way (`Debug` reads the slot without
            // upgrading; each probe is looked at in turn, so that the address it shows stays in
            // no register long enough to keep all of them alive).
            let t = Instant::now();
            let mut k = 0;
            loop {
                for _ in 0..256 {
                    std::hint::black_box(Gc::new([0u64; 8]));
                }
                k = (k + 1) % probes.len();
                if format!("{:?}", probes[k]) == "Weak(dead)" {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "no cycle settled a probe"
                );
            }
            println!(
                "a settling is under way after {:?}; waiting for the cleanup",
                t.elapsed()
            );
            // The cycle found the cleanup's object dead with the probes: its cleanup is queued
            // at the end of this settling, and the cleanup goroutine started. (The control run
            // waits on a timer first, which keeps deadlock detection off meanwhile, and shows
            // that the cleanup does run.)
            if std::env::var_os(CONTROL).is_some() {
                goro::sleep(Duration::from_secs(2));
                println!("after 2 s: {:?}", rx.try_recv());
                return Some(42);
            }
            rx.recv()
        });
    assert_eq!(*keep, 7);
    assert_eq!(got, Some(42));
    println!("the cleanup ran");
}

/// The same wait in a plainer program: no registry, a large live heap (so each cycle marks for
/// a while) and GOGC 1 (so cycles follow each other); the main goroutine lets go of the object
/// once no cycle runs, allocates a little garbage (which starts a cycle) and waits for the
/// cleanup.
fn scenario_plain() {
    let got = goro::Runtime::builder()
        .max_procs(1)
        .gc_percent(1)
        .build()
        .unwrap()
        .run(|| {
            let live: Vec<Gc<[u64; 6]>> = (0..400_000u64).map(|i| Gc::new([i; 6])).collect();
            // No cycle under way from here: the object below must die before the cycle that
            // the garbage starts, not be allocated black by one that building `live` started
            // (which ends before the garbage is made, when allocation waits little for it).
            goro::gc::collect();
            let (tx, rx) = goro::chan::channel(1);
            let _probes = dying(tx);
            for _ in 0..20_000 {
                std::hint::black_box(Gc::new([0u64; 6]));
            }
            if std::env::var_os(CONTROL).is_some() {
                goro::sleep(Duration::from_secs(3));
                println!("after 3 s: {:?}", rx.try_recv());
                return Some(42);
            }
            let got = rx.recv();
            std::hint::black_box(&live);
            got
        });
    assert_eq!(got, Some(42));
    println!("the cleanup ran");
}

fn main() {
    match std::env::var(SCENARIO).as_deref() {
        Ok("plain") => return scenario_plain(),
        Ok(_) => return scenario(),
        Err(_) => {}
    }
    let mut report = Vec::new();
    for (scenario, runs) in [("registry", 4), ("plain", 6)] {
        let (mut failures, mut control_failures) = (0, 0);
        for run in 0..2 * runs {
            let control = run % 2 == 1;
            let mut command = Command::new(std::env::current_exe().unwrap());
            command.env(SCENARIO, scenario);
            if control {
                command.env(CONTROL, "1");
            }
            let out = command.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let ok = out.status.success() && stdout.contains("the cleanup ran");
            println!(
                "{scenario} run {run}{}: {:?}\n{}\n{}",
                if control { " (control)" } else { "" },
                out.status,
                stdout.trim_end(),
                stderr.lines().take(3).collect::<Vec<_>>().join("\n")
            );
            if control {
                control_failures += usize::from(!ok);
            } else {
                failures += usize::from(!ok);
            }
        }
        assert_eq!(
            control_failures, 0,
            "the {scenario} control runs failed: the scenario is broken"
        );
        report.push(format!("{scenario}: {failures} of {runs} runs died"));
    }
    println!("{report:?}");
    assert!(
        report.iter().all(|r| r.contains(": 0 of")),
        "a main goroutine waiting for a cleanup that the cycle under way was about to queue was \
         reported as deadlocked (the control runs, which wait on a timer first, all saw the \
         cleanup run): {report:?}"
    );
    println!("test a_wait_for_a_cleanup_a_settling_is_about_to_queue_is_no_deadlock ... ok");
}
