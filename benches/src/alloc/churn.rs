//! alloc_churn: a sliding window of [`WINDOW`] live objects of 16-512 B.
//!
//! One operation frees the oldest object of the window and allocates a new one of a random size
//! (the same sequence for every allocator). Variants:
//!
//! - `1t`: one thread, one window. `bumpalo` runs it as the floor: allocation only, the bump
//!   arena reset once per window (in `2t` one arena per thread; in `prodcons` the producer's
//!   allocations alone, so it is a floor there only in name).
//! - `2t`: two threads, each with its own window (no sharing: measures per-thread caches).
//! - `prodcons`: thread A allocates and hands each object to thread B through a ring of
//!   [`WINDOW`] slots; B frees it. Every free is a cross-thread free and A never frees anything.
//!
//! `ns_per_op` = wall time / operations (for `2t`, operations of one thread: both run at once).

use super::{Block, Rng, alloc, backoff, check_impl, free};
use crate::{Options, report};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Live objects per window.
pub const WINDOW: usize = 10_000;
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 512;

pub(super) fn run(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let ops: usize = crate::parse_size("alloc_churn", size)?;
    let variant = options.variant.as_deref().unwrap_or("1t");
    check_impl(
        "alloc_churn",
        implementation,
        &["goro", "system", "mimalloc", "jemalloc", "bumpalo"],
    )?;
    let total = match (variant, implementation) {
        ("1t", "bumpalo") => bump_window(ops, 1),
        ("2t", "bumpalo") => {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    s.spawn(move || bump_window(ops, t + 1));
                }
            });
            start.elapsed()
        }
        // Allocation only: the consumer side has nothing to free.
        ("prodcons", "bumpalo") => bump_window(ops, 1),
        ("1t", _) => timed(|| window(ops, 1)),
        ("2t", _) => {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    s.spawn(move || window(ops, t + 1));
                }
            });
            start.elapsed()
        }
        ("prodcons", _) => prodcons(ops),
        (other, _) => {
            return Err(format!(
                "alloc_churn: no variant {other} (1t, 2t, prodcons)"
            ));
        }
    };
    report::Result::new("alloc_churn", implementation)
        .key("variant", variant)
        .key("ops", ops)
        .key(
            "ns_per_op",
            format!("{:.2}", total.as_secs_f64() * 1e9 / ops as f64),
        )
        .print(total);
    Ok(())
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// One thread's window: fill it, then `ops` free-oldest + allocate operations, then empty it.
fn window(ops: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut ring: Vec<*mut u8> = (0..WINDOW)
        .map(|_| alloc(rng.range(MIN_SIZE, MAX_SIZE)))
        .collect();
    let mut i = 0;
    for _ in 0..ops {
        let slot = &mut ring[i];
        // SAFETY: every ring entry is a live block from `alloc`, freed once before replacement.
        unsafe { free(*slot) };
        *slot = alloc(rng.range(MIN_SIZE, MAX_SIZE));
        i += 1;
        if i == WINDOW {
            i = 0;
        }
    }
    for p in ring {
        // SAFETY: as above.
        unsafe { free(p) };
    }
}

/// The floor: the same sizes from a bump arena, reset every window.
fn bump_window(ops: usize, seed: u64) -> Duration {
    let mut rng = Rng::new(seed);
    let mut bump = bumpalo::Bump::new();
    let start = Instant::now();
    let mut i = 0;
    for _ in 0..ops {
        let size = rng.range(MIN_SIZE, MAX_SIZE);
        let p = bump.alloc_layout(std::alloc::Layout::from_size_align(size, 8).expect("valid"));
        // SAFETY: a fresh 8-aligned block of at least 16 bytes.
        unsafe { (p.as_ptr() as *mut usize).write(size) };
        i += 1;
        if i == WINDOW {
            i = 0;
            bump.reset();
        }
    }
    start.elapsed()
}

/// A single-producer single-consumer ring of [`WINDOW`] blocks.
struct Ring {
    slots: Vec<std::cell::UnsafeCell<Block>>,
    /// Blocks pushed so far; written by the producer (Release), read by the consumer (Acquire).
    head: AtomicUsize,
    /// Blocks popped so far; written by the consumer (Release), read by the producer (Acquire).
    tail: AtomicUsize,
}

// SAFETY: a slot is written by the producer only while the consumer cannot read it (head/tail
// handshake below), and read by the consumer only after the producer published it.
unsafe impl Sync for Ring {}

fn prodcons(ops: usize) -> Duration {
    let ring = Ring {
        slots: (0..WINDOW)
            .map(|_| std::cell::UnsafeCell::new(Block(std::ptr::null_mut())))
            .collect(),
        head: AtomicUsize::new(0),
        tail: AtomicUsize::new(0),
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        let ring = &ring;
        s.spawn(move || {
            let mut rng = Rng::new(1);
            for n in 0..ops {
                // Acquire: pairs with the consumer's Release of `tail` (the slot is free).
                let mut spins = 0;
                while n - ring.tail.load(Ordering::Acquire) >= WINDOW {
                    backoff(&mut spins);
                }
                let p = alloc(rng.range(MIN_SIZE, MAX_SIZE));
                // SAFETY: slot n % WINDOW is not readable by the consumer until `head` > n.
                unsafe { *ring.slots[n % WINDOW].get() = Block(p) };
                // Release: publishes the slot to the consumer's Acquire.
                ring.head.store(n + 1, Ordering::Release);
            }
        });
        s.spawn(move || {
            for n in 0..ops {
                // Acquire: pairs with the producer's Release of `head`.
                let mut spins = 0;
                while ring.head.load(Ordering::Acquire) <= n {
                    backoff(&mut spins);
                }
                // SAFETY: the producer published slot n % WINDOW and will not touch it until
                // `tail` passes n.
                let Block(p) = unsafe { *ring.slots[n % WINDOW].get() };
                // Release: hands the slot back to the producer.
                ring.tail.store(n + 1, Ordering::Release);
                // SAFETY: a live block from `alloc`, handed to us alone.
                unsafe { free(p) };
            }
        });
    });
    start.elapsed()
}
