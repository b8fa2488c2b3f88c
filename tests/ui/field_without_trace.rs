// A field whose type has no `Trace` impl and holds no `Gc` the derive can see: the compiler's
// error, from the `Trace` bound, is reported on the field's type.
use std::cell::Cell;

struct Counter {
    hits: u64,
}

#[derive(goro::Trace)]
struct Stats {
    counter: Counter,
    last: Cell<u64>,
}

fn main() {}
