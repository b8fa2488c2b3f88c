//! Adversarial review, round 2: safe programs that break the soundness promise.
//! Each test reproduced its hole every time until the hole was closed; they all pass now.
#![allow(dead_code)]

use goro::{Gc, GcCell, Trace};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

const POISON: u64 = 0xdead_beef_dead_beef;

/// An enum whose `Gc` sits at the end in one variant and at the start in the other: a swap that
/// copies front to back passes through states where the tag says `B` but the `A` payload's `Gc`
/// is still at the end, in a word the `B` layout calls a plain number.
#[derive(Trace)]
#[repr(C)]
enum E {
    A([u64; 64], Gc<u64>),
    B(Gc<u64>, [u64; 64]),
}

#[derive(Trace)]
struct Pair {
    cell: GcCell<(E, E)>,
}

fn value_of(e: &E) -> u64 {
    match e {
        E::A(_, g) | E::B(g, _) => **g,
    }
}

/// Swaps the pair's two enums in place until `stop`, checking every 4,096 swaps that both `Gc`s
/// still hold their values (1 and 2); the swap count and the values when they do not.
fn swap_until(pair: &Pair, stop: &AtomicBool) -> Option<(u64, u64, u64)> {
    let mut swaps = 0u64;
    while !stop.load(Ordering::Relaxed) {
        {
            let mut both = pair.cell.borrow_mut();
            let (x, y) = &mut *both;
            std::mem::swap(x, y);
        }
        swaps += 1;
        if swaps.is_multiple_of(4096) {
            let both = pair.cell.borrow();
            let (x, y) = (value_of(&both.0), value_of(&both.1));
            if x + y != 3 {
                return Some((swaps, x, y));
            }
        }
    }
    None
}

/// Hole 1: a std thread (stopped by SIGPWR wherever it stands) swaps two enums inside a
/// `GcCell`; the collector traces the cell precisely (`Trace for GcCell` follows the tags) and
/// sees a half-swapped pair, so the `Gc` still in flight is in no traced field, no register and
/// no stack slot. It is freed while reachable; clobberfree shows 0xdeadbeef.
#[test]
fn a_std_thread_swapping_enums_in_a_gccell_keeps_its_gcs() {
    goro::run(|| {
        goro::gc::set_clobber_free(true);
        let pair = Gc::new(Pair {
            cell: GcCell::new((E::A([7; 64], Gc::new(1u64)), E::B(Gc::new(2u64), [9; 64]))),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicUsize::new(0));
        let (s, b) = (stop.clone(), bad.clone());
        let swapper = std::thread::spawn(move || {
            if let Some((swaps, x, y)) = swap_until(&pair, &s) {
                b.fetch_add(1, Ordering::Relaxed);
                eprintln!("after {swaps} swaps the pair holds {x:#x} and {y:#x}");
            }
        });
        for _ in 0..300 {
            goro::gc::collect();
            if bad.load(Ordering::Relaxed) > 0 {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(bad.load(Ordering::Relaxed), 0, "a reachable Gc was freed");
    });
}

/// Runs `f` on a thread of its own; fails if it has not finished within `secs` seconds (the
/// hung thread is left behind; the test process ends anyway).
fn within<F: FnOnce() + Send + 'static>(secs: u64, f: F) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("hung: the program did not finish");
}

/// Hole 2: a std thread that holds a std `Mutex` a goroutine waits for, and collects (or just
/// allocates enough `Gc`s to trigger a cycle), waits forever: the cycle is handed to a new
/// goroutine, which needs a P, and every P's M is blocked in the std lock. Hangs.
#[test]
fn a_std_thread_collecting_while_holding_a_lock_a_goroutine_waits_for_does_not_hang() {
    within(120, || {
        goro::Runtime::builder()
            .max_procs(1)
            .build()
            .unwrap()
            .run(|| {
                let lock = Arc::new(std::sync::Mutex::new(0u64));
                let (held_tx, held_rx) = std::sync::mpsc::channel();
                let theirs = lock.clone();
                let t = std::thread::spawn(move || {
                    let mut guard = theirs.lock().unwrap();
                    held_tx.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    let g = Gc::new(41u64);
                    goro::gc::collect();
                    *guard = *g + 1;
                });
                held_rx.recv().unwrap();
                let v = *lock.lock().unwrap();
                t.join().unwrap();
                assert_eq!(v, 42);
            });
    });
}

/// Hole 1 again, with no std thread: a goroutine that swaps without reaching a safe point is a
/// laggard, stopped by the same signal mid-swap.
#[test]
fn a_goroutine_swapping_enums_in_a_gccell_keeps_its_gcs() {
    goro::Runtime::builder()
        .max_procs(2)
        .build()
        .unwrap()
        .run(|| {
            goro::gc::set_clobber_free(true);
            let pair = Gc::new(Pair {
                cell: GcCell::new((E::A([7; 64], Gc::new(1u64)), E::B(Gc::new(2u64), [9; 64]))),
            });
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let swapper = goro::go(move || swap_until(&pair, &s));
            // The collections come from a std thread: a goroutine that asked for them could be
            // bound to the swapper's M, behind a loop that never yields (no preemption without a
            // safe point), and wait forever.
            let collector = std::thread::spawn(|| {
                for _ in 0..150 {
                    goro::gc::collect();
                }
            });
            goro::blocking(|| collector.join().unwrap());
            stop.store(true, Ordering::Relaxed);
            let outcome = swapper.join().unwrap();
            assert_eq!(outcome, None, "a reachable Gc was freed (swaps, values)");
        });
}
