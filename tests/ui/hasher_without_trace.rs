// A map's hasher that may hold a `Gc` the collector would not see: it needs a `Trace` impl.
use goro::Gc;
use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasher;

struct MyHasher {
    keep: Gc<u64>,
}

impl BuildHasher for MyHasher {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher::new()
    }
}

#[derive(goro::Trace)]
struct Set {
    set: HashSet<u32, MyHasher>,
}

fn main() {}
