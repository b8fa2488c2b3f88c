//! The scheduler family: spawn, skynet, pingpong and yield, for goro and its peers (may, tokio,
//! std threads with crossbeam channels).
//!
//! | workload | what | keys |
//! |---|---|---|
//! | `spawn N` | spawn N trivial goroutines (tasks, threads), wait for all | n, ns_per_spawn |
//! | `skynet N` | 10-ary tree of goroutines with N leaves, sums over unbuffered channels | sum |
//! | `pingpong N` | N round trips over two unbuffered channels; variant = GOMAXPROCS | n, gomaxprocs, ns_per_roundtrip |
//! | `yield N` | two goroutines on one P yield N times each (Gosched round trips) | n, ns_per_yield |
//! | `select N` | 4 producers on 4 channels (cap 16), one consumer selecting over all 4 | n, ns_per_op |
//!
//! `go` runs the same programs in Go (`benches/go/`) when a Go toolchain is installed.
//! Peers use the system allocator and their own idioms for the same program (a counter and a
//! wake-up for spawn, the same tree for skynet). `threads` spawns at most 10,000 OS threads.

mod peers;

use crate::{Options, Workload, report};
use std::sync::Arc;
use std::time::Instant;

/// The workloads of this family.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "spawn",
        default_size: "1000000",
        variants: &[],
        implementations: &["goro", "may", "tokio", "threads", "go"],
        run: run_spawn,
    },
    Workload {
        name: "skynet",
        default_size: "1000000",
        variants: &[],
        implementations: &["goro", "may", "tokio", "go"],
        run: run_skynet,
    },
    Workload {
        name: "pingpong",
        default_size: "1000000",
        variants: &["1", "2"],
        implementations: &["goro", "may", "tokio", "threads", "go"],
        run: run_pingpong,
    },
    Workload {
        name: "yield",
        default_size: "1000000",
        variants: &[],
        implementations: &["goro", "may", "tokio", "threads", "go"],
        run: run_yield,
    },
    Workload {
        name: "select",
        default_size: "1000000",
        variants: &[],
        implementations: &["goro", "tokio", "threads", "go"],
        run: run_select,
    },
];

/// GOMAXPROCS for a run: the variant (pingpong), else `--procs`, else the machine's cores.
pub(crate) fn procs(options: &Options) -> usize {
    options
        .variant
        .as_deref()
        .and_then(|v| v.parse().ok())
        .or(options.procs)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn goro(options: &Options, procs: usize) -> Result<goro::Runtime, String> {
    let options = Options {
        procs: Some(procs),
        ..options.clone()
    };
    crate::goro_runtime(&options)
}

fn run_spawn(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let n: usize = crate::parse_size("spawn", size)?;
    let procs = procs(options);
    if implementation == "go" {
        return crate::go::run("spawn", &[n.to_string(), procs.to_string()]);
    }
    let (spawned, elapsed) = match implementation {
        "goro" => goro(options, procs)?.run(move || {
            let start = Instant::now();
            let wg = Arc::new(goro::sync::WaitGroup::new());
            wg.add(n as i64);
            for _ in 0..n {
                let wg = wg.clone();
                goro::go(move || wg.done());
            }
            wg.wait();
            (n, start.elapsed())
        }),
        "may" => peers::may_spawn(n, procs),
        "tokio" => peers::tokio_spawn(n, procs),
        "threads" => peers::threads_spawn(n.min(10_000)),
        other => return Err(format!("no implementation {other}")),
    };
    report::Result::new("spawn", implementation)
        .key("n", spawned)
        .key("gomaxprocs", procs)
        .key(
            "ns_per_spawn",
            format!("{:.1}", elapsed.as_nanos() as f64 / spawned.max(1) as f64),
        )
        .print(elapsed);
    Ok(())
}

/// Go's skynet, on goro: each node spawns `div` children and sums what they send.
fn goro_skynet(out: goro::chan::Sender<u64>, num: u64, size: u64, div: u64) {
    if size == 1 {
        out.send(num);
        return;
    }
    let (tx, rx) = goro::chan::channel(0);
    for i in 0..div {
        let tx = tx.clone();
        goro::go(move || goro_skynet(tx, num + i * (size / div), size / div, div));
    }
    let sum = (0..div).map(|_| rx.recv().expect("a child's sum")).sum();
    out.send(sum);
}

fn run_skynet(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let leaves: u64 = crate::parse_size("skynet", size)?;
    let procs = procs(options);
    if implementation == "go" {
        return crate::go::run("skynet", &[leaves.to_string(), procs.to_string()]);
    }
    let start = Instant::now();
    let sum = match implementation {
        "goro" => goro(options, procs)?.run(move || {
            let (tx, rx) = goro::chan::channel(0);
            goro::go(move || goro_skynet(tx, 0, leaves, 10));
            rx.recv().expect("the root's sum")
        }),
        "may" => match peers::may_skynet(leaves, procs) {
            Ok(sum) => sum,
            Err(reason) => {
                eprintln!("skynet --impl may: {reason}");
                report::Result::new("skynet", implementation)
                    .key("n", leaves)
                    .key("gomaxprocs", procs)
                    .key("reached", 0)
                    .key("error", "vm.max_map_count")
                    .print(start.elapsed());
                return Ok(());
            }
        },
        "tokio" => peers::tokio_skynet(leaves, procs),
        other => return Err(format!("no implementation {other}")),
    };
    let elapsed = start.elapsed();
    let expected = leaves * (leaves - 1) / 2;
    if sum != expected {
        return Err(format!("skynet sum {sum}, expected {expected}"));
    }
    report::Result::new("skynet", implementation)
        .key("n", leaves)
        .key("gomaxprocs", procs)
        .key("sum", sum)
        .print(elapsed);
    Ok(())
}

fn run_pingpong(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let n: u64 = crate::parse_size("pingpong", size)?;
    let procs = procs(options);
    if implementation == "go" {
        return crate::go::run("pingpong", &[n.to_string(), procs.to_string()]);
    }
    let elapsed = match implementation {
        "goro" => goro(options, procs)?.run(move || {
            let (ping_tx, ping_rx) = goro::chan::channel::<u64>(0);
            let (pong_tx, pong_rx) = goro::chan::channel::<u64>(0);
            goro::go(move || {
                for v in ping_rx.iter() {
                    pong_tx.send(v + 1);
                }
            });
            let start = Instant::now();
            let mut v = 0;
            for _ in 0..n {
                ping_tx.send(v);
                v = pong_rx.recv().expect("pong");
            }
            assert_eq!(v, n);
            start.elapsed()
        }),
        "may" => peers::may_pingpong(n, procs),
        "tokio" => peers::tokio_pingpong(n, procs),
        // OS threads take ~50 µs a round trip here: a tenth of the trips gives the same figure.
        "threads" => peers::threads_pingpong(n.min(100_000)),
        other => return Err(format!("no implementation {other}")),
    };
    let n = if implementation == "threads" {
        n.min(100_000)
    } else {
        n
    };
    report::Result::new("pingpong", implementation)
        .key("variant", procs)
        .key("n", n)
        .key("gomaxprocs", procs)
        .key(
            "ns_per_roundtrip",
            format!("{:.1}", elapsed.as_nanos() as f64 / n as f64),
        )
        .print(elapsed);
    Ok(())
}

fn run_yield(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let n: u64 = crate::parse_size("yield", size)?;
    if implementation == "go" {
        return crate::go::run("yield", &[n.to_string()]);
    }
    let elapsed = match implementation {
        "goro" => goro(options, 1)?.run(move || {
            let other = goro::go(move || {
                for _ in 0..n {
                    goro::yield_now();
                }
            });
            let start = Instant::now();
            for _ in 0..n {
                goro::yield_now();
            }
            other.join().expect("the other goroutine");
            start.elapsed()
        }),
        "may" => peers::may_yield(n),
        "tokio" => peers::tokio_yield(n),
        "threads" => peers::threads_yield(n),
        other => return Err(format!("no implementation {other}")),
    };
    report::Result::new("yield", implementation)
        .key("n", n)
        .key("gomaxprocs", 1)
        .key(
            "ns_per_yield",
            format!("{:.1}", elapsed.as_nanos() as f64 / (2 * n) as f64),
        )
        .print(elapsed);
    Ok(())
}

fn run_select(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let n: u64 = crate::parse_size("select", size)?;
    let procs = procs(options);
    if implementation == "go" {
        return crate::go::run("select", &[n.to_string(), procs.to_string()]);
    }
    let (sum, elapsed) = match implementation {
        "goro" => goro(options, procs)?.run(move || {
            let start = Instant::now();
            let mut receivers = Vec::new();
            for p in 0..4u64 {
                let (tx, rx) = goro::chan::channel::<u64>(16);
                receivers.push(rx);
                goro::go(move || {
                    for i in 0..n / 4 {
                        tx.send(p + 4 * i);
                    }
                });
            }
            let [a, b, c, d] = <[_; 4]>::try_from(receivers).expect("four channels");
            let mut sum = 0u64;
            loop {
                let got = goro::select! {
                    recv(a) -> v => v,
                    recv(b) -> v => v,
                    recv(c) -> v => v,
                    recv(d) -> v => v,
                };
                match got {
                    Some(v) => sum += v,
                    None => {
                        // A closed channel stays ready (Go would set it to nil); the producers
                        // are finishing, so drain the rest directly.
                        let rest = a.iter().chain(b.iter()).chain(c.iter()).chain(d.iter());
                        sum += rest.sum::<u64>();
                        break;
                    }
                }
            }
            (sum, start.elapsed())
        }),
        "tokio" => peers::tokio_select(n, procs),
        "threads" => peers::threads_select(n),
        other => return Err(format!("no implementation {other}")),
    };
    let expected = (0..n / 4 * 4).sum::<u64>();
    if sum != expected {
        return Err(format!("select sum {sum}, expected {expected}"));
    }
    report::Result::new("select", implementation)
        .key("n", n)
        .key("gomaxprocs", procs)
        .key(
            "ns_per_op",
            format!("{:.1}", elapsed.as_nanos() as f64 / n as f64),
        )
        .print(elapsed);
    Ok(())
}
