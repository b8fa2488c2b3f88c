//! The peers' versions of the scheduler workloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn tokio_runtime(procs: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(procs)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn may_config(procs: usize) {
    may::config().set_workers(procs);
}

pub(crate) fn may_spawn(n: usize, procs: usize) -> (usize, Duration) {
    may_config(procs);
    let (tx, rx) = may::sync::mpsc::channel::<()>();
    let remaining = Arc::new(AtomicUsize::new(n));
    let start = Instant::now();
    let mut spawned = 0;
    for _ in 0..n {
        let (tx, remaining) = (tx.clone(), remaining.clone());
        // may's spawn fails (panics) when it cannot map another stack: report how far it got.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            may::go!(move || {
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let _ = tx.send(());
                }
            })
        }));
        if result.is_err() {
            eprintln!("may: spawn failed after {spawned} coroutines");
            break;
        }
        spawned += 1;
    }
    if spawned == n {
        rx.recv().expect("the last coroutine's signal");
    }
    (spawned, start.elapsed())
}

pub(crate) fn tokio_spawn(n: usize, procs: usize) -> (usize, Duration) {
    tokio_runtime(procs).block_on(async move {
        let remaining = Arc::new(AtomicUsize::new(n));
        let done = Arc::new(tokio::sync::Notify::new());
        let start = Instant::now();
        for _ in 0..n {
            let (remaining, done) = (remaining.clone(), done.clone());
            tokio::spawn(async move {
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    done.notify_one();
                }
            });
        }
        done.notified().await;
        (n, start.elapsed())
    })
}

pub(crate) fn threads_spawn(n: usize) -> (usize, Duration) {
    let start = Instant::now();
    let handles: Vec<_> = (0..n).map(|_| std::thread::spawn(|| ())).collect();
    for h in handles {
        h.join().expect("a thread");
    }
    (n, start.elapsed())
}

fn may_skynet_node(out: may::sync::mpsc::Sender<u64>, num: u64, size: u64, div: u64) {
    if size == 1 {
        let _ = out.send(num);
        return;
    }
    let (tx, rx) = may::sync::mpsc::channel();
    for i in 0..div {
        let tx = tx.clone();
        may::go!(move || may_skynet_node(tx, num + i * (size / div), size / div, div));
    }
    let sum = (0..div).map(|_| rx.recv().expect("a child's sum")).sum();
    let _ = out.send(sum);
}

/// How many more coroutine stacks may can map before the kernel's `vm.max_map_count` refuses:
/// may gives each stack its own mapping plus an `mprotect` guard (two VMAs).
pub(crate) fn may_stack_budget() -> usize {
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530);
    let used = std::fs::read_to_string("/proc/self/maps").map_or(0, |maps| maps.lines().count());
    limit.saturating_sub(used) / 2
}

/// may's skynet, or `Err` with the reason when the tree cannot be alive at once under the VMA
/// limit (may's coroutines then fail inside the tree, and their parents wait forever).
pub(crate) fn may_skynet(leaves: u64, procs: usize) -> Result<u64, String> {
    let nodes = (leaves as f64 * 1.111_111) as usize + 1;
    let budget = may_stack_budget();
    if nodes > budget {
        return Err(format!(
            "may needs {nodes} coroutine stacks alive at once but vm.max_map_count leaves room \
             for {budget} (two mappings each)"
        ));
    }
    may_config(procs);
    let (tx, rx) = may::sync::mpsc::channel();
    may::go!(move || may_skynet_node(tx, 0, leaves, 10));
    Ok(rx.recv().expect("the root's sum"))
}

fn tokio_skynet_node(
    num: u64,
    size: u64,
    div: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> {
    Box::pin(async move {
        if size == 1 {
            return num;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        for i in 0..div {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(tokio_skynet_node(num + i * (size / div), size / div, div).await)
                    .await;
            });
        }
        let mut sum = 0;
        for _ in 0..div {
            sum += rx.recv().await.expect("a child's sum");
        }
        sum
    })
}

pub(crate) fn tokio_skynet(leaves: u64, procs: usize) -> u64 {
    tokio_runtime(procs).block_on(tokio_skynet_node(0, leaves, 10))
}

pub(crate) fn may_pingpong(n: u64, procs: usize) -> Duration {
    may_config(procs);
    let (ping_tx, ping_rx) = may::sync::mpsc::channel::<u64>();
    let (pong_tx, pong_rx) = may::sync::mpsc::channel::<u64>();
    may::go!(move || {
        while let Ok(v) = ping_rx.recv() {
            if pong_tx.send(v + 1).is_err() {
                break;
            }
        }
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    may::go!(move || {
        let start = Instant::now();
        let mut v = 0;
        for _ in 0..n {
            ping_tx.send(v).expect("ping");
            v = pong_rx.recv().expect("pong");
        }
        assert_eq!(v, n);
        done_tx.send(start.elapsed()).expect("result");
    });
    done_rx.recv().expect("the pinger's time")
}

pub(crate) fn tokio_pingpong(n: u64, procs: usize) -> Duration {
    tokio_runtime(procs).block_on(async move {
        // tokio has no rendezvous channel; capacity 1 with strict alternation is the closest.
        let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<u64>(1);
        tokio::spawn(async move {
            while let Some(v) = ping_rx.recv().await {
                if pong_tx.send(v + 1).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let start = Instant::now();
            let mut v = 0;
            for _ in 0..n {
                ping_tx.send(v).await.expect("ping");
                v = pong_rx.recv().await.expect("pong");
            }
            assert_eq!(v, n);
            start.elapsed()
        })
        .await
        .expect("the pinger")
    })
}

pub(crate) fn threads_pingpong(n: u64) -> Duration {
    let (ping_tx, ping_rx) = crossbeam_channel::bounded::<u64>(0);
    let (pong_tx, pong_rx) = crossbeam_channel::bounded::<u64>(0);
    let echo = std::thread::spawn(move || {
        for v in ping_rx.iter() {
            if pong_tx.send(v + 1).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut v = 0;
    for _ in 0..n {
        ping_tx.send(v).expect("ping");
        v = pong_rx.recv().expect("pong");
    }
    let elapsed = start.elapsed();
    drop(ping_tx);
    echo.join().expect("the echo thread");
    assert_eq!(v, n);
    elapsed
}

pub(crate) fn may_yield(n: u64) -> Duration {
    may_config(1);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    may::go!(move || {
        for _ in 0..n {
            may::coroutine::yield_now();
        }
    });
    may::go!(move || {
        let start = Instant::now();
        for _ in 0..n {
            may::coroutine::yield_now();
        }
        done_tx.send(start.elapsed()).expect("result");
    });
    done_rx.recv().expect("the yielder's time")
}

pub(crate) fn tokio_yield(n: u64) -> Duration {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime")
        .block_on(async move {
            let other = tokio::spawn(async move {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            });
            let start = Instant::now();
            for _ in 0..n {
                tokio::task::yield_now().await;
            }
            let elapsed = start.elapsed();
            other.await.expect("the other task");
            elapsed
        })
}

pub(crate) fn threads_yield(n: u64) -> Duration {
    let other = std::thread::spawn(move || {
        for _ in 0..n {
            std::thread::yield_now();
        }
    });
    let start = Instant::now();
    for _ in 0..n {
        std::thread::yield_now();
    }
    let elapsed = start.elapsed();
    other.join().expect("the other thread");
    elapsed
}

pub(crate) fn tokio_select(n: u64, procs: usize) -> (u64, Duration) {
    tokio_runtime(procs).block_on(async move {
        let start = Instant::now();
        let mut receivers = Vec::new();
        for p in 0..4u64 {
            let (tx, rx) = tokio::sync::mpsc::channel::<u64>(16);
            receivers.push(rx);
            tokio::spawn(async move {
                for i in 0..n / 4 {
                    tx.send(p + 4 * i).await.expect("receiver alive");
                }
            });
        }
        let [mut a, mut b, mut c, mut d] = <[_; 4]>::try_from(receivers).expect("four channels");
        let mut sum = 0u64;
        let mut open = [true; 4];
        while open.iter().any(|&o| o) {
            tokio::select! {
                v = a.recv(), if open[0] => match v { Some(v) => sum += v, None => open[0] = false },
                v = b.recv(), if open[1] => match v { Some(v) => sum += v, None => open[1] = false },
                v = c.recv(), if open[2] => match v { Some(v) => sum += v, None => open[2] = false },
                v = d.recv(), if open[3] => match v { Some(v) => sum += v, None => open[3] = false },
            }
        }
        (sum, start.elapsed())
    })
}

pub(crate) fn threads_select(n: u64) -> (u64, Duration) {
    let start = Instant::now();
    let mut receivers = Vec::new();
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let (tx, rx) = crossbeam_channel::bounded::<u64>(16);
        receivers.push(rx);
        producers.push(std::thread::spawn(move || {
            for i in 0..n / 4 {
                tx.send(p + 4 * i).expect("receiver alive");
            }
        }));
    }
    let mut sum = 0u64;
    let mut open = [true; 4];
    while open.iter().any(|&o| o) {
        let mut select = crossbeam_channel::Select::new();
        let indices: Vec<usize> = (0..4).filter(|&i| open[i]).collect();
        for &i in &indices {
            select.recv(&receivers[i]);
        }
        let op = select.select();
        let i = indices[op.index()];
        match op.recv(&receivers[i]) {
            Ok(v) => sum += v,
            Err(_) => open[i] = false,
        }
    }
    for producer in producers {
        producer.join().expect("a producer");
    }
    (sum, start.elapsed())
}
