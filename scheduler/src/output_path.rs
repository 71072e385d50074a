//! Expands sbatch's `--output`/`--error` filename patterns once the job's node is known.
//!
//! Done in the state machine at allocation (deterministically, from the command's data) so
//! that `scontrol show job` and the agent agree on one path. Supported: `%j` job id, `%A`
//! the array's id (the job id outside arrays), `%a` the array task index, `%x` job name,
//! `%u` user, `%N` first node, `%%` a literal `%`; other `%` sequences are kept as written,
//! as Slurm does for ones it does not know. A relative result is joined to the job's
//! working directory.

use berth_proto::v1::{Job, JobSpec};

/// Slurm's `%a` for a job that is no array task (NO_VAL - 1).
pub const NO_TASK: u32 = 4_294_967_294;

/// The absolute path of job `job` for `pattern` (`default` when empty) on `node`.
pub fn resolve_job(job: &Job, node: &str, pattern: &str, default: &str) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let ids = Ids {
        job: job.id,
        array: if job.array_job_id != 0 {
            job.array_job_id
        } else {
            job.id
        },
        task: job.array_task_id.unwrap_or(NO_TASK),
    };
    expand(&spec, ids, node, pattern, default)
}

/// The absolute path for `pattern` (or `default` when the pattern is empty).
pub fn resolve(spec: &JobSpec, job_id: u64, node: &str, pattern: &str, default: &str) -> String {
    let ids = Ids {
        job: job_id,
        array: job_id,
        task: NO_TASK,
    };
    expand(spec, ids, node, pattern, default)
}

#[derive(Clone, Copy)]
struct Ids {
    job: u64,
    array: u64,
    task: u32,
}

fn expand(spec: &JobSpec, ids: Ids, node: &str, pattern: &str, default: &str) -> String {
    let pattern = if pattern.is_empty() { default } else { pattern };
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('j') => out.push_str(&ids.job.to_string()),
            Some('A') => out.push_str(&ids.array.to_string()),
            Some('a') => out.push_str(&ids.task.to_string()),
            Some('x') => out.push_str(&spec.name),
            Some('u') => out.push_str(&spec.user),
            Some('N') => out.push_str(node),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    if out.starts_with('/') {
        out
    } else {
        format!("{}/{}", spec.work_dir.trim_end_matches('/'), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand() {
        let spec = JobSpec {
            name: "train".into(),
            user: "ana".into(),
            work_dir: "/home/ana/".into(),
            ..Default::default()
        };
        let cases = [
            ("", "/home/ana/slurm-42.out"),
            ("%x-%j.log", "/home/ana/train-42.log"),
            ("/scratch/%u/%N/%A.out", "/scratch/ana/node7/42.out"),
            ("100%%-%q", "/home/ana/100%-%q"),
            ("trail%", "/home/ana/trail%"),
        ];
        for (i, (pattern, want)) in cases.iter().enumerate() {
            let got = resolve(&spec, 42, "node7", pattern, "slurm-%j.out");
            if got != *want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn array_tasks_name_their_array_and_index() {
        let job = Job {
            id: 118,
            array_job_id: 117,
            array_task_id: Some(1),
            spec: Some(JobSpec {
                work_dir: "/w".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = resolve_job(&job, "n1", "o-%A-%a-%j.txt", "");
        assert_eq!(got, "/w/o-117-1-118.txt");
        assert_eq!(
            resolve_job(&job, "n1", "", "slurm-%A_%a.out"),
            "/w/slurm-117_1.out"
        );
    }
}
