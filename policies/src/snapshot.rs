//! The policy's view of the cluster: plain data, built by berthd from its replicated state.
//!
//! These types are deliberately not the wire (proto) types: the policy sees only what it
//! decides on, so the state machine can change its encoding without touching placement.

/// One GPU as placement sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuView {
    /// NVML UUID (`GPU-…`); decisions name GPUs by UUID, never by count.
    pub uuid: String,
    /// NVML index on its node (for `SLURM_JOB_GPUS`).
    pub index: u32,
    /// GRES type, e.g. `h100`.
    pub gres_type: String,
    /// Free for a whole-GPU job: not held by any job, healthy, and not in MIG mode (a
    /// MIG-mode GPU is offered as slices only, see [`crate::mig`]).
    pub free: bool,
    /// MIG mode is on: MIG requests may be placed here (the agent never changes the mode).
    pub mig_enabled: bool,
    /// The card's GPU-instance profiles with legal starts (from the inventory, else
    /// [`crate::mig::builtin_profiles`]); shared, since every card of a model has the same.
    pub mig_profiles: std::sync::Arc<Vec<crate::mig::MigProfile>>,
    /// MIG slices held now (never overlapping).
    pub mig_held: Vec<crate::mig::MigHeld>,
    /// Time-slicing of a healthy GPU offered as several shares (`--gpu-replicas N`, N > 1);
    /// `None`: one job at a time (or not offered at all: unhealthy, MIG mode).
    pub shares: Option<GpuShares>,
}

/// What is left of a time-sliced GPU. A fraction job (`--gpus=0.5`) takes one share and
/// its GPU milli; a whole-GPU request takes one plain share of `plain_milli`. Never more
/// than 1000 milli nor `replicas` shares are held on one GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuShares {
    /// Shares not held.
    pub free: u32,
    /// GPU milli not held, in `[0, 1000]`.
    pub milli_free: u32,
    /// Shares the GPU is offered as (`--gpu-replicas`, at least 2).
    pub replicas: u32,
}

impl GpuShares {
    /// Milli one plain share holds: `1000 / replicas` (rounded down).
    pub fn plain_milli(&self) -> u32 {
        crate::packing::GPU_MILLI / self.replicas.max(1)
    }
}

impl GpuView {
    /// Free GPU milli as packing sees it: a time-sliced GPU's unheld milli while a share
    /// is left, else 1000 for a free GPU and 0 for a held one.
    pub fn milli_free(&self) -> u32 {
        match self.shares {
            Some(s) if s.free > 0 => s.milli_free,
            Some(_) => 0,
            None if self.free => crate::packing::GPU_MILLI,
            None => 0,
        }
    }

    /// Whether one share of `gpu_milli` (a fraction job's) fits here now.
    pub fn fits_fraction(&self, gpu_milli: u32) -> bool {
        self.shares
            .is_some_and(|s| s.free > 0 && s.milli_free >= gpu_milli)
    }

    /// Whether a grant of this GPU with `gpu_milli` ([`NodeGrant::gpu_milli`]; 0: whole
    /// or a plain share) can be held now.
    pub fn can_hold(&self, gpu_milli: u32) -> bool {
        if gpu_milli > 0 {
            self.fits_fraction(gpu_milli)
        } else {
            self.free
        }
    }

    /// Holds a grant of this GPU with `gpu_milli` (as [`GpuView::can_hold`]): one share
    /// and its milli of a time-sliced GPU (which stays free while a plain share is left),
    /// else the whole GPU. Lenient (saturating): views may see a grant twice.
    pub fn hold(&mut self, gpu_milli: u32) {
        match &mut self.shares {
            Some(s) => {
                let m = if gpu_milli > 0 {
                    gpu_milli
                } else {
                    s.plain_milli()
                };
                s.free = s.free.saturating_sub(1);
                s.milli_free = s.milli_free.saturating_sub(m);
                self.free = s.free > 0 && s.milli_free >= s.plain_milli();
            }
            None => self.free = false,
        }
    }

    /// Gives back what [`GpuView::hold`] took.
    pub fn unhold(&mut self, gpu_milli: u32) {
        match &mut self.shares {
            Some(s) => {
                let m = if gpu_milli > 0 {
                    gpu_milli
                } else {
                    s.plain_milli()
                };
                s.free = (s.free + 1).min(s.replicas);
                s.milli_free = (s.milli_free + m).min(crate::packing::GPU_MILLI);
                self.free = s.milli_free >= s.plain_milli();
            }
            None => self.free = true,
        }
    }
}

/// One node as placement sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Unique node name.
    pub name: String,
    /// Partitions (node pools) the node belongs to, comma-separated: a node may be in
    /// several (overlapping partitions), as in its inventory. See
    /// [`NodeView::in_partition`].
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
    /// Features (`--constraint` names), sorted; shared, since a node group's nodes have the
    /// same.
    pub features: std::sync::Arc<[String]>,
    /// Slurm's node `Weight`: of the nodes that fit, the lowest weight is taken first.
    pub weight: u32,
}

impl NodeView {
    /// The partitions the node is in.
    pub fn partitions(&self) -> impl Iterator<Item = &str> {
        self.partition
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }

    /// Whether the node is in `partition`.
    pub fn in_partition(&self, partition: &str) -> bool {
        self.partitions().any(|p| p == partition)
    }

    /// Nothing is held on it: every CPU, every byte of memory and every GPU (whole, share
    /// or MIG slice) is free. `--exclusive` and `--mem=0` jobs need such a node.
    pub fn is_idle(&self) -> bool {
        self.cpus_free == self.cpus_total
            && self.memory_free_mb == self.memory_total_mb
            && self.gpus.iter().all(|g| {
                g.mig_held.is_empty()
                    && (g.free || g.mig_enabled)
                    && g.shares.is_none_or(|s| s.free == s.replicas)
            })
    }

    /// Free GPUs matching `gres_type` (empty matches any), lowest index first.
    pub fn free_gpus<'a>(&'a self, gres_type: &'a str) -> impl Iterator<Item = &'a GpuView> + 'a {
        self.gpus
            .iter()
            .filter(move |g| g.free && (gres_type.is_empty() || g.gres_type == gres_type))
    }
}

/// The whole cluster at one Raft index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSnapshot {
    /// Nodes sorted by name (the caller guarantees it; ties break on name).
    pub nodes: Vec<NodeView>,
    /// Jobs holding resources now (for backfill timelines, quota use, fair-share charges
    /// and preemption). Their grants are already reflected as not free in `nodes`.
    pub running: Vec<RunningJob>,
    /// Usage charged to accounts by jobs that ended, decayed to `usage.as_of_ms`.
    pub usage: crate::fairshare::Usage,
    /// GPU links inside nodes and the network tree across them (empty: placement ignores
    /// topology and takes the lowest free GPU indexes).
    pub topology: std::sync::Arc<crate::topology::Topology>,
    /// The cluster's licenses not held by running jobs (`-L`), by name.
    pub licenses_free: std::collections::BTreeMap<String, u32>,
}

/// A job that holds resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningJob {
    /// Job id.
    pub id: u64,
    /// User who submitted it (per-user limits of its class count it).
    pub user: String,
    /// Leaf account charged (see [`crate::fairshare::AccountTree`]).
    pub account: String,
    /// Priority class (QOS) name.
    pub qos: String,
    /// When it started, ms since the epoch.
    pub start_ms: u64,
    /// When it is expected to end at the latest (start + time limit, or the end of the kill
    /// grace period once it is being preempted); `u64::MAX` when unknown (no time limit).
    pub end_ms: u64,
    /// Already chosen as a preemption victim; it is being killed and is never chosen again.
    pub preempting: bool,
    /// Never a preemption victim: something berth cannot stop runs it (kubelet runs a
    /// Kubernetes pod; a pod group's reservation runs nothing but its members' slots).
    pub pinned: bool,
    /// What it holds, one grant per node.
    pub grants: Vec<NodeGrant>,
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
                    Some(g) if g.can_hold(grant.gpu_milli) => g.hold(grant.gpu_milli),
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
            crate::mig::take(node, &grant.mig_slices);
        }
    }

    /// Returns the resources of `grants` to their nodes (a running job ended). Unknown nodes
    /// and GPUs are ignored: a release may name a node that left the snapshot.
    pub fn release(&mut self, grants: &[NodeGrant]) {
        for grant in grants {
            let Some(node) = self.nodes.iter_mut().find(|n| n.name == grant.node) else {
                continue;
            };
            node.cpus_free = (node.cpus_free + grant.cpus).min(node.cpus_total);
            node.memory_free_mb = (node.memory_free_mb + grant.mem_mb).min(node.memory_total_mb);
            for gpu in node.gpus.iter_mut() {
                if grant.gpu_uuids.contains(&gpu.uuid) {
                    gpu.unhold(grant.gpu_milli);
                }
            }
            crate::mig::give(node, &grant.mig_slices);
        }
    }

    /// Total GPUs, CPUs and memory (MiB) of the up nodes: the denominators of dominant
    /// shares and the capacity at the root of the quota tree.
    pub fn capacity(&self) -> Capacity {
        let mut c = Capacity::default();
        for n in self.nodes.iter().filter(|n| n.up) {
            c.gpus += n.gpus.len() as u64;
            c.cpus += u64::from(n.cpus_total);
            c.memory_mb += n.memory_total_mb;
            for g in &n.gpus {
                match c.gpus_by_type.get_mut(&g.gres_type) {
                    Some(count) => *count += 1,
                    None => {
                        c.gpus_by_type.insert(g.gres_type.clone(), 1);
                    }
                }
            }
        }
        c
    }

    /// The same nodes with every resource free and every node up: total capacity.
    pub fn idle(&self) -> ClusterSnapshot {
        let mut idle = self.clone();
        idle.running.clear();
        for node in &mut idle.nodes {
            node.up = true;
            node.cpus_free = node.cpus_total;
            node.memory_free_mb = node.memory_total_mb;
            for gpu in &mut node.gpus {
                // A MIG-mode GPU stays MIG-only: the mode is the card's, not the load's.
                gpu.free = !gpu.mig_enabled;
                gpu.mig_held.clear();
                if let Some(s) = &mut gpu.shares {
                    s.free = s.replicas;
                    s.milli_free = crate::packing::GPU_MILLI;
                }
            }
        }
        idle
    }
}

/// Totals of the up nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// GPUs.
    pub gpus: u64,
    /// GPUs per GRES type.
    pub gpus_by_type: std::collections::BTreeMap<String, u64>,
    /// CPUs.
    pub cpus: u64,
    /// Memory, MiB.
    pub memory_mb: u64,
}

/// A job waiting to be placed: what it needs on each of its nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Leaf account charged; empty or unknown accounts get the lowest fair-share factor.
    pub account: String,
    /// User who submitted it (for per-user limits of its class).
    pub user: String,
    /// Priority class (QOS); empty means the config's default class.
    pub qos: String,
    /// Submit (or requeue) time, ms since the epoch: the age factor counts from here.
    pub submit_ms: u64,
    /// Wall-clock limit in seconds; 0 means none (backfill then assumes it never ends).
    pub time_limit_s: u64,
    /// Jobs this one was preempted for, and theirs, transitively (bounded): it may never
    /// preempt any of them, which keeps preemption loop-free.
    pub preempted_for: Vec<u64>,
    /// MIG profile wanted on every node (`3g.40gb`); empty: no MIG slices. Slices go on
    /// MIG-mode GPUs only; `gpus_per_node` whole GPUs are asked for besides (usually 0).
    pub mig_profile: String,
    /// MIG slices of `mig_profile` wanted on every node.
    pub mig_per_node: u32,
    /// `--switches=N`: at most this many leaf switches for a multi-node job (0: any).
    pub switches_max: u32,
    /// `--switches=N@WAIT`: how long after `submit_ms` the job waits for `switches_max`
    /// leaves before it takes any placement, ms.
    pub switches_wait_ms: u64,
    /// A fraction of one time-sliced GPU, in GPU milli `(0, 1000)` (`--gpus=0.5` is 500),
    /// with `gpus_per_node == 1`; 0: whole GPUs. It takes one share of a GPU with that much
    /// milli unheld ([`GpuView::fits_fraction`]).
    pub gpu_milli: u32,
    /// `--constraint`, parsed: features its nodes must have.
    pub constraint: Option<std::sync::Arc<crate::constraint::Constraint>>,
    /// `-w/--nodelist`: nodes the job must include (the rest of its count is chosen).
    pub req_nodes: Vec<String>,
    /// `-x/--exclude`: nodes it must not use.
    pub exc_nodes: Vec<String>,
    /// `--exclusive`: idle nodes only, and it gets all their CPUs and whole GPUs.
    pub exclusive: bool,
    /// `--mem=0`: all of each node's memory (so, idle nodes only).
    pub mem_whole_node: bool,
    /// How its tasks spread over nodes: node ranges, per-node task counts, per-CPU and
    /// per-GPU memory. The default (no range) leaves `cpus_per_node` and
    /// `mem_per_node_mb` as given.
    pub tasks: TaskSpread,
    /// Licenses it holds while it runs (`-L name:count`).
    pub licenses: Vec<(String, u32)>,
    /// Nodes reserved for others while it would run (it may not use them).
    pub nodes_reserved: Option<std::sync::Arc<std::collections::BTreeSet<String>>>,
    /// Inside a reservation: the only nodes it may use.
    pub nodes_only: Option<std::sync::Arc<std::collections::BTreeSet<String>>>,
    /// Its partition's priority tier: higher tiers are ordered first (Slurm's
    /// `PriorityTier`).
    pub priority_tier: u32,
    /// `--nice`: subtracted from its multifactor priority.
    pub nice: i32,
}

/// How a job's tasks spread over its nodes (`--ntasks`, `--ntasks-per-node`, `--nodes`
/// ranges, `--mincpus`, `--cpus-per-gpu`, `--mem-per-cpu`, `--mem-per-gpu`), so the
/// per-node need can be recomputed for each node count placement tries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSpread {
    /// The most nodes (`--nodes=MIN-MAX`); 0: exactly `PendingJob::nodes`.
    pub nodes_max: u32,
    /// Of a range, try the fewest nodes first (`--use-min-nodes`, or `--ntasks` without
    /// `--nodes`); otherwise the most first, as Slurm allocates.
    pub fewest_first: bool,
    /// Tasks in all (0: one per node).
    pub ntasks: u32,
    /// `--ntasks-per-node` (0: the tasks spread evenly).
    pub per_node: u32,
    /// CPUs per task (at least 1).
    pub cpus_per_task: u32,
    /// `--cpus-per-gpu`: CPUs per GPU on the node instead of per task (0: none).
    pub cpus_per_gpu: u32,
    /// `--mincpus`: the least CPUs on each node.
    pub min_cpus: u32,
    /// `--mem-per-cpu`, MiB (0: none).
    pub mem_per_cpu_mb: u64,
    /// `--mem-per-gpu`, MiB (0: none).
    pub mem_per_gpu_mb: u64,
}

impl TaskSpread {
    /// Tasks on each of `nodes` nodes: the per-node count, else the tasks spread evenly
    /// (rounded up: the busiest node).
    pub fn tasks_per_node(&self, nodes: u32) -> u32 {
        if self.per_node > 0 {
            self.per_node
        } else {
            self.ntasks.max(1).div_ceil(nodes.max(1))
        }
    }

    /// CPUs each node needs with `nodes` nodes and `gpus` GPUs per node.
    pub fn cpus_per_node(&self, nodes: u32, gpus: u32) -> u32 {
        let by_tasks = if self.cpus_per_gpu > 0 {
            gpus.saturating_mul(self.cpus_per_gpu)
        } else {
            self.tasks_per_node(nodes)
                .saturating_mul(self.cpus_per_task.max(1))
        };
        by_tasks.max(self.min_cpus).max(1)
    }

    /// Memory each node needs, MiB: per CPU or per GPU when asked that way, else `fixed`
    /// (`--mem`, 0: none).
    pub fn mem_per_node_mb(&self, cpus: u32, gpus: u32, fixed: u64) -> u64 {
        if self.mem_per_cpu_mb > 0 {
            self.mem_per_cpu_mb.saturating_mul(u64::from(cpus))
        } else if self.mem_per_gpu_mb > 0 {
            self.mem_per_gpu_mb.saturating_mul(u64::from(gpus))
        } else {
            fixed
        }
    }
}

impl PendingJob {
    /// The same job on exactly `nodes` nodes, with its per-node CPUs and memory for that
    /// count (a node range tries several).
    pub fn with_nodes(&self, nodes: u32) -> PendingJob {
        let mut j = self.clone();
        j.nodes = nodes;
        j.cpus_per_node = self.tasks.cpus_per_node(nodes, self.gpus_per_node);
        j.mem_per_node_mb =
            self.tasks
                .mem_per_node_mb(j.cpus_per_node, self.gpus_per_node, self.mem_per_node_mb);
        j.tasks.nodes_max = 0;
        j
    }

    /// Whether its node count is a range placement chooses in.
    pub fn is_ranged(&self) -> bool {
        self.tasks.nodes_max > self.nodes
    }

    /// Whether placement depends on more than its counts: features, node lists,
    /// exclusivity, reservations or a node range. Jobs like that never share the pass's
    /// failure cache with other jobs of the same counts.
    pub fn is_selective(&self) -> bool {
        self.constraint.is_some()
            || !self.req_nodes.is_empty()
            || !self.exc_nodes.is_empty()
            || self.exclusive
            || self.mem_whole_node
            || self.nodes_reserved.is_some()
            || self.nodes_only.is_some()
            || self.is_ranged()
    }

    /// GPUs over all nodes.
    pub fn gpus_total(&self) -> u64 {
        u64::from(self.nodes.max(1)) * u64::from(self.gpus_per_node)
    }

    /// GPUs and MIG slices over all nodes: what a per-user GPU limit counts (Slurm
    /// counts a MIG slice as one `gres/gpu`).
    pub fn gres_gpus(&self) -> u64 {
        self.gpus_total() + u64::from(self.nodes.max(1)) * u64::from(self.mig_per_node)
    }
}

impl RunningJob {
    /// GPUs and MIG slices held, as [`PendingJob::gres_gpus`] counts them.
    pub fn gres_gpus(&self) -> u64 {
        self.grants
            .iter()
            .map(|g| (g.gpu_uuids.len() + g.mig_slices.len()) as u64)
            .sum()
    }
}

/// Resources granted to a job on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// MIG slices held (GPU UUID + placement + profile), on GPUs not in `gpu_uuids`.
    pub mig_slices: Vec<crate::mig::MigGrant>,
    /// GPU milli held on each GPU of `gpu_uuids` when it is a fraction grant (one share
    /// of a time-sliced GPU); 0: a whole GPU, or one plain share of a time-sliced one.
    pub gpu_milli: u32,
}

/// Start `job_id` on these nodes (the first one runs the batch script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The job placed.
    pub job_id: u64,
    /// One grant per node, in the order chosen.
    pub nodes: Vec<NodeGrant>,
}
