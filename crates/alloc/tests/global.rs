//! goro-alloc installed as the process's global allocator, under std collections and threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use goro_alloc::{GoroAlloc, SpanKind, find_block, stats};

#[global_allocator]
static A: GoroAlloc = GoroAlloc;

#[test]
fn std_collections_use_the_goro_heap() {
    let v: Vec<u64> = (0..1000).collect();
    let b = find_block(v.as_ptr() as usize).expect("Vec buffer is in the goro heap");
    assert_eq!(b.kind, SpanKind::Malloc);
    let s = String::from("hello goro");
    assert!(find_block(s.as_ptr() as usize + 3).is_some());
    let bx = Box::new([7u8; 100_000]);
    let bb = find_block(bx.as_ptr() as usize + 99_999).unwrap();
    assert_eq!(bb.start as usize, bx.as_ptr() as usize);
    assert!(stats().mallocs > 0 || stats().heap_inuse > 0);
}

#[test]
fn threads_with_vec_string_hashmap_box() {
    let shared: Arc<Mutex<Vec<Box<[u8]>>>> = Arc::new(Mutex::new(Vec::new()));
    let hs: Vec<_> = (0..8)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut m: HashMap<String, Vec<u32>> = HashMap::new();
                for i in 0..5_000u32 {
                    let k = format!("key-{t}-{i}");
                    m.entry(k).or_default().extend(0..(i % 50));
                    if i % 7 == 0 {
                        // Handed to another thread to free.
                        shared
                            .lock()
                            .unwrap()
                            .push(vec![t as u8; (i as usize * 13) % 40_000 + 1].into());
                    }
                    if i % 11 == 0 {
                        let mut g = shared.lock().unwrap();
                        if let Some(b) = g.pop() {
                            assert!(b.iter().all(|&x| x == b[0]));
                        }
                    }
                }
                for (k, v) in &m {
                    let i: u32 = k.rsplit('-').next().unwrap().parse().unwrap();
                    assert_eq!(v.len() as u32, i % 50);
                }
                m.len()
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.join().unwrap(), 5_000);
    }
    shared.lock().unwrap().clear();
}

#[test]
fn thread_locals_freed_after_cache_is_gone() {
    thread_local! {
        static LATE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    for _ in 0..50 {
        std::thread::spawn(|| {
            // Registered after, or before, the allocator's own cache: either way its drop
            // (which frees) may run once the cache is destroyed.
            LATE.with(|l| l.borrow_mut().extend((0..100).map(|i| i.to_string())));
            let v: Vec<u8> = vec![1; 1000];
            drop(v);
        })
        .join()
        .unwrap();
    }
}

#[test]
fn realloc_growth_and_shrink() {
    let mut v: Vec<u8> = Vec::new();
    for i in 0..3_000_000u32 {
        v.push(i as u8);
    }
    assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v, (0..10u8).collect::<Vec<_>>());
    let mut s = String::new();
    for i in 0..10_000 {
        s.push_str(&i.to_string());
    }
    assert!(s.starts_with("0123456789101112"));
}

#[test]
fn aligned_boxes() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    #[repr(align(65536))]
    struct Big([u8; 100]);
    let p = Box::new(Page([1; 4096]));
    assert_eq!(&*p as *const Page as usize % 4096, 0);
    assert_eq!(p.0[4095], 1);
    let b = Box::new(Big([2; 100]));
    assert_eq!(&*b as *const Big as usize % 65536, 0);
    assert_eq!(b.0[99], 2);
    assert!(find_block(&*b as *const Big as usize).is_some());
}
