//! Job supervision with the `process` runtime: launch through the shim, signal process
//! groups, enforce time limits, and remember every job on disk until berthd acknowledges
//! its end.
//!
//! Each job has a directory `<state-dir>/jobs/<id>/` holding the launch (`job.pb`), the
//! script, the shim's spec, the pid, the kill request and the exit record. The directory is
//! the agent's whole memory of a job, so an agent restart loses nothing: running jobs keep
//! running under their shims and are found again, and finished ones are reported again
//! until berthd acknowledges them (then the directory is removed).

use crate::job_env;
use crate::shim::{write_json, ExitRecord, ShimSpec, SHIM_ARG};
use berth_proto::v1::{self as pb, job_event, JobState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors starting a job.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The job directory or a file in it could not be written.
    #[error("job {0}: {1}")]
    Io(u64, std::io::Error),
    /// The launch message is missing pieces.
    #[error("job {0}: {1}")]
    Invalid(u64, String),
}

/// A kill in progress: what to report, and when SIGTERM becomes SIGKILL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct KillRecord {
    state: i32,
    reason: String,
    kill_at_ms: u64,
    /// SIGTERM reached the process group. A kill that arrives before the shim has started
    /// the job is signalled on a later poll.
    #[serde(default)]
    term_sent: bool,
    /// Signal sent instead of SIGTERM (preemption with `--signal`); 0: SIGTERM.
    #[serde(default)]
    signal: i32,
    /// Send it to the batch shell only (`--signal=B:…`), not the whole process group.
    #[serde(default)]
    batch_only: bool,
}

/// How a kill starts: the signal, who gets it, and the grace before SIGKILL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KillHow {
    /// Signal number sent first; 0 means SIGTERM.
    pub signal: i32,
    /// Only the batch shell (the process group leader) gets it.
    pub batch_only: bool,
    /// Seconds before SIGKILL; 0 means the agent's kill wait.
    pub grace_secs: u32,
}

/// Where a job stands on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Launched; `pid` once the shim has started it.
    Running(Option<u32>),
    /// Over, with the report for berthd.
    Finished(pb::JobFinished),
}

/// The jobs of this node, on disk.
pub struct Supervisor {
    dir: PathBuf,
    shim_exe: PathBuf,
    kill_grace: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

impl Supervisor {
    /// Supervises jobs stored under `state_dir/jobs`, starting shims with `shim_exe`.
    ///
    /// # Errors
    /// When the jobs directory cannot be created.
    pub fn new(
        state_dir: &Path,
        shim_exe: PathBuf,
        kill_grace: Duration,
    ) -> std::io::Result<Supervisor> {
        let dir = state_dir.join("jobs");
        fs::create_dir_all(&dir)?;
        Ok(Supervisor {
            dir,
            shim_exe,
            kill_grace,
        })
    }

    fn job_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Job ids known on this node, ascending.
    pub fn job_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|id| self.job_dir(*id).join("job.pb").exists())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Starts `job` unless this node already knows it (launches are idempotent: berthd
    /// re-sends them after reconnects). Returns false when it was already known.
    ///
    /// # Errors
    /// [`LaunchError`] when the job directory cannot be prepared; nothing is started then.
    pub fn launch(&self, job: &pb::Job, node: &str) -> Result<bool, LaunchError> {
        let dir = self.job_dir(job.id);
        if dir.join("job.pb").exists() {
            return Ok(false);
        }
        let spec = job
            .spec
            .as_ref()
            .ok_or_else(|| LaunchError::Invalid(job.id, "launch without spec".into()))?;
        if job.stdout_path.is_empty() {
            return Err(LaunchError::Invalid(
                job.id,
                "launch without output path".into(),
            ));
        }
        let io = |e| LaunchError::Io(job.id, e);
        fs::create_dir_all(&dir).map_err(io)?;
        let script = dir.join("script");
        fs::write(&script, &spec.script).map_err(io)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).map_err(io)?;
        let mut argv = vec![script.display().to_string()];
        argv.extend(spec.args.iter().cloned());
        let as_root = nix::unistd::geteuid().is_root();
        let shim = ShimSpec {
            argv,
            env: job_env::build(job, node).into_iter().collect(),
            cwd: PathBuf::from(&spec.work_dir),
            stdout: PathBuf::from(&job.stdout_path),
            stderr: PathBuf::from(&job.stderr_path),
            uid_gid: (as_root && spec.uid != 0).then_some((spec.uid, spec.gid)),
        };
        write_json(&dir, "shim.json", &shim);
        write_json(&dir, "started_ms", &now_ms());
        // job.pb last: its presence is what marks the job as launched.
        fs::write(dir.join("job.pb"), job.encode_to_vec()).map_err(io)?;
        let child = std::process::Command::new(&self.shim_exe)
            .arg(SHIM_ARG)
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .process_group(0)
            .spawn();
        match child {
            Ok(mut child) => {
                write_json(&dir, "shim_pid", &child.id());
                // Reap the shim when it exits; after an agent restart init does that.
                std::thread::spawn(move || child.wait());
                Ok(true)
            }
            Err(e) => {
                let rec = ExitRecord {
                    error: Some(format!(
                        "cannot start shim {}: {e}",
                        self.shim_exe.display()
                    )),
                    ..Default::default()
                };
                write_json(&dir, "exit.json", &rec);
                Ok(true)
            }
        }
    }

    fn read<T: serde::de::DeserializeOwned>(&self, id: u64, name: &str) -> Option<T> {
        serde_json::from_slice(&fs::read(self.job_dir(id).join(name)).ok()?).ok()
    }

    fn load(&self, id: u64) -> Option<pb::Job> {
        pb::Job::decode(&fs::read(self.job_dir(id).join("job.pb")).ok()?[..]).ok()
    }

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
    fn terminate(&self, id: u64, rec: &mut KillRecord) {
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

    fn status(&self, id: u64, job: &pb::Job, now: u64) -> Status {
        let kill_rec: Option<KillRecord> = self.read(id, "kill.json");
        if let Some(exit) = self.read::<ExitRecord>(id, "exit.json") {
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
            write_json(&self.job_dir(id), "exit.json", &exit);
            return Status::Finished(finished(&exit, kill_rec.as_ref(), now));
        }
        let started: u64 = self.read(id, "started_ms").unwrap_or(now);
        let limit_ms = job.spec.as_ref().map(|s| s.time_limit_secs).unwrap_or(0) * 1000;
        match kill_rec {
            None if limit_ms > 0 && now >= started + limit_ms => {
                self.kill(id, JobState::Timeout, "TimeLimit")
            }
            Some(k) if now >= k.kill_at_ms => {
                if let Some(p) = pid {
                    let _ = kill(Pid::from_raw(-(p as i32)), Signal::SIGKILL);
                }
            }
            Some(mut k) if !k.term_sent => self.terminate(id, &mut k),
            _ => {}
        }
        Status::Running(pid)
    }

    /// Forgets job `id`: berthd has recorded its end.
    pub fn ack(&self, id: u64) {
        if self.job_dir(id).join("exit.json").exists() {
            let _ = fs::remove_dir_all(self.job_dir(id));
        }
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
fn finished(exit: &ExitRecord, kill: Option<&KillRecord>, now: u64) -> pb::JobFinished {
    let (state, reason) = match (kill, &exit.error) {
        (_, Some(err)) => (JobState::Failed as i32, err.clone()),
        (Some(k), None) => (k.state, k.reason.clone()),
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

    #[test]
    fn unknown_jobs_are_ignored_and_launch_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        // /bin/true as the shim: it exits at once without recording anything, which the
        // supervisor must report as a lost job rather than leave running forever.
        let sup = Supervisor::new(dir.path(), "/bin/true".into(), Duration::from_secs(1)).unwrap();
        sup.kill(42, JobState::Cancelled, "nothing to kill");
        sup.ack(42);
        assert!(sup.poll().is_empty());
        let spec = pb::JobSpec {
            script: "#!/bin/sh\n".into(),
            work_dir: "/tmp".into(),
            ..Default::default()
        };
        let job = pb::Job {
            id: 7,
            spec: Some(spec),
            stdout_path: "/tmp/x.out".into(),
            ..Default::default()
        };
        assert!(sup.launch(&job, "n1").unwrap());
        assert!(
            !sup.launch(&job, "n1").unwrap(),
            "a second launch of the same job is ignored"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Status::Finished(f)) = sup.poll().get(&7) {
                assert_eq!(f.state(), JobState::Failed);
                assert!(f.reason.contains("supervisor lost"), "{}", f.reason);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "lost shim never noticed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sup.ack(7);
        assert!(sup.poll().is_empty(), "acknowledged jobs are forgotten");
        let no_path = pb::Job {
            id: 8,
            spec: job.spec.clone(),
            ..Default::default()
        };
        assert!(matches!(
            sup.launch(&no_path, "n1"),
            Err(LaunchError::Invalid(8, _))
        ));
    }
}
