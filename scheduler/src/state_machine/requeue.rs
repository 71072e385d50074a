//! `scontrol requeue`: a running job is killed and queued again under its id (once its
//! agent reports it dead, so its resources come back only when nothing of it runs); a
//! finished one is queued again at once. Either way the ended run is kept for accounting
//! (one record per run) and `Restarts=` / `SLURM_RESTART_COUNT` count up, as the
//! preemption requeue does.

use super::{changed, runs, Applied, Outcome, StateMachine};
use berth_proto::v1::{self as pb, JobState};

/// Slurm's refusal for a job submitted with `--no-requeue`.
const NOT_REQUEUABLE: &str = "Requested operation is presently disabled";

impl StateMachine {
    /// Requeues job `id` (see the module docs).
    pub(super) fn requeue_job(&mut self, id: u64, now: u64) -> Applied {
        let Some(job) = self.state.jobs.get(&id) else {
            return (Outcome::NoSuchJob(id), vec![]);
        };
        let spec = job.spec.clone().unwrap_or_default();
        let refused = |why: &str| (Outcome::Rejected(why.into()), vec![]);
        if spec.allocation {
            return refused("an allocation (salloc, srun) cannot be requeued");
        }
        if super::pods::is_kubernetes(job) {
            return refused("a Kubernetes pod is requeued by its controller, not by berth");
        }
        if spec.requeue == Some(false) {
            return refused(NOT_REQUEUABLE);
        }
        if job.array_job_id == id && job.array_task_id.is_none() && !job.array_pending.is_empty() {
            return refused("name the array's tasks (12_3), not the array");
        }
        match job.state() {
            JobState::Pending => refused("Job is pending execution"),
            JobState::Running if job.kill_requested => {
                refused("Job/step already completing or completed")
            }
            JobState::Running if !job.allocations.is_empty() => {
                self.state
                    .jobs
                    .get_mut(&id)
                    .expect("checked above")
                    .requeue_requested = true;
                (
                    Outcome::Done,
                    self.kill_running(id, JobState::Cancelled, "requeued".into()),
                )
            }
            JobState::Running => refused("Job/step already completing or completed"),
            _ => {
                let ended = pb::JobFinished {
                    state: job.state,
                    exit_code: job.exit_code,
                    signal: job.exit_signal,
                    reason: job.reason.clone(),
                    end_time_ms: job.end_time_ms,
                };
                let run = runs::run_of(job, job.state(), &ended, self.applied_index, now);
                self.queue_again(id, run, now);
                (Outcome::Done, vec![changed(id)])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::state_machine::{Effect, Outcome};
    use crate::test_fixtures::{after, alloc, ended, inventory, register, spec, submit};
    use berth_proto::v1::{self as pb, command::Cmd, JobState};

    fn requeue(id: u64) -> Cmd {
        Cmd::Requeue(pb::RequeueJob { job_id: id })
    }

    #[test]
    fn a_running_job_is_killed_then_queued_again_under_its_id() {
        let running = vec![
            register(inventory("n1", 2)),
            submit(spec(1)),
            alloc(1, "n1", &["GPU-n1-0"]),
        ];
        let (sm, outcome, effects) = after([running.clone(), vec![requeue(1)]].concat());
        assert_eq!(outcome, Outcome::Done);
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Kill { job_id: 1, .. })));
        assert_eq!(sm.job(1).unwrap().state(), JobState::Running);
        let (sm, _, _) = after(
            [
                running.clone(),
                vec![requeue(1), ended(1, "n1", JobState::Cancelled, 0)],
            ]
            .concat(),
        );
        let job = sm.job(1).unwrap();
        assert_eq!((job.state(), job.restart_count), (JobState::Pending, 1));
        assert_eq!(job.runs.len(), 1, "the ended run is kept for accounting");
        assert!(job.allocations.is_empty() && !job.requeue_requested);
        let gpu = &sm.node("n1").unwrap().inventory.as_ref().unwrap().gpus[0];
        assert_eq!(gpu.job_id, 0, "its GPU is free again");
        // It runs again, and a second requeue counts two restarts.
        let (sm, _, _) = after(
            [
                running.clone(),
                vec![requeue(1), ended(1, "n1", JobState::Cancelled, 0)],
                vec![
                    alloc(1, "n1", &["GPU-n1-0"]),
                    ended(1, "n1", JobState::Completed, 0),
                ],
                vec![requeue(1)],
            ]
            .concat(),
        );
        let job = sm.job(1).unwrap();
        assert_eq!((job.state(), job.restart_count), (JobState::Pending, 2));
    }

    #[test]
    fn pending_no_requeue_and_allocation_jobs_are_refused_unchanged() {
        let no_requeue = pb::JobSpec {
            requeue: Some(false),
            ..spec(1)
        };
        let cases = [
            (
                vec![register(inventory("n1", 2)), submit(spec(1))],
                "pending execution",
            ),
            (
                vec![
                    register(inventory("n1", 2)),
                    submit(no_requeue),
                    alloc(1, "n1", &["GPU-n1-0"]),
                ],
                "presently disabled",
            ),
            (
                vec![
                    register(inventory("n1", 2)),
                    submit(pb::JobSpec {
                        script: String::new(),
                        allocation: true,
                        ..spec(1)
                    }),
                    alloc(1, "n1", &["GPU-n1-0"]),
                ],
                "allocation",
            ),
        ];
        for (log, want) in cases {
            let (before, _, _) = after(log.clone());
            let (sm, outcome, _) = after([log, vec![requeue(1)]].concat());
            assert!(
                matches!(&outcome, Outcome::Rejected(why) if why.contains(want)),
                "{want}: {outcome:?}"
            );
            assert_eq!(sm.job(1), before.job(1), "{want}: unchanged");
        }
        let (_, outcome, _) = after(vec![requeue(9)]);
        assert_eq!(outcome, Outcome::NoSuchJob(9));
    }
}
