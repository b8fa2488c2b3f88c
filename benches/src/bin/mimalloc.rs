//! The workloads' `mimalloc` implementations, in a process whose global allocator is mimalloc.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    goro_bench::binary_main(goro_bench::Binary::Mimalloc)
}
