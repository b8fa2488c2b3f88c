// A traced type with a user `Drop`: its drop would run while sweeping, when the objects its
// `Gc`s point to may already be freed.
use goro::Gc;

#[derive(goro::Trace)]
struct Node {
    next: Option<Gc<Node>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(next) = &self.next {
            let _ = next.next.is_some();
        }
    }
}

fn main() {}
