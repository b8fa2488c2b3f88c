//! Many goroutines build Gc graphs, pass them over channels, keep some and drop others, across
//! at least 50 collections: what is kept stays intact, garbage is reclaimed.

mod common;

use common::{Tree, build, checksum};
use goro::Gc;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

const PRODUCERS: u64 = 4;

fn churn(procs: usize) {
    let runtime = goro::Runtime::builder().max_procs(procs).build().unwrap();
    runtime.run(|| {
        let first_cycle = goro::gc::stats().cycles;
        let mut kept: Vec<(u64, Gc<Tree>)> = Vec::new();
        let mut round = 0u64;
        while goro::gc::stats().cycles - first_cycle < 50 {
            let (tx, rx) = goro::chan::channel::<(u64, Gc<Tree>)>(4);
            for producer in 0..PRODUCERS {
                let tx = tx.clone();
                goro::go(move || {
                    for i in 0..25u64 {
                        let seed = round * 10_000 + producer * 100 + i;
                        let tree = build(6, seed);
                        // Garbage the producer makes and drops on the way.
                        let _ = build(5, seed + 7);
                        let link = build(2, seed + 3);
                        tree.link.set(Some(link));
                        tx.send((checksum(&tree), tree));
                    }
                });
            }
            drop(tx);
            for (index, (sum, tree)) in rx.iter().enumerate() {
                if index % 10 == 0 {
                    kept.push((sum, tree));
                }
            }
            if kept.len() > 200 {
                // Drop the oldest half: they become garbage while the rest stays.
                kept.drain(..100);
            }
            for (sum, tree) in &kept {
                assert_eq!(checksum(tree), *sum, "a kept tree changed (round {round})");
            }
            round += 1;
        }
        goro::gc::collect();
        let stats = goro::gc::stats();
        for (sum, tree) in &kept {
            assert_eq!(checksum(tree), *sum);
        }
        // Each kept tree: 127 nodes + 7 linked, under 128 bytes each. The `kept` buffer is
        // scanned over its whole capacity (a heap block is scanned whole, not up to a length
        // std may lower while user code runs: docs/soundness.md), so a tree dropped from it can
        // stay reachable from a spare slot until that slot is written again: the bound counts a
        // tree per slot.
        let kept_bytes = kept.capacity() * 134 * 128;
        assert!(
            stats.heap_live <= kept_bytes + (1 << 20),
            "heap_live {} for {} kept trees: garbage was not reclaimed",
            stats.heap_live,
            kept.len()
        );
        assert!(
            stats.freed_objects > 100_000,
            "only {} objects freed",
            stats.freed_objects
        );
        assert!(
            goro::alloc::stats().heap_inuse < 512 << 20,
            "heap grew without bound"
        );
    });
}

#[test]
fn graphs_survive_fifty_collections_on_one_proc() {
    churn(1);
}

#[test]
fn graphs_survive_fifty_collections_on_two_procs() {
    churn(2);
}
