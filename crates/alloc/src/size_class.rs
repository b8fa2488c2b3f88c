//! Go's size classes: the 67 object sizes (8 B – 32 KiB) that small allocations are rounded up to.
//!
//! The table is Go's `runtime/sizeclasses.go` (`class_to_size`, `class_to_allocnpages`), produced by
//! Go's `mksizeclasses.go`: sizes grow by 8 B at first and by roughly 1/8 of the size later, and each
//! class gets the number of 8 KiB pages that keeps the *tail waste* (bytes at the end of a span too
//! small for one more object) at or below 1/8 of the span. Go picked the pages while the class still
//! had a slightly smaller size and then grew the size to fill the span, which is why a few classes
//! (e.g. 3072 B on 3 pages) use more pages than the smallest count meeting the 1/8 rule; we keep Go's
//! numbers verbatim and the tests check the 1/8 bound for every class. A span is then a whole
//! multiple of Go's (up to 16 KiB and 1024 objects, see [`SizeClass::pages`]): fewer span switches
//! for the caches, the same waste ratio.
//!
//! The allocation fast path skips both tables: one 256-entry table maps `(size + 7) / 8` straight
//! to the span class for sizes up to 2040 B (`SizeClass::small_spc`).
//!
//! Lookup is Go's two-table scheme, both tables built by `const fn` at compile time:
//!
//! ```text
//!   size <= 1024:  SIZE_TO_CLASS8  [(size + 7) / 8]              129 entries
//!   size <= 32768: SIZE_TO_CLASS128[(size - 1024 + 127) / 128]   249 entries
//! ```
//!
//! Object index from an offset inside a span uses Go's magic reciprocal
//! (`divMagic = u32::MAX / size + 1`, `index = offset * magic >> 32`), exact for every offset inside
//! a span of its class (checked exhaustively by a test).

/// Number of size classes including class 0 (class 0 means "large object, own span").
pub const NUM_SIZE_CLASSES: usize = 68;

/// Largest size served from a size class; larger requests get their own span.
pub const MAX_SMALL_SIZE: usize = 32768;

/// Go's `class_to_size`.
const CLASS_TO_SIZE: [u16; NUM_SIZE_CLASSES] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];

/// Go's `class_to_allocnpages` (8 KiB pages per span).
const CLASS_TO_PAGES: [u8; NUM_SIZE_CLASSES] = [
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 2, 1, 2, 1, 2, 1, 3, 2, 3, 1, 3, 2, 3, 4, 5, 6, 1, 7, 6, 5, 4, 3, 5, 7, 2, 9, 7, 5, 8,
    3, 10, 7, 4,
];

/// Bytes a span of a small class is grown to, in whole multiples of Go's span
/// ([`CLASS_TO_PAGES`]), as long as it holds at most 1024 objects.
///
/// Go's spans are mostly one 8 KiB page; a cache then switches spans every few dozen allocations
/// of a mid-size class, and each switch costs a detach (SeqCst) and, later, an adoption (CAS)
/// plus a few cache misses on span metadata. mimalloc's small pages are 64 KiB. A multiple of
/// Go's span keeps Go's bound on tail waste (waste / span is unchanged) and Go's `divMagic`
/// stays exact (every offset times every size stays below 2^32).
const SPAN_TARGET_BYTES: usize = 16 << 10;

/// Pages per span of each class: Go's count times the largest factor that keeps the span within
/// [`SPAN_TARGET_BYTES`] and at most 1024 objects (factor 1 when Go's span is already larger).
const SPAN_PAGES: [u8; NUM_SIZE_CLASSES] = {
    let mut t = [0u8; NUM_SIZE_CLASSES];
    let mut c = 1;
    while c < NUM_SIZE_CLASSES {
        let go = CLASS_TO_PAGES[c] as usize;
        let size = CLASS_TO_SIZE[c] as usize;
        let mut k = 1;
        while go * (k + 1) * 8192 <= SPAN_TARGET_BYTES && go * (k + 1) * 8192 / size <= 1024 {
            k += 1;
        }
        t[c] = (go * k) as u8;
        c += 1;
    }
    t
};

const SMALL_SIZE_DIV: usize = 8;
/// Largest size of the fast lookup table (`SizeClass::for_small_size`).
pub(crate) const SMALL_SIZE_MAX: usize = 1024;
const LARGE_SIZE_DIV: usize = 128;

/// Smallest class whose size is >= `size` (a linear walk; only used to build tables).
const fn first_class_at_least(size: usize) -> u8 {
    let mut c = 1;
    while c < NUM_SIZE_CLASSES {
        if CLASS_TO_SIZE[c] as usize >= size {
            return c as u8;
        }
        c += 1;
    }
    0
}

/// The allocation fast path's table: entry `i` is the Malloc span class (`class * 2`) of the
/// smallest size class holding `8 * i` bytes, for every `i < 256` (sizes up to 2040 bytes). A `u8`
/// index needs no bounds check, and the span class needs no arithmetic.
static SIZE8_TO_SPC: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = first_class_at_least(if i == 0 { 1 } else { i * SMALL_SIZE_DIV }) * 2;
        i += 1;
    }
    t
};

/// Sizes the fast path's table covers: `(size + 7) / 8 < 256`.
#[cfg(test)]
pub(crate) const FAST_SIZE_MAX: usize = 255 * SMALL_SIZE_DIV;

const fn build_class8() -> [u8; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1] {
    let mut t = [0u8; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1];
    let mut i = 0;
    while i < t.len() {
        // Bucket i holds sizes (8*(i-1), 8*i]; the class must fit the largest, 8*i.
        t[i] = first_class_at_least(if i == 0 { 1 } else { i * SMALL_SIZE_DIV });
        i += 1;
    }
    t
}

const fn build_class128() -> [u8; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1] {
    let mut t = [0u8; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = first_class_at_least(SMALL_SIZE_MAX + i * LARGE_SIZE_DIV);
        i += 1;
    }
    t
}

static SIZE_TO_CLASS8: [u8; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1] = build_class8();
static SIZE_TO_CLASS128: [u8; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1] =
    build_class128();

/// Alignments with their own table row: 16, 32, ..., 8192 (log2 4..=13). Alignment 8 needs no
/// table: every class size is a multiple of 8.
const ALIGN_ROWS: usize = 10;

const fn build_aligned() -> [[u8; NUM_SIZE_CLASSES]; ALIGN_ROWS] {
    let mut t = [[0u8; NUM_SIZE_CLASSES]; ALIGN_ROWS];
    let mut row = 0;
    while row < ALIGN_ROWS {
        let align = 16usize << row;
        let mut c = 1;
        while c < NUM_SIZE_CLASSES {
            let mut d = c;
            while d < NUM_SIZE_CLASSES && !(CLASS_TO_SIZE[d] as usize).is_multiple_of(align) {
                d += 1;
            }
            t[row][c] = if d < NUM_SIZE_CLASSES { d as u8 } else { 0 };
            c += 1;
        }
        row += 1;
    }
    t
}

/// `ALIGNED_CLASS[log2(align) - 4][c]`: first class >= `c` whose size is a multiple of `align`
/// (0 = none: use a large span).
static ALIGNED_CLASS: [[u8; NUM_SIZE_CLASSES]; ALIGN_ROWS] = build_aligned();

/// A small-object size class, `1..=67`. Class 0 ("large") is never represented by this type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SizeClass(u8);

impl SizeClass {
    /// The class for a request of `size` bytes (size 0 gets class 1); `None` above
    /// [`MAX_SMALL_SIZE`].
    #[inline]
    pub const fn for_size(size: usize) -> Option<SizeClass> {
        if size <= SMALL_SIZE_MAX {
            Some(SizeClass(SIZE_TO_CLASS8[size.div_ceil(SMALL_SIZE_DIV)]))
        } else if size <= MAX_SMALL_SIZE {
            Some(SizeClass(
                SIZE_TO_CLASS128[(size - SMALL_SIZE_MAX).div_ceil(LARGE_SIZE_DIV)],
            ))
        } else {
            None
        }
    }

    /// The class for `size` bytes aligned to `align` (a power of two): the first class at or
    /// above `for_size(size)` whose size is a multiple of `align`. Slots of a span start at a
    /// page-aligned base, so such a class gives aligned slots for any `align <= 8192`.
    #[inline]
    pub(crate) const fn for_size_align(size: usize, align: usize) -> Option<SizeClass> {
        let Some(c) = SizeClass::for_size(size) else {
            return None;
        };
        if align <= 8 {
            return Some(c);
        }
        let row = align.trailing_zeros() as usize;
        if row < 4 || row - 4 >= ALIGN_ROWS {
            return None;
        }
        let d = ALIGNED_CLASS[row - 4][c.0 as usize];
        if d == 0 { None } else { Some(SizeClass(d)) }
    }

    /// The Malloc span class (`class * 2`) for a request of `8 * idx - 7 ..= 8 * idx` bytes
    /// (`idx = (size + 7) / 8`): one table load, no branch, no bounds check (the allocation fast
    /// path).
    #[inline(always)]
    pub(crate) fn small_spc(idx: u8) -> u8 {
        SIZE8_TO_SPC[idx as usize]
    }

    /// The class with index `i` (`1..NUM_SIZE_CLASSES`), if valid.
    #[inline]
    pub const fn from_index(i: usize) -> Option<SizeClass> {
        if i >= 1 && i < NUM_SIZE_CLASSES {
            Some(SizeClass(i as u8))
        } else {
            None
        }
    }

    /// Index of this class in Go's tables (`1..=67`).
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Object (slot) size in bytes.
    #[inline]
    pub const fn size(self) -> usize {
        CLASS_TO_SIZE[self.0 as usize] as usize
    }

    /// 8 KiB pages per span of this class: Go's count, times the largest factor keeping the span
    /// within 16 KiB and 1024 objects.
    #[inline]
    pub const fn pages(self) -> usize {
        SPAN_PAGES[self.0 as usize] as usize
    }

    /// Objects in one span (at most 1024).
    #[inline]
    pub const fn objects_per_span(self) -> usize {
        self.pages() * crate::PAGE_SIZE / self.size()
    }

    /// Go's `divMagic`: `(offset * magic) >> 32 == offset / size` for offsets inside a span.
    #[inline]
    pub(crate) const fn div_magic(self) -> u32 {
        (u32::MAX / self.size() as u32).wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;

    fn all() -> impl Iterator<Item = SizeClass> {
        (1..NUM_SIZE_CLASSES).map(|i| SizeClass::from_index(i).unwrap())
    }

    #[test]
    fn fast_table_matches_for_size() {
        for size in 1..=FAST_SIZE_MAX {
            let idx = (size + 7) >> 3;
            assert!(idx < 256);
            let c = SizeClass::for_size(size).unwrap();
            assert_eq!(
                SizeClass::small_spc(idx as u8) as usize,
                c.index() * 2,
                "size {size}"
            );
        }
        const { assert!((FAST_SIZE_MAX + 8 + 7) >> 3 >= 256) };
    }

    #[test]
    fn spans_are_multiples_of_go_spans() {
        for c in all() {
            let go = CLASS_TO_PAGES[c.index()] as usize;
            assert_eq!(c.pages() % go, 0, "{c:?}");
            assert!(
                c.pages() == go || c.pages() * PAGE_SIZE <= SPAN_TARGET_BYTES,
                "{c:?}"
            );
        }
    }

    #[test]
    fn table_is_monotonic_multiple_of_8_and_bounded_waste() {
        let mut prev = 0;
        for c in all() {
            assert!(c.size() > prev, "class {c:?} not increasing");
            assert_eq!(c.size() % 8, 0, "class {c:?}");
            let span = c.pages() * PAGE_SIZE;
            let waste = span % c.size();
            assert!(waste * 8 <= span, "class {c:?} wastes {waste} of {span}");
            assert!(c.objects_per_span() <= 1024 && c.objects_per_span() >= 1);
            prev = c.size();
        }
        assert_eq!(prev, MAX_SMALL_SIZE);
        assert_eq!(
            SizeClass::from_index(NUM_SIZE_CLASSES - 1).unwrap().size(),
            32768
        );
    }

    #[test]
    fn for_size_round_trips() {
        assert_eq!(SizeClass::for_size(0).unwrap().size(), 8);
        assert!(SizeClass::for_size(MAX_SMALL_SIZE + 1).is_none());
        for size in 1..=MAX_SMALL_SIZE {
            let c = SizeClass::for_size(size).unwrap();
            assert!(c.size() >= size, "size {size} -> {c:?}");
            if c.index() > 1 {
                let below = SizeClass::from_index(c.index() - 1).unwrap();
                assert!(
                    below.size() < size,
                    "size {size} -> {c:?} but {below:?} fits"
                );
            }
        }
        for c in all() {
            assert_eq!(SizeClass::for_size(c.size()), Some(c));
        }
    }

    #[test]
    fn alignment_picks_multiples() {
        for size in (0..=MAX_SMALL_SIZE).step_by(7) {
            for shift in 0..=14 {
                let align = 1usize << shift;
                match SizeClass::for_size_align(size, align) {
                    Some(c) => {
                        assert!(c.size() >= size);
                        assert_eq!(c.size() % align.max(8), 0, "size {size} align {align}");
                        assert!(c.index() >= SizeClass::for_size(size).unwrap().index());
                    }
                    None => assert!(
                        align > 8192 || all().all(|c| c.size() < size || c.size() % align != 0)
                    ),
                }
            }
        }
        assert_eq!(SizeClass::for_size_align(24, 16).unwrap().size(), 32);
        assert_eq!(SizeClass::for_size_align(100, 4096).unwrap().size(), 4096);
    }

    #[test]
    fn div_magic_is_exact_inside_a_span() {
        for c in all() {
            let m = c.div_magic() as u64;
            for off in 0..(c.pages() * PAGE_SIZE) as u64 {
                assert_eq!(
                    ((off * m) >> 32) as usize,
                    off as usize / c.size(),
                    "{c:?} {off}"
                );
            }
        }
    }
}
