//! The kernel's record of written heap pages (`goro_alloc::dirty`): what the collector's mark
//! termination trusts to skip rescanning a large block's unwritten pages. Each check here is a
//! fact the skip relies on; a kernel that broke one would make the skip unsound.

use goro_alloc::{GoroAlloc, dirty};
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static ALLOC: GoroAlloc = GoroAlloc;

const OS_PAGE: usize = 4096;
const PAGES: usize = 256;

/// A zeroed, page-aligned heap block of `PAGES` OS pages, every page touched.
struct Block(*mut u8);

impl Block {
    fn new() -> Block {
        let layout = Layout::from_size_align(PAGES * OS_PAGE, OS_PAGE).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { GoroAlloc.alloc_zeroed(layout) };
        assert!(!p.is_null());
        for page in 0..PAGES {
            // SAFETY: inside the block.
            unsafe { p.add(page * OS_PAGE).write_volatile(1) };
        }
        Block(p)
    }
    fn range(&self) -> (usize, usize) {
        (self.0 as usize, self.0 as usize + PAGES * OS_PAGE)
    }
    fn page(&self, page: usize) -> *mut u8 {
        // SAFETY: callers pass page < PAGES.
        unsafe { self.0.add(page * OS_PAGE) }
    }
    fn written_pages(&self) -> Vec<usize> {
        let (lo, hi) = self.range();
        let mut pages = Vec::new();
        assert!(
            dirty::for_each_written(lo, hi, |from, to| {
                assert!(
                    from >= lo && to <= hi && from < to,
                    "a run outside the block"
                );
                pages.extend((from - lo) / OS_PAGE..(to - lo).div_ceil(OS_PAGE));
            }),
            "PAGEMAP_SCAN failed"
        );
        pages
    }
    fn protect(&self) {
        let (lo, hi) = self.range();
        // SAFETY: no collector runs in this test binary: nothing relies on the write record.
        let protected = unsafe { dirty::write_protect(lo, hi) };
        assert!(protected, "UFFDIO_WRITEPROTECT failed");
        assert_eq!(self.written_pages(), Vec::<usize>::new());
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(PAGES * OS_PAGE, OS_PAGE).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { GoroAlloc.dealloc(self.0, layout) };
    }
}

/// This machine's kernel (Linux 6.18) has asynchronous write-protect and `PAGEMAP_SCAN`; CI runs
/// on it. A kernel without them makes the collector rescan whole blocks, which other tests cover.
fn started() {
    assert!(
        dirty::start(),
        "heap write tracking did not start (userfaultfd with UFFD_FEATURE_WP_ASYNC and \
         PAGEMAP_SCAN need Linux 6.7)"
    );
}

#[test]
fn user_writes_are_reported_and_reads_are_not() {
    started();
    let block = Block::new();
    block.protect();
    // SAFETY: inside the block.
    let read = unsafe { block.page(7).read_volatile() };
    assert_eq!(read, 1);
    // SAFETY: inside the block.
    unsafe {
        block.page(3).add(100).write_volatile(9);
        block.page(200).write_volatile(9);
    }
    assert_eq!(block.written_pages(), vec![3, 200]);
    block.protect();
    assert_eq!(block.written_pages(), Vec::<usize>::new());
}

#[test]
fn the_kernels_own_writes_are_reported() {
    started();
    let block = Block::new();
    block.protect();
    let mut fds = [0; 2];
    // SAFETY: a live array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let bytes = [0xA5u8; 64];
    // SAFETY: writes from and reads into live buffers of the given lengths.
    unsafe {
        assert_eq!(libc::write(fds[1], bytes.as_ptr().cast(), 64), 64);
        // A user-mode-only userfaultfd must not turn this kernel-mode write into EFAULT.
        assert_eq!(libc::read(fds[0], block.page(42).cast(), 64), 64);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    // SAFETY: inside the block.
    assert_eq!(unsafe { block.page(42).read_volatile() }, 0xA5);
    assert_eq!(block.written_pages(), vec![42]);
}

#[test]
fn a_page_dropped_and_written_again_is_reported() {
    started();
    let block = Block::new();
    block.protect();
    // SAFETY: advising pages of our own block, which we then treat as zeroed.
    let dropped = unsafe { libc::madvise(block.page(10).cast(), 2 * OS_PAGE, libc::MADV_DONTNEED) };
    assert_eq!(dropped, 0);
    // SAFETY: inside the block.
    unsafe { block.page(11).write_volatile(5) };
    let written = block.written_pages();
    assert!(
        written.contains(&11),
        "a refaulted page read as unwritten: {written:?}"
    );
    // A dropped page not written again reads back as zeros, whatever it reports.
    // SAFETY: inside the block.
    assert_eq!(unsafe { block.page(10).read_volatile() }, 0);
}

#[test]
fn a_fork_child_does_not_track_through_its_parents_descriptors() {
    started();
    let block = Block::new();
    block.protect();
    // SAFETY: the child only calls async-signal-safe code paths of this crate (ioctls, getpid)
    // and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let (lo, hi) = block.range();
        // The child's inherited descriptors name the parent's memory: neither call may use them.
        // SAFETY: as in `protect`.
        let protected = unsafe { dirty::write_protect(lo, hi) };
        let code = if protected || dirty::for_each_written(lo, hi, |_, _| {}) {
            1
        } else {
            0
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    // SAFETY: inside the block.
    unsafe { block.page(1).write_volatile(3) };
    assert_eq!(block.written_pages(), vec![1]);
}
