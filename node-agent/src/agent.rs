//! The agent's connection to berthd: register with the inventory and every job still known,
//! then carry heartbeats and job events up and launch/kill/ack down, reconnecting forever
//! with backoff. Supervision (time limits, kill escalation) goes on while disconnected.

use crate::gpu::{GpuBackend, GpuInventory};
use crate::steps::Steps;
use crate::supervisor::{event, Status, Supervisor};
use berth_proto::v1::{
    self as pb, agent_message::Msg as Up, agent_service_client::AgentServiceClient,
    server_message::Msg as Down,
};
use std::collections::{BTreeMap, BTreeSet};
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
    /// URL of this agent's `/metrics`, reported at registration; empty if not served.
    pub metrics_url: String,
    /// How this node's GPUs are shared between jobs (its node pool's configuration).
    pub sharing: Sharing,
    /// How container jobs run (the `oci` runtime: runc, image cache, CDI).
    pub oci: crate::oci::OciConfig,
    /// The MPS control daemons of this node's GPUs (MPS sharing with `--mps-control`):
    /// jobs get their GPU's pipe directory; [`run`] stops them when it returns.
    pub mps: Option<std::sync::Arc<crate::mps::MpsDaemons>>,
    /// Keep MIG instances after their job for reuse (`--mig-keep-layout`).
    pub mig_keep_layout: bool,
    /// The node's certificate and the cluster key; `None`: an insecure agent (plain TCP,
    /// launches run as the uid they claim).
    pub security: Option<AgentSecurity>,
}

/// What a secure agent holds.
#[derive(Debug, Clone)]
pub struct AgentSecurity {
    /// The CA and this node's certificate (`berth admin ca issue --node NAME`).
    pub profile: berth_auth::profile::Profile,
    /// Verifies launch seals (and signs local credentials for the credential daemon).
    pub key: std::sync::Arc<berth_auth::key::ClusterKey>,
}

impl AgentSecurity {
    /// Loads a node's directory as `berth admin ca issue --node` writes it.
    ///
    /// # Errors
    /// [`AgentError::Config`] naming the bad file.
    pub fn load(dir: &std::path::Path) -> Result<AgentSecurity, AgentError> {
        let files = berth_auth::tls::TlsFiles::in_dir(dir);
        // Read once now, so a bad directory stops the agent at start, not at connect.
        berth_auth::tls::load_certs(&files.cert).map_err(|e| AgentError::Config(e.to_string()))?;
        let key = berth_auth::key::ClusterKey::load(&dir.join(berth_auth::ca::CLUSTER_KEY))
            .map_err(|e| AgentError::Config(e.to_string()))?;
        Ok(AgentSecurity {
            profile: berth_auth::profile::Profile {
                ca: Some(files.ca),
                cert: Some(files.cert),
                key: Some(files.key),
                ..Default::default()
            },
            key: std::sync::Arc::new(key),
        })
    }
}

/// GPU sharing of a node pool, after NVIDIA's device plugin: each GPU is offered as
/// `replicas` shares, and every job on a share sees the whole GPU's UUID. Time-slicing
/// isolates nothing; MPS additionally limits each job to `100 / replicas` percent of the
/// SMs and `memory / replicas` of pinned device memory (CUDA_MPS_* variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// One job per GPU.
    #[default]
    Exclusive,
    /// `replicas` jobs per GPU, time-sliced by the driver.
    TimeSlicing {
        /// Shares per GPU, > 1.
        replicas: u32,
    },
    /// `replicas` jobs per GPU through MPS, each with its limits.
    Mps {
        /// Shares per GPU, > 1.
        replicas: u32,
    },
}

impl Sharing {
    /// Builds the sharing mode from `--gpu-replicas` and `--gpu-sharing`.
    ///
    /// # Errors
    /// A message for 0 replicas, an unknown mode, or MPS without replicas.
    pub fn new(replicas: u32, mode: &str) -> Result<Sharing, String> {
        match (replicas, mode) {
            (0, _) => Err("--gpu-replicas must be at least 1".into()),
            (1, "time-slicing") => Ok(Sharing::Exclusive),
            (1, "mps") => Err("--gpu-sharing mps needs --gpu-replicas above 1".into()),
            (n, "time-slicing") => Ok(Sharing::TimeSlicing { replicas: n }),
            (n, "mps") => Ok(Sharing::Mps { replicas: n }),
            (_, other) => Err(format!(
                "--gpu-sharing must be time-slicing or mps, got {other:?}"
            )),
        }
    }

    /// Shares per GPU (1 when exclusive).
    pub fn replicas(self) -> u32 {
        match self {
            Sharing::Exclusive => 1,
            Sharing::TimeSlicing { replicas } | Sharing::Mps { replicas } => replicas,
        }
    }

    /// The name reported in the inventory: "", "time-slicing" or "mps".
    pub fn name(self) -> &'static str {
        match self {
            Sharing::Exclusive => "",
            Sharing::TimeSlicing { .. } => "time-slicing",
            Sharing::Mps { .. } => "mps",
        }
    }
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
        cuda_version,
        topology,
    } = gpus.inventory()?;
    let mut gpus = gpus;
    let replicas = cfg.sharing.replicas();
    if replicas > 1 {
        for gpu in &mut gpus {
            gpu.replicas = replicas;
        }
    }
    Ok(pb::NodeInventory {
        name: cfg.node_name.clone(),
        partition: cfg.partition.clone(),
        cpus: cfg.cpus,
        memory_mb: cfg.memory_mb,
        gpus,
        driver_version,
        nvml_version,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        cuda_version,
        topology,
        metrics_url: cfg.metrics_url.clone(),
        gpu_sharing: cfg.sharing.name().into(),
    })
}

/// GPU health reports waiting to go up, and every one already known (re-sent on each
/// new session: berthd may have missed them while the agent was away).
pub struct HealthReports {
    /// Reports from the health watcher (see [`crate::health`]); `None` if none runs.
    pub rx: Option<mpsc::UnboundedReceiver<pb::GpuHealth>>,
    known: Vec<pb::GpuHealth>,
}

impl HealthReports {
    /// Reports arriving on `rx`.
    pub fn new(rx: Option<mpsc::UnboundedReceiver<pb::GpuHealth>>) -> HealthReports {
        HealthReports {
            rx,
            known: Vec::new(),
        }
    }

    /// Queues every report known so far on a new session's stream.
    async fn resend(&self, tx: &mpsc::Sender<pb::AgentMessage>) -> Result<(), String> {
        for h in &self.known {
            // Marked as re-sent: berthd skips a report an admin has since cleared.
            let msg = pb::AgentMessage {
                msg: Some(Up::GpuHealthResent(h.clone())),
            };
            tx.send(msg).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The next report; pending forever when there is no watcher.
    async fn next(&mut self) -> Option<pb::GpuHealth> {
        let got = match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        };
        if got.is_none() {
            self.rx = None; // the watcher stopped: stop polling a closed channel
        }
        if let Some(h) = &got {
            self.known.push(h.clone());
        }
        got
    }
}

/// Runs the agent until `shutdown` becomes true. `gpus` carves MIG slices for jobs;
/// `health` carries GPU health reports up. On the way out, the MPS daemons of
/// `cfg.mps` are stopped.
///
/// # Errors
/// [`AgentError`] when the state directory is unusable or the config is empty.
pub async fn run(
    cfg: AgentConfig,
    inv: pb::NodeInventory,
    gpus: std::sync::Arc<dyn GpuBackend>,
    health: HealthReports,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mps = cfg.mps.clone();
    let result = serve(cfg, inv, gpus, health, shutdown).await;
    if let Some(daemons) = mps {
        // Off the runtime's threads: each stop waits for a control process.
        let _ = tokio::task::spawn_blocking(move || daemons.stop()).await;
    }
    result
}

async fn serve(
    cfg: AgentConfig,
    inv: pb::NodeInventory,
    gpus: std::sync::Arc<dyn GpuBackend>,
    mut health: HealthReports,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    if cfg.servers.is_empty() {
        return Err(AgentError::Config("no berthd server given".into()));
    }
    let mut sup = Supervisor::new(&cfg.state_dir, cfg.shim_exe.clone(), cfg.kill_grace, gpus)
        .map_err(AgentError::State)?;
    let mut step_mps = None;
    if let Sharing::Mps { replicas } = cfg.sharing {
        let memory: BTreeMap<String, u64> = inv
            .gpus
            .iter()
            .map(|g| (g.uuid.clone(), g.memory_mb))
            .collect();
        let dirs = cfg
            .mps
            .as_ref()
            .map(|d| d.all().clone())
            .unwrap_or_default();
        sup.set_mps(replicas, memory.clone(), dirs.clone());
        step_mps = Some(crate::steps::StepMps {
            replicas,
            memory_mb: memory,
            dirs,
        });
    }
    sup.set_oci(cfg.oci.clone());
    sup.set_launch_key(cfg.security.as_ref().map(|s| s.key.clone()));
    sup.set_mig_keep(cfg.mig_keep_layout);
    let step_key = cfg.security.as_ref().map(|s| s.key.clone());
    let (mut steps, mut step_ends) = Steps::new(&cfg.node_name, cfg.kill_grace, step_key);
    if let Some(mps) = step_mps {
        steps = steps.with_mps(mps);
    }
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
        let conn = Conn {
            server: &server,
            shutdown: &mut shutdown,
            redirect: &mut redirect,
            health: &mut health,
            steps: &steps,
            step_ends: &mut step_ends,
        };
        match session(&cfg, &inv, &sup, conn).await {
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

/// What one session borrows from the reconnect loop.
struct Conn<'a> {
    server: &'a str,
    shutdown: &'a mut watch::Receiver<bool>,
    redirect: &'a mut Option<String>,
    health: &'a mut HealthReports,
    steps: &'a Steps,
    /// Ends of steps, for berthd; those that pile up while away also go in `Register`.
    step_ends: &'a mut mpsc::UnboundedReceiver<pb::StepEnd>,
}

/// One connection; returns Ok on shutdown, Err when the stream ends or fails.
async fn session(
    cfg: &AgentConfig,
    inv: &pb::NodeInventory,
    sup: &Supervisor,
    conn: Conn<'_>,
) -> Result<(), String> {
    let Conn {
        server,
        shutdown,
        redirect,
        health,
        steps,
        step_ends,
    } = conn;
    // TLS files are read at each connect: a renewed certificate is used from the next one.
    let profile = cfg
        .security
        .as_ref()
        .map(|s| s.profile.clone())
        .unwrap_or_default();
    let channel = berth_auth::channel::endpoint(server, &profile)?
        .connect()
        .await
        .map_err(|e| match std::error::Error::source(&e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        })?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(256);
    // Ends queued while away are in `steps.ended()`: drop the queued copies.
    while step_ends.try_recv().is_ok() {}
    let register = pb::Register {
        inventory: Some(inv.clone()),
        jobs: sup.report(),
        steps_running: steps.running(),
        steps_ended: steps.ended(),
    };
    tx.send(pb::AgentMessage {
        msg: Some(Up::Register(register)),
    })
    .await
    .map_err(|e| e.to_string())?;
    health.resend(&tx).await?;
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
    let replicas = cfg.sharing.replicas();
    // Ends already in Register go up without their usage: send it now.
    let finals: Vec<pb::JobUsage> = reported
        .iter()
        .filter_map(|id| sup.final_usage(*id, &cfg.node_name, replicas))
        .collect();
    send_usage(&tx, finals).await?;
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
                handle(cfg, sup, steps, msg.msg, &tx, &mut reported).await?;
            }
            Some(end) = step_ends.recv() => {
                tx.send(pb::AgentMessage { msg: Some(Up::StepEnd(end)) }).await.map_err(|e| e.to_string())?;
            }
            Some(h) = health.next() => {
                tx.send(pb::AgentMessage { msg: Some(Up::GpuHealth(h)) }).await.map_err(|e| e.to_string())?;
            }
            _ = heartbeat.tick() => {
                seq += 1;
                tx.send(pb::AgentMessage { msg: Some(Up::Heartbeat(pb::Heartbeat { seq })) }).await.map_err(|e| e.to_string())?;
                send_usage(&tx, sup.running_usage(&cfg.node_name, replicas)).await?;
            }
            _ = poll.tick() => {
                for (id, status) in sup.poll() {
                    if matches!(status, Status::Finished(_)) && reported.insert(id) {
                        // Usage first: berthd records it while the job still holds its GPUs.
                        send_usage(&tx, sup.final_usage(id, &cfg.node_name, replicas).into_iter().collect()).await?;
                        tx.send(pb::AgentMessage { msg: Some(Up::JobEvent(event(id, status))) }).await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
}

/// Sends `jobs`' measured usage (nothing when empty).
async fn send_usage(
    tx: &mpsc::Sender<pb::AgentMessage>,
    jobs: Vec<pb::JobUsage>,
) -> Result<(), String> {
    if jobs.is_empty() {
        return Ok(());
    }
    let msg = pb::AgentMessage {
        msg: Some(Up::JobUsage(pb::JobUsageReport { jobs })),
    };
    tx.send(msg).await.map_err(|e| e.to_string())
}

async fn handle(
    cfg: &AgentConfig,
    sup: &Supervisor,
    steps: &Steps,
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
        Some(Down::LaunchStep(l)) => {
            if let (Some(job), Some(step)) = (l.job, l.step) {
                tracing::info!(job = step.job_id, step = step.step_id, "step launched");
                steps.launch(job, step);
            }
        }
        Some(Down::KillStep(k)) => steps.kill(k.job_id, k.step_id),
        Some(Down::Ack(a)) => {
            sup.ack(a.job_id);
            reported.remove(&a.job_id);
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_flags_are_checked() {
        let table = [
            (1, "time-slicing", Ok(Sharing::Exclusive)),
            (4, "time-slicing", Ok(Sharing::TimeSlicing { replicas: 4 })),
            (3, "mps", Ok(Sharing::Mps { replicas: 3 })),
            (0, "time-slicing", Err("at least 1")),
            (1, "mps", Err("above 1")),
            (2, "mig", Err("time-slicing or mps")),
        ];
        for (i, (replicas, mode, want)) in table.into_iter().enumerate() {
            match (Sharing::new(replicas, mode), want) {
                (Ok(got), Ok(w)) if got == w => {}
                (Err(e), Err(w)) if e.contains(w) => {}
                (got, want) => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }
}
