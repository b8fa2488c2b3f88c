//! A cache of `Gc` objects under churn, and the stale words that keep removed entries alive.
//!
//! goro scans a container's storage over its whole allocation, not through its length (tracing
//! through a length that user code can lower mid-iteration is unsound: docs/soundness.md). So a
//! value a container moved out of its storage, and left behind as bytes, still reads as a
//! pointer: a `HashMap<u64, Gc<T>>` keeps every removed entry's object alive until a later
//! insert reuses its bucket. Storing `Option<Gc<T>>` and setting the value to `None` before
//! removing it leaves zeros behind instead.
//!
//! Run: `cargo run --release --example gc_cache`. It churns a million entries through a cache
//! of 100,000 both ways and prints the live heap each cycle found at the end, against the bytes
//! the cache really holds.

use goro::{Gc, Trace};
use std::collections::HashMap;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(Trace)]
struct Entry {
    key: u64,
    payload: [u64; 30],
}

/// Entries the cache holds at any time.
const LIVE: u64 = 100_000;
/// Entries inserted (and as many removed) after it is full.
const CHURN: u64 = 1_000_000;

fn entry(key: u64) -> Option<Gc<Entry>> {
    Some(Gc::new(Entry {
        key,
        payload: [key; 30],
    }))
}

/// Churns the cache; with `clear_first`, each value is set to `None` before its entry is removed.
/// Returns the live heap the last collection found and the cache's own count of live bytes.
fn churn(clear_first: bool) -> (usize, usize) {
    goro::run(move || {
        let mut cache: HashMap<u64, Option<Gc<Entry>>> = (0..LIVE).map(|k| (k, entry(k))).collect();
        for key in LIVE..LIVE + CHURN {
            let oldest = key - LIVE;
            if clear_first && let Some(value) = cache.get_mut(&oldest) {
                *value = None;
            }
            cache.remove(&oldest);
            cache.insert(key, entry(key));
        }
        goro::gc::collect();
        goro::gc::collect();
        let stats = goro::gc::stats();
        let held: usize = cache
            .values()
            .flatten()
            .map(|e| {
                assert_eq!(e.payload[29], e.key);
                size_of::<Entry>()
            })
            .sum();
        (stats.heap_live, held)
    })
}

fn main() {
    for (how, clear_first) in [("remove", false), ("set to None, then remove", true)] {
        let (live, held) = churn(clear_first);
        println!(
            "{how:>26}: live heap {:6.1} MiB for {:5.1} MiB of entries ({:.2}x)",
            live as f64 / (1 << 20) as f64,
            held as f64 / (1 << 20) as f64,
            live as f64 / held as f64,
        );
    }
}
