//! fresh_stacks N,KIB: N goroutines alive at once, each of which uses KIB KiB of stack once (a
//! recursion with 1 KiB frames) and then blocks on a channel receive; the time from the first
//! spawn until all have blocked, per goroutine.
//!
//! Every goroutine starts on a stack no goroutine used before, so this measures what a stack
//! costs on first use: for goro, the pages the allocating thread fills up front and the first
//! touches below them, which go through the stash trap's thread when it runs (`goro`) and are
//! plain page faults when it does not (`goro_trim`, with `GORO_DEBUG=stacktrap=off`); for Go,
//! its stack growth by copying.

use crate::{Options, report};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// Uses `kib` KiB of stack: one 1 KiB frame per level.
#[inline(never)]
fn use_stack(kib: usize) -> u64 {
    let frame = black_box([kib as u8; 1024]);
    if kib <= 1 {
        return u64::from(frame[0]);
    }
    use_stack(kib - 1) + u64::from(black_box(frame)[1])
}

/// The checksum every goroutine returns: `use_stack(kib)`.
fn expected(kib: usize) -> u64 {
    (1..=kib as u64).map(|k| k & 0xff).sum()
}

pub(crate) fn goro(n: usize, kib: usize, options: &Options, trim_only: bool) -> Result<(), String> {
    super::parked::check_trap(trim_only)?;
    let mut builder = goro::Runtime::builder();
    if let Some(procs) = options.procs {
        builder = builder.max_procs(procs);
    }
    let runtime = builder.build().map_err(|e| e.to_string())?;
    let (elapsed, sum) = runtime.run(move || {
        let (tx, rx) = goro::chan::channel::<()>(0);
        let used = Arc::new(goro::sync::WaitGroup::new());
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (rx, used) = (rx.clone(), used.clone());
                used.add(1);
                goro::go(move || {
                    let sum = use_stack(black_box(kib));
                    used.done();
                    let _ = rx.recv();
                    sum
                })
            })
            .collect();
        used.wait();
        let elapsed = start.elapsed();
        tx.close();
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        (elapsed, sum)
    });
    if sum != expected(kib) * n as u64 {
        return Err(format!(
            "fresh_stacks: checksum {sum}, expected {}",
            expected(kib) * n as u64
        ));
    }
    let name = if trim_only { "goro_trim" } else { "goro" };
    report::Result::new("fresh_stacks", name)
        .key("n", n)
        .key("kib", kib)
        .key(
            "ns_per_goroutine",
            format!("{:.0}", elapsed.as_secs_f64() * 1e9 / n as f64),
        )
        .print(elapsed);
    Ok(())
}
