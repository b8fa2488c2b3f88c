//! A runtime's settings ([`Config`]) and the limits they are checked against. Imports nothing of
//! the scheduler: the types that hold a `Config` (`Sched`, `StashMode::choose`) sit above it.

/// Go's maximum stack size: the default of `Config::max_stack_size`.
pub const DEFAULT_MAX_STACK_SIZE: usize = 1 << 30;

/// The most Ps `set_max_procs` can enable.
pub const MAX_PROCS: usize = 256;

/// Settings of one runtime.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of Ps (GOMAXPROCS), and so of worker threads. At least 1.
    pub procs: usize,
    /// Usable bytes of each goroutine stack.
    pub stack_size: usize,
    /// Called on every M thread (the caller of `run` included) before it schedules anything.
    pub on_thread_start: Option<fn()>,
    /// Called on every M thread after it has stopped scheduling.
    pub on_thread_stop: Option<fn()>,
    /// Called on an M thread about to sleep for want of work, at most once per sysmon epoch
    /// (half a second) per M: the facade gives the thread's allocator cache back here.
    pub on_idle: Option<fn()>,
    /// `GORO_DEBUG=schedtrace=MS`: print Go's scheduler line this often.
    pub schedtrace: Option<std::time::Duration>,
    /// The most bytes a goroutine's stacks may hold together, its slot and the segments
    /// `maybe_grow` adds (Go's 1 GiB maximum stack size).
    pub max_stack_size: usize,
    /// Let goroutines that have run move to another M at their blocking points (a readied
    /// goroutine runs on the M that readied it or wherever a thief takes it), as Go's do. Sound
    /// only under the contract of `goro::Builder::migrate_goroutines`.
    pub migrate: Promised,
    /// Stash long-parked goroutines' stacks (see `shrink`) even where the stash trap cannot run,
    /// instead of only releasing the pages below their stack pointers. Sound only under the
    /// contract of `goro::Builder::stash_parked_stacks`. (Where the trap runs, stacks are
    /// stashed under it whatever this says.)
    pub stash_parked_stacks: Promised,
    /// The kernel ids of other threads of the runtime's that the deadlock check must not count
    /// as ones that could wake a goroutine, if they run (the collector's sweeper, mark
    /// helpers and mark worker).
    pub runtime_threads: Option<fn() -> Vec<i32>>,
    /// Whether the collector is at work in a way that may still wake or start a goroutine
    /// without any goroutine running (its sweeper runs drop glue, its cleanups start a
    /// goroutine): while it says so, the deadlock check cannot prove a deadlock.
    pub collector_busy: Option<fn() -> bool>,
    /// Whether a panic that no `JoinHandle` can see any more (the handle was dropped) ends the
    /// process with exit status 2, as an unrecovered panic in any goroutine does in Go. When
    /// false it is only printed (by the panic hook) and the program goes on.
    pub detached_panics_exit: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            procs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stack_size: goro_stack::DEFAULT_STACK_SIZE,
            on_thread_start: None,
            on_thread_stop: None,
            on_idle: None,
            schedtrace: None,
            stash_parked_stacks: Promised::OFF,
            migrate: Promised::OFF,
            max_stack_size: DEFAULT_MAX_STACK_SIZE,
            runtime_threads: None,
            collector_busy: None,
            detached_panics_exit: true,
        }
    }
}

/// A setting of [`Config`] that is sound only under a promise its user makes: it can be turned
/// on only in an `unsafe` block, so that safe code using goro-sched directly cannot bypass the
/// contracts `goro::Builder` puts on the same settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Promised(bool);

impl Promised {
    /// Off: the safe default.
    pub const OFF: Promised = Promised(false);

    /// On.
    ///
    /// # Safety
    /// May be called only under the contract of the setting it is given to (see the field of
    /// [`Config`]: `goro::Builder::migrate_goroutines` for `migrate`,
    /// `goro::Builder::stash_parked_stacks` or `stash_parked_stacks_unchecked` for
    /// `stash_parked_stacks`).
    pub const unsafe fn on() -> Promised {
        Promised(true)
    }

    /// Whether it is on.
    pub const fn is_on(self) -> bool {
        self.0
    }
}
