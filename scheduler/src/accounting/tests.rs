//! Accounting from the log: replaying a log into an empty store gives the same records,
//! a fresh replica restoring the final state records the same runs, replays add
//! nothing, retention purges, and the selection, charge and price rules hold.

use super::recorder::Recorder;
use super::sled_store::SledStore;
use super::store::{self, RecordStore};
use super::{parse_retention, usage, AccountingMetrics};
use crate::accounts::charge::{self, ChargeMode};
use crate::state_machine::StateMachine;
use berth_proto::v1::{self as pb, command::Cmd, JobState};
use prost::Message as _;
use std::sync::Arc;

use crate::test_fixtures::{cmd, inventory};

fn spec(user: &str, account: &str, gpus: u32) -> pb::JobSpec {
    pb::JobSpec {
        name: format!("{user}-job"),
        cpus_per_task: 2,
        user: user.into(),
        account: account.into(),
        ..crate::test_fixtures::spec(gpus)
    }
}

fn alloc(job_id: u64, node: &str, uuids: &[&str]) -> Cmd {
    Cmd::Allocate(pb::Allocate {
        term: 1,
        placements: vec![pb::Placement {
            job_id,
            allocations: vec![pb::Allocation {
                node: node.into(),
                gpu_uuids: uuids.iter().map(|s| s.to_string()).collect(),
                cpus: 2,
                ..Default::default()
            }],
            array_task_id: None,
        }],
    })
}

fn ended(job_id: u64, state: JobState, code: i32) -> Cmd {
    Cmd::JobEnded(pb::JobEnded {
        job_id,
        node: "n1".into(),
        finished: Some(pb::JobFinished {
            state: state as i32,
            exit_code: code,
            ..Default::default()
        }),
    })
}

fn usage_of(job_id: u64, held: f64, busy: f64) -> Cmd {
    Cmd::JobUsage(pb::JobUsageRecord {
        node: "n1".into(),
        jobs: vec![pb::JobUsage {
            job_id,
            gpu_seconds: held,
            gpu_busy_seconds: busy,
            gpu_memory_max_mb: 2048,
            measured_ms: 1,
            ..Default::default()
        }],
    })
}

const ACCOUNTS: &str = r#"
default_account = "alice"
[[account]]
name = "alice"
[[account]]
name = "bob"
"#;

/// Jobs that complete, fail, get cancelled while pending, are preempted and requeued
/// (two runs) and get a late usage report after they ended.
fn log() -> Vec<pb::Command> {
    let mut victim = spec("bob", "bob", 2);
    victim.qos = "development".into();
    let mut boss = spec("alice", "alice", 2);
    boss.qos = "production-inference".into();
    vec![
        cmd(
            1_000,
            Cmd::SetAccounts(pb::SetAccounts {
                toml: ACCOUNTS.into(),
            }),
        ),
        cmd(
            2_000,
            Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inventory("n1", 2)),
            }),
        ),
        cmd(
            3_000,
            Cmd::Submit(pb::SubmitJob {
                spec: Some(spec("alice", "alice", 1)),
            }),
        ),
        cmd(10_000, alloc(1, "n1", &["GPU-n1-0"])),
        cmd(70_000, usage_of(1, 60.0, 30.0)),
        cmd(70_000, ended(1, JobState::Completed, 0)),
        cmd(80_000, usage_of(1, 60.0, 45.0)), // late: after the end
        cmd(
            81_000,
            Cmd::Submit(pb::SubmitJob {
                spec: Some(spec("alice", "alice", 1)),
            }),
        ),
        cmd(
            82_000,
            Cmd::Cancel(pb::CancelJob {
                job_id: 2,
                reason: String::new(),
                array_tasks: vec![],
                ..Default::default()
            }),
        ),
        cmd(90_000, Cmd::Submit(pb::SubmitJob { spec: Some(victim) })),
        cmd(100_000, alloc(3, "n1", &["GPU-n1-0", "GPU-n1-1"])),
        cmd(110_000, Cmd::Submit(pb::SubmitJob { spec: Some(boss) })),
        cmd(
            120_000,
            Cmd::Preempt(pb::Preempt {
                term: 1,
                preemptions: vec![pb::Preemption {
                    victim: 3,
                    preemptor: 4,
                    cause: "priority".into(),
                }],
            }),
        ),
        cmd(121_000, ended(3, JobState::Preempted, 0)),
        cmd(130_000, alloc(4, "n1", &["GPU-n1-0", "GPU-n1-1"])),
        cmd(190_000, ended(4, JobState::Failed, 3)),
        cmd(200_000, alloc(3, "n1", &["GPU-n1-0", "GPU-n1-1"])),
        cmd(260_000, ended(3, JobState::Completed, 0)),
    ]
}

fn entry(index: u64, c: &pb::Command) -> raft::eraftpb::Entry {
    raft::eraftpb::Entry {
        index,
        term: 1,
        data: c.encode_to_vec().into(),
        ..Default::default()
    }
}

/// A recorder over a fresh sled store in `dir`.
fn recorder(dir: &std::path::Path) -> (Recorder, Arc<SledStore>) {
    let db = sled::open(dir).expect("sled opens");
    let store = Arc::new(SledStore::open(&db, "test").expect("store opens"));
    let r = Recorder::new(
        &db,
        store.clone(),
        super::RETENTION_DEFAULT_MS * 100,
        AccountingMetrics::new(),
    )
    .expect("recorder opens");
    (r, store)
}

/// Applies `log` to a fresh state machine, telling `r` of every entry as the Raft loop
/// does; returns the final state.
fn replay(log: &[pb::Command], r: &Recorder) -> StateMachine {
    let mut sm = StateMachine::default();
    for (i, c) in log.iter().enumerate() {
        let e = entry(i as u64 + 1, c);
        let (_, effects) = sm.apply(e.index, c.clone());
        r.applied(&sm, &e, &effects);
    }
    r.flush().expect("sled store writes");
    sm
}

fn everything(s: &dyn RecordStore) -> Vec<pb::JobRecord> {
    s.query(&pb::RecordQuery {
        include_ineligible: true,
        ..Default::default()
    })
    .expect("store reads")
}

fn without_index(mut v: Vec<pb::JobRecord>) -> Vec<pb::JobRecord> {
    for r in &mut v {
        r.recorded_index = 0;
    }
    v
}

#[test]
fn the_log_records_every_run_and_replay_into_an_empty_store_gives_the_same_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, store_a) = recorder(&dir.path().join("a"));
    let sm = replay(&log(), &a);
    let got = everything(store_a.as_ref());
    let runs: Vec<(u64, u32, JobState, bool)> = got
        .iter()
        .map(|r| (r.job_id, r.run, r.state(), r.requeued))
        .collect();
    assert_eq!(
        runs,
        vec![
            (1, 0, JobState::Completed, false),
            (2, 0, JobState::Cancelled, false),
            (3, 0, JobState::Preempted, true),
            (3, 1, JobState::Completed, false),
            (4, 0, JobState::Failed, false),
        ]
    );
    // The late report after job 1 ended changed its record: busy 45 of 60 s.
    assert_eq!(got[0].gpu_busy_seconds, 45.0);
    assert_eq!(got[0].gpu_seconds, 60.0, "1 GPU from 10 s to 70 s");
    assert_eq!(
        (got[2].start_time_ms, got[2].end_time_ms),
        (100_000, 121_000)
    );
    assert_eq!(got[2].gpu_seconds, 2.0 * 21.0);
    assert_eq!(got[4].exit_code, 3);
    assert_eq!(got[1].start_time_ms, 0, "cancelled while pending");

    // Replay of the same log into an empty store: the same records, byte for byte.
    let (b, store_b) = recorder(&dir.path().join("b"));
    replay(&log(), &b);
    assert_eq!(everything(store_b.as_ref()), got);

    // Replaying again into a store that has them queues nothing and changes nothing.
    replay(&log(), &a);
    assert_eq!(a.queued(), 0);
    assert_eq!(everything(store_a.as_ref()), got);

    // A fresh replica that only gets the final state (a snapshot) records the same runs.
    let (c, store_c) = recorder(&dir.path().join("c"));
    c.restored(&sm);
    c.flush().expect("writes");
    assert_eq!(
        without_index(everything(store_c.as_ref())),
        without_index(got)
    );
}

#[test]
fn the_outbox_survives_a_restart_and_its_records_reach_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let (r, _) = recorder(&path);
    let mut sm = StateMachine::default();
    for (i, c) in log().iter().enumerate() {
        let e = entry(i as u64 + 1, c);
        let (_, effects) = sm.apply(e.index, c.clone());
        r.applied(&sm, &e, &effects);
    }
    assert_eq!(r.queued(), 5, "five runs waiting, none written yet");
    drop(r);
    // berthd restarts before the writer ran: the outbox is on disk.
    let (r, store) = recorder(&path);
    assert_eq!(r.queued(), 5);
    r.flush().expect("writes");
    assert_eq!(r.queued(), 0);
    assert_eq!(everything(store.as_ref()).len(), 5);
}

fn rec(job_id: u64, run: u32, user: &str, end_ms: u64, index: u64) -> pb::JobRecord {
    pb::JobRecord {
        job_id,
        run,
        user: user.into(),
        account: "acct".into(),
        partition: "gpu".into(),
        submit_time_ms: 1_000,
        eligible_time_ms: 1_000,
        start_time_ms: 2_000,
        end_time_ms: end_ms,
        state: JobState::Completed as i32,
        recorded_index: index,
        ..Default::default()
    }
}

#[test]
fn the_store_keeps_the_newest_version_and_purges_past_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, store) = recorder(dir.path());
    store.put(&[rec(1, 0, "u", 10_000, 5)]).expect("put");
    let mut older = rec(1, 0, "v", 20_000, 4);
    older.name = "older".into();
    store.put(&[older]).expect("put");
    let got = everything(store.as_ref());
    assert_eq!(
        (got.len(), got[0].user.as_str()),
        (1, "u"),
        "a lower index never wins"
    );
    store.put(&[rec(1, 0, "v", 30_000, 6)]).expect("put");
    let by_user = |u: &str| {
        store
            .query(&pb::RecordQuery {
                users: vec![u.into()],
                ..Default::default()
            })
            .expect("query")
    };
    assert!(by_user("u").is_empty(), "the old user index entry is gone");
    assert_eq!(by_user("v").len(), 1);
    store
        .put(&[rec(2, 0, "v", 50_000, 7), rec(3, 0, "w", 90_000, 8)])
        .expect("put");
    assert_eq!(store.purge_ended_before(60_000).expect("purge"), 2);
    let left: Vec<u64> = everything(store.as_ref())
        .iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(left, vec![3]);
}

#[test]
fn selection_follows_sacct_windows_and_states() {
    let r = rec(1, 0, "u", 10_000, 1);
    let q = |start: u64, end: u64, states: &[JobState]| pb::RecordQuery {
        window_start_ms: start,
        window_end_ms: end,
        states: states.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    };
    let cases: &[(pb::RecordQuery, bool)] = &[
        (q(0, 0, &[]), true),
        (q(10_001, 0, &[]), false), // ended before the window
        (q(0, 999, &[]), false),    // eligible after it
        (q(5_000, 6_000, &[JobState::Running]), true),
        (q(5_000, 6_000, &[JobState::Completed]), false), // did not end inside
        (q(9_000, 11_000, &[JobState::Completed]), true),
        (q(9_000, 11_000, &[JobState::Failed]), false),
        (q(1_500, 1_600, &[JobState::Pending]), true),
        (q(2_500, 2_600, &[JobState::Pending]), false),
    ];
    for (i, (query, want)) in cases.iter().enumerate() {
        assert_eq!(store::matches(query, &r), *want, "#{i}: {query:?}");
    }
    let mut task = rec(7, 0, "u", 10_000, 1);
    (task.has_array_task, task.array_job_id, task.array_task_id) = (true, 5, 2);
    let by_array = pb::RecordQuery {
        job_ids: vec![5],
        array_job_ids: vec![5],
        ..Default::default()
    };
    assert!(
        store::matches(&by_array, &task),
        "-j 5 selects the array's tasks"
    );
    let never = pb::JobRecord {
        eligible_time_ms: 0,
        ..rec(8, 0, "u", 0, 1)
    };
    assert!(!store::matches(&q(0, 0, &[]), &never));
}

#[test]
fn charge_modes_and_prices_parse_and_bad_ones_are_refused() {
    assert_eq!(charge::parse_charge("allocated"), Ok(ChargeMode::Allocated));
    assert_eq!(charge::parse_charge("Measured"), Ok(ChargeMode::Measured));
    assert_eq!(
        charge::parse_charge("max(measured, 0.25)"),
        Ok(ChargeMode::MaxMeasured(0.25))
    );
    for bad in [
        "",
        "busy",
        "max(measured)",
        "max(measured, 2)",
        "max(measured, x)",
        "max(a, b)",
    ] {
        let e = charge::parse_charge(bad).expect_err(bad);
        assert!(e.contains("expected \"allocated\""), "{bad}: {e}");
    }
    let u = |held: f64, busy: f64| {
        vec![pb::JobUsage {
            gpu_seconds: held,
            gpu_busy_seconds: busy,
            ..Default::default()
        }]
    };
    assert_eq!(
        ChargeMode::Allocated.gpu_factor(&u(100.0, 10.0), false),
        1.0
    );
    assert_eq!(ChargeMode::Measured.gpu_factor(&u(100.0, 10.0), false), 0.1);
    assert_eq!(
        ChargeMode::MaxMeasured(0.25).gpu_factor(&u(100.0, 10.0), false),
        0.25
    );
    assert_eq!(
        ChargeMode::Measured.gpu_factor(&u(100.0, 10.0), true),
        1.0,
        "MIG: as allocated"
    );
    assert_eq!(
        ChargeMode::Measured.gpu_factor(&[], false),
        1.0,
        "nothing measured"
    );
}

#[test]
fn bad_price_tables_and_accounts_files_change_nothing() {
    let cases: &[(&str, &str)] = &[
        (
            "[prices]\ngpu_hour = { h100 = -1.0 }\n",
            "prices.gpu_hour.h100 = -1",
        ),
        ("[prices]\ncpu_hour = -0.5\n", "prices.cpu_hour = -0.5"),
        (
            "[prices]\ngpu_hour = { h100 = nan }\n",
            "a price must be a number",
        ),
        ("[prices]\ngpu_hour = \"cheap\"\n", "invalid type"),
        ("[prices]\ndisk_hour = 1.0\n", "unknown field `disk_hour`"),
        ("charge = \"busy\"\n", "charge = \"busy\""),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        // Top-level keys before the account tables, tables after them.
        let text = if toml.starts_with('[') {
            format!("{ACCOUNTS}{toml}")
        } else {
            format!("{toml}{ACCOUNTS}")
        };
        match crate::accounts::parse(&text) {
            Err(e) => assert!(e.to_string().contains(want), "#{i}: want {want:?}, got {e}"),
            Ok(_) => panic!("#{i}: {toml:?} accepted"),
        }
        // Through the log: refused and the state unchanged.
        let mut sm = StateMachine::default();
        let before = sm.encode();
        let (outcome, _) = sm.apply(1, cmd(1, Cmd::SetAccounts(pb::SetAccounts { toml: text })));
        assert!(
            matches!(outcome, crate::state_machine::Outcome::Rejected(_)),
            "#{i}: {outcome:?}"
        );
        assert_eq!(sm.encode(), before, "#{i}");
    }
    let good = format!(
        "charge = \"max(measured, 0.5)\"\n{ACCOUNTS}[prices]\ncurrency = \"EUR\"\ncpu_hour = 0.02\ngpu_hour = {{ h100 = 2.5, default = 1.0 }}\nmig_hour = {{ \"1g.10gb\" = 0.4 }}\n"
    );
    let cfg = crate::accounts::parse(&good).expect("valid");
    assert_eq!(cfg.charge, ChargeMode::MaxMeasured(0.5));
    assert_eq!(cfg.prices.gpu("h100"), 2.5);
    assert_eq!(cfg.prices.gpu("a100"), 1.0, "default");
    assert_eq!(cfg.prices.mig("1g.10gb", "h100", 1), 0.4);
    assert_eq!(
        cfg.prices.mig("3g.40gb", "h100", 4),
        1.25,
        "half an H100: 4 of 8 slices"
    );
}

#[test]
fn usage_counts_the_part_inside_the_window_and_prices_it() {
    let mut r = rec(1, 0, "u", 3_602_000, 1); // 2 GPUs from 2 s to 3602 s: one hour
    r.alloc = Some(pb::Tres {
        cpus: 4,
        gpus: 2,
        gpu_type: "h100".into(),
        nodes: 1,
        ..Default::default()
    });
    r.gpu_equivalents = 2.0;
    r.gpu_busy_seconds = 3600.0; // half of 7200 held
    r.usage = vec![pb::JobUsage {
        gpu_seconds: 7200.0,
        gpu_busy_seconds: 3600.0,
        ..Default::default()
    }];
    let prices = charge::PriceTable {
        currency: "USD".into(),
        gpu_hour: [("h100".to_string(), 2.0)].into(),
        cpu_hour: 0.1,
        ..Default::default()
    };
    let q = |start: u64, end: u64, by: &str| pb::UsageQuery {
        start_ms: start,
        end_ms: end,
        by: by.into(),
        ..Default::default()
    };
    let rows = usage::summarize(
        &[r.clone()],
        &q(0, 10_000_000, "account"),
        &prices,
        ChargeMode::Allocated,
        0,
    )
    .expect("ok");
    assert_eq!(rows.len(), 1);
    // 2 GPU-hours × 2.0 + 4 CPU-hours × 0.1 = 4.4.
    assert!((rows[0].cost - 4.4).abs() < 1e-9, "{}", rows[0].cost);
    assert_eq!(rows[0].gpu_seconds, 7200.0);
    // Half the window: half of everything; measured charging halves the GPU part.
    let half = usage::summarize(
        &[r.clone()],
        &q(1_802_000, 10_000_000, "user"),
        &prices,
        ChargeMode::Measured,
        0,
    )
    .expect("ok");
    assert_eq!(half[0].gpu_busy_seconds, 1800.0);
    // 1 GPU-hour × 0.5 busy × 2.0 + 2 CPU-hours × 0.1 = 1.2.
    assert!((half[0].cost - 1.2).abs() < 1e-9, "{}", half[0].cost);
    assert_eq!(usage::group_key(&r, "gpu-type"), Ok("h100".into()));
    assert!(usage::group_key(&r, "team")
        .expect_err("unknown")
        .contains("invalid --by"));
    let (cpu, gpu) = usage::planned(&[r], 0, 10_000_000, 0);
    assert_eq!(
        (cpu, gpu),
        (0.0, 0.0),
        "no requested size recorded: nothing planned"
    );
}

#[test]
fn retention_parses_like_purge_job_after_and_bad_values_are_refused() {
    let day = 24 * 3_600_000u64;
    assert_eq!(parse_retention("12months"), Ok(360 * day));
    assert_eq!(parse_retention("365days"), Ok(365 * day));
    assert_eq!(parse_retention("720hours"), Ok(30 * day));
    assert_eq!(
        parse_retention("6"),
        Ok(180 * day),
        "a bare number is months"
    );
    for bad in ["", "0days", "ten days", "5weeks", "-3days"] {
        assert!(parse_retention(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(super::RETENTION_DEFAULT_MS, 365 * day);
}

/// `sacct -j 12` while array 12 runs: the tasks that split off into their own records are
/// answered from the state too, not only once their ended runs reach the store.
#[test]
fn a_live_arrays_running_tasks_are_answered_by_its_array_id() {
    let mut sm = StateMachine::default();
    let mut index = 0;
    let mut apply = |sm: &mut StateMachine, c: Cmd| {
        index += 1;
        sm.apply(index, cmd(index, c));
        index
    };
    apply(
        &mut sm,
        Cmd::RegisterNode(pb::RegisterNode {
            inventory: Some(pb::NodeInventory {
                cpus: 64,
                ..inventory("n1", 2)
            }),
        }),
    );
    let array = pb::JobSpec {
        array: Some(pb::ArraySpec {
            ranges: vec![pb::IndexRange {
                start: 0,
                end: 2,
                step: 1,
            }],
            max_running: 0,
        }),
        ..spec("alice", "alice", 1)
    };
    apply(&mut sm, Cmd::Submit(pb::SubmitJob { spec: Some(array) }));
    let id = sm.jobs().next().expect("submitted").id;
    let at = sm.applied_index();
    let pass = crate::scheduling::plan(&sm, 1, at).expect("a pass");
    apply(
        &mut sm,
        Cmd::Allocate(pass.allocate.expect("two tasks start")),
    );
    let q = pb::RecordQuery {
        job_ids: vec![id],
        array_job_ids: vec![id],
        include_ineligible: true,
        ..Default::default()
    };
    let records = super::service::live_records(&sm, &q);
    let running: Vec<u32> = records
        .iter()
        .filter(|r| r.has_array_task && r.state() == JobState::Running)
        .map(|r| r.array_task_id)
        .collect();
    assert_eq!(
        running.len(),
        2,
        "both running tasks are answered: {records:?}"
    );
}
