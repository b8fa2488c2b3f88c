// A packed struct's fields may be unaligned: tracing cannot take a reference to them, and the
// conservative scan would miss an unaligned `Gc`.
use goro::Gc;

#[derive(goro::Trace)]
#[repr(C, packed)]
struct Packed {
    tag: u8,
    next: Option<Gc<Packed>>,
}

#[derive(goro::Trace)]
#[repr(packed(2))]
struct PackedTwo {
    tag: u8,
    value: Gc<u64>,
}

fn main() {}
