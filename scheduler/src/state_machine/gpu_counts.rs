//! How many GPUs of each kind a node offers pods, and how many are free: a compact,
//! derived copy of what the extender's filter and prioritize read for every candidate
//! node of every pod.
//!
//! Counting from the node records costs a walk over every GPU record (hundreds of bytes
//! each) of thousands of nodes per request, which is memory-bound; this table holds a
//! few integers per node behind a hash lookup. It is derived, never encoded: built on
//! first use, then updated for each node a command changes (the GPU holders, health, or
//! the node's state), and checked against a fresh count after every command in debug
//! builds.

use super::StateMachine;
use berth_proto::v1 as pb;
use rustc_hash::FxHashMap;

/// A GPU a pod could ever get whole: healthy, not in MIG mode, not time-sliced.
pub fn whole_usable(g: &pb::Gpu) -> bool {
    g.unhealthy_reason.is_empty() && !g.mig_enabled && g.replicas <= 1
}

/// A GPU a pod could ever get a share of: healthy, not in MIG mode, offered as replicas.
pub fn shared_usable(g: &pb::Gpu) -> bool {
    g.unhealthy_reason.is_empty() && !g.mig_enabled && g.replicas > 1
}

/// A GPU a whole-GPU pod may take now.
pub fn whole_free(g: &pb::Gpu) -> bool {
    whole_usable(g) && super::mig::whole_gpu_free(g)
}

/// A GPU a shared pod may take a share of now.
pub fn shared_free(g: &pb::Gpu) -> bool {
    shared_usable(g) && super::has_room(g, 0)
}

/// One node's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeGpus {
    /// The node is up.
    pub up: bool,
    /// GPUs a pod could get whole.
    pub whole_usable: u32,
    /// Of those, free now.
    pub whole_free: u32,
    /// Time-sliced GPUs a pod could get a share of.
    pub shared_usable: u32,
    /// Of those, with a share free now.
    pub shared_free: u32,
    /// Shares of the usable time-sliced GPUs.
    pub shares_total: u32,
    /// Of those, free now.
    pub shares_free: u32,
    /// CPUs not allocated to jobs (batch jobs and pods alike).
    pub cpus_free: u32,
    /// Memory (MiB) not allocated to jobs.
    pub memory_free_mb: u64,
}

impl NodeGpus {
    /// Counts `node`'s GPUs.
    pub fn of(node: &pb::Node) -> NodeGpus {
        let mut c = NodeGpus {
            up: node.state() == pb::NodeState::Up && !node.drain,
            cpus_free: node
                .inventory
                .as_ref()
                .map_or(0, |i| i.cpus.saturating_sub(node.cpus_alloc)),
            memory_free_mb: node
                .inventory
                .as_ref()
                .map_or(0, |i| i.memory_mb.saturating_sub(node.memory_alloc_mb)),
            ..Default::default()
        };
        for g in node.inventory.iter().flat_map(|i| &i.gpus) {
            if whole_usable(g) {
                c.whole_usable += 1;
                c.whole_free += u32::from(whole_free(g));
            } else if shared_usable(g) {
                c.shared_usable += 1;
                c.shared_free += u32::from(shared_free(g));
                c.shares_total += g.replicas;
                // Plain shares that still fit: fractions (sized shares) may hold more
                // or less milli than a plain share does.
                let by_count = g.replicas.saturating_sub(g.share_job_ids.len() as u32);
                let by_milli =
                    super::GPU_MILLI.saturating_sub(super::milli_held(g)) / super::share_need(g, 0);
                c.shares_free += by_count.min(by_milli);
            }
        }
        c
    }
}

/// The table, built on first use. Derived data, so two state machines are equal whatever
/// it holds.
#[derive(Debug, Clone, Default)]
// Keyed by node name with FxHash: the extender looks up every candidate of every request
// (5,000 per verb at worst), where SipHash's cost shows; names come from berth's own
// registered nodes and kube-scheduler's node list, not from an adversary choosing keys.
pub(super) struct GpuCountsCache(std::sync::OnceLock<FxHashMap<String, NodeGpus>>);

impl PartialEq for GpuCountsCache {
    fn eq(&self, _: &GpuCountsCache) -> bool {
        true
    }
}

impl StateMachine {
    /// The GPU counts of node `name` (`None` for a node berth does not know).
    pub fn node_gpus(&self, name: &str) -> Option<NodeGpus> {
        self.gpu_counts
            .0
            .get_or_init(|| {
                self.state
                    .nodes
                    .iter()
                    .map(|(name, n)| (name.clone(), NodeGpus::of(n)))
                    .collect()
            })
            .get(name)
            .copied()
    }

    /// Recounts node `name` after a command changed it (a no-op until the table is built).
    pub(super) fn recount(&mut self, name: &str) {
        let Some(table) = self.gpu_counts.0.get_mut() else {
            return;
        };
        match self.state.nodes.get(name) {
            Some(n) => {
                table.insert(name.to_string(), NodeGpus::of(n));
            }
            None => {
                table.remove(name);
            }
        }
    }

    /// Asserts that the table matches a fresh count of every node (debug builds, after
    /// each command: a change site that forgot to recount shows up in any test).
    ///
    /// # Panics
    /// On the first node whose counts differ.
    #[cfg(debug_assertions)]
    pub(super) fn check_counts(&self) {
        let Some(table) = self.gpu_counts.0.get() else {
            return;
        };
        assert_eq!(
            table.len(),
            self.state.nodes.len(),
            "GPU count table out of step with the nodes"
        );
        for (name, n) in &self.state.nodes {
            let fresh = NodeGpus::of(n);
            assert_eq!(
                table.get(name),
                Some(&fresh),
                "GPU counts of node {name} not updated"
            );
        }
    }
}
