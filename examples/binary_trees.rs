//! The Benchmarks Game's binary-trees on goro: `Gc` nodes, and the depth loop spread over
//! goroutines (one per depth, as the fastest Go entries do), results gathered over a channel.
//!
//! `cargo run --release --example binary_trees 16`

use goro::Gc;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

const MIN_DEPTH: u32 = 4;

#[derive(goro::Trace)]
struct Node {
    children: Option<(Gc<Node>, Gc<Node>)>,
}

fn make(depth: u32) -> Gc<Node> {
    Gc::new(Node {
        children: (depth > 0).then(|| (make(depth - 1), make(depth - 1))),
    })
}

fn check(node: &Node) -> u64 {
    1 + node
        .children
        .as_ref()
        .map_or(0, |(left, right)| check(left) + check(right))
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let max_depth = n.max(MIN_DEPTH + 2);
    goro::run(move || {
        let stretch = max_depth + 1;
        println!(
            "stretch tree of depth {stretch}\t check: {}",
            check(&make(stretch))
        );
        let long_lived = make(max_depth);

        let (tx, rx) = goro::chan::channel(0);
        for depth in (MIN_DEPTH..=max_depth).step_by(2) {
            let tx = tx.clone();
            goro::go(move || {
                let iterations = 1u64 << (max_depth - depth + MIN_DEPTH);
                let sum: u64 = (0..iterations).map(|_| check(&make(depth))).sum();
                tx.send((
                    depth,
                    format!("{iterations}\t trees of depth {depth}\t check: {sum}"),
                ));
            });
        }
        drop(tx);
        let mut lines: Vec<(u32, String)> = rx.iter().collect();
        lines.sort();
        for (_, line) in lines {
            println!("{line}");
        }
        println!(
            "long lived tree of depth {max_depth}\t check: {}",
            check(&long_lived)
        );
    });
}
