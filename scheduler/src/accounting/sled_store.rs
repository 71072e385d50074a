//! The embedded accounting store: sled trees in berthd's state directory, no setup.
//!
//! Trees: `records` ((job id, run) → `JobRecord` protobuf), `by_user` (user, 0, end,
//! key → ()), `by_end` (end, key → ()) and `by_array` (array job id, key → ()) as indexes, `node_events` ((node, 0, start) →
//! `NodeEvent`). A query by job id reads `records` directly; by user it scans that user's
//! index from the window's start; otherwise it scans `by_end` from the window's start.
//! Every candidate is checked against the full selection ([`matches`]), so an index entry
//! left stale by a crash between two tree writes costs a lookup, never a wrong answer:
//! index entries are written before the record and removed after it changed.

use super::store::{matches, record_key, window_end, RecordStore, StoreError};
use berth_proto::v1 as pb;
use prost::Message as _;

/// sled trees holding accounting records.
pub struct SledStore {
    location: String,
    records: sled::Tree,
    by_user: sled::Tree,
    by_end: sled::Tree,
    by_array: sled::Tree,
    node_events: sled::Tree,
}

impl SledStore {
    /// Opens (creating) the store's trees in `db`; `location` names it in errors.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when sled cannot open a tree.
    pub fn open(db: &sled::Db, location: &str) -> Result<SledStore, StoreError> {
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StoreError::Corrupt {
                location: location.to_string(),
                detail: e.to_string(),
            })
        };
        Ok(SledStore {
            location: location.to_string(),
            records: tree("acct_records")?,
            by_user: tree("acct_by_user")?,
            by_end: tree("acct_by_end")?,
            by_array: tree("acct_by_array")?,
            node_events: tree("acct_node_events")?,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            location: self.location.clone(),
            detail: e.to_string(),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<pb::JobRecord, StoreError> {
        pb::JobRecord::decode(bytes).map_err(|e| self.err(format!("record does not decode: {e}")))
    }

    fn put_one(&self, r: &pb::JobRecord) -> Result<(), StoreError> {
        let key = record_key(r.job_id, r.run);
        let old = match self.records.get(key).map_err(|e| self.err(e))? {
            Some(bytes) => Some(self.decode(&bytes)?),
            None => None,
        };
        if old
            .as_ref()
            .is_some_and(|o| o.recorded_index > r.recorded_index)
        {
            return Ok(());
        }
        self.by_user
            .insert(user_key(&r.user, r.end_time_ms, &key), &[])
            .map_err(|e| self.err(e))?;
        self.by_end
            .insert(end_key(r.end_time_ms, &key), &[])
            .map_err(|e| self.err(e))?;
        if r.has_array_task {
            self.by_array
                .insert([&r.array_job_id.to_be_bytes()[..], &key].concat(), &[])
                .map_err(|e| self.err(e))?;
        }
        self.records
            .insert(key, r.encode_to_vec())
            .map_err(|e| self.err(e))?;
        if let Some(o) = old {
            if o.user != r.user || o.end_time_ms != r.end_time_ms {
                self.remove_index(&o, &key)?;
            }
        }
        Ok(())
    }

    fn remove_index(&self, r: &pb::JobRecord, key: &[u8; 12]) -> Result<(), StoreError> {
        self.by_user
            .remove(user_key(&r.user, r.end_time_ms, key))
            .map_err(|e| self.err(e))?;
        self.by_end
            .remove(end_key(r.end_time_ms, key))
            .map_err(|e| self.err(e))?;
        if r.has_array_task {
            self.by_array
                .remove([&r.array_job_id.to_be_bytes()[..], key].concat())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Candidate keys for `q` from the best index, in no particular order.
    fn candidates(&self, q: &pb::RecordQuery) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        if !q.job_ids.is_empty() || !q.array_job_ids.is_empty() {
            for id in &q.job_ids {
                for kv in self.records.scan_prefix(id.to_be_bytes()) {
                    keys.push(kv.map_err(|e| self.err(e))?.0.to_vec());
                }
            }
            for id in &q.array_job_ids {
                for kv in self.by_array.scan_prefix(id.to_be_bytes()) {
                    keys.push(kv.map_err(|e| self.err(e))?.0[8..].to_vec());
                }
            }
            return Ok(keys);
        }
        let from = q.window_start_ms;
        if !q.users.is_empty() && q.users.iter().all(|u| u.parse::<u32>().is_err()) {
            for user in &q.users {
                let lo = user_key(user, from, &[0; 12]);
                let hi = user_key(user, u64::MAX, &[0xff; 12]);
                for kv in self.by_user.range(lo..=hi) {
                    let k = kv.map_err(|e| self.err(e))?.0;
                    keys.push(k[k.len() - 12..].to_vec());
                }
            }
            return Ok(keys);
        }
        for kv in self.by_end.range(end_key(from, &[0; 12]).to_vec()..) {
            let k = kv.map_err(|e| self.err(e))?.0;
            keys.push(k[8..].to_vec());
        }
        Ok(keys)
    }
}

fn user_key(user: &str, end_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 21);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(&end_ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn end_key(end_ms: u64, key: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&end_ms.to_be_bytes());
    k[8..].copy_from_slice(key);
    k
}

fn node_event_key(node: &str, start_ms: u64) -> Vec<u8> {
    let mut k = node.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&start_ms.to_be_bytes());
    k
}

impl RecordStore for SledStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn put(&self, records: &[pb::JobRecord]) -> Result<(), StoreError> {
        for r in records {
            self.put_one(r)?;
        }
        Ok(())
    }

    fn query(&self, q: &pb::RecordQuery) -> Result<Vec<pb::JobRecord>, StoreError> {
        let mut keys = self.candidates(q)?;
        keys.sort();
        keys.dedup();
        let end = window_end(q);
        let mut out = Vec::new();
        for key in keys {
            let Some(bytes) = self.records.get(&key).map_err(|e| self.err(e))? else {
                continue;
            };
            let r = self.decode(&bytes)?;
            if r.eligible_time_ms > end && r.start_time_ms > end {
                continue;
            }
            if matches(q, &r) {
                out.push(r);
                if q.limit > 0 && out.len() as u64 >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn purge_ended_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let mut purged = 0;
        let hi = end_key(cutoff_ms, &[0; 12]);
        let old: Vec<sled::IVec> = self
            .by_end
            .range(..hi.to_vec())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        for k in old {
            let key: [u8; 12] = k[8..].try_into().expect("index keys are 20 bytes");
            if let Some(bytes) = self.records.remove(key).map_err(|e| self.err(e))? {
                let r = self.decode(&bytes)?;
                self.remove_index(&r, &key)?;
                purged += 1;
            }
            self.by_end.remove(&k).map_err(|e| self.err(e))?;
        }
        let events: Vec<(sled::IVec, sled::IVec)> = self
            .node_events
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        for (k, v) in events {
            let e = pb::NodeEvent::decode(&v[..]).map_err(|e| self.err(e))?;
            if e.end_time_ms > 0 && e.end_time_ms < cutoff_ms {
                self.node_events.remove(k).map_err(|e| self.err(e))?;
            }
        }
        Ok(purged)
    }

    fn put_node_events(&self, events: &[pb::NodeEvent]) -> Result<(), StoreError> {
        for e in events {
            let key = node_event_key(&e.node, e.start_time_ms);
            if let Some(old) = self.node_events.get(&key).map_err(|e| self.err(e))? {
                let old = pb::NodeEvent::decode(&old[..]).map_err(|e| self.err(e))?;
                if old.recorded_index > e.recorded_index {
                    continue;
                }
            }
            self.node_events
                .insert(key, e.encode_to_vec())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn node_events(&self, start_ms: u64, end_ms: u64) -> Result<Vec<pb::NodeEvent>, StoreError> {
        let mut out = Vec::new();
        for kv in self.node_events.iter() {
            let (_, v) = kv.map_err(|e| self.err(e))?;
            let e = pb::NodeEvent::decode(&v[..]).map_err(|e| self.err(e))?;
            let ends_after = e.end_time_ms == 0 || e.end_time_ms >= start_ms;
            if e.start_time_ms <= end_ms && ends_after {
                out.push(e);
            }
        }
        Ok(out)
    }
}
