//! Durable Raft storage in sled: the log, the hard state, the conf state and the latest
//! snapshot of the state machine.
//!
//! `impl raft::Storage for SledStorage` is read-only, as raft-rs expects: the ready-loop in
//! [`crate::raft_loop`] writes through the inherent methods ([`SledStorage::append`],
//! [`SledStorage::set_hardstate`], [`SledStorage::apply_snapshot`], [`SledStorage::compact`])
//! and then calls [`SledStorage::flush`] once per ready, which is the only fsync: every
//! proposal that arrived while the previous ready was being handled rides the same flush.
//!
//! Layout (one sled database in `<state-dir>/raft`):
//! - tree `log`: big-endian index → `eraftpb::Entry` bytes, contiguous from `first_index`;
//! - tree `meta`: `format`, `hard_state`, `conf_state`, `snapshot_meta` and `snapshot_data`
//!   (kept apart so `term()` on the snapshot index never decodes the whole state).

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::collections::BTreeMap;
use std::path::Path;

/// Written once into a new database; a database without it was not made by berthd.
const FORMAT: &[u8] = b"berth-raft-1";

/// Failures of the durable store. All are fatal for the replica: raft-rs cannot go on after
/// a storage error, so the ready-loop stops and berthd exits with this message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open or write the database.
    #[error("state store {path}: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored record does not decode, or the directory holds something else.
    #[error("state store {path} is corrupt: {detail}")]
    Corrupt {
        /// The database directory.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// An append would leave a hole or rewrite compacted entries.
    #[error("raft log append out of order: {0}")]
    Order(String),
}

// Short local name; the public one is `StoreError`.
type Error = StoreError;

/// The writes the ready-loop makes to durable Raft storage, on top of raft-rs's read-only
/// [`raft::Storage`]. [`SledStorage`] is the real one; [`crate::mem_storage::MemStorage`]
/// keeps the same contract in memory for tests and the deterministic simulator.
///
/// Contract shared by both: writes may be buffered until [`LogStore::flush`], which makes
/// every earlier write durable at once; after a crash the store reopens with what the last
/// flush saw (or more, never less). Appends must be contiguous (checked, [`StoreError::Order`]).
pub trait LogStore: raft::Storage {
    /// Appends `entries`, first dropping stored entries at or after the first new index
    /// (a new leader overwrote them).
    ///
    /// # Errors
    /// [`StoreError::Order`] when they would leave a hole or rewrite compacted entries.
    fn append(&self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Replaces the hard state (term, vote, commit).
    ///
    /// # Errors
    /// A [`StoreError`] when it cannot be written.
    fn set_hardstate(&self, hs: &HardState) -> Result<(), StoreError>;
    /// Records a new commit index in the hard state.
    ///
    /// # Errors
    /// A [`StoreError`] when it cannot be written.
    fn set_commit(&self, commit: u64) -> Result<(), StoreError>;
    /// Replaces the voter configuration.
    ///
    /// # Errors
    /// A [`StoreError`] when it cannot be written.
    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError>;
    /// Every member's address, as last set.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the record does not decode.
    fn peers(&self) -> Result<BTreeMap<u64, String>, StoreError>;
    /// Replaces the members' addresses.
    ///
    /// # Errors
    /// A [`StoreError`] when it cannot be written.
    fn set_peers(&self, peers: &BTreeMap<u64, String>) -> Result<(), StoreError>;
    /// Index and term of the latest snapshot (0/0 when there is none).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when it does not decode.
    fn snapshot_meta(&self) -> Result<SnapshotMetadata, StoreError>;
    /// The latest snapshot with its state-machine bytes, if one was taken.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when it does not decode.
    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StoreError>;
    /// Installs a snapshot received from the leader: it replaces the whole log.
    ///
    /// # Errors
    /// A [`StoreError`] when it cannot be written.
    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StoreError>;
    /// Stores `data` (the state machine at `index`) as the snapshot and drops the log
    /// through `index`.
    ///
    /// # Errors
    /// [`StoreError::Order`] when `index` is outside the stored log.
    fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StoreError>;
    /// Makes every earlier write durable (the one fsync of a ready).
    ///
    /// # Errors
    /// A [`StoreError`] when the device fails.
    fn flush(&self) -> Result<(), StoreError>;
    /// Where the store lives, for error messages.
    fn location(&self) -> &str;
}

/// The write-side contiguity check both stores make: `entries` (not empty) must be
/// consecutive and start inside `[first, last + 1]` of the stored log.
///
/// # Errors
/// [`StoreError::Order`] naming the gap.
pub fn check_append(entries: &[Entry], first: u64, last: u64) -> Result<(), StoreError> {
    let first_new = entries.first().map(|e| e.index).unwrap_or(first);
    if first_new < first || first_new > last + 1 {
        return Err(StoreError::Order(format!(
            "entries start at {first_new}, log holds [{first}, {last}]"
        )));
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StoreError::Order(format!(
                "entry {} follows {}",
                pair[1].index, pair[0].index
            )));
        }
    }
    Ok(())
}

impl LogStore for SledStorage {
    fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        SledStorage::append(self, entries)
    }
    fn set_hardstate(&self, hs: &HardState) -> Result<(), StoreError> {
        SledStorage::set_hardstate(self, hs)
    }
    fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        SledStorage::set_commit(self, commit)
    }
    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        SledStorage::set_conf_state(self, cs)
    }
    fn peers(&self) -> Result<BTreeMap<u64, String>, StoreError> {
        SledStorage::peers(self)
    }
    fn set_peers(&self, peers: &BTreeMap<u64, String>) -> Result<(), StoreError> {
        SledStorage::set_peers(self, peers)
    }
    fn snapshot_meta(&self) -> Result<SnapshotMetadata, StoreError> {
        SledStorage::snapshot_meta(self)
    }
    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        SledStorage::latest_snapshot(self)
    }
    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StoreError> {
        SledStorage::apply_snapshot(self, snap)
    }
    fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StoreError> {
        SledStorage::compact(self, index, data)
    }
    fn flush(&self) -> Result<(), StoreError> {
        SledStorage::flush(self)
    }
    fn location(&self) -> &str {
        &self.path
    }
}

/// Raft log, hard state and snapshot in sled.
pub struct SledStorage {
    path: String,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl SledStorage {
    /// Opens (or creates) the store in `dir`. A new store starts with `voters` as its
    /// configuration, so a single-voter cluster can elect itself at once.
    ///
    /// # Errors
    /// [`Error::Sled`] when sled cannot open the directory; [`Error::Corrupt`] when the
    /// directory holds a database that berthd did not write or that does not decode.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<SledStorage, Error> {
        let path = dir.display().to_string();
        let sled_err = |source| Error::Sled {
            path: path.clone(),
            source,
        };
        let db = open_db(dir).map_err(sled_err)?;
        let log = db.open_tree("log").map_err(sled_err)?;
        let meta = db.open_tree("meta").map_err(sled_err)?;
        let store = SledStorage {
            path: path.clone(),
            db,
            log,
            meta,
        };
        match store.meta.get("format").map_err(sled_err)? {
            Some(f) if f.as_ref() == FORMAT => {}
            Some(f) => {
                return Err(
                    store.corrupt(format!("unknown format {:?}", String::from_utf8_lossy(&f)))
                )
            }
            None if !store.log.is_empty() || !store.meta.is_empty() => {
                return Err(store.corrupt("no berth format marker".into()))
            }
            None => store.initialize(voters)?,
        }
        // Decode everything once now, so corruption is reported at start, not mid-run.
        store.hard_state()?;
        store.conf_state()?;
        store.snapshot_meta()?;
        if let Some(last) = store.log.last().map_err(sled_err)? {
            decode_entry(&store.path, &last.1)?;
        }
        Ok(store)
    }

    fn initialize(&self, voters: &[u64]) -> Result<(), Error> {
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        self.put("conf_state", &cs)?;
        self.put("hard_state", &HardState::default())?;
        self.meta
            .insert("format", FORMAT)
            .map_err(|e| self.sled(e))?;
        self.flush()
    }

    fn sled(&self, source: sled::Error) -> Error {
        Error::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn put(&self, key: &str, msg: &dyn protobuf::Message) -> Result<(), Error> {
        let bytes = msg
            .write_to_bytes()
            .map_err(|e| self.corrupt(format!("encode {key}: {e}")))?;
        self.meta.insert(key, bytes).map_err(|e| self.sled(e))?;
        Ok(())
    }

    fn get<M: protobuf::Message>(&self, key: &str) -> Result<Option<M>, Error> {
        match self.meta.get(key).map_err(|e| self.sled(e))? {
            None => Ok(None),
            Some(bytes) => M::parse_from_bytes(&bytes)
                .map(Some)
                .map_err(|e| self.corrupt(format!("{key}: {e}"))),
        }
    }

    /// The persisted hard state (term, vote, commit).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if it does not decode.
    pub fn hard_state(&self) -> Result<HardState, Error> {
        Ok(self.get("hard_state")?.unwrap_or_default())
    }

    /// The persisted voter configuration.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if it does not decode.
    pub fn conf_state(&self) -> Result<ConfState, Error> {
        Ok(self.get("conf_state")?.unwrap_or_default())
    }

    /// Index and term of the latest snapshot (0/0 when there is none).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if it does not decode.
    pub fn snapshot_meta(&self) -> Result<SnapshotMetadata, Error> {
        Ok(self.get("snapshot_meta")?.unwrap_or_default())
    }

    /// The latest snapshot with its state-machine bytes, if one was taken.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if it does not decode.
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>, Error> {
        let meta = self.snapshot_meta()?;
        if meta.index == 0 {
            return Ok(None);
        }
        let data = self
            .meta
            .get("snapshot_data")
            .map_err(|e| self.sled(e))?
            .unwrap_or_default();
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = data.to_vec().into();
        Ok(Some(snap))
    }

    fn first(&self) -> Result<u64, Error> {
        Ok(self.snapshot_meta()?.index + 1)
    }

    fn last(&self) -> Result<u64, Error> {
        match self.log.last().map_err(|e| self.sled(e))? {
            Some((key, _)) => Ok(key_index(&key)),
            None => Ok(self.snapshot_meta()?.index),
        }
    }

    /// Appends `entries`, first dropping any stored entries at or after the first new index
    /// (a new leader overwriting an uncommitted suffix).
    ///
    /// # Errors
    /// [`Error::Order`] when the entries would leave a hole after the last index or start
    /// inside the compacted prefix; [`Error::Sled`] on write failure.
    pub fn append(&self, entries: &[Entry]) -> Result<(), Error> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let (first, last) = (self.first()?, self.last()?);
        check_append(entries, first, last)?;
        let mut batch = sled::Batch::default();
        for stale in first_new..=last {
            batch.remove(&index_key(stale));
        }
        for e in entries {
            let bytes = e
                .write_to_bytes()
                .map_err(|err| self.corrupt(format!("encode entry: {err}")))?;
            batch.insert(&index_key(e.index), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| self.sled(e))
    }

    /// Persists the hard state.
    ///
    /// # Errors
    /// [`Error::Sled`] on write failure.
    pub fn set_hardstate(&self, hs: &HardState) -> Result<(), Error> {
        self.put("hard_state", hs)
    }

    /// Persists the voter configuration after a conf change was applied.
    ///
    /// # Errors
    /// [`Error::Sled`] on write failure.
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), Error> {
        self.put("conf_state", cs)
    }

    /// The peer addresses learnt from applied conf changes (`id=url` per line).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the record does not parse.
    pub fn peers(&self) -> Result<std::collections::BTreeMap<u64, String>, Error> {
        let raw = self
            .meta
            .get("peers")
            .map_err(|e| self.sled(e))?
            .unwrap_or_default();
        let text =
            String::from_utf8(raw.to_vec()).map_err(|e| self.corrupt(format!("peers: {e}")))?;
        text.lines()
            .map(|l| {
                let (id, url) = l
                    .split_once('=')
                    .ok_or_else(|| self.corrupt(format!("peers line {l:?}")))?;
                let id = id
                    .parse()
                    .map_err(|_| self.corrupt(format!("peers line {l:?}")))?;
                Ok((id, url.to_string()))
            })
            .collect()
    }

    /// Records the peer addresses (so a restart knows members added at runtime).
    ///
    /// # Errors
    /// [`Error::Sled`] on write failure.
    pub fn set_peers(&self, peers: &std::collections::BTreeMap<u64, String>) -> Result<(), Error> {
        let text: String = peers
            .iter()
            .map(|(id, url)| format!("{id}={url}\n"))
            .collect();
        self.meta
            .insert("peers", text.as_bytes())
            .map_err(|e| self.sled(e))?;
        Ok(())
    }

    /// Persists a new commit index (from a light ready).
    ///
    /// # Errors
    /// [`Error::Sled`] on write failure.
    pub fn set_commit(&self, commit: u64) -> Result<(), Error> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.put("hard_state", &hs)
    }

    /// Installs a snapshot received from the leader: the log up to its index is dropped.
    ///
    /// # Errors
    /// [`Error::Sled`] on write failure.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), Error> {
        let meta = snap.get_metadata();
        let mut hs = self.hard_state()?;
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.put("hard_state", &hs)?;
        self.put("conf_state", meta.get_conf_state())?;
        self.store_snapshot(snap)?;
        self.truncate_through(self.last()?.max(meta.index))
    }

    /// Records a snapshot of the local state machine taken at `index` and drops the log up
    /// to it, so the log never grows without bound.
    ///
    /// # Errors
    /// [`Error::Order`] if `index` is beyond the last entry; [`Error::Sled`] on failure.
    pub fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), Error> {
        let last = self.last()?;
        if index > last || index < self.first()? {
            return Err(Error::Order(format!(
                "compact to {index}, log holds [{}, {last}]",
                self.first()?
            )));
        }
        let term = raft::Storage::term(self, index)
            .map_err(|e| self.corrupt(format!("term of {index}: {e}")))?;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state()?);
        snap.data = data.into();
        self.store_snapshot(&snap)?;
        self.truncate_through(index)
    }

    fn store_snapshot(&self, snap: &Snapshot) -> Result<(), Error> {
        self.meta
            .insert("snapshot_data", snap.data.to_vec())
            .map_err(|e| self.sled(e))?;
        self.put("snapshot_meta", snap.get_metadata())
    }

    fn truncate_through(&self, index: u64) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(index)).keys() {
            batch.remove(key.map_err(|e| self.sled(e))?);
        }
        self.log.apply_batch(batch).map_err(|e| self.sled(e))
    }

    /// Makes everything written so far durable (fsync).
    ///
    /// # Errors
    /// [`Error::Sled`] when the flush fails.
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush().map(|_| ()).map_err(|e| self.sled(e))
    }

    /// A handle that flushes this store from another thread (the Raft loop's flusher).
    pub fn flusher(&self) -> Flusher {
        Flusher {
            db: self.db.clone(),
            path: self.path.clone(),
        }
    }

    fn entry(&self, index: u64) -> Result<Entry, Error> {
        match self.log.get(index_key(index)).map_err(|e| self.sled(e))? {
            Some(bytes) => decode_entry(&self.path, &bytes),
            None => Err(self.corrupt(format!("entry {index} missing inside the log"))),
        }
    }
}

/// Makes a [`SledStorage`]'s writes durable from another thread, so the Raft thread can
/// keep appending, sending and applying while the fsync runs. sled's flush covers every
/// write made before it starts: a flush begun after the writes of ready `n` makes ready `n`
/// (and every earlier one) durable.
#[derive(Clone)]
pub struct Flusher {
    db: sled::Db,
    path: String,
}

impl Flusher {
    /// Makes every write made before this call durable.
    ///
    /// # Errors
    /// [`StoreError::Sled`] when the device fails.
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush().map(|_| ()).map_err(|source| Error::Sled {
            path: self.path.clone(),
            source,
        })
    }
}

/// Opens sled, waiting up to 2 s for the file lock: a database dropped in this process
/// releases its lock only when sled's background flusher lets go of it.
fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&key[..8]);
    u64::from_be_bytes(buf)
}

fn decode_entry(path: &str, bytes: &[u8]) -> Result<Entry, Error> {
    Entry::parse_from_bytes(bytes).map_err(|e| Error::Corrupt {
        path: path.into(),
        detail: format!("log entry: {e}"),
    })
}

fn other(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state().map_err(other)?,
            self.conf_state().map_err(other)?,
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last) = (self.first().map_err(other)?, self.last().map_err(other)?);
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= last + 1,
            "entries [{low}, {high}) asked beyond last index {last}"
        );
        let mut out = Vec::with_capacity((high - low) as usize);
        for index in low..high {
            let e = self.entry(index).map_err(other)?;
            // Contiguity check on the read side, as on the write side.
            assert_eq!(
                e.index, index,
                "log entry stored under index {index} says {}",
                e.index
            );
            out.push(e);
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot_meta().map_err(other)?;
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < snap.index + 1 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last().map_err(other)? {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry(idx).map_err(other)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.first().map_err(other)
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.last().map_err(other)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match self.latest_snapshot().map_err(other)? {
            Some(snap) if snap.get_metadata().index >= request_index => Ok(snap),
            _ => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("cmd{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn append_truncate_compact_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        // A new leader rewrites index 3 onwards.
        s.append(&[entry(3, 2), entry(4, 2)]).unwrap();
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.last_index().unwrap(), 4);
        let got: Vec<u64> = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| e.term)
            .collect();
        assert_eq!(got, vec![1, 1, 2, 2]);
        s.compact(2, b"state@2".to_vec()).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1, "term of the snapshot index is kept");
        assert!(matches!(
            s.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        s.set_hardstate(&HardState {
            term: 2,
            commit: 4,
            ..Default::default()
        })
        .unwrap();
        s.flush().unwrap();
        drop(s);

        let s = SledStorage::open(dir.path(), &[9]).unwrap();
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 4);
        assert_eq!(
            s.initial_state().unwrap().conf_state.voters,
            vec![1],
            "existing conf state wins"
        );
        assert_eq!(&s.latest_snapshot().unwrap().unwrap().data[..], b"state@2");
        assert_eq!(s.last_index().unwrap(), 4);
    }

    #[test]
    fn out_of_order_appends_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path(), &[1]).unwrap();
        assert!(
            matches!(s.append(&[entry(2, 1)]), Err(Error::Order(_))),
            "hole after 0"
        );
        s.append(&[entry(1, 1)]).unwrap();
        assert!(
            matches!(s.append(&[entry(2, 1), entry(4, 1)]), Err(Error::Order(_))),
            "gap inside"
        );
        assert_eq!(
            s.last_index().unwrap(),
            1,
            "a refused append changes nothing"
        );
    }

    #[test]
    fn foreign_or_corrupt_databases_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert("x", "y").unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("unrelated", "1")
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledStorage::open(dir.path(), &[1])
            .err()
            .expect("foreign db accepted");
        assert!(err.to_string().contains("no berth format marker"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open(dir.path(), &[1]).unwrap();
            s.meta.insert("hard_state", &b"\xff\xff\xff"[..]).unwrap();
            s.flush().unwrap();
        }
        let err = SledStorage::open(dir.path(), &[1])
            .err()
            .expect("corrupt hard state accepted");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
