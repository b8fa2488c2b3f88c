//! Benchmarks Game binary-trees: allocate and walk complete binary trees.
//!
//! A stretch tree of depth N+1, a long-lived tree of depth N, then for depths 4, 6, .. N,
//! `2^(N - d + 4)` trees of depth d, each built, checked (node count) and dropped. One mutator.
//! The check lines are the standard ones; `checksum` is the sum of every check printed.

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
    variants: &[],
    implementations: &["goro", "box", "rc", "arc"],
    run,
}];

fn run(implementation: &str, size: &str, options: &Options) -> Result<(), String> {
    let n: u32 = crate::parse_size("binary_trees", size)?;
    match implementation {
        "goro" => crate::goro_runtime(options)?.run(move || bench::<GoroTrees>("goro", n)),
        "box" => bench::<BoxTrees>("box", n),
        "rc" => bench::<RcTrees>("rc", n),
        "arc" => bench::<ArcTrees>("arc", n),
        other => return Err(format!("no implementation {other}")),
    }
    Ok(())
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

/// Runs the program over `T`, printing the check lines; returns the checksum.
pub fn program<T: Trees>(n: u32) -> u64 {
    let max_depth = n.max(MIN_DEPTH + 2);
    let mut checksum = 0;
    let stretch = max_depth + 1;
    let check = T::check(&T::make(stretch));
    println!("stretch tree of depth {stretch}\t check: {check}");
    checksum += check;
    let long_lived = T::make(max_depth);
    for depth in (MIN_DEPTH..=max_depth).step_by(2) {
        let iterations = 1u64 << (max_depth - depth + MIN_DEPTH);
        let check: u64 = (0..iterations).map(|_| T::check(&T::make(depth))).sum();
        println!("{iterations}\t trees of depth {depth}\t check: {check}");
        checksum += check;
    }
    let check = T::check(&long_lived);
    println!("long lived tree of depth {max_depth}\t check: {check}");
    checksum + check
}

/// Runs and reports one implementation.
pub fn bench<T: Trees>(implementation: &str, n: u32) {
    let start = Instant::now();
    let checksum = program::<T>(n);
    report::Result::new("binary_trees", implementation)
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
