//! The FGD evaluation protocol on the trace: one seeded arrival sequence, tasks placed one
//! by one with no departures, and the GPU allocation rate measured against the arrived GPU
//! demand, as the FGD artifact (`TunePodsByNodeTotalResource`, `SchedulePods`,
//! `experiments/analysis/merge_alloc_discrete_0920.py`) does.

use super::trace::{TraceNode, TracePod};
use berth_policies::fragmentation::{
    fgd_choice_artifact, node_fragmentation, BerthPacking, Workload,
};
use berth_policies::packing::{best_fit_leftover, best_fit_score_artifact, NodeFree, TaskShape};
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

/// One placement decision cached for a (node, task class) pair until the node changes:
/// the policy's key (lower is better) and the GPUs it would take. Memory is not in the
/// key (fragmentation ignores it); it is checked live.
#[derive(Debug, Clone)]
struct Choice {
    key: (f64, f64),
    gpus: Vec<usize>,
}

/// The cluster being filled.
struct Cluster<'a> {
    nodes: Vec<NodeFree>,
    frag: Vec<f64>,
    cache: Vec<Vec<Option<Option<Choice>>>>,
    workload: &'a Workload,
    berth: BerthPacking,
}

impl<'a> Cluster<'a> {
    fn new(nodes: &[TraceNode], workload: &'a Workload, classes: usize) -> Cluster<'a> {
        let nodes: Vec<NodeFree> = nodes.iter().map(|n| n.idle.clone()).collect();
        Cluster {
            frag: nodes
                .iter()
                .map(|n| node_fragmentation(n, workload))
                .collect(),
            cache: vec![vec![None; classes]; nodes.len()],
            nodes,
            workload,
            berth: BerthPacking {
                workload: workload.clone(),
            },
        }
    }

    /// The policy's choice on node `n` for `task` (of class `class`); `None` when it
    /// cannot go there.
    fn choice(&mut self, n: usize, task: &TaskShape, class: usize, packer: Packer) -> Option<Choice> {
        if let Some(c) = &self.cache[n][class] {
            return c.clone();
        }
        let node = &self.nodes[n];
        let c = match packer {
            Packer::Random => node.best_fit_gpus(task).map(|gpus| Choice { key: (0.0, 0.0), gpus }),
            Packer::BestFit => best_fit_score_artifact(node, task).and_then(|s| {
                node.best_fit_gpus(task).map(|gpus| Choice { key: (-(s as f64), 0.0), gpus })
            }),
            Packer::Fgd if std::env::var("FGD_EXACT").is_ok() => self
                .berth
                .choose(node, task, self.frag[n])
                .map(|(k, gpus)| Choice { key: (k.frag_delta, 0.0), gpus }),
            Packer::Fgd => fgd_choice_artifact(node, task, self.workload, self.frag[n])
                .map(|(s, gpus)| Choice { key: (-(s as f64), if std::env::var("FGD_BF").is_ok() { best_fit_leftover(node, task).unwrap_or(0.0) } else { 0.0 }), gpus }),
            Packer::Berth => self
                .berth
                .choose(node, task, self.frag[n])
                .map(|(k, gpus)| {
                    let mode = std::env::var("BM").unwrap_or_default();
                    let q: f64 = std::env::var("BQ").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
                    let d = (k.frag_delta / q).round();
                    let key = match mode.as_str() {
                        "idx" => (d, 0.0),
                        "bf" => (d, k.leftover),
                        "nbf" => (d, -k.leftover),
                        "gpu" => (d, node.gpu_milli_free_total() as f64),
                        "lin" => (k.frag_delta + q * k.leftover, 0.0),
                        "open" => (k.frag_delta + q * f64::from(u8::from(node.gpus_idle() == node.gpu_milli.len() && node.gpus_idle() > 0)), 0.0),
                        "openq" => (d, f64::from(u8::from(node.gpus_idle() == node.gpu_milli.len()))),
                        _ => (k.frag_delta, k.leftover),
                    };
                    Choice { key, gpus }
                }),
        };
        self.cache[n][class] = Some(c.clone());
        c
    }

    fn place(&mut self, n: usize, task: &TaskShape, gpus: &[usize]) {
        self.nodes[n].take(task, gpus);
        self.frag[n] = node_fragmentation(&self.nodes[n], self.workload);
        self.cache[n].iter_mut().for_each(|c| *c = None);
    }
}

/// The random policy's GPU for a shared task: uniform among GPUs with room (the
/// artifact's `allocateGpuIdBasedOnRandomFit`); whole GPUs stay the first idle ones.
fn random_gpus(node: &NodeFree, task: &TaskShape, fallback: Vec<usize>, rng: &mut ChaCha8Rng) -> Vec<usize> {
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

/// Places the arrival sequence of `seed` with `packer` and measures it.
pub fn run(
    nodes: &[TraceNode],
    pods: &[TracePod],
    workload: &Workload,
    packer: Packer,
    seed: u64,
    ratio_pct: u32,
) -> RunResult {
    let capacity: u64 = nodes.iter().map(|n| n.idle.gpu_milli_free_total()).sum();
    let sequence = arrivals(pods, capacity, ratio_pct, seed);
    // Task classes for the cache: each distinct shape without memory gets an id.
    let mut class_ids: HashMap<TaskShape, usize> = HashMap::new();
    let class_of: Vec<usize> = pods
        .iter()
        .map(|p| {
            let next = class_ids.len();
            *class_ids.entry(p.shape.class_key()).or_insert(next)
        })
        .collect();
    let mut cluster = Cluster::new(nodes, workload, class_ids.len());
    // Ties are drawn from their own stream so every policy sees the same sequence.
    let mut ties = ChaCha8Rng::seed_from_u64(seed);
    ties.set_stream(1);
    let mut rank: Vec<usize> = (0..nodes.len()).collect();
    let mut rr = ChaCha8Rng::seed_from_u64(seed);
    rr.set_stream(2);
    rank.shuffle(&mut rr);
    let (mut arrived, mut used, mut failed) = (0u64, 0u64, 0usize);
    let mut events = Vec::with_capacity(sequence.len());
    for &p in &sequence {
        let task = &pods[p].shape;
        arrived += task.gpu_milli_total();
        match select(&mut cluster, task, class_of[p], packer, &mut ties, &rank) {
            Some((n, gpus)) => {
                cluster.place(n, task, &gpus);
                used += task.gpu_milli_total();
            }
            None => {
                failed += 1;
                if std::env::var("DIAG").is_ok() && arrived > capacity {
                    eprintln!("FAIL gpus={} milli={} cpu={} models={:?}", task.gpus, task.gpu_milli, task.cpu_milli, task.models);
                }
            }
        }
        events.push((arrived, used));
    }
    if std::env::var("DIAG").is_ok() {
        for n in &cluster.nodes {
            eprintln!("NODE {} cpu={} gpus={:?}", n.model, n.cpu_milli, n.gpu_milli);
        }
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

/// The node and GPUs `packer` picks for `task`, or `None` when no node fits it. Keys are
/// compared lower-first; equal keys go to a uniformly random one of them (reservoir
/// sampling, as kube-scheduler's `selectHost`) except for berth, which keeps the lowest
/// node index.
fn select(
    cluster: &mut Cluster,
    task: &TaskShape,
    class: usize,
    packer: Packer,
    ties: &mut ChaCha8Rng,
    rank: &[usize],
) -> Option<(usize, Vec<usize>)> {
    let mut best: Option<(usize, Choice)> = None;
    let mut equal = 0u32;
    let by_rank = std::env::var("TIES_ORDER").is_ok();
    for n in 0..cluster.nodes.len() {
        if !cluster.nodes[n].fits(task) {
            continue;
        }
        let Some(c) = cluster.choice(n, task, class, packer) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some((bn, b)) => c.key < b.key || (by_rank && packer != Packer::Random && c.key == b.key && rank[n] < rank[*bn]),
        };
        if better {
            best = Some((n, c));
            equal = 1;
        } else if best.as_ref().is_some_and(|(_, b)| c.key == b.key) && packer != Packer::Berth && !(by_rank && packer != Packer::Random) {
            equal += 1;
            if ties.gen_range(0..equal) == 0 {
                best = Some((n, c));
            }
        }
    }
    let (n, c) = best?;
    let gpus = if packer == Packer::Random {
        random_gpus(&cluster.nodes[n], task, c.gpus, ties)
    } else {
        c.gpus
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
