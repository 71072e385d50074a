//! The FGD evaluation protocol on the trace: one seeded arrival sequence, tasks placed one
//! by one with no departures, and the GPU allocation rate measured against the arrived GPU
//! demand, as the FGD artifact (`TunePodsByNodeTotalResource`, `SchedulePods`,
//! `experiments/analysis/merge_alloc_discrete_0920.py`) does.

use super::trace::{TraceNode, TracePod};
use berth_policies::fragmentation::{
    berth_fragmentation, fgd_choice_artifact, node_fragmentation, BerthPacking, Measure, Workload,
};
use berth_policies::packing::{best_fit_score_artifact, NodeFree, TaskShape};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// A placement policy of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packer {
    /// A feasible node at random; a shared task on a random GPU with room.
    Random,
    /// The artifact's best fit: integer score of CPU and GPU leftover, random among equal
    /// scores; a shared task on the tightest GPU.
    BestFit,
    /// The artifact's FGD: integer sigmoid of the fragmentation change, random among
    /// equal scores.
    Fgd,
    /// berth's rule ([`BerthPacking`]): exact fragmentation change, then best fit, then
    /// the lowest node index; no randomness.
    Berth,
}

/// The arrival sequence for `seed`: the pod list shuffled, then tuned to `ratio_pct`
/// percent of the cluster's GPU milli: pods drawn uniformly from the list are appended
/// while the total stays within the target, or random pods are removed while it is over
/// (the artifact's `SortClusterPods` with `shufflePod` then `tuneUpPods`/`tuneDownPods`).
/// Returns indices into `pods`.
pub fn arrivals(pods: &[TracePod], capacity_milli: u64, ratio_pct: u32, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.shuffle(&mut rng);
    let target = capacity_milli * u64::from(ratio_pct) / 100;
    let demand = |i: usize| pods[i].shape.gpu_milli_total();
    let mut total: u64 = order.iter().map(|&i| demand(i)).sum();
    while total > target && !order.is_empty() {
        let k = rng.gen_range(0..order.len());
        total -= demand(order.remove(k));
    }
    // Bounded: each appended pod adds demand, or it is CPU-only; cap the CPU-only run too.
    let cap = pods.len() * 100;
    while order.len() < cap {
        let i = rng.gen_range(0..pods.len());
        if total + demand(i) > target {
            break;
        }
        total += demand(i);
        order.push(i);
    }
    order
}

/// How equal scores are broken for the artifact's policies (random, best fit, FGD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// The first node in a per-seed random node order, fixed for the run. The artifact
    /// renames nodes `NNNN-<name>` with a seeded permutation before scheduling, which only
    /// matters if equal scores go by node order; this reproduces the published figures
    /// (README). The random policy still draws a uniform node.
    Order,
    /// Uniformly at random among equal scores (stock kube-scheduler's `selectHost`).
    Uniform,
}

/// One placement decision cached for a (node, task class) pair until the node changes:
/// the policy's key (lower is better) and the GPUs it would take. Memory is not in the
/// key (fragmentation ignores it); it is checked live.
#[derive(Debug, Clone)]
struct Choice {
    key: (f64, f64),
    gpus: Vec<usize>,
}

/// The cluster being filled, with each node's measure and per-class choices cached.
struct Cluster<'a> {
    nodes: Vec<NodeFree>,
    frag: Vec<f64>,
    cache: Vec<Vec<Option<Option<Choice>>>>,
    workload: &'a Workload,
    measure: Measure,
    berth: BerthPacking,
}

impl<'a> Cluster<'a> {
    fn new(
        nodes: &[TraceNode],
        workload: &'a Workload,
        classes: usize,
        packer: Packer,
    ) -> Cluster<'a> {
        let measure: Measure = if packer == Packer::Berth {
            berth_fragmentation
        } else {
            node_fragmentation
        };
        let nodes: Vec<NodeFree> = nodes.iter().map(|n| n.idle.clone()).collect();
        Cluster {
            frag: nodes.iter().map(|n| measure(n, workload)).collect(),
            cache: vec![vec![None; classes]; nodes.len()],
            nodes,
            workload,
            measure,
            berth: BerthPacking {
                workload: workload.clone(),
            },
        }
    }

    /// The policy's choice on node `n` for `task` (of class `class`); `None` when it
    /// cannot go there.
    fn choice(
        &mut self,
        n: usize,
        task: &TaskShape,
        class: usize,
        packer: Packer,
    ) -> Option<Choice> {
        if let Some(c) = &self.cache[n][class] {
            return c.clone();
        }
        let node = &self.nodes[n];
        let c = match packer {
            Packer::Random => node.best_fit_gpus(task).map(|gpus| Choice {
                key: (0.0, 0.0),
                gpus,
            }),
            Packer::BestFit => best_fit_score_artifact(node, task).and_then(|s| {
                node.best_fit_gpus(task).map(|gpus| Choice {
                    key: (-(s as f64), 0.0),
                    gpus,
                })
            }),
            Packer::Fgd => {
                fgd_choice_artifact(node, task, self.workload, self.frag[n]).map(|(s, gpus)| {
                    Choice {
                        key: (-(s as f64), 0.0),
                        gpus,
                    }
                })
            }
            Packer::Berth => self
                .berth
                .choose(node, task, self.frag[n])
                .map(|(k, gpus)| Choice {
                    key: (k.frag_delta, k.leftover),
                    gpus,
                }),
        };
        self.cache[n][class] = Some(c.clone());
        c
    }

    fn place(&mut self, n: usize, task: &TaskShape, gpus: &[usize]) {
        self.nodes[n].take(task, gpus);
        self.frag[n] = (self.measure)(&self.nodes[n], self.workload);
        self.cache[n].iter_mut().for_each(|c| *c = None);
    }
}

/// The random policy's GPU for a shared task: uniform among GPUs with room (the
/// artifact's `allocateGpuIdBasedOnRandomFit`); whole GPUs stay the first idle ones.
fn random_gpus(
    node: &NodeFree,
    task: &TaskShape,
    fallback: Vec<usize>,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    if !task.is_shared() {
        return fallback;
    }
    let room: Vec<usize> = (0..node.gpu_milli.len())
        .filter(|&g| node.gpu_milli[g] >= task.gpu_milli)
        .collect();
    vec![room[rng.gen_range(0..room.len())]]
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// GPU allocation rate (percent of cluster GPU milli) when the arrived GPU demand is
    /// 100 % of capacity.
    pub alloc_rate_100: f64,
    /// The same at 130 %.
    pub alloc_rate_130: f64,
    /// Tasks that arrived.
    pub arrived: usize,
    /// Tasks that found no node.
    pub failed: usize,
    /// `(arrived GPU milli, allocated GPU milli)` after each task.
    pub events: Vec<(u64, u64)>,
}

/// One run's fixed inputs.
pub struct Setup<'a> {
    /// The cluster, idle.
    pub nodes: &'a [TraceNode],
    /// The pod list, sorted by name.
    pub pods: &'a [TracePod],
    /// FGD's (and berth's) target workload.
    pub workload: &'a Workload,
    /// Arrived GPU demand to stop at, percent of capacity.
    pub ratio_pct: u32,
    /// Tie-breaking of the artifact's policies.
    pub ties: Ties,
}

/// Places the arrival sequence of `seed` with `packer` and measures it. The sequence and
/// the node order depend on `seed` only, so every policy sees the same ones.
pub fn run(setup: &Setup, packer: Packer, seed: u64) -> RunResult {
    let (nodes, pods) = (setup.nodes, setup.pods);
    let capacity: u64 = nodes.iter().map(|n| n.idle.gpu_milli_free_total()).sum();
    let sequence = arrivals(pods, capacity, setup.ratio_pct, seed);
    // Task classes for the cache: each distinct shape without memory gets an id.
    let mut class_ids: HashMap<TaskShape, usize> = HashMap::new();
    let class_of: Vec<usize> = pods
        .iter()
        .map(|p| {
            let next = class_ids.len();
            *class_ids.entry(p.shape.class_key()).or_insert(next)
        })
        .collect();
    let mut cluster = Cluster::new(nodes, setup.workload, class_ids.len(), packer);
    // Ties and the node order come from their own streams of the seed.
    let mut ties = ChaCha8Rng::seed_from_u64(seed);
    ties.set_stream(1);
    let mut order = ChaCha8Rng::seed_from_u64(seed);
    order.set_stream(2);
    let mut rank: Vec<usize> = (0..nodes.len()).collect();
    rank.shuffle(&mut order);
    let mut tie = match (packer, setup.ties) {
        (Packer::Berth, _) => Tie::Index,
        (Packer::Random, _) | (_, Ties::Uniform) => Tie::Uniform(&mut ties),
        (_, Ties::Order) => Tie::Rank(&rank),
    };
    let (mut arrived, mut used, mut failed) = (0u64, 0u64, 0usize);
    let mut events = Vec::with_capacity(sequence.len());
    for &p in &sequence {
        let task = &pods[p].shape;
        arrived += task.gpu_milli_total();
        match select(&mut cluster, task, class_of[p], packer, &mut tie) {
            Some((n, gpus)) => {
                cluster.place(n, task, &gpus);
                used += task.gpu_milli_total();
            }
            None => failed += 1,
        }
        events.push((arrived, used));
    }
    let gpus = capacity / 1000;
    RunResult {
        alloc_rate_100: rate_at(&events, gpus, 100),
        alloc_rate_130: rate_at(&events, gpus, 130),
        arrived: sequence.len(),
        failed,
        events,
    }
}

/// How one run breaks equal keys.
enum Tie<'r> {
    /// Lowest node index (berth: no randomness).
    Index,
    /// Lowest rank in a seeded node order.
    Rank(&'r [usize]),
    /// Uniform (reservoir sampling, as kube-scheduler's `selectHost`).
    Uniform(&'r mut ChaCha8Rng),
}

/// The node and GPUs `packer` picks for `task`, or `None` when no node fits it: the
/// lowest key, equal keys broken by `tie`.
fn select(
    cluster: &mut Cluster,
    task: &TaskShape,
    class: usize,
    packer: Packer,
    tie: &mut Tie,
) -> Option<(usize, Vec<usize>)> {
    let mut best: Option<(usize, Choice)> = None;
    let mut equal = 0u32;
    for n in 0..cluster.nodes.len() {
        if !cluster.nodes[n].fits(task) {
            continue;
        }
        let Some(c) = cluster.choice(n, task, class, packer) else {
            continue;
        };
        // Reservoir sampling over equal keys: the k-th equal one replaces the pick with
        // probability 1/k, which leaves each equally likely.
        let take = match &best {
            None => {
                equal = 1;
                true
            }
            Some((_, b)) if c.key < b.key => {
                equal = 1;
                true
            }
            Some((bn, b)) if c.key == b.key => {
                equal += 1;
                match tie {
                    Tie::Index => false,
                    Tie::Rank(rank) => rank[n] < rank[*bn],
                    Tie::Uniform(rng) => rng.gen_range(0..equal) == 0,
                }
            }
            Some(_) => false,
        };
        if take {
            best = Some((n, c));
        }
    }
    let (n, c) = best?;
    let gpus = match (packer, tie) {
        (Packer::Random, Tie::Uniform(rng)) => random_gpus(&cluster.nodes[n], task, c.gpus, rng),
        _ => c.gpus,
    };
    Some((n, gpus))
}

/// Python's `round(x, 0)`: to the nearest integer, ties to even.
fn round_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// The allocation rate at `arrived_pct`, as the artifact's analysis: each event's arrived
/// and allocated GPU milli as a percentage of the cluster's GPUs (arrived rounded to an
/// integer percent, allocated to 2 decimals); the mean allocation over the events whose
/// arrived percent equals `arrived_pct` (or, if none, lies within ±1 of it), rounded to 2
/// decimals. NaN when no event is that close.
pub fn rate_at(events: &[(u64, u64)], gpus: u64, arrived_pct: u32) -> f64 {
    let pct = |milli: u64| milli as f64 / gpus as f64 / 10.0;
    let rows: Vec<(f64, f64)> = events
        .iter()
        .map(|&(a, u)| (round_even(pct(a)), (pct(u) * 100.0).round() / 100.0))
        .collect();
    let x = f64::from(arrived_pct);
    let mut hit: Vec<f64> = rows.iter().filter(|r| r.0 == x).map(|r| r.1).collect();
    if hit.is_empty() {
        hit = rows
            .iter()
            .filter(|r| (r.0 - x).abs() <= 1.0)
            .map(|r| r.1)
            .collect();
    }
    if hit.is_empty() {
        return f64::NAN;
    }
    let mean = hit.iter().sum::<f64>() / hit.len() as f64;
    (mean * 100.0).round() / 100.0
}
