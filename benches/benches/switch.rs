//! A goroutine switch: yield round trips between two goroutines on one P.
//! `cargo bench -p goro-bench --bench switch`

use criterion::{Criterion, criterion_group, criterion_main};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn yield_round_trip(c: &mut Criterion) {
    let runtime = goro::Runtime::builder().max_procs(1).build().unwrap();
    c.bench_function("yield_round_trip_two_goroutines", |b| {
        b.iter_custom(|iterations| {
            runtime.run(move || {
                let other = goro::go(move || {
                    for _ in 0..iterations {
                        goro::yield_now();
                    }
                });
                let start = std::time::Instant::now();
                for _ in 0..iterations {
                    goro::yield_now();
                }
                let elapsed = start.elapsed();
                other.join().unwrap();
                elapsed
            })
        })
    });
}

criterion_group!(benches, yield_round_trip);
criterion_main!(benches);
