//! `berth dev`: a whole berth in one process — a one-replica berthd plus N agents on
//! simulated GPU machines — so a new user can submit jobs within a minute of cloning.
//!
//! Nothing is faked but the GPUs: berthd runs raft-rs over sled in `--state-dir`, agents
//! talk to it over real gRPC on the listen address, and each agent discovers its GPUs
//! through nvml-wrapper loading its own copy of the simulated-machine NVML library (one
//! copy per node, so each node has its own library state and UUIDs). Restarting `berth dev`
//! on the same state directory keeps every job, and agents re-attach to jobs still running.

use anyhow::{bail, Context as _};
use berth_agent::agent::{self, AgentConfig};
use berth_agent::agent::{HealthReports, Sharing};
use berth_agent::gpu::{GpuBackend, NvmlBackend};
use berth_agent::metrics::{self, MetricsSource};
use berth_proto::v1::NodeState;
use berth_scheduler::daemon::{Daemon, DaemonConfig};
use berth_simnvml::MachineDescription;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `berth dev` options.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Simulated machine: dgx-h100, dgx-a100, a100-mig, pcie-l40s-4, a100-pcie-4, or a JSON
    /// machine description file.
    #[arg(long, default_value = "dgx-h100")]
    pub machine: String,
    /// State directory (Raft log, agent job state). Default: $XDG_STATE_HOME/berth/dev.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// Partition of the simulated nodes (also the default partition); a comma-separated
    /// list puts node i in the i-th partition, round robin (`a,b`: node1 in a, node2 in b,
    /// node3 in a…), and the first is the default.
    #[arg(long, default_value = "gpu")]
    pub partition: String,
    /// HTTP address of the kube-scheduler extender and berthd's `/metrics` (`off`: none).
    /// Default 127.0.0.1:7701, skipped with a warning when that is taken.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Kubernetes API server the extender binds pods through (e.g. `kubectl proxy`'s
    /// http://127.0.0.1:8001). Default: KUBECONFIG or ~/.kube/config, when there is one.
    #[arg(long)]
    pub kube_api: Option<String>,
    /// Seconds between SIGTERM and SIGKILL on cancel and time limit (Slurm's KillWait).
    #[arg(long, default_value_t = 30)]
    pub kill_wait_secs: u64,
    /// Offer each simulated GPU as this many shares (1 = one job per GPU).
    #[arg(long, default_value_t = 1)]
    pub gpu_replicas: u32,
    /// How shares are shared: time-slicing or mps.
    #[arg(long, default_value = "time-slicing")]
    pub gpu_sharing: String,
    /// With --gpu-sharing mps: start this MPS control daemon binary once per simulated GPU
    /// (directories under each node's state dir). Default: none is started, since the real
    /// nvidia-cuda-mps-control needs a GPU.
    #[arg(long)]
    pub mps_control: Option<PathBuf>,
    /// Simulated agents keep MIG instances after their job for reuse (see berth-agent).
    #[arg(long)]
    pub mig_keep_layout: bool,
    /// Accounts and priority classes (TOML, see README); installed through the Raft log.
    #[arg(long)]
    pub accounts: Option<PathBuf>,
    /// OCI runtime for `--container-image` jobs (runc, crun, or a path).
    #[arg(long, default_value = "runc")]
    pub container_runtime: PathBuf,
    /// Network tree (Slurm topology.conf form, see README) over the simulated nodes
    /// (`node1`…); installed through the Raft log.
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Cluster description (berth.toml, see docs/cluster.md): installed through the Raft
    /// log, and one simulated node started per described node (at most 64), with the
    /// described CPUs, memory and GPUs (from the shipped machine of that GPU type and
    /// count). Replaces --nodes, --machine and --partition.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Turn security off: plain TCP and unproven callers (anyone who reaches the port runs
    /// jobs as any user). Default: TLS with its own CA, callers proven by a credential
    /// daemon, launches sealed.
    #[arg(long)]
    pub insecure: bool,
}

fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("berth/dev")
}

fn machine(name: &str) -> anyhow::Result<MachineDescription> {
    if let Some(m) = berth_simnvml::builtin(name) {
        return Ok(m);
    }
    if !std::path::Path::new(name).exists() {
        bail!(
            "unknown machine {name:?}: use one of {:?} or a JSON machine description file",
            berth_simnvml::builtin_names()
        );
    }
    MachineDescription::load(name).with_context(|| format!("machine description {name}"))
}

/// Runs until Ctrl-C or SIGTERM.
///
/// # Errors
/// Bad options, an unusable state directory, a port in use, or a missing simulator library.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    let partitions: Vec<&str> = args.partition.split(',').collect();
    if partitions
        .iter()
        .any(|p| p.is_empty() || p.contains(char::is_whitespace))
    {
        bail!(
            "--partition {:?}: partition names must be non-empty, without spaces",
            args.partition
        );
    }
    let accounts_toml = match &args.accounts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read accounts file {}", path.display()))?;
            berth_scheduler::accounts::parse(&text)
                .with_context(|| format!("bad accounts file {}", path.display()))?;
            Some(text)
        }
        None => None,
    };
    let topology_conf = match &args.topology {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read topology file {}", path.display()))?;
            berth_policies::topology::NetworkConf::parse(&text)
                .with_context(|| format!("bad topology file {}", path.display()))?;
            Some(text)
        }
        None => None,
    };
    let described = match &args.config {
        Some(path) => Some(described_nodes(path)?),
        None => None,
    };
    let machine = machine(&args.machine)?;
    let nodes: Vec<SimNode> = match &described {
        Some((_, nodes)) => nodes.clone(),
        None => (1..=args.nodes)
            .map(|i| SimNode {
                name: format!("node{i}"),
                partition: partitions[(i as usize - 1) % partitions.len()].to_string(),
                machine: machine.clone(),
            })
            .collect(),
    };
    let sharing = Sharing::new(args.gpu_replicas, &args.gpu_sharing).map_err(anyhow::Error::msg)?;
    let lib = berth_simnvml::find_library()?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut cfg = DaemonConfig::new(state_dir.join("berthd"));
    cfg.default_partition = partitions[0].to_string();
    cfg.schedule_interval = Duration::from_millis(500);
    cfg.accounts_toml = accounts_toml;
    cfg.topology_conf = topology_conf;
    if let Some((toml, _)) = &described {
        cfg.cluster_toml = Some(toml.clone());
        if let Some(n) = nodes.first() {
            cfg.default_partition = n.partition.clone();
        }
    }
    let security = match args.insecure {
        true => {
            // A secure `berth dev` that ran on this address before left its client
            // profile: clients would speak TLS to this plain listener.
            if let Some(path) = berth_auth::profile::profile_path(&addr.to_string()) {
                let _ = std::fs::remove_file(path);
            }
            None
        }
        false => Some(crate::dev_security::prepare(&state_dir, &addr)?),
    };
    cfg.security = security.as_ref().map(|s| s.replica.clone());
    let daemon = Daemon::start(cfg, listener, stop_rx.clone())
        .with_context(|| format!("cannot start berthd on {}", state_dir.display()))?;
    if !daemon.wait_leader(Duration::from_secs(10)).await {
        bail!("berthd did not become leader within 10s");
    }
    let http = berth_scheduler::http::bind(args.http_listen.as_deref())
        .await
        .with_context(|| format!("cannot listen on {:?}", args.http_listen))?;
    let http_url = match http {
        Some(l) => {
            let scheme = if security.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://{}", l.local_addr()?);
            let kube = berth_scheduler::kube_api::start(
                args.kube_api.as_deref(),
                daemon.raft().clone(),
                stop_rx.clone(),
            )
            .await;
            berth_scheduler::http::spawn(l, daemon.api().clone(), kube, stop_rx.clone());
            Some(url)
        }
        None => None,
    };
    let server = match &security {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let profile = match &security {
        Some(s) => Some(s.serve_clients(&addr, stop_rx.clone())?),
        None => None,
    };
    let mut names = Vec::new();
    let mut metrics_urls = Vec::new();
    let mut agents = Vec::new();
    for SimNode {
        name,
        partition,
        machine,
    } in &nodes
    {
        let name = name.clone();
        let node_dir = state_dir.join("nodes").join(&name);
        let nvml_lib = berth_simnvml::install_node(&node_dir.join("nvml"), &lib, machine, &name)?;
        let cfg = AgentConfig {
            servers: vec![server.clone()],
            node_name: name.clone(),
            partition: partition.clone(),
            oci: dev_oci(&node_dir, &args.container_runtime),
            state_dir: node_dir,
            shim_exe: std::env::current_exe()
                .context("cannot find own executable for the job shim")?,
            cpus: machine.cpus,
            memory_mb: machine.memory_mb,
            heartbeat: Duration::from_secs(2),
            kill_grace: Duration::from_secs(args.kill_wait_secs),
            metrics_url: String::new(),
            sharing,
            mps: None,
            mig_keep_layout: args.mig_keep_layout,
            security: security.as_ref().map(|s| s.node(&name)).transpose()?,
        };
        let mps = match (&args.mps_control, sharing) {
            (Some(control), Sharing::Mps { .. }) => Some(berth_agent::mps::MpsConfig {
                control: control.clone(),
                dir: cfg.state_dir.join("mps"),
            }),
            (Some(_), _) => bail!("--mps-control needs --gpu-sharing mps"),
            (None, _) => None,
        };
        let ip = addr.ip().to_string();
        let (url, task) = start_agent(cfg, nvml_lib, &ip, mps, stop_rx.clone()).await?;
        agents.push(task);
        metrics_urls.push(format!("{name} {url}"));
        names.push(name);
    }
    wait_registered(&daemon, &names).await?;
    let gpus = match &described {
        Some(_) => "as described".to_string(),
        None => machine
            .gpus
            .first()
            .map(|g| format!("{}x {}", machine.gpus.len(), g.name))
            .unwrap_or_else(|| "no GPUs".into()),
    };
    let partition_text = match &args.config {
        Some(path) => format!("partitions from {}", path.display()),
        None => format!("partition {}", args.partition),
    };
    println!(
        "berth dev: berthd listening on {server} (state in {})",
        state_dir.display()
    );
    match (&security, &profile) {
        (Some(s), Some(p)) => println!(
            "berth dev: security on: TLS (CA {}), callers proven by the credential daemon at {}; \
             client profile {}",
            s.ca_cert.display(),
            s.cred_socket.display(),
            p.display()
        ),
        _ => println!("berth dev: INSECURE (--insecure): no TLS, callers are whoever they claim"),
    }
    if let Some(url) = &http_url {
        println!(
            "berth dev: berthd metrics at {url}/metrics, kube-scheduler extender at {url} \
             (filter, prioritize, bind, preempt)"
        );
        if let Some(s) = &security {
            println!(
                "berth dev: the extender needs a client certificate: berth admin ca issue --ca {} \
                 --service kube-scheduler --out DIR",
                s.ca_dir().display()
            );
        }
    }
    println!(
        "berth dev: {} simulated node(s) {} ({gpus} each), {partition_text}",
        names.len(),
        crate::hostlist::compress(&names),
    );
    for url in &metrics_urls {
        println!("berth dev: agent metrics {url}");
    }
    println!("berth dev: ready. In another shell: export BERTH_SERVER={server}; berth sbatch --wrap 'nvidia-smi -L || env | grep CUDA'");
    shutdown_signal().await;
    println!("berth dev: shutting down");
    let _ = stop_tx.send(true);
    daemon.wait().await?;
    // Agents stop their MPS daemons on the way out: let them finish.
    for task in agents {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    Ok(())
}

/// One simulated node: its name, the partition its agent names, its machine.
#[derive(Clone)]
struct SimNode {
    name: String,
    partition: String,
    machine: MachineDescription,
}

/// Simulated nodes the description at `path` asks for, at most 64: the text (validated)
/// and, per described node, its name, first partition and machine.
///
/// # Errors
/// An unreadable or invalid file, too many nodes, or a GPU shape no shipped machine has.
fn described_nodes(path: &std::path::Path) -> anyhow::Result<(String, Vec<SimNode>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cluster description {}", path.display()))?;
    let desc = berth_scheduler::cluster::ClusterDescription::parse(&text)
        .with_context(|| format!("bad cluster description {}", path.display()))?;
    if desc.nodes.is_empty() || desc.nodes.len() > 64 {
        bail!(
            "{}: describes {} nodes; berth dev simulates 1 to 64",
            path.display(),
            desc.nodes.len()
        );
    }
    let mut nodes = Vec::new();
    for (name, d) in &desc.nodes {
        let mut m =
            described_machine(d).with_context(|| format!("{}: node {name}", path.display()))?;
        m.cpus = d.cpus.max(1);
        if d.memory_mb > 0 {
            m.memory_mb = d.memory_mb;
        }
        let partition = d
            .partitions
            .first()
            .cloned()
            .unwrap_or_else(|| "gpu".into());
        nodes.push(SimNode {
            name: name.clone(),
            partition,
            machine: m,
        });
    }
    // In the description's natural order (node2 before node10), as agents would come up.
    nodes.sort_by_key(|n| crate::hostlist::natural_key(&n.name));
    Ok((text, nodes))
}

/// The shipped machine with the described GPUs: the same GRES type and count (a CPU-only
/// node is a shipped machine without its GPUs).
fn described_machine(d: &berth_proto::v1::NodeDescription) -> anyhow::Result<MachineDescription> {
    let mut offered = Vec::new();
    for name in berth_simnvml::builtin_names() {
        let Some(mut m) = berth_simnvml::builtin(name) else {
            continue;
        };
        if d.gpus == 0 {
            m.gpus.clear();
            return Ok(m);
        }
        let kind = m
            .gpus
            .first()
            .map(|g| berth_agent::gpu::gres_type(&g.name))
            .unwrap_or_default();
        if kind == d.gpu_type && m.gpus.len() == d.gpus as usize {
            return Ok(m);
        }
        offered.push(format!("{}x{kind} ({name})", m.gpus.len()));
    }
    bail!(
        "no simulated machine has {}x{} GPUs; berth dev offers {}",
        d.gpus,
        d.gpu_type,
        offered.join(", ")
    )
}

/// The running agent task of one simulated node.
type AgentTask = tokio::task::JoinHandle<Result<(), agent::AgentError>>;

/// Starts one simulated node's agent (with its `/metrics` on `ip`, port chosen by the OS,
/// its GPU health watcher, and its MPS daemons when `mps` says so) and returns the metrics
/// URL and the agent's task.
async fn start_agent(
    mut cfg: AgentConfig,
    nvml_lib: PathBuf,
    ip: &str,
    mps: Option<berth_agent::mps::MpsConfig>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(String, AgentTask)> {
    let backend: Arc<dyn GpuBackend> = Arc::new(NvmlBackend::open(Some(nvml_lib.clone()))?);
    let src = MetricsSource {
        gpus: backend.clone(),
        state_dir: cfg.state_dir.clone(),
        node: cfg.node_name.clone(),
    };
    cfg.metrics_url = metrics::spawn(&format!("{ip}:0"), src, stop.clone())
        .await
        .context("cannot serve agent metrics")?;
    // The watcher thread ends with the process (berth dev has no other way out).
    let never = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = berth_agent::health::watch(Some(nvml_lib), never)
        .map_err(|e| tracing::warn!("{}: no GPU health events: {e}", cfg.node_name))
        .ok();
    let inv = agent::inventory(&cfg, backend.as_ref())?;
    if let Some(mps) = mps {
        let uuids: Vec<String> = inv.gpus.iter().map(|g| g.uuid.clone()).collect();
        let daemons = berth_agent::mps::MpsDaemons::start(&mps, &uuids)
            .with_context(|| format!("{}: --gpu-sharing mps", cfg.node_name))?;
        cfg.mps = Some(Arc::new(daemons));
    }
    berth_agent::oci::make_sim_device_nodes(&cfg.oci.dev_dir, &inv.gpus)
        .with_context(|| format!("{}: simulated device nodes", cfg.node_name))?;
    let url = cfg.metrics_url.clone();
    let task = tokio::spawn(agent::run(
        cfg,
        inv,
        backend,
        HealthReports::new(health),
        stop,
    ));
    Ok((url, task))
}

/// Container settings of a simulated node: its CDI specs, device nodes and image cache in
/// its own state directory, so nodes sharing a host never see each other's GPUs.
fn dev_oci(node_dir: &std::path::Path, runtime: &std::path::Path) -> berth_agent::oci::OciConfig {
    let mut oci = berth_agent::oci::OciConfig::new(node_dir);
    oci.runtime = runtime.to_path_buf();
    oci.cdi_dir = node_dir.join("cdi");
    oci.dev_dir = node_dir.join("nvml").join("dev");
    oci
}

async fn wait_registered(daemon: &Daemon, names: &[String]) -> anyhow::Result<()> {
    for _ in 0..200 {
        let up = {
            let sm = daemon.raft().state();
            names
                .iter()
                .all(|n| sm.node(n).is_some_and(|node| node.state() == NodeState::Up))
        };
        if up {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("simulated agents did not register within 10s")
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
