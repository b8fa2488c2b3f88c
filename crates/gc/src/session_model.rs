//! A loom model of how a mark session ends (helper.rs): markers that share work through packets
//! on a locked list, and a driver that decides from one counter, `PENDING` (markers holding work
//! plus packets on the list), that no work is left anywhere. In every interleaving the driver
//! must decide only once every item has been marked, and must see every mark (a mark is plain
//! memory here, so loom reports a read that the decision does not order after its write).
//!
//! The model copies the protocol's steps and orderings: `share` counts a packet before it is
//! linked, a marker that runs dry takes a packet before it gives its unit back, an idle marker
//! takes over a packet's unit, and only the driver reads the count. Items form a small tree
//! (item `i` leads to `2i + 1` and `2i + 2`), which the driver starts from its root; the helper
//! starts idle and hungry. The packet list's session stamp is left out (one session), and so is
//! the driver taking the barrier's log, which only the driver does and only while it decides.
//! It fails when the decision's load is Relaxed (a mark unordered before the read) and when a
//! marker gives a unit back while it takes over a packet's (the count touches 0 with work held).
//! `RUSTFLAGS="--cfg loom" cargo test -p goro-gc --release --lib loom` (scripts/check runs it).

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};

/// One session's shared state.
struct Session {
    pending: AtomicUsize,
    hungry: AtomicUsize,
    full: AtomicUsize,
    open: AtomicBool,
    packets: Mutex<Vec<Vec<usize>>>,
    marks: Vec<UnsafeCell<bool>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Driver,
    Helper,
}

impl Session {
    fn new(items: usize) -> Session {
        Session {
            // The driver starts with work: one unit.
            pending: AtomicUsize::new(1),
            hungry: AtomicUsize::new(0),
            full: AtomicUsize::new(0),
            open: AtomicBool::new(true),
            packets: Mutex::new(Vec::new()),
            marks: (0..items).map(|_| UnsafeCell::new(false)).collect(),
        }
    }

    fn process(&self, item: usize, list: &mut Vec<usize>) {
        // SAFETY: each item is reached from one parent only, so one marker writes its mark.
        self.marks[item].with_mut(|mark| unsafe { *mark = true });
        for child in [2 * item + 1, 2 * item + 2] {
            if child < self.marks.len() {
                list.push(child);
            }
        }
    }

    /// Shares the oldest half of `list`, rounded up (the real threshold is larger, but the
    /// model's tree is small).
    fn share(&self, list: &mut Vec<usize>) {
        let count = list.len().div_ceil(2);
        let packet: Vec<usize> = list.drain(..count).collect();
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.packets.lock().unwrap().push(packet);
        self.full.fetch_add(1, Ordering::Relaxed);
    }

    fn take_packet(&self, list: &mut Vec<usize>) -> bool {
        let Some(packet) = self.packets.lock().unwrap().pop() else {
            return false;
        };
        self.full.fetch_sub(1, Ordering::Relaxed);
        list.extend(packet);
        true
    }

    fn mark_own(&self, list: &mut Vec<usize>) {
        while let Some(item) = list.pop() {
            if self.hungry.load(Ordering::Relaxed) > self.full.load(Ordering::Relaxed)
                && !list.is_empty()
            {
                self.share(list);
            }
            self.process(item, list);
        }
    }

    /// `helper::mark_in_session`.
    fn mark(&self, mut list: Vec<usize>, role: Role) {
        let mut busy = role == Role::Driver;
        loop {
            if busy {
                self.mark_own(&mut list);
                if !self.take_packet(&mut list) {
                    self.hungry.fetch_add(1, Ordering::Relaxed);
                    self.pending.fetch_sub(1, Ordering::Release);
                    busy = false;
                } else {
                    self.pending.fetch_sub(1, Ordering::Release);
                }
                continue;
            }
            while !busy {
                if self.full.load(Ordering::Relaxed) > 0 && self.take_packet(&mut list) {
                    busy = true;
                } else if role == Role::Driver {
                    if self.pending.load(Ordering::Acquire) == 0 {
                        return;
                    }
                } else if !self.open.load(Ordering::Acquire) {
                    return;
                }
                if busy {
                    self.hungry.fetch_sub(1, Ordering::Relaxed);
                } else {
                    loom::thread::yield_now();
                }
            }
        }
    }
}

/// Explores every interleaving with at most `preemptions` forced thread switches (spin loops
/// make the unbounded space too large to finish).
fn session_ends_after_every_mark(items: usize, preemptions: usize) {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(preemptions);
    model.check(move || {
        let session = Arc::new(Session::new(items));
        let helper = {
            let session = session.clone();
            loom::thread::spawn(move || {
                session.hungry.fetch_add(1, Ordering::Relaxed);
                session.mark(Vec::new(), Role::Helper);
            })
        };
        session.mark(vec![0], Role::Driver);
        for (item, mark) in session.marks.iter().enumerate() {
            // SAFETY: the decision ordered every marker's writes before this read (loom checks).
            assert!(mark.with(|mark| unsafe { *mark }), "item {item} unmarked");
        }
        assert!(session.packets.lock().unwrap().is_empty());
        session.open.store(false, Ordering::Release);
        helper.join().unwrap();
    });
}

#[test]
fn loom_session_ends_after_every_mark_small() {
    session_ends_after_every_mark(3, 3);
}

#[test]
fn loom_session_ends_after_every_mark() {
    session_ends_after_every_mark(5, 3);
}
