//! Public keys from an OIDC issuer (Keycloak, Dex, Okta…): its discovery document
//! (`<issuer>/.well-known/openid-configuration`) names `jwks_uri`, whose JWKS holds the
//! keys RS256/ES256 tokens are signed with.
//!
//! Fetching is one HTTP/1.1 GET per document over rustls, bounded in size and time. The
//! issuer must be `https://` — except on a loopback host, where plain `http://` serves
//! tests and a local development IdP. The discovery document's `issuer` must equal the
//! configured issuer exactly (OpenID Connect Discovery §4.3), so a document served for
//! another issuer is refused rather than trusted.

use crate::AuthError;
use http_body_util::{BodyExt as _, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Largest discovery document or JWKS accepted.
pub const DOCUMENT_BYTES_MAX: usize = 1 << 20;
/// How long one fetch (connect, TLS, request, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to fetch keys from.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// The issuer URL, as tokens carry it in `iss`.
    pub issuer: String,
    /// CA to trust for the issuer's HTTPS certificate; `None`: the system's roots.
    pub ca: Option<std::path::PathBuf>,
}

impl OidcIssuer {
    /// Fetches the discovery document, then the JWKS it names, and checks both.
    ///
    /// # Errors
    /// [`AuthError::Oidc`] naming the URL and what was wrong (unreachable, not 200, too
    /// large, not JSON, another issuer, no usable key).
    pub async fn fetch_keys(&self) -> Result<JwkSet, AuthError> {
        let issuer = self.issuer.trim_end_matches('/');
        let discovery_url = format!("{issuer}/.well-known/openid-configuration");
        let doc: serde_json::Value = serde_json::from_slice(&self.get(&discovery_url).await?)
            .map_err(|e| oidc(&discovery_url, format!("not JSON: {e}")))?;
        let named = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or("");
        if named != self.issuer {
            return Err(oidc(
                &discovery_url,
                format!("names issuer {named:?}, configured {:?}", self.issuer),
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| oidc(&discovery_url, "no jwks_uri"))?
            .to_string();
        let set: JwkSet = serde_json::from_slice(&self.get(&jwks_uri).await?)
            .map_err(|e| oidc(&jwks_uri, format!("not a JWKS: {e}")))?;
        usable(&set).map_err(|d| oidc(&jwks_uri, d))?;
        Ok(set)
    }

    /// The body of a 200 answer to `GET url`.
    async fn get(&self, url: &str) -> Result<Vec<u8>, AuthError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get_inner(url))
            .await
            .map_err(|_| oidc(url, format!("no answer within {FETCH_TIMEOUT:?}")))?
    }

    async fn get_inner(&self, url: &str) -> Result<Vec<u8>, AuthError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| oidc(url, format!("bad URL: {e}")))?;
        let host = uri.host().ok_or_else(|| oidc(url, "no host"))?.to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if is_loopback(&host) => false,
            Some("http") => return Err(oidc(url, "plain http is only accepted on loopback")),
            _ => return Err(oidc(url, "not an http(s) URL")),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((addr_host, port))
            .await
            .map_err(|e| oidc(url, format!("connect: {e}")))?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = http::Request::get(path)
            .header(
                http::header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or(&host),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(bytes_empty()))
            .map_err(|e| oidc(url, e))?;
        if https {
            let tls = tokio_rustls::TlsConnector::from(self.client_tls()?);
            let name = rustls_pki_types::ServerName::try_from(addr_host.to_string())
                .map_err(|e| oidc(url, format!("server name: {e}")))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| oidc(url, format!("TLS: {e}")))?;
            send(url, hyper_util::rt::TokioIo::new(stream), req).await
        } else {
            send(url, hyper_util::rt::TokioIo::new(tcp), req).await
        }
    }

    fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>, AuthError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for c in crate::tls::load_certs(ca)? {
                    roots
                        .add(c)
                        .map_err(|e| crate::file_err(ca, format!("not a CA certificate: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c); // one odd system certificate must not stop the rest
                }
                if roots.is_empty() {
                    return Err(AuthError::Tls(
                        "no system CA certificates to check the OIDC issuer with (set jwt.oidc_ca)"
                            .into(),
                    ));
                }
            }
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

/// Shortest time between two JWKS fetches: tokens naming unknown kids, however many,
/// cost the issuer at most one request per interval.
pub const REFETCH_MIN: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again before the next token is judged (a key the
/// issuer withdrew stops verifying within this long).
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// An issuer's keys, cached: fetched when a token first needs them, again when a token
/// names a kid they lack (the issuer rotated its keys) or they are older than
/// [`KEYS_MAX_AGE`], never more often than [`REFETCH_MIN`].
pub struct OidcKeys {
    issuer: OidcIssuer,
    jwks: crate::jwt::SharedJwks,
    /// Shortest time between fetches ([`REFETCH_MIN`] unless a test says otherwise).
    pub refetch_min: Duration,
    times: std::sync::Mutex<FetchTimes>,
    /// One fetch at a time; callers arriving meanwhile find its result.
    gate: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct FetchTimes {
    tried: Option<std::time::Instant>,
    fetched: Option<std::time::Instant>,
}

impl std::fmt::Debug for OidcKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcKeys")
            .field("issuer", &self.issuer.issuer)
            .field("keys", &self.jwks.len())
            .finish()
    }
}

impl OidcKeys {
    /// Keys of `issuer`, none fetched yet.
    pub fn new(issuer: OidcIssuer) -> OidcKeys {
        OidcKeys {
            issuer,
            jwks: crate::jwt::SharedJwks::default(),
            refetch_min: REFETCH_MIN,
            times: std::sync::Mutex::new(FetchTimes::default()),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// The key set a [`crate::jwt::JwtConfig`] verifies with (replaced by each fetch).
    pub fn jwks(&self) -> crate::jwt::SharedJwks {
        self.jwks.clone()
    }

    fn times(&self) -> std::sync::MutexGuard<'_, FetchTimes> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cached keys can judge `token` without a fetch.
    fn fresh_for(&self, kid: Option<&str>) -> bool {
        let young = self
            .times()
            .fetched
            .is_some_and(|t| t.elapsed() < KEYS_MAX_AGE);
        young && self.jwks.find(kid).is_some()
    }

    /// Makes sure the cache holds what `token` needs, fetching if it may (see the type
    /// doc). A token that is not RS256/ES256, or does not parse, needs nothing: its
    /// verification says what is wrong with it.
    ///
    /// # Errors
    /// The fetch's [`AuthError::Oidc`]; the keys held before stay.
    pub async fn keys_for(&self, token: &str) -> Result<(), AuthError> {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(());
        };
        if !matches!(
            header.alg,
            jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::ES256
        ) {
            return Ok(());
        }
        let kid = header.kid.as_deref();
        if self.fresh_for(kid) {
            return Ok(());
        }
        // Keys that are only old still judge the token: while another caller refreshes
        // them (the issuer may be slow or down), do not wait for it. A kid the cache
        // lacks waits for the fetch in flight, which may bring it.
        let _one = match self.jwks.find(kid).is_some() {
            true => match self.gate.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(()),
            },
            false => self.gate.lock().await,
        };
        if self.fresh_for(kid) {
            return Ok(()); // fetched while this caller waited
        }
        if self
            .times()
            .tried
            .is_some_and(|t| t.elapsed() < self.refetch_min)
        {
            return Ok(()); // the kid stays unknown until the next allowed fetch
        }
        self.times().tried = Some(std::time::Instant::now());
        match self.issuer.fetch_keys().await {
            Ok(set) => {
                tracing::info!(
                    issuer = self.issuer.issuer,
                    keys = set.keys.len(),
                    "OIDC keys fetched"
                );
                self.jwks.replace(set);
                self.times().fetched = Some(std::time::Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!("{e}");
                Err(e)
            }
        }
    }
}

fn bytes_empty() -> hyper::body::Bytes {
    hyper::body::Bytes::new()
}

async fn send<IO>(
    url: &str,
    io: IO,
    req: http::Request<Full<hyper::body::Bytes>>,
) -> Result<Vec<u8>, AuthError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| oidc(url, format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| oidc(url, format!("HTTP: {e}")))?;
    if resp.status() != http::StatusCode::OK {
        return Err(oidc(url, format!("answered {}", resp.status())));
    }
    let body = Limited::new(resp.into_body(), DOCUMENT_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| {
            oidc(
                url,
                format!("body (at most {DOCUMENT_BYTES_MAX} bytes): {e}"),
            )
        })?;
    Ok(body.to_bytes().to_vec())
}

/// Refuses a key set that could verify no token: empty, or without an RSA or EC key.
///
/// # Errors
/// What is missing.
pub fn usable(set: &JwkSet) -> Result<(), String> {
    let n = set
        .keys
        .iter()
        .filter(|k| {
            matches!(
                k.algorithm,
                AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
            )
        })
        .count();
    if n == 0 {
        return Err(format!(
            "no RSA or EC key among its {} keys (RS256/ES256 need one)",
            set.keys.len()
        ));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn oidc(url: &str, detail: impl std::fmt::Display) -> AuthError {
    AuthError::Oidc {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

/// Reads a JWKS file and checks it holds a usable key.
///
/// # Errors
/// [`AuthError::File`] when unreadable, not a JWKS, or without an RSA/EC key.
pub fn load_jwks_file(path: &Path) -> Result<JwkSet, AuthError> {
    let set = crate::jwt::load_jwks(path)?;
    usable(&set).map_err(|d| crate::file_err(path, d))?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_idp::{TestIdp, TestKey};

    fn keys_of(issuer: &str) -> OidcKeys {
        OidcKeys::new(OidcIssuer {
            issuer: issuer.into(),
            ca: None,
        })
    }

    fn config(keys: &OidcKeys, issuer: &str) -> crate::jwt::JwtConfig {
        crate::jwt::JwtConfig {
            jwks: Some(keys.jwks()),
            issuer: Some(issuer.into()),
            audience: Some("berth".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keys_come_from_the_issuers_discovery_document() {
        let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
        let idp = TestIdp::start(&[&rsa, &ec]).await;
        let set = OidcIssuer {
            issuer: idp.issuer.clone(),
            ca: None,
        }
        .fetch_keys()
        .await
        .unwrap();
        let kids: Vec<_> = set
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(kids, vec!["rsa-1", "ec-1"]);
    }

    #[tokio::test]
    async fn keys_are_cached_and_fetched_again_for_an_unknown_kid() {
        let (k1, k2, stranger) = (TestKey::rsa("k1"), TestKey::ec("k2"), TestKey::ec("x"));
        let idp = TestIdp::start(&[&k1]).await;
        let mut keys = keys_of(&idp.issuer);
        keys.refetch_min = Duration::from_millis(300);
        let cfg = config(&keys, &idp.issuer);
        let t1 = k1.sign(&idp.claims("alice", 300));
        // Nothing is fetched until a token needs it; then once for many tokens.
        assert_eq!(idp.jwks_fetches(), 0);
        for _ in 0..5 {
            keys.keys_for(&t1).await.unwrap();
            assert_eq!(cfg.verify(&t1).unwrap().user, "alice");
        }
        assert_eq!(idp.jwks_fetches(), 1);
        // The issuer rotates to k2: a k2 token makes the cache fetch again, and verifies.
        idp.publish(&[&k2]);
        tokio::time::sleep(keys.refetch_min).await;
        let t2 = k2.sign(&idp.claims("bob", 300));
        keys.keys_for(&t2).await.unwrap();
        assert_eq!(cfg.verify(&t2).unwrap().user, "bob");
        assert_eq!(idp.jwks_fetches(), 2);
        // k1 is gone with the rotation.
        keys.keys_for(&t1).await.unwrap();
        let e = cfg.verify(&t1).unwrap_err().to_string();
        assert!(e.contains("no key with kid Some(\"k1\")"), "{e}");
        // A flood of tokens with a kid nobody publishes costs the issuer nothing more
        // within the interval, and each is refused.
        let fetched = idp.jwks_fetches();
        let forged = stranger.sign(&idp.claims("mallory", 300));
        for _ in 0..20 {
            keys.keys_for(&forged).await.unwrap();
            assert!(cfg.verify(&forged).is_err());
        }
        assert_eq!(idp.jwks_fetches(), fetched);
        // An issuer failing keeps the keys held before.
        tokio::time::sleep(keys.refetch_min).await;
        idp.serve_jwks(503, "down");
        let e = keys.keys_for(&forged).await.unwrap_err().to_string();
        assert!(e.contains("answered 503"), "{e}");
        assert_eq!(cfg.verify(&t2).unwrap().user, "bob");
        // Tokens that are not RS256/ES256, or no JWT at all, fetch nothing.
        let before = idp.jwks_fetches();
        tokio::time::sleep(keys.refetch_min).await;
        keys.keys_for("garbage").await.unwrap();
        keys.keys_for(&crate::test_idp::unsigned(&idp.claims("eve", 300)))
            .await
            .unwrap();
        assert_eq!(idp.jwks_fetches(), before);
    }

    #[tokio::test]
    async fn bad_issuers_are_refused_with_the_reason() {
        let k = TestKey::rsa("rsa-1");
        let big = format!(
            "{{\"keys\": [], \"pad\": \"{}\"}}",
            "x".repeat(DOCUMENT_BYTES_MAX)
        );
        let mut cases: Vec<(String, &str)> = Vec::new();
        let other = TestIdp::start(&[&k]).await;
        other.claim_issuer("https://evil.example/realms/hpc");
        cases.push((other.issuer.clone(), "names issuer"));
        for (status, body, want) in [
            (500, "oops".to_string(), "answered 500"),
            (200, "<html>".into(), "not a JWKS"),
            (200, "{\"keys\": []}".into(), "no RSA or EC key"),
            (200, big, "at most"),
        ] {
            let idp = TestIdp::start(&[&k]).await;
            idp.serve_jwks(status, &body);
            cases.push((idp.issuer.clone(), want));
        }
        let idp = TestIdp::start(&[&k]).await;
        cases.push((format!("{}/elsewhere", idp.issuer), "answered 404"));
        cases.push((
            "http://sso.example/realms/hpc".into(),
            "only accepted on loopback",
        ));
        cases.push(("ftp://127.0.0.1/x".into(), "not an http(s) URL"));
        cases.push(("http://127.0.0.1:1".into(), "connect"));
        for (i, (issuer, want)) in cases.into_iter().enumerate() {
            match (OidcIssuer { issuer, ca: None }).fetch_keys().await {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
    }
}
