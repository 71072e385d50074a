//! berthd's HTTP endpoint (`--http-listen`, default `127.0.0.1:7701`): the kube-scheduler
//! extender verbs (`/filter`, `/prioritize`, `/bind`, `/preempt`) and Prometheus `/metrics`.
//!
//! Kept apart from the gRPC port because kube-scheduler and Prometheus speak plain
//! HTTP/1.1 JSON and text. Every replica serves it; answers come from the replica's applied
//! state. Filter answers request errors with HTTP 200 and `Error` set (its only error
//! channel that reaches pod events); prioritize and preempt have no error field, so a bad request gets
//! HTTP 400 with the reason as text. Bodies over [`BODY_BYTES_MAX`] get 413.
//!
//! On a secure replica the endpoint is HTTPS (the replica's certificate, reloaded with
//! it, HTTP/1.1 by ALPN) and the extender verbs need a client certificate from the
//! cluster CA naming a service (`berth admin ca issue --service kube-scheduler`), a
//! replica, or a user with the operator role; anyone else gets 403 naming that, and an
//! audit line. `/metrics` (counts only, no names) is served to any TLS client, so a
//! Prometheus without a client certificate can scrape it. Every `/bind` is audited.

use crate::extender;
use crate::kube_api::Kube;
use crate::raft_loop::RaftHandle;
use crate::server::Api;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use berth_proto::v1 as pb;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;

/// Largest request body: a full NodeList of a few thousand nodes fits.
pub const BODY_BYTES_MAX: usize = 16 << 20;

/// What the handlers share.
struct Http {
    raft: RaftHandle,
    api: Api,
    /// The API server pods are bound through, or why there is none.
    kube: Result<Kube, String>,
    registry: Registry,
    jobs: IntGaugeVec,
    nodes: IntGaugeVec,
    gpus: IntGaugeVec,
    raft_gauges: IntGaugeVec,
    extender_requests: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

/// The router of berthd's HTTP endpoint over `api`'s replica; pods are bound through
/// `kube`.
pub fn router(api: Api, kube: Result<Kube, String>) -> Router {
    let raft = api.0.raft.clone();
    let registry = Registry::new();
    let extender_requests = IntCounterVec::new(
        Opts::new(
            "berth_extender_requests_total",
            "kube-scheduler extender requests by verb and outcome",
        ),
        &["verb", "outcome"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(extender_requests.clone()))
        .expect("registered once");
    api.0
        .accounting
        .metrics
        .register(&registry)
        .expect("accounting metric names are unique");
    let http = Http {
        jobs: gauge(&registry, "berth_jobs", "Jobs by state", &["state"]),
        nodes: gauge(&registry, "berth_nodes", "Nodes by state", &["state"]),
        gpus: gauge(
            &registry,
            "berth_gpus",
            "GPUs of up nodes, allocated or free",
            &["state"],
        ),
        raft_gauges: gauge(
            &registry,
            "berth_raft",
            "This replica's Raft term, leadership (1 when leader) and applied index",
            &["field"],
        ),
        extender_requests,
        registry,
        raft,
        api,
        kube,
    };
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/bind", post(bind_verb))
        .route("/preempt", post(preempt))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(Arc::new(http))
}

fn json(body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn filter(State(http): State<Arc<Http>>, body: Bytes) -> Response {
    let answer = async {
        let args = extender::parse_args(&body).map_err(|e| e.to_string())?;
        let group = pod_group(&http, args.pod.as_ref().expect("parsed")).await?;
        Ok::<_, String>(extender::filter(&http.raft.state(), &args, group.as_ref()))
    };
    let result = answer
        .await
        .unwrap_or_else(|error| extender::ExtenderFilterResult {
            error,
            ..Default::default()
        });
    let outcome = if result.error.is_empty() {
        "ok"
    } else {
        "error"
    };
    http.extender_requests
        .with_label_values(&["filter", outcome])
        .inc();
    json(&result)
}

async fn prioritize(State(http): State<Arc<Http>>, body: Bytes) -> Response {
    let result = extender::parse_args(&body)
        .and_then(|args| extender::prioritize(&http.raft.state(), &args));
    let outcome = if result.is_ok() { "ok" } else { "error" };
    http.extender_requests
        .with_label_values(&["prioritize", outcome])
        .inc();
    match result {
        Ok(list) => json(&list),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn preempt(State(http): State<Arc<Http>>, body: Bytes) -> Response {
    let result = extender::parse_preemption_args(&body)
        .and_then(|args| extender::preempt(&http.raft.state(), &args));
    let outcome = if result.is_ok() { "ok" } else { "error" };
    http.extender_requests
        .with_label_values(&["preempt", outcome])
        .inc();
    match result {
        Ok(answer) => json(&answer),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn bind_verb(
    State(http): State<Arc<Http>>,
    caller: Option<axum::Extension<crate::security::Caller>>,
    body: Bytes,
) -> Response {
    let caller = caller.map(|c| c.0);
    let error = match bind_pod(&http, &body, caller.as_ref()).await {
        Ok(job_id) => {
            tracing::info!(job_id, "pod bound");
            String::new()
        }
        Err(e) => e,
    };
    let outcome = if error.is_empty() { "ok" } else { "error" };
    http.extender_requests
        .with_label_values(&["bind", outcome])
        .inc();
    if let Some(c) = &caller {
        let what = extender::parse_binding_args(&body)
            .map(|a| format!("pod {}/{} node {}", a.pod_namespace, a.pod_name, a.node))
            .unwrap_or_default();
        http.api.0.audit.record(pb::AuditRecord {
            time_ms: berth_auth::now_ms(),
            user: c.identity.user.clone(),
            auth: c.identity.method.clone(),
            from: c.identity.from.clone(),
            method: "/extender/bind".into(),
            what,
            result: if error.is_empty() {
                "ok".into()
            } else {
                error.clone()
            },
            ok: error.is_empty(),
            replica: 0, // the log writes its own
        });
    }
    json(&extender::ExtenderBindingResult { error })
}

/// The pod's group, read from the API server, when the pod names one.
async fn pod_group(
    http: &Http,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<Option<pb::PodGroupRef>, String> {
    let Some(name) = extender::pod_group_name(pod) else {
        return Ok(None);
    };
    let kube = http
        .kube
        .as_ref()
        .map_err(|e| format!("pod group {name}: {e}"))?;
    kube.pod_group(&name)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Commits the pod's job (the grant), then binds the pod; undoes the grant when
/// Kubernetes refuses.
async fn bind_pod(
    http: &Http,
    body: &[u8],
    caller: Option<&crate::security::Caller>,
) -> Result<u64, String> {
    use berth_proto::v1::job_service_server::JobService as _;
    let args = extender::parse_binding_args(body).map_err(|e| e.to_string())?;
    let kube = http.kube.as_ref().map_err(Clone::clone)?;
    let pod = kube
        .pod(&args.pod_namespace, &args.pod_name)
        .await
        .map_err(|e| e.to_string())?;
    if !args.pod_uid.is_empty() && pod.metadata.uid.as_deref() != Some(args.pod_uid.as_str()) {
        return Err(format!(
            "pod {}/{} has uid {:?}, not {}",
            args.pod_namespace, args.pod_name, pod.metadata.uid, args.pod_uid
        ));
    }
    let partition = http
        .raft
        .state()
        .node(&args.node)
        .and_then(|n| n.inventory.as_ref())
        .map(|i| i.partition.clone())
        .ok_or_else(|| format!("node {} is not managed by berth", args.node))?;
    let group = pod_group(http, &pod).await?;
    let spec = extender::pod_job_spec(&pod, &partition, group).map_err(|e| e.to_string())?;
    let req = pb::BindPodRequest {
        spec: Some(spec),
        node: args.node.clone(),
    };
    let job = http
        .api
        .bind_pod(with_caller(req, caller))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    if let Err(e) = kube.bind(&job).await {
        let cancel = pb::CancelRequest {
            job_id: job.id,
            reason: format!("binding refused: {e}"),
            ..Default::default()
        };
        if let Err(s) = http.api.cancel(with_caller(cancel, caller)).await {
            tracing::error!(
                job = job.id,
                "bind failed and its grant stays: {}",
                s.message()
            );
        }
        return Err(format!("binding pod to {}: {e}", args.node));
    }
    Ok(job.id)
}

/// `msg` as an in-process request made by the HTTP `caller` (an insecure replica has
/// none: the call is unproven, as every call there is).
fn with_caller<T>(msg: T, caller: Option<&crate::security::Caller>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(c) = caller {
        r.extensions_mut().insert(c.clone());
    }
    r
}

async fn metrics(State(http): State<Arc<Http>>) -> Response {
    http.refresh();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&http.registry.gather(), &mut out) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

impl Http {
    /// Sets the state gauges from the applied state (they are computed at scrape time, so
    /// they can never drift from it).
    fn refresh(&self) {
        let sm = self.raft.state();
        self.api.0.accounting.metrics.refresh(&sm);
        self.jobs.reset();
        for job in sm.jobs() {
            let name = job.state().as_str_name().trim_start_matches("JOB_STATE_");
            self.jobs
                .with_label_values(&[name.to_ascii_lowercase().as_str()])
                .inc();
        }
        self.nodes.reset();
        let (mut allocated, mut free) = (0, 0);
        for node in sm.nodes() {
            let up = node.state() == pb::NodeState::Up;
            self.nodes
                .with_label_values(&[if up { "up" } else { "down" }])
                .inc();
            for gpu in node.inventory.iter().flat_map(|i| &i.gpus).filter(|_| up) {
                if gpu.job_id == 0 {
                    free += 1;
                } else {
                    allocated += 1;
                }
            }
        }
        self.gpus.with_label_values(&["allocated"]).set(allocated);
        self.gpus.with_label_values(&["free"]).set(free);
        let applied = sm.applied_index() as i64;
        drop(sm);
        let r = &self.raft_gauges;
        r.with_label_values(&["term"]).set(self.raft.term() as i64);
        r.with_label_values(&["leader"])
            .set(self.raft.is_leader() as i64);
        r.with_label_values(&["applied_index"]).set(applied);
    }
}

/// `--http-listen` when not given.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7701";

/// Binds the HTTP endpoint's address. `None` (the flag not given) tries
/// [`LISTEN_DEFAULT`] and gives up quietly when it is taken, so a second berthd or `berth
/// dev` on one machine still starts; an address given explicitly must bind; `off` serves no
/// HTTP.
///
/// # Errors
/// The bind error of an explicitly given address.
pub async fn bind(flag: Option<&str>) -> std::io::Result<Option<tokio::net::TcpListener>> {
    match flag {
        Some("off") => Ok(None),
        Some(addr) => tokio::net::TcpListener::bind(addr).await.map(Some),
        None => match tokio::net::TcpListener::bind(LISTEN_DEFAULT).await {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                tracing::warn!(
                    "HTTP endpoint (extender, /metrics) off: {LISTEN_DEFAULT}: {e}; \
                     pass --http-listen HOST:PORT"
                );
                Ok(None)
            }
        },
    }
}

/// Serves [`router`] on `listener` until `shutdown` turns true: HTTPS with the extender
/// verbs behind client certificates when `api`'s replica is secure, plain HTTP otherwise.
pub fn spawn(
    listener: tokio::net::TcpListener,
    api: Api,
    kube: Result<Kube, String>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    match api.0.security.clone() {
        None => tokio::spawn(async move {
            axum::serve(crate::wire::http_listener(listener), router(api, kube))
                .with_graceful_shutdown(stopped)
                .await
        }),
        Some(sec) => {
            let guard = Guard {
                sec: sec.clone(),
                audit: api.0.audit.clone(),
            };
            let app = router(api, kube)
                .layer(axum::middleware::from_fn_with_state(guard, guard_extender));
            let local = listener.local_addr();
            let conns =
                berth_auth::tls::incoming(listener, sec.tls.clone(), berth_auth::tls::Alpn::Http1)
                    .into_inner();
            let listener = TlsListener { conns, local };
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<HttpPeer>(),
                )
                .with_graceful_shutdown(stopped)
                .await
            })
        }
    }
}

/// TLS connections, handshaken by [`berth_auth::tls::incoming`], as axum's listener.
struct TlsListener {
    conns: tokio::sync::mpsc::Receiver<std::io::Result<TlsStream>>,
    local: std::io::Result<std::net::SocketAddr>,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (TlsStream, std::net::SocketAddr) {
        loop {
            match self.conns.recv().await {
                Some(Ok(stream)) => match stream.get_ref().0.peer_addr() {
                    Ok(addr) => return (stream, addr),
                    Err(e) => tracing::debug!("HTTPS peer gone: {e}"),
                },
                Some(Err(e)) => tracing::debug!("HTTPS accept: {e}"),
                // The accept task ended (shutdown): nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.local
            .as_ref()
            .map(|a| *a)
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
    }
}

/// Who is at the other end of an HTTPS connection: its address and what its CA-verified
/// certificate, if it presented one, names.
#[derive(Clone, Debug)]
pub struct HttpPeer {
    /// Remote address.
    pub addr: std::net::SocketAddr,
    /// The `berth://` name of its certificate.
    pub subject: Option<berth_auth::ca::Subject>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for HttpPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> HttpPeer {
        let subject = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|c| berth_auth::tls::peer_subject(c));
        HttpPeer {
            addr: *stream.remote_addr(),
            subject,
        }
    }
}

/// What the extender guard needs.
#[derive(Clone)]
struct Guard {
    sec: Arc<crate::security::SecurityConfig>,
    audit: Arc<crate::audit::AuditLog>,
}

/// Lets `/metrics` through; the extender verbs only for a service, a replica or an
/// operator's certificate (the caller is handed to the verb for its audit line).
async fn guard_extender(
    State(g): State<Guard>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::security::{Peer, Role};
    let path = req.uri().path().to_string();
    if path == "/metrics" {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<HttpPeer>>()
        .map(|c| c.0.clone());
    let from = peer
        .as_ref()
        .map(|p| p.addr.to_string())
        .unwrap_or_default();
    let caller = peer
        .and_then(|p| p.subject)
        .map(|s| crate::security::layer::cert_caller(&g.sec, &s, &from));
    let allowed = caller.as_ref().is_some_and(|c| match c.peer {
        Peer::Service(_) | Peer::Replica(_) => true,
        Peer::User => c.role >= Role::Operator,
        Peer::Node(_) | Peer::Unproven => false,
    });
    match caller {
        Some(c) if allowed => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        c => {
            let why = format!(
                "Access/permission denied: extender calls need a client certificate from the \
                 cluster CA naming a service (berth admin ca issue --service NAME), a replica, \
                 or a user with role operator (presented: {})",
                c.map_or("none".to_string(), |c| c.identity.user)
            );
            g.audit.record(pb::AuditRecord {
                time_ms: berth_auth::now_ms(),
                auth: "cert".into(),
                from,
                method: format!("/extender{path}"),
                result: format!("PermissionDenied: {why}"),
                ..Default::default()
            });
            (StatusCode::FORBIDDEN, why).into_response()
        }
    }
}
