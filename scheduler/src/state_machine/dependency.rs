//! Job dependencies (`sbatch --dependency=afterok:ID[:ID...],...`): checked at submit,
//! evaluated against the replicated job states, so every replica agrees on which pending
//! jobs may start.
//!
//! Every condition must hold (Slurm's `,`). A condition on a job that ended so that it can
//! never hold (`afterok` on a failed job, `afternotok` on a completed one) makes the job
//! wait with `DependencyNeverSatisfied`, as Slurm does without `kill_invalid_depend`; the
//! user cancels it.

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

const KINDS: [&str; 4] = ["after", "afterany", "afterok", "afternotok"];

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
        if !exists(d.job_id) {
            return bad(format!("job {} does not exist", d.job_id));
        }
    }
    Ok(())
}

/// Whether job `dep` (its current state) meets a condition of type `kind`.
fn condition(kind: &str, dep: Option<&pb::Job>) -> DependencyStatus {
    let Some(dep) = dep else {
        return DependencyStatus::Never;
    };
    let state = dep.state();
    let ended = is_final(state);
    let ok = state == JobState::Completed && dep.exit_code == 0 && dep.exit_signal == 0;
    let met = match kind {
        "after" => state != JobState::Pending,
        "afterany" => ended,
        "afterok" => ok,
        "afternotok" => ended && !ok,
        _ => return DependencyStatus::Never,
    };
    let impossible = match kind {
        "afterok" => ended && !ok,
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

/// The status of all of `deps` (any condition never met wins, then any still waiting).
pub fn status<'a>(
    deps: &[pb::DependencyCondition],
    job: impl Fn(u64) -> Option<&'a pb::Job>,
) -> DependencyStatus {
    let mut out = DependencyStatus::Satisfied;
    for d in deps {
        match condition(&d.kind, job(d.job_id)) {
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
            let deps = [pb::DependencyCondition {
                kind: kind.into(),
                job_id: 1,
            }];
            let got = status(&deps, |_| Some(&j));
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
        };
        let jobs = |id: u64| match id {
            1 => Some(&done),
            2 => Some(&failed),
            3 => Some(&running),
            _ => None,
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
    fn bad_conditions_are_refused_at_submit() {
        let c = |kind: &str, job_id| pb::DependencyCondition {
            kind: kind.into(),
            job_id,
        };
        let exists = |id: u64| id == 1;
        assert!(validate(&[c("afterok", 1)], exists).is_ok());
        let cases = [
            (vec![c("afterok", 2)], "job 2 does not exist"),
            (vec![c("aftercorr", 1)], "unknown dependency type"),
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
