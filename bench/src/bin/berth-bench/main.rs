//! `berth-bench`: benchmarks of berth's own code, run on purpose (numbers in README).
//!
//! `berth-bench placement --nodes N --job gpu1|gpu8|gang64 [--packing P] [--json]`:
//! placement decisions per second on a synthetic cluster of N nodes × 8 GPUs (each a DGX-H100 as its agent
//! reports it: NVSwitch between all GPUs, two NUMA nodes), leaf switches of `--leaf-size`
//! nodes under one spine, half full (each node has 0–8 random GPUs held, uniformly, seeded).
//! Two measures:
//! - `placements_per_s`: the steady state of the placement path a pass runs per job —
//!   [`View::select`] (free-GPU buckets → filters → best-connected GPU set → scorers →
//!   lowest common switch for gangs) then [`take_whole`] — with the oldest of a small window
//!   of placements released after each, so occupancy stays near half;
//! - `pass_placements_per_s`: one whole `policies::schedule` pass (priority, backfill
//!   reservations, quotas off) over `--pass-jobs` pending jobs of that shape: decisions made
//!   divided by the pass's wall time, cluster indexing included.

mod placement;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-bench", about = "berth benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Placement decisions per second (see the binary's docs).
    Placement(placement::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Placement(a) => placement::run(&a),
    }
}
