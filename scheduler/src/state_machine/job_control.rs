//! Cancelling and holding one job, and the one kill path every way of stopping a running
//! job shares (scancel, allocation release, requeue).

use super::*;

impl StateMachine {
    /// Cancels job `id` alone; `reason` is empty when the user asked (shown as
    /// "cancelled"). A pending job ends in `end_state` (CANCELLED, or DEADLINE from berth's
    /// deadline check). Whole arrays and array tasks: [`StateMachine::cancel`].
    pub(super) fn cancel_one(
        &mut self,
        id: u64,
        reason: &str,
        end_state: JobState,
        now: u64,
    ) -> Applied {
        let reason = if reason.is_empty() {
            CANCELLED_BY_USER
        } else {
            reason
        };
        let Some(job) = self.state.jobs.get_mut(&id) else {
            return (Outcome::NoSuchJob(id), vec![]);
        };
        match job.state() {
            JobState::Pending => {
                let deadline = end_state == JobState::Deadline;
                job.state = if deadline {
                    end_state
                } else {
                    JobState::Cancelled
                } as i32;
                job.end_time_ms = now;
                job.reason = if deadline { "DeadLine" } else { "None" }.into();
                (Outcome::Done, vec![changed(id)])
            }
            // kubelet, not an agent, runs a pod (and a pod group's reservation runs
            // nothing): cancelling releases the GPUs at once; the leader's pod watch then
            // deletes a user-cancelled pod (`kube_api::pods_to_delete`).
            JobState::Running if pods::is_kubernetes(job) => {
                let finished = pb::JobFinished {
                    state: JobState::Cancelled as i32,
                    reason: reason.into(),
                    ..Default::default()
                };
                self.finish(id, &finished, now);
                (Outcome::Done, vec![changed(id)])
            }
            JobState::Running if !job.kill_requested => {
                // scancel kills every step on every node, not only the batch script.
                (
                    Outcome::Done,
                    self.kill_running(id, JobState::Cancelled, reason.into()),
                )
            }
            _ => (
                Outcome::Rejected("Job/step already completing or completed".into()),
                vec![],
            ),
        }
    }

    /// Starts stopping running job `id` (scancel, a released allocation, a requeue): its
    /// batch node's agent kills it and reports it ended as `state` with `reason`, and
    /// every step on every node is stopped. The job holds its resources until that report.
    pub(super) fn kill_running(&mut self, id: u64, state: JobState, reason: String) -> Vec<Effect> {
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        job.kill_requested = true;
        let kill = Effect::Kill {
            node: job.allocations[0].node.clone(),
            job_id: id,
            state,
            reason,
            signal: 0,
            batch_only: false,
            grace_secs: 0,
        };
        let mut effects = self.stop_steps(id, false);
        effects.extend([kill, changed(id)]);
        effects
    }

    pub(super) fn hold_one(&mut self, id: u64, hold: bool) -> Applied {
        let Some(job) = self.state.jobs.get_mut(&id) else {
            return (Outcome::NoSuchJob(id), vec![]);
        };
        if job.state() != JobState::Pending {
            return (
                Outcome::Rejected("Job is no longer pending execution".into()),
                vec![],
            );
        }
        job.held = hold;
        job.reason = if hold { "JobHeldUser" } else { "None" }.into();
        (Outcome::Done, vec![changed(id)])
    }
}
