//! Stashing: a parked context's live bytes kept in the heap while its slot's pages go back to the
//! OS, and put back at the same addresses before it runs (or, with the trap, the moment anything
//! touches them).
//!
//! Each slot has a [`SlotMeta`] in its chunk's table (declared in `slot.rs`, its state machine
//! here), shared by the stack's owner, the collector, the overflow handler (which reads `owner`)
//! and the trap thread. `trap.rs` explains the state machine and why its parties never wait for
//! one another in a cycle; it holds only the userfaultfd mechanics, and this file turns the trap
//! on ([`enable_stash_trap`]) and answers its faults (`answer_fault`).
//!
//! The files of the crate form layers: `os` and `guard`, then `trap` (userfaultfd), then `slot`
//! (reservations, the slot tables, the pool), then `stash`; none imports one above it.

use crate::slot::{SlotAt, SlotMeta, slot_at};
use crate::trap::PageBuf;
use crate::{Stack, StackPointer, os, trap};
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering;

/// The pages are the truth (nothing stashed, or put back).
const LIVE: u8 = 0;
/// The stasher is copying the live bytes out; the live pages are write-protected.
const STASHING: u8 = 1;
/// The bytes are in the heap record; the pages are released.
const STASHED: u8 = 2;
/// One party (a restorer, or the collector reading the record) holds the record.
const CLAIMED: u8 = 3;
/// The trap is filling a zero page into the live slot; LIVE again in a moment.
const FILLING: u8 = 4;

/// Live bytes above which a context is not stashed: releasing the pages below its stack pointer
/// already gives back most of what it holds.
pub const MAX_STASH: usize = 64 * 1024;

impl SlotMeta {
    /// The record.
    ///
    /// # Safety
    /// The caller holds it (STASHED claimed as CLAIMED, or LIVE as the stack's owner) and
    /// stops using the slice before whoever may free it next can (see `stashed_bytes`).
    unsafe fn record(&self) -> &[u8] {
        let ptr = self.record.load(Ordering::Relaxed);
        if ptr.is_null() {
            return &[];
        }
        let len = self.record_len.load(Ordering::Relaxed);
        // SAFETY: a non-null record is a leaked `Box<[u8]>` of `len` bytes that only its holder
        // frees, and the caller holds it.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }

    /// Frees the record, if any.
    ///
    /// # Safety
    /// The caller holds it (as for [`record`](Self::record)), and no slice of it is in use.
    unsafe fn free_record(&self) {
        let ptr = self.record.swap(core::ptr::null_mut(), Ordering::Relaxed);
        if !ptr.is_null() {
            let len = self.record_len.swap(0, Ordering::Relaxed);
            // SAFETY: the record was leaked from a `Box<[u8]>` of `len` bytes, and the caller
            // holds it, so no one else reads it any more.
            drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, len)) });
        }
    }

    /// The trap's descriptor, if the trap is on and covers this slot.
    pub(crate) fn trap_fd(&self) -> Option<i32> {
        trap::fd().filter(|_| self.trapped.load(Ordering::Acquire))
    }

    /// Takes the slot from STASHED to CLAIMED, waiting out a brief holder; false if it is (or
    /// becomes) LIVE.
    fn claim(&self) -> bool {
        let mut spins = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                LIVE => return false,
                STASHED => {
                    if self
                        .state
                        .compare_exchange(STASHED, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return true;
                    }
                }
                _ => {
                    spins += 1;
                    if spins < 64 {
                        core::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

/// Stashed stacks the trap has put back because something touched them.
static TRAP_RESTORES: AtomicU64 = AtomicU64::new(0);

/// Stacks stashed so far.
static STASHES: AtomicU64 = AtomicU64::new(0);

/// How many stacks have been stashed in this process (trapped or unchecked).
pub fn stashes() -> u64 {
    STASHES.load(Ordering::Relaxed)
}

/// How many times the stash trap has put a stashed stack back because a thread (or the kernel)
/// touched it before its context resumed.
pub fn trap_restores() -> u64 {
    TRAP_RESTORES.load(Ordering::Relaxed)
}

/// Puts `bytes` back at `[top - len, top)` with `UFFDIO_COPY`, page by page (the page holding
/// the first byte gets zeros below it), without waking anyone.
///
/// # Safety
/// `top` is the top of a trapped slot whose context's bytes `bytes` are (stashed, so its pages
/// are missing), and the caller holds the slot (CLAIMED).
unsafe fn copy_back(fd: i32, top: usize, bytes: &[u8], buf: &mut PageBuf) {
    let size = os::page_size();
    let sp = top - bytes.len();
    let mut page = sp - sp % size;
    while page < top {
        let page_buf = buf.bytes();
        let from = sp.max(page);
        page_buf[..from - page].fill(0);
        page_buf[from - page..].copy_from_slice(&bytes[from - sp..page + size - sp]);
        // SAFETY: `page_buf` is a page of ours; `page` is a missing page of a trapped slot the
        // caller holds, and these are its bytes.
        match unsafe { trap::copy(fd, page, page_buf.as_ptr(), size, false, false) } {
            Ok(_) => {}
            Err(errno) => trap::fatal("UFFDIO_COPY of stashed bytes", errno),
        }
        page += size;
    }
}

/// Answers one fault in a registered reservation (the trap thread's work; see `trap.rs`).
fn answer_fault(fd: i32, addr: usize, write_protected: bool, tid: i32, buf: &mut PageBuf) {
    let size = os::page_size();
    let page = addr - addr % size;
    let Some(SlotAt { meta, limit, top }) = slot_at(addr) else {
        // Only stack reservations are registered, so this cannot happen; answer anyway rather
        // than leave a thread stopped for good.
        // SAFETY: a page outside every slot holds no stashed bytes.
        unsafe { trap::zero_fill(fd, page, page, 0, false) };
        return;
    };
    match meta.state.load(Ordering::Acquire) {
        LIVE if write_protected => {
            // A stale message from a stash that has ended: a stash releases every page it
            // protected before it ends, so the writer only has to touch its page again.
            trap::wake(fd, page, size);
        }
        LIVE if meta
            .state
            .compare_exchange(LIVE, FILLING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok() =>
        {
            // Never written, or released below a parked context's stack pointer: zeros. A
            // context that faults deep in its stack is growing: fill a quarter of its depth.
            // FILLING meanwhile, so that no stash can begin between our look at the state and
            // the fill (a stale message filling a page of a stashed slot would hide its bytes).
            let extra = (top.saturating_sub(page) / size) / 4;
            crate::slot::TRAP_FILLS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: a LIVE slot's missing pages hold nothing (a stash releases pages only
            // after copying them out, and puts them back before the slot is LIVE again), and
            // FILLING keeps a stash from starting.
            unsafe { trap::zero_fill(fd, page, limit, extra, false) };
            meta.state.store(LIVE, Ordering::Release);
        }
        STASHING if !write_protected && tid == meta.stasher.load(Ordering::Relaxed) => {
            // The stasher reading a page of the live range that was never touched. Protected
            // like the rest, so that no write slips in before the release. This relies on the
            // trap answering one message at a time on one thread: the stasher's fault is
            // answered before it can go on to release the pages.
            // SAFETY: the page is missing while the stasher copies, so it never held data.
            unsafe { trap::zero_fill(fd, page, page, 0, true) };
        }
        STASHED
            if meta
                .state
                .compare_exchange(STASHED, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok() =>
        {
            // SAFETY: we hold the slot (CLAIMED): its pages are released and the record is its
            // bytes; the record stays allocated (we never free it).
            unsafe { copy_back(fd, top, meta.record(), buf) };
            TRAP_RESTORES.fetch_add(1, Ordering::Relaxed);
            // The record stays for the stack's owner to free: this thread never frees memory
            // (a thread stopped on a fault may hold the allocator's locks).
            meta.state.store(LIVE, Ordering::Release);
            trap::wake(fd, limit, top - limit);
        }
        // STASHING, CLAIMED, or claimed by someone else just now: the holder wakes the whole
        // slot when it lets go.
        _ => {}
    }
}

impl Stack {
    /// Moves the live part `[sp, top)` of the context suspended on this stack into the heap and
    /// releases every page of the slot, so that a long-parked goroutine costs its live bytes
    /// (typically a few hundred) instead of whole pages. [`unstash`](Stack::unstash) puts them
    /// back at the same addresses: pointers into the stack stay valid, nothing moves.
    ///
    /// With the stash trap on ([`enable_stash_trap`](crate::enable_stash_trap)), anyone
    /// touching the stack through the page tables meanwhile (a scoped thread reading a
    /// borrowed local, a `read(2)` filling a buffer on it) waits while the trap puts the bytes
    /// back first. I/O that pins pages does not go through the page tables (see Safety).
    /// Without the trap, only `unchecked` stashes, and then nothing else may touch the stack
    /// until `unstash`.
    ///
    /// Returns whether it stashed: not when the live part exceeds [`MAX_STASH`], nor when the
    /// slot is untrapped and `unchecked` is false. Cost: an allocation, a copy of the live
    /// bytes and an `madvise`; with the trap, one `ioctl` to write-protect first.
    ///
    /// # Safety
    /// `sp` is the saved stack pointer of a context suspended on this stack (so `[sp, top)`
    /// holds all of its state), which is not resumed until `unstash` has returned, and no other
    /// `stash` or `unstash` of this stack runs meanwhile. Until `unstash`, nothing reaches the
    /// stack's memory without a fault the trap can wait on (a write would be lost, a read would
    /// see zeros or fail): no I/O that pins its pages is in flight (`O_DIRECT`, NFS or FUSE
    /// `direct_io` files, io_uring fixed buffers or other requests in flight, Linux AIO,
    /// `vmsplice`, RDMA or VFIO registrations), no other process reads or writes it
    /// (`process_vm_readv`/`writev`, `/proc/PID/mem`, ptrace), and no futex word in it is used
    /// by the kernel without retrying (`FUTEX_WAKE_OP`, priority-inheritance futexes, the
    /// robust list). If `unchecked`: nothing at all reads or writes the stack until
    /// `unstash` (the slot may be untrapped).
    pub unsafe fn stash(&self, sp: StackPointer, unchecked: bool) -> bool {
        let (sp, top) = (sp.0 as usize, self.top() as usize);
        assert!(
            (self.limit() as usize..=top).contains(&sp),
            "stash: sp {sp:#x} is outside the stack [{:#x}, {top:#x}]",
            self.limit() as usize
        );
        let meta = self.meta;
        let fd = meta.trap_fd();
        if top - sp > MAX_STASH || (fd.is_none() && !unchecked) {
            return false;
        }
        // SAFETY: a record a trap restore left since the last stash is ours to free (LIVE, and
        // we are the stack's owner).
        unsafe { meta.free_record() };
        // Allocate before protecting anything: a thread that waits on this stack may hold the
        // allocator's locks.
        let mut bytes = vec![0u8; top - sp].into_boxed_slice();
        let size = os::page_size();
        if let Some(fd) = fd {
            meta.stasher.store(trap::thread_id(), Ordering::Relaxed);
            // The trap may hold the slot for a moment to fill a page.
            while meta
                .state
                .compare_exchange_weak(LIVE, STASHING, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                core::hint::spin_loop();
            }
            let from = sp - sp % size;
            trap::write_protect(fd, from, top - from, true);
        }
        // SAFETY: [sp, top) is inside this slot's usable part; nothing writes it concurrently
        // (the context is suspended, other writers wait on the write protection or, unchecked,
        // do not exist); a page never touched is filled with zeros by the trap.
        unsafe { core::ptr::copy_nonoverlapping(sp as *const u8, bytes.as_mut_ptr(), top - sp) };
        // SAFETY: the slot's usable part is ours; its live contents were copied just above,
        // and a thread touching it from now on waits for the trap (or, unchecked, none does).
        if !unsafe { os::discard(self.limit(), self.size()) } {
            // The pages stay (e.g. under `mlockall`): nothing to gain, so undo.
            if let Some(fd) = fd {
                let from = sp - sp % size;
                trap::write_protect(fd, from, top - from, false);
                meta.state.store(LIVE, Ordering::Release);
                self.wake_waiters();
            }
            return false;
        }
        let len = bytes.len();
        meta.record
            .store(Box::into_raw(bytes).cast(), Ordering::Relaxed);
        meta.record_len.store(len, Ordering::Relaxed);
        // Release: a claimer sees the record.
        meta.state.store(STASHED, Ordering::Release);
        STASHES.fetch_add(1, Ordering::Relaxed);
        self.wake_waiters();
        true
    }

    /// Puts stashed bytes back before the context on this stack is resumed (a no-op if nothing
    /// is stashed, or the trap already put them back), and frees the record.
    ///
    /// # Safety
    /// The context suspended on this stack is about to be resumed by the caller, who is the
    /// only one doing so, and no `stash` of this stack runs meanwhile.
    pub unsafe fn unstash(&self) {
        // SAFETY: the caller's contract, which is `put_back`'s and `free_put_back_record`'s.
        unsafe {
            self.put_back();
            self.free_put_back_record();
        }
    }

    /// The first half of [`unstash`](Self::unstash): puts the stashed bytes back and makes the
    /// slot LIVE, but keeps the record for [`free_put_back_record`](Self::free_put_back_record),
    /// so that a caller that must not lock or allocate meanwhile (a window in which the
    /// collector cannot stop its thread) frees it after. Locks nothing and allocates nothing
    /// once the thread's page buffer exists (it is made here, before the claim).
    ///
    /// # Safety
    /// As for `unstash`.
    pub unsafe fn put_back(&self) {
        let meta = self.meta;
        if meta.state.load(Ordering::Acquire) == LIVE
            && meta.record.load(Ordering::Relaxed).is_null()
        {
            return;
        }
        // The page buffer is allocated (once per thread) before the slot is claimed.
        PAGE_BUF.with(|_| {});
        if meta.claim() {
            let top = self.top() as usize;
            // SAFETY: claimed: the record is ours and stays allocated until it is freed.
            let bytes = unsafe { meta.record() };
            match meta.trap_fd() {
                Some(fd) => {
                    // SAFETY: a trapped slot we hold, stashed from this stack.
                    PAGE_BUF
                        .with(|buf| unsafe { copy_back(fd, top, bytes, &mut buf.borrow_mut()) });
                }
                None => {
                    // SAFETY: [top - len, top) is inside this slot (the record came from it);
                    // unchecked, nothing else touches the stack; the record is a separate heap
                    // buffer.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            (top - bytes.len()) as *mut u8,
                            bytes.len(),
                        )
                    };
                }
            }
            meta.state.store(LIVE, Ordering::Release);
            self.wake_waiters();
        }
    }

    /// The second half of [`unstash`](Self::unstash): frees the record [`put_back`](Self::put_back)
    /// (Self::put_back) left (or one a trap restore left).
    ///
    /// # Safety
    /// As for `unstash`, after `put_back`.
    pub unsafe fn free_put_back_record(&self) {
        // SAFETY: LIVE, and we are the stack's owner: the record (ours, or left by a trap
        // restore) is no one else's; `put_back` no longer uses it.
        unsafe { self.meta.free_record() };
    }

    /// Whether the bytes of the context on this stack are stashed (not yet put back).
    pub fn is_stashed(&self) -> bool {
        matches!(
            self.meta.state.load(Ordering::Acquire),
            STASHING | STASHED | CLAIMED
        )
    }

    /// The stashed bytes of the context on this stack (`[sp, top)` as they were when stashed),
    /// or `None` if its pages are live. A collector scans these instead of the stack. The
    /// trap may put the bytes back after this returns (something touched the stack), but it
    /// never frees them.
    ///
    /// # Safety
    /// While the caller uses the slice, no `stash`, `unstash` or drop of this stack runs.
    pub unsafe fn stashed_bytes(&self) -> Option<&[u8]> {
        let meta = self.meta;
        if !meta.claim() {
            return None;
        }
        // SAFETY: claimed, so the record is there; after we let go only the stack's owner
        // frees it (in `stash`, `unstash` or drop), which the caller rules out meanwhile.
        let bytes: *const [u8] = unsafe { meta.record() };
        meta.state.store(STASHED, Ordering::Release);
        self.wake_waiters();
        // SAFETY: as above.
        Some(unsafe { &*bytes })
    }

    /// Wakes every thread waiting on a fault in this stack: each touches its page again and
    /// finds the slot's new state. Whoever lets go of a STASHING or CLAIMED slot calls this.
    fn wake_waiters(&self) {
        if let Some(fd) = self.meta.trap_fd() {
            trap::wake(fd, self.limit() as usize, self.size());
        }
    }

    /// Drops what is stashed without putting it back (the stack is being freed).
    pub(crate) fn forget_stash(&self) {
        let meta = self.meta;
        if meta.state.load(Ordering::Relaxed) == LIVE
            && meta.record.load(Ordering::Relaxed).is_null()
        {
            return;
        }
        if meta.claim() {
            meta.state.store(LIVE, Ordering::Release);
            self.wake_waiters();
        }
        // SAFETY: LIVE, and the stack is being dropped by its owner: the record is ours.
        unsafe { meta.free_record() };
    }
}

thread_local! {
    /// The page buffer this thread restores through (allocated on its first restore).
    static PAGE_BUF: core::cell::RefCell<PageBuf> = core::cell::RefCell::new(PageBuf::new());
}

/// Turns the stash trap on for this process (see `trap.rs`): opens a userfaultfd, starts the
/// thread that answers it, and registers every stack reservation, now and later. After this,
/// [`Stack::stash`] may release a parked context's stack even if other threads may touch it.
/// Idempotent; the first call decides.
///
/// Fails, saying why, where the kernel or the process's privileges do not allow catching
/// kernel-mode faults (`userfaultfd` needs root, `CAP_SYS_PTRACE` or
/// `vm.unprivileged_userfaultfd=1`), or when `GORO_DEBUG=stacktrap=off`.
pub fn enable_stash_trap() -> Result<(), String> {
    let fd = trap::open(answer_fault)?;
    if trap::fd().is_none() {
        crate::slot::trap_every_chunk(fd);
    }
    Ok(())
}
