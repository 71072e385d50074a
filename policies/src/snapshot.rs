//! The policy's view of the cluster: plain data, built by berthd from its replicated state.
//!
//! These types are deliberately not the wire (proto) types: the policy sees only what it
//! decides on, so the state machine can change its encoding without touching placement.

/// One GPU as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    /// NVML UUID (`GPU-…`); decisions name GPUs by UUID, never by count.
    pub uuid: String,
    /// NVML index on its node (for `SLURM_JOB_GPUS`).
    pub index: u32,
    /// GRES type, e.g. `h100`.
    pub gres_type: String,
    /// Not held by any job.
    pub free: bool,
}

/// One node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Unique node name.
    pub name: String,
    /// Partition (node pool) the node belongs to.
    pub partition: String,
    /// Accepting work (registered and its agent alive).
    pub up: bool,
    /// CPUs of the node.
    pub cpus_total: u32,
    /// CPUs not held by running jobs.
    pub cpus_free: u32,
    /// Memory of the node, MiB.
    pub memory_total_mb: u64,
    /// Memory not held by running jobs, MiB.
    pub memory_free_mb: u64,
    /// Every GPU of the node, free or not, in index order.
    pub gpus: Vec<GpuView>,
}

impl NodeView {
    /// Free GPUs matching `gres_type` (empty matches any), lowest index first.
    pub fn free_gpus<'a>(&'a self, gres_type: &'a str) -> impl Iterator<Item = &'a GpuView> + 'a {
        self.gpus
            .iter()
            .filter(move |g| g.free && (gres_type.is_empty() || g.gres_type == gres_type))
    }
}

/// The whole cluster at one Raft index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// Nodes sorted by name (the caller guarantees it; ties break on name).
    pub nodes: Vec<NodeView>,
}

impl ClusterSnapshot {
    /// Marks the resources of `decision` as held, so the next job in the same pass sees them
    /// taken.
    ///
    /// # Panics
    /// If the decision names a node or GPU that is not in the snapshot or a GPU already held:
    /// decisions come from this snapshot, so that is a broken invariant.
    pub fn consume(&mut self, decision: &Decision) {
        for grant in &decision.nodes {
            let node = self
                .nodes
                .iter_mut()
                .find(|n| n.name == grant.node)
                .unwrap_or_else(|| {
                    panic!(
                        "decision for job {} names unknown node {}",
                        decision.job_id, grant.node
                    )
                });
            node.cpus_free = node.cpus_free.checked_sub(grant.cpus).unwrap_or_else(|| {
                panic!(
                    "job {} takes {} cpus, node {} has {}",
                    decision.job_id, grant.cpus, node.name, node.cpus_free
                )
            });
            node.memory_free_mb = node.memory_free_mb.saturating_sub(grant.mem_mb);
            for uuid in &grant.gpu_uuids {
                let gpu = node.gpus.iter_mut().find(|g| &g.uuid == uuid);
                match gpu {
                    Some(g) if g.free => g.free = false,
                    Some(_) => panic!(
                        "job {} granted GPU {uuid} which is already held",
                        decision.job_id
                    ),
                    None => panic!(
                        "job {} granted GPU {uuid} not on node {}",
                        decision.job_id, grant.node
                    ),
                }
            }
        }
    }

    /// The same nodes with every resource free and every node up: total capacity.
    pub fn idle(&self) -> ClusterSnapshot {
        let mut idle = self.clone();
        for node in &mut idle.nodes {
            node.up = true;
            node.cpus_free = node.cpus_total;
            node.memory_free_mb = node.memory_total_mb;
            for gpu in &mut node.gpus {
                gpu.free = true;
            }
        }
        idle
    }
}

/// A job waiting to be placed: what it needs on each of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingJob {
    /// Job id (also the FIFO order).
    pub id: u64,
    /// Partition; the caller resolves the default partition before calling.
    pub partition: String,
    /// Number of nodes, all-or-nothing.
    pub nodes: u32,
    /// GPUs needed on every node.
    pub gpus_per_node: u32,
    /// GRES type wanted (empty: any).
    pub gpu_type: String,
    /// CPUs needed on every node.
    pub cpus_per_node: u32,
    /// Memory needed on every node, MiB (0: not requested).
    pub mem_per_node_mb: u64,
}

/// Resources granted to a job on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGrant {
    /// Node name.
    pub node: String,
    /// Granted GPUs, by UUID.
    pub gpu_uuids: Vec<String>,
    /// NVML indexes of the same GPUs.
    pub gpu_indices: Vec<u32>,
    /// CPUs held.
    pub cpus: u32,
    /// Memory held, MiB.
    pub mem_mb: u64,
}

/// Start `job_id` on these nodes (the first one runs the batch script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The job placed.
    pub job_id: u64,
    /// One grant per node, in the order chosen.
    pub nodes: Vec<NodeGrant>,
}
