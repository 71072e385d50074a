//! `berth-sim alibaba`: the FGD evaluation protocol on the Alibaba GPU-sharing trace
//! (openb, cluster-trace-gpu-v2023), comparing random, best-fit, FGD and berth's packing
//! on the same arrival sequences. See README "Packing on the Alibaba trace" for the
//! protocol and every deviation from the FGD artifact.

mod run;
mod trace;

use anyhow::{bail, Context as _};
use berth_policies::fragmentation::{Workload, TYPICAL_POPULARITY_PCT};
use clap::ValueEnum;
use run::{Packer, Setup, Ties};
use std::path::PathBuf;

/// Options of `berth-sim alibaba`.
#[derive(clap::Args)]
pub struct Opts {
    /// Pod list (openb_pod_list_<NAME>.csv).
    #[arg(long, value_enum, default_value_t = PodList::Default)]
    pods: PodList,
    /// Placement policy; `all` runs the four side by side on the same sequences.
    #[arg(long, value_enum, default_value_t = PolicyArg::Berth)]
    policy: PolicyArg,
    /// Number of seeds.
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// First seed (the artifact's run scripts use 42..=51).
    #[arg(long, default_value_t = 42)]
    first_seed: u64,
    /// Tie-breaking of random, best-fit and FGD: `order` (a seeded node order, which
    /// reproduces the published figures) or `uniform` (stock kube-scheduler).
    #[arg(long, value_enum, default_value_t = TiesArg::Order)]
    ties: TiesArg,
    /// Node list: `gpu` (the 1,213 GPU nodes, as the artifact) or `all` (all 1,523).
    #[arg(long, value_enum, default_value_t = NodeList::Gpu)]
    nodes: NodeList,
    /// Arrived GPU demand to stop at, percent of cluster GPU capacity.
    #[arg(long, default_value_t = 130)]
    arrive_pct: u32,
    /// Directory with the openb CSV files (default: shared/traces/alibaba-gpu-v2023).
    #[arg(long)]
    trace_dir: Option<PathBuf>,
    /// Worker threads over seeds (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum PodList {
    Default,
    Multigpu50,
    Gpushare100,
    Gpuspec33,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
enum PolicyArg {
    Random,
    Bestfit,
    Fgd,
    Berth,
    All,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum TiesArg {
    Order,
    Uniform,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum NodeList {
    Gpu,
    All,
}

impl PodList {
    fn file(self) -> &'static str {
        match self {
            PodList::Default => "openb_pod_list_default.csv",
            PodList::Multigpu50 => "openb_pod_list_multigpu50.csv",
            PodList::Gpushare100 => "openb_pod_list_gpushare100.csv",
            PodList::Gpuspec33 => "openb_pod_list_gpuspec33.csv",
        }
    }
}

fn packers(p: PolicyArg) -> Vec<(&'static str, Packer)> {
    let all = [
        ("random", Packer::Random),
        ("bestfit", Packer::BestFit),
        ("fgd", Packer::Fgd),
        ("berth", Packer::Berth),
    ];
    match p {
        PolicyArg::Random => vec![all[0]],
        PolicyArg::Bestfit => vec![all[1]],
        PolicyArg::Fgd => vec![all[2]],
        PolicyArg::Berth => vec![all[3]],
        PolicyArg::All => all.to_vec(),
    }
}

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// Runs the comparison and prints it.
pub fn main(o: Opts) -> anyhow::Result<()> {
    if o.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if !(100..=1000).contains(&o.arrive_pct) {
        bail!("--arrive-pct must be in 100..=1000 (the rate at 100 % needs that much demand)");
    }
    let dir = o.trace_dir.clone().unwrap_or_else(trace::default_dir);
    let node_file = dir.join("openb_node_list_all_node.csv");
    let pod_file = dir.join(o.pods.file());
    let nodes = trace::parse_nodes(&trace::read(&node_file)?, matches!(o.nodes, NodeList::Gpu))
        .with_context(|| node_file.display().to_string())?;
    let pods = trace::parse_pods(&trace::read(&pod_file)?)
        .with_context(|| pod_file.display().to_string())?;
    // FGD's target workload: the typical classes of the pod list as given.
    let workload = Workload::typical(pods.iter().map(|p| &p.shape), TYPICAL_POPULARITY_PCT)?;
    let threads = o
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let setup = Setup {
        nodes: &nodes,
        pods: &pods,
        workload: &workload,
        ratio_pct: o.arrive_pct,
        ties: match o.ties {
            TiesArg::Order => Ties::Order,
            TiesArg::Uniform => Ties::Uniform,
        },
    };
    let started = std::time::Instant::now();
    let mut report = Vec::new();
    for (name, packer) in packers(o.policy) {
        let seeds: Vec<u64> = (o.first_seed..o.first_seed.saturating_add(o.seeds)).collect();
        let results = std::thread::scope(|s| {
            let chunks: Vec<_> = seeds
                .chunks(seeds.len().div_ceil(threads))
                .map(|chunk| {
                    let setup = &setup;
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|&seed| run::run(setup, packer, seed))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            chunks
                .into_iter()
                .flat_map(|h| h.join().expect("seed worker panicked"))
                .collect::<Vec<_>>()
        });
        report.push((name, seeds, results));
    }
    print(
        &o,
        &nodes,
        &pods,
        &workload,
        &report,
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

type Report<'a> = [(&'static str, Vec<u64>, Vec<run::RunResult>)];

fn print(
    o: &Opts,
    nodes: &[trace::TraceNode],
    pods: &[trace::TracePod],
    workload: &Workload,
    report: &Report,
    wall_s: f64,
) {
    let gpus: u64 = nodes.iter().map(|n| n.idle.gpu_milli.len() as u64).sum();
    let rows: Vec<serde_json::Value> = report
        .iter()
        .map(|(name, seeds, rs)| {
            let r100: Vec<f64> = rs.iter().map(|r| r.alloc_rate_100).collect();
            let r130: Vec<f64> = rs.iter().map(|r| r.alloc_rate_130).collect();
            let (m100, s100) = mean_sd(&r100);
            let (m130, s130) = mean_sd(&r130);
            serde_json::json!({
                "pods": format!("{:?}", o.pods).to_lowercase(), "policy": name,
                "seeds": seeds, "alloc_rate_100": m100, "alloc_rate_100_sd": s100,
                "alloc_rate_130": m130, "alloc_rate_130_sd": s130,
                "per_seed_130": r130, "per_seed_100": r100,
                "tasks_arrived_mean": rs.iter().map(|r| r.arrived as f64).sum::<f64>() / rs.len() as f64,
                "tasks_failed_mean": rs.iter().map(|r| r.failed as f64).sum::<f64>() / rs.len() as f64,
                "nodes": nodes.len(), "gpus": gpus, "task_classes": workload.classes.len(),
            })
        })
        .collect();
    if o.json {
        let out = if rows.len() == 1 {
            rows[0].clone()
        } else {
            serde_json::Value::Array(rows)
        };
        println!("{out}");
        return;
    }
    println!(
        "pod list {:?} ({} pods, {} typical classes), {} nodes, {} GPUs, arrive to {} %, {} seeds from {}, ties {:?}",
        o.pods,
        pods.len(),
        workload.classes.len(),
        nodes.len(),
        gpus,
        o.arrive_pct,
        o.seeds,
        o.first_seed,
        o.ties
    );
    println!("policy    alloc@100%        alloc@130%        tasks  failed");
    for r in &rows {
        println!(
            "{:<8} {:>7.2} ±{:<5.2}    {:>7.2} ±{:<5.2}    {:>6.0} {:>6.0}",
            r["policy"].as_str().unwrap_or(""),
            r["alloc_rate_100"].as_f64().unwrap_or(f64::NAN),
            r["alloc_rate_100_sd"].as_f64().unwrap_or(f64::NAN),
            r["alloc_rate_130"].as_f64().unwrap_or(f64::NAN),
            r["alloc_rate_130_sd"].as_f64().unwrap_or(f64::NAN),
            r["tasks_arrived_mean"].as_f64().unwrap_or(f64::NAN),
            r["tasks_failed_mean"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!("wall {wall_s:.1} s");
}

#[cfg(test)]
mod tests;
