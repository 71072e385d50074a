//! gRPC services of berthd: `JobService` and `NodeService` for users and the CLI,
//! `AgentService` for node agents.
//!
//! Handlers never change state themselves: writes become commands proposed through Raft and
//! answered once applied; reads look at the applied state. Every request is checked before
//! it is proposed, and anything malformed is refused with `INVALID_ARGUMENT` and changes
//! nothing. An agent stream must open with `Register`; after that it carries heartbeats and
//! job events, and any protocol violation closes it.

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

#[tonic::async_trait]
impl pb::job_service_server::JobService for Api {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.submit(forward(&caller, req.into_inner())).await;
        }
        let note = req
            .extensions()
            .get::<crate::security::layer::AuditNote>()
            .cloned();
        let mut spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("submit without a job spec"))?;
        if spec.partition.is_empty() {
            // The description's default partition, else berthd's.
            let described = self.0.raft.state().default_partition().map(str::to_string);
            spec.partition = described.unwrap_or_else(|| self.0.default_partition.clone());
        }
        crate::security::check_env(&spec)?;
        if let Some(sec) = &self.0.security {
            let sm = self.0.raft.state();
            let enforced = !sm.accounts_toml().is_empty();
            crate::security::stamp_submit(sec, &caller, sm.accounts(), enforced, &mut spec)?;
        }
        match self
            .propose(Cmd::Submit(pb::SubmitJob { spec: Some(spec) }))
            .await?
        {
            Outcome::Submitted(job_id) => {
                if let Some(n) = note {
                    *n.0.lock().unwrap_or_else(|e| e.into_inner()) = format!("job {job_id}");
                }
                Ok(Response::new(pb::SubmitResponse { job_id }))
            }
            Outcome::Rejected(why) => Err(Status::invalid_argument(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn bind_pod(
        &self,
        req: Request<pb::BindPodRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.bind_pod(forward(&caller, req.into_inner())).await;
        }
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("bind without a job spec"))?;
        crate::state_machine::pods::validate_pod_spec(&spec).map_err(Status::invalid_argument)?;
        let uid = spec.pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
        let _one_at_a_time = self.0.bind_lock.lock().await;
        // The leader picks the GPUs from its own applied state; the command re-checks them
        // when it applies, so a race with the scheduling loop cannot double-grant. When the
        // loop's allocation took them first, pick again from the newer state.
        for attempt in 1..=BIND_ATTEMPTS {
            let (allocation, reservation) = {
                let sm = self.0.raft.state();
                if let Some(job) = sm.pod_job(&uid) {
                    return Ok(Response::new(self.view(job)));
                }
                crate::extender::plan_bind(&sm, &r.node, &spec)
                    .map_err(Status::failed_precondition)?
            };
            let bind = pb::BindPod {
                term: self.0.raft.term(),
                spec: Some(spec.clone()),
                allocation: Some(allocation),
                reservation,
            };
            match self.propose(Cmd::BindPod(bind)).await? {
                Outcome::Submitted(id) => {
                    let sm = self.0.raft.state();
                    let job = sm
                        .job(id)
                        .ok_or_else(|| Status::internal(format!("bound job {id} not in state")))?;
                    return Ok(Response::new(self.view(job)));
                }
                Outcome::Rejected(why) if attempt == BIND_ATTEMPTS => {
                    return Err(Status::failed_precondition(why))
                }
                Outcome::Rejected(why) => tracing::debug!(attempt, "bind refused, retrying: {why}"),
                other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.cancel(forward(&caller, req.into_inner())).await;
        }
        let what = match &req.get_ref().release {
            Some(r) => format!("job {} release exit={}", req.get_ref().job_id, r.exit_code),
            None => format!("job {}", req.get_ref().job_id),
        };
        crate::security::note(&req, what);
        self.authorize_job(&caller, req.get_ref().job_id, "cancel")?;
        let pb::CancelRequest {
            job_id,
            reason,
            array_tasks,
            release,
        } = req.into_inner();
        outcome_status(
            self.propose(Cmd::Cancel(pb::CancelJob {
                job_id,
                reason,
                end_state: 0,
                array_tasks,
                release,
            }))
            .await?,
        )?;
        Ok(Response::new(pb::CancelResponse {}))
    }

    async fn hold(
        &self,
        req: Request<pb::HoldRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.hold(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(
            &req,
            format!("job {} hold={}", req.get_ref().job_id, req.get_ref().hold),
        );
        let verb = if req.get_ref().hold {
            "hold"
        } else {
            "release"
        };
        self.authorize_job(&caller, req.get_ref().job_id, verb)?;
        let r = req.into_inner();
        outcome_status(
            self.propose(Cmd::Hold(pb::HoldJob {
                job_id: r.job_id,
                hold: r.hold,
                array_tasks: r.array_tasks,
            }))
            .await?,
        )?;
        Ok(Response::new(pb::HoldResponse {}))
    }

    async fn requeue(
        &self,
        req: Request<pb::RequeueRequest>,
    ) -> Result<Response<pb::RequeueResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.requeue(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(&req, format!("job {}", req.get_ref().job_id));
        self.authorize_job(&caller, req.get_ref().job_id, "requeue")?;
        let job_id = req.into_inner().job_id;
        outcome_status(
            self.propose(Cmd::Requeue(pb::RequeueJob { job_id }))
                .await?,
        )?;
        Ok(Response::new(pb::RequeueResponse {}))
    }

    async fn update_array(
        &self,
        req: Request<pb::UpdateArrayRequest>,
    ) -> Result<Response<pb::UpdateArrayResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader
                .update_array(forward(&caller, req.into_inner()))
                .await;
        }
        crate::security::note(&req, format!("job {}", req.get_ref().job_id));
        self.authorize_job(&caller, req.get_ref().job_id, "update")?;
        let r = req.into_inner();
        let cmd = Cmd::ArrayUpdate(pb::ArrayUpdate {
            job_id: r.job_id,
            array_tasks: r.array_tasks,
            max_running: r.max_running,
            time_limit_secs: r.time_limit_secs,
        });
        outcome_status(self.propose(cmd).await?)?;
        Ok(Response::new(pb::UpdateArrayResponse {}))
    }

    async fn create_step(
        &self,
        req: Request<pb::CreateStepRequest>,
    ) -> Result<Response<pb::Step>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.create_step(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(&req, format!("job {}", req.get_ref().job_id));
        // A step runs as the job's (sealed) identity: only who may act on the job starts one.
        self.authorize_job(&caller, req.get_ref().job_id, "srun")?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("step without a spec"))?;
        validate_step_spec(&spec).map_err(Status::invalid_argument)?;
        let cmd = Cmd::StepCreate(pb::StepCreate {
            job_id: r.job_id,
            spec: Some(spec),
        });
        match self.propose(cmd).await? {
            Outcome::StepCreated(step_id) => {
                let sm = self.0.raft.state();
                // Read under the same state the command left: a step whose tasks all ended
                // at once is already gone, so answer from the launch's copy then.
                let step = sm
                    .job(r.job_id)
                    .and_then(|j| j.steps.iter().find(|s| s.step_id == step_id))
                    .cloned()
                    .ok_or_else(|| {
                        Status::aborted(format!("step {}.{step_id} ended at once", r.job_id))
                    })?;
                Ok(Response::new(step))
            }
            Outcome::NoSuchJob(_) => Err(Status::not_found("Invalid job id specified")),
            Outcome::Rejected(why) => Err(Status::failed_precondition(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn cancel_step(
        &self,
        req: Request<pb::CancelStepRequest>,
    ) -> Result<Response<pb::CancelStepResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.cancel_step(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(
            &req,
            format!("step {}.{}", req.get_ref().job_id, req.get_ref().step_id),
        );
        self.authorize_job(&caller, req.get_ref().job_id, "cancel")?;
        let r = req.into_inner();
        let cmd = Cmd::StepCancel(pb::StepCancel {
            job_id: r.job_id,
            step_id: r.step_id,
            reason: r.reason,
        });
        outcome_status(self.propose(cmd).await?)?;
        Ok(Response::new(pb::CancelStepResponse {}))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&req);
        let id = req.into_inner().job_id;
        // `scontrol show job` right after a submit must see it, on any replica.
        self.0.raft.read_index().await.map_err(propose_status)?;
        let sm = self.0.raft.state();
        sm.job(id)
            .and_then(|job| self.visible_view(&caller, job, sm.accounts()))
            .map(Response::new)
            .ok_or_else(|| Status::not_found("Invalid job id specified"))
    }

    async fn list(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let sm = self.0.raft.state();
        let jobs = sm
            .jobs()
            .filter(|j| crate::job_list::matches(&r, j))
            .filter_map(|j| self.visible_view(&caller, j, sm.accounts()))
            .map(|mut shown| {
                if r.brief {
                    crate::job_list::make_brief(&mut shown);
                }
                shown
            })
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    type ListPagesStream = BoxStream<pb::ListJobsResponse>;

    async fn list_pages(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<Self::ListPagesStream>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        // Two pages in flight at most: a slow reader holds that much, never the queue.
        let (tx, rx) = mpsc::channel(2);
        let api = self.clone();
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let (jobs, next) = {
                    let sm = api.0.raft.state();
                    crate::job_list::page(&sm, &r, after, |j| {
                        api.visible_view(&caller, j, sm.accounts())
                    })
                };
                let last = next.is_none();
                if (!jobs.is_empty() || last)
                    && tx.send(Ok(pb::ListJobsResponse { jobs })).await.is_err()
                {
                    return;
                }
                match next {
                    Some(n) => after = n,
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchStream = BoxStream<pb::Job>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req);
        let ids = req.into_inner().job_ids;
        let wanted = move |id: u64| ids.is_empty() || ids.contains(&id);
        // Subscribe before reading the current state, so no change falls between the two.
        let mut effects = self.0.raft.subscribe();
        let current: Vec<pb::Job> = {
            let sm = self.0.raft.state();
            sm.jobs()
                .filter(|j| wanted(j.id))
                .filter_map(|j| self.visible_view(&caller, j, sm.accounts()))
                .collect()
        };
        let (tx, rx) = mpsc::channel(256);
        let api = self.clone();
        tokio::spawn(async move {
            for job in current {
                if tx.send(Ok(job)).await.is_err() {
                    return;
                }
            }
            while let Ok(applied) = effects.recv().await {
                for e in &applied.effects {
                    let Effect::JobChanged(job) = e else { continue };
                    if !wanted(job.id) {
                        continue;
                    }
                    // The guard is dropped before the send waits.
                    let view = {
                        let sm = api.0.raft.state();
                        api.visible_view(&caller, job, sm.accounts())
                    };
                    let Some(view) = view else { continue };
                    if tx.send(Ok(view)).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx
                .send(Err(Status::data_loss("watch fell behind; watch again")))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for Api {
    async fn list(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let sm = self.0.raft.state();
        let nodes = sm.nodes().cloned().collect();
        let default_partition = sm
            .default_partition()
            .map_or_else(|| self.0.default_partition.clone(), str::to_string);
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            default_partition,
        }))
    }
}

/// How long a new agent stream may stay silent before its `Register`.
const REGISTER_WAIT: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Api {
    type AttachStream = BoxStream<pb::ServerMessage>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let caller = Caller::of(&req);
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(REGISTER_WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register within 10s"))??;
        let Some(pb::AgentMessage {
            msg: Some(agent_message::Msg::Register(reg)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message on an agent stream must be Register",
            ));
        };
        let inv = reg
            .inventory
            .clone()
            .ok_or_else(|| Status::invalid_argument("Register without inventory"))?;
        validate_inventory(&inv).map_err(Status::invalid_argument)?;
        if let crate::security::Peer::Node(cert_node) = &caller.peer {
            if *cert_node != inv.name {
                tracing::warn!(
                    cert = cert_node,
                    claimed = inv.name,
                    "agent claimed another node"
                );
                return Err(Status::permission_denied(format!(
                    "Access/permission denied: this agent's certificate is for node {cert_node:?}, \
                     it may not register as {:?}",
                    inv.name
                )));
            }
        }
        for ev in &reg.jobs {
            validate_event(ev).map_err(Status::invalid_argument)?;
        }
        let steps = (reg.steps_running.clone(), reg.steps_ended.clone());
        if !self.0.raft.is_leader() {
            // Redirect: the agent reconnects to the address in `berth-leader`.
            let mut status = Status::unavailable("this berthd replica is not the leader");
            if let Some(url) = self.leader_url().ok().flatten() {
                if let Ok(value) = url.parse() {
                    status.metadata_mut().insert(LEADER_HEADER, value);
                }
            }
            return Err(status);
        }
        match self
            .propose(Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inv.clone()),
            }))
            .await?
        {
            Outcome::Done => {}
            other => {
                return Err(Status::invalid_argument(format!(
                    "registration refused: {other:?}"
                )))
            }
        }
        let node = inv.name;
        let (tx, rx) = mpsc::channel(1024);
        let conn = self.0.agents.attach(&node, tx.clone());
        tracing::info!(
            node,
            gpus = inv.gpus.len(),
            jobs = reg.jobs.len(),
            "agent attached"
        );
        let api = self.clone();
        tokio::spawn(async move {
            api.after_register(&node, &tx, reg.jobs).await;
            api.after_register_steps(&node, &tx, steps).await;
            api.serve_agent(&node, &tx, inbound).await;
            api.0.agents.detach(&node, conn);
            tracing::info!(node, "agent detached");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Bounds on what one step may carry into the log.
const STEP_TASKS_MAX: u32 = 65_536;

/// A step request berthd could never take: checked before it reaches the log.
fn validate_step_spec(s: &pb::StepSpec) -> Result<(), String> {
    if s.argv.is_empty() || s.argv[0].is_empty() {
        return Err("step without a program to run".into());
    }
    if s.ntasks > STEP_TASKS_MAX || s.ntasks_per_node > STEP_TASKS_MAX {
        return Err(format!("at most {STEP_TASKS_MAX} tasks per step"));
    }
    if s.io_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("step I/O address {:?} is not host:port", s.io_addr));
    }
    Ok(())
}

fn validate_event(ev: &pb::JobEvent) -> Result<(), String> {
    if ev.job_id == 0 {
        return Err("job event for job 0".into());
    }
    match &ev.event {
        Some(job_event::Event::Started(_)) => Ok(()),
        Some(job_event::Event::Finished(f)) if crate::state_machine::is_final(f.state()) => Ok(()),
        Some(job_event::Event::Finished(f)) => Err(format!(
            "job {} finished in non-final state {:?}",
            ev.job_id,
            f.state()
        )),
        None => Err(format!("job event for job {} without an event", ev.job_id)),
    }
}

/// A usage report the state machine could never take: checked before it reaches the log.
fn validate_usage(r: &pb::JobUsageReport) -> Result<(), String> {
    for u in &r.jobs {
        if u.job_id == 0 {
            return Err("job usage for job 0".into());
        }
        let values = [u.gpu_seconds, u.gpu_busy_seconds, u.gpu_util_percent];
        if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!(
                "job usage of job {}: values must be finite and ≥ 0, got {values:?}",
                u.job_id
            ));
        }
    }
    Ok(())
}

impl Api {
    async fn after_register(&self, node: &str, tx: &AgentSender, jobs: Vec<pb::JobEvent>) {
        let term = self.0.raft.term();
        let _ = tx
            .send(Ok(pb::ServerMessage {
                term,
                msg: Some(Msg::Registered(pb::Registered { node: node.into() })),
            }))
            .await;
        let msgs = reconcile(&self.0.raft.state(), node, &jobs);
        for msg in msgs {
            let _ = tx
                .send(Ok(pb::ServerMessage {
                    term,
                    msg: Some(msg),
                }))
                .await;
        }
        for ev in jobs {
            if let Some(job_event::Event::Finished(f)) = ev.event {
                self.job_finished(node, ev.job_id, f, tx).await;
            }
        }
    }

    /// Records the step ends the agent reported (and fails the steps it lost), and stops
    /// steps it runs that berthd no longer does.
    async fn after_register_steps(
        &self,
        node: &str,
        tx: &AgentSender,
        (running, ended): (Vec<pb::StepRef>, Vec<pb::StepEnd>),
    ) {
        let (ends, kills) = step_reconcile(&self.0.raft.state(), node, &running, &ended);
        let term = self.0.raft.term();
        for msg in kills {
            let _ = tx
                .send(Ok(pb::ServerMessage {
                    term,
                    msg: Some(msg),
                }))
                .await;
        }
        for end in ends {
            self.step_end(end).await;
        }
    }

    async fn step_end(&self, ended: pb::StepEnded) {
        let node = ended.node.clone();
        match self.propose(Cmd::StepEnded(ended)).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!(node, "step end refused: {other:?}"),
            Err(e) => tracing::warn!(node, "step end not recorded: {e}"),
        }
    }

    async fn serve_agent(
        &self,
        node: &str,
        tx: &AgentSender,
        mut inbound: Streaming<pb::AgentMessage>,
    ) {
        loop {
            // A hung agent keeps its TCP connection but stops heartbeating: treat silence as
            // death, so the liveness loop can start counting toward NodeDown.
            let msg = match tokio::time::timeout(self.0.agent_silence_max, inbound.next()).await {
                Err(_) => {
                    tracing::warn!(
                        node,
                        "agent silent for {:?}; closing its stream",
                        self.0.agent_silence_max
                    );
                    return;
                }
                Ok(None) => return,
                Ok(Some(Err(status))) => {
                    tracing::warn!(node, "agent stream error: {status}");
                    return;
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg.msg {
                Some(agent_message::Msg::Heartbeat(_)) => {}
                Some(agent_message::Msg::JobEvent(ev)) => {
                    if let Err(why) = validate_event(&ev) {
                        let _ = tx.send(Err(Status::invalid_argument(why))).await;
                        return;
                    }
                    match ev.event {
                        Some(job_event::Event::Finished(f)) => {
                            self.job_finished(node, ev.job_id, f, tx).await
                        }
                        Some(job_event::Event::Started(s)) => {
                            tracing::debug!(node, job = ev.job_id, pid = s.pid, "started")
                        }
                        None => {}
                    }
                }
                Some(agent_message::Msg::GpuHealth(h)) => self.gpu_unhealthy(node, h).await,
                Some(agent_message::Msg::StepEnd(end)) => {
                    self.step_end(pb::StepEnded {
                        node: node.to_string(),
                        end: Some(end),
                    })
                    .await
                }
                Some(agent_message::Msg::GpuHealthResent(h)) => {
                    if self.cleared_by_admin(node, &h) {
                        tracing::info!(
                            node,
                            gpu = h.uuid,
                            "re-sent health report ignored: an admin cleared {:?}",
                            h.reason
                        );
                    } else {
                        self.gpu_unhealthy(node, h).await
                    }
                }
                Some(agent_message::Msg::JobUsage(r)) => {
                    if let Err(why) = validate_usage(&r) {
                        let _ = tx.send(Err(Status::invalid_argument(why))).await;
                        return;
                    }
                    self.job_usage(node, r).await
                }
                Some(agent_message::Msg::Register(_)) | None => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "unexpected message: Register only opens a stream",
                        )))
                        .await;
                    return;
                }
            }
        }
    }

    /// Whether an admin cleared exactly this report's reason on this GPU: then a report the
    /// agent re-sends after reconnecting is old news, not a new failure.
    fn cleared_by_admin(&self, node: &str, h: &pb::GpuHealth) -> bool {
        let sm = self.0.raft.state();
        sm.node(node)
            .and_then(|n| n.inventory.as_ref())
            .and_then(|i| i.gpus.iter().find(|g| g.uuid == h.uuid))
            .is_some_and(|g| g.unhealthy_reason.is_empty() && g.healthy_cleared_reason == h.reason)
    }

    /// Records an agent's measured job usage through the log. A refusal (a job berthd
    /// no longer allocates there, e.g. after a requeue) is logged, not fatal to the stream.
    async fn job_usage(&self, node: &str, r: pb::JobUsageReport) {
        if r.jobs.is_empty() {
            return;
        }
        let cmd = Cmd::JobUsage(pb::JobUsageRecord {
            node: node.to_string(),
            jobs: r.jobs,
        });
        match self.propose(cmd).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!(node, "job usage refused: {other:?}"),
            Err(e) => tracing::warn!(node, "job usage not recorded: {e}"),
        }
    }

    /// Records an agent's report of a bad GPU through the log, so every replica stops
    /// placing on it. A refusal (unknown GPU) is logged, not fatal to the stream.
    async fn gpu_unhealthy(&self, node: &str, h: pb::GpuHealth) {
        tracing::warn!(node, gpu = h.uuid, "GPU unhealthy: {}", h.reason);
        let cmd = Cmd::MarkGpuUnhealthy(pb::MarkGpuUnhealthy {
            node: node.to_string(),
            gpu_uuid: h.uuid,
            reason: h.reason,
        });
        match self.propose(cmd).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!(node, "GPU health refused: {other:?}"),
            Err(e) => tracing::warn!(node, "GPU health not recorded: {e}"),
        }
    }

    async fn job_finished(
        &self,
        node: &str,
        job_id: u64,
        finished: pb::JobFinished,
        tx: &AgentSender,
    ) {
        if self.0.raft.state().job(job_id).is_none() {
            // Never a berth job: tell the agent to forget it, and keep it out of the log.
            tracing::warn!(node, job_id, "agent reported an unknown job");
            let ack = Msg::Ack(pb::AckJob { job_id });
            let _ = tx
                .send(Ok(pb::ServerMessage {
                    term: self.0.raft.term(),
                    msg: Some(ack),
                }))
                .await;
            return;
        }
        let ended = pb::JobEnded {
            job_id,
            node: node.to_string(),
            finished: Some(finished),
        };
        match self.propose(Cmd::JobEnded(ended)).await {
            Ok(Outcome::Done) => {} // the Ack goes out through the dispatch loop
            Ok(other) => tracing::warn!(node, job_id, "job end refused: {other:?}"),
            Err(e) => tracing::warn!(node, job_id, "job end not recorded: {e}"),
        }
    }
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for Api {
    async fn step(&self, req: Request<pb::RaftBatch>) -> Result<Response<pb::RaftAck>, Status> {
        use protobuf::Message as _;
        for bytes in req.into_inner().messages {
            let msg = raft::eraftpb::Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            self.0.raft.step(msg);
        }
        Ok(Response::new(pb::RaftAck {}))
    }
}

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

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Api {
    async fn get_shares(
        &self,
        _req: Request<pb::SharesRequest>,
    ) -> Result<Response<pb::SharesResponse>, Status> {
        let sm = self.0.raft.state();
        let cfg = &sm.accounts().policy;
        let usage = berth_policies::priority::usage_now(
            &cfg.accounts,
            &sm.policy_view(),
            cfg.half_life_ms,
            now_ms(),
        );
        let rows = berth_policies::fairshare::fair_tree(&cfg.accounts, &usage)
            .into_iter()
            .map(|r| pb::ShareRow {
                account: r.name,
                depth: r.depth as u32,
                shares: r.shares,
                norm_shares: r.norm_shares,
                raw_usage: r.raw_usage,
                effective_usage: r.effective_usage,
                level_fs: r.level_fs,
                fairshare: r.fairshare.unwrap_or(-1.0),
            })
            .collect();
        Ok(Response::new(pb::SharesResponse { rows }))
    }

    async fn get_priorities(
        &self,
        req: Request<pb::PrioritiesRequest>,
    ) -> Result<Response<pb::PrioritiesResponse>, Status> {
        let ids = req.into_inner().job_ids;
        let sm = self.0.raft.state();
        let cfg = &sm.accounts().policy;
        let snap = sm.policy_view();
        let prio = berth_policies::priority::Prioritizer::new(&snap, cfg, now_ms());
        let jobs = sm
            .pending_jobs()
            .iter()
            .filter(|p| ids.is_empty() || ids.contains(&p.id))
            .map(|p| {
                let f = prio.factors(p);
                let user = sm
                    .job(p.id)
                    .and_then(|j| j.spec.as_ref())
                    .map(|s| s.user.clone())
                    .unwrap_or_default();
                pb::JobPriority {
                    job_id: p.id,
                    user,
                    account: p.account.clone(),
                    qos: p.qos.clone(),
                    priority: f.priority,
                    fairshare: f.fairshare,
                    age: f.age,
                    qos_factor: f.qos,
                    size: f.size,
                    short: f.short,
                    weight_short: cfg.weights.short,
                }
            })
            .collect();
        let w = &cfg.weights;
        Ok(Response::new(pb::PrioritiesResponse {
            jobs,
            weight_fairshare: w.fairshare,
            weight_age: w.age,
            weight_qos: w.qos,
            weight_size: w.size,
        }))
    }

    async fn get_topology(
        &self,
        _req: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyResponse>, Status> {
        let (conf, topo) = {
            let sm = self.0.raft.state();
            (sm.topology_conf().to_string(), sm.topology())
        };
        let switches = topo
            .switch_rows()
            .into_iter()
            .map(|r| pb::TopologySwitch {
                name: r.name,
                level: r.level,
                link_speed: r.link_speed.unwrap_or(0),
                nodes: r.nodes,
                switches: r.switches,
            })
            .collect();
        let blocks = topo
            .conf()
            .blocks
            .iter()
            .map(|b| pb::TopologyBlock {
                name: b.name.clone(),
                nodes: b.nodes.clone(),
            })
            .collect();
        Ok(Response::new(pb::TopologyResponse {
            switches,
            blocks,
            conf,
        }))
    }

    async fn get_accounts(
        &self,
        _req: Request<pb::AccountsRequest>,
    ) -> Result<Response<pb::AccountsConfig>, Status> {
        let sm = self.0.raft.state();
        let toml = match sm.accounts_toml() {
            "" => crate::accounts::DEFAULT_TOML.to_string(),
            t => t.to_string(),
        };
        Ok(Response::new(pb::AccountsConfig { toml }))
    }

    async fn set_accounts(
        &self,
        req: Request<pb::AccountsConfig>,
    ) -> Result<Response<pb::AccountsConfig>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        // Refuse bad text before it reaches the log (apply would refuse it too).
        crate::accounts::parse(&r.toml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(mut leader) = self.admin_leader().await? {
            return leader.set_accounts(forward(&caller, r)).await;
        }
        if caller.role < crate::security::Role::Admin {
            let sm = self.0.raft.state();
            // Only coordinators change anything short of admin: a user coordinating no
            // account is refused even a no-op, so no one else writes to the log here.
            if sm
                .accounts()
                .access
                .coordinated(&caller.identity.user)
                .is_empty()
            {
                return Err(Status::permission_denied(format!(
                    "Access/permission denied: SetAccounts needs role admin or an account \
                     coordinator (you are {:?}, role {})",
                    caller.identity.user,
                    caller.role.name()
                )));
            }
            let current = match sm.accounts_toml() {
                "" => crate::accounts::DEFAULT_TOML,
                text => text,
            };
            crate::account_change::coordinator_may_set(
                current,
                &r.toml,
                &caller.identity.user,
                &sm.accounts().access,
            )
            .map_err(Status::permission_denied)?;
        }
        let outcome = self
            .propose(Cmd::SetAccounts(pb::SetAccounts {
                toml: r.toml.clone(),
            }))
            .await?;
        match outcome {
            Outcome::Done => Ok(Response::new(r)),
            Outcome::Rejected(why) => Err(Status::invalid_argument(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn resume_gpu(
        &self,
        req: Request<pb::GpuHealthyRequest>,
    ) -> Result<Response<pb::GpuHealthyResponse>, Status> {
        let caller = Caller::of(&req);
        crate::security::note(
            &req,
            format!("node {} gpu {}", req.get_ref().node, req.get_ref().gpu),
        );
        let r = req.into_inner();
        if r.node.is_empty() || r.gpu.is_empty() {
            return Err(Status::invalid_argument(
                "resume needs node=NAME and gpu=UUID|INDEX",
            ));
        }
        if let Some(mut leader) = self.admin_leader().await? {
            return leader.resume_gpu(forward(&caller, r)).await;
        }
        let (uuid, reason) = {
            let sm = self.0.raft.state();
            let inv = sm
                .node(&r.node)
                .and_then(|n| n.inventory.as_ref())
                .ok_or_else(|| Status::not_found(format!("Node {} not found", r.node)))?;
            let gpu = inv
                .gpus
                .iter()
                .find(|g| g.uuid == r.gpu || g.index.to_string() == r.gpu)
                .ok_or_else(|| {
                    Status::not_found(format!("node {} has no GPU {}", r.node, r.gpu))
                })?;
            (gpu.uuid.clone(), gpu.unhealthy_reason.clone())
        };
        let cmd = Cmd::GpuHealthy(pb::GpuHealthyMark {
            node: r.node.clone(),
            gpu_uuid: uuid.clone(),
        });
        match self.propose(cmd).await? {
            Outcome::Done => {
                tracing::info!(
                    node = r.node,
                    gpu = uuid,
                    "GPU resumed by an admin (was: {reason})"
                );
                Ok(Response::new(pb::GpuHealthyResponse {
                    gpu_uuid: uuid,
                    cleared_reason: reason,
                }))
            }
            Outcome::Rejected(why) => Err(Status::not_found(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn issue_token(
        &self,
        req: Request<pb::TokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let sec = self.0.security.as_ref().ok_or_else(|| {
            Status::failed_precondition("this berthd runs without security: there are no tokens")
        })?;
        crate::security::tokens::issue(sec, &caller, &r).map(Response::new)
    }

    async fn query_audit(
        &self,
        req: Request<pb::AuditQuery>,
    ) -> Result<Response<pb::AuditRecords>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let audit = self.0.audit.clone();
        let filter = crate::audit::AuditFilter::of(&r);
        let mut records = tokio::task::spawn_blocking(move || audit.query(&filter, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut unreachable = Vec::new();
        if !r.local_only {
            // Each replica keeps the records of the calls it handled: gather the others'
            // (as the caller, whose role each peer checks again), so one query sees the
            // whole group's history across leader changes.
            let me = self.0.raft.id();
            let ask = pb::AuditQuery {
                local_only: true,
                ..r.clone()
            };
            let peers: Vec<(u64, String)> = self
                .0
                .raft
                .peers()
                .into_iter()
                .filter(|(id, _)| *id != me)
                .collect();
            let calls = peers.into_iter().map(|(id, url)| {
                let (caller, ask, sec) = (caller.clone(), ask.clone(), self.0.security.clone());
                async move {
                    let got = async {
                        let profile = sec.map(|s| s.peer_profile.clone()).unwrap_or_default();
                        let channel = berth_auth::channel::endpoint(&url, &profile)?
                            .connect_timeout(std::time::Duration::from_secs(2))
                            .timeout(std::time::Duration::from_secs(5))
                            .connect()
                            .await
                            .map_err(|e| e.to_string())?;
                        pb::admin_service_client::AdminServiceClient::new(channel)
                            .query_audit(forward(&caller, ask))
                            .await
                            .map(|r| r.into_inner().records)
                            .map_err(|s| s.message().to_string())
                    }
                    .await;
                    (id, url, got)
                }
            });
            for (id, url, got) in futures::future::join_all(calls).await {
                match got {
                    Ok(mut more) => records.append(&mut more),
                    Err(e) => unreachable.push(format!("replica {id} ({url}): {e}")),
                }
            }
            records = crate::audit::merge(records, limit);
        }
        Ok(Response::new(pb::AuditRecords {
            records,
            unreachable,
        }))
    }

    async fn get_cluster(
        &self,
        _req: Request<pb::ClusterRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        Ok(Response::new(self.cluster_info()))
    }

    async fn set_cluster(
        &self,
        req: Request<pb::ClusterConfig>,
    ) -> Result<Response<pb::ClusterConfig>, Status> {
        let caller = Caller::of(&req);
        self.set_cluster_text(&caller, req.into_inner()).await
    }

    async fn change_reservation(
        &self,
        req: Request<pb::ReservationChange>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        let caller = Caller::of(&req);
        self.reservation_change(&caller, req.into_inner()).await
    }

    async fn drain_node(
        &self,
        req: Request<pb::NodeDrain>,
    ) -> Result<Response<pb::NodeDrainReply>, Status> {
        let caller = Caller::of(&req);
        self.node_drain(&caller, req.into_inner()).await
    }

    async fn get_replica_status(
        &self,
        _req: Request<pb::ReplicaStatusRequest>,
    ) -> Result<Response<pb::ReplicaStatus>, Status> {
        let raft = &self.0.raft;
        Ok(Response::new(pb::ReplicaStatus {
            id: raft.id(),
            term: raft.term(),
            leader_id: raft.leader_id(),
            applied_index: raft.state().applied_index(),
        }))
    }
    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::Members>, Status> {
        let caller = Caller::of(&req);
        crate::security::note(
            &req,
            format!(
                "replica {} remove={}",
                req.get_ref().id,
                req.get_ref().remove
            ),
        );
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("replica id 0 is reserved by raft"));
        }
        if !r.remove && r.url.is_empty() {
            return Err(Status::invalid_argument(
                "adding a replica needs its address",
            ));
        }
        if let Some(url) = self.leader_url()? {
            let mut leader = pb::admin_service_client::AdminServiceClient::new(
                self.0
                    .leader_channel
                    .get(&url, self.0.security.as_deref())?,
            );
            return leader.change_membership(forward(&caller, r)).await;
        }
        let voters = self.0.raft.voters();
        if r.remove && !voters.contains(&r.id) {
            return Err(Status::failed_precondition(format!(
                "replica {} is not a member",
                r.id
            )));
        }
        if r.remove && voters.len() == 1 {
            return Err(Status::failed_precondition("cannot remove the last voter"));
        }
        if !r.remove && voters.contains(&r.id) {
            return Err(Status::failed_precondition(format!(
                "replica {} is already a member",
                r.id
            )));
        }
        let url = (!r.remove).then(|| {
            if r.url.contains("://") {
                r.url.clone()
            } else {
                format!("http://{}", r.url)
            }
        });
        let outcome = self
            .0
            .raft
            .change_membership(r.id, url)
            .await
            .map_err(propose_status)?;
        outcome_status(outcome)?;
        let members = self
            .0
            .raft
            .peers()
            .into_iter()
            .map(|(id, url)| pb::Member { id, url })
            .collect();
        Ok(Response::new(pb::Members { members }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reports_berthd_could_never_record_are_refused() {
        let usage = |job_id: u64, held: f64, util: f64| pb::JobUsage {
            job_id,
            gpu_seconds: held,
            gpu_util_percent: util,
            ..Default::default()
        };
        let report = |jobs| pb::JobUsageReport { jobs };
        assert_eq!(validate_usage(&report(vec![usage(1, 2.5, 40.0)])), Ok(()));
        assert_eq!(validate_usage(&report(vec![])), Ok(()));
        let bad = [
            (usage(0, 1.0, 0.0), "job 0"),
            (usage(1, -1.0, 0.0), "finite and ≥ 0"),
            (usage(1, f64::INFINITY, 0.0), "finite and ≥ 0"),
            (usage(1, 1.0, f64::NAN), "finite and ≥ 0"),
        ];
        for (i, (u, want)) in bad.into_iter().enumerate() {
            match validate_usage(&report(vec![usage(2, 1.0, 1.0), u])) {
                Err(e) if e.contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
    }
}
