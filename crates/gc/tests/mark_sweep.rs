//! Mark-sweep on hand-built graphs, with a fake `Mutators` whose only roots are a word array.

use goro_derive::Trace;
use goro_gc::{Gc, GcCell, Mutators, RootVisitor, Trace, Tracer};
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

// Containers are found by scanning their storage, which must be in goro's heap.
#[global_allocator]
static ALLOC: goro_alloc::GoroAlloc = goro_alloc::GoroAlloc;

/// Root words the fake reports; the test writes object addresses here.
struct Roots([AtomicUsize; 16]);

static ROOTS: Roots = Roots([const { AtomicUsize::new(0) }; 16]);
static DROPS: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

struct Fake;

/// The fake's world: the test thread holds it while it runs as a mutator and lets go of it at
/// safe points and while it waits for a cycle; the mark worker takes it to stop the world.
static WORLD: Mutex<()> = Mutex::new(());

thread_local! {
    static HELD: RefCell<Option<MutexGuard<'static, ()>>> = const { RefCell::new(None) };
}

fn hold_world() {
    HELD.with(|held| {
        if held.borrow().is_none() {
            *held.borrow_mut() = Some(WORLD.lock().unwrap_or_else(|p| p.into_inner()));
        }
    });
}

/// Lets go of the world if this thread holds it; returns whether it did.
fn let_go_of_world() -> bool {
    HELD.with(|held| held.borrow_mut().take().is_some())
}

// SAFETY: the test thread is the only thread that touches `Gc`s (the tests are serialised, and
// none hands a `Gc` to another thread), and it runs only while it holds `WORLD`, which every
// stop of the world takes (the test thread's own stops run while it holds it); the only roots
// it relies on are the words of `ROOTS`.
unsafe impl Mutators for Fake {
    fn stop_the_world(
        &self,
        cycle: &mut dyn FnMut(),
        restarted: &mut dyn FnMut(std::time::Duration),
    ) -> bool {
        let stopped = std::time::Instant::now();
        if HELD.with(|held| held.borrow().is_some()) {
            cycle();
        } else {
            let _world = WORLD.lock().unwrap_or_else(|p| p.into_inner());
            cycle();
        }
        restarted(stopped.elapsed());
        true
    }
    fn roots(&self, visitor: &mut RootVisitor<'_>) {
        let lo = ROOTS.0.as_ptr().cast::<u8>();
        // SAFETY: a static array, readable for the whole program.
        unsafe { visitor.range(lo, lo.add(size_of_val(&ROOTS.0))) };
    }
    fn safe_point(&self) {
        if let_go_of_world() {
            std::thread::yield_now();
            hold_world();
        }
    }
    fn pause(&self, duration: std::time::Duration) {
        let held = let_go_of_world();
        std::thread::sleep(duration);
        if held {
            hold_world();
        }
    }
    fn procs(&self) -> usize {
        1
    }
    fn idle_procs(&self) -> usize {
        0
    }
}

static FAKE: Fake = Fake;

/// Counts drops of the object that holds it.
struct DropCounter;

impl Drop for DropCounter {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: owns no Gc; its drop touches only a static counter.
unsafe impl Trace for DropCounter {
    fn trace(&self, _: &mut Tracer) {}
}

#[derive(Trace)]
#[trace(crate = "goro_gc")]
struct Node {
    value: u64,
    next: GcCell<Option<Gc<Node>>>,
    children: Vec<Gc<Node>>,
    counter: DropCounter,
}

fn node(value: u64) -> Gc<Node> {
    Gc::new(Node {
        value,
        next: GcCell::new(None),
        children: Vec::new(),
        counter: DropCounter,
    })
}

/// Serialises the tests (one installed `Mutators` per process) and installs the fake.
fn setup() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the tests are serialised: the fake is the only world, and no test runs a goro
    // runtime.
    unsafe {
        goro_gc::uninstall();
        goro_gc::install(&FAKE);
    }
    hold_world();
    // Only forced collections: the fake reports no stack, so a paced cycle in the middle of a
    // test would free what the test holds in locals before it roots them.
    goro_gc::set_percent(-1);
    for root in &ROOTS.0 {
        root.store(0, Ordering::SeqCst);
    }
    // Start from a clean slate: collect whatever earlier tests left unrooted.
    goro_gc::collect();
    DROPS.store(0, Ordering::SeqCst);
    guard
}

fn root(index: usize, gc: Gc<Node>) {
    ROOTS.0[index].store(gc.as_ptr() as usize, Ordering::SeqCst);
}

#[test]
fn unreachable_objects_are_dropped_and_reachable_ones_kept() {
    let _serial = setup();
    // a -> b -> c (through a GcCell), a.children = [g]; d <-> e a cycle; f alone.
    let a = node(1);
    let b = node(2);
    let c = node(3);
    a.next.set(Some(b));
    b.next.set(Some(c));
    let g = Gc::new(Node {
        value: 7,
        next: GcCell::new(None),
        children: Vec::new(),
        counter: DropCounter,
    });
    let a = Gc::new(Node {
        value: a.value,
        next: GcCell::new(a.next.get()),
        // Two copies fill the buffer's 16-byte block: a malloc block is scanned whole, and a
        // recycled one could hold a stale word pointing at d or e (their slots recycled too).
        children: vec![g; 2],
        counter: DropCounter,
    });
    let d = node(4);
    let e = node(5);
    d.next.set(Some(e));
    e.next.set(Some(d));
    let _f = node(6);
    root(0, a);
    let before = goro_gc::stats().cycles;
    goro_gc::collect();
    // The first `a` (value 1, no longer rooted), d, e and f are gone: 4 drops.
    assert_eq!(DROPS.load(Ordering::SeqCst), 4);
    assert_eq!(goro_gc::stats().cycles, before + 1);
    let b = a.next.get().unwrap();
    let c = b.next.get().unwrap();
    assert_eq!(
        (a.value, b.value, c.value, a.children[0].value),
        (1, 2, 3, 7)
    );
    assert!(c.next.get().is_none());

    ROOTS.0[0].store(0, Ordering::SeqCst);
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 8);
}

#[test]
fn an_interior_pointer_keeps_its_object() {
    let _serial = setup();
    let a = node(11);
    let field = &a.value as *const u64 as usize;
    ROOTS.0[1].store(field + 4, Ordering::SeqCst);
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 0);
    assert_eq!(a.value, 11);
    // One past the end of the value still lands in the slot (the header is at the end).
    ROOTS.0[1].store(
        a.as_ptr() as usize + std::mem::size_of::<Node>(),
        Ordering::SeqCst,
    );
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 0);
    ROOTS.0[1].store(0, Ordering::SeqCst);
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
}

#[test]
fn a_long_chain_is_marked_without_recursion_and_freed() {
    let _serial = setup();
    let head = node(0);
    // Rooted before the chain grows: building it triggers cycles on its own.
    root(2, head);
    goro_gc::set_percent(100);
    let mut tail = head;
    for i in 1..200_000 {
        let next = node(i);
        tail.next.set(Some(next));
        tail = next;
    }
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 0);
    let mut sum = 0;
    let mut at = Some(head);
    while let Some(n) = at {
        sum += n.value;
        at = n.next.get();
    }
    assert_eq!(sum, 199_999 * 200_000 / 2);
    let live = goro_gc::stats().heap_live;
    assert!(
        live >= 200_000 * std::mem::size_of::<Node>(),
        "heap_live {live}"
    );
    ROOTS.0[2].store(0, Ordering::SeqCst);
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 200_000);
    assert!(goro_gc::stats().heap_live < live / 100);
}

#[test]
fn large_objects_are_collected() {
    let _serial = setup();
    #[derive(Trace)]
    #[trace(crate = "goro_gc")]
    struct Big {
        bytes: [u8; 100_000],
        counter: DropCounter,
    }
    let kept = Gc::new(Big {
        bytes: [7; 100_000],
        counter: DropCounter,
    });
    for _ in 0..10 {
        Gc::new(Big {
            bytes: [1; 100_000],
            counter: DropCounter,
        });
    }
    ROOTS.0[3].store(kept.as_ptr() as usize, Ordering::SeqCst);
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 10);
    assert!(kept.bytes.iter().all(|&b| b == 7));
}

#[test]
fn retired_objects_are_never_freed() {
    let _serial = setup();
    let kept = node(21);
    let _lost = node(22);
    root(5, kept);
    // The retirement marks beside this thread, and its second pause takes the world this thread
    // holds: let go of it until the retirement is over.
    let_go_of_world();
    // SAFETY: the fake's world is this thread alone, whose only root is `ROOTS` (it allocates
    // nothing until the retirement is over); the fake is uninstalled, as a runtime that ends
    // uninstalls its world, and installed again by the next test's setup.
    unsafe {
        goro_gc::uninstall();
        goro_gc::retire(&FAKE);
    }
    goro_gc::wait_for_retirement();
    // SAFETY: the retirement is over, and the tests are serialised.
    unsafe { goro_gc::install(&FAKE) };
    hold_world();
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    // No root refers to `kept` any more, yet it survives: it outlived its runtime.
    ROOTS.0[5].store(0, Ordering::SeqCst);
    goro_gc::collect();
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    assert_eq!(kept.value, 21);
}

#[test]
fn allocation_triggers_collection_by_gogc() {
    let _serial = setup();
    goro_gc::set_percent(100);
    let before = goro_gc::stats().cycles;
    for i in 0..400_000 {
        node(i);
    }
    let after = goro_gc::stats();
    // 400k nodes of ~64 bytes = ~25 MiB allocated against a 4 MiB minimum goal.
    assert!(
        after.cycles >= before + 3,
        "only {} cycles",
        after.cycles - before
    );
    assert!(
        after.heap_alloc < 8 << 20,
        "heap_alloc {}",
        after.heap_alloc
    );
}

#[test]
fn gc_cell_borrow_errors_say_why() {
    let _serial = setup();
    let cell = GcCell::new(5);
    let shared = cell.borrow();
    assert_eq!(
        cell.try_borrow_mut().unwrap_err().to_string(),
        "GcCell already borrowed"
    );
    drop(shared);
    let exclusive = cell.borrow_mut();
    assert_eq!(
        cell.try_borrow().unwrap_err().to_string(),
        "GcCell already mutably borrowed"
    );
    drop(exclusive);
    assert_eq!(cell.get(), 5);
}

#[test]
fn gc_new_outside_a_runtime_panics_with_the_reason() {
    let _serial = setup();
    // SAFETY: serialised; nothing else uses the fake meanwhile.
    unsafe { goro_gc::uninstall() };
    let error = std::panic::catch_unwind(|| Gc::new(1u32)).unwrap_err();
    let message = error.downcast_ref::<&str>().unwrap();
    assert!(
        message.starts_with("Gc::new called outside a goro runtime"),
        "{message}"
    );
}

#[test]
fn dead_objects_without_drop_glue_are_freed_and_their_slots_reused() {
    let _serial = setup();
    #[derive(Trace)]
    #[trace(crate = "goro_gc")]
    struct Leaf {
        value: u64,
    }
    let before = goro_alloc::stats().gc_spans_inuse_bytes;
    let mut sum = 0;
    for _ in 0..20 {
        for i in 0..50_000 {
            sum += std::hint::black_box(Gc::new(Leaf { value: i })).value;
        }
        goro_gc::collect();
    }
    assert_eq!(sum, 20 * (50_000 * 49_999 / 2));
    // 1,000,000 leaves of 16 bytes were made, 50,000 at a time: the spans in use grow by about
    // one round's worth when freed slots are reused, by sixteen megabytes when they are not.
    let grown = goro_alloc::stats()
        .gc_spans_inuse_bytes
        .saturating_sub(before);
    assert!(grown < 4 << 20, "Gc spans in use grew by {grown} bytes");
}

/// A field with drop glue that holds no `Gc`, and says so: objects made of it are pointer-free.
struct PlainCounter;

impl Drop for PlainCounter {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: owns no Gc (nor memory holding one); its drop touches only a static counter.
unsafe impl Trace for PlainCounter {
    const POINTER_FREE: bool = true;

    fn trace(&self, _: &mut Tracer) {}
}

/// A pointer-free object: words, a string, drop glue.
#[derive(Trace)]
#[trace(crate = "goro_gc")]
struct Payload {
    words: [u64; 30],
    name: String,
    counter: PlainCounter,
}

fn payload(value: u64) -> Gc<Payload> {
    Gc::new(Payload {
        words: [value; 30],
        name: value.to_string(),
        counter: PlainCounter,
    })
}

fn assert_payload(p: &Payload, value: u64) {
    assert!(
        p.words.iter().all(|&w| w == value) && p.name == value.to_string(),
        "a reachable pointer-free object was freed or overwritten"
    );
}

/// `Trace::POINTER_FREE`: true exactly for types no value of which can hold a `Gc`, derived
/// from the fields, through arrays, tuples, `Option` and generic parameters.
#[test]
fn pointer_free_types_are_told_by_their_fields() {
    #[derive(Trace)]
    #[trace(crate = "goro_gc")]
    #[allow(dead_code, reason = "only the type is looked at")]
    enum Shape {
        Empty,
        Point(f64, f64),
        Named { name: String, sides: Option<u32> },
    }
    #[derive(Trace)]
    #[trace(crate = "goro_gc")]
    #[allow(dead_code, reason = "only the type is looked at")]
    struct Wrapper<T> {
        inner: (u8, [T; 2]),
    }
    #[derive(Trace)]
    #[trace(crate = "goro_gc")]
    #[allow(dead_code, reason = "only the type is looked at")]
    struct WithCell {
        count: GcCell<u64>,
    }
    let pointer_free = [
        <u64 as Trace>::POINTER_FREE,
        <[u64; 32] as Trace>::POINTER_FREE,
        <(u8, String, Option<char>) as Trace>::POINTER_FREE,
        <Shape as Trace>::POINTER_FREE,
        <Wrapper<Shape> as Trace>::POINTER_FREE,
        <Payload as Trace>::POINTER_FREE,
        <Wrapper<Wrapper<u16>> as Trace>::POINTER_FREE,
    ];
    assert_eq!(pointer_free, [true; 7]);
    let scanned = [
        <Gc<u64> as Trace>::POINTER_FREE,
        <Option<Gc<Payload>> as Trace>::POINTER_FREE,
        <Wrapper<Gc<u64>> as Trace>::POINTER_FREE,
        <WithCell as Trace>::POINTER_FREE,
        <Vec<u64> as Trace>::POINTER_FREE,
        <Box<u64> as Trace>::POINTER_FREE,
        <(u64, Gc<u64>) as Trace>::POINTER_FREE,
        <Node as Trace>::POINTER_FREE,
        <DropCounter as Trace>::POINTER_FREE,
    ];
    assert_eq!(scanned, [false; 9]);
}

/// Pointer-free objects go to spans of their own, where marking sets their bits without reading
/// them: they stay alive while a root (even an interior pointer) or a traced object reaches
/// them, and are dropped and freed once nothing does, small and large alike.
#[test]
fn pointer_free_objects_live_apart_and_die_when_unreachable() {
    let _serial = setup();
    #[derive(Trace)]
    #[trace(crate = "goro_gc")]
    struct LargePayload {
        words: [u64; 8192],
        counter: PlainCounter,
    }
    #[derive(Trace)]
    #[trace(crate = "goro_gc")]
    struct Holder {
        held: [GcCell<Option<Gc<Payload>>>; 8],
    }
    let pointer_free = |address: usize| {
        goro_alloc::find_block(address)
            .expect("a Gc slot")
            .is_pointer_free()
    };
    let alone = payload(1);
    let large = Gc::new(LargePayload {
        words: [2; 8192],
        counter: PlainCounter,
    });
    let holder = Gc::new(Holder {
        held: core::array::from_fn(|i| GcCell::new(Some(payload(10 + i as u64)))),
    });
    assert!(pointer_free(alone.as_ptr() as usize));
    assert!(pointer_free(large.as_ptr() as usize));
    assert!(!pointer_free(holder.as_ptr() as usize));
    assert!(!pointer_free(node(3).as_ptr() as usize));
    // Garbage around them, pointer-free or not: 20 payloads and the node above.
    for i in 0..20 {
        payload(100 + i);
    }
    ROOTS.0[4].store(&alone.words[7] as *const u64 as usize + 4, Ordering::SeqCst);
    ROOTS.0[5].store(large.as_ptr() as usize, Ordering::SeqCst);
    ROOTS.0[6].store(holder.as_ptr() as usize, Ordering::SeqCst);
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 21);
    assert_payload(&alone, 1);
    assert!(large.words.iter().all(|&w| w == 2));
    for (i, cell) in holder.held.iter().enumerate() {
        assert_payload(&cell.get().unwrap(), 10 + i as u64);
    }
    // Half the holder's payloads let go: exactly those die.
    for cell in holder.held.iter().step_by(2) {
        cell.set(None);
    }
    goro_gc::collect();
    assert_eq!(DROPS.load(Ordering::SeqCst), 25);
    for (i, cell) in holder.held.iter().enumerate().skip(1).step_by(2) {
        assert_payload(&cell.get().unwrap(), 10 + i as u64);
    }
    assert_payload(&alone, 1);
    for root in &ROOTS.0[4..7] {
        root.store(0, Ordering::SeqCst);
    }
    goro_gc::collect();
    // The last four payloads, the lone one, the large one.
    assert_eq!(DROPS.load(Ordering::SeqCst), 31);
}
