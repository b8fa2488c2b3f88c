//! The pacer counts the malloc heap with the Gc heap (crates/gc/src/pacer.rs): Gc objects that
//! own large buffers raise the goal by what they own, as Go's goal counts its whole heap, so
//! the collector does not run a cycle per few MiB of Gc allocation while every cycle scans the
//! buffers.

use goro::{Gc, Trace};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(Trace)]
struct Owner {
    bytes: Vec<u8>,
}

#[derive(Trace)]
struct Small {
    words: [u64; 3],
}

const OWNERS: usize = 64;
const OWNED: usize = 512 << 10;

#[test]
fn buffers_owned_by_gc_objects_count_toward_the_goal() {
    let rt = goro::Runtime::builder().max_procs(1).build().unwrap();
    rt.run(|| {
        goro::gc::set_percent(100);
        let owners: Vec<Gc<Owner>> = (0..OWNERS)
            .map(|i| {
                Gc::new(Owner {
                    bytes: vec![i as u8; OWNED],
                })
            })
            .collect();
        // A cycle after the buffers exist sets the goal from what it found.
        goro::gc::collect();
        let settled = goro::gc::stats();
        assert!(
            settled.malloc_in_use >= OWNERS * OWNED,
            "the malloc heap is not counted: {settled}"
        );
        assert!(
            settled.heap_goal >= 2 * OWNERS * OWNED,
            "the goal leaves the owned buffers out: {settled}"
        );
        // 48 MiB of small garbage: against a goal of the Gc heap alone (its 4 MiB minimum) it
        // took a cycle every 3 MiB or so, ~16 here; against 32 MiB of buffers and their
        // doubling, two or three.
        let before = settled.cycles;
        for i in 0..(48usize << 20) / 32 {
            std::hint::black_box(Gc::new(Small {
                words: [i as u64; 3],
            }));
        }
        let after = goro::gc::stats();
        let cycles = after.cycles - before;
        assert!(
            cycles <= 5,
            "{cycles} cycles for 48 MiB of garbage beside 32 MiB of owned buffers: {after}"
        );
        for (i, owner) in owners.iter().enumerate() {
            assert!(owner.bytes.iter().all(|&b| b == i as u8));
        }
    });
}

/// Gc objects that each own a 1 MiB buffer and die at once: the Gc heap grows by 32 bytes per
/// object, so its 64 KiB batches alone would look at the pacer once per 2,048 objects (2 GiB of
/// buffers). Spans carved past the trigger make the next Gc allocation look.
#[test]
fn buffers_of_dead_gc_objects_bring_cycles_on() {
    let rt = goro::Runtime::builder().max_procs(1).build().unwrap();
    let (peak, cycles) = rt.run(|| {
        goro::gc::set_percent(100);
        let before = goro::gc::stats().cycles;
        let mut peak = 0;
        for i in 0..1024usize {
            let owner = Gc::new(Owner {
                bytes: vec![i as u8; 1 << 20],
            });
            // Gc is Copy: the object is garbage once this copy goes.
            std::hint::black_box(owner);
            if i % 8 == 0 {
                peak = peak.max(goro::gc::stats().malloc_in_use);
            }
        }
        (peak, goro::gc::stats().cycles - before)
    });
    assert!(
        cycles > 0,
        "1 GiB of buffers owned by dead Gc objects and no cycle"
    );
    assert!(
        peak <= 256 << 20,
        "the malloc heap reached {} MiB with 1 MiB live at a time ({cycles} cycles)",
        peak >> 20
    );
}
