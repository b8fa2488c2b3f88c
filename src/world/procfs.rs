//! What Linux says about this process, read without allocating or taking a lock (a stopped
//! thread may hold the allocator's): its memory mappings (`/proc/self/maps`, read into mapped
//! buffers kept from one stop to the next), its threads (`/proc/self/task`), a thread's blocked
//! signals and its use of the CPU, and whether a range of pages can be read now.

use super::{PAGE, fatal, map_anonymous};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A thread's use of the CPU, from `/proc/self/task/TID/stat` and `schedstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CpuUse {
    /// Its state in `stat`: `R` running or waiting for a CPU, `S` asleep, `D` asleep in the
    /// kernel uninterruptibly, `Z` a zombie (a thread-group leader that exited before the
    /// other threads), ...
    pub(super) state: u8,
    /// Nanoseconds on a CPU (the kernel brings it up to date at each tick and switch).
    pub(super) ran_ns: u64,
    /// Times the thread was put on a CPU.
    pub(super) runs: u64,
}

impl CpuUse {
    /// Whether the thread has exited: a zombie leader (its process goes on with the other
    /// threads) stays listed in `/proc/self/task` and accepts signals it will never take.
    pub(super) fn exited(self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }

    /// Whether a thread that blocks the stop signal may be given up on, as it used the CPU
    /// now and at the last check (`seen`: nanoseconds, runs). Not while it waits for its turn
    /// on a CPU and has not had one since (glibc's creation window), nor while it sleeps in the
    /// kernel uninterruptibly (glibc's `posix_spawn`, which `std::process::Command` uses, blocks
    /// every signal and waits so for its child to exec); yes once it sleeps interruptibly or has
    /// run since.
    pub(super) fn may_be_given_up(self, seen: Option<(u64, u64)>) -> bool {
        match self.state {
            b'R' => seen.is_some_and(|seen| seen != (self.ran_ns, self.runs)),
            b'D' => false,
            _ => true,
        }
    }
}

/// Thread `tid`'s use of the CPU; `None` if it is gone.
pub(super) fn cpu_use(tid: i32) -> Option<CpuUse> {
    let mut buf = [0u8; 1024];
    let n = read_file(&task_path(tid, b"stat\0"), &mut buf)?;
    // The state follows the command name, which may itself hold ") ".
    let text = &buf[..n];
    let after_name = text.iter().rposition(|&b| b == b')')?;
    let state = *text.get(after_name + 2)?;
    let n = read_file(&task_path(tid, b"schedstat\0"), &mut buf)?;
    let mut fields = buf[..n]
        .split(|b| b.is_ascii_whitespace())
        .filter(|field| !field.is_empty())
        .map(parse_u64);
    let ran_ns = fields.next()??;
    let runs = fields.nth(1)??;
    Some(CpuUse {
        state,
        ran_ns,
        runs,
    })
}

/// `/proc/self/task/TID/` followed by `file` (NUL-terminated), NUL-padded.
fn task_path(tid: i32, file: &[u8]) -> [u8; 64] {
    let (digits, count) = decimal(tid);
    let mut path = [0u8; 64];
    let mut len = 0;
    for part in [b"/proc/self/task/".as_slice(), &digits[..count], b"/", file] {
        path[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    path
}

/// Whether the thread blocks `signal`, from its `SigBlk` line in
/// `/proc/self/task/TID/status`.
pub(super) fn blocks_the_signal(tid: i32, signal: libc::c_int) -> bool {
    let mut buf = [0u8; 4096];
    let Some(n) = read_file(&task_path(tid, b"status\0"), &mut buf) else {
        return false;
    };
    let text = &buf[..n];
    let Some(at) = find(text, b"SigBlk:") else {
        return false;
    };
    let mask = text[at + 7..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_hexdigit())
        .fold(0u64, |mask, &b| (mask << 4) | u64::from(hex_digit(b)));
    mask & (1 << (signal - 1)) != 0
}

/// Whether every page of `[addr, end)` can be read now. A range that was one readable mapping
/// when the maps were read may since hold a hole or a `PROT_NONE` page (the guard page of a
/// thread stack mapped next to it): `process_vm_readv` on this process, one byte per page,
/// stops at the first page it cannot read. Allocation-free; any range is allowed.
pub(super) fn pages_readable(addr: usize, end: usize) -> bool {
    const BATCH: usize = 64;
    let mut bytes = [0u8; BATCH];
    let mut remote = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 1,
    }; BATCH];
    let mut at = addr;
    while at < end {
        let mut count = 0;
        while count < BATCH && at < end {
            remote[count].iov_base = at as *mut libc::c_void;
            count += 1;
            at = (at & !(PAGE - 1)) + PAGE;
        }
        let local = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: count,
        };
        // SAFETY: reads `count` bytes of this process into `bytes`; the kernel checks the
        // remote addresses and reports a fault instead of taking it.
        let read = unsafe {
            libc::process_vm_readv(libc::getpid(), &local, 1, remote.as_ptr(), count as _, 0)
        };
        if read != count as isize {
            return false;
        }
    }
    true
}

/// `/proc/self/maps`, read into memory mapped for it (no allocator: a stopped thread may hold
/// its locks).
pub(super) struct Maps {
    text: *mut u8,
    capacity: usize,
    /// The mappings parsed from `text`, in address order (as the kernel lists them): a mapped
    /// array of `count` entries, room for `slots`.
    entries: *mut Mapping,
    count: usize,
    slots: usize,
    /// Read by this stop (not before it, by `prepare_stop`).
    pub(super) fresh: bool,
}

/// The `/proc/self/maps` that `prepare_stop` read, kept for the stop, as `Maps::packed` puts it
/// (buffer, capacity and entry count in one word, so that racing readers and keepers always
/// see a buffer with its own count), or 0.
static PREREAD_MAPS: AtomicUsize = AtomicUsize::new(0);

/// Where `Maps::packed` keeps the entry count: above the 48 bits of a user-space address.
const COUNT_SHIFT: u32 = 48;

/// One line of `/proc/self/maps`.
#[derive(Clone, Copy)]
struct Mapping {
    start: usize,
    end: usize,
    readable: bool,
}

/// The buffer of the last `Maps`, kept for the next stop (`Maps::packed`, with no entries), or 0
/// when none is kept or a `Maps` holds it. Mapping and unmapping
/// a buffer every cycle cost more than reading the file: fresh pages fault in one by one, and
/// `munmap` sends every CPU running a thread of the process a TLB shootdown.
static SPARE_MAPS_BUFFER: AtomicUsize = AtomicUsize::new(0);

/// Text bytes a first buffer holds.
const MAPS_INITIAL_CAPACITY: usize = 1 << 20;

/// A buffer for `capacity` bytes of text followed by room for the mappings they can describe (a
/// line is at least "a-b rwxp 0 0:0 0\n", 17 bytes).
fn maps_buffer_bytes(capacity: usize) -> usize {
    capacity + (capacity / 17 + 1) * size_of::<Mapping>()
}

impl Maps {
    pub(super) fn read() -> Maps {
        // Acquire: pairs with the Release in `drop`, which may have run on another thread.
        let spare = SPARE_MAPS_BUFFER.swap(0, Ordering::Acquire);
        let (mut text, mut capacity) = if spare == 0 {
            let capacity = MAPS_INITIAL_CAPACITY;
            (map_anonymous(maps_buffer_bytes(capacity)), capacity)
        } else {
            let spare = Maps::unpacked(spare);
            let buffer = (spare.text, spare.capacity);
            core::mem::forget(spare);
            buffer
        };
        let len = loop {
            // SAFETY: `text` is a private mapping of at least `capacity` bytes, ours alone.
            let buf = unsafe { core::slice::from_raw_parts_mut(text, capacity) };
            match read_file(b"/proc/self/maps\0", buf) {
                Some(len) if len < capacity => break len,
                Some(_) => {
                    // SAFETY: the mapping made above, not used any more.
                    unsafe { libc::munmap(text.cast(), maps_buffer_bytes(capacity)) };
                    capacity *= 2;
                    text = map_anonymous(maps_buffer_bytes(capacity));
                }
                None => break 0,
            }
        };
        // SAFETY: `capacity` is a multiple of a page, so the entries start aligned, inside the
        // buffer.
        let entries = unsafe { text.add(capacity) }.cast::<Mapping>();
        let mut maps = Maps {
            text,
            capacity,
            entries,
            count: 0,
            slots: capacity / 17 + 1,
            fresh: false,
        };
        // SAFETY: the first `len` bytes of `text` were filled above.
        let lines = unsafe { core::slice::from_raw_parts(text, len) };
        for line in lines.split(|&b| b == b'\n') {
            if let Some(mapping) = parse_mapping(line)
                && maps.count < maps.slots
            {
                // SAFETY: `count < slots`, inside the entries part of the buffer.
                unsafe { entries.add(maps.count).write(mapping) };
                maps.count += 1;
            }
        }
        maps
    }

    /// Reads the maps during a stop.
    pub(super) fn read_fresh() -> Maps {
        let mut maps = Maps::read();
        maps.fresh = true;
        maps
    }

    /// Keeps these maps for the next stop ([`Maps::take_preread`]).
    pub(super) fn keep_for_next_stop(self) {
        let Some(packed) = self.packed() else {
            // Too many mappings to pack: the stop reads its own.
            return;
        };
        core::mem::forget(self);
        // Release: publishes the buffer and its entries.
        let older = PREREAD_MAPS.swap(packed, Ordering::Release);
        if older != 0 {
            // Two reads raced (two threads prepared stops): the older one goes.
            drop(Maps::unpacked(older));
        }
    }

    /// The maps `prepare_stop` read, if any are kept.
    pub(super) fn take_preread() -> Option<Maps> {
        // Acquire: pairs with the Release in `keep_for_next_stop`.
        let packed = PREREAD_MAPS.swap(0, Ordering::Acquire);
        (packed != 0).then(|| Maps::unpacked(packed))
    }

    /// The buffer in one word: its page-aligned address, the log2 of its capacity in the low
    /// bits, the entry count from bit 48 up; `None` if the address or the count does not fit.
    pub(super) fn packed(&self) -> Option<usize> {
        pack(self.text, self.capacity, self.count)
    }

    /// The maps `packed` gave `word` for.
    pub(super) fn unpacked(word: usize) -> Maps {
        let text = (word & ((1 << COUNT_SHIFT) - 1) & !(PAGE - 1)) as *mut u8;
        let capacity = 1usize << (word & (PAGE - 1));
        Maps {
            text,
            capacity,
            // SAFETY: the entries follow the text in the buffer (see `read`).
            entries: unsafe { text.add(capacity) }.cast::<Mapping>(),
            count: word >> COUNT_SHIFT,
            slots: capacity / 17 + 1,
            fresh: false,
        }
    }

    fn mappings(&self) -> &[Mapping] {
        // SAFETY: the first `count` entries were written by `read`.
        unsafe { core::slice::from_raw_parts(self.entries, self.count) }
    }

    /// The readable mapping that holds `addr`, `[start, end)`. Only that one mapping: the next one
    /// may be a special mapping that faults when read (`[vvar]`). A binary search: a process
    /// with thousands of threads has thousands of mappings, asked about once per thread.
    pub(super) fn readable_mapping(&self, addr: usize) -> Option<(usize, usize)> {
        let mappings = self.mappings();
        let at = mappings.partition_point(|m| m.end <= addr);
        let mapping = mappings.get(at)?;
        (mapping.start <= addr && mapping.readable).then_some((mapping.start, mapping.end))
    }

    pub(super) fn is_readable(&self, lo: usize, hi: usize) -> bool {
        lo < hi && self.readable_mapping(lo).is_some_and(|(_, end)| end >= hi)
    }
}

/// `start-end perms ...`.
fn parse_mapping(line: &[u8]) -> Option<Mapping> {
    let dash = line.iter().position(|&b| b == b'-')?;
    let space = line.iter().position(|&b| b == b' ')?;
    Some(Mapping {
        start: parse_hex(&line[..dash])?,
        end: parse_hex(line.get(dash + 1..space)?)?,
        readable: line.get(space + 1) == Some(&b'r'),
    })
}

impl Drop for Maps {
    fn drop(&mut self) {
        if let Some(spare) = pack(self.text, self.capacity, 0)
            && SPARE_MAPS_BUFFER
                .compare_exchange(0, spare, Ordering::Release, Ordering::Relaxed)
                .is_ok()
        {
            return;
        }
        // SAFETY: the buffer `read` made; nothing refers to it any more.
        unsafe { libc::munmap(self.text.cast(), maps_buffer_bytes(self.capacity)) };
    }
}

/// [`Maps::packed`] for a buffer at `text` of `capacity` text bytes holding `count` entries.
fn pack(text: *mut u8, capacity: usize, count: usize) -> Option<usize> {
    let text = text as usize;
    (text < 1 << COUNT_SHIFT && count < 1 << (usize::BITS - COUNT_SHIFT))
        .then(|| text | capacity.trailing_zeros() as usize | count << COUNT_SHIFT)
}

/// Calls `f` with the id of every thread of the process (`getdents64` on `/proc/self/task`).
pub(super) fn for_each_task(mut f: impl FnMut(i32)) {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        fatal("cannot open /proc/self/task to stop the other threads");
    }
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes of records into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0;
        while at + 19 < n as usize {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(tid) = parse_decimal(name) {
                f(tid);
            }
            at += reclen.max(1);
        }
    }
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
}

/// Reads a whole file into `buf` with raw system calls; `None` if it cannot be opened.
fn read_file(path: &[u8], buf: &mut [u8]) -> Option<usize> {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reads into the unfilled rest of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
    Some(len)
}

fn parse_decimal(text: &[u8]) -> Option<i32> {
    parse_u64(text).and_then(|n| i32::try_from(n).ok())
}

fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn parse_hex(text: &[u8]) -> Option<usize> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(
        text.iter()
            .fold(0usize, |n, &b| (n << 4) | usize::from(hex_digit(b))),
    )
}

fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b.to_ascii_lowercase().wrapping_sub(b'a') + 10,
    }
}

/// `n` in decimal, without allocating: the digits and their count.
pub(super) fn decimal(n: i32) -> ([u8; 12], usize) {
    let mut digits = [0u8; 12];
    let mut len = 0;
    let mut n = n.unsigned_abs();
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[..len].reverse();
    (digits, len)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_without_allocating() {
        assert_eq!(parse_decimal(b"12345"), Some(12345));
        assert_eq!(parse_decimal(b"."), None);
        assert_eq!(parse_hex(b"7ffd1000"), Some(0x7ffd_1000));
        let (digits, len) = decimal(40321);
        assert_eq!(&digits[..len], b"40321");
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
    }

    #[test]
    fn a_thread_waiting_for_its_first_cpu_is_not_given_up_on() {
        let waiting = CpuUse {
            state: b'R',
            ran_ns: 0,
            runs: 0,
        };
        // Never run: wait for it, however often it is checked.
        assert!(!waiting.may_be_given_up(None));
        assert!(!waiting.may_be_given_up(Some((0, 0))));
        // Runnable and on a CPU since the last check: it has had its chance.
        let ran = CpuUse {
            ran_ns: 40_000,
            runs: 1,
            ..waiting
        };
        assert!(ran.may_be_given_up(Some((0, 0))));
        assert!(!ran.may_be_given_up(Some((40_000, 1))));
        // Asleep: it will not stop by itself.
        let asleep = CpuUse {
            state: b'S',
            ..waiting
        };
        assert!(asleep.may_be_given_up(None));
        // Asleep in the kernel (a `posix_spawn` waiting for its child's exec): wait for it.
        let in_the_kernel = CpuUse {
            state: b'D',
            ..waiting
        };
        assert!(!in_the_kernel.may_be_given_up(Some((0, 0))));
        assert!(
            CpuUse {
                state: b'Z',
                ..waiting
            }
            .exited()
        );
        assert!(!asleep.exited());
    }

    #[test]
    fn the_cpu_use_of_real_threads_reads_as_it_is() {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        let mine = cpu_use(me).unwrap();
        assert_eq!(mine.state, b'R', "{mine:?}");
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: as above.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        let asleep = loop {
            let now = cpu_use(tid).unwrap();
            if now.state == b'S' {
                break now;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(asleep.runs >= 1, "{asleep:?}");
        done_tx.send(()).unwrap();
        sleeper.join().unwrap();
        assert_eq!(cpu_use(tid), None);
    }

    #[test]
    fn the_maps_know_this_stack() {
        let maps = Maps::read();
        let here = 0usize;
        let sp = core::hint::black_box(&here) as *const usize as usize;
        let (_, end) = maps.readable_mapping(sp).expect("the stack is mapped");
        assert!(end > sp);
        assert!(maps.is_readable(sp, end));
    }

    #[test]
    fn a_range_with_a_hole_or_a_guard_page_is_not_readable() {
        let base = map_anonymous(5 * PAGE) as usize;
        assert!(pages_readable(base + 8, base + 5 * PAGE));
        // SAFETY: pages of the mapping made above, used by nothing.
        unsafe {
            libc::munmap((base + PAGE) as *mut libc::c_void, PAGE);
            libc::mprotect(
                (base + 3 * PAGE) as *mut libc::c_void,
                PAGE,
                libc::PROT_NONE,
            );
        }
        assert!(!pages_readable(base + 8, base + 2 * PAGE));
        assert!(pages_readable(base + 2 * PAGE, base + 3 * PAGE));
        assert!(!pages_readable(base + 2 * PAGE + 8, base + 4 * PAGE));
        assert!(pages_readable(base + 4 * PAGE, base + 5 * PAGE));
    }

    #[test]
    fn maps_kept_for_the_stop_come_back_with_their_own_entries() {
        let _serial = crate::world::tests::PLACES_TESTS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let maps = Maps::read();
        let (text, count) = (maps.text, maps.count);
        let first = maps.mappings()[0];
        assert!(count > 0);
        maps.keep_for_next_stop();
        let back = Maps::take_preread().expect("kept");
        assert_eq!((back.text, back.count), (text, count));
        assert_eq!(back.mappings()[0].start, first.start);
        assert!(Maps::take_preread().is_none(), "taken once");
    }
}
