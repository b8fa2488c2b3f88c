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
//!
//! The live bytes a cycle finds must be objects too: a small span carved while the collector
//! allocates black has every slot marked, free ones included, and a cycle that counted its mark
//! bits reported every such slot live (another helper's attack: 4,600 empty slots, 520 KB, for
//! 32 objects), which raised the goal and the pacer's heap with it.

use goro::gc;
use goro::{Gc, GcCell};
use std::time::Duration;

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

#[derive(goro::Trace)]
struct Link {
    next: GcCell<Option<Gc<Link>>>,
}

#[derive(goro::Trace)]
struct Sized<const N: usize> {
    words: [u64; N],
}

/// One object of each of eight size classes, made on a thread of its own (a fresh allocation
/// cache, so each carves a span), kept; their bytes.
fn one_per_class() -> (Vec<Box<dyn std::any::Any + Send>>, usize) {
    std::thread::spawn(|| {
        let mut kept: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        let mut bytes = 0;
        macro_rules! one {
            ($($n:literal),*) => {$(
                kept.push(Box::new(Gc::new(Sized::<$n> { words: [1; $n] })));
                bytes += 8 * $n;
            )*};
        }
        one!(2, 6, 12, 20, 30, 44, 64, 96);
        (kept, bytes)
    })
    .join()
    .unwrap()
}

#[test]
fn spans_carved_while_marking_count_only_their_objects_as_live() {
    without_automatic_cycles(|| {
        // A heap that takes a while to mark.
        let mut head = None;
        for _ in 0..200_000 {
            head = Some(Gc::new(Link {
                next: GcCell::new(head),
            }));
        }
        gc::collect();
        let before = gc::stats().heap_live;
        let cycle = std::thread::spawn(gc::collect);
        std::thread::sleep(Duration::from_micros(300));
        // Four fresh threads, most likely while that cycle marks.
        let made: Vec<_> = (0..4).map(|_| one_per_class()).collect();
        cycle.join().unwrap();
        let ours: usize = made.iter().map(|(_, bytes)| bytes).sum();
        let found = gc::stats().heap_live - before;
        println!("32 objects of {ours} bytes; the cycle found {found} bytes more live");
        // Each object's slot and header, and the threads' own small allocations, at most.
        assert!(
            found <= 2 * ours + (16 << 10),
            "a cycle found {found} bytes more live where 32 objects of {ours} bytes were made"
        );
        gc::keep_alive(&head);
    });
}
