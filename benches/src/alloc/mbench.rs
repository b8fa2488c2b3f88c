//! Rust re-writings of mimalloc-bench's workloads (the C originals are only read for their
//! shape; parameters are scaled to a 2-core machine):
//!
//! - `glibc_simple OPS`: glibc's bench-malloc-simple: allocate `n` blocks of one size, free them
//!   all, repeat, for sizes 16..=512 and `n` in 25, 100, 400, 1600.
//! - `larson OPS`: Larson & Krishnan's server model: 2 threads each own 1,000 slots of 8-1000 B and
//!   replace a random one per operation; every 1/4 of the run each thread hands its slots to a
//!   fresh thread, which frees blocks its predecessor allocated (cross-thread frees, thread churn).
//! - `xmalloc OPS`: xmalloc-test: 2 threads allocate batches of 100 blocks of 8-128 B and pass each
//!   batch to the other thread, which frees it (producer-consumer in both directions).
//! - `cache_scratch ITER`: 2 threads; each frees a small block the main thread allocated for it,
//!   then ITER times allocates an 8 B block and writes it 20,000 times (passive false sharing).
//! - `mstress ROUNDS`: mimalloc's test-stress: 4 threads per round, cookie-checked blocks of
//!   mostly small sizes (1 % up to 8 KiB, 0.01 % up to 256 KiB), random frees and transfers through
//!   a shared array of 1,000 slots, fresh threads every round.

use super::{Block, Rng, alloc, backoff, check_impl, free};
use crate::{Options, report};
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PEERS: &[&str] = super::PEERS;

fn finish(workload: &str, implementation: &str, ops: usize, total: Duration) {
    report::Result::new(workload, implementation)
        .key("ops", ops)
        .key(
            "ns_per_op",
            format!("{:.2}", total.as_secs_f64() * 1e9 / ops.max(1) as f64),
        )
        .key(
            "ops_per_s",
            format!("{:.0}", ops as f64 / total.as_secs_f64()),
        )
        .print(total);
}

pub(super) fn glibc_simple(implementation: &str, size: &str, _: &Options) -> Result<(), String> {
    check_impl("glibc_simple", implementation, PEERS)?;
    let ops: usize = crate::parse_size("glibc_simple", size)?;
    let sizes = [16, 32, 64, 128, 256, 512];
    let counts = [25, 100, 400, 1600];
    let per_case = ops / (sizes.len() * counts.len());
    let mut blocks = Vec::with_capacity(1600);
    let start = Instant::now();
    let mut done = 0;
    for &n in &counts {
        for &bytes in &sizes {
            for _ in 0..per_case / n {
                blocks.extend((0..n).map(|_| alloc(bytes)));
                for p in blocks.drain(..) {
                    // SAFETY: a live block from `alloc`, freed once.
                    unsafe { free(p) };
                }
                done += n;
            }
        }
    }
    finish("glibc_simple", implementation, done, start.elapsed());
    Ok(())
}

/// One larson lane: `ops` replacements over `slots`, then the slots go to the next generation.
fn larson_lane(slots: &mut [Block], ops: usize, rng: &mut Rng) {
    for _ in 0..ops {
        let i = rng.range(0, slots.len() - 1);
        // SAFETY: every slot holds a live block from `alloc`, replaced after its free.
        unsafe { free(slots[i].0) };
        slots[i] = Block(alloc(rng.range(8, 1000)));
    }
}

pub(super) fn larson(implementation: &str, size: &str, _: &Options) -> Result<(), String> {
    check_impl("larson", implementation, PEERS)?;
    let ops: usize = crate::parse_size("larson", size)?;
    const THREADS: usize = 2;
    const SLOTS: usize = 1000;
    const GENERATIONS: usize = 4;
    let per_gen = ops / (THREADS * GENERATIONS);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let mut rng = Rng::new(t as u64 + 1);
                let mut slots: Vec<Block> = (0..SLOTS)
                    .map(|_| Block(alloc(rng.range(8, 1000))))
                    .collect();
                for _ in 0..GENERATIONS {
                    // A fresh thread inherits the slots: it frees its predecessor's blocks.
                    let (back, r) = std::thread::spawn(move || {
                        larson_lane(&mut slots, per_gen, &mut rng);
                        (slots, rng)
                    })
                    .join()
                    .expect("larson thread");
                    slots = back;
                    rng = r;
                }
                for b in slots {
                    // SAFETY: live blocks, freed once.
                    unsafe { free(b.0) };
                }
            });
        }
    });
    finish(
        "larson",
        implementation,
        per_gen * THREADS * GENERATIONS,
        start.elapsed(),
    );
    Ok(())
}

pub(super) fn xmalloc(implementation: &str, size: &str, _: &Options) -> Result<(), String> {
    check_impl("xmalloc", implementation, PEERS)?;
    let ops: usize = crate::parse_size("xmalloc", size)?;
    const THREADS: usize = 2;
    const BATCH: usize = 100;
    const MAX_QUEUED: usize = 64;
    let batches = ops / (THREADS * BATCH);
    // queues[t]: batches for thread t to free.
    let queues: Vec<Mutex<Vec<Vec<Block>>>> =
        (0..THREADS).map(|_| Mutex::new(Vec::new())).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let queues = &queues;
            s.spawn(move || {
                let mut rng = Rng::new(t as u64 + 7);
                let mut freed = 0;
                let free_batch = |batch: Vec<Block>| {
                    for b in batch {
                        // SAFETY: blocks handed over by the other thread, freed once here.
                        unsafe { free(b.0) };
                    }
                };
                for _ in 0..batches {
                    let batch: Vec<Block> = (0..BATCH)
                        .map(|_| Block(alloc(rng.range(8, 128))))
                        .collect();
                    let mut spins = 0;
                    loop {
                        let mut q = queues[(t + 1) % THREADS].lock().expect("queue");
                        if q.len() < MAX_QUEUED {
                            q.push(batch);
                            break;
                        }
                        drop(q);
                        // The consumer is behind: free our own share meanwhile.
                        if let Some(mine) = queues[t].lock().expect("queue").pop() {
                            free_batch(mine);
                            freed += 1;
                        } else {
                            backoff(&mut spins);
                        }
                    }
                    if let Some(mine) = queues[t].lock().expect("queue").pop() {
                        free_batch(mine);
                        freed += 1;
                    }
                }
                // Drain what the other thread will still send.
                let mut spins = 0;
                while freed < batches {
                    match queues[t].lock().expect("queue").pop() {
                        Some(mine) => {
                            free_batch(mine);
                            freed += 1;
                        }
                        None => backoff(&mut spins),
                    }
                }
            });
        }
    });
    finish(
        "xmalloc",
        implementation,
        batches * BATCH * THREADS,
        start.elapsed(),
    );
    Ok(())
}

pub(super) fn cache_scratch(implementation: &str, size: &str, _: &Options) -> Result<(), String> {
    check_impl("cache_scratch", implementation, PEERS)?;
    let iterations: usize = crate::parse_size("cache_scratch", size)?;
    const THREADS: usize = 2;
    const REPETITIONS: usize = 20_000;
    const OBJ: usize = 8;
    // The main thread allocates one block per thread: neighbours in memory.
    let seeds: Vec<Block> = (0..THREADS).map(|_| Block(alloc(OBJ))).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for b in seeds {
            s.spawn(move || {
                let b = b; // capture the whole (Send) handle, not its raw pointer field
                // SAFETY: the main thread's block, handed to this thread alone.
                unsafe { free(b.0) };
                for i in 0..iterations {
                    let p = alloc(OBJ);
                    for _ in 0..REPETITIONS {
                        // SAFETY: `p` is a live 8-byte block; volatile keeps every store.
                        unsafe { (p as *mut usize).write_volatile(i) };
                    }
                    // The first word must hold the size again for `free`.
                    // SAFETY: as above.
                    unsafe { (p as *mut usize).write(OBJ) };
                    // SAFETY: live block, freed once.
                    unsafe { free(p) };
                }
            });
        }
    });
    finish(
        "cache_scratch",
        implementation,
        iterations * THREADS * REPETITIONS,
        start.elapsed(),
    );
    Ok(())
}

const COOKIE: usize = 0xbf58_476d_1ce4_e5b9;

/// A cookie-filled block for mstress: word 0 = size (for `free`), every other word = cookie ^ addr.
fn stress_alloc(rng: &mut Rng) -> Block {
    let r = rng.next() % 10_000;
    let words = if r == 0 {
        rng.range(1, 32 * 1024) // 0.01 %: up to 256 KiB
    } else if r < 100 {
        rng.range(1, 1024) // 1 %: up to 8 KiB
    } else {
        rng.range(1, 16)
    } + 1;
    let p = alloc(words * 8);
    for w in 1..words.min(64) {
        // SAFETY: word w < words lies inside the fresh block.
        unsafe { (p as *mut usize).add(w).write(COOKIE ^ p as usize) };
    }
    Block(p)
}

fn stress_free(b: Block) {
    let p = b.0;
    // SAFETY: a live block from `stress_alloc`; word 0 holds its size.
    let words = unsafe { (p as *const usize).read() } / 8;
    for w in 1..words.min(64) {
        // SAFETY: as in `stress_alloc`.
        let v = unsafe { (p as *const usize).add(w).read() };
        assert_eq!(
            v,
            COOKIE ^ p as usize,
            "mstress: cookie of {p:?} overwritten"
        );
    }
    // SAFETY: live block, freed once.
    unsafe { free(p) };
}

fn stress_thread(tid: usize, round: usize, transfer: &[AtomicPtr<u8>], ops: &AtomicUsize) {
    let mut rng = Rng::new((round * 64 + tid) as u64 + 1);
    let mut allocs = 2_000 * (tid % 4 + 1);
    let mut retain = allocs / 2;
    let mut data: Vec<Option<Block>> = Vec::new();
    let mut n = 0;
    while allocs > 0 || retain > 0 {
        if retain == 0 || (rng.next().is_multiple_of(2) && allocs > 0) {
            allocs -= 1;
            data.push(Some(stress_alloc(&mut rng)));
        } else {
            retain -= 1;
            let i = rng.range(0, data.len().max(1) - 1);
            if let Some(b) = data.get_mut(i).and_then(Option::take) {
                stress_free(b);
            }
        }
        if rng.next().is_multiple_of(4) && !data.is_empty() {
            // Swap a block with the transfer array: another thread frees it later.
            let i = rng.range(0, data.len() - 1);
            let t = rng.range(0, transfer.len() - 1);
            let mine = data[i].map_or(std::ptr::null_mut(), |b| b.0);
            // AcqRel: hands our block's contents over and takes the previous owner's.
            let theirs = transfer[t].swap(mine, Ordering::AcqRel);
            data[i] = (!theirs.is_null()).then_some(Block(theirs));
        }
        n += 1;
    }
    for b in data.into_iter().flatten() {
        stress_free(b);
    }
    ops.fetch_add(n, Ordering::Relaxed);
}

pub(super) fn mstress(implementation: &str, size: &str, _: &Options) -> Result<(), String> {
    check_impl("mstress", implementation, PEERS)?;
    let rounds: usize = crate::parse_size("mstress", size)?;
    const THREADS: usize = 4;
    let transfer: Vec<AtomicPtr<u8>> = (0..1000)
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    let ops = AtomicUsize::new(0);
    let start = Instant::now();
    for round in 0..rounds {
        std::thread::scope(|s| {
            for tid in 0..THREADS {
                let (transfer, ops) = (&transfer, &ops);
                s.spawn(move || stress_thread(tid, round, transfer, ops));
            }
        });
    }
    for t in &transfer {
        let p = t.swap(std::ptr::null_mut(), Ordering::Acquire);
        if !p.is_null() {
            stress_free(Block(p));
        }
    }
    finish(
        "mstress",
        implementation,
        ops.load(Ordering::Relaxed),
        start.elapsed(),
    );
    Ok(())
}
