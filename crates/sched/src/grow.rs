//! Stacks that grow past their slot: [`maybe_grow`] continues a deep computation on a new
//! segment (a segmented stack, as Go had before 1.4, with the growth check written by the
//! programmer instead of the compiler).
//!
//! A goroutine's slot holds [`Config::stack_size`](crate::Config) bytes (1 MiB by default), all
//! address space, committed page by page as it is touched. Rust cannot move a stack to a larger
//! one the way Go does, because references into it are everywhere; and no compiler-inserted
//! check tells the runtime that a function is about to run past the end. What Rust code can do
//! is ask, at the top of a recursive function, whether enough stack is left, and if not run the
//! rest on another stack: that is `maybe_grow(red_zone, f)` (the shape of the `stacker` crate's
//! function, which rustc uses for its own recursion).
//!
//! ```text
//!   slot (1 MiB)          segment 1 (2 MiB)       segment 2 (4 MiB)
//!   [ .. frames .. sp0 ]  [ .. frames .. sp1 ]    [ .. frames .. sp ]   <- running here
//!          ^ caller sp saved when segment 1 began   ^ when segment 2 began
//! ```
//!
//! Each segment doubles the previous one's size, from the goroutine's pooled slots; the sizes of
//! all of a goroutine's stacks together may not pass [`Config::max_stack_size`](crate::Config)
//! (1 GiB by default, Go's limit), beyond which the program ends with Go's message. The
//! collector scans every segment from the stack pointer saved in it to its top. A segment is
//! returned to the pool as soon as `f` returns, so a goroutine that recursed deeply once does
//! not keep the memory.
//!
//! The check costs one thread-local load and a compare: the M stores the lowest usable address
//! of the stack it switches to in `STACK_LIMIT`, and `maybe_grow` compares the stack pointer
//! with it. Outside a goroutine `STACK_LIMIT` is 0, so `f` runs in place.

use crate::panic::throw;
use crate::runtime2::{GRef, Segment, current_g};
use goro_alloc::nosuspend;
use goro_stack::{Stack, StackPointer, init_stack, switch};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

thread_local! {
    /// The lowest usable address of the stack the running goroutine is on; 0 outside one.
    static STACK_LIMIT: Cell<usize> = const { Cell::new(0) };
}

/// Called by an M before it switches to a goroutine (with that goroutine's current stack's
/// limit) and after (with 0).
#[inline]
pub(crate) fn set_stack_limit(limit: usize) {
    STACK_LIMIT.with(|l| l.set(limit));
}

/// Bytes of stack left below the caller on the goroutine's current stack, or `None` outside a
/// goroutine.
#[inline]
pub fn remaining_stack() -> Option<usize> {
    let limit = STACK_LIMIT.with(Cell::get);
    (limit != 0).then(|| stack_pointer().saturating_sub(limit))
}

/// Runs `f`, on a new stack segment if fewer than `red_zone` bytes of stack are left below the
/// caller. Put it at the top of a recursive function that may recurse deeper than the
/// goroutine's stack (Go's growable stacks, by hand); `goro::stack`'s documentation has a
/// runnable example.
///
/// `red_zone` must cover what `f` may use before its own next `maybe_grow` (its frames down to
/// that call). Panics in `f` propagate to the caller as if no segment were involved. Outside a
/// goroutine, `f` runs in place.
///
/// # Aborts
/// Ends the program with "goroutine N stack exceeds LIMIT-byte limit" and "fatal error: stack
/// overflow" (exit status 2, like Go) when the goroutine's stacks would pass the runtime's
/// maximum stack size.
#[inline]
pub fn maybe_grow<R>(red_zone: usize, f: impl FnOnce() -> R) -> R {
    let limit = STACK_LIMIT.with(Cell::get);
    // Outside a goroutine the limit is 0, so any stack pointer passes.
    if stack_pointer() >= limit.saturating_add(red_zone) {
        return f();
    }
    grow(red_zone, f)
}

/// The stack pointer (elsewhere than x86_64 and aarch64: an address in the caller's frame).
#[inline(always)]
fn stack_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let sp: usize;
        // SAFETY: reads a register; touches no memory, the stack or the flags.
        unsafe {
            core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let sp: usize;
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let here = 0u8;
        std::hint::black_box(&here) as *const u8 as usize
    }
}

/// A call running on a segment: its closure, then its outcome.
struct Call<F, R> {
    f: Option<F>,
    outcome: Option<std::thread::Result<R>>,
    /// Where the segment's context was when it finished (never resumed).
    finished_sp: StackPointer,
    /// The segment's index in the G's list: its `caller_sp` is where to return.
    index: usize,
}

#[cold]
#[inline(never)]
fn grow<R, F: FnOnce() -> R>(red_zone: usize, f: F) -> R {
    let g = current_g().expect("a stack limit is set only while a goroutine runs");
    // Until the switch has saved `caller_sp`, the new segment is listed with a null one: a
    // collection must not stop this thread in between. `push_segment` opens the window once it
    // has the segment's stack (taking one locks goro-stack's pool), `segment_entry` closes it.
    let (index, top) = push_segment(g, red_zone).unwrap_or_else(|limit| {
        throw_stack_overflow(g, limit);
    });
    let mut call = Call {
        f: Some(f),
        outcome: None,
        finished_sp: StackPointer(std::ptr::null_mut()),
        index,
    };
    // SAFETY: `top` is the top of the fresh segment, which nothing else uses, and
    // `segment_entry` never returns: it ends by switching back to the context saved below.
    let entry = unsafe { init_stack(top, segment_entry::<F, R>, (&raw mut call) as usize) };
    // SAFETY: `entry` is resumed once; `call` outlives that context, and our context is saved
    // in the segment's `caller_sp`, which `segment_entry` resumes exactly once.
    unsafe { switch(segment_caller_sp(g, index), entry) };
    let segment = pop_segment(g, index);
    // SAFETY: closes the window `segment_entry` opened before it switched back here.
    unsafe { nosuspend::leave() };
    // Outside the window: giving the stack back locks goro-stack's pool.
    drop(segment);
    match call.outcome.take().expect("a segment's call finished") {
        Ok(value) => value,
        Err(panic) => resume_unwind(panic),
    }
}

/// The first frame of a segment: runs the call, then switches back to the frame that grew.
///
/// # Safety
/// Only `grow` may start it (through `init_stack`), with `arg` the address of its `Call`, on the
/// running goroutine's segment number `call.index`.
unsafe extern "C" fn segment_entry<F: FnOnce() -> R, R>(arg: usize) -> ! {
    // SAFETY: `arg` is the `Call` in `grow`'s frame, suspended until we switch back.
    let call = unsafe { &mut *(arg as *mut Call<F, R>) };
    // SAFETY: closes the window `push_segment` opened: the segment is now listed with its
    // caller's stack pointer.
    unsafe { nosuspend::leave() };
    let f = call.f.take().expect("a segment runs its call once");
    // Unwinding must not leave the segment (there is no frame above this one to land in): catch
    // here, resume on the caller's stack.
    call.outcome = Some(catch_unwind(AssertUnwindSafe(f)));
    let g = current_g().expect("a segment runs in a goroutine");
    // SAFETY: closed by `grow` after the switch back and an unlisting (no lock, no allocation;
    // the popped stack is dropped after).
    unsafe { nosuspend::enter() };
    // SAFETY: the caller's context was saved at `caller_sp` by the switch in `grow` and is
    // resumed once, here; this context is never resumed (nothing reads `finished_sp`).
    unsafe { switch(&raw mut call.finished_sp, *segment_caller_sp(g, call.index)) };
    throw("a finished stack segment was resumed")
}

/// Adds a stack segment to the running goroutine `g` for `grow`: twice the size of its current
/// stack, at least twice `red_zone`, within `Config::max_stack_size`. Returns the segment's
/// index and top, or `Err(max_stack_size)` when it would pass that.
pub(crate) fn push_segment(g: GRef, red_zone: usize) -> Result<(usize, *mut u8), usize> {
    let gg = g.g();
    let max = gg.sched.config.max_stack_size;
    // SAFETY: the running goroutine is the only one that changes its stacks.
    let segments = unsafe { &mut *gg.segments.get() };
    // SAFETY: as above.
    let slot = unsafe { (*gg.stack.get()).as_ref() }.map_or(0, Stack::size);
    let used: usize = slot + segments.iter().map(|s| s.stack.size()).sum::<usize>();
    let current = segments.last().map_or(slot, |s| s.stack.size());
    let wanted = current.saturating_mul(2).max(red_zone.saturating_mul(2));
    let size = wanted.min(max.saturating_sub(used));
    if size < red_zone.saturating_mul(2).max(64 << 10) {
        return Err(max);
    }
    let stack = Stack::with_size(size).unwrap_or_else(|error| {
        throw(&format!(
            "cannot allocate a stack segment for goroutine {}: {error}",
            gg.id()
        ))
    });
    stack.set_owner(gg.id());
    let top = stack.top();
    // The push below must not allocate: it runs in the window (opened next, closed by the
    // segment's first frame) in which the segment is listed with a null `caller_sp`.
    segments.reserve(1);
    // SAFETY: closed by the segment's first frame (`segment_entry`) after a push into reserved
    // room and the switch: no lock, no allocation.
    unsafe { goro_alloc::nosuspend::enter() };
    set_stack_limit(stack.limit() as usize);
    segments.push(Segment {
        stack,
        caller_sp: StackPointer(std::ptr::null_mut()),
    });
    Ok((segments.len() - 1, top))
}

/// Where the switch onto segment `index` of the running goroutine `g` saves (and its last frame
/// finds) the context to return to.
pub(crate) fn segment_caller_sp(g: GRef, index: usize) -> *mut StackPointer {
    // SAFETY: the running goroutine is the only one that changes its stacks.
    let segments = unsafe { &mut *g.g().segments.get() };
    &raw mut segments[index].caller_sp
}

/// Removes the running goroutine's innermost segment (number `index`) once the call on it has
/// returned, and gives it back to the pool.
/// Unlists segment `index` of the running goroutine `g` and returns its stack, which the caller
/// drops (returning it to goro-stack's pool takes a lock: not inside a `NoSuspend` window).
pub(crate) fn pop_segment(g: GRef, index: usize) -> Stack {
    let gg = g.g();
    // SAFETY: the running goroutine is the only one that changes its stacks.
    let segments = unsafe { &mut *gg.segments.get() };
    debug_assert_eq!(segments.len(), index + 1, "segments end innermost first");
    let segment = segments.pop().expect("a segment to pop");
    // SAFETY: as above.
    let below = unsafe { gg.current_stack() };
    set_stack_limit(below.map_or(0, |s| s.limit() as usize));
    segment.stack
}

/// Ends the program because goroutine `g` needs more than `limit` bytes of stack (Go's
/// "goroutine stack exceeds ...-byte limit").
pub(crate) fn throw_stack_overflow(g: GRef, limit: usize) -> ! {
    eprintln!(
        "goroutine {} stack exceeds {limit}-byte limit\nfatal error: stack overflow",
        g.g().id()
    );
    std::process::exit(2)
}
