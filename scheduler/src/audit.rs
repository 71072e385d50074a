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
        }
    }
}

/// The log of one replica.
pub struct AuditLog {
    path: PathBuf,
    tx: mpsc::SyncSender<pb::AuditRecord>,
    dropped: std::sync::atomic::AtomicU64,
}

impl AuditLog {
    /// Opens (creating) `dir/audit.log` and starts its writer thread.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(dir: &Path) -> std::io::Result<AuditLog> {
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
            path,
            tx,
            dropped: Default::default(),
        })
    }

    /// Queues `record`. Never blocks a request: a full queue drops it and says so.
    pub fn record(&self, record: pb::AuditRecord) {
        if self.tx.try_send(record).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::error!("audit queue full: {} records dropped", n + 1);
            }
        }
    }

    /// Records at or after `since_ms`, of `user` when not empty, oldest first, the newest
    /// `limit` of them.
    pub fn query(&self, since_ms: u64, user: &str, limit: usize) -> Vec<pb::AuditRecord> {
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
                if l.t < since_ms || (!user.is_empty() && l.user != user) {
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

    #[test]
    fn records_survive_a_reopen_and_filter_by_time_and_user() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            for (t, u) in [(1, "a"), (2, "b"), (3, "a")] {
                log.record(rec(t, u));
            }
            // The writer syncs within 100 ms.
            for _ in 0..50 {
                if log.query(0, "", 10).len() == 3 {
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
        let log = AuditLog::open(dir.path()).unwrap();
        let times = |v: Vec<pb::AuditRecord>| v.iter().map(|r| r.time_ms).collect::<Vec<_>>();
        assert_eq!(times(log.query(0, "", 10)), vec![1, 2, 3]);
        assert_eq!(times(log.query(2, "", 10)), vec![2, 3]);
        assert_eq!(times(log.query(0, "a", 10)), vec![1, 3]);
        assert_eq!(times(log.query(0, "", 1)), vec![3]);
    }
}
