//! The PostgreSQL accounting store, for sites that already run one (as Slurm sites run
//! slurmdbd's database, and OpenCost users their warehouse).
//!
//! One table per kind, created on first connect: `berth_job_records` (key `(job_id,
//! run)`, the columns reports and ad-hoc SQL need, and the whole record as protobuf in
//! `record`) and `berth_node_events`. Upserts keep the row with the highest
//! `recorded_index`. The client is blocking (the `postgres` crate); berthd calls it from
//! blocking threads. A lost connection is dropped and made again on the next call, and
//! every failure to reach the server is [`StoreError::Unavailable`], so the recorder keeps
//! the records queued.

use super::store::{matches, window_end, RecordStore, StoreError};
use berth_proto::v1 as pb;
use postgres::types::ToSql;
use prost::Message as _;
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS berth_job_records (
    job_id BIGINT NOT NULL,
    run INTEGER NOT NULL,
    user_name TEXT NOT NULL,
    uid BIGINT NOT NULL,
    account TEXT NOT NULL,
    partition TEXT NOT NULL,
    qos TEXT NOT NULL,
    job_name TEXT NOT NULL,
    state TEXT NOT NULL,
    submit_ms BIGINT NOT NULL,
    eligible_ms BIGINT NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    cpus INTEGER NOT NULL,
    gpus INTEGER NOT NULL,
    gpu_type TEXT NOT NULL,
    gpu_seconds DOUBLE PRECISION NOT NULL,
    gpu_busy_seconds DOUBLE PRECISION NOT NULL,
    array_job_id BIGINT NOT NULL,
    recorded_index BIGINT NOT NULL,
    record BYTEA NOT NULL,
    PRIMARY KEY (job_id, run)
);
CREATE INDEX IF NOT EXISTS berth_job_records_array ON berth_job_records (array_job_id);
CREATE INDEX IF NOT EXISTS berth_job_records_user_end ON berth_job_records (user_name, end_ms);
CREATE INDEX IF NOT EXISTS berth_job_records_end ON berth_job_records (end_ms);
CREATE TABLE IF NOT EXISTS berth_node_events (
    node TEXT NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    recorded_index BIGINT NOT NULL,
    event BYTEA NOT NULL,
    PRIMARY KEY (node, start_ms)
);";

const UPSERT: &str = "
INSERT INTO berth_job_records (job_id, run, user_name, uid, account, partition, qos,
    job_name, state, submit_ms, eligible_ms, start_ms, end_ms, cpus, gpus, gpu_type,
    gpu_seconds, gpu_busy_seconds, recorded_index, record, array_job_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
    $19, $20, $21)
ON CONFLICT (job_id, run) DO UPDATE SET user_name = EXCLUDED.user_name,
    uid = EXCLUDED.uid, account = EXCLUDED.account, partition = EXCLUDED.partition,
    qos = EXCLUDED.qos, job_name = EXCLUDED.job_name, state = EXCLUDED.state,
    submit_ms = EXCLUDED.submit_ms, eligible_ms = EXCLUDED.eligible_ms,
    start_ms = EXCLUDED.start_ms, end_ms = EXCLUDED.end_ms, cpus = EXCLUDED.cpus,
    gpus = EXCLUDED.gpus, gpu_type = EXCLUDED.gpu_type, gpu_seconds = EXCLUDED.gpu_seconds,
    gpu_busy_seconds = EXCLUDED.gpu_busy_seconds, recorded_index = EXCLUDED.recorded_index,
    record = EXCLUDED.record, array_job_id = EXCLUDED.array_job_id
WHERE berth_job_records.recorded_index <= EXCLUDED.recorded_index";

/// A PostgreSQL database holding accounting records.
pub struct PostgresStore {
    config: postgres::Config,
    /// The URL without its password, for messages.
    location: String,
    client: Mutex<Option<postgres::Client>>,
}

impl PostgresStore {
    /// A store for `url` (`postgres://user@host:port/db` or `host=… user=… dbname=…`).
    /// Nothing connects yet: a database that is down at start-up only delays writes.
    ///
    /// # Errors
    /// [`StoreError::Config`] when `url` does not parse.
    pub fn new(url: &str) -> Result<PostgresStore, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("bad PostgreSQL URL {url:?}: {e}")))?;
        config.connect_timeout(Duration::from_secs(3));
        let location = redact(url);
        Ok(PostgresStore {
            config,
            location,
            client: Mutex::new(None),
        })
    }

    /// Runs `f` with a connected client (connecting and creating the tables first if
    /// needed). A connection error drops the client so the next call reconnects.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let mut c = self
                .config
                .connect(postgres::NoTls)
                .map_err(|e| StoreError::Unavailable(format!("{}: {}", self.location, e)))?;
            c.batch_execute(SCHEMA)
                .map_err(|e| StoreError::Unavailable(format!("{}: {}", self.location, e)))?;
            *slot = Some(c);
        }
        let client = slot.as_mut().expect("connected above");
        let result = f(client);
        let closed = client.is_closed();
        result.map_err(|e| {
            // A server error (bad data, constraint) leaves the connection usable; anything
            // else (I/O, closed) means the server is gone for now.
            if closed || e.as_db_error().is_none() {
                *slot = None;
                StoreError::Unavailable(format!("{}: {}", self.location, e))
            } else {
                StoreError::Corrupt {
                    location: self.location.clone(),
                    detail: e.to_string(),
                }
            }
        })
    }

    fn decode_rows(
        &self,
        rows: Vec<postgres::Row>,
        q: &pb::RecordQuery,
    ) -> Result<Vec<pb::JobRecord>, StoreError> {
        let mut out = Vec::new();
        for row in rows {
            let bytes: Vec<u8> = row.get(0);
            let r = pb::JobRecord::decode(&bytes[..]).map_err(|e| StoreError::Corrupt {
                location: self.location.clone(),
                detail: format!("record does not decode: {e}"),
            })?;
            if matches(q, &r) {
                out.push(r);
                if q.limit > 0 && out.len() as u64 >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// `url` without its password (`postgres://user:secret@host/db` → `postgres://user@host/db`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl RecordStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn put(&self, records: &[pb::JobRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let stmt = tx.prepare(UPSERT)?;
            for r in records {
                let alloc = r.alloc.clone().unwrap_or_default();
                let state = format!("{:?}", r.state());
                let array_job_id = if r.has_array_task {
                    i64_of(r.array_job_id)
                } else {
                    0
                };
                let params: [&(dyn ToSql + Sync); 21] = [
                    &i64_of(r.job_id),
                    &(r.run as i32),
                    &r.user,
                    &i64::from(r.uid),
                    &r.account,
                    &r.partition,
                    &r.qos,
                    &r.name,
                    &state,
                    &i64_of(r.submit_time_ms),
                    &i64_of(r.eligible_time_ms),
                    &i64_of(r.start_time_ms),
                    &i64_of(r.end_time_ms),
                    &(alloc.cpus as i32),
                    &(alloc.gpus as i32),
                    &alloc.gpu_type,
                    &r.gpu_seconds,
                    &r.gpu_busy_seconds,
                    &i64_of(r.recorded_index),
                    &r.encode_to_vec(),
                    &array_job_id,
                ];
                tx.execute(&stmt, &params)?;
            }
            tx.commit()
        })
    }

    fn query(&self, q: &pb::RecordQuery) -> Result<Vec<pb::JobRecord>, StoreError> {
        let ids: Vec<i64> = q.job_ids.iter().map(|&i| i64_of(i)).collect();
        let arrays: Vec<i64> = q.array_job_ids.iter().map(|&i| i64_of(i)).collect();
        let users: Vec<String> = q.users.clone();
        let from = i64_of(q.window_start_ms);
        let to = i64_of(window_end(q));
        let by_ids = !ids.is_empty() || !arrays.is_empty();
        let by_users = !users.is_empty() && users.iter().all(|u| u.parse::<u32>().is_err());
        let rows = self.with(|c| {
            if by_ids {
                c.query(
                    "SELECT record FROM berth_job_records WHERE job_id = ANY($1) \
                     OR (array_job_id > 0 AND array_job_id = ANY($2)) ORDER BY job_id, run",
                    &[&ids, &arrays],
                )
            } else if by_users {
                c.query(
                    "SELECT record FROM berth_job_records WHERE user_name = ANY($1) \
                     AND end_ms >= $2 AND eligible_ms <= $3 ORDER BY job_id, run",
                    &[&users, &from, &to],
                )
            } else {
                c.query(
                    "SELECT record FROM berth_job_records WHERE end_ms >= $1 \
                     AND (eligible_ms <= $2 OR start_ms <= $2) ORDER BY job_id, run",
                    &[&from, &to],
                )
            }
        })?;
        self.decode_rows(rows, q)
    }

    fn purge_ended_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let cutoff = i64_of(cutoff_ms);
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM berth_job_records WHERE end_ms < $1",
                &[&cutoff],
            )?;
            c.execute(
                "DELETE FROM berth_node_events WHERE end_ms > 0 AND end_ms < $1",
                &[&cutoff],
            )?;
            Ok(n)
        })
    }

    fn put_node_events(&self, events: &[pb::NodeEvent]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            for e in events {
                tx.execute(
                    "INSERT INTO berth_node_events (node, start_ms, end_ms, recorded_index, event) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node, start_ms) DO UPDATE SET \
                     end_ms = EXCLUDED.end_ms, recorded_index = EXCLUDED.recorded_index, \
                     event = EXCLUDED.event \
                     WHERE berth_node_events.recorded_index <= EXCLUDED.recorded_index",
                    &[
                        &e.node,
                        &i64_of(e.start_time_ms),
                        &i64_of(e.end_time_ms),
                        &i64_of(e.recorded_index),
                        &e.encode_to_vec(),
                    ],
                )?;
            }
            tx.commit()
        })
    }

    fn node_events(&self, start_ms: u64, end_ms: u64) -> Result<Vec<pb::NodeEvent>, StoreError> {
        let (from, to) = (i64_of(start_ms), i64_of(end_ms));
        let rows = self.with(|c| {
            c.query(
                "SELECT event FROM berth_node_events WHERE start_ms <= $2 \
                 AND (end_ms = 0 OR end_ms >= $1) ORDER BY node, start_ms",
                &[&from, &to],
            )
        })?;
        rows.into_iter()
            .map(|row| {
                let bytes: Vec<u8> = row.get(0);
                pb::NodeEvent::decode(&bytes[..]).map_err(|e| StoreError::Corrupt {
                    location: self.location.clone(),
                    detail: format!("node event does not decode: {e}"),
                })
            })
            .collect()
    }
}
