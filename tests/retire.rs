//! The end of a runtime: `run` returns while the collector retires the heap beside the caller
//! (marking from every thread, the returned value and the abandoned goroutines), and the
//! caller's threads go on using what the runtime left them meanwhile.

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

mod common;

use common::{Rng, Tree, build, checksum, was_dropped};
use goro::{Gc, GcCell};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a runtime hands its caller: trees, some in `GcCell` slots of a collected hub (whose
/// stores the barrier sees), some in a plain `Vec` (which has no barrier).
#[derive(goro::Trace)]
struct Hub {
    slots: Vec<GcCell<Option<Gc<Tree>>>>,
}

const TREES: usize = 64;

/// Builds `TREES` trees with `depth` levels, half in a hub and half in a plain `Vec`; returns
/// them with every tree's checksum.
fn trees(depth: u32) -> (Gc<Hub>, Vec<Gc<Tree>>, Vec<u64>) {
    let trees: Vec<Gc<Tree>> = (0..TREES as u64).map(|i| build(depth, i)).collect();
    let sums = trees.iter().map(|tree| checksum(tree)).collect();
    let (in_hub, plain) = trees.split_at(TREES / 2);
    let hub = Gc::new(Hub {
        slots: (0..TREES)
            .map(|i| GcCell::new(in_hub.get(i).copied()))
            .collect(),
    });
    (hub, plain.to_vec(), sums)
}

/// `GcCell` is not a lock (a borrow another thread holds is an error, as `RefCell`'s): the
/// threads take turns at the hub.
static HUB_TURN: Mutex<()> = Mutex::new(());

/// Checks that `tree` is one of the trees given, intact.
fn check(tree: &Tree, sums: &[u64]) {
    assert!(
        sums.contains(&checksum(tree)),
        "a tree moved by a thread was freed"
    );
}

/// Moves trees between the hub's slots, the shared plain `pool` and a local `Vec` (the last two
/// with no barrier) until `stop`, checking each tree it moves; returns them to the pool.
fn rewire(hub: Gc<Hub>, pool: &Mutex<Vec<Gc<Tree>>>, sums: &[u64], seed: u64, stop: &AtomicBool) {
    let mut rng = Rng(seed);
    let mut held: Vec<Gc<Tree>> = Vec::new();
    let mut moves = 0u64;
    // Keep going a little after `stop`, so the retirement's last pause meets moves too.
    while !stop.load(Ordering::Relaxed) || !moves.is_multiple_of(1024) {
        moves += 1;
        let taken = match rng.below(4) {
            0 => {
                let _turn = HUB_TURN.lock().unwrap();
                hub.slots[rng.below(TREES)].take()
            }
            1 => {
                let mut pool = pool.lock().unwrap();
                let len = pool.len();
                (len > 0).then(|| pool.swap_remove(rng.below(len)))
            }
            _ => None,
        };
        if let Some(tree) = taken {
            check(&tree, sums);
            held.push(tree);
        }
        if held.is_empty() || rng.below(3) != 0 {
            continue;
        }
        let tree = held.swap_remove(rng.below(held.len()));
        check(&tree, sums);
        if rng.below(2) == 0 {
            pool.lock().unwrap().push(tree);
        } else {
            let _turn = HUB_TURN.lock().unwrap();
            if let Some(other) = hub.slots[rng.below(TREES)].replace(Some(tree)) {
                held.push(other);
            }
        }
    }
    pool.lock().unwrap().append(&mut held);
}

/// Every tree, checked: all `TREES` are in the hub or the pool, intact and never dropped.
fn check_all(hub: &Hub, pool: &[Gc<Tree>], sums: &[u64]) {
    let in_hub = hub.slots.iter().filter_map(|slot| slot.get());
    let mut seen: Vec<u64> = in_hub
        .chain(pool.iter().copied())
        .map(|tree| {
            assert!(!was_dropped(tree.canary.0), "a tree still held was dropped");
            checksum(&tree)
        })
        .collect();
    let mut expected = sums.to_vec();
    seen.sort_unstable();
    expected.sort_unstable();
    assert_eq!(seen, expected, "every tree is still there");
}

#[test]
fn threads_rewire_what_run_returned_while_the_heap_is_retired() {
    for procs in [1, 2] {
        // Large enough that marking it takes a while: the rewiring below overlaps it.
        let (hub, plain, sums) = goro::Runtime::builder()
            .max_procs(procs)
            .build()
            .unwrap()
            .run(|| {
                goro::gc::set_clobber_free(true);
                goro::gc::set_checkmark(true);
                trees(9)
            });
        let pool = Mutex::new(plain);
        let stop = AtomicBool::new(false);
        let (pool_ref, sums_ref, stop_ref) = (&pool, &sums, &stop);
        std::thread::scope(|scope| {
            for seed in [7, 11] {
                scope.spawn(move || rewire(hub, pool_ref, sums_ref, seed, stop_ref));
            }
            goro::gc::wait_for_retirement();
            stop_ref.store(true, Ordering::Relaxed);
        });
        check_all(&hub, &pool.lock().unwrap(), &sums);
        // What the retirement found reachable is immortal: a later runtime's cycles keep it.
        goro::run(|| {
            for seed in 0..3 {
                for i in 0..2_000 {
                    build(3, seed * 10_000 + i);
                }
                goro::gc::collect();
            }
        });
        check_all(&hub, &pool.lock().unwrap(), &sums);
    }
}

/// In a process of its own: in one shared with other tests, a thread of theirs may hold a stale
/// word that happens to point where one of these trees now lies (conservative scanning keeps
/// it, as it would keep the object once there).
#[test]
fn what_a_runtime_leaves_unreachable_is_dropped_once_retired() {
    const CHILD: &str = "GORO_TEST_RETIRE_UNREACHABLE_CHILD";
    if std::env::var_os(CHILD).is_none() {
        common::run_test_in_child(
            "what_a_runtime_leaves_unreachable_is_dropped_once_retired",
            &[(CHILD, "1")],
        );
        return;
    }
    let canaries: Vec<u64> = goro::run(|| {
        // Built on a goroutine that exits: no stack of the runtime's keeps a word of them.
        let canaries = goro::go(|| (0..200).map(|i| build(3, i).canary.0).collect());
        canaries.join().unwrap()
    });
    goro::gc::wait_for_retirement();
    let kept: Vec<u64> = canaries.into_iter().filter(|&c| !was_dropped(c)).collect();
    assert!(kept.is_empty(), "unreachable trees kept: {kept:?}");
}

/// A field whose drop says so on stderr: the user's bytes a `Drop` may flush.
struct Note(&'static str);

impl Drop for Note {
    fn drop(&mut self) {
        eprintln!("{}", self.0);
    }
}

// SAFETY: owns no Gc.
unsafe impl goro::gc::Trace for Note {
    fn trace(&self, _: &mut goro::gc::Tracer) {}
}

#[derive(goro::Trace)]
struct Flushes {
    note: Note,
}

const LEFT_BEHIND: &str = "dropped: the object the runtime left behind";

/// In a child: a runtime that returns a large heap (so its retirement takes a while) and leaves
/// an object with drop glue unreachable; the test returns at once and the process exits.
#[test]
fn drop_glue_left_to_the_retirement_runs_before_the_process_exits() {
    if std::env::var_os("GORO_TEST_EXIT_CHILD").is_some() {
        let (hub, plain, _) = goro::run(|| {
            Gc::new(Flushes {
                note: Note(LEFT_BEHIND),
            });
            trees(10)
        });
        std::hint::black_box((hub, plain));
        return;
    }
    let name = "drop_glue_left_to_the_retirement_runs_before_the_process_exits";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("GORO_TEST_EXIT_CHILD", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(LEFT_BEHIND),
        "the object's drop glue did not run before the exit:\n{stderr}"
    );
}
