//! Table tests for node selection from Slurm's options: one per filter (features, node
//! lists, reservations, exclusivity, per-node tasks, per-CPU and per-GPU memory), then the
//! pipeline's whole-job choices (overlapping partitions, node weight, `--nodelist`,
//! feature counts and matching OR, node ranges) and the pass's licenses, priority tiers and
//! nice. No IO: static node lists in, decisions out.

use super::*;
use crate::constraint::Constraint;
use crate::filter::{
    ExclusiveFilter, FeatureFilter, Filter, MemPerCpuFilter, MemPerGpuFilter, NodeListFilter,
    PartitionFilter, ReservationFilter, TasksFilter,
};
use std::collections::BTreeSet;
use std::sync::Arc;

fn node(name: &str, partition: &str, cpus: u32, gpus: u32, features: &[&str]) -> NodeView {
    let mut f: Vec<String> = features.iter().map(|s| s.to_string()).collect();
    f.sort();
    NodeView {
        name: name.to_string(),
        partition: partition.to_string(),
        up: true,
        cpus_total: cpus,
        cpus_free: cpus,
        memory_total_mb: 64 * 1024,
        memory_free_mb: 64 * 1024,
        gpus: (0..gpus)
            .map(|i| GpuView {
                uuid: format!("GPU-{name}-{i}"),
                index: i,
                gres_type: "h100".into(),
                free: true,
                ..GpuView::default()
            })
            .collect(),
        features: f.into(),
        weight: 0,
    }
}

fn job(id: u64, partition: &str, nodes: u32) -> PendingJob {
    PendingJob {
        id,
        partition: partition.into(),
        nodes,
        cpus_per_node: 1,
        tasks: TaskSpread {
            ntasks: nodes,
            cpus_per_task: 1,
            ..TaskSpread::default()
        },
        ..PendingJob::default()
    }
}

fn constraint(text: &str) -> Option<Arc<Constraint>> {
    Some(Arc::new(
        Constraint::parse(text).expect("constraint parses"),
    ))
}

fn names(list: &[&str]) -> Arc<BTreeSet<String>> {
    Arc::new(list.iter().map(|s| s.to_string()).collect())
}

#[test]
fn each_filter_says_yes_or_names_its_reason() {
    let mut busy = node("busy", "gpu", 8, 2, &[]);
    busy.cpus_free = 6;
    busy.memory_free_mb = 1024;
    let plain = node("n1", "gpu,all", 8, 2, &["h100", "ib"]);
    let j = |f: &dyn Fn(&mut PendingJob)| {
        let mut j = job(1, "all", 1);
        f(&mut j);
        j
    };
    // (filter, job, node, Ok or the reject reason and a piece of its message)
    type Case<'a> = (
        &'a dyn Filter,
        PendingJob,
        &'a NodeView,
        Result<(), (RejectReason, &'a str)>,
    );
    let cases: Vec<Case> = vec![
        (&PartitionFilter, j(&|_| {}), &plain, Ok(())),
        (
            &PartitionFilter,
            j(&|j| j.partition = "cpu".into()),
            &plain,
            Err((RejectReason::Partition, "node is in partition gpu,all")),
        ),
        (
            &FeatureFilter,
            j(&|j| j.constraint = constraint("h100&ib")),
            &plain,
            Ok(()),
        ),
        (
            &FeatureFilter,
            j(&|j| j.constraint = constraint("a100|nvlink")),
            &plain,
            Err((
                RejectReason::Features,
                "has features h100,ib, job needs a100|nvlink",
            )),
        ),
        (
            &FeatureFilter,
            j(&|j| j.constraint = constraint("[a|b]")),
            &busy,
            Err((RejectReason::Features, "(none)")),
        ),
        (
            &NodeListFilter,
            j(&|j| j.exc_nodes = vec!["n2".into()]),
            &plain,
            Ok(()),
        ),
        (
            &NodeListFilter,
            j(&|j| j.exc_nodes = vec!["n1".into()]),
            &plain,
            Err((RejectReason::NodeList, "excluded")),
        ),
        (
            &ReservationFilter,
            j(&|j| j.nodes_reserved = Some(names(&["n2"]))),
            &plain,
            Ok(()),
        ),
        (
            &ReservationFilter,
            j(&|j| j.nodes_reserved = Some(names(&["n1"]))),
            &plain,
            Err((RejectReason::Reserved, "reserved for others")),
        ),
        (
            &ReservationFilter,
            j(&|j| j.nodes_only = Some(names(&["n2"]))),
            &plain,
            Err((RejectReason::Reserved, "not in the job's reservation")),
        ),
        (&ExclusiveFilter, j(&|j| j.exclusive = true), &plain, Ok(())),
        (
            &ExclusiveFilter,
            j(&|j| j.exclusive = true),
            &busy,
            Err((RejectReason::Exclusive, "6 of 8 CPUs")),
        ),
        (
            &ExclusiveFilter,
            j(&|j| j.mem_whole_node = true),
            &busy,
            Err((
                RejectReason::Exclusive,
                "--mem=0 needs all of the node's memory",
            )),
        ),
        (
            &TasksFilter,
            j(&|j| {
                j.tasks.per_node = 4;
                j.tasks.cpus_per_task = 2;
                j.cpus_per_node = 8;
            }),
            &busy,
            Err((
                RejectReason::Tasks,
                "needs 4 tasks x 2 CPUs = 8 CPUs, has 6 free",
            )),
        ),
        (
            &TasksFilter,
            j(&|j| {
                j.tasks.min_cpus = 7;
                j.cpus_per_node = 7;
            }),
            &busy,
            Err((RejectReason::Tasks, "at least 7 CPUs (--mincpus)")),
        ),
        (
            &MemPerCpuFilter,
            j(&|j| {
                j.tasks.mem_per_cpu_mb = 512;
                j.cpus_per_node = 4;
                j.mem_per_node_mb = 2048;
            }),
            &busy,
            Err((
                RejectReason::MemPerCpu,
                "needs 4 CPUs x 512 MiB = 2048 MiB, has 1024 MiB free",
            )),
        ),
        (
            &MemPerGpuFilter,
            j(&|j| {
                j.tasks.mem_per_gpu_mb = 1024;
                j.gpus_per_node = 2;
                j.mem_per_node_mb = 2048;
            }),
            &busy,
            Err((RejectReason::MemPerGpu, "needs 2 GPUs x 1024 MiB")),
        ),
        (
            &MemPerGpuFilter,
            j(&|j| {
                j.tasks.mem_per_gpu_mb = 512;
                j.gpus_per_node = 2;
                j.mem_per_node_mb = 1024;
            }),
            &busy,
            Ok(()),
        ),
    ];
    for (i, (filter, job, node, want)) in cases.iter().enumerate() {
        let got = filter.check(job, node);
        match (&got, want) {
            (Ok(()), Ok(())) => {}
            (Err(r), Err((reason, text))) if r.reason == *reason && r.detail.contains(text) => {}
            _ => panic!("#{i} {}: want {want:?}, got {got:?}", filter.name()),
        }
    }
}

/// The node names of a decision, in grant order.
fn placed(snap: &ClusterSnapshot, job: &PendingJob) -> Result<Vec<String>, String> {
    Pipeline::new(&PolicyConfig::default())
        .select(snap, job)
        .map(|d| d.nodes.iter().map(|g| g.node.clone()).collect())
        .map_err(|e| e.to_string())
}

#[test]
fn pipeline_chooses_whole_jobs_as_slurm_does() {
    let mut heavy = node("a1", "gpu,all", 8, 4, &["a100", "rack1"]);
    heavy.weight = 20;
    let snap = ClusterSnapshot {
        nodes: vec![
            heavy,
            node("c1", "cpu,all", 4, 0, &["cpu", "rack2"]),
            node("g1", "gpu,all", 8, 4, &["h100", "rack1"]),
            node("g2", "gpu,all", 8, 4, &["h100", "rack2"]),
            node("g3", "gpu,all", 8, 4, &["h100", "rack2"]),
        ],
        ..ClusterSnapshot::default()
    };
    let j = |nodes: u32, f: &dyn Fn(&mut PendingJob)| {
        let mut j = job(1, "gpu", nodes);
        f(&mut j);
        j
    };
    // (job, nodes placed in order, or a piece of the reason)
    let cases: Vec<(PendingJob, Result<&[&str], &str>)> = vec![
        // The lowest weight first: a1 (weight 20) only when the weight-0 nodes are gone.
        (j(3, &|_| {}), Ok(&["g1", "g2", "g3"])),
        (j(4, &|_| {}), Ok(&["g1", "g2", "g3", "a1"])),
        // A node in two partitions serves both.
        (j(1, &|j| j.partition = "all".into()), Ok(&["c1"])),
        (
            j(2, &|j| j.req_nodes = vec!["g3".into()]),
            Ok(&["g3", "g1"]),
        ),
        (
            j(1, &|j| j.req_nodes = vec!["c1".into()]),
            Err("--nodelist names c1, which cannot take the job now"),
        ),
        (
            j(2, &|j| j.constraint = constraint("[rack1|rack2]")),
            Ok(&["g1", "a1"]),
        ),
        (
            j(3, &|j| j.constraint = constraint("[rack1|rack2]")),
            Err("no 3 of the nodes that fit meet --constraint=[rack1|rack2]"),
        ),
        (
            j(3, &|j| j.constraint = constraint("[h100*2&a100*1]")),
            Ok(&["g1", "g2", "a1"]),
        ),
        (
            j(2, &|j| j.constraint = constraint("a100*1")),
            Ok(&["g1", "a1"]),
        ),
        (
            j(1, &|j| j.constraint = constraint("h100&rack2")),
            Ok(&["g2"]),
        ),
        (
            j(1, &|j| j.exc_nodes = vec!["g1".into(), "g2".into()]),
            Ok(&["g3"]),
        ),
        (
            j(1, &|j| j.constraint = constraint("cpu")),
            Err("short of features"),
        ),
    ];
    for (i, (job, want)) in cases.iter().enumerate() {
        let got = placed(&snap, job);
        let ok = match (&got, want) {
            (Ok(g), Ok(w)) => g == w,
            (Err(g), Err(w)) => g.contains(w),
            _ => false,
        };
        if !ok {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
}

#[test]
fn exclusive_and_whole_memory_grants_take_the_node() {
    let snap = ClusterSnapshot {
        nodes: vec![node("g1", "gpu", 8, 4, &[])],
        ..ClusterSnapshot::default()
    };
    let mut j = job(1, "gpu", 1);
    j.gpus_per_node = 1;
    j.exclusive = true;
    let d = Pipeline::new(&PolicyConfig::default())
        .select(&snap, &j)
        .expect("placed");
    let g = &d.nodes[0];
    // All 8 CPUs and all 4 GPUs, the memory asked for (none).
    assert_eq!((g.cpus, g.gpu_indices.len(), g.mem_mb), (8, 4, 0));
    let mut m = job(2, "gpu", 1);
    m.mem_whole_node = true;
    let d = Pipeline::new(&PolicyConfig::default())
        .select(&snap, &m)
        .expect("placed");
    assert_eq!((d.nodes[0].cpus, d.nodes[0].mem_mb), (1, 64 * 1024));
}

#[test]
fn node_ranges_take_the_most_nodes_or_the_fewest() {
    let snap = ClusterSnapshot {
        nodes: (1..=4)
            .map(|i| node(&format!("n{i}"), "cpu", 4, 0, &[]))
            .collect(),
        ..ClusterSnapshot::default()
    };
    let ranged = |min: u32, max: u32, ntasks: u32, fewest: bool| {
        let mut j = job(1, "cpu", min);
        j.tasks = TaskSpread {
            nodes_max: max,
            fewest_first: fewest,
            ntasks,
            cpus_per_task: 1,
            ..TaskSpread::default()
        };
        j.cpus_per_node = j.tasks.cpus_per_node(min, 0);
        j
    };
    // (job, nodes placed, CPUs on the first node)
    let cases: Vec<(PendingJob, usize, u32)> = vec![
        // -N2-8: as many as there are (4), one task each.
        (ranged(2, 8, 2, false), 4, 1),
        // --use-min-nodes: the least count.
        (ranged(2, 8, 2, true), 2, 1),
        // -n 10 without -N (1 to 10 nodes, fewest first): 4 CPUs a node needs 3 nodes.
        (ranged(1, 10, 10, true), 3, 4),
        // -n 16: all four nodes full.
        (ranged(1, 16, 16, true), 4, 4),
    ];
    for (i, (job, nodes, cpus)) in cases.iter().enumerate() {
        let d = Pipeline::new(&PolicyConfig::default())
            .select(&snap, job)
            .unwrap_or_else(|e| panic!("#{i}: {e}"));
        let got = (d.nodes.len(), d.nodes[0].cpus);
        if got != (*nodes, *cpus) {
            panic!("#{i}: want {:?}, got {got:?}", (nodes, cpus));
        }
    }
    // -n 17 cannot fit 16 CPUs.
    assert!(Pipeline::new(&PolicyConfig::default())
        .select(&snap, &ranged(1, 17, 17, true))
        .is_err());
}

#[test]
fn task_spread_computes_per_node_needs() {
    let t = |f: &dyn Fn(&mut TaskSpread)| {
        let mut t = TaskSpread {
            ntasks: 8,
            cpus_per_task: 2,
            ..TaskSpread::default()
        };
        f(&mut t);
        t
    };
    // (spread, nodes, GPUs per node, fixed mem, want (CPUs, mem) per node)
    type Case = (TaskSpread, u32, u32, u64, (u32, u64));
    let cases: Vec<Case> = vec![
        (t(&|_| {}), 2, 0, 0, (8, 0)),
        (t(&|_| {}), 3, 0, 100, (6, 100)),
        (t(&|t| t.per_node = 1), 2, 0, 0, (2, 0)),
        (t(&|t| t.min_cpus = 12), 2, 0, 0, (12, 0)),
        (t(&|t| t.mem_per_cpu_mb = 1000), 2, 0, 0, (8, 8000)),
        (t(&|t| t.cpus_per_gpu = 3), 2, 4, 0, (12, 0)),
        (t(&|t| t.mem_per_gpu_mb = 500), 2, 4, 0, (8, 2000)),
    ];
    for (i, (spread, nodes, gpus, mem, want)) in cases.iter().enumerate() {
        let cpus = spread.cpus_per_node(*nodes, *gpus);
        let got = (cpus, spread.mem_per_node_mb(cpus, *gpus, *mem));
        if got != *want {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
}

#[test]
fn licenses_tiers_and_nice_in_a_pass() {
    let snap = ClusterSnapshot {
        nodes: vec![node("n1", "p,q", 8, 0, &[])],
        licenses_free: [("matlab".to_string(), 2)].into(),
        ..ClusterSnapshot::default()
    };
    let lic = |id: u64, n: u32| {
        let mut j = job(id, "p", 1);
        j.licenses = vec![("matlab".into(), n)];
        j
    };
    let s = schedule(
        &snap,
        &[lic(1, 2), lic(2, 1), job(3, "p", 1)],
        &PolicyConfig::default(),
        0,
    );
    let started: Vec<u64> = s.decisions.iter().map(|d| d.job_id).collect();
    assert_eq!(started, [1, 3], "job 2 waits for a license");
    assert_eq!(s.pending[0].reason.slurm_name(), "Licenses");
    // A higher tier goes first even when submitted later; nice lowers a job.
    let mut tiered = job(2, "q", 1);
    tiered.cpus_per_node = 8;
    tiered.priority_tier = 2;
    let mut low = job(1, "p", 1);
    low.cpus_per_node = 8;
    let s = schedule(&snap, &[low.clone(), tiered], &PolicyConfig::default(), 0);
    assert_eq!(s.decisions[0].job_id, 2);
    let mut niced = job(2, "p", 1);
    niced.cpus_per_node = 8;
    niced.nice = 10_000;
    let mut other = low;
    other.submit_ms = 10;
    let s = schedule(&snap, &[niced, other], &PolicyConfig::default(), 1_000_000);
    assert_eq!(s.decisions[0].job_id, 1, "the niced job yields");
}
