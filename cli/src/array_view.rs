//! How job arrays look to the Slurm tools: ids (`12_3`, `12_[4-15%4]`), the records
//! behind them, and selecting tasks by id.
//!
//! berthd keeps an array as one record holding its pending tasks (`array_pending`) plus
//! one record per task that started (or was held or changed alone). squeue folds the
//! pending ones into one line, as Slurm does, and `squeue -r` or an id naming tasks
//! (`squeue -j 12_3`) unfolds them: [`unfold`] turns the array's record into one record
//! per pending task, each looking like a task record (its index in `array_task_id`, no
//! pending list), so every view below prints it like any task.

use crate::opt::job_id::JobRef;
use berth_proto::v1::Job;
use berth_scheduler::state_machine::task_set::TaskSet;

/// The pending tasks a record holds (empty for a job or a task record).
pub fn pending_tasks(job: &Job) -> TaskSet {
    TaskSet::from_ranges(&job.array_pending).unwrap_or_default()
}

/// The throttle of the record's array (`%N`; 0: none).
pub fn throttle(job: &Job) -> u32 {
    job.spec
        .as_ref()
        .and_then(|s| s.array.as_ref())
        .map_or(0, |a| a.max_running)
}

/// The tasks as Slurm prints them after `ArrayTaskId=` and inside `12_[...]`:
/// `4-15%4` for pending tasks with their throttle, `3` for one task; `None` for a job
/// that is not part of an array.
pub fn task_text(job: &Job) -> Option<String> {
    if job.array_job_id == 0 {
        return None;
    }
    if !job.array_pending.is_empty() {
        let set = pending_tasks(job);
        return Some(match throttle(job) {
            0 => set.to_string(),
            n => format!("{set}%{n}"),
        });
    }
    Some(
        job.array_task_id
            .map_or_else(String::new, |i| i.to_string()),
    )
}

/// squeue's `%i`: `12` for a job, `12_3` for a task, `12_[4-15%4]` for pending tasks
/// folded (brackets even around one pending task, as Slurm prints `68_[1000]`).
pub fn display_id(job: &Job) -> String {
    match task_text(job) {
        None => job.id.to_string(),
        Some(t) if !job.array_pending.is_empty() => format!("{}_[{t}]", job.array_job_id),
        Some(t) => format!("{}_{t}", job.array_job_id),
    }
}

/// One record per pending task of an array's record, in index order (`keep` chooses
/// which); any other record is returned as it is.
pub fn unfold(job: &Job, keep: impl Fn(u32) -> bool) -> Vec<Job> {
    if job.array_pending.is_empty() {
        return vec![job.clone()];
    }
    pending_tasks(job)
        .iter()
        .filter(|i| keep(*i))
        .map(|i| {
            let mut task = job.clone();
            task.array_pending.clear();
            task.array_task_id = Some(i);
            task
        })
        .collect()
}

/// Whether `job` is what `r` names: the job, any record of the array, or (with tasks)
/// a record of one of those tasks.
pub fn matches(job: &Job, r: &JobRef) -> bool {
    let in_array = job.id == r.job_id || (job.array_job_id != 0 && job.array_job_id == r.job_id);
    match &r.tasks {
        None => in_array,
        Some(tasks) => {
            job.array_job_id == r.job_id
                && (job
                    .array_task_id
                    .is_some_and(|i| job.array_pending.is_empty() && tasks.contains(i))
                    || !pending_tasks(job).intersection(tasks).is_empty())
        }
    }
}

/// The records `refs` name among `jobs` (all of them when `refs` is empty), pending
/// tasks unfolded when `unfold_all` or when an id names tasks (so `12_3` shows only task
/// 3). Order: as `jobs`, each array's unfolded tasks in index order.
pub fn select(jobs: &[Job], refs: &[JobRef], unfold_all: bool) -> Vec<Job> {
    let mut out = Vec::new();
    for job in jobs {
        let named: Vec<&JobRef> = refs.iter().filter(|r| matches(job, r)).collect();
        if !refs.is_empty() && named.is_empty() {
            continue;
        }
        let whole = refs.is_empty() || named.iter().any(|r| r.tasks.is_none());
        if whole && !unfold_all {
            out.push(job.clone());
            continue;
        }
        let wanted = |i: u32| {
            whole
                || named
                    .iter()
                    .any(|r| r.tasks.as_ref().is_some_and(|t| t.contains(i)))
        };
        out.extend(unfold(job, wanted));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opt::job_id::parse_job_list;
    use berth_proto::v1::{ArraySpec, IndexRange, JobSpec, JobState};

    /// Array 12 of tasks 0-15%4: tasks 0-3 started (ids 12-15: 12 itself is task 3, the
    /// last one in Slurm's order does not matter here) and 4-15 pending in record 12.
    fn array() -> Vec<Job> {
        let spec = JobSpec {
            array: Some(ArraySpec {
                ranges: vec![IndexRange {
                    start: 0,
                    end: 15,
                    step: 1,
                }],
                max_running: 4,
            }),
            ..Default::default()
        };
        let mut own = Job {
            id: 12,
            spec: Some(spec),
            state: JobState::Pending as i32,
            array_job_id: 12,
            array_pending: vec![IndexRange {
                start: 4,
                end: 15,
                step: 1,
            }],
            ..Default::default()
        };
        let mut jobs = vec![];
        for (k, id) in [20u64, 21, 22, 23].iter().enumerate() {
            let mut t = own.clone();
            t.id = *id;
            t.state = JobState::Running as i32;
            t.array_pending.clear();
            t.array_task_id = Some(k as u32);
            jobs.push(t);
        }
        own.array_task_id = None;
        jobs.insert(0, own);
        jobs.push(Job {
            id: 30,
            ..Default::default()
        });
        jobs
    }

    fn ids(jobs: &[Job]) -> Vec<String> {
        jobs.iter().map(display_id).collect()
    }

    #[test]
    fn pending_tasks_fold_and_started_ones_stand_alone() {
        let jobs = array();
        assert_eq!(
            ids(&select(&jobs, &[], false)),
            ["12_[4-15%4]", "12_0", "12_1", "12_2", "12_3", "30"]
        );
        let unfolded = select(&jobs, &[], true);
        assert_eq!(unfolded.len(), 12 + 4 + 1);
        assert_eq!(display_id(&unfolded[0]), "12_4");
        assert_eq!(display_id(&unfolded[11]), "12_15");
        assert_eq!(task_text(&unfolded[0]).as_deref(), Some("4"));
        assert_eq!(task_text(&jobs[5]), None);
    }

    #[test]
    fn ids_select_arrays_tasks_and_jobs() {
        let jobs = array();
        let sel = |s: &str| ids(&select(&jobs, &parse_job_list(&[s]).unwrap(), false));
        assert_eq!(sel("12"), ["12_[4-15%4]", "12_0", "12_1", "12_2", "12_3"]);
        assert_eq!(sel("12_5"), ["12_5"]);
        assert_eq!(sel("12_1"), ["12_1"]);
        assert_eq!(sel("12_[2-5]"), ["12_4", "12_5", "12_2", "12_3"]);
        assert_eq!(sel("21"), ["12_1"], "a task's own record id names it");
        assert_eq!(sel("30,12_0"), ["12_0", "30"]);
        assert!(sel("12_99").is_empty());
        assert!(sel("31").is_empty());
    }
}
