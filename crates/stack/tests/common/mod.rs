//! A minimal asymmetric coroutine on top of `init_stack`/`switch`, for the tests only.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the helper"
)]

use core::cell::Cell;
use core::hint::black_box;
use goro_stack::{Stack, StackPointer, init_stack, switch};

/// Handed to the coroutine body: lets it suspend back to whoever resumed it.
pub struct Yielder {
    /// The resumer's saved stack pointer (written by `resume`).
    caller: Cell<StackPointer>,
    /// The coroutine's saved stack pointer (written by `suspend`).
    me: Cell<StackPointer>,
}

impl Yielder {
    /// Switches back to the resumer; returns at the next `resume`.
    pub fn suspend(&self) {
        // SAFETY: `caller` was saved by the resume that is running us and is resumed once.
        unsafe { switch(self.me.as_ptr(), self.caller.get()) }
    }
}

/// The body of a coroutine, run once on its stack.
type Body<'a> = Box<dyn FnOnce(&Yielder) + 'a>;

struct Shared<'a> {
    y: Yielder,
    body: Cell<Option<Body<'a>>>,
    done: Cell<bool>,
}

/// A body running on its own [`Stack`].
pub struct Coro<'a> {
    shared: Box<Shared<'a>>,
    stack: Stack,
}

/// A coroutine's first frame.
///
/// # Safety
/// Only `init_stack` may start it, with `arg` the address of the coroutine's boxed `Shared`.
unsafe extern "C" fn coro_entry(arg: usize) -> ! {
    // SAFETY: `arg` is the address of the boxed Shared, which outlives the coroutine.
    let shared = unsafe { &*(arg as *const Shared<'_>) };
    let body = shared.body.take().expect("body runs once");
    body(&shared.y);
    shared.done.set(true);
    shared.y.suspend();
    // Nothing resumes a finished coroutine.
    std::process::abort()
}

impl<'a> Coro<'a> {
    /// A suspended coroutine that will run `body` at the first `resume`.
    pub fn new(body: impl FnOnce(&Yielder) + 'a) -> Coro<'a> {
        Coro::with_stack(Stack::new().unwrap(), body)
    }

    /// As `new`, on a given stack.
    pub fn with_stack(stack: Stack, body: impl FnOnce(&Yielder) + 'a) -> Coro<'a> {
        let null = StackPointer(core::ptr::null_mut());
        let shared = Box::new(Shared {
            y: Yielder {
                caller: Cell::new(null),
                me: Cell::new(null),
            },
            body: Cell::new(Some(Box::new(body))),
            done: Cell::new(false),
        });
        let arg = &raw const *shared as usize;
        // SAFETY: the stack is fresh and owned by this Coro, which outlives the coroutine's use;
        // `coro_entry` never returns (it switches away for the last time when the body is done).
        let first = unsafe { init_stack(stack.top(), coro_entry, arg) };
        shared.y.me.set(first);
        Coro { shared, stack }
    }

    /// Runs the coroutine until it suspends or finishes; returns whether it can be resumed again.
    pub fn resume(&self) -> bool {
        assert!(!self.shared.done.get(), "resumed a finished coroutine");
        let y = &self.shared.y;
        // SAFETY: `me` was produced by init_stack or the coroutine's last suspend; resumed once.
        unsafe { switch(y.caller.as_ptr(), y.me.get()) };
        !self.shared.done.get()
    }

    /// The coroutine's saved stack pointer (meaningful while it is suspended).
    pub fn saved_sp(&self) -> StackPointer {
        self.shared.y.me.get()
    }

    /// The stack it runs on.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }
}

/// Recursion with ~128-byte frames that the compiler cannot turn into a loop.
#[inline(never)]
pub fn recurse(depth: u64, limit: u64) -> u64 {
    let frame = black_box([depth; 12]);
    if depth == limit {
        return frame[3];
    }
    recurse(depth + 1, limit).wrapping_add(black_box(frame)[7] & 1)
}

/// Pages of `[lo, hi)` resident in memory, by mincore.
pub fn resident_pages(lo: *mut u8, hi: *mut u8) -> usize {
    let page = 4096;
    let len = hi as usize - lo as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: [lo, hi) is a page-aligned mapped range; `vec` has one byte per page.
    let rc = unsafe { libc::mincore(lo.cast(), len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// Runs the test `name` of this test binary again in a child process, with `env` set, and
/// checks that it ran there and passed; returns what it printed on stdout.
pub fn run_test_in_child(name: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child running {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}
