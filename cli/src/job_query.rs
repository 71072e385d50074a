//! Fetching jobs for the commands that show them: by job and array-task reference
//! (`scontrol show job 12_3`), or the running ones (steps live only in running jobs).

use crate::client::status_text;
use crate::opt::job_id::JobRef;
use berth_proto::v1::{self as pb, JobState};

/// The records `scontrol show job` prints for `refs` (every job when empty): a job or a
/// task record alone; an array's id, its own record and every task record; tasks,
/// the ones named (a pending task shown as its array's record with its own index).
pub async fn show_jobs(
    mut c: pb::job_service_client::JobServiceClient<berth_auth::channel::AuthChannel>,
    refs: &[JobRef],
) -> anyhow::Result<Vec<pb::Job>> {
    let list =
        |c: &mut pb::job_service_client::JobServiceClient<berth_auth::channel::AuthChannel>,
         job_ids: Vec<u64>| {
            let mut c = c.clone();
            async move {
                let req = pb::ListJobsRequest {
                    job_ids,
                    include_finished: true,
                    ..Default::default()
                };
                c.list(req)
                    .await
                    .map(|r| r.into_inner().jobs)
                    .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))
            }
        };
    if refs.is_empty() {
        return list(&mut c, vec![]).await;
    }
    let mut out = Vec::new();
    for r in refs {
        // Get first: it reads the leader's committed state, so a job submitted just now
        // is found on any replica.
        let job = c
            .get(pb::GetJobRequest { job_id: r.job_id })
            .await
            .map_err(|s| anyhow::anyhow!("slurm_load_jobs error: {}", status_text(&s)))?
            .into_inner();
        if job.array_job_id != job.id && r.tasks.is_none() {
            out.push(job);
            continue;
        }
        let all = list(&mut c, vec![r.job_id]).await?;
        let shown = crate::array_view::select(&all, std::slice::from_ref(r), false);
        if shown.is_empty() {
            anyhow::bail!("Job {r} not found");
        }
        out.extend(shown);
    }
    Ok(out)
}

/// The running jobs (steps live only in running jobs), brief, of `job_ids` and `users`
/// when given.
pub async fn running_jobs(
    mut c: pb::job_service_client::JobServiceClient<berth_auth::channel::AuthChannel>,
    job_ids: Vec<u64>,
    users: Vec<String>,
) -> anyhow::Result<Vec<pb::Job>> {
    let req = pb::ListJobsRequest {
        job_ids,
        users,
        states: vec![JobState::Running as i32],
        include_finished: false,
        brief: true,
    };
    let mut pages = c
        .list_pages(req)
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
        .into_inner();
    let mut jobs = Vec::new();
    while let Some(page) = pages
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
    {
        jobs.extend(page.jobs);
    }
    Ok(jobs)
}
