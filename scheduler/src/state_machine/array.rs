//! Job arrays (`sbatch --array=0-99999%8`): one submit command makes one record, the
//! array's own, holding every task not started yet as a [`TaskSet`] of strided runs.
//!
//! A task gets a record of its own only when it must: when it starts (an `Allocate`
//! placement names the array and the task index), or when one pending task is held or
//! changed alone (`scontrol hold 12_3`). It is split off under the next job id, with the
//! array's spec, `array_job_id` and `array_task_id`; the last task left takes the array's
//! own record instead, as Slurm does, so an array of one task is one record. Until tasks
//! start, an array costs the log, the state and a scheduling pass what one job of its
//! shape costs: the pass sees at most as many of its tasks as could start now, plus one
//! to carry the pending reason (see [`StateMachine::array_views`]).
//!
//! `%N` throttles: at most N tasks of the array run at once, counted over its records.

use super::task_set::TaskSet;
use super::{changed, Applied, Outcome, StateMachine};
use berth_policies as policies;
use berth_proto::v1::{self as pb, JobState, NodeState};
use std::collections::BTreeMap;

/// Pending views of array tasks carry ids with this bit set, so they never clash with
/// job ids; [`TaskViews`] maps them back to (array id, task index).
pub const TASK_VIEW_BIT: u64 = 1 << 63;

/// Most tasks of one array one pass may consider (bounds a pass over a huge idle cluster).
pub const TASK_VIEWS_MAX: u64 = 4096;

/// The array size limits belong to the accounts file, which sets MaxArraySize.
pub use crate::accounts::{MAX_ARRAY_SIZE_DEFAULT, MAX_ARRAY_SIZE_MAX};

/// Which (array, task) each synthetic pending id stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskViews(pub BTreeMap<u64, (u64, u32)>);

impl TaskViews {
    /// The (array id, task index) of pending id `id`, if it is a task view.
    pub fn get(&self, id: u64) -> Option<(u64, u32)> {
        self.0.get(&id).copied()
    }

    /// The record a pending id belongs to: its array for a task view, else itself.
    pub fn record(&self, id: u64) -> u64 {
        self.get(id).map_or(id, |(array, _)| array)
    }
}

/// Checks an array spec at submit: well-formed ranges, at least one task, every index
/// below `max_array_size`.
///
/// # Errors
/// Slurm's "Invalid job array specification", with what is wrong.
pub fn validate(array: &pb::ArraySpec, max_array_size: u32) -> Result<TaskSet, String> {
    let bad = |why: String| format!("Invalid job array specification ({why})");
    let set = TaskSet::from_ranges(&array.ranges).map_err(bad)?;
    let last = set.last().ok_or_else(|| bad("no tasks".into()))?;
    if last >= max_array_size {
        return Err(bad(format!(
            "task index {last} is not below MaxArraySize={max_array_size}"
        )));
    }
    Ok(set)
}

/// The tasks a record stands for: its pending ones (the array's own record), else its
/// own index.
pub fn tasks_of(job: &pb::Job) -> TaskSet {
    match job.array_task_id {
        Some(i) if job.array_pending.is_empty() => TaskSet::from_indexes([i]),
        _ => TaskSet::from_ranges(&job.array_pending).unwrap_or_default(),
    }
}

/// Whether `job` is an array's own record still holding pending tasks.
pub fn holds_pending(job: &pb::Job) -> bool {
    job.array_job_id == job.id && !job.array_pending.is_empty()
}

/// Running tasks per array, counted over every record.
pub fn running_by_array<'a>(jobs: impl Iterator<Item = &'a pb::Job>) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    for j in jobs.filter(|j| j.array_job_id != 0 && j.state() == JobState::Running) {
        *out.entry(j.array_job_id).or_insert(0) += 1;
    }
    out
}

/// Throttle room left per array during one `Allocate`: counted once, then taken per start.
#[derive(Debug, Default)]
pub struct Rooms(BTreeMap<u64, Option<u32>>);

impl StateMachine {
    /// Cancels what `c` names: one job, a whole array (every task, started or not), or
    /// some tasks of an array.
    pub(super) fn cancel(&mut self, c: pb::CancelJob, now: u64) -> Applied {
        if let Some(exit) = c.release {
            return self.release_allocation(c.job_id, exit, now);
        }
        if !c.array_tasks.is_empty() {
            return self.cancel_tasks(c.job_id, &c.array_tasks, &c.reason, now);
        }
        let whole = self
            .state
            .jobs
            .get(&c.job_id)
            .is_some_and(|j| j.array_job_id == j.id);
        let mut applied = self.cancel_one(c.job_id, &c.reason, c.end_state(), now);
        if whole {
            for id in self.live_records(c.job_id) {
                let (outcome, effects) = self.cancel_one(id, &c.reason, c.end_state(), now);
                if outcome == Outcome::Done {
                    applied.0 = Outcome::Done;
                    applied.1.extend(effects);
                }
            }
        }
        applied
    }

    /// Holds or releases what `c` names, as [`StateMachine::cancel`] reads it: a whole
    /// array's pending records together.
    pub(super) fn hold(&mut self, c: pb::HoldJob, now: u64) -> Applied {
        if !c.array_tasks.is_empty() {
            return self.hold_tasks(c.job_id, &c.array_tasks, c.hold, now);
        }
        let whole = self
            .state
            .jobs
            .get(&c.job_id)
            .is_some_and(|j| j.array_job_id == j.id);
        let mut applied = self.hold_one(c.job_id, c.hold);
        if whole {
            for id in self.live_records(c.job_id) {
                let (outcome, effects) = self.hold_one(id, c.hold);
                if outcome == Outcome::Done {
                    applied.0 = Outcome::Done;
                    applied.1.extend(effects);
                }
            }
        }
        applied
    }

    /// Conditions naming one task (`afterok:12_3`) name a task of an array that exists.
    ///
    /// # Errors
    /// Slurm's "Job dependency problem" naming the task.
    pub(super) fn check_task_dependencies(
        &self,
        deps: &[pb::DependencyCondition],
    ) -> Result<(), String> {
        for d in deps {
            let Some(i) = d.array_task_id else { continue };
            let known = self
                .state
                .jobs
                .get(&d.job_id)
                .filter(|j| j.array_job_id == j.id)
                .and_then(|j| j.spec.as_ref()?.array.as_ref())
                .and_then(|a| TaskSet::from_ranges(&a.ranges).ok())
                .is_some_and(|all| all.contains(i));
            if !known {
                return Err(format!(
                    "Job dependency problem: job {}_{i} does not exist",
                    d.job_id
                ));
            }
        }
        Ok(())
    }

    /// The throttle of array `array` (0: none).
    fn throttle(&self, array: u64) -> u32 {
        self.state
            .jobs
            .get(&array)
            .and_then(|j| j.spec.as_ref())
            .and_then(|s| s.array.as_ref())
            .map_or(0, |a| a.max_running)
    }

    /// Takes one start of array `array` from `rooms`.
    ///
    /// # Errors
    /// When the array already runs as many tasks as its throttle allows.
    fn take_room(&self, rooms: &mut Rooms, array: u64) -> Result<(), String> {
        let room = rooms.0.entry(array).or_insert_with(|| {
            let limit = self.throttle(array);
            (limit > 0).then(|| {
                let running = running_by_array(self.state.jobs.values());
                limit.saturating_sub(running.get(&array).copied().unwrap_or(0))
            })
        });
        match room {
            None => Ok(()),
            Some(0) => Err(format!(
                "array {array} runs {} tasks already (ArrayTaskThrottle)",
                self.throttle(array)
            )),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }

    /// Turns a placement of an array task into a placement of its own record: checks the
    /// placement against the array, the task and the throttle, then splits the task off
    /// (see the module docs). Placements of other jobs pass through, array tasks with
    /// records of their own checked against the throttle.
    ///
    /// # Errors
    /// The job and why the placement is refused; nothing changed then.
    pub(super) fn array_placement(
        &mut self,
        mut p: pb::Placement,
        rooms: &mut Rooms,
        now: u64,
    ) -> Result<pb::Placement, (u64, String)> {
        let id = p.job_id;
        let Some(index) = p.array_task_id else {
            let array = self.state.jobs.get(&id).map_or(0, |j| j.array_job_id);
            if array != 0 && self.state.jobs[&id].state() == JobState::Pending {
                self.take_room(rooms, array).map_err(|e| (id, e))?;
            }
            return Ok(p);
        };
        let named = |e: String| (id, format!("task {index}: {e}"));
        self.check_placement(&p).map_err(named)?;
        let array = &self.state.jobs[&id];
        if !holds_pending(array) || !tasks_of(array).contains(index) {
            return Err(named("not pending in the array".into()));
        }
        self.take_room(rooms, id).map_err(named)?;
        p.job_id = self.split_task(p.job_id, index, now);
        p.array_task_id = None;
        Ok(p)
    }

    /// Gives pending task `index` of array `array` a record of its own and returns its
    /// id: a new one, or the array's own when it is the last task left.
    ///
    /// # Panics
    /// If the task is not pending in the array (callers check).
    pub(super) fn split_task(&mut self, array: u64, index: u32, _now: u64) -> u64 {
        let meta = self.state.jobs.get_mut(&array).expect("caller checked");
        let mut left = tasks_of(meta);
        assert!(left.remove(index), "task {index} not pending in {array}");
        if left.is_empty() {
            meta.array_pending.clear();
            meta.array_task_id = Some(index);
            return array;
        }
        meta.array_pending = left.to_ranges();
        let mut task = meta.clone();
        task.array_pending.clear();
        task.array_task_id = Some(index);
        let id = self.state.next_job_id.max(1);
        self.state.next_job_id = id + 1;
        task.id = id;
        self.state.jobs.insert(id, task);
        id
    }

    /// The pending views of array `meta`'s tasks for one pass: `base` (the array's own
    /// view) once per task, for at most `room` tasks (the throttle) and at most as many as
    /// could start on the free resources now plus one (which carries the pending reason
    /// when none can). `ready` filters the tasks whose own dependencies hold (`aftercorr`).
    pub(super) fn array_views(
        &self,
        meta: &pb::Job,
        base: &policies::PendingJob,
        room: Option<u32>,
        ready: impl Fn(u32) -> bool,
        views: &mut TaskViews,
    ) -> Vec<policies::PendingJob> {
        let left = tasks_of(meta);
        let fit = self.copies_fitting(base).saturating_add(1);
        let cap = [
            left.len(),
            fit,
            TASK_VIEWS_MAX,
            room.map_or(u64::MAX, u64::from),
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        let mut out = Vec::new();
        for index in left.iter().filter(|i| ready(*i)).take(cap as usize) {
            let k = out.len() as u64;
            let id = TASK_VIEW_BIT | (meta.id << 16) | (k & 0xffff);
            views.0.insert(id, (meta.id, index));
            let mut view = base.clone();
            view.id = id;
            out.push(view);
        }
        out
    }

    /// How many copies of `job` the up nodes of its partition could hold now, by free
    /// CPUs, memory and whole GPUs (a bound for [`StateMachine::array_views`], not a
    /// placement: topology, MIG and the rest are the pass's business).
    fn copies_fitting(&self, job: &policies::PendingJob) -> u64 {
        let mut copies = 0u64;
        for n in self.state.nodes.values() {
            let Some(inv) = n.inventory.as_ref() else {
                continue;
            };
            if n.state() != NodeState::Up
                || (!job.partition.is_empty() && inv.partition != job.partition)
            {
                continue;
            }
            let cpus = inv.cpus.saturating_sub(n.cpus_alloc);
            let mut fit = u64::from(cpus / job.cpus_per_node.max(1));
            let mem = inv.memory_mb.saturating_sub(n.memory_alloc_mb);
            if let Some(by_mem) = mem.checked_div(job.mem_per_node_mb) {
                fit = fit.min(by_mem);
            }
            if job.gpus_per_node > 0 && job.mig_per_node == 0 {
                let free = inv
                    .gpus
                    .iter()
                    .filter(|g| g.unhealthy_reason.is_empty() && super::has_room(g, job.gpu_milli))
                    .count() as u64;
                fit = fit.min(free / u64::from(job.gpus_per_node));
            }
            copies += fit;
        }
        copies / u64::from(job.nodes.max(1))
    }

    /// `scancel 12_[1-4]`: pending tasks leave the array's record (a task never started
    /// leaves no record, as in Slurm); tasks with records are cancelled one by one. When
    /// no task is left pending, the array's record ends CANCELLED.
    pub(super) fn cancel_tasks(
        &mut self,
        array: u64,
        selected: &[pb::IndexRange],
        reason: &str,
        now: u64,
    ) -> Applied {
        let wanted = match self.array_selection(array, selected) {
            Ok(w) => w,
            Err(applied) => return applied,
        };
        let mut effects = Vec::new();
        let meta = &self.state.jobs[&array];
        let mut left = if holds_pending(meta) {
            tasks_of(meta)
        } else {
            TaskSet::default()
        };
        let pending_here = left.intersection(&wanted);
        for i in pending_here.iter() {
            left.remove(i);
        }
        if !pending_here.is_empty() {
            let meta = self.state.jobs.get_mut(&array).expect("exists");
            if left.is_empty() {
                meta.state = JobState::Cancelled as i32;
                meta.end_time_ms = now;
                meta.reason = "None".into();
                meta.array_pending = pending_here.to_ranges();
            } else {
                meta.array_pending = left.to_ranges();
            }
            effects.push(changed(array));
        }
        for id in self.task_records(array, &wanted) {
            let (_, more) = self.cancel_one(id, reason, JobState::Cancelled, now);
            effects.extend(more);
        }
        if effects.is_empty() {
            let msg = "Job/step already completing or completed".into();
            return (Outcome::Rejected(msg), vec![]);
        }
        (Outcome::Done, effects)
    }

    /// The tasks `selected` names in array `array`.
    ///
    /// # Errors
    /// The outcome to answer with: no such array, or a malformed selection.
    fn array_selection(&self, array: u64, selected: &[pb::IndexRange]) -> Result<TaskSet, Applied> {
        match self.state.jobs.get(&array) {
            Some(j) if j.array_job_id == array => {}
            Some(_) => {
                let why = format!("job {array} is not a job array");
                return Err((Outcome::Rejected(why), vec![]));
            }
            None => return Err((Outcome::NoSuchJob(array), vec![])),
        }
        TaskSet::from_ranges(selected).map_err(|why| {
            (
                Outcome::Rejected(format!("Invalid job id specified ({why})")),
                vec![],
            )
        })
    }

    /// Records of array `array` (its own included when it has become a task) whose task
    /// index is in `wanted`, by id.
    fn task_records(&self, array: u64, wanted: &TaskSet) -> Vec<u64> {
        self.state
            .jobs
            .values()
            .filter(|j| j.array_job_id == array)
            .filter(|j| j.array_task_id.is_some_and(|i| wanted.contains(i)))
            .map(|j| j.id)
            .collect()
    }

    /// Every record of array `array` still pending or running, its own first.
    pub(super) fn live_records(&self, array: u64) -> Vec<u64> {
        self.state
            .jobs
            .values()
            .filter(|j| j.array_job_id == array && j.id != array)
            .filter(|j| matches!(j.state(), JobState::Pending | JobState::Running))
            .map(|j| j.id)
            .collect()
    }

    /// `scontrol hold|release 12_3`: a pending task still inside the array's record is
    /// split off first, so only it changes; tasks with records change alone.
    pub(super) fn hold_tasks(
        &mut self,
        array: u64,
        selected: &[pb::IndexRange],
        hold: bool,
        now: u64,
    ) -> Applied {
        let wanted = match self.array_selection(array, selected) {
            Ok(w) => w,
            Err(applied) => return applied,
        };
        let meta = &self.state.jobs[&array];
        let pending = if holds_pending(meta) && meta.state() == JobState::Pending {
            tasks_of(meta).intersection(&wanted)
        } else {
            TaskSet::default()
        };
        let mut ids: Vec<u64> = pending
            .iter()
            .map(|i| self.split_task(array, i, now))
            .collect();
        ids.extend(self.task_records(array, &wanted));
        ids.sort_unstable();
        ids.dedup();
        let mut effects = Vec::new();
        let mut last = (Outcome::Done, vec![]);
        for id in ids {
            let applied = self.hold_one(id, hold);
            if matches!(applied.0, Outcome::Done) {
                effects.extend(applied.1);
            } else {
                last = applied;
            }
        }
        if effects.is_empty() {
            return last;
        }
        (Outcome::Done, effects)
    }

    /// `scontrol update JobId=12[_3] ArrayTaskThrottle=N TimeLimit=T`: the throttle is the
    /// array's; a time limit goes to the selected pending tasks (split off when they are
    /// inside the array's record), or to every pending record of the array.
    pub(super) fn array_update(&mut self, c: pb::ArrayUpdate, now: u64) -> Applied {
        let wanted = if c.array_tasks.is_empty() {
            None
        } else {
            match self.array_selection(c.job_id, &c.array_tasks) {
                Ok(w) => Some(w),
                Err(applied) => return applied,
            }
        };
        match self.state.jobs.get(&c.job_id) {
            Some(j) if j.array_job_id == c.job_id => {}
            Some(_) => {
                return (
                    Outcome::Rejected(format!("job {} is not a job array", c.job_id)),
                    vec![],
                )
            }
            None => return (Outcome::NoSuchJob(c.job_id), vec![]),
        }
        let mut effects = vec![];
        if let Some(n) = c.max_running {
            // Every record of the array carries the spec: task records show the new
            // throttle too (ArrayTaskThrottle=), though only the array's own one counts.
            for job in self.state.jobs.values_mut() {
                if job.array_job_id != c.job_id {
                    continue;
                }
                if let Some(a) = job.spec.as_mut().and_then(|s| s.array.as_mut()) {
                    a.max_running = n;
                }
                effects.push(changed(job.id));
            }
        }
        if let Some(secs) = c.time_limit_secs {
            let mut ids = match &wanted {
                Some(w) => {
                    let meta = &self.state.jobs[&c.job_id];
                    let inside = if holds_pending(meta) {
                        tasks_of(meta).intersection(w)
                    } else {
                        TaskSet::default()
                    };
                    let mut ids: Vec<u64> = inside
                        .iter()
                        .map(|i| self.split_task(c.job_id, i, now))
                        .collect();
                    ids.extend(self.task_records(c.job_id, w));
                    ids
                }
                None => {
                    let mut ids = self.live_records(c.job_id);
                    ids.push(c.job_id);
                    ids
                }
            };
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                let job = self.state.jobs.get_mut(&id).expect("listed");
                if job.state() != JobState::Pending {
                    continue;
                }
                if let Some(s) = job.spec.as_mut() {
                    s.time_limit_secs = secs;
                }
                effects.push(changed(id));
            }
        }
        if effects.is_empty() {
            return (
                Outcome::Rejected("Job is no longer pending execution".into()),
                vec![],
            );
        }
        (Outcome::Done, effects)
    }
}

#[cfg(test)]
#[path = "array_tests.rs"]
mod array_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_are_checked_against_max_array_size() {
        let r = |start, end, step| pb::IndexRange { start, end, step };
        let spec = |ranges| pb::ArraySpec {
            ranges,
            max_running: 0,
        };
        assert_eq!(
            validate(&spec(vec![r(0, 1000, 1)]), 1001).unwrap().len(),
            1001
        );
        let cases = [
            (spec(vec![r(0, 1001, 1)]), "not below MaxArraySize=1001"),
            (spec(vec![]), "no tasks"),
            (spec(vec![r(5, 1, 1)]), "empty or off"),
        ];
        for (i, (s, want)) in cases.into_iter().enumerate() {
            match validate(&s, 1001) {
                Err(e) if e.starts_with("Invalid job array specification") && e.contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }
}
