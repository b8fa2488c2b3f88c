//! deep_recursion: recursion to depth D with ~128-byte frames, R times in a fresh goroutine each
//! (the stack has to grow, or at least be committed, every time), then R times in one goroutine
//! whose stack is already grown (one untimed recursion first, then R timed ones measured inside
//! that goroutine, thread or coroutine).
//!
//! `checksum` is D * (D + 1) / 2 for every implementation. `goro` runs with a 64 MiB slot (a
//! larger slot class than the runtime's 1 MiB default); `goro_grow` keeps the default slot and
//! calls `goro::stack::maybe_grow` at every level, so the recursion continues on segments;
//! `may` and `threads` get 64 MiB stacks.

use crate::{Options, report};
use core::hint::black_box;
use std::time::{Duration, Instant};

/// Stack size given to every implementation: D = 100,000 frames of ~128 bytes need ~13 MiB.
const STACK_BYTES: usize = 64 << 20;

/// Words in each frame's local array: 12 * 8 = 96 bytes, plus the return address, saved
/// registers and alignment, about 128 bytes per frame.
const FRAME_WORDS: usize = 12;

/// One level of the recursion: a frame of ~128 bytes the optimiser cannot remove or turn into a
/// loop. Returns `depth + (depth - 1) + ... + 1`.
#[inline(never)]
pub fn recurse(depth: u32) -> u64 {
    level(depth, recurse)
}

/// The body of one level, recursing through `deeper`; inlined into each recursive function so
/// that the array stays in that function's frame.
#[inline(always)]
fn level(depth: u32, deeper: fn(u32) -> u64) -> u64 {
    let mut frame = [0u64; FRAME_WORDS];
    let slot = depth as usize % FRAME_WORDS;
    frame[slot] = u64::from(depth);
    // Through a reference, so the array stays in this frame (and only once: a by-value
    // black_box would copy it and double the frame).
    black_box(&mut frame);
    if depth == 0 {
        return frame[0];
    }
    deeper(depth - 1).wrapping_add(frame[slot])
}

/// Rounds the warm reps of goro are split into, alternating with a std thread's.
const WARM_ROUNDS: u32 = 10;

/// Stack that must be left for a level of [`recurse_growing`] to run in place.
const GROW_RED_ZONE: usize = 32 << 10;

/// [`recurse`] with a growth check at every level: it runs on goro's default slot, adding
/// segments as it deepens.
#[inline(never)]
pub fn recurse_growing(depth: u32) -> u64 {
    goro::stack::maybe_grow(GROW_RED_ZONE, || level(depth, recurse_growing))
}

/// The warm half, run inside one goroutine (thread): one untimed recursion grows the stack,
/// then `reps` timed ones run on the grown stack. Returns the checksum and the timed part.
fn warm_reps(depth: u32, reps: u32) -> (u64, Duration) {
    warm_reps_of(recurse, depth, reps)
}

fn warm_reps_of(recurse: fn(u32) -> u64, depth: u32, reps: u32) -> (u64, Duration) {
    let mut sum = recurse(black_box(depth));
    let start = Instant::now();
    for _ in 0..reps {
        sum = recurse(black_box(depth));
    }
    (sum, start.elapsed())
}

fn print(implementation: &str, depth: u32, reps: u32, sum: u64, fresh: Duration, warm: Duration) {
    let per_rep = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3 / f64::from(reps.max(1)));
    report::Result::new("deep_recursion", implementation)
        .key("depth", depth)
        .key("reps", reps)
        .key("checksum", sum)
        .key("fresh_ms_per_rep", per_rep(fresh))
        .key("warm_ms_per_rep", per_rep(warm))
        .print(fresh + warm);
}

/// Refuses depths that would overflow `STACK_BYTES` (with 256 bytes per frame as the bound).
fn check_depth(depth: u32) -> Result<(), String> {
    if depth as usize * 256 > STACK_BYTES {
        return Err(format!(
            "depth {depth} may exceed the {STACK_BYTES}-byte stack this workload uses"
        ));
    }
    Ok(())
}

pub(crate) fn goro(depth: u32, reps: u32, options: &Options, grow: bool) -> Result<(), String> {
    let mut builder = goro::Runtime::builder();
    let recurse: fn(u32) -> u64 = if grow {
        recurse_growing
    } else {
        check_depth(depth)?;
        builder = builder.stack_size(STACK_BYTES);
        recurse
    };
    if let Some(procs) = options.procs {
        builder = builder.max_procs(procs);
    }
    let runtime = builder.build().map_err(|e| e.to_string())?;
    let (sum, fresh, warm, thread_warm) = runtime.run(move || {
        let mut sum = 0;
        let start = Instant::now();
        for _ in 0..reps {
            sum = goro::go(move || recurse(black_box(depth)))
                .join()
                .expect("recursion goroutine");
        }
        let fresh = start.elapsed();
        // The warm reps in rounds, each followed by the same reps of the same `recurse` on a std
        // thread of this binary, while the runtime runs: both see the same code placement (a
        // tight recursion's speed moves by a third with it, and the `threads` row runs in
        // another binary) and the same machine noise, which on a shared 2-vCPU machine swings
        // one-off figures by 2x.
        let (mut warm, mut thread_warm) = (Duration::ZERO, Duration::ZERO);
        for round in 0..WARM_ROUNDS {
            let round_reps = reps / WARM_ROUNDS + u32::from(round < reps % WARM_ROUNDS);
            let (warm_sum, elapsed) = goro::go(move || warm_reps_of(recurse, depth, round_reps))
                .join()
                .expect("recursion goroutine");
            assert_eq!(warm_sum, sum);
            warm += elapsed;
            let (thread_sum, elapsed) = std::thread::Builder::new()
                .stack_size(STACK_BYTES)
                .spawn(move || warm_reps_of(self::recurse, depth, round_reps))
                .expect("a thread")
                .join()
                .expect("recursion thread");
            assert_eq!(thread_sum, sum);
            thread_warm += elapsed;
        }
        (sum, fresh, warm, thread_warm)
    });
    let per_rep = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3 / f64::from(reps.max(1)));
    report::Result::new("deep_recursion", if grow { "goro_grow" } else { "goro" })
        .key("depth", depth)
        .key("reps", reps)
        .key("checksum", sum)
        .key("fresh_ms_per_rep", per_rep(fresh))
        .key("warm_ms_per_rep", per_rep(warm))
        .key("same_binary_thread_warm_ms_per_rep", per_rep(thread_warm))
        .print(fresh + warm);
    Ok(())
}

pub(crate) fn may(depth: u32, reps: u32) -> Result<(), String> {
    check_depth(depth)?;
    // may counts its stack size in words.
    may::config().set_stack_size(STACK_BYTES / size_of::<usize>());
    let mut sum = 0;
    let start = Instant::now();
    for _ in 0..reps {
        // SAFETY: the coroutine touches no thread-local storage and its recursion fits the
        // 64 MiB stack configured above (check_depth).
        let handle = unsafe { may::coroutine::spawn(move || recurse(black_box(depth))) };
        sum = handle.join().map_err(|_| "may coroutine panicked")?;
    }
    let fresh = start.elapsed();
    // SAFETY: as above.
    let handle = unsafe { may::coroutine::spawn(move || warm_reps(depth, reps)) };
    let (warm_sum, warm) = handle.join().map_err(|_| "may coroutine panicked")?;
    assert_eq!(warm_sum, sum);
    print("may", depth, reps, sum, fresh, warm);
    Ok(())
}

pub(crate) fn threads(depth: u32, reps: u32) -> Result<(), String> {
    check_depth(depth)?;
    fn spawn<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        std::thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn(work)
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "thread panicked".to_string())
    }
    let mut sum = 0;
    let start = Instant::now();
    for _ in 0..reps {
        sum = spawn(move || recurse(black_box(depth)))?;
    }
    let fresh = start.elapsed();
    let (warm_sum, warm) = spawn(move || warm_reps(depth, reps))?;
    assert_eq!(warm_sum, sum);
    print("threads", depth, reps, sum, fresh, warm);
    Ok(())
}
