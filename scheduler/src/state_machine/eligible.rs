//! Which pending records a scheduling pass may place, and why the others wait on their
//! dependencies: one walk over the jobs ([`Census`]) tallies what the conditions read
//! (arrays' tasks by state, the jobs of each name and user for `singleton`, array
//! throttles), then every pending record is judged against it, so a pass costs one walk
//! whatever the conditions.

use super::array::{self, TaskViews};
use super::dependency::{self, ArrayTally, DependencyStatus, Target};
use super::{pending_view, StateMachine};
use berth_policies as policies;
use berth_proto::v1::{self as pb, JobState};
use std::collections::{BTreeMap, HashMap};

/// What the dependency conditions and throttles of one pass read, from one walk.
#[derive(Debug, Default)]
pub struct Census<'a> {
    /// Every array's tasks by state.
    arrays: BTreeMap<u64, ArrayTally>,
    /// Records of array tasks by (array, task index).
    tasks: HashMap<(u64, u32), &'a pb::Job>,
    /// Per (user, name) that a pending `singleton` job names: running jobs, and the
    /// lowest id still pending.
    names: HashMap<(&'a str, &'a str), (u32, u64)>,
    /// Running tasks per array.
    running: BTreeMap<u64, u32>,
}

impl<'a> Census<'a> {
    /// Walks every job of `sm` once (twice when a pending job waits on `singleton`).
    pub fn of(sm: &'a StateMachine) -> Census<'a> {
        let mut c = Census::default();
        // Only the names a pending `singleton` job asks about are tallied: hashing every
        // job's user and name on every pass was the largest cost of a pass over a long
        // queue, and almost no job asks.
        for j in sm.state.jobs.values() {
            let Some(s) = j.spec.as_ref() else { continue };
            if j.state() == JobState::Pending
                && s.dependencies.iter().any(|d| d.kind == "singleton")
            {
                c.names
                    .insert((s.user.as_str(), s.name.as_str()), (0, u64::MAX));
            }
        }
        for j in sm.state.jobs.values() {
            let state = j.state();
            let asked = j
                .spec
                .as_ref()
                .and_then(|s| c.names.get_mut(&(s.user.as_str(), s.name.as_str())));
            if let Some(e) = asked {
                match state {
                    JobState::Running => e.0 += 1,
                    JobState::Pending => e.1 = e.1.min(j.id),
                    _ => {}
                }
            }
            if j.array_job_id == 0 {
                continue;
            }
            let t = c.arrays.entry(j.array_job_id).or_default();
            if array::holds_pending(j) {
                let left = array::tasks_of(j).len();
                if state == JobState::Pending {
                    t.pending += left;
                } else {
                    // A cancelled array's record keeps the tasks it never started.
                    t.not_ok += left;
                }
            }
            if let Some(i) = j.array_task_id {
                c.tasks.insert((j.array_job_id, i), j);
                let ok = state == JobState::Completed && j.exit_code == 0 && j.exit_signal == 0;
                match state {
                    JobState::Pending => t.pending += 1,
                    JobState::Running => {
                        t.running += 1;
                        *c.running.entry(j.array_job_id).or_insert(0) += 1;
                    }
                    _ if !ok => t.not_ok += 1,
                    _ => {}
                }
            }
        }
        c
    }

    /// What condition `d` of a record refers to; `task` is the dependent's own task
    /// index (for `aftercorr`).
    fn target(
        &self,
        sm: &'a StateMachine,
        d: &pb::DependencyCondition,
        task: Option<u32>,
    ) -> Target<'a> {
        let Some(dep) = sm.state.jobs.get(&d.job_id) else {
            return Target::Missing;
        };
        let index = match (d.kind.as_str(), d.array_task_id, task) {
            (_, Some(i), _) => Some(i),
            ("aftercorr", None, Some(i)) if dep.array_job_id == dep.id => Some(i),
            _ => None,
        };
        match index {
            Some(i) => self.task(sm, d.job_id, i),
            None if dep.array_job_id == dep.id => self
                .arrays
                .get(&dep.id)
                .map_or(Target::Job(dep), |t| Target::Array(*t)),
            None => Target::Job(dep),
        }
    }

    /// Task `index` of array `array`.
    fn task(&self, sm: &'a StateMachine, array: u64, index: u32) -> Target<'a> {
        if let Some(j) = self.tasks.get(&(array, index)) {
            return Target::Job(j);
        }
        let pending = sm.state.jobs.get(&array).is_some_and(|meta| {
            array::holds_pending(meta)
                && meta.state() == JobState::Pending
                && array::tasks_of(meta).contains(index)
        });
        if pending {
            Target::PendingTask
        } else {
            Target::Missing
        }
    }

    /// Whether `job` (task `task` of its array, when it is one) may start as far as its
    /// dependencies go.
    pub fn status(
        &self,
        sm: &'a StateMachine,
        job: &pb::Job,
        task: Option<u32>,
    ) -> DependencyStatus {
        let deps = job.spec.as_ref().map_or(&[][..], |s| &s.dependencies[..]);
        dependency::status(deps, |d| {
            if d.kind == "singleton" {
                return self.singleton(job);
            }
            dependency::condition(&d.kind, self.target(sm, d, task))
        })
    }

    /// `singleton`: no other job of the same user and name runs, and none submitted
    /// earlier is pending.
    fn singleton(&self, job: &pb::Job) -> DependencyStatus {
        let Some(s) = job.spec.as_ref() else {
            return DependencyStatus::Satisfied;
        };
        let (running, first_pending) = self
            .names
            .get(&(s.user.as_str(), s.name.as_str()))
            .copied()
            .unwrap_or((0, u64::MAX));
        let running_other = running > u32::from(job.state() == JobState::Running);
        if running_other || first_pending < job.id {
            DependencyStatus::Waiting
        } else {
            DependencyStatus::Satisfied
        }
    }

    /// Tasks array `array` may still start under its throttle (`None`: no throttle).
    fn room(&self, sm: &StateMachine, array: u64) -> Option<u32> {
        let limit = sm
            .state
            .jobs
            .get(&array)
            .and_then(|j| j.spec.as_ref())
            .and_then(|s| s.array.as_ref())
            .map_or(0, |a| a.max_running);
        (limit > 0).then(|| limit.saturating_sub(self.running.get(&array).copied().unwrap_or(0)))
    }
}

/// Whether an aftercorr-style per-task check is needed for a record's pending tasks.
fn per_task(job: &pb::Job) -> bool {
    job.spec
        .as_ref()
        .is_some_and(|s| s.dependencies.iter().any(|d| d.kind == "aftercorr"))
}

impl StateMachine {
    /// Pending records not held, by id: what a pass may place. When there are none (a
    /// queue of held or finished jobs, which every job change wakes a pass for) the pass
    /// skips the census.
    fn placeable(&self) -> Vec<&pb::Job> {
        self.state
            .jobs
            .values()
            .filter(|j| j.state() == JobState::Pending && !j.held)
            .collect()
    }

    /// Where the dependencies of `job` stand (satisfied when it has none).
    pub fn dependency_status(&self, job: &pb::Job) -> DependencyStatus {
        Census::of(self).status(self, job, job.array_task_id)
    }

    /// Pending jobs (not held) that wait on their dependencies, with Slurm's reason
    /// (`Dependency` or `DependencyNeverSatisfied`).
    pub fn dependency_waits(&self) -> Vec<(u64, &'static str)> {
        let waiting = self.placeable();
        if waiting.is_empty() {
            return Vec::new();
        }
        let census = Census::of(self);
        waiting
            .into_iter()
            .filter_map(|j| {
                // An array's pending tasks wait together: the first one speaks for them.
                let task = j.array_task_id.or_else(|| {
                    array::tasks_of(j)
                        .first()
                        .filter(|_| array::holds_pending(j))
                });
                Some((j.id, census.status(self, j, task).reason()?))
            })
            .collect()
    }

    /// Records of arrays (pending, not held, their dependencies met) that wait only
    /// because their array already runs as many tasks as its `%N` throttle allows:
    /// Slurm's reason `JobArrayTaskLimit`. The pass never sees them.
    pub fn throttle_waits(&self) -> Vec<u64> {
        let mut arrays = self.placeable();
        arrays.retain(|j| j.array_job_id != 0);
        if arrays.is_empty() {
            return Vec::new();
        }
        let census = Census::of(self);
        arrays
            .into_iter()
            .filter(|j| census.room(self, j.array_job_id) == Some(0))
            .filter(|j| {
                let task = j.array_task_id.or_else(|| array::tasks_of(j).first());
                census.status(self, j, task) == DependencyStatus::Satisfied
            })
            .map(|j| j.id)
            .collect()
    }

    /// Jobs ready to be placed, FIFO by id (held jobs wait for release, dependent jobs
    /// for their dependencies).
    pub fn pending_jobs(&self) -> Vec<policies::PendingJob> {
        self.pending_with_tasks().0
    }

    /// [`StateMachine::pending_jobs`] with array tasks: an array's record stands for as
    /// many of its pending tasks as could start now (see [`StateMachine::array_views`]);
    /// their views carry synthetic ids, mapped back by the returned [`TaskViews`].
    pub fn pending_with_tasks(&self) -> (Vec<policies::PendingJob>, TaskViews) {
        let mut views = TaskViews::default();
        let mut out = Vec::new();
        let waiting = self.placeable();
        if waiting.is_empty() {
            return (out, views);
        }
        let census = Census::of(self);
        let mut rooms: BTreeMap<u64, Option<u32>> = BTreeMap::new();
        for j in waiting {
            let mut p = pending_view(j.id, j.spec.as_ref().expect("jobs have specs"));
            p.account = j.account.clone();
            p.user = j.spec.as_ref().map(|s| s.user.clone()).unwrap_or_default();
            p.qos = j.qos.clone();
            p.submit_ms = j.eligible_time_ms.max(j.submit_time_ms);
            p.preempted_for = j.preempted_for.clone();
            if j.array_job_id == 0 {
                if census.status(self, j, None) == DependencyStatus::Satisfied {
                    out.push(p);
                }
                continue;
            }
            let room = rooms
                .entry(j.array_job_id)
                .or_insert_with(|| census.room(self, j.array_job_id));
            if room == &Some(0) {
                continue;
            }
            if array::holds_pending(j) {
                let corr = per_task(j);
                let whole = census.status(self, j, None);
                if !corr && whole != DependencyStatus::Satisfied {
                    continue;
                }
                let ready = |i: u32| {
                    !corr || census.status(self, j, Some(i)) == DependencyStatus::Satisfied
                };
                let tasks = self.array_views(j, &p, *room, ready, &mut views);
                if let Some(r) = room.as_mut() {
                    *r = r.saturating_sub(tasks.len() as u32);
                }
                out.extend(tasks);
            } else if census.status(self, j, j.array_task_id) == DependencyStatus::Satisfied {
                if let Some(r) = room.as_mut() {
                    *r -= 1;
                }
                out.push(p);
            }
        }
        (out, views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{after, alloc, ended, inventory, register, spec, submit};
    use berth_proto::v1::command::Cmd;

    fn named(user: &str, name: &str, singleton: bool) -> Cmd {
        let mut s = spec(0);
        s.user = user.into();
        s.name = name.into();
        if singleton {
            s.dependencies = vec![pb::DependencyCondition {
                kind: "singleton".into(),
                job_id: 0,
                array_task_id: None,
            }];
        }
        submit(s)
    }

    fn ready(sm: &StateMachine) -> Vec<u64> {
        sm.pending_jobs().iter().map(|p| p.id).collect()
    }

    #[test]
    fn singleton_waits_for_its_own_name_and_user_only() {
        // Job 1: alice's "a" (no dependency), placed; 2 and 3: alice's "a", singleton;
        // 4: bob's "a", singleton; 5: alice's "b", singleton.
        let mut log = vec![
            register(inventory("n1", 0)),
            named("alice", "a", false),
            alloc(1, "n1", &[]),
            named("alice", "a", true),
            named("alice", "a", true),
            named("bob", "a", true),
            named("alice", "b", true),
        ];
        let (sm, _, _) = after(log.clone());
        // 2 waits for running 1; 3 for pending 2 (earlier); 4 and 5 are other names.
        assert_eq!(ready(&sm), vec![4, 5]);
        assert_eq!(
            sm.dependency_waits(),
            vec![(2, "Dependency"), (3, "Dependency")]
        );
        // Once 1 ends, 2 may start; 3 still waits for 2.
        log.push(ended(1, "n1", JobState::Completed, 0));
        let (sm, _, _) = after(log);
        assert_eq!(ready(&sm), vec![2, 4, 5]);
        assert_eq!(sm.dependency_waits(), vec![(3, "Dependency")]);
    }
}
