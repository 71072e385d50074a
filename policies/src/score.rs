//! Node scorers: each maps (job, node) to a score in `[-1, 1]`; the pipeline averages them.
//!
//! Only best-fit exists for the FIFO slice. Topology, fragmentation (FGD) and spread scorers
//! join here as small structs of their own.

use crate::snapshot::{NodeView, PendingJob};

/// One ranking rule; higher is better.
pub trait Scorer {
    /// Name for logs and `berth why`.
    fn name(&self) -> &'static str;
    /// Score in `[-1, 1]` of placing one node's share of `job` on `node` (already feasible).
    fn score(&self, job: &PendingJob, node: &NodeView) -> f64;
}

/// Packs GPU jobs onto the nodes with the fewest free GPUs left, keeping whole nodes free
/// for large jobs.
///
/// With `f` free matching GPUs after placement out of `t` on the node:
/// `score = 1 - 2 * f / t`, so a node left full scores 1, one left empty scores -1. A node
/// with no GPUs scores 0 for CPU-only jobs, and GPU nodes score -1 for CPU-only jobs so that
/// they stay free for GPU work.
pub struct BestFitGpus;

impl Scorer for BestFitGpus {
    fn name(&self) -> &'static str {
        "best-fit-gpus"
    }
    fn score(&self, job: &PendingJob, node: &NodeView) -> f64 {
        let total = node.gpus.len();
        if total == 0 {
            return 0.0;
        }
        if job.gpus_per_node == 0 {
            return -1.0;
        }
        let free_after = node
            .free_gpus(&job.gpu_type)
            .count()
            .saturating_sub(job.gpus_per_node as usize);
        1.0 - 2.0 * free_after as f64 / total as f64
    }
}
