//! Golden cases for the carve planner (`testdata/mig_choose.txt`), tables for the filter,
//! scorer and checks, and property tests: layouts stay legal for the card and no slice is
//! ever granted twice, through the planner alone and through whole scheduling passes.

use super::*;
use crate::{schedule, ClusterSnapshot, PolicyConfig};
use proptest::prelude::*;
use std::sync::Arc;

const A100_40: &str = "NVIDIA A100-SXM4-40GB";
const H100: &str = "NVIDIA H100 80GB HBM3";

fn mig_gpu(node: &str, index: u32, model: &str, held: &[(&str, u32)]) -> GpuView {
    let profiles = builtin_profiles(model).expect("known card");
    let mig_held = held
        .iter()
        .map(|(p, start)| MigHeld {
            profile: p.to_string(),
            start: *start,
            size: profiles
                .iter()
                .find(|q| q.name == *p)
                .expect("profile")
                .size,
        })
        .collect();
    GpuView {
        uuid: format!("GPU-{node}-{index}"),
        index,
        gres_type: "a100".into(),
        free: false,
        mig_enabled: true,
        mig_profiles: Arc::new(profiles),
        mig_held,
        shares: None,
    }
}

fn node(name: &str, gpus: Vec<GpuView>) -> NodeView {
    NodeView {
        name: name.into(),
        partition: "gpu".into(),
        up: true,
        cpus_total: 64,
        cpus_free: 64,
        memory_total_mb: 1 << 20,
        memory_free_mb: 1 << 20,
        gpus,
        ..Default::default()
    }
}

fn whole_gpu(node: &str, index: u32) -> GpuView {
    GpuView {
        uuid: format!("GPU-{node}-{index}"),
        index,
        gres_type: "h100".into(),
        free: true,
        ..GpuView::default()
    }
}

fn mig_job(id: u64, profile: &str, count: u32) -> PendingJob {
    PendingJob {
        id,
        partition: "gpu".into(),
        nodes: 1,
        cpus_per_node: 1,
        mig_profile: profile.into(),
        mig_per_node: count,
        ..PendingJob::default()
    }
}

/// A waiting MIG job gets a backfill reservation of its own slice: a later MIG job that
/// would still run at the reservation's start cannot take any slice overlapping it, while
/// one that ends before may.
#[test]
fn a_waiting_mig_job_reserves_its_slice_against_long_jobs() {
    // One A100 40GB: a running job holds 3g.20gb at 4:4 until t = 100 s.
    let a = node("a", vec![mig_gpu("a", 0, A100_40, &[("3g.20gb", 4)])]);
    let held = crate::mig::MigGrant {
        gpu_uuid: a.gpus[0].uuid.clone(),
        gpu_index: 0,
        profile: "3g.20gb".into(),
        start: 4,
        size: 4,
    };
    let c = ClusterSnapshot {
        nodes: vec![NodeView { cpus_free: 63, ..a }],
        running: vec![crate::RunningJob {
            id: 100,
            account: String::new(),
            qos: "development".into(),
            start_ms: 0,
            end_ms: 100_000,
            preempting: false,
            pinned: false,
            grants: vec![crate::NodeGrant {
                node: "a".into(),
                cpus: 1,
                mig_slices: vec![held],
                ..crate::NodeGrant::default()
            }],
            ..Default::default()
        }],
        ..ClusterSnapshot::default()
    };
    let timed = |mut j: PendingJob, secs| {
        j.time_limit_s = secs;
        j
    };
    // In FIFO order with EASY backfill: the whole card (7g) waits for job 100; a 1g job
    // for an hour would hold part of it at t = 100 s; a 1g job for 10 s would not.
    let jobs = vec![
        timed(mig_job(1, "7g.40gb", 1), 600),
        timed(mig_job(2, "1g.5gb", 1), 3600),
        timed(mig_job(3, "1g.5gb", 1), 10),
    ];
    let cfg = PolicyConfig {
        kind: crate::PolicyKind::Backfill,
        ..PolicyConfig::default()
    };
    let s = schedule(&c, &jobs, &cfg, 0);
    let started: Vec<u64> = s.decisions.iter().map(|d| d.job_id).collect();
    assert_eq!(started, vec![3], "{s:?}");
    let status = |id| s.pending.iter().find(|p| p.job_id == id).expect("pending");
    assert_eq!(
        status(1).expected_start_ms,
        Some(100_000),
        "reserved at job 100's end"
    );
    assert_eq!(
        status(2).reason,
        crate::PendingReason::Priority,
        "held back by the reservation"
    );
}

#[test]
fn golden_choices_on_one_card() {
    let text = include_str!("../testdata/mig_choose.txt");
    let mut cases = 0;
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(f.len(), 4, "line {}: {line}", line_no + 1);
        let model = match f[0] {
            "a100-40" => A100_40,
            "h100" => H100,
            other => panic!("line {}: unknown card {other}", line_no + 1),
        };
        let held: Vec<(&str, u32)> = if f[1] == "-" {
            Vec::new()
        } else {
            f[1].split_whitespace()
                .map(|h| {
                    let (p, s) = h.split_once('@').expect("profile@start");
                    (p, s.parse().expect("start"))
                })
                .collect()
        };
        let n = node("n", vec![mig_gpu("n", 0, model, &held)]);
        let got = choose(&n, f[2], 1, 1.0).map(|(g, _)| g[0].start.to_string());
        let got = got.unwrap_or_else(|| "none".into());
        assert_eq!(got, f[3], "line {}: {line}", line_no + 1);
        cases += 1;
    }
    assert!(cases >= 15, "golden file read only {cases} cases");
}

#[test]
fn profile_names_are_recognised() {
    let cases = [
        ("1g.10gb", true),
        ("3g.40gb", true),
        ("7g.80gb", true),
        ("1g.5gb+me", true),
        ("h100", false),
        ("a100_80g", false),
        ("1g.10", false),
        ("g.10gb", false),
        ("1g.gb", false),
        ("0g.10gb", false),
        ("1x.10gb", false),
        ("1g.10gb+xx", false),
        ("", false),
    ];
    for (i, (name, want)) in cases.iter().enumerate() {
        let got = is_profile_name(name);
        if got != *want {
            panic!("#{i}: {name}: want {want}, got {got}");
        }
    }
}

#[test]
fn check_refuses_what_the_card_refuses() {
    let profiles = builtin_profiles(H100).expect("h100");
    let held = vec![MigHeld {
        profile: "3g.40gb".into(),
        start: 4,
        size: 4,
    }];
    let cases: [(&str, u32, u32, Option<&str>); 7] = [
        ("1g.10gb", 0, 1, None),
        ("1g.10gb", 4, 1, Some("overlaps the 3g.40gb slice at 4:4")),
        ("3g.40gb", 2, 4, Some("cannot be placed at 2:4")),
        ("3g.40gb", 0, 3, Some("cannot be placed at 0:3")),
        ("3g.40gb", 0, 4, None),
        ("9g.90gb", 0, 1, Some("no MIG profile 9g.90gb")),
        ("1g.10gb", 7, 1, Some("cannot be placed at 7:1")),
    ];
    for (i, (p, start, size, want)) in cases.iter().enumerate() {
        let got = check(&profiles, &held, p, *start, *size).map_err(|e| e.to_string());
        match (want, &got) {
            (None, Ok(())) => {}
            (Some(w), Err(e)) if e.contains(w) => {}
            _ => panic!("#{i}: want {want:?}, got {got:?}"),
        }
    }
    let one_me = vec![MigHeld {
        profile: "1g.10gb+me".into(),
        start: 0,
        size: 1,
    }];
    let err = check(&profiles, &one_me, "1g.10gb+me", 3, 1).unwrap_err();
    assert!(err.to_string().contains("at most 1 instance"), "{err}");
}

#[test]
fn carved_cards_are_preferred_unless_carving_is_free() {
    // GPU 0 idle, GPU 1 holds a 1g at 6. Cost 1: the carved card (score 4/8 = 0.5 against
    // 4/8 - 1 = -0.5 on the idle one). Cost 0: the idle card leaves more room
    // ((4, 20) against (4, 16)), so it wins.
    let n = node(
        "n",
        vec![
            mig_gpu("n", 0, A100_40, &[]),
            mig_gpu("n", 1, A100_40, &[("1g.5gb", 6)]),
        ],
    );
    let (g, score) = choose(&n, "1g.5gb", 1, 1.0).expect("fits");
    assert_eq!((g[0].gpu_index, g[0].start, score), (1, 4, 0.5));
    let (g, score) = choose(&n, "1g.5gb", 1, 0.0).expect("fits");
    assert_eq!((g[0].gpu_index, g[0].start, score), (0, 6, 0.5));
    // Two 3g slices of one job: both halves of the carved... no, GPU 1's 1g at 6 blocks
    // its upper half, so the first goes to GPU 1 at 0 and the second carves GPU 0.
    let (g, _) = choose(&n, "3g.20gb", 2, 1.0).expect("fits");
    let got: Vec<(u32, u32)> = g.iter().map(|s| (s.gpu_index, s.start)).collect();
    assert_eq!(got, vec![(1, 0), (0, 4)]);
    assert!(
        choose(&n, "3g.20gb", 4, 1.0).is_none(),
        "only 3 halves free"
    );
    assert_eq!(placeable(&n, "3g.20gb", 4), 3);
}

#[test]
fn the_filter_says_why_a_node_cannot_take_slices() {
    let full = node(
        "full",
        vec![mig_gpu(
            "full",
            0,
            A100_40,
            &[("3g.20gb", 0), ("3g.20gb", 4)],
        )],
    );
    let plain = node("plain", vec![whole_gpu("plain", 0)]);
    let cases: [(&NodeView, PendingJob, Option<&str>); 5] = [
        (
            &full,
            mig_job(1, "1g.5gb", 1),
            Some("needs 1 1g.5gb MIG slice(s), 0 free placement(s) on 1 MIG GPU(s)"),
        ),
        (&plain, mig_job(1, "1g.5gb", 1), Some("no GPU in MIG mode")),
        (
            &full,
            mig_job(1, "1g.10gb+xx", 1),
            Some("no GPU here has that profile"),
        ),
        // A job without slices passes, whatever the node.
        (&full, mig_job(1, "", 0), None),
        (&plain, mig_job(1, "", 0), None),
    ];
    for (i, (n, job, want)) in cases.iter().enumerate() {
        let got = MigFilter.check(job, n);
        match (want, &got) {
            (None, Ok(())) => {}
            (Some(w), Err(r)) if r.reason == RejectReason::Mig && r.detail.contains(w) => {}
            _ => panic!("#{i}: want {want:?}, got {got:?}"),
        }
    }
}

/// (job, node, slices as (GPU index, start, profile)).
type Placed = (u64, String, Vec<(u32, u32, String)>);

#[test]
fn a_pass_places_mig_jobs_only_on_mig_gpus_and_whole_jobs_never_there() {
    let c = ClusterSnapshot {
        nodes: vec![
            node(
                "a",
                vec![mig_gpu("a", 0, A100_40, &[]), mig_gpu("a", 1, A100_40, &[])],
            ),
            node("b", vec![whole_gpu("b", 0), whole_gpu("b", 1)]),
        ],
        ..ClusterSnapshot::default()
    };
    let mut whole = mig_job(5, "", 0);
    whole.gpus_per_node = 2;
    let jobs = vec![
        mig_job(1, "3g.20gb", 1),
        mig_job(2, "3g.20gb", 1),
        mig_job(3, "4g.20gb", 1),
        mig_job(4, "2g.10gb", 2),
        whole,
        // 7g needs an empty card; both are carved by now.
        mig_job(6, "7g.40gb", 1),
    ];
    let cfg = PolicyConfig {
        kind: crate::PolicyKind::Fifo,
        ..PolicyConfig::default()
    };
    let got = schedule(&c, &jobs, &cfg, 0);
    let placed: Vec<Placed> = got
        .decisions
        .iter()
        .map(|d| {
            let g = &d.nodes[0];
            let slices = g
                .mig_slices
                .iter()
                .map(|s| (s.gpu_index, s.start, s.profile.clone()))
                .collect();
            (d.job_id, g.node.clone(), slices)
        })
        .collect();
    // Job 1: 3g on an idle card goes to 4 (keeps the 4g at 0). Job 2: the carved card's
    // other half. Job 3: 4g carves GPU 1 at 0. Job 4: 2g slices: GPU 1's upper half
    // (starts 4 is legal, 6 is not), then nothing else: only one fits, so it waits.
    let want = vec![
        (1, "a".to_string(), vec![(0, 4, "3g.20gb".to_string())]),
        (2, "a".to_string(), vec![(0, 0, "3g.20gb".to_string())]),
        (3, "a".to_string(), vec![(1, 0, "4g.20gb".to_string())]),
        (5, "b".to_string(), vec![]),
    ];
    assert_eq!(placed, want);
    let waiting: Vec<u64> = got.pending.iter().map(|p| p.job_id).collect();
    assert_eq!(waiting, vec![4, 6]);
    let mut w = c.clone();
    for d in &got.decisions {
        w.consume(d);
    }
    assert_eq!(w.nodes[0].gpus[0].mig_held.len(), 2);
    // Releasing job 1's slice frees exactly it.
    w.release(&got.decisions[0].nodes);
    assert_eq!(w.nodes[0].gpus[0].mig_held.len(), 1);
}

#[test]
fn slices_are_charged_by_memory_share() {
    let g = |size| MigGrant {
        size,
        ..MigGrant::default()
    };
    let cap = crate::Capacity {
        gpus: 4,
        ..crate::Capacity::default()
    };
    // 4/8 + 1/8 = 0.625 GPU; a CPU-heavy rate of 2.0 stays; no GPUs: slices change nothing.
    assert_eq!(gpu_equivalents(&[g(4), g(1)]), 0.625);
    assert_eq!(charge_rate(0.1, &[g(4), g(1)], &cap), 0.625);
    assert_eq!(charge_rate(2.0, &[g(8)], &cap), 2.0);
    assert_eq!(charge_rate(0.1, &[], &cap), 0.1);
    assert_eq!(charge_rate(0.1, &[g(8)], &crate::Capacity::default()), 0.1);
}

fn legal(gpu: &GpuView) -> Result<(), String> {
    for (i, h) in gpu.mig_held.iter().enumerate() {
        let p = gpu
            .mig_profiles
            .iter()
            .find(|p| p.name == h.profile)
            .ok_or(format!("unknown profile {}", h.profile))?;
        if !p.starts.contains(&h.start) || p.size != h.size || h.start + h.size > MEMORY_SLICES {
            return Err(format!("illegal {h:?}"));
        }
        for o in &gpu.mig_held[i + 1..] {
            if overlaps(h.start, h.size, o.start, o.size) {
                return Err(format!("{h:?} overlaps {o:?}"));
            }
        }
        let same = gpu
            .mig_held
            .iter()
            .filter(|o| o.profile == h.profile)
            .count();
        if same > p.instances_max as usize {
            return Err(format!("{} instances of {}", same, h.profile));
        }
    }
    Ok(())
}

fn brute_force_fits(n: &NodeView, profile: &str) -> bool {
    n.gpus.iter().any(|g| {
        g.mig_enabled
            && g.mig_profiles.iter().any(|p| {
                p.name == profile
                    && p.starts
                        .iter()
                        .any(|&s| check(&g.mig_profiles, &g.mig_held, profile, s, p.size).is_ok())
            })
    })
}

proptest! {
    /// The filter's cheap count is exact: `choose` places k slices iff k <= placeable.
    #[test]
    fn placeable_counts_exactly_what_choose_places(
        pre in proptest::collection::vec((0usize..2, 0usize..7), 0..8),
        p in 0usize..7,
        cost in 0u32..3,
        h100 in any::<bool>(),
    ) {
        let model = if h100 { H100 } else { A100_40 };
        let mut n = node("n", vec![mig_gpu("n", 0, model, &[]), mig_gpu("n", 1, model, &[])]);
        let names: Vec<String> = n.gpus[0].mig_profiles.iter().map(|q| q.name.clone()).collect();
        for (gpu, q) in pre {
            let one = NodeView { gpus: vec![n.gpus[gpu].clone()], ..n.clone() };
            if let Some((g, _)) = choose(&one, &names[q], 1, 1.0) {
                take(&mut n, &g);
            }
        }
        let count = placeable(&n, &names[p], 99);
        for k in 0..=count + 1 {
            let fits = choose(&n, &names[p], k, f64::from(cost) / 2.0).is_some();
            prop_assert_eq!(fits, k <= count, "k={} placeable={}", k, count);
        }
    }

    /// Random take/give sequences: every layout stays legal for the card, the planner
    /// finds a slice exactly when one exists, and a slice is never handed out twice.
    #[test]
    fn layouts_stay_legal_and_slices_are_never_double_booked(
        ops in proptest::collection::vec((0usize..7, any::<bool>(), 0usize..8), 1..80),
        h100 in any::<bool>(),
        cost in 0u32..3,
    ) {
        let model = if h100 { H100 } else { A100_40 };
        let mut n = node("n", vec![mig_gpu("n", 0, model, &[]), mig_gpu("n", 1, model, &[])]);
        let names: Vec<String> = n.gpus[0].mig_profiles.iter().map(|p| p.name.clone()).collect();
        let mut granted: Vec<MigGrant> = Vec::new();
        for (p, release, which) in ops {
            if release && !granted.is_empty() {
                let g = granted.remove(which % granted.len());
                give(&mut n, std::slice::from_ref(&g));
            } else {
                let exists = brute_force_fits(&n, &names[p]);
                match choose(&n, &names[p], 1, f64::from(cost) / 2.0) {
                    Some((g, score)) => {
                        prop_assert!(exists);
                        prop_assert!((-1.0..=1.0).contains(&score));
                        take(&mut n, &g); // panics on a double booking
                        granted.extend(g);
                    }
                    None => prop_assert!(!exists, "planner missed a free {} slice", names[p]),
                }
            }
            for gpu in &n.gpus {
                prop_assert!(legal(gpu).is_ok(), "{:?}", legal(gpu));
            }
        }
    }

    /// Whole passes with MIG and whole-GPU jobs mixed: the decisions never overlap a slice
    /// (with the ones held before or with each other), and whole GPUs never go to MIG cards.
    #[test]
    fn passes_never_double_book_a_slice(
        reqs in proptest::collection::vec((0usize..7, 0u32..3, 0u32..2, 0u64..4), 1..30),
        pre in proptest::collection::vec((0usize..2, 0usize..7, 1u64..4), 0..4),
    ) {
        // Slices held before the pass belong to running jobs that end at 1..4 h, so the
        // Berth policy's backfill reservations and guarded views meet slices too.
        let mut a = node("a", vec![mig_gpu("a", 0, A100_40, &[]), mig_gpu("a", 1, A100_40, &[])]);
        let names: Vec<String> = a.gpus[0].mig_profiles.iter().map(|p| p.name.clone()).collect();
        let mut running = Vec::new();
        for (k, (gpu, p, hours)) in pre.into_iter().enumerate() {
            let one = NodeView { gpus: vec![a.gpus[gpu].clone()], ..a.clone() };
            if let Some((g, _)) = choose(&one, &names[p], 1, 1.0) {
                take(&mut a, &g);
                running.push(crate::RunningJob {
                    id: 1000 + k as u64,
                    user: String::new(),
                    account: String::new(),
                    qos: "development".into(),
                    start_ms: 0,
                    end_ms: hours * 3_600_000,
                    preempting: false,
                    pinned: false,
                    grants: vec![crate::NodeGrant {
                        node: "a".into(),
                        cpus: 1,
                        mig_slices: g,
                        ..crate::NodeGrant::default()
                    }],
                });
            }
        }
        let mut a_cpus = a;
        a_cpus.cpus_free -= running.len() as u32;
        let c = ClusterSnapshot {
            nodes: vec![a_cpus, node("b", vec![whole_gpu("b", 0)])],
            running,
            ..ClusterSnapshot::default()
        };
        let jobs: Vec<PendingJob> = reqs
            .iter()
            .enumerate()
            .map(|(i, (p, count, whole, hours))| {
                let mut j = mig_job(i as u64 + 1, &names[*p], *count);
                j.gpus_per_node = *whole;
                j.time_limit_s = hours * 3600;
                if *count == 0 { j.mig_profile.clear(); }
                j
            })
            .collect();
        let got = schedule(&c, &jobs, &PolicyConfig::default(), 0);
        let mut w = c.clone();
        for d in &got.decisions {
            let want = jobs.iter().find(|j| j.id == d.job_id).unwrap();
            for g in &d.nodes {
                prop_assert_eq!(g.mig_slices.len(), want.mig_per_node as usize * usize::from(!want.mig_profile.is_empty()));
                prop_assert_eq!(g.gpu_uuids.len(), want.gpus_per_node as usize);
                for u in &g.gpu_uuids {
                    prop_assert!(!u.starts_with("GPU-a-"), "whole GPU {} is a MIG card", u);
                }
            }
            w.consume(d); // panics if a slice overlaps one held or granted before
        }
        for gpu in &w.nodes[0].gpus {
            prop_assert!(legal(gpu).is_ok(), "{:?}", legal(gpu));
        }
    }
}
