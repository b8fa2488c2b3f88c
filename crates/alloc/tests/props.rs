//! Property test: random heap programs (sizes skewed small) against a reference model: no two
//! live blocks overlap, every block lies in a span of its class, alignment holds, and the fill
//! pattern written at allocation is intact at free and across realloc.

mod ops;

use ops::{HeapOp, Model};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: goro_alloc::GoroAlloc = goro_alloc::GoroAlloc;

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=64,
        6 => 65usize..=1024,
        3 => 1025usize..=32768,
        1 => 32769usize..=300_000,
    ]
}

fn op() -> impl Strategy<Value = HeapOp> {
    prop_oneof![
        10 => (size(), prop_oneof![6 => Just(3u8), 2 => 0u8..=6, 1 => 7u8..=14])
            .prop_map(|(size, align_log2)| HeapOp::Alloc { size, align_log2 }),
        6 => any::<usize>().prop_map(|index| HeapOp::Free { index }),
        3 => (any::<usize>(), size()).prop_map(|(index, size)| HeapOp::Realloc { index, size }),
        1 => Just(HeapOp::FreeAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 128 }))]
    #[test]
    fn heap_programs_match_the_model(program in prop::collection::vec(op(), 1..400)) {
        let mut model = Model::default();
        for op in &program {
            model.apply(op);
        }
    }
}
