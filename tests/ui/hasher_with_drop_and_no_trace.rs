// A map's hasher with a user `Drop` and no `Trace` impl: the map's `Trace` impl needs `S: Trace`.
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasher;

struct MyHasher {
    seed: u64,
}

impl Drop for MyHasher {
    fn drop(&mut self) {}
}

impl BuildHasher for MyHasher {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher::new()
    }
}

#[derive(goro::Trace)]
struct Table {
    map: HashMap<u32, u32, MyHasher>,
}

fn main() {}
