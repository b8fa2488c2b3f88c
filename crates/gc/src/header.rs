//! The flag bits of a collected object's header word, and where the word is: what the marker,
//! the sweep and `Gc::new` agree on without needing the per-type table (`object.rs`).

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
