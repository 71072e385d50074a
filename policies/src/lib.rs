//! Pure scheduling logic for berth: a snapshot of the cluster and the pending jobs go in,
//! decisions come out (jobs to start, jobs to preempt, why the rest wait and when they are
//! expected to start).
//!
//! Nothing here does IO, reads a clock, touches the network or draws unseeded randomness:
//! berthd's leader calls [`schedule`] with committed state and proposes the result through
//! the Raft log, so the same inputs must always give the same decisions, and every rule can
//! be tested exhaustively and benchmarked without a cluster.
//!
//! # Layout
//! - [`snapshot`]: the input types ([`ClusterSnapshot`], [`NodeView`], [`PendingJob`],
//!   [`RunningJob`]).
//! - [`filter`]: one small struct per feasibility rule ([`filter::Filter`]).
//! - [`constraint`]: `--constraint` feature expressions, counts and matching OR.
//! - [`cpu_bind`]: `srun --cpu-bind` values and the CPU set of each task on a node.
//! - [`score`]: node scorers in `[-1, 1]` ([`score::Scorer`]).
//! - [`pipeline`]: the chain filters → scorers → pick, for one job.
//! - [`mig`]: MIG profiles and placements, the carve planner, its filter and scorer.
//! - [`gang`]: all-or-nothing taking of a multi-node decision (an undo log).
//! - [`fairshare`]: the account tree, decayed usage, Fair Tree factors.
//! - [`priority`]: multifactor priority and the priority classes (QOS).
//! - [`quota`]: guaranteed quotas, borrowing and lending limits.
//! - [`backfill`]: EASY backfill reservations and the views jobs are placed on.
//! - [`preempt`]: victim selection by class priority and by quota reclaim.
//! - [`topology`]: the petgraph model from GPU to spine, `topology.conf`, best GPU sets.
//! - [`pass`]: one scheduling pass tying them together; [`schedule`] is its entry.
//! - [`packing`]: GPU-sharing packing maths (free GPU milli per GPU, task shapes, fit,
//!   GPU choice) with the best-fit and spread scorers.
//! - [`fragmentation`]: fragmentation against a task-class distribution, FGD and berth's
//!   packing rule built on it.
//! - [`workload`]: the task-class distribution of a partition inside a pass (pending jobs
//!   plus recently started ones), which FGD and berth's packing measure against.
#![deny(missing_docs)]

pub mod backfill;
pub mod constraint;
pub mod cpu_bind;
pub mod fairshare;
pub mod filter;
pub mod fragmentation;
pub mod gang;
pub mod mig;
pub mod packing;
pub mod pass;
pub mod pipeline;
pub mod preempt;
pub mod priority;
pub mod quota;
pub mod score;
pub mod snapshot;
pub mod topology;
pub mod workload;

pub use fairshare::{AccountSpec, AccountTree, Usage};
pub use filter::{Reject, RejectReason};
pub use pass::{PendingReason, PendingStatus, Schedule};
pub use pipeline::{Pipeline, PlacementMetrics, Unplaceable};
pub use preempt::{PreemptCause, Preemption};
pub use priority::{Factors, PriorityWeights, QosClass};
pub use quota::Quota;
pub use snapshot::{
    Capacity, ClusterSnapshot, Decision, GpuShares, GpuView, NodeGrant, NodeView, PendingJob,
    RunningJob, TaskSpread,
};

/// Errors of building policy configuration (the only fallible part of this crate).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The account tree is not valid.
    #[error("account {account}: {detail}")]
    Account {
        /// The account at fault.
        account: String,
        /// What is wrong.
        detail: String,
    },
    /// A priority class is not valid.
    #[error("qos {qos}: {detail}")]
    Qos {
        /// The class at fault.
        qos: String,
        /// What is wrong.
        detail: String,
    },
}

/// Which policy a pass runs (the simulator compares them on the same code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Jobs in the order given (by id), each started if it fits now (first fit); no
    /// reservations, so a large job can be overtaken forever. What berthd ran before.
    Fifo,
    /// Strict first-in first-out, as Slurm's builtin scheduler without backfill: jobs in
    /// the order given; the first job of a partition that cannot start blocks every later
    /// job of that partition (reason `Priority`) for the rest of the pass.
    StrictFifo,
    /// Jobs in the order given, with EASY backfill reservations.
    Backfill,
    /// Multifactor priority (fair share, age, QOS, size), quotas, EASY backfill and
    /// preemption.
    Berth,
}

/// Tunables of a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// At most this many feasible nodes are scored per job (keeps one decision cheap on
    /// large clusters; ties still break on node name, so the cap is deterministic).
    pub nodes_scored_max: usize,
    /// The policy.
    pub kind: PolicyKind,
    /// The account tree with shares and quotas.
    pub accounts: AccountTree,
    /// Priority classes.
    pub qos: Vec<QosClass>,
    /// Class of jobs that name none.
    pub default_qos: String,
    /// Priority weights.
    pub weights: PriorityWeights,
    /// Usage half-life, ms (0: usage never decays).
    pub half_life_ms: u64,
    /// Blocked jobs that get a backfill reservation per pass (EASY: 1).
    pub backfill_reservations: usize,
    /// Whether Berth preempts (by class and by reclaim).
    pub preemption: bool,
    /// Time a victim is given to stop (signal, grace, kill), ms: a preemptor's reservation
    /// starts this long after the decision.
    pub preempt_grace_ms: u64,
    /// Blocked jobs that may search for victims per pass.
    pub preempt_searches_max: usize,
    /// Candidate victims considered per search (lowest priority first).
    pub preempt_candidates_max: usize,
    /// Reconfiguration cost of starting to carve a MIG-mode GPU that holds no slice, as a
    /// score penalty in `[0, 2]` (see [`mig`]): 1 (the default) always prefers a card that
    /// is already carved when one has room; 0 only looks at the room left.
    pub mig_carve_cost: f64,
    /// Packing per partition (the pipeline's packing scorer); partitions not named use
    /// `packing_default`.
    pub packing: std::collections::BTreeMap<String, packing::Packing>,
    /// Packing of partitions not in `packing`.
    pub packing_default: packing::Packing,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            nodes_scored_max: 256,
            kind: PolicyKind::Berth,
            accounts: AccountTree::default(),
            qos: priority::default_classes(),
            default_qos: "research".into(),
            weights: PriorityWeights::default(),
            half_life_ms: 7 * 24 * 3600 * 1000,
            backfill_reservations: 1,
            preemption: true,
            preempt_grace_ms: 30_000,
            preempt_searches_max: 8,
            preempt_candidates_max: 64,
            mig_carve_cost: 1.0,
            packing: std::collections::BTreeMap::new(),
            packing_default: packing::Packing::default(),
        }
    }
}

impl PolicyConfig {
    /// The packing `partition` uses.
    pub fn packing_for(&self, partition: &str) -> packing::Packing {
        self.packing
            .get(partition)
            .copied()
            .unwrap_or(self.packing_default)
    }

    /// Checks the classes: unique non-empty names, and a default that exists.
    ///
    /// # Errors
    /// [`PolicyError::Qos`] naming the first bad class.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |q: &str, d: String| PolicyError::Qos {
            qos: q.to_string(),
            detail: d,
        };
        let mut seen = std::collections::BTreeSet::new();
        for q in &self.qos {
            if q.name.is_empty() || q.name.contains(char::is_whitespace) {
                return Err(bad(&q.name, "name must be non-empty without spaces".into()));
            }
            if !seen.insert(q.name.as_str()) {
                return Err(bad(&q.name, "defined twice".into()));
            }
        }
        if !seen.contains(self.default_qos.as_str()) {
            return Err(bad(&self.default_qos, "default qos is not defined".into()));
        }
        Ok(())
    }
}

/// Runs one scheduling pass: see [`pass`]. `now_ms` is the leader's clock at the pass
/// (the only time the policies see).
pub fn schedule(
    snapshot: &ClusterSnapshot,
    pending: &[PendingJob],
    cfg: &PolicyConfig,
    now_ms: u64,
) -> Schedule {
    pass::run(snapshot, pending, cfg, now_ms)
}

/// Checks that `job` could run on `capacity` if the whole cluster were idle and up: the
/// submit-time check behind Slurm's "Requested node configuration is not available".
///
/// # Errors
/// [`Unplaceable`] with the rejects of every node, when no set of nodes could ever hold it.
pub fn feasible_when_idle(capacity: &ClusterSnapshot, job: &PendingJob) -> Result<(), Unplaceable> {
    let idle = capacity.idle();
    Pipeline::new(&PolicyConfig::default())
        .select(&idle, job)
        .map(|_| ())
}

#[cfg(test)]
mod pass_tests;
#[cfg(test)]
mod placement_tests;
#[cfg(test)]
mod selection_tests;
#[cfg(test)]
mod tests;
