//! Connected node agents: who is attached, what to send them, and who went silent.
//!
//! Each agent holds one bidirectional stream (see [`crate::server`]); the registry keeps the
//! sending half per node. Three leader-only tasks use it:
//! - [`dispatch_loop`] turns applied [`Effect`]s (launch, kill, ack) into messages stamped
//!   with the leader's Raft term, so agents can refuse a deposed leader;
//! - [`reconcile`] compares what a (re)registering agent reports with the replicated state
//!   and re-sends what was lost (a launch is idempotent at the agent);
//! - [`liveness_loop`] proposes `NodeDown` for nodes whose agent stayed away too long, which
//!   ends their jobs as NODE_FAIL instead of leaving them RUNNING forever.

use crate::raft_loop::RaftHandle;
use crate::state_machine::{Effect, StateMachine};
use berth_proto::v1::{self as pb, job_event, server_message::Msg, JobState, NodeState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// Sending half of one agent stream.
pub type AgentSender = mpsc::Sender<Result<pb::ServerMessage, tonic::Status>>;

struct Conn {
    id: u64,
    tx: AgentSender,
}

/// Agents attached to this replica, by node name.
#[derive(Default)]
pub struct AgentRegistry {
    conns: Mutex<HashMap<String, Conn>>,
    /// When each known node's agent was last seen leaving (or, for nodes never seen by this
    /// leader, when the leader started looking).
    away_since: Mutex<HashMap<String, Instant>>,
    next_conn: AtomicU64,
}

impl AgentRegistry {
    /// Records `tx` as the stream of `node`, replacing (and so closing) an older one.
    /// Returns the connection id to pass to [`AgentRegistry::detach`].
    pub fn attach(&self, node: &str, tx: AgentSender) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock_conns().insert(node.to_string(), Conn { id, tx });
        self.away_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
        id
    }

    /// Forgets connection `conn` of `node` (a newer connection of the same node stays).
    pub fn detach(&self, node: &str, conn: u64) {
        let mut conns = self.lock_conns();
        if conns.get(node).is_some_and(|c| c.id == conn) {
            conns.remove(node);
            self.away_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node.to_string(), Instant::now());
        }
    }

    /// Whether `node` has a live stream here.
    pub fn is_attached(&self, node: &str) -> bool {
        self.lock_conns().contains_key(node)
    }

    /// Queues `msg` for `node`; false when the node is not attached or its queue is full
    /// (the agent will get the message again through [`reconcile`] when it re-attaches).
    pub fn send(&self, node: &str, msg: Msg, term: u64) -> bool {
        let conns = self.lock_conns();
        let Some(conn) = conns.get(node) else {
            return false;
        };
        conn.tx
            .try_send(Ok(pb::ServerMessage {
                term,
                msg: Some(msg),
            }))
            .is_ok()
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `node` has been away, starting the clock now if it was never seen.
    fn away_for(&self, node: &str, now: Instant) -> Duration {
        let mut away = self.away_since.lock().unwrap_or_else(|e| e.into_inner());
        now.saturating_duration_since(*away.entry(node.to_string()).or_insert(now))
    }
}

/// Forwards the effects of applied commands to agents while this replica leads.
pub async fn dispatch_loop(
    raft: RaftHandle,
    agents: std::sync::Arc<AgentRegistry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut effects = raft.subscribe();
    loop {
        let applied = tokio::select! {
            _ = shutdown.changed() => return,
            r = effects.recv() => r,
        };
        let applied = match applied {
            Ok(a) => a,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Missed effects are recovered from state: re-send what every agent should run.
                tracing::warn!("dispatch lagged by {n} commands; reconciling every agent");
                resend_all(&raft, &agents);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !raft.is_leader() {
            continue;
        }
        let term = raft.term();
        for effect in &applied.effects {
            match effect {
                Effect::Launch { node, job } => {
                    agents.send(
                        node,
                        Msg::Launch(pb::LaunchJob {
                            job: Some((**job).clone()),
                        }),
                        term,
                    );
                }
                Effect::Kill {
                    node,
                    job_id,
                    state,
                    reason,
                    signal,
                    batch_only,
                    grace_secs,
                } => {
                    let kill = pb::KillJob {
                        job_id: *job_id,
                        state: *state as i32,
                        reason: reason.clone(),
                        signal: *signal,
                        batch_only: *batch_only,
                        grace_secs: *grace_secs,
                    };
                    agents.send(node, Msg::Kill(kill), term);
                }
                Effect::Ack { node, job_id } => {
                    agents.send(node, Msg::Ack(pb::AckJob { job_id: *job_id }), term);
                }
                Effect::LaunchStep { node, job, step } => {
                    let launch = pb::LaunchStep {
                        job: Some((**job).clone()),
                        step: Some((**step).clone()),
                    };
                    if !agents.send(node, Msg::LaunchStep(launch), term) {
                        // Not queued: the agent is away. Its re-registration reports the
                        // steps it runs, and a step it never got is failed then
                        // (`step_reconcile`), so srun never waits on a lost launch.
                        tracing::warn!(
                            node,
                            job = step.job_id,
                            step = step.step_id,
                            "step launch not delivered"
                        );
                    }
                }
                Effect::KillStep {
                    node,
                    job_id,
                    step_id,
                } => {
                    let kill = pb::KillStep {
                        job_id: *job_id,
                        step_id: *step_id,
                    };
                    agents.send(node, Msg::KillStep(kill), term);
                }
                Effect::JobChanged(_) | Effect::NodeChanged(_) => {}
            }
        }
    }
}

fn resend_all(raft: &RaftHandle, agents: &AgentRegistry) {
    let msgs: Vec<(String, Msg)> = {
        let sm = raft.state();
        sm.nodes()
            .filter_map(|n| n.inventory.as_ref().map(|i| i.name.clone()))
            .flat_map(|node| {
                reconcile(&sm, &node, &[])
                    .into_iter()
                    .map(move |m| (node.clone(), m))
            })
            .collect()
    };
    let term = raft.term();
    for (node, msg) in msgs {
        agents.send(&node, msg, term);
    }
}

/// What to send `node`'s agent after it reports the jobs it knows (`reported`), so that
/// every job the state says runs there does, and nothing else does.
///
/// Reported *finished* jobs are not handled here: the caller proposes their `JobEnded`.
pub fn reconcile(sm: &StateMachine, node: &str, reported: &[pb::JobEvent]) -> Vec<Msg> {
    let mut out = Vec::new();
    let running_here = |j: &pb::Job| {
        j.state() == JobState::Running && j.allocations.first().is_some_and(|a| a.node == node)
    };
    for ev in reported {
        if !matches!(ev.event, Some(job_event::Event::Started(_))) {
            continue;
        }
        match sm.job(ev.job_id) {
            Some(job) if running_here(job) => {
                if job.preempting {
                    let spec = job.spec.clone().unwrap_or_default();
                    out.push(Msg::Kill(pb::KillJob {
                        job_id: job.id,
                        state: JobState::Preempted as i32,
                        reason: "preempted".into(),
                        signal: spec.signal,
                        batch_only: spec.signal_batch_only,
                        grace_secs: spec.signal_secs,
                    }));
                } else if let Some(why) = job.kill_requested.then(|| sm.failed_gpu(job)).flatten() {
                    out.push(kill(job.id, JobState::NodeFail, &why));
                } else if job.kill_requested {
                    out.push(kill(job.id, JobState::Cancelled, "cancelled"));
                }
            }
            // The agent runs a job berthd ended (node declared down meanwhile, or it was
            // never allocated here): stop it, so no job ever runs twice.
            _ => out.push(kill(
                ev.job_id,
                JobState::Failed,
                "berthd no longer runs this job on this node",
            )),
        }
    }
    // Pods run under kubelet, and pod groups' reservations run nothing: never launch them.
    let batch = |j: &pb::Job| !crate::state_machine::pods::is_kubernetes(j);
    for job in sm.jobs().filter(|j| running_here(j) && batch(j)) {
        if !reported.iter().any(|ev| ev.job_id == job.id) {
            out.push(Msg::Launch(pb::LaunchJob {
                job: Some(job.clone()),
            }));
        }
    }
    out
}

/// What to do about job steps after `node`'s agent registers, reporting the steps whose
/// tasks still run there (`running`) and ends it may not have delivered (`ended`): the
/// step ends to record (reported ones, and, as failed, steps the state runs there that the
/// agent does not know: it restarted, or never got the launch), and kills for steps the
/// agent runs that the state no longer does.
pub fn step_reconcile(
    sm: &StateMachine,
    node: &str,
    running: &[pb::StepRef],
    ended: &[pb::StepEnd],
) -> (Vec<pb::StepEnded>, Vec<Msg>) {
    let mut ends: Vec<pb::StepEnded> = ended
        .iter()
        .map(|e| pb::StepEnded {
            node: node.to_string(),
            end: Some(e.clone()),
        })
        .collect();
    let known = |job_id: u64, step_id: u32| {
        running
            .iter()
            .any(|r| r.job_id == job_id && r.step_id == step_id)
            || ended
                .iter()
                .any(|e| e.job_id == job_id && e.step_id == step_id)
    };
    for job in sm.jobs() {
        for step in &job.steps {
            let here = step.nodes.iter().any(|n| n.node == node);
            if here && !step.nodes_done.iter().any(|d| d == node) && !known(job.id, step.step_id) {
                ends.push(pb::StepEnded {
                    node: node.to_string(),
                    end: Some(pb::StepEnd {
                        job_id: job.id,
                        step_id: step.step_id,
                        exit_code: 1,
                        reason: "the node's agent lost the step's tasks (restarted, or never got the launch)".into(),
                        ..Default::default()
                    }),
                });
            }
        }
    }
    let kills = running
        .iter()
        .filter(|r| {
            !sm.job(r.job_id)
                .is_some_and(|j| j.steps.iter().any(|s| s.step_id == r.step_id))
        })
        .map(|r| {
            Msg::KillStep(pb::KillStep {
                job_id: r.job_id,
                step_id: Some(r.step_id),
            })
        })
        .collect();
    (ends, kills)
}

fn kill(job_id: u64, state: JobState, reason: &str) -> Msg {
    Msg::Kill(pb::KillJob {
        job_id,
        state: state as i32,
        reason: reason.to_string(),
        ..Default::default()
    })
}

/// While leading, proposes `NodeDown` for every up node whose agent has been away longer
/// than `timeout`.
pub async fn liveness_loop(
    raft: RaftHandle,
    agents: std::sync::Arc<AgentRegistry>,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500).min(timeout / 2));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !raft.is_leader() {
            continue;
        }
        let now = Instant::now();
        let silent: Vec<String> = {
            let sm = raft.state();
            sm.nodes()
                .filter(|n| n.state() == NodeState::Up)
                .filter_map(|n| n.inventory.as_ref().map(|i| i.name.clone()))
                .filter(|name| !agents.is_attached(name) && agents.away_for(name, now) >= timeout)
                .collect()
        };
        for node in silent {
            let reason = format!("agent not responding for {}s", timeout.as_secs());
            tracing::warn!(node, "{reason}; marking the node down");
            let cmd = pb::command::Cmd::NodeDown(pb::NodeDown { node, reason });
            if let Err(e) = raft.propose(crate::command::command(cmd)).await {
                tracing::warn!("node down not proposed: {e}");
            }
        }
    }
}
