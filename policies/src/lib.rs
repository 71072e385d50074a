//! Pure scheduling logic for berth: a snapshot of the cluster and the pending jobs go in,
//! placement decisions come out.
//!
//! Nothing here does IO, reads a clock, touches the network or draws unseeded randomness:
//! berthd's leader calls [`schedule`] with committed state and proposes the result through
//! the Raft log, so the same inputs must always give the same decisions, and every rule can
//! be tested exhaustively and benchmarked without a cluster.
//!
//! # Layout
//! - [`snapshot`]: the input types ([`ClusterSnapshot`], [`NodeView`], [`PendingJob`]).
//! - [`filter`]: one small struct per feasibility rule ([`filter::Filter`]).
//! - [`score`]: node scorers in `[-1, 1]` ([`score::Scorer`]).
//! - [`pipeline`]: the chain filters → scorers → pick, for one job.
//! - [`schedule`]: FIFO over the pending jobs, each placed through the pipeline against a
//!   working copy of the snapshot, so one pass never grants a GPU twice.
#![deny(missing_docs)]

pub mod filter;
pub mod pipeline;
pub mod score;
pub mod snapshot;

pub use filter::{Reject, RejectReason};
pub use pipeline::{Pipeline, PlacementMetrics, Unplaceable};
pub use snapshot::{ClusterSnapshot, Decision, GpuView, NodeGrant, NodeView, PendingJob};

/// Tunables of the placement pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// At most this many feasible nodes are scored per job (keeps one decision cheap on
    /// large clusters; ties still break on node name, so the cap is deterministic).
    pub nodes_scored_max: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            nodes_scored_max: 256,
        }
    }
}

/// The result of one scheduling pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// Jobs to start, in the order they were placed.
    pub decisions: Vec<Decision>,
    /// Jobs left pending, with why (fed to squeue's reason column).
    pub unplaced: Vec<(u64, Unplaceable)>,
}

/// Places `pending` jobs in the order given (the caller sorts them: FIFO by job id for now;
/// fair share replaces the order in a later policy) on `snapshot`.
///
/// Each placed job consumes its GPUs, CPUs and memory in a working copy before the next job
/// is considered, so the decisions of one pass never overlap. A job that does not fit is
/// skipped (first fit), and smaller jobs behind it may still start; reservations that stop
/// a large job from starving arrive with backfill.
///
/// `now_ms` is the leader's clock at the pass; the FIFO policy does not use it yet, but
/// every policy receives time as an argument, never from a clock.
pub fn schedule(
    snapshot: &ClusterSnapshot,
    pending: &[PendingJob],
    cfg: &PolicyConfig,
    now_ms: u64,
) -> Schedule {
    let _ = now_ms;
    let pipeline = Pipeline::new(cfg);
    let mut working = snapshot.clone();
    let mut out = Schedule::default();
    for job in pending {
        match pipeline.select(&working, job) {
            Ok(decision) => {
                working.consume(&decision);
                out.decisions.push(decision);
            }
            Err(why) => out.unplaced.push((job.id, why)),
        }
    }
    out
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
mod tests;
