//! The GC CPU limiter (Go 1.19's): a heap that cannot fit under its memory limit would make the
//! collector run cycle after cycle; once the collector has taken more than half of the Ps' time
//! for a second's worth of it, the memory limit is set aside (with GOGC off, no cycle starts)
//! until the mutators have had their share back, and then it applies again.

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

use goro::Gc;
use std::time::{Duration, Instant};

#[derive(goro::Trace)]
struct Small {
    value: u64,
}

#[test]
fn a_heap_over_its_memory_limit_sets_the_limit_aside_for_a_while() {
    const LIVE: usize = 64 << 10;
    let limit = 1 << 20;
    goro::Runtime::builder()
        .max_procs(1)
        .gc_percent(-1)
        .memory_limit(limit)
        .build()
        .unwrap()
        .run(move || {
            // About 4 MiB live, four times the limit: without the limiter, a cycle every
            // eighth of the live heap allocated, for ever.
            let live: Vec<Gc<Small>> = (0..LIVE as u64)
                .map(|value| Gc::new(Small { value }))
                .collect();
            let began = Instant::now();
            let mut seen_on = None;
            let mut seen_off_after = None;
            let mut garbage = 0u64;
            while began.elapsed() < Duration::from_secs(60) && seen_off_after.is_none() {
                for value in 0..1_000 {
                    garbage += std::hint::black_box(Gc::new(Small { value })).value;
                }
                let stats = goro::gc::stats();
                match (stats.cpu_limited, seen_on) {
                    (true, None) => {
                        // Set aside: GOGC is off, so no cycle is due however large the heap.
                        assert_eq!(stats.heap_goal, usize::MAX, "{stats}");
                        assert!(stats.to_string().contains("set aside by the CPU limiter"));
                        seen_on = Some(stats.cycles);
                    }
                    (false, Some(cycles)) => {
                        assert!(stats.heap_goal < usize::MAX, "{stats}");
                        assert!(stats.cpu_limited_cycles >= 1, "{stats}");
                        seen_off_after = Some(stats.cycles - cycles);
                    }
                    _ => {}
                }
            }
            assert!(seen_on.is_some(), "the limiter never came on");
            assert!(seen_off_after.is_some(), "the limiter never went off again");
            assert!(
                live.iter()
                    .enumerate()
                    .all(|(i, small)| small.value == i as u64)
            );
            std::hint::black_box(garbage);
        });
}
