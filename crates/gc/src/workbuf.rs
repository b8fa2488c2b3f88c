//! The marker's work list: a stack in memory mapped for it, never in the heap.
//!
//! Marking runs while every other thread of the process is stopped where it stood, possibly
//! inside the allocator with its locks held; so the marker must not allocate. The list lives in
//! an anonymous mapping that doubles (a fresh mapping and a copy) when it fills. Mapping and
//! unmapping take only the kernel's locks. The first mapping is kept from cycle to cycle: a
//! fresh one faults its pages in one by one, and `munmap` sends each CPU running a thread of
//! the process a TLB shootdown, which together cost a small cycle a tenth of its pause.

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicPtr, Ordering};

/// A stack of `T` items in its own mapping. Items are pushed and popped at the top; a marker
/// shares its oldest ones from the bottom (the ones nearest the roots, which lead to the most
/// work), so the live items are `[head, top)`.
pub(crate) struct WorkStack<T: Copy> {
    base: *mut T,
    head: usize,
    top: usize,
    capacity: usize,
}

/// Bytes of a new stack's mapping.
const INITIAL_BYTES: usize = 64 << 10;

/// A mapping of `INITIAL_BYTES` that no stack holds, kept for the next one; or null.
static SPARE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

impl<T: Copy> WorkStack<T> {
    /// Items a new stack holds.
    const INITIAL_CAPACITY: usize = INITIAL_BYTES / size_of::<T>();

    pub(crate) fn new() -> WorkStack<T> {
        // Acquire: pairs with the Release in `retire_mapping`, which may have run on another
        // thread.
        let spare = SPARE.swap(core::ptr::null_mut(), Ordering::Acquire);
        WorkStack {
            base: if spare.is_null() {
                map(INITIAL_BYTES)
            } else {
                spare
            }
            .cast(),
            head: 0,
            top: 0,
            capacity: Self::INITIAL_CAPACITY,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        if self.top == self.capacity {
            self.make_room(1);
        }
        // SAFETY: `top < capacity`, so the slot lies inside the mapping.
        unsafe { self.base.add(self.top).write(item) };
        self.top += 1;
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.top == self.head {
            self.head = 0;
            self.top = 0;
            return None;
        }
        self.top -= 1;
        // SAFETY: slot `top` was written by `push` and not popped or shared since.
        Some(unsafe { self.base.add(self.top).read() })
    }

    /// Items on the stack.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.top - self.head
    }

    /// Moves the oldest items into `to`, as many as it holds.
    ///
    /// # Panics
    /// Panics if `to` holds more items than the stack.
    pub(crate) fn take_oldest(&mut self, to: &mut [MaybeUninit<T>]) {
        let count = to.len();
        assert!(
            count <= self.len(),
            "taking more items than the stack holds"
        );
        // SAFETY: items `[head, head + count)` were written by `push` and are no longer ours
        // once `head` moves past them; `to` is a distinct buffer (a `&mut` cannot alias the
        // mapping, which no reference covers) with room for `count`.
        unsafe {
            core::ptr::copy_nonoverlapping(self.base.add(self.head), to.as_mut_ptr().cast(), count)
        };
        self.head += count;
    }

    /// Pushes every item of `items`, the last one on top.
    pub(crate) fn push_all(&mut self, items: &[T]) {
        if self.capacity - self.top < items.len() {
            self.make_room(items.len());
        }
        // SAFETY: there is room for `items.len()` more after `top`; `items` is not in our
        // mapping (it is a packet's).
        unsafe {
            core::ptr::copy_nonoverlapping(items.as_ptr(), self.base.add(self.top), items.len())
        };
        self.top += items.len();
    }

    /// Makes room for `more` items after `top`: moves the live items down over the shared ones
    /// if that leaves at least half of the stack free, or else maps larger stacks until there
    /// is room (each move is then paid for by as many pushes).
    #[cold]
    fn make_room(&mut self, more: usize) {
        let live = self.len();
        if self.head > 0 && live + more <= self.capacity / 2 {
            // SAFETY: both ranges lie inside the mapping; `copy` allows them to overlap.
            unsafe { core::ptr::copy(self.base.add(self.head), self.base, live) };
            self.head = 0;
            self.top = live;
            return;
        }
        while self.capacity - self.top < more {
            self.grow();
        }
    }

    /// Moves the live items to the bottom of a mapping twice as large.
    fn grow(&mut self) {
        let capacity = self.capacity * 2;
        let live = self.len();
        let base = map(capacity * size_of::<T>()).cast::<T>();
        // SAFETY: both mappings are ours and distinct; the old one holds the live items at
        // `[head, top)`.
        unsafe { core::ptr::copy_nonoverlapping(self.base.add(self.head), base, live) };
        retire_mapping(self.base.cast(), self.capacity * size_of::<T>());
        self.base = base;
        self.head = 0;
        self.top = live;
        self.capacity = capacity;
    }
}

impl<T: Copy> Drop for WorkStack<T> {
    fn drop(&mut self) {
        retire_mapping(self.base.cast(), self.capacity * size_of::<T>());
    }
}

/// Keeps a first-size mapping no stack uses any more as the spare, or unmaps it.
fn retire_mapping(base: *mut u8, bytes: usize) {
    if bytes == INITIAL_BYTES
        && SPARE
            // Release: pairs with the Acquire in `new`.
            .compare_exchange(
                core::ptr::null_mut(),
                base,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
    {
        return;
    }
    // SAFETY: retired mappings are whole stacks' mappings (made by `map`), which their stack no
    // longer uses.
    unsafe { unmap(base, bytes) };
}

/// Maps `bytes` of fresh zeroed memory for the collector's own use (a mark stack, the barrier's
/// log, gccheckmark's saved marks); aborts, without allocating, when the kernel refuses.
pub(crate) fn map(bytes: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // No allocation here: write the reason and abort, as Go throws.
        let message = b"fatal error: goro-gc: cannot map memory for the collector\n";
        // SAFETY: writes a valid buffer to file descriptor 2.
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
        std::process::abort();
    }
    p.cast()
}

/// Unmaps what [`map`] mapped.
///
/// # Safety
/// `base` must be a mapping of `bytes` bytes made by [`map`], and nothing may use it after.
pub(crate) unsafe fn unmap(base: *mut u8, bytes: usize) {
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(base.cast(), bytes) };
}

#[cfg(test)]
mod tests {
    use super::WorkStack;
    use core::mem::MaybeUninit;
    use std::collections::VecDeque;

    /// Pushes, pops, shares and takes back in a pseudo-random order, across compactions and
    /// growths, against a `VecDeque` (the newest at the back).
    #[test]
    fn a_stack_keeps_its_items_through_sharing_compaction_and_growth() {
        let mut stack = WorkStack::<u64>::new();
        let mut model = VecDeque::new();
        let mut packet = vec![MaybeUninit::<u64>::uninit(); 256];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = 0u64;
        for step in 0..400_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Phases of mostly pushing, then of mostly popping, so the stack fills its mapping
            // (with shared items below) and grows, and empties again.
            let filling = (step / 50_000) % 2 == 0;
            match seed % 16 {
                0..=8 if filling => {
                    stack.push(next);
                    model.push_back(next);
                    next += 1;
                }
                0..=11 => assert_eq!(stack.pop(), model.pop_back()),
                12..=13 => {
                    let count = (stack.len() / 2).min(packet.len());
                    stack.take_oldest(&mut packet[..count]);
                    // SAFETY: `take_oldest` wrote the first `count` items.
                    let shared: Vec<u64> = packet[..count]
                        .iter()
                        .map(|item| unsafe { item.assume_init() })
                        .collect();
                    let taken: Vec<u64> = model.drain(..count).collect();
                    assert_eq!(shared, taken);
                    if seed.is_multiple_of(3) {
                        stack.push_all(&shared);
                        model.extend(&shared);
                    }
                }
                _ => {
                    let items: Vec<u64> = (next..next + seed % 300).collect();
                    next += items.len() as u64;
                    stack.push_all(&items);
                    model.extend(&items);
                }
            }
            assert_eq!(stack.len(), model.len());
        }
        while let Some(item) = model.pop_back() {
            assert_eq!(stack.pop(), Some(item));
        }
        assert_eq!(stack.pop(), None);
    }
}
