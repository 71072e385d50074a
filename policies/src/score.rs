//! Node scorers: each maps (job, node, the GPUs the job would get there) to a score in
//! `[-1, 1]`; the pipeline averages them (Nomad's rank stack).
//!
//! Topology comes first in the design (the best-connected GPU set), packing second. The
//! packing scorers (`packing::BestFitPacking`, `packing::Spread`,
//! `fragmentation::FragmentationGradient` for FGD and berth's rule) live in their own
//! modules; the pipeline takes the one configured for the job's partition.

use crate::snapshot::{NodeView, PendingJob};
use crate::topology::SetQuality;

/// What the pipeline worked out for one feasible node before scoring.
#[derive(Debug, Clone, Default)]
pub struct Fit {
    /// NVML indexes of the GPUs the job would get (the best-connected free set).
    pub gpus: Vec<u32>,
    /// Their link quality, when the node reported its GPU topology.
    pub quality: Option<SetQuality>,
}

/// One ranking rule; higher is better.
pub trait Scorer {
    /// Name for logs and `berth why`.
    fn name(&self) -> &'static str;
    /// Score in `[-1, 1]` of placing one node's share of `job` on `node` (already feasible)
    /// with the GPUs of `fit`.
    fn score(&self, job: &PendingJob, node: &NodeView, fit: &Fit) -> f64;
}

/// Prefers nodes where the job's GPUs are best connected: [`SetQuality::score`] of the
/// chosen set (`1 - worst_link / 30 - 0.25 * (NUMA nodes - 1)`), so 4 GPUs on one NVSwitch
/// NUMA island (0.97) beat 4 behind PCIe switches across sockets (-1). Nodes that did not
/// report their topology, and single-GPU or CPU-only jobs, score 0: no preference.
pub struct GpuLinks;

impl Scorer for GpuLinks {
    fn name(&self) -> &'static str {
        "gpu-links"
    }
    fn score(&self, job: &PendingJob, _node: &NodeView, fit: &Fit) -> f64 {
        match fit.quality {
            Some(q) if job.gpus_per_node > 1 => q.score(),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::SetQuality;

    #[test]
    fn scores_follow_the_documented_arithmetic() {
        let node = NodeView {
            name: "n".into(),
            partition: "gpu".into(),
            up: true,
            cpus_total: 8,
            cpus_free: 8,
            memory_total_mb: 0,
            memory_free_mb: 0,
            gpus: (0..8)
                .map(|i| crate::GpuView {
                    uuid: format!("G{i}"),
                    index: i,
                    gres_type: "h100".into(),
                    free: i >= 2,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let job = |g| PendingJob {
            gpus_per_node: g,
            ..PendingJob::default()
        };
        let q = |worst_link, numa_spanned| {
            Some(SetQuality {
                worst_link,
                numa_spanned,
                link_sum: 0,
                spill: 0,
            })
        };
        let fit = |quality| Fit {
            gpus: vec![],
            quality,
        };
        // (scorer, gpus, quality, want)
        let cases: Vec<(&dyn Scorer, u32, Option<SetQuality>, f64)> = vec![
            // NVSwitch (cost 1), one NUMA: 1 - 1/30
            (&GpuLinks, 4, q(1, 1), 1.0 - 1.0 / 30.0),
            // NVSwitch over two NUMA nodes: 1 - 1/30 - 0.25
            (&GpuLinks, 4, q(1, 2), 1.0 - 1.0 / 30.0 - 0.25),
            // SYS (60): 1 - 2 = -1
            (&GpuLinks, 2, q(60, 2), -1.0),
            (&GpuLinks, 1, q(0, 1), 0.0),
            (&GpuLinks, 4, None, 0.0),
        ];
        for (i, (s, g, quality, want)) in cases.into_iter().enumerate() {
            let got = s.score(&job(g), &node, &fit(quality));
            assert!(
                (got - want).abs() < 1e-9,
                "#{i} {}: want {want}, got {got}",
                s.name()
            );
        }
    }
}
