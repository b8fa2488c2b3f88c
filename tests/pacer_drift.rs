//! The pacer's heap is exact: allocation adds each slot's bytes, the collector takes a dead slot's
//! bytes off when it frees it. Whatever an allocation tells it wrong, or never tells it, stays
//! wrong until the end of the cycle. A helper's attack found two such leaks, each of which, run
//! for a while, hid the whole heap from the pacer and its memory limit (or made it read many
//! times what was allocated, and the collector run without pause):
//!
//! - an over-aligned type was counted at the slot size of its size at alignment 8, where its
//!   real slot is another size class (`align(4096)`: 8 KiB, not 4.8) or a large slot of its own;
//! - a thread that exited between two batches took its uncounted bytes along.
//!
//! Each test compares what the pacer counted for objects kept alive, with automatic collection
//! off, against what a forced cycle then finds live (which it measures by the slots themselves).

use goro::Gc;
use goro::gc;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(goro::Trace)]
#[repr(align(4096))]
struct Page {
    value: u64,
}

#[derive(goro::Trace)]
#[repr(align(16384))]
struct FourPages {
    value: u64,
}

#[derive(goro::Trace)]
struct Small {
    words: [u64; 30],
}

/// A runtime with automatic collection off: only `collect` runs cycles.
fn without_automatic_cycles(main: impl FnOnce() + Send + 'static) {
    goro::Runtime::builder()
        .max_procs(2)
        .gc_percent(-1)
        .build()
        .unwrap()
        .run(main);
}

/// Runs `allocate` (which must keep what it makes alive and return it) between two collections,
/// and checks that the pacer counted what the second one found added to the live heap, within
/// `slack` bytes.
fn counted_as_found<T: Send + 'static>(what: &str, allocate: impl FnOnce() -> T, slack: usize) {
    gc::collect();
    let before = gc::stats();
    let kept = allocate();
    let counted = gc::stats().heap_alloc - before.heap_alloc;
    gc::collect();
    let found = gc::stats().heap_live - before.heap_live;
    drop(kept);
    println!("{what}: counted {counted} bytes, the cycle found {found}");
    assert!(
        counted.abs_diff(found) <= slack,
        "{what}: the pacer counted {counted} bytes where the cycle found {found} more live"
    );
}

#[test]
fn over_aligned_objects_are_counted_at_their_real_slot_size() {
    without_automatic_cycles(|| {
        counted_as_found(
            "2,000 objects aligned to 4 KiB",
            || {
                (0..2_000)
                    .map(|k| Gc::new(Page { value: k }))
                    .collect::<Vec<_>>()
            },
            64 << 10,
        );
        counted_as_found(
            "500 objects aligned to 16 KiB",
            || {
                (0..500)
                    .map(|k| Gc::new(FourPages { value: k }))
                    .collect::<Vec<_>>()
            },
            64 << 10,
        );
    });
}

#[test]
fn threads_that_exit_between_batches_are_counted() {
    without_automatic_cycles(|| {
        // 32 threads, each allocating 60 KiB (under one 64 KiB batch) and exiting.
        counted_as_found(
            "32 threads of 240 objects each",
            || {
                (0..32u64)
                    .map(|t| {
                        std::thread::spawn(move || {
                            (0..240u64)
                                .map(|k| Gc::new(Small { words: [t ^ k; 30] }))
                                .collect::<Vec<_>>()
                        })
                    })
                    .map(|thread| thread.join().unwrap())
                    .collect::<Vec<_>>()
            },
            64 << 10,
        );
    });
}
