//! Scheduler operations: spawn + join of a trivial goroutine.
//! `cargo bench -p goro-bench --bench sched_ops`

use criterion::{Criterion, criterion_group, criterion_main};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn spawn_join(c: &mut Criterion) {
    let runtime = goro::Runtime::builder().max_procs(1).build().unwrap();
    c.bench_function("spawn_join", |b| {
        b.iter_custom(|iterations| {
            runtime.run(move || {
                let start = std::time::Instant::now();
                for _ in 0..iterations {
                    goro::go(|| ()).join().unwrap();
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(benches, spawn_join);
criterion_main!(benches);
