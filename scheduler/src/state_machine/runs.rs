//! A job's earlier runs: when a job is queued again (requeue, preemption), the run that
//! ended is kept in `Job.runs` so accounting can rebuild one record per run from the state
//! alone (see [`crate::accounting::record`], which reads them).

use berth_proto::v1::{self as pb, JobState};

/// Most earlier runs kept per job (a bound on state size; a job requeued more often keeps
/// its latest runs, and the dropped ones are in the store already).
pub const RUNS_MAX: usize = 32;

/// The run that just ended, as the state machine is about to requeue `job` (called with
/// the job's state before the reset).
pub fn run_of(
    job: &pb::Job,
    state: JobState,
    f: &pb::JobFinished,
    index: u64,
    now: u64,
) -> pb::JobRun {
    let end = if f.end_time_ms > 0 {
        f.end_time_ms.clamp(job.start_time_ms.min(now), now)
    } else {
        now
    };
    pb::JobRun {
        eligible_time_ms: job.eligible_time_ms,
        start_time_ms: job.start_time_ms,
        end_time_ms: end,
        state: state as i32,
        exit_code: f.exit_code,
        exit_signal: f.signal,
        reason: f.reason.clone(),
        allocations: job.allocations.clone(),
        usage: job.usage.clone(),
        ended_index: index,
    }
}

/// Appends `run` to `job.runs`, keeping the latest [`RUNS_MAX`].
pub fn push_run(job: &mut pb::Job, run: pb::JobRun) {
    job.runs.push(run);
    if job.runs.len() > RUNS_MAX {
        let extra = job.runs.len() - RUNS_MAX;
        job.runs.drain(..extra);
    }
}
