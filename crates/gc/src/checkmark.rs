//! `GORO_DEBUG=gccheckmark=1`: each cycle's concurrent marking, checked by a second marking with
//! the world stopped (Go's `gccheckmark`).
//!
//! At the end of mark termination, before anything is condemned, the mark bits of every Gc span
//! are saved, cleared, and marked again from the roots with every thread stopped, which is the
//! stop-the-world collector's marking and needs no barrier. An object that this marking reaches
//! and the concurrent one did not is a miss: the process aborts, naming the object, its type,
//! and an object or root that points to it. Otherwise the two markings' union stays, so the
//! check changes nothing the cycle frees. Objects allocated during marking are black, so the
//! concurrent marking may hold more than the check (the garbage made meanwhile), never less.
//!
//! Everything here runs with the world stopped: no allocation, no lock; the saved bits live in
//! a mapping made for the check.

use crate::header::header_of;
use crate::object::vtable_of;
use crate::roots::{Mutators, Root, RootVisitor};
use crate::trace::Tracer;
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};
use goro_alloc::GcSpan;

/// Mark words per span.
const WORDS: usize = goro_alloc::MAX_SPAN_SLOTS / 64;

/// Runs the check; aborts on a miss. The world is stopped and the cycle's marking is complete;
/// `mark_immortals` marks the objects that survived a runtime's end (roots of every cycle).
pub(crate) fn verify(mutators: &dyn Mutators, mark_immortals: fn(&mut Tracer)) {
    let mut spans = 0;
    goro_alloc::for_each_gc_span(|_| spans += 1);
    let saved = Saved::map(spans * WORDS);
    let mut at = 0;
    goro_alloc::for_each_gc_span(|span| {
        if at + WORDS <= saved.len {
            for w in 0..WORDS {
                saved.set(at + w, span.mark_word(w));
            }
        }
        at += WORDS;
    });
    goro_alloc::clear_marks();
    let mut tracer = Tracer::new();
    mark_immortals(&mut tracer);
    // The mark worker's own stack is no root: it holds no mutator's `Gc`, and below the frame
    // that termination scanned it from lie words its own deeper calls left (of this cycle or
    // an earlier one), which would read as reachable here and nowhere else.
    let here = 0usize;
    let here = core::hint::black_box(&here) as *const usize as usize;
    mutators.roots(&mut RootVisitor {
        sink: &mut |root| {
            if !root.holds(here) {
                tracer.push_root(root);
            }
        },
        parked_later: false,
        globals: 0,
    });
    crate::helper::drain(&mut tracer, false);
    drop(tracer);
    let mut at = 0;
    let mut miss = None;
    goro_alloc::for_each_gc_span(|span| {
        if at + WORDS > saved.len {
            return;
        }
        for w in 0..WORDS {
            let rechecked = span.mark_word(w);
            let mut missed = rechecked & !saved.get(at + w);
            while missed != 0 && miss.is_none() {
                let slot = span.slot(64 * w + missed.trailing_zeros() as usize);
                missed &= missed - 1;
                // A root marks a slot whose header is still 0 (one being built, or a free slot
                // a stale word points at: `Marker::mark_block_from`): not an object either
                // marking could miss.
                // SAFETY: a slot of this Gc span; its header word lies inside it.
                if unsafe { crate::header::header_of(slot, span.elem_size()).read() } != 0 {
                    miss = Some((span, slot));
                }
            }
            span.or_mark_word(w, saved.get(at + w));
        }
        at += WORDS;
    });
    if let Some((span, slot)) = miss {
        report(mutators, span, slot);
    }
    saved.unmap();
}

/// Writes what was missed and who points to it, then aborts.
fn report(mutators: &dyn Mutators, span: GcSpan, slot: *mut u8) -> ! {
    let size = span.elem_size();
    let lo = slot as usize;
    let mut message = Message::default();
    let _ = write!(
        message,
        "fatal error: gccheckmark: object {lo:#x} ({size} bytes, {}) is reachable but concurrent \
         marking missed it",
        type_name(span, slot)
    );
    match referrer(lo, lo + size) {
        Some((span, referrer)) => {
            let _ = write!(
                message,
                "; it is referenced from object {:#x} ({})",
                referrer as usize,
                type_name(span, referrer)
            );
        }
        None => {
            let _ = write!(message, "; no marked object points to it");
            let mut block = None;
            goro_alloc::for_each_marked_malloc_block(|start, end, _black| {
                if block.is_none() && words(start, end).any(|w| (lo..lo + size).contains(&w)) {
                    block = Some((start, end));
                }
            });
            if let Some((start, end)) = block {
                let _ = write!(
                    message,
                    "; malloc block {start:#x} ({} bytes) does",
                    end - start
                );
            }
            let mut root = None;
            mutators.roots(&mut RootVisitor {
                sink: &mut |found| {
                    if let Root::Range(start, end) = found
                        && root.is_none()
                        && words(start, end).any(|w| (lo..lo + size).contains(&w))
                    {
                        root = Some((start, end));
                    }
                },
                parked_later: false,
                globals: 0,
            });
            if let Some((start, end)) = root {
                let _ = write!(message, "; root range {start:#x}..{end:#x} does");
            }
        }
    }
    let _ = writeln!(message);
    // SAFETY: writes a valid buffer to file descriptor 2.
    unsafe { libc::write(2, message.bytes.as_ptr().cast(), message.len) };
    std::process::abort();
}

/// A marked Gc object holding a word that points into `[lo, hi)`.
fn referrer(lo: usize, hi: usize) -> Option<(GcSpan, *mut u8)> {
    let mut found = None;
    goro_alloc::for_each_gc_span(|span| {
        if found.is_some() {
            return;
        }
        let size = span.elem_size();
        for i in 0..span.len() {
            if !span.is_marked(i) {
                continue;
            }
            let slot = span.slot(i);
            let start = slot as usize;
            if start != lo && words(start, start + size - 8).any(|word| (lo..hi).contains(&word)) {
                found = Some((span, slot));
                return;
            }
        }
    });
    found
}

/// The aligned words of `[lo, hi)`, read as the marker reads them.
fn words(lo: usize, hi: usize) -> impl Iterator<Item = usize> {
    (lo.next_multiple_of(8)..hi.saturating_sub(7))
        .step_by(8)
        // SAFETY: `[lo, hi)` is root memory or an allocated block: mapped and readable.
        .map(|at| unsafe { (at as *const usize).read_volatile() })
}

fn type_name(span: GcSpan, slot: *mut u8) -> &'static str {
    // SAFETY: `slot` is a slot of the Gc span `span`; its header word lies inside it.
    let header =
        unsafe { AtomicUsize::from_ptr(header_of(slot, span.elem_size())) }.load(Ordering::Acquire);
    if header == 0 {
        return "a free slot";
    }
    // SAFETY: a non-zero header was written by `Gc::new` (flags aside).
    (unsafe { vtable_of(header) }.name)()
}

/// A message built on the stack (no allocation with the world stopped).
struct Message {
    bytes: [u8; 512],
    len: usize,
}

impl Default for Message {
    fn default() -> Message {
        Message {
            bytes: [0; 512],
            len: 0,
        }
    }
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.bytes.len() - self.len;
        let n = s.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Saved mark words, in a mapping of their own.
struct Saved {
    base: *mut u64,
    len: usize,
}

impl Saved {
    fn map(len: usize) -> Saved {
        Saved {
            base: crate::workbuf::map((len * 8).max(8)).cast(),
            len,
        }
    }

    fn get(&self, i: usize) -> u64 {
        debug_assert!(i < self.len);
        // SAFETY: `i < len`: inside the mapping.
        unsafe { self.base.add(i).read() }
    }

    fn set(&self, i: usize, word: u64) {
        debug_assert!(i < self.len);
        // SAFETY: `i < len`: inside the mapping, which only this thread uses.
        unsafe { self.base.add(i).write(word) };
    }

    fn unmap(self) {
        // SAFETY: the mapping `Saved::map` made, which nothing uses once the check is done.
        unsafe { crate::workbuf::unmap(self.base.cast(), (self.len * 8).max(8)) };
    }
}
