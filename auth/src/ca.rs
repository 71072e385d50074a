//! The cluster CA: `berth admin ca init DIR` makes the CA (ECDSA P-256), the cluster key
//! and berthd's JWT key; `berth admin ca issue --node N` (or `--replica ID`, `--user U`,
//! `--service S`) signs a certificate whose name berth reads back from a URI SAN,
//! `berth://node/N`, and writes a directory ready to copy to that host.
//!
//! What a certificate names is what its holder may be: an agent's names its node (it can
//! register and report as that node only), a replica's its Raft id, a user's a user.

use crate::{file_err, AuthError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The CA certificate (public; every host has it).
pub const CA_CERT: &str = "ca.pem";
/// The CA private key (the admin host only).
pub const CA_KEY: &str = "ca.key";
/// The cluster key (daemons only).
pub const CLUSTER_KEY: &str = "cluster.key";
/// berthd's HS256 key for `berth token` (replicas only).
pub const JWT_KEY: &str = "jwt.key";
/// A holder's certificate and key.
pub const CERT: &str = "tls.pem";
/// The key of [`CERT`].
pub const KEY: &str = "tls.key";

/// Whom a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A node's agent.
    Node(String),
    /// A berthd replica (its Raft id).
    Replica(u64),
    /// A user (for clients that present certificates).
    User(String),
    /// Another service (e.g. kube-scheduler calling the extender).
    Service(String),
}

impl Subject {
    /// The URI SAN, `berth://KIND/NAME`.
    pub fn uri(&self) -> String {
        let (kind, name) = self.parts();
        format!("berth://{kind}/{name}")
    }

    fn parts(&self) -> (&'static str, String) {
        match self {
            Subject::Node(n) => ("node", n.clone()),
            Subject::Replica(id) => ("replica", id.to_string()),
            Subject::User(u) => ("user", u.clone()),
            Subject::Service(s) => ("service", s.clone()),
        }
    }

    /// Reads a URI SAN back.
    pub fn from_uri(uri: &str) -> Option<Subject> {
        let rest = uri.strip_prefix("berth://")?;
        let (kind, name) = rest.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(match kind {
            "node" => Subject::Node(name.into()),
            "replica" => Subject::Replica(name.parse().ok()?),
            "user" => Subject::User(name.into()),
            "service" => Subject::Service(name.into()),
            _ => return None,
        })
    }
}

fn cert_err(e: impl std::fmt::Display) -> AuthError {
    AuthError::Cert(e.to_string())
}

fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<(), AuthError> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| file_err(path, e))?;
    f.write_all(text).map_err(|e| file_err(path, e))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

/// Creates a CA in `dir` (made 0700 if missing): `ca.pem`, `ca.key`, `cluster.key`,
/// `jwt.key`. Refuses a directory that already holds a CA.
///
/// # Errors
/// [`AuthError::File`] / [`AuthError::Cert`].
pub fn init(dir: &Path, name: &str, days: u32) -> Result<(), AuthError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| file_err(dir, e))?;
    if dir.join(CA_KEY).exists() {
        return Err(file_err(&dir.join(CA_KEY), "a CA already exists here"));
    }
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{name} berth cluster CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(cert_err)?;
    write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    crate::key::ClusterKey::write_new(&dir.join(CLUSTER_KEY))?;
    crate::key::write_new_secret(&dir.join(JWT_KEY), &crate::key::random_bytes::<32>())
}

/// Issues a certificate for `subject` signed by the CA in `ca_dir`, valid `days`, with
/// `hosts` (DNS names or IP addresses) as further SANs, into `out` (made 0700): `ca.pem`,
/// `tls.pem`, `tls.key`, plus `cluster.key` for nodes and replicas and `jwt.key` for
/// replicas — everything that host needs. Returns the files written.
///
/// # Errors
/// [`AuthError::File`] when the CA cannot be read, [`AuthError::Cert`] on a bad name.
pub fn issue(
    ca_dir: &Path,
    subject: &Subject,
    hosts: &[String],
    out: &Path,
    days: u32,
) -> Result<Vec<PathBuf>, AuthError> {
    let (_, name) = subject.parts();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        return Err(AuthError::Cert(format!(
            "name {name:?}: letters, digits and ._-@ only"
        )));
    }
    let read =
        |f: &str| std::fs::read_to_string(ca_dir.join(f)).map_err(|e| file_err(&ca_dir.join(f), e));
    let ca_key = KeyPair::from_pem(&read(CA_KEY)?).map_err(cert_err)?;
    let ca_pem = read(CA_CERT)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(cert_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, subject.uri());
    params.distinguished_name = dn;
    let ia5 = |s: String| s.try_into().map_err(cert_err);
    params
        .subject_alt_names
        .push(SanType::URI(ia5(subject.uri())?));
    for h in hosts {
        params
            .subject_alt_names
            .push(match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5(h.clone())?),
            });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| file_err(out, e))?;
    write_file(&out.join(CA_CERT), ca_pem.as_bytes(), 0o644)?;
    write_file(&out.join(CERT), cert.pem().as_bytes(), 0o644)?;
    write_file(&out.join(KEY), key.serialize_pem().as_bytes(), 0o600)?;
    let mut written = vec![out.join(CA_CERT), out.join(CERT), out.join(KEY)];
    let mut copy = |f: &str| -> Result<(), AuthError> {
        let bytes = std::fs::read(ca_dir.join(f)).map_err(|e| file_err(&ca_dir.join(f), e))?;
        write_file(&out.join(f), &bytes, 0o600)?;
        written.push(out.join(f));
        Ok(())
    };
    if matches!(subject, Subject::Node(_) | Subject::Replica(_)) {
        copy(CLUSTER_KEY)?;
    }
    if matches!(subject, Subject::Replica(_)) {
        copy(JWT_KEY)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_bad_uris_are_refused() {
        for s in [
            Subject::Node("gpu001".into()),
            Subject::Replica(3),
            Subject::User("alice".into()),
            Subject::Service("kube-scheduler".into()),
        ] {
            assert_eq!(Subject::from_uri(&s.uri()), Some(s));
        }
        for bad in [
            "berth://node/",
            "berth://node/a/b",
            "https://node/a",
            "berth://replica/x",
            "berth://god/x",
        ] {
            assert_eq!(Subject::from_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn init_then_issue_writes_a_host_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init(&ca, "test", 30).unwrap();
        assert!(init(&ca, "test", 30).is_err(), "never replaces a CA");
        let out = dir.path().join("node1");
        let files = issue(&ca, &Subject::Node("node1".into()), &[], &out, 30).unwrap();
        assert_eq!(files.len(), 4);
        let mode = std::fs::metadata(out.join(KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!out.join(JWT_KEY).exists(), "nodes get no JWT key");
        assert!(issue(&ca, &Subject::Node("a/b".into()), &[], &out, 30).is_err());
    }
}
