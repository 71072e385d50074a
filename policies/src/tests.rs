//! Table tests for the FIFO-with-GPU-fit policy and a property test that no pass ever
//! grants a GPU twice.

use super::*;
use proptest::prelude::*;

fn node(name: &str, partition: &str, gpus: u32, gres: &str) -> NodeView {
    NodeView {
        name: name.to_string(),
        partition: partition.to_string(),
        up: true,
        cpus_total: 32,
        cpus_free: 32,
        memory_total_mb: 256 * 1024,
        memory_free_mb: 256 * 1024,
        gpus: (0..gpus)
            .map(|i| GpuView {
                uuid: format!("GPU-{name}-{i}"),
                index: i,
                gres_type: gres.to_string(),
                free: true,
                ..GpuView::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn job(id: u64, nodes: u32, gpus: u32) -> PendingJob {
    PendingJob {
        id,
        partition: "gpu".into(),
        nodes,
        gpus_per_node: gpus,
        gpu_type: String::new(),
        cpus_per_node: 1,
        mem_per_node_mb: 0,
        ..PendingJob::default()
    }
}

/// (job, node of the first grant, GPU indices) per decision.
type Expected<'a> = Vec<(u64, &'a str, Vec<u32>)>;

fn cluster() -> ClusterSnapshot {
    ClusterSnapshot {
        nodes: vec![
            node("a", "gpu", 8, "h100"),
            node("b", "gpu", 4, "a100"),
            node("c", "cpu", 0, ""),
        ],
        ..ClusterSnapshot::default()
    }
}

#[test]
fn placements_name_gpus_and_pack() {
    // (jobs, expected (job, node, gpu indices) per decision)
    let cases: Vec<(Vec<PendingJob>, Expected)> = vec![
        // 2 GPUs: node b (4 GPUs) is left with 2/4 free: 1-2*2/4 = 0; a: 1-2*6/8 = -0.5 → b.
        (vec![job(1, 1, 2)], vec![(1, "b", vec![0, 1])]),
        // 8 GPUs only fit a.
        (vec![job(1, 1, 8)], vec![(1, "a", (0..8).collect())]),
        // Job 1 fills b exactly (score 1), job 2 takes 5 of a's 8, job 3 the last 3 on a.
        (
            vec![job(1, 1, 4), job(2, 1, 5), job(3, 1, 3)],
            vec![
                (1, "b", vec![0, 1, 2, 3]),
                (2, "a", vec![0, 1, 2, 3, 4]),
                (3, "a", vec![5, 6, 7]),
            ],
        ),
        // Two nodes of 4 GPUs: both gpu nodes.
        (vec![job(1, 2, 4)], vec![(1, "b", vec![0, 1, 2, 3])]),
    ];
    for (i, (jobs, want)) in cases.iter().enumerate() {
        let got = schedule(&cluster(), jobs, &PolicyConfig::default(), 0);
        let flat: Expected = got
            .decisions
            .iter()
            .map(|d| {
                (
                    d.job_id,
                    d.nodes[0].node.as_str(),
                    d.nodes[0].gpu_indices.clone(),
                )
            })
            .collect();
        if &flat != want {
            panic!("#{i}: want {want:?}, got {flat:?}");
        }
    }
}

#[test]
fn gang_of_two_nodes_gets_both_or_nothing() {
    let got = schedule(&cluster(), &[job(1, 2, 4)], &PolicyConfig::default(), 0);
    let nodes: Vec<_> = got.decisions[0]
        .nodes
        .iter()
        .map(|g| g.node.clone())
        .collect();
    assert_eq!(nodes, vec!["b", "a"]);
    let got = schedule(&cluster(), &[job(1, 3, 1)], &PolicyConfig::default(), 0);
    assert!(got.decisions.is_empty(), "only 2 gpu nodes: {got:?}");
    assert_eq!(got.pending[0].job_id, 1);
}

#[test]
fn gpu_type_and_resources_filter() {
    let mut j = job(1, 1, 2);
    j.gpu_type = "h100".into();
    let got = schedule(&cluster(), &[j], &PolicyConfig::default(), 0);
    assert_eq!(got.decisions[0].nodes[0].node, "a");

    let mut j = job(2, 1, 0);
    j.partition = "cpu".into();
    j.cpus_per_node = 33;
    let got = schedule(&cluster(), &[j], &PolicyConfig::default(), 0);
    let why = got.pending[0].why.as_ref().unwrap().to_string();
    assert!(
        why.contains("short of cpus") && why.contains("needs 33 CPUs, has 32 free"),
        "{why}"
    );
}

#[test]
fn down_nodes_and_held_gpus_are_skipped() {
    let mut c = cluster();
    c.nodes[1].up = false;
    c.nodes[0].gpus[0].free = false;
    let got = schedule(&c, &[job(1, 1, 2)], &PolicyConfig::default(), 0);
    assert_eq!(got.decisions[0].nodes[0].gpu_indices, vec![1, 2]);
    assert_eq!(got.decisions[0].nodes[0].node, "a");
}

#[test]
fn feasible_when_idle_explains_impossible_requests() {
    let mut c = cluster();
    c.nodes[0].gpus.iter_mut().for_each(|g| g.free = false);
    assert!(
        feasible_when_idle(&c, &job(1, 1, 8)).is_ok(),
        "busy GPUs still count as capacity"
    );
    let err = feasible_when_idle(&c, &job(1, 1, 9))
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 9 GPUs, has 8 free"), "{err}");
    let mut j = job(1, 1, 1);
    j.partition = "nope".into();
    let err = feasible_when_idle(&c, &j).unwrap_err().to_string();
    assert!(
        err.contains("no node is in the requested partition"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn no_gpu_granted_twice(sizes in proptest::collection::vec((1u32..3, 0u32..9), 1..40)) {
        let jobs: Vec<_> = sizes.iter().enumerate().map(|(i, (n, g))| job(i as u64 + 1, *n, *g)).collect();
        let c = cluster();
        let got = schedule(&c, &jobs, &PolicyConfig::default(), 0);
        let mut seen = std::collections::BTreeSet::new();
        for d in &got.decisions {
            let want = jobs.iter().find(|j| j.id == d.job_id).unwrap();
            prop_assert_eq!(d.nodes.len(), want.nodes as usize, "gang whole");
            for g in &d.nodes {
                prop_assert_eq!(g.gpu_uuids.len(), want.gpus_per_node as usize);
                for u in &g.gpu_uuids {
                    prop_assert!(seen.insert(u.clone()), "GPU {} granted twice", u);
                }
            }
        }
        // Replaying the decisions on the snapshot must not panic (consume checks double grants).
        let mut w = c.clone();
        for d in &got.decisions { w.consume(d); }
    }
}
