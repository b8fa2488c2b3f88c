//! Goroutine-locals at goroutine exit: destructors may use and create locals, nothing of an
//! exited goroutine reaches the next goroutine that reuses its G, and a destructor that keeps
//! re-creating locals is stopped with a message.

use goro_sched::{Config, Local, go, run};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// The tests of this file run one at a time: they count through shared statics.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn config(procs: usize) -> Config {
    Config {
        procs,
        stack_size: 256 << 10,
        ..Config::default()
    }
}

fn thread_id() -> std::thread::ThreadId {
    std::thread::current().id()
}

/// The second local: `marker` is `None` in a fresh value, and the `Rc` (a `!Send` value) must
/// never be used or dropped on another thread than the one that made it.
struct Second {
    marker: Cell<Option<u64>>,
    rc: Rc<Cell<u32>>,
    thread: std::thread::ThreadId,
}

static SECONDS_MADE: AtomicUsize = AtomicUsize::new(0);
static SECONDS_DROPPED: AtomicUsize = AtomicUsize::new(0);
static SECOND_ON_ANOTHER_THREAD: AtomicUsize = AtomicUsize::new(0);

impl Drop for Second {
    fn drop(&mut self) {
        if self.thread != thread_id() {
            SECOND_ON_ANOTHER_THREAD.fetch_add(1, Ordering::SeqCst);
        }
        SECONDS_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

static SECOND: Local<Second> = Local::new(|| {
    SECONDS_MADE.fetch_add(1, Ordering::SeqCst);
    Second {
        marker: Cell::new(None),
        rc: Rc::new(Cell::new(0)),
        thread: thread_id(),
    }
});

/// The first local: its destructor initialises [`SECOND`] (which its goroutine never used) and
/// marks it with the goroutine's id.
struct First(u64);

impl Drop for First {
    fn drop(&mut self) {
        SECOND.with(|second| {
            second.marker.set(Some(self.0));
            second.rc.set(second.rc.get() + 1);
        });
    }
}

static FIRST: Local<First> =
    Local::new(|| First(goro_sched::current_goroutine_id().expect("a goroutine")));

#[test]
fn a_local_created_by_a_destructor_at_exit_never_reaches_the_next_goroutine_at_1_and_2_procs() {
    let _serial = serial();
    for procs in [1, 2] {
        SECONDS_MADE.store(0, Ordering::SeqCst);
        SECONDS_DROPPED.store(0, Ordering::SeqCst);
        SECOND_ON_ANOTHER_THREAD.store(0, Ordering::SeqCst);
        let stale = run(config(procs), || {
            let mut stale = Vec::new();
            for _ in 0..300 {
                // Exited Gs are reused by the next spawns (on the P that retired them).
                let droppers: Vec<_> = (0..4).map(|_| go(|| FIRST.with(|_| ()))).collect();
                for h in droppers {
                    h.join().unwrap();
                }
                let checkers: Vec<_> = (0..4)
                    .map(|_| {
                        go(|| {
                            SECOND.with(|second| {
                                let fresh = second.marker.get().is_none()
                                    && second.rc.get() == 0
                                    && Rc::strong_count(&second.rc) == 1
                                    && second.thread == thread_id();
                                (!fresh).then(|| second.marker.get())
                            })
                        })
                    })
                    .collect();
                stale.extend(checkers.into_iter().filter_map(|h| h.join().unwrap()));
            }
            stale
        })
        .into_result()
        .unwrap();
        assert!(
            stale.is_empty(),
            "procs={procs}: {} goroutines saw a local of an exited goroutine (markers {:?})",
            stale.len(),
            &stale[..stale.len().min(8)]
        );
        assert_eq!(
            SECOND_ON_ANOTHER_THREAD.load(Ordering::SeqCst),
            0,
            "procs={procs}: an Rc-holding local was dropped on another thread"
        );
        assert_eq!(
            SECONDS_MADE.load(Ordering::SeqCst),
            SECONDS_DROPPED.load(Ordering::SeqCst),
            "procs={procs}: every value made was dropped"
        );
    }
}

static EARLY: Local<Cell<u32>> = Local::new(|| Cell::new(0));
static SEEN_BY_LATE: AtomicU32 = AtomicU32::new(u32::MAX);

struct Late;

impl Drop for Late {
    fn drop(&mut self) {
        SEEN_BY_LATE.store(EARLY.with(Cell::get), Ordering::SeqCst);
    }
}

static LATE: Local<Late> = Local::new(|| Late);

#[test]
fn locals_are_dropped_last_made_first_and_a_destructor_sees_the_live_ones() {
    let _serial = serial();
    run(config(1), || {
        go(|| {
            EARLY.with(|e| e.set(7));
            LATE.with(|_| ());
        })
        .join()
        .unwrap();
        // A later goroutine on the same G starts from `init`.
        go(|| EARLY.with(Cell::get)).join().unwrap()
    })
    .into_result()
    .map(|early| assert_eq!(early, 0, "a reused G started with a stale EARLY"))
    .unwrap();
    assert_eq!(
        SEEN_BY_LATE.load(Ordering::SeqCst),
        7,
        "LATE's destructor saw EARLY's value, not a new one"
    );
}

/// While set, [`Phoenix`]'s destructor re-creates its own local.
static PHOENIX_ARMED: AtomicBool = AtomicBool::new(false);
static PHOENIXES_DROPPED: AtomicUsize = AtomicUsize::new(0);
static PHOENIX_PANIC: Mutex<Option<String>> = Mutex::new(None);

struct Phoenix;

impl Drop for Phoenix {
    fn drop(&mut self) {
        PHOENIXES_DROPPED.fetch_add(1, Ordering::SeqCst);
        if !PHOENIX_ARMED.load(Ordering::SeqCst) {
            return;
        }
        if let Err(payload) = std::panic::catch_unwind(|| PHOENIX.with(|_| ())) {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            *PHOENIX_PANIC.lock().unwrap() = Some(message);
        }
    }
}

static PHOENIX: Local<Phoenix> = Local::new(|| Phoenix);

#[test]
fn a_destructor_that_keeps_recreating_its_local_is_stopped_after_four_generations() {
    let _serial = serial();
    PHOENIXES_DROPPED.store(0, Ordering::SeqCst);
    PHOENIX_ARMED.store(true, Ordering::SeqCst);
    let after = run(config(1), || {
        let id = go(|| {
            PHOENIX.with(|_| ());
            goro_sched::current_goroutine_id().unwrap()
        })
        .join()
        .unwrap();
        // Wait until the goroutine has finished its teardown (join may return before it).
        for _ in 0..1000 {
            if PHOENIX_PANIC.lock().unwrap().is_some() {
                break;
            }
            goro_sched::sleep(std::time::Duration::from_millis(1));
        }
        PHOENIX_ARMED.store(false, Ordering::SeqCst);
        // The next goroutines reuse the G: their locals work as in any fresh goroutine.
        let fine = (0..8).all(|_| go(|| PHOENIX.with(|_| true)).join().unwrap());
        (id, fine)
    })
    .into_result()
    .unwrap();
    let (id, fine) = after;
    assert!(fine);
    let message = PHOENIX_PANIC
        .lock()
        .unwrap()
        .take()
        .expect("re-creating a local at exit was stopped with a panic");
    assert_eq!(
        message,
        format!(
            "goro::Local::with: goroutine {id} is exiting, and the destructors of its \
             goroutine-locals have re-created locals 4 generations deep (the limit); does a \
             destructor re-create the local it drops?"
        )
    );
    // The first value and the four it re-created, then the eight of the later goroutines.
    assert_eq!(PHOENIXES_DROPPED.load(Ordering::SeqCst), 5 + 8);
}
