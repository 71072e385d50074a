//! Proven identity for berth: who is calling, checked by berthd and again by the agent
//! that starts the job.
//!
//! On cluster hosts a local daemon (`credd`, run by berth-agent or `berth credd`) reads a
//! caller's uid/gid from its unix socket (`SO_PEERCRED`) and signs a short-lived,
//! single-use credential with the cluster key, which berthd verifies (munge's design).
//! From elsewhere a JWT proves the user (HS256 issued by `berth token`, or RS256/ES256
//! from an OIDC provider's keys). berthd seals the proven identity onto each job with the
//! cluster key, and the agent refuses a launch whose seal does not verify. Daemons prove
//! themselves with certificates from the cluster CA over mutually authenticated TLS.
//!
//! # Layout
//! - [`key`]: the cluster key shared by berth's daemons (HMAC-SHA256).
//! - [`credential`]: the local credential: sign, parse, verify, replay cache.
//! - [`credd`]: the credential daemon on a unix socket, and fetching a credential from it.
//! - [`seal`]: launch seals: the identity and what runs, sealed at submit, verified at launch.
//! - [`env_policy`]: variables `--export` may not set.
//! - [`jwt`]: issuing and verifying JWTs; claims mapped to a user and groups.
//! - [`oidc`]: an OIDC issuer's discovery document and JWKS, fetched and cached.
//! - `test_idp` (tests, feature `test-idp`): generated keys, tokens and an OIDC issuer.
//! - [`ca`]: the cluster CA (`berth admin ca init`, `ca issue`).
//! - [`tls`]: rustls configuration, certificate reload, peer roles from certificates.
//! - [`channel`]: the client side: TLS channel plus the proof attached to every call.
//! - [`profile`]: where a client finds the CA and its proof (env, dev profiles, /etc/berth).

pub mod ca;
pub mod channel;
pub mod credd;
pub mod credential;
pub mod env_policy;
pub mod jwt;
pub mod key;
pub mod oidc;
pub mod profile;
pub mod seal;
#[cfg(any(test, feature = "test-idp"))]
pub mod test_idp;
pub mod tls;

/// Metadata key carrying the proof of a call (`Berth <credential>` or `Bearer <jwt>`).
pub const AUTHORIZATION: &str = "authorization";

/// Metadata key with which a replica forwarding a write to the leader names the caller it
/// already proved (accepted only from a peer holding a replica certificate).
pub const FORWARDED_IDENTITY: &str = "berth-forwarded-identity";

/// Why a proof, a key, a certificate or a seal was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key, certificate or configuration file is unusable.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Not a well-formed credential or token.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// "credential", "token"…
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The signature does not verify: forged, altered, or signed with another key.
    #[error("{0} signature does not verify (forged, altered, or made with another key)")]
    BadSignature(&'static str),
    /// Past its expiry.
    #[error("{what} expired {ago_secs} s ago")]
    Expired {
        /// "credential" or "token".
        what: &'static str,
        /// How long ago.
        ago_secs: u64,
    },
    /// Issued in the future beyond the allowed clock skew.
    #[error("{0} issued in the future (clock skew beyond the allowed 30 s?)")]
    NotYetValid(&'static str),
    /// A single-use credential seen before.
    #[error("credential replayed (each local credential is accepted once)")]
    Replayed,
    /// A token refused for another reason (issuer, audience, key id, claims).
    #[error("token refused: {0}")]
    Token(String),
    /// A launch whose identity is missing or whose seal does not verify.
    #[error("launch refused: {0}")]
    Launch(String),
    /// The credential daemon could not be reached or answered nonsense.
    #[error("credential daemon {path}: {detail}")]
    Credd {
        /// Its socket.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// An OIDC issuer's discovery document or JWKS could not be fetched or used.
    #[error("OIDC {url}: {detail}")]
    Oidc {
        /// What was fetched.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Making or reading a certificate failed.
    #[error("certificate: {0}")]
    Cert(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn file_err(path: &std::path::Path, detail: impl std::fmt::Display) -> AuthError {
    AuthError::File {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}
