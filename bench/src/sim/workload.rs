//! Everything outside the replicas, driven by the seeded RNG: clients that submit and
//! cancel, the leader's scheduling pass, and node agents that register, run jobs for a
//! while, report their end, and sometimes go down.
//!
//! Clients do what berthd's gRPC front does for them: they reach a random live replica,
//! which hands the command to the replica it believes leads (a stale belief is part of the
//! test). Only an outcome that came back counts as acknowledged; a proposal whose replica
//! crashed or lost leadership is unknown, as it is to a real client.

use super::cluster::Cluster;
use super::Failure;
use berth_proto::v1 as pb;
use berth_scheduler::raft_loop::{ProposeError, ReplyReceiver};
use berth_scheduler::state_machine::{Outcome, StateMachine};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::oneshot::error::TryRecvError;

/// How busy the outside world is, per simulated millisecond.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Probability that a client submits a job.
    pub submit: f64,
    /// Probability that a client cancels an acknowledged job.
    pub cancel: f64,
    /// Probability that a node's agent goes silent and the node is marked down.
    pub node_down: f64,
    /// Probability that kube-scheduler binds a pod through the extender.
    pub bind: f64,
}

/// GPU nodes of the simulated cluster.
pub const GPUS_PER_NODE: u32 = 8;

enum Asked {
    Submit(String),
    Cancel(u64),
    Other,
}

struct Outstanding {
    asked: Asked,
    reply: ReplyReceiver,
}

/// The clients, the scheduler pass and the agents, and what they were told.
pub struct Workload {
    nodes: u32,
    outstanding: Vec<Outstanding>,
    /// Job id → name of every acknowledged submit.
    pub acked_submits: BTreeMap<u64, String>,
    /// Jobs whose cancel was acknowledged.
    pub acked_cancels: BTreeSet<u64>,
    /// When each running job's agent will report it ended.
    ends_at_ms: BTreeMap<u64, u64>,
    /// Next time each node may (re-)register, and whether it is "alive".
    node_alive: Vec<bool>,
    next_action_ms: u64,
    allocating: Option<ReplyReceiver>,
    next_name: u64,
    /// Proposals that went nowhere (not leader, lost, crashed), for the summary.
    pub unknown: u64,
    /// The pod group being bound: its reference, members still to bind, GPUs per member.
    gang: Option<(pb::PodGroupRef, u32, u32)>,
}

fn command(now_ms: u64, cmd: pb::command::Cmd) -> pb::Command {
    pb::Command {
        time_ms: now_ms,
        cmd: Some(cmd),
    }
}

fn inventory(node: u32) -> pb::NodeInventory {
    let name = format!("sim{node:02}");
    pb::NodeInventory {
        gpus: (0..GPUS_PER_NODE)
            .map(|g| pb::Gpu {
                uuid: format!("GPU-sim-{node:02}-{g}"),
                index: g,
                model: "NVIDIA H100 80GB HBM3".into(),
                gres_type: "h100".into(),
                memory_mb: 81_559,
                // The last node is a time-slicing pool: each GPU takes 3 jobs at once.
                replicas: if node == 3 { 3 } else { 1 },
                ..Default::default()
            })
            .collect(),
        name,
        partition: "gpu".into(),
        cpus: 64,
        memory_mb: 512_000,
        ..Default::default()
    }
}

impl Workload {
    /// A world of `nodes` GPU nodes, none registered yet.
    pub fn new(nodes: u32) -> Workload {
        Workload {
            nodes,
            outstanding: Vec::new(),
            acked_submits: BTreeMap::new(),
            acked_cancels: BTreeSet::new(),
            ends_at_ms: BTreeMap::new(),
            node_alive: vec![true; nodes as usize],
            next_action_ms: 0,
            allocating: None,
            next_name: 1,
            unknown: 0,
            gang: None,
        }
    }

    /// The replica a client's request ends up at: a random live one, or the one it
    /// believes leads.
    fn target(cluster: &Cluster, rng: &mut ChaCha8Rng) -> Option<usize> {
        let up: Vec<usize> = (0..cluster.replicas.len())
            .filter(|&i| cluster.replicas[i].node.is_some())
            .collect();
        let first = *up.choose(rng)?;
        let leader = cluster.replicas[first].node.as_ref()?.leader_id();
        let believed = leader.checked_sub(1).map(|l| l as usize);
        Some(match believed {
            Some(l) if l < cluster.replicas.len() && cluster.replicas[l].node.is_some() => l,
            _ => first,
        })
    }

    fn propose(
        &mut self,
        cluster: &mut Cluster,
        i: usize,
        now_ms: u64,
        cmd: pb::command::Cmd,
        asked: Asked,
    ) {
        if let Some(node) = cluster.node_mut(i) {
            let reply = node.propose(command(now_ms, cmd));
            self.outstanding.push(Outstanding { asked, reply });
        }
    }

    /// One millisecond of clients (only while `clients_on`), agents and scheduling.
    pub fn step(
        &mut self,
        cluster: &mut Cluster,
        now_ms: u64,
        load: Load,
        clients_on: bool,
        rng: &mut ChaCha8Rng,
    ) {
        if clients_on && rng.gen_bool(load.submit) {
            if let Some(i) = Workload::target(cluster, rng) {
                let name = format!("job{}", self.next_name);
                self.next_name += 1;
                let spec = job_spec(&name, self.nodes, rng);
                self.propose(
                    cluster,
                    i,
                    now_ms,
                    pb::command::Cmd::Submit(pb::SubmitJob { spec: Some(spec) }),
                    Asked::Submit(name),
                );
            }
        }
        if clients_on && rng.gen_bool(load.bind) {
            self.bind_pod(cluster, now_ms, rng);
        }
        if clients_on && rng.gen_bool(load.cancel) {
            let ids: Vec<u64> = self.acked_submits.keys().copied().collect();
            if let (Some(&id), Some(i)) = (ids.choose(rng), Workload::target(cluster, rng)) {
                self.propose(
                    cluster,
                    i,
                    now_ms,
                    pb::command::Cmd::Cancel(pb::CancelJob {
                        job_id: id,
                        reason: String::new(),
                        end_state: 0,
                        array_tasks: Vec::new(),
                        release: None,
                    }),
                    Asked::Cancel(id),
                );
            }
        }
        if clients_on && rng.gen_bool(load.node_down) {
            let n = rng.gen_range(0..self.nodes) as usize;
            self.node_alive[n] = false;
        }
        if now_ms >= self.next_action_ms {
            // The leader's periodic work: agents' reports and a scheduling pass.
            self.next_action_ms = now_ms + 20;
            if let Some(l) = cluster.leader() {
                self.agents(cluster, l, now_ms, clients_on, rng);
                self.schedule(cluster, l, now_ms);
            }
        }
        self.collect();
    }

    /// kube-scheduler's bind through the extender, as berthd's `BindPod` RPC does it: the
    /// replica reached picks the GPUs from its own applied state (stale on a deposed
    /// leader) and proposes the pod's job with its term. Races the scheduling loop's
    /// allocations on purpose: the log must refuse whichever comes second.
    fn bind_pod(&mut self, cluster: &mut Cluster, now_ms: u64, rng: &mut ChaCha8Rng) {
        let Some(i) = Workload::target(cluster, rng) else {
            return;
        };
        let name = format!("pod{}", self.next_name);
        self.next_name += 1;
        // Some pods belong to pod groups of 2 or 3 same-sized members, bound one by one.
        let group = match &mut self.gang {
            Some((group, left, gpus)) if *left > 0 => {
                *left -= 1;
                Some((group.clone(), *gpus))
            }
            _ if rng.gen_bool(0.3) => {
                let min_member = rng.gen_range(2..=3);
                let group = pb::PodGroupRef {
                    name: format!("sim/group{}", self.next_name),
                    min_member,
                    timeout_ms: 2_000,
                };
                let gpus = rng.gen_range(1..=3);
                self.gang = Some((group.clone(), min_member - 1, gpus));
                Some((group, gpus))
            }
            _ => None,
        };
        let spec = pb::JobSpec {
            name: name.clone(),
            pod: Some(pb::PodRef {
                namespace: "sim".into(),
                name: name.clone(),
                uid: format!("uid-{name}"),
            }),
            partition: "gpu".into(),
            nodes: 1,
            ntasks: 1,
            cpus_per_task: 1,
            gpus_per_node: group.as_ref().map_or_else(|| rng.gen_range(1..=4), |g| g.1),
            pod_group: group.map(|g| g.0),
            work_dir: "/".into(),
            ..Default::default()
        };
        let Some(replica) = cluster.node_mut(i) else {
            return;
        };
        let planned = {
            let sm = replica.state();
            // A later member goes where its group holds a slot, as the extender's filter
            // steers it; others go to a random node.
            let reserved: Vec<String> = spec
                .pod_group
                .as_ref()
                .and_then(|g| sm.group_reservation(&g.name))
                .map(|j| j.allocations.iter().map(|a| a.node.clone()).collect())
                .unwrap_or_default();
            let node = reserved
                .choose(rng)
                .cloned()
                .unwrap_or_else(|| format!("sim{:02}", rng.gen_range(0..self.nodes)));
            berth_scheduler::extender::plan_bind(&sm, &node, &spec)
        };
        let Ok((allocation, reservation)) = planned else {
            return; // the extender's filter would have left this node out
        };
        let bind = pb::BindPod {
            term: replica.term(),
            spec: Some(spec),
            allocation: Some(allocation),
            reservation,
        };
        self.propose(
            cluster,
            i,
            now_ms,
            pb::command::Cmd::BindPod(bind),
            Asked::Submit(name),
        );
    }

    /// Agents as the leader sees them: register missing nodes, report dead ones down,
    /// start the clock of newly running jobs, and report ended or killed jobs.
    fn agents(
        &mut self,
        cluster: &mut Cluster,
        l: usize,
        now_ms: u64,
        clients_on: bool,
        rng: &mut ChaCha8Rng,
    ) {
        let mut cmds = Vec::new();
        {
            let sm = cluster.replicas[l]
                .node
                .as_ref()
                .expect("leader is up")
                .state();
            for n in 0..self.nodes {
                let name = format!("sim{n:02}");
                let up = sm
                    .node(&name)
                    .is_some_and(|x| x.state() == pb::NodeState::Up);
                if !self.node_alive[n as usize] {
                    if up {
                        let down = pb::NodeDown {
                            node: name,
                            reason: "Not responding".into(),
                        };
                        cmds.push(pb::command::Cmd::NodeDown(down));
                    } else if !clients_on || rng.gen_bool(0.05) {
                        self.node_alive[n as usize] = true;
                    }
                } else if !up {
                    cmds.push(pb::command::Cmd::RegisterNode(pb::RegisterNode {
                        inventory: Some(inventory(n)),
                    }));
                }
            }
            cmds.extend(self.job_reports(&sm, now_ms, rng));
        }
        for cmd in cmds {
            self.propose(cluster, l, now_ms, cmd, Asked::Other);
        }
    }

    fn job_reports(
        &mut self,
        sm: &StateMachine,
        now_ms: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<pb::command::Cmd> {
        let mut cmds = Vec::new();
        // Pod groups' reservations run nothing: the leader's pod watch releases them when
        // their members do not all come in time.
        let all_running: Vec<pb::Job> = sm
            .jobs()
            .filter(|j| j.state() == pb::JobState::Running)
            .cloned()
            .collect();
        for job_id in berth_scheduler::kube_api::expired_reservations(&all_running, now_ms) {
            cmds.push(pb::command::Cmd::Cancel(pb::CancelJob {
                job_id,
                reason: String::new(),
                end_state: 0,
                array_tasks: Vec::new(),
                release: None,
            }));
        }
        let running: Vec<&pb::Job> = sm
            .jobs()
            .filter(|j| j.state() == pb::JobState::Running)
            .filter(|j| {
                j.spec
                    .as_ref()
                    .is_none_or(|s| s.pod.is_some() || s.pod_group.is_none())
            })
            .collect();
        self.ends_at_ms
            .retain(|id, _| running.iter().any(|j| j.id == *id));
        for job in running {
            let ends = *self
                .ends_at_ms
                .entry(job.id)
                .or_insert_with(|| now_ms + rng.gen_range(20..1500));
            if now_ms < ends && !job.kill_requested && !job.preempting {
                continue;
            }
            // A killed job reports the state its KillJob named: cancelled or preempted.
            // (A preempted job is also kill-requested: preemption comes first.)
            let (state, signal) = if job.preempting {
                (pb::JobState::Preempted, 15)
            } else if job.kill_requested {
                (pb::JobState::Cancelled, 15)
            } else {
                (pb::JobState::Completed, 0)
            };
            let finished = pb::JobFinished {
                state: state as i32,
                signal,
                end_time_ms: now_ms,
                ..Default::default()
            };
            cmds.push(pb::command::Cmd::JobEnded(pb::JobEnded {
                job_id: job.id,
                node: job.allocations[0].node.clone(),
                finished: Some(finished),
            }));
        }
        cmds
    }

    /// The leader's scheduling pass, as `berth_scheduler::scheduling` does it: one
    /// `Allocate` at a time, carrying the leader's term.
    fn schedule(&mut self, cluster: &mut Cluster, l: usize, now_ms: u64) {
        if let Some(rx) = &mut self.allocating {
            if let Err(TryRecvError::Empty) = rx.try_recv() {
                return;
            }
            self.allocating = None;
        }
        let node = cluster.node_mut(l).expect("leader is up");
        let plan = berth_scheduler::scheduling::plan(&node.state(), node.term(), now_ms);
        let Some(plan) = plan else {
            return;
        };
        if let Some(preempt) = plan.preempt {
            // Not awaited: the victims' kills run while the allocation waits its turn.
            drop(node.propose(command(now_ms, pb::command::Cmd::Preempt(preempt))));
        }
        if let Some(alloc) = plan.allocate {
            let cmd = command(now_ms, pb::command::Cmd::Allocate(alloc));
            self.allocating = Some(node.propose(cmd));
        }
    }

    /// Takes in the outcomes that came back.
    fn collect(&mut self) {
        let mut still = Vec::new();
        for mut o in self.outstanding.drain(..) {
            match o.reply.try_recv() {
                Err(TryRecvError::Empty) => still.push(o),
                Ok(Ok(outcome)) => match (o.asked, outcome) {
                    (Asked::Submit(name), Outcome::Submitted(id)) => {
                        self.acked_submits.insert(id, name);
                    }
                    (Asked::Cancel(id), Outcome::Done) => {
                        self.acked_cancels.insert(id);
                    }
                    _ => {}
                },
                Ok(Err(ProposeError::NotLeader)) | Ok(Err(_)) | Err(TryRecvError::Closed) => {
                    self.unknown += 1;
                }
            }
        }
        self.outstanding = still;
    }

    /// Why the world has not settled yet (None: it has).
    pub fn pending(&self, sm: &StateMachine) -> Option<&'static str> {
        if !self.outstanding.is_empty() {
            return Some("client requests outstanding");
        }
        if self.node_alive.iter().any(|a| !a) {
            return Some("nodes down");
        }
        let busy = sm
            .jobs()
            .any(|j| matches!(j.state(), pb::JobState::Pending | pb::JobState::Running));
        busy.then_some("jobs pending or running")
    }

    /// Every acknowledged submit is in `sm` under its id and name; every acknowledged
    /// cancel left its job cancelled (or ended otherwise before the kill landed).
    pub fn check_acks(&self, sm: &StateMachine) -> Result<(), Failure> {
        for (id, name) in &self.acked_submits {
            match sm.job(*id) {
                Some(j) if j.spec.as_ref().is_some_and(|s| &s.name == name) => {}
                Some(j) => {
                    let got = j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                    return Err(Failure::end(format!(
                        "acknowledged job {id} ({name}) is now {got}"
                    )));
                }
                None => {
                    return Err(Failure::end(format!(
                        "acknowledged job {id} ({name}) is lost"
                    )))
                }
            }
        }
        for id in &self.acked_cancels {
            let state = sm.job(*id).map(|j| j.state());
            if matches!(
                state,
                Some(pb::JobState::Pending) | Some(pb::JobState::Running) | None
            ) {
                return Err(Failure::end(format!(
                    "acknowledged cancel of job {id} left it {state:?}"
                )));
            }
        }
        Ok(())
    }
}

/// A random job: mostly single-node with 0–4 GPUs, sometimes a 2-node gang.
fn job_spec(name: &str, nodes: u32, rng: &mut ChaCha8Rng) -> pb::JobSpec {
    let gang = nodes >= 2 && rng.gen_bool(0.15);
    pb::JobSpec {
        name: name.into(),
        script: "#!/bin/sh\ntrue\n".into(),
        work_dir: "/tmp".into(),
        partition: "gpu".into(),
        nodes: if gang { 2 } else { 1 },
        ntasks: 1,
        cpus_per_task: rng.gen_range(1..=8),
        gpus_per_node: rng.gen_range(0..=4),
        time_limit_secs: 3600,
        user: "sim".into(),
        // Classes of the default configuration, so higher ones preempt lower ones.
        qos: ["development", "training", "production-inference"][rng.gen_range(0..3)].into(),
        ..Default::default()
    }
}
