//! State machine tables: every command against the states it may meet, and replay
//! determinism.

use super::*;
use pb::command::Cmd;

use crate::test_fixtures::{alloc, cmd, ended, inventory, register, spec, submit};

/// A log exercising every command; returns the state machine after it.
fn run(log: &[pb::Command]) -> (StateMachine, Vec<Outcome>) {
    let mut sm = StateMachine::default();
    let outcomes = log
        .iter()
        .enumerate()
        .map(|(i, c)| sm.apply(i as u64 + 1, c.clone()).0)
        .collect();
    (sm, outcomes)
}

fn log() -> Vec<pb::Command> {
    vec![
        cmd(1, register(inventory("n1", 2))),
        cmd(2, submit(spec(2))),
        cmd(3, submit(spec(1))),
        cmd(4, alloc(1, "n1", &["GPU-n1-0", "GPU-n1-1"])),
        cmd(5, alloc(2, "n1", &["GPU-n1-0"])), // refused: held by job 1
        cmd(6, ended(1, "n1", JobState::Completed, 0)),
        cmd(7, alloc(2, "n1", &["GPU-n1-0"])),
        cmd(
            8,
            Cmd::Cancel(pb::CancelJob {
                job_id: 2,
                reason: String::new(),
                ..Default::default()
            }),
        ),
        cmd(9, submit(spec(3))), // refused: 3 > 2 GPUs
        cmd(
            10,
            Cmd::NodeDown(pb::NodeDown {
                node: "n1".into(),
                reason: "gone".into(),
            }),
        ),
        cmd(
            11,
            Cmd::Cancel(pb::CancelJob {
                job_id: 99,
                reason: String::new(),
                ..Default::default()
            }),
        ),
    ]
}

#[test]
fn commands_change_state_as_specified() {
    let (sm, outcomes) = run(&log());
    assert_eq!(outcomes[1], Outcome::Submitted(1));
    assert_eq!(outcomes[2], Outcome::Submitted(2));
    assert_eq!(outcomes[3], Outcome::Done);
    assert!(
        matches!(&outcomes[4], Outcome::Rejected(w) if w.contains("held by job 1")),
        "{:?}",
        outcomes[4]
    );
    assert!(
        matches!(&outcomes[8], Outcome::Rejected(w) if w.contains("Requested node configuration is not available")),
        "{:?}",
        outcomes[8]
    );
    assert_eq!(outcomes[10], Outcome::NoSuchJob(99));
    let j1 = sm.job(1).unwrap();
    assert_eq!(
        (j1.state(), j1.start_time_ms, j1.end_time_ms),
        (JobState::Completed, 4, 6)
    );
    assert_eq!(j1.stdout_path, "/w/slurm-1.out");
    // Job 2 was cancelled while running (kill requested), then its node died.
    let j2 = sm.job(2).unwrap();
    assert_eq!(j2.state(), JobState::NodeFail);
    assert!(j2.reason.contains("node n1 down"), "{}", j2.reason);
    assert!(sm.job(3).is_none(), "a refused submit leaves no job");
    let n1 = sm.node("n1").unwrap();
    assert_eq!(n1.state(), NodeState::Down);
    assert!(
        n1.inventory
            .as_ref()
            .unwrap()
            .gpus
            .iter()
            .all(|g| g.job_id == 0),
        "node failure frees GPUs"
    );
    assert_eq!(n1.cpus_alloc, 0);
}

#[test]
fn cancel_and_hold_follow_slurm() {
    let mut l = log()[..3].to_vec();
    l.push(cmd(
        4,
        Cmd::Hold(pb::HoldJob {
            job_id: 2,
            hold: true,
            ..Default::default()
        }),
    ));
    l.push(cmd(
        5,
        Cmd::Cancel(pb::CancelJob {
            job_id: 1,
            reason: String::new(),
            ..Default::default()
        }),
    ));
    l.push(cmd(
        6,
        Cmd::Cancel(pb::CancelJob {
            job_id: 1,
            reason: String::new(),
            ..Default::default()
        }),
    ));
    l.push(cmd(7, alloc(2, "n1", &["GPU-n1-0"])));
    l.push(cmd(
        8,
        Cmd::Hold(pb::HoldJob {
            job_id: 1,
            hold: true,
            ..Default::default()
        }),
    ));
    let (sm, out) = run(&l);
    assert_eq!(sm.job(2).unwrap().reason, "JobHeldUser");
    assert_eq!(sm.job(1).unwrap().state(), JobState::Cancelled);
    assert!(
        matches!(&out[5], Outcome::Rejected(w) if w.contains("already completing or completed"))
    );
    assert!(
        matches!(&out[6], Outcome::Rejected(w) if w.contains("not pending")),
        "held jobs are not placed: {:?}",
        out[6]
    );
    assert!(matches!(&out[7], Outcome::Rejected(w) if w.contains("no longer pending")));
    assert!(
        sm.pending_jobs().is_empty(),
        "a held job is not offered to placement"
    );
}

#[test]
fn running_cancel_emits_kill_and_end_report_emits_ack() {
    let mut sm = StateMachine::default();
    for (i, c) in log()[..4].iter().enumerate() {
        sm.apply(i as u64 + 1, c.clone());
    }
    let (_, effects) = sm.apply(
        5,
        cmd(
            5,
            Cmd::Cancel(pb::CancelJob {
                job_id: 1,
                reason: String::new(),
                ..Default::default()
            }),
        ),
    );
    assert!(effects.iter().any(|e| matches!(e, Effect::Kill { node, job_id: 1, state: JobState::Cancelled, .. } if node == "n1")));
    assert!(sm.job(1).unwrap().kill_requested);
    let (out, effects) = sm.apply(6, cmd(6, ended(1, "n1", JobState::Cancelled, 0)));
    assert_eq!(out, Outcome::Done);
    assert!(effects.contains(&Effect::Ack {
        node: "n1".into(),
        job_id: 1
    }));
    // A duplicate report is acknowledged and changes nothing.
    let before = sm.encode();
    let (_, effects) = sm.apply(7, cmd(7, ended(1, "n1", JobState::Failed, 1)));
    assert_eq!(
        effects,
        vec![Effect::Ack {
            node: "n1".into(),
            job_id: 1
        }]
    );
    assert_eq!(sm.encode(), before);
}

#[test]
fn replay_is_byte_identical_and_snapshots_round_trip() {
    let (a, _) = run(&log());
    let (b, _) = run(&log());
    assert_eq!(a.encode(), b.encode());
    let restored = StateMachine::restore(a.applied_index(), &a.encode()).unwrap();
    assert_eq!(restored, a);
    assert!(StateMachine::restore(1, b"\xff\xff garbage").is_err());
}

#[test]
fn bad_inventories_are_refused() {
    let mut dup = inventory("n1", 2);
    dup.gpus[1].uuid = dup.gpus[0].uuid.clone();
    let mut claimed = inventory("n1", 1);
    claimed.gpus[0].job_id = 7;
    let mut bad_level = inventory("n1", 2);
    bad_level.topology = vec![pb::GpuPairLink {
        gpu_a: 0,
        gpu_b: 1,
        level: "NVX".into(),
    }];
    let cases = [
        (inventory("", 1), "invalid node name"),
        (inventory("bad name", 1), "invalid node name"),
        (
            pb::NodeInventory {
                cpus: 0,
                ..inventory("n1", 0)
            },
            "0 CPUs",
        ),
        (dup, "repeated"),
        (claimed, "may not assign"),
        (bad_level, "unknown GPU link level"),
    ];
    for (i, (inv, want)) in cases.into_iter().enumerate() {
        let mut sm = StateMachine::default();
        let (out, _) = sm.apply(1, cmd(1, register(inv)));
        match out {
            Outcome::Rejected(w) if w.contains(want) => {}
            other => panic!("#{i}: want rejection with {want:?}, got {other:?}"),
        }
        assert_eq!(
            sm.nodes().count(),
            0,
            "#{i}: refused inventory changed state"
        );
    }
}

#[test]
fn job_changed_effects_carry_the_job_as_each_command_left_it() {
    let mut sm = StateMachine::default();
    let mut states = Vec::new();
    for (i, c) in log()[..4].iter().enumerate() {
        for e in sm.apply(i as u64 + 1, c.clone()).1 {
            if let Effect::JobChanged(job) = e {
                states.push((job.id, job.state()));
            }
        }
    }
    assert_eq!(
        states,
        vec![
            (1, JobState::Pending),
            (2, JobState::Pending),
            (1, JobState::Running)
        ]
    );
}

#[test]
fn unhealthy_gpu_is_never_placed_and_survives_reregistration() {
    let mark = |uuid: &str, reason: &str| {
        Cmd::MarkGpuUnhealthy(pb::MarkGpuUnhealthy {
            node: "n1".into(),
            gpu_uuid: uuid.into(),
            reason: reason.into(),
        })
    };
    let log = vec![
        cmd(1, register(inventory("n1", 2))),
        cmd(2, mark("GPU-n1-0", "XID 79")),
        cmd(3, mark("GPU-n1-9", "XID 79")),
        cmd(4, mark("GPU-n1-1", " ")),
        cmd(5, submit(spec(1))),
        cmd(6, alloc(1, "n1", &["GPU-n1-0"])),
        cmd(7, register(inventory("n1", 2))),
        cmd(8, mark("GPU-n1-0", "a later XID")),
    ];
    let (sm, outcomes) = run(&log);
    assert_eq!(outcomes[1], Outcome::Done);
    assert!(
        matches!(&outcomes[2], Outcome::Rejected(w) if w.contains("no GPU GPU-n1-9")),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(&outcomes[3], Outcome::Rejected(w) if w.contains("without a reason")),
        "{:?}",
        outcomes[3]
    );
    let gpus = &sm
        .node("n1")
        .and_then(|n| n.inventory.as_ref())
        .expect("node")
        .gpus;
    assert_eq!(
        gpus[0].unhealthy_reason, "XID 79",
        "kept across re-registration, first reason wins"
    );
    assert_eq!(gpus[1].unhealthy_reason, "");
    assert_eq!(
        sm.job(1).map(|j| j.state()),
        Some(JobState::Pending),
        "allocation on it refused"
    );
    let view = sm.cluster_view();
    let free: Vec<bool> = view.nodes[0].gpus.iter().map(|g| g.free).collect();
    assert_eq!(
        free,
        [false, true],
        "placement sees the unhealthy GPU as taken"
    );
    let (again, _) = run(&log);
    assert_eq!(again.encode(), sm.encode(), "replay is byte-identical");
}

#[test]
fn shared_gpus_take_one_job_per_replica_and_free_shares_at_the_end() {
    let mut inv = inventory("n1", 1);
    inv.gpus[0].replicas = 2;
    let mut too_many = inventory("n2", 1);
    too_many.gpus[0].replicas = GPU_REPLICAS_MAX + 1;
    let log = vec![
        cmd(1, register(inv.clone())),
        cmd(2, register(too_many)),
        cmd(3, submit(spec(1))),
        cmd(4, submit(spec(1))),
        cmd(5, submit(spec(1))),
        cmd(6, alloc(1, "n1", &["GPU-n1-0"])),
        cmd(7, alloc(2, "n1", &["GPU-n1-0"])),
        cmd(8, alloc(3, "n1", &["GPU-n1-0"])),
        cmd(9, register(inv)),
        cmd(10, ended(1, "n1", JobState::Completed, 0)),
        cmd(11, alloc(3, "n1", &["GPU-n1-0"])),
    ];
    let (sm, outcomes) = run(&log);
    assert!(
        matches!(&outcomes[1], Outcome::Rejected(w) if w.contains("at most")),
        "{:?}",
        outcomes[1]
    );
    let running: Vec<JobState> = (1..=3).map(|id| sm.job(id).expect("job").state()).collect();
    assert_eq!(
        running,
        [JobState::Completed, JobState::Running, JobState::Running]
    );
    let gpu = &sm
        .node("n1")
        .and_then(|n| n.inventory.as_ref())
        .expect("node")
        .gpus[0];
    assert_eq!(
        (gpu.job_id, gpu.share_job_ids.clone()),
        (0, vec![2, 3]),
        "job 3 got job 1's share"
    );
    assert!(
        sm.cluster_view().nodes[0].gpus.iter().all(|g| !g.free),
        "both shares held"
    );
    let (again, _) = run(&log);
    assert_eq!(again.encode(), sm.encode());
}

const ACCOUNTS: &str = r#"
default_account = "alice"
[[account]]
name = "alice"
[[account]]
name = "bob"
"#;

fn preempt(victim: u64, preemptor: u64) -> Cmd {
    Cmd::Preempt(pb::Preempt {
        term: 1,
        preemptions: vec![pb::Preemption {
            victim,
            preemptor,
            cause: "priority".into(),
        }],
    })
}

/// n1 (2 GPUs), accounts alice/bob; job 1 (bob, development, 2 GPUs) runs from t=10s,
/// job 2 (alice, production-inference) waits.
fn preemption_log(requeue: Option<bool>) -> Vec<pb::Command> {
    let mut victim = spec(2);
    victim.account = "bob".into();
    victim.qos = "development".into();
    victim.requeue = requeue;
    victim.signal = 10;
    victim.signal_secs = 45;
    let mut boss = spec(2);
    boss.qos = "production-inference".into();
    vec![
        cmd(
            1,
            Cmd::SetAccounts(pb::SetAccounts {
                toml: ACCOUNTS.into(),
            }),
        ),
        cmd(2, register(inventory("n1", 2))),
        cmd(3, Cmd::Submit(pb::SubmitJob { spec: Some(victim) })),
        cmd(10_000, alloc(1, "n1", &["GPU-n1-0", "GPU-n1-1"])),
        cmd(20_000, Cmd::Submit(pb::SubmitJob { spec: Some(boss) })),
        cmd(30_000, preempt(1, 2)),
    ]
}

#[test]
fn preemption_kills_with_the_jobs_signal_then_requeues_same_id() {
    let (mut sm, outcomes) = run(&preemption_log(None));
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Done | Outcome::Submitted(_))),
        "{outcomes:?}"
    );
    let job = sm.job(1).unwrap();
    assert!(job.preempting && job.kill_requested);
    assert_eq!(job.preempted_for, vec![2]);
    // The kill effect carried the job's --signal and grace.
    let mut replay = StateMachine::default();
    let log = preemption_log(None);
    let mut last = vec![];
    for (i, c) in log.iter().enumerate() {
        last = replay.apply(i as u64 + 1, c.clone()).1;
    }
    assert!(
        last.iter().any(|e| matches!(
            e,
            Effect::Kill {
                job_id: 1,
                state: JobState::Preempted,
                signal: 10,
                grace_secs: 45,
                ..
            }
        )),
        "{last:?}"
    );
    // A second preemption of a job already stopping is refused.
    let (out, _) = sm.apply(7, cmd(31_000, preempt(1, 2)));
    assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
    // The agent reports it PREEMPTED at t=40s: development requeues by default.
    let mut f = pb::JobFinished {
        state: JobState::Preempted as i32,
        end_time_ms: 40_000,
        ..Default::default()
    };
    f.signal = 10;
    let (out, effects) = sm.apply(
        8,
        cmd(
            40_500,
            Cmd::JobEnded(pb::JobEnded {
                job_id: 1,
                node: "n1".into(),
                finished: Some(f),
            }),
        ),
    );
    assert_eq!(out, Outcome::Done);
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Ack { job_id: 1, .. })));
    let job = sm.job(1).unwrap();
    assert_eq!(
        (job.state(), job.restart_count, job.eligible_time_ms),
        (JobState::Pending, 1, 40_500)
    );
    assert!(job.allocations.is_empty() && !job.preempting);
    assert!(sm
        .node("n1")
        .unwrap()
        .inventory
        .as_ref()
        .unwrap()
        .gpus
        .iter()
        .all(|g| g.job_id == 0));
    // bob is charged 2 GPUs for 30 s, decayed over 0.5 s of a week's half-life (~60).
    let usage = sm.policy_view().usage;
    let bob = usage.by_account["bob"];
    assert!((bob - 60.0).abs() < 0.01, "{usage:?}");
    // The requeued job is pending again, with its chain for loop-freedom.
    let p = sm.pending_jobs();
    let again = p.iter().find(|j| j.id == 1).unwrap();
    assert_eq!(
        (
            again.account.as_str(),
            again.preempted_for.clone(),
            again.submit_ms
        ),
        ("bob", vec![2], 40_500)
    );
}

#[test]
fn no_requeue_ends_preempted_jobs() {
    let (mut sm, _) = run(&preemption_log(Some(false)));
    let f = pb::JobFinished {
        state: JobState::Preempted as i32,
        ..Default::default()
    };
    sm.apply(
        7,
        cmd(
            40_000,
            Cmd::JobEnded(pb::JobEnded {
                job_id: 1,
                node: "n1".into(),
                finished: Some(f),
            }),
        ),
    );
    let job = sm.job(1).unwrap();
    assert_eq!((job.state(), job.restart_count), (JobState::Preempted, 0));
}

#[test]
fn accounts_and_qos_are_checked_at_submit_and_bad_configs_change_nothing() {
    let (mut sm, _) = run(&preemption_log(None)[..2]);
    let bad = [
        ("account", "zed", "", "not an account"),
        ("qos", "", "gold", "Invalid qos"),
    ];
    for (i, (_, account, qos, want)) in bad.iter().enumerate() {
        let mut s = spec(1);
        s.account = account.to_string();
        s.qos = qos.to_string();
        let (out, _) = sm.apply(
            10 + i as u64,
            cmd(5, Cmd::Submit(pb::SubmitJob { spec: Some(s) })),
        );
        match out {
            Outcome::Rejected(w) if w.contains(want) => {}
            other => panic!("#{i}: want {want:?}, got {other:?}"),
        }
    }
    assert_eq!(sm.jobs().count(), 0);
    let before = sm.encode();
    let (out, _) = sm.apply(
        20,
        cmd(
            6,
            Cmd::SetAccounts(pb::SetAccounts {
                toml: "[[account]]\nname = 3".into(),
            }),
        ),
    );
    assert!(
        matches!(out, Outcome::Rejected(ref w) if w.contains("TOML")),
        "{out:?}"
    );
    assert_eq!(sm.encode(), before, "a refused config changed state");
    assert_eq!(sm.accounts_toml(), ACCOUNTS);
    // Defaults: no account → default_account (alice), no qos → research.
    let (out, _) = sm.apply(21, cmd(7, submit(spec(1))));
    let Outcome::Submitted(id) = out else {
        panic!("{out:?}")
    };
    let j = sm.job(id).unwrap();
    assert_eq!((j.account.as_str(), j.qos.as_str()), ("alice", "research"));
}

#[test]
fn replay_with_accounts_and_preemption_is_byte_identical() {
    let mut log = preemption_log(None);
    let f = pb::JobFinished {
        state: JobState::Preempted as i32,
        end_time_ms: 35_000,
        ..Default::default()
    };
    log.push(cmd(
        36_000,
        Cmd::JobEnded(pb::JobEnded {
            job_id: 1,
            node: "n1".into(),
            finished: Some(f),
        }),
    ));
    let (a, _) = run(&log);
    let (b, _) = run(&log);
    assert_eq!(a.encode(), b.encode());
    let restored = StateMachine::restore(a.applied_index(), &a.encode()).unwrap();
    assert_eq!(restored, a);
}

#[test]
fn jobs_on_a_gpu_that_goes_bad_are_killed_then_requeued_or_failed_per_policy() {
    let mark = Cmd::MarkGpuUnhealthy(pb::MarkGpuUnhealthy {
        node: "n1".into(),
        gpu_uuid: "GPU-n1-0".into(),
        reason: "XID 79".into(),
    });
    let with_requeue = |requeue: bool| pb::JobSpec {
        requeue: Some(requeue),
        ..spec(1)
    };
    let log = vec![
        cmd(1, register(inventory("n1", 4))),
        cmd(2, submit(with_requeue(true))),
        cmd(3, submit(with_requeue(false))),
        cmd(4, alloc(1, "n1", &["GPU-n1-0"])),
        cmd(5, alloc(2, "n1", &["GPU-n1-1"])),
    ];
    let (mut sm, _) = run(&log);
    let (outcome, effects) = sm.apply(6, cmd(6, mark.clone()));
    assert_eq!(outcome, Outcome::Done);
    let kills: Vec<(u64, JobState, String)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Kill {
                job_id,
                state,
                reason,
                ..
            } => Some((*job_id, *state, reason.clone())),
            _ => None,
        })
        .collect();
    // Only job 1 holds the bad GPU; job 2 on GPU 1 runs on.
    assert_eq!(
        kills,
        vec![(
            1,
            JobState::NodeFail,
            "GPU GPU-n1-0 unhealthy: XID 79".into()
        )]
    );
    // A second event on the dead GPU kills nothing more.
    let (_, again) = sm.apply(7, cmd(7, mark));
    assert!(
        !again.iter().any(|e| matches!(e, Effect::Kill { .. })),
        "{again:?}"
    );
    // The agent reports job 1 dead: --requeue puts it back in the queue, same id.
    sm.apply(8, cmd(8, ended(1, "n1", JobState::NodeFail, 0)));
    let job = sm.job(1).unwrap();
    assert_eq!((job.state(), job.restart_count), (JobState::Pending, 1));
    // A --no-requeue job on a bad GPU ends NODE_FAIL.
    let (mut sm, _) = run(&log);
    let bad = Cmd::MarkGpuUnhealthy(pb::MarkGpuUnhealthy {
        node: "n1".into(),
        gpu_uuid: "GPU-n1-1".into(),
        reason: "lost".into(),
    });
    sm.apply(6, cmd(6, bad));
    // The agent reports the state and reason the kill carried.
    let dead = pb::JobFinished {
        state: JobState::NodeFail as i32,
        reason: "GPU GPU-n1-1 unhealthy: lost".into(),
        ..Default::default()
    };
    let report = Cmd::JobEnded(pb::JobEnded {
        job_id: 2,
        node: "n1".into(),
        finished: Some(dead),
    });
    sm.apply(7, cmd(7, report));
    let job = sm.job(2).unwrap();
    assert_eq!((job.state(), job.restart_count), (JobState::NodeFail, 0));
    assert!(job.reason.contains("unhealthy: lost"), "{}", job.reason);
}

#[test]
fn topology_is_installed_through_the_log_and_bad_trees_change_nothing() {
    let set = |conf: &str| Cmd::SetTopology(pb::SetTopology { conf: conf.into() });
    let mut n1 = inventory("n1", 2);
    n1.gpus[0].numa_node = 0;
    n1.gpus[1].numa_node = 1;
    n1.topology = vec![pb::GpuPairLink {
        gpu_a: 0,
        gpu_b: 1,
        level: "SYS".into(),
    }];
    let good = "SwitchName=leaf0 Nodes=n[1-2]\nSwitchName=spine Switches=leaf0";
    let log = vec![
        cmd(1, register(n1)),
        cmd(2, set(good)),
        cmd(3, set("SwitchName=spine Switches=leaf9")),
    ];
    let (sm, outcomes) = run(&log);
    assert_eq!(outcomes[1], Outcome::Done);
    assert!(
        matches!(&outcomes[2], Outcome::Rejected(w) if w.contains("leaf9")),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(sm.topology_conf(), good, "the refused tree changed nothing");
    let view = sm.cluster_view();
    let place = view.topology.place("n1").expect("n1 is placed");
    assert_eq!(place.switches.len(), 2, "leaf0 then spine");
    let m = place.gpus.as_ref().expect("n1 reported its links");
    assert_eq!(
        m.cost(0, 1),
        policies::topology::GpuLink::CrossSocket.cost()
    );
    // The tree survives a snapshot round trip.
    let restored = StateMachine::restore(sm.applied_index(), &sm.encode()).unwrap();
    assert_eq!(restored.topology_conf(), good);
    assert_eq!(*restored.topology(), *sm.topology());
}

#[test]
fn an_admin_resume_clears_the_mark_and_survives_reregistration() {
    let gpu = |n: u32| format!("GPU-n1-{n}");
    let log = vec![
        cmd(1, register(inventory("n1", 2))),
        cmd(
            2,
            Cmd::MarkGpuUnhealthy(pb::MarkGpuUnhealthy {
                node: "n1".into(),
                gpu_uuid: gpu(0),
                reason: "XID 79".into(),
            }),
        ),
    ];
    let (mut sm, _) = run(&log);
    let resume = |uuid: String| {
        Cmd::GpuHealthy(pb::GpuHealthyMark {
            node: "n1".into(),
            gpu_uuid: uuid,
        })
    };
    let bad = sm.apply(3, cmd(3, resume("GPU-nope".into())));
    assert_eq!(
        bad.0,
        Outcome::Rejected("no GPU GPU-nope on node n1".into())
    );
    let before = sm.encode();
    let (outcome, effects) = sm.apply(4, cmd(4, resume(gpu(0))));
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        effects,
        vec![Effect::NodeChanged("n1".into())],
        "a pass runs"
    );
    assert_ne!(sm.encode(), before);
    let g = |sm: &StateMachine| sm.node("n1").unwrap().inventory.clone().unwrap().gpus[0].clone();
    assert_eq!(g(&sm).unhealthy_reason, "");
    assert_eq!(g(&sm).healthy_cleared_reason, "XID 79");
    // Placement may use it again.
    let mut sm2 = sm.clone();
    sm2.apply(5, cmd(5, submit(spec(1))));
    let (ok, _) = sm2.apply(6, cmd(6, alloc(1, "n1", &[&gpu(0)])));
    assert_eq!(ok, Outcome::Done, "a resumed GPU can be allocated");
    // Already healthy: nothing changes, nothing to schedule.
    let same = sm.encode();
    let (outcome, effects) = sm.apply(5, cmd(5, resume(gpu(0))));
    assert_eq!((outcome, effects.len()), (Outcome::Done, 0));
    assert_eq!(sm.encode(), same);
    // The agent re-registers: the cleared reason is kept (berthd uses it to skip the
    // agent's re-sent old report), the GPU stays healthy.
    sm.apply(6, cmd(6, register(inventory("n1", 2))));
    assert_eq!(g(&sm).unhealthy_reason, "");
    assert_eq!(g(&sm).healthy_cleared_reason, "XID 79");
}

#[test]
fn measured_usage_is_recorded_per_node_and_bad_records_change_nothing() {
    let log = vec![
        cmd(1, register(inventory("n1", 2))),
        cmd(2, submit(spec(1))),
        cmd(3, alloc(1, "n1", &["GPU-n1-0"])),
    ];
    let (mut sm, _) = run(&log);
    let usage = |job_id: u64, held: f64, busy: f64| pb::JobUsage {
        job_id,
        gpu_seconds: held,
        gpu_busy_seconds: busy,
        gpu_memory_max_mb: 1024,
        gpu_util_percent: 50.0,
        gpu_memory_mb: 512,
        measured_ms: 4_000,
        ..Default::default()
    };
    let record = |node: &str, jobs: Vec<pb::JobUsage>| {
        Cmd::JobUsage(pb::JobUsageRecord {
            node: node.into(),
            jobs,
        })
    };
    let (outcome, _) = sm.apply(4, cmd(4, record("n1", vec![usage(1, 10.0, 5.0)])));
    assert_eq!(outcome, Outcome::Done);
    let (outcome, _) = sm.apply(5, cmd(5, record("n1", vec![usage(1, 20.0, 8.0)])));
    assert_eq!(outcome, Outcome::Done);
    let got = sm.job(1).unwrap().usage.clone();
    assert_eq!(got.len(), 1, "one entry per node, replaced: {got:?}");
    assert_eq!((got[0].node.as_str(), got[0].gpu_seconds), ("n1", 20.0));
    let before = sm.encode();
    let bad = [
        (record("n1", vec![usage(9, 1.0, 0.0)]), "unknown job 9"),
        (
            record("n2", vec![usage(1, 1.0, 0.0)]),
            "no allocation on n2",
        ),
        (record("n1", vec![usage(1, -1.0, 0.0)]), "finite and ≥ 0"),
        (
            record("n1", vec![usage(1, f64::NAN, 0.0)]),
            "finite and ≥ 0",
        ),
        (record("n1", vec![usage(1, 1.0, 2.0)]), "above held"),
        // All or nothing: a good entry beside a bad one is not taken either.
        (
            record("n1", vec![usage(1, 30.0, 1.0), usage(9, 1.0, 0.0)]),
            "unknown job 9",
        ),
    ];
    for (i, (c, want)) in bad.into_iter().enumerate() {
        let index = 6 + i as u64;
        match sm.apply(index, cmd(index, c)) {
            (Outcome::Rejected(why), _) if why.contains(want) => {}
            other => panic!("#{i}: want a refusal containing {want:?}, got {other:?}"),
        }
        assert_eq!(sm.encode(), before, "#{i}: state changed");
    }
}

fn alloc_milli(job_id: u64, node: &str, uuid: &str, gpu_milli: u32) -> Cmd {
    let a = pb::Allocation {
        node: node.into(),
        gpu_uuids: vec![uuid.into()],
        cpus: 1,
        gpu_milli,
        ..Default::default()
    };
    Cmd::Allocate(pb::Allocate {
        term: 1,
        placements: vec![pb::Placement {
            job_id,
            allocations: vec![a],
            ..Default::default()
        }],
    })
}

fn fraction(milli: u32) -> pb::JobSpec {
    pb::JobSpec {
        gpu_milli: milli,
        ..spec(1)
    }
}

#[test]
fn gpu_fractions_are_sized_shares_never_over_1000_milli() {
    let mut shared = inventory("n1", 2);
    shared.gpus.iter_mut().for_each(|g| g.replicas = 4);
    let submit = |t, s: pb::JobSpec| cmd(t, Cmd::Submit(pb::SubmitJob { spec: Some(s) }));
    let register = |t, inv: &pb::NodeInventory| cmd(t, register(inv.clone()));
    let log = vec![
        register(1, &shared),
        register(2, &inventory("n2", 1)),
        submit(3, fraction(600)), // 1
        submit(4, fraction(500)), // 2
        submit(5, fraction(400)), // 3
        submit(6, spec(1)),       // 4: a plain share (250 of a 4-share GPU)
        cmd(10, alloc_milli(1, "n1", "GPU-n1-0", 600)),
        cmd(11, alloc_milli(2, "n1", "GPU-n1-0", 500)), // 600 + 500 > 1000: refused
        cmd(12, alloc_milli(3, "n1", "GPU-n1-0", 400)), // exactly 1000
        cmd(13, alloc(4, "n1", &["GPU-n1-0"])),         // a share left, but no milli
        cmd(14, alloc_milli(2, "n2", "GPU-n2-0", 500)), // not time-sliced
        cmd(15, alloc_milli(4, "n1", "GPU-n1-1", 300)), // not what job 4 asked
        cmd(16, alloc_milli(2, "n1", "GPU-n1-1", 500)),
        cmd(17, alloc(4, "n1", &["GPU-n1-1"])),
        register(18, &shared), // shares and their sizes survive re-registration
        cmd(19, ended(1, "n1", JobState::Completed, 0)),
    ];
    let (sm, outcomes) = run(&log);
    let refused = |i: usize, want: &str| match &outcomes[i] {
        Outcome::Rejected(w) if w.contains(want) => {}
        other => panic!("#{i}: want a refusal containing {want:?}, got {other:?}"),
    };
    refused(
        7,
        "GPU GPU-n1-0 has no share with 500 milli left (1 of 4 shares, 600 milli held)",
    );
    refused(
        9,
        "has no share with 250 milli left (2 of 4 shares, 1000 milli held)",
    );
    refused(
        10,
        "GPU GPU-n2-0 is not time-sliced: a fraction needs a shared GPU",
    );
    refused(
        11,
        "the job asks for 0 GPU milli; the grant on n1 has 300 on 1 GPU(s)",
    );
    for i in [6, 8, 12, 13, 14, 15] {
        assert_eq!(outcomes[i], Outcome::Done, "#{i}");
    }
    let gpus = &sm
        .node("n1")
        .and_then(|n| n.inventory.as_ref())
        .expect("n1")
        .gpus;
    assert_eq!(
        (gpus[0].share_job_ids.clone(), gpus[0].share_milli.clone()),
        (vec![3], vec![400]),
        "job 1's 600 milli came back"
    );
    assert_eq!(
        (gpus[1].share_job_ids.clone(), gpus[1].share_milli.clone()),
        (vec![2, 4], vec![500, 250])
    );
    let view = sm.cluster_view();
    let shares: Vec<_> = view.nodes[0].gpus.iter().map(|g| g.shares).collect();
    let s = |free, milli_free| {
        Some(policies::GpuShares {
            free,
            milli_free,
            replicas: 4,
        })
    };
    assert_eq!(shares, vec![s(3, 600), s(2, 250)]);
    assert_eq!(view.nodes[1].gpus[0].shares, None, "n2 is not shared");
    let (again, _) = run(&log);
    assert_eq!(again.encode(), sm.encode(), "replay is byte-identical");
}

#[test]
fn bad_fraction_specs_are_refused_at_submit() {
    let mut shared = inventory("n1", 1);
    shared.gpus[0].replicas = 2;
    let mut mig = fraction(500);
    mig.mig_profile = "1g.10gb".into();
    mig.mig_per_node = 1;
    let cases = [
        (fraction(1000), "below 1000 milli (one GPU), not 1000"),
        (fraction(2500), "not 2500"),
        (
            pb::JobSpec {
                gpus_per_node: 2,
                ..fraction(500)
            },
            "of one GPU on one node, not 2 GPU(s) on 1 node(s)",
        ),
        (
            pb::JobSpec {
                nodes: 2,
                ntasks: 2,
                ..fraction(500)
            },
            "not 1 GPU(s) on 2 node(s)",
        ),
        (mig, "cannot be combined with MIG slices"),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let log = vec![
            cmd(1, register(shared.clone())),
            cmd(2, Cmd::Submit(pb::SubmitJob { spec: Some(spec) })),
        ];
        let (sm, outcomes) = run(&log);
        match &outcomes[1] {
            Outcome::Rejected(w) if w.contains(want) => {}
            other => panic!("#{i}: want {want:?}, got {other:?}"),
        }
        assert_eq!(sm.jobs().count(), 0, "#{i}: nothing changed");
    }
    // On a cluster without time-sliced GPUs a fraction can never run.
    let log = vec![
        cmd(1, register(inventory("n1", 1))),
        cmd(2, submit(fraction(500))),
    ];
    let (_, outcomes) = run(&log);
    assert!(
        matches!(&outcomes[1], Outcome::Rejected(w) if w.contains("Requested node configuration is not available") && w.contains("has no time-sliced GPU")),
        "{:?}",
        outcomes[1]
    );
}

#[test]
fn bad_packing_in_the_accounts_config_changes_nothing() {
    let good =
        "[[partition]]\nname = \"gpu\"\npacking = \"fgd\"\n[[account]]\nname = \"default\"\n";
    let bad =
        "[[partition]]\nname = \"gpu\"\npacking = \"tetris\"\n[[account]]\nname = \"default\"\n";
    let set = |t, toml: &str| cmd(t, Cmd::SetAccounts(pb::SetAccounts { toml: toml.into() }));
    let (sm, outcomes) = run(&[set(1, good), set(2, bad)]);
    assert_eq!(outcomes[0], Outcome::Done);
    assert!(
        matches!(&outcomes[1], Outcome::Rejected(w) if w.contains("partition gpu: unknown packing \"tetris\"; use one of bestfit, spread, fgd, berth")),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(sm.accounts_toml(), good, "the good config stays in force");
    assert_eq!(
        sm.accounts().policy.packing_for("gpu"),
        policies::packing::Packing::Fgd
    );
}
