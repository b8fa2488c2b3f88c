// What the derive's checks must not reject: a user type named like a std cell (the syntactic
// check looks for a `Gc` inside `Cell<..>`, `RefCell<..>`, ...), an `Arc` holding a `Gc` (traced
// through), a generic type, and `#[repr(C)]`.
use goro::{Gc, GcCell};
use std::sync::Arc;

#[derive(goro::Trace)]
struct Cell {
    alive: bool,
}

#[derive(goro::Trace)]
struct Mutex<T> {
    inner: T,
}

#[derive(goro::Trace)]
#[repr(C)]
struct Board {
    cell: Cell,
    guarded: Mutex<u64>,
    shared: Arc<Gc<u64>>,
    mutable: GcCell<Vec<Gc<u64>>>,
    generic: Wrapper<Option<Gc<u64>>>,
}

#[derive(goro::Trace)]
struct Wrapper<T> {
    value: T,
}

fn main() {
    let _ = std::mem::size_of::<Board>();
}
