//! A job ending: its end recorded, its resources given back, and a job that should run
//! again (requeue, preemption) queued once more under its id.

use super::*;

impl StateMachine {
    pub(super) fn job_ended(&mut self, ended: pb::JobEnded, now: u64) -> Applied {
        let ack = Effect::Ack {
            node: ended.node.clone(),
            job_id: ended.job_id,
        };
        let Some(job) = self.state.jobs.get(&ended.job_id) else {
            return (Outcome::NoSuchJob(ended.job_id), vec![]);
        };
        let runs_there = job.state() == JobState::Running
            && job.allocations.first().map(|a| &a.node) == Some(&ended.node);
        if !runs_there {
            // A duplicate report, or a job the agent ran after berthd gave up on it: nothing
            // to record, but the agent may forget it.
            return (Outcome::Done, vec![ack]);
        }
        let requeue_asked = job.requeue_requested;
        let mut finished = ended.finished.unwrap_or_default();
        // A released allocation ends with its client's exit, not the holder's SIGTERM (a
        // time limit reached first stays a TIMEOUT).
        if let Some(r) = &job.released {
            if matches!(finished.state(), JobState::Completed | JobState::Failed) {
                finished.exit_code = r.exit_code;
                finished.signal = r.signal;
            }
        }
        if !is_final(finished.state()) {
            return (
                Outcome::Rejected(format!("{:?} is not an end state", finished.state())),
                vec![],
            );
        }
        let stopped_by_berth = matches!(finished.state(), JobState::Preempted | JobState::NodeFail);
        // The batch script's end ends the job: steps still running anywhere are stopped.
        let mut effects = self.stop_steps(ended.job_id, true);
        if requeue_asked || (stopped_by_berth && self.requeues(ended.job_id)) {
            self.requeue(ended.job_id, &finished, now);
        } else {
            self.finish(ended.job_id, &finished, now);
        }
        effects.extend([ack, changed(ended.job_id)]);
        (Outcome::Done, effects)
    }

    /// Whether a preempted job, or one stopped on a failed GPU, goes back to the queue:
    /// `--requeue`/`--no-requeue`, else its class's default.
    pub(super) fn requeues(&self, id: u64) -> bool {
        let job = &self.state.jobs[&id];
        let spec = job.spec.as_ref();
        match spec.and_then(|s| s.requeue) {
            Some(r) => r,
            None => self
                .accounts
                .resolve_qos(&job.qos)
                .map(|q| q.requeue)
                .unwrap_or(false),
        }
    }

    /// A preempted (or GPU-failed) job ends its run (resources freed, usage charged) and waits again with
    /// the same id, one more restart, and a fresh eligible time.
    pub(super) fn requeue(&mut self, id: u64, f: &pb::JobFinished, now: u64) {
        // Accounting keeps the ended run (one record per run) before the job is reset.
        let run = runs::run_of(&self.state.jobs[&id], f.state(), f, self.applied_index, now);
        self.release(id, f, now);
        self.queue_again(id, run, now);
    }

    /// Job `id`, whose run `run` ended and whose resources are free, waits again under its
    /// id: one more restart, a fresh eligible time.
    pub(super) fn queue_again(&mut self, id: u64, run: pb::JobRun, now: u64) {
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        runs::push_run(job, run);
        job.requeue_requested = false;
        job.usage.clear();
        job.state = JobState::Pending as i32;
        job.reason = "None".into();
        job.restart_count += 1;
        job.eligible_time_ms = now;
        job.start_time_ms = 0;
        job.end_time_ms = 0;
        job.allocations.clear();
        job.kill_requested = false;
        job.preempting = false;
        job.kill_time_ms = 0;
        job.exit_code = 0;
        job.exit_signal = 0;
    }

    /// Records the end of a running job and frees everything it held.
    pub(super) fn finish(&mut self, id: u64, f: &pb::JobFinished, now: u64) {
        self.release(id, f, now);
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        job.preempting = false;
        job.state = f.state;
        job.exit_code = f.exit_code;
        job.exit_signal = f.signal;
        job.reason = if f.reason.is_empty() {
            "None".into()
        } else {
            f.reason.clone()
        };
        job.end_time_ms = if f.end_time_ms > 0 {
            f.end_time_ms
        } else {
            now
        };
        job.kill_requested = false;
    }

    /// Frees what job `id` held and charges its account for the run: GPU-equivalent
    /// seconds by dominant share, decayed with the configured half-life. The run ends at
    /// the agent's reported end time when it has one (clamped into `[start, now]`), else
    /// at the command's time: never a clock read here.
    pub(super) fn release(&mut self, id: u64, f: &pb::JobFinished, now: u64) {
        let cap = self.capacity();
        let half_life = self.accounts.policy.half_life_ms;
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        let start = job.start_time_ms.min(now);
        let end = if f.end_time_ms > 0 {
            f.end_time_ms.clamp(start, now)
        } else {
            now
        };
        let gpu_milli: u64 = job
            .allocations
            .iter()
            .map(|a| {
                let per = if a.gpu_milli > 0 {
                    a.gpu_milli
                } else {
                    GPU_MILLI
                };
                a.gpu_uuids.len() as u64 * u64::from(per)
            })
            .sum();
        // charge = measured | max(measured, F): GPUs count by their measured busy part.
        let has_mig = job.allocations.iter().any(|a| !a.mig_slices.is_empty());
        let factor = self.accounts.charge.gpu_factor(&job.usage, has_mig);
        let gpu_milli = (gpu_milli as f64 * factor).round() as u64;
        let cpus: u64 = job.allocations.iter().map(|a| u64::from(a.cpus)).sum();
        let mem: u64 = job.allocations.iter().map(|a| a.mem_mb).sum();
        let slices: Vec<policies::mig::MigGrant> = job
            .allocations
            .iter()
            .flat_map(|a| &a.mig_slices)
            .map(|s| policies::mig::MigGrant {
                size: s.placement_size,
                ..Default::default()
            })
            .collect();
        let rate = policies::mig::charge_rate(
            policies::fairshare::dominant_rate_milli(gpu_milli, cpus, mem, &cap),
            &slices,
            &cap,
        );
        let mut usage = policies::Usage {
            by_account: std::mem::take(&mut self.state.usage).into_iter().collect(),
            as_of_ms: self.state.usage_as_of_ms,
        };
        if !job.account.is_empty() && rate > 0.0 {
            usage.charge(&job.account, rate, start, end, half_life);
        }
        usage.advance(now, half_life);
        self.state.usage = usage.by_account.into_iter().collect();
        self.state.usage_as_of_ms = usage.as_of_ms;
        let job = self.state.jobs.get_mut(&id).expect("caller checked");
        for a in job.allocations.clone() {
            let Some(node) = self.state.nodes.get_mut(&a.node) else {
                continue;
            };
            node.cpus_alloc = node.cpus_alloc.saturating_sub(a.cpus);
            node.memory_alloc_mb = node.memory_alloc_mb.saturating_sub(a.mem_mb);
            for gpu in node.inventory.iter_mut().flat_map(|i| i.gpus.iter_mut()) {
                if gpu.job_id == id {
                    gpu.job_id = 0;
                }
                release_shares(gpu, id);
                mig::release(gpu, id);
            }
            self.recount(&a.node);
        }
    }
}
