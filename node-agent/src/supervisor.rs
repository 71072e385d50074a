//! Job supervision with the `process` runtime: launch through the shim, signal process
//! groups, enforce time limits, and remember every job on disk until berthd acknowledges
//! its end.
//!
//! Each job has a directory `<state-dir>/jobs/<id>/` holding the launch (`job.pb`), the
//! script, the shim's spec, the pid, the kill request and the exit record. The directory is
//! the agent's whole memory of a job, so an agent restart loses nothing: running jobs keep
//! running under their shims and are found again, and finished ones are reported again
//! until berthd acknowledges them (then the directory is removed).
//!
//! A job whose allocation names MIG slices gets them carved before it starts and
//! destroyed after it ends (see `mig.rs`). Ownership is written to `mig.json` in the
//! job directory *before* each slice is created, so an agent that crashes at any point
//! finds on restart which instances belong to which job.
//!
//! # Layout
//! Here: the job directory, launch, acknowledgement. Beside it: `kill.rs` (signals, grace,
//! `--signal` warnings), `status.rs` (exit records → Slurm states, the events reported),
//! `usage.rs` (GPU metering), `mig.rs` (carving and releasing MIG slices).

use crate::gpu::{GpuBackend, MigDevice};
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
    /// A MIG slice the allocation names could not be carved; nothing was left behind.
    #[error("job {0}: {1}")]
    Mig(u64, crate::gpu::GpuError),
    /// The launch's identity is missing or does not verify; nothing was started.
    #[error("job {0}: {1}")]
    Refused(u64, String),
    /// The container request is refused (forbidden mount, no runtime); nothing was left
    /// behind.
    #[error("job {0}: {1}")]
    Container(u64, crate::oci::OciError),
}

/// What an allocation without a batch script (salloc, srun outside a job) runs on its
/// first node: a process that holds the allocation, so its time limit, scancel and the
/// release by its client all stop it as they stop a batch job (Slurm's extern step
/// holds its allocation with a sleeping process too). It ends by itself a little after
/// the time limit, so one orphaned by a lost node does not sleep forever.
fn allocation_holder(time_limit_secs: u64) -> String {
    let secs = match time_limit_secs {
        0 => 2_147_483_647,
        s => s.saturating_add(300),
    };
    format!("#!/bin/sh\nexec sleep {secs}\n")
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
    gpus: std::sync::Arc<dyn GpuBackend>,
    /// MPS shares per GPU and each GPU's memory (MiB), when this node shares through MPS.
    mps: Option<(u32, BTreeMap<String, u64>)>,
    /// Each GPU's MPS daemon directories, when the agent runs the daemons.
    mps_dirs: BTreeMap<String, crate::mps::MpsDirs>,
    /// How container jobs run here.
    oci: crate::oci::OciConfig,
    /// Keep MIG instances after their job (see [`crate::mig_keep`]); the state directory
    /// holding the list.
    mig_keep: Option<PathBuf>,
    state_dir: PathBuf,
    /// The cluster key launches are verified with; `None`: an insecure agent.
    launch_key: Option<std::sync::Arc<berth_auth::key::ClusterKey>>,
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
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
    ///
    /// MIG slices recorded by jobs of an earlier run are reconciled with what `gpus`
    /// reports (see [`Supervisor::reconcile_mig`]).
    pub fn new(
        state_dir: &Path,
        shim_exe: PathBuf,
        kill_grace: Duration,
        gpus: std::sync::Arc<dyn GpuBackend>,
    ) -> std::io::Result<Supervisor> {
        let dir = state_dir.join("jobs");
        fs::create_dir_all(&dir)?;
        let sup = Supervisor {
            dir,
            shim_exe,
            kill_grace,
            gpus,
            mps: None,
            mps_dirs: BTreeMap::new(),
            oci: crate::oci::OciConfig::new(state_dir),
            mig_keep: None,
            state_dir: state_dir.to_path_buf(),
            launch_key: None,
        };
        sup.reconcile_mig();
        Ok(sup)
    }

    /// Gives every job launched from now on the MPS limits of one of `replicas` shares
    /// (see [`job_env::mps`]); `memory_mb` maps GPU UUID → framebuffer MiB; `dirs` are
    /// the MPS daemons' directories by GPU UUID (empty when no daemon is run).
    pub fn set_mps(
        &mut self,
        replicas: u32,
        memory_mb: BTreeMap<String, u64>,
        dirs: BTreeMap<String, crate::mps::MpsDirs>,
    ) {
        self.mps = Some((replicas, memory_mb));
        self.mps_dirs = dirs;
    }

    /// Keeps the MIG instances of jobs that end from now on, for reuse by a later job
    /// asking for the same slice (`--mig-keep-layout`, see [`crate::mig_keep`]).
    pub fn set_mig_keep(&mut self, keep: bool) {
        self.mig_keep = keep.then(|| self.state_dir.clone());
    }

    /// Verifies every launch from now on with the cluster `key` (see
    /// [`crate::launch_identity`]).
    pub fn set_launch_key(&mut self, key: Option<std::sync::Arc<berth_auth::key::ClusterKey>>) {
        self.launch_key = key;
    }

    /// Runs container jobs with `oci` from now on; brings the node's CDI spec up to date if
    /// an earlier run wrote one.
    pub fn set_oci(&mut self, oci: crate::oci::OciConfig) {
        self.oci = oci;
        self.oci.gpu_vendor = self.gpus.vendor();
        self.update_cdi();
    }

    /// Writes the CDI spec of this node's GPUs and MIG devices now (before a container job
    /// starts), so a container is given exactly the devices that exist.
    pub fn refresh_cdi(&self) {
        if let Err(e) = crate::oci::write_node_cdi(&self.oci, self.gpus.as_ref(), false) {
            tracing::warn!("CDI spec not written: {e}");
        }
    }

    /// Rewrites the CDI spec if this agent has written one (at start, after every MIG
    /// create/destroy). An agent that never ran a container leaves the CDI directory alone:
    /// several agents share one host in tests and under `berth dev`.
    fn update_cdi(&self) {
        if let Err(e) = crate::oci::write_node_cdi(&self.oci, self.gpus.as_ref(), true) {
            tracing::warn!("CDI spec not updated: {e}");
        }
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
        // Before anything is written: a forged launch leaves no trace but the refusal.
        let run_as = crate::launch_identity::check(self.launch_key.as_deref(), spec)
            .map_err(|e| LaunchError::Refused(job.id, e))?;
        let io = |e| LaunchError::Io(job.id, e);
        fs::create_dir_all(&dir).map_err(io)?;
        let script = dir.join("script");
        // A script that is not UTF-8 runs as its own bytes (`script` is then a lossy copy).
        let holder = allocation_holder(spec.time_limit_secs);
        let body = if spec.allocation {
            holder.as_bytes()
        } else if spec.script_bytes.is_empty() {
            spec.script.as_bytes()
        } else {
            &spec.script_bytes
        };
        fs::write(&script, body).map_err(io)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).map_err(io)?;
        let mut argv = vec![script.display().to_string()];
        argv.extend(spec.args.iter().cloned());
        // Checked before carving, so a refused container leaves no MIG slice behind.
        let mut container = crate::oci::ContainerJob::from_job(job, node, &dir, &[], &self.oci)
            .map_err(|e| {
                let _ = fs::remove_dir_all(&dir);
                LaunchError::Container(job.id, e)
            })?;
        let mig = self.carve(job, node, &dir)?;
        if container.is_some() {
            self.refresh_cdi();
        } else if !mig.is_empty() {
            self.update_cdi();
        }
        if let Some(c) = container.as_mut() {
            c.add_mig_devices(&mig);
            write_json(&dir, "container.json", c);
        }
        let as_root = nix::unistd::geteuid().is_root();
        let mut env = job_env::build(job, node, &mig);
        crate::launch_identity::scrub(&mut env);
        if self.gpus.vendor() == crate::gpu::GpuVendor::Amd {
            job_env::use_rocr(&mut env, job, node);
        }
        if let Some((replicas, memory)) = &self.mps {
            env.extend(job_env::mps(job, node, *replicas, memory));
            env.extend(job_env::mps_dirs(job, node, &self.mps_dirs));
        }
        let shim = ShimSpec {
            argv,
            env: env.into_iter().collect(),
            cwd: PathBuf::from(&spec.work_dir),
            stdout: PathBuf::from(&job.stdout_path),
            stderr: PathBuf::from(&job.stderr_path),
            uid_gid: (as_root && run_as.uid != 0 && container.is_none())
                .then_some((run_as.uid, run_as.gid)),
            groups: run_as.gids.clone(),
            container,
            append: spec.open_append,
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

    /// Forgets job `id`: berthd has recorded its end. A job whose MIG slices cannot be
    /// destroyed yet is kept (marked acknowledged) until `poll` manages to.
    pub fn ack(&self, id: u64) {
        let dir = self.job_dir(id);
        if !dir.join("exit.json").exists() {
            return;
        }
        if self.release_job_mig(id) {
            let _ = fs::remove_dir_all(&dir);
        } else {
            write_json(&dir, "acked", &true);
        }
    }
}

mod kill;
mod mig;
mod status;
mod usage;

pub use status::event;
pub use usage::{gpu_owners, measured_jobs};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_jobs_are_ignored_and_launch_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        // /bin/true as the shim: it exits at once without recording anything, which the
        // supervisor must report as a lost job rather than leave running forever.
        let sup = Supervisor::new(
            dir.path(),
            "/bin/true".into(),
            Duration::from_secs(1),
            std::sync::Arc::new(crate::gpu::NoGpus),
        )
        .unwrap();
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
