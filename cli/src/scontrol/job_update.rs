//! `scontrol update JobId=12[_3] ArrayTaskThrottle=N TimeLimit=T`: the job changes berth
//! takes on job arrays and their tasks, parsed from Slurm's `Key=Value` words.
//!
//! Keys are case-insensitive, as in Slurm. A key Slurm has but berth does not change yet
//! is refused by name, never ignored: an update that silently did half of what was asked
//! is worse than an error.

use crate::duration::parse_time_limit;
use crate::opt::job_id::{parse_job_ref, JobRef};

/// A parsed job update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    /// `JobId=`: the array, or tasks of it.
    pub job: JobRef,
    /// `ArrayTaskThrottle=N` (0: no limit).
    pub max_running: Option<u32>,
    /// `TimeLimit=`, seconds (0: unlimited).
    pub time_limit_secs: Option<u64>,
}

/// Whether the words after `scontrol update` are a job update (they name `JobId=`).
pub fn is_job_update(words: &[&str]) -> bool {
    words.iter().any(|w| {
        w.split_once('=')
            .is_some_and(|(k, _)| k.eq_ignore_ascii_case("jobid"))
    })
}

/// Parses the words after `scontrol update`.
///
/// # Errors
/// A message naming the word that is malformed, repeated, unknown or unsupported, or
/// saying that nothing would change.
pub fn parse_job_update(words: &[&str]) -> Result<JobUpdate, String> {
    let (mut job, mut max_running, mut time_limit_secs) = (None, None, None);
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("invalid update word {w:?} (want Key=Value)"));
        };
        if v.is_empty() {
            return Err(format!("{k}= needs a value"));
        }
        let twice = || format!("{k}= given twice");
        match k.to_ascii_lowercase().as_str() {
            "jobid" => {
                if job.replace(parse_job_ref(v)?).is_some() {
                    return Err(twice());
                }
            }
            "arraytaskthrottle" => {
                let n = v
                    .parse::<u32>()
                    .ok()
                    .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("Invalid ArrayTaskThrottle value: {v}"))?;
                if max_running.replace(n).is_some() {
                    return Err(twice());
                }
            }
            "timelimit" => {
                let secs = parse_time_limit(v)
                    .map_err(|e| format!("Invalid TimeLimit value: {v} ({e})"))?;
                if time_limit_secs.replace(secs).is_some() {
                    return Err(twice());
                }
            }
            _ => {
                return Err(format!(
                    "update of {k}= is not supported by berth yet (JobId= takes \
                     ArrayTaskThrottle= and TimeLimit=)"
                ))
            }
        }
    }
    let job = job.ok_or("update needs JobId=")?;
    if max_running.is_none() && time_limit_secs.is_none() {
        return Err("nothing to update (give ArrayTaskThrottle= or TimeLimit=)".into());
    }
    if max_running.is_some() && job.tasks.is_some() {
        return Err(format!(
            "ArrayTaskThrottle= applies to a whole array: give JobId={}",
            job.job_id
        ));
    }
    Ok(JobUpdate {
        job,
        max_running,
        time_limit_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_updates_parse() {
        let u = parse_job_update(&["JobId=12", "ArrayTaskThrottle=2"]).unwrap();
        assert_eq!(
            (u.job.to_string(), u.max_running, u.time_limit_secs),
            ("12".into(), Some(2), None)
        );
        let u = parse_job_update(&["jobid=12_[1-3]", "timelimit=1:30:00"]).unwrap();
        assert_eq!(
            (u.job.to_string(), u.time_limit_secs),
            ("12_[1-3]".into(), Some(5400))
        );
        let u = parse_job_update(&["TimeLimit=10", "JOBID=7_3"]).unwrap();
        assert_eq!(u.time_limit_secs, Some(600));
        assert!(is_job_update(&["JobId=1", "TimeLimit=1"]));
        assert!(!is_job_update(&["NodeName=n1", "Gpu=0", "State=RESUME"]));
    }

    #[test]
    fn bad_job_updates_fail_naming_the_word() {
        let cases: &[(&[&str], &str)] = &[
            (&["ArrayTaskThrottle=2"], "update needs JobId="),
            (&["JobId=12"], "nothing to update"),
            (&["JobId=12x", "TimeLimit=1"], "Invalid job id 12x"),
            (
                &["JobId=12", "ArrayTaskThrottle=-1"],
                "Invalid ArrayTaskThrottle value: -1",
            ),
            (
                &["JobId=12", "ArrayTaskThrottle=x"],
                "Invalid ArrayTaskThrottle value: x",
            ),
            (
                &["JobId=12", "TimeLimit=1:2:3:4"],
                "Invalid TimeLimit value: 1:2:3:4",
            ),
            (
                &["JobId=12", "Partition=gpu"],
                "update of Partition= is not supported",
            ),
            (&["JobId=12", "TimeLimit="], "TimeLimit= needs a value"),
            (
                &["JobId=12", "JobId=13", "TimeLimit=1"],
                "JobId= given twice",
            ),
            (
                &["JobId=12_3", "ArrayTaskThrottle=1"],
                "applies to a whole array: give JobId=12",
            ),
            (&["JobId=12", "bogus"], "want Key=Value"),
        ];
        for (i, (words, want)) in cases.iter().enumerate() {
            match parse_job_update(words) {
                Err(e) if e.contains(want) => {}
                other => panic!("#{i} {words:?}: want error with {want:?}, got {other:?}"),
            }
        }
    }
}
