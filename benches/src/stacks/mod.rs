//! The stacks family: what goroutine stacks cost in memory and in time, for goro and its peers.
//!
//! | workload | what | keys |
//! |---|---|---|
//! | `parked_memory N` | N goroutines (tasks, threads) blocked on a channel receive at once; RSS growth per goroutine, just parked and parked for 5 s | n, reached, bytes_per_task, bytes_per_task_long |
//! | `deep_recursion D [R]` | recursion to depth D with ~128-byte frames, R times in a fresh goroutine each, then R times in one goroutine | depth, reps, checksum, fresh_ms_per_rep, warm_ms_per_rep |
//!
//! | `fresh_stacks N,KIB` | N goroutines alive at once, each using KIB KiB of stack once on a stack never used before, then blocking | n, kib, ns_per_goroutine |
//!
//! The size of `deep_recursion` is `D` or `D,R` (default `100000,100`); of `fresh_stacks`,
//! `N,KIB` (default `100000,4`).
//!
//! Peers: `may` (coroutines with mmap'd stacks: it stops at its VMA limit, and the RESULT line
//! says where with `reached`), `tokio` (stackless tasks, parked_memory only), `threads` (std
//! threads: at most 10,000 parked; a 64 MiB stack for deep recursion), and `go` (the programs in
//! `benches/go/`, run with `go run` when a Go toolchain is found).
//!
//! goro runs through its public API. `GORO_BENCH_STACK_SIZE` (bytes, `K`/`M`/`G` suffixes)
//! overrides the runtime's stack size for parked_memory, to compare slot sizes; deep_recursion's
//! `goro` uses a 64 MiB slot, `goro_grow` the default 1 MiB slot and `maybe_grow` segments.

mod fresh;
mod parked;
mod recursion;

use crate::{Options, Workload};

/// The workloads of this family.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "parked_memory",
        default_size: "100000",
        variants: &[],
        implementations: &["goro", "goro_trim", "may", "tokio", "threads", "go"],
        run: run_parked,
    },
    Workload {
        name: "deep_recursion",
        default_size: "100000,100",
        variants: &[],
        implementations: &["goro", "goro_grow", "may", "threads", "go"],
        run: run_recursion,
    },
    Workload {
        name: "fresh_stacks",
        default_size: "100000,4",
        variants: &[],
        implementations: &["goro", "goro_trim", "go"],
        run: run_fresh,
    },
];

fn run_fresh(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let (n, kib) = match size.split_once(',') {
        Some((n, k)) => (
            crate::parse_size("fresh_stacks", n)?,
            crate::parse_size("fresh_stacks", k)?,
        ),
        None => (crate::parse_size("fresh_stacks", size)?, 4),
    };
    match implementation {
        "goro" => fresh::goro(n, kib, options, false),
        "goro_trim" => fresh::goro(n, kib, options, true),
        "go" => crate::go::run("fresh_stacks", &[n.to_string(), kib.to_string()]),
        other => Err(format!("no implementation {other}")),
    }
}

fn run_parked(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let n: usize = crate::parse_size("parked_memory", size)?;
    match implementation {
        "goro" => parked::goro(n, options, false),
        "goro_trim" => parked::goro(n, options, true),
        "may" => parked::may(n, options),
        "tokio" => parked::tokio(n, options),
        "threads" => parked::threads(n),
        "go" => crate::go::run("parked_memory", &[n.to_string()]),
        other => Err(format!("no implementation {other}")),
    }
}

fn run_recursion(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let (depth, reps) = match size.split_once(',') {
        Some((d, r)) => (
            crate::parse_size("deep_recursion", d)?,
            crate::parse_size("deep_recursion", r)?,
        ),
        None => (crate::parse_size("deep_recursion", size)?, 100),
    };
    match implementation {
        "goro" => recursion::goro(depth, reps, options, false),
        "goro_grow" => recursion::goro(depth, reps, options, true),
        "may" => recursion::may(depth, reps),
        "threads" => recursion::threads(depth, reps),
        "go" => crate::go::run("deep_recursion", &[depth.to_string(), reps.to_string()]),
        other => Err(format!("no implementation {other}")),
    }
}

/// Parses a byte count with an optional `K`, `M` or `G` suffix (powers of 1024).
pub(crate) fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}
