//! The workload runner: `cargo run --release -p goro-bench -- [WORKLOAD [SIZE]] [--impl NAME]
//! [--procs P] [--variant V]`.
//!
//! With no workload it runs the whole suite at default sizes, every implementation in its own
//! process, and prints a table of the RESULT lines with time ratios against goro. With a workload
//! and `--impl`, it runs that one implementation and prints its RESULT line. Peers run here, with
//! the system allocator; `goro` runs in the sibling binary `goro-bench-goro`, whose global
//! allocator is GoroAlloc (building it first if it is missing or stale).

use goro_bench::binary_trees::{self, ArcTrees, BoxTrees, RcTrees};
use goro_bench::report;
use std::process::{Command, ExitCode};

/// Each workload, its default size, and the implementations that run it.
const SUITE: &[(&str, &str, &[&str])] = &[("binary_trees", "18", &["goro", "box", "rc", "arc"])];

struct Args {
    workload: Option<String>,
    size: Option<String>,
    implementation: Option<String>,
    rest: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workload: None,
        size: None,
        implementation: None,
        rest: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--impl" => args.implementation = Some(it.next().ok_or("--impl needs a NAME")?),
            "--procs" | "--variant" => {
                let value = it.next().ok_or(format!("{arg} needs a value"))?;
                args.rest.extend([arg, value]);
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            _ if args.workload.is_none() => args.workload = Some(arg),
            _ if args.size.is_none() => args.size = Some(arg),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("goro-bench: {error}");
            eprintln!(
                "usage: goro-bench [WORKLOAD [SIZE]] [--impl NAME] [--procs P] [--variant V]"
            );
            return ExitCode::from(2);
        }
    };
    let Some(workload) = args.workload.clone() else {
        return run_suite(SUITE);
    };
    let Some(entry) = SUITE.iter().find(|(name, _, _)| *name == workload) else {
        let names: Vec<_> = SUITE.iter().map(|(name, _, _)| *name).collect();
        eprintln!(
            "goro-bench: unknown workload {workload}; known: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let size = args.size.clone().unwrap_or_else(|| entry.1.to_string());
    match args.implementation.as_deref() {
        None => run_suite(&[(entry.0, &size, entry.2)]),
        Some("goro") => {
            run_child("goro", &workload, &size, &args.rest).map_or(ExitCode::FAILURE, |line| {
                println!("{line}");
                ExitCode::SUCCESS
            })
        }
        Some(implementation) => run_peer(&workload, &size, implementation),
    }
}

fn run_peer(workload: &str, size: &str, implementation: &str) -> ExitCode {
    match workload {
        "binary_trees" => {
            let Ok(n) = size.parse() else {
                eprintln!("goro-bench: binary_trees N: N must be a depth, got {size}");
                return ExitCode::from(2);
            };
            match implementation {
                "box" => binary_trees::bench::<BoxTrees>("box", n),
                "rc" => binary_trees::bench::<RcTrees>("rc", n),
                "arc" => binary_trees::bench::<ArcTrees>("arc", n),
                other => {
                    eprintln!("goro-bench: binary_trees has no implementation {other}");
                    return ExitCode::from(2);
                }
            }
        }
        other => unreachable!("workload {other} is in SUITE but has no runner"),
    }
    ExitCode::SUCCESS
}

/// Runs one implementation in its own process; returns its RESULT line.
fn run_child(implementation: &str, workload: &str, size: &str, rest: &[String]) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let program = if implementation == "goro" {
        goro_binary(&exe)?
    } else {
        exe
    };
    let output = Command::new(&program)
        .args([workload, size, "--impl", implementation])
        .args(rest)
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

/// The `goro-bench-goro` binary beside this one, built (by the cargo that built us) if needed.
fn goro_binary(exe: &std::path::Path) -> Option<std::path::PathBuf> {
    let sibling = exe.with_file_name("goro-bench-goro");
    if std::env::var_os("GORO_BENCH_NO_BUILD").is_none() {
        let release = exe.components().any(|c| c.as_os_str() == "release");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build.args([
            "build",
            "--quiet",
            "-p",
            "goro-bench",
            "--bin",
            "goro-bench-goro",
        ]);
        if release {
            build.arg("--release");
        }
        build.current_dir(env!("CARGO_MANIFEST_DIR"));
        match build.status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("goro-bench: building goro-bench-goro failed ({status})"),
            Err(error) => {
                eprintln!("goro-bench: cannot run cargo to build goro-bench-goro: {error}")
            }
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

fn run_suite(suite: &[(&str, &str, &[&str])]) -> ExitCode {
    let mut rows = Vec::new();
    let mut failed = false;
    for &(workload, size, implementations) in suite {
        for &implementation in implementations {
            eprintln!("== {workload} {size} --impl {implementation}");
            match run_child(implementation, workload, size, &[]) {
                Some(line) => {
                    println!("{line}");
                    rows.extend(report::parse(&line));
                }
                None => failed = true,
            }
        }
    }
    print_table(&rows);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_table(rows: &[report::Row]) {
    let get = |keys: &[(String, String)], key: &str| {
        keys.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    println!();
    println!(
        "{:<16} {:<10} {:>12} {:>12} {:>14} {:>14}",
        "workload", "impl", "total_ms", "vmhwm_kib", "time/goro", "rss/goro"
    );
    for (workload, implementation, keys) in rows {
        let goro = rows.iter().find(|(w, i, _)| w == workload && i == "goro");
        let ratio = |key: &str| {
            let mine: f64 = get(keys, key).parse().ok()?;
            let theirs: f64 = get(&goro?.2, key).parse().ok()?;
            Some(format!("{:.2}", mine / theirs))
        };
        println!(
            "{:<16} {:<10} {:>12} {:>12} {:>14} {:>14}",
            workload,
            implementation,
            get(keys, "total_ms"),
            get(keys, "vmhwm_kib"),
            ratio("total_ms").unwrap_or_else(|| "-".into()),
            ratio("vmhwm_kib").unwrap_or_else(|| "-".into()),
        );
    }
}
