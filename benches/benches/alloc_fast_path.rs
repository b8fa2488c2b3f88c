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
    c.bench_function("box_256_alloc_free", |b| {
        b.iter(|| drop(black_box(Box::new(black_box([1u8; 256])))))
    });
    // 64 live blocks, freed in allocation order: the free list cycles through a span.
    c.bench_function("window_64_alloc_free", |b| {
        let mut ring: Vec<Box<[u64; 4]>> = (0..64).map(|i| Box::new([i; 4])).collect();
        let mut i = 0;
        b.iter(|| {
            ring[i] = black_box(Box::new([i as u64; 4]));
            i = (i + 1) % 64;
        })
    });
}

criterion_group!(benches, fast_path);
criterion_main!(benches);
