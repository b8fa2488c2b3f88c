// The derive bounds every type parameter by `Trace`: a parameter that is not `Trace` is rejected
// where the type is used, with a note at the parameter.
use goro::Gc;
use std::cell::Cell;

#[derive(goro::Trace)]
struct Wrapper<T> {
    value: T,
}

fn main() {
    let _ = Gc::new(Wrapper { value: Cell::new(1u8) });
}
