//! Giving a parked goroutine's stack memory back to the OS (Go's stack shrinking, without moving
//! anything).
//!
//! Go shrinks the stack of a goroutine that uses little of it by copying it to a smaller one. A
//! goro stack cannot move (Rust code keeps pointers into it), but its *memory* can go while the
//! goroutine is parked, as long as the bytes are back before it runs:
//!
//! - **Trim** (the default, and always for a goroutine parked where a waker may write to its
//!   stack, such as a `select` whose records are on it): the whole pages below its saved stack
//!   pointer are released, which gives back what deep calls committed before it parked. Nothing
//!   lives there, so nothing can be lost, whoever holds a pointer into the stack and whatever
//!   the kernel is doing with its pages.
//! - **Stash** (only where the user opted in with the `unsafe` `Builder::stash_parked_stacks`
//!   or `stash_parked_stacks_unchecked`, for a goroutine parked where no waker touches its
//!   stack): the live bytes `[sp, top)`, typically a few hundred, are copied into a heap buffer
//!   and every page of the slot is released. The goroutine then costs its G, its live bytes and
//!   nothing else. When it is next resumed, its M puts the bytes back at the same addresses.
//!   With the trap (goro-stack's `trap.rs`), anything else touching the stack meanwhile (a
//!   scoped thread that borrowed a local, a `read(2)` into a buffer on it) waits while the
//!   bytes are put back. Not opt-in free: I/O that pins pages (`O_DIRECT`, NFS, FUSE
//!   `direct_io`, io_uring fixed buffers, `vmsplice`) writes into them without a fault, so a
//!   read in flight into a stashed stack would report success and lose its bytes; userspace
//!   cannot see pins. Hence the user's promise. Without the trap, only that promise keeps
//!   others off the stack.
//!
//! Both are done by sysmon to goroutines that have stayed parked for at least one
//! [`EPOCH`] (between one and two), in slices of at most [`SLICE`] so that sysmon stays
//! responsive; a collection asks for a pass too (`release_stack_memory`). A goroutine that parks
//! and wakes quickly is never touched: its stack costs nothing extra. With migration on
//! (`Config::migrate`) parks publish nothing and no stack is touched.
//!
//! # The handshake
//!
//! The goroutine's home M is the only thread that runs it, sysmon the only one that stashes or
//! trims it. They agree through one state per G, changed as follows:
//!
//! ```text
//!   ACTIVE --g0 after the park--> PARKED_RELEASABLE | PARKED_PINNED
//!   PARKED_* --sysmon, under the home M's ready lock--> BUSY --sysmon--> STASHED | TRIMMED
//!   PARKED_* | TRIMMED --home M pops it from its ready queue (under that lock)--> ACTIVE
//!   PARKED_* | TRIMMED --home M readies it into its runnext (CAS vs sysmon's CAS)--> ACTIVE
//!   STASHED --home M, before resuming: put back (unless the trap did)--> ACTIVE
//!   PARKED_* | TRIMMED --the collector, under the home M's ready lock--> BUSY
//!       --the collector, once it has read the stack--> the state it found
//!   BUSY: the home M waits before resuming (sysmon is copying or releasing, or the
//!       collector reading)
//! ```
//!
//! The collector's claim (`while_parked`) lets the mark worker scan a parked goroutine's stack
//! beside the mutators, at the start of a cycle. It puts back the state it found, so a
//! goroutine its M popped meanwhile may be PARKED_* or TRIMMED when its M gets to `reclaim`,
//! which takes it back with a CAS (a claimant may take it first, and the M waits again).
//!
//! A parked goroutine runs again only after its M pops it from the M's `ready` queue, under that
//! queue's lock, or after its own M readied it into `runnext`; sysmon claims a goroutine with a
//! CAS under the same lock. So the pop path needs no atomic read-modify-write (a load and store
//! inside a lock it takes anyway), and the runnext path one CAS (where it saves a lock). Loom
//! models at the end of this file check both paths against sysmon's claim. The release store of
//! `PARKED_*` after the goroutine's registers are saved is what lets sysmon read its stack. Wakers never read the
//! stack of a `PARKED_RELEASABLE` goroutine: the primitives that park that way keep their wait
//! records in the heap or in the G (see `park::wait_space`).
//!
//! sysmon stashes while holding the lock of the goroutine's `allg` list, and the collector scans
//! with every such lock held, so the collector sees each G ACTIVE, parked, TRIMMED or STASHED,
//! never half copied; a STASHED goroutine's roots are its stashed bytes (`Stack::stashed_bytes`;
//! the trap may put them back meanwhile but never frees them).

use crate::sync_prims::{AtomicU8, AtomicU64, Ordering};
use goro_stack::{Stack, StackPointer};
use std::time::Duration;

/// Running, runnable, or parked so recently that the home M has not published its state.
const ACTIVE: u8 = 0;
/// Parked where no waker touches the stack, in a runtime that stashes: it may be stashed.
const PARKED_RELEASABLE: u8 = 1;
/// Parked; a waker may write to the stack above the saved stack pointer, so it may only be
/// trimmed below it.
const PARKED_PINNED: u8 = 2;
/// sysmon is stashing or trimming.
const BUSY: u8 = 3;
/// The live bytes are in the heap; the slot's pages are released.
const STASHED: u8 = 4;
/// Pages below the saved stack pointer are released (not repeated until it runs again).
const TRIMMED: u8 = 5;

/// How sysmon releases the stack of a goroutine parked where no waker touches it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StashMode {
    /// Stash it; the stash trap puts the bytes back if anything touches them meanwhile. Under
    /// the contract of `goro::Builder::stash_parked_stacks` (or the stronger one of
    /// `stash_parked_stacks_unchecked`).
    Trapped,
    /// Stash it without the trap, under the contract of
    /// `goro::Builder::stash_parked_stacks_unchecked`.
    Unchecked,
    /// Only release the pages below its stack pointer: the default, which cannot lose data.
    TrimOnly,
}

impl StashMode {
    /// Trimming unless the runtime was told to stash (`Config::stash_parked_stacks`, set only
    /// under one of the `unsafe` builder options); then the trap's stash if the trap runs in
    /// this process, else the unchecked one. The trap is not started here: the trapped option
    /// starts it before it sets the flag, and leaves the flag off where it cannot start, so
    /// the flag on without the trap means the user made the unchecked promise. With
    /// migration on, parks publish nothing and stacks are left alone.
    pub(crate) fn choose(config: &crate::config::Config) -> StashMode {
        if config.migrate.is_on() || !config.stash_parked_stacks.is_on() {
            StashMode::TrimOnly
        } else if goro_stack::stash_trap_running() {
            StashMode::Trapped
        } else {
            StashMode::Unchecked
        }
    }
}

/// A goroutine parked (either way) or trimmed: out of its M's hands until the M takes it back,
/// and what the collector may claim.
const fn parked_or_trimmed(state: u8) -> bool {
    matches!(state, PARKED_RELEASABLE | PARKED_PINNED | TRIMMED)
}

/// Spins of an M waiting for sysmon or the collector to let a stack go before it yields its CPU
/// instead.
const BUSY_SPINS: u32 = 100;

/// sysmon's epoch: goroutines parked two epochs ago or earlier have their stack memory released.
pub(crate) const EPOCH: Duration = Duration::from_millis(500);
/// The longest sysmon works on one slice of a pass before it returns to its other duties.
pub(crate) const SLICE: Duration = Duration::from_millis(1);

/// A goroutine's stack-memory state (a field of its G).
pub(crate) struct ParkedStack {
    state: AtomicU8,
    /// The sysmon epoch in which the goroutine last parked.
    parked_in: AtomicU64,
}

/// What a pass did to one goroutine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Released {
    /// Not parked, or already released.
    Nothing,
    /// Parked, but not yet for long enough: another pass should look again.
    TooYoung,
    /// Stashed or trimmed.
    Done,
}

impl ParkedStack {
    pub(crate) fn new() -> ParkedStack {
        ParkedStack {
            state: AtomicU8::new(ACTIVE),
            parked_in: AtomicU64::new(0),
        }
    }

    /// Publishes that the goroutine is parked, in `epoch`. Called by its home M's g0 after the
    /// goroutine's registers are saved; `releasable` when no waker will touch its stack.
    pub(crate) fn parked(&self, releasable: bool, epoch: u64) {
        // The M reclaimed the stack before it resumed the goroutine, and sysmon claims only
        // parked stacks: nothing moved it since.
        debug_assert_eq!(
            self.state.load(Ordering::Relaxed),
            ACTIVE,
            "a goroutine parked with its stack not reclaimed"
        );
        self.parked_in.store(epoch, Ordering::Relaxed);
        let state = if releasable {
            PARKED_RELEASABLE
        } else {
            PARKED_PINNED
        };
        // Release: the saved registers and frames are visible to sysmon once it sees the state.
        self.state.store(state, Ordering::Release);
    }

    /// Called by the home M as it pops the goroutine from its ready queue, *under that queue's
    /// lock*: a parked or trimmed goroutine becomes ACTIVE, out of sysmon's reach. (A BUSY or
    /// STASHED one is left to [`reclaim`](Self::reclaim).)
    #[inline]
    pub(crate) fn popped(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if parked_or_trimmed(state) {
            self.state.store(ACTIVE, Ordering::Relaxed);
        }
    }

    /// Called by the home M when it readies the goroutine into its `runnext` instead of passing
    /// it through its ready queue and lock:
    /// a parked or trimmed goroutine becomes ACTIVE unless sysmon or the collector claimed it
    /// first (every side uses a compare-and-swap on this path).
    #[inline]
    pub(crate) fn readied_directly(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if parked_or_trimmed(state) {
            // Failure: sysmon claimed it (BUSY); `reclaim` waits for it.
            let _ =
                self.state
                    .compare_exchange(state, ACTIVE, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Takes the stack back before the home M resumes the goroutine: copies stashed bytes back,
    /// or waits for sysmon or the collector to finish with it.
    ///
    /// # Safety
    /// Only the goroutine's home M may call this, before switching to it and after popping it
    /// from its ready queue (see [`popped`](Self::popped)); `stack` is its stack.
    #[inline]
    pub(crate) unsafe fn reclaim(&self, stack: Option<&Stack>) {
        if self.state.load(Ordering::Relaxed) != ACTIVE {
            // SAFETY: the caller's contract.
            unsafe { self.reclaim_slow(stack) }
        }
    }

    /// The part of [`reclaim`](Self::reclaim) for a goroutine that is not ACTIVE.
    ///
    /// # Safety
    /// As for `reclaim`.
    #[cold]
    unsafe fn reclaim_slow(&self, stack: Option<&Stack>) {
        let mut waits = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                ACTIVE => return,
                // sysmon finished trimming after the pop, or the collector put back the state
                // it found after reading the stack: take it back unless a claimant was quicker
                // (the collector claims parked and trimmed goroutines under the ready lock,
                // which a popped goroutine's M no longer holds).
                state @ (PARKED_RELEASABLE | PARKED_PINNED | TRIMMED) => {
                    if self
                        .state
                        .compare_exchange(state, ACTIVE, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                }
                // The holder is done within microseconds, unless it lost its CPU (perhaps
                // this one): past a few spins, let it run.
                BUSY => {
                    waits += 1;
                    if waits < BUSY_SPINS {
                        crate::sync_prims::spin_wait();
                    } else {
                        crate::sync_prims::yield_thread();
                    }
                }
                STASHED => {
                    let stack = stack.expect("a stashed goroutine has a stack");
                    {
                        // While the slot is claimed a collection must not stop this thread
                        // (the collector would wait on the claim); nothing in the window locks
                        // or allocates.
                        // SAFETY: `put_back` copies and stores, no lock, no allocation (the
                        // record is freed after the window).
                        let _window = unsafe { goro_alloc::nosuspend::NoSuspend::new() };
                        // SAFETY: STASHED (read with acquire) means sysmon is done with the
                        // stack; we are the goroutine's home M, about to resume it, and only we
                        // do.
                        unsafe { stack.put_back() };
                    }
                    // SAFETY: put back above; outside the window (freeing may lock the heap).
                    unsafe { stack.free_put_back_record() };
                    self.state.store(ACTIVE, Ordering::Relaxed);
                    return;
                }
                state => unreachable!("goroutine stack state {state}"),
            }
        }
    }

    /// Whether the goroutine is parked or trimmed (what [`while_parked`](Self::while_parked)
    /// claims).
    pub(crate) fn is_parked(&self) -> bool {
        parked_or_trimmed(self.state.load(Ordering::Relaxed))
    }

    /// Claims the goroutine (BUSY) for sysmon or the collector, if `wanted` accepts its state as
    /// read under `home_ready`'s lock; returns the state it found. `home_ready` locks the ready
    /// queue of the M the caller read as the G's home, and `still_home` says whether that M is
    /// its home now: a G is reused without any lock the caller holds, and the new goroutine may
    /// be homed elsewhere, whose M pops it under another lock. So the home is checked after the
    /// CAS, whose Acquire makes the new home visible if the state it replaced was written by the
    /// new goroutine's M; on a mismatch the claim is given back untouched (that M may be
    /// overwriting it with ACTIVE, which then wins). While BUSY the goroutine cannot run, so
    /// it cannot exit and be reused: the home stays until the claim ends.
    fn claim<Guard>(
        &self,
        home_ready: impl FnOnce() -> Guard,
        still_home: impl FnOnce() -> bool,
        wanted: impl FnOnce(u8) -> bool,
    ) -> Option<u8> {
        let _ready = home_ready();
        // Acquire: pairs with the release in `parked` (the frames are visible) and with
        // sysmon's release of TRIMMED or the collector's of what it found.
        let state = self.state.load(Ordering::Acquire);
        // Under the lock a goroutine of this M cannot be popped; one readied into runnext
        // loses the CAS below (or wins it, and the claim fails).
        if !wanted(state)
            || self
                .state
                .compare_exchange(state, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        if !still_home() {
            let _ = self
                .state
                .compare_exchange(BUSY, state, Ordering::Release, Ordering::Relaxed);
            return None;
        }
        Some(state)
    }

    /// Holds the goroutine parked while `read` runs, for the collector to read its stack and G
    /// with the world going: claims it as sysmon does (BUSY, under the home M's ready lock) and
    /// puts back the state it found afterwards; the home M waits meanwhile if it wants to
    /// resume it (`reclaim`). Returns false, without calling `read`, if the goroutine is not
    /// parked or trimmed: running, runnable, parked in a runtime that migrates (such parks
    /// publish nothing), held or stashed by sysmon, or homed on another M than the caller read.
    ///
    /// # Safety
    /// `home_ready` locks the ready queue of the M the caller read as the G's home, and
    /// `still_home` says whether it is the G's home now (see `claim`).
    pub(crate) unsafe fn while_parked<Guard>(
        &self,
        home_ready: impl FnOnce() -> Guard,
        still_home: impl FnOnce() -> bool,
        read: impl FnOnce(),
    ) -> bool {
        if !self.is_parked() {
            return false;
        }
        let Some(found) = self.claim(home_ready, still_home, parked_or_trimmed) else {
            return false;
        };
        read();
        debug_assert_eq!(
            self.state.load(Ordering::Relaxed),
            BUSY,
            "a claimed stack changed"
        );
        // Release: the home M's reads of its stack come after ours (it waits in `reclaim`).
        self.state.store(found, Ordering::Release);
        true
    }

    /// Stashes or trims the stack of a goroutine parked in an epoch before `before`.
    /// `home_ready` locks the ready queue of the M the caller read as its home, and `still_home`
    /// says whether it is its home now (see `claim`). `unchecked` lets a stack be stashed where
    /// the stash trap is off. A PARKED_RELEASABLE goroutine is stashed (if it can be), a
    /// PARKED_PINNED one trimmed; the home M publishes PARKED_RELEASABLE only where the
    /// runtime stashes (`StashMode` is not `TrimOnly`).
    ///
    /// # Safety
    /// Only sysmon may call this, holding the lock of the G's `allg` list; `stack` and `sp` are
    /// the G's stack and saved stack pointer (stable while the state is parked). A
    /// PARKED_RELEASABLE goroutine's stack may be stashed: the user made the promise of
    /// `goro::Builder::stash_parked_stacks` (nothing pins its pages or reaches them from outside
    /// the process meanwhile); if `unchecked`, that of `stash_parked_stacks_unchecked`
    /// (nothing but the goroutine touches its stack).
    pub(crate) unsafe fn release<Guard>(
        &self,
        before: u64,
        unchecked: bool,
        home_ready: impl FnOnce() -> Guard,
        still_home: impl FnOnce() -> bool,
        stack: impl FnOnce() -> Option<(*const Stack, StackPointer)>,
    ) -> Released {
        let parked = |state| matches!(state, PARKED_RELEASABLE | PARKED_PINNED);
        if !parked(self.state.load(Ordering::Relaxed)) {
            return Released::Nothing;
        }
        if self.parked_in.load(Ordering::Relaxed) >= before {
            return Released::TooYoung;
        }
        let wanted = |state| parked(state) && self.parked_in.load(Ordering::Relaxed) < before;
        let Some(state) = self.claim(home_ready, still_home, wanted) else {
            return Released::Nothing; // resumed (and perhaps parked again) meanwhile
        };
        let Some((stack, sp)) = stack() else {
            debug_assert_eq!(
                self.state.load(Ordering::Relaxed),
                BUSY,
                "a claimed stack changed"
            );
            self.state.store(state, Ordering::Release);
            return Released::Nothing;
        };
        // SAFETY: the stack belongs to a G that cannot exit while parked.
        let stack = unsafe { &*stack };
        let stashed = if state == PARKED_RELEASABLE {
            // With the trap, anyone else touching the stack waits for its bytes to come back;
            // unchecked, no one touches it (our caller's contract), and wakers never do here.
            // SAFETY: BUSY keeps the home M from resuming the goroutine until we publish
            // STASHED; `sp` is its saved stack pointer; only sysmon stashes.
            unsafe { stack.stash(sp, unchecked) }
        } else {
            false
        };
        let next = if stashed {
            STASHED
        } else {
            // SAFETY: the goroutine is suspended at `sp`, so nothing below it is live; wakers
            // write only to records above it.
            unsafe { stack.release_below(sp.0) };
            TRIMMED
        };
        // Only sysmon leaves BUSY; the home M waits for it in `reclaim`.
        debug_assert_eq!(
            self.state.load(Ordering::Relaxed),
            BUSY,
            "a claimed stack changed"
        );
        // Release: the stashed bytes are visible to the home M once it sees STASHED.
        self.state.store(next, Ordering::Release);
        Released::Done
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The claim of a parked goroutine's stack: sysmon stashing it, or the collector reading it,
    //! against its M taking it back, by popping it from the ready queue (under the queue's lock)
    //! or by readying it into `runnext` (CAS). In every interleaving the goroutine's live bytes
    //! are intact when its M resumes it, and the collector reads them only before. `RUSTFLAGS="--cfg loom" cargo test -p goro-sched --lib loom`.

    use super::*;
    use loom::sync::{Arc, Mutex};

    const LIVE: usize = 64;

    /// A stack with `LIVE` bytes of a pattern below its top, "suspended" at `top - LIVE`.
    fn suspended_stack() -> (Stack, StackPointer) {
        let stack = Stack::new().expect("a stack");
        let sp = stack.top().wrapping_sub(LIVE);
        for i in 0..LIVE {
            // SAFETY: [sp, top) is inside the fresh stack, which nothing else uses.
            unsafe { sp.add(i).write(i as u8 ^ 0x5a) };
        }
        (stack, StackPointer(sp))
    }

    fn assert_intact(sp: StackPointer) {
        for i in 0..LIVE {
            // SAFETY: the M owns the stack again (reclaimed), or the collector holds it: nothing
            // else touches it.
            assert_eq!(
                unsafe { sp.0.add(i).read() },
                i as u8 ^ 0x5a,
                "byte {i} lost"
            );
        }
    }

    /// Who claims the parked goroutine's stack against its M.
    #[derive(Clone, Copy)]
    enum Claimant {
        /// sysmon, which stashes it.
        Sysmon,
        /// The collector, which reads it and puts its state back.
        Collector,
    }

    fn race(ready_into_runnext: bool, claimant: Claimant) {
        loom::model(move || {
            let (stack, sp) = suspended_stack();
            let stack = Arc::new(stack);
            let parked = Arc::new(ParkedStack::new());
            let ready_lock = Arc::new(Mutex::new(()));
            parked.parked(true, 0);
            let other = {
                let (stack, parked, ready_lock) =
                    (stack.clone(), parked.clone(), ready_lock.clone());
                loom::thread::spawn(move || match claimant {
                    // SAFETY: this thread plays sysmon; the stack and sp are the G's.
                    Claimant::Sysmon => unsafe {
                        parked.release(
                            1,
                            true,
                            || ready_lock.lock().unwrap(),
                            || true,
                            || Some((&*stack as *const Stack, sp)),
                        );
                    },
                    Claimant::Collector => {
                        // SAFETY: the closure locks the G's ready queue.
                        unsafe {
                            parked.while_parked(
                                || ready_lock.lock().unwrap(),
                                || true,
                                || {
                                    // Lets the M run between the claim and the read.
                                    loom::thread::yield_now();
                                    assert_intact(sp);
                                },
                            )
                        };
                    }
                })
            };
            if ready_into_runnext {
                parked.readied_directly();
            } else {
                let _ready = ready_lock.lock().unwrap();
                parked.popped();
            }
            // SAFETY: this thread plays the home M, about to resume the goroutine.
            unsafe { parked.reclaim(Some(&stack)) };
            assert_eq!(parked.state.load(Ordering::Relaxed), ACTIVE);
            assert_intact(sp);
            // The goroutine runs: it overwrites its stack, which no claimant may read any more.
            for i in 0..LIVE {
                // SAFETY: the M owns the stack again.
                unsafe { sp.0.add(i).write(!(i as u8 ^ 0x5a)) };
            }
            other.join().unwrap();
            // Whatever the claimant did, it did before the M took the stack back or not at all.
            for i in 0..LIVE {
                // SAFETY: as above.
                assert_eq!(
                    unsafe { sp.0.add(i).read() },
                    !(i as u8 ^ 0x5a),
                    "byte {i} lost"
                );
            }
        });
    }

    #[test]
    fn a_stack_popped_from_the_ready_queue_is_never_released_under_its_goroutine() {
        race(false, Claimant::Sysmon);
    }

    #[test]
    fn a_stack_readied_into_runnext_is_never_released_under_its_goroutine() {
        race(true, Claimant::Sysmon);
    }

    #[test]
    fn the_collector_reads_a_stack_popped_from_the_ready_queue_only_before_it_runs() {
        race(false, Claimant::Collector);
    }

    #[test]
    fn the_collector_reads_a_stack_readied_into_runnext_only_before_it_runs() {
        race(true, Claimant::Collector);
    }

    /// The collector read the G's home (M 1) before the G was reused: its new goroutine, homed
    /// on M 2, parks and is taken back by M 2, while the collector claims it under M 1's lock,
    /// which M 2 never takes. The claim must give the goroutine up, never read it while M 2 runs
    /// it, and leave it ACTIVE for M 2. M 2 takes it back by readying it into its `runnext`
    /// (a CAS): loom cannot model the pop path's plain store against another thread's
    /// read-modify-writes that the storing thread has not seen (a probe of two CASes and a
    /// store showed the storing thread reading an older value after its own store, which
    /// coherence forbids), and on either path the collector's home check is what keeps it
    /// from reading.
    #[test]
    fn a_claim_under_a_former_homes_lock_gives_a_reused_goroutine_up() {
        use loom::sync::atomic::AtomicUsize;
        loom::model(|| {
            let (stack, sp) = suspended_stack();
            let parked = Arc::new(ParkedStack::new());
            let home = Arc::new(AtomicUsize::new(1));
            let former_lock = Arc::new(Mutex::new(()));
            let collector = {
                let (parked, home) = (parked.clone(), home.clone());
                loom::thread::spawn(move || {
                    // SAFETY: the closures lock the queue of M 1, read as the home before.
                    unsafe {
                        parked.while_parked(
                            || former_lock.lock().unwrap(),
                            || home.load(Ordering::Relaxed) == 1,
                            || {
                                loom::thread::yield_now();
                                assert_intact(sp);
                            },
                        )
                    }
                })
            };
            // M 2: the new goroutine's first run sets its home, then it parks.
            home.store(2, Ordering::Relaxed);
            parked.parked(false, 0);
            parked.readied_directly();
            // SAFETY: this thread plays M 2, about to resume the goroutine.
            unsafe { parked.reclaim(Some(&stack)) };
            assert_eq!(parked.state.load(Ordering::Relaxed), ACTIVE);
            for i in 0..LIVE {
                // SAFETY: M 2 owns the stack.
                unsafe { sp.0.add(i).write(!(i as u8 ^ 0x5a)) };
            }
            let read = collector.join().unwrap();
            assert!(!read, "the collector read a goroutine homed on another M");
            assert_eq!(parked.state.load(Ordering::Relaxed), ACTIVE);
        });
    }
}
