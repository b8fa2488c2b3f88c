//! Slot reuse at scale: spawn/exit cycles recycle a bounded set of slots, across threads too.

use goro_stack::Stack;
use std::collections::HashSet;

/// Touches the top word of a stack, as a goroutine's first frame would.
fn touch(stack: &Stack) {
    // SAFETY: top - 8 is inside the usable part of a stack we own.
    unsafe {
        stack
            .top()
            .cast::<usize>()
            .sub(1)
            .write_volatile(stack.top() as usize)
    };
}

#[test]
fn a_million_cycles_reuse_a_bounded_set_of_slots() {
    let cycles = if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    };
    let size = 19 * 4096; // a size of its own
    let mut tops = HashSet::new();
    let mut live: Vec<Stack> = Vec::new();
    for i in 0..cycles {
        let stack = Stack::with_size(size).unwrap();
        touch(&stack);
        tops.insert(stack.top() as usize);
        live.push(stack);
        // Up to 8 goroutines alive at once, exiting in bursts.
        if i % 8 == 7 {
            live.clear();
        }
    }
    assert!(
        tops.len() <= 16,
        "{} distinct slots for 8 live at once",
        tops.len()
    );
}

#[test]
fn slots_freed_on_other_threads_come_back() {
    let size = 23 * 4096; // a size of its own
    let stacks: Vec<Stack> = (0..100).map(|_| Stack::with_size(size).unwrap()).collect();
    let tops: HashSet<usize> = stacks.iter().map(|s| s.top() as usize).collect();
    // Freed on a thread that then exits: its cache goes back to the pool.
    std::thread::spawn(move || drop(stacks)).join().unwrap();
    let again: Vec<Stack> = (0..100).map(|_| Stack::with_size(size).unwrap()).collect();
    let tops_again: HashSet<usize> = again.iter().map(|s| s.top() as usize).collect();
    assert_eq!(tops, tops_again, "every slot was reused, none carved anew");
}
