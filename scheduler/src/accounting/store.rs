//! The accounting store: one trait, [`RecordStore`], over the embedded sled store and
//! PostgreSQL, and the selection rules every store applies the same way ([`matches`]).
//!
//! Stores only hold ended runs. Writes are idempotent upserts keyed by (job id, run): a
//! record replaces the stored one only when its `recorded_index` is at least as high, so
//! replaying the log, two replicas writing the same record, or a retry after a lost reply
//! all leave one record, the newest.

use berth_proto::v1::{self as pb, JobState};

/// Why the store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached now (connection refused, server gone). Records stay
    /// queued and are written when it returns.
    #[error("Problem talking to the database: {0}")]
    Unavailable(String),
    /// What the store holds does not decode, or its files are damaged.
    #[error("accounting store {location} is corrupt: {detail}")]
    Corrupt {
        /// Path or URL of the store.
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// The configuration names no store berth can open.
    #[error("accounting store: {0}")]
    Config(String),
}

/// A durable home for accounting records.
pub trait RecordStore: Send + Sync {
    /// "sled" or "postgres", for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Writes `records` (upsert by (job id, run); a record with a lower `recorded_index`
    /// than the stored one is ignored). All written, or an error and possibly some.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database is down: the caller retries later.
    fn put(&self, records: &[pb::JobRecord]) -> Result<(), StoreError>;

    /// Every stored run matching `q` by [`matches`] (all runs, whatever `q.duplicates`
    /// says; callers pick the latest), ordered by job id then run, at most `q.limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    fn query(&self, q: &pb::RecordQuery) -> Result<Vec<pb::JobRecord>, StoreError>;

    /// Deletes the runs that ended before `cutoff_ms` (retention); returns how many.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written.
    fn purge_ended_before(&self, cutoff_ms: u64) -> Result<u64, StoreError>;

    /// Writes node events (upsert by (node, start), newest index wins).
    ///
    /// # Errors
    /// As [`RecordStore::put`].
    fn put_node_events(&self, events: &[pb::NodeEvent]) -> Result<(), StoreError>;

    /// Node events overlapping `[start_ms, end_ms]`.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    fn node_events(&self, start_ms: u64, end_ms: u64) -> Result<Vec<pb::NodeEvent>, StoreError>;
}

/// The window end a query means: 0 stands for "no end".
pub fn window_end(q: &pb::RecordQuery) -> u64 {
    if q.window_end_ms == 0 {
        u64::MAX
    } else {
        q.window_end_ms
    }
}

/// Whether record `r` is selected by `q`, with sacct's rules: without states, a job is
/// shown when it was eligible before the window ends and had not ended before it starts
/// (never-eligible jobs only with `include_ineligible`); with states, a job is shown when
/// it was in one of them during the window (PENDING: eligible and not yet started,
/// RUNNING: started and not yet ended, an end state: ended in it within the window).
pub fn matches(q: &pb::RecordQuery, r: &pb::JobRecord) -> bool {
    let ids = !q.job_ids.is_empty() || !q.array_job_ids.is_empty();
    if ids
        && !q.job_ids.contains(&r.job_id)
        && !(r.has_array_task && q.array_job_ids.contains(&r.array_job_id))
    {
        return false;
    }
    let uid = r.uid.to_string();
    if !q.users.is_empty() && !q.users.iter().any(|u| *u == r.user || *u == uid) {
        return false;
    }
    let any_ci = |list: &[String], v: &str| list.iter().any(|x| x.eq_ignore_ascii_case(v));
    if !q.accounts.is_empty() && !any_ci(&q.accounts, &r.account) {
        return false;
    }
    if !q.partitions.is_empty() && !any_ci(&q.partitions, &r.partition) {
        return false;
    }
    if !q.qos.is_empty() && !any_ci(&q.qos, &r.qos) {
        return false;
    }
    if !q.names.is_empty() && !q.names.contains(&r.name) {
        return false;
    }
    if !q.nodes.is_empty() && !r.nodes.iter().any(|n| q.nodes.contains(n)) {
        return false;
    }
    in_window(q, r)
}

fn in_window(q: &pb::RecordQuery, r: &pb::JobRecord) -> bool {
    let (start, end) = (q.window_start_ms, window_end(q));
    // sacct's times are whole seconds (a job that ended at 10:00:00.6 ended "at 10:00:00",
    // inside `-E now` asked at 10:00:00.9): judge each record time by its second.
    let second = |ms: u64| ms - ms % 1000;
    let (eligible, started, ended) = (
        second(r.eligible_time_ms),
        second(r.start_time_ms),
        second(r.end_time_ms),
    );
    let not_ended_before = ended == 0 || ended >= start;
    if q.states.is_empty() {
        if eligible == 0 || r.held && started == 0 {
            return q.include_ineligible && not_ended_before;
        }
        return eligible <= end && not_ended_before;
    }
    q.states().any(|s| match s {
        JobState::Pending => {
            eligible > 0
                && eligible <= end
                && (started == 0 || started >= start)
                && (started > 0 || not_ended_before)
        }
        JobState::Running => started > 0 && started <= end && not_ended_before,
        other => r.state() == other && ended > 0 && ended >= start && ended <= end,
    })
}

/// Keeps, per job id, only its latest run (highest `run`) unless `duplicates`; `records`
/// must be ordered by job id then run.
pub fn latest_runs(records: Vec<pb::JobRecord>, duplicates: bool) -> Vec<pb::JobRecord> {
    if duplicates {
        return records;
    }
    let mut out: Vec<pb::JobRecord> = Vec::with_capacity(records.len());
    for r in records {
        match out.last_mut() {
            Some(last) if last.job_id == r.job_id => *last = r,
            _ => out.push(r),
        }
    }
    out
}

/// `(job_id, run)` as 12 big-endian bytes: the key of a record, ordered by job then run.
pub fn record_key(job_id: u64, run: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&job_id.to_be_bytes());
    k[8..].copy_from_slice(&run.to_be_bytes());
    k
}
