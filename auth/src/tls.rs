//! TLS for berth's connections (rustls with the ring provider): the server side with
//! certificate reload, the client side for tonic channels, and what a peer's certificate
//! makes it ([`peer_subject`]).
//!
//! Servers ask for a client certificate and verify any that is presented against the
//! cluster CA; presenting none is allowed at the TLS layer, because users prove
//! themselves with a local credential or a JWT instead. The services that only daemons
//! may call (the agent stream, Raft) demand a certificate of the right kind.
//!
//! Reload: [`ReloadingTls`] rereads the CA, certificate and key when their modification
//! times change (checked every second) and new connections get them; a bad new file is
//! logged and the old configuration kept.

use crate::ca::{Subject, CA_CERT, CERT, KEY};
use crate::{file_err, AuthError};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// The three files of a TLS holder.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate(s), PEM.
    pub ca: PathBuf,
    /// Own certificate chain, PEM.
    pub cert: PathBuf,
    /// Own private key, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `tls.pem`, `tls.key` in `dir` (as `berth admin ca issue` writes them).
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join(CA_CERT),
            cert: dir.join(CERT),
            key: dir.join(KEY),
        }
    }

    fn stamps(&self) -> [Option<SystemTime>; 3] {
        [&self.ca, &self.cert, &self.key]
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates in a PEM file.
///
/// # Errors
/// [`AuthError::File`] when unreadable or holding none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, AuthError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, AuthError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| file_err(ca, e))?;
    }
    Ok(Arc::new(roots))
}

/// Which protocol a listener speaks, offered to clients by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The HTTP endpoint (extender, metrics): HTTP/1.1 only. Offering h2 there would make
    /// Go clients (kube-scheduler, Prometheus) pick a protocol the endpoint does not speak.
    Http1,
}

/// A server configuration from `files`, offering the protocol of `alpn`.
///
/// # Errors
/// [`AuthError::File`] / [`AuthError::Tls`].
pub fn server_config(files: &TlsFiles, alpn: Alpn) -> Result<Arc<ServerConfig>, AuthError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| AuthError::Tls(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| AuthError::Tls(format!("{}: {e}", files.cert.display())))?;
    cfg.alpn_protocols = match alpn {
        Alpn::Grpc => vec![b"h2".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(cfg))
}

/// A rustls client configuration trusting `ca`, presenting `identity` (cert, key) if given.
///
/// # Errors
/// [`AuthError::File`] / [`AuthError::Tls`].
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, AuthError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| AuthError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A tonic client TLS configuration (trusting `ca`, presenting `identity` if given).
///
/// # Errors
/// [`AuthError::File`] when a file cannot be read.
pub fn tonic_client(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, AuthError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| file_err(p, e));
    let mut cfg = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        cfg = cfg.identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        ));
    }
    Ok(cfg)
}

/// The configurations of both listeners, loaded together from the same files.
#[derive(Clone)]
struct Loaded {
    grpc: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
}

impl Loaded {
    fn from(files: &TlsFiles) -> Result<Loaded, AuthError> {
        Ok(Loaded {
            grpc: server_config(files, Alpn::Grpc)?,
            http1: server_config(files, Alpn::Http1)?,
        })
    }
}

/// Server TLS that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<(Loaded, [Option<SystemTime>; 3])>,
}

impl ReloadingTls {
    /// Loads `files` once.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn new(files: TlsFiles) -> Result<Arc<ReloadingTls>, AuthError> {
        let cfg = Loaded::from(&files)?;
        let stamps = files.stamps();
        Ok(Arc::new(ReloadingTls {
            files,
            current: RwLock::new((cfg, stamps)),
        }))
    }

    /// The configuration for the next connection speaking `alpn`.
    pub fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        match alpn {
            Alpn::Grpc => current.0.grpc.clone(),
            Alpn::Http1 => current.0.http1.clone(),
        }
    }

    /// Reloads when a file changed; true when a new configuration was taken. A file that
    /// does not load keeps the old configuration (and is logged).
    pub fn reload_if_changed(&self) -> bool {
        let stamps = self.files.stamps();
        if stamps == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return false;
        }
        match Loaded::from(&self.files) {
            Ok(cfg) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (cfg, stamps);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!("TLS files changed but do not load (keeping the old ones): {e}");
                self.current.write().unwrap_or_else(|e| e.into_inner()).1 = stamps;
                false
            }
        }
    }

    /// Checks the files every second until `shutdown`.
    pub fn watch(self: &Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = tick.tick() => { me.reload_if_changed(); }
                }
            }
        });
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections of `listener`, TLS-handshaken with the current configuration for
/// `alpn`. Handshakes run in their own tasks, so a slow or hostile client never holds up
/// others; failed ones are logged at debug level and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    alpn: Alpn,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    incoming_with(listener, move || tls.config(alpn))
}

/// [`incoming`] with the configuration `config` gives for each connection.
pub fn incoming_with(
    listener: TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config());
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let tx = conn_tx;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake refused: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A fresh self-signed certificate naming `ip` (PEM) and a server configuration offering
/// it over h2, for srun's step I/O listener: the certificate travels to the agents inside
/// the step, over berthd's authenticated channels, and each agent trusts exactly it
/// ([`pinned_client`]), so task output is encrypted to the srun that asked for it.
///
/// # Errors
/// [`AuthError::Tls`] when the key or certificate cannot be made.
pub fn ephemeral_server(ip: std::net::IpAddr) -> Result<(String, Arc<ServerConfig>), AuthError> {
    let tls = |e: &dyn std::fmt::Display| AuthError::Tls(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(|e| tls(&e))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth srun step I/O");
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
    let cert = params.self_signed(&key).map_err(|e| tls(&e))?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((cert.pem(), Arc::new(cfg)))
}

/// A client configuration trusting only the certificate `pem` (one [`ephemeral_server`]
/// made), speaking h2.
///
/// # Errors
/// [`AuthError::Tls`] when `pem` holds no certificate.
pub fn pinned_client(pem: &str) -> Result<Arc<ClientConfig>, AuthError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let c = c.map_err(|e| AuthError::Tls(format!("pinned certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| AuthError::Tls(format!("pinned certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(AuthError::Tls("pinned certificate: none in the PEM".into()));
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// What a (CA-verified) peer certificate names: its `berth://` URI SAN.
pub fn peer_subject(der: &[u8]) -> Option<Subject> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Subject::from_uri(u),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_subject_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        crate::ca::init(&ca, "t", 1).unwrap();
        let out = dir.path().join("r1");
        let subject = Subject::Replica(1);
        crate::ca::issue(&ca, &subject, &["127.0.0.1".into()], &out, 1).unwrap();
        let files = TlsFiles::in_dir(&out);
        let certs = load_certs(&files.cert).unwrap();
        assert_eq!(peer_subject(&certs[0]), Some(subject));
        let tls = ReloadingTls::new(files).unwrap();
        assert!(!tls.reload_if_changed());
        assert!(load_certs(&dir.path().join("none.pem")).is_err());
    }

    /// A client pinned to one ephemeral certificate completes a handshake with its server
    /// and with no other (another srun's, or a cluster certificate).
    #[tokio::test]
    async fn a_pinned_client_trusts_exactly_its_ephemeral_server() {
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let (pem, server) = ephemeral_server(ip).unwrap();
        let (other_pem, other) = ephemeral_server(ip).unwrap();
        assert_ne!(pem, other_pem, "each srun makes its own");
        let handshake = |server: Arc<ServerConfig>, pem: String| async move {
            let listener = TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio_rustls::TlsAcceptor::from(server)
                    .accept(tcp)
                    .await
                    .is_ok()
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::IpAddress(ip.into());
            let client = tokio_rustls::TlsConnector::from(pinned_client(&pem).unwrap())
                .connect(name, tcp)
                .await;
            let _ = accept.await;
            client.map(|_| ()).map_err(|e| e.to_string())
        };
        handshake(server.clone(), pem.clone()).await.unwrap();
        let err = handshake(other, pem.clone()).await.unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        assert!(pinned_client("not a pem").is_err());
    }
}
