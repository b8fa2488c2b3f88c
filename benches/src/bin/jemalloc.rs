//! The workloads' `jemalloc` implementations, in a process whose global allocator is jemalloc.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    goro_bench::binary_main(goro_bench::Binary::Jemalloc)
}
