//! `berth-agent`: runs berth jobs on this node.

use anyhow::Context as _;
use berth_agent::agent::{self, AgentConfig};
use berth_agent::agent::{HealthReports, Sharing};
use berth_agent::gpu::{self, BackendKind, GpuBackend, NoGpus, NvmlBackend};
use berth_agent::metrics::{self, MetricsSource};
use berth_agent::oci::OciConfig;
use berth_agent::{device_plugin, health, machine, shim};
use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
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
    /// GPU backend: nvml (NVIDIA, default) or rocm (AMD; needs a berth-agent built with
    /// `--features rocm`).
    #[arg(long, default_value = "nvml")]
    gpu_backend: String,
    /// rocm_smi_lib to load with --gpu-backend rocm (a path or a name the loader searches).
    #[arg(long, default_value = "librocm_smi64.so.1")]
    rocm_lib: String,
    /// CPUs offered to jobs (default: all online CPUs).
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory offered to jobs in MiB (default: all).
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL on cancel and time limit.
    #[arg(long, default_value_t = 30)]
    kill_wait_secs: u64,
    /// Serve Prometheus `/metrics` here (e.g. `0.0.0.0:9400`, dcgm-exporter's port).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Offer each GPU as this many shares (time-slicing or MPS; 1 = one job per GPU).
    #[arg(long, default_value_t = 1)]
    gpu_replicas: u32,
    /// How shares are shared: time-slicing or mps (MPS limits per job, and one MPS control
    /// daemon per GPU started by the agent).
    #[arg(long, default_value = "time-slicing")]
    gpu_sharing: String,
    /// MPS control daemon binary started per GPU with --gpu-sharing mps.
    #[arg(long, default_value = "nvidia-cuda-mps-control")]
    mps_control: PathBuf,
    /// Parent of the MPS daemons' pipe and log directories (default: <state-dir>/mps).
    #[arg(long)]
    mps_dir: Option<PathBuf>,
    /// Keep a job's MIG instances when it ends; a later job asking for the same slice
    /// reuses them, one whose slice overlaps them has them destroyed first.
    #[arg(long)]
    mig_keep_layout: bool,
    /// Serve the kubelet device plugin (nvidia.com/gpu) in DIR, registering with
    /// DIR/kubelet.sock; pods then see exactly the GPUs berth granted them.
    #[arg(long, value_name = "DIR", num_args = 0..=1,
          default_missing_value = berth_proto::deviceplugin::DEVICE_PLUGIN_PATH)]
    device_plugin: Option<PathBuf>,
    /// OCI runtime for `--container-image` jobs: runc, crun, or a path.
    #[arg(long, default_value = "runc")]
    container_runtime: PathBuf,
    /// Unpacked image cache (default: <state-dir>/images).
    #[arg(long)]
    image_cache_dir: Option<PathBuf>,
    /// Image cache size limit in MiB; least recently used idle images are evicted above it.
    #[arg(long, default_value_t = 20480)]
    image_cache_max_mb: u64,
    /// Where the agent writes its CDI spec (nvidia.com/gpu) and reads specs from.
    #[arg(long, default_value = "/var/run/cdi")]
    cdi_dir: PathBuf,
    /// Directory holding the GPUs' device nodes (nvidia0, nvidiactl, nvidia-caps/).
    #[arg(long, default_value = "/dev")]
    gpu_dev_dir: PathBuf,
    /// Host paths jobs may not bind-mount (replaces the default list), comma-separated.
    #[arg(long, value_delimiter = ',')]
    container_mount_deny: Option<Vec<PathBuf>>,
    /// Parent cgroup of container jobs (cgroupsPath /<parent>/<container id>).
    #[arg(long, default_value = "berth")]
    cgroup_parent: String,
    /// This node's certificate and the cluster key, as `berth admin ca issue --node NAME`
    /// writes them (ca.pem, tls.pem, tls.key, cluster.key).
    #[arg(long, default_value = "/etc/berth")]
    security_dir: PathBuf,
    /// Run without security: plain TCP, and jobs run as whatever uid their launch claims.
    #[arg(long)]
    insecure: bool,
    /// Serve the local credential daemon here (users' proof of identity; `off`: none).
    #[arg(long, default_value = berth_auth::credd::SOCKET_DEFAULT)]
    cred_socket: String,
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
    let sharing = Sharing::new(a.gpu_replicas, &a.gpu_sharing).map_err(anyhow::Error::msg)?;
    let mut oci = OciConfig::new(&a.state_dir);
    oci.runtime = a.container_runtime;
    if let Some(dir) = a.image_cache_dir {
        oci.cache_dir = dir;
    }
    oci.cache_max_bytes = a.image_cache_max_mb.saturating_mul(1024 * 1024);
    oci.cdi_dir = a.cdi_dir;
    oci.dev_dir = a.gpu_dev_dir;
    if let Some(deny) = a.container_mount_deny {
        oci.mount_deny = deny;
    }
    oci.cgroup_parent = a.cgroup_parent;
    let mut cfg = AgentConfig {
        servers: a.server,
        node_name: a.node_name.unwrap_or_else(machine::hostname),
        partition: a.partition,
        state_dir: a.state_dir,
        shim_exe: std::env::current_exe().context("cannot find own executable for the job shim")?,
        cpus: a.cpus.unwrap_or_else(machine::cpus),
        memory_mb: a.memory_mb.unwrap_or_else(machine::memory_mb),
        heartbeat: Duration::from_secs(5),
        kill_grace: Duration::from_secs(a.kill_wait_secs),
        metrics_url: String::new(),
        sharing,
        oci,
        mps: None,
        mig_keep_layout: a.mig_keep_layout,
        security: security(&a.security_dir, a.insecure)?,
    };
    let kind: BackendKind = a.gpu_backend.parse().map_err(anyhow::Error::msg)?;
    let backend: Arc<dyn GpuBackend> = match (a.no_gpus, kind) {
        (true, _) => Arc::new(NoGpus),
        (false, BackendKind::Nvml) => Arc::new(
            NvmlBackend::open(a.nvml_lib.clone())
                .context("GPU discovery failed (use --no-gpus on a CPU node)")?,
        ),
        (false, BackendKind::Rocm) => gpu::open_rocm(&a.rocm_lib)
            .context("GPU discovery failed (use --no-gpus on a CPU node)")?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let (Some(sec), false) = (&cfg.security, a.cred_socket == "off") {
        let path = PathBuf::from(&a.cred_socket);
        let sock = berth_auth::credd::bind(&path)?;
        tokio::spawn(berth_auth::credd::serve(
            sock,
            sec.key.clone(),
            stop_rx.clone(),
        ));
        tracing::info!("credential daemon on {}", path.display());
    }
    let stop_health = Arc::new(AtomicBool::new(false));
    // XID/ECC events are NVML's; ROCm SMI's event API is not used yet.
    let health_rx = if a.no_gpus || kind == BackendKind::Rocm {
        None
    } else {
        health::watch(a.nvml_lib.clone(), stop_health.clone())
            .map_err(|e| tracing::warn!("no GPU health events: {e}"))
            .ok()
    };
    if let Some(addr) = &a.metrics_listen {
        let src = MetricsSource {
            gpus: backend.clone(),
            state_dir: cfg.state_dir.clone(),
            node: cfg.node_name.clone(),
        };
        cfg.metrics_url = metrics::spawn(addr, src, stop_rx.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!("metrics at {}", cfg.metrics_url);
    }
    let inv = agent::inventory(&cfg, backend.as_ref())
        .context("GPU discovery failed (use --no-gpus on a CPU node)")?;
    for g in &inv.gpus {
        tracing::info!("GPU {} {} {} {} MiB", g.index, g.uuid, g.model, g.memory_mb);
    }
    if let Sharing::Mps { .. } = cfg.sharing {
        let mps_cfg = berth_agent::mps::MpsConfig {
            control: a.mps_control.clone(),
            dir: a
                .mps_dir
                .clone()
                .unwrap_or_else(|| cfg.state_dir.join("mps")),
        };
        let uuids: Vec<String> = inv.gpus.iter().map(|g| g.uuid.clone()).collect();
        let daemons =
            berth_agent::mps::MpsDaemons::start(&mps_cfg, &uuids).context("--gpu-sharing mps")?;
        cfg.mps = Some(Arc::new(daemons));
    }
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm => {}
        }
        let _ = stop_tx.send(true);
    });
    let health_rx = match &a.device_plugin {
        Some(dir) => {
            device_plugin::check_dir(dir)?;
            let dp_cfg = Arc::new(device_plugin::DevicePluginConfig {
                dir: dir.clone(),
                node_name: cfg.node_name.clone(),
                servers: cfg.servers.clone(),
                state_dir: cfg.state_dir.clone(),
                profile: cfg
                    .security
                    .as_ref()
                    .map(|s| s.profile.clone())
                    .unwrap_or_default(),
            });
            let shared = device_plugin::PluginShared::new(&dp_cfg, Some(backend.clone()));
            let mut senders = Vec::new();
            let resources = device_plugin::resources::advertised(&inv.gpus);
            let any_mig = resources
                .iter()
                .any(|(k, _)| matches!(k, device_plugin::resources::Kind::Mig(_)));
            // One registration per resource, as kubelet requires.
            for (kind, devices) in resources {
                let (devices_tx, devices_rx) = tokio::sync::watch::channel(devices);
                senders.push(devices_tx);
                let (dp_cfg, shared, stop) = (dp_cfg.clone(), shared.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let name = kind.resource_name();
                    if let Err(e) = device_plugin::run(dp_cfg, kind, devices_rx, shared, stop).await
                    {
                        tracing::error!("device plugin for {name} stopped: {e}");
                    }
                });
            }
            tokio::spawn(device_plugin::health_sync::follow(
                dp_cfg.servers.clone(),
                dp_cfg.profile.clone(),
                dp_cfg.node_name.clone(),
                senders.clone(),
                stop_rx.clone(),
            ));
            if any_mig {
                tokio::spawn(device_plugin::clean_mig_loop(
                    dp_cfg,
                    shared,
                    stop_rx.clone(),
                ));
            }
            device_plugin::tee_health(health_rx, senders)
        }
        None => health_rx,
    };
    let health = HealthReports::new(health_rx);
    agent::run(cfg, inv, backend, health, stop_rx).await?;
    stop_health.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The agent's security: the node directory's, or none with `--insecure` (warned about
/// loudly). Neither is an error: insecure is never the default.
fn security(dir: &std::path::Path, insecure: bool) -> anyhow::Result<Option<agent::AgentSecurity>> {
    if insecure {
        tracing::warn!(
            "INSECURE: --insecure given: plain TCP, and jobs run as whatever uid their launch \
             claims (root included)"
        );
        return Ok(None);
    }
    if !dir.join(berth_auth::ca::CERT).exists() {
        anyhow::bail!(
            "no security configuration in {}: issue this node's with `berth admin ca issue \
             --ca CA_DIR --node NAME --out {}` (or pass --security-dir DIR), or run with \
             --insecure for a throwaway test",
            dir.display(),
            dir.display()
        );
    }
    Ok(Some(agent::AgentSecurity::load(dir)?))
}
