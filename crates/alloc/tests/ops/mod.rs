//! Shared operation programs for the property test (and, by copy, the fuzz target): a
//! reference model of live blocks checked against the real heap.

#![allow(dead_code, reason = "each test binary uses a subset")]

use goro_alloc::size_class::SizeClass;
use goro_alloc::{GoroAlloc, find_block};
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

/// One step of a heap program.
#[derive(Clone, Debug)]
pub enum HeapOp {
    /// Allocate `size` bytes aligned to `1 << align_log2`.
    Alloc {
        /// Bytes.
        size: usize,
        /// log2 of the alignment.
        align_log2: u8,
    },
    /// Free the live block number `index % live`.
    Free {
        /// Which live block (modulo their number).
        index: usize,
    },
    /// Reallocate the live block number `index % live` to `size` bytes.
    Realloc {
        /// Which live block (modulo their number).
        index: usize,
        /// New size.
        size: usize,
    },
    /// Free every live block.
    FreeAll,
}

/// A live block in the model.
struct Live {
    size: usize,
    align: usize,
    seed: u8,
}

/// The reference model: start address → block.
#[derive(Default)]
pub struct Model {
    live: BTreeMap<usize, Live>,
    next_seed: u8,
}

fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: `p` is a live block of at least `n` bytes.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

fn check(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: `p` is a live block of at least `n` bytes.
        let b = unsafe { p.add(i).read() };
        assert_eq!(
            b,
            seed.wrapping_add(i as u8),
            "fill pattern of {p:?} byte {i}"
        );
    }
}

impl Model {
    fn check_new(&self, p: *mut u8, size: usize, align: usize) {
        assert!(!p.is_null(), "allocation of {size} failed");
        let a = p as usize;
        assert_eq!(a % align, 0, "alignment {align} of {p:?}");
        // No overlap with the neighbours in address order.
        if let Some((&s, b)) = self.live.range(..=a).next_back() {
            assert!(s + b.size <= a, "{p:?} overlaps block at {s:#x}");
        }
        if let Some((&s, _)) = self.live.range(a..).next() {
            assert!(a + size <= s, "{p:?}+{size} overlaps block at {s:#x}");
        }
        // The block lies in a span of the right class.
        let b = find_block(a).expect("a live block is in the heap");
        assert_eq!(b.start, p, "find_block of a block start");
        assert!(b.size >= size, "slot of {} for {size}", b.size);
        if align <= 8
            && let Some(c) = SizeClass::for_size(size)
        {
            assert_eq!(b.size, c.size(), "class of a {size}-byte block");
        }
        if size > 0 {
            let last = find_block(a + size - 1).expect("interior pointer");
            assert_eq!(last.start, p);
        }
    }

    /// Applies one op to the heap and the model, checking every invariant it touches.
    pub fn apply(&mut self, op: &HeapOp) {
        match *op {
            HeapOp::Alloc { size, align_log2 } => {
                let align = 1usize << align_log2;
                let layout = Layout::from_size_align(size.max(1), align).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { GoroAlloc.alloc(layout) };
                self.check_new(p, layout.size(), align);
                let seed = self.next_seed;
                self.next_seed = self.next_seed.wrapping_add(1);
                fill(p, layout.size(), seed);
                self.live.insert(
                    p as usize,
                    Live {
                        size: layout.size(),
                        align,
                        seed,
                    },
                );
            }
            HeapOp::Free { index } => {
                if self.live.is_empty() {
                    return;
                }
                let key = *self.live.keys().nth(index % self.live.len()).unwrap();
                let b = self.live.remove(&key).unwrap();
                check(key as *mut u8, b.size, b.seed);
                // SAFETY: a live block with this layout, freed once.
                unsafe {
                    GoroAlloc.dealloc(
                        key as *mut u8,
                        Layout::from_size_align(b.size, b.align).unwrap(),
                    )
                };
            }
            HeapOp::Realloc { index, size } => {
                if self.live.is_empty() {
                    return;
                }
                let size = size.max(1);
                let key = *self.live.keys().nth(index % self.live.len()).unwrap();
                let b = self.live.remove(&key).unwrap();
                check(key as *mut u8, b.size, b.seed);
                let layout = Layout::from_size_align(b.size, b.align).unwrap();
                // SAFETY: a live block with this layout; `size` is non-zero.
                let p = unsafe { GoroAlloc.realloc(key as *mut u8, layout, size) };
                self.check_new(p, size, b.align);
                check(p, b.size.min(size), b.seed);
                fill(p, size, b.seed);
                self.live.insert(
                    p as usize,
                    Live {
                        size,
                        align: b.align,
                        seed: b.seed,
                    },
                );
            }
            HeapOp::FreeAll => {
                while !self.live.is_empty() {
                    self.apply(&HeapOp::Free { index: 0 });
                }
            }
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        self.apply(&HeapOp::FreeAll);
    }
}
