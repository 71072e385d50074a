//! `--array=0-15`, `1,3,5-9`, `0-99:4`, `0-999%8`: the task indexes of a job array and
//! its throttle, parsed into the [`pb::ArraySpec`] the scheduler checks again (against
//! its MaxArraySize) and keeps as a few strided runs.
//!
//! The syntax is Slurm's: comma-separated items, each `N`, `A-B` or `A-B:S` (step S),
//! then optionally `%N` (at most N tasks running at once; `%0` means no limit, as in
//! Slurm). Overlapping and unsorted items are merged as Slurm merges them. Where Slurm
//! 22.05 quietly reads a truncated spec (`0-` as task 0, `%3` as `0%3`, `0-3%` as no
//! throttle, an empty `--array=` as no array at all) berth refuses it: those are typos or
//! unset shell variables, and running the wrong tasks is worse than an error.

use berth_proto::v1 as pb;
use berth_scheduler::state_machine::array::MAX_ARRAY_SIZE_MAX;
use berth_scheduler::state_machine::task_set::{TaskSet, RUNS_MAX};

/// Parses `--array`'s value.
///
/// # Errors
/// What is wrong with it (the caller words it as Slurm's "Invalid job array
/// specification").
pub fn parse_array(value: &str) -> Result<pb::ArraySpec, String> {
    let (body, throttle) = match value.split_once('%') {
        Some((body, n)) => (body, Some(n)),
        None => (value, None),
    };
    let max_running = match throttle {
        None => 0,
        Some("") => return Err("'%' needs a number of tasks after it".into()),
        Some(n) => digits(n).ok_or_else(|| format!("throttle {n:?} is not a number"))?,
    };
    let set = parse_indexes(body)?;
    Ok(pb::ArraySpec {
        ranges: set.to_ranges(),
        max_running,
    })
}

/// Parses a task list without throttle (`1,3,5-9`, `0-99:4`), as `--array` and job ids
/// like `12_[1-4]` take it.
///
/// # Errors
/// What is wrong with it: an empty list, an item that is not `N`, `A-B` or `A-B:S`, an
/// end below its start, a step of 0, an index at or above Slurm's largest MaxArraySize.
pub fn parse_indexes(body: &str) -> Result<TaskSet, String> {
    let items: Vec<&str> = body.split(',').filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err("no task indexes".into());
    }
    if items.len() > RUNS_MAX {
        return Err(format!("{} items, at most {RUNS_MAX}", items.len()));
    }
    let mut ranges = Vec::with_capacity(items.len());
    for item in items {
        ranges.push(parse_item(item)?);
    }
    // Sorted disjoint runs are the common case (`0-99`, `1,3,5-9`) and are taken as they
    // are; anything else is merged index by index, bounded by MAX_ARRAY_SIZE_MAX.
    match TaskSet::from_ranges(&ranges) {
        Ok(set) => Ok(set),
        Err(_) => Ok(TaskSet::from_indexes(
            ranges
                .iter()
                .flat_map(|r| (r.start..=r.end).step_by(r.step as usize)),
        )),
    }
}

/// One item: `N`, `A-B` or `A-B:S`, with the end moved down onto the stride (`0-99:4`
/// is `0-96:4`).
fn parse_item(item: &str) -> Result<pb::IndexRange, String> {
    let (span, step) = match item.split_once(':') {
        Some((span, step)) => {
            let step =
                digits(step).ok_or_else(|| format!("{item}: step {step:?} is not a number"))?;
            if step == 0 {
                return Err(format!("{item}: step must be at least 1"));
            }
            (span, step)
        }
        None => (item, 1),
    };
    let index = |s: &str, what: &str| {
        digits(s).ok_or_else(|| {
            if s.is_empty() {
                format!("{item}: the range has no {what} index")
            } else {
                format!("{item}: {s:?} is not a task index")
            }
        })
    };
    let (start, end) = match span.split_once('-') {
        Some((a, b)) => (index(a, "first")?, index(b, "last")?),
        None if step > 1 => return Err(format!("{item}: a step needs a range (A-B:S)")),
        None => {
            let i = index(span, "first")?;
            (i, i)
        }
    };
    if end < start {
        return Err(format!("{item}: {end} is below {start}"));
    }
    if end >= MAX_ARRAY_SIZE_MAX {
        return Err(format!(
            "{item}: task index {end} is above Slurm's largest MaxArraySize ({})",
            MAX_ARRAY_SIZE_MAX - 1
        ));
    }
    let end = start + (end - start) / step * step;
    Ok(pb::IndexRange { start, end, step })
}

/// A plain decimal number (no sign, no spaces), if it is one.
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(spec: &pb::ArraySpec) -> String {
        let set = TaskSet::from_ranges(&spec.ranges).expect("the parser's output is valid");
        match spec.max_running {
            0 => set.to_string(),
            n => format!("{set}%{n}"),
        }
    }

    #[test]
    fn array_specs_parse_as_slurm_reads_them() {
        // (value, the task set as Slurm 22.05's squeue prints it after that --array)
        let cases = [
            ("0-15", "0-15"),
            ("1,3,5-9", "1,3,5-9"),
            ("0-99:4", "0-96:4"),
            ("0-15%4", "0-15%4"),
            ("1-5:2%2", "1,3,5%2"),
            ("0-4%0", "0-4"),
            ("7,3,5", "3,5,7"),
            ("1-3,2-4", "1-4"),
            ("1,,2", "1-2"),
            ("1000", "1000"),
            ("0-3,5-20:5", "0-3,5,10,15,20"),
            ("3-30:3", "3-30:3"),
        ];
        for (i, (value, want)) in cases.iter().enumerate() {
            match parse_array(value) {
                Ok(spec) if shown(&spec) == *want => {}
                other => panic!("#{i} {value}: want {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_array_specs_fail_with_what_is_wrong() {
        let cases = [
            ("0-", "no last index"),
            ("3-", "no last index"),
            ("-1", "no first index"),
            ("5-1", "1 is below 5"),
            ("1-%2", "no last index"),
            ("%3", "no task indexes"),
            ("0-3%", "'%' needs a number"),
            ("0-3%x", "throttle \"x\" is not a number"),
            ("", "no task indexes"),
            (",", "no task indexes"),
            ("abc", "\"abc\" is not a task index"),
            ("1-3:0", "step must be at least 1"),
            ("0-99:-1", "step \"-1\" is not a number"),
            ("1:2", "a step needs a range"),
            ("4294967296", "is not a task index"),
            ("0-4000001", "above Slurm's largest MaxArraySize (4000000)"),
            (" 1-3", "is not a task index"),
        ];
        for (i, (value, want)) in cases.iter().enumerate() {
            match parse_array(value) {
                Err(e) if e.contains(want) => {}
                other => panic!("#{i} {value:?}: want error with {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_huge_array_is_a_few_runs() {
        let spec = parse_array("0-3999999%100").expect("parses");
        assert_eq!(spec.ranges.len(), 1);
        assert_eq!(spec.max_running, 100);
        let merged = parse_array("0-3999999,5-10").expect("parses");
        assert_eq!(merged.ranges.len(), 1);
    }
}
