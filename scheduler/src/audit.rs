//! The audit log: one JSON line per state-changing call (and per refused call) — who,
//! how they were proven, from where, what, and the result — appended beside the Raft
//! state in `<state-dir>/audit.log` and queried with `berth admin audit`.
//!
//! Each replica records the calls it handled (a follower that forwards a write records
//! it, and so does the leader that applies it). Lines are written by one thread and
//! `fdatasync`ed at least every 100 ms, so a crash loses at most that window; the file
//! is rotated once (`audit.log.1`) when it passes 256 MiB, and queries read both.

use berth_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Size at which the log is rotated.
const ROTATE_BYTES: u64 = 256 << 20;
/// Records queued for the writer before new ones are dropped (and counted).
const QUEUE_MAX: usize = 1 << 16;
/// Most records one query returns.
pub const QUERY_MAX: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Line {
    t: u64,
    user: String,
    auth: String,
    from: String,
    method: String,
    what: String,
    result: String,
    ok: bool,
    /// The replica that wrote it (absent in lines written before it was recorded).
    #[serde(default)]
    replica: u64,
}

impl From<&pb::AuditRecord> for Line {
    fn from(r: &pb::AuditRecord) -> Line {
        Line {
            t: r.time_ms,
            user: r.user.clone(),
            auth: r.auth.clone(),
            from: r.from.clone(),
            method: r.method.clone(),
            what: r.what.clone(),
            result: r.result.clone(),
            ok: r.ok,
            replica: r.replica,
        }
    }
}

impl From<Line> for pb::AuditRecord {
    fn from(l: Line) -> pb::AuditRecord {
        pb::AuditRecord {
            time_ms: l.t,
            user: l.user,
            auth: l.auth,
            from: l.from,
            method: l.method,
            what: l.what,
            result: l.result,
            ok: l.ok,
            replica: l.replica,
        }
    }
}

/// Which records a query wants.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// At or after this time.
    pub since_ms: u64,
    /// Before this time (0: no end).
    pub until_ms: u64,
    /// This user's (empty: anyone's).
    pub user: String,
    /// Methods whose name contains this (empty: any).
    pub method: String,
    /// Only refused or failed calls.
    pub failed_only: bool,
}

impl AuditFilter {
    /// The filter an [`pb::AuditQuery`] asks for.
    pub fn of(q: &pb::AuditQuery) -> AuditFilter {
        AuditFilter {
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            user: q.user.clone(),
            method: q.method.clone(),
            failed_only: q.failed_only,
        }
    }

    fn matches(&self, l: &Line) -> bool {
        l.t >= self.since_ms
            && (self.until_ms == 0 || l.t < self.until_ms)
            && (self.user.is_empty() || l.user == self.user)
            && (self.method.is_empty() || l.method.contains(&self.method))
            && !(self.failed_only && l.ok)
    }
}

/// The newest `limit` of `records` (gathered from several replicas), oldest first.
pub fn merge(mut records: Vec<pb::AuditRecord>, limit: usize) -> Vec<pb::AuditRecord> {
    records.sort_by_key(|r| (r.time_ms, r.replica));
    let skip = records.len().saturating_sub(limit.clamp(1, QUERY_MAX));
    records.split_off(skip)
}

/// The log of one replica.
pub struct AuditLog {
    replica: u64,
    path: PathBuf,
    tx: mpsc::SyncSender<pb::AuditRecord>,
    dropped: std::sync::atomic::AtomicU64,
}

impl AuditLog {
    /// Opens (creating) `dir/audit.log` of replica `replica` and starts its writer thread.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(dir: &Path, replica: u64) -> std::io::Result<AuditLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.log");
        let mut file = open_append(&path)?;
        // A line torn by a crash must not swallow the next record.
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.last().is_some_and(|b| *b != b'\n') {
                file.write_all(b"\n")?;
            }
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE_MAX);
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("berth-audit".into())
            .spawn(move || write_loop(writer_path, file, rx))?;
        Ok(AuditLog {
            replica,
            path,
            tx,
            dropped: Default::default(),
        })
    }

    /// Queues `record`. Never blocks a request: a full queue drops it and says so.
    pub fn record(&self, mut record: pb::AuditRecord) {
        record.replica = self.replica;
        if self.tx.try_send(record).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::error!("audit queue full: {} records dropped", n + 1);
            }
        }
    }

    /// Records `filter` matches, oldest first, the newest `limit` of them.
    pub fn query(&self, filter: &AuditFilter, limit: usize) -> Vec<pb::AuditRecord> {
        let limit = limit.clamp(1, QUERY_MAX);
        let mut out = std::collections::VecDeque::with_capacity(limit);
        let rotated = self.path.with_extension("log.1");
        for path in [rotated.as_path(), self.path.as_path()] {
            let Ok(f) = std::fs::File::open(path) else {
                continue;
            };
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                let Ok(l) = serde_json::from_str::<Line>(&line) else {
                    continue; // a torn last line after a crash
                };
                if !filter.matches(&l) {
                    continue;
                }
                if out.len() == limit {
                    out.pop_front();
                }
                out.push_back(l.into());
            }
        }
        out.into()
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Writes queued records in batches, syncing each batch; ends when every sender is gone.
fn write_loop(path: PathBuf, mut file: std::fs::File, rx: mpsc::Receiver<pb::AuditRecord>) {
    let mut written = file.metadata().map(|m| m.len()).unwrap_or(0);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Gather what arrives within 100 ms (bounded), then one write and one sync.
        let deadline = std::time::Instant::now() + Duration::from_millis(100);
        while batch.len() < 4096 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut buf = Vec::new();
        for r in &batch {
            if let Ok(mut text) = serde_json::to_vec(&Line::from(r)) {
                text.push(b'\n');
                buf.extend_from_slice(&text);
            }
        }
        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            tracing::error!("audit log {}: {e}", path.display());
        }
        written += buf.len() as u64;
        if written > ROTATE_BYTES {
            let _ = std::fs::rename(&path, path.with_extension("log.1"));
            match open_append(&path) {
                Ok(f) => {
                    file = f;
                    written = 0;
                }
                Err(e) => tracing::error!("audit log {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: u64, user: &str) -> pb::AuditRecord {
        pb::AuditRecord {
            time_ms: t,
            user: user.into(),
            method: "/berth.v1.JobService/Cancel".into(),
            ok: true,
            result: "ok".into(),
            ..Default::default()
        }
    }

    fn q(since_ms: u64, user: &str) -> AuditFilter {
        AuditFilter {
            since_ms,
            user: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_survive_a_reopen_and_filter_by_time_and_user() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), 2).unwrap();
            for (t, u) in [(1, "a"), (2, "b"), (3, "a")] {
                log.record(rec(t, u));
            }
            // The writer syncs within 100 ms.
            for _ in 0..50 {
                if log.query(&q(0, ""), 10).len() == 3 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.log"))
            .unwrap()
            .write_all(b"{\"t\":9,\"user\":\"tor")
            .unwrap();
        let log = AuditLog::open(dir.path(), 2).unwrap();
        let times = |v: Vec<pb::AuditRecord>| v.iter().map(|r| r.time_ms).collect::<Vec<_>>();
        assert_eq!(times(log.query(&q(0, ""), 10)), vec![1, 2, 3]);
        assert_eq!(times(log.query(&q(2, ""), 10)), vec![2, 3]);
        assert_eq!(times(log.query(&q(0, "a"), 10)), vec![1, 3]);
        assert_eq!(times(log.query(&q(0, ""), 1)), vec![3]);
        assert!(log.query(&q(0, ""), 10).iter().all(|r| r.replica == 2));
        // A line appended after the torn one is read (the torn one is skipped).
        log.record(rec(10, "c"));
        for _ in 0..50 {
            if log.query(&q(0, "c"), 10).len() == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(times(log.query(&q(0, ""), 10)), vec![1, 2, 3, 10]);
    }

    #[test]
    fn filters_combine_and_merging_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 1).unwrap();
        let mut r = rec(5, "a");
        r.method = "/berth.v1.JobService/Hold".into();
        r.ok = false;
        log.record(r);
        log.record(rec(6, "a"));
        log.record(rec(7, "b"));
        for _ in 0..50 {
            if log.query(&q(0, ""), 10).len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let times = |f: AuditFilter| {
            log.query(&f, 10)
                .iter()
                .map(|r| r.time_ms)
                .collect::<Vec<_>>()
        };
        let all = AuditFilter::default();
        assert_eq!(times(all.clone()), vec![5, 6, 7]);
        assert_eq!(
            times(AuditFilter {
                until_ms: 7,
                ..all.clone()
            }),
            vec![5, 6]
        );
        assert_eq!(
            times(AuditFilter {
                method: "Hold".into(),
                ..all.clone()
            }),
            vec![5]
        );
        assert_eq!(
            times(AuditFilter {
                failed_only: true,
                ..all.clone()
            }),
            vec![5]
        );
        assert_eq!(
            times(AuditFilter {
                user: "a".into(),
                method: "Cancel".into(),
                ..all.clone()
            }),
            vec![6]
        );
        assert!(times(AuditFilter {
            since_ms: 6,
            until_ms: 6,
            ..all
        })
        .is_empty());
        let mut from2 = rec(6, "x");
        from2.replica = 2;
        let merged = merge(
            log.query(&AuditFilter::default(), 10)
                .into_iter()
                .chain([from2])
                .collect(),
            3,
        );
        let got: Vec<_> = merged.iter().map(|r| (r.time_ms, r.replica)).collect();
        assert_eq!(got, vec![(6, 1), (6, 2), (7, 1)]);
    }
}
