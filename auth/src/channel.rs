//! The client side of a secure call: a tonic channel (TLS when the profile names a CA)
//! wrapped in [`AuthChannel`], which attaches the caller's proof to every request — an
//! unspent single-use credential from the credential daemon (fetched a few at a time, see
//! [`crate::credd::CredentialPool`]), or a JWT.

use crate::profile::Profile;
use crate::AuthError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::{Channel, Endpoint};

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub enum Proof {
    /// Nothing (a berthd without security, or a daemon proven by its certificate).
    None,
    /// A credential from the daemon at this socket, one per call.
    Local(Arc<crate::credd::CredentialPool>),
    /// A bearer token.
    Token(String),
}

impl Proof {
    /// The proof `profile` names (a credential daemon wins over a token).
    pub fn of(profile: &Profile) -> Proof {
        match (&profile.cred_socket, &profile.token) {
            (Some(s), _) => Proof::Local(Arc::new(crate::credd::CredentialPool::new(s.clone()))),
            (None, Some(t)) => Proof::Token(t.clone()),
            (None, None) => Proof::None,
        }
    }

    /// The `authorization` value for one call.
    ///
    /// # Errors
    /// [`AuthError::Credd`] when the credential daemon cannot be reached.
    pub async fn header(&self) -> Result<Option<http::HeaderValue>, AuthError> {
        let text = match self {
            Proof::None => return Ok(None),
            Proof::Local(pool) => format!("Berth {}", pool.take().await?),
            Proof::Token(t) => format!("Bearer {t}"),
        };
        http::HeaderValue::from_str(&text)
            .map(Some)
            .map_err(|_| AuthError::Malformed {
                what: "token",
                detail: "not a valid header value".into(),
            })
    }
}

/// A channel that attaches a proof to every call. Cheap to clone (one connection).
#[derive(Clone)]
pub struct AuthChannel {
    inner: Channel,
    proof: Arc<Proof>,
}

impl AuthChannel {
    /// Wraps `inner`, attaching `proof` to each call.
    pub fn new(inner: Channel, proof: Proof) -> AuthChannel {
        AuthChannel {
            inner,
            proof: Arc::new(proof),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for AuthChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is not ready; the ready one goes into the future (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let proof = self.proof.clone();
        Box::pin(async move {
            if let Some(v) = proof.header().await? {
                req.headers_mut().insert(crate::AUTHORIZATION, v);
            }
            tower::Service::call(&mut inner, req)
                .await
                .map_err(Into::into)
        })
    }
}

/// `url` as the profile wants it: `https://` when it names a CA (whatever scheme was
/// written), a scheme added when none was.
pub fn normalize(url: &str, profile: &Profile) -> String {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    if profile.ca.is_some() {
        format!("https://{rest}")
    } else if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{rest}")
    }
}

/// The host:port of `url`.
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// An endpoint for `url` with the profile's TLS (no proof attached: daemons use it with
/// their certificates).
///
/// # Errors
/// A message for a bad URL or unreadable TLS files.
pub fn endpoint(url: &str, profile: &Profile) -> Result<Endpoint, String> {
    let url = normalize(url, profile);
    // TCP_NODELAY: a call's small writes must not wait for the peer's delayed ACK (40 ms
    // on Linux), which is what every short CLI call and heartbeat would otherwise pay.
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("{url}: {e}"))?
        .tcp_nodelay(true);
    if let Some(ca) = &profile.ca {
        let identity = profile.cert.as_deref().zip(profile.key.as_deref());
        let tls = crate::tls::tonic_client(ca, identity).map_err(|e| e.to_string())?;
        ep = ep.tls_config(tls).map_err(|e| format!("{url}: {e}"))?;
    }
    Ok(ep)
}

/// Connects to `url` with `profile` (discovered with [`crate::profile::discover`] when
/// `None`) and its proof.
///
/// # Errors
/// A message naming the server and why it cannot be reached.
pub async fn connect(url: &str, profile: Option<&Profile>) -> Result<AuthChannel, String> {
    let found;
    let profile = match profile {
        Some(p) => p,
        None => {
            found = crate::profile::discover(host_port(url));
            &found
        }
    };
    let ep = endpoint(url, profile)?.connect_timeout(std::time::Duration::from_secs(3));
    let ch = ep.connect().await.map_err(|e| {
        let mut msg = format!("{url}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    })?;
    Ok(AuthChannel::new(ch, Proof::of(profile)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_profile() {
        let tls = Profile {
            ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        let plain = Profile::default();
        assert_eq!(normalize("http://h:1", &tls), "https://h:1");
        assert_eq!(normalize("h:1", &tls), "https://h:1");
        assert_eq!(normalize("h:1", &plain), "http://h:1");
        assert_eq!(normalize("https://h:1", &plain), "https://h:1");
        assert_eq!(host_port("https://127.0.0.1:7700/x"), "127.0.0.1:7700");
    }
}
