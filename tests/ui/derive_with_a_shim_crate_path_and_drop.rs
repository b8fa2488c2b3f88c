// `#[trace(crate = ..)]` pointing at a shim that re-exports `Trace` and `Tracer` but brings its
// own helper traits: the no-`Drop` check must not depend on that path.
use goro::Gc;

mod shim {
    pub use goro::gc::{Trace, Tracer};
    pub mod __private {
        pub trait NoUserDrop {}
    }
}

#[derive(goro::Trace)]
#[trace(crate = "crate::shim")]
struct Node {
    next: Option<Gc<Node>>,
}

impl Drop for Node {
    fn drop(&mut self) {}
}

fn main() {}
