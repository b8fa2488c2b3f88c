//! The C idiom of ending `main` with `pthread_exit` while other threads go on (goro inside a
//! library of a C program): the thread-group leader stays in `/proc/self/task` as a zombie,
//! which accepts signals and never takes them. A collection must not wait for it (it waited
//! for ever). `harness = false`: the test is this `main`, on the process's first thread.

#![no_main]

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

use std::time::Duration;

#[derive(goro::Trace)]
struct Node {
    value: u64,
    next: Option<goro::Gc<Node>>,
}

/// Collects a few times with the leader gone, checks a list kept across the collections, and
/// exits the process with the verdict.
fn collect_without_the_leader() -> ! {
    // A collection that waits for ever stops every thread but its own: only the kernel can
    // end the test then (SIGALRM's default action kills the process).
    // SAFETY: alarm has no preconditions.
    unsafe { libc::alarm(30) };
    // Let the leader exit first.
    std::thread::sleep(Duration::from_millis(100));
    let sum = goro::run(|| {
        let mut list = None;
        for value in 0..1_000 {
            list = Some(goro::Gc::new(Node { value, next: list }));
        }
        for _ in 0..3 {
            goro::gc::collect();
        }
        let mut sum = 0;
        let mut at = list;
        while let Some(node) = at {
            sum += node.value;
            at = node.next;
        }
        sum
    });
    assert_eq!(sum, 999 * 1_000 / 2);
    std::process::exit(0)
}

#[unsafe(no_mangle)]
extern "C-unwind" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    std::thread::spawn(|| collect_without_the_leader());
    // SAFETY: ends only this thread; the process goes on with the others.
    unsafe { libc::pthread_exit(std::ptr::null_mut()) }
}
