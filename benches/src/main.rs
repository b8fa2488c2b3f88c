//! The workload runner: `cargo run --release -p goro-bench -- [WORKLOAD [SIZE]] [--impl NAME]
//! [--procs P] [--variant V]`.
//!
//! With no workload it runs the whole suite at default sizes (every variant), every
//! implementation in its own process, and prints a table of the RESULT lines with ratios against
//! goro. With a workload and no `--impl`, it runs that workload's implementations the same way.
//! With `--impl`, it runs one implementation: peers that use the system allocator run here; the
//! others run in the sibling binary for their allocator (built first by the cargo that built this
//! one, unless `GORO_BENCH_NO_BUILD` is set).

use goro_bench::{Args, Binary, Options, Workload, binary_for, report, workloads};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("goro-bench: {error}");
            eprintln!(
                "usage: goro-bench [WORKLOAD [SIZE]] [--impl NAME] [--procs P] [--variant V]"
            );
            return ExitCode::from(2);
        }
    };
    let Some(name) = args.workload.as_deref() else {
        return run_suite(&workloads(), &args.options);
    };
    let Some(workload) = goro_bench::workload(name) else {
        let names: Vec<_> = workloads().iter().map(|w| w.name).collect();
        eprintln!(
            "goro-bench: unknown workload {name}; known: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let size = args.size.as_deref().unwrap_or(workload.default_size);
    match args.implementation.as_deref() {
        None => run_workload(workload, size, &args.options, &mut Vec::new()),
        Some(implementation) if binary_for(implementation) == Binary::System => {
            match (workload.run)(implementation, size, &args.options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("goro-bench: {name} --impl {implementation}: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(implementation) => match run_child(workload.name, size, implementation, &args.options)
        {
            Some(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
    }
}

fn run_suite(suite: &[&Workload], options: &Options) -> ExitCode {
    let mut rows = Vec::new();
    let mut failed = false;
    for workload in suite {
        failed |=
            run_workload(workload, workload.default_size, options, &mut rows) != ExitCode::SUCCESS;
    }
    print_table(&rows);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs every implementation (and variant) of `workload`, each in its own process.
fn run_workload(
    workload: &Workload,
    size: &str,
    options: &Options,
    rows: &mut Vec<report::Row>,
) -> ExitCode {
    let own_rows = rows.is_empty();
    let variants: Vec<Option<&str>> = match (&options.variant, workload.variants) {
        (Some(v), _) => vec![Some(v.as_str())],
        (None, []) => vec![None],
        (None, variants) => variants.iter().map(|v| Some(*v)).collect(),
    };
    let mut failed = false;
    for variant in variants {
        let options = Options {
            variant: variant.map(str::to_string),
            ..options.clone()
        };
        for implementation in workload.implementations {
            if *implementation == "go" && !goro_bench::go::available() {
                eprintln!(
                    "== {}: skipping go (no Go toolchain installed)",
                    workload.name
                );
                continue;
            }
            let label = variant.map_or(String::new(), |v| format!(" --variant {v}"));
            eprintln!("== {} {size} --impl {implementation}{label}", workload.name);
            match run_child(workload.name, size, implementation, &options) {
                Some(line) => {
                    println!("{line}");
                    rows.extend(report::parse(&line));
                }
                None => failed = true,
            }
        }
    }
    if own_rows {
        print_table(rows);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one implementation in its own process; returns its RESULT line.
fn run_child(
    workload: &str,
    size: &str,
    implementation: &str,
    options: &Options,
) -> Option<String> {
    let program = binary_path(binary_for(implementation))?;
    let mut child = Command::new(&program);
    child.args(Args::child_args(workload, size, implementation, options));
    if implementation == "goro_trim" {
        // goro with the stash trap off: parked stacks are only trimmed.
        let debug = std::env::var("GORO_DEBUG").unwrap_or_default();
        child.env("GORO_DEBUG", format!("{debug},stacktrap=off"));
    }
    let output = child
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| eprintln!("goro-bench: cannot run {}: {e}", program.display()))
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("RESULT "))
        .map(str::to_string);
    if !output.status.success() || line.is_none() {
        eprintln!(
            "goro-bench: {workload} --impl {implementation} failed ({})",
            output.status
        );
        eprint!("{stdout}");
        return None;
    }
    line
}

/// The executable for `binary`: this one, or a sibling built (by the cargo that built this one)
/// if needed.
fn binary_path(binary: Binary) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if binary == Binary::System {
        return Some(exe);
    }
    let sibling = exe.with_file_name(binary.file_name());
    if std::env::var_os("GORO_BENCH_NO_BUILD").is_none() {
        let release = exe.components().any(|c| c.as_os_str() == "release");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build.args([
            "build",
            "--quiet",
            "-p",
            "goro-bench",
            "--bin",
            binary.file_name(),
        ]);
        if release {
            build.arg("--release");
        }
        build.current_dir(env!("CARGO_MANIFEST_DIR"));
        match build.status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!(
                "goro-bench: building {} failed ({status})",
                binary.file_name()
            ),
            Err(error) => eprintln!("goro-bench: cannot run cargo: {error}"),
        }
    }
    if sibling.exists() {
        Some(sibling)
    } else {
        eprintln!(
            "goro-bench: {} is missing; build it with `cargo build --release -p goro-bench`",
            sibling.display()
        );
        None
    }
}

fn print_table(rows: &[report::Row]) {
    let get = |keys: &[(String, String)], key: &str| {
        keys.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let variant_of = |keys: &[(String, String)]| get(keys, "variant");
    println!();
    println!(
        "{:<16} {:<10} {:<12} {:>12} {:>12} {:>12} {:>11} {:>10}",
        "workload",
        "variant",
        "impl",
        "total_ms",
        "ns_per_op",
        "vmhwm_kib",
        "time/goro",
        "rss/goro"
    );
    for (workload, implementation, keys) in rows {
        let goro = rows
            .iter()
            .find(|(w, i, k)| w == workload && i == "goro" && variant_of(k) == variant_of(keys));
        let failed = !get(keys, "error").is_empty();
        let ratio = |key: &str| {
            if failed {
                return None;
            }
            let mine: f64 = get(keys, key).parse().ok()?;
            let theirs: f64 = get(&goro?.2, key).parse().ok()?;
            Some(format!("{:.2}", mine / theirs))
        };
        println!(
            "{:<16} {:<10} {:<12} {:>12} {:>12} {:>12} {:>11} {:>10}",
            workload,
            variant_of(keys),
            implementation,
            get(keys, "total_ms"),
            get(keys, "ns_per_op"),
            get(keys, "vmhwm_kib"),
            ratio("total_ms").unwrap_or_else(|| "-".into()),
            ratio("vmhwm_kib").unwrap_or_else(|| "-".into()),
        );
    }
}
