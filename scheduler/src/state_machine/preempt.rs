//! Preemption: a victim stopped for a higher-priority job, noted so the preemptor is not
//! preempted back in turn.

use super::*;

impl StateMachine {
    /// Marks victims and sends them the kill; a victim that is not running (ended
    /// meanwhile) or is already stopping is skipped.
    pub(super) fn preempt(&mut self, c: pb::Preempt, now: u64) -> Applied {
        let mut effects = Vec::new();
        let mut refused = Vec::new();
        for p in c.preemptions {
            let ok = self.state.jobs.get(&p.victim).is_some_and(|j| {
                j.state() == JobState::Running && !j.kill_requested && !j.allocations.is_empty()
            });
            if !ok || p.victim == p.preemptor {
                refused.push(format!("job {}: not running or already stopping", p.victim));
                continue;
            }
            self.note_preemption(p.preemptor, p.victim);
            let job = self.state.jobs.get_mut(&p.victim).expect("checked");
            job.preempting = true;
            job.kill_requested = true;
            job.kill_time_ms = now;
            let spec = job.spec.clone().unwrap_or_default();
            effects.push(Effect::Kill {
                node: job.allocations[0].node.clone(),
                job_id: p.victim,
                state: JobState::Preempted,
                reason: format!("preempted for job {} ({})", p.preemptor, p.cause),
                signal: spec.signal,
                batch_only: spec.signal_batch_only,
                grace_secs: spec.signal_secs,
            });
            effects.push(changed(p.victim));
        }
        if refused.is_empty() {
            (Outcome::Done, effects)
        } else {
            (Outcome::Rejected(refused.join("; ")), effects)
        }
    }

    /// `victim` (and every job that has it as an ancestor) inherits `preemptor` and the
    /// preemptor's ancestors, so no job ever preempts one of its ancestors: preemption
    /// edges never close a cycle.
    pub(super) fn note_preemption(&mut self, preemptor: u64, victim: u64) {
        let mut add: Vec<u64> = self
            .state
            .jobs
            .get(&preemptor)
            .map(|j| j.preempted_for.clone())
            .unwrap_or_default();
        add.push(preemptor);
        let below: Vec<u64> = self
            .state
            .jobs
            .values()
            .filter(|j| j.id == victim || j.preempted_for.contains(&victim))
            .filter(|j| !is_final(j.state()))
            .map(|j| j.id)
            .collect();
        for id in below {
            let chain = &mut self.state.jobs.get_mut(&id).expect("listed").preempted_for;
            for a in &add {
                if !chain.contains(a) && *a != id {
                    chain.push(*a);
                }
            }
            if chain.len() > PREEMPTED_FOR_MAX {
                let extra = chain.len() - PREEMPTED_FOR_MAX;
                chain.drain(..extra);
            }
        }
    }
}
