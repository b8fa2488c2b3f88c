//! Unit tests of the heap through the crate's own entry points.

use super::*;
use std::collections::HashSet;

fn a(size: usize, align: usize) -> *mut u8 {
    // SAFETY: size > 0 in every caller, align a power of two.
    unsafe { GoroAlloc.alloc(Layout::from_size_align(size, align).unwrap()) }
}

fn d(p: *mut u8, size: usize, align: usize) {
    // SAFETY: `p` came from `a(size, align)` and is freed once.
    unsafe { GoroAlloc.dealloc(p, Layout::from_size_align(size, align).unwrap()) }
}

/// The header word (last word) of the live Gc slot at `p` of `size` bytes.
fn header(p: *mut u8, size: usize) -> u64 {
    // SAFETY: the last word of a live slot is readable and 8-aligned.
    unsafe { ((p as usize + size - 8) as *const u64).read() }
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
        assert_eq!(b, seed.wrapping_add(i as u8), "byte {i} of {p:?}");
    }
}

#[test]
fn find_block_every_class_interior_and_tail() {
    for ci in 1..size_class::NUM_SIZE_CLASSES {
        let c = SizeClass::from_index(ci).unwrap();
        let size = c.size();
        let p = a(size, 8);
        assert!(!p.is_null());
        for off in [0, 1, size / 2, size - 1] {
            let b = find_block(p as usize + off).expect("interior pointer");
            assert_eq!(b.start, p, "class {ci} off {off}");
            assert_eq!(b.size, size);
            assert_eq!(b.kind, SpanKind::Malloc);
        }
        let b = find_block(p as usize).unwrap();
        let span_start = b.span.start.load(Ordering::Relaxed);
        let tail = span_start + c.objects_per_span() * size;
        let end = span_start + c.pages() * PAGE_SIZE;
        if tail < end {
            assert!(find_block(tail).is_none(), "tail waste of class {ci}");
            assert!(find_block(end - 1).is_none(), "tail waste of class {ci}");
        }
        d(p, size, 8);
    }
}

#[test]
fn find_block_large_and_outside() {
    for (size, align) in [
        (40_000, 8),
        (1 << 20, 8),
        (100_000, 1 << 16),
        (3 << 20, 1 << 21),
    ] {
        let p = a(size, align);
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0);
        fill(p, size, 7);
        for off in [0, 1, size / 3, size - 1] {
            let b = find_block(p as usize + off).unwrap();
            assert_eq!(b.start, p);
            assert!(b.size >= size);
        }
        if align > PAGE_SIZE && !(p as usize).is_multiple_of(align * 2) {
            // Padding in front of an over-aligned object is not part of it.
            assert!(find_block(p as usize - 1).is_none_or(|b| b.start != p));
        }
        check(p, size, 7);
        d(p, size, align);
    }
    let on_stack = 0u64;
    assert!(find_block(&on_stack as *const u64 as usize).is_none());
    assert!(find_block(0).is_none());
    assert!(find_block(usize::MAX).is_none());
    assert!(find_block(1 << 47).is_none());
    assert!(!is_goro_heap(&on_stack as *const u64 as usize));
}

#[test]
fn gc_large_header_position() {
    let p = alloc_gc(50_001, 8);
    let b = find_block(p as usize + 50_000).unwrap();
    assert_eq!(b.start, p);
    assert_eq!(b.size, gc_slot_size(50_001));
    assert_eq!(b.size, 50_008);
    assert_eq!(b.kind, SpanKind::Gc);
    assert_eq!(header(p, b.size), 0);
    assert!(find_block(p as usize + b.size).is_none());
    // SAFETY: live Gc slot with a zero header.
    unsafe { free_gc(p) };
}

/// A pointer-free Gc slot follows the Gc slot convention (its size, its zero header, its span
/// of one kind) and lies in a span of its own kind, small or large, whatever its alignment;
/// `alloc_gc` never hands out such a slot.
#[test]
fn gc_pointer_free_slots_have_spans_of_their_own() {
    for (size, align) in [
        (16, 8),
        (40, 8),
        (264, 8),
        (2040, 8),
        (4000, 8),
        (100, 64),
        (32_768, 8),
        (50_001, 8),
    ] {
        let free = alloc_gc_pointer_free(size, align);
        let scanned = alloc_gc(size, align);
        assert!(
            (free as usize).is_multiple_of(align) && (scanned as usize).is_multiple_of(align),
            "{size}/{align}"
        );
        let (f, s) = (
            find_block(free as usize + size - 1).unwrap(),
            find_block(scanned as usize).unwrap(),
        );
        assert_eq!((f.start, s.start), (free, scanned));
        assert_eq!((f.kind, s.kind), (SpanKind::Gc, SpanKind::Gc));
        assert!(
            f.is_pointer_free() && !s.is_pointer_free(),
            "{size}/{align}"
        );
        assert_eq!(f.size, s.size, "both kinds round {size} to the same slot");
        if align == 8 {
            assert_eq!(f.size, gc_slot_size(size));
        }
        assert_eq!((header(free, f.size), header(scanned, s.size)), (0, 0));
        // SAFETY: live Gc slots with zero headers, freed once.
        unsafe {
            free_gc(free);
            free_gc(scanned);
        }
    }
    let block = malloc(64, 8, SpanKind::Malloc);
    assert!(
        !find_block(block as usize).unwrap().is_pointer_free(),
        "a malloc block is not a pointer-free Gc slot"
    );
    // SAFETY: a live block from `malloc`, freed once.
    unsafe { free(block) };
}

#[test]
fn alloc_free_realloc_patterns() {
    let mut live: Vec<(*mut u8, usize, usize, u8)> = Vec::new();
    let mut seed = 0x1234_5678u32;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for step in 0..20_000u32 {
        let r = rnd();
        if r % 3 != 0 || live.is_empty() {
            let size = match r % 10 {
                0 => 33_000 + (rnd() as usize % 100_000),
                1..=3 => 1 + rnd() as usize % 4096,
                _ => 1 + rnd() as usize % 256,
            };
            let align = 1usize << (rnd() % 8);
            let p = a(size, align);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            fill(p, size, step as u8);
            live.push((p, size, align, step as u8));
        } else {
            let i = rnd() as usize % live.len();
            let (p, size, align, s) = live.swap_remove(i);
            check(p, size, s);
            if r % 2 == 0 {
                let new = 1 + rnd() as usize % 50_000;
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: `p` is live with `layout`.
                let q = unsafe { GoroAlloc.realloc(p, layout, new) };
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0);
                check(q, size.min(new), s);
                fill(q, new, s);
                live.push((q, new, align, s));
            } else {
                d(p, size, align);
            }
        }
    }
    // No two live blocks overlap.
    let mut spans: Vec<(usize, usize)> = live.iter().map(|&(p, n, _, _)| (p as usize, n)).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap {w:?}");
    }
    for (p, size, align, s) in live {
        check(p, size, s);
        d(p, size, align);
    }
}

#[test]
fn realloc_in_place_within_class() {
    let p = a(100, 8);
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: `p` is live with layout `l`.
    let q = unsafe { GoroAlloc.realloc(p, l, 110) };
    assert_eq!(p, q, "100 and 110 share the 112-byte class");
    // SAFETY: `q` is live with size 110.
    let r = unsafe { GoroAlloc.realloc(q, Layout::from_size_align(110, 8).unwrap(), 5000) };
    assert_ne!(q, r);
    d(r, 5000, 8);
}

#[test]
fn zeroed_is_zero() {
    for size in [8, 100, 4096, 40_000] {
        let p = a(size, 8);
        fill(p, size, 1);
        d(p, size, 8);
        // SAFETY: non-zero size.
        let z = unsafe { GoroAlloc.alloc_zeroed(Layout::from_size_align(size, 8).unwrap()) };
        for i in 0..size {
            // SAFETY: live block of `size` bytes.
            assert_eq!(unsafe { z.add(i).read() }, 0);
        }
        d(z, size, 8);
    }
}

#[test]
fn batched_remote_frees_are_pushed_at_thread_exit() {
    const N: usize = 2000;
    let ptrs: Vec<usize> = (0..N).map(|_| a(48, 8) as usize).collect();
    let set: HashSet<usize> = ptrs.iter().copied().collect();
    let before = crate::stats();
    std::thread::spawn(move || {
        // Allocate first: the thread gets a cache id, so its remote frees are batched (and
        // pushed by its exit hook).
        let own = a(48, 8);
        for p in ptrs {
            d(p as *mut u8, 48, 8);
        }
        d(own, 48, 8);
    })
    .join()
    .unwrap();
    let after = crate::stats();
    assert!(after.frees >= before.frees + N as u64);
    let again: Vec<usize> = (0..N).map(|_| a(48, 8) as usize).collect();
    assert!(
        again.iter().any(|p| set.contains(p)),
        "batched remote frees never reused"
    );
    for p in again {
        d(p as *mut u8, 48, 8);
    }
}

#[test]
fn cross_thread_free_then_reuse() {
    const N: usize = 2000;
    let ptrs: Vec<usize> = (0..N).map(|_| a(48, 8) as usize).collect();
    let set: HashSet<usize> = ptrs.iter().copied().collect();
    std::thread::spawn(move || {
        for p in ptrs {
            d(p as *mut u8, 48, 8);
        }
    })
    .join()
    .unwrap();
    // The owner collects the remote frees: at least some slots come back to this thread.
    let again: Vec<usize> = (0..N).map(|_| a(48, 8) as usize).collect();
    assert!(
        again.iter().any(|p| set.contains(p)),
        "remote frees never reused"
    );
    for p in again {
        d(p as *mut u8, 48, 8);
    }
}

#[test]
fn owner_exits_before_remote_free() {
    for _ in 0..20 {
        let ptrs: Vec<usize> = std::thread::spawn(|| (0..500).map(|_| a(96, 8) as usize).collect())
            .join()
            .unwrap();
        for &p in &ptrs {
            fill(p as *mut u8, 96, 3);
        }
        std::thread::spawn(move || {
            for p in ptrs {
                check(p as *mut u8, 96, 3);
                d(p as *mut u8, 96, 8);
            }
        })
        .join()
        .unwrap();
    }
    // Blocks freed after their owner died are reusable.
    let p = a(96, 8);
    assert!(!p.is_null());
    d(p, 96, 8);
}

#[test]
fn producer_consumer_many_spans() {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
    let consumer = std::thread::spawn(move || {
        for batch in rx {
            for p in batch {
                check(p as *mut u8, 200, 9);
                d(p as *mut u8, 200, 8);
            }
        }
    });
    for _ in 0..200 {
        let batch: Vec<usize> = (0..100)
            .map(|_| {
                let p = a(200, 8);
                fill(p, 200, 9);
                p as usize
            })
            .collect();
        tx.send(batch).unwrap();
    }
    drop(tx);
    consumer.join().unwrap();
}

#[test]
fn thread_churn_is_bounded() {
    let round = || {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                std::thread::spawn(move || {
                    let v: Vec<usize> = (0..200)
                        .map(|j| a(16 + (i + j) % 2000, 8) as usize)
                        .collect();
                    for (j, p) in v.into_iter().enumerate() {
                        d(p as *mut u8, 16 + (i + j) % 2000, 8);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    };
    round();
    let after_first = stats().heap_inuse;
    for _ in 0..5 {
        round();
    }
    let after = stats().heap_inuse;
    // Other tests run concurrently in this process; allow them some room.
    assert!(
        after <= after_first + (64 << 20),
        "heap_inuse grew {after_first} -> {after}"
    );
}

/// Gc slot: header word, for_each_gc_span, free_gc reuse, marks.
#[test]
fn gc_slots_headers_walk_and_reuse() {
    let sizes = [1usize, 16, 24, 100, 1000, 5000, 32_768];
    let mut ptrs = Vec::new();
    for &s in &sizes {
        for _ in 0..50 {
            let p = alloc_gc(s, 8);
            assert!(!p.is_null());
            let b = find_block(p as usize).unwrap();
            assert_eq!(b.kind, SpanKind::Gc);
            assert_eq!(b.size, gc_slot_size(s));
            let hdr = (p as usize + b.size - 8) as *mut u64;
            // SAFETY: the header word of a live slot.
            assert_eq!(unsafe { hdr.read() }, 0, "fresh header");
            // Dirty the whole slot, then set a non-zero header (as the collector would).
            fill(p, b.size, 0xAB);
            // SAFETY: as above.
            unsafe { hdr.write(0xDEAD_0000 + s as u64) };
            ptrs.push((p, b.size));
        }
    }
    // Every allocated slot is visited by the walk.
    let mut seen = HashSet::new();
    for_each_gc_span(|g| {
        assert!(!g.is_empty());
        for i in 0..g.len() {
            seen.insert(g.slot(i) as usize);
        }
    });
    for &(p, _) in &ptrs {
        assert!(seen.contains(&(p as usize)), "slot {p:?} not walked");
    }
    // Free them (header zeroed first, per the convention) and allocate again: reused slots
    // have a zero header even though the rest of the slot is dirty.
    let old: HashSet<usize> = ptrs.iter().map(|&(p, _)| p as usize).collect();
    for &(p, size) in &ptrs {
        // SAFETY: the header word of a live slot, zeroed before free per the convention.
        unsafe { ((p as usize + size - 8) as *mut u64).write(0) };
        // SAFETY: live Gc slot with zero header.
        unsafe { free_gc(p) };
    }
    let mut reused = 0;
    for &s in &sizes {
        for _ in 0..50 {
            let p = alloc_gc(s, 8);
            let b = find_block(p as usize).unwrap();
            // SAFETY: header of a live slot.
            assert_eq!(header(p, b.size), 0);
            reused += old.contains(&(p as usize)) as usize;
            // SAFETY: header is 0, slot live.
            unsafe { free_gc(p) };
        }
    }
    assert!(reused > 0, "free_gc slots never reused");
}

#[test]
fn gc_alignment() {
    for align in [8, 16, 32, 64, 256, 4096] {
        for size in [1, 24, 100, 3000, 40_000] {
            let p = alloc_gc(size, align);
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            let b = find_block(p as usize).unwrap();
            assert!(b.size >= gc_slot_size(size));
            // SAFETY: header of a live slot.
            assert_eq!(header(p, b.size), 0);
            // SAFETY: live slot, zero header.
            unsafe { free_gc(p) };
        }
    }
}

#[test]
fn marks_round_trip() {
    let p = alloc_gc(64, 8);
    let q = alloc_gc(64, 8);
    let big = alloc_gc(100_000, 8);
    let bp = find_block(p as usize + 10).unwrap();
    let bq = find_block(q as usize).unwrap();
    let bb = find_block(big as usize + 99_999).unwrap();
    // Another test may call clear_marks concurrently; marks set here are only checked loosely
    // against that, but `mark` must report the transition it made.
    assert!(bp.mark() || bp.is_marked());
    assert!(bp.is_marked() || !bp.mark());
    assert!(bb.mark() || bb.is_marked());
    let _ = bq;
    clear_marks();
    assert!(!bp.is_marked());
    assert!(!bb.is_marked());
    assert!(bp.mark());
    assert!(!bp.mark(), "second mark reports already set");
    let mut found = false;
    for_each_gc_span(|g| {
        for i in 0..g.len() {
            if g.slot(i) == p {
                found = true;
                assert!(g.is_marked(i));
            }
        }
    });
    assert!(found);
    clear_marks();
    assert!(!bp.is_marked());
    // SAFETY: live slots, zero headers.
    unsafe {
        free_gc(p);
        free_gc(q);
        free_gc(big);
    }
}

#[test]
fn for_each_gc_span_callback_may_allocate() {
    let p = alloc_gc(32, 8);
    let mut extra = Vec::new();
    let mut n = 0;
    for_each_gc_span(|_| {
        n += 1;
        if n < 50 {
            extra.push(alloc_gc(32, 8));
        }
    });
    assert!(n >= 1);
    for q in extra {
        // SAFETY: live slots, zero headers.
        unsafe { free_gc(q) };
    }
    // SAFETY: live slot, zero header.
    unsafe { free_gc(p) };
}

#[test]
fn stats_move() {
    let before = stats();
    let p = a(1 << 20, 8);
    let mid = stats();
    assert!(mid.heap_inuse >= before.heap_inuse.saturating_sub(64 << 20));
    assert!(mid.heap_sys >= mid.heap_inuse);
    assert!(mid.spans_inuse >= 1);
    assert!(mid.mallocs > before.mallocs);
    d(p, 1 << 20, 8);
    let after = stats();
    assert!(after.frees > before.frees);
    assert_eq!(after.heap_idle, after.heap_sys - after.heap_inuse);
}

#[test]
fn concurrent_find_block_is_safe() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes: Vec<usize> = (0..256).map(|i| a(8 + i * 8, 8) as usize).collect();
    let s2 = stop.clone();
    let pr = probes.clone();
    let reader = std::thread::spawn(move || {
        let mut hits = 0usize;
        // At least one pass, even if the main thread is done before this one starts.
        loop {
            for &p in &pr {
                for off in [0, 4096, 100_000] {
                    if let Some(b) = find_block(p + off) {
                        hits += b.size.min(1);
                        let _ = b.is_marked();
                    }
                }
            }
            if s2.load(Ordering::Relaxed) {
                break hits;
            }
        }
    });
    for round in 0..50 {
        let v: Vec<usize> = (0..500)
            .map(|i| a(8 + (i * 40 + round) % 30_000, 8) as usize)
            .collect();
        for (i, p) in v.into_iter().enumerate() {
            d(p as *mut u8, 8 + (i * 40 + round) % 30_000, 8);
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    for (i, p) in probes.into_iter().enumerate() {
        d(p as *mut u8, 8 + i * 8, 8);
    }
}

#[test]
fn bin_reuses_the_last_freed_slot_of_its_class() {
    std::thread::spawn(|| {
        // The first allocation refills the class and sets up the thread's bins.
        let warm = a(40, 8);
        let p = a(40, 8);
        d(p, 40, 8);
        // A free of another class in between does not disturb this class's bin.
        let q = a(200, 8);
        d(q, 200, 8);
        assert_eq!(a(40, 8), p, "the bin is a LIFO stack per class");
        d(p, 40, 8);
        d(warm, 40, 8);
    })
    .join()
    .unwrap();
}

#[test]
fn bin_keeps_other_threads_slots_and_counts_exactly() {
    const N: usize = 300;
    let ptrs: Vec<usize> = (0..N).map(|_| a(24, 8) as usize).collect();
    let set: HashSet<usize> = ptrs.iter().copied().collect();
    let class = SizeClass::for_size(24).unwrap().index();
    std::thread::spawn(move || {
        let warm = a(24, 8);
        let before = crate::stats();
        for &p in &ptrs {
            d(p as *mut u8, 24, 8);
        }
        // A thread that allocates the class reuses what it freed, without touching the owner.
        let again: Vec<usize> = (0..N).map(|_| a(24, 8) as usize).collect();
        assert!(
            again.iter().filter(|p| set.contains(p)).count() >= N / 2,
            "freed slots of another thread's span not reused from the bin"
        );
        // stats() flushes the bins: this thread's counts are exact.
        let mid = crate::stats();
        assert!(mid.by_size[class].frees >= before.by_size[class].frees + N as u64);
        assert!(mid.by_size[class].mallocs >= before.by_size[class].mallocs + N as u64);
        for p in again {
            d(p as *mut u8, 24, 8);
        }
        d(warm, 24, 8);
    })
    .join()
    .unwrap();
}

#[test]
fn bins_are_emptied_at_thread_exit() {
    const N: usize = 500;
    let ptrs: Vec<usize> = (0..N).map(|_| a(72, 8) as usize).collect();
    let set: HashSet<usize> = ptrs.iter().copied().collect();
    std::thread::spawn(move || {
        // With a bin, these frees stay in this thread until it exits.
        let warm = a(72, 8);
        for p in ptrs {
            d(p as *mut u8, 72, 8);
        }
        d(warm, 72, 8);
    })
    .join()
    .unwrap();
    // The exit hook gave the slots back to their owner (this thread's spans).
    let again: Vec<usize> = (0..N).map(|_| a(72, 8) as usize).collect();
    assert!(
        again.iter().any(|p| set.contains(p)),
        "slots held in an exited thread's bin never came back"
    );
    for p in again {
        d(p as *mut u8, 72, 8);
    }
}

#[test]
fn flush_thread_cache_gives_binned_slots_back_while_the_thread_lives() {
    const N: usize = 500;
    let ptrs: Vec<usize> = (0..N).map(|_| a(88, 8) as usize).collect();
    let set: HashSet<usize> = ptrs.iter().copied().collect();
    let (flushed_tx, flushed_rx) = std::sync::mpsc::channel::<()>();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let warm = a(88, 8);
        for p in ptrs {
            d(p as *mut u8, 88, 8);
        }
        d(warm, 88, 8);
        // The frees sit in this thread's bin; the flush gives them back without an exit.
        crate::flush_thread_cache();
        flushed_tx.send(()).unwrap();
        exit_rx.recv().unwrap();
    });
    flushed_rx.recv().unwrap();
    let again: Vec<usize> = (0..N).map(|_| a(88, 8) as usize).collect();
    let reused = again.iter().filter(|p| set.contains(p)).count();
    exit_tx.send(()).unwrap();
    thread.join().unwrap();
    assert!(
        reused > 0,
        "slots in a live thread's bin did not come back after flush_thread_cache"
    );
    for p in again {
        d(p as *mut u8, 88, 8);
    }
}

#[test]
fn sleep_ms_sleeps_its_whole_time_through_signals() {
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: installs a handler that does nothing, without SA_RESTART (as goro's stop signal
    // is installed), for a signal nothing else in this test binary uses.
    unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGURG, &action, core::ptr::null_mut());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let sleeper = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        let began = std::time::Instant::now();
        os::sleep_ms(300);
        began.elapsed()
    });
    let thread = rx.recv().unwrap();
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        // SAFETY: the sleeper has not been joined, so its handle is valid.
        unsafe { libc::pthread_kill(thread, libc::SIGURG) };
    }
    let slept = sleeper.join().unwrap();
    assert!(
        slept >= std::time::Duration::from_millis(300),
        "slept only {slept:?}"
    );
}

/// Serialises the tests that stop this process's world: each acts as its only collector.
static STOPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A stop begins only once every thread the last one held in its signal handler has left it
/// (`parked::hold_in_stop`, `wait_held`). Here the last stop's restart bumps the generation but
/// its wake-up comes late (the restarting thread preempted, or interrupted by a signal, in
/// between): the held thread sleeps on, deaf to a new stop's signal, and a new stop that did
/// not wait would give up on it as a thread that blocks the signal, its roots unscanned.
#[test]
fn a_stop_waits_for_the_threads_the_last_one_held() {
    use core::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let _stops = STOPS.lock().unwrap_or_else(|p| p.into_inner());
    parked::begin_stop();
    let generation = parked::world_generation();
    // A thread held by this stop, counted in before it waits, as a signal handler does.
    parked::hold_in_stop();
    let (tell, told) = std::sync::mpsc::channel();
    let held = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tell.send(unsafe { libc::gettid() }).unwrap();
        parked::wait_held(generation);
    });
    let tid = told.recv().unwrap();
    // Until it sleeps in its wait (state S: the futex is its only sleep).
    let began = Instant::now();
    while !std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .unwrap()
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('S'))
    {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the held thread never slept"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    parked::restart_without_waking();
    let stopped = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stopped = stopped.clone();
        std::thread::spawn(move || {
            parked::begin_stop();
            stopped.store(true, Ordering::Release);
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !stopped.load(Ordering::Acquire),
        "a stop began while a thread the last one held was still in its handler"
    );
    // The late wake-up: the held thread leaves, and the new stop begins.
    parked::wake_late();
    held.join().unwrap();
    stopper.join().unwrap();
    assert!(stopped.load(Ordering::Acquire));
    parked::restart_world();
}

#[test]
fn a_parked_thread_is_claimed_without_a_signal_and_held_until_released() {
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let _stops = STOPS.lock().unwrap_or_else(|p| p.into_inner());
    let wake = Arc::new(AtomicU32::new(0));
    let frame = Arc::new(AtomicUsize::new(0));
    let returned = Arc::new(AtomicBool::new(false));
    let sleeper = {
        let (wake, frame, returned) = (wake.clone(), frame.clone(), returned.clone());
        std::thread::spawn(move || {
            let local = 0u64;
            frame.store(
                core::hint::black_box(&local) as *const u64 as usize,
                Ordering::Release,
            );
            // SAFETY: the closure only waits on a futex.
            unsafe {
                parked::while_parked(|| {
                    while wake.load(Ordering::Acquire) == 0 {
                        futex_wait(&wake, 0, None);
                    }
                })
            };
            returned.store(true, Ordering::Release);
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() }
        })
    };
    while frame.load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    let local = frame.load(Ordering::Acquire);
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    // Claim until the sleeper is among the claimed (it may not have published yet; other
    // parked threads of this process are claimed and released along with it).
    let began = Instant::now();
    let claimed = loop {
        let mut found = None;
        parked::begin_stop();
        // SAFETY: this test is the only collector of its process; every claim is released
        // below or on the next round.
        unsafe {
            parked::claim_parked(me, |thread| {
                if thread.sp < local && local - thread.sp < 64 << 10 {
                    found = Some(thread);
                }
            });
        }
        if let Some(thread) = found {
            break thread;
        }
        // SAFETY: as above.
        unsafe { parked::release_claimed() };
        parked::restart_world();
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the sleeper never parked"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(claimed.tp != 0);
    // Woken while claimed: it must not go on until released.
    wake.store(1, Ordering::Release);
    futex_wake(&wake, 1);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !returned.load(Ordering::Acquire),
        "a claimed thread went on before it was released"
    );
    // SAFETY: as above.
    unsafe { parked::release_claimed() };
    // The stop's one wake-up lets it go.
    parked::restart_world();
    let tid = sleeper.join().unwrap();
    assert!(returned.load(Ordering::Acquire));
    assert_eq!(tid, claimed.tid);
}

/// A Gc span that a walker holds is not given back to the page heap, even when every slot is
/// freed and the memory released meanwhile; once the walker lets go, it is (`Span::visit`).
/// Without the handshake the release inside the walk frees the span and the check fails.
#[test]
fn a_gc_span_being_walked_stays_a_span_until_the_walker_lets_go() {
    // A class no other test of this crate allocates Gc slots of, on a thread of its own: the
    // span fills, the cache moves on, and the full span is the thread's to free into.
    std::thread::spawn(|| {
        let size = 2304;
        let first = alloc_gc(size, 8);
        let block = find_block(first as usize).unwrap();
        let per_span = block.span.nelems.load(Ordering::Relaxed);
        let mut slots = vec![first];
        slots.extend((1..per_span).map(|_| alloc_gc(size, 8)));
        // One more: the first span is full, and no longer the cache's current one.
        let next = alloc_gc(size, 8);
        let base = block.span.obj_base.load(Ordering::Relaxed);
        let mut walked = false;
        for_each_gc_span(|span| {
            if span.base() as usize != base {
                return;
            }
            walked = true;
            for &slot in &slots {
                // SAFETY: a slot of ours, never built (header 0), freed once.
                unsafe { free_gc(slot) };
            }
            release_memory();
            let still = find_block(base).expect("the walked span was given back");
            assert_eq!(still.kind, SpanKind::Gc);
            assert_eq!(still.size, span.elem_size());
        });
        assert!(walked, "the walk never reached the span");
        release_memory();
        assert!(
            find_block(base).is_none_or(|b| b.size != size),
            "the span stayed in use once the walker let go"
        );
        // SAFETY: as above.
        unsafe { free_gc(next) };
    })
    .join()
    .unwrap();
}

/// A first mark whose caller read the epoch before a new one began renews the span's bits for
/// the epoch current inside its window, not the one it read: renewed for the old epoch, the
/// span would sit on the new epoch's list of marked malloc spans under the old one and go onto
/// it a second time at its next mark, tying the list into a loop.
#[test]
fn a_first_mark_with_a_stale_epoch_renews_for_the_current_one() {
    let p = a(4000, 8);
    let span = find_block(p as usize).unwrap().span;
    span.clear_marks();
    let stale = span::MARK_EPOCH.load(Ordering::Relaxed);
    span::new_mark_epoch();
    span.renew_marks(stale);
    assert!(
        span.marks_epoch.load(Ordering::Relaxed) > stale,
        "the bits were renewed for the epoch read before the new one began"
    );
    d(p, 4000, 8);
}
