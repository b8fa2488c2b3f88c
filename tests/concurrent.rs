//! Concurrent marking: mutators rewire a shared graph through `GcCell`s while the collector
//! marks beside them, with `gccheckmark` (a stop-the-world marking checks each cycle's and aborts
//! naming any object it missed) and `clobberfree` (a freed object reads as poison) on.

mod common;

use common::Rng;
use goro::gc::GcRefMut;
use goro::{Gc, GcCell, Trace};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(Trace)]
struct Node {
    value: u64,
    /// Derived from `value`: a poisoned or reused object fails the check.
    check: [u64; 2],
    next: GcCell<Option<Gc<Node>>>,
}

fn node(value: u64, next: Option<Gc<Node>>) -> Gc<Node> {
    Gc::new(Node {
        value,
        check: [value ^ 0x5a5a, value.wrapping_mul(7)],
        next: GcCell::new(next),
    })
}

fn assert_intact(node: &Node) {
    assert_eq!(
        node.check,
        [node.value ^ 0x5a5a, node.value.wrapping_mul(7)],
        "a reachable node was freed or overwritten"
    );
}

/// Slots of the shared graph; each holds a chain of nodes.
const SLOTS: usize = 64;

/// The slots are inline, so that every store into the graph goes through the barrier (a `Vec`'s
/// buffer would be memory without one, rescanned at termination anyway).
#[derive(Trace)]
struct Graph {
    slots: [GcCell<Option<Gc<Node>>>; SLOTS],
}

/// Walks every chain and checks every node; returns how many it saw.
fn check_graph(graph: &Graph) -> usize {
    let mut seen = 0;
    for slot in &graph.slots {
        let Ok(head) = slot.try_borrow() else {
            continue;
        };
        let mut at = *head;
        drop(head);
        while let Some(node) = at {
            assert_intact(&node);
            seen += 1;
            at = match node.next.try_borrow() {
                Ok(next) => *next,
                Err(_) => None,
            };
            if seen > 1_000_000 {
                break;
            }
        }
    }
    seen
}

/// One mutator's rewiring: every way a `Gc` can travel between cells (through the stack, a
/// `Vec` on the heap, a new object, a cell whose borrow stays open across yields, guards kept in
/// a `Vec`), keeping every node it handles reachable from the graph or its own frame.
fn rewire(graph: Gc<Graph>, seed: u64, stop: &AtomicBool, yields: bool) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        rounds += 1;
        let i = rng.below(SLOTS);
        let j = rng.below(SLOTS);
        match rng.below(8) {
            // Move a chain's head from one slot into a new node in another (a new object built
            // from a value taken out of a cell: allocated black, its value must be shaded). The
            // chain the new node displaces becomes garbage.
            0 => {
                let taken = graph.slots[i]
                    .try_borrow_mut()
                    .ok()
                    .and_then(|mut s| s.take());
                if let Some(taken) = taken {
                    let fresh = node(rng.next(), Some(taken));
                    let home = if graph.slots[j].try_borrow_mut().is_ok() {
                        j
                    } else {
                        i
                    };
                    if let Ok(mut to) = graph.slots[home].try_borrow_mut() {
                        *to = Some(fresh);
                    }
                }
            }
            // Swap two slots through the stack.
            1 => {
                if i != j
                    && let (Ok(mut a), Ok(mut b)) = (
                        graph.slots[i].try_borrow_mut(),
                        graph.slots[j].try_borrow_mut(),
                    )
                {
                    core::mem::swap(&mut *a, &mut *b);
                }
            }
            // Move heads out through a heap `Vec` and back in reverse, yielding in between (a
            // collection may start and mark while they are only in the Vec's buffer).
            2 => {
                let mut held: Vec<Gc<Node>> = Vec::new();
                for k in 0..4 {
                    let at = (i + k) % SLOTS;
                    if let Ok(mut s) = graph.slots[at].try_borrow_mut()
                        && let Some(n) = s.take()
                    {
                        held.push(n);
                    }
                }
                if yields {
                    goro::yield_now();
                }
                for k in 0..4 {
                    let Some(n) = held.pop() else { break };
                    let at = (j + k) % SLOTS;
                    match graph.slots[at].try_borrow_mut() {
                        Ok(mut s) if s.is_none() => *s = Some(n),
                        _ => held.insert(0, n),
                    }
                }
                // What found no free slot replaces a chain's head (that chain becomes garbage).
                for n in held {
                    if let Some(mut s) =
                        (0..SLOTS).find_map(|k| graph.slots[k].try_borrow_mut().ok())
                    {
                        *s = Some(n);
                    }
                }
            }
            // Hold a mutable borrow open across yields and write into it meanwhile: the cell is
            // found through its guard at termination (nothing is logged until it ends).
            3 => {
                if let Ok(mut s) = graph.slots[i].try_borrow_mut() {
                    for _ in 0..3 {
                        let fresh = node(rng.next(), s.take());
                        if yields {
                            goro::yield_now();
                        }
                        *s = Some(fresh);
                    }
                }
            }
            // Guards kept in a heap `Vec` (an open borrow reached only through a malloc block).
            4 => {
                let mut guards: Vec<GcRefMut<'_, Option<Gc<Node>>>> = Vec::new();
                for k in 0..3 {
                    if let Ok(g) = graph.slots[(i + k) % SLOTS].try_borrow_mut() {
                        guards.push(g);
                    }
                }
                if guards.len() >= 2 {
                    let first = guards[0].take();
                    if yields {
                        goro::yield_now();
                    }
                    let second = guards[1].replace(first.unwrap_or_else(|| node(rng.next(), None)));
                    *guards[0] = second;
                }
                drop(guards);
            }
            // Hang a chain's head behind another chain's head (a store into a cell of an object
            // that may be black already); what that head pointed to becomes garbage.
            5 => {
                let taken = graph.slots[i]
                    .try_borrow_mut()
                    .ok()
                    .and_then(|mut s| s.take());
                if let Some(taken) = taken {
                    let host = graph.slots[j].try_borrow().ok().and_then(|s| *s);
                    let hung = host.is_some_and(|host| {
                        !Gc::ptr_eq(&host, &taken)
                            && host.next.try_borrow_mut().is_ok_and(|mut next| {
                                *next = Some(taken);
                                true
                            })
                    });
                    if !hung && let Ok(mut s) = graph.slots[i].try_borrow_mut() {
                        *s = Some(taken);
                    }
                }
            }
            // Move nodes out of a heap `Vec` (marked by a first pause but not yet scanned,
            // perhaps) into a cell whose borrow then stays open across yields, with the guard on
            // the stack or kept in a `Vec`: at termination the last node is only in that cell.
            6 => {
                let mut held: Vec<Option<Gc<Node>>> =
                    (0..4).map(|_| Some(node(rng.next(), None))).collect();
                if yields {
                    goro::yield_now();
                }
                let mut guards = Vec::new();
                if let Ok(mut cell) = graph.slots[i].try_borrow_mut() {
                    for x in &mut held {
                        *cell = x.take();
                    }
                    drop(held);
                    if rng.below(2) == 0 {
                        guards.push(cell);
                    } else {
                        for _ in 0..4 {
                            if yields {
                                goro::yield_now();
                            }
                        }
                        drop(cell);
                    }
                }
                for _ in 0..4 {
                    if yields {
                        goro::yield_now();
                    }
                }
                drop(guards);
            }
            // Garbage, and a check of what is reachable.
            _ => {
                for _ in 0..16 {
                    node(rng.next(), None);
                }
                if rounds % 64 == 0 {
                    check_graph(&graph);
                }
            }
        }
    }
    rounds
}

/// Runs `mutate` on two goroutines and a std thread (seeded from `seeds`) over the object
/// `build` makes, while the test collects `cycles` times, `check`ing the object after each, with
/// gccheckmark and clobberfree on. `check` returns how many objects it saw.
fn mutate_during_collections<T: goro::gc::Trace + Send + Sync + 'static>(
    procs: usize,
    cycles: u64,
    build: fn() -> Gc<T>,
    mutate: fn(Gc<T>, u64, &AtomicBool, bool) -> u64,
    check: fn(&T) -> usize,
    seeds: [u64; 3],
) {
    common::run_clobbering(procs, move || {
        goro::gc::set_checkmark(true);
        let shared = build();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let mutators: Vec<_> = seeds[..2]
            .iter()
            .map(|&seed| {
                let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
                goro::go(move || {
                    let done = mutate(shared, seed, &stop, true);
                    rounds.fetch_add(done as usize, Ordering::Relaxed);
                })
            })
            .collect();
        let thread = {
            let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
            std::thread::spawn(move || {
                let done = mutate(shared, seeds[2], &stop, false);
                rounds.fetch_add(done as usize, Ordering::Relaxed);
            })
        };
        let before = goro::gc::stats().cycles;
        while goro::gc::stats().cycles < before + cycles {
            goro::gc::collect();
            check(&shared);
        }
        stop.store(true, Ordering::Relaxed);
        for m in mutators {
            m.join().unwrap();
        }
        thread.join().unwrap();
        goro::gc::collect();
        assert!(check(&shared) >= 1);
        goro::gc::set_checkmark(false);
        assert!(
            rounds.load(Ordering::Relaxed) > 0,
            "the mutators never ran beside the collections"
        );
    });
}

fn rewire_during_collections(procs: usize, cycles: u64) {
    mutate_during_collections(
        procs,
        cycles,
        || {
            Gc::new(Graph {
                slots: core::array::from_fn(|i| GcCell::new(Some(node(i as u64, None)))),
            })
        },
        rewire,
        check_graph,
        [0x9e37_79b9, 0x9e37_79ba, 0x51ed_270b],
    );
}

#[test]
fn rewiring_during_marking_misses_nothing_at_1_p() {
    rewire_during_collections(1, 200);
}

#[test]
fn rewiring_during_marking_misses_nothing_at_2_ps() {
    rewire_during_collections(2, 200);
}

#[test]
fn rewiring_during_marking_misses_nothing_at_4_ps() {
    rewire_during_collections(4, 200);
}

/// `collect` wants one whole cycle that starts after the call, as Go's `runtime.GC` does, and
/// takes one another goroutine starts: goroutines under gcstress start a cycle the moment the
/// last one ends, and a `collect` that waited to win the start itself lost the race over and
/// over (one call saw 225 cycles go by). Each call may see the cycle under way end, the one it
/// wants, and what else ends before it looks; a handful more would be the old starvation.
fn forced_collection_takes_a_cycle_others_start(procs: usize) {
    let _watchdog = common::watchdog("forced_collection_takes_a_cycle_others_start", 120);
    goro::Runtime::builder()
        .max_procs(procs)
        .build()
        .unwrap()
        .run(move || {
            let keep = common::build(10, 3);
            let sum = common::checksum(&keep);
            let stop = Arc::new(AtomicBool::new(false));
            let stressers: Vec<_> = (0..procs as u64)
                .map(|seed| {
                    let stop = Arc::clone(&stop);
                    goro::go(move || {
                        goro::gc::set_stress(true);
                        while !stop.load(Ordering::Relaxed) {
                            let _garbage = common::build(4, seed);
                            goro::yield_now();
                        }
                    })
                })
                .collect();
            let mut most = 0;
            for _ in 0..20 {
                let before = goro::gc::stats().cycles;
                goro::gc::collect();
                most = most.max(goro::gc::stats().cycles - before);
                assert_eq!(common::checksum(&keep), sum);
            }
            stop.store(true, Ordering::Relaxed);
            for stresser in stressers {
                stresser.join().unwrap();
            }
            goro::gc::set_stress(false);
            assert!(
                most <= 6,
                "one collect saw {most} cycles end: it waited to start its own"
            );
        });
}

#[test]
fn forced_collection_takes_a_cycle_others_start_at_1_p() {
    forced_collection_takes_a_cycle_others_start(1);
}

#[test]
fn forced_collection_takes_a_cycle_others_start_at_3_ps() {
    forced_collection_takes_a_cycle_others_start(3);
}

/// Nodes between the root and the holder of the moved value: the marker walks them one by one
/// (a chain gives it nothing to share), so it reaches the holder long after the mover has.
const CHAIN: u64 = 100_000;

/// What the channel carries: too large for the wait record to fit in the receiver's G, so the
/// record (and the value delivered into it) is on the receiver's stack.
type Delivery = (Gc<Node>, [u64; 12]);

/// A chain of [`CHAIN`] nodes ending in a holder whose `next` holds the node of `value`, and a
/// weak pointer to the holder. Its own frame, so that the holder's bits are left where `clobber`
/// overwrites them: only the chain may lead the marker to it.
#[inline(never)]
fn chain_to_holder(value: u64) -> (Gc<Node>, goro::gc::Weak<Node>) {
    let holder = node(u64::MAX, Some(node(value, None)));
    let weak = goro::gc::Weak::new(&holder);
    let head = (0..CHAIN).fold(holder, |next, value| node(value, Some(next)));
    (head, weak)
}

/// Breaks a chain into lone nodes: a stale word (in a stack or a buffer's spare capacity) that
/// a conservative scan finds then keeps one node, not the rest of the chain, and the end of the
/// runtime makes nothing large immortal.
fn unlink(head: Gc<Node>) {
    let mut next = Some(head);
    while let Some(node) = next {
        next = node.next.borrow_mut().take();
    }
}

/// Takes the node out of the holder and sends it to the receiver: a value moved, while the
/// collector marks, out of an object the marker has not reached into the wait record of a
/// goroutine parked since the cycle began.
#[inline(never)]
fn move_to_receiver(holder: &goro::gc::Weak<Node>, tx: &goro::chan::Sender<Delivery>) {
    let holder = holder.upgrade().expect("the holder is reachable");
    let moved = holder
        .next
        .borrow_mut()
        .take()
        .expect("the holder holds a node");
    tx.send((moved, [7; 12]));
}

/// Overwrites the stack below the caller's frame, where callees left words of the values they
/// moved, which a conservative scan would take for references.
#[inline(never)]
fn clobber() {
    let words = [0usize; 4096];
    std::hint::black_box(&words);
}

/// For each of `attempts`, on one P with automatic collection off: builds a chain ending in a
/// holder of a node valued `attempt`, lets `park` make a goroutine and park it, starts a forced
/// cycle (whose first pause, run on this M, scans the parked goroutine), calls `during` while
/// the cycle marks, holds the M without a safe point until the cycle is over (so the parked
/// goroutine cannot run before the second pause), and checks that the goroutine's result,
/// `finish`ed, is the node's value.
fn attempts_during_marking<P>(
    name: &'static str,
    attempts: u64,
    park: impl Fn(goro::gc::Weak<Node>) -> P + Send + 'static,
    during: impl Fn(&P) + Send + 'static,
    finish: impl Fn(P) -> u64 + Send + 'static,
) {
    let _watchdog = common::watchdog(name, 120);
    common::run_clobbering(1, move || {
        let previous = goro::gc::set_percent(-1);
        for attempt in 0..attempts {
            let (head, weak) = chain_to_holder(attempt);
            clobber();
            let parked = park(weak);
            goro::yield_now();
            let before = goro::gc::stats().cycles;
            let collector = goro::go(goro::gc::collect);
            goro::yield_now();
            during(&parked);
            clobber();
            while goro::gc::stats().cycles == before {
                std::hint::spin_loop();
            }
            collector.join().unwrap();
            assert_eq!(finish(parked), attempt);
            unlink(head);
        }
        goro::gc::set_percent(previous);
    });
}

/// A goroutine parked through a whole cycle has a value delivered into its wait record, on its
/// stack (the value is too large for the G): a node moved, while the collector marks, from an
/// object the marker has not reached. The second pause must scan the goroutine again, though
/// it has not run, or the cycle frees the node and the receiver reads poison.
fn delivery_to_a_parked_goroutine_during_marking(attempts: u64) {
    attempts_during_marking(
        "delivery_to_a_parked_goroutine_during_marking",
        attempts,
        |weak| {
            let (tx, rx) = goro::chan::channel::<Delivery>(0);
            let receiver = goro::go(move || {
                let (moved, _) = rx.recv().expect("the value arrives");
                assert_intact(&moved);
                moved.value
            });
            (weak, tx, receiver)
        },
        |(weak, tx, _)| move_to_receiver(weak, tx),
        |(_, _, receiver)| receiver.join().unwrap(),
    );
}

#[test]
fn a_value_delivered_to_a_goroutine_parked_through_the_cycle_survives_it() {
    delivery_to_a_parked_goroutine_during_marking(5);
}

/// Builds, again and again until told to stop, a large buffer whose words point into itself,
/// and drops it: the allocator hands the same block back each time.
fn rebuild_self_referencing_buffers(stop: &AtomicBool) -> usize {
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut words = vec![0usize; 40_000];
        let base = words.as_ptr() as usize;
        for (i, word) in words.iter_mut().enumerate() {
            *word = base + (i * 8 + 64) % (40_000 * 8);
        }
        std::hint::black_box(&words);
        rounds += 1;
    }
    rounds
}

/// Marking ends while a thread frees and allocates again, in a loop, a large buffer that points
/// into itself: each allocation clears the block's mark bit, and a marker that scheduled the
/// block again for every pointer into it it found would scan it for as long as the thread ran.
#[test]
fn marking_ends_while_a_thread_rebuilds_a_buffer_that_points_into_itself() {
    let _watchdog = common::watchdog("rebuilds_a_buffer_that_points_into_itself", 120);
    for procs in [1, 2] {
        // The thread runs only while this runtime does (another test's must not share the CPU
        // with it); it goes on through the runtime's end, which marks the heap once more.
        let (stop, builder) = common::run_clobbering(procs, || {
            let stop = Arc::new(AtomicBool::new(false));
            let builder = {
                let stop = stop.clone();
                std::thread::spawn(move || rebuild_self_referencing_buffers(&stop))
            };
            for _ in 0..30 {
                let keep = node(1, Some(node(2, None)));
                goro::gc::collect();
                assert_intact(&keep);
            }
            (stop, builder)
        });
        goro::gc::wait_for_retirement();
        stop.store(true, Ordering::Relaxed);
        assert!(builder.join().unwrap() > 0);
    }
}

/// Takes the node out of the holder and stores it in `slot`, on a std thread that
/// `std::thread::scope` lent a reference into a parked goroutine's stack.
#[inline(never)]
fn move_into_slot(holder: &goro::gc::Weak<Node>, slot: &mut Option<Gc<Node>>) {
    let holder = holder.upgrade().expect("the holder is reachable");
    *slot = holder.next.borrow_mut().take();
}

/// A parked goroutine's stack is not only changed by the goroutine: a std thread that
/// `std::thread::scope` lent a reference into it may write a `Gc` there while the goroutine
/// waits on a goro channel inside the scope. Here the thread moves a node, while the collector
/// marks, from an object the marker has not reached into such a stack slot: the second pause
/// must scan the parked goroutine again, or the cycle frees the node.
fn write_into_a_parked_goroutines_stack_during_marking(attempts: u64) {
    attempts_during_marking(
        "write_into_a_parked_goroutines_stack",
        attempts,
        |weak| {
            let (tx, rx) = goro::chan::channel::<()>(0);
            let (go_on, moved) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let parked = {
                let (go_on, moved) = (go_on.clone(), moved.clone());
                goro::go(move || {
                    let mut slot: Option<Gc<Node>> = None;
                    std::thread::scope(|scope| {
                        let slot = &mut slot;
                        scope.spawn(move || {
                            while !go_on.load(Ordering::Acquire) {
                                std::hint::spin_loop();
                            }
                            move_into_slot(&weak, slot);
                            clobber();
                            moved.store(true, Ordering::Release);
                        });
                        // Parks the goroutine while the scoped thread may still write.
                        rx.recv();
                    });
                    let node = slot.expect("the thread moved the node");
                    assert_intact(&node);
                    node.value
                })
            };
            (tx, go_on, moved, parked)
        },
        |(_, go_on, moved, _)| {
            go_on.store(true, Ordering::Release);
            while !moved.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        },
        |(tx, _, _, parked)| {
            tx.send(());
            parked.join().unwrap()
        },
    );
}

#[test]
fn a_gc_a_scoped_thread_writes_into_a_parked_goroutines_stack_survives_the_cycle() {
    write_into_a_parked_goroutines_stack_during_marking(5);
}

/// Recurses `depth` frames of a kilobyte each, through `maybe_grow`, so that a goroutine's stack
/// grows segments and drops them again between two of its parks.
#[inline(never)]
fn deep(depth: u32, seed: u64) -> u64 {
    goro::stack::maybe_grow(16 * 1024, || {
        let frame = std::hint::black_box([seed; 128]);
        if depth == 0 {
            frame[7]
        } else {
            deep(depth - 1, frame[3].wrapping_add(1))
        }
    })
}

/// Goroutines parked at each cycle's start hold the only references to their nodes, on their
/// stacks. The mark worker reads them once the world runs again, each held parked while it
/// reads, while they are woken, grow and drop stack segments, exit, and are replaced by new
/// goroutines on the reused Gs; a std thread collects throughout, with gccheckmark and
/// clobberfree on: every node stays intact and no cycle misses one. (The claim that keeps a
/// goroutine parked while it is read is checked by the loom models in goro-sched's shrink.rs,
/// which fail without it; this runs the whole path against the churn it must survive.)
fn parked_goroutines_wake_grow_and_exit_while_the_worker_reads_them(procs: usize) {
    const LIVE: u64 = 200;
    const RECEIVES: usize = 4;
    const ROUNDS: u64 = 30;
    let _watchdog = common::watchdog("parked_goroutines_wake_grow_and_exit", 120);
    goro::Runtime::builder()
        .max_procs(procs)
        .stack_size(128 * 1024)
        .build()
        .unwrap()
        .run(move || {
            goro::gc::set_clobber_free(true);
            goro::gc::set_checkmark(true);
            let stop = Arc::new(AtomicBool::new(false));
            let collector = {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut cycles = 0;
                    while !stop.load(Ordering::Relaxed) {
                        goro::gc::collect();
                        cycles += 1;
                    }
                    cycles
                })
            };
            let mut parked = Vec::new();
            let mut next = 0;
            for round in 0..ROUNDS {
                while (parked.len() as u64) < LIVE {
                    let (tx, rx) = goro::chan::channel::<u64>(0);
                    let value = next;
                    next += 1;
                    let handle = goro::go(move || {
                        let mine = node(value, Some(node(value + 1, None)));
                        clobber();
                        let mut depth_sum = 0;
                        while let Some(sent) = rx.recv() {
                            assert_intact(&mine);
                            // 0 to 300 frames of a kilobyte or more: past the 128 KiB slot,
                            // into segments.
                            depth_sum += deep((sent % 300) as u32, sent);
                            assert_intact(&mine);
                        }
                        std::hint::black_box(depth_sum);
                        let next = (*mine.next.borrow()).expect("the second node");
                        assert_intact(&next);
                        mine.value
                    });
                    parked.push((value, tx, RECEIVES, handle));
                }
                // One wake-up each; a goroutine that has had its last one exits, and a new one
                // takes its place (on its G, reused).
                let mut waiting = Vec::with_capacity(parked.len());
                for (value, tx, left, handle) in parked {
                    tx.send(round * 1_000 + value);
                    if left > 1 {
                        waiting.push((value, tx, left - 1, handle));
                    } else {
                        drop(tx);
                        assert_eq!(handle.join().unwrap(), value);
                    }
                }
                parked = waiting;
            }
            for (value, tx, _, handle) in parked {
                drop(tx);
                assert_eq!(handle.join().unwrap(), value);
            }
            stop.store(true, Ordering::Relaxed);
            let cycles = collector.join().unwrap();
            goro::gc::set_checkmark(false);
            assert!(cycles > 0, "no collection ran beside the goroutines");
        });
}

#[test]
fn parked_goroutines_wake_grow_and_exit_while_the_worker_reads_them_at_1_p() {
    parked_goroutines_wake_grow_and_exit_while_the_worker_reads_them(1);
}

#[test]
fn parked_goroutines_wake_grow_and_exit_while_the_worker_reads_them_at_2_ps() {
    parked_goroutines_wake_grow_and_exit_while_the_worker_reads_them(2);
}

/// A pointer-free object (`Trace::POINTER_FREE`): marking sets its bit without reading it.
#[derive(Trace)]
struct Payload {
    words: [u64; 31],
}

/// Slots of pointer-free payloads, each word of a payload its own value.
#[derive(Trace)]
struct Payloads {
    slots: [GcCell<Gc<Payload>>; SLOTS],
}

fn payload(value: u64) -> Gc<Payload> {
    Gc::new(Payload { words: [value; 31] })
}

/// What a slot holds, unless another mutator is writing it.
fn read_slot(slot: &GcCell<Gc<Payload>>) -> Option<Gc<Payload>> {
    slot.try_borrow().ok().map(|held| *held)
}

/// Stores into a slot unless another mutator is using it; returns whether it did.
fn write_slot(slot: &GcCell<Gc<Payload>>, value: Gc<Payload>) -> bool {
    slot.try_borrow_mut().map(|mut held| *held = value).is_ok()
}

fn assert_payload_intact(payload: &Payload) {
    assert!(
        payload.words.iter().all(|&w| w == payload.words[0]),
        "a reachable pointer-free object was freed or overwritten"
    );
}

/// Checks every payload the slots hold; returns how many it saw.
fn check_payloads(payloads: &Payloads) -> usize {
    let mut seen = 0;
    for slot in &payloads.slots {
        if let Some(held) = read_slot(slot) {
            assert_payload_intact(&held);
            seen += 1;
        }
    }
    seen
}

/// One mutator's churn: replaces payloads, swaps them between slots through its stack, and
/// moves them out into a `Vec` (yielding while they are only there) and back; checks what it
/// reads.
fn churn_payloads(payloads: Gc<Payloads>, seed: u64, stop: &AtomicBool, yields: bool) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        rounds += 1;
        churn_payloads_once(&payloads, &mut rng, yields);
    }
    rounds
}

fn churn_payloads_once(payloads: &Payloads, rng: &mut Rng, yields: bool) {
    let (i, j) = (rng.below(SLOTS), rng.below(SLOTS));
    match rng.below(3) {
        0 => {
            write_slot(&payloads.slots[i], payload(rng.next()));
        }
        1 => {
            if let (Some(a), Some(b)) =
                (read_slot(&payloads.slots[i]), read_slot(&payloads.slots[j]))
                && write_slot(&payloads.slots[i], b)
            {
                write_slot(&payloads.slots[j], a);
            }
        }
        _ => {
            let mut held: Vec<Gc<Payload>> = Vec::new();
            for k in 0..4 {
                let slot = &payloads.slots[(i + k) % SLOTS];
                if let Some(p) = read_slot(slot)
                    && write_slot(slot, payload(rng.next()))
                {
                    held.push(p);
                }
            }
            if yields {
                goro::yield_now();
            }
            for (k, p) in held.into_iter().enumerate() {
                assert_payload_intact(&p);
                write_slot(&payloads.slots[(j + k) % SLOTS], p);
            }
        }
    }
}

/// Pointer-free objects churned by two goroutines and a std thread while collections run, with
/// gccheckmark and clobberfree on: none is missed (marked without being read), none reachable
/// is freed.
fn churn_pointer_free_objects_during_collections(procs: usize, cycles: u64) {
    mutate_during_collections(
        procs,
        cycles,
        || {
            Gc::new(Payloads {
                slots: core::array::from_fn(|i| GcCell::new(payload(i as u64))),
            })
        },
        churn_payloads,
        check_payloads,
        [0x2545_f491, 0x2545_f492, 0x4f6c_dd1d],
    );
}

#[test]
fn churning_pointer_free_objects_during_marking_misses_nothing_at_1_p() {
    churn_pointer_free_objects_during_collections(1, 200);
}

#[test]
fn churning_pointer_free_objects_during_marking_misses_nothing_at_2_ps() {
    churn_pointer_free_objects_during_collections(2, 200);
}
