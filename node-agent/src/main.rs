//! `berth-agent`: runs berth jobs on this node.

use anyhow::Context as _;
use berth_agent::agent::{self, AgentConfig};
use berth_agent::gpu::{GpuBackend, GpuError, GpuInventory, NvmlBackend};
use berth_agent::{machine, shim};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// berth-agent: the berth node agent.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// berthd address(es), comma-separated.
    #[arg(
        long,
        env = "BERTH_SERVER",
        default_value = "http://127.0.0.1:7700",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// Node name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Partition (node pool) this node belongs to.
    #[arg(long, default_value = "gpu")]
    partition: String,
    /// Directory for job state (survives agent restarts).
    #[arg(long, default_value = "/var/lib/berth-agent")]
    state_dir: PathBuf,
    /// Path of libnvidia-ml (default: the driver's libnvidia-ml.so.1).
    #[arg(long)]
    nvml_lib: Option<PathBuf>,
    /// This node has no GPUs: do not load NVML.
    #[arg(long)]
    no_gpus: bool,
    /// CPUs offered to jobs (default: all online CPUs).
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory offered to jobs in MiB (default: all).
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL on cancel and time limit.
    #[arg(long, default_value_t = 30)]
    kill_wait_secs: u64,
}

struct NoGpus;

impl GpuBackend for NoGpus {
    fn inventory(&self) -> Result<GpuInventory, GpuError> {
        Ok(GpuInventory::default())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shim::run_if_shim();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let a = Args::parse();
    let cfg = AgentConfig {
        servers: a.server,
        node_name: a.node_name.unwrap_or_else(machine::hostname),
        partition: a.partition,
        state_dir: a.state_dir,
        shim_exe: std::env::current_exe().context("cannot find own executable for the job shim")?,
        cpus: a.cpus.unwrap_or_else(machine::cpus),
        memory_mb: a.memory_mb.unwrap_or_else(machine::memory_mb),
        heartbeat: Duration::from_secs(5),
        kill_grace: Duration::from_secs(a.kill_wait_secs),
    };
    let backend: Box<dyn GpuBackend> = if a.no_gpus {
        Box::new(NoGpus)
    } else {
        Box::new(NvmlBackend { lib: a.nvml_lib })
    };
    let inv = agent::inventory(&cfg, backend.as_ref())
        .context("GPU discovery failed (use --no-gpus on a CPU node)")?;
    for g in &inv.gpus {
        tracing::info!("GPU {} {} {} {} MiB", g.index, g.uuid, g.model, g.memory_mb);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    agent::run(cfg, inv, stop_rx).await?;
    Ok(())
}
