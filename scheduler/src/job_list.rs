//! Listing jobs for `squeue` and `scontrol show job`: which jobs a
//! [`pb::ListJobsRequest`] matches, what a brief reply leaves out, and paging through the
//! queue so that a reply of 100,000 jobs never sits whole in memory on either side.
//!
//! Pages are cut in job-id order. Each page is read under one short hold of the state's
//! read lock (at most [`SCAN_PER_PAGE_MAX`] jobs examined), so a large listing never keeps
//! the Raft thread from applying for long; the price is that a listing is not one snapshot
//! of the queue (a job that changes between two pages shows as it was when its page was
//! read), which is also what Slurm's `squeue` gives over a busy controller.

use crate::state_machine::StateMachine;
use berth_proto::v1::{self as pb, JobState};

/// Jobs in one page at most.
pub const PAGE_JOBS_MAX: usize = 1000;
/// Jobs examined under one hold of the state lock at most (a filter that matches few jobs
/// still releases the lock this often).
pub const SCAN_PER_PAGE_MAX: usize = 20_000;

/// Whether `job` is one `r` asks for.
pub fn matches(r: &pb::ListJobsRequest, job: &pb::Job) -> bool {
    // An array's id names every task of it too (squeue -j 12).
    (r.job_ids.is_empty()
        || r.job_ids.contains(&job.id)
        || (job.array_job_id != 0 && r.job_ids.contains(&job.array_job_id)))
        && (r.users.is_empty() || job.spec.as_ref().is_some_and(|s| r.users.contains(&s.user)))
        && (r.states.is_empty() || r.states.contains(&job.state))
        && (r.include_finished || matches!(job.state(), JobState::Pending | JobState::Running))
}

/// Drops what `squeue` never prints and what makes a job large: the script (up to 4 MiB),
/// the exported environment, and container mounts and variables.
pub fn make_brief(job: &mut pb::Job) {
    if let Some(spec) = job.spec.as_mut() {
        spec.script = String::new();
        spec.script_bytes.clear();
        spec.env.clear();
        spec.args.clear();
        spec.container_mounts.clear();
        spec.container_env.clear();
    }
    // srun's whole environment travels in each step's spec.
    for step in &mut job.steps {
        if let Some(s) = step.spec.as_mut() {
            s.env.clear();
        }
    }
}

/// One page of the jobs `r` matches with ids above `after`, each passed through `view`
/// (and made brief when `r.brief`), and the id to continue after; `None` when nothing
/// is left.
pub fn page(
    sm: &StateMachine,
    r: &pb::ListJobsRequest,
    after: u64,
    view: impl Fn(&pb::Job) -> Option<pb::Job>,
) -> (Vec<pb::Job>, Option<u64>) {
    let mut jobs = Vec::new();
    // Named ids are looked up one by one, unless one may name array tasks (an array, or
    // an id no longer in the state whose tasks may be): those records have ids of their
    // own above the array's, so the scan runs from the smallest named id on.
    let may_name_tasks = |id: u64| {
        sm.job(id).is_none_or(|j| {
            j.array_job_id != 0 || j.spec.as_ref().is_some_and(|s| s.array.is_some())
        })
    };
    let candidates: Box<dyn Iterator<Item = &pb::Job>> = if r.job_ids.is_empty() {
        Box::new(sm.jobs_after(after))
    } else if r.job_ids.iter().any(|&id| may_name_tasks(id)) {
        let from = r.job_ids.iter().min().map_or(after, |&m| after.max(m - 1));
        Box::new(sm.jobs_after(from))
    } else {
        let mut ids: Vec<u64> = r.job_ids.iter().copied().filter(|&id| id > after).collect();
        ids.sort_unstable();
        ids.dedup();
        Box::new(ids.into_iter().filter_map(|id| sm.job(id)))
    };
    for (examined, job) in candidates.enumerate() {
        if jobs.len() == PAGE_JOBS_MAX || examined == SCAN_PER_PAGE_MAX {
            // More may follow: continue after the last job looked at.
            return (jobs, Some(job.id - 1));
        }
        // `view` is None for a job the caller may not see (PrivateData=jobs).
        let shown = if matches(r, job) { view(job) } else { None };
        if let Some(mut shown) = shown {
            if r.brief {
                make_brief(&mut shown);
            }
            jobs.push(shown);
        }
    }
    (jobs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(jobs: u64) -> StateMachine {
        let mut snap = pb::StateSnapshot::default();
        for id in 1..=jobs {
            let spec = pb::JobSpec {
                user: if id % 2 == 0 { "even" } else { "odd" }.into(),
                script: "#!/bin/sh\n".repeat(100),
                env: [("HOME".to_string(), "/root".to_string())].into(),
                ..Default::default()
            };
            snap.jobs.insert(
                id,
                pb::Job {
                    id,
                    spec: Some(spec),
                    state: JobState::Pending as i32,
                    ..Default::default()
                },
            );
        }
        StateMachine::restore(0, &prost::Message::encode_to_vec(&snap)).unwrap()
    }

    /// Every page in turn, as the server streams them.
    fn all_pages(sm: &StateMachine, r: &pb::ListJobsRequest) -> Vec<Vec<u64>> {
        let mut pages = Vec::new();
        let mut after = 0;
        loop {
            let (jobs, next) = page(sm, r, after, |j| Some(j.clone()));
            pages.push(jobs.iter().map(|j| j.id).collect());
            match next {
                Some(n) => after = n,
                None => return pages,
            }
        }
    }

    #[test]
    fn pages_cover_every_match_once_in_id_order() {
        let sm = state(2500);
        let pages = all_pages(&sm, &pb::ListJobsRequest::default());
        let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
        let ids: Vec<u64> = pages.concat();
        assert_eq!(ids, (1..=2500).collect::<Vec<_>>());
    }

    #[test]
    fn a_sparse_filter_still_releases_the_lock_between_scans() {
        // 50,000 jobs, one user's half: each page examines at most SCAN_PER_PAGE_MAX.
        let sm = state(50_000);
        let r = pb::ListJobsRequest {
            users: vec!["even".into()],
            ..Default::default()
        };
        let pages = all_pages(&sm, &r);
        assert!(pages.iter().all(|p| p.len() <= PAGE_JOBS_MAX));
        let ids: Vec<u64> = pages.concat();
        assert_eq!(ids, (1..=25_000).map(|i| i * 2).collect::<Vec<_>>());
        let none = pb::ListJobsRequest {
            users: vec!["nobody".into()],
            ..Default::default()
        };
        let pages = all_pages(&sm, &none);
        // 50,000 examined, 20,000 per page: three pages, all empty.
        assert_eq!(pages, vec![Vec::<u64>::new(); 3]);
    }

    #[test]
    fn named_ids_are_listed_once_in_order_and_unknown_ones_skipped() {
        let sm = state(10);
        let r = pb::ListJobsRequest {
            job_ids: vec![7, 3, 7, 99, 1],
            ..Default::default()
        };
        assert_eq!(all_pages(&sm, &r), vec![vec![1, 3, 7]]);
    }

    #[test]
    fn brief_pages_carry_no_script_or_environment() {
        let sm = state(3);
        let r = pb::ListJobsRequest {
            brief: true,
            ..Default::default()
        };
        let (jobs, _) = page(&sm, &r, 0, |j| Some(j.clone()));
        for j in &jobs {
            let spec = j.spec.as_ref().unwrap();
            assert!(spec.script.is_empty() && spec.env.is_empty(), "{spec:?}");
            assert_eq!(spec.user, if j.id % 2 == 0 { "even" } else { "odd" });
        }
        let (full, _) = page(&sm, &pb::ListJobsRequest::default(), 0, |j| Some(j.clone()));
        assert!(!full[0].spec.as_ref().unwrap().script.is_empty());
    }
}
