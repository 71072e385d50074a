//! Stopping a job: the kill request recorded in its directory first (so a restarted agent
//! reports the state berthd asked for), then SIGTERM (or `--signal`) to its process group,
//! SIGKILL after the grace period; and `--signal=B:…` warnings to the batch shell.

use super::*;

impl Supervisor {
    /// Starts stopping job `id`: SIGCONT and SIGTERM to its process group now, SIGKILL after
    /// the grace period (see [`Supervisor::poll`]); it will be reported as `state`.
    /// Unknown or finished jobs are ignored.
    pub fn kill(&self, id: u64, state: JobState, reason: &str) {
        self.kill_how(id, state, reason, KillHow::default());
    }

    /// [`Supervisor::kill`] with a chosen first signal and grace (preemption).
    pub fn kill_how(&self, id: u64, state: JobState, reason: &str, how: KillHow) {
        if !self.job_dir(id).join("job.pb").exists() || self.job_dir(id).join("exit.json").exists()
        {
            return;
        }
        let mut rec = self
            .read::<KillRecord>(id, "kill.json")
            .unwrap_or(KillRecord {
                state: state as i32,
                reason: reason.into(),
                kill_at_ms: now_ms()
                    + match how.grace_secs {
                        0 => self.kill_grace.as_millis() as u64,
                        s => u64::from(s) * 1000,
                    },
                term_sent: false,
                signal: how.signal,
                batch_only: how.batch_only,
            });
        self.terminate(id, &mut rec);
    }

    /// Sends SIGCONT + SIGTERM to the job's process group once its pid is known, and records
    /// the kill either way.
    pub(super) fn terminate(&self, id: u64, rec: &mut KillRecord) {
        if let Some(c) = self.read::<crate::oci::ContainerJob>(id, "container.json") {
            if !rec.term_sent && self.read::<u32>(id, "pid").is_some() {
                // The container's init is PID 1 of its namespace and ignores SIGTERM
                // without a handler: signal every process, as slurmstepd does a step.
                let first = if rec.signal == 0 { 15 } else { rec.signal };
                rec.term_sent = crate::oci::signal_container(&c, "CONT")
                    .and_then(|_| crate::oci::signal_container(&c, &first.to_string()))
                    .is_ok();
            }
            write_json(&self.job_dir(id), "kill.json", rec);
            return;
        }
        if !rec.term_sent {
            if let Some(pid) = self.read::<u32>(id, "pid") {
                let pgid = Pid::from_raw(-(pid as i32));
                let first = Signal::try_from(rec.signal).unwrap_or(Signal::SIGTERM);
                let target = if rec.batch_only {
                    Pid::from_raw(pid as i32)
                } else {
                    pgid
                };
                let _ = kill(pgid, Signal::SIGCONT);
                let _ = kill(target, first);
                rec.term_sent = true;
            }
        }
        write_json(&self.job_dir(id), "kill.json", rec);
    }

    /// `--signal=B:SIG@SECS`: the batch shell alone gets SIG once, SECS before the time
    /// limit at `limit_at_ms` (the steps' tasks, without `B:`, are signalled by their
    /// agents: see `steps::warning`).
    pub(super) fn warn_batch_shell(
        &self,
        id: u64,
        job: &pb::Job,
        pid: Option<u32>,
        limit_at_ms: u64,
        now: u64,
    ) {
        let Some(spec) = job.spec.as_ref() else {
            return;
        };
        let (Some(pid), true) = (pid, spec.signal_batch_only) else {
            return;
        };
        if spec.signal_secs == 0 || spec.time_limit_secs == 0 {
            return;
        }
        let at = limit_at_ms.saturating_sub(u64::from(spec.signal_secs) * 1000);
        let marker = self.job_dir(id).join("warned");
        if now < at || marker.exists() {
            return;
        }
        let sig = Signal::try_from(spec.signal).unwrap_or(Signal::SIGTERM);
        tracing::info!(job = id, signal = %sig, "time limit warning to the batch shell");
        if let Some(c) = self.read::<crate::oci::ContainerJob>(id, "container.json") {
            let _ = crate::oci::signal_container(&c, &(sig as i32).to_string());
        } else {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
        write_json(&self.job_dir(id), "warned", &now);
    }
}
