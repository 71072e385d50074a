//! Measured GPU use per job: what the agent sends berthd with its heartbeats (so fair share
//! can later charge by measured use, not only by allocation) and exports on `/metrics`.
//!
//! Every GPU a job holds counts with the part it holds: 1 for a whole GPU, 1/replicas for a
//! time-slice or MPS share, `placement_size / 8` for a MIG slice (eight memory slices per
//! GPU on A100/H100). At each heartbeat the elapsed time since the last measure is
//! multiplied by each part (GPU-seconds held) and by the GPU's utilization (GPU-seconds
//! busy), and the job's memory is its parts of each GPU's used framebuffer. The totals are
//! kept in the job's directory (`usage.json`), so an agent restart loses nothing.
//!
//! Limits, stated where they bite: NVML utilization is per GPU, so jobs sharing one GPU
//! are each charged its whole utilization times their part; MIG slices have no
//! utilization of their own here (they add held time, not busy time, and their parent's
//! memory part); the interval is charged at the utilization seen at its end.

use crate::gpu::GpuSample;
use berth_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// The file in a job directory holding its [`Meter`].
pub const FILE: &str = "usage.json";

/// Memory slices of a MIG-capable GPU (A100, H100): a slice's part is its size over this.
const MIG_MEMORY_SLICES: f64 = 8.0;

/// One GPU a job holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    /// The GPU's UUID (the parent's, for a MIG slice).
    pub uuid: String,
    /// The part of it the job holds, in (0, 1].
    pub part: f64,
    /// Whether the GPU's utilization is the job's to count (not for MIG slices).
    pub util_counts: bool,
}

/// What `job` holds on `node`, each GPU shared `replicas` ways (1: not shared).
pub fn holdings(job: &pb::Job, node: &str, replicas: u32) -> Vec<Holding> {
    let Some(a) = job.allocations.iter().find(|a| a.node == node) else {
        return Vec::new();
    };
    let whole = 1.0 / f64::from(replicas.max(1));
    let gpus = a.gpu_uuids.iter().map(|u| Holding {
        uuid: u.clone(),
        part: whole,
        util_counts: true,
    });
    let slices = a.mig_slices.iter().map(|s| Holding {
        uuid: s.gpu_uuid.clone(),
        part: (f64::from(s.placement_size) / MIG_MEMORY_SLICES).clamp(0.0, 1.0),
        util_counts: false,
    });
    gpus.chain(slices).collect()
}

/// A job's cumulative measured use on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    /// Σ seconds × part held.
    pub gpu_seconds: f64,
    /// Σ seconds × part held × utilization / 100.
    pub gpu_busy_seconds: f64,
    /// Peak memory use, MiB.
    pub gpu_memory_max_mb: u64,
    /// Mean utilization of its GPUs at the last measure, %.
    pub gpu_util_percent: f64,
    /// Memory use at the last measure, MiB.
    pub gpu_memory_mb: u64,
    /// When it was last measured (agent clock, ms); the next interval starts here.
    pub measured_ms: u64,
    /// The job has ended and its last interval is counted: nothing more is added.
    #[serde(default)]
    pub done: bool,
}

/// Utilization (mean over counted GPUs, %) and memory use (MiB) of `holdings` now. GPUs
/// without a sample (lost) count for nothing.
pub fn instant(holdings: &[Holding], samples: &[GpuSample]) -> (f64, u64) {
    let (mut util_sum, mut util_n, mut memory) = (0.0, 0u32, 0.0);
    for h in holdings {
        let Some(s) = samples.iter().find(|s| s.uuid == h.uuid) else {
            continue;
        };
        if h.util_counts {
            util_sum += f64::from(s.util_percent.min(100));
            util_n += 1;
        }
        memory += h.part * s.fb_used_mb as f64;
    }
    let util = if util_n == 0 {
        0.0
    } else {
        util_sum / f64::from(util_n)
    };
    (util, memory.round() as u64)
}

impl Meter {
    /// A meter for a job that started at `started_ms`.
    pub fn starting(started_ms: u64) -> Meter {
        Meter {
            measured_ms: started_ms,
            ..Default::default()
        }
    }

    /// Counts the interval from the last measure to `now_ms` with `samples`. A clock that
    /// went back counts nothing; a finished meter does not move.
    pub fn advance(&mut self, now_ms: u64, holdings: &[Holding], samples: &[GpuSample]) {
        if self.done {
            return;
        }
        let dt = now_ms.saturating_sub(self.measured_ms) as f64 / 1000.0;
        for h in holdings {
            let Some(s) = samples.iter().find(|s| s.uuid == h.uuid) else {
                continue;
            };
            self.gpu_seconds += dt * h.part;
            if h.util_counts {
                self.gpu_busy_seconds += dt * h.part * f64::from(s.util_percent.min(100)) / 100.0;
            }
        }
        let (util, memory) = instant(holdings, samples);
        self.gpu_util_percent = util;
        self.gpu_memory_mb = memory;
        self.gpu_memory_max_mb = self.gpu_memory_max_mb.max(memory);
        self.measured_ms = self.measured_ms.max(now_ms);
    }

    /// The report for berthd.
    pub fn report(&self, job_id: u64) -> pb::JobUsage {
        pb::JobUsage {
            job_id,
            node: String::new(),
            gpu_seconds: self.gpu_seconds,
            gpu_busy_seconds: self.gpu_busy_seconds,
            gpu_memory_max_mb: self.gpu_memory_max_mb,
            gpu_util_percent: self.gpu_util_percent,
            gpu_memory_mb: self.gpu_memory_mb,
            measured_ms: self.measured_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(uuid: &str, util: u32, used: u64) -> GpuSample {
        GpuSample {
            uuid: uuid.into(),
            util_percent: util,
            fb_used_mb: used,
            ..Default::default()
        }
    }

    fn job(gpus: &[&str], slices: &[(&str, u32)]) -> pb::Job {
        pb::Job {
            id: 5,
            allocations: vec![pb::Allocation {
                node: "n1".into(),
                gpu_uuids: gpus.iter().map(|s| s.to_string()).collect(),
                mig_slices: slices
                    .iter()
                    .map(|(u, size)| pb::MigSlice {
                        gpu_uuid: u.to_string(),
                        placement_size: *size,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn whole_gpus_count_time_busy_time_and_memory() {
        let h = holdings(&job(&["GPU-a", "GPU-b"], &[]), "n1", 1);
        let mut m = Meter::starting(1_000);
        // 10 s at 50 % and 100 %: held 2 × 10 = 20, busy 10 × 0.5 + 10 × 1 = 15.
        m.advance(
            11_000,
            &h,
            &[sample("GPU-a", 50, 1000), sample("GPU-b", 100, 3000)],
        );
        assert_eq!(m.gpu_seconds, 20.0);
        assert_eq!(m.gpu_busy_seconds, 15.0);
        assert_eq!((m.gpu_util_percent, m.gpu_memory_mb), (75.0, 4000));
        // 5 s more, idle, less memory: the peak stays.
        m.advance(
            16_000,
            &h,
            &[sample("GPU-a", 0, 10), sample("GPU-b", 0, 10)],
        );
        assert_eq!((m.gpu_seconds, m.gpu_busy_seconds), (30.0, 15.0));
        assert_eq!((m.gpu_memory_mb, m.gpu_memory_max_mb), (20, 4000));
        assert_eq!(m.report(5).measured_ms, 16_000);
    }

    #[test]
    fn shares_and_mig_slices_count_their_part() {
        // A share of a GPU offered 4 ways: a quarter of its time, busy time and memory.
        let h = holdings(&job(&["GPU-a"], &[]), "n1", 4);
        let mut m = Meter::starting(0);
        m.advance(8_000, &h, &[sample("GPU-a", 50, 4000)]);
        // 8 s × 0.25 = 2 held; × 0.5 = 1 busy; 4000 × 0.25 = 1000 MiB.
        assert_eq!((m.gpu_seconds, m.gpu_busy_seconds), (2.0, 1.0));
        assert_eq!(m.gpu_memory_mb, 1000);
        // A 3g slice (4 of 8 memory slices): half the time, no busy time (no per-slice
        // utilization), half the parent's memory.
        let h = holdings(&job(&[], &[("GPU-m", 4)]), "n1", 1);
        let mut m = Meter::starting(0);
        m.advance(10_000, &h, &[sample("GPU-m", 90, 2000)]);
        assert_eq!((m.gpu_seconds, m.gpu_busy_seconds), (5.0, 0.0));
        assert_eq!((m.gpu_util_percent, m.gpu_memory_mb), (0.0, 1000));
        assert!(holdings(&job(&["GPU-a"], &[]), "other", 1).is_empty());
    }

    #[test]
    fn lost_gpus_a_clock_going_back_and_finished_meters_add_nothing() {
        let h = holdings(&job(&["GPU-a"], &[]), "n1", 1);
        let mut m = Meter::starting(10_000);
        m.advance(20_000, &h, &[]);
        assert_eq!(m.gpu_seconds, 0.0, "no sample: GPU lost");
        m.advance(15_000, &h, &[sample("GPU-a", 100, 1)]);
        assert_eq!(m.gpu_seconds, 0.0, "clock went back");
        assert_eq!(m.measured_ms, 20_000);
        m.advance(21_000, &h, &[sample("GPU-a", 100, 1)]);
        assert_eq!(m.gpu_seconds, 1.0);
        m.done = true;
        m.advance(99_000, &h, &[sample("GPU-a", 100, 1)]);
        assert_eq!(m.gpu_seconds, 1.0);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Meter>(&text).unwrap(), m);
    }
}
