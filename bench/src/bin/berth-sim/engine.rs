//! The event loop: arrivals and completions on a simulated clock; after each batch of
//! events one `berth_policies::schedule` pass, whose starts and preemptions are applied.

use crate::trace::TraceJob;
use berth_policies::{
    fairshare::dominant_rate, ClusterSnapshot, GpuView, NodeView, PendingJob, PolicyConfig,
    RunningJob,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Per-job outcome.
#[derive(Debug, Clone, Default)]
pub struct JobOutcome {
    /// First start, ms.
    pub first_start_ms: Option<u64>,
    /// Final end, ms.
    pub end_ms: u64,
    /// Times preempted and requeued.
    pub restarts: u32,
}

/// Everything the metrics need.
pub struct Run {
    /// Outcome per job id - 1.
    pub outcomes: Vec<JobOutcome>,
    /// GPU-ms run (including work lost to preemption).
    pub gpu_ms: f64,
    /// Per account: (GPU-ms held while backlogged in contention, backlogged ms in
    /// contention).
    pub contended: BTreeMap<String, (f64, f64)>,
    /// Scheduling passes run.
    pub passes: u64,
    /// Total GPUs.
    pub gpus: u64,
}

/// `nodes` nodes with `gpus` H100s, 64 CPUs and 1 TiB each.
pub fn cluster(nodes: u32, gpus: u32) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes: (0..nodes)
            .map(|i| {
                let name = format!("node{i:05}");
                NodeView {
                    gpus: (0..gpus)
                        .map(|g| GpuView {
                            uuid: format!("GPU-{name}-{g}"),
                            index: g,
                            gres_type: "h100".into(),
                            free: true,
                            ..GpuView::default()
                        })
                        .collect(),
                    name,
                    partition: "gpu".into(),
                    up: true,
                    cpus_total: 64,
                    cpus_free: 64,
                    memory_total_mb: 1 << 20,
                    memory_free_mb: 1 << 20,
                    ..NodeView::default()
                }
            })
            .collect(),
        ..ClusterSnapshot::default()
    }
}

struct Live {
    running: RunningJob,
    actual_end_ms: u64,
}

/// Replays `jobs`; each job's time limit is `runtime * walltime_factor`.
pub fn replay(
    jobs: &[TraceJob],
    mut snap: ClusterSnapshot,
    cfg: &PolicyConfig,
    walltime_factor: f64,
    progress: &indicatif::ProgressBar,
) -> Run {
    let cap = snap.capacity();
    let limit_s = |j: &TraceJob| ((j.runtime_ms as f64 * walltime_factor) / 1000.0).ceil() as u64;
    let mut outcomes = vec![JobOutcome::default(); jobs.len()];
    let mut pending: Vec<PendingJob> = Vec::new();
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    let mut ends: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let (mut next, mut done, mut passes, mut gpu_ms) = (0usize, 0usize, 0u64, 0.0f64);
    let mut contended: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut last_t = 0u64;
    while done < jobs.len() {
        let t_arrive = jobs.get(next).map_or(u64::MAX, |j| j.submit_ms);
        let t_end = ends.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
        let now = t_arrive.min(t_end);
        assert!(
            now != u64::MAX,
            "jobs left but no event: {} pending",
            pending.len()
        );
        account_contention(&pending, &live, last_t, now, &mut contended);
        last_t = now;
        while let Some(Reverse((t, id))) = ends.peek().copied() {
            if t > now {
                break;
            }
            ends.pop();
            let Some(l) = live.remove(&id) else { continue }; // preempted meanwhile
            finish(&mut snap, &l, now, cfg, &cap, &mut gpu_ms);
            outcomes[id as usize - 1].end_ms = now;
            done += 1;
            progress.inc(1);
        }
        while next < jobs.len() && jobs[next].submit_ms <= now {
            pending.push(pending_of(&jobs[next], limit_s(&jobs[next])));
            next += 1;
        }
        snap.running = live.values().map(|l| l.running.clone()).collect();
        let s = berth_policies::schedule(&snap, &pending, cfg, now);
        passes += 1;
        for p in &s.preemptions {
            let Some(l) = live.remove(&p.victim) else {
                continue;
            };
            finish(&mut snap, &l, now, cfg, &cap, &mut gpu_ms);
            let j = &jobs[p.victim as usize - 1];
            let mut again = pending_of(j, limit_s(j));
            again.submit_ms = now;
            again.preempted_for = vec![p.preemptor];
            pending.push(again);
            outcomes[p.victim as usize - 1].restarts += 1;
        }
        let started: std::collections::HashSet<u64> =
            s.decisions.iter().map(|d| d.job_id).collect();
        for d in s.decisions {
            snap.consume(&d);
            let j = &jobs[d.job_id as usize - 1];
            let o = &mut outcomes[d.job_id as usize - 1];
            o.first_start_ms.get_or_insert(now);
            let end = now + j.runtime_ms;
            ends.push(Reverse((end, j.id)));
            live.insert(
                j.id,
                Live {
                    running: RunningJob {
                        id: j.id,
                        user: String::new(),
                        account: j.account.clone(),
                        qos: String::new(),
                        start_ms: now,
                        end_ms: now + limit_s(j) * 1000,
                        preempting: false,
                        pinned: false,
                        grants: d.nodes,
                    },
                    actual_end_ms: end,
                },
            );
        }
        pending.retain(|p| !started.contains(&p.id));
    }
    Run {
        outcomes,
        gpu_ms,
        contended,
        passes,
        gpus: cap.gpus,
    }
}

fn pending_of(j: &TraceJob, limit_s: u64) -> PendingJob {
    PendingJob {
        id: j.id,
        partition: "gpu".into(),
        nodes: j.nodes,
        gpus_per_node: j.gpus_per_node,
        cpus_per_node: 1,
        account: j.account.clone(),
        submit_ms: j.submit_ms,
        time_limit_s: limit_s,
        ..PendingJob::default()
    }
}

/// Frees a job's resources and charges its account for `[start, now]`.
fn finish(
    snap: &mut ClusterSnapshot,
    l: &Live,
    now: u64,
    cfg: &PolicyConfig,
    cap: &berth_policies::Capacity,
    gpu_ms: &mut f64,
) {
    let r = &l.running;
    snap.release(&r.grants);
    let gpus: u64 = r.grants.iter().map(|g| g.gpu_uuids.len() as u64).sum();
    let end = now.min(l.actual_end_ms);
    *gpu_ms += (gpus * (end - r.start_ms)) as f64;
    let rate = dominant_rate(gpus, r.grants.len() as u64, 0, cap);
    snap.usage
        .charge(&r.account, rate, r.start_ms, end, cfg.half_life_ms);
}

/// Over `[from, to)`: when at least two accounts have pending jobs, each backlogged
/// account accrues the GPUs it holds and the time it is backlogged.
fn account_contention(
    pending: &[PendingJob],
    live: &BTreeMap<u64, Live>,
    from: u64,
    to: u64,
    acc: &mut BTreeMap<String, (f64, f64)>,
) {
    if to <= from {
        return;
    }
    let backlogged: std::collections::BTreeSet<&str> =
        pending.iter().map(|p| p.account.as_str()).collect();
    if backlogged.len() < 2 {
        return;
    }
    let dt = (to - from) as f64;
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for l in live.values() {
        let g: u64 = l
            .running
            .grants
            .iter()
            .map(|g| g.gpu_uuids.len() as u64)
            .sum();
        *held.entry(l.running.account.as_str()).or_default() += g;
    }
    for a in backlogged {
        let e = acc.entry(a.to_string()).or_default();
        e.0 += held.get(a).copied().unwrap_or(0) as f64 * dt;
        e.1 += dt;
    }
}
