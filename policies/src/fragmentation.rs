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
//!   and breaks equal integers by node order ([`fgd_score_artifact`]).
//! - **berth** ([`BerthPacking`]) descends the gradient of its own measure
//!   ([`berth_fragmentation`]): for shared-GPU classes it adds, to FGD's fragment, the
//!   free milli that a *stream* of that class could never use
//!   ([`class_fragmentation_stream`]: per-GPU remainders and GPUs stranded by CPU), so it
//!   sees that a GPU with 700 free milli holds one 470-milli task and wastes 230, which
//!   FGD's one-task view does not. It keeps the exact change (no rounding) and breaks
//!   ties by best fit, then node order.

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

impl Workload {
    /// The typical classes of weighted tasks, as [`Workload::typical`] does with counts:
    /// classes (shapes without memory) by total weight descending, the same tie order,
    /// kept until they cover `popularity_pct` percent of the weight, renormalized.
    /// Weights that are not positive and finite are skipped.
    ///
    /// # Errors
    /// [`PackingError::Workload`] when no weight is left or `popularity_pct` is not in
    /// `1..=100`.
    pub fn typical_weighted<'a>(
        tasks: impl IntoIterator<Item = (&'a TaskShape, f64)>,
        popularity_pct: u32,
    ) -> Result<Workload, PackingError> {
        if !(1..=100).contains(&popularity_pct) {
            return Err(PackingError::Workload(format!(
                "popularity threshold {popularity_pct}% is not in 1..=100"
            )));
        }
        let mut weights: BTreeMap<TaskShape, f64> = BTreeMap::new();
        for (t, w) in tasks {
            if w.is_finite() && w > 0.0 {
                *weights.entry(t.class_key()).or_default() += w;
            }
        }
        let total: f64 = weights.values().sum();
        if weights.is_empty() {
            return Err(PackingError::Workload("no tasks".into()));
        }
        let mut sorted: Vec<(TaskShape, f64)> = weights.into_iter().collect();
        sorted.sort_by(|(a, wa), (b, wb)| {
            wb.total_cmp(wa)
                .then(b.cpu_milli.cmp(&a.cpu_milli))
                .then(b.gpu_milli.cmp(&a.gpu_milli))
                .then(b.gpus.cmp(&a.gpus))
                .then(b.models.join("|").cmp(&a.models.join("|")))
        });
        let wanted = f64::from(popularity_pct) * total / 100.0;
        let mut covered = 0.0;
        let mut kept = 0;
        while kept < sorted.len() && covered < wanted {
            covered += sorted[kept].1;
            kept += 1;
        }
        sorted.truncate(kept);
        let classes = sorted
            .into_iter()
            .map(|(shape, w)| TaskClass {
                shape,
                popularity: w / covered,
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

/// Free GPU milli on `node` that an endless stream of class-`class` tasks could never
/// use: the free milli minus what the copies of `class` that still fit would take, where
/// copies are limited by CPU (`cpu_free / cpu`) and by GPU room (for a shared class,
/// `Σ_g floor(free_g / milli)`; for whole GPUs, `idle / gpus`). All free milli when the
/// class cannot run there (CPU-only classes, other GPU models).
///
/// Example: GPUs `[700, 1000]`, 16 CPUs free, class 470 milli with 4 CPUs: GPU room
/// `1 + 2 = 3` copies, CPU room 4, so 3 copies take 1410 of 1700 free: 290 are fragments.
pub fn class_fragmentation_stream(node: &NodeFree, class: &TaskShape) -> u64 {
    let free = node.gpu_milli_free_total();
    if class.gpus == 0 || !model_allowed(&node.model, &class.models) {
        return free;
    }
    let by_cpu = node
        .cpu_milli
        .checked_div(class.cpu_milli)
        .unwrap_or(u64::MAX);
    let by_gpu: u64 = if class.is_shared() {
        node.gpu_milli
            .iter()
            .map(|&m| u64::from(m / class.gpu_milli))
            .sum()
    } else {
        node.gpus_idle() as u64 / u64::from(class.gpus)
    };
    free - by_cpu.min(by_gpu) * class.gpu_milli_total()
}

/// berth's measure: `B(n) = Σ_m p_m · b_m(n)` with `b_m = frag_m + stream_m` for
/// shared-GPU classes ([`class_fragmentation`] + [`class_fragmentation_stream`]) and
/// `b_m = 2 · frag_m` for the others, so both kinds of class weigh on the same scale (for
/// whole-GPU classes the stream view's CPU floor over-counts: with it, the 50 %
/// multi-GPU list packs worse; README has the numbers).
pub fn berth_fragmentation(node: &NodeFree, workload: &Workload) -> f64 {
    workload
        .classes
        .iter()
        .map(|c| {
            let fgd = class_fragmentation(node, &c.shape);
            let b = if c.shape.is_shared() {
                fgd + class_fragmentation_stream(node, &c.shape)
            } else {
                2 * fgd
            };
            c.popularity * b as f64
        })
        .sum()
}

/// A fragmentation measure: [`node_fragmentation`] (FGD) or [`berth_fragmentation`].
pub type Measure = fn(&NodeFree, &Workload) -> f64;

/// One way to put a task on a node, with the node's fragmentation afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOption {
    /// GPU indices the task takes (one per GPU it asks for; empty for CPU-only tasks).
    pub gpus: Vec<usize>,
    /// `F(n)` after placing the task there.
    pub frag_after: f64,
}

/// The ways FGD considers to put `task` on `node`, with FGD's measure: see
/// [`placement_options`].
pub fn fgd_options(node: &NodeFree, task: &TaskShape, workload: &Workload) -> Vec<GpuOption> {
    placement_options(node, task, workload, node_fragmentation)
}

/// The ways to put `task` on `node`, each with `measure` of the node afterwards: a shared
/// task may go on any GPU with room for it (one option per GPU, in index order); a
/// whole-GPU or CPU-only task is packed onto the lowest-indexed idle GPUs (one option).
/// The caller has checked that the task fits (CPU, memory, model). Empty when the GPUs
/// do not fit.
pub fn placement_options(
    node: &NodeFree,
    task: &TaskShape,
    workload: &Workload,
    measure: Measure,
) -> Vec<GpuOption> {
    if task.is_shared() {
        let mut out = Vec::new();
        for (i, &m) in node.gpu_milli.iter().enumerate() {
            if m >= task.gpu_milli {
                let mut after = node.clone();
                after.cpu_milli = after.cpu_milli.saturating_sub(task.cpu_milli);
                after.gpu_milli[i] -= task.gpu_milli;
                out.push(GpuOption {
                    gpus: vec![i],
                    frag_after: measure(&after, workload),
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
            frag_after: measure(&after, workload),
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

/// berth's packing rule: descend the gradient of [`berth_fragmentation`], exactly, with
/// best fit as the tie-break.
///
/// For each option the key is `(ΔB, leftover)`, lower is better, compared
/// lexicographically, where `ΔB = B_after − B_before` (GPU milli, unrounded) and
/// `leftover` is [`best_fit_leftover`] of the node before placement; the caller breaks
/// remaining ties by node order. Among equal gradients (e.g. identical idle nodes)
/// packing the fuller node keeps idle nodes whole for large tasks. It uses nothing but
/// the task-class distribution FGD itself uses.
#[derive(Debug, Clone)]
pub struct BerthPacking {
    /// The target workload.
    pub workload: Workload,
}

/// berth's key of one placement option (lower is better); see [`BerthPacking`].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PackKey {
    /// `B_after − B_before`, GPU milli.
    pub frag_delta: f64,
    /// Best-fit leftover of the node before placement, `[0, 1]`.
    pub leftover: f64,
}

impl BerthPacking {
    /// The best option on `node` for `task` with its key, or `None` when it does not fit.
    /// `frag_before` is [`berth_fragmentation`] of `node` (callers cache it per node).
    pub fn choose(
        &self,
        node: &NodeFree,
        task: &TaskShape,
        frag_before: f64,
    ) -> Option<(PackKey, Vec<usize>)> {
        let leftover = best_fit_leftover(node, task)?;
        let mut best: Option<(PackKey, Vec<usize>)> = None;
        for o in placement_options(node, task, &self.workload, berth_fragmentation) {
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

/// A fragmentation gradient as a pipeline scorer: `score = tanh(−ΔM / 1000)` with `ΔM`
/// the change of the measure `M` ([`node_fragmentation`] for FGD, [`berth_fragmentation`]
/// for berth's rule) over the best placement option on the node, so a placement that
/// lowers the node's fragmentation by one GPU scores `tanh(1) = 0.76`, one that adds a GPU
/// of fragments `−0.76`; a node the job does not fit scores −1. The node is seen through
/// [`NodeFree::from_view`] (whole GPUs, and the unheld milli of time-sliced ones).
pub struct FragmentationGradient {
    /// The target workload.
    pub workload: Workload,
    /// The measure descended.
    pub measure: Measure,
    /// Scorer name (`fgd` or `berth-packing`).
    pub name: &'static str,
}

impl FragmentationGradient {
    /// FGD's gradient ([`node_fragmentation`]).
    pub fn fgd(workload: Workload) -> FragmentationGradient {
        FragmentationGradient {
            workload,
            measure: node_fragmentation,
            name: "fgd",
        }
    }

    /// berth's gradient ([`berth_fragmentation`]).
    pub fn berth(workload: Workload) -> FragmentationGradient {
        FragmentationGradient {
            workload,
            measure: berth_fragmentation,
            name: "berth-packing",
        }
    }
}

impl Scorer for FragmentationGradient {
    fn name(&self) -> &'static str {
        self.name
    }
    fn score(&self, job: &PendingJob, node: &NodeView, _fit: &crate::score::Fit) -> f64 {
        let free = NodeFree::from_view(node, &job.gpu_type);
        let task = TaskShape::from_job(job);
        if !free.fits(&task) {
            return -1.0;
        }
        let before = (self.measure)(&free, &self.workload);
        placement_options(&free, &task, &self.workload, self.measure)
            .iter()
            .map(|o| (-(o.frag_after - before) / 1000.0).tanh())
            .fold(-1.0, f64::max)
    }
}

#[cfg(test)]
mod tests;
