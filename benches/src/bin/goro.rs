//! goro's side of the workloads, in a process whose global allocator is GoroAlloc.
//!
//! Invoked by `goro-bench` as `goro-bench-goro WORKLOAD SIZE --impl goro [--procs P]`.

use goro_bench::binary_trees::{self, GoroTrees};
use std::process::ExitCode;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let procs = args
        .iter()
        .position(|a| a == "--procs")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok());
    let positional: Vec<&String> = {
        let mut skip = false;
        args.iter()
            .filter(|a| {
                let keep = !skip && !a.starts_with("--");
                skip = a.starts_with("--");
                keep
            })
            .collect()
    };
    let (Some(workload), size) = (positional.first(), positional.get(1)) else {
        eprintln!("usage: goro-bench-goro WORKLOAD [SIZE] --impl goro [--procs P]");
        return ExitCode::from(2);
    };
    let mut builder = goro::Runtime::builder();
    if let Some(procs) = procs {
        builder = builder.max_procs(procs);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("goro-bench-goro: {error}");
            return ExitCode::FAILURE;
        }
    };
    match workload.as_str() {
        "binary_trees" => {
            let n = size
                .and_then(|s| s.parse().ok())
                .unwrap_or(binary_trees::DEFAULT_N);
            runtime.run(move || binary_trees::bench::<GoroTrees>("goro", n));
        }
        other => {
            eprintln!("goro-bench-goro: unknown workload {other}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
