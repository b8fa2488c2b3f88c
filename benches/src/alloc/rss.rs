//! rss_return MIB: does memory go back to the OS after a program frees most of its heap?
//!
//! Allocates MIB MiB of 64 B objects (the figure is 1024; the suite runs 256), frees 95 %
//! of them, and samples RSS right after the frees, after 1 s, after 10 s, and after the
//! allocator's own purge call (`super::purge`). Variants choose which 95 % die:
//!
//! - `random`: each object independently. Almost every page keeps a live object (a 4 KiB page
//!   of 64 objects is entirely dead with probability 0.95^64 = 4 %), so no non-moving allocator
//!   can return much: this variant shows the cost of fragmentation.
//! - `runs`: objects die in runs of 4,096 consecutive allocations (256 KiB), each run kept whole
//!   with probability 5 %: what a program that frees whole data structures does; the free pages
//!   are contiguous and an allocator can give them back.
//!
//! Keys: `live_kib` (bytes still live), `rss_full_kib` (before the frees), `rss_0s_kib`,
//! `rss_1s_kib`, `rss_10s_kib`, `rss_released_kib` (after the purge call). `total_ms` is the time
//! of the allocations and frees, without the sleeps.

use super::{Rng, alloc, check_impl, free, purge};
use crate::{Options, report};
use std::time::{Duration, Instant};

const OBJ: usize = 64;
const RUN: usize = 4096;

pub(super) fn run(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    check_impl("rss_return", implementation, super::PEERS)?;
    let mib: usize = crate::parse_size("rss_return", size)?;
    let variant = options.variant.as_deref().unwrap_or("random");
    if variant != "random" && variant != "runs" {
        return Err(format!("rss_return: no variant {variant} (random, runs)"));
    }
    let n = (mib << 20) / OBJ;
    let start = Instant::now();
    let mut all: Vec<*mut u8> = (0..n).map(|_| alloc(OBJ)).collect();
    let rss_full = report::rss_kib();
    let mut rng = Rng::new(42);
    let mut keep_run = false;
    let mut survivors = Vec::new();
    for (i, p) in all.drain(..).enumerate() {
        let keep = if variant == "random" {
            rng.next() % 100 < 5
        } else {
            if i % RUN == 0 {
                keep_run = rng.next() % 100 < 5;
            }
            keep_run
        };
        if keep {
            survivors.push(p);
        } else {
            // SAFETY: a live block from `alloc`, freed once.
            unsafe { free(p) };
        }
    }
    drop(all);
    survivors.shrink_to_fit();
    let total = start.elapsed();
    let rss_0 = report::rss_kib();
    std::thread::sleep(Duration::from_secs(1));
    let rss_1 = report::rss_kib();
    std::thread::sleep(Duration::from_secs(9));
    let rss_10 = report::rss_kib();
    purge(implementation);
    let rss_released = report::rss_kib();
    let live_kib = survivors.len() * OBJ / 1024;
    let result = report::Result::new("rss_return", implementation)
        .key("variant", variant)
        .key("mib", mib)
        .key("live_kib", live_kib)
        .key("rss_full_kib", rss_full)
        .key("rss_0s_kib", rss_0)
        .key("rss_1s_kib", rss_1)
        .key("rss_10s_kib", rss_10)
        .key("rss_released_kib", rss_released);
    for p in survivors {
        // SAFETY: live blocks, freed once.
        unsafe { free(p) };
    }
    result.print(total);
    Ok(())
}
