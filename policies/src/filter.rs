//! Feasibility filters: each rule is one small struct that says yes or why not.
//!
//! Filters run cheapest first (see [`crate::pipeline::Pipeline::new`]); the first reject
//! ends the check for that node. Every reject carries an enum key (counted in
//! [`crate::PlacementMetrics`]) and a human message (shown by the CLI), as Nomad's
//! `FilterConstraint*` and Volcano's reasons do.

use crate::snapshot::{NodeView, PendingJob};
use std::fmt;

/// Why a node cannot take a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// The node is in another partition.
    Partition,
    /// The node is down or its agent is not connected.
    NodeDown,
    /// Not enough free GPUs of the requested type.
    Gpus,
    /// Not enough free CPUs.
    Cpus,
    /// Not enough free memory.
    Memory,
    /// No room for the MIG slices asked for (see [`crate::mig::MigFilter`]).
    Mig,
    /// A multi-node job's nodes fit, but not under the `--switches` leaf count (a whole-job
    /// reason, never a single node's).
    Switches,
}

impl RejectReason {
    /// Stable lower-case name, used in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Partition => "partition",
            RejectReason::NodeDown => "node-down",
            RejectReason::Gpus => "gpus",
            RejectReason::Cpus => "cpus",
            RejectReason::Memory => "memory",
            RejectReason::Mig => "mig",
            RejectReason::Switches => "switches",
        }
    }
}

/// A filter's "no", with a message naming the numbers involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The rule that failed.
    pub reason: RejectReason,
    /// Human-readable detail, e.g. "needs 9 h100 GPUs, has 8 free".
    pub detail: String,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// One feasibility rule.
pub trait Filter {
    /// Name for logs and `berth why`.
    fn name(&self) -> &'static str;
    /// `Ok` when `node` can hold one node's share of `job` now.
    ///
    /// # Errors
    /// A [`Reject`] saying which resource is short and by how much.
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject>;
}

fn reject(reason: RejectReason, detail: String) -> Result<(), Reject> {
    Err(Reject { reason, detail })
}

/// The node belongs to the job's partition.
pub struct PartitionFilter;

impl Filter for PartitionFilter {
    fn name(&self) -> &'static str {
        "partition"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if node.partition == job.partition {
            return Ok(());
        }
        reject(
            RejectReason::Partition,
            format!(
                "node is in partition {}, job wants {}",
                node.partition, job.partition
            ),
        )
    }
}

/// The node is up.
pub struct NodeUpFilter;

impl Filter for NodeUpFilter {
    fn name(&self) -> &'static str {
        "node-up"
    }
    fn check(&self, _job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if node.up {
            return Ok(());
        }
        reject(RejectReason::NodeDown, "node is down".to_string())
    }
}

/// Enough free GPUs of the requested type; for a fraction job, one time-sliced GPU of the
/// type with a share and the job's milli unheld.
pub struct GpuFilter;

impl Filter for GpuFilter {
    fn name(&self) -> &'static str {
        "gpus"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if job.gpu_milli > 0 {
            return fraction_fits(job, node);
        }
        let free = node.free_gpus(&job.gpu_type).count();
        if free >= job.gpus_per_node as usize {
            return Ok(());
        }
        let kind = if job.gpu_type.is_empty() {
            String::new()
        } else {
            format!("{} ", job.gpu_type)
        };
        reject(
            RejectReason::Gpus,
            format!("needs {} {kind}GPUs, has {free} free", job.gpus_per_node),
        )
    }
}

fn fraction_fits(job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
    let typed = |g: &&crate::GpuView| job.gpu_type.is_empty() || g.gres_type == job.gpu_type;
    if node
        .gpus
        .iter()
        .filter(typed)
        .any(|g| g.fits_fraction(job.gpu_milli))
    {
        return Ok(());
    }
    let shared: Vec<u32> = node
        .gpus
        .iter()
        .filter(typed)
        .filter_map(|g| g.shares.map(|s| if s.free > 0 { s.milli_free } else { 0 }))
        .collect();
    let detail = match shared.iter().max() {
        None => format!(
            "needs {} GPU milli on a time-sliced GPU, has no time-sliced {}GPU",
            job.gpu_milli,
            if job.gpu_type.is_empty() {
                String::new()
            } else {
                format!("{} ", job.gpu_type)
            }
        ),
        Some(most) => format!(
            "needs {} GPU milli on a time-sliced GPU, has at most {most} free on one",
            job.gpu_milli
        ),
    };
    reject(RejectReason::Gpus, detail)
}

/// Enough free CPUs.
pub struct CpuFilter;

impl Filter for CpuFilter {
    fn name(&self) -> &'static str {
        "cpus"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if node.cpus_free >= job.cpus_per_node {
            return Ok(());
        }
        reject(
            RejectReason::Cpus,
            format!(
                "needs {} CPUs, has {} free",
                job.cpus_per_node, node.cpus_free
            ),
        )
    }
}

/// Enough free memory (when the job asked for memory).
pub struct MemoryFilter;

impl Filter for MemoryFilter {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if node.memory_free_mb >= job.mem_per_node_mb {
            return Ok(());
        }
        reject(
            RejectReason::Memory,
            format!(
                "needs {} MiB, has {} MiB free",
                job.mem_per_node_mb, node.memory_free_mb
            ),
        )
    }
}
