//! The replicated state machine: jobs and nodes, changed only by [`apply`]ing commands
//! taken from the Raft log.
//!
//! `apply` is deterministic: it reads no clock (time arrives inside the command), no RNG, no
//! disk, and keeps every collection in a `BTreeMap`, so the same log replayed from empty
//! gives byte-identical state ([`StateMachine::encode`]). It never trusts a command: a
//! command that does not fit the current state (a cancel of a finished job, a placement on
//! a GPU that is no longer free) is answered with an [`Outcome`] error and changes nothing.
//!
//! Besides the outcome returned to the proposer, `apply` emits [`Effect`]s: what the leader
//! must tell agents (launch, kill, forget) and which jobs changed (for `Watch`). Followers
//! compute the same effects and ignore them.
//!
//! [`apply`]: StateMachine::apply

use crate::accounts::AccountsConfig;
use berth_policies as policies;
use berth_proto::v1::{self as pb, command::Cmd, JobState, NodeState};
use prost::Message as _;

/// What applying one command meant for its proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A job was accepted with this id.
    Submitted(u64),
    /// The command was applied.
    Done,
    /// The command was refused; nothing changed. The text is for the user.
    Rejected(String),
    /// The job id does not exist.
    NoSuchJob(u64),
    /// A job step was created with this step id.
    StepCreated(u32),
}

/// Work for the leader, or news for watchers, produced by a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start this job; the agent of `node` runs the batch script.
    Launch {
        /// Node whose agent runs the script (the first allocated node).
        node: String,
        /// The job as allocated.
        job: Box<pb::Job>,
    },
    /// Stop this job on `node` and report it as `state`.
    Kill {
        /// Node running the job.
        node: String,
        /// The job.
        job_id: u64,
        /// State to report once it is dead.
        state: JobState,
        /// Why.
        reason: String,
        /// Signal sent first (0: SIGTERM), to the batch shell only when `batch_only`, and
        /// the seconds before SIGKILL (0: the agent's default): `--signal` on preemption.
        signal: i32,
        /// See `signal`.
        batch_only: bool,
        /// See `signal`.
        grace_secs: u32,
    },
    /// The job's end is recorded; the agent of `node` may forget it.
    Ack {
        /// Node that reported the end.
        node: String,
        /// The job.
        job_id: u64,
    },
    /// Start the tasks of a job step that run on `node`.
    LaunchStep {
        /// Node whose agent runs some of the step's tasks.
        node: String,
        /// The job as it is with the step added (allocation and environment).
        job: Box<pb::Job>,
        /// The step.
        step: Box<pb::Step>,
    },
    /// Stop a job's step (`Some`) or every step of it (`None`) on `node`.
    KillStep {
        /// Node running the tasks.
        node: String,
        /// The job.
        job_id: u64,
        /// The step; `None`: all of the job's steps.
        step_id: Option<u32>,
    },
    /// A job changed (for `Watch` and for waking the scheduling loop): the job as this
    /// command left it, so a watcher sees every transition, not only the latest state.
    JobChanged(Box<pb::Job>),
    /// A node changed (registered, went down).
    NodeChanged(String),
}

/// Jobs and nodes at one applied index.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMachine {
    applied_index: u64,
    state: pb::StateSnapshot,
    /// `state.accounts_toml` parsed (derived, not encoded).
    accounts: AccountsConfig,
    /// `state.topology_conf` parsed (derived, not encoded).
    network: policies::topology::NetworkConf,
    /// The topology model of `network` and the nodes' reported GPU links, built on first
    /// use after a change (derived; see [`TopologyCache`]).
    topology: TopologyCache,
    /// Per-node GPU counts for the extender (derived; see [`gpu_counts`]).
    gpu_counts: gpu_counts::GpuCountsCache,
    /// `state.cluster_toml` parsed (derived, not encoded); `None` without a description.
    cluster: Option<std::sync::Arc<crate::cluster::ClusterDescription>>,
}

/// A lazily built [`policies::topology::Topology`]: registrations and the network tree
/// reset it, the next scheduling pass builds it once. Derived data, so two state machines
/// are equal whatever their caches hold.
#[derive(Debug, Clone, Default)]
struct TopologyCache(std::sync::OnceLock<std::sync::Arc<policies::topology::Topology>>);

impl PartialEq for TopologyCache {
    fn eq(&self, _: &TopologyCache) -> bool {
        true
    }
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine {
            applied_index: 0,
            state: pb::StateSnapshot::default(),
            accounts: crate::accounts::parse("").expect("the built-in accounts config parses"),
            network: Default::default(),
            topology: TopologyCache::default(),
            gpu_counts: Default::default(),
            cluster: None,
        }
    }
}

/// Most ancestors kept per job in `preempted_for` (a bound on state size; beyond it the
/// oldest are dropped, which could in principle allow a long preemption cycle).
const PREEMPTED_FOR_MAX: usize = 64;

/// The end reason of a job the user cancelled (scancel); berth's own cancels name theirs.
/// The pod watch deletes the pod of a Kubernetes job that ended with exactly this reason.
pub const CANCELLED_BY_USER: &str = "cancelled";

/// Result of [`StateMachine::apply`].
pub type Applied = (Outcome, Vec<Effect>);

impl StateMachine {
    /// Restores the state encoded by [`StateMachine::encode`] at `index`.
    ///
    /// # Errors
    /// The decode error when `bytes` is not a state snapshot.
    pub fn restore(index: u64, bytes: &[u8]) -> Result<StateMachine, prost::DecodeError> {
        let state = pb::StateSnapshot::decode(bytes)?;
        // The text was validated when applied; a snapshot from a build that parsed it
        // differently falls back to the default rather than refusing to start.
        let accounts = crate::accounts::parse(&state.accounts_toml).unwrap_or_else(|e| {
            tracing::error!(
                "accounts config in snapshot no longer parses ({e}); using the default"
            );
            crate::accounts::parse("").expect("the built-in accounts config parses")
        });
        let network =
            policies::topology::NetworkConf::parse(&state.topology_conf).unwrap_or_else(|e| {
                tracing::error!("topology in snapshot no longer parses ({e}); using none");
                Default::default()
            });
        let cluster = match state.cluster_toml.as_str() {
            "" => None,
            text => crate::cluster::ClusterDescription::parse(text)
                .map(std::sync::Arc::new)
                .map_err(|e| {
                    tracing::error!(
                        "cluster description in snapshot no longer parses ({e}); using none"
                    )
                })
                .ok(),
        };
        Ok(StateMachine {
            applied_index: index,
            state,
            accounts,
            network,
            topology: TopologyCache::default(),
            gpu_counts: Default::default(),
            cluster,
        })
    }

    /// The state as deterministic protobuf bytes (maps are ordered).
    pub fn encode(&self) -> Vec<u8> {
        self.state.encode_to_vec()
    }

    /// The index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// A job by id.
    pub fn job(&self, id: u64) -> Option<&pb::Job> {
        self.state.jobs.get(&id)
    }

    /// Every job, by id.
    pub fn jobs(&self) -> impl Iterator<Item = &pb::Job> {
        self.state.jobs.values()
    }

    /// Jobs with ids above `after`, by id (a page of a listing).
    pub fn jobs_after(&self, after: u64) -> impl Iterator<Item = &pb::Job> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.state
            .jobs
            .range((Excluded(after), Unbounded))
            .map(|(_, job)| job)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &pb::Node> {
        self.state.nodes.values()
    }

    /// Why `job` must stop because a GPU it holds (whole, shared or sliced) went bad:
    /// `GPU <uuid> unhealthy: <reason>` for the first such GPU, `None` when all are healthy.
    pub fn failed_gpu(&self, job: &pb::Job) -> Option<String> {
        job.allocations.iter().find_map(|a| {
            let inv = self.node(&a.node)?.inventory.as_ref()?;
            let held = |uuid: &str| {
                a.gpu_uuids.iter().any(|u| u == uuid)
                    || a.mig_slices.iter().any(|s| s.gpu_uuid == uuid)
            };
            inv.gpus
                .iter()
                .find(|g| !g.unhealthy_reason.is_empty() && held(&g.uuid))
                .map(|g| format!("GPU {} unhealthy: {}", g.uuid, g.unhealthy_reason))
        })
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&pb::Node> {
        self.state.nodes.get(name)
    }

    /// Marks `index` applied without a command (Raft's empty and conf-change entries).
    ///
    /// # Panics
    /// If `index` does not grow: entries are applied once, in order.
    pub fn skip(&mut self, index: u64) {
        self.advance(index);
    }

    fn advance(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "applied index went from {} to {index}",
            self.applied_index
        );
        self.applied_index = index;
    }

    /// Applies the command at log `index`.
    ///
    /// # Panics
    /// If `index` does not grow, or if a GPU would be granted twice (which the checks here
    /// rule out; the assertion guards the invariant).
    pub fn apply(&mut self, index: u64, cmd: pb::Command) -> Applied {
        self.advance(index);
        let now = cmd.time_ms;
        let Some(cmd) = cmd.cmd else {
            return (Outcome::Rejected("empty command".into()), vec![]);
        };
        let (outcome, mut effects) = match cmd {
            Cmd::Submit(c) => self.submit(c.spec.unwrap_or_default(), now),
            Cmd::Cancel(c) => self.cancel(c, now),
            Cmd::Hold(c) => self.hold(c, now),
            Cmd::ArrayUpdate(c) => self.array_update(c, now),
            Cmd::Requeue(c) => self.requeue_job(c.job_id, now),
            Cmd::RegisterNode(c) => self.register_node(c.inventory.unwrap_or_default(), now),
            Cmd::NodeDown(c) => self.node_down(&c.node, &c.reason, now),
            Cmd::Allocate(c) => self.allocate(c, now),
            Cmd::JobEnded(c) => self.job_ended(c, now),
            Cmd::MarkGpuUnhealthy(c) => self.mark_gpu_unhealthy(&c, now),
            Cmd::GpuHealthy(c) => self.mark_gpu_healthy(&c),
            Cmd::JobUsage(c) => self.record_usage(c),
            Cmd::BindPod(c) => self.bind_pod(c, now),
            Cmd::SetAccounts(c) => self.set_accounts(c.toml),
            Cmd::SetTopology(c) => self.set_topology(c.conf),
            Cmd::Preempt(c) => self.preempt(c, now),
            Cmd::SetCluster(c) => self.set_cluster(c.toml, now),
            Cmd::Reservation(c) => self.change_reservation(c, now),
            Cmd::NodeDrain(c) => self.drain_node(&c, now),
            Cmd::StepCreate(c) => self.step_create(c, now),
            Cmd::StepEnded(c) => self.step_ended(c),
            Cmd::StepCancel(c) => self.step_cancel(c),
        };
        for effect in &mut effects {
            if let Effect::JobChanged(job) = effect {
                if let Some(now) = self.state.jobs.get(&job.id) {
                    **job = now.clone();
                }
            }
        }
        #[cfg(debug_assertions)]
        self.check_counts();
        (outcome, effects)
    }

    fn submit(&mut self, mut spec: pb::JobSpec, now: u64) -> Applied {
        if let Err(why) = validate_spec(&spec) {
            return (Outcome::Rejected(why), vec![]);
        }
        let (account, qos) = match self.resolve_account_qos(&spec) {
            Ok(found) => found,
            Err(why) => return (Outcome::Rejected(why), vec![]),
        };
        if let Err(why) = self.check_submit(&mut spec, &account, &qos) {
            return (Outcome::Rejected(why), vec![]);
        }
        let next_id = self.state.next_job_id.max(1);
        if let Err(why) = dependency::validate(&spec.dependencies, |id| {
            id < next_id && self.state.jobs.contains_key(&id)
        })
        .and_then(|()| self.check_task_dependencies(&spec.dependencies))
        {
            return (Outcome::Rejected(why), vec![]);
        }
        let array = match &spec.array {
            Some(a) => match array::validate(a, self.accounts.max_array_size) {
                Ok(set) => Some(set),
                Err(why) => return (Outcome::Rejected(why), vec![]),
            },
            None => None,
        };
        if let Err(why) = self.feasible(&spec) {
            return (Outcome::Rejected(why), vec![]);
        }
        let id = self.state.next_job_id.max(1);
        self.state.next_job_id = id + 1;
        let held = spec.hold;
        let job = pb::Job {
            id,
            partition: spec.partition.clone(),
            spec: Some(spec),
            state: JobState::Pending as i32,
            reason: if held { "JobHeldUser" } else { "None" }.into(),
            submit_time_ms: now,
            eligible_time_ms: now,
            held,
            account,
            qos,
            array_job_id: if array.is_some() { id } else { 0 },
            array_pending: array.map(|a| a.to_ranges()).unwrap_or_default(),
            ..Default::default()
        };
        self.state.jobs.insert(id, job);
        (Outcome::Submitted(id), vec![changed(id)])
    }

    /// The account and QOS a job is charged and classed as. With no accounts file
    /// installed, an account or QOS the built-in configuration lacks is taken as named
    /// (charged like an unknown account, classed as the default), as Slurm takes any
    /// without accounting enforcement; with one installed it is refused.
    fn resolve_account_qos(&self, spec: &pb::JobSpec) -> Result<(String, String), String> {
        let enforced = !self.state.accounts_toml.is_empty();
        let account = match self.accounts.resolve_account(&spec.account, &spec.user) {
            Ok(a) => a,
            Err(_) if !enforced && !spec.account.is_empty() => spec.account.clone(),
            Err(why) => return Err(why),
        };
        let qos = match self.accounts.resolve_qos(&spec.qos) {
            Ok(q) => q.name.clone(),
            Err(_) if !enforced && !spec.qos.is_empty() => spec.qos.clone(),
            Err(why) => return Err(why),
        };
        Ok((account, qos))
    }

    /// Whether `spec` could ever run here: on the described cluster when there is a
    /// description (nodes known before their agents), else on the registered nodes, all
    /// idle. A job asking for more nodes than its partition has waits instead
    /// (`PartitionNodeLimit`, as Slurm), so its shape is checked on as many as there are.
    ///
    /// # Errors
    /// Slurm's "Requested node configuration is not available" (or its memory and CPU
    /// variants) with the reason.
    fn feasible(&self, spec: &pb::JobSpec) -> Result<(), String> {
        let capacity = self.capacity_view();
        let mut wanted = pending_view(0, spec);
        if let Some(r) = self.state.reservations.get(&spec.reservation) {
            wanted.nodes_only = Some(std::sync::Arc::new(r.nodes.iter().cloned().collect()));
        }
        let members = capacity
            .nodes
            .iter()
            .filter(|n| n.in_partition(&spec.partition))
            .count() as u32;
        if wanted.nodes > members && members > 0 {
            wanted = wanted.with_nodes(members);
            wanted.req_nodes.clear();
        }
        policies::feasible_when_idle(&capacity, &wanted).map_err(|why| {
            let only = |r: &[policies::RejectReason]| {
                let m = &why.metrics.rejects;
                !m.is_empty()
                    && m.keys()
                        .all(|k| r.contains(k) || *k == policies::RejectReason::Partition)
                    && m.keys().any(|k| r.contains(k))
            };
            use policies::RejectReason as R;
            let head = if only(&[R::Memory, R::MemPerCpu, R::MemPerGpu]) {
                "Memory specification can not be satisfied"
            } else if only(&[R::Cpus, R::Tasks]) {
                "CPU count per node can not be satisfied"
            } else {
                "Requested node configuration is not available"
            };
            format!("{head} ({why})")
        })
    }

    /// Cancels job `id` alone; `reason` is empty when the user asked (shown as
    /// "cancelled"). A pending job ends in `end_state` (CANCELLED, or DEADLINE from berth's
    /// deadline check). Whole arrays and array tasks: [`StateMachine::cancel`].
    fn cancel_one(&mut self, id: u64, reason: &str, end_state: JobState, now: u64) -> Applied {
        let reason = if reason.is_empty() {
            CANCELLED_BY_USER
        } else {
            reason
        };
        let Some(job) = self.state.jobs.get_mut(&id) else {
            return (Outcome::NoSuchJob(id), vec![]);
        };
        match job.state() {
            JobState::Pending => {
                let deadline = end_state == JobState::Deadline;
                job.state = if deadline {
                    end_state
                } else {
                    JobState::Cancelled
                } as i32;
                job.end_time_ms = now;
                job.reason = if deadline { "DeadLine" } else { "None" }.into();
                (Outcome::Done, vec![changed(id)])
            }
            // kubelet, not an agent, runs a pod (and a pod group's reservation runs
            // nothing): cancelling releases the GPUs at once; the leader's pod watch then
            // deletes a user-cancelled pod (`kube_api::pods_to_delete`).
            JobState::Running if pods::is_kubernetes(job) => {
                let finished = pb::JobFinished {
                    state: JobState::Cancelled as i32,
                    reason: reason.into(),
                    ..Default::default()
                };
                self.finish(id, &finished, now);
                (Outcome::Done, vec![changed(id)])
            }
            JobState::Running if !job.kill_requested => {
                // scancel kills every step on every node, not only the batch script.
                (
                    Outcome::Done,
                    self.kill_running(id, JobState::Cancelled, reason.into()),
                )
            }
            _ => (
                Outcome::Rejected("Job/step already completing or completed".into()),
                vec![],
            ),
        }
    }

    /// Starts stopping running job `id` (scancel, a released allocation, a requeue): its
    /// batch node's agent kills it and reports it ended as `state` with `reason`, and
    /// every step on every node is stopped. The job holds its resources until that report.
    fn kill_running(&mut self, id: u64, state: JobState, reason: String) -> Vec<Effect> {
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        job.kill_requested = true;
        let kill = Effect::Kill {
            node: job.allocations[0].node.clone(),
            job_id: id,
            state,
            reason,
            signal: 0,
            batch_only: false,
            grace_secs: 0,
        };
        let mut effects = self.stop_steps(id, false);
        effects.extend([kill, changed(id)]);
        effects
    }

    fn hold_one(&mut self, id: u64, hold: bool) -> Applied {
        let Some(job) = self.state.jobs.get_mut(&id) else {
            return (Outcome::NoSuchJob(id), vec![]);
        };
        if job.state() != JobState::Pending {
            return (
                Outcome::Rejected("Job is no longer pending execution".into()),
                vec![],
            );
        }
        job.held = hold;
        job.reason = if hold { "JobHeldUser" } else { "None" }.into();
        (Outcome::Done, vec![changed(id)])
    }

    fn register_node(&mut self, mut inv: pb::NodeInventory, now: u64) -> Applied {
        if let Err(why) = validate_inventory(&inv) {
            return (Outcome::Rejected(why), vec![]);
        }
        let drain = match self.describe_registration(&mut inv) {
            Ok(drain) => drain,
            Err(why) => return (Outcome::Rejected(why), vec![]),
        };
        let name = inv.name.clone();
        self.topology = TopologyCache::default();
        let old = self.state.nodes.remove(&name);
        // GPUs keep their holder across re-registration: the agent re-attached to its jobs.
        // An unhealthy mark stays too: an XID does not heal when the agent restarts.
        for gpu in &mut inv.gpus {
            gpu.job_id = old
                .as_ref()
                .and_then(|n| held_by(n, &gpu.uuid))
                .unwrap_or(0);
            (gpu.share_job_ids, gpu.share_milli) = old
                .as_ref()
                .and_then(|n| n.inventory.as_ref())
                .and_then(|i| i.gpus.iter().find(|g| g.uuid == gpu.uuid))
                .map(|g| (g.share_job_ids.clone(), g.share_milli.clone()))
                .unwrap_or_default();
            // MIG slices too: the agent re-attached to the instances it created.
            gpu.mig_held = old
                .as_ref()
                .and_then(|n| n.inventory.as_ref())
                .and_then(|i| i.gpus.iter().find(|g| g.uuid == gpu.uuid))
                .map(|g| g.mig_held.clone())
                .unwrap_or_default();
            let before = old
                .as_ref()
                .and_then(|n| n.inventory.as_ref())
                .and_then(|i| i.gpus.iter().find(|g| g.uuid == gpu.uuid));
            if gpu.unhealthy_reason.is_empty() {
                gpu.unhealthy_reason = before
                    .map(|g| g.unhealthy_reason.clone())
                    .unwrap_or_default();
            }
            gpu.healthy_cleared_reason = before
                .map(|g| g.healthy_cleared_reason.clone())
                .unwrap_or_default();
        }
        let (cpus_alloc, memory_alloc_mb) = old
            .as_ref()
            .map(|n| (n.cpus_alloc, n.memory_alloc_mb))
            .unwrap_or((0, 0));
        // An admin's drain outlives the agent's restart; berth's own is judged again below.
        let (drain_flag, reason, reason_user, reason_time_ms) = old
            .as_ref()
            .filter(|n| n.drain)
            .map(|n| {
                (
                    true,
                    n.reason.clone(),
                    n.reason_user.clone(),
                    n.reason_time_ms,
                )
            })
            .unwrap_or_default();
        let node = pb::Node {
            inventory: Some(inv),
            state: NodeState::Up as i32,
            reason,
            registered_time_ms: now,
            cpus_alloc,
            memory_alloc_mb,
            described: None,
            drain: drain_flag,
            reason_time_ms,
            reason_user,
        };
        self.state.nodes.insert(name.clone(), node);
        self.after_registration(&name, drain, now);
        (Outcome::Done, vec![Effect::NodeChanged(name)])
    }

    fn node_down(&mut self, name: &str, reason: &str, now: u64) -> Applied {
        let Some(node) = self.state.nodes.get_mut(name) else {
            return (Outcome::Rejected(format!("unknown node {name}")), vec![]);
        };
        node.state = NodeState::Down as i32;
        node.reason = reason.to_string();
        self.recount(name);
        let mut effects = vec![Effect::NodeChanged(name.to_string())];
        let victims: Vec<u64> = self
            .state
            .jobs
            .values()
            .filter(|j| {
                j.state() == JobState::Running && j.allocations.iter().any(|a| a.node == name)
            })
            .map(|j| j.id)
            .collect();
        for id in victims {
            let finished = pb::JobFinished {
                state: JobState::NodeFail as i32,
                reason: format!("node {name} down: {reason}"),
                ..Default::default()
            };
            // The job's other nodes live on: stop its batch script and steps there, so
            // nothing of a failed job keeps running.
            let batch_node = self.state.jobs[&id].allocations[0].node.clone();
            if batch_node != name {
                effects.push(Effect::Kill {
                    node: batch_node,
                    job_id: id,
                    state: JobState::NodeFail,
                    reason: finished.reason.clone(),
                    signal: 0,
                    batch_only: false,
                    grace_secs: 0,
                });
            }
            effects.extend(self.stop_steps(id, true));
            self.finish(id, &finished, now);
            effects.push(changed(id));
        }
        (Outcome::Done, effects)
    }

    /// An admin's word that a repaired GPU is healthy: its unhealthy mark goes (kept as
    /// `healthy_cleared_reason`, see [`pb::Gpu`]) and placement uses it again. Already
    /// healthy: nothing changes.
    fn mark_gpu_healthy(&mut self, c: &pb::GpuHealthyMark) -> Applied {
        let gpu = self
            .state
            .nodes
            .get_mut(&c.node)
            .and_then(|n| n.inventory.as_mut())
            .and_then(|i| i.gpus.iter_mut().find(|g| g.uuid == c.gpu_uuid));
        let Some(gpu) = gpu else {
            let why = format!("no GPU {} on node {}", c.gpu_uuid, c.node);
            return (Outcome::Rejected(why), vec![]);
        };
        if gpu.unhealthy_reason.is_empty() {
            return (Outcome::Done, vec![]);
        }
        gpu.healthy_cleared_reason = std::mem::take(&mut gpu.unhealthy_reason);
        (Outcome::Done, vec![Effect::NodeChanged(c.node.clone())])
    }

    /// Records an agent's measured GPU use of its jobs (cumulative, one entry per job and
    /// node, replacing that node's previous entry). All or nothing: an entry for an unknown
    /// job, a job not allocated on that node, or a value that is negative, not finite, or
    /// busy time above held time rejects the whole record. Fair share does not read it.
    fn record_usage(&mut self, c: pb::JobUsageRecord) -> Applied {
        for u in &c.jobs {
            if let Err(why) = self.check_usage(&c.node, u) {
                return (Outcome::Rejected(why), vec![]);
            }
        }
        let mut effects = Vec::new();
        for mut u in c.jobs {
            u.node = c.node.clone();
            let job = self.state.jobs.get_mut(&u.job_id).expect("checked above");
            job.usage.retain(|x| x.node != c.node);
            let id = u.job_id;
            job.usage.push(u);
            job.usage.sort_by(|a, b| a.node.cmp(&b.node));
            // A late report changes an ended job's accounting record: say so (running
            // jobs change at every heartbeat and would only wake the scheduler).
            if is_final(job.state()) {
                effects.push(changed(id));
            }
        }
        (Outcome::Done, effects)
    }

    fn check_usage(&self, node: &str, u: &pb::JobUsage) -> Result<(), String> {
        let Some(job) = self.state.jobs.get(&u.job_id) else {
            return Err(format!("usage of unknown job {}", u.job_id));
        };
        if !job.allocations.iter().any(|a| a.node == node) {
            return Err(format!("job {} has no allocation on {node}", u.job_id));
        }
        let values = [u.gpu_seconds, u.gpu_busy_seconds, u.gpu_util_percent];
        if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!(
                "job {}: usage values must be finite and ≥ 0, got {values:?}",
                u.job_id
            ));
        }
        // Rounding in the agent's sums may put busy a hair above held.
        if u.gpu_busy_seconds > u.gpu_seconds * (1.0 + 1e-9) + 1e-9 {
            return Err(format!(
                "job {}: busy GPU-seconds {} above held GPU-seconds {}",
                u.job_id, u.gpu_busy_seconds, u.gpu_seconds
            ));
        }
        Ok(())
    }

    /// Records that a GPU went bad; placement skips it from now on. The first reason is
    /// kept (later events on a dead GPU are noise). Batch jobs on it (whole, a time-slice
    /// share or a MIG slice of it) are killed and, once their agent reports them dead,
    /// requeued per policy or ended NODE_FAIL, as Slurm does for a failed node. Pods are
    /// left to kubelet.
    fn mark_gpu_unhealthy(&mut self, c: &pb::MarkGpuUnhealthy, now: u64) -> Applied {
        if c.reason.trim().is_empty() {
            return (
                Outcome::Rejected("unhealthy GPU without a reason".into()),
                vec![],
            );
        }
        let gpu = self
            .state
            .nodes
            .get_mut(&c.node)
            .and_then(|n| n.inventory.as_mut())
            .and_then(|i| i.gpus.iter_mut().find(|g| g.uuid == c.gpu_uuid));
        let Some(gpu) = gpu else {
            let why = format!("no GPU {} on node {}", c.gpu_uuid, c.node);
            return (Outcome::Rejected(why), vec![]);
        };
        let mut effects = vec![Effect::NodeChanged(c.node.clone())];
        if !gpu.unhealthy_reason.is_empty() {
            return (Outcome::Done, effects);
        }
        gpu.unhealthy_reason = c.reason.clone();
        self.recount(&c.node);
        let victims: Vec<(u64, String)> = self
            .state
            .jobs
            .values()
            .filter(|j| j.state() == JobState::Running && !j.kill_requested)
            .filter(|j| !pods::is_kubernetes(j))
            .filter_map(|j| Some((j.id, self.failed_gpu(j)?)))
            .collect();
        for (id, reason) in victims {
            let job = self.state.jobs.get_mut(&id).expect("listed");
            job.kill_requested = true;
            job.kill_time_ms = now;
            effects.push(Effect::Kill {
                node: job.allocations[0].node.clone(),
                job_id: id,
                state: JobState::NodeFail,
                reason,
                signal: 0,
                batch_only: false,
                grace_secs: 0,
            });
            effects.push(changed(id));
        }
        (Outcome::Done, effects)
    }

    fn allocate(&mut self, alloc: pb::Allocate, now: u64) -> Applied {
        let mut effects = Vec::new();
        let mut refused = Vec::new();
        let mut rooms = array::Rooms::default();
        for placement in alloc.placements {
            let array = placement.array_task_id.map(|_| placement.job_id);
            let placement = match self.array_placement(placement, &mut rooms, now) {
                Ok(p) => p,
                Err((id, why)) => {
                    refused.push(format!("job {id}: {why}"));
                    continue;
                }
            };
            effects.extend(array.map(changed));
            if let Err(why) = self.check_placement(&placement) {
                refused.push(format!("job {}: {why}", placement.job_id));
                continue;
            }
            self.place(&placement, alloc.term, now);
            let job = &self.state.jobs[&placement.job_id];
            effects.push(Effect::Launch {
                node: placement.allocations[0].node.clone(),
                job: Box::new(job.clone()),
            });
            effects.push(changed(placement.job_id));
        }
        if refused.is_empty() {
            (Outcome::Done, effects)
        } else {
            (Outcome::Rejected(refused.join("; ")), effects)
        }
    }

    /// Everything a placement needs must hold before anything changes (all-or-nothing).
    fn check_placement(&self, p: &pb::Placement) -> Result<(), String> {
        let job = self.state.jobs.get(&p.job_id).ok_or("no such job")?;
        if job.state() != JobState::Pending || job.held {
            return Err("not pending".into());
        }
        if p.allocations.is_empty() {
            return Err("no nodes".into());
        }
        for a in &p.allocations {
            let node = self
                .state
                .nodes
                .get(&a.node)
                .ok_or_else(|| format!("unknown node {}", a.node))?;
            if node.state() != NodeState::Up {
                return Err(format!("node {} is down", a.node));
            }
            let inv = node.inventory.as_ref().ok_or("node without inventory")?;
            if node.cpus_alloc + a.cpus > inv.cpus {
                return Err(format!("node {} lacks CPUs", a.node));
            }
            let asked = job.spec.as_ref().map_or(0, |s| s.gpu_milli);
            if a.gpu_milli != asked || (asked > 0 && a.gpu_uuids.len() != 1) {
                return Err(format!(
                    "the job asks for {asked} GPU milli; the grant on {} has {} on {} GPU(s)",
                    a.node,
                    a.gpu_milli,
                    a.gpu_uuids.len()
                ));
            }
            for uuid in &a.gpu_uuids {
                match inv.gpus.iter().find(|g| &g.uuid == uuid) {
                    Some(g) if !g.unhealthy_reason.is_empty() => {
                        return Err(format!("GPU {uuid} is unhealthy: {}", g.unhealthy_reason))
                    }
                    Some(g) if g.mig_enabled => {
                        return Err(format!(
                            "GPU {uuid} is in MIG mode: only MIG slices are granted there"
                        ))
                    }
                    Some(g) if a.gpu_milli > 0 && g.replicas <= 1 => {
                        return Err(format!(
                            "GPU {uuid} is not time-sliced: a fraction needs a shared GPU"
                        ))
                    }
                    Some(g) if has_room(g, a.gpu_milli) => {}
                    Some(g) if g.replicas > 1 => {
                        return Err(format!(
                            "GPU {uuid} has no share with {} milli left ({} of {} shares, {} milli held)",
                            share_need(g, a.gpu_milli),
                            g.share_job_ids.len(),
                            g.replicas,
                            milli_held(g)
                        ))
                    }
                    Some(g) => return Err(format!("GPU {uuid} is held by job {}", g.job_id)),
                    None => return Err(format!("GPU {uuid} is not on node {}", a.node)),
                }
            }
            mig::check_allocation(inv, a)?;
        }
        Ok(())
    }

    fn place(&mut self, p: &pb::Placement, term: u64, now: u64) {
        for a in &p.allocations {
            let node = self.state.nodes.get_mut(&a.node).expect("checked");
            node.cpus_alloc += a.cpus;
            node.memory_alloc_mb += a.mem_mb;
            let inv = node.inventory.as_mut().expect("checked");
            for gpu in inv
                .gpus
                .iter_mut()
                .filter(|g| a.gpu_uuids.contains(&g.uuid))
            {
                assert!(
                    has_room(gpu, a.gpu_milli),
                    "GPU {} granted to job {} while held by {} (shares {:?} of {}, milli {:?})",
                    gpu.uuid,
                    p.job_id,
                    gpu.job_id,
                    gpu.share_job_ids,
                    gpu.replicas,
                    gpu.share_milli
                );
                if gpu.replicas > 1 {
                    let need = share_need(gpu, a.gpu_milli);
                    gpu.share_job_ids.push(p.job_id);
                    gpu.share_milli.push(need);
                } else {
                    gpu.job_id = p.job_id;
                }
            }
        }
        for a in &p.allocations {
            self.hold_slices(p.job_id, a);
            self.recount(&a.node);
        }
        let job = self.state.jobs.get_mut(&p.job_id).expect("checked");
        job.state = JobState::Running as i32;
        job.reason = "None".into();
        job.start_time_ms = now;
        job.term = term;
        job.allocations = p.allocations.clone();
        let spec = job.spec.clone().unwrap_or_default();
        let node = &p.allocations[0].node;
        let default = if job.array_job_id != 0 {
            "slurm-%A_%a.out"
        } else {
            "slurm-%j.out"
        };
        job.stdout_path = crate::output_path::resolve_job(job, node, &spec.stdout, default);
        let stderr = if spec.stderr.is_empty() {
            &spec.stdout
        } else {
            &spec.stderr
        };
        job.stderr_path = crate::output_path::resolve_job(job, node, stderr, default);
    }

    fn job_ended(&mut self, ended: pb::JobEnded, now: u64) -> Applied {
        let ack = Effect::Ack {
            node: ended.node.clone(),
            job_id: ended.job_id,
        };
        let Some(job) = self.state.jobs.get(&ended.job_id) else {
            return (Outcome::NoSuchJob(ended.job_id), vec![]);
        };
        let runs_there = job.state() == JobState::Running
            && job.allocations.first().map(|a| &a.node) == Some(&ended.node);
        if !runs_there {
            // A duplicate report, or a job the agent ran after berthd gave up on it: nothing
            // to record, but the agent may forget it.
            return (Outcome::Done, vec![ack]);
        }
        let requeue_asked = job.requeue_requested;
        let mut finished = ended.finished.unwrap_or_default();
        // A released allocation ends with its client's exit, not the holder's SIGTERM (a
        // time limit reached first stays a TIMEOUT).
        if let Some(r) = &job.released {
            if matches!(finished.state(), JobState::Completed | JobState::Failed) {
                finished.exit_code = r.exit_code;
                finished.signal = r.signal;
            }
        }
        if !is_final(finished.state()) {
            return (
                Outcome::Rejected(format!("{:?} is not an end state", finished.state())),
                vec![],
            );
        }
        let stopped_by_berth = matches!(finished.state(), JobState::Preempted | JobState::NodeFail);
        // The batch script's end ends the job: steps still running anywhere are stopped.
        let mut effects = self.stop_steps(ended.job_id, true);
        if requeue_asked || (stopped_by_berth && self.requeues(ended.job_id)) {
            self.requeue(ended.job_id, &finished, now);
        } else {
            self.finish(ended.job_id, &finished, now);
        }
        effects.extend([ack, changed(ended.job_id)]);
        (Outcome::Done, effects)
    }

    /// Whether a preempted job, or one stopped on a failed GPU, goes back to the queue:
    /// `--requeue`/`--no-requeue`, else its class's default.
    fn requeues(&self, id: u64) -> bool {
        let job = &self.state.jobs[&id];
        let spec = job.spec.as_ref();
        match spec.and_then(|s| s.requeue) {
            Some(r) => r,
            None => self
                .accounts
                .resolve_qos(&job.qos)
                .map(|q| q.requeue)
                .unwrap_or(false),
        }
    }

    /// A preempted (or GPU-failed) job ends its run (resources freed, usage charged) and waits again with
    /// the same id, one more restart, and a fresh eligible time.
    fn requeue(&mut self, id: u64, f: &pb::JobFinished, now: u64) {
        // Accounting keeps the ended run (one record per run) before the job is reset.
        let run = runs::run_of(&self.state.jobs[&id], f.state(), f, self.applied_index, now);
        self.release(id, f, now);
        self.queue_again(id, run, now);
    }

    /// Job `id`, whose run `run` ended and whose resources are free, waits again under its
    /// id: one more restart, a fresh eligible time.
    fn queue_again(&mut self, id: u64, run: pb::JobRun, now: u64) {
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        runs::push_run(job, run);
        job.requeue_requested = false;
        job.usage.clear();
        job.state = JobState::Pending as i32;
        job.reason = "None".into();
        job.restart_count += 1;
        job.eligible_time_ms = now;
        job.start_time_ms = 0;
        job.end_time_ms = 0;
        job.allocations.clear();
        job.kill_requested = false;
        job.preempting = false;
        job.kill_time_ms = 0;
        job.exit_code = 0;
        job.exit_signal = 0;
    }

    fn set_accounts(&mut self, toml: String) -> Applied {
        match crate::accounts::parse(&toml) {
            Ok(cfg) => {
                self.accounts = cfg;
                self.state.accounts_toml = toml;
                (Outcome::Done, vec![])
            }
            Err(e) => (Outcome::Rejected(e.to_string()), vec![]),
        }
    }

    fn set_topology(&mut self, conf: String) -> Applied {
        match policies::topology::NetworkConf::parse(&conf) {
            Ok(network) => {
                self.network = network;
                self.state.topology_conf = conf;
                self.topology = TopologyCache::default();
                (Outcome::Done, vec![])
            }
            Err(e) => (Outcome::Rejected(e.to_string()), vec![]),
        }
    }

    /// The topology.conf text in force (empty: none).
    pub fn topology_conf(&self) -> &str {
        &self.state.topology_conf
    }

    /// The topology model: the network tree and every node's GPU links.
    pub fn topology(&self) -> std::sync::Arc<policies::topology::Topology> {
        self.topology
            .0
            .get_or_init(|| {
                let links: Vec<_> = self
                    .state
                    .nodes
                    .values()
                    .filter_map(|n| n.inventory.as_ref())
                    .map(node_links)
                    .collect();
                std::sync::Arc::new(policies::topology::Topology::build(&self.network, &links))
            })
            .clone()
    }

    /// Marks victims and sends them the kill; a victim that is not running (ended
    /// meanwhile) or is already stopping is skipped.
    fn preempt(&mut self, c: pb::Preempt, now: u64) -> Applied {
        let mut effects = Vec::new();
        let mut refused = Vec::new();
        for p in c.preemptions {
            let ok = self.state.jobs.get(&p.victim).is_some_and(|j| {
                j.state() == JobState::Running && !j.kill_requested && !j.allocations.is_empty()
            });
            if !ok || p.victim == p.preemptor {
                refused.push(format!("job {}: not running or already stopping", p.victim));
                continue;
            }
            self.note_preemption(p.preemptor, p.victim);
            let job = self.state.jobs.get_mut(&p.victim).expect("checked");
            job.preempting = true;
            job.kill_requested = true;
            job.kill_time_ms = now;
            let spec = job.spec.clone().unwrap_or_default();
            effects.push(Effect::Kill {
                node: job.allocations[0].node.clone(),
                job_id: p.victim,
                state: JobState::Preempted,
                reason: format!("preempted for job {} ({})", p.preemptor, p.cause),
                signal: spec.signal,
                batch_only: spec.signal_batch_only,
                grace_secs: spec.signal_secs,
            });
            effects.push(changed(p.victim));
        }
        if refused.is_empty() {
            (Outcome::Done, effects)
        } else {
            (Outcome::Rejected(refused.join("; ")), effects)
        }
    }

    /// `victim` (and every job that has it as an ancestor) inherits `preemptor` and the
    /// preemptor's ancestors, so no job ever preempts one of its ancestors: preemption
    /// edges never close a cycle.
    fn note_preemption(&mut self, preemptor: u64, victim: u64) {
        let mut add: Vec<u64> = self
            .state
            .jobs
            .get(&preemptor)
            .map(|j| j.preempted_for.clone())
            .unwrap_or_default();
        add.push(preemptor);
        let below: Vec<u64> = self
            .state
            .jobs
            .values()
            .filter(|j| j.id == victim || j.preempted_for.contains(&victim))
            .filter(|j| !is_final(j.state()))
            .map(|j| j.id)
            .collect();
        for id in below {
            let chain = &mut self.state.jobs.get_mut(&id).expect("listed").preempted_for;
            for a in &add {
                if !chain.contains(a) && *a != id {
                    chain.push(*a);
                }
            }
            if chain.len() > PREEMPTED_FOR_MAX {
                let extra = chain.len() - PREEMPTED_FOR_MAX;
                chain.drain(..extra);
            }
        }
    }

    /// Records the end of a running job and frees everything it held.
    fn finish(&mut self, id: u64, f: &pb::JobFinished, now: u64) {
        self.release(id, f, now);
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        job.preempting = false;
        job.state = f.state;
        job.exit_code = f.exit_code;
        job.exit_signal = f.signal;
        job.reason = if f.reason.is_empty() {
            "None".into()
        } else {
            f.reason.clone()
        };
        job.end_time_ms = if f.end_time_ms > 0 {
            f.end_time_ms
        } else {
            now
        };
        job.kill_requested = false;
    }

    /// Frees what job `id` held and charges its account for the run: GPU-equivalent
    /// seconds by dominant share, decayed with the configured half-life. The run ends at
    /// the agent's reported end time when it has one (clamped into `[start, now]`), else
    /// at the command's time: never a clock read here.
    fn release(&mut self, id: u64, f: &pb::JobFinished, now: u64) {
        let cap = self.capacity();
        let half_life = self.accounts.policy.half_life_ms;
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        let start = job.start_time_ms.min(now);
        let end = if f.end_time_ms > 0 {
            f.end_time_ms.clamp(start, now)
        } else {
            now
        };
        let gpu_milli: u64 = job
            .allocations
            .iter()
            .map(|a| {
                let per = if a.gpu_milli > 0 {
                    a.gpu_milli
                } else {
                    GPU_MILLI
                };
                a.gpu_uuids.len() as u64 * u64::from(per)
            })
            .sum();
        // charge = measured | max(measured, F): GPUs count by their measured busy part.
        let has_mig = job.allocations.iter().any(|a| !a.mig_slices.is_empty());
        let factor = self.accounts.charge.gpu_factor(&job.usage, has_mig);
        let gpu_milli = (gpu_milli as f64 * factor).round() as u64;
        let cpus: u64 = job.allocations.iter().map(|a| u64::from(a.cpus)).sum();
        let mem: u64 = job.allocations.iter().map(|a| a.mem_mb).sum();
        let slices: Vec<policies::mig::MigGrant> = job
            .allocations
            .iter()
            .flat_map(|a| &a.mig_slices)
            .map(|s| policies::mig::MigGrant {
                size: s.placement_size,
                ..Default::default()
            })
            .collect();
        let rate = policies::mig::charge_rate(
            policies::fairshare::dominant_rate_milli(gpu_milli, cpus, mem, &cap),
            &slices,
            &cap,
        );
        let mut usage = policies::Usage {
            by_account: std::mem::take(&mut self.state.usage).into_iter().collect(),
            as_of_ms: self.state.usage_as_of_ms,
        };
        if !job.account.is_empty() && rate > 0.0 {
            usage.charge(&job.account, rate, start, end, half_life);
        }
        usage.advance(now, half_life);
        self.state.usage = usage.by_account.into_iter().collect();
        self.state.usage_as_of_ms = usage.as_of_ms;
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        for a in job.allocations.clone() {
            let Some(node) = self.state.nodes.get_mut(&a.node) else {
                continue;
            };
            node.cpus_alloc = node.cpus_alloc.saturating_sub(a.cpus);
            node.memory_alloc_mb = node.memory_alloc_mb.saturating_sub(a.mem_mb);
            for gpu in node.inventory.iter_mut().flat_map(|i| i.gpus.iter_mut()) {
                if gpu.job_id == id {
                    gpu.job_id = 0;
                }
                release_shares(gpu, id);
                mig::release(gpu, id);
            }
            self.recount(&a.node);
        }
    }

    /// Totals of the up nodes (the denominators of dominant shares), without building
    /// the placement view.
    fn capacity(&self) -> policies::Capacity {
        let mut c = policies::Capacity::default();
        for n in self
            .state
            .nodes
            .values()
            .filter(|n| n.state() == NodeState::Up)
        {
            let Some(inv) = n.inventory.as_ref() else {
                continue;
            };
            c.gpus += inv.gpus.len() as u64;
            c.cpus += u64::from(inv.cpus);
            c.memory_mb += inv.memory_mb;
            for g in &inv.gpus {
                *c.gpus_by_type.entry(g.gres_type.clone()).or_default() += 1;
            }
        }
        c
    }

    /// The cluster as placement sees it: nodes sorted by name, free resources now.
    pub fn cluster_view(&self) -> policies::ClusterSnapshot {
        let mut mig_tables = std::collections::BTreeMap::new();
        let nodes = self
            .state
            .nodes
            .values()
            .filter_map(|n| node_view_shared(n, &mut mig_tables))
            .collect();
        policies::ClusterSnapshot {
            nodes,
            topology: self.topology(),
            ..Default::default()
        }
    }

    /// One node of [`StateMachine::cluster_view`], without building the others (the
    /// extender judges one named node at a time).
    pub fn node_view(&self, name: &str) -> Option<policies::NodeView> {
        node_view(self.state.nodes.get(name)?)
    }

    /// [`StateMachine::cluster_view`] plus what the policies need beyond placement:
    /// running jobs (expected ends, preemption marks) and decayed usage.
    pub fn policy_view(&self) -> policies::ClusterSnapshot {
        let mut snap = self.cluster_view();
        snap.licenses_free = self.licenses_free();
        let grace_ms = self.accounts.policy.preempt_grace_ms;
        snap.running = self
            .state
            .jobs
            .values()
            .filter(|j| j.state() == JobState::Running)
            .map(|j| {
                let limit_s = j.spec.as_ref().map_or(0, |s| s.time_limit_secs);
                let end_ms = if j.preempting {
                    let secs = j.spec.as_ref().map_or(0, |s| u64::from(s.signal_secs));
                    j.kill_time_ms + grace_ms.max(secs * 1000)
                } else if limit_s == 0 {
                    u64::MAX
                } else {
                    j.start_time_ms + limit_s * 1000
                };
                policies::RunningJob {
                    id: j.id,
                    user: j.spec.as_ref().map(|s| s.user.clone()).unwrap_or_default(),
                    account: j.account.clone(),
                    qos: j.qos.clone(),
                    start_ms: j.start_time_ms,
                    end_ms,
                    preempting: j.preempting || j.kill_requested,
                    pinned: pods::is_kubernetes(j),
                    grants: j
                        .allocations
                        .iter()
                        .map(|a| policies::NodeGrant {
                            node: a.node.clone(),
                            gpu_uuids: a.gpu_uuids.clone(),
                            gpu_indices: a.gpu_indices.clone(),
                            cpus: a.cpus,
                            mem_mb: a.mem_mb,
                            gpu_milli: a.gpu_milli,
                            mig_slices: a
                                .mig_slices
                                .iter()
                                .map(|s| policies::mig::MigGrant {
                                    gpu_uuid: s.gpu_uuid.clone(),
                                    gpu_index: gpu_index(self, &a.node, &s.gpu_uuid),
                                    profile: s.profile.clone(),
                                    start: s.placement_start,
                                    size: s.placement_size,
                                })
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        snap.usage = policies::Usage {
            by_account: self
                .state
                .usage
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            as_of_ms: self.state.usage_as_of_ms,
        };
        snap
    }

    /// The accounts/QOS configuration in force.
    pub fn accounts(&self) -> &AccountsConfig {
        &self.accounts
    }

    /// The configuration text in force (empty: the built-in default).
    pub fn accounts_toml(&self) -> &str {
        &self.state.accounts_toml
    }
}

/// Whether `s` is an end state.
/// Whether `s` ends a job: every state but pending and running. An agent may report any of
/// them (NODE_FAIL for a job it killed on a failed GPU).
pub fn is_final(s: JobState) -> bool {
    !matches!(
        s,
        JobState::Pending | JobState::Running | JobState::Unspecified
    )
}

/// A `JobChanged` for job `id`; [`StateMachine::apply`] fills in the job as applied.
fn changed(id: u64) -> Effect {
    Effect::JobChanged(Box::new(pb::Job {
        id,
        ..Default::default()
    }))
}

/// Whether one more job may hold `gpu` with `gpu_milli` (a fraction; 0: whole or a plain
/// share): it is free, or it is shared (time-slicing/MPS) with a share left and room for
/// the share's milli (never over 1000 in all).
pub fn has_room(gpu: &pb::Gpu, gpu_milli: u32) -> bool {
    if !gpu.mig_held.is_empty() {
        return false; // carved: slices only
    }
    if gpu.replicas > 1 {
        gpu.share_job_ids.len() < gpu.replicas as usize
            && milli_held(gpu) + share_need(gpu, gpu_milli) <= GPU_MILLI
    } else {
        gpu.job_id == 0
    }
}

/// GPU milli in one whole GPU.
const GPU_MILLI: u32 = policies::packing::GPU_MILLI;

/// The milli a share of `gpu` takes: the fraction asked, or `1000 / replicas` for a
/// plain share.
fn share_need(gpu: &pb::Gpu, gpu_milli: u32) -> u32 {
    if gpu_milli > 0 {
        gpu_milli
    } else {
        GPU_MILLI / gpu.replicas.max(1)
    }
}

/// Milli held by the shares of `gpu`; a share without a recorded size (state written
/// before shares were sized) counts as a plain share.
fn milli_held(gpu: &pb::Gpu) -> u32 {
    let plain = share_need(gpu, 0);
    (0..gpu.share_job_ids.len())
        .map(|k| gpu.share_milli.get(k).copied().unwrap_or(plain))
        .sum()
}

/// Drops job `id`'s shares of `gpu` (and their sizes, kept parallel).
pub(crate) fn release_shares(gpu: &mut pb::Gpu, id: u64) {
    let plain = share_need(gpu, 0);
    let kept: Vec<(u64, u32)> = gpu
        .share_job_ids
        .iter()
        .enumerate()
        .filter(|&(_, &j)| j != id)
        .map(|(k, &j)| (j, gpu.share_milli.get(k).copied().unwrap_or(plain)))
        .collect();
    (gpu.share_job_ids, gpu.share_milli) = kept.into_iter().unzip();
}

/// What placement may take of a time-sliced GPU: `None` unless it is shared, healthy and
/// not in MIG mode.
fn offered_shares(g: &pb::Gpu) -> Option<policies::GpuShares> {
    let offered = g.replicas > 1 && g.unhealthy_reason.is_empty() && !g.mig_enabled;
    offered.then(|| policies::GpuShares {
        free: g.replicas.saturating_sub(g.share_job_ids.len() as u32),
        milli_free: GPU_MILLI.saturating_sub(milli_held(g)),
        replicas: g.replicas,
    })
}

/// NVML index of GPU `uuid` on `node` (0 when unknown: only a lookup hint for placement).
fn gpu_index(sm: &StateMachine, node: &str, uuid: &str) -> u32 {
    sm.node(node)
        .and_then(|n| n.inventory.as_ref())
        .and_then(|i| i.gpus.iter().find(|g| g.uuid == uuid))
        .map_or(0, |g| g.index)
}

fn held_by(node: &pb::Node, uuid: &str) -> Option<u64> {
    node.inventory
        .as_ref()?
        .gpus
        .iter()
        .find(|g| g.uuid == uuid)
        .map(|g| g.job_id)
}

/// A node as placement sees it (`None` before its inventory arrives): one node of
/// [`StateMachine::cluster_view`], also for a node record that is not in the state (the
/// extender's "what if these pods left").
pub fn node_view(n: &pb::Node) -> Option<policies::NodeView> {
    node_view_shared(n, &mut std::collections::BTreeMap::new())
}

/// [`node_view`] with MIG profile tables shared per card model through `mig_tables`.
fn node_view_shared(
    n: &pb::Node,
    mig_tables: &mut std::collections::BTreeMap<
        String,
        std::sync::Arc<Vec<policies::mig::MigProfile>>,
    >,
) -> Option<policies::NodeView> {
    let inv = n.inventory.as_ref()?;
    Some(policies::NodeView {
        name: inv.name.clone(),
        partition: inv.partition.clone(),
        // A drained node takes no new jobs.
        up: n.state() == NodeState::Up && !n.drain,
        features: n
            .described
            .as_ref()
            .map(|d| d.features.clone().into())
            .unwrap_or_default(),
        weight: n.described.as_ref().map_or(0, |d| d.weight),
        cpus_total: inv.cpus,
        cpus_free: inv.cpus.saturating_sub(n.cpus_alloc),
        memory_total_mb: inv.memory_mb,
        memory_free_mb: inv.memory_mb.saturating_sub(n.memory_alloc_mb),
        gpus: inv
            .gpus
            .iter()
            .map(|g| {
                let (mig_enabled, mig_profiles, mig_held) = mig::view_fields(g, mig_tables);
                policies::GpuView {
                    uuid: g.uuid.clone(),
                    index: g.index,
                    gres_type: g.gres_type.clone(),
                    // An unhealthy GPU is never offered: that is how placement stops
                    // using it without a policy change. A MIG-mode GPU is offered as
                    // slices only.
                    free: has_room(g, 0) && g.unhealthy_reason.is_empty() && !g.mig_enabled,
                    shares: offered_shares(g),
                    mig_enabled,
                    mig_profiles,
                    mig_held,
                }
            })
            .collect(),
    })
}

/// One node's share of a job, as placement needs it, with the options that select
/// nodes (features, node lists, exclusivity, per-node tasks and memory, licenses).
pub fn pending_view(id: u64, spec: &pb::JobSpec) -> policies::PendingJob {
    let nodes = spec.nodes.max(1);
    let tasks = policies::TaskSpread {
        nodes_max: spec.nodes_max,
        fewest_first: spec.use_min_nodes,
        ntasks: spec.ntasks.max(1),
        per_node: spec.ntasks_per_node,
        cpus_per_task: spec.cpus_per_task.max(1),
        cpus_per_gpu: spec.cpus_per_gpu,
        min_cpus: spec.min_cpus_node,
        mem_per_cpu_mb: spec.mem_per_cpu_mb,
        mem_per_gpu_mb: spec.mem_per_gpu_mb,
    };
    let cpus_per_node = tasks.cpus_per_node(nodes, spec.gpus_per_node);
    let mem_per_node_mb = tasks.mem_per_node_mb(cpus_per_node, spec.gpus_per_node, spec.mem_mb);
    policies::PendingJob {
        id,
        partition: spec.partition.clone(),
        nodes,
        gpus_per_node: spec.gpus_per_node,
        gpu_type: spec.gpu_type.clone(),
        cpus_per_node,
        mem_per_node_mb,
        time_limit_s: spec.time_limit_secs,
        mig_profile: spec.mig_profile.clone(),
        mig_per_node: spec.mig_per_node,
        switches_max: spec.switches,
        switches_wait_ms: spec.switches_wait_secs.saturating_mul(1000),
        gpu_milli: spec.gpu_milli,
        // Checked at submit; a text that no longer parses places as if unconstrained
        // would be wrong, so it places nowhere (an impossible feature).
        constraint: (!spec.constraint.is_empty()).then(|| {
            std::sync::Arc::new(
                policies::constraint::Constraint::parse(&spec.constraint).unwrap_or_else(|_| {
                    policies::constraint::Constraint::parse("(unparsable)")
                        .expect("a plain name parses")
                }),
            )
        }),
        req_nodes: spec.req_nodes.clone(),
        exc_nodes: spec.exc_nodes.clone(),
        exclusive: matches!(spec.oversubscribe.as_str(), "NO" | "USER" | "MCS"),
        mem_whole_node: spec.mem_whole_node,
        tasks,
        licenses: spec
            .licenses
            .iter()
            .map(|l| (l.name.clone(), l.count))
            .collect(),
        nice: spec.nice,
        ..Default::default()
    }
}

/// A node's GPUs and pair links for the topology model. Levels were checked at
/// registration ([`validate_inventory`]).
fn node_links(inv: &pb::NodeInventory) -> policies::topology::NodeLinks {
    let nvswitch = |i: u32| {
        inv.gpus
            .iter()
            .any(|g| g.index == i && g.nvswitch_links > 0)
    };
    policies::topology::NodeLinks {
        name: inv.name.clone(),
        gpus: inv.gpus.iter().map(|g| (g.index, g.numa_node)).collect(),
        pairs: inv
            .topology
            .iter()
            .filter_map(|l| {
                let sw = nvswitch(l.gpu_a) && nvswitch(l.gpu_b);
                let link = policies::topology::GpuLink::parse(&l.level, sw).ok()?;
                Some((l.gpu_a, l.gpu_b, link))
            })
            .collect(),
    }
}

/// Limits on what one submit may carry; larger requests are refused whole.
const SCRIPT_BYTES_MAX: usize = 4 << 20;

fn validate_spec(spec: &pb::JobSpec) -> Result<(), String> {
    // A script that is not UTF-8 travels as bytes (`script` is then a copy for display).
    let script: &[u8] = if spec.script_bytes.is_empty() {
        spec.script.as_bytes()
    } else {
        &spec.script_bytes
    };
    if spec.allocation {
        // salloc and srun hold an allocation with no script: the agent runs its holder.
        if !script.is_empty() || !spec.args.is_empty() {
            return Err("an allocation (salloc, srun) carries no batch script".into());
        }
        if spec.array.is_some() {
            return Err("an allocation (salloc, srun) cannot be a job array".into());
        }
    } else if !script.starts_with(b"#!") {
        return Err(
            "batch script must start with #! followed by the path to an interpreter".into(),
        );
    }
    if script.len() > SCRIPT_BYTES_MAX {
        return Err(format!(
            "batch script is {} bytes, the limit is {SCRIPT_BYTES_MAX}",
            script.len()
        ));
    }
    if spec.name.is_empty() || spec.partition.is_empty() || spec.work_dir.is_empty() {
        return Err("job name, partition and work dir must be set".into());
    }
    if spec.nodes == 0 || spec.ntasks == 0 || spec.cpus_per_task == 0 {
        return Err("nodes, ntasks and cpus-per-task must be at least 1".into());
    }
    validate_fraction(spec)?;
    mig::validate_spec(spec)
}

/// A fraction is of one GPU on one node, strictly between 0 and 1000 milli, and not mixed
/// with MIG slices.
fn validate_fraction(spec: &pb::JobSpec) -> Result<(), String> {
    let m = spec.gpu_milli;
    if m == 0 {
        return Ok(());
    }
    if m >= GPU_MILLI {
        return Err(format!(
            "a GPU fraction is below 1000 milli (one GPU), not {m}: ask for whole GPUs instead"
        ));
    }
    if spec.gpus_per_node != 1 || spec.nodes != 1 {
        return Err(format!(
            "a GPU fraction ({m} milli) is of one GPU on one node, not {} GPU(s) on {} node(s)",
            spec.gpus_per_node, spec.nodes
        ));
    }
    if !spec.mig_profile.is_empty() {
        return Err("a GPU fraction cannot be combined with MIG slices".into());
    }
    Ok(())
}

/// Most time-slicing/MPS shares of one GPU (MPS itself allows 48 clients per GPU).
pub const GPU_REPLICAS_MAX: u32 = 48;

/// Checks an agent's inventory; a bad one is refused before it can touch state.
///
/// # Errors
/// A message naming the first problem found.
pub fn validate_inventory(inv: &pb::NodeInventory) -> Result<(), String> {
    let name_ok = !inv.name.is_empty()
        && inv.name.len() <= 64
        && inv
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !name_ok {
        return Err(format!("invalid node name {:?}", inv.name));
    }
    if inv.partition.is_empty() {
        return Err("node has no partition".into());
    }
    if inv.cpus == 0 {
        return Err("node reports 0 CPUs".into());
    }
    for l in &inv.topology {
        // "X" is a GPU with itself: meaningless for a pair but harmless, so not refused.
        if l.level == "X" {
            continue;
        }
        if let Err(e) = policies::topology::GpuLink::parse(&l.level, false) {
            return Err(format!("GPU pair {}-{}: {e}", l.gpu_a, l.gpu_b));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for g in &inv.gpus {
        if g.uuid.is_empty() || !seen.insert(&g.uuid) {
            return Err(format!("GPU uuid {:?} is empty or repeated", g.uuid));
        }
        if g.job_id != 0
            || !g.share_job_ids.is_empty()
            || !g.share_milli.is_empty()
            || !g.mig_held.is_empty()
        {
            return Err("agents may not assign GPUs to jobs".into());
        }
        if g.replicas > GPU_REPLICAS_MAX {
            return Err(format!(
                "GPU {} offers {} replicas, at most {GPU_REPLICAS_MAX}",
                g.uuid, g.replicas
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "state_machine_tests.rs"]
mod tests;

pub mod allocation;
pub mod array;
pub mod cluster;
pub mod dependency;
pub mod eligible;
pub mod gpu_counts;
pub mod mig;
pub mod pods;
pub mod requeue;
pub mod runs;
pub mod steps;
pub mod task_set;
