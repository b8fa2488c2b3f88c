//! The background scavenger: a thread that, every period, lists the central lists' empty spans
//! back to the page heap and releases page runs free for two periods to the OS (Go's
//! `bgscavenge`). It starts with the first span the heap carves (`ensure_started`, called by the
//! span carvers above the page heap), once per process; `GORO_SCAVENGER=off` keeps it from
//! starting (`release_memory` still works).

use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::{mcentral, mheap, os, parked};

/// Whether the scavenger thread was started (in this process).
static STARTED: AtomicBool = AtomicBool::new(false);
/// The scavenger thread's kernel id, or 0 while none runs in this process. Written by the
/// thread itself as it starts, cleared in a forked child (which has no scavenger).
static SCAVENGER_TID: AtomicI32 = AtomicI32::new(0);

/// How often the background scavenger wakes up.
const SCAVENGE_PERIOD_MS: u64 = 1000;
/// Ticks a free run must stay free before the background scavenger releases it (so a program
/// that frees and reallocates in a loop does not fault its pages in again and again).
const SCAVENGE_AGE: usize = 2;

/// The kernel thread id (`gettid`) of the scavenger thread, if it runs: the scheduler's deadlock
/// check counts it as one of goro's own threads (which never wake a goroutine) by this id, never
/// by its name (a thread inherits its creator's name).
pub fn scavenger_thread_id() -> Option<i32> {
    // Relaxed: the id is a plain value; a reader that misses it just sees one thread more.
    let tid = SCAVENGER_TID.load(Ordering::Relaxed);
    (tid != 0).then_some(tid)
}

/// Starts the scavenger thread unless it runs already. Called after a span is carved, outside
/// every lock (thread creation may allocate through libc's malloc, never through us).
#[inline]
pub(crate) fn ensure_started() {
    if !STARTED.load(Ordering::Relaxed) {
        start();
    }
}

#[cold]
fn start() {
    if STARTED.swap(true, Ordering::Relaxed) || os::env_is("GORO_SCAVENGER\0", "off") {
        return;
    }
    os::spawn_detached(c"goro-scavenger", scavenger_main);
}

/// In a forked child, which has no scavenger thread: the next carved span starts one.
pub(crate) fn forget_in_child() {
    SCAVENGER_TID.store(0, Ordering::Relaxed);
    STARTED.store(false, Ordering::Relaxed);
}

/// The scavenger's loop: every period, release runs free for `SCAVENGE_AGE` ticks.
extern "C" fn scavenger_main(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: gettid has no preconditions.
    SCAVENGER_TID.store(unsafe { libc::gettid() }, Ordering::Relaxed);
    loop {
        // SAFETY: a sleep only sleeps: the collector may count this thread as stopped
        // meanwhile (`parked`).
        unsafe { parked::while_parked(|| os::sleep_ms(SCAVENGE_PERIOD_MS)) };
        mcentral::release_empty_spans();
        mheap::tick_and_scavenge(SCAVENGE_AGE);
    }
}
