//! Job ids as the Slurm tools take them: `12`, a task of an array `12_3`, some tasks
//! `12_[1-4,7]` (the list syntax of `--array`, without throttle), and comma-separated
//! lists of those (`12,13_2,14_[1-3]`, commas inside brackets belonging to the tasks).

use super::array::parse_indexes;
use berth_proto::v1 as pb;
use berth_scheduler::state_machine::task_set::TaskSet;
use std::fmt;

/// One job id as written: a job (or a whole array), or tasks of array `job_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    /// The job's id, or the array's.
    pub job_id: u64,
    /// `None`: the job itself (every task of an array); else these tasks of it.
    pub tasks: Option<TaskSet>,
}

impl JobRef {
    /// The tasks as the RPCs carry them (empty: the whole job).
    pub fn task_ranges(&self) -> Vec<pb::IndexRange> {
        self.tasks
            .as_ref()
            .map(TaskSet::to_ranges)
            .unwrap_or_default()
    }
}

/// As written back: `12`, `12_3`, `12_[1-4,7]`.
impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tasks {
            None => write!(f, "{}", self.job_id),
            Some(t) if t.len() == 1 => write!(f, "{}_{t}", self.job_id),
            Some(t) => write!(f, "{}_[{t}]", self.job_id),
        }
    }
}

/// Parses one id: `12`, `12_3`, `12_[1-4]`.
///
/// # Errors
/// Slurm's "Invalid job id ID", with what is wrong.
pub fn parse_job_ref(id: &str) -> Result<JobRef, String> {
    let bad = |why: &str| format!("Invalid job id {id} ({why})");
    let (job, tasks) = match id.split_once('_') {
        Some((job, tasks)) => (job, Some(tasks)),
        None => (id, None),
    };
    let job_id = job
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0 && job.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad("not a number"))?;
    let tasks = match tasks {
        None => None,
        Some(t) => {
            let list = match t.strip_prefix('[') {
                Some(inner) => inner
                    .strip_suffix(']')
                    .ok_or_else(|| bad("no closing ']'"))?,
                // A bare task is one index: `12_1-3` is Slurm's error too.
                None if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() => t,
                None => return Err(bad("a task is N or [LIST]")),
            };
            Some(parse_indexes(list).map_err(|e| bad(&e))?)
        }
    };
    Ok(JobRef { job_id, tasks })
}

/// Splits `12,13_[1,3],14` at the commas outside brackets and parses each id; several
/// arguments are joined the same way (`scancel 12 13`).
///
/// # Errors
/// The first bad id, as [`parse_job_ref`] words it.
pub fn parse_job_list<S: AsRef<str>>(args: &[S]) -> Result<Vec<JobRef>, String> {
    let mut out = Vec::new();
    for arg in args {
        let arg = arg.as_ref();
        let mut depth = 0u32;
        let mut from = 0;
        let mut pieces = Vec::new();
        for (i, c) in arg.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    pieces.push(&arg[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        pieces.push(&arg[from..]);
        for p in pieces.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            out.push(parse_job_ref(p)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_parse_with_their_tasks() {
        let cases = [
            ("12", "12"),
            ("12_3", "12_3"),
            ("12_[1-4]", "12_[1-4]"),
            ("12_[1,3,5-9]", "12_[1,3,5-9]"),
            ("12_[7]", "12_7"),
            ("12_[0-20:4]", "12_[0-20:4]"),
        ];
        for (i, (id, want)) in cases.iter().enumerate() {
            match parse_job_ref(id) {
                Ok(r) if r.to_string() == *want => {}
                other => panic!("#{i} {id}: want {want:?}, got {other:?}"),
            }
        }
        let list = parse_job_list(&["12,13_[1,3],14", "15_2"]).expect("parses");
        let shown: Vec<String> = list.iter().map(JobRef::to_string).collect();
        assert_eq!(shown, ["12", "13_[1,3]", "14", "15_2"]);
        let tasks: Vec<(u32, u32)> = list[1]
            .task_ranges()
            .iter()
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(tasks, [(1, 1), (3, 3)]);
        assert!(list[0].task_ranges().is_empty());
    }

    #[test]
    fn bad_job_ids_fail_naming_the_id() {
        let cases = [
            ("12x", "Invalid job id 12x (not a number)"),
            ("0", "Invalid job id 0 (not a number)"),
            ("-3", "not a number"),
            ("12_", "a task is N or [LIST]"),
            ("12_x", "a task is N or [LIST]"),
            ("12_1-3", "a task is N or [LIST]"),
            ("12_[", "no closing ']'"),
            ("12_[3-1]", "1 is below 3"),
            ("12_[]", "no task indexes"),
            ("_3", "not a number"),
        ];
        for (i, (id, want)) in cases.iter().enumerate() {
            match parse_job_ref(id) {
                Err(e) if e.contains(want) => {}
                other => panic!("#{i} {id}: want error with {want:?}, got {other:?}"),
            }
        }
        assert!(parse_job_list(&["12,x"])
            .unwrap_err()
            .contains("Invalid job id x"));
    }
}
