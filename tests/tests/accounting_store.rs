//! The accounting stores behind one trait: the embedded sled store and a real PostgreSQL
//! server (Debian's `postgresql`, installed when missing, started here in a temporary
//! directory) pass the same contract. PostgreSQL going down loses no record: they wait in
//! the durable outbox, across a berthd restart, and are written when it returns. Without
//! root to install PostgreSQL the PostgreSQL tests print why and skip.

use berth_proto::v1::{self as pb, JobState};
use berth_scheduler::accounting::store::{RecordStore, StoreError};
use berth_scheduler::accounting::{postgres_store::PostgresStore, Accounting, AccountingConfig};
use berth_tests::postgres::PgServer;

fn rec(job_id: u64, run: u32, user: &str, end_ms: u64, index: u64) -> pb::JobRecord {
    pb::JobRecord {
        job_id,
        run,
        user: user.into(),
        account: "physics".into(),
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

fn all() -> pb::RecordQuery {
    pb::RecordQuery {
        include_ineligible: true,
        ..Default::default()
    }
}

fn ids(v: &[pb::JobRecord]) -> Vec<(u64, u32)> {
    v.iter().map(|r| (r.job_id, r.run)).collect()
}

/// What every store must do the same way.
fn contract(s: &dyn RecordStore) {
    let mut task = rec(12, 0, "bob", 40_000, 3);
    (task.has_array_task, task.array_job_id, task.array_task_id) = (true, 10, 2);
    s.put(&[
        rec(1, 0, "alice", 10_000, 1),
        rec(1, 1, "alice", 20_000, 2),
        rec(2, 0, "bob", 30_000, 2),
        task,
    ])
    .expect("put");
    // Ordered by job id then run.
    assert_eq!(
        ids(&s.query(&all()).expect("query")),
        vec![(1, 0), (1, 1), (2, 0), (12, 0)]
    );
    let q = |f: &dyn Fn(&mut pb::RecordQuery)| {
        let mut q = all();
        f(&mut q);
        ids(&s.query(&q).expect("query"))
    };
    assert_eq!(q(&|q| q.job_ids = vec![1]), vec![(1, 0), (1, 1)]);
    assert_eq!(
        q(&|q| (q.job_ids, q.array_job_ids) = (vec![10], vec![10])),
        vec![(12, 0)],
        "an array's job id selects its tasks"
    );
    assert_eq!(q(&|q| q.users = vec!["bob".into()]), vec![(2, 0), (12, 0)]);
    assert_eq!(
        q(&|q| (q.users, q.window_start_ms) = (vec!["alice".into()], 15_000)),
        vec![(1, 1)],
        "a run that ended before the window is not in it"
    );
    assert_eq!(q(&|q| q.window_end_ms = 500), Vec::<(u64, u32)>::new());
    assert_eq!(
        q(&|q| q.accounts = vec!["PHYSICS".into()]).len(),
        4,
        "accounts ignore case"
    );
    assert_eq!(q(&|q| q.limit = 2).len(), 2);

    // Idempotent upserts: the same record twice is one; an older version never wins.
    s.put(&[rec(2, 0, "bob", 30_000, 2)]).expect("put");
    s.put(&[rec(2, 0, "carol", 35_000, 1)]).expect("put");
    let two = s
        .query(&pb::RecordQuery {
            job_ids: vec![2],
            ..all()
        })
        .expect("query");
    assert_eq!((two.len(), two[0].user.as_str()), (1, "bob"));
    s.put(&[rec(2, 0, "carol", 35_000, 9)]).expect("put");
    assert_eq!(q(&|q| q.users = vec!["carol".into()]), vec![(2, 0)]);
    assert_eq!(q(&|q| q.users = vec!["bob".into()]), vec![(12, 0)]);

    // Retention: runs that ended before the cutoff go.
    assert_eq!(s.purge_ended_before(25_000).expect("purge"), 2);
    assert_eq!(ids(&s.query(&all()).expect("query")), vec![(2, 0), (12, 0)]);

    // Node events: upsert by (node, start), newest wins; selected by overlap.
    let ev = |node: &str, start: u64, end: u64, index: u64| pb::NodeEvent {
        node: node.into(),
        start_time_ms: start,
        end_time_ms: end,
        cpus: 8,
        gpus: 2,
        recorded_index: index,
        ..Default::default()
    };
    s.put_node_events(&[ev("n1", 1_000, 0, 1), ev("n2", 50_000, 60_000, 2)])
        .expect("events");
    s.put_node_events(&[ev("n1", 1_000, 5_000, 3)])
        .expect("events");
    s.put_node_events(&[ev("n1", 1_000, 0, 2)])
        .expect("events (older)");
    let got = s.node_events(0, 10_000).expect("events");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].node.as_str(), got[0].end_time_ms), ("n1", 5_000));
    assert_eq!(s.node_events(0, u64::MAX).expect("events").len(), 2);
}

#[test]
fn the_sled_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acct = Accounting::open(dir.path(), &AccountingConfig::default()).expect("opens");
    assert_eq!(acct.recorder.store().kind(), "sled");
    contract(acct.recorder.store().as_ref());
}

#[test]
fn a_damaged_sled_store_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("accounting"), b"not a directory").expect("write");
    let err = Accounting::open(&dir.path().join("accounting"), &AccountingConfig::default())
        .err()
        .expect("a file where the store should be");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("is corrupt"), "{err}");
}

fn pg() -> Option<PgServer> {
    match PgServer::start() {
        Ok(pg) => Some(pg),
        Err(why) => {
            println!("SKIPPED: no PostgreSQL server: {why}");
            None
        }
    }
}

#[test]
fn the_postgres_store_keeps_the_same_contract() {
    let Some(pg) = pg() else { return };
    let store = PostgresStore::new(&pg.url()).expect("url parses");
    assert_eq!(store.kind(), "postgres");
    contract(&store);
    // A row that does not decode is a clear error, not a silent gap.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connects");
    c.execute(
        "UPDATE berth_job_records SET record = '\\xdeadbeef' WHERE job_id = 2",
        &[],
    )
    .expect("update");
    let err = store.query(&all()).expect_err("undecodable row");
    assert!(err.to_string().contains("does not decode"), "{err}");
}

#[test]
fn bad_postgres_urls_are_refused_and_an_unreachable_server_is_unavailable() {
    let err = PostgresStore::new("postgres://[::1")
        .err()
        .expect("bad URL");
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    let port = berth_tests::free_port();
    let store =
        PostgresStore::new(&format!("postgres://postgres@127.0.0.1:{port}/db")).expect("parses");
    let err = store
        .put(&[rec(1, 0, "a", 1, 1)])
        .expect_err("nothing listens");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("Problem talking to the database"),
        "{err}"
    );
}

/// A state with `n` ended jobs (the commands berthd's log would hold).
fn state_with_ended_jobs(n: u64) -> berth_scheduler::state_machine::StateMachine {
    use pb::command::Cmd;
    let mut sm = berth_scheduler::state_machine::StateMachine::default();
    let mut index = 0;
    let mut apply = |sm: &mut berth_scheduler::state_machine::StateMachine, t: u64, c: Cmd| {
        index += 1;
        let (outcome, _) = sm.apply(
            index,
            pb::Command {
                time_ms: t,
                cmd: Some(c),
            },
        );
        assert!(
            !matches!(
                outcome,
                berth_scheduler::state_machine::Outcome::Rejected(_)
            ),
            "{outcome:?}"
        );
    };
    let inv = pb::NodeInventory {
        name: "n1".into(),
        partition: "gpu".into(),
        cpus: 8,
        memory_mb: 1024,
        ..Default::default()
    };
    apply(
        &mut sm,
        1,
        Cmd::RegisterNode(pb::RegisterNode {
            inventory: Some(inv),
        }),
    );
    for id in 1..=n {
        let spec = pb::JobSpec {
            name: "j".into(),
            script: "#!/bin/sh\n".into(),
            work_dir: "/tmp".into(),
            partition: "gpu".into(),
            nodes: 1,
            ntasks: 1,
            cpus_per_task: 1,
            user: "alice".into(),
            ..Default::default()
        };
        apply(
            &mut sm,
            id * 10,
            Cmd::Submit(pb::SubmitJob { spec: Some(spec) }),
        );
        let a = pb::Allocation {
            node: "n1".into(),
            cpus: 1,
            ..Default::default()
        };
        apply(
            &mut sm,
            id * 10 + 1,
            Cmd::Allocate(pb::Allocate {
                term: 1,
                placements: vec![pb::Placement {
                    job_id: id,
                    allocations: vec![a],
                    array_task_id: None,
                }],
            }),
        );
        let f = pb::JobFinished {
            state: JobState::Completed as i32,
            ..Default::default()
        };
        apply(
            &mut sm,
            id * 10 + 5,
            Cmd::JobEnded(pb::JobEnded {
                job_id: id,
                node: "n1".into(),
                finished: Some(f),
            }),
        );
    }
    sm
}

#[test]
fn records_wait_durably_while_postgres_is_down_and_are_written_when_it_returns() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = AccountingConfig {
        postgres_url: Some(pg.url()),
        // Old test times must not fall past retention.
        retention_ms: u64::MAX / 2,
    };
    let sm = state_with_ended_jobs(3);
    pg.stop().expect("stop postgres");
    {
        let acct = Accounting::open(dir.path(), &cfg).expect("opens while the database is down");
        acct.recorder.restored(&sm);
        assert_eq!(acct.recorder.queued(), 3);
        let err = acct.recorder.flush().expect_err("database is down");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert_eq!(acct.recorder.queued(), 3, "nothing dropped");
    } // berthd stops while the database is still down
    pg.resume().expect("start postgres again");
    let acct = Accounting::open(dir.path(), &cfg).expect("reopens");
    assert_eq!(acct.recorder.queued(), 3, "the outbox is on disk");
    acct.recorder.flush().expect("database is back");
    assert_eq!(acct.recorder.queued(), 0);
    let got = acct.recorder.store().query(&all()).expect("query");
    assert_eq!(ids(&got), vec![(1, 0), (2, 0), (3, 0)]);
    // Told of the same state again (a restart): nothing to write.
    acct.recorder.restored(&sm);
    assert_eq!(acct.recorder.queued(), 0);
}
