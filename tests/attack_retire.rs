//! Adversarial tests of the concurrent retirement (the end of a runtime, marked and swept
//! beside the caller once `run` has returned). Safe code only.
//!
//! Every scenario runs in a child process of this test binary (`child`), with a timeout, so a
//! hang is reported rather than waited on. A scenario is a `#[test]` named `scenario_*` that
//! does nothing unless the environment variable `ATTACK_RETIRE_CHILD` names it; its driver is
//! the `#[test]` of the same name without the prefix.
//!
//! The tests that found bugs (hangs at the end of a runtime, a straggler's object condemned)
//! say in their comments what the fix made of them.

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

mod common;

use common::{Canary, Tree, build, checksum, was_dropped};
use goro::gc::{AtomicGc, Weak};
use goro::{Gc, GcCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Harness

const CHILD_VAR: &str = "ATTACK_RETIRE_CHILD";

/// Whether this process is the child that runs `scenario`.
fn is_child(scenario: &str) -> bool {
    std::env::var(CHILD_VAR).is_ok_and(|v| v == scenario)
}

struct Outcome {
    /// `None`: killed at the timeout (a hang).
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.code == Some(0) && self.stdout.contains("1 passed")
    }
    fn describe(&self) -> String {
        format!(
            "code {:?} signal {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.signal,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

fn tail(s: &str) -> &str {
    let n = s.len();
    if n > 4000 { &s[n - 4000..] } else { s }
}

/// Runs the scenario test `name` in a child process with `env`, killing it after `timeout`.
fn child(name: &str, env: &[(&str, &str)], timeout: Duration) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, name)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on threads so a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if began.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    Outcome {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout,
        stderr,
    }
}

fn expect_pass(name: &str, env: &[(&str, &str)], timeout: Duration) {
    let o = child(name, env, timeout);
    assert!(
        o.passed(),
        "{name} failed{}:\n{}",
        if o.code.is_none() && o.signal.is_none() {
            " (HANG: killed at the timeout)"
        } else {
            ""
        },
        o.describe()
    );
}

fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.to_string();
            if msg.contains("outside a goro runtime") {
                return;
            }
            previous(info);
        }));
    });
}

fn runtime(procs: usize) -> goro::Runtime {
    goro::Runtime::builder().max_procs(procs).build().unwrap()
}

#[derive(goro::Trace)]
struct Leaf {
    value: u64,
    canary: Canary,
}

/// No drop glue: freed by `condemn` at once (and poisoned under clobberfree).
#[derive(goro::Trace)]
struct Plain {
    value: u64,
    check: u64,
}

#[derive(goro::Trace)]
struct Holder {
    cell: GcCell<Option<Gc<Tree>>>,
    atomic: AtomicGc<Tree>,
    list: GcCell<Vec<Gc<Tree>>>,
}

// ---------------------------------------------------------------------------------------------
// 1. A thread that was inside `Gc::new` when the runtime ended (waiting in `count_batch` for the
//    cycle under way, up to SWEEP_WAIT = 10 ms) allocates after the retirement's mark
//    termination: its object is then condemned (dropped / freed) while the thread holds it.

fn late_allocator_once(procs: usize, junk: usize, weak_every: usize, threads: usize) -> String {
    quiet_panics();
    let ended = Arc::new(Mutex::new(None::<Instant>));
    let (handles, weaks) = runtime(procs).run(move || {
        goro::gc::set_clobber_free(true);
        // Many slots (free ones too: the retirement's condemning visits every slot) and many
        // weak pointers (its settling visits each).
        let mut junk_list = Vec::with_capacity(junk);
        for i in 0..junk as u64 {
            junk_list.push(Gc::new(Plain { value: i, check: !i }));
        }
        let weaks: Vec<Weak<Plain>> = junk_list.iter().step_by(weak_every).map(Weak::new).collect();
        drop(junk_list);
        goro::gc::collect();
        // Cycles back to back from here on: every batch of allocation past the goal waits for
        // the cycle under way.
        // No cycle in flight when the runtime ends: the retirement starts at once.
        goro::gc::set_percent(-1);
        let go = Arc::new(Barrier::new(threads + 1));
        let mut handles = Vec::new();
        for t in 0..threads as u64 {
            let go = go.clone();
            handles.push(std::thread::spawn(move || {
                go.wait();
                let mut recent: VecDeque<(Gc<Leaf>, Gc<Plain>, u64, Instant)> = VecDeque::new();
                let mut i = 0u64;
                loop {
                    let key = (t << 40) | i;
                    i += 1;
                    let made = std::panic::catch_unwind(|| {
                        let a = Gc::new(Leaf {
                            value: key,
                            canary: Canary::new(),
                        });
                        let b = Gc::new(Plain {
                            value: key,
                            check: !key,
                        });
                        (a, b)
                    });
                    match made {
                        Ok((a, b)) => {
                            recent.push_back((a, b, key, Instant::now()));
                            if recent.len() > 256 {
                                recent.pop_front();
                            }
                        }
                        Err(_) => break,
                    }
                }
                goro::gc::wait_for_retirement();
                let mut bad = Vec::new();
                for (a, b, key, at) in &recent {
                    let (av, ac, bv, bc) = (a.value, a.canary.0, b.value, b.check);
                    if av != *key || bv != *key || bc != !*key || was_dropped(ac) {
                        bad.push(format!(
                            "thread {t} key {key:#x} made at {at:?}: leaf.value {av:#x} dropped {} plain ({bv:#x}, {bc:#x})",
                            was_dropped(ac)
                        ));
                    }
                }
                (bad, recent.back().map(|r| r.3))
            }));
        }
        go.wait();
        goro::sleep(Duration::from_millis(40));
        (handles, weaks)
    });
    let returned = Instant::now();
    *ended.lock().unwrap() = Some(returned);
    goro::gc::wait_for_retirement();
    let retired = returned.elapsed();
    let mut report = String::new();
    for h in handles {
        let (bad, last) = h.join().unwrap();
        if std::env::var("VERBOSE").is_ok() {
            let rel = last.map(|l| {
                if l > returned {
                    format!("+{:?}", l - returned)
                } else {
                    format!("-{:?}", returned - l)
                }
            });
            println!(
                "retirement took {retired:?}; thread's last allocation at {rel:?} relative to run's return"
            );
        }
        if !bad.is_empty() {
            report.push_str(&format!(
                "{} objects freed while held (last allocation {:?} after run returned at {:?}):\n{}\n",
                bad.len(),
                last,
                ended.lock().unwrap(),
                bad.iter().take(4).cloned().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    goro::gc::wait_for_retirement();
    let alive = weaks.iter().filter(|w| !w.is_dead()).count();
    let _ = alive;
    report
}

#[test]
fn scenario_late_allocator() {
    if !is_child("scenario_late_allocator") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS").map_or(6, |v| v.parse().unwrap());
    let mut failures = Vec::new();
    for round in 0..rounds {
        let threads = std::env::var("THREADS").map_or(16, |v| v.parse().unwrap());
        let junk = std::env::var("JUNK").map_or(1_500_000, |v| v.parse().unwrap());
        let r = late_allocator_once(2, junk, 2, threads);
        if !r.is_empty() {
            failures.push(format!("round {round}: {r}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Found by reading: `condemn` with `immortalize` did not read a slot's mark again once it saw
/// its header, so a straggler's object allocated black during the pass could be condemned. Not
/// reproduced (the window is one mark word); fixed, and kept as a soak of stragglers.
#[test]
fn threads_allocating_as_the_runtime_ends_keep_their_objects() {
    expect_pass(
        "scenario_late_allocator",
        &[("ROUNDS", "2"), ("JUNK", "300000")],
        Duration::from_secs(300),
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Hangs: drop glue of what the retirement leaves behind meets the caller.

/// A field whose drop runs `action` (on the sweeper thread, for a collected object).
struct OnDrop(u8);

// SAFETY: owns no Gc; its drop touches no collected object.
unsafe impl goro::gc::Trace for OnDrop {
    fn trace(&self, _: &mut goro::gc::Tracer) {}
}

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static DROPS: AtomicUsize = AtomicUsize::new(0);

impl Drop for OnDrop {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        match self.0 {
            // Logs (takes a std Mutex).
            1 => LOG.lock().unwrap().push(1),
            // Runs a runtime of its own.
            2 => {
                let v = goro::run(|| 7);
                LOG.lock().unwrap().push(v);
            }
            // Ends the process (status 0), a little later.
            3 => {
                std::thread::sleep(Duration::from_millis(100));
                std::process::exit(0);
            }
            // Starts a thread that runs a runtime (not joined).
            4 => {
                std::thread::spawn(|| {
                    let v = goro::run(|| 9);
                    LOG.lock().unwrap().push(v);
                });
            }
            // Collects (on the sweeper, inside the sweep the next cycle waits for).
            5 => goro::gc::collect(),
            _ => {}
        }
    }
}

#[derive(goro::Trace)]
struct WithDrop {
    action: OnDrop,
}

/// Leaves `n` unreachable objects whose drop does `action` to the retirement.
fn garbage_with_drop(action: u8, n: usize) {
    runtime(2).run(move || {
        for _ in 0..n {
            std::hint::black_box(Gc::new(WithDrop {
                action: OnDrop(action),
            }));
        }
    });
}

// 2a. Drop glue that calls goro::run: on the sweeper thread, wait_for_retirement returned at
//     once, so the nested runtime started while the retirement was still sweeping; when it
//     ended, its own retirement spun on COLLECTING, held by the sweep running it: a hang. Now
//     `run` on a collector thread panics with the reason, and a drop that panics aborts the
//     process with it.
#[test]
fn scenario_drop_runs_runtime() {
    if !is_child("scenario_drop_runs_runtime") {
        return;
    }
    garbage_with_drop(2, 1);
    goro::gc::wait_for_retirement();
    assert_eq!(*LOG.lock().unwrap(), vec![7]);
}

#[test]
fn drop_glue_that_runs_a_runtime_aborts_with_the_reason() {
    let o = child("scenario_drop_runs_runtime", &[], Duration::from_secs(20));
    assert!(
        o.code.is_some() || o.signal.is_some(),
        "a hang:\n{}",
        o.describe()
    );
    assert!(!o.passed(), "{}", o.describe());
    assert!(
        o.stderr
            .contains("goro::run called from drop glue the collector runs"),
        "{}",
        o.describe()
    );
}

// 2a'. Drop glue that calls `goro::gc::collect` during a runtime: the forced cycle would wait
//      for the sweep that runs the drop. It panics with the reason instead (and the drop's
//      panic aborts the process with it).
#[test]
fn scenario_drop_collects() {
    if !is_child("scenario_drop_collects") {
        return;
    }
    runtime(2).run(|| {
        for _ in 0..10 {
            std::hint::black_box(Gc::new(WithDrop { action: OnDrop(5) }));
        }
        goro::gc::collect();
        goro::gc::collect();
    });
}

#[test]
fn drop_glue_that_collects_aborts_with_the_reason() {
    let o = child("scenario_drop_collects", &[], Duration::from_secs(20));
    assert!(
        o.code.is_some() || o.signal.is_some(),
        "a hang:\n{}",
        o.describe()
    );
    assert!(
        o.stderr
            .contains("goro::gc::collect called from drop glue the collector runs"),
        "{}",
        o.describe()
    );
}

// 2b. A program that exits (std::process::exit) while it holds a lock that the retirement's
//     drop glue takes: the atexit handler waited for the retirement for ever. Now it waits as
//     long as the drops make progress, then says so on stderr and lets the process exit.
#[test]
fn scenario_exit_holding_lock() {
    if !is_child("scenario_exit_holding_lock") {
        return;
    }
    garbage_with_drop(1, 10_000);
    let log = LOG.lock().unwrap();
    println!("1 passed (exiting with {} entries logged)", log.len());
    std::process::exit(0);
}

/// The exit of a child that left drops stuck: status 0, and the warning on stderr.
fn expect_exit_past_stuck_drops(name: &str) {
    let o = child(name, &[], Duration::from_secs(20));
    assert!(o.passed(), "{}", o.describe());
    assert!(
        o.stderr.contains("goro: exiting before the drop glue"),
        "{}",
        o.describe()
    );
}

#[test]
fn exit_while_holding_a_lock_the_drop_glue_takes_exits() {
    expect_exit_past_stuck_drops("scenario_exit_holding_lock");
}

// 2c. Same, but the lock is held by another thread that never lets go (a thread blocked for
//     ever in a lock-holding section is common: a logger waiting on a channel nobody closes);
//     the main thread only returns.
#[test]
fn scenario_exit_other_thread_holds_lock() {
    if !is_child("scenario_exit_other_thread_holds_lock") {
        return;
    }
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _held = LOG.lock().unwrap();
        tx.send(()).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap();
    garbage_with_drop(1, 10_000);
    println!("1 passed (returning)");
    std::process::exit(0);
}

#[test]
fn exit_while_another_thread_holds_a_lock_the_drop_glue_takes_exits() {
    expect_exit_past_stuck_drops("scenario_exit_other_thread_holds_lock");
}

// 2d. The next `run` while holding that lock: it waited for the whole retirement, drops
//     included. Now it waits only for the decision (no user code runs before it).
#[test]
fn scenario_next_run_holding_lock() {
    if !is_child("scenario_next_run_holding_lock") {
        return;
    }
    garbage_with_drop(1, 10_000);
    let log = LOG.lock().unwrap();
    let v = runtime(2).run(|| 5);
    assert_eq!(v, 5);
    drop(log);
}

#[test]
fn next_run_while_holding_a_lock_the_drop_glue_takes_starts() {
    expect_pass(
        "scenario_next_run_holding_lock",
        &[],
        Duration::from_secs(20),
    );
}

// 2e. Drop glue that calls process::exit while the main thread exits: Rust's exit guard parks
//     a second exiting thread for ever, and the first waited (atexit) for the retirement whose
//     sweeper is that second thread. Now the exit's wait ends when the drops stop progressing.
#[test]
fn scenario_drop_exits() {
    if !is_child("scenario_drop_exits") {
        return;
    }
    garbage_with_drop(3, 1);
    println!("1 passed (returning)");
    std::process::exit(0);
}

#[test]
fn drop_glue_that_exits_while_main_exits_does_not_hang() {
    let o = child("scenario_drop_exits", &[], Duration::from_secs(20));
    assert!(o.code == Some(0), "{}", o.describe());
}

// 2f. Drop glue that starts a thread that runs a runtime: must not hang, and the thread's runtime
//     runs after the retirement.
#[test]
fn scenario_drop_spawns_run() {
    if !is_child("scenario_drop_spawns_run") {
        return;
    }
    garbage_with_drop(4, 1);
    goro::gc::wait_for_retirement();
    let began = Instant::now();
    while LOG.lock().unwrap().is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the thread's run never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*LOG.lock().unwrap(), vec![9]);
    // And another run after it.
    assert_eq!(runtime(1).run(|| 3), 3);
}

#[test]
fn drop_glue_spawning_a_thread_that_runs() {
    expect_pass("scenario_drop_spawns_run", &[], Duration::from_secs(30));
}

// 2g. Drop glue runs before a normal exit (return from main): the atexit wait.
#[test]
fn scenario_drops_before_exit() {
    if !is_child("scenario_drops_before_exit") {
        return;
    }
    // Drop glue that takes a lock the caller takes right after run: must not deadlock.
    garbage_with_drop(1, 50_000);
    let n = LOG.lock().unwrap().len();
    println!("logged {n} right after run; 1 passed");
}

#[test]
fn drop_glue_runs_before_exit() {
    let o = child("scenario_drops_before_exit", &[], Duration::from_secs(30));
    assert!(o.passed(), "{}", o.describe());
}

// ---------------------------------------------------------------------------------------------
// 3. Soundness: the caller's threads move what `run` returned through every kind of plain
//    memory while the retirement marks, then everything is checked (clobberfree on).

thread_local! {
    static TLS_SLOT: std::cell::RefCell<Vec<Gc<Tree>>> = const { std::cell::RefCell::new(Vec::new()) };
}
static STATIC_SLOT: Mutex<Vec<Gc<Tree>>> = Mutex::new(Vec::new());
/// GcCell is not a lock: movers take turns at the holder's cells.
static CELLS: Mutex<()> = Mutex::new(());

fn expected(depth: u32, seed: u64) -> u64 {
    // A tree's checksum from a fresh build (no links): computed in a runtime of its own.
    let t = build(depth, seed);
    checksum(&t)
}

/// One round: run returns a few trees inside a Holder; movers shuffle them at once.
fn movers_round(round: u64, procs: usize, movers: usize) {
    const DEPTH: u32 = 9;
    let seeds: Vec<u64> = (0..6).map(|i| round * 100 + i + 1).collect();
    let seeds2 = seeds.clone();
    let (holder, trees, sums, weak) = runtime(procs).run(move || {
        goro::gc::set_clobber_free(true);
        let trees: Vec<Gc<Tree>> = seeds2.iter().map(|&s| build(DEPTH, s)).collect();
        let sums: Vec<u64> = seeds2.iter().map(|&s| expected(DEPTH, s)).collect();
        let holder = Gc::new(Holder {
            cell: GcCell::new(Some(trees[0])),
            atomic: AtomicGc::new(Some(trees[1])),
            list: GcCell::new(vec![trees[2]]),
        });
        let weak = Weak::new(&trees[5]);
        // Garbage for the retirement to sweep meanwhile.
        for i in 0..20 {
            std::hint::black_box(build(8, 1_000_000 + i));
        }
        (holder, trees, sums, weak)
    });
    // From here on the retirement marks beside us.
    let start = Arc::new(Barrier::new(movers + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let box_slot: Arc<Mutex<Option<Box<Gc<Tree>>>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel::<Gc<Tree>>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::new();
    for m in 0..movers {
        let (start, stop, box_slot, tx, rx) = (
            start.clone(),
            stop.clone(),
            box_slot.clone(),
            tx.clone(),
            rx.clone(),
        );
        handles.push(std::thread::spawn(move || {
            start.wait();
            let mut rng = common::Rng(0x9e37_79b9 + m as u64 * 7 + round);
            let mut local: Vec<Gc<Tree>> = Vec::new();
            let mut steps = 0u64;
            while !stop.load(Ordering::Relaxed) || steps < 2000 {
                steps += 1;
                // Take one from somewhere...
                let got: Option<Gc<Tree>> = match rng.below(7) {
                    k @ (0 | 2) => {
                        let _g = CELLS.lock().unwrap();
                        if k == 0 {
                            holder.cell.take()
                        } else {
                            holder.list.borrow_mut().pop()
                        }
                    }
                    1 => holder.atomic.swap(None, Ordering::SeqCst),
                    3 => box_slot.lock().unwrap().take().map(|b| *b),
                    4 => rx.lock().unwrap().try_recv().ok(),
                    5 => TLS_SLOT.with(|s| s.borrow_mut().pop()),
                    _ => STATIC_SLOT.lock().unwrap().pop(),
                };
                if let Some(t) = got {
                    local.push(t);
                }
                // ... and put one somewhere else, holding no other copy.
                if let Some(t) = local.pop() {
                    let _g = CELLS.lock().unwrap();
                    match rng.below(7) {
                        0 => {
                            if let Some(old) = holder.cell.replace(Some(t)) {
                                local.push(old);
                            }
                        }
                        1 => {
                            if let Some(old) = holder.atomic.swap(Some(t), Ordering::SeqCst) {
                                local.push(old);
                            }
                        }
                        2 => holder.list.borrow_mut().insert(0, t),
                        3 => {
                            let mut slot = box_slot.lock().unwrap();
                            if let Some(old) = slot.replace(Box::new(t)) {
                                local.push(*old);
                            }
                        }
                        4 => tx.send(t).unwrap(),
                        5 => TLS_SLOT.with(|s| s.borrow_mut().push(t)),
                        _ => STATIC_SLOT.lock().unwrap().insert(0, t),
                    }
                }
                if steps.is_multiple_of(64) {
                    std::thread::yield_now();
                }
            }
            // Hand back what this thread holds (its TLS dies with it).
            let mut out = local;
            TLS_SLOT.with(|s| out.append(&mut s.borrow_mut()));
            out
        }));
    }
    start.wait();
    // Scoped threads rotating a Vec on this stack meanwhile.
    let mut on_stack: Vec<Gc<Tree>> = vec![trees[3], trees[4]];
    std::thread::scope(|scope| {
        let v = &mut on_stack;
        scope.spawn(move || {
            for _ in 0..2000 {
                v.rotate_left(1);
            }
        });
    });
    std::thread::sleep(Duration::from_millis(5));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Gc<Tree>> = on_stack;
    for h in handles {
        all.extend(h.join().unwrap());
    }
    goro::gc::wait_for_retirement();
    all.extend(holder.cell.take());
    all.extend(holder.atomic.swap(None, Ordering::SeqCst));
    all.extend(holder.list.borrow_mut().drain(..));
    all.extend(box_slot.lock().unwrap().take().map(|b| *b));
    drop(tx);
    all.extend(rx.lock().unwrap().try_iter());
    all.extend(STATIC_SLOT.lock().unwrap().drain(..));
    all.extend(TLS_SLOT.with(|s| std::mem::take(&mut *s.borrow_mut())));
    assert_eq!(all.len(), 5, "round {round}: lost track of trees");
    for t in &all {
        let i = seeds.iter().position(|&s| s == t.value).unwrap_or_else(|| {
            panic!("round {round}: a tree's root reads {:#x} (freed?)", t.value)
        });
        assert_eq!(checksum(t), sums[i], "round {round}: tree {i} corrupted");
        assert!(
            !was_dropped(t.canary.0),
            "round {round}: tree {i}'s root dropped"
        );
    }
    let w = weak
        .upgrade()
        .expect("a tree the caller holds must upgrade");
    assert_eq!(checksum(&w), sums[5]);
    // Immortal now: a later runtime's cycles keep it.
    runtime(procs).run(move || {
        for _ in 0..3 {
            goro::gc::collect();
        }
    });
    assert_eq!(checksum(&trees[5]), sums[5]);
    for t in &all {
        let i = seeds.iter().position(|&s| s == t.value).unwrap();
        assert_eq!(checksum(t), sums[i]);
    }
}

#[test]
fn scenario_movers() {
    if !is_child("scenario_movers") {
        return;
    }
    let rounds: u64 = std::env::var("ROUNDS").map_or(20, |v| v.parse().unwrap());
    for round in 0..rounds {
        movers_round(round, 1 + (round as usize % 2), 4);
    }
}

#[test]
fn movers_through_plain_memory_cells_and_channels() {
    expect_pass(
        "scenario_movers",
        &[("GORO_DEBUG", "gccheckmark=1,clobberfree=1")],
        Duration::from_secs(300),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Weak pointers, cleanups, panics, goro::exit and abandoned goroutines at the end of a run.

static CLEANED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn scenario_specials_and_endings() {
    if !is_child("scenario_specials_and_endings") {
        return;
    }
    for round in 0..10u64 {
        // Weak to garbage reads dead; weak to what the caller keeps upgrades; upgrades racing
        // with the retirement hand out only live objects; cleanups of retired garbage never run.
        let (kept, weak_kept, weak_dead, sum) = runtime(2).run(move || {
            goro::gc::set_clobber_free(true);
            let kept = build(8, round + 1);
            let sum = checksum(&kept);
            let dead = build(8, round + 1000);
            let weak_dead = Weak::new(&dead);
            goro::gc::add_cleanup(&dead, (), |()| {
                CLEANED.fetch_add(1, Ordering::SeqCst);
            });
            (kept, Weak::new(&kept), weak_dead, sum)
        });
        let upgraders: Vec<_> = (0..3)
            .map(|_| {
                let (wk, wd) = (weak_kept.clone(), weak_dead.clone());
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..2000 {
                        if let Some(g) = wk.upgrade() {
                            got.push(g);
                        }
                        if let Some(g) = wd.upgrade() {
                            got.push(g);
                        }
                    }
                    got
                })
            })
            .collect();
        let got: Vec<Gc<Tree>> = upgraders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        goro::gc::wait_for_retirement();
        assert_eq!(checksum(&kept), sum);
        let up = weak_kept.upgrade().expect("kept object must upgrade");
        assert!(Gc::ptr_eq(&up, &kept));
        for g in &got {
            let c = checksum(g);
            assert!(
                g.value == round + 1 && c == sum || g.value == round + 1000,
                "round {round}: an upgraded object reads {:#x}",
                g.value
            );
        }
        // A weak made outside any runtime, of a retired (immortal) object.
        let late = Weak::new(&kept);
        assert!(late.upgrade().is_some());
    }
    // Cleanups of retired garbage never run, even in later runtimes.
    runtime(2).run(|| {
        for _ in 0..3 {
            goro::gc::collect();
        }
        goro::sleep(Duration::from_millis(20));
    });
    assert_eq!(
        CLEANED.load(Ordering::SeqCst),
        0,
        "a cleanup of retired garbage ran"
    );

    // A Gc in the main goroutine's panic payload survives the retirement.
    let caught = std::panic::catch_unwind(|| {
        runtime(2).run(|| {
            goro::gc::set_clobber_free(true);
            let t = build(8, 77);
            std::panic::panic_any(t);
        })
    })
    .expect_err("run resumes the main goroutine's panic");
    let t = *caught.downcast::<Gc<Tree>>().expect("the payload");
    goro::gc::wait_for_retirement();
    runtime(1).run(|| goro::gc::collect());
    assert_eq!(t.value, 77);
    assert_eq!(checksum(&t), {
        let mut s = 0u64;
        fn sum(t: &Tree, s: &mut u64) {
            *s = s.wrapping_add(t.value);
            for c in &t.children {
                sum(c, s);
            }
        }
        sum(&t, &mut s);
        s
    });

    // goro::exit in the main goroutine: run panics with its message, and the next run works.
    let e = std::panic::catch_unwind(|| runtime(2).run(|| -> u32 { goro::exit() }))
        .expect_err("goro::exit in main");
    let msg = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("goro::exit"), "message: {msg:?}");

    // Abandoned goroutines: what they hold stays (immortal); reachable only through them.
    let (weaks, sums) = runtime(2).run(|| {
        goro::gc::set_clobber_free(true);
        let mut weaks = Vec::new();
        let mut sums = Vec::new();
        let (tx, rx) = goro::chan::channel::<Gc<Tree>>(4);
        for i in 0..8u64 {
            let t = build(7, 500 + i);
            weaks.push(Weak::new(&t));
            sums.push(checksum(&t));
            if i % 2 == 0 {
                // Blocked for ever holding it on its stack.
                let (_never_tx, never_rx) = goro::chan::channel::<()>(0);
                std::mem::forget(_never_tx);
                goro::go(move || {
                    let held = t;
                    let _ = never_rx.recv();
                    std::hint::black_box(held);
                });
            } else {
                // In a channel's buffer that only an abandoned goroutine can reach.
                tx.send(t);
            }
        }
        goro::go(move || {
            let _rx = rx;
            let (_k, never) = goro::chan::channel::<()>(0);
            std::mem::forget(_k);
            let _ = never.recv();
        });
        goro::sleep(Duration::from_millis(10));
        (weaks, sums)
    });
    goro::gc::wait_for_retirement();
    runtime(2).run(|| goro::gc::collect());
    for (w, s) in weaks.iter().zip(&sums) {
        let t = w
            .upgrade()
            .expect("held by an abandoned goroutine: immortal");
        assert_eq!(checksum(&t), *s);
    }
}

#[test]
fn specials_panics_exit_and_abandoned_goroutines() {
    expect_pass(
        "scenario_specials_and_endings",
        &[("GORO_DEBUG", "gccheckmark=1,clobberfree=1")],
        Duration::from_secs(120),
    );
}
