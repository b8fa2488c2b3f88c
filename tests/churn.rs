//! A program that churns 10 GiB through a 100 MiB live set: the collector keeps the heap near the
//! pacer's goal (GOGC) or under the memory limit (GOMEMLIMIT), however fast goroutines allocate.
//!
//! Two goroutines each replace, one at a time and at random, the objects of a ring of their
//! own: a 16 KiB payload (no pointers) and a small node that links it, stored through a
//! `GcCell`. The heap is sampled from the allocator's own count of the bytes in Gc spans (what
//! the collector's heap costs, free slots inside in-use spans included) every 16 replacements.

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

use goro::gc::{Trace, Tracer};
use goro::{Gc, GcCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const MIB: usize = 1 << 20;
/// Bytes of payload per object.
const PAYLOAD: usize = 16 << 10;
/// Bytes of payload live at any time (both rings).
const LIVE: usize = 100 * MIB;
/// Bytes of payload allocated in all.
const CHURN: usize = 10 << 30;
const GOROUTINES: usize = 2;

/// Pointer-free bytes: traced as nothing.
struct Payload([u64; PAYLOAD / 8]);

// SAFETY: holds no Gc.
unsafe impl Trace for Payload {
    fn trace(&self, _: &mut Tracer) {}
}

#[derive(goro::Trace)]
struct Node {
    payload: Gc<Payload>,
    serial: u64,
}

#[derive(goro::Trace)]
struct Ring {
    slots: Vec<GcCell<Option<Gc<Node>>>>,
}

/// Over the run: the most the heap's spans held, the most the pacer's heap went over the goal in
/// effect when it was sampled, the highest goal, and the largest live heap a cycle found.
#[derive(Default)]
struct Peaks {
    heap: AtomicUsize,
    over_goal: AtomicUsize,
    goal: AtomicUsize,
    live: AtomicUsize,
    /// The most malloc heap in use seen: the pacer counts it with the Gc heap.
    malloc: AtomicUsize,
}

fn node(serial: u64) -> Gc<Node> {
    let mut payload = Payload([0; PAYLOAD / 8]);
    payload.0[0] = serial;
    payload.0[PAYLOAD / 8 - 1] = !serial;
    Gc::new(Node {
        payload: Gc::new(payload),
        serial,
    })
}

fn check(node: &Node) {
    assert_eq!(node.payload.0[0], node.serial, "a live payload was freed");
    assert_eq!(node.payload.0[PAYLOAD / 8 - 1], !node.serial);
}

/// One goroutine's share: a ring of `LIVE / GOROUTINES` bytes of payload, replaced at random
/// until `CHURN / GOROUTINES` bytes were allocated.
fn churn(seed: u64, peaks: &Peaks) {
    let slots = LIVE / GOROUTINES / PAYLOAD;
    let ring = Gc::new(Ring {
        slots: (0..slots)
            .map(|i| GcCell::new(Some(node(seed << 32 | i as u64))))
            .collect(),
    });
    let mut rng = seed;
    for step in 0..CHURN / GOROUTINES / PAYLOAD {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let slot = &ring.slots[rng as usize % slots];
        let old = slot.replace(Some(node(seed << 32 | (slots + step) as u64)));
        check(&old.expect("every slot holds a node"));
        if step % 16 == 0 {
            let gc = goro::gc::stats();
            let heap = goro::alloc::stats().gc_spans_inuse_bytes;
            peaks.heap.fetch_max(heap, Ordering::Relaxed);
            // The pacer's heap (live at the last cycle plus what was allocated since) against
            // the goal in effect: the allocator's in-use spans also hold the free slots the
            // sweep left among live objects, which later allocations fill.
            let over = gc.heap_alloc.saturating_sub(gc.heap_goal);
            peaks.over_goal.fetch_max(over, Ordering::Relaxed);
            peaks.goal.fetch_max(gc.heap_goal, Ordering::Relaxed);
            peaks.live.fetch_max(gc.heap_live, Ordering::Relaxed);
            peaks.malloc.fetch_max(gc.malloc_in_use, Ordering::Relaxed);
        }
    }
    for slot in &ring.slots {
        check(&slot.get().expect("every slot holds a node"));
    }
}

/// Runs the churn in a runtime built by `builder`; returns the peaks and the cycles it took.
fn run(builder: goro::Builder) -> (Peaks, u64) {
    let peaks = Arc::new(Peaks::default());
    let cycles = builder.max_procs(2).build().unwrap().run({
        let peaks = peaks.clone();
        move || {
            let before = goro::gc::stats().cycles;
            let workers: Vec<_> = (1..=GOROUTINES as u64)
                .map(|seed| {
                    let peaks = peaks.clone();
                    goro::go(move || churn(seed, &peaks))
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
            goro::gc::stats().cycles - before
        }
    });
    let peaks = Arc::into_inner(peaks).expect("the goroutines are done");
    let mib = |peak: &AtomicUsize| peak.load(Ordering::Relaxed) / MIB;
    eprintln!(
        "churned {} GiB through {} MiB in {cycles} cycles: spans in use at most {} MiB, pacer's \
         heap at most {} MiB over the goal; highest goal {} MiB, largest live heap {} MiB",
        CHURN >> 30,
        LIVE / MIB,
        mib(&peaks.heap),
        mib(&peaks.over_goal),
        mib(&peaks.goal),
        mib(&peaks.live),
    );
    (peaks, cycles)
}

/// How far the heap may go past a goal: allocation past the goal waits a little per batch, and
/// an eighth past it waits for the cycle to decide (`pacer::ceiling`); a batch per thread on
/// top.
fn slack(goal: usize) -> usize {
    goal / 8 + 8 * MIB
}

/// The live heap a cycle may find, against the payload live. Each 16 KiB payload takes a slot
/// of 18 KiB (its size class, with its header), so 112.5 MiB are truly live; a concurrent cycle
/// also keeps what was allocated while it marked (black) and what was dropped meanwhile
/// (floating garbage). With the trigger at 70 % of the runway and the wait at an eighth past
/// the goal, at most 0.55 of the last live heap found is allocated while marking, so what a
/// cycle finds stays under 1 / 0.45 of the true live heap, however slowly it marks.
const LIVE_FOUND_AT_MOST: usize = LIVE * 25 / 10;

#[test]
fn ten_gib_through_a_hundred_mib_live_set_stays_near_the_goal() {
    let (peaks, cycles) = run(goro::Runtime::builder().gc_percent(100));
    let goal = peaks.goal.load(Ordering::Relaxed);
    let over = peaks.over_goal.load(Ordering::Relaxed);
    assert!(
        over <= slack(goal),
        "the heap went {} MiB over its goal",
        over / MIB
    );
    let live = peaks.live.load(Ordering::Relaxed);
    assert!(
        live <= LIVE_FOUND_AT_MOST,
        "a cycle found {} MiB live for {} MiB of payload",
        live / MIB,
        LIVE / MIB
    );
    // GOGC=100: the goal is twice the live heap found (Gc objects and the malloc heap), plus
    // the roots.
    let malloc = peaks.malloc.load(Ordering::Relaxed);
    assert!(
        goal <= 2 * (live + malloc) + 4 * MIB,
        "goal {} MiB for {} MiB live and {} MiB of malloc heap",
        goal / MIB,
        live / MIB,
        malloc / MIB
    );
    // The memory the heap costs: free slots are reused and empty spans given back after each
    // cycle, so the spans hold little more than the heap the pacer counts.
    let heap = peaks.heap.load(Ordering::Relaxed);
    assert!(
        heap <= goal + slack(goal),
        "the heap's spans reached {} MiB for a goal of at most {} MiB",
        heap / MIB,
        goal / MIB
    );
    // 10 GiB at about 100 MiB of runway per cycle.
    assert!(cycles >= 40, "only {cycles} cycles for 10 GiB");
}

#[test]
fn ten_gib_through_a_hundred_mib_live_set_stays_under_the_memory_limit() {
    let limit = 150 * MIB;
    let (peaks, cycles) = run(goro::Runtime::builder().gc_percent(-1).memory_limit(limit));
    // The goal is the limit, or an eighth over the live heap when that is above it (so that a
    // heap over its limit does not collect back to back for ever).
    let goal = peaks.goal.load(Ordering::Relaxed);
    let live = peaks.live.load(Ordering::Relaxed) + peaks.malloc.load(Ordering::Relaxed);
    assert!(
        goal <= limit.max(live + live / 8),
        "goal {} MiB over the limit and the live heap's eighth ({} MiB live)",
        goal / MIB,
        live / MIB
    );
    let over = peaks.over_goal.load(Ordering::Relaxed);
    assert!(
        over <= slack(goal),
        "the heap went {} MiB over its goal",
        over / MIB
    );
    // The spans holding it, free slots and all.
    let heap = peaks.heap.load(Ordering::Relaxed);
    assert!(
        heap <= goal + slack(goal),
        "the heap's spans reached {} MiB under a limit of {} MiB (goal {} MiB)",
        heap / MIB,
        limit / MIB,
        goal / MIB
    );
    // GOGC off: only the limit starts cycles, every ~40 MiB of runway.
    assert!(cycles >= 100, "only {cycles} cycles for 10 GiB");
}
