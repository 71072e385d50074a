//! Topology-aware and gang placement on constructed clusters, through the real pass:
//! NVLink/NUMA islands inside a node, the lowest common switch for gangs, `--switches`
//! waiting then relaxing, a blocked gang reserved and started while short jobs backfill, and
//! property tests that no GPU is granted twice and that gangs are whole or absent.

use super::*;
use crate::pass_tests::node;
use crate::topology::{GpuLink, NetworkConf, NodeLinks, Topology};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A DGX-H100 as the simulated agent reports it: NV18 over NVSwitch between every pair,
/// GPUs 0-3 on NUMA 0 and 4-7 on NUMA 1.
fn dgx_links(name: &str) -> NodeLinks {
    let mut pairs = Vec::new();
    for a in 0..8 {
        for b in a + 1..8 {
            pairs.push((a, b, GpuLink::parse("NV18", true).unwrap()));
        }
    }
    NodeLinks {
        name: name.into(),
        gpus: (0..8).map(|i| (i, i / 4)).collect(),
        pairs,
    }
}

fn snapshot(nodes: Vec<NodeView>, conf: &str) -> ClusterSnapshot {
    let links: Vec<NodeLinks> = nodes
        .iter()
        .filter(|n| n.gpus.len() == 8)
        .map(|n| dgx_links(&n.name))
        .collect();
    let topology = Arc::new(Topology::build(&NetworkConf::parse(conf).unwrap(), &links));
    ClusterSnapshot {
        nodes,
        topology,
        ..ClusterSnapshot::default()
    }
}

fn job(id: u64, nodes: u32, gpus: u32, limit_s: u64) -> PendingJob {
    PendingJob {
        id,
        partition: "gpu".into(),
        nodes,
        gpus_per_node: gpus,
        cpus_per_node: 1,
        account: "a".into(),
        submit_ms: id,
        time_limit_s: limit_s,
        ..PendingJob::default()
    }
}

/// Marks GPUs `held` of node `name` as taken by a running job ending at `end_ms`.
/// The nodes of a pass's first decision, in grant order.
fn first_decision_nodes(s: &Schedule) -> Vec<&str> {
    s.decisions[0]
        .nodes
        .iter()
        .map(|g| g.node.as_str())
        .collect()
}

fn hold(snap: &mut ClusterSnapshot, id: u64, name: &str, held: &[u32], end_ms: u64) {
    let n = snap.nodes.iter().find(|n| n.name == name).unwrap();
    let grant = NodeGrant {
        node: name.into(),
        gpu_uuids: held
            .iter()
            .map(|&i| n.gpus[i as usize].uuid.clone())
            .collect(),
        gpu_indices: held.to_vec(),
        cpus: 1,
        mem_mb: 0,
        ..Default::default()
    };
    snap.consume(&Decision {
        job_id: id,
        nodes: vec![grant.clone()],
    });
    snap.running.push(RunningJob {
        id,
        user: String::new(),
        account: "a".into(),
        qos: "training".into(),
        start_ms: 0,
        end_ms,
        preempting: false,
        pinned: false,
        grants: vec![grant],
    });
}

const TWO_LEAVES: &str = "SwitchName=leaf0 Nodes=n[1-2]\nSwitchName=leaf1 Nodes=n[3-4]\nSwitchName=spine Switches=leaf[0-1]";

#[test]
fn four_gpus_on_a_dgx_h100_get_one_numa_island() {
    // (held GPUs, job GPUs, want)
    let cases: Vec<(Vec<u32>, u32, Vec<u32>)> = vec![
        (vec![], 4, vec![0, 1, 2, 3]),
        // Lowest free indexes would be 2,3,4,5: across sockets.
        (vec![0, 1], 4, vec![4, 5, 6, 7]),
        (vec![0, 4, 5], 4, vec![1, 2, 3, 6]), // no whole island left: the best mix
        (vec![0, 1, 2], 1, vec![3]),          // fills NUMA 0, keeps NUMA 1 whole
    ];
    for (i, (held, gpus, want)) in cases.into_iter().enumerate() {
        let mut snap = snapshot(vec![node("n1", 8)], "");
        if !held.is_empty() {
            hold(&mut snap, 100, "n1", &held, u64::MAX);
        }
        let s = schedule(&snap, &[job(1, 1, gpus, 60)], &PolicyConfig::default(), 0);
        let got = s.decisions.first().map(|d| d.nodes[0].gpu_indices.clone());
        assert_eq!(
            got.as_ref(),
            Some(&want),
            "#{i}: want {want:?}, got {got:?}"
        );
    }
}

#[test]
fn a_two_node_gang_lands_under_one_leaf_when_it_can() {
    // n1 and n3 have 4 free GPUs (best fit prefers them), n2 and n4 8: without topology the
    // gang would straddle both leaves.
    let mut snap = snapshot(
        (1..=4).map(|i| node(&format!("n{i}"), 8)).collect(),
        TWO_LEAVES,
    );
    hold(&mut snap, 100, "n1", &[0, 1, 2, 3], u64::MAX);
    hold(&mut snap, 101, "n3", &[0, 1, 2, 3], u64::MAX);
    let s = schedule(&snap, &[job(1, 2, 4, 60)], &PolicyConfig::default(), 0);
    let nodes = first_decision_nodes(&s);
    assert_eq!(
        nodes,
        vec!["n1", "n2"],
        "one leaf, and the tighter nodes of it first"
    );
    let flat = ClusterSnapshot {
        topology: Arc::default(),
        ..snap.clone()
    };
    let s = schedule(&flat, &[job(1, 2, 4, 60)], &PolicyConfig::default(), 0);
    let nodes = first_decision_nodes(&s);
    assert_eq!(
        nodes,
        vec!["n1", "n3"],
        "without a network tree best fit alone decides"
    );
    // An NVLink domain across the leaves beats either leaf.
    let conf = format!("{TWO_LEAVES}\nBlockName=nvl0 Nodes=n[2-3]");
    let domain = snapshot(snap.nodes.clone(), &conf);
    let s = schedule(&domain, &[job(1, 2, 4, 60)], &PolicyConfig::default(), 0);
    let nodes: BTreeSet<&str> = s.decisions[0]
        .nodes
        .iter()
        .map(|g| g.node.as_str())
        .collect();
    assert_eq!(nodes, BTreeSet::from(["n2", "n3"]));
}

#[test]
fn switches_wait_then_relax() {
    // One node free per leaf: a 2-node gang fits only across both leaves.
    let mut snap = snapshot(
        (1..=4).map(|i| node(&format!("n{i}"), 8)).collect(),
        TWO_LEAVES,
    );
    hold(&mut snap, 100, "n2", &[0], 500_000);
    hold(&mut snap, 101, "n4", &[0], 900_000);
    let mut gang = job(1, 2, 8, 60);
    gang.submit_ms = 1_000;
    gang.switches_max = 1;
    gang.switches_wait_ms = 60_000;
    let cfg = PolicyConfig::default();
    // (now, started?, reason while waiting)
    let cases = [
        (1_000, false, "Switches"),
        (60_999, false, "Switches"),
        (61_000, true, ""),
    ];
    for (i, (now, started, reason)) in cases.into_iter().enumerate() {
        let s = schedule(&snap, std::slice::from_ref(&gang), &cfg, now);
        assert_eq!(!s.decisions.is_empty(), started, "#{i} at {now}: {s:?}");
        if !started {
            let p = &s.pending[0];
            assert_eq!(p.reason.slurm_name(), reason, "#{i}");
            let why = p.why.as_ref().unwrap().to_string();
            assert!(
                why.contains("span at least 2 leaf switches, --switches allows 1"),
                "#{i}: {why}"
            );
        } else {
            let leaves: BTreeSet<_> = s.decisions[0]
                .nodes
                .iter()
                .map(|g| g.node == "n1" || g.node == "n2")
                .collect();
            assert_eq!(leaves.len(), 2, "relaxed: across both leaves");
        }
    }
    // A second gang of the same shape is answered from the pass's cache: same reason.
    let mut twin = gang.clone();
    twin.id = 2;
    let s = schedule(&snap, &[gang.clone(), twin], &cfg, 1_000);
    let reasons: Vec<&str> = s.pending.iter().map(|p| p.reason.slurm_name()).collect();
    assert_eq!(reasons, vec!["Switches", "Switches"]);
    // Within the wait, a leaf that frees up is taken.
    snap.release(&snap.running[0].grants.clone());
    snap.running.remove(0);
    let s = schedule(&snap, std::slice::from_ref(&gang), &cfg, 2_000);
    let nodes = first_decision_nodes(&s);
    assert_eq!(nodes, vec!["n1", "n2"]);
}

/// Runs passes every `step_ms` up to `until_ms`: ends jobs, submits `arrivals(now)`,
/// starts decisions. Returns (job, start time) of every start and the gang's first
/// expected start.
fn replay(
    kind: PolicyKind,
    mut snap: ClusterSnapshot,
    mut pending: Vec<PendingJob>,
    arrivals: impl Fn(u64) -> Vec<PendingJob>,
    step_ms: u64,
    until_ms: u64,
) -> (BTreeMap<u64, u64>, Option<u64>) {
    let cfg = PolicyConfig {
        kind,
        ..PolicyConfig::default()
    };
    let mut starts = BTreeMap::new();
    let mut reserved = None;
    let mut now = 0;
    while now <= until_ms {
        let ended: Vec<RunningJob> = snap
            .running
            .iter()
            .filter(|r| r.end_ms <= now)
            .cloned()
            .collect();
        for r in &ended {
            snap.release(&r.grants);
        }
        snap.running.retain(|r| r.end_ms > now);
        pending.extend(arrivals(now));
        let s = schedule(&snap, &pending, &cfg, now);
        reserved = reserved.or(s
            .pending
            .iter()
            .find(|p| p.job_id == 1)
            .and_then(|p| p.expected_start_ms));
        for d in &s.decisions {
            let j = pending.iter().find(|j| j.id == d.job_id).unwrap().clone();
            snap.consume(d);
            snap.running.push(RunningJob {
                id: j.id,
                user: j.user.clone(),
                account: j.account.clone(),
                qos: "training".into(),
                start_ms: now,
                end_ms: now + j.time_limit_s * 1000,
                preempting: false,
                pinned: false,
                grants: d.nodes.clone(),
            });
            starts.insert(j.id, now);
        }
        pending.retain(|j| !starts.contains_key(&j.id));
        now += step_ms;
    }
    (starts, reserved)
}

#[test]
fn a_blocked_gang_gets_a_reservation_and_starts_while_short_jobs_backfill() {
    for kind in [PolicyKind::Backfill, PolicyKind::Berth] {
        let mut snap = snapshot(
            (1..=2).map(|i| node(&format!("n{i}"), 8)).collect(),
            "SwitchName=leaf0 Nodes=n[1-2]",
        );
        hold(&mut snap, 100, "n1", &[0, 1, 2, 3], 100_000);
        hold(&mut snap, 101, "n2", &[0, 1, 2, 3], 200_000);
        // Every 20 s: one short job (30 s, ends before the gang's start) and one long one
        // (1000 s, would delay it). Ids above the gang's so FIFO puts the gang first.
        let arrivals = |now: u64| {
            let k = 1000 + now / 1000;
            let mut long = job(k * 2 + 1, 1, 1, 1000);
            long.submit_ms = now;
            let mut short = job(k * 2, 1, 1, 30);
            short.submit_ms = now;
            if now.is_multiple_of(20_000) && now < 300_000 {
                vec![short, long]
            } else {
                vec![]
            }
        };
        let mut gang = job(1, 2, 8, 600);
        gang.submit_ms = 0; // submitted with the first arrivals, which it precedes by id
        let (starts, reserved) = replay(kind, snap, vec![gang], arrivals, 10_000, 400_000);
        assert_eq!(
            reserved,
            Some(200_000),
            "{kind:?}: the gang is promised the later end"
        );
        assert_eq!(
            starts.get(&1),
            Some(&200_000),
            "{kind:?}: the gang starts at its reservation: {starts:?}"
        );
        let short_before: Vec<_> = starts
            .iter()
            .filter(|(id, at)| **id % 2 == 0 && **id > 1 && **at < 200_000)
            .collect();
        assert!(
            !short_before.is_empty(),
            "{kind:?}: short jobs backfill while the gang waits"
        );
        let long_before: Vec<_> = starts
            .iter()
            .filter(|(id, at)| **id % 2 == 1 && **id > 1 && **at < 200_000)
            .collect();
        assert!(
            long_before.is_empty(),
            "{kind:?}: no long job may delay the gang: {long_before:?}"
        );
    }
}

fn tree(leaves: usize, per_leaf: usize) -> String {
    let mut conf = String::new();
    for l in 0..leaves {
        conf += &format!(
            "SwitchName=leaf{l} Nodes=n[{}-{}]\n",
            l * per_leaf + 1,
            (l + 1) * per_leaf
        );
    }
    conf + &format!("SwitchName=spine Switches=leaf[0-{}]\n", leaves - 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_gpu_twice_and_gangs_whole_or_absent(
        held in proptest::collection::vec((0usize..6, 0u32..8, 1u64..300), 0..20),
        jobs in proptest::collection::vec((1u32..4, 0u32..9, 1u64..300, 0u32..3, 0u64..100), 1..25),
        kind in 0usize..3,
        topo in any::<bool>(),
    ) {
        let kind = [PolicyKind::Fifo, PolicyKind::Backfill, PolicyKind::Berth][kind];
        let conf = if topo { tree(3, 2) } else { String::new() };
        let mut snap = snapshot((1..=6).map(|i| node(&format!("n{i}"), 8)).collect(), &conf);
        for (k, (n, g, end)) in held.iter().enumerate() {
            let name = format!("n{}", n + 1);
            let free = snap.nodes[*n].gpus[*g as usize].free;
            if free {
                hold(&mut snap, 500 + k as u64, &name, &[*g], end * 1000);
            }
        }
        let pending: Vec<PendingJob> = jobs.iter().enumerate().map(|(i, (nodes, gpus, limit, sw, wait))| {
            let mut j = job(i as u64 + 1, *nodes, *gpus, *limit);
            j.switches_max = *sw;
            j.switches_wait_ms = wait * 1000;
            j
        }).collect();
        let mut now = 0;
        let mut left = pending.clone();
        for _ in 0..3 {
            let s = schedule(&snap, &left, &PolicyConfig { kind, ..PolicyConfig::default() }, now);
            let mut taken: BTreeSet<String> = snap.nodes.iter().flat_map(|n| n.gpus.iter().filter(|g| !g.free).map(|g| g.uuid.clone())).collect();
            for d in &s.decisions {
                let j = left.iter().find(|j| j.id == d.job_id).unwrap();
                let names: BTreeSet<&str> = d.nodes.iter().map(|g| g.node.as_str()).collect();
                prop_assert_eq!(d.nodes.len(), j.nodes as usize, "job {} got {:?}", j.id, d);
                prop_assert_eq!(names.len(), d.nodes.len(), "a gang member per node");
                for g in &d.nodes {
                    prop_assert_eq!(g.gpu_uuids.len(), j.gpus_per_node as usize);
                    for u in &g.gpu_uuids {
                        prop_assert!(taken.insert(u.clone()), "GPU {} granted twice", u);
                    }
                }
                snap.consume(d);
                snap.running.push(RunningJob {
                    id: j.id, user: String::new(), account: "a".into(), qos: "training".into(), start_ms: now,
                    end_ms: now + j.time_limit_s * 1000, preempting: false, pinned: false,
                    grants: d.nodes.clone(),
                });
            }
            let started: BTreeSet<u64> = s.decisions.iter().map(|d| d.job_id).collect();
            left.retain(|j| !started.contains(&j.id));
            now += 50_000;
            let done: Vec<RunningJob> = snap.running.iter().filter(|r| r.end_ms <= now).cloned().collect();
            for r in &done { snap.release(&r.grants); }
            snap.running.retain(|r| r.end_ms > now);
        }
    }
}
