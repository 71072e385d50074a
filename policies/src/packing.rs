//! Packing maths for GPU-sharing placement: a node's free resources in GPU milli per GPU
//! and CPU milli, a task's shape, whether a task fits, which GPUs it takes, and the
//! best-fit and spread scores.
//!
//! The unit is the one of the Alibaba GPU trace and of Kubernetes GPU sharing: 1000 GPU
//! milli is one whole GPU. A task asks either for a fraction of one GPU (`gpus == 1`,
//! `gpu_milli < 1000`, it shares that GPU with others) or for `gpus` whole GPUs
//! (`gpu_milli == 1000`); a multi-GPU task never takes fractions, as in the FGD artifact
//! (it panics on one). Fragmentation (FGD) builds on these types in
//! [`crate::fragmentation`].

use crate::score::Scorer;
use crate::snapshot::{NodeView, PendingJob};

/// GPU milli in one whole GPU.
pub const GPU_MILLI: u32 = 1000;

/// Errors of building packing inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PackingError {
    /// A task shape is not one this model can place.
    #[error("bad task shape: {0}")]
    Shape(String),
    /// A node is not valid.
    #[error("bad node: {0}")]
    Node(String),
    /// The workload (task-class distribution) is not valid.
    #[error("bad workload: {0}")]
    Workload(String),
    /// A packing choice is not one of the known ones.
    #[error("{0}")]
    Choice(String),
}

/// What a node has left.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeFree {
    /// Free CPU, milli-CPUs.
    pub cpu_milli: u64,
    /// Free memory, MiB.
    pub memory_mib: u64,
    /// Free GPU milli of each GPU, in GPU index order (each in `[0, 1000]`).
    pub gpu_milli: Vec<u32>,
    /// GPU model of the node (every GPU of a node has the same model); empty when the node
    /// has no GPUs.
    pub model: String,
}

/// What a task asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskShape {
    /// CPU, milli-CPUs.
    pub cpu_milli: u64,
    /// Memory, MiB (feasibility only: fragmentation ignores memory, as FGD does).
    pub memory_mib: u64,
    /// Number of GPUs (0: a CPU-only task).
    pub gpus: u32,
    /// GPU milli on each of its GPUs: `(0, 1000)` for a shared GPU, 1000 for whole GPUs,
    /// 0 for a CPU-only task.
    pub gpu_milli: u32,
    /// GPU models the task may run on; empty: any model.
    pub models: Vec<String>,
}

impl TaskShape {
    /// Checks the shape against the model's rules.
    ///
    /// # Errors
    /// [`PackingError::Shape`] when GPUs and GPU milli disagree (one is 0 and the other is
    /// not), `gpu_milli` exceeds 1000, or a multi-GPU task asks for fractions.
    pub fn validate(&self) -> Result<(), PackingError> {
        let bad = |d: String| Err(PackingError::Shape(d));
        if (self.gpus == 0) != (self.gpu_milli == 0) {
            return bad(format!(
                "num_gpu {} and gpu_milli {} must both be 0 or both be positive",
                self.gpus, self.gpu_milli
            ));
        }
        if self.gpu_milli > GPU_MILLI {
            return bad(format!("gpu_milli {} is over {GPU_MILLI}", self.gpu_milli));
        }
        if self.gpus > 1 && self.gpu_milli != GPU_MILLI {
            return bad(format!(
                "a {}-GPU task must take whole GPUs (gpu_milli 1000), not {}",
                self.gpus, self.gpu_milli
            ));
        }
        Ok(())
    }

    /// A fraction of one GPU, shared with other tasks.
    pub fn is_shared(&self) -> bool {
        self.gpus == 1 && self.gpu_milli < GPU_MILLI
    }

    /// GPU milli over all its GPUs.
    pub fn gpu_milli_total(&self) -> u64 {
        u64::from(self.gpus) * u64::from(self.gpu_milli)
    }

    /// The same shape without memory: the key of a task class (FGD's classes are
    /// CPU, GPU milli, GPU count and GPU model).
    pub fn class_key(&self) -> TaskShape {
        TaskShape {
            memory_mib: 0,
            ..self.clone()
        }
    }

    /// A berth job's share of one node, as a packing shape: whole GPUs or a fraction of
    /// one ([`PendingJob::gpu_milli`]), whole CPUs.
    pub fn from_job(job: &PendingJob) -> TaskShape {
        let gpus = job.gpus_per_node;
        TaskShape {
            cpu_milli: u64::from(job.cpus_per_node) * 1000,
            memory_mib: job.mem_per_node_mb,
            gpus,
            gpu_milli: match (gpus, job.gpu_milli) {
                (0, _) => 0,
                (_, 0) => GPU_MILLI,
                (_, m) => m,
            },
            models: if job.gpu_type.is_empty() {
                Vec::new()
            } else {
                vec![job.gpu_type.clone()]
            },
        }
    }
}

/// Whether a node of `model` may run a task restricted to `models` (empty: any). A node
/// without GPUs (empty model) never matches a restriction. As the FGD artifact's
/// `IsNodeAccessibleToPodByType`.
pub fn model_allowed(model: &str, models: &[String]) -> bool {
    models.is_empty() || (!model.is_empty() && models.iter().any(|m| m == model))
}

impl NodeFree {
    /// An idle node.
    pub fn idle(cpu_milli: u64, memory_mib: u64, gpus: u32, model: &str) -> NodeFree {
        NodeFree {
            cpu_milli,
            memory_mib,
            gpu_milli: vec![GPU_MILLI; gpus as usize],
            model: model.to_string(),
        }
    }

    /// What `node` has left for GPUs of `gres_type` (empty: any): a free GPU is 1000 milli,
    /// a held one 0, a time-sliced one its unheld milli while a share is left
    /// ([`crate::GpuView::milli_free`]). GPUs of other types count as held, so they never
    /// look free to this task.
    pub fn from_view(node: &NodeView, gres_type: &str) -> NodeFree {
        let gpu_milli = node
            .gpus
            .iter()
            .map(|g| {
                if gres_type.is_empty() || g.gres_type == gres_type {
                    g.milli_free()
                } else {
                    0
                }
            })
            .collect();
        NodeFree {
            cpu_milli: u64::from(node.cpus_free) * 1000,
            memory_mib: node.memory_free_mb,
            gpu_milli,
            model: node
                .gpus
                .first()
                .map(|g| g.gres_type.clone())
                .unwrap_or_default(),
        }
    }

    /// Free GPU milli over all GPUs.
    pub fn gpu_milli_free_total(&self) -> u64 {
        self.gpu_milli.iter().map(|&m| u64::from(m)).sum()
    }

    /// Whole GPUs with nothing on them.
    pub fn gpus_idle(&self) -> usize {
        self.gpu_milli.iter().filter(|&&m| m == GPU_MILLI).count()
    }

    /// GPUs that could hold one `gpu_milli` share each (free milli ≥ `gpu_milli`).
    fn gpus_with(&self, gpu_milli: u32) -> usize {
        self.gpu_milli.iter().filter(|&&m| m >= gpu_milli).count()
    }

    /// Whether `task` fits now: CPU, memory, GPU model, and enough GPUs with enough free
    /// milli each (a shared task needs one GPU with room for its fraction; whole GPUs
    /// must be idle).
    pub fn fits(&self, task: &TaskShape) -> bool {
        if self.cpu_milli < task.cpu_milli || self.memory_mib < task.memory_mib {
            return false;
        }
        if task.gpus == 0 {
            return true;
        }
        model_allowed(&self.model, &task.models)
            && self.gpus_with(task.gpu_milli) >= task.gpus as usize
    }

    /// Fragmentation-view fit, as the FGD artifact's `GetNodePodFrag`: CPU and GPU only
    /// (no memory, no model: the caller checks the model first).
    pub(crate) fn fits_cpu(&self, task: &TaskShape) -> bool {
        self.cpu_milli >= task.cpu_milli
    }

    /// As [`Self::fits`] for the GPU dimension only.
    pub(crate) fn fits_gpu(&self, task: &TaskShape) -> bool {
        self.gpus_with(task.gpu_milli) >= task.gpus as usize
    }

    /// The GPUs a whole-GPU task takes: the lowest-indexed idle GPUs (the artifact's
    /// `AllocateExclusiveGpuId`). `None` when too few are idle.
    pub fn idle_gpus_first(&self, gpus: u32) -> Option<Vec<usize>> {
        let chosen: Vec<usize> = (0..self.gpu_milli.len())
            .filter(|&i| self.gpu_milli[i] == GPU_MILLI)
            .take(gpus as usize)
            .collect();
        (chosen.len() == gpus as usize).then_some(chosen)
    }

    /// The GPU a shared task takes under best fit: the one with the least free milli that
    /// still holds it, lowest index on ties (the artifact's `allocateGpuIdBasedOnBestFit`).
    pub fn tightest_gpu(&self, gpu_milli: u32) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, &m) in self.gpu_milli.iter().enumerate() {
            if m >= gpu_milli && best.is_none_or(|b| m < self.gpu_milli[b]) {
                best = Some(i);
            }
        }
        best
    }

    /// GPUs under best fit: the tightest GPU for a shared task, the first idle GPUs for
    /// whole ones, nothing for a CPU-only task. `None` when the GPUs do not fit.
    pub fn best_fit_gpus(&self, task: &TaskShape) -> Option<Vec<usize>> {
        if task.gpus == 0 {
            Some(Vec::new())
        } else if task.is_shared() {
            self.tightest_gpu(task.gpu_milli).map(|i| vec![i])
        } else {
            self.idle_gpus_first(task.gpus)
        }
    }

    /// Takes `task` with its share on each GPU in `gpus`.
    ///
    /// # Panics
    /// If the task does not fit there (the caller chose `gpus` from this state).
    pub fn take(&mut self, task: &TaskShape, gpus: &[usize]) {
        assert!(
            self.cpu_milli >= task.cpu_milli && self.memory_mib >= task.memory_mib,
            "take: cpu {} / mem {} left, task wants {} / {}",
            self.cpu_milli,
            self.memory_mib,
            task.cpu_milli,
            task.memory_mib
        );
        assert_eq!(
            gpus.len(),
            task.gpus as usize,
            "take: GPU list vs task GPUs"
        );
        self.cpu_milli -= task.cpu_milli;
        self.memory_mib -= task.memory_mib;
        for &g in gpus {
            assert!(
                self.gpu_milli[g] >= task.gpu_milli,
                "take: GPU {g} has {} milli, task wants {}",
                self.gpu_milli[g],
                task.gpu_milli
            );
            self.gpu_milli[g] -= task.gpu_milli;
        }
    }

    /// The node after `task` is packed onto its least-sufficient GPUs (ascending free
    /// milli, index order on ties): the artifact's `NodeResource.Sub`, used to look one
    /// task ahead. Memory is not checked. `None` when CPU or GPUs do not fit.
    pub fn after_packed(&self, task: &TaskShape) -> Option<NodeFree> {
        if self.cpu_milli < task.cpu_milli {
            return None;
        }
        let mut out = self.clone();
        out.cpu_milli -= task.cpu_milli;
        if task.gpus == 0 {
            return Some(out);
        }
        let mut order: Vec<usize> = (0..out.gpu_milli.len()).collect();
        order.sort_by_key(|&i| out.gpu_milli[i]); // stable: index order on ties
        let mut left = task.gpus;
        for i in order {
            if out.gpu_milli[i] >= task.gpu_milli {
                out.gpu_milli[i] -= task.gpu_milli;
                left -= 1;
                if left == 0 {
                    return Some(out);
                }
            }
        }
        None
    }
}

/// Most CPU milli of any node, the artifact's `MaxSpecCpu` (normalizes best fit).
pub const MAX_SPEC_CPU_MILLI: f64 = 128_000.0;
/// Most GPU milli of any node, the artifact's `MaxSpecGpu`.
pub const MAX_SPEC_GPU_MILLI: f64 = 8_000.0;

/// Best-fit leftover of placing `task` on `node`, in `[0, 1]`, lower is tighter:
/// `0.5 · (cpu_free − cpu_req) / 128000 + 0.5 · (gpu_free − gpu_req) / 8000`, the
/// artifact's `getBestFitScore` before its scaling (GPU milli summed over the node's GPUs).
/// `None` when the node has less than the task asks on either dimension.
pub fn best_fit_leftover(node: &NodeFree, task: &TaskShape) -> Option<f64> {
    let gpu_free = node.gpu_milli_free_total();
    if node.cpu_milli < task.cpu_milli || gpu_free < task.gpu_milli_total() {
        return None;
    }
    let cpu = (node.cpu_milli - task.cpu_milli) as f64 / MAX_SPEC_CPU_MILLI;
    let gpu = (gpu_free - task.gpu_milli_total()) as f64 / MAX_SPEC_GPU_MILLI;
    Some(0.5 * cpu + 0.5 * gpu)
}

/// The artifact's integer best-fit score in `[0, 100]`: `int((1 − leftover) · 100)`,
/// truncated as Go's `int64()` does. Equal integers are ties the scheduler breaks at
/// random.
pub fn best_fit_score_artifact(node: &NodeFree, task: &TaskShape) -> Option<i64> {
    best_fit_leftover(node, task).map(|l| ((1.0 - l) * 100.0) as i64)
}

/// Best-fit leftover of one node's share of `job` on `node` as [`best_fit_leftover`] computes
/// it, without building a [`NodeFree`] (scorers run on up to `nodes_scored_max` nodes per
/// job): free GPU milli of the job's type, free CPUs. `None` when the job's GPUs or CPUs do
/// not fit there.
fn view_leftover(job: &PendingJob, node: &NodeView) -> Option<f64> {
    let gpu_free: u64 = node
        .gpus
        .iter()
        .filter(|g| job.gpu_type.is_empty() || g.gres_type == job.gpu_type)
        .map(|g| u64::from(g.milli_free()))
        .sum();
    let cpu_free = u64::from(node.cpus_free) * 1000;
    let task = TaskShape::from_job(job);
    if cpu_free < task.cpu_milli || gpu_free < task.gpu_milli_total() {
        return None;
    }
    let cpu = (cpu_free - task.cpu_milli) as f64 / MAX_SPEC_CPU_MILLI;
    let gpu = (gpu_free - task.gpu_milli_total()) as f64 / MAX_SPEC_GPU_MILLI;
    Some(0.5 * cpu + 0.5 * gpu)
}

/// Packs tasks onto the nodes they leave tightest (CPU and GPU milli, equal weights).
///
/// `score = 1 − 2 · leftover`, with `leftover` of [`best_fit_leftover`] in `[0, 1]`: a
/// node left empty of both scores at most 1 − 2·(cpu_left/128000 + gpu_left/8000)/2.
/// Nodes the task does not fit score −1.
pub struct BestFitPacking;

impl Scorer for BestFitPacking {
    fn name(&self) -> &'static str {
        "best-fit-packing"
    }
    fn score(&self, job: &PendingJob, node: &NodeView, _fit: &crate::score::Fit) -> f64 {
        view_leftover(job, node).map_or(-1.0, |l| (1.0 - 2.0 * l).clamp(-1.0, 1.0))
    }
}

/// Spreads tasks onto the nodes with the most left (worst fit): the negation of
/// [`BestFitPacking`], `score = 2 · leftover − 1`. Nodes the task does not fit score −1.
pub struct Spread;

impl Scorer for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }
    fn score(&self, job: &PendingJob, node: &NodeView, _fit: &crate::score::Fit) -> f64 {
        view_leftover(job, node).map_or(-1.0, |l| (2.0 * l - 1.0).clamp(-1.0, 1.0))
    }
}

/// How a partition packs jobs onto its nodes: the packing scorer of its placement
/// pipeline (the accounts TOML's `[[partition]] packing = "…"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packing {
    /// [`BestFitPacking`]: the node left tightest in CPU and GPU milli (the default: it
    /// keeps whole nodes free for large jobs, and needs no workload).
    #[default]
    BestFit,
    /// [`Spread`]: the node left with the most (spreads load, e.g. for inference that
    /// wants headroom per node).
    Spread,
    /// FGD: least growth of the expected fragmentation of the partition's workload
    /// ([`crate::fragmentation::node_fragmentation`]).
    Fgd,
    /// berth's rule: least growth of [`crate::fragmentation::berth_fragmentation`].
    Berth,
}

impl Packing {
    /// Every choice, in the order the error message lists them.
    pub const ALL: [Packing; 4] = [
        Packing::BestFit,
        Packing::Spread,
        Packing::Fgd,
        Packing::Berth,
    ];

    /// The name in config and output: `bestfit`, `spread`, `fgd`, `berth`.
    pub fn as_str(self) -> &'static str {
        match self {
            Packing::BestFit => "bestfit",
            Packing::Spread => "spread",
            Packing::Fgd => "fgd",
            Packing::Berth => "berth",
        }
    }

    /// Parses a configured name (exact, lower case).
    ///
    /// # Errors
    /// [`PackingError::Choice`] naming the bad value and the valid ones.
    pub fn parse(text: &str) -> Result<Packing, PackingError> {
        Packing::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                let valid: Vec<&str> = Packing::ALL.iter().map(|p| p.as_str()).collect();
                PackingError::Choice(format!(
                    "unknown packing {text:?}; use one of {}",
                    valid.join(", ")
                ))
            })
    }

    /// Whether the choice measures fragmentation against a workload (FGD and berth), so
    /// a pass must derive the partition's task-class distribution for it.
    pub fn needs_workload(self) -> bool {
        matches!(self, Packing::Fgd | Packing::Berth)
    }
}

#[cfg(test)]
mod tests;
