//! Weak pointers (`goro::gc::Weak`, Go's `weak.Pointer`) and cleanups (`goro::gc::add_cleanup`,
//! Go's `runtime.AddCleanup`): a weak pointer upgrades while its object lives and is cleared in
//! the cycle that finds it dead, never earlier; a cleanup runs exactly once, after that cycle,
//! on a goroutine, and sees only its argument, intact. Every runtime here has `clobberfree` on,
//! so a freed object reads as poison.

mod common;

use common::Rng;
use goro::gc::{Weak, add_cleanup};
use goro::{Gc, GcCell, Trace};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

#[derive(Trace)]
struct Item {
    value: u64,
    /// Derived from `value`: a poisoned or reused object fails the check.
    check: u64,
}

fn item(value: u64) -> Gc<Item> {
    Gc::new(Item {
        value,
        check: value ^ 0x0123_4567_89ab_cdef,
    })
}

fn assert_intact(item: &Item) {
    assert_eq!(
        item.check,
        item.value ^ 0x0123_4567_89ab_cdef,
        "an object reached through a weak pointer or a cleanup was freed"
    );
}

/// Waits (on the goroutine's timer) until `done` holds, for at most a minute (the machine may be
/// busy; the checks do not depend on how long it takes).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "timed out waiting until {what}"
        );
        goro::sleep(Duration::from_millis(1));
    }
}

const ITEMS: usize = 2_000;

/// Builds the items in a frame of its own, so that the caller's stack keeps none of their
/// addresses once it returns.
#[inline(never)]
fn build(runs: &Arc<Vec<AtomicU32>>, weaks: &mut Vec<Weak<Item>>) -> Gc<GcCell<Vec<Gc<Item>>>> {
    let items: Vec<Gc<Item>> = (0..ITEMS as u64).map(item).collect();
    for (i, object) in items.iter().enumerate() {
        weaks.push(Weak::new(object));
        let runs = runs.clone();
        add_cleanup(object, i, move |i| {
            runs[i].fetch_add(1, Ordering::SeqCst);
        });
    }
    Gc::new(GcCell::new(items))
}

/// Overwrites the odd items' entries in place with item 0. (A fresh buffer would leave the old
/// one, with every odd item's address, in the malloc heap's free lists, which are scanned
/// conservatively like any block: see docs/gc.md on stale words.)
#[inline(never)]
fn drop_odd_items(holder: &Gc<GcCell<Vec<Gc<Item>>>>) {
    let mut items = holder.borrow_mut();
    let first = items[0];
    for at in (1..items.len()).step_by(2) {
        items[at] = first;
    }
}

fn weak_pointers_follow_their_objects(procs: usize) {
    common::run_clobbering(procs, || {
        let runs: Arc<Vec<AtomicU32>> = Arc::new((0..ITEMS).map(|_| AtomicU32::new(0)).collect());
        let mut weaks = Vec::with_capacity(ITEMS);
        let holder = build(&runs, &mut weaks);
        goro::gc::collect();
        for (i, weak) in weaks.iter().enumerate() {
            let object = weak
                .upgrade()
                .expect("a weak pointer to a live object was cleared");
            assert_eq!(object.value, i as u64);
            assert_intact(&object);
        }
        drop_odd_items(&holder);
        goro::gc::collect();
        goro::gc::collect();
        let mut cleared = 0;
        for (i, weak) in weaks.iter().enumerate() {
            match weak.upgrade() {
                Some(object) => {
                    assert_eq!(object.value, i as u64);
                    assert_intact(&object);
                }
                None => {
                    assert!(i % 2 == 1, "the weak pointer to live item {i} was cleared");
                    cleared += 1;
                }
            }
        }
        // Conservative scans may keep a few odd items (a stale word); most must be gone.
        assert!(
            cleared >= ITEMS / 2 * 9 / 10,
            "only {cleared} of {} dead items had their weak pointers cleared",
            ITEMS / 2
        );
        // A cleanup runs exactly for the objects whose weak pointers were cleared.
        wait_until("every dead item's cleanup ran", || {
            (0..ITEMS).all(|i| {
                let ran = runs[i].load(Ordering::SeqCst);
                ran == u32::from(weaks[i].upgrade().is_none())
            })
        });
        // Nothing runs twice, and the living keep their cleanups.
        goro::gc::collect();
        goro::sleep(Duration::from_millis(20));
        for (i, ran) in runs.iter().enumerate() {
            let ran = ran.load(Ordering::SeqCst);
            assert!(ran <= 1, "item {i}'s cleanup ran {ran} times");
            if i % 2 == 0 {
                assert_eq!(ran, 0, "live item {i}'s cleanup ran");
            }
        }
        goro::gc::keep_alive(&holder);
    });
}

#[test]
fn weak_pointers_upgrade_while_their_objects_live_and_clear_when_they_die_at_1_p() {
    weak_pointers_follow_their_objects(1);
}

#[test]
fn weak_pointers_upgrade_while_their_objects_live_and_clear_when_they_die_at_2_ps() {
    weak_pointers_follow_their_objects(2);
}

/// Slots shared by the racing mutators: each holds a strong reference for a while.
#[derive(Trace)]
struct Slots {
    slots: [GcCell<Option<Gc<Item>>>; 32],
}

/// Makes objects, forgets the strong references at random and upgrades weak ones at random,
/// storing what it upgraded back (a resurrection), while allocation keeps cycles coming.
fn churn(slots: Gc<Slots>, seed: u64, stop: &AtomicBool, upgraded: &AtomicUsize) {
    let mut rng = Rng(seed | 1);
    let mut weaks: Vec<Weak<Item>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let value = rng.next() >> 1;
        let object = item(value);
        if weaks.len() < 256 {
            weaks.push(Weak::new(&object));
        } else {
            let at = rng.below(weaks.len());
            weaks[at] = Weak::new(&object);
        }
        // The other mutators may hold a slot: then this object is garbage at once.
        if let Ok(mut slot) = slots.slots[rng.below(32)].try_borrow_mut() {
            *slot = Some(object);
        }
        let weak = &weaks[rng.below(weaks.len())];
        if let Some(back) = weak.upgrade() {
            assert_intact(&back);
            upgraded.fetch_add(1, Ordering::Relaxed);
            if rng.below(4) == 0
                && let Ok(mut slot) = slots.slots[rng.below(32)].try_borrow_mut()
            {
                *slot = Some(back);
            }
        }
        // Garbage, so that cycles start on their own.
        for _ in 0..4 {
            goro::gc::keep_alive(&item(value));
        }
    }
}

fn upgrades_race_with_collections(procs: usize) {
    common::run_clobbering(procs, || {
        goro::gc::set_checkmark(true);
        let slots = Gc::new(Slots {
            slots: std::array::from_fn(|_| GcCell::new(None)),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let upgraded = Arc::new(AtomicUsize::new(0));
        let before = goro::gc::stats().cycles;
        let goroutines: Vec<_> = (0..2)
            .map(|seed| {
                let (stop, upgraded) = (stop.clone(), upgraded.clone());
                goro::go(move || churn(slots, seed + 1, &stop, &upgraded))
            })
            .collect();
        let thread = {
            let (stop, upgraded) = (stop.clone(), upgraded.clone());
            std::thread::spawn(move || churn(slots, 99, &stop, &upgraded))
        };
        // Forced cycles on top of those the garbage starts, so that a busy machine still gets
        // its cycles.
        wait_until("20 cycles ran", || {
            goro::gc::collect();
            goro::gc::stats().cycles >= before + 20
        });
        stop.store(true, Ordering::Relaxed);
        for goroutine in goroutines {
            goroutine.join().unwrap();
        }
        goro::blocking(|| thread.join().unwrap());
        goro::gc::set_checkmark(false);
        assert!(upgraded.load(Ordering::Relaxed) > 0, "no upgrade succeeded");
    });
}

#[test]
fn upgrades_racing_with_collections_see_only_live_objects_at_1_p() {
    upgrades_race_with_collections(1);
}

#[test]
fn upgrades_racing_with_collections_see_only_live_objects_at_2_ps() {
    upgrades_race_with_collections(2);
}

#[inline(never)]
fn object_with_cleanup(argument: Gc<Item>, seen: &Arc<AtomicUsize>) -> Weak<Item> {
    let object = item(1);
    let seen = seen.clone();
    add_cleanup(&object, argument, move |argument| {
        assert_intact(&argument);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        assert!(
            !name.starts_with("goro-gc") && name != "goro-sweeper",
            "a cleanup ran on the collector's thread {name}"
        );
        seen.fetch_add(1, Ordering::SeqCst);
    });
    Weak::new(&object)
}

#[test]
fn a_cleanup_gets_its_argument_intact_off_the_collectors_threads() {
    common::run_clobbering(2, || {
        let seen = Arc::new(AtomicUsize::new(0));
        // The argument is reachable only through the cleanup until it runs.
        let weaks: Vec<_> = (0..100)
            .map(|i| object_with_cleanup(item(1_000 + i), &seen))
            .collect();
        goro::gc::collect();
        goro::gc::collect();
        wait_until("the cleanups ran", || {
            let dead = weaks.iter().filter(|weak| weak.is_dead()).count();
            dead >= 90 && seen.load(Ordering::SeqCst) == dead
        });
    });
}

#[test]
fn a_stopped_cleanup_never_runs() {
    common::run_clobbering(1, || {
        let ran = Arc::new(AtomicUsize::new(0));
        let weaks = object_cleanups(&ran, true);
        goro::gc::collect();
        goro::gc::collect();
        goro::sleep(Duration::from_millis(50));
        assert!(weaks.iter().filter(|weak| weak.is_dead()).count() >= 90);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a stopped cleanup ran");
    });
}

#[test]
fn a_cleanup_whose_argument_is_its_own_object_panics_with_the_reason() {
    let message = common::run_clobbering(1, || {
        let object = item(7);
        let outcome = std::panic::catch_unwind(|| add_cleanup(&object, object, |_| {}));
        let panic = outcome.expect_err("add_cleanup accepted its own object as argument");
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    });
    assert!(
        message.contains("the argument is the object itself"),
        "unexpected message: {message}"
    );
}

#[test]
fn weak_pointers_to_one_object_are_equal_before_and_after_it_dies() {
    common::run_clobbering(1, || {
        let (a, b, other) = {
            let object = item(3);
            let other = item(4);
            (Weak::new(&object), Weak::new(&object), Weak::new(&other))
        };
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert!(format!("{a:?}").starts_with("Weak(0x"));
        for _ in 0..3 {
            goro::gc::collect();
        }
        assert_eq!(a, b);
        if a.is_dead() {
            assert_eq!(format!("{a:?}"), "Weak(dead)");
            assert!(b.upgrade().is_none());
        }
    });
}

/// A cache of weak pointers inside a collected object.
#[derive(Trace)]
struct Cache {
    entries: GcCell<Vec<Weak<Item>>>,
}

#[inline(never)]
fn fill(cache: &Gc<Cache>) {
    let mut entries = cache.entries.borrow_mut();
    for i in 0..1_000 {
        entries.push(Weak::new(&item(i)));
    }
}

#[test]
fn weak_pointers_kept_in_a_collected_object_keep_nothing_alive() {
    common::run_clobbering(1, || {
        let cache = Gc::new(Cache {
            entries: GcCell::new(Vec::new()),
        });
        fill(&cache);
        goro::gc::collect();
        goro::gc::collect();
        let dead = cache
            .entries
            .borrow()
            .iter()
            .filter(|weak| weak.is_dead())
            .count();
        assert!(
            dead >= 900,
            "a cache of weak pointers kept {} of 1000 alive",
            1_000 - dead
        );
    });
}

#[test]
fn the_end_of_a_runtime_clears_the_weak_pointers_of_what_it_frees_and_runs_no_cleanup() {
    let ran = Arc::new(AtomicUsize::new(0));
    let (kept, weak_kept, weaks) = {
        let ran = ran.clone();
        common::run_clobbering(1, move || {
            let kept = item(42);
            let weaks = object_cleanups(&ran, false);
            let weak_kept = Weak::new(&kept);
            (kept, weak_kept, weaks)
        })
    };
    // The retirement goes on beside this thread after `run` returns.
    goro::gc::wait_for_retirement();
    let upgraded = weak_kept
        .upgrade()
        .expect("an object the runtime returned was cleared");
    assert!(Gc::ptr_eq(&upgraded, &kept));
    assert_intact(&kept);
    let dead = weaks.iter().filter(|weak| weak.is_dead()).count();
    assert!(
        dead >= 90,
        "the end of the runtime cleared only {dead} of 100 dead objects"
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a cleanup ran as the runtime ended"
    );
}

/// 100 objects, each with a cleanup that counts in `ran` (stopped at once with `stop`); returns
/// their weak pointers.
#[inline(never)]
fn object_cleanups(ran: &Arc<AtomicUsize>, stop: bool) -> Vec<Weak<Item>> {
    (0..100)
        .map(|i| {
            let object = item(i);
            let ran = ran.clone();
            let cleanup = add_cleanup(&object, (), move |()| {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            if stop {
                cleanup.stop();
            }
            Weak::new(&object)
        })
        .collect()
}
