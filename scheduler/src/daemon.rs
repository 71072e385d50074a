//! Wires one berthd replica together: the Raft thread, the leader's loops and the gRPC
//! server, all stopped by one shutdown signal (a `watch` flipped to `true`).
//!
//! Used by the `berthd` binary and embedded by `berth dev`. The caller binds the listener,
//! so it knows the address (port 0 picks a free one) before anything runs.

use crate::agents::{dispatch_loop, liveness_loop, AgentRegistry};
use crate::raft_loop::{RaftConfig, RaftHandle, StartError};
use crate::scheduling::{scheduling_loop, PendingReasons};
use crate::server::{Api, Shared, MESSAGE_BYTES_MAX};
use crate::storage::StoreError;
use crate::wire::WireStats;
use berth_proto::v1::{
    admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
    job_service_server::JobServiceServer, node_service_server::NodeServiceServer,
    raft_service_server::RaftServiceServer,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How one replica runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Raft id, state directory, tick and snapshot threshold.
    pub raft: RaftConfig,
    /// Partition for jobs that name none.
    pub default_partition: String,
    /// A node whose agent stays away this long is marked down and its jobs NODE_FAIL.
    pub node_timeout: Duration,
    /// Longest time between two scheduling passes.
    pub schedule_interval: Duration,
    /// An agent stream with no message for this long is closed (agents heartbeat every few
    /// seconds).
    pub agent_silence_max: Duration,
    /// Accounts/QOS configuration (TOML, already validated) to install through the log
    /// when this replica leads and the replicated one differs; `None` keeps the replicated
    /// one.
    pub accounts_toml: Option<String>,
    /// Network tree (topology.conf text, already validated) to install through the log the
    /// same way; `None` keeps the replicated one.
    pub topology_conf: Option<String>,
    /// Cluster description (berth.toml text, already validated) to install through the log
    /// the same way; `None` keeps the replicated one (or none: nodes come from agents).
    pub cluster_toml: Option<String>,
    /// Keys, certificates and roles (TLS on the listener, proven callers, sealed
    /// launches); `None` runs insecure: callers are whoever they claim.
    pub security: Option<Arc<crate::security::SecurityConfig>>,
    /// Where accounting records go (sled in the state directory, or PostgreSQL) and how
    /// long they are kept.
    pub accounting: crate::accounting::AccountingConfig,
}

impl DaemonConfig {
    /// Defaults for a single replica storing in `state_dir`.
    pub fn new(state_dir: std::path::PathBuf) -> DaemonConfig {
        DaemonConfig {
            raft: RaftConfig::new(1, state_dir),
            default_partition: "gpu".into(),
            node_timeout: Duration::from_secs(60),
            schedule_interval: Duration::from_secs(1),
            agent_silence_max: Duration::from_secs(30),
            accounts_toml: None,
            topology_conf: None,
            cluster_toml: None,
            security: None,
            accounting: Default::default(),
        }
    }
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The replica could not start (state directory unusable or corrupt).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The accounting store could not be opened.
    #[error(transparent)]
    Accounting(#[from] crate::accounting::store::StoreError),
    /// The durable store failed while running.
    #[error("raft storage failed: {0}")]
    Store(#[from] StoreError),
    /// The audit log cannot be opened.
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The Raft thread panicked.
    #[error("raft thread panicked")]
    Panicked,
}

/// A running replica.
pub struct Daemon {
    raft: RaftHandle,
    api: Api,
    raft_thread: std::thread::JoinHandle<Result<(), StoreError>>,
    wire: Arc<WireStats>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Daemon {
    /// Opens the state, starts Raft, the leader loops and the gRPC server on `listener`.
    ///
    /// # Errors
    /// [`DaemonError::Start`] when the state directory cannot be used.
    pub fn start(
        cfg: DaemonConfig,
        listener: tokio::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Daemon, DaemonError> {
        std::fs::create_dir_all(&cfg.raft.state_dir).map_err(|e| {
            StartError::Store(StoreError::Corrupt {
                path: cfg.raft.state_dir.display().to_string(),
                detail: format!("cannot create state directory: {e}"),
            })
        })?;
        let audit = Arc::new(
            crate::audit::AuditLog::open(&cfg.raft.state_dir, cfg.raft.id)
                .map_err(DaemonError::Audit)?,
        );
        let accounting = Arc::new(crate::accounting::Accounting::open(
            &cfg.raft.state_dir.join("accounting"),
            &cfg.accounting,
        )?);
        let hook: Arc<dyn crate::raft_loop::ApplyHook> = accounting.recorder.clone();
        let mut raft_cfg = cfg.raft.clone();
        raft_cfg.peer_profile = cfg.security.as_ref().map(|s| s.peer_profile.clone());
        let (raft, raft_thread) = RaftHandle::start_with(raft_cfg, Some(hook))?;
        tokio::spawn(accounting.recorder.clone().run(shutdown.clone()));
        let agents = Arc::new(AgentRegistry::default());
        let reasons = Arc::new(PendingReasons::default());
        tokio::spawn(dispatch_loop(
            raft.clone(),
            agents.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(liveness_loop(
            raft.clone(),
            agents.clone(),
            cfg.node_timeout,
            shutdown.clone(),
        ));
        if let Some(toml) = cfg.accounts_toml.clone() {
            tokio::spawn(crate::scheduling::install_accounts(
                raft.clone(),
                toml,
                shutdown.clone(),
            ));
        }
        if let Some(toml) = cfg.cluster_toml.clone() {
            tokio::spawn(crate::scheduling::install_cluster(
                raft.clone(),
                toml,
                shutdown.clone(),
            ));
        }
        if let Some(conf) = cfg.topology_conf.clone() {
            tokio::spawn(crate::scheduling::install_topology(
                raft.clone(),
                conf,
                shutdown.clone(),
            ));
        }
        tokio::spawn(scheduling_loop(
            raft.clone(),
            reasons.clone(),
            cfg.schedule_interval,
            shutdown.clone(),
        ));
        let api = Api(Arc::new(Shared {
            raft: raft.clone(),
            agents,
            reasons,
            default_partition: cfg.default_partition,
            agent_silence_max: cfg.agent_silence_max,
            leader_channel: Default::default(),
            bind_lock: Default::default(),
            security: cfg.security.clone(),
            audit: audit.clone(),
            accounting: accounting.clone(),
        }));
        let accounting_api =
            crate::accounting::service::AccountingApi::new(raft.clone(), accounting)
                .private(cfg.security.as_ref().map(|s| s.private).unwrap_or_default());
        let api_for_http = api.clone();
        let mut stop = shutdown.clone();
        let wire = Arc::new(WireStats::default());
        let router = tonic::transport::Server::builder()
            .layer(crate::wire::count_calls(wire.clone()))
            .layer(crate::security::layer::SecurityLayer::new(
                cfg.security.clone(),
                audit,
            ))
            .add_service(
                JobServiceServer::new(api.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX),
            )
            .add_service(
                NodeServiceServer::new(api.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX),
            )
            .add_service(
                AgentServiceServer::new(api.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX),
            )
            .add_service(AdminServiceServer::new(api.clone()))
            .add_service(
                berth_proto::v1::accounting_service_server::AccountingServiceServer::new(
                    accounting_api,
                )
                .max_encoding_message_size(256 << 20),
            )
            .add_service(
                RaftServiceServer::new(api)
                    .max_decoding_message_size(crate::transport::RAFT_BYTES_MAX)
                    .max_encoding_message_size(crate::transport::RAFT_BYTES_MAX),
            );
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // TLS when secure (certificates reloaded as their files change), plain otherwise.
        let server = match &cfg.security {
            Some(sec) => {
                sec.tls.watch(shutdown);
                let incoming = crate::wire::counted(
                    berth_auth::tls::incoming(
                        listener,
                        sec.tls.clone(),
                        berth_auth::tls::Alpn::Grpc,
                    ),
                    wire.clone(),
                );
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::wire::incoming(listener, wire.clone()),
                stopped,
            )),
        };
        Ok(Daemon {
            raft,
            api: api_for_http,
            raft_thread,
            wire,
            server,
        })
    }

    /// The gRPC services' implementation (the HTTP endpoint calls it in-process).
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Connections accepted and calls served by the gRPC server.
    pub fn wire_stats(&self) -> &WireStats {
        &self.wire
    }

    /// The Raft handle (state, leadership).
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// Waits until this replica leads, or `timeout` passes.
    pub async fn wait_leader(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.raft.is_leader() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Waits for the server to stop (after shutdown), then stops Raft after a final flush.
    ///
    /// # Errors
    /// The server's or the store's failure.
    pub async fn wait(self) -> Result<(), DaemonError> {
        let served = self.server.await.unwrap_or(Ok(()));
        self.raft.shutdown();
        let thread = self.raft_thread;
        let raft = tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| DaemonError::Panicked)?;
        served?;
        raft.map_err(|_| DaemonError::Panicked)??;
        Ok(())
    }
}
