//! Concurrency tests in the style of mimalloc's test-stress, plus thread churn, fork, and the
//! arena index under concurrent allocation.

use goro_alloc::size_class::SizeClass;
use goro_alloc::{GoroAlloc, find_block, stats};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[global_allocator]
static ALLOC: GoroAlloc = GoroAlloc;

const COOKIE: usize = 0x5bd1_e995_a5a5_0f0f;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A cookie-filled block: every word holds `COOKIE ^ address ^ index`.
struct Obj {
    p: *mut usize,
    words: usize,
}
// SAFETY: plain heap memory, owned by whoever holds the handle.
unsafe impl Send for Obj {}

impl Obj {
    fn new(rng: &mut Rng) -> Obj {
        let r = rng.next() % 1000;
        let words = 1 + if r == 0 {
            rng.next() as usize % 20_000
        } else if r < 20 {
            rng.next() as usize % 1000
        } else {
            rng.next() as usize % 40
        };
        // SAFETY: non-zero size.
        let p = unsafe { GoroAlloc.alloc(Layout::array::<usize>(words).unwrap()) } as *mut usize;
        assert!(!p.is_null());
        for i in 0..words {
            // SAFETY: a fresh block of `words` words.
            unsafe { p.add(i).write(COOKIE ^ p as usize ^ i) };
        }
        Obj { p, words }
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        for i in 0..self.words {
            // SAFETY: a live block of `words` words.
            let v = unsafe { self.p.add(i).read() };
            assert_eq!(
                v,
                COOKIE ^ self.p as usize ^ i,
                "cookie of {:?} word {i}",
                self.p
            );
        }
        // SAFETY: allocated with this layout, freed once.
        unsafe { GoroAlloc.dealloc(self.p.cast(), Layout::array::<usize>(self.words).unwrap()) };
    }
}

/// The tests of this file run one at a time: the leak test compares heap-wide counters, which
/// the other tests' threads would move.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[test]
fn stress_8_threads_transfers_and_churn() {
    let _serial = serial();
    const THREADS: usize = 8;
    let rounds = if cfg!(miri) { 1 } else { 6 };
    let transfer: Vec<std::sync::Mutex<Option<Obj>>> =
        (0..256).map(|_| std::sync::Mutex::new(None)).collect();
    for round in 0..rounds {
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let transfer = &transfer;
                s.spawn(move || {
                    let mut rng = Rng((round * 100 + t + 1) as u64 * 0x9E37_79B9);
                    let mut mine: Vec<Option<Obj>> = Vec::new();
                    for _ in 0..20_000 {
                        match rng.next() % 8 {
                            0..=3 => mine.push(Some(Obj::new(&mut rng))),
                            4 | 5 if !mine.is_empty() => {
                                let i = rng.next() as usize % mine.len();
                                mine[i] = None;
                            }
                            6 if !mine.is_empty() => {
                                let i = rng.next() as usize % mine.len();
                                let j = rng.next() as usize % transfer.len();
                                let mut slot = transfer[j].lock().unwrap();
                                std::mem::swap(&mut *slot, &mut mine[i]);
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
    }
}

#[test]
fn thread_churn_does_not_leak() {
    let _serial = serial();
    let churn = |n: usize| {
        for _ in 0..n {
            std::thread::spawn(|| {
                let v: Vec<Box<[u8; 48]>> = (0..2000).map(|_| Box::new([7u8; 48])).collect();
                // Keep one allocation of every small class alive briefly.
                let w: Vec<Vec<u8>> = (1..200).map(|i| vec![1u8; i * 8]).collect();
                drop((v, w));
            })
            .join()
            .unwrap();
        }
    };
    churn(50);
    goro_alloc::release_memory();
    let before = stats().heap_inuse;
    churn(300);
    goro_alloc::release_memory();
    let after = stats().heap_inuse;
    assert!(
        after <= before + (4 << 20),
        "heap in use grew from {before} to {after} over 300 short-lived threads"
    );
}

#[test]
fn fork_in_a_multithreaded_program_does_not_deadlock() {
    let _serial = serial();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..3 {
            let stop = &stop;
            s.spawn(move || {
                let mut rng = Rng(t + 11);
                let mut v = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    v.push(Obj::new(&mut rng));
                    if v.len() > 500 {
                        v.clear();
                    }
                }
            });
        }
        for _ in 0..20 {
            // SAFETY: the child only allocates, frees, and calls _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let v: Vec<Box<[u64; 9]>> = (0..10_000).map(|i| Box::new([i; 9])).collect();
                let big = vec![3u8; 1 << 20];
                let ok = v.iter().enumerate().all(|(i, b)| b[8] == i as u64) && big[77] == 3;
                drop((v, big));
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            let mut waited = 0;
            loop {
                // SAFETY: waits for our own child without blocking.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    break;
                }
                waited += 1;
                if waited > 1000 {
                    // SAFETY: our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    stop.store(true, Ordering::Relaxed);
                    panic!("forked child deadlocked in the allocator");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn arena_index_answers_interior_pointers_while_others_allocate() {
    let _serial = serial();
    let stop = AtomicBool::new(false);
    let checked = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..2 {
            let stop = &stop;
            s.spawn(move || {
                let mut rng = Rng(t + 3);
                let mut v: Vec<Obj> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    v.push(Obj::new(&mut rng));
                    if rng.next().is_multiple_of(3) && !v.is_empty() {
                        let i = rng.next() as usize % v.len();
                        v.swap_remove(i);
                    }
                    if v.len() > 3000 {
                        v.truncate(100);
                    }
                }
            });
        }
        let mut blocks = Vec::new();
        for ci in 1..goro_alloc::size_class::NUM_SIZE_CLASSES {
            let size = SizeClass::from_index(ci).unwrap().size();
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { GoroAlloc.alloc(layout) };
            blocks.push((p, layout));
        }
        for _ in 0..20 {
            for &(p, layout) in &blocks {
                let size = layout.size();
                for off in [0, 1, size / 2, size - 1] {
                    let b = find_block(p as usize + off).expect("interior pointer of a live block");
                    assert_eq!(b.start, p, "size {size} offset {off}");
                    assert_eq!(b.size, size);
                    checked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for (p, layout) in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { GoroAlloc.dealloc(p, layout) };
        }
    });
    assert!(checked.load(Ordering::Relaxed) > 0);
}

#[test]
fn overflowing_sizes_give_null() {
    let _serial = serial();
    for size in [
        isize::MAX as usize - 4096,
        1usize << 60,
        (isize::MAX as usize) & !7,
    ] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size; a null result is the expected answer.
        let p = unsafe { GoroAlloc.alloc(layout) };
        assert!(p.is_null(), "allocation of {size} bytes succeeded");
    }
    let layout = Layout::from_size_align(1usize << 50, 1 << 20).unwrap();
    // SAFETY: as above.
    assert!(unsafe { GoroAlloc.alloc(layout) }.is_null());
}

#[test]
fn stats_count_per_class_and_release() {
    let _serial = serial();
    let before = stats();
    let v: Vec<Box<[u8; 100]>> = (0..1000).map(|_| Box::new([0u8; 100])).collect();
    let mid = stats();
    let class = SizeClass::for_size(100).unwrap().index();
    assert!(mid.by_size[class].mallocs >= before.by_size[class].mallocs + 1000);
    drop(v);
    let after = stats();
    assert!(after.by_size[class].frees >= before.by_size[class].frees + 1000);
    assert!(after.mallocs >= after.by_size[class].mallocs);
    let big = vec![1u8; 64 << 20];
    drop(big);
    let released = goro_alloc::release_memory();
    let s = stats();
    assert!(s.heap_released >= 64 << 20 || released > 0, "{s:?}");
    assert!(
        s.heap_released <= s.heap_idle,
        "released {} > idle {}",
        s.heap_released,
        s.heap_idle
    );
}

/// `release_empty_spans` walks a central list a batch at a time, with the list's lock free
/// between batches: threads that take spans from the lists, release them onto them and free
/// into them meanwhile, and other walks, must neither lose a span (the heap's in-use bytes come
/// back down once everything is freed) nor get one twice (every block keeps its cookie).
#[test]
fn central_lists_walked_while_threads_take_release_and_free() {
    let _serial = serial();
    goro_alloc::release_memory();
    let before = stats().heap_inuse;
    let stop = AtomicBool::new(false);
    let walks = AtomicUsize::new(0);
    let transfer: Vec<std::sync::Mutex<Option<Obj>>> =
        (0..512).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        // Two walks at once, as the sweep and the scavenger may make them, and a third through
        // `release_memory`.
        for walker in 0..3 {
            let (stop, walks) = (&stop, &walks);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if walker == 2 {
                        goro_alloc::release_memory();
                    } else {
                        goro_alloc::release_empty_spans();
                    }
                    walks.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let transfer = &transfer;
                s.spawn(move || {
                    let mut rng = Rng(((t + 7) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
                    let mut mine: Vec<Obj> = Vec::new();
                    for _ in 0..200_000 {
                        match rng.next() % 4 {
                            0 | 1 => mine.push(Obj::new(&mut rng)),
                            2 if !mine.is_empty() => {
                                let i = rng.next() as usize % mine.len();
                                drop(mine.swap_remove(i));
                            }
                            _ if !mine.is_empty() => {
                                // Another thread frees it: a remote free into a span this
                                // thread may have given back to a central list.
                                let i = rng.next() as usize % mine.len();
                                let j = rng.next() as usize % transfer.len();
                                let given = mine.swap_remove(i);
                                let old = transfer[j].lock().unwrap().replace(given);
                                drop(old);
                            }
                            _ => {}
                        }
                        if mine.len() > 2_000 {
                            mine.truncate(500);
                        }
                    }
                })
            })
            .collect();
        let joined: Vec<_> = workers.into_iter().map(|worker| worker.join()).collect();
        // Before a worker's panic goes on: the walker stops only when told.
        stop.store(true, Ordering::Relaxed);
        for result in joined {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    });
    for slot in &transfer {
        drop(slot.lock().unwrap().take());
    }
    goro_alloc::release_memory();
    let after = stats().heap_inuse;
    assert!(
        walks.load(Ordering::Relaxed) > 0,
        "no walk ran beside the threads"
    );
    assert!(
        after <= before + (4 << 20),
        "heap in use grew from {before} to {after}: spans lost from the central lists"
    );
}
