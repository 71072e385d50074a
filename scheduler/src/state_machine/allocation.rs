//! Allocations without a batch script (`salloc`, and `srun` outside any job): the job is
//! placed and started like any other, but what its first node's agent runs is a holder
//! process, and the job ends when its client releases it with the exit of the command it
//! ran there. Ending it through the same kill as `scancel` (with COMPLETED or FAILED in
//! place of CANCELLED) keeps one path for freeing nodes: the resources come back only once
//! the agent reports the holder and every step stopped, never while tasks may still run.

use super::{changed, Applied, Outcome, StateMachine};
use berth_proto::v1::{self as pb, JobState};

impl StateMachine {
    /// Ends allocation `id` with `exit` (its client's command's status): a running one is
    /// stopped and then recorded COMPLETED (exit 0) or FAILED; a pending one is cancelled.
    pub(super) fn release_allocation(
        &mut self,
        id: u64,
        exit: pb::AllocationExit,
        now: u64,
    ) -> Applied {
        let Some(job) = self.state.jobs.get_mut(&id) else {
            return (Outcome::NoSuchJob(id), vec![]);
        };
        if !job.spec.as_ref().is_some_and(|s| s.allocation) {
            return (
                Outcome::Rejected(format!(
                    "job {id} is not an allocation (salloc or srun); scancel ends it"
                )),
                vec![],
            );
        }
        match job.state() {
            JobState::Pending => {
                job.state = JobState::Cancelled as i32;
                job.end_time_ms = now;
                job.reason = "None".into();
                (Outcome::Done, vec![changed(id)])
            }
            JobState::Running if !job.kill_requested => {
                let (state, reason) = match (exit.exit_code, exit.signal) {
                    (0, 0) => (JobState::Completed, String::new()),
                    (_, 0) => (JobState::Failed, "NonZeroExitCode".to_string()),
                    (_, sig) => (JobState::Failed, format!("RaisedSignal:{sig}")),
                };
                job.released = Some(exit);
                (Outcome::Done, self.kill_running(id, state, reason))
            }
            _ => (
                Outcome::Rejected("Job/step already completing or completed".into()),
                vec![],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::state_machine::{Effect, Outcome};
    use crate::test_fixtures::{after, alloc, ended, inventory, register, spec, submit};
    use berth_proto::v1::{self as pb, command::Cmd, JobState};

    fn allocation_spec() -> pb::JobSpec {
        pb::JobSpec {
            script: String::new(),
            allocation: true,
            ..spec(1)
        }
    }

    fn release(id: u64, exit_code: i32) -> Cmd {
        Cmd::Cancel(pb::CancelJob {
            job_id: id,
            release: Some(pb::AllocationExit {
                exit_code,
                signal: 0,
            }),
            ..Default::default()
        })
    }

    #[test]
    fn a_released_allocation_ends_with_its_clients_exit_once_the_holder_stopped() {
        let running = vec![
            register(inventory("n1", 2)),
            submit(allocation_spec()),
            alloc(1, "n1", &["GPU-n1-0"]),
        ];
        let (sm, outcome, effects) = after([running.clone(), vec![release(1, 3)]].concat());
        assert_eq!(outcome, Outcome::Done);
        let kill = effects.iter().find_map(|e| match e {
            Effect::Kill { state, reason, .. } => Some((*state, reason.clone())),
            _ => None,
        });
        assert_eq!(kill, Some((JobState::Failed, "NonZeroExitCode".into())));
        // Nodes stay held until the agent reports the holder gone.
        assert_eq!(sm.job(1).unwrap().state(), JobState::Running);
        let (sm, _, _) = after(
            [
                running.clone(),
                vec![release(1, 3), ended(1, "n1", JobState::Failed, 0)],
            ]
            .concat(),
        );
        let job = sm.job(1).unwrap();
        assert_eq!(job.state(), JobState::Failed);
        assert_eq!((job.exit_code, job.exit_signal), (3, 0));
        // A second release is refused.
        let (_, outcome, _) = after(
            [
                running.clone(),
                vec![release(1, 0), ended(1, "n1", JobState::Completed, 0)],
                vec![release(1, 0)],
            ]
            .concat(),
        );
        assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
        // A time limit reached before the release stays a TIMEOUT.
        let (sm, _, _) = after(
            [
                running,
                vec![release(1, 0), ended(1, "n1", JobState::Timeout, 0)],
            ]
            .concat(),
        );
        assert_eq!(sm.job(1).unwrap().state(), JobState::Timeout);
    }

    #[test]
    fn a_batch_job_cannot_be_released_and_an_allocation_carries_no_script() {
        let (sm, outcome, _) = after(vec![
            register(inventory("n1", 2)),
            submit(spec(1)),
            alloc(1, "n1", &["GPU-n1-0"]),
            release(1, 0),
        ]);
        assert!(
            matches!(&outcome, Outcome::Rejected(why) if why.contains("not an allocation")),
            "{outcome:?}"
        );
        assert_eq!(sm.job(1).unwrap().state(), JobState::Running);
        let with_script = pb::JobSpec {
            allocation: true,
            ..spec(1)
        };
        let (_, outcome, _) = after(vec![register(inventory("n1", 2)), submit(with_script)]);
        assert!(
            matches!(&outcome, Outcome::Rejected(why) if why.contains("no batch script")),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_pending_allocation_released_is_cancelled() {
        let (sm, outcome, _) = after(vec![
            register(inventory("n1", 2)),
            submit(allocation_spec()),
            release(1, 0),
        ]);
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(sm.job(1).unwrap().state(), JobState::Cancelled);
    }
}
