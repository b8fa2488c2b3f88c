// `Rc` has no `Trace` impl: the `Gc` inside would be hidden from the collector. The derive names
// `Gc` (and `Gc<GcCell<T>>` for `Rc<RefCell<T>>`) on the field.
use goro::Gc;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(goro::Trace)]
struct Graph {
    shared: Rc<Gc<u64>>,
    shared_mut: Rc<RefCell<Gc<u64>>>,
}

fn main() {}
