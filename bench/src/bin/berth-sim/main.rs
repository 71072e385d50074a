//! `berth-sim`: replays a GPU-cluster trace against the real `berth-policies` code on a
//! simulated clock and reports job completion times, queueing delay, makespan, GPU
//! utilization and fairness.
//!
//! `berth-sim philly --policy fifo|firstfit|backfill|berth [--nodes N] [--gpus-per-node G]
//! [--accounts A] [--walltime-factor F] [--trace PATH] [--json]`
//!
//! Jobs go to accounts `team0..team{A-1}` by FNV-1a of their Philly application id (equal
//! shares); each job's time limit is its actual runtime times F (1.0: exact estimates). A
//! preempted job restarts from scratch. See README for the metric definitions.
//!
//! `berth-sim alibaba --pods default|multigpu50|gpushare100|gpuspec33
//! --policy random|bestfit|fgd|berth|all --seeds N [--json]`: the FGD evaluation protocol
//! on the Alibaba GPU-sharing trace (see the `alibaba` module).

mod alibaba;
mod engine;
mod trace;

use anyhow::bail;
use berth_policies::{AccountTree, PolicyConfig, PolicyKind};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Replay GPU-cluster traces against berth's policies")]
struct Args {
    #[command(subcommand)]
    trace: TraceCmd,
}

#[derive(Subcommand)]
enum TraceCmd {
    /// The Microsoft Philly multi-GPU subset (shared/traces/philly-multigpu/jobs.json).
    Philly(Opts),
    /// The Alibaba GPU-sharing trace (shared/traces/alibaba-gpu-v2023) under the FGD
    /// evaluation protocol.
    Alibaba(alibaba::Opts),
}

#[derive(clap::Args)]
struct Opts {
    /// Scheduling policy.
    #[arg(long, value_enum, default_value_t = Policy::Berth)]
    policy: Policy,
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 64)]
    nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// Number of equally weighted accounts jobs are spread over.
    #[arg(long, default_value_t = 8)]
    accounts: u64,
    /// Time limit = actual runtime × this (≥ 1).
    #[arg(long, default_value_t = 1.0)]
    walltime_factor: f64,
    /// Path of jobs.json (default: shared/traces next to the workspace).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Priority weight of the job-size factor (berth policy; Slurm PriorityWeightJobSize).
    #[arg(long, default_value_t = 0)]
    weight_size: u32,
    /// Priority weight of the fair-share factor (berth policy).
    #[arg(long, default_value_t = 10_000)]
    weight_fairshare: u32,
    /// Priority weight of the short-time-limit factor (berth extension).
    #[arg(long, default_value_t = 0)]
    weight_short: u32,
    /// The size factor favors small jobs (Slurm PriorityFavorSmall).
    #[arg(long)]
    favor_small: bool,
    /// Usage half-life in hours (0: no decay).
    #[arg(long, default_value_t = 168)]
    half_life_h: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Policy {
    /// Strict FIFO: the first job that cannot start blocks every later one (Slurm's
    /// builtin scheduler without backfill).
    Fifo,
    /// FIFO order, first fit: any later job that fits starts (berthd before fair share).
    Firstfit,
    /// FIFO order with EASY backfill.
    Backfill,
    /// Fair Tree multifactor priority + EASY backfill (+ preemption, quotas if configured).
    Berth,
}

fn main() -> anyhow::Result<()> {
    let o = match Args::parse().trace {
        TraceCmd::Philly(o) => o,
        TraceCmd::Alibaba(o) => return alibaba::main(o),
    };
    if o.nodes == 0 || o.gpus_per_node == 0 || o.accounts == 0 {
        bail!("--nodes, --gpus-per-node and --accounts must be at least 1");
    }
    if !(o.walltime_factor >= 1.0 && o.walltime_factor.is_finite()) {
        bail!("--walltime-factor must be a number ≥ 1 (jobs would be killed at their limit)");
    }
    let path = o.trace.clone().unwrap_or_else(trace::default_path);
    let jobs = trace::load(&path, o.accounts, o.gpus_per_node)?;
    let too_big: Vec<_> = jobs
        .iter()
        .filter(|j| j.nodes > o.nodes)
        .map(|j| j.id)
        .collect();
    if !too_big.is_empty() {
        bail!(
            "{} job(s) need more than {} nodes (e.g. job {}): use --nodes",
            too_big.len(),
            o.nodes,
            too_big[0]
        );
    }
    let mut cfg = config(o.policy, o.accounts)?;
    cfg.weights.size = o.weight_size;
    cfg.weights.fairshare = o.weight_fairshare;
    cfg.weights.favor_small = o.favor_small;
    cfg.weights.short = o.weight_short;
    cfg.half_life_ms = o.half_life_h * 3600 * 1000;
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} jobs done",
        )
        .expect("static template"),
    );
    let started = std::time::Instant::now();
    let run = engine::replay(
        &jobs,
        engine::cluster(o.nodes, o.gpus_per_node),
        &cfg,
        o.walltime_factor,
        &bar,
    );
    bar.finish_and_clear();
    let m = metrics(&jobs, &run);
    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "avg_jct_s": m.avg_jct_s, "p99_jct_s": m.p99_jct_s, "avg_queue_s": m.avg_queue_s,
                "makespan_s": m.makespan_s, "gpu_util": m.gpu_util, "jain": m.jain,
                "max_min_share_ratio": m.max_min, "preemptions": m.restarts,
                "passes": run.passes, "jobs": jobs.len(), "wall_s": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!(
            "trace {} ({} jobs), {} nodes x {} GPUs, policy {:?}",
            path.display(),
            jobs.len(),
            o.nodes,
            o.gpus_per_node,
            cfg.kind
        );
        println!("avg JCT          {:>12.0} s", m.avg_jct_s);
        println!("p99 JCT          {:>12.0} s", m.p99_jct_s);
        println!("avg queueing     {:>12.0} s", m.avg_queue_s);
        println!("makespan         {:>12.0} s", m.makespan_s);
        println!("GPU utilization  {:>12.4}", m.gpu_util);
        println!("Jain (contended) {:>12.4}", m.jain);
        println!("max/min share    {:>12.3}", m.max_min);
        println!("preemptions      {:>12}", m.restarts);
        println!(
            "passes {} in {:.2} s",
            run.passes,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn config(policy: Policy, accounts: u64) -> anyhow::Result<PolicyConfig> {
    let names: Vec<String> = (0..accounts).map(|i| format!("team{i}")).collect();
    let flat: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let mut cfg = PolicyConfig {
        kind: match policy {
            Policy::Fifo => PolicyKind::StrictFifo,
            Policy::Firstfit => PolicyKind::Fifo,
            Policy::Backfill => PolicyKind::Backfill,
            Policy::Berth => PolicyKind::Berth,
        },
        accounts: AccountTree::flat(&flat)?,
        ..PolicyConfig::default()
    };
    cfg.weights.age_max_ms = 24 * 3600 * 1000;
    Ok(cfg)
}

struct Metrics {
    avg_jct_s: f64,
    p99_jct_s: f64,
    avg_queue_s: f64,
    makespan_s: f64,
    gpu_util: f64,
    jain: f64,
    max_min: f64,
    restarts: u64,
}

fn metrics(jobs: &[trace::TraceJob], run: &engine::Run) -> Metrics {
    let n = jobs.len().max(1) as f64;
    let mut jct: Vec<f64> = jobs
        .iter()
        .map(|j| (run.outcomes[j.id as usize - 1].end_ms - j.submit_ms) as f64 / 1000.0)
        .collect();
    let queue: f64 = jobs
        .iter()
        .map(|j| {
            (run.outcomes[j.id as usize - 1].end_ms - j.submit_ms - j.runtime_ms) as f64 / 1000.0
        })
        .sum();
    jct.sort_by(f64::total_cmp);
    let p99 = jct[((jct.len() as f64 * 0.99).ceil() as usize).clamp(1, jct.len()) - 1];
    let first = jobs.iter().map(|j| j.submit_ms).min().unwrap_or(0);
    let last = run.outcomes.iter().map(|o| o.end_ms).max().unwrap_or(0);
    let makespan_ms = (last - first).max(1) as f64;
    // Average GPUs held by each account while it had jobs waiting and another did too.
    let rates: Vec<f64> = run
        .contended
        .values()
        .filter(|(_, t)| *t > 0.0)
        .map(|(g, t)| g / t)
        .collect();
    let sum: f64 = rates.iter().sum();
    let sq: f64 = rates.iter().map(|x| x * x).sum();
    let jain = if sq > 0.0 {
        sum * sum / (rates.len() as f64 * sq)
    } else {
        1.0
    };
    let max = rates.iter().copied().fold(0.0, f64::max);
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    Metrics {
        avg_jct_s: jct.iter().sum::<f64>() / n,
        p99_jct_s: p99,
        avg_queue_s: queue / n,
        makespan_s: makespan_ms / 1000.0,
        gpu_util: run.gpu_ms / (run.gpus as f64 * makespan_ms),
        jain,
        max_min: if min > 0.0 { max / min } else { f64::INFINITY },
        restarts: run.outcomes.iter().map(|o| u64::from(o.restarts)).sum(),
    }
}
