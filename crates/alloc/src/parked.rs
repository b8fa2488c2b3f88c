//! Windows in which a thread counts as stopped already: the runtime's own threads asleep.
//!
//! A collection stops every thread of the process with a signal (the `goro` facade's `world`
//! module). Most of goro's own threads are asleep when it does (idle Ms, sysmon, the
//! scavenger, the sweeper), and waking each one only to have it acknowledge and sleep again
//! costs the pause a context switch per thread, tens of microseconds each on a small virtual
//! machine. So a runtime thread about to sleep publishes, in a record the collector can find,
//! where its stack is and that it is *parked*; the collector claims a parked record with one
//! compare-and-swap instead of a signal, and scans the thread from the published stack pointer
//! as it would scan a signalled one. A thread that wakes while its record is claimed waits
//! until the collection lets it go, before it touches anything the collector reads.
//!
//! ```text
//!   RUNNING --thread, registers saved--> PARKED --thread (CAS)--> RUNNING
//!   PARKED --collector (CAS)--> CLAIMED --collector, as the world restarts--> PARKED
//! ```
//!
//! Before publishing PARKED the thread stores its callee-saved registers into its own frame,
//! and the published stack pointer is the lowest address of that store: everything above it
//! (the saved registers, every caller's frame) is what a signal would have left to scan. What
//! the thread runs while parked lies below that address and must not matter to the collector:
//! [`while_parked`]'s contract.
//!
//! Records live in a fixed table (`RECORDS` of them); a thread takes one the first time it
//! parks and gives it back when it exits. A thread that finds the table full parks unrecorded,
//! and is stopped by the signal as before.
//!
//! **Restarting the world with one wake-up.** Every thread a stop holds (a claimed thread that
//! woke, a signalled thread in its handler, an M waiting out the stop) waits on one futex word,
//! the world's generation ([`world_generation`], odd while stopped), and the collector lets
//! them all go with one `FUTEX_WAKE` ([`restart_world`]) once it has set down everything they
//! wait for. A wake-up hands the CPU to the woken thread
//! at once when the kernel finds it more deserving, and the collector, which has just run the
//! whole pause, rarely is: with one wake-up per waiting thread or per kind of waiter, it was
//! preempted after the first one and the rest of the world stayed stopped for milliseconds
//! (BENCHMARKS.md, `stw_threads`). With one, whatever runs next, nobody is left waiting.
//! The next stop begins only once every thread held in a stop signal's handler has left it
//! (`HELD`): one whose wake-up comes late still has the signal blocked there.

use core::cell::Cell;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

/// The thread runs (or sleeps unrecorded): a collection must signal it.
const RUNNING: u32 = 0;
/// The thread sleeps; its stack pointer and thread pointer are published.
const PARKED: u32 = 1;
/// A collection counts the thread as stopped.
const CLAIMED: u32 = 2;

/// Records in the table: more than goro's own threads number but in a program with hundreds of
/// Ms in blocking calls (those are stopped by signal).
const RECORDS: usize = 256;

/// Where one parked thread stands.
struct Record {
    /// The owner's kernel thread id, 0 when free.
    tid: AtomicI32,
    state: AtomicU32,
    /// The lowest address to scan of the owner's stack.
    sp: AtomicUsize,
    /// The owner's `pthread_self()`.
    tp: AtomicUsize,
}

#[allow(
    clippy::declare_interior_mutable_const,
    reason = "only the initialiser of the table below"
)]
const FREE: Record = Record {
    tid: AtomicI32::new(0),
    state: AtomicU32::new(RUNNING),
    sp: AtomicUsize::new(0),
    tp: AtomicUsize::new(0),
};

static TABLE: [Record; RECORDS] = [FREE; RECORDS];

/// The world's generation: bumped as every stop of the world begins ([`begin_stop`], making it
/// odd) and as it ends ([`restart_world`], even again). The futex word every thread a stop
/// holds waits on.
static WORLD: AtomicU32 = AtomicU32::new(0);

/// The world's generation now: odd while a stop holds the world. A thread that must wait for
/// the world to restart reads it before it checks what it waits for, and then waits with
/// [`wait_for_restart`]: a restart between the check and the wait changes the word, so the wait
/// returns at once. Async-signal-safe.
#[inline]
pub fn world_generation() -> u32 {
    // Acquire: pairs with the Release of `begin_stop` and `restart_world`, so whatever the
    // stopping or restarting thread set down before (the end of the stop: marks, frees) is seen
    // by a thread that sees the new generation.
    WORLD.load(Ordering::Acquire)
}

/// Sleeps until the world's generation is no longer `seen` (or spuriously: callers check
/// again). Async-signal-safe.
pub fn wait_for_restart(seen: u32) {
    crate::os::futex_wait(&WORLD, seen, None);
}

/// Threads a stop's signal holds in its handler (acknowledged, waiting for the restart) that
/// have not left it yet. A new stop begins only once it is 0 ([`begin_stop`]): a thread still
/// asleep in the last stop's handler (its restart's wake-up not yet made: the restarting thread
/// preempted, or interrupted by a signal, between the generation's bump and the wake-up)
/// cannot take the new stop's signal, and looks like a thread that blocks it; the new stop
/// would give up on it and leave its roots unscanned. Found by an adversarial session: eight
/// std threads holding `Gc`s on their stacks, the give-up warning in 7 of 7 runs.
static HELD: AtomicU32 = AtomicU32::new(0);

/// Counts the calling thread as held by the stop under way: called in a stop signal's handler
/// before it acknowledges the stop, so that the stop cannot end, and the next one begin, with
/// the thread uncounted. Async-signal-safe.
pub fn hold_in_stop() {
    HELD.fetch_add(1, Ordering::Relaxed);
}

/// In a stop signal's handler, after [`hold_in_stop`] and the acknowledgement: waits until the
/// stop of `generation` has ended, then counts the thread out, waking a [`begin_stop`] that
/// waits for the last one. Async-signal-safe.
pub fn wait_held(generation: u32) {
    // Acquire (in `world_generation`): pairs with the restart's Release, so the collector's
    // writes (marks, the heap it swept) are visible when the thread goes on.
    while world_generation() == generation {
        wait_for_restart(generation);
    }
    // Release: the thread's leaving happens before the next stop's Acquire load of the count.
    if HELD.fetch_sub(1, Ordering::Release) == 1 {
        crate::os::futex_wake(&HELD, i32::MAX);
    }
}

/// Sleeps while a stop holds the world (the generation is odd).
pub fn wait_while_world_stopped() {
    loop {
        let generation = world_generation();
        if generation.is_multiple_of(2) {
            return;
        }
        wait_for_restart(generation);
    }
}

/// Marks the world stopped, once the last stop's restart is done and every thread it held in
/// its signal handler has left it (see [`hold_in_stop`]): a thread a new stop signals reads the new (odd)
/// generation, so only this stop's restart lets it go, never the end of the last one, and no
/// thread the new stop signals is still deaf to the signal in the last one's handler. Called by
/// the thread that stops the world, before it asks any thread to stop.
pub fn begin_stop() {
    loop {
        let generation = WORLD.load(Ordering::Relaxed);
        if !generation.is_multiple_of(2) {
            wait_for_restart(generation);
            continue;
        }
        // Acquire: pairs with `wait_held`'s Release. No thread is counted in anew before a
        // stop begins (a handler holds a thread only for a stop that asked it to stop), so the
        // count cannot rise between this load and the exchange below.
        let held = HELD.load(Ordering::Acquire);
        if held != 0 {
            crate::os::futex_wait(&HELD, held, None);
            continue;
        }
        // Release: a thread that sees the odd generation (a signalled one) sees what the
        // stopper did before; Acquire: the stopper sees what the last restart set down.
        if WORLD
            .compare_exchange(
                generation,
                generation.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            return;
        }
    }
}

/// Restarts the world: makes the generation even and wakes every thread waiting on it, in one
/// system call, taking no lock (a stopped thread may hold any). The caller must have set down
/// everything the waiters check first (the claims released, the scheduler's stop flag
/// cleared): whatever runs next, nobody is left waiting for it.
///
/// Returns the moment the last waiter was let go, where a stop of the world ends: the start of
/// the wake-up plus the CPU time it took. The kernel wakes every waiter inside the call without
/// blocking, so the wall time the call takes beyond its CPU time is spent on the way out,
/// after every waiter was woken: a thread it woke often takes this one's CPU there, and gives
/// it back milliseconds later on a busy machine, while the world runs. (A kernel with full
/// preemption may preempt the caller between two wake-ups; this one's default, like most
/// distributions' servers', preempts only on the way out.)
pub fn restart_world() -> Instant {
    let generation = WORLD.fetch_add(1, Ordering::Release);
    debug_assert!(
        !generation.is_multiple_of(2),
        "restart_world without begin_stop"
    );
    let began = Instant::now();
    let cpu = crate::os::thread_cpu_time();
    crate::os::futex_wake(&WORLD, i32::MAX);
    let waking = crate::os::thread_cpu_time().saturating_sub(cpu);
    began + waking.min(began.elapsed())
}

/// A restart whose wake-up is late: the generation made even, no waiter woken (a test's
/// stand-in for a restarting thread preempted between the two).
#[cfg(test)]
pub(crate) fn restart_without_waking() {
    WORLD.fetch_add(1, Ordering::Release);
}

/// The late wake-up of [`restart_without_waking`].
#[cfg(test)]
pub(crate) fn wake_late() {
    crate::os::futex_wake(&WORLD, i32::MAX);
}

/// This thread's record: its index and the thread id it was taken with (a child process after
/// `fork` has another id, and a cleared table).
struct Owned {
    index: Cell<usize>,
    tid: Cell<i32>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let (index, tid) = (self.index.get(), self.tid.get());
        if index < RECORDS {
            // Release: the next owner sees this one's last writes. Only if it is still ours (a
            // child of `fork` clears the table).
            let _ = TABLE[index]
                .tid
                .compare_exchange(tid, 0, Ordering::Release, Ordering::Relaxed);
        }
    }
}

thread_local! {
    static OWNED: Owned = const {
        Owned {
            index: Cell::new(RECORDS),
            tid: Cell::new(0),
        }
    };
}

/// This thread's record, taken now if it has none; `None` when the table is full or the thread
/// is exiting.
fn my_record() -> Option<&'static Record> {
    OWNED
        .try_with(|owned| {
            let index = owned.index.get();
            if index < RECORDS && TABLE[index].tid.load(Ordering::Relaxed) == owned.tid.get() {
                return Some(&TABLE[index]);
            }
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let index = TABLE.iter().position(|record| {
                // Acquire: pairs with the Release that freed it.
                record
                    .tid
                    .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })?;
            owned.index.set(index);
            owned.tid.set(tid);
            Some(&TABLE[index])
        })
        .ok()
        .flatten()
}

/// Runs `f` with this thread published as parked, so that a collection counts it as stopped
/// without signalling it (see the module docs). Outside a [`crate::nosuspend`] window only;
/// inside one, inside another `while_parked`, or when no record is free, `f` simply runs.
///
/// # Safety
/// `f` must only wait (a futex, a condition variable, a sleep) and return: while it runs the
/// collector may be reading the thread's stack and the heap, so it must not allocate or free,
/// nor store, move or drop anything that may hold a `Gc` or a pointer to a heap block, and it
/// must not unwind.
#[inline(never)]
pub unsafe fn while_parked<R>(f: impl FnOnce() -> R) -> R {
    if crate::nosuspend::inside_window() {
        return f();
    }
    let Some(record) = my_record() else {
        return f();
    };
    if record.state.load(Ordering::Relaxed) != RUNNING {
        // Nested inside another window of this thread: that one is published already.
        return f();
    }
    let mut saved = [0usize; SAVED_REGISTERS];
    save_registers(&mut saved);
    let sp = saved.as_ptr() as usize;
    record.sp.store(sp, Ordering::Relaxed);
    // SAFETY: pthread_self has no preconditions.
    record
        .tp
        .store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
    // Release: publishes `sp`, `tp`, the saved registers and every write before them to the
    // collector's Acquire claim.
    record.state.store(PARKED, Ordering::Release);
    let result = f();
    loop {
        let seen = world_generation();
        // Acquire: the collector's writes (the marks, what it freed) happen before we go on.
        match record
            .state
            .compare_exchange(PARKED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => break,
            Err(state) => {
                debug_assert_eq!(state, CLAIMED);
                wait_for_restart(seen);
            }
        }
    }
    core::hint::black_box(&saved);
    result
}

/// Callee-saved registers of the platform's C ABI (plus the frame pointer).
#[cfg(target_arch = "x86_64")]
const SAVED_REGISTERS: usize = 6;
#[cfg(target_arch = "aarch64")]
const SAVED_REGISTERS: usize = 12;

/// Stores the callee-saved registers into `saved`: values the caller's callers keep in
/// registers while this thread sleeps, which the collector must see.
#[inline(always)]
fn save_registers(saved: &mut [usize; SAVED_REGISTERS]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: stores six registers into the six words of `saved`; reads no other memory and
    // changes no register.
    unsafe {
        core::arch::asm!(
            "mov [{0}], rbx",
            "mov [{0} + 8], rbp",
            "mov [{0} + 16], r12",
            "mov [{0} + 24], r13",
            "mov [{0} + 32], r14",
            "mov [{0} + 40], r15",
            in(reg) saved.as_mut_ptr(),
            options(nostack, preserves_flags),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: stores twelve registers into the twelve words of `saved`; reads no other memory
    // and changes no register.
    unsafe {
        core::arch::asm!(
            "stp x19, x20, [{0}]",
            "stp x21, x22, [{0}, #16]",
            "stp x23, x24, [{0}, #32]",
            "stp x25, x26, [{0}, #48]",
            "stp x27, x28, [{0}, #64]",
            "stp x29, x30, [{0}, #80]",
            in(reg) saved.as_mut_ptr(),
            options(nostack, preserves_flags),
        );
    }
}

/// A thread the collector claimed; [`release_claimed`] lets it go.
#[derive(Clone, Copy, Debug)]
pub struct Claimed {
    /// Its kernel thread id.
    pub tid: i32,
    /// The lowest address of its stack to scan.
    pub sp: usize,
    /// Its `pthread_self()`.
    pub tp: usize,
}

/// Claims every parked thread but `except` (the caller), calling `f` with each.
///
/// # Safety
/// May be called only by the collector, as it stops the world (after [`begin_stop`]), which
/// must call [`release_claimed`] and then [`restart_world`]; no other stop may run meanwhile.
pub unsafe fn claim_parked(except: i32, mut f: impl FnMut(Claimed)) {
    for record in &TABLE {
        let tid = record.tid.load(Ordering::Relaxed);
        if tid == 0 || tid == except || record.state.load(Ordering::Relaxed) != PARKED {
            continue;
        }
        // Acquire: pairs with the thread's Release store of PARKED.
        if record
            .state
            .compare_exchange(PARKED, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            f(Claimed {
                // Read again: the record may have changed hands since the first load, but a
                // claimed one cannot (its owner cannot leave `while_parked`).
                tid: record.tid.load(Ordering::Relaxed),
                sp: record.sp.load(Ordering::Relaxed),
                tp: record.tp.load(Ordering::Relaxed),
            });
        }
    }
}

/// Lets every claimed thread go. A claimed thread that woke meanwhile goes on at the next
/// [`restart_world`], which the caller owes it.
///
/// # Safety
/// May be called only by the collector whose stop made the claims, as it restarts the world.
pub unsafe fn release_claimed() {
    for record in &TABLE {
        if record.state.load(Ordering::Relaxed) == CLAIMED {
            // Release: the collector's writes happen before the thread's Acquire CAS.
            record.state.store(PARKED, Ordering::Release);
        }
    }
}

/// In a child process after `fork`: no thread of the parent's is here, so no record is owned.
pub(crate) fn forget_in_child() {
    HELD.store(0, Ordering::Relaxed);
    for record in &TABLE {
        record.state.store(RUNNING, Ordering::Relaxed);
        record.tid.store(0, Ordering::Relaxed);
    }
}
