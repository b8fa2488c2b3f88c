//! A goroutine switch, two ways:
//! - `yield_round_trip_two_goroutines`: two goroutines on one P yield to each other (each
//!   round trip is two goroutine switches through the scheduler's g0);
//! - `raw_switch_round_trip`: `goro_stack::switch` alone, a context and a coroutine resuming
//!   each other (two switches per round trip): the floor under the scheduler's path.
//!
//! `cargo bench -p goro-bench --bench switch`
//!
//! Instruction counts (repeatable where wall time is noisy): with `GORO_SWITCH_CALLGRIND=N` the
//! binary skips criterion and runs N round trips of each kind, for
//! `valgrind --tool=callgrind --dump-instr=no target/release/deps/switch-* ` and
//! `callgrind_annotate` (the `goro_stack_v0_1_switch` line divided by its call count is the
//! switch path's own instructions; the file's total divided by 2N bounds the yield path).

use core::cell::Cell;
use criterion::Criterion;
use goro_stack::{Stack, StackPointer, init_stack, switch};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

/// The two saved stack pointers of a ping-pong.
struct PingPong {
    main: Cell<StackPointer>,
    co: Cell<StackPointer>,
}

/// The ping-pong's second context: switches back to `main` forever.
///
/// # Safety
/// Only `init_stack` may start it, with `arg` the address of a `PingPong` that outlives it.
unsafe extern "C" fn pong(arg: usize) -> ! {
    // SAFETY: `arg` is the address of the PingPong owned by `raw_round_trips`, which outlives
    // every resumption of this context.
    let pp = unsafe { &*(arg as *const PingPong) };
    loop {
        // SAFETY: main saved its pointer when it resumed us, and is resumed exactly once here.
        unsafe { switch(pp.co.as_ptr(), pp.main.get()) };
    }
}

/// Runs `n` round trips main -> coroutine -> main with `goro_stack::switch`.
fn raw_round_trips(n: u64) -> std::time::Duration {
    let stack = Stack::with_size(64 * 1024).unwrap();
    let null = StackPointer(core::ptr::null_mut());
    let pp = PingPong {
        main: Cell::new(null),
        co: Cell::new(null),
    };
    // SAFETY: the stack is fresh and outlives the coroutine, which is abandoned suspended at
    // the end (its frame owns nothing); `pong` never returns.
    let first = unsafe { init_stack(stack.top(), pong, &raw const pp as usize) };
    pp.co.set(first);
    let start = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: the coroutine's pointer came from init_stack or its last switch and is
        // resumed once.
        unsafe { switch(pp.main.as_ptr(), pp.co.get()) };
    }
    start.elapsed()
}

/// Runs `n` yield round trips between two goroutines on one P.
fn yield_round_trips(runtime: &goro::Runtime, n: u64) -> std::time::Duration {
    runtime.run(move || {
        let other = goro::go(move || {
            for _ in 0..n {
                goro::yield_now();
            }
        });
        let start = std::time::Instant::now();
        for _ in 0..n {
            goro::yield_now();
        }
        let elapsed = start.elapsed();
        other.join().unwrap();
        elapsed
    })
}

fn main() {
    let runtime = goro::Runtime::builder().max_procs(1).build().unwrap();
    if let Some(n) = std::env::var("GORO_SWITCH_CALLGRIND")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let raw = raw_round_trips(n);
        let yielded = yield_round_trips(&runtime, n);
        println!("{n} raw round trips: {raw:?}; {n} yield round trips: {yielded:?}");
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("yield_round_trip_two_goroutines", |b| {
        b.iter_custom(|iterations| yield_round_trips(&runtime, iterations))
    });
    c.bench_function("raw_switch_round_trip", |b| b.iter_custom(raw_round_trips));
    c.final_summary();
}
