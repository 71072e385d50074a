//! Raft messages between replicas over gRPC (`RaftService.Step`).
//!
//! The Raft thread must never block on the network, so each peer has a small tokio task
//! with a bounded queue: the thread drops messages into it (dropping them when it is full —
//! Raft retransmits), and the task sends them in batches. A failed send is reported back to
//! raft-rs as the peer being unreachable, and the outcome of a snapshot send as a snapshot
//! status, so replication to that peer backs off and retries properly.
//!
//! Those outcomes go back through a [`Report`] callback the Raft loop hands in, so this
//! module knows nothing of the loop's input queue (the loop uses the transport, never the
//! other way round).

use berth_proto::v1::{raft_service_client::RaftServiceClient, RaftBatch};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Largest Raft batch on the wire (snapshots travel whole inside one message).
pub const RAFT_BYTES_MAX: usize = 256 << 20;
const QUEUED_MAX: usize = 4096;
const BATCH_MAX: usize = 256;

/// What became of messages sent to a peer, for raft-rs to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sending to this peer failed; raft-rs should probe it again later.
    Unreachable(u64),
    /// A snapshot sent to this peer arrived (true) or did not (false).
    SnapshotSent(u64, bool),
}

/// Where [`Delivery`] outcomes go; must not block (it runs on the sender tasks).
pub type Report = Arc<dyn Fn(Delivery) + Send + Sync>;

/// Per-peer send queues.
pub struct Outbox {
    self_id: u64,
    peers: HashMap<u64, mpsc::Sender<Message>>,
    report: Report,
    /// The runtime that runs the sender tasks: members added later are started from the
    /// Raft thread, which is not a tokio thread.
    rt: tokio::runtime::Handle,
    /// TLS to peers; `None`: plain TCP.
    profile: Option<berth_auth::profile::Profile>,
}

impl Outbox {
    /// Starts one sender task per peer other than `self_id` on the current tokio runtime.
    /// With no peers (a single voter) nothing is started and nothing may be sent.
    pub(crate) fn start(
        self_id: u64,
        peers: &BTreeMap<u64, String>,
        report: Report,
        profile: Option<berth_auth::profile::Profile>,
    ) -> Outbox {
        let mut out = Outbox {
            self_id,
            peers: HashMap::new(),
            report,
            rt: tokio::runtime::Handle::current(),
            profile,
        };
        for (&id, url) in peers {
            out.add(id, url);
        }
        out
    }

    /// Starts sending to peer `id` at `url` (a member added at runtime); replaces an older
    /// sender for the same id.
    pub fn add(&mut self, id: u64, url: &str) {
        if id == self.self_id {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUED_MAX);
        self.rt.spawn(peer_loop(
            id,
            url.to_string(),
            rx,
            self.report.clone(),
            self.profile.clone().unwrap_or_default(),
        ));
        self.peers.insert(id, tx);
    }

    /// Stops sending to peer `id` (its sender task ends with its queue).
    pub fn remove(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    /// Queues `msg` for its peer. A peer whose address is unknown (a member removed, or a
    /// message racing a conf change) is reported unreachable instead.
    pub fn send(&self, msg: Message) {
        match self.peers.get(&msg.to) {
            Some(tx) => {
                let _ = tx.try_send(msg);
            }
            None => {
                tracing::debug!(
                    to = msg.to,
                    "raft message to a peer without an address dropped"
                );
                (self.report)(Delivery::Unreachable(msg.to));
            }
        }
    }
}

async fn connect(
    url: &str,
    profile: &berth_auth::profile::Profile,
) -> Option<RaftServiceClient<Channel>> {
    // Files are read at each connect, so a reloaded certificate is used from the next one.
    let endpoint = berth_auth::channel::endpoint(url, profile)
        .map_err(|e| tracing::warn!("raft peer {e}"))
        .ok()?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1));
    let channel = endpoint.connect().await.ok()?;
    Some(
        RaftServiceClient::new(channel)
            .max_encoding_message_size(RAFT_BYTES_MAX)
            .max_decoding_message_size(RAFT_BYTES_MAX),
    )
}

async fn peer_loop(
    to: u64,
    url: String,
    mut rx: mpsc::Receiver<Message>,
    report: Report,
    profile: berth_auth::profile::Profile,
) {
    let mut client = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshot = batch
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let messages = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        if client.is_none() {
            client = connect(&url, &profile).await;
        }
        let ok = match client.as_mut() {
            Some(c) => c.step(RaftBatch { messages }).await.is_ok(),
            None => false,
        };
        if !ok {
            client = None;
            report(Delivery::Unreachable(to));
        }
        if snapshot {
            report(Delivery::SnapshotSent(to, ok));
        }
    }
}
