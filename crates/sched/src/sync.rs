//! Synchronisation that parks goroutines, never OS threads: `WaitGroup`.

use crate::park::{Waiter, park};
use crate::proc::lock;
use crate::stw;
use std::fmt;
use std::sync::Mutex;

/// Waits for a collection of goroutines to finish (Go's `sync.WaitGroup`).
///
/// ```ignore
/// let wg = Arc::new(WaitGroup::new());
/// for _ in 0..10 {
///     wg.add(1);
///     let wg = wg.clone();
///     goro::go(move || { /* work */ wg.done(); });
/// }
/// wg.wait();
/// ```
pub struct WaitGroup {
    state: Mutex<WaitState>,
}

struct WaitState {
    counter: i64,
    waiters: Vec<Waiter>,
}

impl WaitGroup {
    /// A wait group with a zero counter.
    pub const fn new() -> WaitGroup {
        WaitGroup {
            state: Mutex::new(WaitState {
                counter: 0,
                waiters: Vec::new(),
            }),
        }
    }

    /// Adds `delta` (which may be negative) to the counter; at zero, every waiter wakes.
    ///
    /// # Panics
    /// Panics with Go's message "sync: negative WaitGroup counter" if the counter drops below 0.
    pub fn add(&self, delta: i64) {
        let waiters = {
            let mut state = lock(&self.state);
            state.counter += delta;
            if state.counter < 0 {
                state.counter -= delta;
                drop(state);
                panic!("sync: negative WaitGroup counter");
            }
            if state.counter > 0 {
                return;
            }
            std::mem::take(&mut state.waiters)
        };
        for waiter in waiters {
            waiter.wake();
        }
    }

    /// Decrements the counter by one.
    pub fn done(&self) {
        self.add(-1);
    }

    /// Blocks until the counter is zero. This is a safe point.
    pub fn wait(&self) {
        stw::safe_point();
        loop {
            let mut state = lock(&self.state);
            if state.counter == 0 {
                return;
            }
            let waiter = Waiter::current();
            let parker = waiter.thread_parker();
            state.waiters.push(waiter);
            park(state, parker);
            // Re-check: a thread parker may wake spuriously, and the counter may have been raised
            // again before we ran (Go's WaitGroup forbids reuse before Wait returns; we tolerate it).
        }
    }

    /// The counter now.
    pub fn count(&self) -> i64 {
        lock(&self.state).counter
    }
}

impl Default for WaitGroup {
    fn default() -> Self {
        WaitGroup::new()
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup")
            .field("counter", &self.count())
            .finish()
    }
}
