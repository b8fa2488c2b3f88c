//! `goro::gc::AtomicGc`: Go's `atomic.Pointer[T]` for collected objects. Its operations behave as
//! `AtomicPtr`'s, and its barrier keeps objects moved between cells by lock-free code alive while
//! the collector marks (with `gccheckmark` and `clobberfree` on).

mod common;

use common::Rng;
use goro::gc::AtomicGc;
use goro::{Gc, Trace};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(Trace, Debug)]
struct Node {
    value: u64,
    /// Derived from `value`: a poisoned or reused object fails the check.
    check: u64,
    next: AtomicGc<Node>,
}

fn node(value: u64, next: Option<Gc<Node>>) -> Gc<Node> {
    Gc::new(Node {
        value,
        check: value.rotate_left(17) ^ 0x5555,
        next: AtomicGc::new(next),
    })
}

fn assert_intact(node: &Node) {
    assert_eq!(
        node.check,
        node.value.rotate_left(17) ^ 0x5555,
        "a reachable node was freed or overwritten"
    );
}

#[test]
fn its_operations_behave_as_atomic_ptrs() {
    common::run_clobbering(1, || {
        let (a, b) = (node(1, None), node(2, None));
        let cell = AtomicGc::new(Some(a));
        assert!(Gc::ptr_eq(&cell.load(Ordering::Acquire).unwrap(), &a));
        let old = cell.swap(Some(b), Ordering::AcqRel).unwrap();
        assert!(Gc::ptr_eq(&old, &a));
        let failed = cell.compare_exchange(Some(a), None, Ordering::AcqRel, Ordering::Acquire);
        assert!(Gc::ptr_eq(&failed.unwrap_err().unwrap(), &b));
        let done = cell.compare_exchange(Some(b), None, Ordering::AcqRel, Ordering::Acquire);
        assert!(Gc::ptr_eq(&done.unwrap().unwrap(), &b));
        assert!(cell.load(Ordering::Acquire).is_none());
        assert_eq!(format!("{cell:?}"), "AtomicGc(None)");
        cell.store(Some(a), Ordering::Release);
        assert!(Gc::ptr_eq(&cell.into_inner().unwrap(), &a));
        static EMPTY: AtomicGc<Node> = AtomicGc::empty();
        assert!(EMPTY.load(Ordering::Relaxed).is_none());
    });
}

#[test]
fn a_chain_held_only_through_atomic_cells_survives_collections() {
    common::run_clobbering(2, || {
        let head = node(0, None);
        for value in 1..1_000 {
            let next = head.next.load(Ordering::Acquire);
            head.next.store(Some(node(value, next)), Ordering::Release);
        }
        for _ in 0..3 {
            goro::gc::collect();
        }
        let mut at = head.next.load(Ordering::Acquire);
        let mut seen = 0;
        while let Some(n) = at {
            assert_intact(&n);
            seen += 1;
            at = n.next.load(Ordering::Acquire);
        }
        assert_eq!(seen, 999);
    });
}

/// Slots of the shared structure, inline, so that every store into it goes through the barrier.
const SLOTS: usize = 64;

#[derive(Trace)]
struct Shared {
    slots: [AtomicGc<Node>; SLOTS],
}

/// One mutator: moves nodes between slots through its own stack (take one out with a swap,
/// put it back elsewhere after other work), builds new nodes around old ones, and checks what it
/// reads, until told to stop.
fn shuffle(shared: Gc<Shared>, seed: u64, stop: &AtomicBool, moves: &AtomicUsize) {
    let mut rng = Rng(seed | 1);
    let mut held: Vec<Gc<Node>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let slot = &shared.slots[rng.below(SLOTS)];
        match rng.below(5) {
            0 => {
                // Take it out: for a while only this mutator's stack or heap `Vec` holds it.
                if let Some(taken) = slot.swap(None, Ordering::AcqRel) {
                    assert_intact(&taken);
                    held.push(taken);
                }
            }
            1 if !held.is_empty() => {
                let back = held.swap_remove(rng.below(held.len()));
                if let Some(displaced) = slot.swap(Some(back), Ordering::AcqRel) {
                    held.push(displaced);
                }
            }
            2 => {
                // A new node wrapping whatever the slot holds, swapped in if nobody raced.
                let current = slot.load(Ordering::Acquire);
                let wrapped = node(rng.next() >> 1, current);
                let _ = slot.compare_exchange(
                    current,
                    Some(wrapped),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            3 => {
                // Unlink the second node of the chain: it lives on only if someone else holds it.
                if let Some(first) = slot.load(Ordering::Acquire) {
                    assert_intact(&first);
                    let second = first.next.load(Ordering::Acquire);
                    if let Some(second) = second {
                        assert_intact(&second);
                        first
                            .next
                            .store(second.next.load(Ordering::Acquire), Ordering::Release);
                        held.push(second);
                    }
                }
            }
            _ => {
                // Walk a chain.
                let mut at = slot.load(Ordering::Acquire);
                let mut steps = 0;
                while let Some(n) = at {
                    assert_intact(&n);
                    at = n.next.load(Ordering::Acquire);
                    steps += 1;
                    if steps > 64 {
                        break;
                    }
                }
            }
        }
        if held.len() > 16 {
            held.clear();
        }
        moves.fetch_add(1, Ordering::Relaxed);
        // Garbage, so that cycles come on their own too.
        goro::gc::keep_alive(&node(0, None));
    }
}

fn shuffle_during_collections(procs: usize, cycles: u64) {
    common::run_clobbering(procs, move || {
        goro::gc::set_checkmark(true);
        let shared = Gc::new(Shared {
            slots: std::array::from_fn(|i| AtomicGc::new(Some(node(i as u64, None)))),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let moves = Arc::new(AtomicUsize::new(0));
        let goroutines: Vec<_> = (0..2)
            .map(|seed| {
                let (stop, moves) = (stop.clone(), moves.clone());
                goro::go(move || shuffle(shared, seed + 7, &stop, &moves))
            })
            .collect();
        let thread = {
            let (stop, moves) = (stop.clone(), moves.clone());
            std::thread::spawn(move || shuffle(shared, 3, &stop, &moves))
        };
        let before = goro::gc::stats().cycles;
        let began = Instant::now();
        while goro::gc::stats().cycles < before + cycles {
            assert!(
                began.elapsed() < Duration::from_secs(120),
                "the cycles did not come"
            );
            goro::gc::collect();
        }
        stop.store(true, Ordering::Relaxed);
        for goroutine in goroutines {
            goroutine.join().unwrap();
        }
        goro::blocking(|| thread.join().unwrap());
        goro::gc::set_checkmark(false);
        assert!(moves.load(Ordering::Relaxed) > 0);
        for slot in &shared.slots {
            let mut at = slot.load(Ordering::Acquire);
            while let Some(n) = at {
                assert_intact(&n);
                at = n.next.load(Ordering::Acquire);
            }
        }
    });
}

#[test]
fn lock_free_moves_during_marking_lose_nothing_at_1_p() {
    shuffle_during_collections(1, 100);
}

#[test]
fn lock_free_moves_during_marking_lose_nothing_at_2_ps() {
    shuffle_during_collections(2, 100);
}
