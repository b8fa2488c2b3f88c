//! Windows in which a thread must not be stopped by the collector's signal.
//!
//! A collection stops every thread of the process where it stands (the `goro` facade's `world`
//! module). A few runtime paths leave state the collector reads half-written while they run:
//! goro-sched's G fields on a goroutine's first run, death and reuse, a stashed stack being put back, a goroutine switching stack
//! segments. Such a path holds a [`NoSuspend`] guard; the signal handler asks [`defer_suspend`]
//! first, which records that a stop is pending instead of letting it happen. When the outermost
//! guard drops, the thread calls the hook the facade registered, which signals the thread again,
//! now outside the window (Go keeps `m.locks` for the same purpose). It lives here, in the crate
//! every other one builds on, so that every crate of goro shares one depth per thread.
//!
//! A window must be short and must neither take a lock nor allocate: the collector waits for
//! the thread to leave it, while every other thread, which may hold that lock, is stopped.
//!
//! The state is per thread and touched by the thread and by its own signal handler only, so the
//! atomics are `Relaxed` loads and stores (no read-modify-write: only the thread writes the
//! depth), with compiler fences (C's `atomic_signal_fence`) keeping the window's writes inside
//! it as the handler sees them.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering, compiler_fence};

thread_local! {
    /// Open [`NoSuspend`] guards on this thread.
    static DEPTH: AtomicU32 = const { AtomicU32::new(0) };
    /// A stop arrived inside a window.
    static PENDING: AtomicBool = const { AtomicBool::new(false) };
}

/// The facade's "stop this thread now" (signal it again), or null.
static HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Registers what a thread calls when it leaves a window in which a stop was deferred (the
/// facade: signal the thread again).
pub fn set_deferred_suspend_hook(hook: fn()) {
    HOOK.store(hook as *mut (), Ordering::Release);
}

/// For the collector's signal handler: whether the calling thread is inside a window. If so, the
/// stop is recorded and the thread stops itself when it leaves the window. Async-signal-safe.
pub fn defer_suspend() -> bool {
    let inside = inside_window();
    if inside {
        let _ = PENDING.try_with(|p| p.store(true, Ordering::Relaxed));
    }
    inside
}

/// Whether this thread is inside a window.
pub(crate) fn inside_window() -> bool {
    DEPTH
        .try_with(|d| d.load(Ordering::Relaxed) > 0)
        .unwrap_or(false)
}

/// While alive, the collector's signal does not stop this thread (see the module docs).
pub struct NoSuspend(core::marker::PhantomData<*const ()>);

impl NoSuspend {
    /// Opens a window until the guard drops.
    ///
    /// # Safety
    /// May be called only if the guard is dropped on this thread after a short stretch of code
    /// that neither takes a lock, nor allocates, nor waits (a collection waits for the window to
    /// close, with every other thread stopped).
    #[inline]
    pub unsafe fn new() -> NoSuspend {
        // SAFETY: the caller's contract; the guard's drop is the matching `leave`.
        unsafe { enter() };
        NoSuspend(core::marker::PhantomData)
    }
}

impl Drop for NoSuspend {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: matches the `enter` in `new`, on the same thread (the guard is not `Send`).
        unsafe { leave() };
    }
}

impl core::fmt::Debug for NoSuspend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NoSuspend")
    }
}

/// Opens a window without a guard, for one that a stack switch splits (goro-sched's `grow`).
///
/// # Safety
/// As for [`NoSuspend::new`], with one [`leave`] on the same thread closing the window.
#[inline]
pub unsafe fn enter() {
    // Only this thread writes DEPTH (its signal handler only reads it), so a load and a store
    // do: no read-modify-write on the scheduler's hot path.
    DEPTH.with(|d| d.store(d.load(Ordering::Relaxed) + 1, Ordering::Relaxed));
    // The handler must see the window open before the writes it protects.
    compiler_fence(Ordering::SeqCst);
}

/// Closes a window [`enter`] opened; stops the thread now if a stop arrived inside it.
///
/// # Safety
/// May be called only to close a window this thread opened with [`enter`].
#[inline]
pub unsafe fn leave() {
    // The writes the window protects are done before the handler can see it closed.
    compiler_fence(Ordering::SeqCst);
    let depth = DEPTH.with(|d| {
        let depth = d.load(Ordering::Relaxed) - 1;
        d.store(depth, Ordering::Relaxed);
        depth
    });
    compiler_fence(Ordering::SeqCst);
    // A signal after the store stops the thread itself; one before it set PENDING (the handler
    // sets it only while the window is open, so nothing sets it between this load and store).
    if depth == 0 && PENDING.with(|p| p.load(Ordering::Relaxed)) {
        PENDING.with(|p| p.store(false, Ordering::Relaxed));
        stop_now();
    }
}

#[cold]
fn stop_now() {
    let hook = HOOK.load(Ordering::Acquire);
    if !hook.is_null() {
        // SAFETY: a non-null hook was stored from a `fn()` in `set_deferred_suspend_hook`.
        let hook: fn() = unsafe { std::mem::transmute::<*mut (), fn()>(hook) };
        hook();
    }
}
