//! Job dependencies (`sbatch --dependency=afterok:ID[:ID...],...`): checked at submit,
//! evaluated against the replicated job states, so every replica agrees on which pending
//! jobs may start.
//!
//! Every condition must hold (Slurm's `,`). A condition on a job that ended so that it can
//! never hold (`afterok` on a failed job, `afternotok` on a completed one) makes the job
//! wait with `DependencyNeverSatisfied`, as Slurm does without `kill_invalid_depend`; the
//! user cancels it.
//!
//! Job arrays: a condition on an array's id is on every task of it (`afterok:12` waits for
//! all of them), `afterok:12_3` on one task, and `aftercorr:12` makes each task of the
//! dependent array wait for the task with the same index in array 12. `singleton` waits
//! until no earlier job of the same name and user is pending or running. The caller
//! resolves what each condition refers to ([`Target`]); this module only judges.

use super::is_final;
use berth_proto::v1::{self as pb, JobState};

/// Where a job's dependencies stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyStatus {
    /// No condition left unmet: the job may be scheduled.
    Satisfied,
    /// Some condition may still be met: squeue reason `Dependency`.
    Waiting,
    /// Some condition can never be met: squeue reason `DependencyNeverSatisfied`.
    Never,
}

impl DependencyStatus {
    /// Slurm's pending reason for a job that waits on its dependencies.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            DependencyStatus::Satisfied => None,
            DependencyStatus::Waiting => Some("Dependency"),
            DependencyStatus::Never => Some("DependencyNeverSatisfied"),
        }
    }
}

const KINDS: [&str; 6] = [
    "after",
    "afterany",
    "afterok",
    "afternotok",
    "aftercorr",
    "singleton",
];

/// What one condition refers to, as the state stands.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A job, or one task of an array that has its own record.
    Job(&'a pb::Job),
    /// A task still pending inside its array's record.
    PendingTask,
    /// A whole array.
    Array(ArrayTally),
    /// Nothing (a cancelled pending task, or a job that never existed).
    Missing,
}

/// Where the tasks of one array stand (pending ones inside the array's record included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArrayTally {
    /// Tasks not started yet.
    pub pending: u64,
    /// Tasks running now.
    pub running: u64,
    /// Tasks that ended other than COMPLETED with exit code 0.
    pub not_ok: u64,
}

/// Most conditions one job may carry (the CLI's limit too).
pub const CONDITIONS_MAX: usize = 64;

/// Checks a submitted job's conditions: known types, at most [`CONDITIONS_MAX`], and every
/// job id one that exists (`next_id` is the id the new job will get).
///
/// # Errors
/// Slurm's "Job dependency problem" with the first bad condition.
pub fn validate(
    deps: &[pb::DependencyCondition],
    exists: impl Fn(u64) -> bool,
) -> Result<(), String> {
    let bad = |why: String| Err(format!("Job dependency problem: {why}"));
    if deps.len() > CONDITIONS_MAX {
        return bad(format!(
            "{} conditions, at most {CONDITIONS_MAX}",
            deps.len()
        ));
    }
    for d in deps {
        if !KINDS.contains(&d.kind.as_str()) {
            return bad(format!("unknown dependency type {:?}", d.kind));
        }
        if d.kind == "singleton" {
            continue;
        }
        if !exists(d.job_id) {
            return bad(format!("job {} does not exist", d.job_id));
        }
    }
    Ok(())
}

/// Whether `target` meets a condition of type `kind` (`aftercorr` once resolved to its
/// task, and an array's tally, judged as `afterok`).
pub fn condition(kind: &str, target: Target<'_>) -> DependencyStatus {
    let (started, ended, ok) = match target {
        Target::Missing => (true, true, false),
        Target::PendingTask => (false, false, false),
        Target::Job(dep) => {
            let state = dep.state();
            let ok = state == JobState::Completed && dep.exit_code == 0 && dep.exit_signal == 0;
            (state != JobState::Pending, is_final(state), ok)
        }
        Target::Array(t) => {
            let ended = t.pending == 0 && t.running == 0;
            if t.not_ok > 0 && kind == "afterok" {
                return DependencyStatus::Never;
            }
            (t.pending == 0, ended, ended && t.not_ok == 0)
        }
    };
    if matches!(target, Target::Missing) && kind == "after" {
        return DependencyStatus::Never;
    }
    judge(kind, started, ended, ok)
}

fn judge(kind: &str, started: bool, ended: bool, ok: bool) -> DependencyStatus {
    let met = match kind {
        "after" => started,
        "afterany" => ended,
        "afterok" | "aftercorr" => ok,
        "afternotok" => ended && !ok,
        _ => return DependencyStatus::Never,
    };
    let impossible = match kind {
        "afterok" | "aftercorr" => ended && !ok,
        "afternotok" => ok,
        _ => false,
    };
    if met {
        DependencyStatus::Satisfied
    } else if impossible {
        DependencyStatus::Never
    } else {
        DependencyStatus::Waiting
    }
}

/// The status of all of `deps` (any condition never met wins, then any still waiting);
/// `judge` says where one condition stands.
pub fn status(
    deps: &[pb::DependencyCondition],
    judge: impl Fn(&pb::DependencyCondition) -> DependencyStatus,
) -> DependencyStatus {
    let mut out = DependencyStatus::Satisfied;
    for d in deps {
        match judge(d) {
            DependencyStatus::Never => return DependencyStatus::Never,
            DependencyStatus::Waiting => out = DependencyStatus::Waiting,
            DependencyStatus::Satisfied => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, exit_code: i32) -> pb::Job {
        pb::Job {
            id: 1,
            state: state as i32,
            exit_code,
            ..Default::default()
        }
    }

    #[test]
    fn conditions_follow_slurms_meanings() {
        use DependencyStatus::{Never, Satisfied as Yes, Waiting as Wait};
        use JobState::*;
        // (kind, dependency's state, exit code, want)
        let cases = [
            ("after", Pending, 0, Wait),
            ("after", Running, 0, Yes),
            ("after", Cancelled, 0, Yes),
            ("afterany", Running, 0, Wait),
            ("afterany", Failed, 1, Yes),
            ("afterany", Completed, 0, Yes),
            ("afterok", Running, 0, Wait),
            ("afterok", Completed, 0, Yes),
            ("afterok", Failed, 1, Never),
            ("afterok", Cancelled, 0, Never),
            ("afterok", Timeout, 0, Never),
            ("afternotok", Pending, 0, Wait),
            ("afternotok", Failed, 3, Yes),
            ("afternotok", NodeFail, 0, Yes),
            ("afternotok", Completed, 0, Never),
        ];
        for (i, (kind, state, code, want)) in cases.into_iter().enumerate() {
            let j = job(state, code);
            let got = condition(kind, Target::Job(&j));
            if got != want {
                panic!("#{i} {kind} on {state:?}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn all_conditions_must_hold_and_a_lost_one_wins() {
        let done = job(JobState::Completed, 0);
        let failed = job(JobState::Failed, 1);
        let running = job(JobState::Running, 0);
        let c = |kind: &str, job_id| pb::DependencyCondition {
            kind: kind.into(),
            job_id,
            array_task_id: None,
        };
        let jobs = |d: &pb::DependencyCondition| {
            let target = match d.job_id {
                1 => Target::Job(&done),
                2 => Target::Job(&failed),
                3 => Target::Job(&running),
                _ => Target::Missing,
            };
            condition(&d.kind, target)
        };
        let cases = [
            (vec![], DependencyStatus::Satisfied),
            (
                vec![c("afterok", 1), c("afternotok", 2)],
                DependencyStatus::Satisfied,
            ),
            (
                vec![c("afterok", 1), c("afterany", 3)],
                DependencyStatus::Waiting,
            ),
            (
                vec![c("afterany", 3), c("afterok", 2)],
                DependencyStatus::Never,
            ),
            (vec![c("afterok", 9)], DependencyStatus::Never),
        ];
        for (i, (deps, want)) in cases.into_iter().enumerate() {
            let got = status(&deps, jobs);
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn arrays_are_judged_on_every_task() {
        use DependencyStatus::{Never, Satisfied as Yes, Waiting as Wait};
        let t = |pending, running, not_ok| ArrayTally {
            pending,
            running,
            not_ok,
        };
        // (kind, tally, want)
        let cases = [
            ("afterok", t(3, 1, 0), Wait),
            ("afterok", t(0, 0, 0), Yes),
            ("afterok", t(2, 0, 1), Never),
            ("afterany", t(0, 1, 0), Wait),
            ("afterany", t(0, 0, 2), Yes),
            ("after", t(1, 1, 0), Wait),
            ("after", t(0, 1, 0), Yes),
            ("afternotok", t(0, 0, 0), Never),
            ("afternotok", t(0, 0, 1), Yes),
            ("afternotok", t(0, 1, 1), Wait),
        ];
        for (i, (kind, tally, want)) in cases.into_iter().enumerate() {
            let got = condition(kind, Target::Array(tally));
            if got != want {
                panic!("#{i} {kind} on {tally:?}: want {want:?}, got {got:?}");
            }
        }
        assert_eq!(condition("afterok", Target::PendingTask), Wait);
        assert_eq!(condition("aftercorr", Target::Missing), Never);
        assert_eq!(condition("afterany", Target::Missing), Yes);
    }

    #[test]
    fn bad_conditions_are_refused_at_submit() {
        let c = |kind: &str, job_id| pb::DependencyCondition {
            kind: kind.into(),
            job_id,
            array_task_id: None,
        };
        let exists = |id: u64| id == 1;
        assert!(validate(&[c("afterok", 1), c("singleton", 0)], exists).is_ok());
        let cases = [
            (vec![c("afterok", 2)], "job 2 does not exist"),
            (vec![c("afterburstbuffer", 1)], "unknown dependency type"),
            (vec![c("afterok", 1); 65], "at most 64"),
        ];
        for (i, (deps, want)) in cases.into_iter().enumerate() {
            match validate(&deps, exists) {
                Err(e) if e.starts_with("Job dependency problem") && e.contains(want) => {}
                other => panic!("#{i}: want {want:?}, got {other:?}"),
            }
        }
    }
}
