//! Fuzz target: the heap operation programs of crates/alloc/tests/props.rs, decoded from raw
//! bytes, checked against the same reference model (no overlap, right class, alignment, fill
//! pattern intact). `cargo +nightly fuzz run heap_ops` from this directory.

#![no_main]

#[path = "../../crates/alloc/tests/ops/mod.rs"]
mod ops;

use libfuzzer_sys::fuzz_target;
use ops::{HeapOp, Model};

#[global_allocator]
static ALLOC: goro_alloc::GoroAlloc = goro_alloc::GoroAlloc;

/// A size skewed to small: the selector byte picks a range, two more bytes pick inside it.
fn size(sel: u8, lo: u8, hi: u8) -> usize {
    let r = u16::from_le_bytes([lo, hi]) as usize;
    match sel % 16 {
        0..=7 => r % 65,
        8..=12 => 65 + r % 960,
        13..=14 => 1025 + r % 31_744,
        _ => 32_769 + r * 4,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut model = Model::default();
    for chunk in data.chunks_exact(5).take(2000) {
        let [kind, a, b, c, d] = [chunk[0], chunk[1], chunk[2], chunk[3], chunk[4]];
        let op = match kind % 20 {
            0..=9 => HeapOp::Alloc {
                size: size(a, b, c),
                align_log2: if d < 200 { 3 } else { d % 15 },
            },
            10..=15 => HeapOp::Free {
                index: u16::from_le_bytes([a, b]) as usize,
            },
            16..=18 => HeapOp::Realloc {
                index: u16::from_le_bytes([a, b]) as usize,
                size: size(c, d, a),
            },
            _ => HeapOp::FreeAll,
        };
        model.apply(&op);
    }
});
