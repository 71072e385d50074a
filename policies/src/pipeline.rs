//! The placement pipeline for one job: filters (cheap first), then scorers, then the best
//! `nodes` nodes, ties broken on node name so a decision is reproducible.
//!
//! Every reject and the number of nodes looked at go into [`PlacementMetrics`], so a job
//! that stays pending can say exactly why.

use crate::filter::{
    CpuFilter, Filter, GpuFilter, MemoryFilter, NodeUpFilter, PartitionFilter, RejectReason,
};
use crate::mig::{MigFilter, MigPacking};
use crate::score::{BestFitGpus, Scorer};
use crate::snapshot::{ClusterSnapshot, Decision, NodeGrant, NodeView, PendingJob};
use crate::PolicyConfig;
use std::collections::BTreeMap;
use std::fmt;

/// What the pipeline saw while placing one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementMetrics {
    /// Nodes run through the filters.
    pub nodes_evaluated: u32,
    /// Nodes that passed every filter.
    pub nodes_feasible: u32,
    /// Rejected nodes per reason.
    pub rejects: BTreeMap<RejectReason, u32>,
    /// The first rejected node per reason and its message, for the human-readable summary.
    pub reject_examples: BTreeMap<RejectReason, (String, String)>,
}

/// A job that cannot be placed now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    /// Nodes the job needs.
    pub nodes_wanted: u32,
    /// What the pipeline saw.
    pub metrics: PlacementMetrics,
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.metrics;
        write!(
            f,
            "needs {} node(s), {} of {} nodes fit",
            self.nodes_wanted, m.nodes_feasible, m.nodes_evaluated
        )?;
        for (reason, count) in &m.rejects {
            if *reason == RejectReason::Partition {
                continue; // other partitions' nodes are noise, not a reason
            }
            let (node, detail) = &m.reject_examples[reason];
            write!(
                f,
                "; {count} node(s) short of {} (e.g. {node}: {detail})",
                reason.as_str()
            )?;
        }
        if m.nodes_evaluated
            == m.rejects
                .get(&RejectReason::Partition)
                .copied()
                .unwrap_or(0)
        {
            write!(f, "; no node is in the requested partition")?;
        }
        Ok(())
    }
}

/// Filters and scorers for one scheduling pass.
pub struct Pipeline {
    filters: Vec<Box<dyn Filter>>,
    scorers: Vec<Box<dyn Scorer>>,
    nodes_scored_max: usize,
    mig_carve_cost: f64,
}

impl Pipeline {
    /// Builds the chain. Order matters only for speed and for which reason a node reports.
    pub fn new(cfg: &PolicyConfig) -> Pipeline {
        let filters: Vec<Box<dyn Filter>> = vec![
            Box::new(PartitionFilter), // a string compare, and rules out most nodes first
            Box::new(NodeUpFilter),    // a down node is never worth counting GPUs on
            Box::new(GpuFilter),       // the scarce resource: the reason users care about
            Box::new(CpuFilter),
            Box::new(MemoryFilter),
            Box::new(MigFilter), // runs the carve planner: dearest, so last
        ];
        let scorers: Vec<Box<dyn Scorer>> = vec![
            Box::new(BestFitGpus), // pack, so large jobs find whole nodes
            Box::new(MigPacking {
                carve_cost: cfg.mig_carve_cost,
            }), // MIG jobs: carved cards first, most room left
        ];
        Pipeline {
            filters,
            scorers,
            nodes_scored_max: cfg.nodes_scored_max.max(1),
            mig_carve_cost: cfg.mig_carve_cost,
        }
    }

    /// Chooses `job.nodes` nodes for `job` and the GPUs on each (lowest free index of the
    /// requested type first).
    ///
    /// # Errors
    /// [`Unplaceable`] when fewer than `job.nodes` nodes pass every filter.
    pub fn select(
        &self,
        snapshot: &ClusterSnapshot,
        job: &PendingJob,
    ) -> Result<Decision, Unplaceable> {
        self.select_among(snapshot.nodes.iter(), job)
    }

    /// [`Pipeline::select`] over some of the nodes only, in snapshot order. The decision
    /// is the same as over all nodes whenever the nodes left out would fail a filter (the
    /// backfill pass leaves out nodes without enough free GPUs); only the metrics differ.
    ///
    /// # Errors
    /// As [`Pipeline::select`].
    pub fn select_among<'a>(
        &self,
        nodes: impl Iterator<Item = &'a NodeView>,
        job: &PendingJob,
    ) -> Result<Decision, Unplaceable> {
        let mut metrics = PlacementMetrics::default();
        let mut ranked: Vec<(f64, &NodeView)> = Vec::new();
        for node in nodes {
            metrics.nodes_evaluated += 1;
            if let Err(rej) = self.filters.iter().try_for_each(|f| f.check(job, node)) {
                *metrics.rejects.entry(rej.reason).or_default() += 1;
                metrics
                    .reject_examples
                    .entry(rej.reason)
                    .or_insert_with(|| (node.name.clone(), rej.detail));
                continue;
            }
            metrics.nodes_feasible += 1;
            if ranked.len() < self.nodes_scored_max {
                ranked.push((self.score(job, node), node));
            }
        }
        let wanted = job.nodes.max(1) as usize;
        if ranked.len() < wanted {
            return Err(Unplaceable {
                nodes_wanted: job.nodes.max(1),
                metrics,
            });
        }
        // Best score first; equal scores go to the lower node name (deterministic).
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let nodes = ranked[..wanted]
            .iter()
            .map(|(_, node)| grant(job, node, self.mig_carve_cost))
            .collect();
        Ok(Decision {
            job_id: job.id,
            nodes,
        })
    }

    /// Mean of the scorers, in `[-1, 1]`.
    fn score(&self, job: &PendingJob, node: &NodeView) -> f64 {
        let sum: f64 = self.scorers.iter().map(|s| s.score(job, node)).sum();
        sum / self.scorers.len() as f64
    }
}

fn grant(job: &PendingJob, node: &NodeView, mig_carve_cost: f64) -> NodeGrant {
    let gpus: Vec<_> = node
        .free_gpus(&job.gpu_type)
        .take(job.gpus_per_node as usize)
        .collect();
    NodeGrant {
        node: node.name.clone(),
        gpu_uuids: gpus.iter().map(|g| g.uuid.clone()).collect(),
        gpu_indices: gpus.iter().map(|g| g.index).collect(),
        cpus: job.cpus_per_node,
        mem_mb: job.mem_per_node_mb,
        mig_slices: crate::mig::grants(job, node, mig_carve_cost),
    }
}
