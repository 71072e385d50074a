//! The tower layer in front of every gRPC service: prove the caller, rate-limit, check the
//! method's role, run the handler, audit.
//!
//! Order matters: a request is proven before anything else looks at it (so a refusal
//! costs a forger nothing but the audit line), the rate limit counts proven callers by
//! name and unproven ones by address, and only then is the method's role checked.

use super::{Caller, Peer, Role, SecurityConfig};
use crate::audit::AuditLog;
use berth_auth::ca::Subject;
use berth_proto::v1 as pb;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// Where a handler writes what its request was about (see [`super::note`]).
#[derive(Clone, Default)]
pub struct AuditNote(pub Arc<Mutex<String>>);

/// Builds [`SecurityService`]s.
#[derive(Clone)]
pub struct SecurityLayer {
    sec: Option<Arc<SecurityConfig>>,
    audit: Arc<AuditLog>,
}

impl SecurityLayer {
    /// With `sec` (None: insecure) and the replica's audit log.
    pub fn new(sec: Option<Arc<SecurityConfig>>, audit: Arc<AuditLog>) -> SecurityLayer {
        SecurityLayer { sec, audit }
    }
}

impl<S> tower::Layer<S> for SecurityLayer {
    type Service = SecurityService<S>;
    fn layer(&self, inner: S) -> SecurityService<S> {
        SecurityService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module doc.
#[derive(Clone)]
pub struct SecurityService<S> {
    inner: S,
    layer: SecurityLayer,
}

/// Methods that change state (audited every time; reads are audited only when refused).
fn state_changing(path: &str) -> bool {
    matches!(
        path.rsplit('/').next().unwrap_or(""),
        "Submit"
            | "Cancel"
            | "Hold"
            | "Requeue"
            | "UpdateArray"
            | "CreateStep"
            | "CancelStep"
            | "BindPod"
            | "SetAccounts"
            | "ChangeMembership"
            | "ResumeGpu"
            | "IssueToken"
            | "Attach"
            | "SetCluster"
            | "ChangeReservation"
            | "DrainNode"
    )
}

/// What a method asks of its caller before the handler runs.
fn method_check(path: &str, c: &Caller) -> Result<(), Status> {
    let method = path.rsplit('/').next().unwrap_or("");
    match path {
        p if p.starts_with("/berth.v1.AgentService/") => match &c.peer {
            Peer::Node(_) | Peer::Unproven => Ok(()),
            _ => Err(Status::permission_denied(
                "Access/permission denied: the agent stream needs a node certificate \
                 (berth admin ca issue --node NAME)",
            )),
        },
        p if p.starts_with("/berth.v1.RaftService/") => match &c.peer {
            Peer::Replica(_) | Peer::Unproven => Ok(()),
            _ => Err(Status::permission_denied(
                "Access/permission denied: Raft needs a replica certificate",
            )),
        },
        // An agent's device plugin reads the node's pod jobs and GPU health; nothing else.
        "/berth.v1.JobService/List" | "/berth.v1.JobService/Get" | "/berth.v1.NodeService/List"
            if matches!(c.peer, Peer::Node(_)) =>
        {
            Ok(())
        }
        _ if matches!(c.peer, Peer::Node(_)) => Err(Status::permission_denied(
            "Access/permission denied: a node certificate only attaches its agent and reads \
             jobs and nodes",
        )),
        // A replica acts for the callers it forwards (proven by it, named in a header),
        // never as itself: a stolen replica certificate alone is no admin.
        _ if matches!(c.peer, Peer::Replica(_)) => Err(Status::permission_denied(
            "Access/permission denied: a replica certificate only speaks Raft and forwards \
             its callers; this call carries no forwarded caller",
        )),
        _ => {
            let need = match method {
                // SetAccounts: admins, or coordinators within their accounts (the handler
                // judges the change).
                "ChangeMembership" | "SetCluster" => Role::Admin,
                // Slurm: reservations and node states are operators' (and admins').
                "ChangeReservation" | "DrainNode" => Role::Operator,
                "ResumeGpu" | "QueryAudit" | "BindPod" => Role::Operator,
                _ => Role::User,
            };
            c.require(need, method)
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for SecurityService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let path = req.uri().path().to_string();
        let (from, subject) = peer_of(&req);
        Box::pin(async move {
            // An OIDC token may name a key the cache does not hold yet: fetch it first
            // (bounded by the cache's own rate), so verification below judges it.
            if let (Some(keys), Some(token)) = (
                layer.sec.as_ref().and_then(|s| s.oidc.as_ref()),
                bearer(req.headers()).map(String::from),
            ) {
                let _ = keys.keys_for(&token).await; // a failed fetch is logged; verify says why
            }
            let checked = match &layer.sec {
                None => Ok(Caller::unproven(&from)),
                Some(sec) => {
                    authenticate(sec, req.headers(), &from, subject.as_ref()).and_then(|c| {
                        let key = match c.peer {
                            Peer::User => c.identity.user.clone(),
                            _ => format!("{:?}", c.peer),
                        };
                        sec.limits
                            .check(&key, std::time::Instant::now())
                            .map_err(Status::resource_exhausted)?;
                        Ok(c)
                    })
                }
            };
            // A proven caller refused for its role is audited by name; an unproven one by
            // how it tried.
            let checked: Result<Caller, (Option<Box<Caller>>, Status)> = match checked {
                Err(s) => Err((None, s)),
                Ok(c) => match method_check(&path, &c) {
                    Ok(()) => Ok(c),
                    Err(s) => Err((Some(Box::new(c)), s)),
                },
            };
            let caller = match checked {
                Ok(c) => c,
                Err((who, status)) => {
                    let line = match &who {
                        Some(c) => record(&path, c, String::new(), Some(&status)),
                        None => refusal(&path, &from, req.headers(), &status),
                    };
                    layer.audit.record(line);
                    tracing::info!(method = path, from, "refused: {}", status.message());
                    return Ok(status.into_http());
                }
            };
            let note = AuditNote::default();
            req.extensions_mut().insert(caller.clone());
            req.extensions_mut().insert(note.clone());
            let resp = inner.call(req).await?;
            let failed =
                Status::from_header_map(resp.headers()).filter(|s| s.code() != tonic::Code::Ok);
            if state_changing(&path) || failed.is_some() {
                let what = note.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
                layer
                    .audit
                    .record(record(&path, &caller, what, failed.as_ref()));
            }
            Ok(resp)
        })
    }
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(berth_auth::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The peer's address and, for a TLS peer with a CA-verified certificate, what it names.
fn peer_of<B>(req: &http::Request<B>) -> (String, Option<Subject>) {
    let ext = req.extensions();
    if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        let from = tls
            .get_ref()
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let subject = tls
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| berth_auth::tls::peer_subject(c)));
        return (from, subject);
    }
    let from = ext
        .get::<TcpConnectInfo>()
        .and_then(|t| t.remote_addr())
        .map(|a| a.to_string())
        .unwrap_or_default();
    (from, None)
}

/// Proves the caller of one request (see the module doc of [`super`]).
///
/// # Errors
/// `UNAUTHENTICATED` naming what is missing or wrong.
pub fn authenticate(
    sec: &SecurityConfig,
    headers: &http::HeaderMap,
    from: &str,
    subject: Option<&Subject>,
) -> Result<Caller, Status> {
    let unauth = |e: berth_auth::AuthError| Status::unauthenticated(e.to_string());
    if let (Some(Subject::Replica(id)), Some(fwd)) =
        (subject, headers.get(berth_auth::FORWARDED_IDENTITY))
    {
        let identity = decode_forwarded(fwd).ok_or_else(|| {
            Status::unauthenticated("malformed forwarded identity from a replica")
        })?;
        let role = sec.role_of(&identity);
        tracing::trace!(replica = id, user = identity.user, "forwarded call");
        return Ok(Caller {
            identity,
            peer: Peer::User,
            role,
        });
    }
    if let Some(value) = headers.get(berth_auth::AUTHORIZATION) {
        let text = value
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
        let mut identity = if let Some(cred) = text.strip_prefix("Berth ") {
            let now = berth_auth::now_ms();
            let c = berth_auth::credential::verify(cred, &sec.key, now).map_err(unauth)?;
            sec.replay.consume(&c, now).map_err(unauth)?;
            pb::Identity {
                groups: super::group_names(c.gid, &c.gids),
                user: c.user,
                uid: c.uid,
                gid: c.gid,
                gids: c.gids,
                method: "local".into(),
                from: c.host,
            }
        } else if let Some(token) = text.strip_prefix("Bearer ") {
            let t = sec.jwt.verify(token).map_err(unauth)?;
            let mut id = super::resolve_user(&t.user, "jwt", from)
                .map_err(|s| Status::unauthenticated(s.message().to_string()))?;
            id.groups.extend(t.groups);
            id
        } else {
            return Err(Status::unauthenticated(
                "authorization must be `Berth <credential>` or `Bearer <token>`",
            ));
        };
        if identity.user.is_empty() {
            identity.user = identity.uid.to_string();
        }
        let role = sec.role_of(&identity);
        return Ok(Caller {
            identity,
            peer: Peer::User,
            role,
        });
    }
    match subject {
        Some(s) => Ok(cert_caller(sec, s, from)),
        None => Err(Status::unauthenticated(
            "this berthd requires proof of identity: run the command on a cluster host \
             (credential daemon at /run/berth/cred.sock), set BERTH_TOKEN (from `berth token`), \
             or present a certificate from the cluster CA",
        )),
    }
}

/// The caller a CA-verified certificate naming `s` makes (connecting from `from`).
pub fn cert_caller(sec: &SecurityConfig, s: &Subject, from: &str) -> Caller {
    let ident = |user: String| pb::Identity {
        user,
        method: "cert".into(),
        from: from.into(),
        ..Default::default()
    };
    match s {
        Subject::Node(n) => Caller {
            identity: ident(format!("node:{n}")),
            peer: Peer::Node(n.clone()),
            role: Role::User,
        },
        Subject::Replica(id) => Caller {
            identity: ident(format!("replica:{id}")),
            peer: Peer::Replica(*id),
            role: Role::User,
        },
        Subject::Service(name) => Caller {
            identity: ident(format!("service:{name}")),
            peer: Peer::Service(name.clone()),
            role: Role::Operator,
        },
        Subject::User(u) => {
            let identity =
                super::resolve_user(u, "cert", from).unwrap_or_else(|_| ident(u.clone()));
            let role = sec.role_of(&identity);
            Caller {
                identity,
                peer: Peer::User,
                role,
            }
        }
    }
}

/// The header value a replica forwards its caller's identity with.
pub fn encode_forwarded(id: &pb::Identity) -> Option<http::HeaderValue> {
    use base64::Engine as _;
    use prost::Message as _;
    let text = base64::engine::general_purpose::STANDARD.encode(id.encode_to_vec());
    http::HeaderValue::from_str(&text).ok()
}

fn decode_forwarded(v: &http::HeaderValue) -> Option<pb::Identity> {
    use base64::Engine as _;
    use prost::Message as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .ok()?;
    pb::Identity::decode(&bytes[..]).ok()
}

fn record(path: &str, c: &Caller, what: String, failed: Option<&Status>) -> pb::AuditRecord {
    pb::AuditRecord {
        time_ms: berth_auth::now_ms(),
        user: c.identity.user.clone(),
        auth: c.identity.method.clone(),
        from: c.identity.from.clone(),
        method: path.to_string(),
        what,
        result: match failed {
            None => "ok".into(),
            Some(s) => format!("{:?}: {}", s.code(), s.message()),
        },
        ok: failed.is_none(),
        replica: 0, // the log writes its own
    }
}

fn refusal(path: &str, from: &str, headers: &http::HeaderMap, s: &Status) -> pb::AuditRecord {
    let auth = match headers
        .get(berth_auth::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) if t.starts_with("Berth ") => "local",
        Some(t) if t.starts_with("Bearer ") => "jwt",
        Some(_) => "unknown",
        None => "none",
    };
    pb::AuditRecord {
        time_ms: berth_auth::now_ms(),
        user: String::new(),
        auth: auth.into(),
        from: from.into(),
        method: path.into(),
        what: String::new(),
        result: format!("{:?}: {}", s.code(), s.message()),
        ok: false,
        replica: 0, // the log writes its own
    }
}
