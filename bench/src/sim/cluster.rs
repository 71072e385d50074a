//! The simulated replicas: berthd's real [`Replica`] (raft-rs, the ready-loop, the state
//! machine) over [`MemStorage`], with messages going to the simulated network, and the
//! checkers that watch them.
//!
//! A crash drops a replica's process state; its [`Disk`] survives with what the last flush
//! saw (or, half the time, with everything: a crash right after a background flush).

use super::network::{Faults, Network, Sent};
use super::Failure;
use berth_scheduler::mem_storage::{Disk, MemStorage};
use berth_scheduler::raft_loop::{apply_entry, Mailbox, RaftConfig, Replica};
use berth_scheduler::state_machine::StateMachine;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

/// Messages a replica sent during its last ready, waiting for the network.
#[derive(Clone, Default)]
pub struct SimMailbox(Rc<RefCell<Vec<Message>>>);

impl Mailbox for SimMailbox {
    fn send(&mut self, msg: Message) {
        self.0.borrow_mut().push(msg);
    }
    // Membership is fixed in the simulation: every replica can reach every other.
    fn add_peer(&mut self, _id: u64, _url: &str) {}
    fn remove_peer(&mut self, _id: u64) {}
}

/// A replica of the simulated berthd.
pub type SimNode = Replica<MemStorage, SimMailbox>;

/// One replica slot: its disk always, its process while it is up.
pub struct SimReplica {
    /// Raft id.
    pub id: u64,
    disk: Disk,
    /// The running process (None while crashed).
    pub node: Option<SimNode>,
    mailbox: SimMailbox,
    next_tick_ms: u64,
    /// When a crashed replica comes back.
    pub restart_at_ms: u64,
    /// How many times it started.
    pub boots: u64,
    last_checked_index: u64,
    /// A ready whose writes await their flush: the simulated fsync completes one step
    /// later, so a crash in between loses them, as a crash during a real fsync does.
    flush_due: Option<u64>,
}

/// One Raft tick of the simulated replicas, in milliseconds (jittered per replica).
pub const TICK_MS: u64 = 10;

/// All replicas plus what the checkers remember across the run.
pub struct Cluster {
    /// The replicas, by position (`id` = position + 1).
    pub replicas: Vec<SimReplica>,
    /// Every entry any replica applied, by index: the committed log as it happened.
    pub ledger: BTreeMap<u64, Entry>,
    /// Hash of the applied state first seen at each index, and who had it.
    states_at: BTreeMap<u64, (u64, u64)>,
    snapshot_entries: u64,
}

fn state_hash(sm: &StateMachine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sm.encode().hash(&mut h);
    h.finish()
}

impl Cluster {
    /// `n` fresh replicas, all up, compacting every `snapshot_entries` entries.
    pub fn new(n: u64, snapshot_entries: u64, rng: &mut ChaCha8Rng) -> Result<Cluster, Failure> {
        let voters: Vec<u64> = (1..=n).collect();
        let mut cluster = Cluster {
            replicas: Vec::new(),
            ledger: BTreeMap::new(),
            states_at: BTreeMap::new(),
            snapshot_entries,
        };
        for id in 1..=n {
            let store = MemStorage::new(&format!("sim://replica-{id}"), &voters);
            cluster.replicas.push(SimReplica {
                id,
                disk: store.disk(),
                node: None,
                mailbox: SimMailbox::default(),
                next_tick_ms: rng.gen_range(0..TICK_MS),
                restart_at_ms: 0,
                boots: 0,
                flush_due: None,
                last_checked_index: 0,
            });
            cluster.boot(id as usize - 1, rng)?;
        }
        Ok(cluster)
    }

    fn config(&self, id: u64) -> RaftConfig {
        let mut cfg = RaftConfig::new(id, format!("sim://replica-{id}").into());
        cfg.peers = self
            .replicas
            .iter()
            .map(|r| (r.id, format!("sim://{}", r.id)))
            .collect();
        cfg.snapshot_entries = self.snapshot_entries;
        cfg.fixed_election_timeout = true;
        cfg
    }

    /// Starts replica `i` from its disk.
    fn boot(&mut self, i: usize, rng: &mut ChaCha8Rng) -> Result<(), Failure> {
        let id = self.replicas[i].id;
        let cfg = self.config(id);
        let r = &mut self.replicas[i];
        let store = MemStorage::recover(&format!("sim://replica-{id}"), &r.disk);
        r.mailbox = SimMailbox::default();
        let mut node = Replica::open(cfg, store, r.mailbox.clone(), rng.gen())
            .map_err(|e| Failure::safety(format!("replica {id} cannot restart: {e}")))?;
        node.record_applied();
        r.node = Some(node);
        r.boots += 1;
        r.last_checked_index = 0;
        Ok(())
    }

    /// Crashes replica `i` until `restart_at_ms`. Unflushed writes are lost unless
    /// `keep_unflushed` (a crash right after the OS wrote them back anyway).
    pub fn crash(&mut self, i: usize, keep_unflushed: bool, restart_at_ms: u64) {
        let r = &mut self.replicas[i];
        if let Some(node) = r.node.take() {
            if keep_unflushed {
                let _ = berth_scheduler::storage::LogStore::flush(node.store());
            }
        }
        r.mailbox.0.borrow_mut().clear();
        r.flush_due = None;
        r.restart_at_ms = restart_at_ms;
    }

    /// Restarts crashed replicas whose time has come (all of them when `force`).
    pub fn restart_due(
        &mut self,
        now_ms: u64,
        force: bool,
        rng: &mut ChaCha8Rng,
    ) -> Result<(), Failure> {
        for i in 0..self.replicas.len() {
            let r = &self.replicas[i];
            if r.node.is_none() && (force || now_ms >= r.restart_at_ms) {
                self.boot(i, rng)?;
            }
        }
        Ok(())
    }

    /// Number of replicas up.
    pub fn up(&self) -> usize {
        self.replicas.iter().filter(|r| r.node.is_some()).count()
    }

    /// The position of the replica that leads in the highest term, if one is up.
    pub fn leader(&self) -> Option<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.node
                    .as_ref()
                    .filter(|n| n.is_leader())
                    .map(|n| (n.term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// The replica at position `i`, if up.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut SimNode> {
        self.replicas[i].node.as_mut()
    }

    /// One millisecond for the replicas: deliver due messages, tick those whose tick is
    /// due, run every ready, and send what they produced.
    pub fn step(
        &mut self,
        now_ms: u64,
        net: &mut Network,
        faults: Faults,
        rng: &mut ChaCha8Rng,
    ) -> Result<(), Failure> {
        for msg in net.due(now_ms) {
            self.deliver(msg);
        }
        for r in &mut self.replicas {
            let Some(node) = r.node.as_mut() else {
                continue;
            };
            if now_ms >= r.next_tick_ms {
                node.tick();
                r.next_tick_ms = now_ms + rng.gen_range(TICK_MS - 3..=TICK_MS + 3);
            }
        }
        for i in 0..self.replicas.len() {
            self.ready(i)?;
        }
        for i in 0..self.replicas.len() {
            let sent: Vec<Message> = std::mem::take(&mut *self.replicas[i].mailbox.0.borrow_mut());
            for msg in sent {
                self.transmit(msg, now_ms, net, faults, rng);
            }
        }
        Ok(())
    }

    fn deliver(&mut self, msg: Message) {
        let (from, to) = (msg.from as usize - 1, msg.to as usize - 1);
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        match self.replicas[to].node.as_mut() {
            Some(node) => {
                node.step(msg);
                if snapshot {
                    if let Some(sender) = self.replicas[from].node.as_mut() {
                        sender.report_snapshot(to as u64 + 1, true);
                    }
                }
            }
            // A connection to a dead process fails: the sender's transport says so.
            None => {
                if let Some(sender) = self.replicas[from].node.as_mut() {
                    sender.report_unreachable(to as u64 + 1);
                    if snapshot {
                        sender.report_snapshot(to as u64 + 1, false);
                    }
                }
            }
        }
    }

    fn transmit(
        &mut self,
        msg: Message,
        now_ms: u64,
        net: &mut Network,
        faults: Faults,
        rng: &mut ChaCha8Rng,
    ) {
        let (from, to) = (msg.from as usize - 1, msg.to);
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let cut = net.island().contains(&msg.from) != net.island().contains(&msg.to);
        if let Sent::Lost = net.send(msg, now_ms, faults, rng) {
            let Some(sender) = self.replicas[from].node.as_mut() else {
                return;
            };
            if cut {
                sender.report_unreachable(to);
            }
            if snapshot {
                sender.report_snapshot(to, false);
            }
        }
    }

    /// Runs replica `i`'s ready and the checkers that watch every apply.
    fn ready(&mut self, i: usize) -> Result<(), Failure> {
        let r = &mut self.replicas[i];
        let (id, last_checked) = (r.id, r.last_checked_index);
        let Some(node) = r.node.as_mut() else {
            return Ok(());
        };
        let flush_due = r.flush_due.take();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Last step's fsync completes first, then this step's ready runs.
            if let Some(number) = flush_due {
                berth_scheduler::storage::LogStore::flush(node.store())?;
                node.on_persisted(number);
            }
            node.on_ready()
        }));
        match result {
            Ok(Ok(due)) => r.flush_due = due,
            Ok(Err(e)) => return Err(Failure::safety(format!("replica {id}: storage error {e}"))),
            Err(panic) => {
                return Err(Failure::safety(format!(
                    "replica {id} panicked: {}",
                    panic_text(&panic)
                )))
            }
        }
        for entry in node.take_applied() {
            match self.ledger.get(&entry.index) {
                Some(seen) if seen.term != entry.term || seen.data != entry.data => {
                    return Err(Failure::safety(format!(
                        "replica {id} applied a different entry at index {} (term {} vs {})",
                        entry.index, entry.term, seen.term
                    )));
                }
                Some(_) => {}
                None => {
                    self.ledger.insert(entry.index, entry);
                }
            }
        }
        let sm = node.state();
        let index = sm.applied_index();
        if index != last_checked {
            let hash = state_hash(&sm);
            check_gpus(id, &sm)?;
            drop(sm);
            self.replicas[i].last_checked_index = index;
            match self.states_at.get(&index) {
                Some(&(other, h)) if h != hash => {
                    return Err(Failure::safety(format!(
                        "replicas {other} and {id} differ at applied index {index}"
                    )));
                }
                Some(_) => {}
                None => {
                    self.states_at.insert(index, (id, hash));
                }
            }
        }
        Ok(())
    }

    /// Replays the ledger from empty into a fresh state machine.
    ///
    /// # Errors
    /// A [`Failure`] when the ledger has a hole (some committed entry nobody applied).
    pub fn replay(&self) -> Result<StateMachine, Failure> {
        let mut sm = StateMachine::default();
        for (expect, (&index, entry)) in (1..).zip(&self.ledger) {
            if index != expect {
                return Err(Failure::end(format!("ledger misses index {expect}")));
            }
            if entry.get_entry_type() == EntryType::EntryConfChange {
                sm.skip(index);
            } else {
                apply_entry(&mut sm, entry);
            }
        }
        Ok(sm)
    }
}

/// No GPU in two running jobs' allocations (a time-sliced GPU in at most its `replicas`),
/// node records agree with the jobs, gangs whole.
pub fn check_gpus(replica: u64, sm: &StateMachine) -> Result<(), Failure> {
    use berth_proto::v1::JobState;
    let mut held: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for job in sm.jobs().filter(|j| j.state() == JobState::Running) {
        let spec = job.spec.as_ref();
        let nodes: BTreeSet<&str> = job.allocations.iter().map(|a| a.node.as_str()).collect();
        let want = spec.map(|s| s.nodes.max(1)).unwrap_or(1) as usize;
        // A pod group's reservation shrinks node by node as members claim their slots.
        let reservation = spec.is_some_and(|s| s.pod.is_none() && s.pod_group.is_some());
        if !reservation && (nodes.len() != want || job.allocations.len() != want) {
            return Err(Failure::safety(format!(
                "replica {replica}: job {} runs on {} of its {want} nodes",
                job.id,
                nodes.len()
            )));
        }
        for a in &job.allocations {
            for uuid in &a.gpu_uuids {
                held.entry((&a.node, uuid)).or_default().push(job.id);
            }
        }
    }
    for node in sm.nodes().filter_map(|n| n.inventory.as_ref()) {
        for gpu in &node.gpus {
            let holders = held
                .remove(&(node.name.as_str(), gpu.uuid.as_str()))
                .unwrap_or_default();
            let shares = gpu.replicas.max(1) as usize;
            let recorded: Vec<u64> = if shares > 1 {
                gpu.share_job_ids.clone()
            } else {
                (gpu.job_id != 0)
                    .then_some(gpu.job_id)
                    .into_iter()
                    .collect()
            };
            let (mut a, mut b) = (holders.clone(), recorded.clone());
            a.sort_unstable();
            b.sort_unstable();
            if holders.len() > shares || a != b {
                return Err(Failure::safety(format!(
                    "replica {replica}: GPU {} on {} ({shares} share(s)) held by jobs {holders:?}, \
                     recorded as {recorded:?}",
                    gpu.uuid, node.name
                )));
            }
        }
    }
    if let Some(((node, uuid), jobs)) = held.into_iter().next() {
        return Err(Failure::safety(format!(
            "replica {replica}: jobs {jobs:?} hold GPU {uuid}, which {node} does not have"
        )));
    }
    Ok(())
}

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}
