//! The placement pipeline for one job: feasibility filters (cheap first), then topology
//! (the best-connected free GPU set on each node, and for multi-node jobs the lowest common
//! switch), then scorers (GPU links, the partition's packing, MIG carving), ties broken on
//! node name so a decision is reproducible.
//!
//! The packing scorer is the one configured for the job's partition
//! ([`PolicyConfig::packing_for`]): best fit, spread, FGD or berth's rule. FGD and berth's
//! rule measure fragmentation against the partition's workload, which the pass derives
//! ([`crate::workload`]) and hands over with [`Pipeline::with_workloads`]; without one
//! (a submit-time check, or nothing pending or recent there) they fall back to best fit.
//!
//! Every reject and the number of nodes looked at go into [`PlacementMetrics`], so a job
//! that stays pending can say exactly why.

use crate::filter::{
    CpuFilter, ExclusiveFilter, FeatureFilter, Filter, GpuFilter, MemPerCpuFilter, MemPerGpuFilter,
    MemoryFilter, NodeListFilter, NodeUpFilter, PartitionFilter, RejectReason, ReservationFilter,
    TasksFilter,
};
use crate::fragmentation::{FragmentationGradient, Workload};
use crate::mig::{MigFilter, MigPacking};
use crate::packing::{BestFitPacking, Packing, Spread};
use crate::score::{Fit, GpuLinks, Scorer};
use crate::snapshot::{ClusterSnapshot, Decision, NodeGrant, NodeView, PendingJob};
use crate::topology::{choose_nodes, NodePlace, Topology};
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
    /// `(fewest leaf switches any choice needs, --switches allowed)` when the nodes fit but
    /// not under the allowed leaf count.
    pub switches_short: Option<(u32, u32)>,
    /// A whole-job reason the nodes that fit could not meet: a `--nodelist` node that
    /// cannot take the job, or `--constraint` counts or matching OR no choice satisfies.
    pub unmet: Option<String>,
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
        if let Some(unmet) = &m.unmet {
            write!(f, "; {unmet}")?;
        }
        if let Some((need, allowed)) = m.switches_short {
            write!(
                f,
                "; the nodes free span at least {need} leaf switches, --switches allows {allowed}"
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
    /// Packing per partition as configured, and the choice of the others.
    packing: BTreeMap<String, Packing>,
    packing_default: Packing,
    /// The packing scorer of each partition that has its own (configured, or given a
    /// workload); the others use `default_packer`.
    packers: BTreeMap<String, Box<dyn Scorer>>,
    default_packer: Box<dyn Scorer>,
    nodes_scored_max: usize,
    mig_carve_cost: f64,
    /// The pass's clock, for `--switches` waits only.
    now_ms: u64,
}

/// A feasible node, the GPUs the job would get there and its score.
struct Candidate<'a> {
    node: &'a NodeView,
    place: Option<&'a NodePlace>,
    fit: Fit,
    score: f64,
}

impl Pipeline {
    /// Builds the chain as of the end of every `--switches` wait (a submit-time check or a
    /// placement that must not wait). Order matters only for speed and for which reason a
    /// node reports.
    pub fn new(cfg: &PolicyConfig) -> Pipeline {
        Pipeline::at(cfg, u64::MAX)
    }

    /// Builds the chain for a pass at `now_ms`.
    pub fn at(cfg: &PolicyConfig, now_ms: u64) -> Pipeline {
        let filters: Vec<Box<dyn Filter>> = vec![
            Box::new(PartitionFilter), // a string compare, and rules out most nodes first
            Box::new(NodeUpFilter),    // a down node is never worth counting GPUs on
            Box::new(NodeListFilter),  // -x: the user said no, whatever the node has
            Box::new(ReservationFilter), // kept for others, or outside the job's own
            Box::new(FeatureFilter),   // --constraint: a fixed property of the node
            Box::new(ExclusiveFilter), // --exclusive/--mem=0: idle nodes only
            Box::new(GpuFilter),       // the scarce resource: the reason users care about
            Box::new(TasksFilter),     // --ntasks-per-node/--mincpus, before plain CPUs
            Box::new(CpuFilter),
            Box::new(MemPerCpuFilter), // per-unit memory first: its message says why
            Box::new(MemPerGpuFilter),
            Box::new(MemoryFilter),
            Box::new(MigFilter), // runs the carve planner: dearest, so last
        ];
        // The partition's packing scorer joins these (see `score`): topology first (the
        // job's GPUs on one NVLink/NUMA island), then packing, then MIG carving (carved
        // cards first, most room left).
        let scorers: Vec<Box<dyn Scorer>> = vec![
            Box::new(GpuLinks),
            Box::new(MigPacking {
                carve_cost: cfg.mig_carve_cost,
            }),
        ];
        let packers = cfg
            .packing
            .iter()
            .map(|(p, &k)| (p.clone(), packer(k, None)))
            .collect();
        Pipeline {
            filters,
            scorers,
            packing: cfg.packing.clone(),
            packing_default: cfg.packing_default,
            packers,
            default_packer: packer(cfg.packing_default, None),
            nodes_scored_max: cfg.nodes_scored_max.max(1),
            mig_carve_cost: cfg.mig_carve_cost,
            now_ms,
        }
    }

    /// Gives the FGD and berth packing scorers of these partitions their workload (the
    /// task-class distribution they measure fragmentation against); partitions packed
    /// otherwise ignore theirs.
    pub fn with_workloads(mut self, workloads: BTreeMap<String, Workload>) -> Pipeline {
        for (partition, w) in workloads {
            let k = self.packing(&partition);
            if k.needs_workload() {
                self.packers.insert(partition, packer(k, Some(w)));
            }
        }
        self
    }

    /// The packing `partition` uses.
    pub fn packing(&self, partition: &str) -> Packing {
        self.packing
            .get(partition)
            .copied()
            .unwrap_or(self.packing_default)
    }

    /// Chooses `job.nodes` nodes for `job` and the best-connected free GPUs on each.
    ///
    /// # Errors
    /// [`Unplaceable`] when fewer than `job.nodes` nodes pass every filter, or when they do
    /// but span more leaf switches than `--switches` allows while the job still waits.
    pub fn select(
        &self,
        snapshot: &ClusterSnapshot,
        job: &PendingJob,
    ) -> Result<Decision, Unplaceable> {
        let topo = &snapshot.topology;
        let nodes = snapshot.nodes.iter().map(|n| (n, topo.place(&n.name)));
        self.select_among(topo, nodes, job)
    }

    /// [`Pipeline::select`] over some of the nodes only, in the order given (the preferred
    /// first: single-node jobs score only the first `nodes_scored_max` feasible ones). The
    /// decision is the same as over all nodes whenever the nodes left out would fail a
    /// filter and the order puts better-packed nodes first; only the metrics differ.
    ///
    /// # Errors
    /// As [`Pipeline::select`].
    pub fn select_among<'a>(
        &self,
        topo: &Topology,
        nodes: impl Iterator<Item = (&'a NodeView, Option<&'a NodePlace>)>,
        job: &PendingJob,
    ) -> Result<Decision, Unplaceable> {
        if !job.is_ranged() {
            return self.select_fixed(topo, nodes, job);
        }
        // A node range: try the counts in the order the job prefers, each as a fixed job
        // with its own per-node need; the first that places wins.
        let nodes: Vec<_> = nodes.collect();
        let mut first_err = None;
        for k in range_counts(job, nodes.iter().map(|(n, _)| *n)) {
            match self.select_fixed(topo, nodes.iter().copied(), &job.with_nodes(k)) {
                Ok(d) => return Ok(d),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| Unplaceable {
            nodes_wanted: job.nodes.max(1),
            metrics: PlacementMetrics::default(),
        }))
    }

    /// [`Pipeline::select_among`] for a job of exactly `job.nodes` nodes.
    fn select_fixed<'a>(
        &self,
        topo: &Topology,
        nodes: impl Iterator<Item = (&'a NodeView, Option<&'a NodePlace>)>,
        job: &PendingJob,
    ) -> Result<Decision, Unplaceable> {
        let wanted = job.nodes.max(1) as usize;
        // A gang on a configured network looks at every feasible node: the lowest common
        // switch may be anywhere. So does a job that must include named nodes or choose
        // by feature counts. Everything else stops at the cap.
        let network = wanted > 1 && topo.has_network();
        let whole_job_choice =
            !job.req_nodes.is_empty() || job.constraint.as_ref().is_some_and(|c| c.needs_choice());
        let cap = if network || whole_job_choice {
            usize::MAX
        } else {
            self.nodes_scored_max.max(wanted)
        };
        let mut metrics = PlacementMetrics::default();
        let mut ranked: Vec<Candidate> = Vec::new();
        let packer = self
            .packers
            .get(&job.partition)
            .unwrap_or(&self.default_packer)
            .as_ref();
        for (node, place) in nodes {
            // Enough candidates: the rest of the order is not looked at (the metrics then
            // count only what was), which keeps a placement from costing the cluster.
            if ranked.len() >= cap {
                break;
            }
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
            let fit = best_gpus(job, node, place);
            let score = self.score(packer, job, node, &fit);
            ranked.push(Candidate {
                node,
                place,
                fit,
                score,
            });
        }
        let unplaceable = |metrics| Unplaceable {
            nodes_wanted: wanted as u32,
            metrics,
        };
        if ranked.len() < wanted {
            return Err(unplaceable(metrics));
        }
        // The lowest node weight first (Slurm's Weight), then the best score; equal
        // scores go to the lower node name (deterministic).
        ranked.sort_by(|a, b| {
            a.node
                .weight
                .cmp(&b.node.weight)
                .then_with(|| b.score.total_cmp(&a.score))
                .then_with(|| a.node.name.cmp(&b.node.name))
        });
        let chosen: Vec<usize> = if whole_job_choice {
            match choose_whole_job(job, &ranked, wanted) {
                Ok(pick) => pick,
                Err(why) => {
                    metrics.unmet = Some(why);
                    return Err(unplaceable(metrics));
                }
            }
        } else if network {
            let places: Vec<Option<&NodePlace>> = ranked.iter().map(|c| c.place).collect();
            match choose_nodes(topo, &places, wanted, self.leaves_max(job)) {
                Ok(pick) => pick,
                Err(need) => {
                    metrics.switches_short = Some((need as u32, job.switches_max));
                    return Err(unplaceable(metrics));
                }
            }
        } else {
            (0..wanted).collect()
        };
        let nodes = chosen
            .into_iter()
            .map(|i| grant(job, ranked[i].node, &ranked[i].fit, self.mig_carve_cost))
            .collect();
        Ok(Decision {
            job_id: job.id,
            nodes,
        })
    }

    /// The leaf-switch limit in force for `job` now: its `--switches` count until its
    /// wait is over, then none (Slurm relaxes the same way).
    pub fn leaves_max(&self, job: &PendingJob) -> Option<usize> {
        let waiting = self.now_ms < job.submit_ms.saturating_add(job.switches_wait_ms);
        (job.switches_max > 0 && waiting).then_some(job.switches_max as usize)
    }

    /// Mean of the scorers and the partition's `packer`, in `[-1, 1]`.
    fn score(&self, packer: &dyn Scorer, job: &PendingJob, node: &NodeView, fit: &Fit) -> f64 {
        let sum: f64 = self.scorers.iter().map(|s| s.score(job, node, fit)).sum();
        // A MIG-only job's slices are packed by `MigPacking`; the GPU packers would rank
        // nodes by whole GPUs it does not take.
        let packing = if job.gpus_per_node == 0 && job.mig_per_node > 0 {
            0.0
        } else {
            packer.score(job, node, fit)
        };
        (sum + packing) / (self.scorers.len() + 1) as f64
    }
}

/// The packing scorer for `k`. FGD and berth's rule without a workload fall back to best
/// fit, the tie-break berth's rule uses anyway.
fn packer(k: Packing, workload: Option<Workload>) -> Box<dyn Scorer> {
    match (k, workload) {
        (Packing::Spread, _) => Box::new(Spread),
        (Packing::Fgd, Some(w)) => Box::new(FragmentationGradient::fgd(w)),
        (Packing::Berth, Some(w)) => Box::new(FragmentationGradient::berth(w)),
        (Packing::BestFit | Packing::Fgd | Packing::Berth, _) => Box::new(BestFitPacking),
    }
}

/// The free GPUs of the requested type `job` gets on `node`: the best-connected set when
/// the node reported its links, else the lowest indexes.
fn best_gpus(job: &PendingJob, node: &NodeView, place: Option<&NodePlace>) -> Fit {
    if job.exclusive {
        // Slurm's --exclusive: the job gets every CPU and GPU of its nodes.
        return Fit {
            gpus: node
                .gpus
                .iter()
                .filter(|g| g.free)
                .map(|g| g.index)
                .collect(),
            quality: None,
        };
    }
    if job.gpu_milli > 0 {
        return Fit {
            gpus: tightest_share(job, node).into_iter().collect(),
            quality: None,
        };
    }
    let k = job.gpus_per_node as usize;
    let matrix = place.and_then(|p| p.gpus.as_deref());
    match matrix {
        Some(m) if k > 0 => {
            let free: Vec<u32> = node.free_gpus(&job.gpu_type).map(|g| g.index).collect();
            let (gpus, q) = m.best_set(&free, k);
            Fit {
                gpus,
                quality: Some(q),
            }
        }
        _ => Fit {
            gpus: node
                .free_gpus(&job.gpu_type)
                .take(k)
                .map(|g| g.index)
                .collect(),
            quality: None,
        },
    }
}

/// The GPU a fraction job shares on `node`: among the time-sliced GPUs of its type with
/// room for it, the one with the least milli unheld (lowest index on ties), so shares fill
/// one GPU before the next and whole GPUs stay whole (the FGD artifact's best-fit GPU).
fn tightest_share(job: &PendingJob, node: &NodeView) -> Option<u32> {
    node.gpus
        .iter()
        .filter(|g| job.gpu_type.is_empty() || g.gres_type == job.gpu_type)
        .filter(|g| g.fits_fraction(job.gpu_milli))
        .min_by_key(|g| (g.milli_free(), g.index))
        .map(|g| g.index)
}

fn grant(job: &PendingJob, node: &NodeView, fit: &Fit, mig_carve_cost: f64) -> NodeGrant {
    // Nodes list their GPUs in index order, usually at their index: look there first.
    let gpus: Vec<_> = fit
        .gpus
        .iter()
        .map(
            |&i| match node.gpus.get(i as usize).filter(|g| g.index == i) {
                Some(g) => g,
                None => node
                    .gpus
                    .iter()
                    .find(|g| g.index == i)
                    .expect("fit names the node's GPUs"),
            },
        )
        .collect();
    NodeGrant {
        node: node.name.clone(),
        gpu_uuids: gpus.iter().map(|g| g.uuid.clone()).collect(),
        gpu_indices: gpus.iter().map(|g| g.index).collect(),
        cpus: if job.exclusive {
            node.cpus_total
        } else {
            job.cpus_per_node
        },
        mem_mb: if job.mem_whole_node {
            node.memory_total_mb
        } else {
            job.mem_per_node_mb
        },
        mig_slices: crate::mig::grants(job, node, mig_carve_cost),
        gpu_milli: job.gpu_milli,
    }
}

/// Most node counts a ranged job tries in one placement (each try walks its candidates).
const RANGE_TRIES_MAX: usize = 32;

/// The node counts a ranged job tries, in its preferred order: from the least count that
/// could hold its tasks on the biggest candidate up (fewest first), or from the most the
/// candidates allow down. At most [`RANGE_TRIES_MAX`].
fn range_counts<'a>(job: &PendingJob, nodes: impl Iterator<Item = &'a NodeView>) -> Vec<u32> {
    let (mut count, mut cpus_max) = (0u32, 0u32);
    for n in nodes {
        count += 1;
        cpus_max = cpus_max.max(n.cpus_free);
    }
    let lo = job.nodes.max(1);
    let hi = job.tasks.nodes_max.min(count.max(lo)).max(lo);
    let t = &job.tasks;
    // Fewer nodes than this cannot hold the tasks even on the biggest candidate.
    let per_task = t.cpus_per_task.max(1);
    let tasks_fit = (cpus_max / per_task).max(1);
    let least = if t.per_node > 0 || t.ntasks == 0 {
        lo
    } else {
        t.ntasks.div_ceil(tasks_fit).clamp(lo, hi)
    };
    let counts: Vec<u32> = if t.fewest_first {
        (least..=hi).collect()
    } else {
        (least..=hi).rev().collect()
    };
    counts.into_iter().take(RANGE_TRIES_MAX).collect()
}

/// The chosen positions among `ranked` for a job that must include `--nodelist` nodes
/// and/or choose by `--constraint` counts or matching OR.
///
/// # Errors
/// The whole-job reason when no choice holds.
fn choose_whole_job(
    job: &PendingJob,
    ranked: &[Candidate],
    wanted: usize,
) -> Result<Vec<usize>, String> {
    let mut required = Vec::new();
    for name in &job.req_nodes {
        match ranked.iter().position(|c| c.node.name == *name) {
            Some(i) => required.push(i),
            None => {
                return Err(format!(
                    "--nodelist names {name}, which cannot take the job now"
                ))
            }
        }
    }
    if required.len() > wanted {
        return Err(format!(
            "--nodelist names {} nodes, the job has {wanted}",
            required.len()
        ));
    }
    let constraint = job.constraint.as_ref().filter(|c| c.needs_choice());
    let Some(c) = constraint else {
        // Required nodes first, then the best of the rest.
        let mut pick = required.clone();
        pick.extend((0..ranked.len()).filter(|i| !required.contains(i)));
        pick.truncate(wanted);
        return Ok(pick);
    };
    let features: Vec<&[String]> = ranked.iter().map(|r| &r.node.features[..]).collect();
    match c.choose(&features, wanted) {
        Some(pick) if required.iter().all(|r| pick.contains(r)) => Ok(pick),
        Some(_) => Err(format!(
            "no choice of nodes meeting --constraint={} includes every --nodelist node",
            c.text
        )),
        None => Err(format!(
            "no {wanted} of the nodes that fit meet --constraint={}",
            c.text
        )),
    }
}
