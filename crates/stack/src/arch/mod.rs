//! The context switch: the one piece of goro written in assembly.
//!
//! A *context* is a stack plus the callee-saved registers of the code running on it. A running
//! context has its registers in the CPU; a suspended one has them pushed on its own stack, and is
//! named by its saved stack pointer, a [`StackPointer`]. `switch(save, resume)`:
//!
//! 1. pushes the current context's callee-saved registers (and, through the `call`, its return
//!    address) on the current stack;
//! 2. stores the stack pointer into `*save`: the current context is now suspended;
//! 3. loads `resume` as the stack pointer, pops that context's callee-saved registers and
//!    returns into it: from the resumed context's point of view, its own earlier `switch`
//!    call has just returned.
//!
//! Every caller-saved register (all vector registers on x86_64, rax, rcx, ...) is saved by the
//! compiler around the `switch` call, because `switch` is an ordinary `extern "C"` call. So a
//! suspended context's whole register state is in memory at or above its saved stack pointer,
//! and a conservative collector scanning `[saved_sp, top)` sees every value it holds:
//!
//! ```text
//!   top  +----------------------------+  high addresses
//!        | frames of the suspended    |
//!        | context (locals, spilled   |
//!        | caller-saved registers)    |
//!        +----------------------------+
//!        | return address into it     |
//!        | callee-saved registers      |  <- pushed by `switch`
//!  sp -> +----------------------------+  saved StackPointer (the GC scans from here up)
//!        | unused, committed or not   |
//! limit  +----------------------------+
//!        | guard                      |
//!        +----------------------------+  low addresses
//! ```
//!
//! A fresh stack is prepared by [`init_stack`] with a frame that looks exactly like one `switch`
//! would have pushed, whose return address is a small *trampoline*: the first `switch` to it pops
//! zeros and two words that carry `entry` and `arg` in callee-saved registers, "returns" into the
//! trampoline, and the trampoline calls `entry(arg)` with the ABI's stack alignment. The
//! trampoline's unwind info marks the return address as undefined, so backtraces and unwinders
//! stop there instead of walking into garbage; its frame pointer is zero for the same reason.
//!
//! The layouts per architecture are drawn in `x86_64.rs` and `aarch64.rs`. Rejected
//! alternatives: `ucontext` (`swapcontext` does a `sigprocmask` syscall per switch); saving the
//! registers in a separate struct instead of on the stack (then the GC would have to scan two
//! places, and the saved-sp-points-at-registers invariant is what makes one range enough).

cfg_select! {
    target_arch = "x86_64" => {
        mod x86_64;
        use x86_64 as imp;
    }
    target_arch = "aarch64" => {
        mod aarch64;
        use aarch64 as imp;
    }
    _ => {
        compile_error!("goro-stack has a context switch for x86_64 and aarch64 only");
    }
}

/// The saved stack pointer of a switched-out context. It points at that context's saved
/// callee-saved registers, which lie at the bottom of its live stack: `[sp, top)` holds every
/// value the context has.
///
/// A plain address: copying it does not copy the context, and resuming it twice is undefined
/// behaviour (see [`switch`]).
#[repr(transparent)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StackPointer(pub *mut u8);

// SAFETY: a StackPointer is only an address; all access to the memory behind it goes through
// `switch`, whose contract makes the caller responsible for the context it resumes.
unsafe impl Send for StackPointer {}

/// Prepares a fresh stack so that the first [`switch`] to the returned pointer calls
/// `entry(arg)` on it.
///
/// `entry` must never return: it ends by switching away for the last time (the context is then
/// abandoned, and its stack may be freed or reused by whoever owns it). If it returns anyway the
/// trampoline executes a trapping instruction. A panic must not escape it: catch it with
/// `std::panic::catch_unwind` inside `entry`; as a backstop, a panic reaching the `extern "C"`
/// boundary aborts the process, and the trampoline stops unwinders in any case.
///
/// `top` is aligned down to 16 bytes; the prepared frame takes at most 160 bytes below it.
///
/// # Safety
/// May be called only if the memory below `top` is writable, owned by the caller, not used by
/// any running or suspended context, large enough for everything `entry` will run (overflowing
/// into a guard page faults; without a guard it is undefined behaviour), and stays valid until
/// the new context has switched away for the last time.
#[inline]
pub unsafe fn init_stack(
    top: *mut u8,
    entry: unsafe extern "C" fn(usize) -> !,
    arg: usize,
) -> StackPointer {
    let top = top.wrapping_sub(top as usize % 16);
    // SAFETY: forwarded from the caller's contract; `top` is now 16-byte aligned.
    unsafe { imp::init_stack(top, entry, arg) }
}

/// Saves the current context's callee-saved registers on its own stack, stores its stack
/// pointer into `*save`, and resumes the context saved in `resume`. Returns when something
/// later switches back to the pointer stored in `*save`.
///
/// Cost: 6 pushes, 2 moves, 6 pops and a return on x86_64 (a few nanoseconds).
///
/// # Safety
/// May be called only if:
/// - `save` is valid for writing a `StackPointer`, and whoever will resume the current context
///   can read it there;
/// - `resume` came from [`init_stack`] or was stored by a `switch`, and has not been resumed
///   since (each saved pointer is resumed at most once: resuming it again would run the same
///   frames twice);
/// - the stack `resume` lives on is still allocated, and so is the current stack until the
///   current context is resumed or abandoned;
/// - it is not called inside a signal handler (the interrupted code may hold locks or borrows
///   another context would then observe).
///
/// Abandoning a suspended context (never resuming it) skips the destructors of its frames, like
/// `mem::forget`: the caller must make sure none of them owns something whose destructor others
/// rely on (a pinned value, a guard) before freeing or reusing its stack.
#[inline(always)]
pub unsafe fn switch(save: *mut StackPointer, resume: StackPointer) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { imp::switch(save, resume) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stack;
    use core::cell::Cell;
    use core::hint::black_box;

    /// State shared by the main context and one coroutine in these tests.
    struct Pair {
        main: Cell<StackPointer>,
        co: Cell<StackPointer>,
        value: Cell<u64>,
        aligned: Cell<bool>,
    }

    impl Pair {
        fn new() -> Pair {
            let null = StackPointer(core::ptr::null_mut());
            Pair {
                main: Cell::new(null),
                co: Cell::new(null),
                value: Cell::new(0),
                aligned: Cell::new(false),
            }
        }

        /// From the coroutine: back to main.
        fn to_main(&self) {
            // SAFETY: main saved its pointer in `self.main` when it resumed us and has not been
            // resumed since; both stacks outlive the test.
            unsafe { switch(self.co.as_ptr(), self.main.get()) }
        }

        /// From main: into the coroutine.
        fn to_co(&self) {
            // SAFETY: the coroutine's pointer came from init_stack or its last switch; it is
            // resumed once per suspension.
            unsafe { switch(self.main.as_ptr(), self.co.get()) }
        }
    }

    #[repr(align(16))]
    struct Aligned([u8; 16]);

    unsafe extern "C" fn counting_entry(arg: usize) -> ! {
        // SAFETY: `arg` is the address of a Pair that outlives the coroutine.
        let pair = unsafe { &*(arg as *const Pair) };
        // The compiler assumes the ABI alignment; a misaligned entry would show here.
        let probe = black_box(Aligned([0; 16]));
        pair.aligned
            .set((core::ptr::from_ref(&probe.0) as usize).is_multiple_of(16));
        loop {
            pair.value.set(pair.value.get() * 2 + 1);
            pair.to_main();
        }
    }

    #[test]
    fn round_trip_and_alignment() {
        let stack = Stack::new().unwrap();
        let pair = Pair::new();
        // SAFETY: the stack is fresh and outlives the coroutine (abandoned at the end, it holds
        // no destructors that matter).
        pair.co.set(unsafe {
            init_stack(
                stack.top(),
                counting_entry,
                core::ptr::from_ref(&pair) as usize,
            )
        });
        let mut expect = 0u64;
        for _ in 0..20 {
            pair.to_co();
            expect = expect * 2 + 1;
            assert_eq!(pair.value.get(), expect);
            let sp = pair.co.get().0 as usize;
            assert!((stack.limit() as usize..stack.top() as usize).contains(&sp));
        }
        assert!(pair.aligned.get(), "entry ran with a misaligned stack");
    }

    #[test]
    fn unaligned_top_is_aligned_down() {
        let stack = Stack::new().unwrap();
        let pair = Pair::new();
        // SAFETY: as in round_trip_and_alignment; top - 8 is still inside the slot.
        pair.co.set(unsafe {
            init_stack(
                stack.top().wrapping_sub(8),
                counting_entry,
                core::ptr::from_ref(&pair) as usize,
            )
        });
        pair.to_co();
        assert_eq!(pair.value.get(), 1);
        assert!(pair.aligned.get());
    }
}
