//! The `GcCell` write barrier: a store through `borrow_mut` (borrow, write one `Option<Gc>`,
//! release), against the same store through `RefCell::borrow_mut`.
//!
//! - `refcell_store`: `RefCell<Option<Gc<Leaf>>>` cells in a boxed slice (no barrier);
//! - `gccell_store_marking_off`: `GcCell<Option<Gc<Leaf>>>` cells in a `Gc` object, no cycle
//!   running (the barrier's one load and branch);
//! - `gccell_store_marking_on`: the same cells while cycles run: a std thread holds a heap of
//!   lists (`GORO_BARRIER_HEAP_MB`, default 128 MB of payload) and calls `goro::gc::collect()`
//!   back to back. Only the public API is used, and it does not say when marking is on: the
//!   loop is timed in chunks of [`CHUNK`] stores, and a chunk counts only if one `collect()`
//!   call was in flight from its start to its end (else it runs again). The figure is therefore
//!   the mean cost of a store made while `collect()` runs, not of a store that finds marking on:
//!   a `collect()` call also holds its two pauses, the wait before the first and the condemning
//!   after the second, and a store made while marking is on may wait for the marker when the
//!   barrier's log is full. How many stores found marking on is counted outside the program
//!   (a uprobe on `goro_gc::barrier::log_range`, or callgrind's call count below).
//!
//! Each loop writes cell `i % 1024`, so that the barrier logs a different cell each time (a
//! thread that rewrites the cell it logged last is not logged again).
//!
//! `cargo bench -p goro-bench --bench barrier`
//!
//! Instruction counts: with `GORO_BARRIER_CALLGRIND=N` the binary skips criterion and runs N
//! stores of each kind (the marking-on kind in chunks inside `collect()` calls, as above), for
//! `valgrind --tool=callgrind --demangle=no target/release/deps/barrier-*` and
//! `callgrind_annotate --inclusive=yes`: each kind has its own copy of `store_loop` (the `KIND`
//! parameter), whose count divided by N is the instructions per store, loop included (the
//! same loop for each kind); `callgrind_annotate --tree=calling` gives the calls of
//! `goro_gc::barrier::log_range`, the stores that found marking on (under valgrind, which runs
//! one thread at a time, this varies from run to run, down to none).

use criterion::Criterion;
use goro::{Gc, GcCell, Trace};
use std::cell::RefCell;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

/// Cells written in turn.
const CELLS: usize = 1024;
/// Stores timed at once with marking on.
const CHUNK: u64 = 10_000;

/// What the cells hold.
#[derive(Trace)]
struct Leaf {
    value: u64,
}

/// The `GcCell`s, inside a collected object.
#[derive(Trace)]
struct Cells {
    cells: Box<[GcCell<Option<Gc<Leaf>>>]>,
}

/// A cell that `store_loop` can write.
trait Store {
    fn store(&self, leaf: Gc<Leaf>);
}

impl Store for GcCell<Option<Gc<Leaf>>> {
    #[inline(always)]
    fn store(&self, leaf: Gc<Leaf>) {
        *self.borrow_mut() = Some(leaf);
    }
}

impl Store for RefCell<Option<Gc<Leaf>>> {
    #[inline(always)]
    fn store(&self, leaf: Gc<Leaf>) {
        *self.borrow_mut() = Some(leaf);
    }
}

/// `n` stores of `leaf` into `cells[i % CELLS]`. `KIND` only makes one copy of the loop per
/// kind of measurement (0: RefCell, 1: GcCell marking off, 2: GcCell marking on), so that
/// callgrind counts them apart.
#[inline(never)]
fn store_loop<C: Store, const KIND: u8>(cells: &[C], leaf: Gc<Leaf>, n: u64) {
    for i in 0..n {
        cells[i as usize % CELLS].store(leaf);
    }
}

/// A list node of the background heap.
#[derive(Trace)]
struct Node {
    next: Option<Gc<Node>>,
    value: u64,
}

/// The thread that keeps a cycle running: `generation` is odd while a `collect()` call is in
/// flight and counts the calls.
struct Collector {
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Builds the heap (`mb` megabytes of 16-byte list nodes in lists of 4096) and starts
    /// collecting back to back.
    fn start(mb: usize) -> Collector {
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (generation, stop) = (generation.clone(), stop.clone());
            std::thread::spawn(move || {
                let nodes = mb * 1_000_000 / 16;
                let lists: Vec<Gc<Node>> = (0..nodes.div_ceil(4096))
                    .map(|l| {
                        let mut head = Gc::new(Node {
                            next: None,
                            value: l as u64,
                        });
                        for i in 1..4096 {
                            head = Gc::new(Node {
                                next: Some(head),
                                value: i,
                            });
                        }
                        head
                    })
                    .collect();
                goro::gc::collect();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    // Release: pairs with the Acquire loads in `in_window`.
                    generation.fetch_add(1, Ordering::Release);
                    goro::gc::collect();
                    generation.fetch_add(1, Ordering::Release);
                }
                goro::gc::keep_alive(&lists);
            })
        };
        // A goroutine waits on a std channel through `blocking`, which hands its P over.
        goro::blocking(|| ready_rx.recv().unwrap());
        Collector {
            generation,
            stop,
            thread: Some(thread),
        }
    }

    /// Runs `body` once inside a single `collect()` call, retrying until it fits in one, and
    /// returns its time.
    fn in_window(&self, mut body: impl FnMut()) -> Duration {
        loop {
            // Acquire: pairs with the Release increments of the collecting thread.
            let before = self.generation.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                std::hint::spin_loop();
                continue;
            }
            let start = Instant::now();
            body();
            let elapsed = start.elapsed();
            if self.generation.load(Ordering::Acquire) == before {
                return elapsed;
            }
        }
    }

    /// `n` stores in chunks, each inside one `collect()` call; returns their summed time.
    fn stores(&self, cells: &[GcCell<Option<Gc<Leaf>>>], leaf: Gc<Leaf>, n: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(CHUNK);
            total += self.in_window(|| store_loop::<_, 2>(cells, leaf, chunk));
            done += chunk;
        }
        total
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            goro::blocking(|| thread.join().unwrap());
        }
    }
}

fn bench_main() {
    let leaf = Gc::new(Leaf { value: 7 });
    let gc_cells = Gc::new(Cells {
        cells: (0..CELLS).map(|_| GcCell::new(None)).collect(),
    });
    let ref_cells: Box<[RefCell<Option<Gc<Leaf>>>]> =
        (0..CELLS).map(|_| RefCell::new(None)).collect();
    let heap_mb = std::env::var("GORO_BARRIER_HEAP_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);

    if let Some(n) = std::env::var("GORO_BARRIER_CALLGRIND")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let start = Instant::now();
        store_loop::<_, 0>(&ref_cells, leaf, n);
        let refcell = start.elapsed();
        let start = Instant::now();
        store_loop::<_, 1>(&gc_cells.cells, leaf, n);
        let off = start.elapsed();
        let collector = Collector::start(heap_mb);
        let on = collector.stores(&gc_cells.cells, leaf, n);
        drop(collector);
        println!(
            "{n} stores each: RefCell {refcell:?}, GcCell marking off {off:?}, GcCell inside \
             collect() {on:?} (heap {heap_mb} MB)"
        );
        goro::gc::keep_alive(&gc_cells);
        return;
    }

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("refcell_store", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            store_loop::<_, 0>(black_box(&ref_cells), leaf, iters);
            start.elapsed()
        })
    });
    c.bench_function("gccell_store_marking_off", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            store_loop::<_, 1>(black_box(&gc_cells.cells), leaf, iters);
            start.elapsed()
        })
    });
    let collector = Collector::start(heap_mb);
    c.bench_function("gccell_store_marking_on", |b| {
        b.iter_custom(|iters| collector.stores(black_box(&gc_cells.cells), leaf, iters))
    });
    drop(collector);
    goro::gc::keep_alive(&gc_cells);
    goro::gc::keep_alive(&leaf);
    c.final_summary();
}

fn main() {
    // Criterion runs on the main goroutine, in the default 1 MiB slot: its analysis fits there.
    goro::run(bench_main);
}
