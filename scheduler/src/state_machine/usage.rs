//! Usage the agents measured (GPU busy time, memory), checked against what the job holds
//! before it is kept for accounting and charging.

use super::*;

impl StateMachine {
    /// Records an agent's measured GPU use of its jobs (cumulative, one entry per job and
    /// node, replacing that node's previous entry). All or nothing: an entry for an unknown
    /// job, a job not allocated on that node, or a value that is negative, not finite, or
    /// busy time above held time rejects the whole record. Fair share does not read it.
    pub(super) fn record_usage(&mut self, c: pb::JobUsageRecord) -> Applied {
        for u in &c.jobs {
            if let Err(why) = self.check_usage(&c.node, u) {
                return (Outcome::Rejected(why), vec![]);
            }
        }
        let mut effects = Vec::new();
        for mut u in c.jobs {
            u.node = c.node.clone();
            let job = self.state.jobs.get_mut(&u.job_id).expect("checked above");
            job.usage.retain(|x| x.node != c.node);
            let id = u.job_id;
            job.usage.push(u);
            job.usage.sort_by(|a, b| a.node.cmp(&b.node));
            // A late report changes an ended job's accounting record: say so (running
            // jobs change at every heartbeat and would only wake the scheduler).
            if is_final(job.state()) {
                effects.push(changed(id));
            }
        }
        (Outcome::Done, effects)
    }

    pub(super) fn check_usage(&self, node: &str, u: &pb::JobUsage) -> Result<(), String> {
        let Some(job) = self.state.jobs.get(&u.job_id) else {
            return Err(format!("usage of unknown job {}", u.job_id));
        };
        if !job.allocations.iter().any(|a| a.node == node) {
            return Err(format!("job {} has no allocation on {node}", u.job_id));
        }
        let values = [u.gpu_seconds, u.gpu_busy_seconds, u.gpu_util_percent];
        if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!(
                "job {}: usage values must be finite and ≥ 0, got {values:?}",
                u.job_id
            ));
        }
        // Rounding in the agent's sums may put busy a hair above held.
        if u.gpu_busy_seconds > u.gpu_seconds * (1.0 + 1e-9) + 1e-9 {
            return Err(format!(
                "job {}: busy GPU-seconds {} above held GPU-seconds {}",
                u.job_id, u.gpu_busy_seconds, u.gpu_seconds
            ));
        }
        Ok(())
    }
}
