//! The Raft driver: one thread owns the raft-rs `RawNode`, its storage and the state
//! machine, and runs the ready-loop of raft-rs's `five_mem_node` example.
//!
//! Everything else talks to it through a [`RaftHandle`]: `propose` a command and await its
//! [`Outcome`] once it is committed and applied; read the applied state through
//! [`RaftHandle::state`]; subscribe to the [`Effect`]s of applied commands. Only this thread
//! writes state, so there is exactly one order of changes: the log's.
//!
//! The loop itself is a [`Replica`], generic over its storage ([`LogStore`]) and where its
//! messages go ([`Mailbox`]), and it never reads a clock: the thread here ticks it every
//! `RaftConfig::tick` of wall time and feeds it what arrives on its channel, while the
//! deterministic simulator (`bench/src/sim`) drives the very same code with a fake clock,
//! an in-memory network and [`crate::mem_storage::MemStorage`].
//!
//! Persistence is asynchronous (raft-rs `advance_append_async` / `on_persist_ready`): a
//! ready's entries and hard state go into the store's memory, where raft-rs can read them
//! at once, and a flusher thread makes them durable while this thread goes on proposing,
//! sending appends to followers and applying what is already durable on a quorum. Messages
//! that may only leave once the ready is durable (votes, a follower's acks) are held until
//! the flush reports back. One flush runs at a time: every ready written while it runs is
//! covered by the next one, so the fsync rate stays at the disk's pace however many clients
//! submit, and each fsync carries more entries as load grows.
//!
//! Safety does not move: raft-rs hands out as committed only entries that a quorum holds
//! durably *and* this replica has made durable, and a proposal is answered only when its
//! entry is applied, so every acknowledged submit is on disk on a quorum.

use crate::state_machine::{Effect, Outcome, StateMachine};
use crate::storage::{Flusher, LogStore, SledStorage, StoreError};
use crate::transport::{Delivery, Outbox};
use berth_proto::v1 as pb;
use prost::Message as _;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// How the replica runs.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This replica's Raft id (1 for the single-replica slice).
    pub id: u64,
    /// Directory of the sled database.
    pub state_dir: PathBuf,
    /// One Raft tick; elections take 10 ticks, heartbeats 3.
    pub tick: Duration,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_entries: u64,
    /// Every replica's Raft id and gRPC URL, this one included. Empty: a single voter.
    pub peers: BTreeMap<u64, String>,
    /// Start with no voters and wait to be added by the group's leader (a new member).
    pub join: bool,
    /// Use a fixed election timeout instead of raft-rs's random one. raft-rs draws it from
    /// the thread RNG, which a seeded simulator cannot replay; the simulator randomizes
    /// tick timing per replica instead, which spreads elections the same way.
    pub fixed_election_timeout: bool,
    /// TLS to peers (the CA and this replica's certificate); `None`: plain TCP.
    pub peer_profile: Option<berth_auth::profile::Profile>,
}

impl RaftConfig {
    /// Defaults for replica `id` storing in `state_dir`.
    pub fn new(id: u64, state_dir: PathBuf) -> RaftConfig {
        RaftConfig {
            id,
            state_dir,
            tick: Duration::from_millis(100),
            snapshot_entries: 10_000,
            peers: Default::default(),
            join: false,
            fixed_election_timeout: false,
            peer_profile: None,
        }
    }

    /// The voters a brand-new store starts with.
    pub fn initial_voters(&self) -> Vec<u64> {
        if self.join {
            vec![]
        } else if self.peers.is_empty() {
            vec![self.id]
        } else {
            self.peers.keys().copied().collect()
        }
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        let election_tick = 10;
        raft::Config {
            id: self.id,
            election_tick,
            heartbeat_tick: 3,
            max_election_tick: if self.fixed_election_timeout {
                election_tick + 1
            } else {
                0
            },
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        }
    }
}

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    /// The proposal queue is full; the caller should retry later.
    #[error("resource exhausted, retry: berthd's proposal queue is full")]
    Busy,
    /// This replica is not the leader.
    #[error("this berthd replica is not the leader")]
    NotLeader,
    /// The Raft thread has stopped (shutdown or a fatal storage error).
    #[error("berthd is shutting down")]
    Stopped,
    /// Leadership moved before the command committed: it may or may not take effect.
    #[error("berthd leadership changed before the request committed; check before retrying")]
    LeadershipLost,
}

/// Errors that stop the replica from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The durable store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot in the store does not decode as berth state.
    #[error("state snapshot in {0} does not decode: {1}")]
    Snapshot(String, prost::DecodeError),
    /// raft-rs refused the configuration or state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// Where a proposal's outcome is sent once it is applied (or why it never will be).
pub type ReplySender = oneshot::Sender<Result<Outcome, ProposeError>>;
/// The caller's end of a [`ReplySender`]. A closed channel means the replica went away
/// (crashed or stopped) without knowing the outcome.
pub type ReplyReceiver = oneshot::Receiver<Result<Outcome, ProposeError>>;

pub(crate) struct Proposal {
    cmd: pb::Command,
    reply: ReplySender,
}

/// What other threads hand the Raft thread.
pub(crate) enum Input {
    /// A command to propose (leader only).
    Propose(Box<Proposal>),
    /// A message from a peer replica.
    Step(Box<Message>),
    /// What became of messages sent to a peer (from the transport).
    Delivery(Delivery),
    /// A linearizable read wants to know when the applied state is current (ReadIndex).
    ReadIndex(oneshot::Sender<()>),
    /// A membership change to propose (leader only).
    ConfChange(Box<(raft::eraftpb::ConfChange, ReplySender)>),
    /// The flusher made every ready up to this number durable (or failed: fatal).
    Persisted(Result<u64, StoreError>),
}

/// Term and role, published by the Raft thread after every ready.
#[derive(Default)]
struct Status {
    term: AtomicU64,
    leader: AtomicBool,
    leader_id: AtomicU64,
    stopped: AtomicBool,
}

/// Called by the Raft thread for every applied entry and every restored state (start-up,
/// a snapshot from the leader), before the effects are published. Accounting uses it to
/// record ended runs from the log; it must be quick and must not fail the replica.
pub trait ApplyHook: Send + Sync {
    /// `entry` was applied to `sm` and produced `effects`.
    fn applied(&self, sm: &StateMachine, entry: &Entry, effects: &[Effect]);
    /// `sm` was restored from a snapshot; entries after it follow through `applied`.
    fn restored(&self, sm: &StateMachine);
}

/// Applied commands' effects, in log order.
#[derive(Debug, Clone)]
pub struct AppliedEffects {
    /// Log index of the command.
    pub index: u64,
    /// What it asks of the leader and watchers.
    pub effects: Vec<Effect>,
}

/// What the Raft thread publishes to the handles: state, effects, role, membership.
#[derive(Clone)]
struct Shared {
    peers: Arc<RwLock<BTreeMap<u64, String>>>,
    voters: Arc<RwLock<Vec<u64>>>,
    state: Arc<RwLock<StateMachine>>,
    effects: broadcast::Sender<Arc<AppliedEffects>>,
    status: Arc<Status>,
}

/// The other threads' side of the Raft thread. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    id: u64,
    inputs: SyncSender<Input>,
    shared: Shared,
    shutdown: Arc<AtomicBool>,
}

/// Bound of the proposal queue; beyond it proposals fail fast with [`ProposeError::Busy`].
const PROPOSALS_QUEUED_MAX: usize = 4096;
/// Proposals taken into one ready (and so one append) at most.
const PROPOSALS_BATCH_MAX: usize = 512;
/// Readies handled per wake of the Raft thread at most.
const READIES_PER_WAKE_MAX: usize = 4;

impl RaftHandle {
    /// Opens the store in `cfg.state_dir`, restores the state machine from its snapshot and
    /// starts the Raft thread. Committed entries after the snapshot are re-applied by the
    /// thread before any new proposal is answered.
    ///
    /// # Errors
    /// [`StartError`] when the store is missing pieces, corrupt, or raft-rs refuses it.
    pub fn start(
        cfg: RaftConfig,
    ) -> Result<(RaftHandle, std::thread::JoinHandle<Result<(), StoreError>>), StartError> {
        Self::start_with(cfg, None)
    }

    /// [`RaftHandle::start`] with an [`ApplyHook`] told of every applied entry.
    ///
    /// # Errors
    /// As [`RaftHandle::start`].
    pub fn start_with(
        cfg: RaftConfig,
        hook: Option<Arc<dyn ApplyHook>>,
    ) -> Result<(RaftHandle, std::thread::JoinHandle<Result<(), StoreError>>), StartError> {
        let store = SledStorage::open(&cfg.state_dir, &cfg.initial_voters())?;
        // Members added at runtime are remembered by the store; the command line may name
        // more (or newer addresses).
        let mut cfg = cfg;
        for (id, url) in store.peers()? {
            cfg.peers.entry(id).or_insert(url);
        }
        let (tx, rx) = sync_channel(PROPOSALS_QUEUED_MAX);
        let deliveries = tx.clone();
        let report: crate::transport::Report = std::sync::Arc::new(move |d| {
            // A full queue drops the report: raft-rs probes and retries on its own.
            let _ = deliveries.try_send(Input::Delivery(d));
        });
        let outbox = Outbox::start(cfg.id, &cfg.peers, report, cfg.peer_profile.clone());
        let flusher = spawn_flusher(store.flusher(), tx.clone());
        let mut replica = Replica::open(cfg.clone(), store, outbox, boot_nonce())?;
        if let Some(hook) = hook {
            replica.set_hook(hook);
        }
        let handle = RaftHandle {
            id: cfg.id,
            inputs: tx,
            shared: replica.shared.clone(),
            shutdown: Arc::new(AtomicBool::new(false)),
        };
        let mut driver = Driver {
            replica,
            rx,
            shutdown: handle.shutdown.clone(),
            tick: cfg.tick,
            flusher,
            flush_wanted: 0,
            flushing: false,
        };
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || driver.run())
            .expect("spawn raft thread");
        Ok((handle, thread))
    }

    fn send(&self, input: Input) -> Result<(), ProposeError> {
        match self.inputs.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::Stopped),
        }
    }

    /// Waits until this replica's applied state includes everything committed when the
    /// call began (Raft ReadIndex, confirmed by a quorum): a read after it is linearizable.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] when no leader confirms within 3 s.
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::ReadIndex(reply))?;
        // Without a reachable leader raft-rs drops the request; do not wait forever.
        match tokio::time::timeout(Duration::from_secs(3), rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::NotLeader),
        }
    }

    /// Proposes `cmd` and waits until it is committed and applied.
    ///
    /// # Errors
    /// [`ProposeError`] when the proposal cannot be taken or this replica is not the leader.
    pub async fn propose(&self, cmd: pb::Command) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Propose(Box::new(Proposal { cmd, reply })))?;
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// The applied state. Hold the guard briefly: the Raft thread waits for it to apply.
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, StateMachine> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Effects of every command applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedEffects>> {
        self.shared.effects.subscribe()
    }

    /// The current Raft term (fences commands sent to agents).
    pub fn term(&self) -> u64 {
        self.shared.status.term.load(Ordering::Acquire)
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.shared.status.leader.load(Ordering::Acquire)
    }

    /// Every member's address known here (this replica included).
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The voters of the current configuration, as last seen by the Raft thread.
    pub fn voters(&self) -> Vec<u64> {
        self.shared
            .voters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Proposes adding (`url` given) or removing voter `id`, and waits until it is applied.
    ///
    /// # Errors
    /// [`ProposeError`] as for [`RaftHandle::propose`].
    pub async fn change_membership(
        &self,
        id: u64,
        url: Option<String>,
    ) -> Result<Outcome, ProposeError> {
        let mut cc = raft::eraftpb::ConfChange {
            node_id: id,
            ..Default::default()
        };
        match url {
            Some(url) => {
                cc.set_change_type(raft::eraftpb::ConfChangeType::AddNode);
                cc.context = url.into_bytes().into();
            }
            None => cc.set_change_type(raft::eraftpb::ConfChangeType::RemoveNode),
        }
        let (reply, rx) = oneshot::channel();
        self.send(Input::ConfChange(Box::new((cc, reply))))?;
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// This replica's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The replica this one believes leads (0: unknown).
    pub fn leader_id(&self) -> u64 {
        self.shared.status.leader_id.load(Ordering::Acquire)
    }

    /// Hands a message from a peer to the Raft thread; dropped when the queue is full
    /// (Raft retransmits).
    pub fn step(&self, msg: Message) {
        let _ = self.inputs.try_send(Input::Step(Box::new(msg)));
    }

    /// Whether the Raft thread has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.status.stopped.load(Ordering::Acquire)
    }

    /// Asks the Raft thread to flush and stop.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }
}

/// The thread of a real replica: wall-clock ticks and a channel of [`Input`]s around a
/// [`Replica`] on sled and gRPC, and a flusher thread that makes its writes durable.
struct Driver {
    replica: Replica<SledStorage, Outbox>,
    rx: Receiver<Input>,
    shutdown: Arc<AtomicBool>,
    tick: Duration,
    /// Ready numbers to make durable; the flusher answers with [`Input::Persisted`].
    flusher: SyncSender<u64>,
    /// The newest ready that needs a flush.
    flush_wanted: u64,
    /// Whether a flush is running (one at a time: the next covers all written meanwhile).
    flushing: bool,
}

/// Starts the thread that flushes `store` for ready numbers sent to it and reports each
/// durable number on `report`. At most one request is outstanding (see [`Driver`]).
fn spawn_flusher(store: Flusher, report: SyncSender<Input>) -> SyncSender<u64> {
    let (tx, rx) = sync_channel::<u64>(1);
    std::thread::Builder::new()
        .name("raft-fsync".into())
        .spawn(move || {
            while let Ok(number) = rx.recv() {
                // Every write of ready `number` was made before it was sent here.
                let result = store.flush().map(|()| number);
                // Blocking send: a durability report must never be dropped. The Raft thread
                // drains its queue every loop, so this waits at most one ready.
                if report.send(Input::Persisted(result)).is_err() {
                    return;
                }
            }
        })
        .expect("spawn raft-fsync thread");
    tx
}

impl Driver {
    fn run(&mut self) -> Result<(), StoreError> {
        let result = self.run_inner();
        if let Err(e) = &result {
            tracing::error!("raft thread stopped: {e}");
        }
        self.replica.stop();
        result
    }

    fn run_inner(&mut self) -> Result<(), StoreError> {
        let mut last_tick = Instant::now();
        while !self.shutdown.load(Ordering::Acquire) {
            let timeout = self.tick.saturating_sub(last_tick.elapsed());
            match self.rx.recv_timeout(timeout) {
                Ok(first) => {
                    self.input(first)?;
                    // Everything already queued joins this ready: one append for the batch.
                    let queued: Vec<Input> = self.rx.try_iter().take(PROPOSALS_BATCH_MAX).collect();
                    for i in queued {
                        self.input(i)?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= self.tick {
                self.replica.tick();
                last_tick = Instant::now();
            }
            // A release of durable readies can make more ready at once (commits, acks):
            // handle it now rather than a tick later. Bounded: each ready consumes work.
            for _ in 0..READIES_PER_WAKE_MAX {
                if let Some(number) = self.replica.on_ready()? {
                    self.flush_wanted = number;
                    self.start_flush();
                }
                if !self.replica.node.has_ready() {
                    break;
                }
            }
        }
        self.replica.node.store().flush()
    }

    /// Hands the newest unflushed ready to the flusher unless a flush is running (its
    /// report starts the next one).
    fn start_flush(&mut self) {
        if self.flushing || self.flush_wanted <= self.replica.durable_through {
            return;
        }
        // Capacity 1 and at most one outstanding request: this never blocks for long.
        if self.flusher.send(self.flush_wanted).is_ok() {
            self.flushing = true;
        }
    }

    fn input(&mut self, input: Input) -> Result<(), StoreError> {
        let r = &mut self.replica;
        match input {
            Input::Propose(p) => r.propose_with(p.cmd, p.reply),
            Input::Step(m) => r.step(*m),
            Input::Delivery(Delivery::Unreachable(id)) => r.report_unreachable(id),
            Input::Delivery(Delivery::SnapshotSent(id, ok)) => r.report_snapshot(id, ok),
            Input::ConfChange(change) => {
                let (cc, reply) = *change;
                r.propose_conf_change(cc, reply);
            }
            Input::ReadIndex(reply) => r.read_index(reply),
            Input::Persisted(result) => {
                r.on_persisted(result?);
                self.flushing = false;
                self.start_flush();
            }
        }
        Ok(())
    }
}

/// Where a replica's outgoing Raft messages go: gRPC peers ([`Outbox`]) or the simulator's
/// network.
pub trait Mailbox {
    /// Queues `msg` for peer `msg.to`; may drop it (Raft retransmits).
    fn send(&mut self, msg: Message);
    /// Starts sending to a member added at runtime.
    fn add_peer(&mut self, id: u64, url: &str);
    /// Stops sending to a removed member.
    fn remove_peer(&mut self, id: u64);
}

impl Mailbox for Outbox {
    fn send(&mut self, msg: Message) {
        Outbox::send(self, msg)
    }
    fn add_peer(&mut self, id: u64, url: &str) {
        self.add(id, url)
    }
    fn remove_peer(&mut self, id: u64) {
        self.remove(id)
    }
}

/// One replica's Raft node, store and state machine, stepped by its owner: the ready-loop
/// without the loop. Owners call inputs ([`Replica::propose`], [`Replica::step`], …) and
/// [`Replica::tick`], then [`Replica::on_ready`] to persist, send and apply.
pub struct Replica<S: LogStore, M: Mailbox> {
    node: RawNode<S>,
    mailbox: M,
    shared: Shared,
    cfg: RaftConfig,
    waiting: HashMap<u64, ReplySender>,
    next_proposal: u64,
    proposal_tag: [u8; 16],
    /// ReadIndex requests sent to raft-rs, by context counter.
    reads: HashMap<u64, oneshot::Sender<()>>,
    /// Reads confirmed by the leader, waiting for their index to be applied.
    reads_ready: Vec<(u64, oneshot::Sender<()>)>,
    /// Entries applied since the last [`Replica::take_applied`], when recording.
    applied_log: Option<Vec<Entry>>,
    /// Told of every applied entry and restored state (accounting).
    hook: Option<Arc<dyn ApplyHook>>,
    /// Readies written to the store and not yet known durable, oldest first.
    unpersisted: VecDeque<Unpersisted>,
    /// Every ready up to this number is durable.
    durable_through: u64,
}

/// A ready written to the store's memory, waiting for the owner's flush.
struct Unpersisted {
    number: u64,
    /// Whether it wrote anything that must be durable (entries, a snapshot, term or vote);
    /// one that did not is durable as soon as every earlier one is.
    must_sync: bool,
    /// Messages that may leave only once it is durable.
    held: Vec<Message>,
    /// The index of the snapshot it installed (0: none). raft-rs counts a snapshot as
    /// applied only when told: once durable, applied moves to it, or a replica that caught
    /// up from a snapshot and applied nothing since would campaign from index 1, in a log
    /// compacted past it (raft-rs panics with `Compacted`).
    snapshot_index: u64,
}

impl<S: LogStore, M: Mailbox> Replica<S, M> {
    /// Restores the state machine from `store`'s snapshot and builds the Raft node over it.
    /// Committed entries after the snapshot are re-applied by the first readies.
    /// `boot_nonce` must differ between runs of the same replica: it tags this run's
    /// proposals so an old run's entries are never mistaken for this run's.
    ///
    /// # Errors
    /// [`StartError`] when the stored snapshot does not decode or raft-rs refuses the state.
    pub fn open(
        cfg: RaftConfig,
        store: S,
        mailbox: M,
        boot_nonce: u64,
    ) -> Result<Replica<S, M>, StartError> {
        let (sm, applied) = match store.latest_snapshot()? {
            Some(snap) => {
                let index = snap.get_metadata().index;
                let sm = StateMachine::restore(index, &snap.data)
                    .map_err(|e| StartError::Snapshot(store.location().to_string(), e))?;
                (sm, index)
            }
            None => (StateMachine::default(), 0),
        };
        let raft_cfg = cfg.raft_config(applied);
        raft_cfg.validate()?;
        let logger =
            slog::Logger::root(crate::raft_log::TracingDrain, slog::o!("raft_id" => cfg.id));
        let mut node = RawNode::new(&raft_cfg, store, &logger)?;
        let voters: Vec<u64> = node.raft.prs().conf().voters().ids().iter().collect();
        if voters == [cfg.id] {
            // The only voter needs no election timeout to know it wins.
            node.campaign()?;
        }
        let (effects, _) = broadcast::channel(1024);
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&cfg.id.to_be_bytes());
        tag[8..].copy_from_slice(&boot_nonce.to_be_bytes());
        Ok(Replica {
            node,
            mailbox,
            shared: Shared {
                peers: Arc::new(RwLock::new(cfg.peers.clone())),
                voters: Arc::new(RwLock::new(Vec::new())),
                state: Arc::new(RwLock::new(sm)),
                effects,
                status: Arc::new(Status::default()),
            },
            cfg,
            waiting: HashMap::new(),
            next_proposal: 1,
            proposal_tag: tag,
            reads: HashMap::new(),
            reads_ready: Vec::new(),
            applied_log: None,
            hook: None,
            unpersisted: VecDeque::new(),
            durable_through: 0,
        })
    }

    /// Installs `hook` and tells it of the state restored so far.
    pub fn set_hook(&mut self, hook: Arc<dyn ApplyHook>) {
        hook.restored(&self.state());
        self.hook = Some(hook);
    }

    /// Proposes `cmd`; the receiver gets its outcome once it is applied here.
    pub fn propose(&mut self, cmd: pb::Command) -> ReplyReceiver {
        let (reply, rx) = oneshot::channel();
        self.propose_with(cmd, reply);
        rx
    }

    fn propose_with(&mut self, cmd: pb::Command, reply: ReplySender) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        match self.node.propose(self.context(id), cmd.encode_to_vec()) {
            Ok(()) => {
                self.waiting.insert(id, reply);
            }
            Err(_) => {
                let _ = reply.send(Err(ProposeError::NotLeader));
            }
        }
    }

    fn propose_conf_change(&mut self, cc: raft::eraftpb::ConfChange, reply: ReplySender) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        match self.node.propose_conf_change(self.context(id), cc) {
            Ok(()) => {
                self.waiting.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Ok(Outcome::Rejected(format!(
                    "membership change refused: {e}"
                ))));
            }
        }
    }

    fn read_index(&mut self, reply: oneshot::Sender<()>) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        self.node.read_index(self.context(id));
        self.reads.insert(id, reply);
    }

    /// Steps a message from a peer. Messages from unknown peers or stale terms are raft-rs's
    /// to judge, so a refusal is only logged.
    pub fn step(&mut self, msg: Message) {
        if let Err(e) = self.node.step(msg) {
            tracing::debug!("raft step: {e}");
        }
    }

    /// Sending to peer `id` failed; raft-rs probes it again later.
    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// A snapshot sent to peer `id` arrived (`ok`) or was lost.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(id, status);
    }

    /// One logical clock tick (elections take 10, heartbeats 3).
    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// The applied state.
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, StateMachine> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// The replica this one believes leads (0: unknown).
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    /// The highest log index known committed here.
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// Starts keeping every applied entry for [`Replica::take_applied`] (the simulator's
    /// ledger, to replay the log from empty).
    pub fn record_applied(&mut self) {
        self.applied_log = Some(Vec::new());
    }

    /// Entries applied since the last call, in order (empty unless recording).
    pub fn take_applied(&mut self) -> Vec<Entry> {
        self.applied_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The store, for a final flush.
    pub fn store(&self) -> &S {
        self.node.store()
    }

    /// Marks the replica stopped and fails every waiting proposal with
    /// [`ProposeError::Stopped`].
    pub fn stop(&mut self) {
        self.shared.status.stopped.store(true, Ordering::Release);
        self.shared.status.leader.store(false, Ordering::Release);
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
    }

    /// The `five_mem_node` checklist, in its order, with asynchronous persistence: the
    /// ready's writes go to the store's memory and the owner makes them durable. Returns
    /// the ready's number when it needs a flush: the owner then flushes the store (one
    /// flush covers every earlier write too) and reports it with [`Replica::on_persisted`].
    /// Until then this replica goes on: messages that need durability wait, nothing else.
    /// A storage error is fatal: the owner must stop the replica.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written or a received snapshot is corrupt.
    pub fn on_ready(&mut self) -> Result<Option<u64>, StoreError> {
        if !self.node.has_ready() {
            return Ok(None);
        }
        let mut ready = self.node.ready();
        // ReadIndex answers: each read may proceed once its index is applied.
        for rs in ready.take_read_states() {
            if let Some(id) = self.own_context(&rs.request_ctx) {
                if let Some(reply) = self.reads.remove(&id) {
                    self.reads_ready.push((rs.index, reply));
                }
            }
        }
        // 1. Send messages to peers: a leader's appends leave before its own fsync.
        self.send(ready.take_messages());
        // 2. Install a snapshot from the leader, and restore the state machine from it.
        let mut snapshot_index = 0;
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap)?;
            snapshot_index = snap.get_metadata().index;
        }
        // 3. Apply what is committed: raft-rs hands out only entries that a quorum holds
        //    and that are durable here (min(committed, persisted)).
        let committed = ready.take_committed_entries();
        let applied = committed.last().map(|e| e.index);
        self.apply(committed)?;
        // 4. Append new entries, 5. set the hard state: into the store's memory, where
        //    raft-rs reads them at once (what `advance_append_async` requires).
        self.node.store().append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            self.node.store().set_hardstate(hs)?;
        }
        // 6. Messages that may only leave once this ready is durable (votes, acks): held.
        let (number, must_sync) = (ready.number(), ready.must_sync());
        let held = ready.take_persisted_messages();
        // 7. Advance without waiting for the disk; the next ready may start at once.
        self.node.advance_append_async(ready);
        self.unpersisted.push_back(Unpersisted {
            number,
            must_sync,
            held,
            snapshot_index,
        });
        self.release_persisted();
        // Applied moves with the entries applied here, and with an installed snapshot once
        // it is durable (`release_persisted`).
        if let Some(index) = applied {
            self.node.advance_apply_to(index);
        }
        self.release_reads();
        self.publish_status();
        Ok(must_sync.then_some(number))
    }

    /// Every write of the readies up to `number` is durable: their held messages leave and
    /// raft-rs learns it (which may commit entries: run [`Replica::on_ready`] next).
    pub fn on_persisted(&mut self, number: u64) {
        self.durable_through = self.durable_through.max(number);
        self.release_persisted();
    }

    /// Releases, oldest first, the readies that are durable or needed no flush, and tells
    /// raft-rs the newest one released (which implies all before it).
    fn release_persisted(&mut self) {
        let mut released = None;
        let mut snapshot_index = 0;
        while let Some(front) = self.unpersisted.front() {
            if front.must_sync && front.number > self.durable_through {
                break;
            }
            let done = self.unpersisted.pop_front().expect("front exists");
            self.send(done.held);
            released = Some(done.number);
            snapshot_index = snapshot_index.max(done.snapshot_index);
        }
        if let Some(number) = released {
            self.node.on_persist_ready(number);
        }
        if snapshot_index > self.node.raft.raft_log.applied() {
            self.node.advance_apply_to(snapshot_index);
        }
    }

    fn install_snapshot(&mut self, snap: &raft::eraftpb::Snapshot) -> Result<(), StoreError> {
        self.node.store().apply_snapshot(snap)?;
        let index = snap.get_metadata().index;
        let sm = StateMachine::restore(index, &snap.data).map_err(|e| StoreError::Corrupt {
            path: self.node.store().location().to_string(),
            detail: format!("snapshot from leader: {e}"),
        })?;
        if let Some(hook) = &self.hook {
            hook.restored(&sm);
        }
        *self.shared.state.write().unwrap_or_else(|e| e.into_inner()) = sm;
        tracing::info!(index, "installed a snapshot from the leader");
        Ok(())
    }

    /// Applies a committed membership change: raft-rs's configuration, the stored conf
    /// state and peer addresses, and the mailbox. Every replica does the same at the same
    /// index, so they agree on the membership.
    fn apply_conf_change(&mut self, entry: &Entry) -> Outcome {
        use protobuf::Message as _;
        let cc = match raft::eraftpb::ConfChange::parse_from_bytes(&entry.data) {
            Ok(cc) => cc,
            Err(e) => return Outcome::Rejected(format!("undecodable conf change: {e}")),
        };
        let cs = match self.node.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => return Outcome::Rejected(format!("conf change not applied: {e}")),
        };
        let id = cc.node_id;
        let mut peers = self.shared.peers.write().unwrap_or_else(|e| e.into_inner());
        match cc.get_change_type() {
            raft::eraftpb::ConfChangeType::RemoveNode => {
                peers.remove(&id);
                self.mailbox.remove_peer(id);
            }
            _ => {
                let url = String::from_utf8_lossy(&cc.context).into_owned();
                if !url.is_empty() {
                    self.mailbox.add_peer(id, &url);
                    peers.insert(id, url);
                }
            }
        }
        let store = self.node.store();
        if let Err(e) = store
            .set_conf_state(&cs)
            .and_then(|_| store.set_peers(&peers))
        {
            tracing::error!("cannot persist membership: {e}");
        }
        tracing::info!(voters = ?cs.voters, "membership changed");
        Outcome::Done
    }

    /// Answers the reads whose index is applied; forgets reads whose caller gave up.
    fn release_reads(&mut self) {
        let applied = self.state().applied_index();
        let (now, later): (Vec<_>, Vec<_>) = self
            .reads_ready
            .drain(..)
            .partition(|(index, _)| *index <= applied);
        self.reads_ready = later;
        for (_, reply) in now {
            let _ = reply.send(());
        }
        self.reads.retain(|_, reply| !reply.is_closed());
    }

    /// The counter of a context this replica's current run created, if it is one.
    fn own_context(&self, ctx: &[u8]) -> Option<u64> {
        if ctx.len() != 24 || ctx[..16] != self.proposal_tag {
            return None;
        }
        Some(u64::from_be_bytes(ctx[16..24].try_into().expect("8 bytes")))
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            self.mailbox.send(m);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let state = self.shared.state.clone();
        let mut conf_changed = false;
        {
            let mut sm = state.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                conf_changed |= entry.get_entry_type() == EntryType::EntryConfChange;
                self.apply_one(&mut sm, entry);
            }
        }
        self.maybe_compact(last, conf_changed)
    }

    fn apply_one(&mut self, sm: &mut StateMachine, entry: Entry) {
        let (outcome, effects) = if entry.get_entry_type() == EntryType::EntryConfChange {
            let outcome = self.apply_conf_change(&entry);
            sm.skip(entry.index);
            (outcome, vec![])
        } else {
            apply_entry(sm, &entry)
        };
        if let Some(hook) = &self.hook {
            hook.applied(sm, &entry, &effects);
        }
        if !effects.is_empty() {
            let _ = self.shared.effects.send(Arc::new(AppliedEffects {
                index: entry.index,
                effects,
            }));
        }
        if let Some(id) = self.own_context(&entry.context) {
            if let Some(reply) = self.waiting.remove(&id) {
                let _ = reply.send(Ok(outcome));
            }
        }
        if let Some(log) = &mut self.applied_log {
            log.push(entry);
        }
    }

    /// Takes a snapshot every `snapshot_entries` applied entries, and after a membership
    /// change once a snapshot exists: raft-rs on a replica refuses a snapshot whose
    /// membership does not name it, so a replica added after the last snapshot could
    /// never catch up from one taken before it was added.
    fn maybe_compact(&mut self, applied: u64, conf_changed: bool) -> Result<(), StoreError> {
        let store = self.node.store();
        let snap_index = store.snapshot_meta()?.index;
        let stale_members = conf_changed && snap_index > 0;
        if applied < snap_index + self.cfg.snapshot_entries && !stale_members {
            return Ok(());
        }
        let data = self.state().encode();
        self.node.store().compact(applied, data)?;
        tracing::info!(index = applied, "snapshot taken, log compacted");
        Ok(())
    }

    /// `(tag, counter)`: identifies one proposal of this replica's current run.
    fn context(&self, id: u64) -> Vec<u8> {
        let mut ctx = self.proposal_tag.to_vec();
        ctx.extend_from_slice(&id.to_be_bytes());
        ctx
    }

    fn publish_status(&mut self) {
        let raft = &self.node.raft;
        let voters: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
        *self
            .shared
            .voters
            .write()
            .unwrap_or_else(|e| e.into_inner()) = voters;
        let leads = raft.state == StateRole::Leader;
        if !leads && !self.waiting.is_empty() {
            // Our uncommitted proposals may be overwritten by the new leader or may commit
            // through it; either way their outcome will not reach us. Say so.
            for (_, reply) in self.waiting.drain() {
                let _ = reply.send(Err(ProposeError::LeadershipLost));
            }
        }
        let status = &self.shared.status;
        status.term.store(raft.term, Ordering::Release);
        status.leader_id.store(raft.leader_id, Ordering::Release);
        status.leader.store(leads, Ordering::Release);
    }
}

/// Applies one committed entry that is not a membership change to `sm`: a command is
/// decoded and applied; a new leader's empty entry is skipped. Shared by the replicas and
/// by replaying a log from empty, so both see the same state.
pub fn apply_entry(sm: &mut StateMachine, entry: &Entry) -> (Outcome, Vec<Effect>) {
    if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
        sm.skip(entry.index);
        return (Outcome::Done, vec![]);
    }
    match pb::Command::decode(&entry.data[..]) {
        Ok(cmd) => sm.apply(entry.index, cmd),
        Err(e) => {
            // Only berthd writes the log, so this is a bug, but it must not stop the replica:
            // the entry is skipped identically on every replica and at every replay.
            tracing::error!(index = entry.index, "undecodable command in the log: {e}");
            sm.skip(entry.index);
            (
                Outcome::Rejected(format!("undecodable command: {e}")),
                vec![],
            )
        }
    }
}

/// A number that differs between runs of this process (wall clock nanoseconds).
fn boot_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(name: &str) -> pb::Command {
        let spec = pb::JobSpec {
            name: name.into(),
            script: "#!/bin/sh\ntrue\n".into(),
            work_dir: "/tmp".into(),
            partition: "gpu".into(),
            nodes: 1,
            ntasks: 1,
            cpus_per_task: 1,
            ..Default::default()
        };
        pb::Command {
            time_ms: 1,
            cmd: Some(pb::command::Cmd::Submit(pb::SubmitJob { spec: Some(spec) })),
        }
    }

    fn node() -> pb::Command {
        let inv = pb::NodeInventory {
            name: "n1".into(),
            partition: "gpu".into(),
            cpus: 8,
            ..Default::default()
        };
        pb::Command {
            time_ms: 1,
            cmd: Some(pb::command::Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inv),
            })),
        }
    }

    async fn wait_leader(h: &RaftHandle) {
        for _ in 0..200 {
            if h.is_leader() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader after 2s");
    }

    #[tokio::test]
    async fn proposals_survive_restart_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RaftConfig::new(1, dir.path().to_path_buf());
        cfg.snapshot_entries = 5;
        let (h, thread) = RaftHandle::start(cfg.clone()).unwrap();
        wait_leader(&h).await;
        assert_eq!(h.propose(node()).await.unwrap(), Outcome::Done);
        let mut ids = Vec::new();
        for i in 0..12 {
            match h.propose(submit(&format!("j{i}"))).await.unwrap() {
                Outcome::Submitted(id) => ids.push(id),
                other => panic!("submit {i}: {other:?}"),
            }
        }
        assert_eq!(ids, (1..=12).collect::<Vec<_>>());
        let before = h.state().encode();
        h.shutdown();
        thread.join().unwrap().unwrap();

        let (h, thread) = RaftHandle::start(cfg).unwrap();
        wait_leader(&h).await;
        // The restored state (snapshot + replayed tail) equals the state before, byte for byte.
        for _ in 0..200 {
            if h.state().jobs().count() == 12 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(h.state().encode(), before);
        assert_eq!(
            h.propose(submit("after")).await.unwrap(),
            Outcome::Submitted(13)
        );
        h.shutdown();
        thread.join().unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_flood_beyond_the_queue_is_refused_busy_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) = RaftHandle::start(RaftConfig::new(1, dir.path().to_path_buf())).unwrap();
        wait_leader(&h).await;
        h.propose(node()).await.unwrap();
        // Proposals queued in a tight loop, far faster than the Raft thread takes them (each
        // batch waits for its fsync): beyond the bound, each is refused at once.
        let (mut waiting, mut busy) = (Vec::new(), 0);
        for round in 0..20 {
            for i in 0..8 * PROPOSALS_QUEUED_MAX {
                let (reply, rx) = oneshot::channel();
                let cmd = submit(&format!("f{round}-{i}"));
                match h.send(Input::Propose(Box::new(Proposal { cmd, reply }))) {
                    Ok(()) => waiting.push(rx),
                    Err(ProposeError::Busy) => busy += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            if busy > 0 {
                break;
            }
        }
        assert!(busy > 0, "the queue never filled");
        // Every proposal taken is applied; every refused one changed nothing.
        let mut ids = std::collections::BTreeSet::new();
        for rx in waiting {
            match rx.await.unwrap() {
                Ok(Outcome::Submitted(id)) => assert!(ids.insert(id)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(h.state().jobs().count(), ids.len());
        // Once the flood is taken, proposals are taken again.
        assert!(matches!(
            h.propose(submit("after")).await,
            Ok(Outcome::Submitted(_))
        ));
        h.shutdown();
        thread.join().unwrap().unwrap();
    }

    #[tokio::test]
    async fn concurrent_submits_get_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) = RaftHandle::start(RaftConfig::new(1, dir.path().to_path_buf())).unwrap();
        wait_leader(&h).await;
        h.propose(node()).await.unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.propose(submit(&format!("c{i}"))).await })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        for t in tasks {
            match t.await.unwrap().unwrap() {
                Outcome::Submitted(id) => assert!(ids.insert(id)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ids.len(), 50);
        h.shutdown();
        thread.join().unwrap().unwrap();
    }
}
