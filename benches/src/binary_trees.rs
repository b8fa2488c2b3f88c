//! Benchmarks Game binary-trees: allocate and walk complete binary trees.
//!
//! A stretch tree of depth N+1, a long-lived tree of depth N, then for depths 4, 6, .. N,
//! `2^(N - d + 4)` trees of depth d, each built, checked (node count) and dropped. The check
//! lines are the standard ones; `checksum` is the sum of every check printed.
//!
//! Variants (`--variant`, key `variant`): `serial` (the default: one mutator runs the depth
//! loop) and `goroutines` (each depth of the loop runs on its own goroutine, as Go's program in
//! the Benchmarks Game does; the check lines are printed in order once all have finished).
//! goro and Go spread the depths over goroutines; the Rust peers, which have no goroutines,
//! spread them over one std thread per depth, each thread with its own trees (and, for `gc`
//! and `dumpster`, its own thread-local collector).
//!
//! Implementations: `goro` (`Gc`, GoroAlloc), `box`, `rc`, `arc` (system allocator),
//! `box-mimalloc` (`Box` in the mimalloc binary), `gc` (the `gc` crate, rust-gc: a
//! thread-local mark-sweep collector), `dumpster` (`dumpster::unsync`: reference counting with
//! cycle detection) and `go` (`benches/go/binary_trees.go`).

use crate::{Options, Workload, report};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// The smallest depth of the depth loop.
pub const MIN_DEPTH: u32 = 4;
/// The suite's default N.
pub const DEFAULT_N: u32 = 18;

/// The binary_trees family.
pub const WORKLOADS: &[Workload] = &[Workload {
    name: "binary_trees",
    default_size: "18",
    variants: &["serial", "goroutines"],
    implementations: &[
        "goro",
        "box",
        "box-mimalloc",
        "rc",
        "arc",
        "gc",
        "dumpster",
        "go",
    ],
    run,
}];

/// How the depth loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepthLoop {
    /// One mutator runs every depth in turn.
    Serial,
    /// One goroutine (goro, Go) or std thread (the Rust peers) per depth.
    Goroutines,
}

impl DepthLoop {
    fn parse(options: &Options) -> Result<DepthLoop, String> {
        match options.variant.as_deref() {
            None | Some("serial") => Ok(DepthLoop::Serial),
            Some("goroutines") => Ok(DepthLoop::Goroutines),
            Some(other) => Err(format!(
                "binary_trees: unknown variant {other} (serial, goroutines)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            DepthLoop::Serial => "serial",
            DepthLoop::Goroutines => "goroutines",
        }
    }
}

fn run(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let n: u32 = crate::parse_size("binary_trees", size)?;
    let depth_loop = DepthLoop::parse(options)?;
    match implementation {
        "goro" => crate::goro_runtime(options)?
            .run(move || bench::<GoroTrees>("goro", n, depth_loop, goroutines)),
        "box" | "box-mimalloc" => bench::<BoxTrees>(implementation, n, depth_loop, threads),
        "rc" => bench::<RcTrees>("rc", n, depth_loop, threads),
        "arc" => bench::<ArcTrees>("arc", n, depth_loop, threads),
        "gc" => bench::<GcCrateTrees>("gc", n, depth_loop, threads),
        "dumpster" => bench::<DumpsterTrees>("dumpster", n, depth_loop, threads),
        "go" => {
            return crate::go::run("binary_trees", &[n.to_string(), depth_loop.name().into()]);
        }
        other => return Err(format!("no implementation {other}")),
    }
    Ok(())
}

/// One depth of the depth loop: builds, checks and drops `iterations` trees of `depth`.
pub type DepthJob = Box<dyn FnOnce() -> u64 + Send + 'static>;

/// Runs the depth jobs concurrently and returns their results in order.
pub type Spread = fn(Vec<DepthJob>) -> Vec<u64>;

/// Each job on its own goroutine (the caller must be a goroutine).
fn goroutines(jobs: Vec<DepthJob>) -> Vec<u64> {
    let handles: Vec<_> = jobs.into_iter().map(goro::go).collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap_or_else(|panic| panic.resume()))
        .collect()
}

/// Each job on its own std thread.
fn threads(jobs: Vec<DepthJob>) -> Vec<u64> {
    let handles: Vec<_> = jobs.into_iter().map(std::thread::spawn).collect();
    handles
        .into_iter()
        .map(|handle| {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .collect()
}

/// The tree operations a peer provides.
pub trait Trees {
    /// A tree handle.
    type Tree;
    /// A complete tree of `depth` levels below the root.
    fn make(depth: u32) -> Self::Tree;
    /// Counts the nodes.
    fn check(tree: &Self::Tree) -> u64;
}

/// Runs the program over `T`, printing the check lines; returns the checksum. With
/// [`DepthLoop::Goroutines`] the depths run through `spread`.
pub fn program<T: Trees + 'static>(n: u32, depth_loop: DepthLoop, spread: Spread) -> u64 {
    let max_depth = n.max(MIN_DEPTH + 2);
    let mut checksum = 0;
    let stretch = max_depth + 1;
    let check = T::check(&T::make(stretch));
    println!("stretch tree of depth {stretch}\t check: {check}");
    checksum += check;
    let long_lived = T::make(max_depth);
    let depths: Vec<(u32, u64)> = (MIN_DEPTH..=max_depth)
        .step_by(2)
        .map(|depth| (depth, 1u64 << (max_depth - depth + MIN_DEPTH)))
        .collect();
    let one_depth = |depth: u32, iterations: u64| -> u64 {
        (0..iterations).map(|_| T::check(&T::make(depth))).sum()
    };
    let checks: Vec<u64> = match depth_loop {
        DepthLoop::Serial => depths
            .iter()
            .map(|&(depth, iterations)| one_depth(depth, iterations))
            .collect(),
        DepthLoop::Goroutines => spread(
            depths
                .iter()
                .map(|&(depth, iterations)| -> DepthJob {
                    Box::new(move || one_depth(depth, iterations))
                })
                .collect(),
        ),
    };
    for (&(depth, iterations), check) in depths.iter().zip(checks) {
        println!("{iterations}\t trees of depth {depth}\t check: {check}");
        checksum += check;
    }
    let check = T::check(&long_lived);
    println!("long lived tree of depth {max_depth}\t check: {check}");
    checksum + check
}

/// Runs and reports one implementation.
pub fn bench<T: Trees + 'static>(
    implementation: &str,
    n: u32,
    depth_loop: DepthLoop,
    spread: Spread,
) {
    let start = Instant::now();
    let checksum = program::<T>(n, depth_loop, spread);
    report::Result::new("binary_trees", implementation)
        .key("variant", depth_loop.name())
        .key("n", n)
        .key("checksum", checksum)
        .print(start.elapsed());
}

/// `Option<Box<Node>>` children.
pub struct BoxTrees;
/// A node with boxed children.
pub struct BoxNode(Option<(Box<BoxNode>, Box<BoxNode>)>);

impl Trees for BoxTrees {
    type Tree = Box<BoxNode>;
    fn make(depth: u32) -> Box<BoxNode> {
        Box::new(BoxNode(
            (depth > 0).then(|| (Self::make(depth - 1), Self::make(depth - 1))),
        ))
    }
    fn check(tree: &Box<BoxNode>) -> u64 {
        1 + tree
            .0
            .as_ref()
            .map_or(0, |(l, r)| Self::check(l) + Self::check(r))
    }
}

/// `Rc` children.
pub struct RcTrees;
/// A node with `Rc` children.
pub struct RcNode(Option<(Rc<RcNode>, Rc<RcNode>)>);

impl Trees for RcTrees {
    type Tree = Rc<RcNode>;
    fn make(depth: u32) -> Rc<RcNode> {
        Rc::new(RcNode(
            (depth > 0).then(|| (Self::make(depth - 1), Self::make(depth - 1))),
        ))
    }
    fn check(tree: &Rc<RcNode>) -> u64 {
        1 + tree
            .0
            .as_ref()
            .map_or(0, |(l, r)| Self::check(l) + Self::check(r))
    }
}

/// `Arc` children.
pub struct ArcTrees;
/// A node with `Arc` children.
pub struct ArcNode(Option<(Arc<ArcNode>, Arc<ArcNode>)>);

impl Trees for ArcTrees {
    type Tree = Arc<ArcNode>;
    fn make(depth: u32) -> Arc<ArcNode> {
        Arc::new(ArcNode(
            (depth > 0).then(|| (Self::make(depth - 1), Self::make(depth - 1))),
        ))
    }
    fn check(tree: &Arc<ArcNode>) -> u64 {
        1 + tree
            .0
            .as_ref()
            .map_or(0, |(l, r)| Self::check(l) + Self::check(r))
    }
}

/// goro's `Gc` children, collected by goro's collector.
pub struct GoroTrees;

/// A node with `Gc` children.
#[derive(goro::Trace)]
pub struct GcNode {
    /// Left and right subtrees.
    pub children: Option<(goro::Gc<GcNode>, goro::Gc<GcNode>)>,
}

impl Trees for GoroTrees {
    type Tree = goro::Gc<GcNode>;
    fn make(depth: u32) -> goro::Gc<GcNode> {
        goro::Gc::new(GcNode {
            children: (depth > 0).then(|| (Self::make(depth - 1), Self::make(depth - 1))),
        })
    }
    fn check(tree: &goro::Gc<GcNode>) -> u64 {
        1 + tree
            .children
            .as_ref()
            .map_or(0, |(l, r)| Self::check(l) + Self::check(r))
    }
}

/// The `gc` crate's (rust-gc) `Gc` children: a thread-local mark-sweep collector that runs when
/// an allocation finds the thread's heap past its threshold.
pub struct GcCrateTrees;

/// A node with `gc::Gc` children. Its `Trace` is written with the crate's `custom_trace!`
/// rather than derived: gc_derive 0.5.0 expands its impls inside a `const`, which rustc warns
/// about (`non_local_definitions`); the impl below is what the derive generates.
pub struct GcCrateNode(Option<(::gc::Gc<GcCrateNode>, ::gc::Gc<GcCrateNode>)>);

impl ::gc::Finalize for GcCrateNode {}

// SAFETY: the node owns exactly the `Gc`s of its one field, which the body visits.
unsafe impl ::gc::Trace for GcCrateNode {
    ::gc::custom_trace!(this, {
        // SAFETY: `mark` is the crate's trace/root/unroot of a field of `this`, called from the
        // method of the same name with that method's contract.
        unsafe { mark(&this.0) }
    });
}

impl Trees for GcCrateTrees {
    type Tree = ::gc::Gc<GcCrateNode>;
    fn make(depth: u32) -> ::gc::Gc<GcCrateNode> {
        ::gc::Gc::new(GcCrateNode(
            (depth > 0).then(|| (Self::make(depth - 1), Self::make(depth - 1))),
        ))
    }
    fn check(tree: &::gc::Gc<GcCrateNode>) -> u64 {
        1 + tree
            .0
            .as_ref()
            .map_or(0, |(l, r)| Self::check(l) + Self::check(r))
    }
}

/// dumpster's thread-local `Gc` children (`dumpster::unsync`): reference counts free a tree as
/// its root is dropped; the cycle detector runs on drops (never finding a cycle here).
pub struct DumpsterTrees;

/// A node with `dumpster::unsync::Gc` children.
#[derive(dumpster::Trace)]
pub struct DumpsterNode(
    Option<(
        dumpster::unsync::Gc<DumpsterNode>,
        dumpster::unsync::Gc<DumpsterNode>,
    )>,
);

impl Trees for DumpsterTrees {
    type Tree = dumpster::unsync::Gc<DumpsterNode>;
    fn make(depth: u32) -> dumpster::unsync::Gc<DumpsterNode> {
        dumpster::unsync::Gc::new(DumpsterNode(
            (depth > 0).then(|| (Self::make(depth - 1), Self::make(depth - 1))),
        ))
    }
    fn check(tree: &dumpster::unsync::Gc<DumpsterNode>) -> u64 {
        1 + tree
            .0
            .as_ref()
            .map_or(0, |(l, r)| Self::check(l) + Self::check(r))
    }
}
