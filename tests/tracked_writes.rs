//! Large malloc blocks rescanned at mark termination only where the kernel saw them written
//! (crates/gc/src/tracked.rs). Each test keeps `Gc`s only in blocks of 256 KiB or more while
//! a thread collects back to back, with freed objects poisoned: a written page termination
//! skipped, a `GcCell` borrow lent from an unwritten page, or a block allocated while marking
//! shows as a poisoned payload.

mod common;

use common::{Rng, watchdog};
use goro::gc::GcRefMut;
use goro::{Gc, GcCell, Trace};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(Trace)]
struct X {
    v: u64,
    w: u64,
}

fn x(i: usize) -> Gc<X> {
    Gc::new(X {
        v: i as u64,
        w: !(i as u64),
    })
}

/// Whether `x` still holds object `i`'s payload.
fn intact(x: &X, i: usize) -> bool {
    x.v == i as u64 && x.w == !(i as u64)
}

/// Entries of each large array: 512 KiB of pointers.
const ENTRIES: usize = 64 << 10;

/// Runs `body` on a runtime of `procs` Ps while a std thread collects back to back; returns
/// what `body` found wrong, and the cycles whose termination skipped unwritten pages.
fn with_collections(procs: usize, body: fn() -> Option<String>) -> (Option<String>, usize) {
    let rt = goro::Runtime::builder().max_procs(procs).build().unwrap();
    rt.run(move || {
        // `run` sets the switches from GORO_DEBUG: set them inside.
        goro::gc::set_clobber_free(true);
        goro::gc::set_track_writes(true);
        let stop = Arc::new(AtomicBool::new(false));
        let skipping = Arc::new(AtomicUsize::new(0));
        let collector = {
            let (stop, skipping) = (stop.clone(), skipping.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    goro::gc::collect();
                    if goro::gc::stats().rescan_skipped > 0 {
                        skipping.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let bad = body();
        stop.store(true, Ordering::Relaxed);
        collector.join().unwrap();
        (bad, skipping.load(Ordering::Relaxed))
    })
}

const RUN: Duration = Duration::from_secs(2);

/// Runs `body` under [`with_collections`] (a watchdog aborting a hang) and checks that it found
/// nothing wrong and that some termination skipped unwritten pages, so that the skip was tried.
fn survives(name: &'static str, procs: usize, body: fn() -> Option<String>) {
    let done = watchdog(name, 120);
    let (bad, skipping) = with_collections(procs, body);
    done.store(true, Ordering::Relaxed);
    assert_eq!(bad, None);
    assert!(skipping > 0, "no termination skipped an unwritten page");
}

/// Moves objects one at a time between two large arrays, at random places: most pages of
/// both stay unwritten through a cycle, and an object moved after both arrays were scanned is
/// found only on the written page termination rescans.
fn sparse_moves() -> Option<String> {
    let mut a: Vec<Option<Gc<X>>> = (0..ENTRIES).map(|i| Some(x(i))).collect();
    let mut b: Vec<Option<Gc<X>>> = vec![None; ENTRIES];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let began = Instant::now();
    let mut moves = 0u64;
    while began.elapsed() < RUN {
        let i = rng.below(ENTRIES);
        let (from, to) = if a[i].is_some() {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let moved = from[i].take().expect("one of the arrays holds it");
        if !intact(&moved, i) {
            return Some(format!(
                "object {i} read {:#x} after {moves} moves",
                moved.v
            ));
        }
        to[i] = Some(moved);
        moves += 1;
        // A few hundred moves a cycle: most pages stay unwritten through it.
        let pause = Instant::now();
        while pause.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
        if moves.is_multiple_of(16) {
            goro::yield_now();
        }
    }
    lost_or_poisoned(a.iter().zip(&b).map(|(a, b)| a.as_ref().or(b.as_ref())))
}

/// The first object of `held` (the `i`th holding object `i`) that is missing or poisoned.
fn lost_or_poisoned<'a>(held: impl Iterator<Item = Option<&'a Gc<X>>>) -> Option<String> {
    for (i, held) in held.enumerate() {
        match held {
            Some(held) if intact(held, i) => {}
            _ => return Some(format!("object {i} lost or poisoned at the end")),
        }
    }
    None
}

#[test]
fn objects_moved_between_large_arrays_survive_1p() {
    survives(
        "objects_moved_between_large_arrays_survive_1p",
        1,
        sparse_moves,
    );
}

#[test]
fn objects_moved_between_large_arrays_survive_2p() {
    survives(
        "objects_moved_between_large_arrays_survive_2p",
        2,
        sparse_moves,
    );
}

const CELL_ENTRIES: usize = 1024;
type Arr = [Option<Gc<X>>; CELL_ENTRIES];

#[derive(Trace)]
struct Hold {
    cell: GcCell<Arr>,
}

/// Two `&mut` lent by leaked `GcCell` guards, kept in a large block, written once: the only
/// words that keep the two `Hold` objects alive point into them, never at their start, and the
/// cells are written through them without the barrier ever hearing of it.
struct LentRefs {
    a: &'static mut Arr,
    _pad: [u64; 48 << 10],
    b: &'static mut Arr,
}

#[inline(never)]
fn lend(hold: Gc<Hold>) -> &'static mut Arr {
    // The leaked blocks are reached from nowhere: only the `&mut` below keeps `hold` alive.
    let hold: &'static Gc<Hold> = Box::leak(Box::new(hold));
    let guard: &'static mut GcRefMut<'static, Arr> = Box::leak(Box::new(hold.cell.borrow_mut()));
    guard
}

#[inline(never)]
fn lent_refs() -> Box<LentRefs> {
    let a = lend(Gc::new(Hold {
        cell: GcCell::new([None; CELL_ENTRIES]),
    }));
    let b = lend(Gc::new(Hold {
        cell: GcCell::new([None; CELL_ENTRIES]),
    }));
    for (i, slot) in a.iter_mut().enumerate() {
        *slot = Some(x(i));
    }
    Box::new(LentRefs {
        a,
        _pad: [0; 48 << 10],
        b,
    })
}

/// Clears the stack below the caller of what earlier frames left there.
#[inline(never)]
fn clobber_stack() {
    std::hint::black_box([0u64; 512]);
}

/// Moves every object from `a` to `b` in even rounds and back in odd ones, checking each.
fn shuttle(a: &mut Arr, b: &mut Arr, round: u64) -> Option<String> {
    let (src, dst) = if round.is_multiple_of(2) {
        (a, b)
    } else {
        (b, a)
    };
    for i in 0..CELL_ENTRIES {
        let moved = src[i].take();
        if let Some(moved) = &moved
            && !intact(moved, i)
        {
            return Some(format!(
                "object {i} read {:#x} after {round} rounds",
                moved.v
            ));
        }
        dst[i] = moved;
    }
    None
}

/// Moves every object from one lent cell to the other and back, checking each.
fn moves_through_lent_borrows() -> Option<String> {
    // Reborrowing the two `&mut` writes nothing into the box: its pages stay unwritten.
    let mut refs = lent_refs();
    clobber_stack();
    let began = Instant::now();
    let mut rounds = 0u64;
    while began.elapsed() < RUN {
        let refs = &mut *refs;
        if let Some(bad) = shuttle(&mut *refs.a, &mut *refs.b, rounds) {
            return Some(bad);
        }
        rounds += 1;
        clobber_stack();
        goro::yield_now();
    }
    None
}

#[test]
fn borrows_lent_from_an_unwritten_page_keep_their_cells_scanned() {
    survives(
        "borrows_lent_from_an_unwritten_page_keep_their_cells_scanned",
        2,
        moves_through_lent_borrows,
    );
}

/// The two lent `&mut` of [`lent_refs`] moved to new places in a large array every round: the
/// pages they land on are written while marking runs, rescanned beside the mutators, and must
/// still count as holding interior words at termination.
fn borrows_moved_within_a_large_block() -> Option<String> {
    let LentRefs { a, b, .. } = *lent_refs();
    let mut slots: Vec<Option<&'static mut Arr>> = Vec::with_capacity(ENTRIES);
    slots.resize_with(ENTRIES, || None);
    let (mut at_a, mut at_b) = (0, ENTRIES - 1);
    slots[at_a] = Some(a);
    slots[at_b] = Some(b);
    clobber_stack();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let began = Instant::now();
    let mut rounds = 0u64;
    while began.elapsed() < RUN {
        // Moved every few milliseconds: a page written before a preclean and left alone until
        // termination is what needs the preclean's notes.
        if rounds.is_multiple_of(128) {
            let (to_a, to_b) = (rng.below(ENTRIES / 2), ENTRIES / 2 + rng.below(ENTRIES / 2));
            let a = slots[at_a].take().expect("a is where it was put");
            slots[to_a] = Some(a);
            let b = slots[at_b].take().expect("b is where it was put");
            slots[to_b] = Some(b);
            (at_a, at_b) = (to_a, to_b);
        }
        let [low, high] = slots.get_disjoint_mut([at_a, at_b]).expect("two places");
        let (a, b) = (low.as_deref_mut().unwrap(), high.as_deref_mut().unwrap());
        if let Some(bad) = shuttle(a, b, rounds) {
            return Some(bad);
        }
        rounds += 1;
        clobber_stack();
        goro::yield_now();
    }
    None
}

#[test]
fn borrows_moved_within_a_large_block_keep_their_cells_scanned() {
    survives(
        "borrows_moved_within_a_large_block_keep_their_cells_scanned",
        2,
        borrows_moved_within_a_large_block,
    );
}

/// Builds a large array again and again, each the size of the last (so it may take the pages
/// and the extent of the block the last cycle tracked), fills it at once, then leaves it
/// unwritten for a while: an array allocated while marking is marked without being scanned,
/// and must be rescanned whole.
fn arrays_built_while_marking() -> Option<String> {
    let mut held: Vec<Option<Gc<X>>> = (0..ENTRIES).map(|i| Some(x(i))).collect();
    let began = Instant::now();
    let mut rounds = 0u64;
    while began.elapsed() < RUN {
        let mut fresh: Vec<Option<Gc<X>>> = Vec::with_capacity(ENTRIES);
        fresh.extend(held.iter_mut().map(Option::take));
        drop(held);
        held = fresh;
        let idle = Instant::now();
        while idle.elapsed() < Duration::from_micros(300) {
            goro::yield_now();
        }
        for (i, slot) in held.iter().enumerate().step_by(97) {
            match slot {
                Some(o) if intact(o, i) => {}
                _ => return Some(format!("object {i} lost or poisoned after {rounds} rounds")),
            }
        }
        rounds += 1;
    }
    lost_or_poisoned(held.iter().map(Option::as_ref))
}

#[test]
fn large_arrays_built_while_marking_are_rescanned() {
    let done = watchdog("large_arrays_built_while_marking", 120);
    let (bad, _) = with_collections(2, arrays_built_while_marking);
    done.store(true, Ordering::Relaxed);
    assert_eq!(bad, None);
}

/// Write tracking turned off: nothing is skipped.
#[test]
fn with_tracking_off_nothing_is_skipped() {
    let rt = goro::Runtime::builder().max_procs(1).build().unwrap();
    let skipped = rt.run(|| {
        goro::gc::set_track_writes(false);
        let held: Vec<Option<Gc<X>>> = (0..ENTRIES).map(|i| Some(x(i))).collect();
        let mut skipped = 0;
        for _ in 0..3 {
            goro::gc::collect();
            skipped += goro::gc::stats().rescan_skipped;
        }
        assert!(
            held.iter()
                .enumerate()
                .all(|(i, o)| intact(o.as_ref().unwrap(), i))
        );
        goro::gc::set_track_writes(true);
        skipped
    });
    assert_eq!(skipped, 0);
}
