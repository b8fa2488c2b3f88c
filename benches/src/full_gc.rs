//! `full_gc MB`: the time of one forced full collection of a heap of small objects, all live.
//!
//! 1. Build `MB` megabytes (10^6 bytes) of payload, half in linked lists and half in complete
//!    binary trees: lists of [`LIST_LEN`] nodes of 16 bytes (`value`, `next`) and trees of depth
//!    [`TREE_DEPTH`] with nodes of 24 bytes (`left`, `right`, `value`), as many of each as the
//!    half holds (rounded, at least one). 100 MB is 763 lists and 16 trees, 5.2M objects. The
//!    roots are one `Gc` object holding two boxed slices (Go: two package-level slices).
//! 2. One forced collection, untimed, so that the timed one starts from a settled heap (no
//!    cycle under way, nothing left to sweep).
//! 3. The timed collection: `goro::gc::collect()` (Go's `runtime.GC()`), which returns after a
//!    full cycle. `gc_ms` (and `total_ms`) is its wall time.
//!
//! GOMAXPROCS is the variant (`1`, `2`; the suite runs both) or `--procs P` (`goro-bench full_gc
//! 100 --procs 2 --impl goro`), else the machine's cores; `gomaxprocs` says which. Each runtime
//! adds its own per-object cost to the payload (goro a header word per object, in size classes
//! of 24 and 32 bytes here; Go none, in classes of 16 and 24): `heap_mib` is the live heap each
//! runtime reports after the timed cycle.
//!
//! `retire MB`: the end of a runtime whose main goroutine built the same heap. Variant `live`
//! returns it from `run` (the retirement marks all of it and makes it immortal), `dead` drops it
//! (the retirement frees all of it). `retire_ms` is the wall time from the main goroutine's
//! return to `run`'s: what the end of a runtime costs its caller. The retirement goes on beside
//! the caller; `retired_ms` is the time until `goro::gc::wait_for_retirement` returns, measured
//! from the same point (the process's exit waits for it too, so that drop glue runs). Go has no
//! end of a runtime to compare with (its program exits without collecting): goro only.

use crate::{Options, Workload, report};
use std::time::Instant;

/// The workload.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "full_gc",
        default_size: "100",
        variants: &["1", "2"],
        implementations: &["goro", "go"],
        run,
    },
    Workload {
        name: "retire",
        default_size: "300",
        variants: &["live", "dead"],
        implementations: &["goro"],
        run: run_retire,
    },
];

/// Nodes per list.
pub const LIST_LEN: usize = 4096;
/// Depth of each tree (`2^(depth+1) - 1` nodes).
pub const TREE_DEPTH: u32 = 16;
/// Payload bytes of a list node (`value`, `next`).
pub const LIST_NODE_BYTES: usize = 16;
/// Payload bytes of a tree node (`left`, `right`, `value`).
pub const TREE_NODE_BYTES: usize = 24;

/// How many lists and trees make `mb` megabytes of payload.
pub fn shape(mb: usize) -> (usize, usize) {
    let half = mb as f64 * 1e6 / 2.0;
    let tree_nodes = (1usize << (TREE_DEPTH + 1)) - 1;
    let lists = (half / (LIST_LEN * LIST_NODE_BYTES) as f64)
        .round()
        .max(1.0) as usize;
    let trees = (half / (tree_nodes * TREE_NODE_BYTES) as f64)
        .round()
        .max(1.0) as usize;
    (lists, trees)
}

/// GOMAXPROCS: `--procs` when given without a variant, else as the scheduler family decides.
fn procs(options: &Options) -> usize {
    match (&options.variant, options.procs) {
        (None, Some(procs)) => procs,
        _ => crate::sched::procs(options),
    }
}

fn run(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let mb: usize = crate::parse_size("full_gc", size)?;
    let procs = procs(options);
    match implementation {
        "goro" => {
            let options = Options {
                procs: Some(procs),
                ..options.clone()
            };
            crate::goro_runtime(&options)?.run(move || goro(mb, procs));
            Ok(())
        }
        "go" => crate::go::run("full_gc", &[mb.to_string(), procs.to_string()]),
        other => Err(format!("no implementation {other}")),
    }
}

/// A list node.
#[derive(goro::Trace)]
struct ListNode {
    value: u64,
    next: Option<goro::Gc<ListNode>>,
}

/// A tree node.
#[derive(goro::Trace)]
struct TreeNode {
    left: Option<goro::Gc<TreeNode>>,
    right: Option<goro::Gc<TreeNode>>,
    value: u64,
}

/// The roots of the heap.
#[derive(goro::Trace)]
struct Heap {
    lists: Box<[goro::Gc<ListNode>]>,
    trees: Box<[goro::Gc<TreeNode>]>,
}

fn list(len: usize, seed: u64) -> goro::Gc<ListNode> {
    let mut head = goro::Gc::new(ListNode {
        value: seed,
        next: None,
    });
    for i in 1..len as u64 {
        head = goro::Gc::new(ListNode {
            value: seed + i,
            next: Some(head),
        });
    }
    head
}

fn tree(depth: u32, value: u64) -> goro::Gc<TreeNode> {
    let (left, right) = if depth == 0 {
        (None, None)
    } else {
        (
            Some(tree(depth - 1, 2 * value)),
            Some(tree(depth - 1, 2 * value + 1)),
        )
    };
    goro::Gc::new(TreeNode { left, right, value })
}

/// Builds the heap of `mb` megabytes of payload; returns it with its object count.
fn heap(mb: usize) -> (goro::Gc<Heap>, usize) {
    let (lists, trees) = shape(mb);
    let objects = lists * LIST_LEN + trees * ((1 << (TREE_DEPTH + 1)) - 1);
    let heap = goro::Gc::new(Heap {
        lists: (0..lists)
            .map(|i| list(LIST_LEN, (i * LIST_LEN) as u64))
            .collect(),
        trees: (0..trees).map(|i| tree(TREE_DEPTH, i as u64)).collect(),
    });
    (heap, objects)
}

fn goro(mb: usize, procs: usize) {
    let (lists, trees) = shape(mb);
    let built = Instant::now();
    let (heap, objects) = heap(mb);
    let build_ms = built.elapsed().as_secs_f64() * 1e3;
    goro::gc::collect();
    let before = goro::gc::stats();
    let start = Instant::now();
    goro::gc::collect();
    let elapsed = start.elapsed();
    let after = goro::gc::stats();
    goro::gc::keep_alive(&heap);
    let pauses: Vec<String> = after
        .pauses
        .iter()
        .rev()
        .take(2 * (after.cycles - before.cycles) as usize)
        .rev()
        .map(|p| format!("{:.0}", p.as_secs_f64() * 1e6))
        .collect();
    report::Result::new("full_gc", "goro")
        .key("variant", procs)
        .key("gomaxprocs", procs)
        .key("mb", mb)
        .key("lists", lists)
        .key("trees", trees)
        .key("objects", objects)
        .key("live_objects", after.live_objects)
        .key(
            "heap_mib",
            format!("{:.1}", after.heap_live as f64 / (1 << 20) as f64),
        )
        .key("build_ms", format!("{build_ms:.0}"))
        .key("cycles", after.cycles - before.cycles)
        .key("stw_us", pauses.join(","))
        .key("gc_ms", format!("{:.1}", elapsed.as_secs_f64() * 1e3))
        .print(elapsed);
}

fn run_retire(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let mb: usize = crate::parse_size("retire", size)?;
    let live = match options.variant.as_deref() {
        None | Some("live") => true,
        Some("dead") => false,
        Some(other) => return Err(format!("retire: no variant {other} (live, dead)")),
    };
    if implementation != "goro" {
        return Err(format!("no implementation {implementation}"));
    }
    let runtime = crate::goro_runtime(options)?;
    let (kept, objects, returned) = runtime.run(move || {
        let (heap, objects) = heap(mb);
        // A settled heap, as a program's would be after running a while.
        goro::gc::collect();
        (live.then_some(heap), objects, Instant::now())
    });
    let retire = returned.elapsed();
    goro::gc::wait_for_retirement();
    let retired = returned.elapsed();
    let live_objects = kept.map_or(0, |heap| {
        let lists = heap.lists.len() * LIST_LEN;
        lists + heap.trees.len() * ((1 << (TREE_DEPTH + 1)) - 1)
    });
    report::Result::new("retire", "goro")
        .key("variant", if live { "live" } else { "dead" })
        .key("mb", mb)
        .key("objects", objects)
        .key("kept_objects", live_objects)
        .key("retire_ms", format!("{:.2}", retire.as_secs_f64() * 1e3))
        .key("retired_ms", format!("{:.1}", retired.as_secs_f64() * 1e3))
        .print(retire);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_megabytes_is_763_lists_and_16_trees() {
        assert_eq!(shape(100), (763, 16));
        assert_eq!(shape(1), (8, 1));
    }
}
