//! Shared pieces of the integration tests: a traced tree with checksums and drop canaries, and
//! the process's RSS and a stack-toucher for the stack-memory tests.

#![allow(dead_code, reason = "each test file uses a different subset")]

use goro::gc::{Trace, Tracer};
use goro::{Gc, GcCell};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A small xorshift generator, for tests that pick at random but must replay the same way.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Ids of canaries whose objects were dropped, one bit each (ids are handed out in order). A
/// bitmap rather than a set: the collector scans what statics reach on every cycle, and a set
/// of millions of ids would be hundreds of MiB.
pub static DROPPED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static NEXT_CANARY: AtomicU64 = AtomicU64::new(1);

/// A field that records its owner's death.
pub struct Canary(pub u64);

impl Canary {
    pub fn new() -> Canary {
        Canary(NEXT_CANARY.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let (word, bit) = ((self.0 / 64) as usize, self.0 % 64);
        let mut dropped = DROPPED.lock().unwrap();
        if dropped.len() <= word {
            dropped.resize(word + 1, 0);
        }
        dropped[word] |= 1 << bit;
    }
}

// SAFETY: owns no Gc; its drop touches only a static set.
unsafe impl Trace for Canary {
    fn trace(&self, _: &mut Tracer) {}
}

pub fn was_dropped(id: u64) -> bool {
    let (word, bit) = ((id / 64) as usize, id % 64);
    DROPPED
        .lock()
        .unwrap()
        .get(word)
        .is_some_and(|bits| bits & (1 << bit) != 0)
}

#[derive(goro::Trace)]
pub struct Tree {
    pub value: u64,
    pub children: Vec<Gc<Tree>>,
    pub link: GcCell<Option<Gc<Tree>>>,
    pub canary: Canary,
}

/// A complete binary tree of `depth` levels with values derived from `seed`.
pub fn build(depth: u32, seed: u64) -> Gc<Tree> {
    let children = if depth == 0 {
        Vec::new()
    } else {
        vec![build(depth - 1, seed * 2), build(depth - 1, seed * 2 + 1)]
    };
    Gc::new(Tree {
        value: seed,
        children,
        link: GcCell::new(None),
        canary: Canary::new(),
    })
}

/// Sum of values over the tree, following links too (once).
pub fn checksum(tree: &Tree) -> u64 {
    let linked = tree.link.get().map_or(0, |l| l.value.wrapping_mul(31));
    tree.children
        .iter()
        .fold(tree.value.wrapping_add(linked), |acc, c| {
            acc.wrapping_add(checksum(c))
        })
}

/// The process's resident set, in bytes.
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Commits about `bytes` of stack below the caller (4 KiB frames), then returns 1 plus one per
/// frame.
#[inline(never)]
pub fn touch_stack(bytes: usize) -> u64 {
    if bytes < 4096 {
        return 1;
    }
    let frame = std::hint::black_box([1u8; 4096]);
    touch_stack(bytes - 4096) + u64::from(frame[3])
}

/// Runs the test `name` of this test binary again in a child process, with `env` set, and
/// checks that it ran there and passed; returns what it printed on stdout.
pub fn run_test_in_child(name: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child running {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}

/// Runs `f` as the main goroutine of a runtime with `procs` Ps and `clobberfree` on (freed
/// objects poisoned, so a missed root shows at once), as every soundness test does.
pub fn run_clobbering<R: Send + 'static>(
    procs: usize,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    goro::Runtime::builder()
        .max_procs(procs)
        .build()
        .unwrap()
        .run(move || {
            goro::gc::set_clobber_free(true);
            f()
        })
}

/// Aborts the process if not told done within `secs` (a test that fails tells it as it
/// unwinds: dropping the returned value does).
pub fn watchdog(name: &'static str, secs: u64) -> Watchdog {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = done.clone();
    std::thread::spawn(move || {
        let began = std::time::Instant::now();
        while !seen.load(Ordering::Relaxed) {
            if began.elapsed() > std::time::Duration::from_secs(secs) {
                eprintln!("WATCHDOG: {name} hung for {secs} s");
                std::process::abort();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    Watchdog(done)
}

/// What [`watchdog`] returns: `store(true, ..)` or a drop tells it the test is done.
pub struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    pub fn store(&self, value: bool, order: Ordering) {
        self.0.store(value, order);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
