//! Stack slots: carved from large reservations, handed out as [`Stack`], pooled when dropped.
//!
//! Vocabulary: a *reservation* (or chunk) is one `MAP_NORESERVE` mapping holding up to
//! [`SLOTS_PER_CHUNK`] *slots* of one size; a *slot* is a guard region followed by the usable
//! stack; a *size class* is the set of slots with the same usable size.
//!
//! ```text
//!  reservation (one VMA with MADV_GUARD_INSTALL)
//!  +--------+-------------+--------+-------------+-----     -----+--------+-------------+
//!  | guard  |  slot 0     | guard  |  slot 1     |      ...      | guard  |  slot 1023  |
//!  +--------+-------------+--------+-------------+-----     -----+--------+-------------+
//!  ^ base                          ^ base + slot_len
//! ```
//!
//! Allocation, under the pool lock:
//! 1. find the size class for the rounded-up usable size (a short linear scan: few sizes exist);
//! 2. pop a freed slot from its free list (LIFO, so the most recently used, still committed
//!    pages are reused first); if there is one, done;
//! 3. otherwise carve the next slot of the class's current reservation, installing its guard
//!    now (so the mprotect fallback only spends VMAs on slots actually used);
//! 4. when the reservation is used up, reserve a new one.
//!
//! Reservations are never unmapped: the address space of a slot that was once a stack stays a
//! stack (with its guard) until the process exits, like Go's stack spans before scavenging.
//! Rejected: one `mmap` per stack (2 VMAs each with mprotect, a syscall per spawn); a single
//! fixed reservation (a hard cap on goroutines).

use crate::{StackError, guard, os};
use core::ops::Range;
use std::sync::{Mutex, PoisonError};

/// Usable bytes per slot of [`Stack::new`] (the guard is extra).
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// Size of the guard region below each stack: one 4 KiB page. On a system with larger pages
/// the guard is one page of that size instead (see [`Stack::guard`]).
pub const GUARD_SIZE: usize = 4096;

/// Slots per reservation, unless that would exceed [`MAX_CHUNK_BYTES`].
pub(crate) const SLOTS_PER_CHUNK: usize = 1024;

/// Upper bound on one reservation's size, so that huge stacks do not reserve terabytes.
const MAX_CHUNK_BYTES: usize = 1 << 30;

/// Largest usable size accepted (well below any address-space limit, far above any sane stack).
const MAX_USABLE: usize = 1 << 40;

/// An owned stack slot: `[limit, top)` is usable, `guard()` lies just below `limit`.
///
/// A `Stack` is a plain owner of address space: it may be sent to and used from any thread.
/// Dropping it returns the slot to the pool of its size; its pages stay committed (releasing
/// the pages of idle stacks is left to the later stacks work, see docs/stacks.md).
#[derive(Debug)]
pub struct Stack {
    /// Lowest address of the slot (the guard's start). Immutable.
    base: usize,
    /// Usable bytes, a multiple of the page size. Immutable.
    usable: usize,
}

impl Stack {
    /// A stack of [`DEFAULT_STACK_SIZE`] usable bytes.
    ///
    /// ```
    /// let s = goro_stack::Stack::new().unwrap();
    /// assert_eq!(s.top() as usize - s.limit() as usize, goro_stack::DEFAULT_STACK_SIZE);
    /// ```
    pub fn new() -> Result<Stack, StackError> {
        Stack::with_size(DEFAULT_STACK_SIZE)
    }

    /// A stack of at least `usable` bytes, rounded up to whole pages (at least one page).
    /// Stacks of the same rounded size share a pool.
    pub fn with_size(usable: usize) -> Result<Stack, StackError> {
        let page = os::page_size();
        if usable > MAX_USABLE {
            return Err(StackError::too_large(usable));
        }
        let usable = usable.max(1).next_multiple_of(page);
        let base = POOL
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .alloc(usable)?;
        Ok(Stack { base, usable })
    }

    /// One past the highest usable byte: where a fresh stack's stack pointer starts.
    /// Page-aligned, hence 16-byte aligned.
    #[inline]
    pub fn top(&self) -> *mut u8 {
        (self.base + guard_len() + self.usable) as *mut u8
    }

    /// The lowest usable address, just above the guard.
    #[inline]
    pub fn limit(&self) -> *mut u8 {
        (self.base + guard_len()) as *mut u8
    }

    /// The guard region's addresses: any access faults.
    #[inline]
    pub fn guard(&self) -> Range<usize> {
        self.base..self.base + guard_len()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Poisoning cannot leave the pool inconsistent: every critical section either completes
        // its Vec operation or returns an error before modifying anything.
        POOL.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free(self.base, self.usable);
    }
}

/// Guard length: [`GUARD_SIZE`], or one page where pages are larger.
#[inline]
fn guard_len() -> usize {
    GUARD_SIZE.max(os::page_size())
}

/// The reservation a size class is currently carving new slots from.
struct Chunk {
    /// Start of the reservation.
    base: usize,
    /// Slots it holds.
    slots: usize,
    /// Slots carved so far (the next one is `base + next * slot_len`).
    next: usize,
}

/// All slots of one usable size. Owned by the pool, only touched under its lock.
struct SizeClass {
    /// Usable bytes of each slot (page multiple).
    usable: usize,
    /// Freed slots (their base addresses), reused last-in first-out.
    free: Vec<usize>,
    /// The reservation new slots are carved from; `None` before the first allocation.
    chunk: Option<Chunk>,
}

impl SizeClass {
    fn slot_len(&self) -> usize {
        guard_len() + self.usable
    }

    fn alloc(&mut self) -> Result<usize, StackError> {
        if let Some(base) = self.free.pop() {
            return Ok(base);
        }
        self.carve()
    }

    #[cold]
    fn carve(&mut self) -> Result<usize, StackError> {
        let slot_len = self.slot_len();
        if self.chunk.as_ref().is_none_or(|c| c.next == c.slots) {
            let slots = (MAX_CHUNK_BYTES / slot_len).clamp(1, SLOTS_PER_CHUNK);
            let len = slots
                .checked_mul(slot_len)
                .ok_or_else(|| StackError::too_large(self.usable))?;
            let base = os::reserve(len).map_err(|e| StackError::reserve(len, e))?;
            // The previous chunk, if any, is fully carved: all its slots are live or free.
            self.chunk = Some(Chunk {
                base: base as usize,
                slots,
                next: 0,
            });
        }
        let chunk = self.chunk.as_mut().expect("a chunk was just ensured");
        let base = chunk.base + chunk.next * slot_len;
        // SAFETY: [base, base + guard_len) is the first page(s) of a slot that was never handed
        // out, inside a reservation this pool owns; it holds nothing.
        unsafe { guard::install(base as *mut u8, guard_len()) }?;
        chunk.next += 1;
        Ok(base)
    }
}

/// The process-wide pool: one size class per usable size seen so far.
struct Pool {
    /// Size classes in order of first use. Few distinct sizes exist in practice.
    classes: Vec<SizeClass>,
}

/// Shared by all threads; every access takes the lock (a per-P cache is future work).
static POOL: Mutex<Pool> = Mutex::new(Pool {
    classes: Vec::new(),
});

impl Pool {
    fn class(&mut self, usable: usize) -> &mut SizeClass {
        let i = match self.classes.iter().position(|c| c.usable == usable) {
            Some(i) => i,
            None => {
                self.classes.push(SizeClass {
                    usable,
                    free: Vec::new(),
                    chunk: None,
                });
                self.classes.len() - 1
            }
        };
        &mut self.classes[i]
    }

    fn alloc(&mut self, usable: usize) -> Result<usize, StackError> {
        self.class(usable).alloc()
    }

    fn free(&mut self, base: usize, usable: usize) {
        self.class(usable).free.push(base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let s = Stack::with_size(10_000).unwrap();
        let (top, limit) = (s.top() as usize, s.limit() as usize);
        assert_eq!(top % 16, 0);
        assert_eq!(top - limit, 12_288, "10,000 rounds up to three pages");
        assert_eq!(s.guard(), limit - GUARD_SIZE..limit);
    }

    #[test]
    fn freed_slot_is_reused() {
        // A size no other test uses, so that no concurrent test takes the freed slot.
        let a = Stack::with_size(5 * 4096 - 7).unwrap();
        let top = a.top();
        drop(a);
        let b = Stack::with_size(5 * 4096).unwrap();
        assert_eq!(b.top(), top);
    }

    #[test]
    fn sizes_are_pooled_separately() {
        let a = Stack::with_size(7 * 4096).unwrap();
        let b = Stack::with_size(9 * 4096).unwrap();
        assert_eq!(a.top() as usize - a.limit() as usize, 7 * 4096);
        assert_eq!(b.top() as usize - b.limit() as usize, 9 * 4096);
        let top_a = a.top();
        drop(a);
        let c = Stack::with_size(9 * 4096).unwrap();
        assert_ne!(c.top(), top_a);
    }

    #[test]
    fn whole_slot_is_writable() {
        let s = Stack::with_size(3 * 4096).unwrap();
        let len = s.top() as usize - s.limit() as usize;
        // SAFETY: [limit, top) is the usable part of a slot we own.
        unsafe { core::ptr::write_bytes(s.limit(), 0xa5, len) };
        // SAFETY: as above; top - 1 is the highest usable byte.
        assert_eq!(unsafe { s.top().sub(1).read() }, 0xa5);
    }

    #[test]
    fn absurd_size_is_an_error_with_a_message() {
        let err = Stack::with_size(usize::MAX / 2).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("too large"), "{msg}");
    }

    #[test]
    fn slot_carving_crosses_reservations() {
        // 1 GiB / (1 MiB + 4 KiB) = 1020 slots per chunk: allocate just past it.
        let usable = 1 << 20;
        let slot_len = usable + guard_len();
        let per_chunk = (MAX_CHUNK_BYTES / slot_len).clamp(1, SLOTS_PER_CHUNK);
        let stacks: Vec<Stack> = (0..per_chunk + 2)
            .map(|_| Stack::with_size(usable).unwrap())
            .collect();
        let mut tops: Vec<usize> = stacks.iter().map(|s| s.top() as usize).collect();
        tops.sort_unstable();
        tops.dedup();
        assert_eq!(tops.len(), per_chunk + 2);
    }
}
