//! What became of each job: running, finished (its exit record mapped to Slurm's states),
//! or lost, for the events the agent reports to berthd until they are acknowledged.

use super::*;

impl Supervisor {
    /// Enforces time limits and kill deadlines, and returns the status of every known job.
    pub fn poll(&self) -> BTreeMap<u64, Status> {
        let now = now_ms();
        let mut out = BTreeMap::new();
        for id in self.job_ids() {
            let Some(job) = self.load(id) else { continue };
            let status = self.status(id, &job, now);
            out.insert(id, status);
        }
        out
    }

    pub(super) fn status(&self, id: u64, job: &pb::Job, now: u64) -> Status {
        let kill_rec: Option<KillRecord> = self.read(id, "kill.json");
        if let Some(exit) = self.read::<ExitRecord>(id, "exit.json") {
            if self.release_job_mig(id) && self.job_dir(id).join("acked").exists() {
                let _ = fs::remove_dir_all(self.job_dir(id));
            }
            return Status::Finished(finished(&exit, kill_rec.as_ref(), now));
        }
        let pid: Option<u32> = self.read(id, "pid");
        let shim_alive = self.read::<u32>(id, "shim_pid").is_some_and(alive);
        if !shim_alive && pid.is_none_or(|p| !alive(p)) {
            // The shim died without recording an exit (the machine rebooted, or it was
            // killed): the job is gone and its status unknowable. Say so.
            let exit = ExitRecord {
                error: Some("job supervisor lost (node rebooted or shim killed)".into()),
                ..Default::default()
            };
            if let Some(c) = self.read::<crate::oci::ContainerJob>(id, "container.json") {
                // Nobody waits for the container any more: stop it and remove its traces.
                crate::shim::container::cleanup(&self.job_dir(id), &c);
            }
            write_json(&self.job_dir(id), "exit.json", &exit);
            return Status::Finished(finished(&exit, kill_rec.as_ref(), now));
        }
        let started: u64 = self.read(id, "started_ms").unwrap_or(now);
        let limit_ms = job.spec.as_ref().map(|s| s.time_limit_secs).unwrap_or(0) * 1000;
        if kill_rec.is_none() {
            self.warn_batch_shell(id, job, pid, started + limit_ms, now);
        }
        match kill_rec {
            None if limit_ms > 0 && now >= started + limit_ms => {
                self.kill(id, JobState::Timeout, "TimeLimit")
            }
            Some(k) if now >= k.kill_at_ms => {
                if let Some(c) = self.read::<crate::oci::ContainerJob>(id, "container.json") {
                    let _ = crate::oci::signal_container(&c, "KILL");
                } else if let Some(p) = pid {
                    let _ = kill(Pid::from_raw(-(p as i32)), Signal::SIGKILL);
                }
            }
            Some(mut k) if !k.term_sent => self.terminate(id, &mut k),
            _ => {}
        }
        Status::Running(pid)
    }

    /// Every job as a report for `Register`: running ones as started, finished ones with
    /// their end.
    pub fn report(&self) -> Vec<pb::JobEvent> {
        self.poll()
            .into_iter()
            .map(|(id, st)| event(id, st))
            .collect()
    }
}

/// The report for berthd of a job in `status`.
pub fn event(job_id: u64, status: Status) -> pb::JobEvent {
    let event = match status {
        Status::Running(pid) => job_event::Event::Started(pb::JobStarted {
            pid: pid.unwrap_or(0),
        }),
        Status::Finished(f) => job_event::Event::Finished(f),
    };
    pb::JobEvent {
        job_id,
        event: Some(event),
    }
}

/// Slurm's mapping: a requested kill reports the kill's state (CANCELLED, TIMEOUT);
/// exit 0 is COMPLETED; anything else, a signal included, is FAILED.
pub(super) fn finished(exit: &ExitRecord, kill: Option<&KillRecord>, now: u64) -> pb::JobFinished {
    let (state, reason) = match (kill, &exit.error) {
        (_, Some(err)) => (JobState::Failed as i32, err.clone()),
        (Some(k), None) => (k.state, k.reason.clone()),
        // Slurm reports an OOM kill in the job's cgroup as OUT_OF_MEMORY even when the
        // script carried on and exited 0.
        (None, None) if exit.oom => (JobState::OutOfMemory as i32, "OutOfMemory".into()),
        (None, None) if exit.code == Some(0) => (JobState::Completed as i32, String::new()),
        (None, None) if exit.signal.is_some() => (
            JobState::Failed as i32,
            format!("RaisedSignal:{}", exit.signal.unwrap_or(0)),
        ),
        (None, None) => (JobState::Failed as i32, "NonZeroExitCode".into()),
    };
    pb::JobFinished {
        state,
        exit_code: exit.code.unwrap_or(0),
        signal: exit.signal.unwrap_or(0),
        reason,
        end_time_ms: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_records_map_to_slurm_states() {
        let cancel = KillRecord {
            state: JobState::Cancelled as i32,
            reason: "cancelled".into(),
            kill_at_ms: 0,
            term_sent: true,
            signal: 0,
            batch_only: false,
        };
        let rec = |code: Option<i32>, signal: Option<i32>, error: Option<&str>| ExitRecord {
            code,
            signal,
            error: error.map(str::to_string),
            oom: false,
        };
        let cases = [
            (rec(Some(0), None, None), None, JobState::Completed, ""),
            (
                rec(Some(3), None, None),
                None,
                JobState::Failed,
                "NonZeroExitCode",
            ),
            (
                rec(None, Some(9), None),
                None,
                JobState::Failed,
                "RaisedSignal:9",
            ),
            (
                rec(None, Some(15), None),
                Some(&cancel),
                JobState::Cancelled,
                "cancelled",
            ),
            (
                ExitRecord {
                    oom: true,
                    ..rec(Some(0), None, None)
                },
                None,
                JobState::OutOfMemory,
                "OutOfMemory",
            ),
            (
                rec(None, None, Some("cannot start")),
                Some(&cancel),
                JobState::Failed,
                "cannot start",
            ),
        ];
        for (i, (exit, kill, state, reason)) in cases.iter().enumerate() {
            let got = finished(exit, *kill, 1);
            if got.state() != *state || got.reason != *reason {
                panic!(
                    "#{i}: want {state:?} {reason:?}, got {:?} {:?}",
                    got.state(),
                    got.reason
                );
            }
        }
    }
}
