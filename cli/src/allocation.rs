//! Interactive allocations, shared by `salloc` and by `srun` outside any job: submit a job
//! that carries no batch script (berthd's agent holds it with a sleeping process), wait
//! until it runs, hand its `SLURM_*` variables to what runs in it, and release it with
//! that command's exit, so the job ends COMPLETED or FAILED as Slurm records an
//! interactive allocation, not CANCELLED.
//!
//! The messages are Slurm's: `salloc: Granted job allocation 12`, `srun: job 12 queued
//! and waiting for resources`, `salloc: Relinquishing job allocation 12`.

use crate::client;
use crate::client::Channel;
use anyhow::{anyhow, bail};
use berth_proto::v1::{self as pb, job_service_client::JobServiceClient, JobState};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_stream::StreamExt as _;

/// How long a submit may wait to start before the tool says it is queued (Slurm says so
/// when the job cannot start at once; berth places within milliseconds when it can).
const QUEUED_NOTICE: Duration = Duration::from_secs(1);

/// A running allocation.
pub struct Granted {
    /// The job as it started.
    pub job: pb::Job,
    /// Watching it: the tool learns from here when it ends under it (time limit, scancel).
    pub watch: tonic::Streaming<pb::Job>,
}

/// Submits `spec` (an allocation: `JobSpec.allocation`) and waits until it runs. `tool`
/// prefixes the messages (`salloc`, `srun`); `quiet` keeps them back. Ctrl-C or SIGTERM
/// while it waits cancels it.
///
/// # Errors
/// The submit refused (with berthd's reason), or the job ended before it started.
pub async fn obtain(
    jobs: &mut JobServiceClient<Channel>,
    spec: pb::JobSpec,
    tool: &str,
    quiet: bool,
) -> anyhow::Result<Granted> {
    let resp = client::retried(&*jobs, spec.clone(), |mut jobs, spec| async move {
        jobs.submit(pb::SubmitRequest { spec: Some(spec) }).await
    })
    .await
    .map_err(|s| anyhow!("Job submit/allocate failed: {}", s.message()))?;
    let id = resp.into_inner().job_id;
    let mut watch = jobs
        .watch(pb::WatchRequest { job_ids: vec![id] })
        .await
        .map_err(|s| anyhow!("{}", s.message()))?
        .into_inner();
    let say = |line: String| {
        if !quiet {
            eprintln!("{tool}: {line}");
        }
    };
    if tool == "salloc" {
        say(format!("Pending job allocation {id}"));
    }
    let notice = tokio::time::sleep(QUEUED_NOTICE);
    tokio::pin!(notice);
    let mut queued = false;
    let mut signals = Signals::new()?;
    loop {
        tokio::select! {
            job = watch.next() => {
                let job = match job {
                    Some(Ok(job)) => job,
                    Some(Err(s)) => bail!("watching job {id}: {}", s.message()),
                    None => bail!("berthd closed the watch of job {id}"),
                };
                match job.state() {
                    JobState::Pending => {}
                    JobState::Running => {
                        if queued {
                            say(format!("job {id} has been allocated resources"));
                        }
                        if tool == "salloc" {
                            say(format!("Granted job allocation {id}"));
                        }
                        return Ok(Granted { job, watch });
                    }
                    _ => bail!("Job allocation {id} has been revoked: {:?} {}", job.state(), job.reason),
                }
            }
            () = &mut notice, if !queued => {
                queued = true;
                say(format!("job {id} queued and waiting for resources"));
            }
            () = signals.next() => {
                let _ = release(jobs, id, pb::AllocationExit { exit_code: 1, signal: 0 }).await;
                bail!("Job allocation {id} has been revoked.");
            }
        }
    }
}

/// Ends allocation `id` with `exit`.
///
/// # Errors
/// berthd's refusal (the job already ended, or it is not an allocation).
pub async fn release(
    jobs: &mut JobServiceClient<Channel>,
    id: u64,
    exit: pb::AllocationExit,
) -> anyhow::Result<()> {
    jobs.cancel(pb::CancelRequest {
        job_id: id,
        reason: String::new(),
        array_tasks: Vec::new(),
        release: Some(exit),
    })
    .await
    .map_err(|s| anyhow!("{}", s.message()))?;
    Ok(())
}

/// The variables a command run in allocation `job` sees (salloc's command, the tasks of
/// srun's step): the job's `SLURM_*` variables, as its batch script would see them, less
/// what belongs to one node or one task.
pub fn variables(job: &pb::Job) -> BTreeMap<String, String> {
    let first = job
        .allocations
        .first()
        .map(|a| a.node.clone())
        .unwrap_or_default();
    let mut vars: BTreeMap<String, String> = berth_agent::job_env::build(job, &first, &[])
        .into_iter()
        .filter(|(k, _)| k.starts_with("SLURM_"))
        .collect();
    for k in [
        "SLURM_NODEID",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_CPUS_ON_NODE",
        "SLURM_JOB_GPUS",
        "SLURM_GPUS_ON_NODE",
    ] {
        vars.remove(k);
    }
    vars
}

/// SIGINT and SIGTERM, while an allocation is pending.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
