//! The allocation fast path of goro-alloc: a cached size class, allocate and free on one thread.
//! `cargo bench -p goro-bench --bench alloc_fast_path`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn fast_path(c: &mut Criterion) {
    c.bench_function("box_u64_alloc_free", |b| {
        b.iter(|| drop(black_box(Box::new(black_box(7u64)))))
    });
}

criterion_group!(benches, fast_path);
criterion_main!(benches);
