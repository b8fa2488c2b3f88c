//! Adversarial tests of the first pause leaving parked goroutines to the mark worker
//! (`ParkedStack::while_parked`, `for_each_parked_goroutine`, `parked_roots`), written by a
//! helper session that attacked the mechanism with safe code only, before reading the other
//! tests. Every scenario runs with clobberfree on, most with gccheckmark; the durations are
//! short for CI (the helper ran them for 4-8 s each, in release, also pinned to one CPU).

mod common;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

use common::{Rng, watchdog};
use goro::chan::{Receiver, Sender, channel};
use goro::{Gc, GcCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(goro::Trace)]
struct Node {
    a: u64,
    b: u64,
    next: Option<Gc<Node>>,
}

/// A runtime with `procs` Ps, clobberfree and gccheckmark on.
fn run_checked<R: Send + 'static>(procs: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    common::run_clobbering(procs, move || {
        goro::gc::set_checkmark(true);
        f()
    })
}

/// A list of `n` nodes with values derived from `seed`.
#[inline(never)]
fn chain(n: u64, seed: u64) -> Gc<Node> {
    let mut head = None;
    for i in (0..n).rev() {
        let v = seed.wrapping_mul(1_000_003).wrapping_add(i);
        head = Some(Gc::new(Node {
            a: v,
            b: !v,
            next: head,
        }));
    }
    head.unwrap()
}

#[inline(never)]
fn check(head: &Gc<Node>, n: u64, seed: u64, what: &str) {
    let mut cur: Option<&Gc<Node>> = Some(head);
    for i in 0..n {
        let node = cur.unwrap_or_else(|| panic!("{what}: list of seed {seed} ends at {i}"));
        let v = seed.wrapping_mul(1_000_003).wrapping_add(i);
        assert!(
            node.a == v && node.b == !v,
            "{what}: seed {seed} node {i}: a={:#x} b={:#x}, want {v:#x}",
            node.a,
            node.b
        );
        cur = node.next.as_ref();
    }
    assert!(cur.is_none(), "{what}: list of seed {seed} too long");
}

/// Allocates garbage until `stop`, so cycles keep starting.
fn churn(stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = chain(16, i);
        std::hint::black_box(&c);
        i += 1;
        if i.is_multiple_of(64) {
            goro::yield_now();
        }
    }
}

/// Many goroutines parked on a channel each hold the only reference to a list; a driver wakes
/// random ones throughout back-to-back cycles, each woken one checks its list and builds a new
/// one before it parks again.
fn parked_holders(procs: usize, goroutines: u64, rounds: u64) {
    let _dog = watchdog("parked_holders", 240);
    run_checked(procs, move || {
        let stop = Arc::new(AtomicBool::new(false));
        let churners: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                goro::go(move || churn(stop))
            })
            .collect();
        let mut wakers: Vec<Sender<u64>> = Vec::new();
        let (done_tx, done_rx) = channel::<u64>(goroutines as usize);
        let mut holders = Vec::new();
        for g in 0..goroutines {
            let (tx, rx): (Sender<u64>, Receiver<u64>) = channel(0);
            wakers.push(tx);
            let done_tx = done_tx.clone();
            holders.push(goro::go(move || {
                let mut seed = g * 7919;
                let mut list = chain(6, seed);
                let mut woken = 0;
                while let Some(next) = rx.recv() {
                    check(&list, 6, seed, "holder after wake");
                    seed = next;
                    list = chain(6, seed);
                    woken += 1;
                }
                check(&list, 6, seed, "holder at end");
                done_tx.send(woken);
            }));
        }
        drop(done_tx);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for r in 0..rounds {
            for _ in 0..goroutines / 4 {
                let g = rng.below(goroutines as usize);
                wakers[g].send(r * goroutines + g as u64 + 1_000_000);
            }
            goro::sleep(Duration::from_millis(1));
        }
        drop(wakers);
        let total: u64 = done_rx.iter().sum();
        for h in holders {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for c in churners {
            c.join().unwrap();
        }
        let stats = goro::gc::stats();
        println!(
            "procs {procs}: {total} wakes, {} cycles, pauses {:?}",
            stats.cycles,
            &stats.pauses[stats.pauses.len().saturating_sub(6)..]
        );
        assert!(stats.cycles > 3, "too few cycles: {}", stats.cycles);
    });
}

#[test]
fn parked_holders_one_proc() {
    parked_holders(1, 3000, 60);
}

#[test]
fn parked_holders_two_procs() {
    parked_holders(2, 3000, 60);
}

#[test]
fn parked_holders_four_procs() {
    parked_holders(4, 3000, 60);
}

/// Goroutines park deep inside stack segments (`maybe_grow`), holding lists in every frame, then
/// return (dropping the segments) and park shallow, over and over, while cycles run back to back.
#[inline(never)]
fn deep(depth: u32, seed: u64, rx: &Receiver<u64>, sum: &mut u64) -> Option<u64> {
    goro::stack::maybe_grow(32 * 1024, || {
        let local = chain(3, seed + depth as u64);
        let pad = std::hint::black_box([depth as u64; 64]);
        let got = if depth == 0 {
            rx.recv()
        } else {
            deep(depth - 1, seed, rx, sum)
        };
        check(&local, 3, seed + depth as u64, "deep frame");
        *sum += pad[7];
        got
    })
}

fn segment_parkers(procs: usize) {
    let _dog = watchdog("segment_parkers", 240);
    run_checked(procs, move || {
        let stop = Arc::new(AtomicBool::new(false));
        let churner = {
            let stop = stop.clone();
            goro::go(move || churn(stop))
        };
        let mut wakers = Vec::new();
        let mut hs = Vec::new();
        for g in 0..40u64 {
            let (tx, rx) = channel::<u64>(0);
            wakers.push(tx);
            hs.push(goro::go(move || {
                let mut sum = 0;
                let mut seed = g * 100_000;
                let shallow = chain(4, seed);
                let mut turn = 0u64;
                loop {
                    // Alternate a deep park (several segments) and a shallow one.
                    let depth = if turn.is_multiple_of(2) {
                        40 + (g as u32 % 5) * 10
                    } else {
                        0
                    };
                    let got = if depth == 0 {
                        rx.recv()
                    } else {
                        deep(depth, seed, &rx, &mut sum)
                    };
                    check(&shallow, 4, g * 100_000, "shallow");
                    match got {
                        Some(s) => seed = s,
                        None => break,
                    }
                    turn += 1;
                }
                sum
            }));
        }
        goro::gc::set_stress(true);
        let mut rng = Rng(12345);
        for r in 0..5_000u64 {
            let g = rng.below(wakers.len());
            wakers[g].send(r * 1000 + g as u64);
            if r % 20 == 0 {
                goro::sleep(Duration::from_millis(2));
            }
        }
        goro::gc::set_stress(false);
        drop(wakers);
        for h in hs {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        churner.join().unwrap();
        println!("cycles {}", goro::gc::stats().cycles);
    });
}

#[test]
fn segment_parkers_one_proc() {
    segment_parkers(1);
}

#[test]
fn segment_parkers_two_procs() {
    segment_parkers(2);
}

/// Short-lived goroutines that park once and exit, so Gs are reused (and re-homed) all the time
/// while the worker walks the G lists; each checks a list it held across its park.
fn g_reuse(procs: usize) {
    let _dog = watchdog("g_reuse", 240);
    run_checked(procs, move || {
        goro::gc::set_stress(true);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut spawned = 0u64;
        while Instant::now() < deadline {
            let mut hs = Vec::new();
            for k in 0..200u64 {
                let seed = spawned * 1000 + k;
                let (tx, rx) = channel::<Gc<Node>>(0);
                hs.push(goro::go(move || {
                    let mine = chain(3, seed);
                    // Parks until the sender comes; what it receives it checks too.
                    let got = rx.recv().unwrap();
                    check(&got, 2, seed + 1, "delivered");
                    check(&mine, 3, seed, "own");
                }));
                goro::go(move || {
                    let v = chain(2, seed + 1);
                    if k.is_multiple_of(3) {
                        goro::yield_now();
                    }
                    tx.send(v);
                });
            }
            for h in hs {
                h.join().unwrap();
            }
            spawned += 1;
        }
        goro::gc::set_stress(false);
        println!("batches {spawned}, cycles {}", goro::gc::stats().cycles);
    });
}

#[test]
fn g_reuse_one_proc() {
    g_reuse(1);
}

#[test]
fn g_reuse_two_procs() {
    g_reuse(2);
}

#[test]
fn g_reuse_four_procs() {
    g_reuse(4);
}

/// A big value (more than the G's wait space) delivered into parked receivers, and `select!`
/// parks whose records live on the stack.
#[derive(Clone)]
struct Big {
    lists: [Option<Gc<Node>>; 12],
    seed: u64,
}

fn select_and_big_values(procs: usize) {
    let _dog = watchdog("select_and_big_values", 240);
    run_checked(procs, move || {
        goro::gc::set_stress(true);
        let (big_tx, big_rx) = channel::<Big>(0);
        let (small_tx, small_rx) = channel::<Gc<Node>>(0);
        let mut receivers = Vec::new();
        for r in 0..8u64 {
            let (big_rx, small_rx) = (big_rx.clone(), small_rx.clone());
            receivers.push(goro::go(move || {
                let mine = chain(4, 77 + r);
                let mut n = 0u64;
                loop {
                    goro::select! {
                        recv(big_rx) -> v => match v {
                            Some(b) => {
                                for (i, l) in b.lists.iter().enumerate() {
                                    check(l.as_ref().unwrap(), 2, b.seed + i as u64, "big");
                                }
                            }
                            None => break,
                        },
                        recv(small_rx) -> v => match v {
                            Some(l) => check(&l, 5, l.a / 1_000_003, "small"),
                            None => break,
                        },
                    }
                    n += 1;
                }
                check(&mine, 4, 77 + r, "selector's own");
                n
            }));
        }
        drop((big_rx, small_rx));
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seed = 1u64;
        while Instant::now() < deadline {
            let big = Big {
                lists: std::array::from_fn(|i| Some(chain(2, seed + i as u64))),
                seed,
            };
            big_tx.send(big);
            seed += 100;
            small_tx.send(chain(5, seed));
            seed += 100;
        }
        drop((big_tx, small_tx));
        let total: u64 = receivers.into_iter().map(|h| h.join().unwrap()).sum();
        goro::gc::set_stress(false);
        println!("received {total}, cycles {}", goro::gc::stats().cycles);
    });
}

#[test]
fn select_and_big_values_one_proc() {
    select_and_big_values(1);
}

#[test]
fn select_and_big_values_two_procs() {
    select_and_big_values(2);
}

/// Goroutines wait on a `goro::sync::Mutex` holding lists; the holder keeps it across sleeps.
fn mutex_waiters(procs: usize) {
    let _dog = watchdog("mutex_waiters", 240);
    run_checked(procs, move || {
        goro::gc::set_stress(true);
        let m = Arc::new(goro::sync::Mutex::new(Vec::<Gc<Node>>::new()));
        let mut hs = Vec::new();
        for g in 0..64u64 {
            let m = m.clone();
            hs.push(goro::go(move || {
                for round in 0..30u64 {
                    let seed = g * 10_000 + round;
                    let mine = chain(3, seed);
                    let mut guard = m.lock();
                    check(&mine, 3, seed, "mutex waiter");
                    guard.push(mine);
                    if guard.len() > 50 {
                        let old = guard.remove(0);
                        check(&old, 3, old.a / 1_000_003, "mutex vec");
                    }
                    if round % 7 == 0 {
                        goro::sleep(Duration::from_micros(300));
                    }
                    drop(guard);
                }
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
        goro::gc::set_stress(false);
        for l in m.lock().iter() {
            check(l, 3, l.a / 1_000_003, "mutex vec at end");
        }
        println!("cycles {}", goro::gc::stats().cycles);
    });
}

#[test]
fn mutex_waiters_two_procs() {
    mutex_waiters(2);
}

#[test]
fn mutex_waiters_one_proc() {
    mutex_waiters(1);
}

/// A goroutine lends its locals to scoped std threads and parks on a goro channel inside the
/// scope; the threads move lists into and out of its locals throughout the cycles.
fn scoped_movers(procs: usize) {
    let _dog = watchdog("scoped_movers", 240);
    run_checked(procs, move || {
        let stop = Arc::new(AtomicBool::new(false));
        let churner = {
            let stop = stop.clone();
            goro::go(move || churn(stop))
        };
        let mut hs = Vec::new();
        for g in 0..4u64 {
            hs.push(goro::go(move || {
                let slots: [std::sync::Mutex<Option<Gc<Node>>>; 8] =
                    std::array::from_fn(|_| std::sync::Mutex::new(None));
                let cell: GcCell<Option<Gc<Node>>> = GcCell::new(None);
                let cell_box = Gc::new(GcCell::new(None::<Gc<Node>>));
                let (tx, rx) = channel::<()>(0);
                let moves = AtomicU64::new(0);
                std::thread::scope(|s| {
                    for t in 0..2u64 {
                        let (slots, moves, cell, cell_box) = (&slots, &moves, &cell, &cell_box);
                        let tx = tx.clone();
                        s.spawn(move || {
                            let mut rng = Rng(g * 31 + t + 1);
                            let deadline = Instant::now() + Duration::from_secs(2);
                            let mut seed = (g * 10 + t) * 1_000_000;
                            while Instant::now() < deadline {
                                let i = rng.below(8);
                                let j = rng.below(8);
                                // Take a list out of one slot, check it, put it into another
                                // (or a fresh one) after a pause.
                                let taken = slots[i].lock().unwrap().take();
                                let moved = match taken {
                                    Some(l) => {
                                        check(&l, 4, l.a / 1_000_003, "slot");
                                        l
                                    }
                                    None => {
                                        seed += 1;
                                        chain(4, seed)
                                    }
                                };
                                std::thread::yield_now();
                                let old = slots[j].lock().unwrap().replace(moved);
                                if let Some(old) = old {
                                    // Park it in the cells for a while.
                                    if rng.below(2) == 0 {
                                        if let Ok(mut c) = cell.try_borrow_mut() {
                                            *c = Some(old);
                                        }
                                    } else if let Ok(mut c) = cell_box.try_borrow_mut() {
                                        let prev = c.replace(old);
                                        drop(c);
                                        if let Some(p) = prev {
                                            slots[i].lock().unwrap().get_or_insert(p);
                                        }
                                    }
                                }
                                moves.fetch_add(1, Ordering::Relaxed);
                            }
                            drop(tx);
                        });
                    }
                    drop(tx);
                    // Parked in the scope until both threads are done.
                    assert!(rx.recv().is_none());
                });
                for s in &slots {
                    if let Some(l) = s.lock().unwrap().as_ref() {
                        check(l, 4, l.a / 1_000_003, "slot at end");
                    }
                }
                if let Some(l) = cell.borrow().as_ref() {
                    check(l, 4, l.a / 1_000_003, "cell at end");
                }
                if let Some(l) = cell_box.borrow().as_ref() {
                    check(l, 4, l.a / 1_000_003, "cell box at end");
                }
                moves.load(Ordering::Relaxed)
            }));
        }
        let moves: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        churner.join().unwrap();
        println!("moves {moves}, cycles {}", goro::gc::stats().cycles);
    });
}

#[test]
fn scoped_movers_one_proc() {
    scoped_movers(1);
}

#[test]
fn scoped_movers_two_procs() {
    scoped_movers(2);
}

/// Goroutines parked long enough for sysmon to trim their stacks (TRIMMED), woken while cycles
/// run, some by a std thread that also collects.
#[test]
fn trimmed_parkers_woken_during_cycles() {
    let _dog = watchdog("trimmed_parkers", 240);
    run_checked(2, || {
        let mut wakers = Vec::new();
        let mut hs = Vec::new();
        for g in 0..500u64 {
            let (tx, rx) = channel::<u64>(0);
            wakers.push(tx);
            hs.push(goro::go(move || {
                let mut seed = g;
                // Deep use of the stack before parking, so trimming has pages to release.
                common::touch_stack(64 * 1024);
                let mut l = chain(5, seed);
                while let Some(s) = rx.recv() {
                    check(&l, 5, seed, "trimmed holder");
                    common::touch_stack(32 * 1024);
                    seed = s;
                    l = chain(5, seed);
                }
                check(&l, 5, seed, "trimmed holder end");
            }));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let collector = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    goro::gc::collect();
                    n += 1;
                }
                n
            })
        };
        let mut rng = Rng(777);
        for round in 0..3u64 {
            // Long enough for sysmon to trim everybody.
            goro::sleep(Duration::from_millis(1300));
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(300) {
                let g = rng.below(wakers.len());
                wakers[g].send(round * 100_000 + g as u64 + 7);
            }
        }
        drop(wakers);
        for h in hs {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let n = collector.join().unwrap();
        println!(
            "thread collections {n}, cycles {}",
            goro::gc::stats().cycles
        );
    });
}

/// Pause history sanity: every pause of this test's cycles positive and shorter than the wall
/// time the test ran, and their sum too (statistics are per process: only this test's deltas).
#[test]
fn pause_history_is_sane() {
    let _dog = watchdog("pause_history", 240);
    let began = Instant::now();
    let (before, after) = common::run_clobbering(2, move || {
        let before = goro::gc::stats();
        let mut wakers = Vec::new();
        for g in 0..2000u64 {
            let (tx, rx) = channel::<u64>(0);
            wakers.push(tx);
            goro::go(move || {
                let l = chain(3, g);
                while rx.recv().is_some() {}
                check(&l, 3, g, "pause holder");
            });
        }
        for i in 0..100u64 {
            wakers[(i * 17) as usize % 2000].send(i);
            goro::gc::collect();
        }
        drop(wakers);
        (before, goro::gc::stats())
    });
    let total = began.elapsed();
    let cycles = after.cycles - before.cycles;
    let mine = &after.pauses[after.pauses.len().saturating_sub(2 * cycles as usize)..];
    let sum: Duration = mine.iter().sum();
    let total_delta = after.pause_total - before.pause_total;
    println!(
        "cycles {cycles} pauses {} sum {sum:?} pause_total delta {total_delta:?} wall {total:?} max {:?} min {:?}",
        mine.len(),
        mine.iter().max(),
        mine.iter().min(),
    );
    for (i, p) in mine.iter().enumerate() {
        assert!(*p > Duration::ZERO, "pause {i} is zero");
        assert!(
            *p < total,
            "pause {i} ({p:?}) longer than the whole test {total:?}"
        );
    }
    assert!(
        total_delta < total,
        "pause_total grew by {total_delta:?} in {total:?}"
    );
}

/// Consecutive runtimes that end while goroutines are parked (abandoned) and a cycle is marking.
#[test]
fn runtimes_end_during_parked_scan() {
    let _dog = watchdog("runtimes_end", 240);
    for round in 0..9u64 {
        let procs = [1, 2, 4][round as usize % 3];
        let kept = run_checked(procs, move || {
            let (tx, rx) = channel::<u64>(0);
            for g in 0..1000u64 {
                let rx = rx.clone();
                goro::go(move || {
                    let l = chain(2, g + round);
                    // Abandoned here when main returns.
                    let _ = rx.recv();
                    check(&l, 2, g + round, "abandoned");
                });
            }
            goro::yield_now();
            // Start a cycle and return while the worker walks the parked goroutines.
            goro::gc::set_stress(true);
            let kept = chain(10, round);
            std::mem::forget(tx);
            goro::gc::set_stress(false);
            kept
        });
        check(&kept, 10, round, "returned");
    }
}

/// 5,000 parked holders, cycles back to back (`gcstress`), wakes for 2 s.
#[test]
fn many_parked_holders_under_stress() {
    let _dog = watchdog("many_parked_holders", 300);
    for procs in [1, 2, 4] {
        run_checked(procs, move || {
            let n = 5_000u64;
            let mut wakers = Vec::new();
            let mut hs = Vec::new();
            for g in 0..n {
                let (tx, rx) = channel::<u64>(1);
                wakers.push(tx);
                hs.push(goro::go(move || {
                    let mut seed = g;
                    let mut l = chain(2, seed);
                    let mut k = 0u64;
                    while let Some(s) = rx.recv() {
                        check(&l, 2, seed, "many holder");
                        seed = s;
                        l = chain(2, seed);
                        k += 1;
                        if k.is_multiple_of(3) {
                            goro::yield_now();
                        }
                    }
                    check(&l, 2, seed, "many holder end");
                }));
            }
            goro::gc::set_stress(true);
            let mut rng = Rng(99 + procs as u64);
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let g = rng.below(n as usize);
                if wakers[g].try_send(sent + 1_000_000).is_ok() {
                    sent += 1;
                }
                if sent.is_multiple_of(500) {
                    goro::yield_now();
                }
            }
            goro::gc::set_stress(false);
            drop(wakers);
            for h in hs {
                h.join().unwrap();
            }
            println!(
                "procs {procs}: sent {sent}, cycles {}",
                goro::gc::stats().cycles
            );
        });
    }
}

/// Parks with a large live stack holding lists all over it, so that the worker's read of each
/// takes long and the M wanting the goroutine back waits in `reclaim`; woken all the time, by
/// goroutines and by a std thread, while cycles run back to back and goroutines come and go.
#[inline(never)]
fn park_with_big_frame(rx: &Receiver<u64>, seed: u64) -> Option<u64> {
    let mut frame: [Option<Gc<Node>>; 4096] = std::array::from_fn(|_| None);
    for (i, slot) in frame.iter_mut().enumerate().step_by(256) {
        *slot = Some(chain(2, seed + i as u64));
    }
    let frame = std::hint::black_box(frame);
    let got = rx.recv();
    for (i, slot) in frame.iter().enumerate().step_by(256) {
        check(slot.as_ref().unwrap(), 2, seed + i as u64, "big frame");
    }
    got
}

fn big_frames(procs: usize) {
    let _dog = watchdog("big_frames", 300);
    run_checked(procs, move || {
        let mut wakers = Vec::new();
        let mut hs = Vec::new();
        for g in 0..64u64 {
            let (tx, rx) = channel::<u64>(1);
            wakers.push(tx);
            hs.push(goro::go(move || {
                let mut seed = g * 1_000_000;
                let mut n = 0;
                while let Some(s) = park_with_big_frame(&rx, seed) {
                    seed = s;
                    n += 1;
                }
                n
            }));
        }
        goro::gc::set_stress(true);
        let stop = Arc::new(AtomicBool::new(false));
        // A std thread waking goroutines too.
        let thread_wakers: Vec<_> = wakers.iter().step_by(2).cloned().collect();
        let t = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(5);
                let mut s = 10_000_000_000u64;
                while !stop.load(Ordering::Relaxed) {
                    let g = rng.below(thread_wakers.len());
                    if thread_wakers[g].try_send(s).is_ok() {
                        s += 4096;
                    }
                    if rng.below(50) == 0 {
                        goro::gc::collect();
                    }
                }
            })
        };
        // Goroutines that come and go (G reuse).
        let spawner = {
            let stop = stop.clone();
            goro::go(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let hs: Vec<_> = (0..50)
                        .map(|j| {
                            goro::go(move || {
                                let l = chain(2, k * 100 + j);
                                goro::yield_now();
                                check(&l, 2, k * 100 + j, "short");
                            })
                        })
                        .collect();
                    for h in hs {
                        h.join().unwrap();
                    }
                    k += 1;
                }
            })
        };
        let mut rng = Rng(6);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut s = 1u64 << 40;
        while Instant::now() < deadline {
            let g = rng.below(wakers.len());
            if wakers[g].try_send(s).is_ok() {
                s += 4096;
            }
            if rng.below(16) == 0 {
                goro::yield_now();
            }
        }
        goro::gc::set_stress(false);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        spawner.join().unwrap();
        drop(wakers);
        let n: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        println!(
            "procs {procs}: wakes {n}, cycles {}",
            goro::gc::stats().cycles
        );
    });
}

#[test]
fn big_frames_one_proc() {
    big_frames(1);
}

#[test]
fn big_frames_two_procs() {
    big_frames(2);
}

#[test]
fn big_frames_four_procs() {
    big_frames(4);
}

/// GOMAXPROCS changes while parked holders are woken and cycles run (Ms lose and regain Ps with
/// goroutines homed on them parked or claimed).
#[test]
fn max_procs_changes_during_parked_reads() {
    let _dog = watchdog("max_procs_changes", 240);
    run_checked(4, || {
        let n = 2000u64;
        let mut wakers = Vec::new();
        let mut hs = Vec::new();
        for g in 0..n {
            let (tx, rx) = channel::<u64>(1);
            wakers.push(tx);
            hs.push(goro::go(move || {
                let mut seed = g;
                let mut l = chain(3, seed);
                while let Some(s) = rx.recv() {
                    check(&l, 3, seed, "procs holder");
                    seed = s;
                    l = chain(3, seed);
                }
                check(&l, 3, seed, "procs holder end");
            }));
        }
        goro::gc::set_stress(true);
        let mut rng = Rng(4242);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut s = 1_000_000u64;
        let mut i = 0u64;
        while Instant::now() < deadline {
            let g = rng.below(n as usize);
            if wakers[g].try_send(s).is_ok() {
                s += 1;
            }
            i += 1;
            if i.is_multiple_of(2000) {
                goro::set_max_procs([1, 4, 2, 3][(i / 2000) as usize % 4]);
                goro::yield_now();
            }
        }
        goro::gc::set_stress(false);
        goro::set_max_procs(4);
        drop(wakers);
        for h in hs {
            h.join().unwrap();
        }
        println!(
            "sent {}, cycles {}",
            s - 1_000_000,
            goro::gc::stats().cycles
        );
    });
}
