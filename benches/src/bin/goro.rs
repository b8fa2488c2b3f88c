//! The workloads' `goro` implementations, in a process whose global allocator is GoroAlloc.

#[global_allocator]
static ALLOC: goro::alloc::GoroAlloc = goro::alloc::GoroAlloc;

fn main() -> std::process::ExitCode {
    goro_bench::binary_main(goro_bench::Binary::Goro)
}
