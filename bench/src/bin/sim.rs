//! `sim`: runs the deterministic cluster simulator for one seed or a range of seeds.
//!
//! A failing seed prints what broke and the exact command that replays it, and the process
//! exits with the failure's code (127 during the run, 128 at the end checks, 129 when the
//! cluster did not settle).

use berth_bench::sim::{banner, run, SimConfig};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Deterministic simulation of a berthd cluster under seeded faults")]
struct Args {
    /// First seed (default: from the clock, printed so it can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Replicas in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    replicas: u64,
    /// Simulated milliseconds of faults and client load.
    #[arg(long)]
    safety_ms: Option<u64>,
    /// Probability that a message is lost.
    #[arg(long)]
    loss: Option<f64>,
    /// Probability per millisecond that a live replica crashes.
    #[arg(long)]
    crash_p: Option<f64>,
}

fn main() {
    let args = Args::parse();
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    for seed in first..first.saturating_add(args.seeds) {
        let mut cfg = SimConfig::new(seed, args.replicas);
        cfg.safety_ms = args.safety_ms.unwrap_or(cfg.safety_ms);
        cfg.faults.loss = args.loss.unwrap_or(cfg.faults.loss);
        cfg.crash_p = args.crash_p.unwrap_or(cfg.crash_p);
        if !(0.0..=1.0).contains(&cfg.faults.loss) || !(0.0..=1.0).contains(&cfg.crash_p) {
            eprintln!("sim: --loss and --crash-p are probabilities in [0, 1]");
            std::process::exit(2);
        }
        println!("{}", banner(&cfg));
        match run(&cfg) {
            Ok(r) => println!(
                "ok: {} submits acked, {} cancels acked, {} unknown, {} entries committed, \
                 {} restarts, {} jobs requeued by preemption, {} pods, messages \
                 delivered/lost/duplicated {:?}, settled in {} ms, state {:016x}",
                r.acked_submits,
                r.acked_cancels,
                r.unknown,
                r.committed,
                r.restarts,
                r.requeued,
                r.pods,
                r.messages,
                r.settled_ms,
                r.state_hash
            ),
            Err(f) => {
                println!("FAILED ({}): {}", f.code, f.what);
                println!(
                    "reproduce: cargo run --release -p berth-bench --bin sim -- --seed {seed} --replicas {}{}",
                    args.replicas,
                    overrides(&args)
                );
                std::process::exit(f.code);
            }
        }
    }
}

fn overrides(args: &Args) -> String {
    let mut s = String::new();
    if let Some(v) = args.safety_ms {
        s += &format!(" --safety-ms {v}");
    }
    if let Some(v) = args.loss {
        s += &format!(" --loss {v}");
    }
    if let Some(v) = args.crash_p {
        s += &format!(" --crash-p {v}");
    }
    s
}
