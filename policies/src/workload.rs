//! The task-class distribution of a partition, as FGD and berth's packing need it inside
//! berthd: what is expected to arrive next is what waits now plus what arrived lately.
//!
//! Each pass derives it from its own inputs, per partition packed with `fgd` or `berth`:
//! every pending job counts once per node it asks for (one task per node, as FGD counts
//! pods), and every running job that started within [`RECENT_WINDOW_MS`] counts once per
//! node it holds, weighted `0.5^(age / RECENT_HALF_LIFE_MS)` — so a burst of jobs that
//! started at once still shapes placement for the next hour, then fades. Classes are
//! kept most weighty first until they cover 95 % of the weight
//! ([`crate::fragmentation::TYPICAL_POPULARITY_PCT`], the FGD artifact's threshold).
//!
//! Why per pass and not decayed counters in the replicated state: both inputs are already
//! committed state (the pending queue; running jobs with their start times), so the
//! distribution is a pure function of what the pass is given — deterministic, replayed for
//! free, with no new command, snapshot field or decay clock to keep in step across
//! replicas. The cost is one walk over the pending and running jobs per pass (a hash map
//! keyed by borrowed shapes, no allocation per job), paid only when some partition packs
//! with a workload. What this misses: jobs that arrived and already ended within the
//! window (their grants are gone from the snapshot); and a running job's GPU type is
//! taken as "any" (the request's type is not in the snapshot).

use crate::fragmentation::{Workload, TYPICAL_POPULARITY_PCT};
use crate::packing::{TaskShape, GPU_MILLI};
use crate::snapshot::{ClusterSnapshot, PendingJob};
use crate::PolicyConfig;
use std::collections::{BTreeMap, HashMap};

/// Half-life of a started job's weight in the workload, ms.
pub const RECENT_HALF_LIFE_MS: u64 = 30 * 60 * 1000;
/// Started jobs older than this (four half-lives: weight under 1/16) are left out, ms.
pub const RECENT_WINDOW_MS: u64 = 4 * RECENT_HALF_LIFE_MS;

/// (partition, CPUs, GPUs, GPU milli per GPU, GPU type) of one node's share of a job.
type Key<'a> = (&'a str, u32, u32, u32, &'a str);

/// The workload of every partition whose packing needs one ([`crate::packing::Packing::
/// needs_workload`]) and that has a pending or recently started task; see the module doc.
/// MIG jobs are left out (MIG slices are placed by their own planner, not by packing).
pub fn partition_workloads(
    snapshot: &ClusterSnapshot,
    pending: &[PendingJob],
    cfg: &PolicyConfig,
    now_ms: u64,
) -> BTreeMap<String, Workload> {
    let wanted = |p: &str| cfg.packing_for(p).needs_workload();
    if !cfg.packing_default.needs_workload() && !cfg.packing.values().any(|k| k.needs_workload()) {
        return BTreeMap::new();
    }
    let mut weights: HashMap<Key, f64> = HashMap::new();
    for j in pending {
        if j.mig_per_node > 0 || !wanted(&j.partition) {
            continue;
        }
        let key = (
            j.partition.as_str(),
            j.cpus_per_node,
            j.gpus_per_node,
            j.gpu_milli,
            j.gpu_type.as_str(),
        );
        *weights.entry(key).or_default() += f64::from(j.nodes.max(1));
    }
    for r in &snapshot.running {
        let age = now_ms.saturating_sub(r.start_ms);
        if age >= RECENT_WINDOW_MS {
            continue;
        }
        let w = 0.5f64.powf(age as f64 / RECENT_HALF_LIFE_MS as f64);
        for g in &r.grants {
            let Ok(i) = snapshot.nodes.binary_search_by(|n| n.name.cmp(&g.node)) else {
                continue;
            };
            if !g.mig_slices.is_empty() {
                continue;
            }
            // A node in several partitions counts toward each one's workload.
            for partition in snapshot.nodes[i].partitions().filter(|p| wanted(p)) {
                let key = (partition, g.cpus, g.gpu_uuids.len() as u32, g.gpu_milli, "");
                *weights.entry(key).or_default() += w;
            }
        }
    }
    let mut by_partition: BTreeMap<&str, Vec<(TaskShape, f64)>> = BTreeMap::new();
    for ((p, cpus, gpus, milli, gpu_type), w) in weights {
        let shape = TaskShape {
            cpu_milli: u64::from(cpus) * 1000,
            memory_mib: 0,
            gpus,
            gpu_milli: match (gpus, milli) {
                (0, _) => 0,
                (_, 0) => GPU_MILLI,
                (_, m) => m,
            },
            models: if gpu_type.is_empty() {
                Vec::new()
            } else {
                vec![gpu_type.to_string()]
            },
        };
        by_partition.entry(p).or_default().push((shape, w));
    }
    by_partition
        .into_iter()
        .filter_map(|(p, tasks)| {
            let w = Workload::typical_weighted(
                tasks.iter().map(|(t, w)| (t, *w)),
                TYPICAL_POPULARITY_PCT,
            );
            Some((p.to_string(), w.ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::Packing;
    use crate::snapshot::{NodeGrant, NodeView, RunningJob};

    fn node(name: &str, partition: &str) -> NodeView {
        NodeView {
            name: name.into(),
            partition: partition.into(),
            up: true,
            cpus_total: 64,
            cpus_free: 64,
            memory_total_mb: 0,
            memory_free_mb: 0,
            gpus: vec![],
            ..Default::default()
        }
    }

    fn pending(id: u64, partition: &str, gpus: u32, milli: u32, nodes: u32) -> PendingJob {
        PendingJob {
            id,
            partition: partition.into(),
            nodes,
            gpus_per_node: gpus,
            gpu_milli: milli,
            cpus_per_node: 4,
            ..PendingJob::default()
        }
    }

    fn running(id: u64, node: &str, gpus: usize, start_ms: u64) -> RunningJob {
        RunningJob {
            id,
            account: String::new(),
            qos: String::new(),
            start_ms,
            end_ms: u64::MAX,
            preempting: false,
            pinned: false,
            grants: vec![NodeGrant {
                node: node.into(),
                gpu_uuids: (0..gpus).map(|i| format!("G{i}")).collect(),
                cpus: 4,
                ..NodeGrant::default()
            }],
            ..Default::default()
        }
    }

    fn cfg(packing: &[(&str, Packing)]) -> PolicyConfig {
        PolicyConfig {
            packing: packing.iter().map(|(p, k)| (p.to_string(), *k)).collect(),
            ..PolicyConfig::default()
        }
    }

    fn popularity(w: &Workload, gpus: u32, milli: u32) -> f64 {
        w.classes
            .iter()
            .find(|c| c.shape.gpus == gpus && c.shape.gpu_milli == milli)
            .map_or(0.0, |c| c.popularity)
    }

    #[test]
    fn pending_counts_per_node_and_recent_starts_decay() {
        let now = 10 * RECENT_HALF_LIFE_MS;
        let snap = ClusterSnapshot {
            nodes: vec![node("a1", "a"), node("b1", "b")],
            running: vec![
                // One half-life old: weight 0.5.
                running(10, "a1", 8, now - RECENT_HALF_LIFE_MS),
                // Outside the window: left out.
                running(11, "a1", 2, now - RECENT_WINDOW_MS),
            ],
            ..ClusterSnapshot::default()
        };
        let jobs = vec![
            pending(1, "a", 1, 500, 1),
            pending(2, "a", 8, 0, 2), // a 2-node gang: two tasks
            pending(3, "b", 1, 0, 1), // partition b packs by best fit: no workload
        ];
        let c = cfg(&[("a", Packing::Fgd)]);
        let w = partition_workloads(&snap, &jobs, &c, now);
        assert_eq!(w.keys().collect::<Vec<_>>(), vec!["a"]);
        let a = &w["a"];
        // Weights: 0.5-GPU 1, 8-GPU 2 + 0.5 (the running one, type "any" — its own class),
        // total 3.5; all kept (95 % of 3.5 needs every class).
        let total = 3.5;
        assert!((popularity(a, 1, 500) - 1.0 / total).abs() < 1e-9, "{a:?}");
        let eight: f64 = a
            .classes
            .iter()
            .filter(|c| c.shape.gpus == 8)
            .map(|c| c.popularity)
            .sum();
        assert!((eight - 2.5 / total).abs() < 1e-9, "{a:?}");
        assert_eq!(popularity(a, 2, 1000), 0.0, "outside the window: {a:?}");
    }

    #[test]
    fn no_workload_when_no_partition_needs_one() {
        let snap = ClusterSnapshot {
            nodes: vec![node("a1", "a")],
            ..ClusterSnapshot::default()
        };
        let jobs = vec![pending(1, "a", 1, 0, 1)];
        assert!(partition_workloads(&snap, &jobs, &cfg(&[("a", Packing::Spread)]), 0).is_empty());
        // The default packing counts too.
        let c = PolicyConfig {
            packing_default: Packing::Berth,
            ..PolicyConfig::default()
        };
        assert_eq!(partition_workloads(&snap, &jobs, &c, 0).len(), 1);
    }
}
