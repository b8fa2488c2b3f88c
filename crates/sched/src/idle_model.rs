//! A loom model of the whole wake-up handshake of `proc`'s essay: an M that gives up spinning
//! ([A]), raises its idle flag and looks again ([B]), releases its P and looks at the global queue
//! once more ([C]), then parks; against a goroutine readied for it (door 2) and a new goroutine
//! queued from a thread without a P (door 1). In every interleaving the M must end up with the
//! work: a lost wake-up shows as a deadlock (the M parked for good), which loom reports.
//!
//! The model copies the protocol's shared-memory steps, with `ThreadParker` itself; the queues'
//! locks stand for the real queues' (`ready` under its lock, the global queue, `pidle`).
//! `RUSTFLAGS="--cfg loom" cargo test -p goro-sched --release --lib loom` (scripts/check runs it).

use crate::lock::ThreadParker;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use loom::sync::{Arc, Mutex};

/// The shared state of one P's M and the threads that hand it work.
#[derive(Default)]
struct World {
    /// Ms spinning (the M of the model starts as one).
    spinning: AtomicUsize,
    /// The M's idle flag.
    idle: AtomicBool,
    /// Free Ps, counted under the `pidle` lock and read by submitters after a fence.
    idle_ps: Mutex<usize>,
    idle_ps_hint: AtomicUsize,
    /// The M's `ready` queue (readied goroutines bound to it).
    ready: Mutex<Vec<u32>>,
    /// The global queue (new goroutines from threads without a P).
    global: Mutex<Vec<u32>>,
    parker: ThreadParker,
}

impl World {
    fn spinning_m() -> Arc<World> {
        let world = World::default();
        world.spinning.store(1, Ordering::SeqCst);
        Arc::new(world)
    }

    fn look(&self) -> Option<u32> {
        let readied = self.ready.lock().unwrap().pop();
        readied.or_else(|| self.global.lock().unwrap().pop())
    }

    /// `find_runnable` after its spin found nothing: give up spinning, go idle, release the P,
    /// park; then look once more (the real M loops; one wake-up is all the model hands out).
    fn m_goes_idle(&self) -> Option<u32> {
        self.spinning.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst); // [A]
        self.idle.store(true, Ordering::SeqCst); // [B]
        if let Some(work) = self.look() {
            self.idle.store(false, Ordering::SeqCst);
            return Some(work);
        }
        {
            let mut free = self.idle_ps.lock().unwrap(); // release_p
            *free += 1;
            self.idle_ps_hint.store(*free, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst); // [C]
        if let Some(work) = self.global.lock().unwrap().pop() {
            self.idle.store(false, Ordering::SeqCst);
            return Some(work);
        }
        self.parker.park();
        self.idle.store(false, Ordering::SeqCst);
        self.look()
    }

    /// Unparks the M if it is idle; of several wakers exactly one swaps the flag.
    fn wake_if_idle(&self) {
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            self.parker.unpark();
        }
    }

    /// Door 2, `ready`: the goroutine goes to its home M's queue, and that M is woken.
    fn ready(&self, work: u32) {
        self.ready.lock().unwrap().push(work);
        fence(Ordering::SeqCst); // [A], [B]
        if self.spinning.load(Ordering::SeqCst) > 0 {
            return; // the spinner looks after its fence
        }
        self.wake_if_idle();
    }

    /// Door 1 from a thread without a P: the global queue, and an M only if a P is free.
    fn submit(&self, work: u32) {
        self.global.lock().unwrap().push(work);
        fence(Ordering::SeqCst); // [A], [C]
        if self.spinning.load(Ordering::SeqCst) > 0 || self.idle_ps_hint.load(Ordering::SeqCst) == 0
        {
            return; // a spinner looks, or the M still holds its P and looks after releasing it
        }
        self.wake_if_idle();
    }
}

#[test]
fn loom_an_idle_m_gets_a_goroutine_readied_for_it() {
    loom::model(|| {
        let world = World::spinning_m();
        let readier = {
            let world = world.clone();
            loom::thread::spawn(move || world.ready(7))
        };
        assert_eq!(world.m_goes_idle(), Some(7));
        readier.join().unwrap();
    });
}

#[test]
fn loom_an_idle_m_gets_a_goroutine_queued_globally_without_a_p() {
    loom::model(|| {
        let world = World::spinning_m();
        let submitter = {
            let world = world.clone();
            loom::thread::spawn(move || world.submit(9))
        };
        assert_eq!(world.m_goes_idle(), Some(9));
        submitter.join().unwrap();
    });
}
