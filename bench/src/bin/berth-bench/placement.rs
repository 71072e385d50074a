//! The placement throughput benchmark; see the binary's docs.

use berth_policies::backfill::View;
use berth_policies::gang::take_whole;
use berth_policies::packing::Packing;
use berth_policies::topology::{GpuLink, NetworkConf, NodeLinks, Topology};
use berth_policies::{
    ClusterSnapshot, Decision, GpuView, NodeView, PendingJob, Pipeline, PolicyConfig, PolicyKind,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Job shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// One GPU on one node.
    Gpu1,
    /// Eight GPUs on one node.
    Gpu8,
    /// Eight nodes × eight GPUs, all-or-nothing.
    Gang64,
}

/// `berth-bench placement` options.
#[derive(clap::Args)]
pub struct Args {
    /// Nodes of 8 GPUs each.
    #[arg(long, default_value_t = 10_000)]
    nodes: u32,
    /// Job shape placed.
    #[arg(long, value_enum)]
    job: Shape,
    /// Nodes per leaf switch (all leaves under one spine).
    #[arg(long, default_value_t = 32)]
    leaf_size: u32,
    /// Placements timed in the steady-state measure.
    #[arg(long, default_value_t = 20_000)]
    decisions: u32,
    /// Pending jobs in the one-pass measure.
    #[arg(long, default_value_t = 5_000)]
    pass_jobs: u32,
    /// Seed of the cluster's occupancy.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packing scorer of the cluster's partition: bestfit (berthd's default), spread, fgd
    /// or berth. fgd and berth measure against a workload of 1-, 2-, 4- and 8-GPU jobs and
    /// 64-GPU gangs in equal numbers (the steady measure) or of the pass's pending jobs.
    #[arg(long, default_value = "bestfit", value_parser = parse_packing)]
    packing: Packing,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_packing(text: &str) -> Result<Packing, String> {
    Packing::parse(text).map_err(|e| e.to_string())
}

fn config(a: &Args, kind: PolicyKind) -> PolicyConfig {
    PolicyConfig {
        kind,
        packing_default: a.packing,
        ..PolicyConfig::default()
    }
}

fn dgx_links(name: &str) -> NodeLinks {
    let mut pairs = Vec::new();
    for a in 0..8 {
        for b in a + 1..8 {
            pairs.push((a, b, GpuLink::NvSwitch));
        }
    }
    NodeLinks {
        name: name.into(),
        gpus: (0..8).map(|i| (i, i / 4)).collect(),
        pairs,
    }
}

/// The half-full cluster, its topology installed.
fn cluster(a: &Args) -> ClusterSnapshot {
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut nodes = Vec::with_capacity(a.nodes as usize);
    for n in 0..a.nodes {
        let name = format!("node{n:05}");
        let mut idx: Vec<u32> = (0..8).collect();
        idx.shuffle(&mut rng);
        let held: Vec<u32> = idx[..rng.gen_range(0..=8)].to_vec();
        nodes.push(NodeView {
            gpus: (0..8)
                .map(|g| GpuView {
                    uuid: format!("GPU-{name}-{g}"),
                    index: g,
                    gres_type: "h100".into(),
                    free: !held.contains(&g),
                    ..GpuView::default()
                })
                .collect(),
            name,
            partition: "gpu".into(),
            up: true,
            cpus_total: 224,
            cpus_free: 224,
            memory_total_mb: 2 << 20,
            memory_free_mb: 2 << 20,
            ..NodeView::default()
        });
    }
    let leaves = a.nodes.div_ceil(a.leaf_size.max(1));
    let mut conf = String::new();
    for l in 0..leaves {
        let (lo, hi) = (l * a.leaf_size, ((l + 1) * a.leaf_size).min(a.nodes) - 1);
        conf += &format!("SwitchName=leaf{l} Nodes=node[{lo:05}-{hi:05}]\n");
    }
    conf += &format!("SwitchName=spine Switches=leaf[0-{}]\n", leaves - 1);
    let net = NetworkConf::parse(&conf).expect("generated topology parses");
    let links: Vec<NodeLinks> = nodes.iter().map(|n| dgx_links(&n.name)).collect();
    ClusterSnapshot {
        nodes,
        topology: Arc::new(Topology::build(&net, &links)),
        ..Default::default()
    }
}

fn job(id: u64, shape: Shape) -> PendingJob {
    let (nodes, gpus) = match shape {
        Shape::Gpu1 => (1, 1),
        Shape::Gpu8 => (1, 8),
        Shape::Gang64 => (8, 8),
    };
    PendingJob {
        id,
        partition: "gpu".into(),
        nodes,
        gpus_per_node: gpus,
        cpus_per_node: 8,
        account: "a".into(),
        time_limit_s: 3600,
        ..Default::default()
    }
}

/// Steady state: (placements per second, placements refused).
fn steady(a: &Args, snap: &ClusterSnapshot) -> (f64, u32) {
    let cfg = config(a, PolicyConfig::default().kind);
    let mixed: Vec<PendingJob> = [(1, 1), (1, 2), (1, 4), (1, 8), (8, 8)]
        .iter()
        .map(|&(nodes, gpus)| PendingJob {
            nodes,
            gpus_per_node: gpus,
            ..job(0, Shape::Gpu1)
        })
        .collect();
    let workloads = berth_policies::workload::partition_workloads(snap, &mixed, &cfg, 0);
    let pipeline = Pipeline::at(&cfg, 0).with_workloads(workloads);
    let mut view = View::new(snap.clone());
    let per_job = job(0, a.job).gpus_total() as usize;
    // Released after a window of 1% of the cluster's GPUs, so occupancy stays near half.
    let window = (a.nodes as usize * 8 / 100 / per_job).max(1);
    let mut live: VecDeque<Decision> = VecDeque::with_capacity(window + 1);
    let mut refused = 0;
    let started = Instant::now();
    for i in 0..a.decisions {
        match view.select(&pipeline, &job(u64::from(i) + 1, a.job)) {
            Ok(d) => {
                take_whole(&mut view, &d).expect("a decision from this view fits it");
                live.push_back(d);
            }
            Err(_) => refused += 1,
        }
        if live.len() > window {
            let old = live.pop_front().expect("window is not empty");
            view.give(&old.nodes);
        }
    }
    (
        f64::from(a.decisions) / started.elapsed().as_secs_f64(),
        refused,
    )
}

/// One pass over `pass_jobs` pending jobs: (decisions per second, decisions, pass ms).
fn pass(a: &Args, snap: &ClusterSnapshot) -> (f64, usize, f64) {
    let cfg = config(a, PolicyKind::Backfill);
    let pending: Vec<PendingJob> = (0..a.pass_jobs)
        .map(|i| job(u64::from(i) + 1, a.job))
        .collect();
    let started = Instant::now();
    let s = berth_policies::schedule(snap, &pending, &cfg, 0);
    let secs = started.elapsed().as_secs_f64();
    (
        s.decisions.len() as f64 / secs,
        s.decisions.len(),
        secs * 1000.0,
    )
}

/// Runs the benchmark and prints the result.
///
/// # Errors
/// Never today; kept for the binary's `anyhow` edge.
pub fn run(a: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.nodes >= 8,
        "--nodes must be at least 8 (a gang64 needs 8)"
    );
    let built = Instant::now();
    let snap = cluster(a);
    let build_ms = built.elapsed().as_secs_f64() * 1000.0;
    let held: usize = snap
        .nodes
        .iter()
        .map(|n| n.gpus.iter().filter(|g| !g.free).count())
        .sum();
    let (per_s, refused) = steady(a, &snap);
    let (pass_per_s, pass_decisions, pass_ms) = pass(a, &snap);
    let shape = format!("{:?}", a.job).to_lowercase();
    let occupancy = held as f64 / (f64::from(a.nodes) * 8.0);
    if a.json {
        let v = serde_json::json!({
            "nodes": a.nodes, "job": shape, "packing": a.packing.as_str(), "leaf_size": a.leaf_size, "occupancy": occupancy,
            "decisions": a.decisions, "refused": refused, "placements_per_s": per_s,
            "pass_jobs": a.pass_jobs, "pass_decisions": pass_decisions, "pass_ms": pass_ms,
            "pass_placements_per_s": pass_per_s, "topology_build_ms": build_ms,
        });
        println!("{v}");
    } else {
        println!(
            "placement {shape} ({}) on {} nodes x 8 GPUs ({:.1}% held, leaves of {}): {per_s:.0} placements/s \
             ({} decisions, {refused} refused); one pass over {} pending: {pass_decisions} placed in {pass_ms:.1} ms \
             = {pass_per_s:.0} placements/s; cluster + topology built in {build_ms:.0} ms",
            a.packing.as_str(), a.nodes, occupancy * 100.0, a.leaf_size, a.decisions, a.pass_jobs
        );
    }
    Ok(())
}
