//! Starting and stopping a runtime: [`run`], [`Runtime::builder`], and the environment defaults.
//!
//! Settings come from the builder, else from the environment (Go's names with goro's prefix),
//! else from the defaults:
//!
//! | builder          | environment          | Go          | default                        |
//! |------------------|----------------------|-------------|--------------------------------|
//! | `max_procs(n)`   | `GORO_MAX_PROCS`     | GOMAXPROCS  | available cores                |
//! | `gc_percent(p)`  | `GORO_GC_PERCENT`    | GOGC        | 100 (`off` or < 0: no trigger) |
//! | `memory_limit(b)`| `GORO_MEMORY_LIMIT`  | GOMEMLIMIT  | none (`1GiB`, `512MiB`, bytes) |
//! | `stack_size(b)`  | -                    | -           | 1 MiB of address space         |
//! | `max_stack_size(b)` | -                 | debug.SetMaxStack | 1 GiB (slot + `maybe_grow` segments) |
//! | `unsafe stash_parked_stacks(on)`, `unsafe stash_parked_stacks_unchecked(on)` | `GORO_DEBUG=stackstash=off` turns both off | - | off: long-parked goroutines' stacks are trimmed below their stack pointers |
//! | `detached_panics_exit(on)` | - | - (always) | on: a panic in a goroutine whose `JoinHandle` was dropped ends the program with status 2, as in Go |
//!
//! A goroutine's panic is printed by the process's panic hook, after a line naming the goroutine
//! (`goroutine 7 panicked:`); a joined goroutine's panic comes back from `join` as a
//! [`Panic`](crate::Panic); one that no handle will see ends the program unless
//! `detached_panics_exit(false)`.
//!
//! `GORO_DEBUG=gctrace=1` prints Go's gctrace line per cycle; `GORO_DEBUG=schedtrace=1000` prints
//! Go's scheduler line every second. The stack knobs only ever make goro more careful:
//! `stackstash=off` overrides the stash options, `stacktrap=off` keeps the stash trap from
//! starting (the trapped stash then trims), `stackguard=mprotect` forces the old guard pages.
//! No environment variable can turn a stash on: that takes a promise in code.
//!
//! One runtime runs at a time in a process (later `run` calls wait for it). When the main
//! goroutine returns, the runtime ends: goroutines still blocked are abandoned (nothing of theirs
//! is dropped, as when a Go program exits), and the collector *retires* the heap: every object the
//! returned value or an abandoned goroutine can reach becomes immortal, the rest is dropped. The
//! retirement marks and sweeps beside the caller once `run` has returned (only its first pause
//! runs before); the next `run` waits for it to decide what lives, the process's exit for its
//! drop glue as long as that makes progress ([`goro_gc::wait_for_retirement`]).

use crate::roots::{self, GOROUTINE_ROOTS};
use std::fmt;

/// Usable bytes of each goroutine's stack unless the builder says otherwise. Pages are committed
/// only when touched, so this is address space, not memory.
pub const DEFAULT_STACK_SIZE: usize = 1 << 20;
const MIN_STACK_SIZE: usize = 16 << 10;
const MAX_STACK_SIZE: usize = 1 << 30;
const MAX_PROCS: usize = goro_sched::MAX_PROCS;
/// What `GORO_MAX_PROCS` must hold.
const PROCS_EXPECTED: &str = "a number of Ps from 1 to 256, e.g. 4";
const _: () = assert!(MAX_PROCS == 256, "PROCS_EXPECTED names the bound");

static RUN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `main` as the main goroutine of a runtime with the default settings (and the
/// environment's), and returns its value.
///
/// # Panics
/// Panics with the reason if the runtime cannot start (see [`BuildError`]), and with the main
/// goroutine's panic if it panicked.
#[track_caller]
pub fn run<R, F>(main: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match Runtime::builder().build() {
        Ok(runtime) => runtime.run(main),
        Err(error) => panic!("goro::run: {error}"),
    }
}

/// Why a runtime cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// The process's `#[global_allocator]` is not `goro::alloc::GoroAlloc`.
    NotGoroAllocator,
    /// `max_procs` is outside 1..=256.
    MaxProcs(usize),
    /// `stack_size` is outside 16 KiB..=1 GiB.
    StackSize(usize),
    /// `max_stack_size` is smaller than `stack_size`.
    MaxStackSize {
        /// The maximum asked for.
        max: usize,
        /// The slot size it must hold.
        slot: usize,
    },
    /// An environment variable could not be parsed.
    Environment {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NotGoroAllocator => f.write_str(
                "the global allocator is not goro's, so the collector cannot find Gc pointers \
                 held in Box, Vec or closures; add `#[global_allocator] static ALLOC: \
                 goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;` to your program",
            ),
            BuildError::MaxProcs(n) => {
                write!(f, "max_procs must be between 1 and {MAX_PROCS}, got {n}")
            }
            BuildError::StackSize(n) => write!(
                f,
                "stack_size must be between {MIN_STACK_SIZE} and {MAX_STACK_SIZE} bytes, got {n}"
            ),
            BuildError::MaxStackSize { max, slot } => write!(
                f,
                "max_stack_size ({max} bytes) must be at least stack_size ({slot} bytes)"
            ),
            BuildError::Environment {
                name,
                value,
                expected,
            } => {
                write!(f, "cannot parse {name}={value:?}: expected {expected}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Settings for a runtime; see the module docs for each one's default.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    max_procs: Option<usize>,
    gc_percent: Option<i32>,
    memory_limit: Option<usize>,
    stack_size: Option<usize>,
    parked_stacks: ParkedStacks,
    migrate_goroutines: bool,
    max_stack_size: Option<usize>,
    keep_running_after_detached_panics: bool,
}

/// What sysmon does with the stack of a goroutine parked for a second or so: the builder's
/// stash options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ParkedStacks {
    /// Release the pages below its saved stack pointer: nothing lives there, so nothing can be
    /// lost (the default).
    #[default]
    Trim,
    /// Stash it under the stash trap where the trap runs, else trim
    /// ([`Builder::stash_parked_stacks`]).
    Stash,
    /// Stash it, with the trap if it happens to run, else without
    /// ([`Builder::stash_parked_stacks_unchecked`]).
    StashUnchecked,
}

impl Builder {
    /// The number of Ps (GOMAXPROCS): how many goroutines run in parallel.
    pub fn max_procs(mut self, n: usize) -> Builder {
        self.max_procs = Some(n);
        self
    }

    /// GOGC: a cycle starts when the heap has grown this many percent over the live heap;
    /// negative turns automatic collection off.
    pub fn gc_percent(mut self, percent: i32) -> Builder {
        self.gc_percent = Some(percent);
        self
    }

    /// GOMEMLIMIT: a soft limit on the collected heap, in bytes.
    pub fn memory_limit(mut self, bytes: usize) -> Builder {
        self.memory_limit = Some(bytes);
        self
    }

    /// Whether a panic in a goroutine whose [`JoinHandle`](crate::JoinHandle) was dropped (so
    /// nobody can see it) ends the program with exit status 2, as an unrecovered panic does in Go
    /// (the default), or is only printed while the program goes on (`false`).
    pub fn detached_panics_exit(mut self, on: bool) -> Builder {
        self.keep_running_after_detached_panics = !on;
        self
    }

    /// Usable bytes of each goroutine's stack (address space; pages are committed on touch).
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// The most stack a goroutine may use: its slot plus the segments
    /// [`goro::stack::maybe_grow`](crate::stack::maybe_grow) adds (Go's `debug.SetMaxStack`).
    pub fn max_stack_size(mut self, bytes: usize) -> Builder {
        self.max_stack_size = Some(bytes);
        self
    }

    /// Lets a goroutine move to another thread at any blocking point (a channel operation,
    /// `select!`, `sleep`, `join`, a `goro::sync` wait, `yield_now`), as Go's goroutines do: a
    /// readied goroutine runs next on the thread that readied it, and idle threads steal started
    /// goroutines too, so work spreads and a goroutine ping-ponging with another ends up on
    /// the same thread. By default a goroutine stays on the thread it first ran on.
    ///
    /// Sound only if goroutines do not carry thread-bound state across blocking points. With
    /// migration on, the stacks of parked goroutines are not trimmed or stashed.
    ///
    /// # Safety
    /// Across a blocking point a goroutine must not hold a value that must stay on its OS
    /// thread: a `!Send` value (`Rc`, `RefCell` borrows shared with thread-locals, a
    /// `MutexGuard` of `std::sync::Mutex`, which must be unlocked on the thread that locked it)
    /// or a reference into a `thread_local!` (use `goro::Local` for per-goroutine state); and it
    /// must not block while a panic unwinds it (in a destructor run by the unwinding), since
    /// std counts panics in progress per thread. Rust's types do not see the switch of threads
    /// at a blocking point, so the compiler cannot check this.
    pub unsafe fn migrate_goroutines(mut self, on: bool) -> Builder {
        self.migrate_goroutines = on;
        self
    }

    /// Lets the runtime *stash* the stacks of goroutines parked for a second or so, under the
    /// stash trap: a goroutine's live bytes (typically a few hundred) move into the heap and
    /// its whole stack's memory goes back to the OS; if anything else touches the stack
    /// meanwhile (a scoped thread using a local it borrowed, a `read(2)` into a buffer on it),
    /// it waits while a `userfaultfd` trap puts the bytes back. 100,000 parked goroutines then
    /// cost about 0.9 KB each instead of the default's 4.5 KB (Go: 2.7 KB; see README).
    ///
    /// By default goro only releases the pages *below* a long-parked goroutine's stack
    /// pointer, which hold nothing: that cannot lose anyone's bytes. A stash can, in ways no
    /// trap sees (the kernel writes into pinned pages without faulting), hence `unsafe`.
    ///
    /// The trap needs the right to catch kernel-mode faults (root, `CAP_SYS_PTRACE` or
    /// `vm.unprivileged_userfaultfd=1`). Where it cannot run ([`crate::stack::stash_trap`]
    /// says why), or with `GORO_DEBUG=stacktrap=off`, this option does nothing: stacks are
    /// trimmed as by default. `GORO_DEBUG=stackstash=off` turns it off too. Of this and
    /// [`stash_parked_stacks_unchecked`](Builder::stash_parked_stacks_unchecked), the last
    /// call decides; `false` restores the default.
    ///
    /// ```compile_fail
    /// // An unsafe promise: it does not compile without `unsafe`.
    /// let builder = goro::Runtime::builder().stash_parked_stacks(true);
    /// ```
    ///
    /// # Safety
    /// May be called only if, while a goroutine of this runtime is parked in a goro operation
    /// (a channel operation, `select!`, `sleep`, `join`, a `goro::sync` wait), its stack is
    /// reached only by this process through its page tables:
    /// - No I/O that pins pages is in flight into or out of a buffer on its stack, whoever
    ///   started it: `O_DIRECT` reads and writes, files on NFS or on FUSE mounts with
    ///   `direct_io`, io_uring requests (fixed buffers above all), Linux AIO (`io_submit`),
    ///   `vmsplice`, RDMA or VFIO registrations. Such a read would report success and lose its
    ///   bytes. Keep such buffers in the heap (`Vec`, `Box`); a goroutine that does the I/O in
    ///   a blocking system call itself (directly or in `goro::blocking`) is not parked meanwhile.
    /// - No other process reads or writes it (`process_vm_readv`/`process_vm_writev`,
    ///   `/proc/PID/mem`, ptrace): it would see zeros or fail. Debuggers and core dumps show a
    ///   stashed stack as zeros.
    /// - No futex word on it is used with `FUTEX_WAKE_OP`, priority-inheritance futexes or a
    ///   robust futex list: the kernel gets `EFAULT` there instead of waiting for the trap.
    /// - A child forked meanwhile does not use the parent's goroutine stacks before `exec`
    ///   (it sees zeros where they were stashed).
    ///
    /// Threads of this process reading or writing the stack (scoped threads, system calls
    /// copying to or from a buffer on it) are caught by the trap and need no promise.
    pub unsafe fn stash_parked_stacks(mut self, on: bool) -> Builder {
        self.parked_stacks = if on {
            ParkedStacks::Stash
        } else {
            ParkedStacks::Trim
        };
        self
    }

    /// Like [`stash_parked_stacks`](Builder::stash_parked_stacks), but stashes without the
    /// stash trap where it does not run (not root, `GORO_DEBUG=stacktrap=off`), and does not
    /// start it: nothing puts a stashed stack back if another thread touches it, so the
    /// promise covers every thread. (Where the trap runs anyway, started by
    /// `stash_parked_stacks` or [`crate::stack::stash_trap`], stashes go through it.) It also
    /// spares fresh stacks the trap's cost on their first use. `GORO_DEBUG=stackstash=off`
    /// turns it off. Of this and `stash_parked_stacks`, the last call decides; `false`
    /// restores the default.
    ///
    /// # Safety
    /// Everything [`stash_parked_stacks`](Builder::stash_parked_stacks) requires, and more:
    /// while a goroutine of this runtime is parked in a goro operation (a channel operation,
    /// `select!`, `sleep`, `join`, a `goro::sync` wait), nothing but that goroutine reads or
    /// writes its stack. No thread or goroutine may use a reference or pointer into its frames
    /// that it got from that goroutine, and no system call made by another thread may read or
    /// write a buffer on it. Safe Rust can break this only with scoped threads: a goroutine
    /// that lends its locals to `std::thread::scope` (or rayon's or crossbeam's scopes) threads
    /// and then blocks on a goro channel inside the scope. Those threads would read zeros, and
    /// their writes would be lost. Blocking the goroutine's thread instead (the scope's own
    /// join, a `std::sync` lock, `goro::blocking`) is fine: that does not park it.
    pub unsafe fn stash_parked_stacks_unchecked(mut self, on: bool) -> Builder {
        self.parked_stacks = if on {
            ParkedStacks::StashUnchecked
        } else {
            ParkedStacks::Trim
        };
        self
    }

    /// Checks the settings (and the environment) and makes the runtime.
    pub fn build(self) -> Result<Runtime, BuildError> {
        if !global_allocator_is_goros() {
            return Err(BuildError::NotGoroAllocator);
        }
        let max_procs = match self.max_procs {
            Some(n) if (1..=MAX_PROCS).contains(&n) => n,
            Some(n) => return Err(BuildError::MaxProcs(n)),
            None => match env_parse("GORO_MAX_PROCS", PROCS_EXPECTED, parse_usize)? {
                Some(n) if (1..=MAX_PROCS).contains(&n) => n,
                Some(n) => {
                    return Err(BuildError::Environment {
                        name: "GORO_MAX_PROCS",
                        value: n.to_string(),
                        expected: PROCS_EXPECTED,
                    });
                }
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
        };
        let gc_percent = match self.gc_percent {
            Some(p) => p,
            None => {
                env_parse("GORO_GC_PERCENT", "a percentage or `off`", parse_percent)?.unwrap_or(100)
            }
        };
        let memory_limit = match self.memory_limit {
            Some(bytes) => bytes,
            None => env_parse(
                "GORO_MEMORY_LIMIT",
                "bytes, e.g. 1GiB or 512MiB",
                parse_bytes,
            )?
            .unwrap_or(usize::MAX),
        };
        let stack_size = self.stack_size.unwrap_or(DEFAULT_STACK_SIZE);
        if !(MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(&stack_size) {
            return Err(BuildError::StackSize(stack_size));
        }
        let max_stack_size = self
            .max_stack_size
            .unwrap_or(goro_sched::DEFAULT_MAX_STACK_SIZE);
        if max_stack_size < stack_size {
            return Err(BuildError::MaxStackSize {
                max: max_stack_size,
                slot: stack_size,
            });
        }
        let debug = Debug::from_env()?;
        Ok(Runtime {
            max_stack_size,
            max_procs,
            gc_percent,
            memory_limit,
            stack_size,
            parked_stacks: self.parked_stacks,
            migrate_goroutines: self.migrate_goroutines,
            detached_panics_exit: !self.keep_running_after_detached_panics,
            debug,
        })
    }
}

/// A configured runtime, ready to [`run`](Runtime::run) a main goroutine.
#[derive(Debug, Clone)]
pub struct Runtime {
    max_procs: usize,
    gc_percent: i32,
    memory_limit: usize,
    stack_size: usize,
    parked_stacks: ParkedStacks,
    migrate_goroutines: bool,
    max_stack_size: usize,
    detached_panics_exit: bool,
    debug: Debug,
}

/// A collector switch's setter (`goro_gc::set_trace` and its kin).
type Switch = fn(bool);

/// The `GORO_DEBUG` settings (Go's GODEBUG) read here: `gctrace=1`, `schedtrace=MS`,
/// `clobberfree=1` (objects the collector frees are overwritten with `goro::gc::POISON`),
/// `gcunaligned=1` (conservative scans look for pointers at every byte offset),
/// `gctrackwrites=0` (mark termination rescans large malloc blocks whole, not only the pages the
/// kernel saw written),
/// `gccheckmark=1` (each cycle's concurrent marking is checked by a stop-the-world one, which
/// aborts naming any object it missed), `gcstress=1` (every allocation starts a cycle when none
/// is under way),
/// `stackstash=off` (goro-stack reads `stacktrap` and `stackguard` itself). Unknown keys are
/// ignored, as Go ignores unknown GODEBUG keys. The collector's switches are set only where the
/// variable names them: one the program turned on (`goro::gc::set_clobber_free(true)` before
/// building, say) stays on unless `GORO_DEBUG` says `=0`.
#[derive(Debug, Clone, Copy, Default)]
struct Debug {
    gctrace: Option<bool>,
    clobberfree: Option<bool>,
    gcunaligned: Option<bool>,
    gctrackwrites: Option<bool>,
    gccheckmark: Option<bool>,
    gcstress: Option<bool>,
    schedtrace: Option<std::time::Duration>,
    /// `stackstash=off`: no stash, whatever the builder says (to rule the stash out when
    /// bytes go missing). There is deliberately no `stackstash=on`.
    stackstash_off: bool,
}

impl Debug {
    fn from_env() -> Result<Debug, BuildError> {
        let mut debug = Debug::default();
        let Ok(value) = std::env::var("GORO_DEBUG") else {
            return Ok(debug);
        };
        for setting in value.split(',').map(str::trim) {
            let Some((key, setting_value)) = setting.split_once('=') else {
                continue;
            };
            match key {
                "gctrace" => debug.gctrace = Some(setting_value == "1"),
                "clobberfree" => debug.clobberfree = Some(setting_value == "1"),
                "gcunaligned" => debug.gcunaligned = Some(setting_value == "1"),
                "gctrackwrites" => debug.gctrackwrites = Some(setting_value != "0"),
                "gccheckmark" => debug.gccheckmark = Some(setting_value == "1"),
                "gcstress" => debug.gcstress = Some(setting_value == "1"),
                "stackstash" => debug.stackstash_off = setting_value == "off",
                "schedtrace" => {
                    let ms: u64 = setting_value.parse().map_err(|_| BuildError::Environment {
                        name: "GORO_DEBUG",
                        value: value.clone(),
                        expected: "schedtrace=MILLISECONDS, e.g. schedtrace=1000",
                    })?;
                    debug.schedtrace = (ms > 0).then(|| std::time::Duration::from_millis(ms));
                }
                _ => {}
            }
        }
        Ok(debug)
    }
}

impl Runtime {
    /// Settings for a runtime.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The number of Ps this runtime runs with.
    pub fn max_procs(&self) -> usize {
        self.max_procs
    }

    /// Whether sysmon may stash parked goroutines' stacks (goro-sched's
    /// `Config::stash_parked_stacks`, which stashes under the trap if it runs and without it
    /// otherwise): only under one of the `unsafe` builder options, unless
    /// `GORO_DEBUG=stackstash=off`; for the trapped one, only if the trap runs (started here,
    /// once per process), since without it the user's promise does not cover other threads.
    fn stash_parked_stacks(&self) -> bool {
        match self.parked_stacks {
            ParkedStacks::Trim => false,
            _ if self.debug.stackstash_off => false,
            ParkedStacks::Stash => goro_stack::enable_stash_trap().is_ok(),
            ParkedStacks::StashUnchecked => true,
        }
    }

    /// Runs `main` as the main goroutine and returns its value once it returns.
    ///
    /// # Panics
    /// Resumes the main goroutine's panic; panics if it ended with `goro::exit()`, or if called
    /// from inside a goroutine or from drop glue the collector runs (its sweeper thread).
    #[track_caller]
    pub fn run<R, F>(&self, main: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if goro_sched::is_goroutine() {
            panic!(
                "goro::run called inside a running goro runtime; use goro::go to start goroutines"
            );
        }
        if goro_gc::is_collector_thread() {
            panic!(
                "goro::run called from drop glue the collector runs: the collector cannot go on \
                 until this drop returns (start the runtime on a thread of your own)"
            );
        }
        // One runtime at a time: the collector's roots and the heap's retirement belong to it.
        let _one_at_a_time = RUN_LOCK.lock().unwrap_or_else(|poison| poison.into_inner());
        // The last runtime's retirement has decided what lives before this one allocates (its
        // sweep may still be dropping, as a cycle's may), and is waited for at exit.
        goro_gc::wait_until_retirement_decided();
        wait_for_retirement_at_exit();
        goro_gc::set_percent(self.gc_percent);
        goro_gc::set_memory_limit(self.memory_limit);
        let switches: [(Option<bool>, Switch); 6] = [
            (self.debug.gctrace, goro_gc::set_trace),
            (self.debug.clobberfree, goro_gc::set_clobber_free),
            (self.debug.gcunaligned, goro_gc::set_scan_unaligned),
            (self.debug.gctrackwrites, goro_gc::set_track_writes),
            (self.debug.gccheckmark, goro_gc::set_checkmark),
            (self.debug.gcstress, goro_gc::set_stress),
        ];
        for (setting, set) in switches {
            if let Some(on) = setting {
                set(on);
            }
        }
        crate::world::install();
        name_goroutines_in_panics();
        // SAFETY: this runtime is the world `GOROUTINE_ROOTS` describes, and it runs from here
        // until the uninstall below.
        unsafe { goro_gc::install(&GOROUTINE_ROOTS) };
        // Asleep on CPUs of their own by the first cycle, which finds every cache cold and
        // needs the help most.
        goro_gc::start_mark_helpers(self.max_procs);
        let config = goro_sched::Config {
            procs: self.max_procs,
            stack_size: self.stack_size,
            on_thread_start: None,
            on_thread_stop: None,
            on_idle: Some(goro_alloc::flush_thread_cache),
            schedtrace: self.debug.schedtrace,
            stash_parked_stacks: promised(self.stash_parked_stacks()),
            migrate: promised(self.migrate_goroutines),
            max_stack_size: self.max_stack_size,
            runtime_threads: Some(|| goro_gc::collector_threads().iter().collect()),
            collector_busy: Some(goro_gc::is_busy),
            detached_panics_exit: self.detached_panics_exit,
        };
        let finished = goro_sched::run(config, main);
        // SAFETY: installed above by this runtime, which is over.
        unsafe { goro_gc::uninstall() };
        roots::RETIRED_WORLD.set(finished.abandoned(), self.max_procs);
        clear_dead_stack();
        // Every goroutine has stopped for good; the retired world stops every other thread and
        // reports each one (this thread from its frame up, so the result too, until `run`
        // returns it: then it is wherever the caller keeps it), the abandoned goroutines and the
        // static data: every place a `Gc` can live. The retirement marks and sweeps beside the
        // caller from here on; only its first pause runs now.
        // SAFETY: those roots are all of them, and this runtime is over and uninstalled.
        unsafe { goro_gc::retire(&roots::RETIRED_WORLD) };
        match finished.into_result() {
            Ok(value) => value,
            Err(panic) if panic.is_exit() => {
                panic!(
                    "goro::exit called in the main goroutine: the program has no value to return"
                )
            }
            Err(panic) => panic.resume(),
        }
    }
}

/// Zeroes the stack below the caller's frame, where the retirement's first pause will lay its
/// frames: the scheduler and the marker ran there while the runtime ran on this thread, and
/// their words, left in slots the pause's frames do not write, would be scanned as roots and
/// keep what they point to immortal. (The pause scans this thread from its own frame up, so
/// every register saved on the way is still seen.)
#[inline(never)]
fn clear_dead_stack() {
    std::hint::black_box([0u64; DEAD_STACK_CLEARED / 8]);
}

/// Bytes of stack [`clear_dead_stack`] zeroes: more than the retirement's first pause uses.
const DEAD_STACK_CLEARED: usize = 16 << 10;

/// Registers, once, an `atexit` handler that waits for a retirement under way
/// ([`goro_gc::wait_for_retirement_at_exit`]): the drop glue of what the last runtime left
/// unreachable runs before the process ends (its `Drop`s may flush a user's bytes), unless a
/// drop is stuck.
fn wait_for_retirement_at_exit() {
    extern "C" fn at_exit() {
        goro_gc::wait_for_retirement_at_exit();
    }
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `at_exit` is an `extern "C" fn()` that neither unwinds nor calls `exit`.
        // If registration fails the process only loses the wait at its exit.
        unsafe { libc::atexit(at_exit) };
    });
}

/// Wraps the process's panic hook, once, so that a panic on a goroutine is preceded by a line
/// naming it (Go prints "goroutine N"); std's own line names only the thread, an M. A hook the
/// program sets later replaces this one, as hooks do.
fn name_goroutines_in_panics() {
    static WRAPPED: std::sync::Once = std::sync::Once::new();
    WRAPPED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(id) = goro_sched::current_goroutine_id() {
                eprintln!("goroutine {id} panicked:");
            }
            previous(info);
        }));
    });
}

/// A `Config` setting from a builder flag.
fn promised(on: bool) -> goro_sched::Promised {
    if on {
        // SAFETY: the flag is set only by the builder's `unsafe` methods with the same
        // contracts (`migrate_goroutines`, `stash_parked_stacks`, `..._unchecked`); the trapped
        // stash is passed on only while the trap runs.
        unsafe { goro_sched::Promised::on() }
    } else {
        goro_sched::Promised::OFF
    }
}

/// Whether `#[global_allocator]` is `GoroAlloc`: a fresh `Box` must land in goro's heap.
fn global_allocator_is_goros() -> bool {
    let probe = Box::new(0u64);
    goro_alloc::is_goro_heap(std::ptr::from_ref(&*probe) as usize)
}

fn env_parse<T>(
    name: &'static str,
    expected: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>, BuildError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(value) => parse(value.trim())
            .map(Some)
            .ok_or(BuildError::Environment {
                name,
                value,
                expected,
            }),
    }
}

fn parse_usize(text: &str) -> Option<usize> {
    text.parse().ok()
}

fn parse_percent(text: &str) -> Option<i32> {
    if text.eq_ignore_ascii_case("off") {
        Some(-1)
    } else {
        text.parse().ok()
    }
}

/// Go's GOMEMLIMIT syntax: a number with an optional B, KiB, MiB, GiB or TiB suffix.
pub(crate) fn parse_bytes(text: &str) -> Option<usize> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_like_gomemlimit() {
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("10B"), Some(10));
        assert_eq!(parse_bytes("1GB"), None);
        assert_eq!(parse_bytes("MiB"), None);
    }

    #[test]
    fn percent_parses_off() {
        assert_eq!(parse_percent("off"), Some(-1));
        assert_eq!(parse_percent("50"), Some(50));
        assert_eq!(parse_percent("x"), None);
    }
}
