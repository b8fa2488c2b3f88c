//! The alloc family: goro-alloc side by side with glibc malloc, mimalloc and jemalloc.
//!
//! Every implementation runs the same code in its own process; only the process's global
//! allocator differs (`goro` in goro-bench-goro, `system` in goro-bench, `mimalloc` and `jemalloc`
//! in their binaries). `bumpalo` is the floor of `alloc_churn --variant 1t` (allocation only, a
//! `bumpalo::Bump` reset every window). Workloads:
//!
//! - `alloc_churn OPS`: a sliding window of 10,000 live objects of 16-512 B (`churn.rs`), variants
//!   `1t`, `2t` (two threads, a window each) and `prodcons` (thread A allocates, thread B frees).
//! - Rust re-writings of mimalloc-bench: `glibc_simple`, `larson`, `xmalloc`, `cache_scratch`,
//!   `mstress` (`mbench.rs`).
//! - `rss_return MIB`: allocate MIB MiB of 64 B objects, free 95 %, sample RSS (`rss.rs`).
//!
//! Sizes default to values that keep the family within a few minutes on a 2-core machine.

use crate::Workload;
use std::alloc::Layout;

mod churn;
mod mbench;
mod rss;

/// The allocators every workload of the family compares.
const PEERS: &[&str] = &["goro", "system", "mimalloc", "jemalloc"];

/// The workloads of this family.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "alloc_churn",
        default_size: "20000000",
        variants: &["1t", "2t", "prodcons"],
        implementations: &["goro", "system", "mimalloc", "jemalloc", "bumpalo"],
        run: churn::run,
    },
    Workload {
        name: "glibc_simple",
        default_size: "10000000",
        variants: &[],
        implementations: PEERS,
        run: mbench::glibc_simple,
    },
    Workload {
        name: "larson",
        default_size: "10000000",
        variants: &[],
        implementations: PEERS,
        run: mbench::larson,
    },
    Workload {
        name: "xmalloc",
        default_size: "10000000",
        variants: &[],
        implementations: PEERS,
        run: mbench::xmalloc,
    },
    Workload {
        name: "cache_scratch",
        default_size: "20000",
        variants: &[],
        implementations: PEERS,
        run: mbench::cache_scratch,
    },
    Workload {
        name: "mstress",
        default_size: "100",
        variants: &[],
        implementations: PEERS,
        run: mbench::mstress,
    },
    Workload {
        name: "rss_return",
        default_size: "256",
        variants: &["random", "runs"],
        implementations: PEERS,
        run: rss::run,
    },
];

/// Checks that `implementation` is one of `allowed`.
fn check_impl(workload: &str, implementation: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&implementation) {
        Ok(())
    } else {
        Err(format!("{workload}: no implementation {implementation}"))
    }
}

/// Allocates `size` bytes (8-aligned) from the process's global allocator and writes its first
/// word, as a program would.
#[inline]
fn alloc(size: usize) -> *mut u8 {
    let layout = Layout::from_size_align(size, 8).expect("benchmark sizes are valid");
    // SAFETY: every benchmark size is non-zero.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` is a fresh block of at least 8 bytes (sizes are >= 8), 8-aligned.
    unsafe { (p as *mut usize).write(size) };
    p
}

/// Frees a block from [`alloc`]; its first word holds its size.
///
/// # Safety
/// May be called only with a live block from [`alloc`], once.
#[inline]
unsafe fn free(p: *mut u8) {
    // SAFETY: caller's contract: the first word is the size `alloc` wrote.
    let size = unsafe { (p as *const usize).read() };
    let layout = Layout::from_size_align(size, 8).expect("benchmark sizes are valid");
    // SAFETY: `p` was allocated with this layout (caller's contract).
    unsafe { std::alloc::dealloc(p, layout) }
}

/// A raw block pointer that may move between threads (the benchmarks hand blocks over).
#[derive(Clone, Copy)]
struct Block(*mut u8);

// SAFETY: a block is plain heap memory owned by whoever holds the handle.
unsafe impl Send for Block {}

/// xorshift64*: a tiny deterministic generator, the same sequence for every implementation.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    #[inline]
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() >> 33) as usize % (hi - lo + 1)
    }
}

/// Waits politely: spins a little, then yields (the machine may have fewer cores than threads).
#[inline]
fn backoff(spins: &mut u32) {
    if *spins < 100 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Gives free memory back to the OS the way each allocator's users would: goro's
/// `release_memory`, mimalloc's `mi_collect(true)`, jemalloc's `arena.<all>.purge`, glibc's
/// `malloc_trim(0)`.
fn purge(implementation: &str) {
    match implementation {
        "goro" => {
            goro_alloc::release_memory();
        }
        // SAFETY: mi_collect has no preconditions.
        "mimalloc" => unsafe { libmimalloc_sys::mi_collect(true) },
        "jemalloc" => {
            // 4096 = MALLCTL_ARENAS_ALL.
            let name = c"arena.4096.purge";
            // SAFETY: a valid NUL-terminated control name; no old or new value.
            unsafe {
                tikv_jemalloc_sys::mallctl(
                    name.as_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                );
            }
        }
        _ => {
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
        }
    }
}
