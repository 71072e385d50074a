//! Job arrays in the state machine, driven as the leader drives it: submit, then passes
//! of [`plan`] applied as commands. Checks how tasks split off, the throttle and its
//! reason, cancel/hold/update on tasks, the last task taking the array's record, and
//! that the same log replays to the same bytes.

use super::*;
use crate::scheduling::plan;
use berth_proto::v1::command::Cmd;
use std::collections::HashMap;

/// A log being applied, with the time moving one ms per command.
struct Log {
    sm: StateMachine,
    commands: Vec<pb::Command>,
}

impl Log {
    fn new(gpus: u32) -> Log {
        let mut log = Log {
            sm: StateMachine::default(),
            commands: vec![],
        };
        let inventory = pb::NodeInventory {
            cpus: 64,
            memory_mb: 1 << 20,
            ..crate::test_fixtures::inventory("n1", gpus)
        };
        log.apply(Cmd::RegisterNode(pb::RegisterNode {
            inventory: Some(inventory),
        }));
        log
    }

    fn apply(&mut self, c: Cmd) -> Outcome {
        let index = self.commands.len() as u64 + 1;
        let command = pb::Command {
            time_ms: index,
            cmd: Some(c),
        };
        self.commands.push(command.clone());
        self.sm.apply(index, command).0
    }

    /// An array of one-GPU tasks.
    fn submit(&mut self, ranges: &[(u32, u32, u32)], max_running: u32) -> Outcome {
        let spec = pb::JobSpec {
            name: "a".into(),
            array: Some(pb::ArraySpec {
                ranges: ranges
                    .iter()
                    .map(|&(start, end, step)| range(start, end, step))
                    .collect(),
                max_running,
            }),
            ..crate::test_fixtures::spec(1)
        };
        self.apply(Cmd::Submit(pb::SubmitJob { spec: Some(spec) }))
    }

    /// One scheduling pass, its allocation applied; the reasons it gave.
    fn pass(&mut self) -> HashMap<u64, String> {
        let Some(p) = plan(&self.sm, 1, self.commands.len() as u64) else {
            return HashMap::new();
        };
        if let Some(a) = p.allocate {
            assert_eq!(self.apply(Cmd::Allocate(a)), Outcome::Done);
        }
        p.reasons.into_iter().map(|(id, (r, _))| (id, r)).collect()
    }

    fn end(&mut self, id: u64, code: i32) {
        let node = self.sm.job(id).expect("exists").allocations[0].node.clone();
        let finished = pb::JobFinished {
            state: if code == 0 {
                JobState::Completed
            } else {
                JobState::Failed
            } as i32,
            exit_code: code,
            ..Default::default()
        };
        self.apply(Cmd::JobEnded(pb::JobEnded {
            job_id: id,
            node,
            finished: Some(finished),
        }));
    }

    /// (record id, task index or pending tasks, state) of every record of array `array`.
    fn records(&self, array: u64) -> Vec<(u64, String, JobState)> {
        self.sm
            .jobs()
            .filter(|j| j.array_job_id == array)
            .map(|j| {
                let tasks = match j.array_task_id {
                    Some(i) if j.array_pending.is_empty() => i.to_string(),
                    _ => format!("[{}]", tasks_of(j)),
                };
                (j.id, tasks, j.state())
            })
            .collect()
    }

    fn running(&self, array: u64) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .sm
            .jobs()
            .filter(|j| j.array_job_id == array && j.state() == JobState::Running)
            .filter_map(|j| j.array_task_id)
            .collect();
        out.sort_unstable();
        out
    }
}

fn range(start: u32, end: u32, step: u32) -> pb::IndexRange {
    pb::IndexRange { start, end, step }
}

#[test]
fn tasks_split_off_as_they_start_within_the_throttle() {
    use JobState::{Completed, Pending, Running};
    let mut log = Log::new(8);
    assert_eq!(log.submit(&[(0, 9, 1)], 3), Outcome::Submitted(1));
    assert_eq!(log.sm.jobs().count(), 1, "one record at submit");
    let reasons = log.pass();
    assert_eq!(log.running(1), [0, 1, 2], "three tasks start (%3)");
    // The throttle, not the cluster (5 GPUs free), holds the rest back.
    assert_eq!(
        log.pass().get(&1).map(String::as_str),
        Some("JobArrayTaskLimit")
    );
    assert!(
        reasons.get(&1).is_none_or(|r| r != "Resources"),
        "{reasons:?}"
    );
    assert_eq!(
        log.records(1),
        [
            (1, "[3-9]".into(), Pending),
            (2, "0".into(), Running),
            (3, "1".into(), Running),
            (4, "2".into(), Running)
        ]
    );
    log.end(3, 0);
    log.pass();
    assert_eq!(
        log.running(1),
        [0, 2, 3],
        "a task ending makes room for the next"
    );
    // Raising the throttle lets more start; every record shows the new one.
    let update = pb::ArrayUpdate {
        job_id: 1,
        max_running: Some(5),
        ..Default::default()
    };
    assert_eq!(log.apply(Cmd::ArrayUpdate(update)), Outcome::Done);
    log.pass();
    assert_eq!(log.running(1), [0, 2, 3, 4, 5]);
    for j in log.sm.jobs() {
        assert_eq!(
            j.spec.as_ref().unwrap().array.as_ref().unwrap().max_running,
            5
        );
    }
    assert_eq!(log.sm.job(3).unwrap().state(), Completed);
}

#[test]
fn the_last_task_takes_the_arrays_own_record() {
    let mut log = Log::new(8);
    log.submit(&[(1, 1, 1), (3, 3, 1)], 0);
    log.pass();
    let recs = log.records(1);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.iter().all(|r| r.2 == JobState::Running), "{recs:?}");
    let own = log.sm.job(1).unwrap();
    assert!(own.array_pending.is_empty());
    assert!(matches!(own.array_task_id, Some(1 | 3)), "{own:?}");
}

#[test]
fn tasks_are_cancelled_held_and_changed_alone() {
    use JobState::{Cancelled, Pending, Running};
    let mut log = Log::new(2);
    log.submit(&[(0, 7, 1)], 0);
    log.pass();
    assert_eq!(log.running(1), [0, 1]);
    // Pending tasks 3-4 leave the array's record, running task 1 is killed.
    let cancel = |tasks: Vec<pb::IndexRange>| {
        Cmd::Cancel(pb::CancelJob {
            job_id: 1,
            reason: String::new(),
            array_tasks: tasks,
            ..Default::default()
        })
    };
    assert_eq!(
        log.apply(cancel(vec![range(1, 1, 1), range(3, 4, 1)])),
        Outcome::Done
    );
    let own = log.sm.job(1).unwrap();
    assert_eq!(tasks_of(own).to_string(), "2,5-7");
    let task1 = log.sm.jobs().find(|j| j.array_task_id == Some(1)).unwrap();
    assert!(task1.kill_requested, "running task 1 is being killed");
    // Holding one pending task splits it off, held; the rest stay folded.
    let hold = Cmd::Hold(pb::HoldJob {
        job_id: 1,
        hold: true,
        array_tasks: vec![range(6, 6, 1)],
    });
    assert_eq!(log.apply(hold), Outcome::Done);
    let held: Vec<_> = log.sm.jobs().filter(|j| j.held).collect();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].array_task_id, held[0].state()), (Some(6), Pending));
    assert_eq!(tasks_of(log.sm.job(1).unwrap()).to_string(), "2,5,7");
    // A time limit on one pending task splits it off with its own limit.
    let update = pb::ArrayUpdate {
        job_id: 1,
        array_tasks: vec![range(7, 7, 1)],
        time_limit_secs: Some(600),
        ..Default::default()
    };
    assert_eq!(log.apply(Cmd::ArrayUpdate(update)), Outcome::Done);
    let seven = log.sm.jobs().find(|j| j.array_task_id == Some(7)).unwrap();
    assert_eq!(seven.spec.as_ref().unwrap().time_limit_secs, 600);
    assert_eq!(
        log.sm
            .job(1)
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .time_limit_secs,
        0
    );
    // Bad selections change nothing.
    let before = log.sm.encode();
    for bad in [
        cancel(vec![range(5, 3, 1)]),
        cancel(vec![range(0, 0, 0)]),
        Cmd::Cancel(pb::CancelJob {
            job_id: 99,
            reason: String::new(),
            array_tasks: vec![range(1, 1, 1)],
            ..Default::default()
        }),
    ] {
        assert_ne!(log.apply(bad), Outcome::Done);
    }
    assert_eq!(log.sm.encode(), before);
    // Cancelling the array cancels every record, started or not.
    assert_eq!(log.apply(cancel(vec![])), Outcome::Done);
    for j in log.sm.jobs() {
        let stopping = j.state() == Running && j.kill_requested;
        assert!(
            j.state() == Cancelled || stopping,
            "{:?} {:?}",
            j.id,
            j.state()
        );
    }
}

#[test]
fn a_huge_array_costs_one_record_and_few_views() {
    let mut log = Log::new(8);
    assert!(
        matches!(log.submit(&[(0, 99_999, 1)], 0), Outcome::Rejected(e) if e.contains("MaxArraySize=1001"))
    );
    let accounts = Cmd::SetAccounts(pb::SetAccounts {
        toml: "max_array_size = 100001\n[[account]]\nname = \"default\"\n".into(),
    });
    assert_eq!(log.apply(accounts), Outcome::Done);
    assert_eq!(log.submit(&[(0, 99_999, 1)], 0), Outcome::Submitted(1));
    assert_eq!(log.sm.jobs().count(), 1);
    assert_eq!(
        log.commands.len(),
        4,
        "register, refused submit, accounts, one submit"
    );
    let (views, _) = log.sm.pending_with_tasks();
    // 8 free GPUs: at most 8 tasks could start, plus one to carry the reason.
    assert_eq!(views.len(), 9);
    log.pass();
    assert_eq!(log.running(1).len(), 8);
    assert_eq!(log.sm.jobs().count(), 9);
    assert_eq!(tasks_of(log.sm.job(1).unwrap()).to_string(), "8-99999");
}

#[test]
fn array_logs_replay_to_the_same_bytes() {
    let mut log = Log::new(4);
    log.submit(&[(0, 20, 2)], 2);
    log.pass();
    log.end(2, 1);
    log.pass();
    log.apply(Cmd::Hold(pb::HoldJob {
        job_id: 1,
        hold: true,
        array_tasks: vec![range(10, 10, 1)],
    }));
    log.pass();
    let mut again = StateMachine::default();
    for (i, c) in log.commands.iter().enumerate() {
        again.apply(i as u64 + 1, c.clone());
    }
    assert_eq!(again.encode(), log.sm.encode());
}
