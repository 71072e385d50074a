//! How a pod's GPUs fit one berth node: the extender's judgement per named node (filter),
//! its score (prioritize), and the allocation at bind.
//!
//! A GPU is offered to pods as exactly one kind, as the device plugin advertises it: a
//! GPU in MIG mode as slices of its profiles (`nvidia.com/mig-<profile>`), a GPU offered
//! as replicas (`--gpu-replicas N`) as time-slice shares (`nvidia.com/gpu.shared`), any
//! other as a whole GPU (`nvidia.com/gpu`).
//!
//! Filter and prioritize see every candidate node of every pod, so they count on the
//! replicated records directly; the MIG rules are the placement's own ([`MigFilter`],
//! [`mig::choose`]) over the node's view. The allocation at bind is chosen by the same
//! pipeline the scheduling loop runs for batch jobs ([`Pipeline::select_among`] over the
//! one node kube-scheduler chose): GPU links, packing, and MIG slice placement are
//! berth's, never a second copy.

use crate::pod_gpus::{PodGpus, GPU_RESOURCE, SHARED_RESOURCE};
use crate::state_machine::gpu_counts::{self, NodeGpus};
use crate::state_machine::{self, StateMachine};
use berth_policies::filter::Filter as _;
use berth_policies::mig::{self, MigFilter};
use berth_policies::pipeline::Pipeline;
use berth_proto::v1 as pb;

/// Why a node cannot take a pod now, and whether that is for good (no preemption helps).
pub type Misfit = (String, bool);

/// Highest score an extender may give (`MaxExtenderPriority`).
pub const SCORE_MAX: i64 = 10;

/// Whether a pod asking for `want` may take `g` now (whole or one share of it).
pub fn gpu_free_for(want: &PodGpus, g: &pb::Gpu) -> bool {
    match want {
        PodGpus::Shared(_) => gpu_counts::shared_free(g),
        _ => gpu_counts::whole_free(g),
    }
}

/// Whether `node` can take the pod's GPUs now: `Ok(free)` with the free GPUs (or MIG
/// placements) of its kind, else why not. Whole GPUs and shares are judged from the
/// state machine's per-node counts ([`StateMachine::node_gpus`]), MIG slices by the
/// placement's own filter over the node's view.
///
/// # Errors
/// The [`Misfit`]: unresolvable for a node berth does not manage, a down node, or one whose
/// GPUs of that kind could not hold the pod even idle.
pub fn check(sm: &StateMachine, node: &str, want: &PodGpus) -> Result<u32, Misfit> {
    if *want == PodGpus::None {
        return Ok(0);
    }
    let unmanaged = || {
        (
            "node is not managed by berth (no berth-agent)".to_string(),
            true,
        )
    };
    if let PodGpus::Mig { .. } = want {
        return check_node(sm.node(node).ok_or_else(unmanaged)?, want);
    }
    let counts = sm.node_gpus(node).ok_or_else(unmanaged)?;
    judge(&counts, want).map_err(|e| match e {
        Judged::Down => down(sm.node(node).map_or("", |n| n.reason.as_str())),
        Judged::Misfit(m) => m,
    })
}

/// [`check`], then whether `node` also has `cpus` and `mem_mb` free in berth's own
/// accounting, which counts the batch jobs kube-scheduler does not see (Kubernetes' own
/// fit check knows only pods). Whole GPUs, shares, CPUs and memory are read from one
/// lookup of the per-node counts.
///
/// # Errors
/// The [`Misfit`] of [`check`]; else "Insufficient cpu/memory" as kube-scheduler words
/// it, unresolvable when the node could not hold the pod even idle.
pub fn check_fit(
    sm: &StateMachine,
    node: &str,
    want: &PodGpus,
    cpus: u32,
    mem_mb: u64,
) -> Result<(), Misfit> {
    let counts = if matches!(want, PodGpus::Mig { .. }) {
        check(sm, node, want)?;
        sm.node_gpus(node)
    } else {
        let counts = sm.node_gpus(node);
        match counts {
            Some(c) => {
                judge(&c, want).map_err(|e| match e {
                    Judged::Down => down(sm.node(node).map_or("", |n| n.reason.as_str())),
                    Judged::Misfit(m) => m,
                })?;
            }
            None => {
                check(sm, node, want)?; // the unmanaged-node answer
            }
        }
        counts
    };
    let Some(c) = counts else {
        return Ok(()); // not berth's node and no GPUs asked: nothing of berth's to judge
    };
    if cpus <= c.cpus_free && mem_mb <= c.memory_free_mb {
        return Ok(()); // the common case reads the counts only
    }
    let total = sm.node(node).and_then(|n| n.inventory.as_ref());
    let (cpus_total, mem_total) = total.map_or((0, 0), |i| (i.cpus, i.memory_mb));
    if cpus > c.cpus_free {
        let never = cpus > cpus_total;
        return Err((
            format!(
                "Insufficient cpu: {} of {cpus_total} free in berth, pod needs {cpus}",
                c.cpus_free
            ),
            never,
        ));
    }
    let never = mem_mb > mem_total;
    Err((
        format!(
            "Insufficient memory: {} MiB of {mem_total} free in berth, pod needs {mem_mb}",
            c.memory_free_mb
        ),
        never,
    ))
}

/// [`check`] on a node record (the state's, or a "what if" copy).
///
/// # Errors
/// As [`check`].
pub fn check_node(n: &pb::Node, want: &PodGpus) -> Result<u32, Misfit> {
    if let PodGpus::Mig { profile, count } = want {
        if n.state() != pb::NodeState::Up {
            return Err(down(&n.reason));
        }
        return check_mig(n, profile, *count);
    }
    judge(&NodeGpus::of(n), want).map_err(|e| match e {
        Judged::Down => down(&n.reason),
        Judged::Misfit(m) => m,
    })
}

fn down(reason: &str) -> Misfit {
    (format!("berth node is down: {reason}"), true)
}

/// Why counts do not fit (the down reason is looked up only when needed).
enum Judged {
    Down,
    Misfit(Misfit),
}

/// Whole GPUs and shares, from a node's counts.
fn judge(c: &NodeGpus, want: &PodGpus) -> Result<u32, Judged> {
    if *want == PodGpus::None {
        return Ok(0);
    }
    if !c.up {
        return Err(Judged::Down);
    }
    let need = want.count();
    let misfit = |why: String, never: bool| Err(Judged::Misfit((why, never)));
    match want {
        PodGpus::Shared(_) if c.shared_usable < need => misfit(
            format!(
                "node has {} healthy time-sliced GPUs, pod needs a share of {need}",
                c.shared_usable
            ),
            true,
        ),
        PodGpus::Shared(_) if c.shared_free < need => misfit(
            format!(
                "Insufficient {SHARED_RESOURCE}: {} GPU(s) with a free share, pod needs {need}",
                c.shared_free
            ),
            false,
        ),
        PodGpus::Shared(_) => Ok(c.shared_free),
        _ if c.whole_usable < need => misfit(
            format!("node has {} healthy GPUs, pod needs {need}", c.whole_usable),
            true,
        ),
        _ if c.whole_free < need => misfit(
            format!(
                "Insufficient {GPU_RESOURCE}: {} free, pod needs {need}",
                c.whole_free
            ),
            false,
        ),
        _ => Ok(c.whole_free),
    }
}

/// The MIG part of [`check_node`]: the placement's own [`MigFilter`] on the node now, and
/// on the node idle to tell "wait" from "never".
fn check_mig(n: &pb::Node, profile: &str, count: u32) -> Result<u32, Misfit> {
    let view = state_machine::node_view(n).ok_or_else(|| ("node has no inventory".into(), true))?;
    let job = mig_job(profile, count);
    if let Err(now) = MigFilter.check(&job, &view) {
        let mut idle = view;
        for g in &mut idle.gpus {
            g.mig_held.clear();
        }
        let never = MigFilter.check(&job, &idle).is_err();
        return Err((now.detail, never));
    }
    Ok(mig::placeable(&view, profile, u32::MAX))
}

fn mig_job(profile: &str, count: u32) -> berth_policies::PendingJob {
    berth_policies::PendingJob {
        nodes: 1,
        mig_profile: profile.to_string(),
        mig_per_node: count,
        ..Default::default()
    }
}

/// The prioritize score of `node` for the pod, in `[0, SCORE_MAX]`; 0 when it does not
/// fit or the pod asks for no GPU (berth has no preference then).
///
/// Whole GPUs and shares: best fit, `10 - 10 * free_after / total` (integer division), so
/// full nodes fill first and empty ones stay whole for large pods. MIG: the mean score of
/// the slices the placement would choose there (`s ∈ [-1, 1]`, carved cards first, most
/// room left), as `round(5 * (1 + s))`.
pub fn score(sm: &StateMachine, node: &str, want: &PodGpus) -> i64 {
    match want {
        PodGpus::None => 0,
        PodGpus::Whole(need) => match sm.node_gpus(node) {
            Some(c) if judge(&c, want).is_ok() => best_fit(
                i64::from(c.whole_free),
                i64::from(*need),
                i64::from(c.whole_usable),
            ),
            _ => 0,
        },
        PodGpus::Shared(need) => match sm.node_gpus(node) {
            Some(c) if judge(&c, want).is_ok() => best_fit(
                i64::from(c.shares_free),
                i64::from(*need),
                i64::from(c.shares_total),
            ),
            _ => 0,
        },
        PodGpus::Mig { profile, count } => {
            let Some(n) = sm.node(node) else { return 0 };
            if check_node(n, want).is_err() {
                return 0;
            }
            let carve_cost = sm.accounts().policy.mig_carve_cost;
            let Some(view) = state_machine::node_view(n) else {
                return 0;
            };
            mig::choose(&view, profile, *count, carve_cost).map_or(0, |(_, s)| {
                (5.0 * (1.0 + s)).round().clamp(0.0, SCORE_MAX as f64) as i64
            })
        }
    }
}

fn best_fit(free: i64, need: i64, total: i64) -> i64 {
    if total <= 0 || need <= 0 {
        return 0;
    }
    (SCORE_MAX - SCORE_MAX * (free - need).max(0) / total).clamp(0, SCORE_MAX)
}

/// A copy of `node` as it would be once the jobs in `leaving` end: their GPUs, shares and
/// MIG slices free (for `/preempt`).
pub fn without_jobs(node: &pb::Node, leaving: &[u64]) -> pb::Node {
    let mut n = node.clone();
    for g in n.inventory.iter_mut().flat_map(|i| &mut i.gpus) {
        if leaving.contains(&g.job_id) {
            g.job_id = 0;
        }
        for &id in leaving {
            state_machine::release_shares(g, id);
        }
        g.mig_held.retain(|s| !leaving.contains(&s.job_id));
    }
    n
}

/// The allocation of pod job `spec` on `node`, chosen by berth's placement pipeline over
/// that one node: the best-connected free GPUs of the pod's kind (whole, or one share
/// each of time-sliced GPUs), or its MIG slices (GPU + placement), with its CPUs and
/// memory.
///
/// # Errors
/// Why the node cannot take the pod now (the pipeline's reasons).
pub fn allocation_on(
    sm: &StateMachine,
    node: &str,
    spec: &pb::JobSpec,
) -> Result<pb::Allocation, String> {
    let want = PodGpus::of_spec(spec);
    let record = sm
        .node(node)
        .ok_or_else(|| format!("node {node} is not managed by berth"))?;
    check_node(record, &want).map_err(|(why, _)| why)?;
    let mut view =
        state_machine::node_view(record).ok_or_else(|| format!("node {node} has no inventory"))?;
    // The view offers GPUs as batch jobs see them; a pod takes only GPUs of its kind.
    let gpus = record.inventory.iter().flat_map(|i| &i.gpus);
    for (v, g) in view.gpus.iter_mut().zip(gpus) {
        v.free = gpu_free_for(&want, g);
    }
    let job = state_machine::pending_view(0, spec);
    let pipeline = Pipeline::new(&sm.accounts().policy);
    let topology = sm.topology();
    let place = topology.place(node);
    let decision = pipeline
        .select_among(&topology, std::iter::once((&view, place)), &job)
        .map_err(|u| format!("node {node}: {u}"))?;
    let grant = decision
        .nodes
        .into_iter()
        .next()
        .ok_or_else(|| format!("node {node}: no placement"))?;
    Ok(pb::Allocation {
        node: grant.node,
        gpu_uuids: grant.gpu_uuids,
        gpu_indices: grant.gpu_indices,
        cpus: grant.cpus,
        mem_mb: grant.mem_mb,
        gpu_milli: grant.gpu_milli,
        mig_slices: grant
            .mig_slices
            .into_iter()
            .map(|s| pb::MigSlice {
                gpu_uuid: s.gpu_uuid,
                profile: s.profile,
                placement_start: s.start,
                placement_size: s.size,
                job_id: 0,
            })
            .collect(),
    })
}
