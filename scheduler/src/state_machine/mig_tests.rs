//! MIG slices in the state machine: checked at apply (legal, not overlapping, MIG mode
//! only), held per GPU with their job, released at the end, kept across re-registration,
//! and planned by the leader's pass so that what the planner chooses always applies.

use super::*;
use crate::scheduling::plan;
use crate::state_machine::{Outcome, StateMachine};
use berth_proto::v1::{command::Cmd, JobState};
use proptest::prelude::*;

const A100_40: &str = "NVIDIA A100-SXM4-40GB";

use crate::test_fixtures::{cmd, submit};

/// A MIG-mode A100 40GB as the agent reports it: profiles with the placements NVML lists
/// (`listed`), or without them (then berthd falls back to the built-in table).
fn mig_gpu(node: &str, index: u32, listed: bool) -> pb::Gpu {
    let table = pmig::builtin_profiles(A100_40).expect("a100");
    pb::Gpu {
        uuid: format!("GPU-{node}-{index}"),
        index,
        model: A100_40.into(),
        gres_type: "a100".into(),
        mig_capable: true,
        mig_enabled: true,
        mig_profiles: table
            .iter()
            .enumerate()
            .map(|(i, p)| pb::MigProfile {
                index: i as u32,
                name: p.name.clone(),
                instance_count: p.instances_max,
                placements: if listed {
                    p.starts
                        .iter()
                        .map(|&start| pb::MigPlacement {
                            start,
                            size: p.size,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn inventory(name: &str, gpus: Vec<pb::Gpu>) -> pb::NodeInventory {
    pb::NodeInventory {
        name: name.into(),
        partition: "gpu".into(),
        cpus: 16,
        memory_mb: 1024,
        gpus,
        ..Default::default()
    }
}

fn register(inv: pb::NodeInventory) -> Cmd {
    Cmd::RegisterNode(pb::RegisterNode {
        inventory: Some(inv),
    })
}

fn mig_spec(profile: &str, count: u32) -> pb::JobSpec {
    pb::JobSpec {
        mig_profile: profile.into(),
        mig_per_node: count,
        ..crate::test_fixtures::spec(0)
    }
}

fn slice(gpu: &str, profile: &str, start: u32, size: u32) -> pb::MigSlice {
    pb::MigSlice {
        gpu_uuid: gpu.into(),
        profile: profile.into(),
        placement_start: start,
        placement_size: size,
        job_id: 0,
    }
}

fn alloc(job_id: u64, node: &str, uuids: &[&str], slices: Vec<pb::MigSlice>) -> Cmd {
    Cmd::Allocate(pb::Allocate {
        term: 1,
        placements: vec![pb::Placement {
            job_id,
            allocations: vec![pb::Allocation {
                node: node.into(),
                gpu_uuids: uuids.iter().map(|s| s.to_string()).collect(),
                cpus: 1,
                mig_slices: slices,
                ..Default::default()
            }],
            array_task_id: None,
        }],
    })
}

fn ended(job_id: u64, node: &str) -> Cmd {
    Cmd::JobEnded(pb::JobEnded {
        job_id,
        node: node.into(),
        finished: Some(pb::JobFinished {
            state: JobState::Completed as i32,
            ..Default::default()
        }),
    })
}

fn held_on(sm: &StateMachine, node: &str, gpu: usize) -> Vec<(u64, String, u32)> {
    sm.node(node)
        .expect("node")
        .inventory
        .as_ref()
        .expect("inv")
        .gpus[gpu]
        .mig_held
        .iter()
        .map(|s| (s.job_id, s.profile.clone(), s.placement_start))
        .collect()
}

#[test]
fn slices_are_checked_at_apply_held_per_gpu_and_released_at_the_end() {
    let mut sm = StateMachine::default();
    let mut i = 0;
    let mut apply = |sm: &mut StateMachine, c: Cmd| {
        i += 1;
        sm.apply(i, cmd(i, c)).0
    };
    // n1 lists placements; n2 does not (fallback table by model); n3 has no MIG.
    let n1 = inventory("n1", vec![mig_gpu("n1", 0, true), mig_gpu("n1", 1, true)]);
    let n2 = inventory("n2", vec![mig_gpu("n2", 0, false)]);
    let mut plain = mig_gpu("n3", 0, true);
    plain.mig_enabled = false;
    let n3 = inventory("n3", vec![plain]);
    for inv in [n1.clone(), n2, n3] {
        assert_eq!(apply(&mut sm, register(inv)), Outcome::Done);
    }
    for _ in 0..4 {
        let out = apply(&mut sm, submit(mig_spec("3g.20gb", 1)));
        assert!(matches!(out, Outcome::Submitted(_)), "{out:?}");
    }
    let g0 = "GPU-n1-0";
    // (command, expected outcome text or None for Done)
    let steps: Vec<(Cmd, Option<&str>)> = vec![
        (alloc(1, "n1", &[], vec![slice(g0, "3g.20gb", 4, 4)]), None),
        (
            alloc(2, "n1", &[], vec![slice(g0, "3g.20gb", 2, 4)]),
            Some("cannot be placed at 2:4"),
        ),
        (
            alloc(2, "n1", &[], vec![slice(g0, "1g.5gb", 5, 1)]),
            Some("overlaps the 3g.20gb slice at 4:4"),
        ),
        (
            alloc(2, "n1", &[], vec![slice(g0, "3g.20gb", 4, 4)]),
            Some("overlaps"),
        ),
        (
            alloc(2, "n1", &["GPU-n1-1"], vec![]),
            Some("is in MIG mode"),
        ),
        (
            alloc(2, "n1", &[], vec![slice(g0, "9g.90gb", 0, 1)]),
            Some("no MIG profile 9g.90gb"),
        ),
        (
            alloc(2, "n1", &[], vec![slice("GPU-n2-0", "3g.20gb", 0, 4)]),
            Some("not on node n1"),
        ),
        (
            alloc(2, "n3", &[], vec![slice("GPU-n3-0", "3g.20gb", 0, 4)]),
            Some("not in MIG mode"),
        ),
        (
            alloc(
                2,
                "n1",
                &[],
                vec![
                    slice("GPU-n1-1", "1g.5gb", 0, 1),
                    slice("GPU-n1-1", "1g.5gb", 0, 1),
                ],
            ),
            Some("overlaps the 1g.5gb slice at 0:1"),
        ),
        (
            alloc(2, "n1", &[g0], vec![slice(g0, "3g.20gb", 0, 4)]),
            Some("is in MIG mode"),
        ),
        (alloc(2, "n1", &[], vec![slice(g0, "3g.20gb", 0, 4)]), None),
        // The fallback table (no placements listed) checks as strictly.
        (
            alloc(3, "n2", &[], vec![slice("GPU-n2-0", "3g.20gb", 6, 4)]),
            Some("cannot be placed at 6:4"),
        ),
        (
            alloc(3, "n2", &[], vec![slice("GPU-n2-0", "3g.20gb", 4, 4)]),
            None,
        ),
    ];
    for (k, (c, want)) in steps.into_iter().enumerate() {
        let before = sm.encode();
        let out = apply(&mut sm, c);
        match (want, &out) {
            (None, Outcome::Done) => {}
            (Some(w), Outcome::Rejected(msg)) if msg.contains(w) => {
                assert_eq!(
                    sm.encode(),
                    before,
                    "step {k}: a refused allocation changed state"
                );
            }
            _ => panic!("step {k}: want {want:?}, got {out:?}"),
        }
    }
    assert_eq!(
        held_on(&sm, "n1", 0),
        vec![(1, "3g.20gb".into(), 4), (2, "3g.20gb".into(), 0)]
    );
    // The planner's view sees them, and no whole GPU on a MIG card.
    let view = sm.cluster_view();
    let g = &view.nodes[0].gpus[0];
    assert!(g.mig_enabled && !g.free && g.mig_held.len() == 2);
    assert!(
        !view.nodes[0].gpus[1].free,
        "an idle MIG-mode GPU is not a whole GPU"
    );
    assert_eq!(
        view.nodes[1].gpus[0].mig_profiles.len(),
        7,
        "fallback table"
    );
    // Re-registration keeps the slices (the agent re-attached to them).
    assert_eq!(apply(&mut sm, register(n1.clone())), Outcome::Done);
    assert_eq!(held_on(&sm, "n1", 0).len(), 2);
    // Job 1 ends: exactly its slice is freed, and the place can be granted again.
    assert_eq!(apply(&mut sm, ended(1, "n1")), Outcome::Done);
    assert_eq!(held_on(&sm, "n1", 0), vec![(2, "3g.20gb".into(), 0)]);
    let out = apply(
        &mut sm,
        alloc(4, "n1", &[], vec![slice(g0, "3g.20gb", 4, 4)]),
    );
    assert_eq!(out, Outcome::Done);
    // An agent may not claim slices itself.
    let mut claimed = n1;
    claimed.gpus[0].mig_held.push(slice(g0, "1g.5gb", 0, 1));
    let out = apply(&mut sm, register(claimed));
    assert!(
        matches!(&out, Outcome::Rejected(m) if m.contains("may not assign")),
        "{out:?}"
    );
}

#[test]
fn bad_mig_requests_are_refused_at_submit() {
    let mut sm = StateMachine::default();
    let n1 = inventory("n1", vec![mig_gpu("n1", 0, true)]);
    assert_eq!(sm.apply(1, cmd(1, register(n1))).0, Outcome::Done);
    let mut typed = mig_spec("3g.20gb", 1);
    typed.gpu_type = "a100".into();
    let cases = [
        (mig_spec("3g.20gb", 0), "asked for 0 times"),
        (mig_spec("", 2), "without a MIG profile"),
        (mig_spec("a100", 1), "not a MIG profile name"),
        (mig_spec("3g.20gb", 57), "at most 56"),
        (typed, "cannot be asked for together"),
        // Well formed, but no card here has it: nothing could ever run it.
        (
            mig_spec("3g.40gb", 1),
            "Requested node configuration is not available",
        ),
        // Two 3g halves fit one A100; three never do.
        (
            mig_spec("3g.20gb", 3),
            "needs 3 3g.20gb MIG slice(s), 2 free placement(s)",
        ),
    ];
    for (k, (spec, want)) in cases.into_iter().enumerate() {
        let before = sm.encode();
        match sm.apply(k as u64 + 2, cmd(2, submit(spec))).0 {
            Outcome::Rejected(m) if m.contains(want) => {}
            other => panic!("#{k}: want {want:?}, got {other:?}"),
        }
        assert_eq!(sm.encode(), before, "#{k}: refused submit changed state");
    }
}

#[test]
fn an_unhealthy_mig_gpu_gets_no_slice_and_no_whole_job() {
    let mut sm = StateMachine::default();
    let n1 = inventory("n1", vec![mig_gpu("n1", 0, true)]);
    assert_eq!(sm.apply(1, cmd(1, register(n1))).0, Outcome::Done);
    sm.apply(2, cmd(2, submit(mig_spec("1g.5gb", 1))));
    let bad = Cmd::MarkGpuUnhealthy(pb::MarkGpuUnhealthy {
        node: "n1".into(),
        gpu_uuid: "GPU-n1-0".into(),
        reason: "XID 79".into(),
    });
    assert_eq!(sm.apply(3, cmd(3, bad)).0, Outcome::Done);
    let view = sm.cluster_view();
    let g = &view.nodes[0].gpus[0];
    assert!(
        g.mig_enabled && !g.free && g.mig_profiles.is_empty(),
        "{g:?}"
    );
    let out = sm
        .apply(
            4,
            cmd(
                4,
                alloc(1, "n1", &[], vec![slice("GPU-n1-0", "1g.5gb", 6, 1)]),
            ),
        )
        .0;
    assert!(
        matches!(&out, Outcome::Rejected(m) if m.contains("unhealthy")),
        "{out:?}"
    );
    let plan = plan(&sm, 1, 5).expect("job 1 pending");
    assert!(plan.allocate.is_none());
    assert_eq!(plan.reasons[&1].0, "Resources");
}

#[test]
fn a_slice_is_charged_its_share_of_the_card() {
    // One A100 (cap 1 GPU, 16 CPUs): a 3g.20gb slice (4 of 8 memory slices) held for
    // 1000 s is charged 0.5 GPU x 1000 s = 500 GPU-seconds (its 1 CPU alone would be
    // 1/16 x 1000 = 62.5); the week-long default half-life decays it by under 0.2%.
    let mut sm = StateMachine::default();
    let n1 = inventory("n1", vec![mig_gpu("n1", 0, true)]);
    sm.apply(1, cmd(0, register(n1)));
    sm.apply(2, cmd(0, submit(mig_spec("3g.20gb", 1))));
    let a = alloc(1, "n1", &[], vec![slice("GPU-n1-0", "3g.20gb", 4, 4)]);
    assert_eq!(sm.apply(3, cmd(1_000, a)).0, Outcome::Done);
    assert_eq!(sm.apply(4, cmd(1_001_000, ended(1, "n1"))).0, Outcome::Done);
    let charged = sm.state.usage.get("default").copied().unwrap_or(0.0);
    assert!((499.0..=500.0).contains(&charged), "charged {charged}");
}

/// Applies one scheduling pass's decisions, as the leader's loop does.
fn pass(sm: &mut StateMachine, index: &mut u64) -> Vec<u64> {
    let Some(plan) = plan(sm, 1, 1_000) else {
        return Vec::new();
    };
    let Some(alloc) = plan.allocate else {
        return Vec::new();
    };
    let ids = alloc.placements.iter().map(|p| p.job_id).collect();
    *index += 1;
    let out = sm.apply(*index, cmd(1_000, Cmd::Allocate(alloc))).0;
    assert_eq!(out, Outcome::Done, "the planner's slices must apply");
    ids
}

#[test]
fn the_leaders_pass_names_slices_that_apply_and_waits_when_none_fit() {
    let mut sm = StateMachine::default();
    let mut index = 1;
    let n1 = inventory("n1", vec![mig_gpu("n1", 0, true), mig_gpu("n1", 1, true)]);
    sm.apply(index, cmd(1, register(n1)));
    for spec in [
        mig_spec("3g.20gb", 1),
        mig_spec("2g.10gb", 1),
        mig_spec("1g.5gb", 2),
        mig_spec("4g.20gb", 1),
        mig_spec("7g.40gb", 1),
    ] {
        index += 1;
        sm.apply(index, cmd(1, submit(spec)));
    }
    let started = pass(&mut sm, &mut index);
    // 3g, 2g and both 1g pack onto GPU 0; the 4g carves GPU 1; the 7g needs an empty card.
    assert_eq!(started, vec![1, 2, 3, 4]);
    let plan = plan(&sm, 1, 1_000).expect("job 5 pending");
    assert_eq!(plan.reasons[&5].0, "Resources");
    let launched = sm.job(1).expect("job 1");
    let s = &launched.allocations[0].mig_slices[0];
    assert_eq!(
        (
            s.gpu_uuid.as_str(),
            s.profile.as_str(),
            s.placement_start,
            s.placement_size
        ),
        ("GPU-n1-0", "3g.20gb", 4, 4)
    );
    let gpu0: Vec<(u64, String, u32)> = held_on(&sm, "n1", 0);
    assert_eq!(gpu0.len(), 4, "{gpu0:?}");
    assert_eq!(held_on(&sm, "n1", 1), vec![(4, "4g.20gb".into(), 0)]);
    // Once job 4 ends, GPU 1 is empty again and the 7g starts there.
    index += 1;
    sm.apply(index, cmd(2_000, ended(4, "n1")));
    assert_eq!(pass(&mut sm, &mut index), vec![5]);
    assert_eq!(held_on(&sm, "n1", 1), vec![(5, "7g.40gb".into(), 0)]);
}

proptest! {
    /// Random submits and ends through the real pass and apply: every GPU's slices stay a
    /// legal, non-overlapping layout, and slices belong only to running jobs.
    #[test]
    fn held_slices_stay_legal_through_passes(
        ops in proptest::collection::vec((0usize..7, 1u32..3, any::<bool>()), 1..40),
    ) {
        let names = ["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"];
        let mut sm = StateMachine::default();
        let mut index = 1;
        let n1 = inventory("n1", vec![mig_gpu("n1", 0, true), mig_gpu("n1", 1, false)]);
        sm.apply(index, cmd(1, register(n1)));
        for (p, count, end_one) in ops {
            index += 1;
            sm.apply(index, cmd(1, submit(mig_spec(names[p], count))));
            if end_one {
                let running = sm.jobs().find(|j| j.state() == JobState::Running).map(|j| j.id);
                if let Some(id) = running {
                    index += 1;
                    sm.apply(index, cmd(1, ended(id, "n1")));
                }
            }
            pass(&mut sm, &mut index);
            for gpu in &sm.node("n1").unwrap().inventory.as_ref().unwrap().gpus {
                let table = profiles(gpu);
                let mut so_far = Vec::new();
                for s in &gpu.mig_held {
                    let ok = pmig::check(&table, &so_far, &s.profile, s.placement_start, s.placement_size);
                    prop_assert!(ok.is_ok(), "{:?}: {:?}", s, ok);
                    prop_assert_eq!(sm.job(s.job_id).map(|j| j.state()), Some(JobState::Running));
                    so_far.push(MigHeld { profile: s.profile.clone(), start: s.placement_start, size: s.placement_size });
                }
            }
        }
    }
}
