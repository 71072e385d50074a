//! The leader's scheduling loop: read committed state, ask `berth-policies` which pending
//! jobs start where and which running jobs are preempted, and propose the answer as one
//! `Preempt` and one `Allocate` command. The policy configuration (accounts, classes,
//! weights) is the replicated one, so a new leader schedules exactly like the old.
//!
//! The loop runs a pass when a job or node changes (it listens to applied effects) and at
//! least every `interval`. It waits for each `Allocate` to be applied before the next pass,
//! so it never proposes from state its own previous decision has not reached yet. Decisions
//! carry the leader's term. Why a job stays pending is kept in memory ([`PendingReasons`])
//! rather than in the log: it changes every pass and is derived from state anyway.

use crate::raft_loop::RaftHandle;
use crate::state_machine::{Effect, Outcome, StateMachine};
use berth_policies as policies;
use berth_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Why each pending job did not start in the last pass (Slurm's pending reasons), and its
/// expected start when the pass reserved one.
#[derive(Default)]
pub struct PendingReasons(Mutex<HashMap<u64, (String, Option<u64>)>>);

impl PendingReasons {
    /// The reason and expected start (ms) for `job_id`, if the last pass left it pending.
    pub fn get(&self, job_id: u64) -> Option<(String, Option<u64>)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job_id)
            .cloned()
    }

    fn replace(&self, reasons: HashMap<u64, (String, Option<u64>)>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = reasons;
    }
}

/// Runs scheduling passes while this replica leads, until `shutdown` fires.
pub async fn scheduling_loop(
    raft: RaftHandle,
    reasons: Arc<PendingReasons>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut effects = raft.subscribe();
    let mut tick = tokio::time::interval(interval);
    // When the last pass ended and what it cost: an early pass waits as long again, so
    // passes hold the state lock at most half the time and the Raft thread (which needs it
    // to apply) keeps up however long the queue is. On a small queue a pass costs well
    // under a millisecond, so submit to start stays immediate.
    let mut last_end = tokio::time::Instant::now();
    let mut last_cost = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
            r = effects.recv() => {
                // Only changes that can free or need resources warrant an early pass.
                let wake = match r {
                    Ok(a) => a.effects.iter().any(|e| matches!(e, Effect::JobChanged(_) | Effect::NodeChanged(_))),
                    Err(_) => true,
                };
                if !wake { continue; }
                tokio::time::sleep_until(last_end + last_cost).await;
            }
        }
        // One pass serves every change applied so far: without this, a burst of N submits
        // runs N passes back to back, each reading the whole queue under the state lock
        // the Raft thread needs to apply. Bounded by the channel's capacity.
        while !matches!(
            effects.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty
                | tokio::sync::broadcast::error::TryRecvError::Closed)
        ) {}
        if raft.is_leader() {
            let started = tokio::time::Instant::now();
            pass(&raft, &reasons).await;
            last_end = tokio::time::Instant::now();
            last_cost = last_end - started;
        }
    }
}

/// Proposes `SetAccounts(toml)` once, the first time this process leads, if the
/// replicated configuration differs (berthd `--accounts FILE`). Once installed it stops, so
/// a later `berth admin accounts set` is not reverted by this process; a replica that first
/// leads later (after a failover) installs its own file then, which the log records like
/// any change.
pub async fn install_accounts(raft: RaftHandle, toml: String, shutdown: watch::Receiver<bool>) {
    let current = |sm: &StateMachine| sm.accounts_toml().to_string();
    let cmd = pb::command::Cmd::SetAccounts(pb::SetAccounts { toml: toml.clone() });
    install_once(raft, "accounts configuration", toml, current, cmd, shutdown).await;
}

/// Proposes `SetTopology(conf)` once, the first time this process leads, if the replicated
/// network tree differs (berthd `--topology FILE`), as [`install_accounts`] does.
pub async fn install_topology(raft: RaftHandle, conf: String, shutdown: watch::Receiver<bool>) {
    let current = |sm: &StateMachine| sm.topology_conf().to_string();
    let cmd = pb::command::Cmd::SetTopology(pb::SetTopology { conf: conf.clone() });
    install_once(raft, "network topology", conf, current, cmd, shutdown).await;
}

/// Proposes `SetCluster(toml)` once, the first time this process leads, if the replicated
/// cluster description differs (berthd `--cluster FILE`, `berth dev --config FILE`), as
/// [`install_accounts`] does.
pub async fn install_cluster(raft: RaftHandle, toml: String, shutdown: watch::Receiver<bool>) {
    let current = |sm: &StateMachine| sm.cluster_toml().to_string();
    let cmd = pb::command::Cmd::SetCluster(pb::SetCluster { toml: toml.clone() });
    install_once(raft, "cluster description", toml, current, cmd, shutdown).await;
}

/// Proposes `cmd` the first time this process leads while the replicated text (`current`)
/// differs from `wanted`; stops once it is installed, refused, or already there.
async fn install_once(
    raft: RaftHandle,
    what: &str,
    wanted: String,
    current: impl Fn(&StateMachine) -> String,
    cmd: pb::command::Cmd,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !raft.is_leader() {
            continue;
        }
        if current(&raft.state()) == wanted {
            return;
        }
        match raft.propose(crate::command::command(cmd.clone())).await {
            Ok(Outcome::Done) => {
                tracing::info!("{what} installed");
                return;
            }
            Ok(other) => {
                tracing::error!("{what} refused: {other:?}");
                return;
            }
            Err(e) => tracing::warn!("{what} not proposed yet: {e}"),
        }
    }
}

/// What one scheduling pass decided, in the log's form.
#[derive(Debug, Default)]
pub struct Plan {
    /// Why each job that stays pending waits, and when it is expected to start.
    pub reasons: HashMap<u64, (String, Option<u64>)>,
    /// Victims to stop first (their kill starts the grace period preemptors wait out).
    pub preempt: Option<pb::Preempt>,
    /// Jobs to start.
    pub allocate: Option<pb::Allocate>,
    /// Pending jobs that can no longer end before their `--deadline`: ended DEADLINE.
    pub expired: Vec<u64>,
}

/// One pass over the applied state `sm` at `now_ms`, deciding as leader of `term`; `None`
/// when nothing is pending (or only held jobs are). Pure: the leader's loop and the deterministic simulator call
/// it alike.
pub fn plan(sm: &StateMachine, term: u64, now_ms: u64) -> Option<Plan> {
    let input = sm.pending_at(now_ms);
    let pending = input.pending;
    // An array stands for the tasks that could start now, under synthetic ids that
    // `views` maps back to (array, task index).
    let views = input.views;
    // Jobs waiting on dependencies, a begin time, a reservation or a partition limit never
    // reach the policies; their reason is the state's.
    let mut reasons: HashMap<u64, (String, Option<u64>)> = sm
        .dependency_waits()
        .into_iter()
        .chain(input.waits)
        .map(|(id, reason)| (id, (reason.to_string(), None)))
        .collect();
    // Array tasks held back by their throttle never reach the policies either.
    for id in sm.throttle_waits() {
        reasons
            .entry(id)
            .or_insert(("JobArrayTaskLimit".to_string(), None));
    }
    if pending.is_empty() {
        // Most passes (every job change wakes one) find nothing to place: skip the cluster
        // view, which costs a walk over every node and GPU.
        let idle = reasons.is_empty() && input.expired.is_empty();
        return (!idle).then(|| Plan {
            reasons,
            expired: input.expired,
            ..Plan::default()
        });
    }
    let cluster = sm.policy_view();
    let policy = sm.policy_config();
    let schedule = policies::schedule(&cluster, &pending, &policy, now_ms);
    for p in &schedule.pending {
        // An array's first waiting task speaks for the array's record.
        let reason = p.reason.slurm_name().to_string();
        reasons
            .entry(views.record(p.job_id))
            .or_insert((reason, p.expected_start_ms));
    }
    let preempt = (!schedule.preemptions.is_empty()).then(|| pb::Preempt {
        term,
        preemptions: schedule
            .preemptions
            .iter()
            .map(|p| pb::Preemption {
                victim: p.victim,
                preemptor: views.record(p.preemptor),
                cause: match p.cause {
                    policies::PreemptCause::Priority => "priority",
                    policies::PreemptCause::Reclaim => "reclaim",
                }
                .into(),
            })
            .collect(),
    });
    let allocate = (!schedule.decisions.is_empty()).then(|| pb::Allocate {
        term,
        placements: schedule
            .decisions
            .iter()
            .map(|d| {
                let mut p = placement(d);
                if let Some((array, index)) = views.get(d.job_id) {
                    p.job_id = array;
                    p.array_task_id = Some(index);
                }
                p
            })
            .collect(),
    });
    Some(Plan {
        reasons,
        preempt,
        allocate,
        expired: input.expired,
    })
}

async fn pass(raft: &RaftHandle, reasons: &PendingReasons) {
    let now = crate::command::now_ms();
    let Some(plan) = plan(&raft.state(), raft.term(), now) else {
        return;
    };
    reasons.replace(plan.reasons);
    for job_id in plan.expired {
        let cmd = pb::command::Cmd::Cancel(pb::CancelJob {
            job_id,
            reason: "DeadLine".into(),
            end_state: pb::JobState::Deadline as i32,
            array_tasks: Vec::new(),
            release: None,
        });
        match raft.propose(crate::command::command(cmd)).await {
            Ok(Outcome::Done) => tracing::info!(job_id, "job cannot end before its deadline"),
            Ok(other) => tracing::warn!(job_id, "deadline end refused: {other:?}"),
            Err(e) => tracing::warn!(job_id, "deadline end not proposed: {e}"),
        }
    }
    if let Some(preempt) = plan.preempt {
        let cmd = pb::command::Cmd::Preempt(preempt);
        match raft.propose(crate::command::command(cmd)).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!("preemption partly refused: {other:?}"),
            Err(e) => tracing::warn!("preemption not proposed: {e}"),
        }
    }
    if let Some(alloc) = plan.allocate {
        let cmd = pb::command::Cmd::Allocate(alloc);
        match raft.propose(crate::command::command(cmd)).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!("allocation partly refused: {other:?}"),
            Err(e) => tracing::warn!("allocation not proposed: {e}"),
        }
    }
}

/// The log's form of one placement decision.
pub fn placement(d: &policies::Decision) -> pb::Placement {
    let allocations = d
        .nodes
        .iter()
        .map(|g| pb::Allocation {
            node: g.node.clone(),
            gpu_uuids: g.gpu_uuids.clone(),
            gpu_indices: g.gpu_indices.clone(),
            cpus: g.cpus,
            mem_mb: g.mem_mb,
            gpu_milli: g.gpu_milli,
            // The slices the planner chose: the agent creates each at exactly this
            // placement at launch.
            mig_slices: g
                .mig_slices
                .iter()
                .map(|s| pb::MigSlice {
                    gpu_uuid: s.gpu_uuid.clone(),
                    profile: s.profile.clone(),
                    placement_start: s.start,
                    placement_size: s.size,
                    job_id: 0,
                })
                .collect(),
        })
        .collect();
    pb::Placement {
        job_id: d.job_id,
        allocations,
        array_task_id: None,
    }
}
