//! The marker's work list: a stack in memory mapped for it, never in the heap.
//!
//! Marking runs while every other thread of the process is stopped where it stood, possibly
//! inside the allocator with its locks held; so the marker must not allocate. The list lives in
//! an anonymous mapping that doubles (a fresh mapping and a copy) when it fills. Mapping and
//! unmapping take only the kernel's locks. The first mapping is kept from cycle to cycle: a
//! fresh one faults its pages in one by one, and `munmap` sends each CPU running a thread of
//! the process a TLB shootdown, which together cost a small cycle a tenth of its pause.

use crate::collector::Work;
use core::sync::atomic::{AtomicPtr, Ordering};

/// A stack of [`Work`] items in its own mapping.
pub(crate) struct WorkStack {
    base: *mut Work,
    len: usize,
    capacity: usize,
}

/// Items in a new stack: 64 KiB.
const INITIAL_CAPACITY: usize = (64 << 10) / size_of::<Work>();

/// A mapping of `INITIAL_CAPACITY` items that no stack holds, kept for the next one; or null.
static SPARE: AtomicPtr<Work> = AtomicPtr::new(core::ptr::null_mut());

impl WorkStack {
    pub(crate) fn new() -> WorkStack {
        // Acquire: pairs with the Release in `retire_mapping`, which may have run on another
        // thread.
        let spare = SPARE.swap(core::ptr::null_mut(), Ordering::Acquire);
        WorkStack {
            base: if spare.is_null() {
                map(INITIAL_CAPACITY)
            } else {
                spare
            },
            len: 0,
            capacity: INITIAL_CAPACITY,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, work: Work) {
        if self.len == self.capacity {
            self.grow();
        }
        // SAFETY: `len < capacity`, so the slot lies inside the mapping.
        unsafe { self.base.add(self.len).write(work) };
        self.len += 1;
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Work> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: slot `len` was written by `push` and not popped since.
        Some(unsafe { self.base.add(self.len).read() })
    }

    #[cold]
    fn grow(&mut self) {
        let capacity = self.capacity * 2;
        let base = map(capacity);
        // SAFETY: both mappings are ours and distinct; the old one holds `len` items.
        unsafe { core::ptr::copy_nonoverlapping(self.base, base, self.len) };
        retire_mapping(self.base, self.capacity);
        self.base = base;
        self.capacity = capacity;
    }
}

impl Drop for WorkStack {
    fn drop(&mut self) {
        retire_mapping(self.base, self.capacity);
    }
}

/// Keeps a first-size mapping no stack uses any more as the spare, or unmaps it.
fn retire_mapping(base: *mut Work, items: usize) {
    if items == INITIAL_CAPACITY
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
    unmap(base, items);
}

fn map(items: usize) -> *mut Work {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            items * size_of::<Work>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // No allocation here: write the reason and abort, as Go throws.
        let message = b"fatal error: goro-gc: cannot map memory for the mark stack\n";
        // SAFETY: writes a valid buffer to file descriptor 2.
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
        std::process::abort();
    }
    p.cast()
}

fn unmap(base: *mut Work, items: usize) {
    // SAFETY: `base` is a mapping of `items` items made by `map`, no longer used.
    unsafe { libc::munmap(base.cast(), items * size_of::<Work>()) };
}
