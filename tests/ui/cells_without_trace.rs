// `Cell`, `RefCell` and `Mutex` have no `Trace` impl: a store through them would bypass the
// collector. `GcCell` is the traced cell.
use goro::Gc;
use std::cell::{Cell, RefCell};
use std::sync::Mutex;

#[derive(goro::Trace)]
struct Shared {
    cell: Cell<Option<Gc<u64>>>,
    ref_cell: RefCell<Vec<Gc<u64>>>,
    mutex: Mutex<Option<Gc<u64>>>,
}

fn main() {}
