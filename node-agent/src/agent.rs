//! The agent's connection to berthd: register with the inventory and every job still known,
//! then carry heartbeats and job events up and launch/kill/ack down, reconnecting forever
//! with backoff. Supervision (time limits, kill escalation) goes on while disconnected.

use crate::gpu::{GpuBackend, GpuInventory};
use crate::supervisor::{event, Status, Supervisor};
use berth_proto::v1::{
    self as pb, agent_message::Msg as Up, agent_service_client::AgentServiceClient,
    server_message::Msg as Down,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// berthd addresses (`http://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// This node's name.
    pub node_name: String,
    /// Partition (node pool) of this node.
    pub partition: String,
    /// Local state (job directories).
    pub state_dir: PathBuf,
    /// Executable started as `<exe> __berth-shim <dir>` for each job.
    pub shim_exe: PathBuf,
    /// CPUs offered (default: all).
    pub cpus: u32,
    /// Memory offered, MiB.
    pub memory_mb: u64,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// SIGTERM → SIGKILL delay on cancel and time limit (Slurm's KillWait).
    pub kill_grace: Duration,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// GPU discovery failed.
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// The state directory is unusable.
    #[error("agent state dir: {0}")]
    State(std::io::Error),
    /// Configuration is unusable.
    #[error("{0}")]
    Config(String),
}

/// Discovers GPUs and builds the inventory sent at registration.
///
/// # Errors
/// [`AgentError::Gpu`] when the backend fails.
pub fn inventory(
    cfg: &AgentConfig,
    gpus: &dyn GpuBackend,
) -> Result<pb::NodeInventory, AgentError> {
    let GpuInventory {
        gpus,
        driver_version,
        nvml_version,
    } = gpus.inventory()?;
    Ok(pb::NodeInventory {
        name: cfg.node_name.clone(),
        partition: cfg.partition.clone(),
        cpus: cfg.cpus,
        memory_mb: cfg.memory_mb,
        gpus,
        driver_version,
        nvml_version,
        agent_version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Runs the agent until `shutdown` becomes true.
///
/// # Errors
/// [`AgentError`] when the state directory is unusable or the config is empty.
pub async fn run(
    cfg: AgentConfig,
    inv: pb::NodeInventory,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    if cfg.servers.is_empty() {
        return Err(AgentError::Config("no berthd server given".into()));
    }
    let sup = Supervisor::new(&cfg.state_dir, cfg.shim_exe.clone(), cfg.kill_grace)
        .map_err(AgentError::State)?;
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0usize;
    let mut redirect: Option<String> = None;
    let mut redirects = 0u32;
    loop {
        // A follower's redirect wins over the configured list, once.
        let server = match redirect.take() {
            Some(leader) => leader,
            None => {
                attempt += 1;
                cfg.servers[(attempt - 1) % cfg.servers.len()].clone()
            }
        };
        match session(&cfg, &inv, &sup, &server, &mut shutdown, &mut redirect).await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(node = cfg.node_name, server, "disconnected: {e}"),
        }
        if redirect.is_some() {
            redirects += 1;
            // Straight to the leader, unless replicas keep pointing at each other
            // (stale leader views during an election): then back off as usual.
            if redirects <= 3 {
                continue;
            }
        }
        redirects = 0;
        // Keep enforcing limits while away; reconnect with capped exponential backoff.
        let deadline = tokio::time::Instant::now() + backoff;
        while tokio::time::Instant::now() < deadline {
            sup.poll();
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}

/// One connection; returns Ok on shutdown, Err when the stream ends or fails.
async fn session(
    cfg: &AgentConfig,
    inv: &pb::NodeInventory,
    sup: &Supervisor,
    server: &str,
    shutdown: &mut watch::Receiver<bool>,
    redirect: &mut Option<String>,
) -> Result<(), String> {
    let mut client = AgentServiceClient::connect(server.to_string())
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(256);
    let register = pb::Register {
        inventory: Some(inv.clone()),
        jobs: sup.report(),
    };
    tx.send(pb::AgentMessage {
        msg: Some(Up::Register(register)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if let Some(leader) = status
                .metadata()
                .get("berth-leader")
                .and_then(|v| v.to_str().ok())
            {
                *redirect = Some(leader.to_string());
            }
            return Err(status.message().to_string());
        }
    };
    // Finished jobs already in this session's Register, or sent since: not sent again.
    let mut reported: BTreeSet<u64> = sup
        .poll()
        .into_iter()
        .filter(|(_, s)| matches!(s, Status::Finished(_)))
        .map(|(id, _)| id)
        .collect();
    let mut term_seen = 0u64;
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            msg = inbound.message() => {
                let msg = msg.map_err(|s| s.message().to_string())?.ok_or("stream closed by berthd")?;
                if msg.term < term_seen {
                    tracing::warn!(term = msg.term, term_seen, "command from an older leader refused");
                    continue;
                }
                term_seen = msg.term;
                handle(cfg, sup, msg.msg, &tx, &mut reported).await?;
            }
            _ = heartbeat.tick() => {
                seq += 1;
                tx.send(pb::AgentMessage { msg: Some(Up::Heartbeat(pb::Heartbeat { seq })) }).await.map_err(|e| e.to_string())?;
            }
            _ = poll.tick() => {
                for (id, status) in sup.poll() {
                    if matches!(status, Status::Finished(_)) && reported.insert(id) {
                        tx.send(pb::AgentMessage { msg: Some(Up::JobEvent(event(id, status))) }).await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
}

async fn handle(
    cfg: &AgentConfig,
    sup: &Supervisor,
    msg: Option<Down>,
    tx: &mpsc::Sender<pb::AgentMessage>,
    reported: &mut BTreeSet<u64>,
) -> Result<(), String> {
    match msg {
        Some(Down::Registered(r)) => tracing::info!(node = r.node, "registered with berthd"),
        Some(Down::Launch(l)) => {
            let Some(job) = l.job else { return Ok(()) };
            match sup.launch(&job, &cfg.node_name) {
                Ok(true) => tracing::info!(job = job.id, "launched"),
                Ok(false) => tracing::debug!(job = job.id, "launch of a known job ignored"),
                Err(e) => {
                    tracing::error!("{e}");
                    let f = pb::JobFinished {
                        state: pb::JobState::Failed as i32,
                        reason: e.to_string(),
                        ..Default::default()
                    };
                    let ev = pb::JobEvent {
                        job_id: job.id,
                        event: Some(pb::job_event::Event::Finished(f)),
                    };
                    reported.insert(job.id);
                    tx.send(pb::AgentMessage {
                        msg: Some(Up::JobEvent(ev)),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                }
            }
        }
        Some(Down::Kill(k)) => {
            let how = crate::supervisor::KillHow {
                signal: k.signal,
                batch_only: k.batch_only,
                grace_secs: k.grace_secs,
            };
            sup.kill_how(k.job_id, k.state(), &k.reason, how)
        }
        Some(Down::Ack(a)) => {
            sup.ack(a.job_id);
            reported.remove(&a.job_id);
        }
        None => {}
    }
    Ok(())
}
