// `Cell`, `RefCell`, `Mutex` and `RwLock` have no `Trace` impl: a store of a `Gc` through them
// would bypass the collector. The derive reports each such field, even nested in a container,
// and names `GcCell`, the traced cell.
use goro::Gc;
use std::cell::{Cell, RefCell};
use std::sync::{Mutex, RwLock};

#[derive(goro::Trace)]
struct Shared {
    cell: Cell<Option<Gc<u64>>>,
    ref_cell: RefCell<Vec<Gc<u64>>>,
    mutex: Mutex<Option<Gc<u64>>>,
    rw_lock: std::sync::RwLock<Gc<u64>>,
    nested: Vec<RefCell<Gc<u64>>>,
}

#[derive(goro::Trace)]
enum Slot {
    Empty,
    Full(RwLock<Gc<u64>>),
}

fn main() {}
