//! std containers inside collected objects.
//!
//! std lowers a container's `len` while user code runs (`Vec::extract_if`, `VecDeque::drain`,
//! `Vec::splice` with a user iterator, `BinaryHeap::peek_mut`, `Vec::retain`, `Vec::drain`) and
//! drops elements before fixing `len` (`Vec::dedup_by`): a collection started from that user code
//! must keep every element the container still owns and never trace one it already dropped. A
//! `HashMap`'s hasher may hold the only `Gc` to an object.
//!
//! Each container here is held only by a `Gc` object (never by a stack local, which the
//! conservative stack scan would find). Each element records its death (the sweep drops it), and
//! carries a payload derived from its id, which the garbage allocated after each collection
//! overwrites when it reuses a freed slot: an element freed while its container still held it
//! fails `assert_intact` either way.
//!
//! A pointer into the storage in any scanned stack slot, live or stale, would keep it alive
//! whatever the tracer does. So containers are built in frames that are dead afterwards, the
//! stack below the caller is cleared before each collection, and each round's storage is leaked,
//! so that no later round gets its address. Where std itself keeps a live pointer into the buffer
//! while user code runs (`retain`'s closure argument, `drain`'s slice iterator), the test guards
//! the behaviour only: it passes with a tracer that trusts `len` too.

use goro::gc::{Trace, Tracer};
use goro::{Gc, GcCell};
use std::collections::binary_heap::PeekMut;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, LinkedList, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

/// Elements per container.
const N: u64 = 600;
/// A collection (and a batch of garbage) every this many user calls.
const STEP: u64 = 40;
/// Garbage nodes allocated after each collection, to reuse the slots it freed.
const GARBAGE: u64 = 4_000;
/// Each scenario runs this many times per runtime.
const ROUNDS: usize = 3;

/// A container element, ordered by `id`; `seal` tells whether its slot was reused.
#[derive(goro::Trace)]
struct Node {
    id: u64,
    seal: u64,
    death: DeathNote,
}

impl PartialEq for Node {
    fn eq(&self, other: &Node) -> bool {
        self.id == other.id
    }
}

impl Eq for Node {}

impl PartialOrd for Node {
    fn partial_cmp(&self, other: &Node) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Node {
    fn cmp(&self, other: &Node) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl Hash for Node {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// Serials (unique across the test binary) of the elements the sweep has dropped.
static DEAD: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Records its element's death under its serial (0: garbage, not recorded).
struct DeathNote(u64);

impl Drop for DeathNote {
    fn drop(&mut self) {
        if self.0 != 0 {
            DEAD.lock().unwrap().insert(self.0);
        }
    }
}

// SAFETY: owns no `Gc`; its drop touches only a static set.
unsafe impl Trace for DeathNote {
    fn trace(&self, _: &mut Tracer) {}
}

fn seal_of(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x00C0_FFEE
}

fn node(id: u64) -> Gc<Node> {
    Gc::new(Node {
        id,
        seal: seal_of(id),
        death: DeathNote(NEXT_SERIAL.fetch_add(1, Ordering::Relaxed)),
    })
}

#[track_caller]
fn assert_intact(node: &Node) {
    assert!(
        node.seal == seal_of(node.id),
        "an element was freed while its container held it, and its slot reused: it now holds \
         id {} seal {:#x}",
        node.id,
        node.seal
    );
    assert!(
        !DEAD.lock().unwrap().contains(&node.death.0),
        "element {} was dropped by the sweep while its container held it",
        node.id
    );
}

/// Collects, then allocates garbage of the elements' size so that freed slots are reused.
///
/// A macro, so that the stack below the caller's own frame is cleared first: the collector's
/// frames would otherwise lie over what std's frames left there (a slice over the container's
/// buffer, say), in slots they never write, and the conservative scan of those would keep the
/// buffer whatever the tracer does.
macro_rules! collect_and_churn {
    () => {{
        scrub_stack();
        collect_then_churn();
    }};
}

#[inline(never)]
fn collect_then_churn() {
    goro::gc::collect();
    for _ in 0..GARBAGE {
        std::hint::black_box(Gc::new(Node {
            id: u64::MAX,
            seal: 0,
            death: DeathNote(0),
        }));
    }
}

/// The only owner of a container: a collected object.
#[derive(goro::Trace)]
struct Holder<C> {
    items: GcCell<C>,
}

/// Builds the container and its holder in a frame that is dead afterwards, then overwrites
/// that stack area, so no stack slot of the caller keeps a pointer to the container's storage.
#[inline(never)]
fn holder_of<C: Trace + Send + 'static>(make: impl FnOnce() -> C) -> Gc<Holder<C>> {
    let holder = build_holder(make);
    scrub_stack();
    holder
}

#[inline(never)]
fn build_holder<C: Trace + Send + 'static>(make: impl FnOnce() -> C) -> Gc<Holder<C>> {
    Gc::new(Holder {
        items: GcCell::new(make()),
    })
}

#[inline(never)]
fn scrub_stack() {
    std::hint::black_box([0u64; 2048]);
}

/// Runs `scenario` `ROUNDS` times in a runtime of 1, then of 2 Ps.
fn on_one_and_two_procs(scenario: fn()) {
    for procs in [1, 2] {
        goro::Runtime::builder()
            .max_procs(procs)
            .build()
            .unwrap()
            .run(move || {
                for _ in 0..ROUNDS {
                    scenario();
                }
            });
    }
}

/// Leaks the holder's container when the round ends, passed or failed: its storage is then never
/// handed to a later round (or test), whose stack may still hold a stale pointer to that address
/// (left there by the frames of this round), which would keep the new storage alive whatever the
/// tracer does.
struct LeakStorage<C: Default>(Gc<Holder<C>>);

impl<C: Default> Drop for LeakStorage<C> {
    fn drop(&mut self) {
        if let Ok(mut items) = self.0.items.try_borrow_mut() {
            std::mem::forget(std::mem::take(&mut *items));
        }
    }
}

fn ids(nodes: impl IntoIterator<Item = Gc<Node>>) -> Vec<u64> {
    nodes
        .into_iter()
        .map(|node| {
            assert_intact(&node);
            node.id
        })
        .collect()
}

#[test]
fn vec_extract_if_keeps_the_elements_not_yet_visited() {
    on_one_and_two_procs(|| {
        let holder = holder_of(|| (0..N).map(node).collect::<Vec<_>>());
        let _leak = LeakStorage(holder);
        let mut taken = Vec::new();
        {
            let mut items = holder.items.borrow_mut();
            let mut calls = 0u64;
            let mut extract = items.extract_if(.., |node| {
                // `len` is 0 while this runs; nothing but the buffer holds the rest.
                calls += 1;
                let take = node.id % 3 == 0;
                if calls.is_multiple_of(STEP) {
                    collect_and_churn!();
                }
                take
            });
            for node in &mut extract {
                assert_intact(&node);
                taken.push(node);
                // Between two `next` calls `len` is still 0.
                if (taken.len() as u64).is_multiple_of(STEP / 4) {
                    collect_and_churn!();
                }
            }
        }
        let kept = ids(holder.items.borrow().iter().copied());
        assert_eq!(kept, (0..N).filter(|id| id % 3 != 0).collect::<Vec<_>>());
        assert_eq!(
            ids(taken),
            (0..N).filter(|id| id % 3 == 0).collect::<Vec<_>>()
        );
    });
}

#[test]
fn vec_deque_drain_keeps_the_drained_range_and_the_tail() {
    on_one_and_two_procs(|| {
        let holder = holder_of(|| {
            // Wrapped around its buffer: the front half was pushed at the front.
            let mut deque = VecDeque::with_capacity(N as usize);
            for id in (0..N / 2).rev() {
                deque.push_front(node(id));
            }
            for id in N / 2..N {
                deque.push_back(node(id));
            }
            deque
        });
        let _leak = LeakStorage(holder);
        let mut drained = Vec::new();
        for (k, node) in holder
            .items
            .borrow_mut()
            .drain(N as usize / 4..N as usize / 2)
            .enumerate()
        {
            // `len` is N/4 while the drain lives: the drained range and the tail are hidden.
            assert_intact(&node);
            drained.push(node);
            if (k as u64).is_multiple_of(STEP / 4) {
                collect_and_churn!();
            }
        }
        assert_eq!(ids(drained), (N / 4..N / 2).collect::<Vec<_>>());
        let kept = ids(holder.items.borrow().iter().copied());
        assert_eq!(kept, (0..N / 4).chain(N / 2..N).collect::<Vec<_>>());
    });
}

/// A user iterator that collects while `Vec::splice` consumes it.
struct Churning {
    next: u64,
    end: u64,
}

impl Iterator for Churning {
    type Item = Gc<Node>;

    fn next(&mut self) -> Option<Gc<Node>> {
        if self.next == self.end {
            return None;
        }
        if self.next.is_multiple_of(STEP) {
            // `len` excludes the tail (and the items written so far) while this runs.
            collect_and_churn!();
        }
        self.next += 1;
        Some(node(self.next - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // `Splice::drop` asks between filling the drained range and collecting the rest: clear
        // what filling left on the stack (its pointers into the buffer), which the frames of
        // the collecting would otherwise keep in their unused slots.
        scrub_stack();
        (0, None)
    }
}

#[test]
fn vec_splice_with_a_user_iterator_keeps_the_tail() {
    on_one_and_two_procs(|| {
        let holder = holder_of(|| {
            // Room for what the splice adds: the buffer is never reallocated, so it is leaked
            // with the rest when the round ends and no later round gets its address.
            let mut items = Vec::with_capacity(2 * N as usize);
            items.extend((0..N).map(node));
            items
        });
        let _leak = LeakStorage(holder);
        let mut replaced = Vec::new();
        {
            let mut items = holder.items.borrow_mut();
            // Consumed and dropped in place: a moved copy of the `Splice` left in this frame
            // would keep its exhausted slice iterator, a pointer into the buffer.
            let mut splice = items.splice(
                N as usize / 4..N as usize / 2,
                Churning {
                    next: N,
                    end: 2 * N,
                },
            );
            for node in splice.by_ref() {
                replaced.push(node);
            }
            // Clear what the iteration left below this frame (the drain's exhausted iterator,
            // pointing into the buffer), where `Splice::drop`'s frame will lie.
            scrub_stack();
            // Dropping it writes `Churning`'s items: the first N/4 into the drained range,
            // the rest collected first, calling `next` while `len` hides the tail.
        }
        assert_eq!(ids(replaced), (N / 4..N / 2).collect::<Vec<_>>());
        let kept = ids(holder.items.borrow().iter().copied());
        let expected: Vec<u64> = (0..N / 4).chain(N..2 * N).chain(N / 2..N).collect();
        assert_eq!(kept, expected);
    });
}

/// Writes through a `PeekMut` in a frame of its own, so the caller keeps no pointer into the
/// heap's buffer; afterwards the heap's `len` is 1 until `top` is dropped.
#[inline(never)]
fn replace_top(top: &mut PeekMut<'_, Gc<Node>>, node: Gc<Node>) {
    **top = node;
}

#[test]
fn binary_heap_peek_mut_keeps_the_elements_below_the_top() {
    on_one_and_two_procs(|| {
        let holder = holder_of(|| (0..N).map(node).collect::<BinaryHeap<_>>());
        let _leak = LeakStorage(holder);
        let replacements = 8;
        for k in 0..replacements {
            let mut items = holder.items.borrow_mut();
            let mut top = items.peek_mut().unwrap();
            replace_top(&mut top, node(2 * N + k));
            collect_and_churn!();
            drop(top);
        }
        let mut kept = ids(holder.items.borrow().iter().copied());
        kept.sort_unstable();
        // Each replacement is the new maximum, so it replaced the previous replacement.
        let expected: Vec<u64> = (0..N - 1).chain([2 * N + replacements - 1]).collect();
        assert_eq!(kept, expected);
    });
}

/// `retain` passes the closure a pointer into the buffer and needs it afterwards, so the stack
/// scan alone finds the buffer here: this guards the behaviour, not the route (it passes with a
/// tracer that trusts `len` too).
#[test]
fn vec_retain_keeps_the_elements_not_yet_visited() {
    on_one_and_two_procs(|| {
        let holder = holder_of(|| (0..N).map(node).collect::<Vec<_>>());
        let _leak = LeakStorage(holder);
        let mut calls = 0u64;
        holder.items.borrow_mut().retain(|node| {
            // `len` is 0 while this runs.
            calls += 1;
            let keep = node.id % 3 != 0;
            if calls.is_multiple_of(STEP) {
                collect_and_churn!();
            }
            keep
        });
        let kept = ids(holder.items.borrow().iter().copied());
        assert_eq!(kept, (0..N).filter(|id| id % 3 != 0).collect::<Vec<_>>());
    });
}

/// The drain's slice iterator, alive on the stack until the drain is dropped, points into the
/// buffer, so the stack scan alone finds it here: this guards the behaviour, not the route (it
/// passes with a tracer that trusts `len` too).
#[test]
fn vec_drain_keeps_the_drained_range_and_the_tail() {
    on_one_and_two_procs(|| {
        let holder = holder_of(|| (0..N).map(node).collect::<Vec<_>>());
        let _leak = LeakStorage(holder);
        let mut drained = Vec::new();
        for (k, node) in holder
            .items
            .borrow_mut()
            .drain(N as usize / 4..N as usize / 2)
            .enumerate()
        {
            // `len` is N/4 while the drain lives.
            assert_intact(&node);
            drained.push(node);
            if (k as u64).is_multiple_of(STEP / 4) {
                collect_and_churn!();
            }
        }
        assert_eq!(ids(drained), (N / 4..N / 2).collect::<Vec<_>>());
        let kept = ids(holder.items.borrow().iter().copied());
        assert_eq!(kept, (0..N / 4).chain(N / 2..N).collect::<Vec<_>>());
    });
}

/// A boxed element whose trace would follow its own `Vec`.
#[derive(goro::Trace)]
struct Boxed {
    nodes: Vec<Gc<Node>>,
}

/// An address no process maps (below `vm.mmap_min_addr`), aligned for a `Gc`.
const UNMAPPED: usize = 0x1000;

/// The dedup scenario, run in a child process: with a tracer that trusts `len` it dies of a
/// segmentation fault in the collector.
fn dedup_by_scenario() {
    let holder = holder_of(|| {
        // Pairs of equal neighbours: every second element is a duplicate.
        (0..N)
            .map(|i| {
                Box::new(Boxed {
                    nodes: vec![node(i / 2)],
                })
            })
            .collect::<Vec<_>>()
    });
    let _leak = LeakStorage(holder);
    let mut calls = 0u64;
    holder.items.borrow_mut().dedup_by(|a, b| {
        // std has dropped the last duplicate in place and not yet moved anything over it: its
        // `Box` is freed but still below `len`. Fill freed blocks of its size with words that
        // point nowhere; a tracer that visits the dropped element follows them.
        let same = a.nodes[0].id == b.nodes[0].id;
        calls += 1;
        if calls.is_multiple_of(STEP) {
            let poison: Vec<Box<[usize; 3]>> = (0..64).map(|_| Box::new([UNMAPPED; 3])).collect();
            collect_and_churn!();
            drop(poison);
        }
        same
    });
    let kept = ids(holder.items.borrow().iter().map(|boxed| boxed.nodes[0]));
    assert_eq!(kept, (0..N / 2).collect::<Vec<_>>());
}

/// Runs the test `name` again in a child process with `GORO_CONTAINERS_CHILD` set, and checks
/// that it passed there (a crash of the collector shows as the child's signal).
fn run_in_child(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("GORO_CONTAINERS_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child running {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vec_dedup_by_never_traces_the_dropped_duplicate() {
    if std::env::var_os("GORO_CONTAINERS_CHILD").is_some() {
        on_one_and_two_procs(dedup_by_scenario);
    } else {
        run_in_child("vec_dedup_by_never_traces_the_dropped_duplicate");
    }
}

/// A hasher holding a `Gc`: the map's only path to that object.
#[derive(goro::Trace)]
struct KeepingHasher {
    kept: Gc<Node>,
}

impl BuildHasher for KeepingHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher::new()
    }
}

#[test]
fn a_gc_held_only_by_a_hashmaps_hasher_survives() {
    on_one_and_two_procs(|| {
        let holder = holder_of(|| {
            let mut map = HashMap::with_hasher(KeepingHasher { kept: node(N + 7) });
            map.insert(1u32, 2u32);
            map
        });
        for _ in 0..3 {
            collect_and_churn!();
        }
        let items = holder.items.borrow();
        assert_intact(&items.hasher().kept);
        assert_eq!(items.hasher().kept.id, N + 7);
        assert_eq!(items.get(&1), Some(&2));
    });
}

/// Every std container `Trace` supports, each holding its own range of nodes.
#[derive(goro::Trace, Default)]
struct Every {
    vec: Vec<Gc<Node>>,
    deque: VecDeque<Gc<Node>>,
    list: LinkedList<Gc<Node>>,
    heap: BinaryHeap<Gc<Node>>,
    tree: BTreeMap<u64, Gc<Node>>,
    tree_set: BTreeSet<Gc<Node>>,
    map: HashMap<u64, Gc<Node>>,
    set: HashSet<Gc<Node>>,
    boxed: Box<[Gc<Node>]>,
    array: [Option<Gc<Node>>; 4],
}

#[test]
fn every_std_container_in_a_collected_object_keeps_its_elements() {
    on_one_and_two_procs(|| {
        let range = |k: u64| k * N..(k + 1) * N;
        let holder = holder_of(|| Every {
            vec: range(0).map(node).collect(),
            deque: range(1).map(node).collect(),
            list: range(2).map(node).collect(),
            heap: range(3).map(node).collect(),
            tree: range(4).map(|id| (id, node(id))).collect(),
            tree_set: range(5).map(node).collect(),
            map: range(6).map(|id| (id, node(id))).collect(),
            set: range(7).map(node).collect(),
            boxed: range(8).map(node).collect(),
            array: [12 * N, 13 * N, 14 * N, 15 * N].map(|id| Some(node(id))),
        });
        let _leak = LeakStorage(holder);
        for _ in 0..3 {
            collect_and_churn!();
        }
        let every = holder.items.borrow();
        let sorted = |mut ids: Vec<u64>| {
            ids.sort_unstable();
            ids
        };
        assert_eq!(ids(every.vec.iter().copied()), range(0).collect::<Vec<_>>());
        assert_eq!(
            ids(every.deque.iter().copied()),
            range(1).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(every.list.iter().copied()),
            range(2).collect::<Vec<_>>()
        );
        assert_eq!(
            sorted(ids(every.heap.iter().copied())),
            range(3).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(every.tree.values().copied()),
            range(4).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(every.tree_set.iter().copied()),
            range(5).collect::<Vec<_>>()
        );
        assert_eq!(
            sorted(ids(every.map.values().copied())),
            range(6).collect::<Vec<_>>()
        );
        assert_eq!(
            sorted(ids(every.set.iter().copied())),
            range(7).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(every.boxed.iter().copied()),
            range(8).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(every.array.iter().flatten().copied()),
            [12 * N, 13 * N, 14 * N, 15 * N]
        );
    });
}
