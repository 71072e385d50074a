//! Raft storage in memory with a separate "durable" copy, for the deterministic simulator
//! and tests.
//!
//! It keeps [`LogStore`]'s contract the way [`crate::storage::SledStorage`] does (same
//! contiguity checks, same snapshot and compaction rules), and adds what a simulator needs
//! to crash a replica: writes land in a working copy, and only [`LogStore::flush`] copies it
//! to the [`Disk`] shared with the simulator. A crash drops the working copy; the replica
//! restarts from [`MemStorage::recover`] with exactly what was flushed, as a replica whose
//! fsync had not returned would.

use crate::storage::{LogStore, StoreError};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything a replica stores. `entries` start right after `snapshot`'s index.
#[derive(Clone, Debug, Default)]
pub struct DiskState {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// The voters.
    pub conf_state: ConfState,
    /// The latest snapshot (index 0: none).
    pub snapshot: Snapshot,
    /// The log after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Members' addresses.
    pub peers: BTreeMap<u64, String>,
}

/// What survives a crash: the state as of the last flush. Cloning shares it.
pub type Disk = Arc<Mutex<DiskState>>;

/// In-memory [`LogStore`] over a working copy, flushed into a [`Disk`].
pub struct MemStorage {
    label: String,
    working: Mutex<DiskState>,
    disk: Disk,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemStorage {
    /// A new, empty store whose configuration is `voters`, already flushed to a new disk.
    pub fn new(label: &str, voters: &[u64]) -> MemStorage {
        let mut state = DiskState::default();
        state.conf_state.voters = voters.to_vec();
        let disk = Arc::new(Mutex::new(state));
        MemStorage::recover(label, &disk)
    }

    /// Reopens the store from what was flushed to `disk` (a restart after a crash).
    pub fn recover(label: &str, disk: &Disk) -> MemStorage {
        MemStorage {
            label: label.to_string(),
            working: Mutex::new(lock(disk).clone()),
            disk: disk.clone(),
        }
    }

    /// The disk this store flushes to.
    pub fn disk(&self) -> Disk {
        self.disk.clone()
    }

    fn bounds(s: &DiskState) -> (u64, u64) {
        let first = s.snapshot.get_metadata().index + 1;
        (first, first + s.entries.len() as u64 - 1)
    }
}

fn unavailable(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

impl LogStore for MemStorage {
    fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let mut s = lock(&self.working);
        let (first, last) = MemStorage::bounds(&s);
        crate::storage::check_append(entries, first, last)?;
        s.entries.truncate((first_new - first) as usize);
        s.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hardstate(&self, hs: &HardState) -> Result<(), StoreError> {
        lock(&self.working).hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        lock(&self.working).hard_state.commit = commit;
        Ok(())
    }

    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        lock(&self.working).conf_state = cs.clone();
        Ok(())
    }

    fn peers(&self) -> Result<BTreeMap<u64, String>, StoreError> {
        Ok(lock(&self.working).peers.clone())
    }

    fn set_peers(&self, peers: &BTreeMap<u64, String>) -> Result<(), StoreError> {
        lock(&self.working).peers = peers.clone();
        Ok(())
    }

    fn snapshot_meta(&self) -> Result<SnapshotMetadata, StoreError> {
        Ok(lock(&self.working).snapshot.get_metadata().clone())
    }

    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let s = lock(&self.working);
        Ok((s.snapshot.get_metadata().index > 0).then(|| s.snapshot.clone()))
    }

    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let mut s = lock(&self.working);
        let meta = snap.get_metadata();
        s.hard_state.term = s.hard_state.term.max(meta.term);
        s.hard_state.commit = s.hard_state.commit.max(meta.index);
        s.conf_state = meta.get_conf_state().clone();
        s.snapshot = snap.clone();
        s.entries.clear();
        Ok(())
    }

    fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StoreError> {
        let mut s = lock(&self.working);
        let (first, last) = MemStorage::bounds(&s);
        if index > last || index < first {
            return Err(StoreError::Order(format!(
                "compact to {index}, log holds [{first}, {last}]"
            )));
        }
        let drop = (index - first + 1) as usize;
        let term = s.entries[drop - 1].term;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(s.conf_state.clone());
        snap.data = data.into();
        s.snapshot = snap;
        s.entries.drain(..drop);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        *lock(&self.disk) = lock(&self.working).clone();
        Ok(())
    }

    fn location(&self) -> &str {
        &self.label
    }
}

impl raft::Storage for MemStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let s = lock(&self.working);
        Ok(RaftState::new(s.hard_state.clone(), s.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let s = lock(&self.working);
        let (first, last) = MemStorage::bounds(&s);
        if low < first {
            return Err(unavailable(StorageError::Compacted));
        }
        assert!(
            high <= last + 1,
            "entries [{low}, {high}) asked beyond last index {last}"
        );
        let mut out = s.entries[(low - first) as usize..(high - first) as usize].to_vec();
        for (offset, e) in out.iter().enumerate() {
            assert_eq!(e.index, low + offset as u64, "log entry out of place");
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let s = lock(&self.working);
        let snap = s.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        let (first, last) = MemStorage::bounds(&s);
        if idx < first {
            return Err(unavailable(StorageError::Compacted));
        }
        if idx > last {
            return Err(unavailable(StorageError::Unavailable));
        }
        Ok(s.entries[(idx - first) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(MemStorage::bounds(&lock(&self.working)).0)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(MemStorage::bounds(&lock(&self.working)).1)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let s = lock(&self.working);
        if s.snapshot.get_metadata().index >= request_index && s.snapshot.get_metadata().index > 0 {
            Ok(s.snapshot.clone())
        } else {
            Err(unavailable(StorageError::SnapshotTemporarilyUnavailable))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SledStorage;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    /// The same writes give the same answers from both stores: the simulator's store keeps
    /// the real one's contract.
    #[test]
    fn agrees_with_sled_storage() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStorage::open(dir.path(), &[1]).unwrap();
        let mem = MemStorage::new("mem", &[1]);
        fn script<S: LogStore>(s: &S) -> Vec<String> {
            let mut seen = Vec::new();
            let mut note = |r: String| seen.push(r);
            note(format!(
                "{:?}",
                s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            ));
            note(format!("{:?}", s.append(&[entry(5, 1)]).is_err()));
            note(format!(
                "{:?}",
                s.append(&[entry(3, 2), entry(5, 2)]).is_err()
            ));
            note(format!("{:?}", s.append(&[entry(3, 2), entry(4, 2)])));
            note(format!("{:?}", s.term(3)));
            note(format!("{:?}", s.compact(2, b"state@2".to_vec())));
            note(format!("{:?}", s.compact(9, vec![]).is_err()));
            note(format!("{:?}", (s.first_index(), s.last_index())));
            note(format!("{:?}", s.term(1)));
            note(format!("{:?}", s.term(2)));
            note(format!(
                "{:?}",
                s.entries(3, 5, None, GetEntriesContext::empty(false))
            ));
            note(format!(
                "{:?}",
                s.entries(2, 3, None, GetEntriesContext::empty(false))
            ));
            note(format!("{:?}", s.snapshot(2, 0).map(|x| x.data.to_vec())));
            note(format!("{:?}", s.snapshot(3, 0).is_err()));
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 10;
            snap.mut_metadata().term = 3;
            snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
            note(format!("{:?}", s.apply_snapshot(&snap)));
            note(format!("{:?}", (s.first_index(), s.last_index())));
            note(format!("{:?}", s.initial_state()));
            note(format!("{:?}", s.set_commit(10)));
            note(format!("{:?}", s.initial_state().map(|r| r.hard_state)));
            seen
        }
        assert_eq!(script(&sled), script(&mem));
    }

    #[test]
    fn a_crash_keeps_only_what_was_flushed() {
        let mem = MemStorage::new("mem", &[1]);
        mem.append(&[entry(1, 1)]).unwrap();
        mem.flush().unwrap();
        mem.append(&[entry(2, 1)]).unwrap();
        let disk = mem.disk();
        drop(mem);
        let again = MemStorage::recover("mem", &disk);
        assert_eq!(again.last_index().unwrap(), 1);
    }
}
