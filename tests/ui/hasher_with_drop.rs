// A map's hasher with a user `Drop`: it would run in the sweep when the map's object is freed.
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasher;

#[derive(goro::Trace)]
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
