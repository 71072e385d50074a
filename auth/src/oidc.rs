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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves `routes` (path → status, body) over plain HTTP on loopback, as a local IdP
    /// would; returns its base URL.
    async fn idp(routes: Vec<(String, u16, String)>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (code, body) = routes
                        .iter()
                        .find(|(p, _, _)| *p == path)
                        .map(|(_, c, b)| (*c, b.clone()))
                        .unwrap_or((404, "not found".into()));
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        base
    }

    fn jwks_text() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/test-jwks.json"
        ))
        .unwrap()
    }

    /// An IdP at a realm path whose discovery document names `issuer` (None: its own URL)
    /// and whose JWKS answers `jwks`.
    async fn realm(issuer: Option<&str>, jwks: (u16, String)) -> String {
        // The document names the listener's own URL, known only once it is bound.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/realms/hpc", listener.local_addr().unwrap());
        let doc = serde_json::json!({
            "issuer": issuer.unwrap_or(&base),
            "jwks_uri": format!("{base}/protocol/openid-connect/certs"),
        })
        .to_string();
        let routes = vec![
            (
                "/realms/hpc/.well-known/openid-configuration".to_string(),
                200,
                doc,
            ),
            (
                "/realms/hpc/protocol/openid-connect/certs".to_string(),
                jwks.0,
                jwks.1,
            ),
        ];
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (code, body) = routes
                        .iter()
                        .find(|(p, _, _)| *p == path)
                        .map(|(_, c, b)| (*c, b.clone()))
                        .unwrap_or((404, "not found".into()));
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn keys_come_from_the_issuers_discovery_document() {
        let base = realm(None, (200, jwks_text())).await;
        let set = OidcIssuer {
            issuer: base.clone(),
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
        // A token the IdP signed verifies against what was fetched.
        let cfg = crate::jwt::JwtConfig {
            jwks: Some(crate::jwt::SharedJwks::new(set)),
            issuer: Some(base.clone()),
            ..Default::default()
        };
        let t = crate::jwt::tests::signed(
            jsonwebtoken::Algorithm::RS256,
            "test-rsa.pem",
            Some("rsa-1"),
            serde_json::json!({"iss": base, "preferred_username": "alice",
                "exp": crate::now_ms() / 1000 + 60}),
        );
        assert_eq!(cfg.verify(&t).unwrap().user, "alice");
    }

    #[tokio::test]
    async fn bad_issuers_are_refused_with_the_reason() {
        let big = format!(
            "{{\"keys\": [], \"pad\": \"{}\"}}",
            "x".repeat(DOCUMENT_BYTES_MAX)
        );
        let cases = [
            (
                realm(Some("https://evil.example/realms/hpc"), (200, jwks_text())).await,
                "names issuer",
            ),
            (realm(None, (500, "oops".into())).await, "answered 500"),
            (realm(None, (200, "<html>".into())).await, "not a JWKS"),
            (
                realm(None, (200, "{\"keys\": []}".into())).await,
                "no RSA or EC key",
            ),
            (realm(None, (200, big)).await, "at most"),
            (idp(vec![]).await, "answered 404"),
            (
                "http://sso.example/realms/hpc".to_string(),
                "only accepted on loopback",
            ),
            ("ftp://127.0.0.1/x".to_string(), "not an http(s) URL"),
            ("http://127.0.0.1:1".to_string(), "connect"),
        ];
        for (i, (issuer, want)) in cases.into_iter().enumerate() {
            match (OidcIssuer { issuer, ca: None }).fetch_keys().await {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
    }
}
