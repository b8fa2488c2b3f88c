//! goro-bench: the workloads of DESIGN.md section 6, for goro and its peers.
//!
//! Every run prints one final line `RESULT <workload> <impl> key=value ...` with at least
//! `total_ms` (wall time of the measured part) and `vmhwm_kib` (peak RSS), so that any two
//! implementations compare by key. Each implementation runs in its own process, with the global
//! allocator its users would have: `goro` in the `goro-bench-goro` binary (GoroAlloc), the peers
//! in `goro-bench` (the system allocator).

pub mod binary_trees;
pub mod report;
