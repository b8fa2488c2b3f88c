//! The stop-the-world cycle: allocation accounting, marking, sweeping, retirement.
//!
//! Marking keeps an explicit work list (never recursion, so deep object graphs cannot overflow
//! the system stack). Two kinds of work:
//!
//! - `Object(start, header)`: a marked Gc object, traced precisely through its vtable;
//! - `Range(lo, hi)`: root memory or a marked malloc block, scanned conservatively word by word.
//!
//! Sweeping runs per span in two passes: first it lists the dead slots (unmarked, allocated, not
//! immortal) with no user code running, then it drops them and only then frees them. Dropping runs
//! user drop glue, which may allocate (even `Gc` objects) and free; because the dead slots of the
//! span are still allocated while it runs, the span cannot be released or re-carved under the
//! sweeper. Objects allocated while sweeping are marked at birth ("allocate black"), so a span
//! swept later in the same cycle keeps them.

use crate::object::{IMMORTAL, header_of, vtable_of};
use crate::pacer;
use crate::roots::{self, Mutators, RootVisitor};
use crate::stats::{self, CycleReport};
use crate::trace::Tracer;
use goro_alloc::SpanKind;
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Allocation is added to the pacer in batches of this many bytes per thread; each batch is also a
/// safe point.
const ALLOCATION_BATCH: usize = 64 << 10;

/// True while a cycle runs (no nested cycle may start from drop glue).
static COLLECTING: AtomicBool = AtomicBool::new(false);
/// True while sweeping: new objects are marked at birth.
static SWEEPING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static UNCOUNTED: Cell<usize> = const { Cell::new(0) };
}

/// Allocates a slot for a new object: the allocation half of `Gc::new`.
#[inline]
pub(crate) fn allocate(request: usize, align: usize, slot: usize) -> *mut u8 {
    if !roots::is_mutator_thread() {
        not_a_mutator();
    }
    let uncounted = UNCOUNTED.with(|cell| {
        let bytes = cell.get() + slot;
        cell.set(bytes);
        bytes
    });
    if uncounted >= ALLOCATION_BATCH {
        count_batch(uncounted);
    }
    let ptr = goro_alloc::alloc_gc(request, align);
    if ptr.is_null() {
        out_of_memory(request, align);
    }
    ptr
}

/// Marks an object allocated while sweeping, so that the running sweep keeps it.
#[inline]
pub(crate) fn allocated_black(slot: *mut u8) {
    if SWEEPING.load(Ordering::Relaxed)
        && let Some(block) = goro_alloc::find_block(slot as usize)
    {
        block.mark();
    }
}

#[cold]
#[inline(never)]
fn not_a_mutator() -> ! {
    if roots::current().is_none() {
        panic!("Gc::new called outside a goro runtime: start one with goro::run(|| ...)");
    }
    panic!(
        "Gc::new called on a thread goro did not start: the collector cannot see this thread's \
         stack; allocate inside a goroutine (goro::go) instead"
    );
}

#[cold]
#[inline(never)]
fn out_of_memory(request: usize, align: usize) -> ! {
    match std::alloc::Layout::from_size_align(request, align) {
        Ok(layout) => std::alloc::handle_alloc_error(layout),
        Err(_) => panic!("Gc::new: object of {request} bytes cannot be laid out"),
    }
}

#[cold]
#[inline(never)]
fn count_batch(bytes: usize) {
    UNCOUNTED.with(|cell| cell.set(0));
    pacer::add_allocated(bytes);
    let Some(mutators) = roots::current() else {
        return;
    };
    mutators.safe_point();
    if pacer::should_trigger() && !COLLECTING.load(Ordering::Relaxed) {
        run_cycle(mutators, false);
    }
}

/// Runs a full collection now (Go's `runtime.GC`): returns when it is complete.
///
/// # Panics
/// Panics when called outside a goro runtime or on a thread goro did not start.
pub fn collect() {
    let Some(mutators) = roots::current() else {
        panic!("goro::gc::collect called outside a goro runtime: start one with goro::run");
    };
    if !roots::is_mutator_thread() {
        panic!("goro::gc::collect called on a thread goro did not start; call it from a goroutine");
    }
    run_cycle(mutators, true);
}

/// Keeps `value` (and what it points to) reachable up to this point (Go's `runtime.KeepAlive`).
#[inline]
pub fn keep_alive<T: ?Sized>(value: &T) {
    std::hint::black_box(value);
}

fn run_cycle(mutators: &'static dyn Mutators, forced: bool) {
    let requested = Instant::now();
    mutators.stop_the_world(&mut || {
        // Another goroutine may have collected while this one waited for the world to stop.
        if forced || pacer::should_trigger() {
            cycle(mutators, forced, requested);
        }
    });
}

fn cycle(mutators: &dyn Mutators, forced: bool, requested: Instant) {
    if COLLECTING.swap(true, Ordering::Relaxed) {
        return;
    }
    let began = Instant::now();
    let heap_before = pacer::heap_alloc();
    let mut tracer = Tracer::new();
    goro_alloc::clear_marks();
    let mut roots = 0;
    mark_immortals(&mut tracer);
    mutators.roots(&mut RootVisitor {
        sink: &mut |lo, hi| {
            roots += hi.saturating_sub(lo);
            tracer.push_range(lo, hi);
        },
    });
    tracer.drain();
    let marked = Instant::now();
    let swept = sweep(false);
    let done = Instant::now();
    pacer::cycle_done(swept.live_bytes, roots);
    stats::record(&CycleReport {
        forced,
        heap_before,
        stop: began.duration_since(requested),
        mark: marked.duration_since(began),
        sweep: done.duration_since(marked),
        live_bytes: swept.live_bytes,
        live_objects: swept.live_objects,
        freed_bytes: swept.freed_bytes,
        freed_objects: swept.freed_objects,
        roots,
        procs: mutators.procs(),
        began: requested,
    });
    COLLECTING.store(false, Ordering::Relaxed);
}

/// Ends the life of a runtime's heap: marks from the roots `report` gives (what outlives the
/// runtime, e.g. the value `run` returns, and the stacks of goroutines it abandons), drops every
/// object not reached, and makes every object reached *immortal*: no later cycle frees it.
///
/// The caller must have stopped every mutator for good and uninstalled its `Mutators`.
pub fn retire(report: &mut dyn FnMut(&mut RootVisitor<'_>)) {
    if COLLECTING.swap(true, Ordering::Relaxed) {
        panic!("goro::gc::retire called during a collection");
    }
    let mut tracer = Tracer::new();
    goro_alloc::clear_marks();
    mark_immortals(&mut tracer);
    report(&mut RootVisitor {
        sink: &mut |lo, hi| tracer.push_range(lo, hi),
    });
    tracer.drain();
    sweep(true);
    pacer::cycle_done(0, 0);
    COLLECTING.store(false, Ordering::Relaxed);
}

/// Objects made immortal by [`retire`]. They are roots of every later cycle: whoever holds them
/// outside any runtime (the caller of `run`, say) may reach, through their `GcCell`s, objects a
/// later runtime stored there. (The facade's scan of static data would find this list's buffer
/// too; marking it here keeps the rule independent of that scan.)
static IMMORTALS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn mark_immortals(tracer: &mut Tracer) {
    let immortals = IMMORTALS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    for &object in immortals.iter() {
        tracer.marker.mark_object(object);
    }
}

#[derive(Default)]
struct Swept {
    live_bytes: usize,
    live_objects: usize,
    freed_bytes: usize,
    freed_objects: usize,
}

fn sweep(immortalize: bool) -> Swept {
    let mut swept = Swept::default();
    let mut dead: Vec<*mut u8> = Vec::new();
    let mut new_immortals = Vec::new();
    SWEEPING.store(true, Ordering::Relaxed);
    goro_alloc::for_each_gc_span(|span| {
        let size = span.elem_size();
        dead.clear();
        let mut live = 0;
        // Pass 1: list the dead slots. No user code runs here.
        for w in 0..span.len().div_ceil(64) {
            let marks = span.mark_word(w);
            for i in 64 * w..(64 * w + 64).min(span.len()) {
                let slot = span.slot(i);
                // SAFETY: `slot` is a slot of a Gc span of element size `size`.
                let header = unsafe { header_of(slot, size) };
                // SAFETY: the header word lies inside the span's memory, which stays mapped.
                let word = unsafe { header.read() };
                if word == 0 {
                    continue;
                }
                if marks & (1 << (i % 64)) != 0 || word & IMMORTAL != 0 {
                    live += 1;
                    if immortalize && word & IMMORTAL == 0 {
                        // SAFETY: as above; no mutator runs, and the slot is allocated.
                        unsafe { header.write(word | IMMORTAL) };
                        new_immortals.push(slot as usize);
                    }
                } else {
                    dead.push(slot);
                }
            }
        }
        // Pass 2: drop them. Drop glue may allocate and free; the dead slots stay allocated.
        for &slot in &dead {
            // SAFETY: the header was written by `Gc::new` for this slot's object, which marking
            // did not reach: no mutator can use it again.
            unsafe {
                if let Some(drop) = vtable_of(header_of(slot, size).read()).drop {
                    drop(slot);
                }
            }
        }
        // Pass 3: zero the headers (goro-alloc's slot convention) and free in one batch.
        for &slot in &dead {
            // SAFETY: the object was dropped above and the slot is still allocated.
            unsafe { header_of(slot, size).write(0) };
        }
        // SAFETY: distinct dead slots of this span, dropped, headers zeroed, never used again.
        unsafe { span.free_slots(&dead) };
        swept.live_objects += live;
        swept.live_bytes += live * size;
        swept.freed_objects += dead.len();
        swept.freed_bytes += dead.len() * size;
    });
    SWEEPING.store(false, Ordering::Relaxed);
    IMMORTALS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .extend(new_immortals);
    swept
}

/// One unit of marking work.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// A marked Gc object to trace precisely: its start and its header word.
    Object(usize, usize),
    /// Memory to scan conservatively.
    Range(usize, usize),
}

/// The marking state behind a [`Tracer`].
pub(crate) struct Marker {
    work: Vec<Work>,
}

impl Tracer {
    fn new() -> Tracer {
        Tracer {
            marker: Marker {
                work: Vec::with_capacity(1024),
            },
        }
    }

    fn push_range(&mut self, lo: usize, hi: usize) {
        self.marker.push_range(lo, hi);
    }

    fn drain(&mut self) {
        while let Some(work) = self.marker.work.pop() {
            match work {
                Work::Object(start, header) => {
                    // SAFETY: the header came from an allocated slot of a Gc span; the object
                    // is live (every mutator is stopped) and of the vtable's type.
                    unsafe { (vtable_of(header).trace)(start as *const u8, self) };
                }
                Work::Range(lo, hi) => self.marker.scan(lo, hi),
            }
        }
    }
}

impl Marker {
    /// Schedules `[lo, hi)` for a conservative scan.
    #[inline]
    pub(crate) fn push_range(&mut self, lo: usize, hi: usize) {
        if lo < hi {
            self.work.push(Work::Range(lo, hi));
        }
    }

    /// Marks the Gc object starting at `start` (a precise pointer from a `Trace` impl).
    #[inline]
    pub(crate) fn mark_object(&mut self, start: usize) {
        self.mark_word(start);
    }

    /// Marks whatever allocated block `word` points into, if any.
    #[inline]
    fn mark_word(&mut self, word: usize) {
        let Some(block) = goro_alloc::find_block(word) else {
            return;
        };
        let start = block.start as usize;
        match block.kind {
            SpanKind::Gc => {
                // SAFETY: `block` is a slot of a Gc span; its header word lies inside it.
                let header = unsafe { read_word(header_of(block.start, block.size)) };
                if header != 0 && block.mark() {
                    self.work.push(Work::Object(start, header));
                }
            }
            SpanKind::Malloc => {
                if block.mark() {
                    self.work.push(Work::Range(start, start + block.size));
                }
            }
        }
    }

    /// Scans `[lo, hi)` conservatively.
    fn scan(&mut self, lo: usize, hi: usize) {
        let mut at = lo.next_multiple_of(core::mem::size_of::<usize>());
        while at + core::mem::size_of::<usize>() <= hi {
            // SAFETY: the range was reported as readable root memory, or is an allocated block
            // of goro's heap (arena memory is never unmapped).
            let word = unsafe { read_word(at as *const usize) };
            self.mark_word(word);
            at += core::mem::size_of::<usize>();
        }
    }
}

/// Reads a word that another thread may be writing: the collector's one deliberate departure
/// from the memory model.
///
/// Conservative scanning reads malloc blocks that threads goro does not stop (user threads, the
/// allocator itself) may be writing at the same time. A volatile read of an aligned word cannot
/// tear on the platforms goro supports; a stale value only keeps garbage alive one more cycle or
/// misses a pointer that thread stores, and pointers held by such threads are an open route
/// (docs/soundness.md).
///
/// # Safety
/// May be called only with an aligned pointer into mapped, readable memory.
#[inline]
unsafe fn read_word(at: *const usize) -> usize {
    // SAFETY: the caller guarantees alignment and that the memory is mapped and readable.
    unsafe { core::ptr::read_volatile(at) }
}
