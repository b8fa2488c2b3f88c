//! A reachability model of random object graphs: programs that allocate, link, unlink, drop
//! roots and collect, run against the concurrent collector with `gcstress` on (every allocation
//! that finds no cycle under way starts one, so marking is under way through almost every
//! step), `gccheckmark` and `clobberfree`. After every forced collection the model decides:
//! every node it can reach from the roots is alive and intact, with the edges the program gave
//! it, and the roots hold what it says. The model does not demand that the nodes it cannot reach
//! are reclaimed: conservative scans read whole stack frames and whole malloc blocks, free ones
//! in the allocator's free lists included (docs/gc.md, "Stale words"), and one stale word into
//! a graph keeps all it reaches; `tests/weak.rs` checks reclamation where no graph hangs off a
//! stale word.
//!
//! Each step runs on a goroutine of its own, so that the step's frames die with it (a finished
//! goroutine's stack is not scanned): the main goroutine holds the roots object and weak
//! pointers only.

mod common;

use goro::gc::Weak;
use goro::{Gc, GcCell, Trace};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

/// Edges per node.
const EDGES: usize = 2;
/// Root slots.
const ROOTS: usize = 4;

#[derive(Trace)]
struct Node {
    id: u64,
    /// Derived from `id`: a poisoned or reused object fails the check.
    check: u64,
    edges: [GcCell<Option<Gc<Node>>>; EDGES],
}

/// The roots, inline (a slot is overwritten in place: no freed buffer keeps an old address).
#[derive(Trace)]
struct Roots {
    slots: [GcCell<Option<Gc<Node>>>; ROOTS],
}

fn check_of(id: u64) -> u64 {
    id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xabcd
}

#[derive(Clone, Debug)]
enum Op {
    /// A new node in a root slot.
    Alloc { root: usize },
    /// `from.edges[edge] = to`, picking live nodes by index among those the model reaches.
    Link { from: usize, edge: usize, to: usize },
    /// `from.edges[edge] = None`.
    Unlink { from: usize, edge: usize },
    /// A root slot takes a node the model reaches (or is emptied).
    Root { root: usize, node: Option<usize> },
    /// A forced collection, then the check.
    Collect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..ROOTS).prop_map(|root| Op::Alloc { root }),
        4 => (0..64usize, 0..EDGES, 0..64usize).prop_map(|(from, edge, to)| Op::Link { from, edge, to }),
        2 => (0..64usize, 0..EDGES).prop_map(|(from, edge)| Op::Unlink { from, edge }),
        2 => (0..ROOTS, prop::option::of(0..64usize)).prop_map(|(root, node)| Op::Root { root, node }),
        1 => Just(Op::Collect),
    ]
}

/// The model: each node's edges, the roots, by node id.
#[derive(Default)]
struct Model {
    edges: Vec<[Option<u64>; EDGES]>,
    roots: [Option<u64>; ROOTS],
}

impl Model {
    /// Ids the roots reach, sorted.
    fn reachable(&self) -> Vec<u64> {
        let mut seen = vec![false; self.edges.len()];
        let mut stack: Vec<u64> = self.roots.iter().flatten().copied().collect();
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut seen[id as usize], true) {
                continue;
            }
            stack.extend(self.edges[id as usize].iter().flatten());
        }
        (0..self.edges.len() as u64)
            .filter(|&id| seen[id as usize])
            .collect()
    }
}

/// Runs `step` on a goroutine of its own and waits for it.
fn on_a_goroutine<R: Send + 'static>(step: impl FnOnce() -> R + Send + 'static) -> R {
    goro::go(step).join().unwrap()
}

fn run(ops: Vec<Op>, procs: usize) -> Result<(), String> {
    common::run_clobbering(procs, move || {
        goro::gc::set_checkmark(true);
        goro::gc::set_stress(true);
        let outcome = run_ops(&ops);
        goro::gc::set_stress(false);
        goro::gc::set_checkmark(false);
        outcome
    })
}

fn run_ops(ops: &[Op]) -> Result<(), String> {
    let roots = Gc::new(Roots {
        slots: std::array::from_fn(|_| GcCell::new(None)),
    });
    let mut model = Model::default();
    let mut weaks: Vec<Weak<Node>> = Vec::new();
    for op in ops.iter().chain([&Op::Collect]) {
        let reachable = model.reachable();
        let pick = |index: usize| reachable.get(index % reachable.len().max(1)).copied();
        match *op {
            Op::Alloc { root } => {
                let id = model.edges.len() as u64;
                let weak = on_a_goroutine(move || {
                    let node = Gc::new(Node {
                        id,
                        check: check_of(id),
                        edges: std::array::from_fn(|_| GcCell::new(None)),
                    });
                    *roots.slots[root].borrow_mut() = Some(node);
                    Weak::new(&node)
                });
                weaks.push(weak);
                model.edges.push([None; EDGES]);
                model.roots[root] = Some(id);
            }
            Op::Link { from, edge, to } => {
                let (Some(from), Some(to)) = (pick(from), pick(to)) else {
                    continue;
                };
                let (a, b) = (weaks[from as usize].clone(), weaks[to as usize].clone());
                on_a_goroutine(move || {
                    let (a, b) = (a.upgrade().unwrap(), b.upgrade().unwrap());
                    *a.edges[edge].borrow_mut() = Some(b);
                });
                model.edges[from as usize][edge] = Some(to);
            }
            Op::Unlink { from, edge } => {
                let Some(from) = pick(from) else { continue };
                let a = weaks[from as usize].clone();
                on_a_goroutine(move || {
                    *a.upgrade().unwrap().edges[edge].borrow_mut() = None;
                });
                model.edges[from as usize][edge] = None;
            }
            Op::Root { root, node } => {
                let id = node.and_then(pick);
                let weak = id.map(|id| weaks[id as usize].clone());
                on_a_goroutine(move || {
                    *roots.slots[root].borrow_mut() = weak.map(|weak| weak.upgrade().unwrap());
                });
                model.roots[root] = id;
            }
            Op::Collect => {
                goro::gc::collect();
                compare(&model, &weaks, roots)?;
            }
        }
    }
    goro::gc::keep_alive(&roots);
    Ok(())
}

/// Checks the heap against the model after a forced collection.
fn compare(model: &Model, weaks: &[Weak<Node>], roots: Gc<Roots>) -> Result<(), String> {
    let reachable = model.reachable();
    for (id, weak) in weaks.iter().enumerate() {
        let id = id as u64;
        let live = reachable.binary_search(&id).is_ok();
        let edges = model.edges[id as usize];
        let weak = weak.clone();
        let seen = on_a_goroutine(move || {
            weak.upgrade().map(|node| {
                let intact = node.id == id && node.check == check_of(id);
                let targets: Vec<Option<u64>> = node
                    .edges
                    .iter()
                    .map(|edge| edge.borrow().map(|to| to.id))
                    .collect();
                (intact, targets)
            })
        });
        match (live, seen) {
            (true, None) => return Err(format!("node {id} is reachable but was reclaimed")),
            (true, Some((false, _))) => return Err(format!("node {id} was overwritten")),
            (true, Some((true, targets))) if targets != edges => {
                return Err(format!(
                    "node {id} has edges {targets:?}, the model {edges:?}"
                ));
            }
            _ => {}
        }
    }
    let held = on_a_goroutine(move || {
        roots
            .slots
            .iter()
            .map(|slot| slot.borrow().map(|node| node.id))
            .collect::<Vec<_>>()
    });
    if held != model.roots {
        return Err(format!("roots {held:?}, the model {:?}", model.roots));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_under_gcstress_match_the_reachability_model_at_1_p(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(ops, 1).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_graphs_under_gcstress_match_the_reachability_model_at_2_ps(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(ops, 2).map_err(TestCaseError::fail)?;
    }
}
