//! The deterministic cluster simulator: berthd's real Raft replica, state machine and
//! policies, with only the clock, the network, the disk and the agents faked
//! (TigerBeetle's VOPR, turmoil).
//!
//! One seed drives everything through one ChaCha8 PRNG, and nothing reads a wall clock or
//! iterates a randomly ordered map, so a seed replays exactly. A run has two phases:
//! - **safety**: clients submit and cancel while the network drops, delays, duplicates and
//!   reorders messages, partitions split the replicas, replicas crash (losing unflushed
//!   writes) and restart, nodes go down, and pods are bound through the extender's
//!   `BindPod`, racing the scheduling loop; checkers run after every ready (replicas agree
//!   on the state at equal applied indexes, no entry differs between replicas at an index,
//!   no GPU is granted twice, gangs are whole);
//! - **liveness**: faults stop, crashed replicas restart, the network heals; the cluster
//!   must settle (a leader, every replica caught up, every job ended) within a bound.
//!
//! Then the end checks: every acknowledged submit is in the final state, all replicas'
//! states are byte-identical, and replaying the committed log from empty gives that state.
//!
//! Exit codes of the `sim` binary: 127 a checker failed during the run, 128 an end check
//! failed, 129 the cluster did not settle.

pub mod cluster;
pub mod network;
pub mod workload;

use cluster::Cluster;
use network::{Faults, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use workload::{Load, Workload};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Replicas (3 or 5).
    pub replicas: u64,
    /// GPU nodes (8 GPUs each).
    pub nodes: u32,
    /// Simulated milliseconds of the safety phase.
    pub safety_ms: u64,
    /// Simulated milliseconds the liveness phase may take at most.
    pub liveness_ms: u64,
    /// Network faults during the safety phase.
    pub faults: Faults,
    /// Probability per millisecond that a live replica crashes.
    pub crash_p: f64,
    /// Probability per millisecond that a partition starts.
    pub partition_p: f64,
    /// Client and agent activity.
    pub load: Load,
    /// Compact the log every this many entries (small, so snapshots get sent).
    pub snapshot_entries: u64,
}

impl SimConfig {
    /// The defaults CI runs: a hostile network, frequent crashes, a busy queue.
    pub fn new(seed: u64, replicas: u64) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            nodes: 4,
            safety_ms: 8_000,
            liveness_ms: 60_000,
            faults: Faults {
                loss: 0.05,
                duplicate: 0.02,
                delay_ms_max: 12,
            },
            crash_p: 0.0008,
            partition_p: 0.0003,
            load: Load {
                submit: 0.06,
                cancel: 0.004,
                node_down: 0.0002,
                bind: 0.01,
            },
            snapshot_entries: 40,
        }
    }
}

/// Why a run failed, with the binary's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 127 (during the run), 128 (end check) or 129 (did not settle).
    pub code: i32,
    /// What was seen, naming replicas, jobs and indexes.
    pub what: String,
}

impl Failure {
    /// A checker failed while the cluster ran.
    pub fn safety(what: String) -> Failure {
        Failure { code: 127, what }
    }
    /// An end-of-run check failed.
    pub fn end(what: String) -> Failure {
        Failure { code: 128, what }
    }
    /// The cluster did not settle once the faults stopped.
    pub fn liveness(what: String) -> Failure {
        Failure { code: 129, what }
    }
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Acknowledged submits (all found at the end).
    pub acked_submits: usize,
    /// Acknowledged cancels.
    pub acked_cancels: usize,
    /// Client proposals whose outcome never came back.
    pub unknown: u64,
    /// Log entries committed.
    pub committed: u64,
    /// Replica (re)starts beyond the first boot of each.
    pub restarts: u64,
    /// Messages delivered, lost, duplicated.
    pub messages: [u64; 3],
    /// Simulated milliseconds until the cluster settled.
    pub settled_ms: u64,
    /// Hash of the final state (two runs of one seed must agree).
    pub state_hash: u64,
    /// Jobs preempted and requeued at least once.
    pub requeued: usize,
    /// Pods bound through `BindPod`, pod groups' reservations included.
    pub pods: usize,
}

/// The first log line of a run: everything needed to reproduce it.
pub fn banner(cfg: &SimConfig) -> String {
    format!(
        "SEED={} replicas={} nodes={} loss={} dup={} crash_p={} partition_p={} safety_ms={}",
        cfg.seed,
        cfg.replicas,
        cfg.nodes,
        cfg.faults.loss,
        cfg.faults.duplicate,
        cfg.crash_p,
        cfg.partition_p,
        cfg.safety_ms
    )
}

/// Runs one simulation.
///
/// # Errors
/// The first [`Failure`] seen.
pub fn run(cfg: &SimConfig) -> Result<Report, Failure> {
    // raft-rs and the state machine assert their invariants by panicking: that is a failed
    // run of this seed, not a crash of the simulator.
    std::panic::catch_unwind(|| run_phases(cfg)).unwrap_or_else(|panic| {
        Err(Failure::safety(format!(
            "panicked: {}",
            cluster::panic_text(&panic)
        )))
    })
}

fn run_phases(cfg: &SimConfig) -> Result<Report, Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut cluster = Cluster::new(cfg.replicas, cfg.snapshot_entries, &mut rng)?;
    let mut net = Network::new();
    let mut world = Workload::new(cfg.nodes);
    for now in 0..cfg.safety_ms {
        faults(cfg, &mut cluster, &mut net, now, &mut rng)?;
        cluster.step(now, &mut net, cfg.faults, &mut rng)?;
        world.step(&mut cluster, now, cfg.load, true, &mut rng);
    }
    // Liveness: no more faults or clients; everything must settle.
    net.heal(0, true);
    cluster.restart_due(0, true, &mut rng)?;
    let mut now = cfg.safety_ms;
    let deadline = cfg.safety_ms + cfg.liveness_ms;
    loop {
        cluster.step(now, &mut net, Faults::calm(), &mut rng)?;
        world.step(&mut cluster, now, cfg.load, false, &mut rng);
        match settled(&cluster, &world) {
            None => break,
            Some(why) if now >= deadline => {
                return Err(Failure::liveness(format!(
                    "not settled {} ms after the faults stopped: {why}",
                    cfg.liveness_ms
                )))
            }
            Some(_) => now += 1,
        }
    }
    end_checks(cfg, &cluster, &world, &net, now)
}

/// Random faults of one millisecond of the safety phase.
fn faults(
    cfg: &SimConfig,
    cluster: &mut Cluster,
    net: &mut Network,
    now: u64,
    rng: &mut ChaCha8Rng,
) -> Result<(), Failure> {
    net.heal(now, false);
    cluster.restart_due(now, false, rng)?;
    if rng.gen_bool(cfg.crash_p * cluster.up() as f64) {
        let up: Vec<usize> = (0..cluster.replicas.len())
            .filter(|&i| cluster.replicas[i].node.is_some())
            .collect();
        let victim = up[rng.gen_range(0..up.len())];
        let keep = rng.gen_bool(0.5);
        let back = now + rng.gen_range(50..2_000);
        cluster.crash(victim, keep, back);
    }
    if net.island().is_empty() && rng.gen_bool(cfg.partition_p) {
        let size = rng.gen_range(1..=(cfg.replicas / 2).max(1));
        let mut ids: Vec<u64> = (1..=cfg.replicas).collect();
        let island = (0..size)
            .map(|_| ids.remove(rng.gen_range(0..ids.len())))
            .collect();
        net.partition(island, now + rng.gen_range(100..3_000));
    }
    Ok(())
}

/// Why the cluster has not settled (None: it has): a leader, every replica applied up to
/// its commit index, and the world quiet.
fn settled(cluster: &Cluster, world: &Workload) -> Option<&'static str> {
    let Some(l) = cluster.leader() else {
        return Some("no leader");
    };
    let leader = cluster.replicas[l].node.as_ref().expect("a leader is up");
    let commit = leader.commit_index();
    for r in &cluster.replicas {
        let Some(node) = r.node.as_ref() else {
            return Some("a replica is down");
        };
        if node.state().applied_index() < commit {
            return Some("a replica is behind the leader");
        }
    }
    world.pending(&leader.state())
}

fn end_checks(
    cfg: &SimConfig,
    cluster: &Cluster,
    world: &Workload,
    net: &Network,
    now: u64,
) -> Result<Report, Failure> {
    let l = cluster.leader().expect("settled");
    let final_state = cluster.replicas[l]
        .node
        .as_ref()
        .expect("up")
        .state()
        .encode();
    for r in &cluster.replicas {
        let node = r.node.as_ref().expect("all up once settled");
        if node.state().encode() != final_state {
            return Err(Failure::end(format!(
                "replica {} ends in a different state than the leader",
                r.id
            )));
        }
        world.check_acks(&node.state())?;
    }
    let replayed = cluster.replay()?;
    if replayed.encode() != final_state {
        return Err(Failure::end(
            "replaying the committed log from empty gives a different state".into(),
        ));
    }
    cluster::check_gpus(0, &replayed)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&final_state, &mut h);
    Ok(Report {
        acked_submits: world.acked_submits.len(),
        acked_cancels: world.acked_cancels.len(),
        unknown: world.unknown,
        committed: cluster.ledger.len() as u64,
        restarts: cluster.replicas.iter().map(|r| r.boots - 1).sum(),
        messages: net.counts,
        settled_ms: now - cfg.safety_ms,
        state_hash: std::hash::Hasher::finish(&h),
        requeued: replayed.jobs().filter(|j| j.restart_count > 0).count(),
        pods: replayed
            .jobs()
            .filter(|j| berth_scheduler::state_machine::pods::is_kubernetes(j))
            .count(),
    })
}
