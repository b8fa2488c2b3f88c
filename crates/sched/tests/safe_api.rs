//! The safe public API used in orders and with arguments its authors did not plan for keeps
//! every invariant: each test here is a misuse that once broke one. (What must not compile is
//! in `tests/ui/`, checked by `compile_fail` below.)

mod common;

use common::*;

use goro_sched::chan::{__select, channel};
use goro_sched::go;
use goro_sched::sync::Mutex;
use std::sync::Arc;

#[test]
fn a_failed_try_lock_leaves_the_mutex_locked() {
    let mutex = Mutex::new(1);
    let guard = mutex.lock();
    assert!(mutex.try_lock().is_none());
    // A failed try_lock once dropped a guard it never held, unlocking the holder's lock.
    assert!(
        mutex.try_lock().is_none(),
        "a failed try_lock unlocked the mutex under its holder"
    );
    drop(guard);
    assert_eq!(*mutex.try_lock().unwrap(), 1);
}

#[test]
fn printing_a_locked_mutex_leaves_it_locked() {
    let mutex = Mutex::new(1);
    let guard = mutex.lock();
    assert_eq!(format!("{mutex:?}"), "Mutex { <locked> }");
    assert!(mutex.try_lock().is_none(), "Debug unlocked the mutex");
    drop(guard);
    assert_eq!(format!("{mutex:?}"), "Mutex { data: 1 }");
}

#[test]
fn a_mutex_excludes_try_lockers_while_held_across_goroutines() {
    let (broken, total) = on(2, || {
        let counter = Arc::new(Mutex::new(0u64));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                go(move || {
                    let mut broken = 0;
                    for _ in 0..2_000 {
                        let mut guard = counter.lock();
                        // Someone else's failed try_lock must not let a second holder in.
                        let _ = counter.try_lock();
                        if counter.try_lock().is_some() {
                            broken += 1;
                        }
                        *guard += 1;
                    }
                    broken
                })
            })
            .collect();
        let broken: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let total = *counter.lock();
        (broken, total)
    });
    assert_eq!(broken, 0, "try_lock got a held mutex");
    assert_eq!(total, 8_000);
}

#[test]
fn a_select_case_reused_after_it_lost_panics_without_breaking_the_channel() {
    on(1, || {
        let (tx, rx) = channel::<u32>(0);
        let (other_tx, other_rx) = channel::<u32>(1);
        other_tx.send(5);
        let mut send = __select::SendCase::new(&tx, 1);
        let mut recv = __select::RecvCase::new(&other_rx);
        let won = __select::select(&mut [send.as_case(), recv.as_case()], false);
        assert_eq!(won, Some(1));
        assert_eq!(recv.take(), Some(5));
        // The send case still holds its value: it never ran.
        let won = __select::select(&mut [send.as_case()], true);
        assert_eq!(won, None, "no receiver: the default");
        // Taking a result from a case that did not run panics, and leaves the channel usable.
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| send.take()));
        assert!(taken.is_err());
        let receiver = go(move || rx.recv());
        let won = __select::select(&mut [send.as_case()], false);
        assert_eq!(won, Some(0));
        send.take();
        assert_eq!(receiver.join().unwrap(), Some(1));
        // Its value is gone now: a select with it again panics before it queues anything.
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            __select::select(&mut [send.as_case()], true)
        }));
        assert!(again.is_err());
        assert!(tx.try_send(2).is_err(), "the channel works after the panic");
    });
}
