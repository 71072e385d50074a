//! From the Raft log to the store: the apply hook that computes records, the durable
//! outbox they wait in, and the writer task that drains it into the store.
//!
//! Order of events for one record: the Raft thread applies a command that ends a run →
//! [`Recorder::applied`] builds the run's record from the state and puts it in the outbox
//! (a sled tree beside the store, keyed like the store) → the writer task writes a batch
//! to the store → on success it notes the record's content hash in `recorded` and
//! removes the outbox entry unless a newer version replaced it meanwhile. A database
//! that is down leaves records in the outbox, retried with backoff.
//!
//! Nothing here needs to be flushed in step with Raft: when a replica starts (or installs
//! a snapshot) [`Recorder::restored`] rebuilds the records of every ended run from the
//! state and queues those whose content the store does not have yet. The state keeps every
//! job and every earlier run (`Job.runs`), so a fresh replica, one that crashed before the
//! outbox reached disk, and a new leader all end up with the same records.

use super::record;
use super::store::{record_key, RecordStore, StoreError};
use super::AccountingMetrics;
use crate::state_machine::{Effect, StateMachine};
use berth_proto::v1::{self as pb, NodeState};
use prost::Message as _;
use std::hash::Hasher as _;
use std::sync::Arc;
use std::time::Duration;

/// Records written to the store in one call at most.
const BATCH_MAX: usize = 256;
/// Longest wait between two tries while the store is down.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often old records are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// The outbox, the content hashes of what the store holds, and the store.
pub struct Recorder {
    outbox: sled::Tree,
    node_outbox: sled::Tree,
    recorded: sled::Tree,
    open_downs: sled::Tree,
    store: Arc<dyn RecordStore>,
    retention_ms: u64,
    wake: tokio::sync::Notify,
    metrics: AccountingMetrics,
}

fn content_hash(r: &pb::JobRecord) -> [u8; 8] {
    let mut r = r.clone();
    r.recorded_index = 0;
    let mut h = rustc_hash::FxHasher::default();
    h.write(&r.encode_to_vec());
    h.finish().to_be_bytes()
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Corrupt {
        location: "accounting outbox".into(),
        detail: e.to_string(),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl crate::raft_loop::ApplyHook for Recorder {
    fn applied(&self, sm: &StateMachine, entry: &raft::eraftpb::Entry, effects: &[Effect]) {
        Recorder::applied(self, sm, entry, effects)
    }

    fn restored(&self, sm: &StateMachine) {
        Recorder::restored(self, sm)
    }
}

impl Recorder {
    /// A recorder with its outbox trees in `db`, writing to `store`, keeping records for
    /// `retention_ms` after they end.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the trees cannot be opened.
    pub fn new(
        db: &sled::Db,
        store: Arc<dyn RecordStore>,
        retention_ms: u64,
        metrics: AccountingMetrics,
    ) -> Result<Recorder, StoreError> {
        Ok(Recorder {
            outbox: db.open_tree("acct_outbox").map_err(io)?,
            node_outbox: db.open_tree("acct_node_outbox").map_err(io)?,
            recorded: db.open_tree("acct_recorded").map_err(io)?,
            open_downs: db.open_tree("acct_open_downs").map_err(io)?,
            store,
            retention_ms,
            wake: tokio::sync::Notify::new(),
            metrics,
        })
    }

    /// The store records are written to.
    pub fn store(&self) -> &Arc<dyn RecordStore> {
        &self.store
    }

    /// Records waiting for the store.
    pub fn queued(&self) -> usize {
        self.outbox.len() + self.node_outbox.len()
    }

    /// Queues `r` unless the store already has this content; true when queued.
    fn enqueue(&self, r: &pb::JobRecord) -> bool {
        let key = record_key(r.job_id, r.run);
        let hash = content_hash(r);
        let stored = self.recorded.get(key).ok().flatten();
        if stored.as_deref() == Some(&hash[..]) {
            return false;
        }
        if let Ok(Some(bytes)) = self.outbox.get(key) {
            if let Ok(old) = pb::JobRecord::decode(&bytes[..]) {
                if old.recorded_index > r.recorded_index || content_hash(&old) == hash {
                    return false;
                }
            }
        }
        if let Err(e) = self.outbox.insert(key, r.encode_to_vec()) {
            // The restore-time reconcile queues it again after a restart.
            tracing::error!(job = r.job_id, "accounting outbox write failed: {e}");
            return false;
        }
        self.metrics.ended(r, stored.is_none());
        true
    }

    /// The Raft thread applied the command at `entry`, which produced `effects`: queue the
    /// records of runs it ended or changed, and node down/up events.
    pub fn applied(&self, sm: &StateMachine, entry: &raft::eraftpb::Entry, effects: &[Effect]) {
        let mut queued = false;
        let mut time_ms = None;
        for e in effects {
            match e {
                Effect::JobChanged(job) => {
                    self.metrics.job_changed(job);
                    // Unchanged runs are skipped by their content hash.
                    for r in record::ended_records(sm, job, entry.index) {
                        queued |= self.enqueue(&r);
                    }
                }
                Effect::NodeChanged(name) => {
                    let t = *time_ms.get_or_insert_with(|| {
                        pb::Command::decode(&entry.data[..])
                            .map(|c| c.time_ms)
                            .unwrap_or(0)
                    });
                    queued |= self.node_changed(sm, name, t, entry.index);
                }
                _ => {}
            }
        }
        if queued {
            self.wake.notify_one();
        }
    }

    fn node_changed(&self, sm: &StateMachine, name: &str, time_ms: u64, index: u64) -> bool {
        let Some(node) = sm.node(name) else {
            return false;
        };
        let open = self.open_downs.get(name).ok().flatten();
        let event = match (node.state(), open) {
            (NodeState::Down, None) => {
                let inv = node.inventory.clone().unwrap_or_default();
                pb::NodeEvent {
                    node: name.to_string(),
                    start_time_ms: time_ms,
                    end_time_ms: 0,
                    reason: node.reason.clone(),
                    cpus: inv.cpus,
                    gpus: inv.gpus.len() as u32,
                    recorded_index: index,
                }
            }
            (NodeState::Up, Some(bytes)) => {
                let Ok(mut e) = pb::NodeEvent::decode(&bytes[..]) else {
                    return false;
                };
                e.end_time_ms = time_ms.max(e.start_time_ms);
                e.recorded_index = index;
                e
            }
            _ => return false,
        };
        let key = [name.as_bytes(), &[0], &event.start_time_ms.to_be_bytes()].concat();
        let bytes = event.encode_to_vec();
        let open_result = if event.end_time_ms == 0 {
            self.open_downs.insert(name, bytes.clone()).map(|_| ())
        } else {
            self.open_downs.remove(name).map(|_| ())
        };
        if let Err(e) = open_result.and_then(|_| self.node_outbox.insert(key, bytes).map(|_| ())) {
            tracing::error!(node = name, "accounting outbox write failed: {e}");
            return false;
        }
        true
    }

    /// The state was restored (start-up or a snapshot from the leader): queue every ended
    /// run the store does not hold yet, except those already past retention.
    pub fn restored(&self, sm: &StateMachine) {
        let cutoff = wall_ms().saturating_sub(self.retention_ms);
        let mut queued = 0usize;
        for job in sm.jobs() {
            for r in record::ended_records(sm, job, sm.applied_index()) {
                if r.end_time_ms >= cutoff && self.enqueue(&r) {
                    queued += 1;
                }
            }
        }
        if queued > 0 {
            tracing::info!(queued, "accounting: queued records the store lacks");
            self.wake.notify_one();
        }
    }

    /// Writes one batch from the outbox; `Ok(true)` when more may be waiting.
    fn drain_once(&self) -> Result<bool, StoreError> {
        let batch: Vec<(sled::IVec, sled::IVec)> = self
            .outbox
            .iter()
            .take(BATCH_MAX)
            .collect::<Result<_, _>>()
            .map_err(io)?;
        let mut records = Vec::with_capacity(batch.len());
        for (_, v) in &batch {
            records.push(
                pb::JobRecord::decode(&v[..]).map_err(|e| StoreError::Corrupt {
                    location: "accounting outbox".into(),
                    detail: e.to_string(),
                })?,
            );
        }
        if !records.is_empty() {
            self.store.put(&records)?;
        }
        for ((k, v), r) in batch.iter().zip(&records) {
            self.recorded.insert(k, &content_hash(r)).map_err(io)?;
            // Only if no newer version arrived while the batch was being written.
            let _ = self
                .outbox
                .compare_and_swap(k, Some(v), None::<&[u8]>)
                .map_err(io)?;
        }
        let events = self.drain_node_events()?;
        Ok(batch.len() == BATCH_MAX || events == BATCH_MAX)
    }

    fn drain_node_events(&self) -> Result<usize, StoreError> {
        let batch: Vec<(sled::IVec, sled::IVec)> = self
            .node_outbox
            .iter()
            .take(BATCH_MAX)
            .collect::<Result<_, _>>()
            .map_err(io)?;
        let events: Vec<pb::NodeEvent> = batch
            .iter()
            .filter_map(|(_, v)| pb::NodeEvent::decode(&v[..]).ok())
            .collect();
        if !events.is_empty() {
            self.store.put_node_events(&events)?;
        }
        for (k, v) in &batch {
            let _ = self
                .node_outbox
                .compare_and_swap(k, Some(v), None::<&[u8]>)
                .map_err(io)?;
        }
        Ok(batch.len())
    }

    /// Drains the outbox into the store until `shutdown`, retrying a store that is down
    /// with backoff, and purges records past retention every hour.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        let mut next_purge = tokio::time::Instant::now();
        let mut was_down = false;
        loop {
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || me.drain_once())
                .await
                .unwrap_or_else(|e| Err(StoreError::Config(format!("writer panicked: {e}"))));
            self.metrics.queued.set(self.queued() as i64);
            let wait = match result {
                Ok(more) => {
                    if was_down {
                        tracing::info!("accounting store reachable again; queued records written");
                        was_down = false;
                    }
                    self.metrics.store_up.set(1);
                    backoff = Duration::from_millis(200);
                    if more {
                        continue;
                    }
                    if tokio::time::Instant::now() >= next_purge {
                        self.purge().await;
                        next_purge = tokio::time::Instant::now() + PURGE_EVERY;
                    }
                    Duration::from_secs(60)
                }
                Err(e) => {
                    if !was_down {
                        tracing::warn!("accounting: {e}; records stay queued ({})", self.queued());
                        was_down = true;
                    }
                    self.metrics.store_up.set(0);
                    self.metrics.write_errors.inc();
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    backoff
                }
            };
            tokio::select! {
                _ = self.wake.notified(), if !was_down => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn purge(&self) {
        let store = self.store.clone();
        let cutoff = wall_ms().saturating_sub(self.retention_ms);
        match tokio::task::spawn_blocking(move || store.purge_ended_before(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(purged = n, "accounting: records past retention purged"),
            Ok(Err(e)) => tracing::warn!("accounting purge: {e}"),
            Err(e) => tracing::warn!("accounting purge panicked: {e}"),
        }
    }

    /// Writes everything queued now, synchronously (tests, and shutdown).
    ///
    /// # Errors
    /// The store's error when it cannot be written.
    pub fn flush(&self) -> Result<(), StoreError> {
        while self.drain_once()? {}
        Ok(())
    }
}
