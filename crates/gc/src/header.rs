//! The flag bits of a collected object's header word, and where the word is: what the marker,
//! the sweep and `Gc::new` agree on without needing the per-type table (`object.rs`); and how
//! the marker recognises an open `GcCell` borrow (cell.rs).

/// Set on objects that survived the end of a runtime (see [`crate::retire`]): never swept again.
pub(crate) const IMMORTAL: usize = 1;
/// Set with the world stopped on every object marking did not reach; the sweep drops and frees
/// exactly these once the world runs again. New objects never carry it.
pub(crate) const CONDEMNED: usize = 2;
/// Set by `Gc::new` while it writes the value: the marker scans such an object conservatively
/// (a thread stopped halfway may have left any layout), and the constructing thread holds its
/// address, so it is marked.
pub(crate) const CONSTRUCTING: usize = 4;
/// The flag bits of a header word.
pub(crate) const FLAGS: usize = IMMORTAL | CONDEMNED | CONSTRUCTING;

/// The header word of the slot `[start, start + size)`.
///
/// # Safety
/// May be called only for a slot of a Gc-kind span, `size` being its element size.
#[inline]
pub(crate) unsafe fn header_of(start: *mut u8, size: usize) -> *mut usize {
    // SAFETY: the last word of a Gc slot lies inside the slot (slots are at least 16 bytes).
    unsafe { start.add(size - 8).cast::<usize>() }
}

/// The flag of a mutably borrowed `GcCell` (its first word).
pub(crate) const WRITING: usize = usize::MAX;

/// What a `GcRefMut` adds to its cell's address: an odd word is never a `Gc`, so the termination
/// scan checks only such words for an open guard (see `mark::TERMINATING`).
pub(crate) const GUARD_TAG: usize = 1;
