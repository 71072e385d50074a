//! gRPC services of berthd: `JobService` and `NodeService` for users and the CLI,
//! `AgentService` for node agents.
//!
//! Handlers never change state themselves: writes become commands proposed through Raft and
//! answered once applied; reads look at the applied state. Every request is checked before
//! it is proposed, and anything malformed is refused with `INVALID_ARGUMENT` and changes
//! nothing. An agent stream must open with `Register`; after that it carries heartbeats and
//! job events, and any protocol violation closes it.
//!
//! # Layout
//! This file holds what every service shares: [`Shared`] (the handles a handler needs),
//! [`Api`]'s caller checks and views (PrivateData), forwarding to the leader, and the
//! mapping of proposal outcomes to statuses. One file per service beside it:
//! `job_service.rs`, `agent_service.rs` (with `NodeService`), `admin_service.rs`,
//! `raft_service.rs`.

use crate::agents::{reconcile, step_reconcile, AgentRegistry, AgentSender};
use crate::command::{command, now_ms};
use crate::raft_loop::{ProposeError, RaftHandle};
use crate::scheduling::PendingReasons;
use crate::security::Caller;
use crate::state_machine::{validate_inventory, Effect, Outcome};
use berth_proto::v1::{
    self as pb, agent_message, command::Cmd, job_event, server_message::Msg, JobState,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

/// Tries of a bind whose GPUs the scheduling loop took between choice and commit.
const BIND_ATTEMPTS: u32 = 3;

/// Metadata key of the leader's URL on an `UNAVAILABLE` answer to an agent that attached
/// to a follower.
pub const LEADER_HEADER: &str = "berth-leader";

/// Largest gRPC message accepted (a job spec carries its script; Slurm's default limit on a
/// batch script is 4 MiB, plus room for the environment).
pub const MESSAGE_BYTES_MAX: usize = 8 << 20;

/// What the services share.
pub struct Shared {
    /// The Raft replica.
    pub raft: RaftHandle,
    /// Attached agents.
    pub agents: Arc<AgentRegistry>,
    /// Pending reasons from the scheduling loop.
    pub reasons: Arc<PendingReasons>,
    /// Partition for jobs that name none.
    pub default_partition: String,
    /// An agent stream silent this long (no heartbeat, no event) is closed as dead.
    pub agent_silence_max: Duration,
    /// The connection to the leader that forwarded requests share.
    pub leader_channel: LeaderChannel,
    /// Binds pick GPUs from the applied state and then propose: one at a time, so two
    /// concurrent binds never pick the same GPUs (the log would refuse the second).
    pub bind_lock: tokio::sync::Mutex<()>,
    /// Keys, certificates and roles; `None`: an insecure replica (nobody is proven).
    pub security: Option<Arc<crate::security::SecurityConfig>>,
    /// This replica's audit log.
    pub audit: Arc<crate::audit::AuditLog>,
    /// Job history and its metrics.
    pub accounting: Arc<crate::accounting::Accounting>,
}

/// `msg` as a request to the leader, carrying the caller this replica proved.
pub(crate) fn forward<T>(caller: &Caller, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if !caller.is_unproven() {
        if let Some(v) = crate::security::layer::encode_forwarded(&caller.identity) {
            if let Ok(value) = v.to_str().unwrap_or_default().parse() {
                req.metadata_mut()
                    .insert(berth_auth::FORWARDED_IDENTITY, value);
            }
        }
    }
    req
}

/// One lazily connected channel to the current leader, shared by every forwarded request:
/// a new connection per request costs a TCP and an HTTP/2 handshake (about 40 ms on
/// loopback, measured with `submit_load --via-follower`). Replaced when the leader moves.
#[derive(Default)]
pub struct LeaderChannel(std::sync::Mutex<Option<(String, tonic::transport::Channel)>>);

impl LeaderChannel {
    /// The channel to `url`, made on first use.
    ///
    /// # Errors
    /// `UNAVAILABLE` when `url` is not a valid endpoint.
    fn get(
        &self,
        url: &str,
        sec: Option<&crate::security::SecurityConfig>,
    ) -> Result<tonic::transport::Channel, Status> {
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, channel)) = &*cached {
            if known == url {
                return Ok(channel.clone());
            }
        }
        let profile = sec.map(|s| s.peer_profile.clone()).unwrap_or_default();
        let channel = berth_auth::channel::endpoint(url, &profile)
            .map_err(|e| Status::unavailable(format!("leader address {e}")))?
            .connect_lazy();
        *cached = Some((url.to_string(), channel.clone()));
        Ok(channel)
    }
}

/// Implements `JobService`, `NodeService` and `AgentService` over [`Shared`].
#[derive(Clone)]
pub struct Api(pub Arc<Shared>);

fn propose_status(e: ProposeError) -> Status {
    match e {
        // Load beyond capacity: a distinct code, so clients back off and retry.
        ProposeError::Busy => Status::resource_exhausted(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

impl Api {
    pub(crate) async fn propose(&self, cmd: Cmd) -> Result<Outcome, Status> {
        self.0
            .raft
            .propose(command(cmd))
            .await
            .map_err(propose_status)
    }

    /// [`Api::view`] for `caller`: without the script and environment unless the caller
    /// may act on the job. `accounts` come from the state guard the caller already holds:
    /// taking the state's read lock again here would deadlock against the Raft thread
    /// waiting to write (std's RwLock queues new readers behind a waiting writer).
    fn view_for(
        &self,
        caller: &Caller,
        job: &pb::Job,
        accounts: &crate::accounts::AccountsConfig,
    ) -> pb::Job {
        let mut v = self.view(job);
        if !caller.may_act_on(job, accounts) {
            crate::security::redact(&mut v);
        }
        v
    }

    /// Whether `caller` may not see `job` at all (`private_data = ["jobs"]`, Slurm's
    /// `PrivateData=jobs`): then listings leave it out and a lookup does not find it.
    fn hidden(
        &self,
        caller: &Caller,
        job: &pb::Job,
        accounts: &crate::accounts::AccountsConfig,
    ) -> bool {
        let private = self.0.security.as_ref().is_some_and(|s| s.private.jobs);
        if !private {
            return false; // the common case: no owner to look up per listed job
        }
        let owner = job
            .spec
            .as_ref()
            .map(crate::security::owner)
            .unwrap_or_default();
        !crate::security::PrivateData::shows(private, caller, &owner, &job.account, accounts)
    }

    /// [`Api::view_for`], or `None` when the job is [`Api::hidden`] from `caller`.
    fn visible_view(
        &self,
        caller: &Caller,
        job: &pb::Job,
        accounts: &crate::accounts::AccountsConfig,
    ) -> Option<pb::Job> {
        (!self.hidden(caller, job, accounts)).then(|| self.view_for(caller, job, accounts))
    }

    /// Refuses unless `caller` may act on job `id` (an unknown job passes: the command
    /// answers "Invalid job id").
    fn authorize_job(&self, caller: &Caller, id: u64, verb: &str) -> Result<(), Status> {
        let sm = self.0.raft.state();
        match sm.job(id) {
            Some(job) => caller.require_job(job, sm.accounts(), verb),
            None => Ok(()),
        }
    }

    /// A job as users see it: with the scheduler's current pending reason.
    fn view(&self, job: &pb::Job) -> pb::Job {
        let mut job = job.clone();
        if job.state() == JobState::Pending && !job.held {
            if let Some((r, start)) = self.0.reasons.get(job.id) {
                job.reason = r;
                job.expected_start_ms = start.unwrap_or(0);
            }
        }
        job
    }
}

impl Api {
    /// A client of the leader's JobService when this replica is a follower that knows the
    /// leader: writes are forwarded there, so clients need not know who leads.
    ///
    /// # Errors
    /// `UNAVAILABLE` when no leader is known yet or it cannot be reached.
    async fn leader(
        &self,
    ) -> Result<Option<pb::job_service_client::JobServiceClient<tonic::transport::Channel>>, Status>
    {
        let Some(url) = self.leader_url()? else {
            return Ok(None);
        };
        let client = pb::job_service_client::JobServiceClient::new(
            self.0
                .leader_channel
                .get(&url, self.0.security.as_deref())?,
        );
        Ok(Some(client.max_encoding_message_size(MESSAGE_BYTES_MAX)))
    }

    /// The leader's URL when this replica is a follower of a group; `None` when it leads
    /// (or is a single voter).
    ///
    /// # Errors
    /// `UNAVAILABLE` when no leader is known yet.
    fn leader_url(&self) -> Result<Option<String>, Status> {
        let peers = self.0.raft.peers();
        if self.0.raft.is_leader() || peers.is_empty() {
            return Ok(None);
        }
        let leader = self.0.raft.leader_id();
        let url = peers
            .get(&leader)
            .ok_or_else(|| Status::unavailable("no berthd leader elected yet; retry"))?;
        Ok(Some(url.clone()))
    }
}

fn outcome_status(outcome: Outcome) -> Result<(), Status> {
    match outcome {
        Outcome::Done | Outcome::Submitted(_) | Outcome::StepCreated(_) => Ok(()),
        Outcome::NoSuchJob(_) => Err(Status::not_found("Invalid job id specified")),
        Outcome::Rejected(why) => Err(Status::failed_precondition(why)),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Api {
    /// An AdminService client of the leader when this replica follows one.
    ///
    /// # Errors
    /// `UNAVAILABLE` when no leader is known or it cannot be reached.
    pub(crate) async fn admin_leader(
        &self,
    ) -> Result<
        Option<pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>>,
        Status,
    > {
        let Some(url) = self.leader_url()? else {
            return Ok(None);
        };
        let channel = self
            .0
            .leader_channel
            .get(&url, self.0.security.as_deref())?;
        Ok(Some(pb::admin_service_client::AdminServiceClient::new(
            channel,
        )))
    }
}

mod admin_service;
mod agent_service;
mod job_service;
mod raft_service;
