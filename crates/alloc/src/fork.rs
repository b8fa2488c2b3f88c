//! `fork` safety: handlers that take every allocator lock before a `fork` and release them after
//! it in both processes, so that the child never inherits a lock held by a thread it does not
//! have. They take the locks in the order the allocator nests them (the fallback cache, the
//! central lists in class order, the page heap, the bin pool), so this file sits above every
//! other: nothing imports it. The handlers are registered when the program is loaded (an
//! `.init_array` entry), before any thread could fork.

use crate::{dirty, mcache, mcentral, mheap, os, parked, scavenger};

/// Registers the handlers with `pthread_atfork` as the program is loaded.
#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER_AT_LOAD: extern "C" fn() = register;

extern "C" fn register() {
    if !os::at_fork(prepare, parent, child) {
        os::write_stderr("goro-alloc: pthread_atfork failed; fork while allocating may hang\n");
    }
}

/// Before `fork`: take every allocator lock, in nesting order.
extern "C" fn prepare() {
    mcache::lock_global();
    mcentral::lock_all();
    mheap::lock_for_fork();
    mcache::lock_bin_pool();
}

/// After `fork`, in the parent: release what `prepare` took.
extern "C" fn parent() {
    // SAFETY: this thread took these locks in `prepare`.
    unsafe { mcache::unlock_bin_pool() };
    // SAFETY: as above.
    unsafe { mheap::unlock_after_fork() };
    // SAFETY: as above.
    unsafe { mcentral::unlock_all() };
    // SAFETY: as above.
    unsafe { mcache::unlock_global() };
}

/// After `fork`, in the child: release the locks (the child's only thread is the one that took
/// them) and let the next carved span start a scavenger thread in the child.
extern "C" fn child() {
    // SAFETY: the parent's forking thread took these locks; it is this thread in the child.
    unsafe { mcache::unlock_bin_pool() };
    // SAFETY: as above.
    unsafe { mheap::unlock_after_fork() };
    // SAFETY: as above.
    unsafe { mcentral::unlock_all() };
    // SAFETY: as above.
    unsafe { mcache::unlock_global() };
    scavenger::forget_in_child();
    parked::forget_in_child();
    dirty::forget_in_child();
}
