//! GPU fragmentation against a target workload, and Fragmentation Gradient Descent (FGD;
//! Weng et al., "Beware of Fragmentation", USENIX ATC '23): place each task where the
//! expected fragmentation of the remaining workload grows least.
//!
//! The maths follows the FGD artifact (github.com/hkust-adsl/kubernetes-scheduler-simulator,
//! `pkg/utils/frag.go`, `pkg/simulator/plugin/fgd_score.go`):
//!
//! - The **workload** is a list of task classes (CPU milli, GPU milli, GPU count, GPU
//!   models) with their popularity `p_m` (share of tasks, summing to 1): the most common
//!   classes of the pod list until they cover 95 % of its tasks, renormalized
//!   ([`Workload::typical`]).
//! - A node's **fragmentation** for class `m` is the free GPU milli that class `m` cannot
//!   use: if `m` fits the node (GPU model allowed, enough GPUs with room, enough CPU), the
//!   free milli of the GPUs with less room than `m` needs per GPU; otherwise all of the
//!   node's free GPU milli. CPU-only classes count all free GPU milli (the artifact's
//!   `XLSatisfied`/`XRLackCPU` cases are both summed). The node's fragmentation is
//!   `F(n) = Σ_m p_m · frag_m(n)`, in GPU milli ([`node_fragmentation`]).
//! - **FGD** scores a placement by the change `F(n after) − F(n before)`: lower is
//!   better. The artifact turns it into `int(sigmoid((F_before − F_after)/1000) · 100)`
//!   and breaks equal integers at random ([`fgd_score_artifact`]); berth keeps the exact
//!   value ([`BerthPacking`]).

use crate::packing::{best_fit_leftover, model_allowed, NodeFree, PackingError, TaskShape};
use crate::score::Scorer;
use crate::snapshot::{NodeView, PendingJob};
use std::collections::BTreeMap;

/// One task class of the target workload.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskClass {
    /// The class (memory is 0: classes ignore memory).
    pub shape: TaskShape,
    /// Share of the workload's tasks, in `(0, 1]`.
    pub popularity: f64,
}

/// The task-class distribution fragmentation is measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Classes, most popular first; popularities sum to 1.
    pub classes: Vec<TaskClass>,
}

/// The FGD artifact's default popularity threshold: classes are kept, most popular first,
/// until they cover this percentage of tasks (`podPopularityThreshold: 95`).
pub const TYPICAL_POPULARITY_PCT: u32 = 95;

impl Workload {
    /// The typical classes of `tasks`: count tasks per class (shape without memory), sort
    /// by count descending (ties: larger CPU, GPU milli, GPU count, then model list first,
    /// as the artifact's reversed `Less`), keep classes until they cover `popularity_pct`
    /// percent of the tasks, and renormalize their popularities to sum to 1 (the artifact's
    /// `GetTypicalPods` with step 1 and CPU-only tasks included).
    ///
    /// # Errors
    /// [`PackingError::Workload`] when `tasks` is empty or `popularity_pct` is not in
    /// `1..=100`.
    pub fn typical<'a>(
        tasks: impl IntoIterator<Item = &'a TaskShape>,
        popularity_pct: u32,
    ) -> Result<Workload, PackingError> {
        if !(1..=100).contains(&popularity_pct) {
            return Err(PackingError::Workload(format!(
                "popularity threshold {popularity_pct}% is not in 1..=100"
            )));
        }
        let mut counts: BTreeMap<TaskShape, u64> = BTreeMap::new();
        let mut total = 0u64;
        for t in tasks {
            *counts.entry(t.class_key()).or_default() += 1;
            total += 1;
        }
        if total == 0 {
            return Err(PackingError::Workload("no tasks".into()));
        }
        let mut sorted: Vec<(TaskShape, u64)> = counts.into_iter().collect();
        sorted.sort_by(|(a, ca), (b, cb)| {
            cb.cmp(ca)
                .then(b.cpu_milli.cmp(&a.cpu_milli))
                .then(b.gpu_milli.cmp(&a.gpu_milli))
                .then(b.gpus.cmp(&a.gpus))
                .then(b.models.join("|").cmp(&a.models.join("|")))
        });
        // Keep classes while the covered count is below the threshold (so the class that
        // crosses it is kept).
        let wanted = f64::from(popularity_pct) * total as f64 / 100.0;
        let mut covered = 0u64;
        let mut kept = 0;
        while kept < sorted.len() && (covered as f64) < wanted {
            covered += sorted[kept].1;
            kept += 1;
        }
        sorted.truncate(kept);
        let classes = sorted
            .into_iter()
            .map(|(shape, c)| TaskClass {
                shape,
                popularity: c as f64 / covered as f64,
            })
            .collect();
        Ok(Workload { classes })
    }
}

/// Free GPU milli on `node` that a task of class `class` cannot use (see the module doc).
pub fn class_fragmentation(node: &NodeFree, class: &TaskShape) -> u64 {
    let free = node.gpu_milli_free_total();
    let usable = class.gpus > 0
        && model_allowed(&node.model, &class.models)
        && node.fits_gpu(class)
        && node.fits_cpu(class);
    if !usable {
        return free;
    }
    // The class fits: only GPUs too full for one of its shares are fragments.
    node.gpu_milli
        .iter()
        .filter(|&&m| m < class.gpu_milli)
        .map(|&m| u64::from(m))
        .sum()
}

/// `F(n) = Σ_m p_m · frag_m(n)`, GPU milli: the fragmentation `node` is expected to show
/// to the next task drawn from `workload`.
pub fn node_fragmentation(node: &NodeFree, workload: &Workload) -> f64 {
    workload
        .classes
        .iter()
        .map(|c| c.popularity * class_fragmentation(node, &c.shape) as f64)
        .sum()
}

/// One way to put a task on a node, with the node's fragmentation afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOption {
    /// GPU indices the task takes (one per GPU it asks for; empty for CPU-only tasks).
    pub gpus: Vec<usize>,
    /// `F(n)` after placing the task there.
    pub frag_after: f64,
}

/// The ways FGD considers to put `task` on `node`: a shared task may go on any GPU with
/// room for it (one option per GPU, in index order); a whole-GPU or CPU-only task is
/// packed onto the lowest-indexed idle GPUs (one option). The caller has checked that the
/// task fits (CPU, memory, model). Empty when the GPUs do not fit.
pub fn fgd_options(node: &NodeFree, task: &TaskShape, workload: &Workload) -> Vec<GpuOption> {
    if task.is_shared() {
        let mut out = Vec::new();
        for (i, &m) in node.gpu_milli.iter().enumerate() {
            if m >= task.gpu_milli {
                let mut after = node.clone();
                after.cpu_milli = after.cpu_milli.saturating_sub(task.cpu_milli);
                after.gpu_milli[i] -= task.gpu_milli;
                out.push(GpuOption {
                    gpus: vec![i],
                    frag_after: node_fragmentation(&after, workload),
                });
            }
        }
        return out;
    }
    let Some(gpus) = node.idle_gpus_first(task.gpus) else {
        return Vec::new();
    };
    match node.after_packed(task) {
        Some(after) => vec![GpuOption {
            gpus,
            frag_after: node_fragmentation(&after, workload),
        }],
        None => Vec::new(),
    }
}

/// The FGD artifact's node score for one option: `int(sigmoid((F_before − F_after)/1000)
/// · 100)`, truncated toward zero as Go's `int64()`; higher is better.
///
/// Example: `F_before = 1500`, `F_after = 1000`: `sigmoid(0.5) = 0.6225`, score 62.
pub fn fgd_score_artifact(frag_before: f64, frag_after: f64) -> i64 {
    let x = (frag_before - frag_after) / 1000.0;
    (100.0 / (1.0 + (-x).exp())) as i64
}

/// The artifact's choice on one node: the option with the highest integer score, the
/// lowest GPU index on equal scores (its `calculateGpuShareFragExtendScore`). `None` when
/// there is no option.
pub fn fgd_choice_artifact(
    node: &NodeFree,
    task: &TaskShape,
    workload: &Workload,
    frag_before: f64,
) -> Option<(i64, Vec<usize>)> {
    let mut best: Option<(i64, Vec<usize>)> = None;
    for o in fgd_options(node, task, workload) {
        let s = fgd_score_artifact(frag_before, o.frag_after);
        if best.as_ref().is_none_or(|(b, _)| s > *b) {
            best = Some((s, o.gpus));
        }
    }
    best
}

/// berth's packing rule: FGD's fragmentation gradient, exact, with best fit as the
/// tie-break.
///
/// For each option the key is `(ΔF, leftover)`, lower is better, compared
/// lexicographically, where `ΔF = F_after − F_before` (GPU milli, unrounded) and
/// `leftover` is [`best_fit_leftover`] of the node before placement. Exact gradients
/// separate options the artifact's integer sigmoid lumps together (one score point is
/// about 40 milli of fragmentation near `ΔF = 0`) and then picks among at random; among
/// truly equal gradients (e.g. identical idle nodes) packing the fuller node keeps idle
/// nodes whole for large tasks. It uses nothing but the task-class distribution FGD
/// itself uses.
#[derive(Debug, Clone)]
pub struct BerthPacking {
    /// The target workload.
    pub workload: Workload,
}

/// berth's key of one placement option (lower is better); see [`BerthPacking`].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PackKey {
    /// `F_after − F_before`, GPU milli.
    pub frag_delta: f64,
    /// Best-fit leftover of the node before placement, `[0, 1]`.
    pub leftover: f64,
}

impl BerthPacking {
    /// The best option on `node` for `task` with its key, or `None` when it does not fit.
    /// `frag_before` is [`node_fragmentation`] of `node` (callers cache it per node).
    pub fn choose(
        &self,
        node: &NodeFree,
        task: &TaskShape,
        frag_before: f64,
    ) -> Option<(PackKey, Vec<usize>)> {
        let leftover = best_fit_leftover(node, task)?;
        let mut best: Option<(PackKey, Vec<usize>)> = None;
        for o in fgd_options(node, task, &self.workload) {
            let key = PackKey {
                frag_delta: o.frag_after - frag_before,
                leftover,
            };
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, o.gpus));
            }
        }
        best
    }
}

/// FGD as a pipeline scorer: `score = tanh(−ΔF / 1000)`, so a placement that lowers the
/// node's expected fragmentation by one GPU scores `tanh(1) = 0.76`, one that adds a GPU
/// of fragments `−0.76`; a node the job does not fit scores −1. Berth jobs take whole
/// GPUs, so the node is seen as whole GPUs (free or held) of the job's type.
pub struct FragmentationGradient {
    /// The target workload.
    pub workload: Workload,
}

impl Scorer for FragmentationGradient {
    fn name(&self) -> &'static str {
        "fragmentation-gradient"
    }
    fn score(&self, job: &PendingJob, node: &NodeView) -> f64 {
        let free = NodeFree::from_view(node, &job.gpu_type);
        let task = TaskShape::from_job(job);
        if !free.fits(&task) {
            return -1.0;
        }
        let before = node_fragmentation(&free, &self.workload);
        fgd_options(&free, &task, &self.workload)
            .iter()
            .map(|o| (-(o.frag_after - before) / 1000.0).tanh())
            .fold(-1.0, f64::max)
    }
}

#[cfg(test)]
mod tests;
