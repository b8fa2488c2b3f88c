//! parked_memory: N goroutines blocked on one channel's receive at the same time; the RSS they
//! add, divided by the number actually parked.
//!
//! Every implementation follows the same steps: read RSS; spawn N blockers, each of which
//! counts itself as started and then blocks receiving from a shared channel; wait until all
//! have started (plus a short settle so the last ones reach their receive); read RSS again
//! (`bytes_per_task`), and once more when they have been parked for [`LONG_PARK`]
//! (`bytes_per_task_long`: what a runtime that releases the memory of long-parked goroutines
//! gives back); close the channel and wait for all to exit. Peers that cannot spawn N stop at
//! the first failure and report how many they reached.
//!
//! `goro` is the default runtime: sysmon releases the pages below long-parked goroutines' stack
//! pointers (a trim, which cannot lose data) and never stashes. `goro_trim` is the same with
//! the stash trap held off (`GORO_DEBUG=stacktrap=off`, set by the harness), so the two agree.
//! The opt-in stash is measured with `GORO_BENCH_STASH` set for `--impl goro`: `trap` builds
//! the runtime with the unsafe `stash_parked_stacks(true)` (the live bytes of long-parked
//! goroutines move to the heap under the stash trap, which must be able to run here), reported
//! as `goro_stash`; `unchecked` with `stash_parked_stacks_unchecked(true)` (no trap), reported as
//! `goro_stash_unchecked`. The blockers touch only their own stacks and do no I/O, which is
//! what both options' contracts ask. For example:
//!
//! ```text
//! GORO_BENCH_STASH=trap GORO_BENCH_NO_BUILD=1 ./target/release/goro-bench parked_memory 100000 --impl goro
//! ```

use crate::{Options, report};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long to let the last blockers reach their receive after they counted themselves.
const SETTLE: Duration = Duration::from_millis(50);
/// How long the blockers have been parked at the second reading.
const LONG_PARK: Duration = Duration::from_secs(5);

/// At most this many OS threads.
const MAX_THREADS: usize = 10_000;

/// RSS and page-table size at one moment, in KiB.
#[derive(Clone, Copy)]
struct Memory {
    rss_kib: u64,
    pte_kib: u64,
}

impl Memory {
    fn now() -> Memory {
        Memory {
            rss_kib: report::rss_kib(),
            pte_kib: status_kib("VmPTE:"),
        }
    }
}

/// A `/proc/self/status` field in KiB (0 if absent).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Prints the RESULT line: `bytes_per_task` is RSS growth per parked goroutine; `pte_bytes_per_task`
/// the page tables' growth (kernel memory outside RSS: what large stack slots cost); the `_long`
/// keys the same once they have been parked for [`LONG_PARK`].
fn print(
    implementation: &str,
    n: usize,
    reached: usize,
    (before, after, long): (Memory, Memory, Memory),
    total: Duration,
) {
    let per_task = |kib: u64| (kib * 1024).checked_div(reached as u64).unwrap_or(0);
    let rss = |at: Memory| per_task(at.rss_kib.saturating_sub(before.rss_kib));
    let pte = |at: Memory| per_task(at.pte_kib.saturating_sub(before.pte_kib));
    report::Result::new("parked_memory", implementation)
        .key("n", n)
        .key("reached", reached)
        .key("bytes_per_task", rss(after))
        .key("pte_bytes_per_task", pte(after))
        .key("bytes_per_task_long", rss(long))
        .key("pte_bytes_per_task_long", pte(long))
        .print(total);
}

/// Memory mappings in use and the kernel's limit on them.
fn map_headroom() -> Option<(usize, usize)> {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some((maps.lines().count(), limit))
}

/// Waits until `counter` reaches `target`, polling.
fn wait_for(counter: &AtomicUsize, target: usize) {
    while counter.load(Ordering::Acquire) < target {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sleeps (with `sleep`) until the blockers have been parked for [`SETTLE`], reads memory, sleeps
/// until they have been parked for [`LONG_PARK`], reads it again.
fn readings(sleep: impl Fn(Duration)) -> (Memory, Memory) {
    let parked_at = Instant::now();
    sleep(SETTLE);
    let settled = Memory::now();
    sleep(LONG_PARK.saturating_sub(parked_at.elapsed()));
    (settled, Memory::now())
}

/// The opt-in stash asked for with `GORO_BENCH_STASH`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stash {
    /// The default: trim only.
    Off,
    /// `trap`: `stash_parked_stacks(true)`.
    Trapped,
    /// `unchecked`: `stash_parked_stacks_unchecked(true)`.
    Unchecked,
}

impl Stash {
    fn from_env() -> Result<Stash, String> {
        match std::env::var("GORO_BENCH_STASH").as_deref() {
            Err(_) | Ok("") | Ok("off") => Ok(Stash::Off),
            Ok("trap") => Ok(Stash::Trapped),
            Ok("unchecked") => Ok(Stash::Unchecked),
            Ok(other) => Err(format!(
                "GORO_BENCH_STASH={other}: expected trap, unchecked or off"
            )),
        }
    }
}

/// Checks the stash trap's state for an implementation, before its runtime starts: off for
/// `goro_trim` (the harness sets `GORO_DEBUG`); started, and so able to run here, when
/// `GORO_BENCH_STASH=trap` (`fresh_stacks` then measures first uses of stacks through the trap);
/// otherwise not running, as the default runtime never starts it.
pub(crate) fn check_trap(trim_only: bool) -> Result<(), String> {
    let stash = Stash::from_env()?;
    if trim_only {
        if let Ok(()) = goro::stack::stash_trap() {
            return Err("the stash trap should be off for goro_trim".into());
        }
    } else if stash == Stash::Trapped {
        goro::stack::stash_trap()
            .map_err(|why| format!("GORO_BENCH_STASH=trap, but the trap cannot run: {why}"))?;
    } else if goro::stack::stash_trap_running() {
        return Err("the stash trap should not be running for the default runtime".into());
    }
    Ok(())
}

pub(crate) fn goro(n: usize, options: &Options, trim_only: bool) -> Result<(), String> {
    check_trap(trim_only)?;
    let stash = if trim_only {
        Stash::Off
    } else {
        Stash::from_env()?
    };
    let mut builder = goro::Runtime::builder();
    if let Some(procs) = options.procs {
        builder = builder.max_procs(procs);
    }
    if let Ok(text) = std::env::var("GORO_BENCH_STACK_SIZE") {
        let bytes = super::parse_bytes(&text)
            .ok_or_else(|| format!("GORO_BENCH_STACK_SIZE={text}: not a byte count"))?;
        builder = builder.stack_size(bytes);
    }
    let name = match stash {
        Stash::Off if trim_only => "goro_trim",
        Stash::Off => "goro",
        Stash::Trapped => {
            // SAFETY: the blockers park in a channel receive with nothing on their stacks that
            // another thread, the kernel or another process reads or writes.
            builder = unsafe { builder.stash_parked_stacks(true) };
            "goro_stash"
        }
        Stash::Unchecked => {
            // SAFETY: as above: nothing but each blocker touches its stack.
            builder = unsafe { builder.stash_parked_stacks_unchecked(true) };
            "goro_stash_unchecked"
        }
    };
    let runtime = builder.build().map_err(|e| e.to_string())?;
    runtime.run(move || {
        let before = Memory::now();
        let start = Instant::now();
        let (tx, rx) = goro::chan::channel::<()>(0);
        let started = Arc::new(goro::sync::WaitGroup::new());
        let exited = Arc::new(goro::sync::WaitGroup::new());
        let mut reached = 0;
        for _ in 0..n {
            let (rx, started2, exited2) = (rx.clone(), started.clone(), exited.clone());
            started.add(1);
            exited.add(1);
            let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                drop(goro::go(move || {
                    started2.done();
                    let _ = rx.recv();
                    exited2.done();
                }))
            }));
            if let Err(panic) = spawned {
                started.add(-1);
                exited.add(-1);
                eprintln!("goro: spawn failed after {reached} goroutines: {panic:?}");
                break;
            }
            reached += 1;
        }
        started.wait();
        for _ in 0..10 {
            goro::yield_now();
        }
        let (parked, long) = readings(goro::sleep);
        tx.close();
        exited.wait();
        print(name, n, reached, (before, parked, long), start.elapsed());
    });
    Ok(())
}

pub(crate) fn may(n: usize, options: &Options) -> Result<(), String> {
    if let Some(procs) = options.procs {
        may::config().set_workers(procs);
    }
    let before = Memory::now();
    let start = Instant::now();
    let (tx, rx) = may::sync::mpmc::channel::<()>();
    let started = Arc::new(AtomicUsize::new(0));
    let exited = Arc::new(AtomicUsize::new(0));
    let mut reached = 0;
    for i in 0..n {
        // may maps two VMAs per coroutine; once the process nears vm.max_map_count, malloc's
        // own mmaps fail too and may aborts the process ("memory allocation failed") instead
        // of returning an error. Stop just before that wall and report it.
        if i % 256 == 0
            && let Some((maps, limit)) = map_headroom()
            && maps + 1024 > limit
        {
            eprintln!(
                "may: stopped after {reached} coroutines: {maps} memory mappings in use, \
                 vm.max_map_count={limit} (each may stack costs 2)"
            );
            break;
        }
        let (rx, started, exited) = (rx.clone(), started.clone(), exited.clone());
        // may maps one stack (plus a guard: 2 VMAs) per coroutine; when vm.max_map_count is
        // reached its spawn fails or panics. Either way, stop and report how far it got.
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the closure touches no thread-local storage and uses far less than may's
            // default stack (may's spawn is unsafe for those two reasons).
            unsafe {
                may::coroutine::Builder::new().spawn(move || {
                    started.fetch_add(1, Ordering::Release);
                    let _ = rx.recv();
                    exited.fetch_add(1, Ordering::Release);
                })
            }
        }));
        match spawned {
            Ok(Ok(handle)) => drop(handle),
            Ok(Err(error)) => {
                eprintln!("may: spawn failed after {reached} coroutines: {error}");
                break;
            }
            Err(_) => {
                eprintln!("may: spawn panicked after {reached} coroutines");
                break;
            }
        }
        reached += 1;
    }
    wait_for(&started, reached);
    let (parked, long) = readings(std::thread::sleep);
    drop(tx);
    drop(rx);
    wait_for(&exited, reached);
    print("may", n, reached, (before, parked, long), start.elapsed());
    Ok(())
}

pub(crate) fn tokio(n: usize, options: &Options) -> Result<(), String> {
    let procs = options
        .procs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(procs)
        .build()
        .map_err(|e| e.to_string())?;
    let before = Memory::now();
    let start = Instant::now();
    let (tx, rx) = tokio::sync::watch::channel(());
    let started = Arc::new(AtomicUsize::new(0));
    let exited = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let (mut rx, started, exited) = (rx.clone(), started.clone(), exited.clone());
        drop(runtime.spawn(async move {
            started.fetch_add(1, Ordering::Release);
            let _ = rx.changed().await;
            exited.fetch_add(1, Ordering::Release);
        }));
    }
    wait_for(&started, n);
    let (parked, long) = readings(std::thread::sleep);
    drop(rx);
    drop(tx);
    wait_for(&exited, n);
    print("tokio", n, n, (before, parked, long), start.elapsed());
    Ok(())
}

pub(crate) fn threads(n: usize) -> Result<(), String> {
    let count = n.min(MAX_THREADS);
    if count < n {
        eprintln!("threads: capped at {MAX_THREADS} OS threads");
    }
    let before = Memory::now();
    let start = Instant::now();
    let (tx, rx) = crossbeam_channel::bounded::<()>(0);
    let started = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(count);
    for _ in 0..count {
        let (rx, started) = (rx.clone(), started.clone());
        let spawned = std::thread::Builder::new().spawn(move || {
            started.fetch_add(1, Ordering::Release);
            let _ = rx.recv();
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                eprintln!(
                    "threads: spawn failed after {} threads: {error}",
                    handles.len()
                );
                break;
            }
        }
    }
    let reached = handles.len();
    wait_for(&started, reached);
    let (parked, long) = readings(std::thread::sleep);
    drop(tx);
    for handle in handles {
        let _ = handle.join();
    }
    print(
        "threads",
        n,
        reached,
        (before, parked, long),
        start.elapsed(),
    );
    Ok(())
}
