//! The roots of a collection: where the collector looks for `Gc` pointers outside its own heap.
//!
//! This module is the single place that joins goro-gc to goro-sched and goro-stack: it implements
//! [`goro_gc::Mutators`] by stopping the scheduler's world and reporting, for every goroutine, its
//! G struct (a heap block holding the closure of a goroutine that has not run yet) and the live
//! part of its stack, from the saved stack pointer (which points at the callee-saved registers the
//! switch pushed) to the top. It also reports the writable segments of every loaded ELF object
//! (`.data`, `.bss`), so that a `static` holding a `Gc` (or a `Mutex<Vec<Gc<T>>>` whose buffer is
//! in the heap) keeps it alive, and the static TLS blocks of every M thread, so that a
//! `thread_local!` a goroutine stores a `Gc` in keeps it too. Which routes this covers, and which
//! are still open, is argued in docs/soundness.md.

use goro_gc::{Mutators, RootVisitor};
use goro_sched::RootRange;
use std::sync::Mutex;

/// The static TLS blocks of the running runtime's M threads: `(thread key, start, end)`.
static THREAD_TLS: Mutex<Vec<(usize, usize, usize)>> = Mutex::new(Vec::new());

thread_local! {
    /// Its address identifies the thread in `THREAD_TLS`.
    static THREAD_KEY: u8 = const { 0 };
}

fn thread_key() -> usize {
    THREAD_KEY.with(|key| std::ptr::from_ref(key) as usize)
}

/// Records the calling thread's TLS blocks as roots (an M thread starting).
pub(crate) fn register_thread_tls() {
    let key = thread_key();
    let blocks = tls_blocks();
    let mut registry = THREAD_TLS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    registry.extend(blocks.into_iter().map(|(lo, hi)| (key, lo, hi)));
}

/// Forgets the calling thread's TLS blocks (an M thread stopping, before its TLS is freed).
pub(crate) fn unregister_thread_tls() {
    let key = thread_key();
    let mut registry = THREAD_TLS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    registry.retain(|&(owner, _, _)| owner != key);
}

/// Free stack slots per size whose pages a collection leaves committed.
const STACKS_KEPT_WARM: usize = 16;

/// The goroutines of the running runtime, as the collector sees them.
pub(crate) struct GoroutineRoots;

pub(crate) static GOROUTINE_ROOTS: GoroutineRoots = GoroutineRoots;

// SAFETY: `stop_the_world` runs the cycle on an M's system stack after every other M has parked
// its goroutine at a safe point (goro-sched's stw handshake), and only Ms register as mutator
// threads (see `runtime`). `roots` then reports every goroutine's G struct and saved stack range,
// and the static data of every loaded object; docs/soundness.md lists the routes left open.
unsafe impl Mutators for GoroutineRoots {
    fn stop_the_world(&self, cycle: &mut dyn FnMut()) {
        goro_sched::stop_the_world(cycle);
        // Go frees stack memory at GC: release the pages of pooled stack slots beyond a warm
        // few, so a burst of deep goroutines does not keep its RSS after it is gone.
        goro_stack::trim(STACKS_KEPT_WARM);
        // And the Ps' cached stacks (each M, at its next schedule) and the pages below
        // long-parked goroutines' stack pointers (sysmon, at its next epoch).
        goro_sched::release_stack_memory();
    }

    fn roots(&self, visitor: &mut RootVisitor<'_>) {
        goro_sched::for_each_root(&mut |root| report(visitor, root));
        report_static_data(visitor);
        let registry = THREAD_TLS
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for &(_, lo, hi) in registry.iter() {
            // SAFETY: an M thread's TLS blocks stay mapped until it unregisters them, which it
            // does before exiting; it cannot exit while the world is stopped.
            unsafe { visitor.range(lo as *const u8, hi as *const u8) };
        }
    }

    fn safe_point(&self) {
        goro_sched::safe_point();
    }

    fn procs(&self) -> usize {
        goro_sched::procs()
    }
}

/// Hands one goroutine root to the collector.
pub(crate) fn report(visitor: &mut RootVisitor<'_>, root: RootRange) {
    match root {
        RootRange::Block(block) => visitor.block(block),
        // SAFETY: a switched-out goroutine's stack is mapped from its saved stack pointer to its
        // top, and stays so while the world is stopped (its stack is freed only on exit).
        RootRange::Stack { lo, hi } => unsafe { visitor.range(lo, hi) },
    }
}

/// Reports the writable `PT_LOAD` segments of every loaded object.
pub(crate) fn report_static_data(visitor: &mut RootVisitor<'_>) {
    for (lo, hi) in writable_segments() {
        // SAFETY: a writable PT_LOAD segment of a loaded object is mapped and readable while the
        // object stays loaded; objects are unloaded only by dlclose, which no goroutine runs
        // while the world is stopped.
        unsafe { visitor.range(lo as *const u8, hi as *const u8) };
    }
}

/// `[start, end)` of the calling thread's TLS block of each loaded object that has one.
fn tls_blocks() -> Vec<(usize, usize)> {
    /// `dl_iterate_phdr`'s callback.
    ///
    /// # Safety
    /// Only `dl_iterate_phdr` may call it, with `data` the `Vec` passed to it.
    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the call, and
        // `data` is the `Vec` that `tls_blocks` passed in.
        let (info, blocks) = unsafe { (&*info, &mut *data.cast::<Vec<(usize, usize)>>()) };
        if info.dlpi_tls_data.is_null() {
            return 0;
        }
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let header = unsafe { &*info.dlpi_phdr.add(i) };
            if header.p_type == libc::PT_TLS {
                let start = info.dlpi_tls_data as usize;
                blocks.push((start, start + header.p_memsz as usize));
            }
        }
        0
    }
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    // SAFETY: the callback only reads the headers it is given and pushes onto `blocks`.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&mut blocks as *mut Vec<_>).cast());
    }
    blocks
}

/// `[start, end)` of each writable loadable segment, from the dynamic loader's list.
fn writable_segments() -> Vec<(usize, usize)> {
    /// `dl_iterate_phdr`'s callback.
    ///
    /// # Safety
    /// Only `dl_iterate_phdr` may call it, with `data` the `Vec` passed to it.
    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the call, and
        // `data` is the `Vec` that `writable_segments` passed in.
        let (info, segments) = unsafe { (&*info, &mut *data.cast::<Vec<(usize, usize)>>()) };
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let header = unsafe { &*info.dlpi_phdr.add(i) };
            if header.p_type == libc::PT_LOAD && header.p_flags & libc::PF_W != 0 {
                let start = info.dlpi_addr as usize + header.p_vaddr as usize;
                segments.push((start, start + header.p_memsz as usize));
            }
        }
        0
    }
    let mut segments: Vec<(usize, usize)> = Vec::new();
    // SAFETY: the callback only reads the headers it is given and pushes onto `segments`.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&mut segments as *mut Vec<_>).cast());
    }
    segments
}
