//! goro-bench: the workloads of docs/design.md section 6, for goro and its peers.
//!
//! Every run prints one final line `RESULT <workload> <impl> key=value ...` with at least
//! `total_ms` (wall time of the measured part) and `vmhwm_kib` (peak RSS), so that any two
//! implementations compare by key. Each implementation runs in its own process, with the global
//! allocator its users would have ([`Binary`]): `goro` in `goro-bench-goro` (GoroAlloc),
//! `mimalloc`/`box-mimalloc` in `goro-bench-mimalloc`, `jemalloc` in `goro-bench-jemalloc`, every
//! other peer in `goro-bench` itself (the system allocator).
//!
//! Workloads live in families, one module each (`binary_trees`, `gc_latency`, `full_gc`, `alloc`,
//! `stacks`, `sched`, `stw`), and each family lists its workloads in a `WORKLOADS` table that
//! [`workloads`] gathers.

pub mod alloc;
pub mod binary_trees;
pub mod full_gc;
pub mod gc_latency;
pub mod go;
pub mod report;
pub mod sched;
pub mod stacks;
pub mod stw;

use std::process::ExitCode;

/// Options of one run besides the size.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--procs P`: GOMAXPROCS (or the peer's worker count).
    pub procs: Option<usize>,
    /// `--variant V`.
    pub variant: Option<String>,
}

/// Runs one implementation of a workload in this process and prints its RESULT line.
pub type Run = fn(implementation: &str, size: &str, options: &Options) -> Result<(), String>;

/// A workload: its name, default size, variants, implementations, and runner.
pub struct Workload {
    /// The name on the command line and in RESULT lines.
    pub name: &'static str,
    /// The size the suite runs.
    pub default_size: &'static str,
    /// Variants the suite runs one by one (`--variant`); empty when there are none.
    pub variants: &'static [&'static str],
    /// Implementations, goro first.
    pub implementations: &'static [&'static str],
    /// The runner, called in the binary [`binary_for`] names.
    pub run: Run,
}

/// Every workload of every family.
pub fn workloads() -> Vec<&'static Workload> {
    [
        binary_trees::WORKLOADS,
        gc_latency::WORKLOADS,
        full_gc::WORKLOADS,
        alloc::WORKLOADS,
        stacks::WORKLOADS,
        sched::WORKLOADS,
        stw::WORKLOADS,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The workload called `name`.
pub fn workload(name: &str) -> Option<&'static Workload> {
    workloads().into_iter().find(|w| w.name == name)
}

/// The binaries, by global allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `goro-bench`: the system allocator.
    System,
    /// `goro-bench-goro`: GoroAlloc.
    Goro,
    /// `goro-bench-mimalloc`: mimalloc.
    Mimalloc,
    /// `goro-bench-jemalloc`: jemalloc.
    Jemalloc,
}

impl Binary {
    /// The executable's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Binary::System => "goro-bench",
            Binary::Goro => "goro-bench-goro",
            Binary::Mimalloc => "goro-bench-mimalloc",
            Binary::Jemalloc => "goro-bench-jemalloc",
        }
    }
}

/// The binary an implementation must run in.
pub fn binary_for(implementation: &str) -> Binary {
    match implementation {
        "goro" | "goro_trim" | "goro_grow" | "goro_chunked" => Binary::Goro,
        "mimalloc" | "box-mimalloc" => Binary::Mimalloc,
        "jemalloc" => Binary::Jemalloc,
        _ => Binary::System,
    }
}

/// Parsed command line: `[WORKLOAD [SIZE]] [--impl NAME] [--procs P] [--variant V]`.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// The workload, if given.
    pub workload: Option<String>,
    /// The size, if given.
    pub size: Option<String>,
    /// `--impl`.
    pub implementation: Option<String>,
    /// `--procs` and `--variant`.
    pub options: Options,
}

impl Args {
    /// Parses `std::env::args()`.
    pub fn parse() -> Result<Args, String> {
        let mut args = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--impl" => args.implementation = Some(it.next().ok_or("--impl needs a NAME")?),
                "--procs" => {
                    let value = it.next().ok_or("--procs needs a number")?;
                    let procs = value
                        .parse()
                        .map_err(|_| format!("--procs {value}: not a number"))?;
                    args.options.procs = Some(procs);
                }
                "--variant" => args.options.variant = Some(it.next().ok_or("--variant needs V")?),
                flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
                _ if args.workload.is_none() => args.workload = Some(arg),
                _ if args.size.is_none() => args.size = Some(arg),
                _ => return Err(format!("unexpected argument {arg}")),
            }
        }
        Ok(args)
    }

    /// The arguments for a child process running one implementation.
    pub fn child_args(
        workload: &str,
        size: &str,
        implementation: &str,
        options: &Options,
    ) -> Vec<String> {
        let mut args = vec![
            workload.to_string(),
            size.to_string(),
            "--impl".into(),
            implementation.into(),
        ];
        if let Some(procs) = options.procs {
            args.extend(["--procs".into(), procs.to_string()]);
        }
        if let Some(variant) = &options.variant {
            args.extend(["--variant".into(), variant.clone()]);
        }
        args
    }
}

/// `main` of a sibling binary: runs exactly one implementation that belongs in `binary`.
pub fn binary_main(binary: Binary) -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(error) => return usage_error(binary, &error),
    };
    let (Some(name), Some(implementation)) =
        (args.workload.as_deref(), args.implementation.as_deref())
    else {
        return usage_error(binary, "a WORKLOAD and --impl NAME are required");
    };
    let Some(workload) = workload(name) else {
        return usage_error(binary, &format!("unknown workload {name}"));
    };
    if binary_for(implementation) != binary {
        return usage_error(
            binary,
            &format!(
                "--impl {implementation} runs in {}",
                binary_for(implementation).file_name()
            ),
        );
    }
    let size = args.size.as_deref().unwrap_or(workload.default_size);
    match (workload.run)(implementation, size, &args.options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "{}: {name} --impl {implementation}: {error}",
                binary.file_name()
            );
            ExitCode::FAILURE
        }
    }
}

fn usage_error(binary: Binary, error: &str) -> ExitCode {
    eprintln!("{}: {error}", binary.file_name());
    eprintln!(
        "usage: {} WORKLOAD [SIZE] --impl NAME [--procs P] [--variant V]",
        binary.file_name()
    );
    ExitCode::from(2)
}

/// The goro runtime for a workload: `--procs` as GOMAXPROCS, the rest from the environment.
///
/// `GORO_BENCH_MIGRATE=1` turns on `migrate_goroutines` (Go's placement: a readied goroutine
/// runs on the readier's thread); the workloads' goroutines hold nothing thread-bound across
/// blocking points, which is that option's contract.
pub fn goro_runtime(options: &Options) -> Result<goro::Runtime, String> {
    let mut builder = goro::Runtime::builder();
    if let Some(procs) = options.procs {
        builder = builder.max_procs(procs);
    }
    if std::env::var("GORO_BENCH_MIGRATE").is_ok_and(|v| v == "1") {
        // SAFETY: see above.
        builder = unsafe { builder.migrate_goroutines(true) };
    }
    builder.build().map_err(|e| e.to_string())
}

/// Parses a size argument.
pub fn parse_size<T: std::str::FromStr>(workload: &str, size: &str) -> Result<T, String> {
    size.parse()
        .map_err(|_| format!("{workload}: size {size:?} is not a number"))
}
