//! `berthd`: one replica of the berth scheduler (a single voter until Raft HA lands).

use anyhow::Context as _;
use berth_scheduler::daemon::{Daemon, DaemonConfig};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// berthd: the Raft-replicated berth scheduler.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Raft id of this replica.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// gRPC address for clients and agents.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: String,
    /// Directory holding the Raft log, hard state and snapshots (created if missing).
    #[arg(long, default_value = "/var/lib/berth")]
    state_dir: PathBuf,
    /// Partition for jobs that do not name one.
    #[arg(long, default_value = "gpu")]
    default_partition: String,
    /// Seconds an agent may stay away before its node is marked down.
    #[arg(long, default_value_t = 60)]
    node_timeout_secs: u64,
    /// All replicas, this one included: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`. Omit for a
    /// single replica.
    #[arg(long, value_parser = parse_peer, value_delimiter = ',')]
    peers: Vec<(u64, String)>,
    /// Join an existing group: start with no voters and wait for the leader to add this
    /// replica (`berth admin members add ID=HOST:PORT`).
    #[arg(long)]
    join: bool,
    /// HTTP address of the kube-scheduler extender and `/metrics` (`off`: none). Default
    /// 127.0.0.1:7701, skipped with a warning when that is taken.
    #[arg(long)]
    http_listen: Option<String>,
    /// Kubernetes API server that the extender binds pods through (e.g. `kubectl proxy`'s
    /// http://127.0.0.1:8001). Default: KUBECONFIG, ~/.kube/config or the in-cluster
    /// service account, when there is one.
    #[arg(long)]
    kube_api: Option<String>,
    /// Snapshot and compact the log every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_entries: u64,
    /// Accounts and priority classes (TOML; see README). Installed through the Raft log
    /// once, when this replica first leads; without it the replicated (or built-in) one
    /// stays.
    #[arg(long)]
    accounts: Option<PathBuf>,
    /// Network tree in Slurm's topology.conf form (`SwitchName=… Nodes=…|Switches=…`,
    /// `BlockName=… Nodes=…` for NVLink domains; see README). Installed through the Raft log
    /// like --accounts.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Cluster description (berth.toml: node groups, partitions, licenses; see
    /// docs/cluster.md). Installed through the Raft log like --accounts; `scontrol
    /// reconfigure` or `berth admin config set FILE` replace it later.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Keys and certificates of this replica, as `berth admin ca issue --replica ID`
    /// writes them (ca.pem, tls.pem, tls.key, cluster.key, jwt.key, optional auth.toml).
    #[arg(long, default_value = "/etc/berth")]
    security_dir: PathBuf,
    /// Run without security: no TLS, and every caller is whoever it claims (anyone who
    /// can reach the port can run jobs as any user, root included). For throwaway tests.
    #[arg(long)]
    insecure: bool,
    /// Also serve the local credential daemon on this unix socket (a login host that
    /// runs berthd; compute nodes get one from berth-agent).
    #[arg(long)]
    cred_socket: Option<PathBuf>,
    /// Accounting store: `sled` (embedded in the state directory, the default) or a
    /// PostgreSQL URL (`postgres://user@host/db`). Also BERTH_ACCOUNTING_STORE.
    #[arg(long, env = "BERTH_ACCOUNTING_STORE", default_value = "sled")]
    accounting_store: String,
    /// How long job records are kept after the job ends, as slurmdbd's PurgeJobAfter
    /// (`12months`, `365days`, `720hours`).
    #[arg(long, default_value = "12months")]
    accounting_retention: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut cfg = DaemonConfig::new(args.state_dir.clone());
    cfg.raft.id = args.id;
    cfg.raft.peers = args.peers.iter().cloned().collect();
    if !cfg.raft.peers.is_empty() && !cfg.raft.peers.contains_key(&args.id) {
        anyhow::bail!("--peers must include this replica's --id {}", args.id);
    }
    if cfg.raft.peers.len() != args.peers.len() {
        anyhow::bail!("--peers names a replica id twice");
    }
    cfg.raft.join = args.join;
    cfg.raft.snapshot_entries = args.snapshot_entries.max(1);
    cfg.default_partition = args.default_partition;
    cfg.node_timeout = Duration::from_secs(args.node_timeout_secs.max(1));
    cfg.accounting.retention_ms =
        berth_scheduler::accounting::parse_retention(&args.accounting_retention)
            .map_err(anyhow::Error::msg)?;
    cfg.accounting.postgres_url = match args.accounting_store.as_str() {
        "sled" => None,
        url => Some(url.to_string()),
    };
    if let Some(path) = &args.accounts {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read accounts file {}", path.display()))?;
        berth_scheduler::accounts::parse(&text)
            .with_context(|| format!("bad accounts file {}", path.display()))?;
        cfg.accounts_toml = Some(text);
    }
    if let Some(path) = &args.topology {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read topology file {}", path.display()))?;
        berth_policies::topology::NetworkConf::parse(&text)
            .with_context(|| format!("bad topology file {}", path.display()))?;
        cfg.topology_conf = Some(text);
    }
    if let Some(path) = &args.cluster {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read cluster description {}", path.display()))?;
        berth_scheduler::cluster::ClusterDescription::parse(&text)
            .with_context(|| format!("bad cluster description {}", path.display()))?;
        cfg.cluster_toml = Some(text);
    }
    cfg.security = berth_scheduler::security::startup(&args.security_dir, args.insecure)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let http = berth_scheduler::http::bind(args.http_listen.as_deref())
        .await
        .with_context(|| format!("cannot listen on {:?}", args.http_listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let (Some(path), Some(sec)) = (&args.cred_socket, &cfg.security) {
        let sock = berth_auth::credd::bind(path)?;
        tokio::spawn(berth_auth::credd::serve(
            sock,
            sec.key.clone(),
            stop_rx.clone(),
        ));
        tracing::info!("credential daemon on {}", path.display());
    }
    let daemon = Daemon::start(cfg, listener, stop_rx.clone())
        .with_context(|| format!("cannot start on state dir {}", args.state_dir.display()))?;
    if let Some(http) = http {
        tracing::info!("HTTP (extender, /metrics) on http://{}", http.local_addr()?);
        let kube = berth_scheduler::kube_api::start(
            args.kube_api.as_deref(),
            daemon.raft().clone(),
            stop_rx.clone(),
        )
        .await;
        berth_scheduler::http::spawn(http, daemon.api().clone(), kube, stop_rx);
    }
    tracing::info!(
        "berthd listening on {} (state in {})",
        args.listen,
        args.state_dir.display()
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    daemon.wait().await?;
    Ok(())
}

/// Ctrl-C or SIGTERM: the one signal that starts a graceful shutdown.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `ID=HOST:PORT` (or `ID=http://HOST:PORT`).
fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("peer {s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("peer id {id:?} is not a number"))?;
    if id == 0 {
        return Err("peer id 0 is reserved by raft".into());
    }
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(format!("peer {id} has no address"));
    }
    Ok((
        id,
        if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        },
    ))
}
