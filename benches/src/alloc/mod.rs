//! The alloc family of workloads.

use crate::Workload;

/// The workloads of this family.
pub const WORKLOADS: &[Workload] = &[];
