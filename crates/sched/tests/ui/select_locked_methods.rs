// The steps of a select that assume channel locks are held are not part of the public API:
// neither a case nor its type-erased form lets safe (or unsafe) code call them.
use goro_sched::chan::{__select, channel};

fn main() {
    let (_tx, rx) = channel::<u8>(1);
    let mut case = __select::RecvCase::new(&rx);
    // SAFETY: none: this line must not compile (the method is private), whatever the block says.
    unsafe { case.poll_locked() };
    case.dequeue_locked();
    let erased = case.as_case();
    let _ = erased.case;
}
