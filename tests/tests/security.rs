//! Security end to end: real berthd processes over real TLS on loopback, callers proven by
//! tokens, certificates and local credentials.
//!
//! - Every RPC of every berth service against every kind of caller (the RBAC table): the
//!   RPCs come from the compiled descriptor, so an RPC added without a row fails here.
//! - OIDC: tokens signed with keys generated here, verified against an issuer served
//!   from this process, through a key rotation.
//! - Node identity: an agent holding node A's certificate can neither register nor
//!   report as node B.
//! - Certificates: replaced on disk while berthd runs, served without a restart; a
//!   certificate from another CA is refused.
//! - Audit: refusals and changes recorded with who and what, filtered, kept across a
//!   restart and across a change of leader.

use berth_auth::profile::Profile;
use berth_proto::v1 as pb;
use berth_tests::{free_port, replica, TestCa};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Sends and receives messages as bytes: one codec for every RPC, so the table can call
/// each by its path with a request encoded from its own type.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf as _;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Every RPC compiled into berth's own services, as `/package.Service/Method`.
fn all_rpcs() -> Vec<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(berth_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut out = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "berth.v1") {
        // StepIoService is served by srun for its own step (agents present the step's I/O
        // key), not by berthd.
        for svc in file.service.iter().filter(|s| s.name() != "StepIoService") {
            for m in &svc.method {
                out.push(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
            }
        }
    }
    out
}

/// Calls `path` with one request message; the first answer or the status. A stream that
/// answers nothing within a second (Watch, Attach) was let through.
async fn call(
    ch: &berth_auth::channel::AuthChannel,
    path: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path: http::uri::PathAndQuery = path.parse().expect("rpc path");
    let req = tonic::Request::new(tokio_stream::iter(vec![body]));
    let mut stream = grpc.streaming(req, path, RawCodec).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// The kinds of caller the table has a column for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    /// `daemon`: member of account science, owns the jobs the table acts on.
    User,
    /// `bin`: a user of no account here.
    OtherUser,
    /// `sys`: coordinator of account science.
    Coordinator,
    /// `games`: listed in auth.toml's operators.
    Operator,
    /// `man`: listed in auth.toml's admins.
    Admin,
    /// An agent with node n1's certificate.
    Node,
}

const EVERYONE: [Who; 6] = [
    Who::User,
    Who::OtherUser,
    Who::Coordinator,
    Who::Operator,
    Who::Admin,
    Who::Node,
];

impl Who {
    fn user(self) -> &'static str {
        match self {
            Who::User => "daemon",
            Who::OtherUser => "bin",
            Who::Coordinator => "sys",
            Who::Operator => "games",
            Who::Admin => "man",
            Who::Node => "node:n1",
        }
    }
}

const ACCOUNTS: &str = r#"
default_account = "other"
[[account]]
name = "science"
users = ["daemon"]
coordinators = ["sys"]
[[account]]
name = "other"
"#;

/// One secure replica with roles and accounts set, one registered fake node, and a
/// channel per kind of caller.
struct Cluster {
    _berthd: berth_tests::Proc,
    _agent: (
        tokio::sync::mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::ServerMessage>,
    ),
    url: String,
    ca: TestCa,
    channels: BTreeMap<Who, berth_auth::channel::AuthChannel>,
}

/// A token `berth token` would issue for `user` (signed with the CA's jwt.key).
fn token(ca: &TestCa, user: &str) -> String {
    let key = berth_auth::key::read_secret(&ca.ca.join("jwt.key")).unwrap();
    berth_auth::jwt::issue_hs256(&key, user, 600, berth_auth::now_ms() / 1000).unwrap()
}

async fn token_channel(url: &str, ca: &TestCa, user: &str) -> berth_auth::channel::AuthChannel {
    let p = Profile {
        ca: Some(ca.ca.join("ca.pem")),
        token: Some(token(ca, user)),
        ..Default::default()
    };
    berth_auth::channel::connect(url, Some(&p)).await.unwrap()
}

/// Registers node `name` (with `name`'s certificate) and returns the sender that keeps its
/// stream open and the stream of what berthd sends it.
async fn fake_agent(
    url: &str,
    ca: &TestCa,
    cert_of: &str,
    name: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::ServerMessage>,
    ),
    tonic::Status,
> {
    let dir = ca.node_dir(cert_of);
    let mut agents = pb::agent_service_client::AgentServiceClient::new(
        berth_tests::connect_with_cert(url, &dir).await.unwrap(),
    );
    let (up, up_rx) = tokio::sync::mpsc::channel(16);
    let inv = pb::NodeInventory {
        name: name.into(),
        partition: "gpu".into(),
        cpus: 512,
        memory_mb: 1 << 20,
        ..Default::default()
    };
    up.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            inventory: Some(inv),
            jobs: vec![],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut down = agents
        .attach(tokio_stream::wrappers::ReceiverStream::new(up_rx))
        .await?
        .into_inner();
    let first = down.message().await?.expect("an answer to Register");
    assert!(
        matches!(first.msg, Some(pb::server_message::Msg::Registered(_))),
        "{first:?}"
    );
    Ok((up, down))
}

fn write_auth_toml(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("auth.toml"),
        format!("admins = [\"man\"]\noperators = [\"games\"]\n{extra}"),
    )
    .unwrap();
}

impl Cluster {
    async fn start(dir: &Path) -> Cluster {
        Cluster::start_with(dir, "").await
    }

    /// [`Cluster::start`] with `auth_extra` in the replica's auth.toml.
    async fn start_with(dir: &Path, auth_extra: &str) -> Cluster {
        let (berthd, url, ca) = lone_replica(dir, auth_extra).await;
        let admin = up(&url, &ca).await;
        let agent = fake_agent(&url, &ca, "n1", "n1").await.unwrap();
        let mut channels = BTreeMap::new();
        for who in EVERYONE {
            let ch = match who {
                Who::Node => berth_tests::connect_with_cert(&url, &ca.node_dir("n1"))
                    .await
                    .unwrap(),
                Who::Admin => admin.clone(),
                w => token_channel(&url, &ca, w.user()).await,
            };
            channels.insert(who, ch);
        }
        Cluster {
            _berthd: berthd,
            _agent: agent,
            url,
            ca,
            channels,
        }
    }

    fn jobs(
        &self,
        who: Who,
    ) -> pb::job_service_client::JobServiceClient<berth_auth::channel::AuthChannel> {
        pb::job_service_client::JobServiceClient::new(self.channels[&who].clone())
    }

    /// A new job of `daemon`'s in account science.
    async fn users_job(&self) -> u64 {
        self.users_job_held(false).await
    }

    /// A fresh job of the user's, held when `hold` (so the scheduler does not start it
    /// while a row checks that a refused call left it as it was).
    async fn users_job_held(&self, hold: bool) -> u64 {
        self.jobs(Who::User)
            .submit(pb::SubmitRequest {
                spec: Some(pb::JobSpec {
                    hold,
                    ..spec("science")
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .job_id
    }

    async fn job(&self, id: u64) -> pb::Job {
        self.jobs(Who::Admin)
            .get(pb::GetJobRequest { job_id: id })
            .await
            .unwrap()
            .into_inner()
    }
}

/// Waits for berthd at `url` to lead and answer an admin; the admin's channel.
async fn up(url: &str, ca: &TestCa) -> berth_auth::channel::AuthChannel {
    let mut last = String::new();
    for _ in 0..300 {
        match berth_auth::channel::connect(
            url,
            Some(&Profile {
                ca: Some(ca.ca.join("ca.pem")),
                token: Some(token(ca, "man")),
                ..Default::default()
            }),
        )
        .await
        {
            Err(e) => last = e,
            Ok(ch) => {
                let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
                match admin.get_replica_status(pb::ReplicaStatusRequest {}).await {
                    Ok(s) if s.get_ref().leader_id != 0 => return ch,
                    Ok(s) => last = format!("{:?}", s.get_ref()),
                    Err(e) => last = e.to_string(),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("berthd at {url} did not come up: {last}");
}

fn spec(account: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: "rbac".into(),
        script: "#!/bin/sh\nsleep 1000\n".into(),
        work_dir: "/tmp".into(),
        account: account.into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        ..Default::default()
    }
}

/// Whether a call was let through (whatever the handler then made of the request) or
/// refused for who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Allow,
    Deny,
}
use Rule::{Allow, Deny};

/// What the table sends an RPC: a fixed request, one about a fresh job of `daemon`'s, or
/// one numbered afresh for each call (so no call repeats what an earlier one installed).
enum Body {
    Fixed(Vec<u8>),
    Job(fn(u64) -> Vec<u8>),
    Fresh(fn(u64) -> Vec<u8>),
}

fn enc(m: impl prost::Message) -> Body {
    Body::Fixed(m.encode_to_vec())
}

/// The table: for each RPC, the request, and for each caller (in [`EVERYONE`]'s order:
/// user, other user, coordinator, operator, admin, node) whether it is let through.
fn table() -> Vec<(&'static str, Body, [Rule; 6])> {
    use prost::Message as _;
    vec![
        // A user submits to accounts they belong to (coordinators count); admins anywhere.
        (
            "/berth.v1.JobService/Submit",
            enc(pb::SubmitRequest {
                spec: Some(spec("science")),
            }),
            [Allow, Deny, Allow, Deny, Allow, Deny],
        ),
        // A job: its owner, its account's coordinator, operators, admins.
        (
            "/berth.v1.JobService/Cancel",
            Body::Job(|id| {
                pb::CancelRequest {
                    job_id: id,
                    reason: String::new(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [Allow, Deny, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.JobService/Hold",
            Body::Job(|id| {
                pb::HoldRequest {
                    job_id: id,
                    hold: true,
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [Allow, Deny, Allow, Allow, Allow, Deny],
        ),
        // Requeue and array updates: the job's owner, its account's coordinator, operators.
        (
            "/berth.v1.JobService/Requeue",
            Body::Job(|id| pb::RequeueRequest { job_id: id }.encode_to_vec()),
            [Allow, Deny, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.JobService/UpdateArray",
            Body::Job(|id| {
                pb::UpdateArrayRequest {
                    job_id: id,
                    max_running: Some(2),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
            [Allow, Deny, Allow, Allow, Allow, Deny],
        ),
        // Steps (srun) run as the job's identity: the job's owner, its account's
        // coordinator, operators, admins (the job is pending, so the step itself is refused
        // after the check).
        (
            "/berth.v1.JobService/CreateStep",
            Body::Job(|id| {
                pb::CreateStepRequest {
                    job_id: id,
                    spec: Some(pb::StepSpec {
                        argv: vec!["true".into()],
                        io_addr: "127.0.0.1:1".into(),
                        ..Default::default()
                    }),
                }
                .encode_to_vec()
            }),
            [Allow, Deny, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.JobService/CancelStep",
            Body::Job(|id| {
                pb::CancelStepRequest {
                    job_id: id,
                    step_id: 0,
                    reason: String::new(),
                }
                .encode_to_vec()
            }),
            [Allow, Deny, Allow, Allow, Allow, Deny],
        ),
        // Reading jobs is open (others' scripts and environments are redacted); an agent's
        // device plugin reads its node's jobs.
        (
            "/berth.v1.JobService/Get",
            Body::Job(|id| pb::GetJobRequest { job_id: id }.encode_to_vec()),
            [Allow, Allow, Allow, Allow, Allow, Allow],
        ),
        (
            "/berth.v1.JobService/List",
            enc(pb::ListJobsRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Allow],
        ),
        (
            "/berth.v1.JobService/ListPages",
            enc(pb::ListJobsRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.JobService/Watch",
            enc(pb::WatchRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        // Kubernetes binding: the extender's service certificate or an operator.
        (
            "/berth.v1.JobService/BindPod",
            enc(pb::BindPodRequest::default()),
            [Deny, Deny, Deny, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.NodeService/List",
            enc(pb::ListNodesRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Allow],
        ),
        // The agent stream needs a node certificate; Raft a replica's.
        (
            "/berth.v1.AgentService/Attach",
            enc(pb::AgentMessage::default()),
            [Deny, Deny, Deny, Deny, Deny, Allow],
        ),
        (
            "/berth.v1.RaftService/Step",
            enc(pb::RaftBatch::default()),
            [Deny, Deny, Deny, Deny, Deny, Deny],
        ),
        (
            "/berth.v1.AdminService/GetShares",
            enc(pb::SharesRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/GetPriorities",
            enc(pb::PrioritiesRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/GetAccounts",
            enc(pb::AccountsRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        // A new account under science: its coordinator may, admins may.
        (
            "/berth.v1.AdminService/SetAccounts",
            Body::Fresh(|n| {
                pb::AccountsConfig {
                    toml: format!(
                        "{ACCOUNTS}\n[[account]]\nname = \"lab{n}\"\nparent = \"science\"\n"
                    ),
                }
                .encode_to_vec()
            }),
            [Deny, Deny, Allow, Deny, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/GetTopology",
            enc(pb::TopologyRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/GetReplicaStatus",
            enc(pb::ReplicaStatusRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/ChangeMembership",
            enc(pb::ChangeMembershipRequest::default()),
            [Deny, Deny, Deny, Deny, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/ResumeGpu",
            enc(pb::GpuHealthyRequest {
                node: "n1".into(),
                gpu: "0".into(),
            }),
            [Deny, Deny, Deny, Allow, Allow, Deny],
        ),
        // A token for daemon: daemon itself, or an admin.
        (
            "/berth.v1.AdminService/IssueToken",
            enc(pb::TokenRequest {
                user: "daemon".into(),
                lifespan_secs: 60,
            }),
            [Allow, Deny, Deny, Deny, Allow, Deny],
        ),
        // Job history and usage: every user reads them (sacct without PrivateData).
        (
            "/berth.v1.AccountingService/Query",
            enc(pb::RecordQuery::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AccountingService/Usage",
            enc(pb::UsageQuery::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/GetCluster",
            enc(pb::ClusterRequest::default()),
            [Allow, Allow, Allow, Allow, Allow, Deny],
        ),
        // A description that does not parse: let through, it changes nothing.
        (
            "/berth.v1.AdminService/SetCluster",
            enc(pb::ClusterConfig {
                toml: "[[nodes]\n".into(),
            }),
            [Deny, Deny, Deny, Deny, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/ChangeReservation",
            enc(pb::ReservationChange {
                op: "delete".into(),
                ..Default::default()
            }),
            [Deny, Deny, Deny, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/DrainNode",
            enc(pb::NodeDrain {
                node: "no-such-node".into(),
                drain: true,
                reason: "rbac".into(),
                ..Default::default()
            }),
            [Deny, Deny, Deny, Allow, Allow, Deny],
        ),
        (
            "/berth.v1.AdminService/QueryAudit",
            enc(pb::AuditQuery::default()),
            [Deny, Deny, Deny, Allow, Allow, Deny],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_allows_and_refuses_each_role_as_the_table_says() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path()).await;
    let table = table();
    // The table covers exactly the compiled RPCs: a new RPC needs a row here.
    let rows: Vec<String> = table.iter().map(|(p, _, _)| p.to_string()).collect();
    for rpc in all_rpcs() {
        assert!(
            rows.contains(&rpc),
            "RPC {rpc} has no row in the RBAC table"
        );
    }
    for r in &rows {
        assert!(
            all_rpcs().contains(r),
            "table row {r} names no compiled RPC"
        );
    }
    let mut wrong = Vec::new();
    let mut n = 0;
    for (path, body, rules) in &table {
        for (who, want) in EVERYONE.iter().zip(rules) {
            let (bytes, job) = match body {
                Body::Fixed(b) => (b.clone(), None),
                Body::Fresh(f) => {
                    n += 1;
                    (f(n), None)
                }
                Body::Job(f) => {
                    let id = c.users_job_held(true).await;
                    (f(id), Some(id))
                }
            };
            let before = match job {
                Some(id) => Some(c.job(id).await),
                None => None,
            };
            let got = call(&c.channels[who], path, bytes).await;
            match (want, &got) {
                (Allow, Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::PermissionDenied
                            | tonic::Code::Unauthenticated
                            | tonic::Code::ResourceExhausted
                    ) =>
                {
                    wrong.push(format!("{path} as {who:?}: want allowed, got {s:?}"))
                }
                (Allow, _) => {}
                (Deny, Ok(())) => {
                    wrong.push(format!("{path} as {who:?}: want refused, was allowed"))
                }
                (Deny, Err(s)) => {
                    let m = s.message();
                    // The refusal names what was needed: a role, the job's owner or its
                    // coordinator, account membership, or a certificate kind.
                    let named = m.contains("needs role")
                        || m.contains("needs its owner")
                        || m.contains("needs a node certificate")
                        || m.contains("needs a replica certificate")
                        || m.contains("only attaches its agent")
                        || m.contains("may not submit to account");
                    if s.code() != tonic::Code::PermissionDenied || !named {
                        wrong.push(format!(
                            "{path} as {who:?}: want a refusal naming the role, got {s:?}"
                        ));
                    }
                    // A refused call changed nothing.
                    if let (Some(id), Some(before)) = (job, &before) {
                        let after = c.job(id).await;
                        if after.state() != before.state() || after.held != before.held {
                            wrong.push(format!("{path} as {who:?}: refused, yet job {id} changed"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Refusals are audited with the caller's name; the audit query filters by user.
    let mut audit =
        pb::admin_service_client::AdminServiceClient::new(c.channels[&Who::Admin].clone());
    let bins = audit
        .query_audit(pb::AuditQuery {
            user: "bin".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        !bins.is_empty() && bins.iter().all(|r| r.user == "bin"),
        "{bins:?}"
    );
    assert!(
        bins.iter().any(|r| !r.ok
            && r.method == "/berth.v1.JobService/Cancel"
            && r.result.contains("PermissionDenied")),
        "{bins:?}"
    );
}

/// A replica's certificate speaks Raft and forwards its callers: alone, it is nobody (a
/// stolen one changes nothing), and with a forwarded caller it acts as exactly that caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_certificate_alone_may_only_speak_raft() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path()).await;
    let id = c.users_job_held(true).await;
    let ch = berth_tests::connect_with_cert(&c.url, &c.ca.replica_dir(2))
        .await
        .unwrap();
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    let err = admin
        .change_membership(pb::ChangeMembershipRequest {
            id: 1,
            remove: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("this call carries no forwarded caller"),
        "{err:?}"
    );
    let mut jobs = pb::job_service_client::JobServiceClient::new(ch.clone());
    let err = jobs
        .cancel(pb::CancelRequest {
            job_id: id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(
        c.job(id).await.state(),
        pb::JobState::Pending,
        "nothing changed"
    );
    // Forwarding bin's identity: bin may not cancel daemon's job, and says so as bin.
    let bin = pb::Identity {
        user: "bin".into(),
        uid: 2,
        gid: 2,
        method: "local".into(),
        ..Default::default()
    };
    let mut req = tonic::Request::new(pb::CancelRequest {
        job_id: id,
        ..Default::default()
    });
    let header = berth_scheduler::security::layer::encode_forwarded(&bin).unwrap();
    req.metadata_mut().insert(
        berth_auth::FORWARDED_IDENTITY,
        header.to_str().unwrap().parse().unwrap(),
    );
    let err = jobs.cancel(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("you are \"bin\""), "{err:?}");
    assert_eq!(c.job(id).await.state(), pb::JobState::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_node_as_certificate_cannot_register_or_report_as_node_b() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path()).await;
    // n1's certificate, registering as n2: refused, naming both, and n2 never appears.
    let err = fake_agent(&c.url, &c.ca, "n1", "n2").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("certificate is for node \"n1\"")
            && err.message().contains("may not register as \"n2\""),
        "{err:?}"
    );
    let mut nodes =
        pb::node_service_client::NodeServiceClient::new(c.channels[&Who::Admin].clone());
    let names = |r: pb::ListNodesResponse| -> Vec<String> {
        r.nodes
            .into_iter()
            .filter_map(|n| n.inventory.map(|i| i.name))
            .collect()
    };
    let listed = names(
        nodes
            .list(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(listed, vec!["n1".to_string()]);
    // n2 registers with its own certificate; a job runs on one of the two nodes.
    let n2 = fake_agent(&c.url, &c.ca, "n2", "n2").await.unwrap();
    let id = c.users_job().await;
    let mut job = c.job(id).await;
    for _ in 0..100 {
        if job.state() == pb::JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        job = c.job(id).await;
    }
    assert_eq!(job.state(), pb::JobState::Running, "{job:?}");
    let ran_on = job.allocations[0].node.clone();
    let (owner, other) = if ran_on == "n1" {
        (&c._agent.0, &n2.0)
    } else {
        (&n2.0, &c._agent.0)
    };
    let finished = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::JobEvent(pb::JobEvent {
            job_id: id,
            event: Some(pb::job_event::Event::Finished(pb::JobFinished {
                state: pb::JobState::Completed as i32,
                end_time_ms: berth_auth::now_ms(),
                ..Default::default()
            })),
        })),
    };
    // The other node's agent reports the job ended: its report speaks for its own node
    // only, so the job runs on.
    other.send(finished.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.job(id).await.state(), pb::JobState::Running);
    // The same report from the node it runs on ends it (the report itself was good).
    owner.send(finished).await.unwrap();
    for _ in 0..100 {
        if c.job(id).await.state() == pb::JobState::Completed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the owning node's report did not end job {id}: {:?}",
        c.job(id).await
    );
}

/// Starts a lone secure replica in `dir` with `auth_extra` in its auth.toml; its URL.
async fn lone_replica(dir: &Path, auth_extra: &str) -> (berth_tests::Proc, String, TestCa) {
    let ca = TestCa::of(dir);
    write_auth_toml(&ca.replica_dir(1), auth_extra);
    let accounts = dir.join("accounts.toml");
    std::fs::write(&accounts, ACCOUNTS).unwrap();
    let port = free_port();
    let p = replica(
        dir,
        1,
        &[port],
        &[
            "--accounts",
            accounts.to_str().unwrap(),
            "--http-listen",
            "off",
        ],
    );
    let url = format!("https://127.0.0.1:{port}");
    let mut admin = pb::admin_service_client::AdminServiceClient::new(up(&url, &ca).await);
    // The accounts file is installed once the replica leads.
    for _ in 0..100 {
        let now = admin.get_accounts(pb::AccountsRequest {}).await.unwrap();
        if now.get_ref().toml.contains("science") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (p, url, ca)
}

async fn list_with(url: &str, p: &Profile) -> Result<usize, String> {
    let ch = berth_auth::channel::connect(url, Some(p)).await?;
    pb::job_service_client::JobServiceClient::new(ch)
        .list(pb::ListJobsRequest::default())
        .await
        .map(|r| r.into_inner().jobs.len())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_verify_through_a_key_rotation_and_bad_ones_are_refused() {
    use berth_auth::test_idp::{unsigned, TestIdp, TestKey};
    let (k1, k2, stranger) = (TestKey::rsa("k1"), TestKey::ec("k2"), TestKey::rsa("k1"));
    let idp = TestIdp::start(&[&k1]).await;
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "[jwt]\noidc_issuer = \"{}\"\naudience = \"berth\"\ngroups_claim = \"groups\"\noidc_refetch_secs = 1\n",
        idp.issuer
    );
    let (_berthd, url, ca) = lone_replica(tmp.path(), &extra).await;
    let as_token = |t: String| Profile {
        ca: Some(ca.ca.join("ca.pem")),
        token: Some(t),
        ..Default::default()
    };
    // A Keycloak-style token for daemon, signed with the issuer's key: berthd fetches the
    // keys, proves daemon, and records the identity on what daemon submits.
    let t1 = k1.sign(&idp.claims("daemon", 300));
    let _agent = fake_agent(&url, &ca, "n1", "n1").await.unwrap();
    let ch = berth_auth::channel::connect(&url, Some(&as_token(t1.clone())))
        .await
        .unwrap();
    let mut jobs = pb::job_service_client::JobServiceClient::new(ch);
    let id = jobs
        .submit(pb::SubmitRequest {
            spec: Some(spec("science")),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let job = jobs
        .get(pb::GetJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner();
    let proven = job.spec.unwrap().identity.unwrap();
    assert_eq!(
        (proven.user.as_str(), proven.method.as_str()),
        ("daemon", "jwt")
    );
    assert!(
        proven.groups.contains(&"gpu-users".to_string()),
        "{proven:?}"
    );
    assert_eq!(idp.jwks_fetches(), 1);
    for _ in 0..3 {
        list_with(&url, &as_token(t1.clone())).await.unwrap();
    }
    assert_eq!(idp.jwks_fetches(), 1, "keys are cached");
    // The issuer rotates to k2: a k2 token makes berthd fetch again, and is accepted.
    idp.publish(&[&k2]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    list_with(&url, &as_token(k2.sign(&idp.claims("daemon", 300))))
        .await
        .unwrap();
    assert_eq!(idp.jwks_fetches(), 2);
    // Bad tokens: each refused as unauthenticated with its reason.
    let mut wrong_aud = idp.claims("daemon", 300);
    wrong_aud["aud"] = "someone-else".into();
    let mut wrong_iss = idp.claims("daemon", 300);
    wrong_iss["iss"] = "https://evil.example/realms/test".into();
    let cases = [
        (k2.sign(&idp.claims("daemon", -600)), "expired"),
        (k2.sign(&wrong_aud), "wrong audience"),
        (k2.sign(&wrong_iss), "wrong issuer"),
        (unsigned(&idp.claims("daemon", 300)), "malformed"),
        // Retired with the rotation, and a stranger's key under a published kid.
        (t1.clone(), "no key with kid"),
        (
            stranger.sign_as(
                Some("k2"),
                berth_auth::jwt::TokenAlgorithm::RS256,
                &idp.claims("daemon", 300),
            ),
            "token",
        ),
        (
            k2.sign(&idp.claims("no-such-user-here", 300)),
            "no account on this berthd host",
        ),
        ("garbage".to_string(), "malformed"),
    ];
    for (i, (t, want)) in cases.into_iter().enumerate() {
        match list_with(&url, &as_token(t)).await {
            Err(e) if e.starts_with("Unauthenticated") && e.contains(want) => {}
            got => panic!("#{i}: want Unauthenticated with {want:?}, got {got:?}"),
        }
    }
    // Each refusal is in the audit log, as a jwt attempt (written within moments).
    let mut audit = pb::admin_service_client::AdminServiceClient::new(up(&url, &ca).await);
    let mut refused = 0;
    for _ in 0..50 {
        refused = audit
            .query_audit(pb::AuditQuery::default())
            .await
            .unwrap()
            .into_inner()
            .records
            .into_iter()
            .filter(|r| !r.ok && r.auth == "jwt" && r.result.starts_with("Unauthenticated"))
            .count();
        if refused >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused >= 8, "{refused} refusals audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_replaced_on_disk_are_served_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (berthd, url, ca) = lone_replica(tmp.path(), "").await;
    let pid = berthd.0.id();
    // Another cluster's CA: its node certificate is refused here.
    let other = TestCa::of(&tmp.path().join("other"));
    let foreign = berth_tests::connect_with_cert(&url, &other.node_dir("n1")).await;
    let refused = match foreign {
        Err(e) => e,
        Ok(ch) => pb::node_service_client::NodeServiceClient::new(ch)
            .list(pb::ListNodesRequest::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string(),
    };
    assert!(!refused.is_empty());
    let old_ca = Profile {
        ca: Some(ca.ca.join("ca.pem")),
        token: Some(token(&ca, "daemon")),
        ..Default::default()
    };
    list_with(&url, &old_ca).await.unwrap();
    // The replica's certificate and CA are replaced by the other CA's, in place.
    let dir = ca.replica_dir(1);
    let new = other.replica_dir(1);
    for f in ["ca.pem", "tls.pem", "tls.key"] {
        let tmpf = dir.join(format!("{f}.new"));
        std::fs::copy(new.join(f), &tmpf).unwrap();
        std::fs::rename(&tmpf, dir.join(f)).unwrap();
    }
    // Within a few seconds the same process serves the new certificate: clients trusting
    // only the old CA can no longer connect, clients trusting the new one can.
    let new_ca = Profile {
        ca: Some(other.ca.join("ca.pem")),
        token: Some(token(&ca, "daemon")),
        ..Default::default()
    };
    let mut switched = false;
    for _ in 0..100 {
        if list_with(&url, &new_ca).await.is_ok() {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "the new certificate was not served");
    assert!(list_with(&url, &old_ca).await.is_err());
    // Broken files are not taken: the certificate served stays.
    std::fs::write(dir.join("tls.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    list_with(&url, &new_ca).await.unwrap();
    assert_eq!(berthd.0.id(), pid);
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "berthd still runs"
    );
}

/// The audit records replica at `url` returns to admin `man` for `q`.
async fn audit_at(url: &str, ca: &TestCa, q: pb::AuditQuery) -> pb::AuditRecords {
    pb::admin_service_client::AdminServiceClient::new(token_channel(url, ca, "man").await)
        .query_audit(q)
        .await
        .unwrap()
        .into_inner()
}

/// `bin` asks replica `url` for the audit log, which needs role operator: refused, and
/// audited there. The time it was made.
async fn refused_call(url: &str, ca: &TestCa) -> u64 {
    let t = berth_auth::now_ms();
    let e = pb::admin_service_client::AdminServiceClient::new(token_channel(url, ca, "bin").await)
        .query_audit(pb::AuditQuery::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    t
}

async fn leader_of(urls: &[String], ca: &TestCa, skip: Option<u64>) -> u64 {
    for _ in 0..300 {
        for (i, url) in urls.iter().enumerate() {
            if Some(i as u64 + 1) == skip {
                continue;
            }
            let Ok(ch) = berth_auth::channel::connect(
                url,
                Some(&Profile {
                    ca: Some(ca.ca.join("ca.pem")),
                    token: Some(token(ca, "man")),
                    ..Default::default()
                }),
            )
            .await
            else {
                continue;
            };
            if let Ok(s) = pb::admin_service_client::AdminServiceClient::new(ch)
                .get_replica_status(pb::ReplicaStatusRequest {})
                .await
            {
                let l = s.get_ref().leader_id;
                if l != 0 && Some(l) != skip {
                    return l;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader elected");
}

/// Waits until `url`'s merged audit has `n` refusals of bin's; returns them.
async fn bins_refusals(url: &str, ca: &TestCa, n: usize) -> pb::AuditRecords {
    let q = pb::AuditQuery {
        user: "bin".into(),
        failed_only: true,
        ..Default::default()
    };
    let mut got = audit_at(url, ca, q.clone()).await;
    for _ in 0..50 {
        if got.records.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = audit_at(url, ca, q.clone()).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_survive_a_restart_and_a_change_of_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::of(dir);
    for id in 1..=3 {
        write_auth_toml(&ca.replica_dir(id), "");
    }
    let ports = [free_port(), free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let start = |id: u64| replica(dir, id, &ports, &["--http-listen", "off"]);
    let mut procs: Vec<Option<berth_tests::Proc>> = (1..=3).map(|id| Some(start(id))).collect();
    let old = leader_of(&urls, &ca, None).await;
    let old_url = &urls[old as usize - 1];
    let follower = (1..=3).find(|i| *i != old).unwrap();
    // Calls handled by the leader; a follower's query gathers them from it.
    let t1 = refused_call(old_url, &ca).await;
    let t2 = refused_call(old_url, &ca).await;
    let got = bins_refusals(&urls[follower as usize - 1], &ca, 2).await;
    assert!(got.unreachable.is_empty(), "{:?}", got.unreachable);
    let times: Vec<u64> = got.records.iter().map(|r| r.time_ms).collect();
    assert_eq!(got.records.len(), 2, "{:?}", got.records);
    assert!(got
        .records
        .iter()
        .all(|r| r.replica == old && r.method.ends_with("QueryAudit")));
    assert!(times[0] >= t1 && times[1] >= t2, "{times:?} vs {t1} {t2}");
    // The leader dies (kill -9, after its writer synced): another leads. Its records
    // are out of reach while it is down, and the query says so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut dead = procs[old as usize - 1].take().unwrap();
    dead.0.kill().unwrap();
    dead.0.wait().unwrap();
    let new = leader_of(&urls, &ca, Some(old)).await;
    let new_url = &urls[new as usize - 1];
    let t3 = refused_call(new_url, &ca).await;
    let got = bins_refusals(new_url, &ca, 1).await;
    assert_eq!(got.unreachable.len(), 1, "{:?}", got.unreachable);
    assert!(
        got.unreachable[0].contains(&format!("replica {old}")),
        "{:?}",
        got.unreachable
    );
    assert_eq!(got.records.len(), 1);
    assert!(got.records[0].time_ms >= t3 && got.records[0].replica == new);
    // Restarted from its state directory, the old leader still has its records: the new
    // leader's query returns the whole history, in time order.
    procs[old as usize - 1] = Some(start(old));
    let got = bins_refusals(new_url, &ca, 3).await;
    let origin: Vec<u64> = got.records.iter().map(|r| r.replica).collect();
    assert_eq!(
        origin,
        vec![old, old, new],
        "{:?} {:?}",
        got.records,
        got.unreachable
    );
    // The CLI's filters: only bin's refusals since t1, from every replica.
    let servers = urls
        .iter()
        .map(|u| u.trim_start_matches("https://"))
        .collect::<Vec<_>>()
        .join(",");
    ca.trust(&servers);
    let out = tokio::task::block_in_place(|| {
        berth_tests::berth(
            dir,
            &servers,
            &[
                "admin",
                "audit",
                "--user",
                "bin",
                "--failed",
                "--method",
                "QueryAudit",
                "--since",
                "now-600",
            ],
        )
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains("user=bin") && l.contains("PermissionDenied")),
        "{text}"
    );
    // --until before anything happened, and a bad time, are answered plainly.
    let out = tokio::task::block_in_place(|| {
        berth_tests::berth(
            dir,
            &servers,
            &[
                "admin",
                "audit",
                "--since",
                "2020-01-01T00:00:00",
                "--until",
                "2020-01-02T00:00:00",
            ],
        )
    });
    assert!(out.status.success() && out.stdout.is_empty());
    let out = tokio::task::block_in_place(|| {
        berth_tests::berth(dir, &servers, &["admin", "audit", "--until", "yesterday"])
    });
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--until"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `private_data = ["jobs", "usage"]` (Slurm's `PrivateData`), enforced by berthd: another
/// user sees none of daemon's job in listings, lookups, watches, sacct's records or the
/// usage report, while its owner, its account's coordinator and an operator do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_data_hides_other_users_jobs_and_usage_in_berthd() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(tmp.path(), "private_data = [\"jobs\", \"usage\"]\n").await;
    let id = c.users_job().await;
    let acct = |who: Who| {
        pb::accounting_service_client::AccountingServiceClient::new(c.channels[&who].clone())
    };
    for who in [
        Who::User,
        Who::Coordinator,
        Who::Operator,
        Who::Admin,
        Who::OtherUser,
    ] {
        let sees = who != Who::OtherUser;
        let listed = c
            .jobs(who)
            .list(pb::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert_eq!(listed.iter().any(|j| j.id == id), sees, "{who:?} list");
        let mut pages = c
            .jobs(who)
            .list_pages(pb::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut paged = 0;
        while let Some(p) = pages.message().await.unwrap() {
            paged += p.jobs.iter().filter(|j| j.id == id).count();
        }
        assert_eq!(paged == 1, sees, "{who:?} list pages");
        let got = c.jobs(who).get(pb::GetJobRequest { job_id: id }).await;
        assert_eq!(got.is_ok(), sees, "{who:?} get: {got:?}");
        if !sees {
            assert_eq!(got.unwrap_err().code(), tonic::Code::NotFound);
        }
        let mut watch = c
            .jobs(who)
            .watch(pb::WatchRequest { job_ids: vec![id] })
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_millis(500), watch.message()).await;
        assert_eq!(matches!(first, Ok(Ok(Some(_)))), sees, "{who:?} watch");
        let records = acct(who)
            .query(pb::RecordQuery::default())
            .await
            .unwrap()
            .into_inner()
            .records;
        assert_eq!(
            records.iter().any(|r| r.job_id == id),
            sees,
            "{who:?} sacct"
        );
        let usage = acct(who)
            .usage(pb::UsageQuery {
                by: "user".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let daemon_rows = usage.rows.iter().filter(|r| r.key == "daemon").count();
        assert_eq!(daemon_rows > 0, sees, "{who:?} usage: {:?}", usage.rows);
    }
}
