//! The task indexes of a job array as a few strided runs (`0-99999`, `1,3,5-9`,
//! `0-96:4`), never one entry per task: an array of 100,000 pending tasks is one run, so
//! submitting it, splitting tasks off as they start and printing it cost what one job does.
//!
//! Runs are kept in ascending order with disjoint spans (each run's `start` above the
//! previous run's `end`), which is the form the Raft log carries ([`pb::IndexRange`]).
//! [`TaskSet::from_ranges`] checks that form, since the ranges arrive from clients.

use berth_proto::v1 as pb;
use std::fmt;

/// One run: `start, start + step, ..., end` (`end - start` a multiple of `step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: u32,
    end: u32,
    step: u32,
}

impl Run {
    fn len(self) -> u64 {
        u64::from((self.end - self.start) / self.step) + 1
    }

    fn contains(self, i: u32) -> bool {
        i >= self.start && i <= self.end && (i - self.start).is_multiple_of(self.step)
    }
}

/// A set of array task indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSet {
    runs: Vec<Run>,
}

/// A strided run prints as `a-b:s` only with more indexes than this (Slurm 22.05 prints
/// `0,4,8,12,16` but `0-20:4`; checked against it).
pub const STRIDE_PRINT_MIN: u64 = 5;

/// ... and only when its last index is more than this above its first (`1,3,5,7,9,11`
/// but `1-21:2`).
pub const STRIDE_PRINT_SPAN: u32 = 10;

/// Most runs one array spec may carry (a list like `1,3,5,...` is one run per entry).
pub const RUNS_MAX: usize = 10_000;

impl TaskSet {
    /// The set the ranges describe.
    ///
    /// # Errors
    /// A message when a range is empty or misaligned (`step` 0, `end` below `start` or
    /// off the stride), the ranges are not ascending and disjoint, or there are more than
    /// [`RUNS_MAX`].
    pub fn from_ranges(ranges: &[pb::IndexRange]) -> Result<TaskSet, String> {
        if ranges.len() > RUNS_MAX {
            return Err(format!("{} ranges, at most {RUNS_MAX}", ranges.len()));
        }
        let mut runs: Vec<Run> = Vec::with_capacity(ranges.len());
        for r in ranges {
            if r.step == 0 || r.end < r.start || !(r.end - r.start).is_multiple_of(r.step) {
                return Err(format!(
                    "range {}-{}:{} is empty or off its stride",
                    r.start, r.end, r.step
                ));
            }
            if runs.last().is_some_and(|prev| prev.end >= r.start) {
                return Err("ranges must be ascending and disjoint".into());
            }
            runs.push(Run {
                start: r.start,
                end: r.end,
                step: r.step,
            });
        }
        Ok(TaskSet { runs })
    }

    /// The set of `indexes` (any order, repeats allowed), as the fewest greedy runs.
    pub fn from_indexes(indexes: impl IntoIterator<Item = u32>) -> TaskSet {
        let mut all: Vec<u32> = indexes.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        let mut runs: Vec<Run> = Vec::new();
        let mut i = 0;
        while i < all.len() {
            let start = all[i];
            let Some(&next) = all.get(i + 1) else {
                runs.push(Run {
                    start,
                    end: start,
                    step: 1,
                });
                break;
            };
            let step = next - start;
            let mut end = next;
            let mut j = i + 2;
            while j < all.len() && all[j] - end == step {
                end = all[j];
                j += 1;
            }
            runs.push(Run { start, end, step });
            i = j;
        }
        TaskSet { runs }
    }

    /// The log's form: ascending, disjoint ranges.
    pub fn to_ranges(&self) -> Vec<pb::IndexRange> {
        self.runs
            .iter()
            .map(|r| pb::IndexRange {
                start: r.start,
                end: r.end,
                step: r.step,
            })
            .collect()
    }

    /// How many indexes.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The lowest index.
    pub fn first(&self) -> Option<u32> {
        self.runs.first().map(|r| r.start)
    }

    /// The highest index.
    pub fn last(&self) -> Option<u32> {
        self.runs.last().map(|r| r.end)
    }

    /// Whether `i` is in the set.
    pub fn contains(&self, i: u32) -> bool {
        // Runs are ascending and disjoint: the candidate is the last run starting at or
        // below `i`.
        let k = self.runs.partition_point(|r| r.start <= i);
        k > 0 && self.runs[k - 1].contains(i)
    }

    /// Removes `i`; false when it was not there. At most one run splits in two.
    pub fn remove(&mut self, i: u32) -> bool {
        let k = self.runs.partition_point(|r| r.start <= i);
        if k == 0 || !self.runs[k - 1].contains(i) {
            return false;
        }
        let r = self.runs[k - 1];
        let left = (i > r.start).then(|| Run {
            start: r.start,
            end: i - r.step,
            step: r.step,
        });
        let right = (i < r.end).then(|| Run {
            start: i + r.step,
            end: r.end,
            step: r.step,
        });
        let replacement: Vec<Run> = left.into_iter().chain(right).collect();
        self.runs.splice(k - 1..k, replacement);
        true
    }

    /// Every index, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs
            .iter()
            .flat_map(|r| (r.start..=r.end).step_by(r.step as usize))
    }

    /// The indexes of `self` that are also in `other`, walking the smaller side.
    pub fn intersection(&self, other: &TaskSet) -> TaskSet {
        let (small, big) = if self.len() <= other.len() {
            (self, other)
        } else {
            (other, self)
        };
        TaskSet::from_indexes(small.iter().filter(|i| big.contains(*i)))
    }

    /// The distance between consecutive indexes when it is the same everywhere (Slurm's
    /// `SLURM_ARRAY_TASK_STEP`); 1 otherwise, and for one index.
    pub fn stride(&self) -> u32 {
        match self.runs.as_slice() {
            [only] if only.start < only.end => only.step,
            _ => 1,
        }
    }
}

/// Slurm's form (squeue and scontrol print task sets so): `0-96:4` for one strided run
/// of more than [`STRIDE_PRINT_MIN`] indexes spanning more than [`STRIDE_PRINT_SPAN`],
/// else comma-separated `a-b` runs of consecutive indexes and single indexes
/// (`1,3,5-9`, and `0,4,8,12` for a short strided run), as Slurm 22.05 prints them.
impl fmt::Display for TaskSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = self.runs.as_slice() {
            let strided = only.step > 1
                && only.len() > STRIDE_PRINT_MIN
                && only.end - only.start > STRIDE_PRINT_SPAN;
            if strided {
                return write!(f, "{}-{}:{}", only.start, only.end, only.step);
            }
        }
        let mut parts: Vec<(u32, u32)> = Vec::new();
        let mut push = |a: u32, b: u32| match parts.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(a) => last.1 = b,
            _ => parts.push((a, b)),
        };
        for r in &self.runs {
            if r.step == 1 {
                push(r.start, r.end);
            } else {
                for i in (r.start..=r.end).step_by(r.step as usize) {
                    push(i, i);
                }
            }
        }
        let text: Vec<String> = parts
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&text.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u32, end: u32, step: u32) -> pb::IndexRange {
        pb::IndexRange { start, end, step }
    }

    #[test]
    fn runs_print_as_slurm_prints_them() {
        let cases = [
            (vec![r(0, 15, 1)], "0-15", 16),
            (vec![r(0, 96, 4)], "0-96:4", 25),
            (vec![r(1, 5, 2), r(6, 9, 1)], "1,3,5-9", 7),
            (vec![r(3, 3, 1)], "3", 1),
            (vec![r(0, 99_999, 1)], "0-99999", 100_000),
        ];
        for (i, (ranges, want, len)) in cases.into_iter().enumerate() {
            let set = TaskSet::from_ranges(&ranges).unwrap();
            assert_eq!(set.to_string(), want, "#{i}");
            assert_eq!(set.len(), len, "#{i}");
            assert_eq!(set.iter().count() as u64, len, "#{i}");
        }
    }

    #[test]
    fn removing_splits_one_run_and_keeps_the_rest() {
        let mut set = TaskSet::from_ranges(&[r(0, 99_999, 1)]).unwrap();
        assert!(set.remove(0));
        assert!(set.remove(500));
        assert!(!set.remove(500), "already gone");
        assert!(!set.remove(100_000), "never there");
        assert_eq!(set.to_string(), "1-499,501-99999");
        assert_eq!(set.len(), 99_998);
        assert!(set.contains(499) && !set.contains(500) && set.contains(501));
        let mut strided = TaskSet::from_ranges(&[r(0, 12, 4)]).unwrap();
        assert!(!strided.remove(2), "off the stride");
        assert!(strided.remove(4));
        assert_eq!(strided.to_ranges(), vec![r(0, 0, 4), r(8, 12, 4)]);
        assert_eq!(strided.to_string(), "0,8,12");
    }

    #[test]
    fn greedy_runs_from_indexes() {
        let set = TaskSet::from_indexes([9, 1, 3, 5, 6, 7, 8, 3]);
        assert_eq!(set.to_ranges(), vec![r(1, 5, 2), r(6, 9, 1)]);
        assert_eq!(set.stride(), 1);
        assert_eq!(TaskSet::from_indexes([1, 4, 7]).stride(), 3);
        assert_eq!(TaskSet::from_indexes([]).to_string(), "");
        let a = TaskSet::from_ranges(&[r(0, 10, 1)]).unwrap();
        let b = TaskSet::from_indexes([2, 4, 11]);
        assert_eq!(a.intersection(&b).to_string(), "2,4");
    }

    #[test]
    fn short_strided_runs_print_as_lists_as_slurm_does() {
        // Each pair was submitted to Slurm 22.05 as --array=SPEC and read back with
        // squeue -o %K.
        let cases = [
            ("0-16:4", "0,4,8,12,16"),
            ("0-20:4", "0-20:4"),
            ("0-30:10", "0,10,20,30"),
            ("0-50:10", "0-50:10"),
            ("1-11:2", "1,3,5,7,9,11"),
            ("5-15:2", "5,7,9,11,13,15"),
            ("1-21:2", "1-21:2"),
            ("2-4:2", "2,4"),
        ];
        for (i, (spec, want)) in cases.into_iter().enumerate() {
            let (span, step) = spec.split_once(':').unwrap();
            let (a, b) = span.split_once('-').unwrap();
            let range = r(
                a.parse().unwrap(),
                b.parse().unwrap(),
                step.parse().unwrap(),
            );
            let got = TaskSet::from_ranges(&[range]).unwrap().to_string();
            assert_eq!(got, want, "#{i} {spec}");
        }
    }

    #[test]
    fn malformed_ranges_are_refused() {
        let cases = [
            (vec![r(5, 1, 1)], "empty or off"),
            (vec![r(0, 5, 0)], "empty or off"),
            (vec![r(0, 5, 2)], "empty or off"),
            (vec![r(0, 5, 1), r(5, 6, 1)], "ascending and disjoint"),
            (vec![r(4, 6, 1), r(0, 2, 1)], "ascending and disjoint"),
        ];
        for (i, (ranges, want)) in cases.into_iter().enumerate() {
            match TaskSet::from_ranges(&ranges) {
                Err(e) if e.contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }
}
