//! A randomized model test: programs of allocations, moves, drops and collections over `Gc`s
//! held through every kind of place (a `Vec` inside a `Gc` object, a `HashMap` behind a static,
//! a std thread's local `Vec`, a std thread's `thread_local!`, a parked goroutine's
//! `goro::Local`, a buffered channel), checked against a plain model after every collection,
//! with `clobberfree` on.

mod common;

use goro::{Gc, GcCell, Trace};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, mpsc};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(Trace)]
struct Node {
    value: u64,
    /// Derived from `value`: a poisoned or reused object fails the check.
    check: [u64; 3],
}

fn node(value: u64) -> Gc<Node> {
    Gc::new(Node {
        value,
        check: [value ^ 0x5555, value.wrapping_mul(31), !value],
    })
}

fn intact(node: &Node) -> bool {
    node.check
        == [
            node.value ^ 0x5555,
            node.value.wrapping_mul(31),
            !node.value,
        ]
}

#[derive(Trace)]
struct Holder {
    items: GcCell<Vec<Gc<Node>>>,
}

/// The places.
const PLACES: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        place: usize,
        value: u64,
    },
    Move {
        from: usize,
        to: usize,
        index: usize,
    },
    Drop {
        place: usize,
        index: usize,
    },
    Rotate {
        place: usize,
        by: usize,
    },
    Garbage {
        count: usize,
    },
    Collect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PLACES, any::<u64>()).prop_map(|(place, value)| Op::Alloc { place, value }),
        3 => (0..PLACES, 0..PLACES, any::<usize>())
            .prop_map(|(from, to, index)| Op::Move { from, to, index }),
        2 => (0..PLACES, any::<usize>()).prop_map(|(place, index)| Op::Drop { place, index }),
        1 => (0..PLACES, any::<usize>()).prop_map(|(place, by)| Op::Rotate { place, by }),
        1 => (1..500usize).prop_map(|count| Op::Garbage { count }),
        2 => Just(Op::Collect),
    ]
}

static MAP: Mutex<Option<HashMap<usize, Gc<Node>>>> = Mutex::new(None);

thread_local! {
    static THREAD_KEPT: RefCell<Vec<Gc<Node>>> = const { RefCell::new(Vec::new()) };
}

static GOROUTINE_KEPT: goro::Local<RefCell<Vec<Gc<Node>>>> =
    goro::Local::new(|| RefCell::new(Vec::new()));

/// What a holder on another thread or goroutine is asked to do.
enum Request {
    Put(Gc<Node>),
    Take(usize),
    Rotate(usize),
    Values,
}

enum Reply {
    Taken(Option<Gc<Node>>),
    Values(Vec<(u64, bool)>),
    Done,
}

fn serve(items: &mut Vec<Gc<Node>>, request: Request) -> Reply {
    match request {
        Request::Put(gc) => {
            items.push(gc);
            Reply::Done
        }
        Request::Take(index) => Reply::Taken((!items.is_empty()).then(|| {
            let at = index % items.len();
            items.remove(at)
        })),
        Request::Rotate(by) => {
            if !items.is_empty() {
                let by = by % items.len();
                items.rotate_left(by);
            }
            Reply::Done
        }
        Request::Values => Reply::Values(items.iter().map(|n| (n.value, intact(n))).collect()),
    }
}

/// The places, as the program sees them.
struct World {
    holder: Gc<Holder>,
    thread: mpsc::Sender<(Request, mpsc::Sender<Reply>)>,
    thread_local: mpsc::Sender<(Request, mpsc::Sender<Reply>)>,
    goroutine: goro::chan::Sender<(Request, goro::chan::Sender<Reply>)>,
    channel: (goro::chan::Sender<Gc<Node>>, goro::chan::Receiver<Gc<Node>>),
    channel_len: usize,
}

impl World {
    fn ask_thread(to: &mpsc::Sender<(Request, mpsc::Sender<Reply>)>, request: Request) -> Reply {
        let (tx, rx) = mpsc::channel();
        to.send((request, tx)).unwrap();
        goro::blocking(|| rx.recv().unwrap())
    }

    fn ask(&mut self, place: usize, request: Request) -> Reply {
        match place {
            0 => serve(&mut self.holder.items.borrow_mut(), request),
            1 => {
                let mut map = MAP.lock().unwrap();
                let map = map.get_or_insert_with(HashMap::new);
                let mut items: Vec<Gc<Node>> = (0..map.len()).map(|i| map[&i]).collect();
                let reply = serve(&mut items, request);
                map.clear();
                map.extend(items.into_iter().enumerate());
                reply
            }
            2 => Self::ask_thread(&self.thread, request),
            3 => Self::ask_thread(&self.thread_local, request),
            4 => {
                let (tx, rx) = goro::chan::channel(1);
                self.goroutine.send((request, tx));
                rx.recv().unwrap()
            }
            _ => match request {
                Request::Put(gc) => {
                    if self.channel_len < 64 {
                        self.channel.0.send(gc);
                        self.channel_len += 1;
                    }
                    Reply::Done
                }
                Request::Take(_) => {
                    if self.channel_len == 0 {
                        return Reply::Taken(None);
                    }
                    self.channel_len -= 1;
                    Reply::Taken(self.channel.1.recv())
                }
                Request::Rotate(by) => {
                    for _ in 0..by % (self.channel_len + 1) {
                        let gc = self.channel.1.recv().unwrap();
                        self.channel.0.send(gc);
                    }
                    Reply::Done
                }
                Request::Values => {
                    let mut values = Vec::new();
                    for _ in 0..self.channel_len {
                        let gc = self.channel.1.recv().unwrap();
                        values.push((gc.value, intact(&gc)));
                        self.channel.0.send(gc);
                    }
                    Reply::Values(values)
                }
            },
        }
    }

    fn values(&mut self, place: usize) -> Vec<(u64, bool)> {
        match self.ask(place, Request::Values) {
            Reply::Values(values) => values,
            _ => unreachable!(),
        }
    }
}

/// Runs `ops` and checks every place against the model after each collection and at the end.
fn check(ops: Vec<Op>, procs: usize) -> Result<(), String> {
    common::run_clobbering(procs, move || {
        *MAP.lock().unwrap() = Some(HashMap::new());
        let spawn_holder = |use_tls: bool| {
            let (tx, rx) = mpsc::channel::<(Request, mpsc::Sender<Reply>)>();
            let thread = std::thread::spawn(move || {
                let mut items = Vec::new();
                for (request, reply) in rx {
                    let answer = if use_tls {
                        THREAD_KEPT.with(|kept| serve(&mut kept.borrow_mut(), request))
                    } else {
                        serve(&mut items, request)
                    };
                    reply.send(answer).unwrap();
                }
                THREAD_KEPT.with(|kept| kept.borrow_mut().clear());
            });
            (tx, thread)
        };
        let (thread, thread_handle) = spawn_holder(false);
        let (thread_local, tls_handle) = spawn_holder(true);
        let (goroutine, requests) = goro::chan::channel::<(Request, goro::chan::Sender<Reply>)>(0);
        let goroutine_handle = goro::go(move || {
            for (request, reply) in requests.iter() {
                let answer = GOROUTINE_KEPT.with(|kept| serve(&mut kept.borrow_mut(), request));
                reply.send(answer);
            }
        });
        let mut world = World {
            holder: Gc::new(Holder {
                items: GcCell::new(Vec::new()),
            }),
            thread,
            thread_local,
            goroutine,
            channel: goro::chan::channel(64),
            channel_len: 0,
        };
        let mut model: Vec<Vec<u64>> = vec![Vec::new(); PLACES];
        let mut outcome = Ok(());
        for (step, op) in ops.iter().enumerate() {
            apply(&mut world, &mut model, op);
            let checked = matches!(op, Op::Collect) || step + 1 == ops.len();
            let compared = if checked {
                compare(&mut world, &model)
            } else {
                Ok(())
            };
            if let Err(error) = compared {
                outcome = Err(format!("after step {step} ({op:?}): {error}"));
                break;
            }
        }
        drop(world.thread);
        drop(world.thread_local);
        drop(world.goroutine);
        goro::blocking(|| {
            thread_handle.join().unwrap();
            tls_handle.join().unwrap();
        });
        goroutine_handle.join().unwrap();
        MAP.lock().unwrap().take();
        outcome
    })
}

fn apply(world: &mut World, model: &mut [Vec<u64>], op: &Op) {
    match *op {
        Op::Alloc { place, value } => {
            world.ask(place, Request::Put(node(value)));
            if place != PLACES - 1 || model[place].len() < 64 {
                model[place].push(value);
            }
        }
        Op::Move { from, to, index } => {
            if let Reply::Taken(Some(gc)) = world.ask(from, Request::Take(index)) {
                let at = model[from]
                    .iter()
                    .position(|&v| v == gc.value)
                    .expect("the taken value is in the model");
                if from == PLACES - 1 {
                    model[from].remove(0);
                } else {
                    model[from].remove(at);
                }
                world.ask(to, Request::Put(gc));
                if to != PLACES - 1 || model[to].len() < 64 {
                    model[to].push(gc.value);
                }
            }
        }
        Op::Drop { place, index } => {
            if let Reply::Taken(Some(_)) = world.ask(place, Request::Take(index)) {
                if place == PLACES - 1 {
                    model[place].remove(0);
                } else {
                    let at = index % model[place].len();
                    model[place].remove(at);
                }
            }
        }
        Op::Rotate { place, by } => {
            world.ask(place, Request::Rotate(by));
            let len = model[place].len();
            if len > 0 {
                if place == PLACES - 1 {
                    model[place].rotate_left(by % (len + 1) % len.max(1));
                } else {
                    model[place].rotate_left(by % len);
                }
            }
        }
        Op::Garbage { count } => {
            for i in 0..count {
                std::hint::black_box(node(i as u64));
            }
        }
        Op::Collect => goro::gc::collect(),
    }
}

fn compare(world: &mut World, model: &[Vec<u64>]) -> Result<(), String> {
    for (place, expected) in model.iter().enumerate() {
        let found = world.values(place);
        if found.iter().any(|&(_, intact)| !intact) {
            return Err(format!(
                "place {place}: an object was freed while held: {found:?}"
            ));
        }
        let mut got: Vec<u64> = found.iter().map(|&(v, _)| v).collect();
        let mut want = expected.clone();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            return Err(format!(
                "place {place}: held {got:?}, the model says {want:?}"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn gc_graphs_in_every_place_survive_collections(
        ops in proptest::collection::vec(op(), 1..120),
        procs in 1..=2usize,
    ) {
        let outcome = check(ops, procs);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
