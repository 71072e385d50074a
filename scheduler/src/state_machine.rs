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
//! # Layout
//! [`StateMachine::apply`] (here) hands each command to the family that owns it:
//! `submit` (checks and queueing), `job_control` (cancel, hold, the one kill path),
//! `placement` (allocations granted), `job_end` (ends, requeue), `preempt`, `nodes`
//! (registration, failures, GPU health), `usage` (measured use), `config` (accounts and
//! topology), and the public families [`array`], [`steps`], [`allocation`], [`requeue`],
//! [`pods`], [`cluster`]. `views` builds what the scheduling pass and the extender read.
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
}

/// Whether `s` ends a job: every state but pending and running. An agent may report any of
/// them (NODE_FAIL for a job it killed on a failed GPU).
pub fn is_final(s: JobState) -> bool {
    !matches!(
        s,
        JobState::Pending | JobState::Running | JobState::Unspecified
    )
}

/// GPU milli in one whole GPU.
const GPU_MILLI: u32 = policies::packing::GPU_MILLI;

/// A `JobChanged` for job `id`; [`StateMachine::apply`] fills in the job as applied.
fn changed(id: u64) -> Effect {
    Effect::JobChanged(Box::new(pb::Job {
        id,
        ..Default::default()
    }))
}

#[cfg(test)]
#[path = "state_machine_tests.rs"]
mod tests;

mod config;
mod job_control;
mod job_end;
mod nodes;
mod placement;
mod preempt;
mod submit;
mod usage;
mod views;

pub use nodes::{validate_inventory, GPU_REPLICAS_MAX};
pub(crate) use views::release_shares;
pub use views::{has_room, node_view, pending_view};
// Shared by the apply families below (they `use super::*`).
use nodes::node_links;
use views::{held_by, milli_held, share_need};

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
