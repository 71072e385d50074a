//! Pass-level tables (backfill, preemption, reclaim, reasons) and the property tests of
//! issue 5: quotas never exceeded, backfill never delays the reserved job, no preemption
//! cycles, guaranteed quota obtainable within one reclaim cycle.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// An up 64-CPU node of partition `gpu` with `gpus` free h100s (also used by
/// `placement_tests`).
pub(crate) fn node(name: &str, gpus: u32) -> NodeView {
    NodeView {
        name: name.to_string(),
        partition: "gpu".into(),
        up: true,
        cpus_total: 64,
        cpus_free: 64,
        memory_total_mb: 1 << 20,
        memory_free_mb: 1 << 20,
        gpus: (0..gpus)
            .map(|i| GpuView {
                uuid: format!("GPU-{name}-{i}"),
                index: i,
                gres_type: "h100".into(),
                free: true,
                ..GpuView::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn job(id: u64, gpus: u32, limit_s: u64, account: &str, qos: &str) -> PendingJob {
    PendingJob {
        id,
        partition: "gpu".into(),
        nodes: 1,
        gpus_per_node: gpus,
        cpus_per_node: 1,
        account: account.into(),
        qos: qos.into(),
        submit_ms: id,
        time_limit_s: limit_s,
        ..PendingJob::default()
    }
}

/// Applies decisions as running jobs (ending at now + limit) to `snap`.
fn run_decisions(snap: &mut ClusterSnapshot, sched: &Schedule, jobs: &[PendingJob], now: u64) {
    for d in &sched.decisions {
        snap.consume(d);
        let j = jobs.iter().find(|j| j.id == d.job_id).unwrap();
        snap.running.push(RunningJob {
            id: j.id,
            user: j.user.clone(),
            account: j.account.clone(),
            qos: j.qos.clone(),
            start_ms: now,
            end_ms: if j.time_limit_s == 0 {
                u64::MAX
            } else {
                now + j.time_limit_s * 1000
            },
            preempting: false,
            pinned: false,
            grants: d.nodes.clone(),
        });
    }
}

fn cluster(nodes: &[(&str, u32)]) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes: nodes.iter().map(|(n, g)| node(n, *g)).collect(),
        ..ClusterSnapshot::default()
    }
}

/// One 8-GPU node with 6 GPUs held until t=100s by job 100.
fn busy_node() -> ClusterSnapshot {
    let mut snap = cluster(&[("n1", 8)]);
    let hold = job(100, 6, 100, "a", "training");
    let s = schedule(
        &snap,
        std::slice::from_ref(&hold),
        &PolicyConfig::default(),
        0,
    );
    run_decisions(&mut snap, &s, &[hold], 0);
    snap
}

fn cfg(kind: PolicyKind) -> PolicyConfig {
    PolicyConfig {
        kind,
        ..PolicyConfig::default()
    }
}

#[test]
fn easy_backfill_runs_short_jobs_ahead_only() {
    let snap = busy_node();
    // A (8 GPUs) is blocked until t=100; B (1 GPU, 50 s) ends before; C (1 GPU, 500 s)
    // would fit on the last free GPU but delay A.
    let jobs = vec![
        job(1, 8, 100, "a", ""),
        job(2, 1, 50, "a", ""),
        job(3, 1, 500, "a", ""),
    ];
    // (policy, started, (job, reason, expected start))
    type Want = (PolicyKind, Vec<u64>, Vec<(u64, &'static str, Option<u64>)>);
    let cases: Vec<Want> = vec![
        (
            PolicyKind::Backfill,
            vec![2],
            vec![(1, "Resources", Some(100_000)), (3, "Priority", None)],
        ),
        (
            PolicyKind::Berth,
            vec![2],
            vec![(1, "Resources", Some(100_000)), (3, "Priority", None)],
        ),
        // FIFO first fit: C starts too, and A's start slips to t=500.
        (PolicyKind::Fifo, vec![2, 3], vec![(1, "Resources", None)]),
        // Strict FIFO: A blocks its partition, so neither B nor C starts.
        (
            PolicyKind::StrictFifo,
            vec![],
            vec![
                (1, "Resources", None),
                (2, "Priority", None),
                (3, "Priority", None),
            ],
        ),
    ];
    for (i, (kind, started, pending)) in cases.into_iter().enumerate() {
        let s = schedule(&snap, &jobs, &cfg(kind), 0);
        let got_started: Vec<u64> = s.decisions.iter().map(|d| d.job_id).collect();
        let got_pending: Vec<_> = s
            .pending
            .iter()
            .map(|p| (p.job_id, p.reason.slurm_name(), p.expected_start_ms))
            .collect();
        if got_started != started || got_pending != pending {
            panic!("#{i}: want {started:?} {pending:?}, got {got_started:?} {got_pending:?}");
        }
    }
}

#[test]
fn fifo_lets_small_jobs_overtake_forever() {
    let snap = busy_node();
    let jobs = vec![job(1, 8, 100, "a", ""), job(3, 2, 500, "a", "")];
    let s = schedule(&snap, &jobs, &cfg(PolicyKind::Fifo), 0);
    assert_eq!(
        s.decisions.iter().map(|d| d.job_id).collect::<Vec<_>>(),
        vec![3]
    );
    let s = schedule(&snap, &jobs, &cfg(PolicyKind::Backfill), 0);
    assert!(s.decisions.is_empty(), "{s:?}");
}

#[test]
fn higher_class_preempts_lower_preemptible_class() {
    // (running qos, running for s, pending qos, expect preemption)
    let cases = vec![
        ("development", 0, "production-inference", true),
        ("training", 3600, "critical-agents", true),
        // min-guaranteed runtime of training is 600 s.
        ("training", 599, "critical-agents", false),
        // not preemptible
        ("critical-agents", 3600, "production-inference", false),
        // same class never preempts
        ("research", 3600, "research", false),
        // lower class never preempts higher
        ("training", 3600, "development", false),
    ];
    for (i, (vq, ran_s, pq, want)) in cases.into_iter().enumerate() {
        let mut snap = cluster(&[("n1", 8)]);
        let victim = job(100, 8, 0, "a", vq);
        let s = schedule(
            &snap,
            std::slice::from_ref(&victim),
            &PolicyConfig::default(),
            0,
        );
        run_decisions(&mut snap, &s, &[victim], 0);
        let now = ran_s * 1000;
        let s = schedule(
            &snap,
            &[job(1, 4, 60, "a", pq)],
            &PolicyConfig::default(),
            now,
        );
        let got: Vec<_> = s
            .preemptions
            .iter()
            .map(|p| (p.victim, p.preemptor, p.cause))
            .collect();
        let want_v = if want {
            vec![(100, 1, PreemptCause::Priority)]
        } else {
            vec![]
        };
        if got != want_v {
            panic!("#{i}: want {want_v:?}, got {got:?}");
        }
        if want {
            assert_eq!(s.pending[0].expected_start_ms, Some(now + 30_000), "#{i}");
        }
    }
}

#[test]
fn pinned_jobs_are_never_victims() {
    // A Kubernetes pod of the lowest class: berth cannot stop it, so it is not preempted.
    let mut snap = cluster(&[("n1", 8)]);
    let victim = job(100, 8, 0, "a", "development");
    let s = schedule(
        &snap,
        std::slice::from_ref(&victim),
        &PolicyConfig::default(),
        0,
    );
    run_decisions(&mut snap, &s, &[victim], 0);
    snap.running[0].pinned = true;
    let s = schedule(
        &snap,
        &[job(1, 4, 60, "a", "production-inference")],
        &PolicyConfig::default(),
        0,
    );
    assert!(s.preemptions.is_empty(), "{:?}", s.preemptions);
}

#[test]
fn preemption_takes_fewest_lowest_victims() {
    // n1 holds two development 4-GPU jobs (ids 10, 11) and n2 a research 8-GPU job.
    let mut snap = cluster(&[("n1", 8), ("n2", 8)]);
    let running = vec![
        job(10, 4, 0, "a", "development"),
        job(11, 4, 0, "a", "development"),
        job(12, 8, 0, "a", "research"),
    ];
    let s = schedule(&snap, &running, &cfg(PolicyKind::Fifo), 0);
    run_decisions(&mut snap, &s, &running, 0);
    let now = 3_600_000;
    // 4 GPUs: one development job (the highest id among equal starts) is enough.
    let s = schedule(
        &snap,
        &[job(1, 4, 0, "a", "training")],
        &PolicyConfig::default(),
        now,
    );
    let victims: Vec<u64> = s.preemptions.iter().map(|p| p.victim).collect();
    assert_eq!(victims, vec![11]);
    // 8 GPUs: both development jobs, never the research one.
    let s = schedule(
        &snap,
        &[job(1, 8, 0, "a", "training")],
        &PolicyConfig::default(),
        now,
    );
    let victims: BTreeSet<u64> = s.preemptions.iter().map(|p| p.victim).collect();
    assert_eq!(victims, BTreeSet::from([10, 11]));
    // Victims already going are waited for, not preempted again.
    for r in snap.running.iter_mut().filter(|r| r.id != 12) {
        r.preempting = true;
    }
    let s = schedule(
        &snap,
        &[job(1, 8, 0, "a", "training")],
        &PolicyConfig::default(),
        now,
    );
    assert!(s.preemptions.is_empty(), "{s:?}");
    assert_eq!(s.pending[0].reason, PendingReason::Resources);
}

fn quota_tree(ga: u64, gb: u64) -> AccountTree {
    let q = |g| Quota {
        guaranteed: g,
        borrow_limit: None,
        lend_limit: None,
    };
    let mut a = AccountSpec::new("a", None, 1);
    a.quotas.insert("gpu".into(), q(ga));
    let mut b = AccountSpec::new("b", None, 1);
    b.quotas.insert("gpu".into(), q(gb));
    AccountTree::new(&[a, b]).unwrap()
}

#[test]
fn reclaim_takes_back_borrowed_guarantee_but_never_loops() {
    let mut snap = cluster(&[("n1", 8), ("n2", 8)]);
    let cfg = PolicyConfig {
        accounts: quota_tree(8, 8),
        ..PolicyConfig::default()
    };
    // b borrows all of a's idle guarantee: 16 one-GPU development jobs.
    let borrowers: Vec<_> = (10..26).map(|i| job(i, 1, 0, "b", "development")).collect();
    let s = schedule(&snap, &borrowers, &cfg, 0);
    assert_eq!(s.decisions.len(), 16);
    run_decisions(&mut snap, &s, &borrowers, 0);
    // a's 4-GPU production job is within a's guarantee: 4 of b's jobs are reclaimed; the
    // reason is the quota (QOSGrpGRES) and the expected start is after the grace period.
    let mut a_job = job(1, 4, 0, "a", "training");
    let s = schedule(&snap, std::slice::from_ref(&a_job), &cfg, 1000);
    assert_eq!(s.preemptions.len(), 4, "{s:?}");
    assert!(s
        .preemptions
        .iter()
        .all(|p| p.cause == PreemptCause::Reclaim));
    assert_eq!(s.pending[0].reason.slurm_name(), "QOSGrpGRES");
    // A job that was itself preempted for b's jobs may not reclaim from them.
    a_job.preempted_for = (10..26).collect();
    let s = schedule(&snap, &[a_job], &cfg, 1000);
    assert!(s.preemptions.is_empty(), "{s:?}");
    // b asking for more while borrowing is simply refused by its quota, nothing reclaimed.
    let s = schedule(&snap, &[job(2, 1, 0, "b", "training")], &cfg, 1000);
    assert!(s.preemptions.is_empty());
    assert_eq!(s.pending[0].reason.slurm_name(), "QOSGrpGRES");
}

#[test]
fn fair_share_orders_accounts_with_less_usage_first() {
    let cfg = PolicyConfig {
        accounts: AccountTree::flat(&[("a", 1), ("b", 1)]).unwrap(),
        ..PolicyConfig::default()
    };
    let mut snap = cluster(&[("n1", 8)]);
    snap.usage.by_account.insert("a".into(), 1e6);
    // a's job is older, but b has no usage: b goes first and takes the only fit.
    let s = schedule(
        &snap,
        &[job(1, 8, 0, "a", ""), job(2, 8, 0, "b", "")],
        &cfg,
        0,
    );
    assert_eq!(s.decisions[0].job_id, 2);
}

/// Checks both quota rules for every quota'd account given the running jobs.
fn quota_respected(tree: &AccountTree, snap: &ClusterSnapshot) -> Result<(), String> {
    let l = quota::Ledger::of_running(tree, snap);
    let cap = snap.capacity().gpus;
    for (i, acc) in tree.accounts().iter().enumerate() {
        let Some(q) = acc.quotas.get("gpu") else {
            continue;
        };
        let used = l.used(i, "gpu");
        if let Some(b) = q.borrow_limit {
            if used > q.guaranteed + b {
                return Err(format!("{} uses {used} > {} + {b}", acc.name, q.guaranteed));
            }
        }
    }
    let (mut borrowed, mut lendable, mut assigned) = (0, 0, 0);
    for (i, acc) in tree.accounts().iter().enumerate().skip(1) {
        let Some(q) = acc.quotas.get("gpu") else {
            continue;
        };
        let used = l.used(i, "gpu");
        assigned += q.guaranteed;
        borrowed += used.saturating_sub(q.guaranteed);
        let idle = q.guaranteed.saturating_sub(used);
        lendable += q.lend_limit.map_or(idle, |x| x.min(idle));
    }
    if borrowed > lendable + cap.saturating_sub(assigned) {
        return Err(format!(
            "borrowed {borrowed} > lendable {lendable} + unassigned"
        ));
    }
    Ok(())
}

fn quota_strategy() -> impl Strategy<Value = Vec<(u64, Option<u64>, Option<u64>)>> {
    proptest::collection::vec(
        (
            0u64..12,
            proptest::option::of(0u64..8),
            proptest::option::of(0u64..12),
        ),
        3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn quota_never_exceeded(
        quotas in quota_strategy(),
        jobs in proptest::collection::vec((0usize..3, 1u32..9, 0u64..3), 1..30),
    ) {
        let specs: Vec<_> = ["a", "b", "c"].iter().zip(&quotas).map(|(n, (g, b, l))| {
            let mut s = AccountSpec::new(n, None, 1);
            s.quotas.insert("gpu".into(), Quota { guaranteed: *g, borrow_limit: *b, lend_limit: l.map(|l| l.min(*g)) });
            s
        }).collect();
        let tree = AccountTree::new(&specs).unwrap();
        let cfg = PolicyConfig { accounts: tree.clone(), ..PolicyConfig::default() };
        let mut snap = cluster(&[("n1", 8), ("n2", 8), ("n3", 8)]);
        let pending: Vec<_> = jobs.iter().enumerate()
            .map(|(i, (a, g, _))| job(i as u64 + 1, *g, 100, ["a", "b", "c"][*a], "training"))
            .collect();
        // Two passes with some jobs ending between them.
        let s = schedule(&snap, &pending, &cfg, 0);
        run_decisions(&mut snap, &s, &pending, 0);
        quota_respected(&tree, &snap).map_err(TestCaseError::fail)?;
        let ended: Vec<_> = snap.running.iter().filter(|r| jobs[r.id as usize - 1].2 == 0).cloned().collect();
        for r in &ended { snap.release(&r.grants); }
        snap.running.retain(|r| !ended.iter().any(|e| e.id == r.id));
        let started: BTreeSet<u64> = snap.running.iter().map(|r| r.id).chain(ended.iter().map(|r| r.id)).collect();
        let left: Vec<_> = pending.iter().filter(|j| !started.contains(&j.id)).cloned().collect();
        let s = schedule(&snap, &left, &cfg, 10_000);
        run_decisions(&mut snap, &s, &left, 10_000);
        quota_respected(&tree, &snap).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn backfill_never_delays_the_reserved_job(
        running in proptest::collection::vec((1u32..9, 1u64..200), 0..12),
        pending in proptest::collection::vec((1u32..9, 1u32..3, 0u64..400), 1..25),
        berth in any::<bool>(),
    ) {
        let mut snap = cluster(&[("n1", 8), ("n2", 8), ("n3", 8)]);
        let pre: Vec<_> = running.iter().enumerate().map(|(i, (g, l))| job(1000 + i as u64, *g, *l, "a", "training")).collect();
        let s = schedule(&snap, &pre, &cfg(PolicyKind::Fifo), 0);
        run_decisions(&mut snap, &s, &pre, 0);
        let jobs: Vec<_> = pending.iter().enumerate().map(|(i, (g, n, l))| {
            let mut j = job(i as u64 + 1, *g, *l, "a", "training");
            j.nodes = *n;
            j
        }).collect();
        let kind = if berth { PolicyKind::Berth } else { PolicyKind::Backfill };
        let now = 1000;
        let s = schedule(&snap, &jobs, &cfg(kind), now);
        let Some(res) = s.pending.iter().find(|p| p.expected_start_ms.is_some()) else { return Ok(()) };
        let start = res.expected_start_ms.unwrap();
        // At `start`, with everything started this pass still running
        // if it has not ended by then, the reserved job fits.
        let mut later = snap.clone();
        run_decisions(&mut later, &s, &jobs, now);
        let gone: Vec<_> = later.running.iter().filter(|r| r.end_ms <= start).cloned().collect();
        for r in &gone { later.release(&r.grants); }
        later.running.retain(|r| r.end_ms > start);
        let me = jobs.iter().find(|j| j.id == res.job_id).unwrap();
        prop_assert!(Pipeline::new(&PolicyConfig::default()).select(&later, me).is_ok(), "reserved job no longer fits at {}", start);
    }

    #[test]
    fn guaranteed_quota_obtainable_within_one_reclaim_cycle(
        borrowers in proptest::collection::vec(1u32..3, 9..16),
        want in 1u32..9,
    ) {
        let cfg = PolicyConfig { accounts: quota_tree(8, 8), ..PolicyConfig::default() };
        let mut snap = cluster(&[("n1", 8), ("n2", 8)]);
        let b: Vec<_> = borrowers.iter().enumerate().map(|(i, g)| job(100 + i as u64, *g, 0, "b", "development")).collect();
        let s = schedule(&snap, &b, &cfg, 0);
        run_decisions(&mut snap, &s, &b, 0);
        let a = job(1, want, 0, "a", "training");
        let s = schedule(&snap, std::slice::from_ref(&a), &cfg, 1000);
        if s.decisions.len() == 1 { return Ok(()); }
        // One reclaim cycle: the victims stop, then the next pass starts a's job.
        let victims: BTreeSet<u64> = s.preemptions.iter().map(|p| p.victim).collect();
        let gone: Vec<_> = snap.running.iter().filter(|r| victims.contains(&r.id)).cloned().collect();
        for r in &gone { snap.release(&r.grants); }
        snap.running.retain(|r| !victims.contains(&r.id));
        let s2 = schedule(&snap, std::slice::from_ref(&a), &cfg, 40_000);
        prop_assert_eq!(s2.decisions.len(), 1, "after {:?}: {:?}", victims, s2);
    }

    #[test]
    fn no_preemption_cycles(
        jobs in proptest::collection::vec((0usize..2, 1u32..5, 0usize..5, 1u64..5), 4..30),
    ) {
        let classes = ["production-inference", "critical-agents", "training", "research", "development"];
        let mut cfg = PolicyConfig { accounts: quota_tree(4, 4), ..PolicyConfig::default() };
        for c in &mut cfg.qos { c.min_runtime_s = 0; c.preemptible = true; }
        let mut snap = cluster(&[("n1", 4), ("n2", 4)]);
        let mut pending: Vec<_> = jobs.iter().enumerate().map(|(i, (a, g, c, l))| {
            job(i as u64 + 1, *g, *l * 10, ["a", "b"][*a], classes[*c])
        }).collect();
        let mut edges: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        // Every job's preemption ancestors, propagated to descendants as berthd does.
        let mut anc: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let mut now = 0;
        for _ in 0..12 {
            for j in &mut pending {
                j.preempted_for = anc.get(&j.id).into_iter().flatten().copied().collect();
            }
            let s = schedule(&snap, &pending, &cfg, now);
            run_decisions(&mut snap, &s, &pending, now);
            let started: BTreeSet<u64> = s.decisions.iter().map(|d| d.job_id).collect();
            pending.retain(|j| !started.contains(&j.id));
            for p in &s.preemptions {
                edges.entry(p.preemptor).or_default().insert(p.victim);
                let mut add = anc.get(&p.preemptor).cloned().unwrap_or_default();
                add.insert(p.preemptor);
                for (id, set) in anc.iter_mut() {
                    if set.contains(&p.victim) && *id != p.victim {
                        set.extend(add.iter().copied());
                    }
                }
                anc.entry(p.victim).or_default().extend(add);
                let r = snap.running.iter().find(|r| r.id == p.victim).unwrap().clone();
                snap.release(&r.grants);
                snap.running.retain(|x| x.id != r.id);
                pending.push(job(r.id, r.grants[0].gpu_uuids.len() as u32, 30, &r.account, &r.qos));
            }
            now += 10_000;
            let done: Vec<_> = snap.running.iter().filter(|r| r.end_ms <= now).cloned().collect();
            for r in &done { snap.release(&r.grants); }
            snap.running.retain(|r| r.end_ms > now);
        }
        // No job reaches itself through preemption edges.
        for &start in edges.keys() {
            let mut seen = BTreeSet::new();
            let mut stack = vec![start];
            while let Some(x) = stack.pop() {
                for &y in edges.get(&x).into_iter().flatten() {
                    prop_assert!(y != start, "cycle through {} in {:?}", start, edges);
                    if seen.insert(y) { stack.push(y); }
                }
            }
        }
    }
}

#[test]
fn per_user_gpu_limit_of_a_class_holds_back_that_users_jobs_only() {
    let mut cfg = cfg(PolicyKind::Berth);
    for q in cfg.qos.iter_mut().filter(|q| q.name == "training") {
        q.max_gpus_per_user = Some(4);
    }
    let mut snap = cluster(&[("n1", 8), ("n2", 8)]);
    let user = |mut j: PendingJob, u: &str| {
        j.user = u.into();
        j
    };
    // u1 already runs 2 GPUs of training.
    let held = user(job(100, 2, 1000, "a", "training"), "u1");
    let s = schedule(&snap, std::slice::from_ref(&held), &cfg, 0);
    run_decisions(&mut snap, &s, &[held], 0);
    // In pass order (same priority, by submit time = id): (job, user, gpus, class).
    let jobs = vec![
        user(job(1, 2, 100, "a", "training"), "u1"), // 2 + 2 = 4: at the limit, starts
        user(job(2, 1, 100, "a", "training"), "u1"), // 5 > 4: held back
        user(job(3, 4, 100, "a", "training"), "u2"), // another user: starts
        user(job(4, 1, 100, "a", "research"), "u1"), // another class: starts
        user(job(5, 0, 100, "a", "training"), "u1"), // no GPUs: a GPU limit does not apply
        user(job(6, 5, 100, "a", "training"), "u3"), // alone above the limit: never starts
    ];
    let s = schedule(&snap, &jobs, &cfg, 1);
    let started: BTreeSet<u64> = s.decisions.iter().map(|d| d.job_id).collect();
    assert_eq!(started, BTreeSet::from([1, 3, 4, 5]), "{s:?}");
    let reasons: Vec<(u64, &str)> = s
        .pending
        .iter()
        .map(|p| (p.job_id, p.reason.slurm_name()))
        .collect();
    assert_eq!(
        reasons,
        [(2, "QOSMaxGRESPerUser"), (6, "QOSMaxGRESPerUser")]
    );
    assert_eq!(
        s.pending[0].reason,
        PendingReason::UserGpus {
            qos: "training".into(),
            limit: 4
        }
    );
    // Without the limit job 2 starts too; job 6 then waits for GPUs, not for the limit.
    let s = schedule(&snap, &jobs, &PolicyConfig::default(), 1);
    let started: BTreeSet<u64> = s.decisions.iter().map(|d| d.job_id).collect();
    assert_eq!(started, BTreeSet::from([1, 2, 3, 4, 5]), "{s:?}");
    assert_eq!(s.pending[0].reason, PendingReason::Resources);
}
