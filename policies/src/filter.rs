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
    /// The node lacks a feature `--constraint` asks for (or, for counts and matching OR,
    /// too few nodes have them: a whole-job reason then).
    Features,
    /// `-x/--exclude` names the node, or a `-w/--nodelist` node cannot take the job.
    NodeList,
    /// The node is in a reservation the job is not part of, or outside the job's.
    Reserved,
    /// `--exclusive` or `--mem=0` needs an idle node, and something runs there.
    Exclusive,
    /// Not enough free CPUs for the node's tasks (`--ntasks-per-node`, `--mincpus`).
    Tasks,
    /// Not enough free memory for `--mem-per-cpu` times the node's CPUs.
    MemPerCpu,
    /// Not enough free memory for `--mem-per-gpu` times the node's GPUs.
    MemPerGpu,
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
            RejectReason::Features => "features",
            RejectReason::NodeList => "nodelist",
            RejectReason::Reserved => "reserved",
            RejectReason::Exclusive => "exclusive",
            RejectReason::Tasks => "tasks",
            RejectReason::MemPerCpu => "mem-per-cpu",
            RejectReason::MemPerGpu => "mem-per-gpu",
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

/// The node belongs to the job's partition (a node may be in several).
pub struct PartitionFilter;

impl Filter for PartitionFilter {
    fn name(&self) -> &'static str {
        "partition"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if node.in_partition(&job.partition) {
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

/// Enough free memory (when the job asked for memory per node; per CPU and per GPU are
/// [`MemPerCpuFilter`] and [`MemPerGpuFilter`]).
pub struct MemoryFilter;

impl Filter for MemoryFilter {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        let per_unit = job.tasks.mem_per_cpu_mb > 0 || job.tasks.mem_per_gpu_mb > 0;
        if per_unit || node.memory_free_mb >= job.mem_per_node_mb {
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

/// `--constraint`: the node has the features the job's per-node test asks for.
pub struct FeatureFilter;

impl Filter for FeatureFilter {
    fn name(&self) -> &'static str {
        "features"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        match &job.constraint {
            Some(c) if !c.node_passes(&node.features) => reject(
                RejectReason::Features,
                format!(
                    "has features {}, job needs {}",
                    if node.features.is_empty() {
                        "(none)".to_string()
                    } else {
                        node.features.join(",")
                    },
                    c.text
                ),
            ),
            _ => Ok(()),
        }
    }
}

/// `-x/--exclude`: the node is not excluded.
pub struct NodeListFilter;

impl Filter for NodeListFilter {
    fn name(&self) -> &'static str {
        "nodelist"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if job.exc_nodes.contains(&node.name) {
            return reject(RejectReason::NodeList, "excluded by --exclude".into());
        }
        Ok(())
    }
}

/// Reservations: a job outside a reservation stays off its nodes while it would run; a job
/// inside one uses only its nodes.
pub struct ReservationFilter;

impl Filter for ReservationFilter {
    fn name(&self) -> &'static str {
        "reservation"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if let Some(only) = &job.nodes_only {
            if !only.contains(&node.name) {
                return reject(
                    RejectReason::Reserved,
                    "not in the job's reservation".into(),
                );
            }
            return Ok(());
        }
        match &job.nodes_reserved {
            Some(taken) if taken.contains(&node.name) => reject(
                RejectReason::Reserved,
                "reserved for others while the job would run".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// `--exclusive` and `--mem=0`: the node is idle (nothing held on it).
pub struct ExclusiveFilter;

impl Filter for ExclusiveFilter {
    fn name(&self) -> &'static str {
        "exclusive"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if !(job.exclusive || job.mem_whole_node) || node.is_idle() {
            return Ok(());
        }
        let why = if job.exclusive {
            "--exclusive needs an idle node"
        } else {
            "--mem=0 needs all of the node's memory"
        };
        reject(
            RejectReason::Exclusive,
            format!(
                "{why}; {} of {} CPUs and {} of {} MiB are free",
                node.cpus_free, node.cpus_total, node.memory_free_mb, node.memory_total_mb
            ),
        )
    }
}

/// `--ntasks-per-node` and `--mincpus`: the node has CPUs for its tasks.
pub struct TasksFilter;

impl Filter for TasksFilter {
    fn name(&self) -> &'static str {
        "tasks"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        let t = &job.tasks;
        if (t.per_node == 0 && t.min_cpus == 0) || node.cpus_free >= job.cpus_per_node {
            return Ok(());
        }
        let detail = if t.per_node > 0 {
            format!(
                "needs {} tasks x {} CPUs = {} CPUs, has {} free",
                t.per_node,
                t.cpus_per_task.max(1),
                job.cpus_per_node,
                node.cpus_free
            )
        } else {
            format!(
                "needs at least {} CPUs (--mincpus), has {} free",
                job.cpus_per_node, node.cpus_free
            )
        };
        reject(RejectReason::Tasks, detail)
    }
}

/// `--mem-per-cpu`: free memory for every CPU the job takes on the node.
pub struct MemPerCpuFilter;

impl Filter for MemPerCpuFilter {
    fn name(&self) -> &'static str {
        "mem-per-cpu"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        let per = job.tasks.mem_per_cpu_mb;
        if per == 0 || node.memory_free_mb >= job.mem_per_node_mb {
            return Ok(());
        }
        reject(
            RejectReason::MemPerCpu,
            format!(
                "needs {} CPUs x {per} MiB = {} MiB, has {} MiB free",
                job.cpus_per_node, job.mem_per_node_mb, node.memory_free_mb
            ),
        )
    }
}

/// `--mem-per-gpu`: free memory for every GPU the job takes on the node.
pub struct MemPerGpuFilter;

impl Filter for MemPerGpuFilter {
    fn name(&self) -> &'static str {
        "mem-per-gpu"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        let per = job.tasks.mem_per_gpu_mb;
        if per == 0 || node.memory_free_mb >= job.mem_per_node_mb {
            return Ok(());
        }
        reject(
            RejectReason::MemPerGpu,
            format!(
                "needs {} GPUs x {per} MiB = {} MiB, has {} MiB free",
                job.gpus_per_node, job.mem_per_node_mb, node.memory_free_mb
            ),
        )
    }
}
