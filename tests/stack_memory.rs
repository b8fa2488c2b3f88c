//! Stack memory goes back to the OS: after a burst of goroutines with deep stacks exits, a
//! collection releases the pages of their pooled stack slots. (Alone in its file: it reads the
//! process's RSS.)

mod common;
use common::{rss_bytes, touch_stack};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

/// Touches about `bytes` of stack, then waits for `go_on` before returning.
fn deep(bytes: usize, go_on: &goro::chan::Receiver<()>) -> u64 {
    if bytes < 4096 {
        go_on.recv();
        return 1;
    }
    let frame = std::hint::black_box([1u8; 4096]);
    deep(bytes - 4096, go_on) + u64::from(frame[7])
}

#[test]
fn rss_falls_after_a_burst_of_deep_stacks() {
    let runtime = goro::Runtime::builder().max_procs(1).build().unwrap();
    let (base, peak, after) = runtime.run(|| {
        goro::gc::collect();
        let base = rss_bytes();
        let (tx, rx) = goro::chan::channel::<()>(0);
        let handles: Vec<_> = (0..300)
            .map(|_| {
                let rx = rx.clone();
                goro::go(move || deep(256 << 10, &rx))
            })
            .collect();
        // Let all of them reach their depth and park.
        while goro::num_goroutine() > 301 || handles.iter().any(|h| h.is_finished()) {
            goro::yield_now();
        }
        for _ in 0..10 {
            goro::yield_now();
        }
        let peak = rss_bytes();
        drop(tx);
        for h in handles {
            assert!(h.join().unwrap() >= 64);
        }
        goro::gc::collect();
        (base, peak, rss_bytes())
    });
    let burst = peak.saturating_sub(base);
    assert!(
        burst >= 32 << 20,
        "the burst committed only {burst} bytes of stack"
    );
    let kept = after.saturating_sub(base);
    assert!(
        kept < burst / 2,
        "RSS stayed {kept} bytes above the start after the burst ({burst} bytes) and a collection"
    );
}

#[test]
fn a_million_spawn_exit_cycles_leave_rss_bounded() {
    let runtime = goro::Runtime::builder().max_procs(2).build().unwrap();
    let (warm, end) = runtime.run(|| {
        let round = || {
            let handles: Vec<_> = (0..1000)
                .map(|_| goro::go(|| touch_stack(16 << 10)))
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), 5);
            }
        };
        for _ in 0..100 {
            round();
        }
        let warm = rss_bytes();
        for _ in 100..1000 {
            round();
        }
        (warm, rss_bytes())
    });
    let grown = end.saturating_sub(warm);
    assert!(
        grown < 8 << 20,
        "RSS grew {grown} bytes over 900,000 more spawn/exit cycles"
    );
}

#[test]
fn idle_procs_give_their_cached_stacks_back() {
    let runtime = goro::Runtime::builder().max_procs(2).build().unwrap();
    let (peak, idle) = runtime.run(|| {
        let base = rss_bytes();
        let (tx, rx) = goro::chan::channel::<()>(0);
        // Fewer than a P's stack cache holds (64), so that all of them stay cached there.
        let handles: Vec<_> = (0..60)
            .map(|_| {
                let rx = rx.clone();
                goro::go(move || touch_stack(256 << 10) + rx.recv().map_or(0, |()| 1))
            })
            .collect();
        drop(rx);
        while goro::num_goroutine() > 61 {
            goro::yield_now();
        }
        goro::sleep(std::time::Duration::from_millis(100));
        drop(tx);
        for h in handles {
            assert_eq!(h.join().unwrap(), 65);
        }
        // The exited goroutines' stacks sit in the Ps' caches, committed.
        let peak = rss_bytes().saturating_sub(base);
        let start = std::time::Instant::now();
        while rss_bytes().saturating_sub(base) > peak / 4 && start.elapsed().as_secs() < 10 {
            goro::sleep(std::time::Duration::from_millis(50));
        }
        (peak, rss_bytes().saturating_sub(base))
    });
    assert!(
        peak >= 8 << 20,
        "the goroutines committed only {peak} bytes"
    );
    assert!(
        idle <= peak / 4,
        "{idle} of {peak} bytes stayed resident 10 s after the goroutines exited"
    );
}
