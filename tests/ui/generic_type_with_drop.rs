// A generic traced type with a user `Drop`: rejected like a plain one, for every parameter.
use goro::Gc;

#[derive(goro::Trace)]
struct Node<T> {
    value: T,
    next: Option<Gc<Node<T>>>,
}

impl<T> Drop for Node<T> {
    fn drop(&mut self) {}
}

fn main() {}
