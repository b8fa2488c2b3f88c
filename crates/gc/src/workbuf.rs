//! The marker's work list: a stack in memory mapped for it, never in the heap.
//!
//! Marking runs while every other thread of the process is stopped where it stood, possibly
//! inside the allocator with its locks held; so the marker must not allocate. The list lives in
//! an anonymous mapping that doubles (a fresh mapping and a copy) when it fills. Mapping and
//! unmapping take only the kernel's locks. The first mapping is kept from cycle to cycle: a
//! fresh one faults its pages in one by one, and `munmap` sends each CPU running a thread of
//! the process a TLB shootdown, which together cost a small cycle a tenth of its pause.

use core::sync::atomic::{AtomicPtr, Ordering};

/// A stack of `T` items in its own mapping.
pub(crate) struct WorkStack<T: Copy> {
    base: *mut T,
    len: usize,
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
            len: 0,
            capacity: Self::INITIAL_CAPACITY,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        if self.len == self.capacity {
            self.grow();
        }
        // SAFETY: `len < capacity`, so the slot lies inside the mapping.
        unsafe { self.base.add(self.len).write(item) };
        self.len += 1;
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: slot `len` was written by `push` and not popped since.
        Some(unsafe { self.base.add(self.len).read() })
    }

    /// Items on the stack.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Moves the top half of the items onto `other`; returns how many.
    pub(crate) fn give_half(&mut self, other: &mut WorkStack<T>) -> usize {
        let moved = self.len / 2;
        while other.capacity - other.len < moved {
            other.grow();
        }
        self.len -= moved;
        // SAFETY: items `[len, len + moved)` were written by `push` and are no longer ours;
        // `other` has room for `moved` more after its `len`; the mappings are distinct.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.base.add(self.len),
                other.base.add(other.len),
                moved,
            );
        }
        other.len += moved;
        moved
    }

    #[cold]
    fn grow(&mut self) {
        let capacity = self.capacity * 2;
        let base = map(capacity * size_of::<T>()).cast::<T>();
        // SAFETY: both mappings are ours and distinct; the old one holds `len` items.
        unsafe { core::ptr::copy_nonoverlapping(self.base, base, self.len) };
        retire_mapping(self.base.cast(), self.capacity * size_of::<T>());
        self.base = base;
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
