//! `berth dev`'s security, on by default: a CA of its own in `<state>/security/ca`, a
//! replica certificate for its listen address, one certificate per simulated node, a
//! credential daemon on `<state>/security/cred.sock`, and a client profile for its address
//! (`~/.config/berth/servers/HOST_PORT.toml`) so `berth` commands in other shells use TLS
//! and prove their uid without any setup. The CA is made once and kept with the state.

use anyhow::Context as _;
use berth_agent::agent::AgentSecurity;
use berth_auth::ca::{self, Subject};
use berth_scheduler::security::SecurityConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `berth dev` runs with.
pub struct DevSecurity {
    /// The replica's.
    pub replica: Arc<SecurityConfig>,
    /// The credential daemon's socket.
    pub cred_socket: PathBuf,
    /// The CA certificate clients trust.
    pub ca_cert: PathBuf,
    dir: PathBuf,
}

/// Days the dev certificates are valid (reissued at every start anyway).
const DAYS: u32 = 365;

/// Makes (or reuses) the CA and issues the replica's certificate for `listen`.
///
/// # Errors
/// When the files cannot be written or read back.
pub fn prepare(state_dir: &Path, listen: &std::net::SocketAddr) -> anyhow::Result<DevSecurity> {
    let dir = state_dir.join("security");
    let ca_dir = dir.join("ca");
    if !ca_dir.join(ca::CA_KEY).exists() {
        ca::init(&ca_dir, "berth dev", 10 * DAYS).context("berth dev: creating its CA")?;
    }
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !listen.ip().is_unspecified() {
        hosts.push(listen.ip().to_string());
    }
    let replica_dir = dir.join("replica1");
    ca::issue(&ca_dir, &Subject::Replica(1), &hosts, &replica_dir, DAYS)
        .context("berth dev: issuing the replica certificate")?;
    let replica = SecurityConfig::load(&replica_dir)
        .map_err(|e| anyhow::anyhow!("berth dev: security configuration: {e}"))?;
    Ok(DevSecurity {
        replica: Arc::new(replica),
        cred_socket: dir.join("cred.sock"),
        ca_cert: ca_dir.join(ca::CA_CERT),
        dir,
    })
}

impl DevSecurity {
    /// The CA directory (to issue more certificates from).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The security of simulated node `name` (its certificate issued now).
    ///
    /// # Errors
    /// When the certificate cannot be issued.
    pub fn node(&self, name: &str) -> anyhow::Result<AgentSecurity> {
        let out = self.dir.join("nodes").join(name);
        ca::issue(
            &self.dir.join("ca"),
            &Subject::Node(name.into()),
            &[],
            &out,
            DAYS,
        )
        .with_context(|| format!("berth dev: issuing {name}'s certificate"))?;
        AgentSecurity::load(&out).map_err(|e| anyhow::anyhow!("{name}: {e}"))
    }

    /// Starts the credential daemon and writes the client profile of `addr`.
    ///
    /// # Errors
    /// When the socket cannot be bound or the profile written.
    pub fn serve_clients(
        &self,
        addr: &std::net::SocketAddr,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<PathBuf> {
        let sock = berth_auth::credd::bind(&self.cred_socket)?;
        tokio::spawn(berth_auth::credd::serve(
            sock,
            self.replica.key.clone(),
            stop,
        ));
        let profile = berth_auth::profile::Profile {
            ca: Some(self.ca_cert.clone()),
            cred_socket: Some(self.cred_socket.clone()),
            ..Default::default()
        };
        berth_auth::profile::save(&addr.to_string(), &profile)
            .context("berth dev: writing the client profile")
    }
}
