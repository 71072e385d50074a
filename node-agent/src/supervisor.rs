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
//! destroyed after it ends (see `mig_slices`). Ownership is written to `mig.json` in the
//! job directory *before* each slice is created, so an agent that crashes at any point
//! finds on restart which instances belong to which job.

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

    /// The MIG devices recorded for job `id` (empty when it has none).
    pub fn mig_devices(&self, id: u64) -> Vec<MigDevice> {
        self.read::<mig_slices::MigRecord>(id, mig_slices::FILE)
            .map(|r| r.devices())
            .unwrap_or_default()
    }

    /// After a restart: fills in instances created but not yet recorded (a crash between
    /// create and record) by matching GPU and placement, and logs MIG devices no job owns
    /// (they are not berth's to destroy). Finished jobs' slices are released by `poll`.
    pub fn reconcile_mig(&self) {
        let existing = match self.gpus.mig_devices() {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("cannot list MIG instances to reconcile: {e}");
                return;
            }
        };
        let mut owned = Vec::new();
        for id in self.job_ids() {
            let Some(mut rec) = self.read::<mig_slices::MigRecord>(id, mig_slices::FILE) else {
                continue;
            };
            if rec.adopt(&existing) {
                tracing::info!(
                    job = id,
                    "re-attached MIG instances created before a restart"
                );
                write_json(&self.job_dir(id), mig_slices::FILE, &rec);
            }
            owned.extend(rec.devices().into_iter().map(|d| d.uuid));
        }
        for d in existing.iter().filter(|d| !owned.contains(&d.uuid)) {
            tracing::info!(
                gpu = d.gpu_uuid,
                mig = d.uuid,
                "MIG instance not owned by a berth job; left alone"
            );
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

    /// Carves the MIG slices `job`'s allocation on `node` names and returns their UUIDs.
    /// On any failure the slices already made are destroyed and the job directory is
    /// removed, so a refused launch leaves nothing behind.
    fn carve(&self, job: &pb::Job, node: &str, dir: &Path) -> Result<Vec<String>, LaunchError> {
        let slices: Vec<pb::MigSlice> = job
            .allocations
            .iter()
            .find(|a| a.node == node)
            .map(|a| a.mig_slices.clone())
            .unwrap_or_default();
        if slices.is_empty() {
            return Ok(Vec::new());
        }
        let mut rec = mig_slices::MigRecord::new(&slices);
        for (i, slice) in slices.iter().enumerate() {
            // Intent first: a crash after create still leaves the owner on disk.
            write_json(dir, mig_slices::FILE, &rec);
            if let Some(kept) = self.reuse_kept(slice) {
                tracing::info!(job = job.id, mig = kept.uuid, "kept MIG instance reused");
                rec.entries[i].device = Some(kept);
                continue;
            }
            match self.gpus.create_mig(slice) {
                Ok(device) => rec.entries[i].device = Some(device),
                Err(e) => {
                    self.release(&mut rec);
                    let _ = fs::remove_dir_all(dir);
                    return Err(LaunchError::Mig(job.id, e));
                }
            }
        }
        write_json(dir, mig_slices::FILE, &rec);
        Ok(rec.devices().into_iter().map(|d| d.uuid).collect())
    }

    /// With `--mig-keep-layout`: the kept instance that is exactly `slice`, taken off the
    /// kept list; else destroys the kept instances in its way (a failure is logged, and the
    /// create that follows then says the placement is busy). `None` without the flag.
    fn reuse_kept(&self, slice: &pb::MigSlice) -> Option<MigDevice> {
        let dir = self.mig_keep.as_ref()?;
        let mut kept = crate::mig_keep::KeptSlices::load(dir);
        match self.gpus.mig_devices() {
            Ok(existing) => kept.retain_existing(&existing),
            Err(e) => tracing::warn!("cannot list MIG instances: {e}"),
        }
        let found = kept.take_exact(slice);
        if found.is_none() {
            for d in kept.take_overlapping(slice) {
                match self.gpus.destroy_mig(&d.gpu_uuid, d.gi_id) {
                    Ok(()) => {
                        tracing::info!(mig = d.uuid, "kept MIG instance destroyed for a new layout")
                    }
                    Err(e) => tracing::warn!(mig = d.uuid, "kept MIG instance not destroyed: {e}"),
                }
            }
        }
        if let Err(e) = kept.save() {
            tracing::warn!("{}: {e}", crate::mig_keep::FILE);
        }
        found
    }

    /// Hands a finished job's slices to the kept list instead of destroying them.
    fn keep(&self, dir: &Path, rec: &mut mig_slices::MigRecord) -> bool {
        let mut kept = crate::mig_keep::KeptSlices::load(dir);
        for entry in rec.entries.iter_mut() {
            if let Some(device) = entry.device.take() {
                kept.add(&entry.profile, device);
            }
        }
        match kept.save() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; MIG slices will be destroyed",
                    crate::mig_keep::FILE
                );
                false
            }
        }
    }

    /// Destroys every recorded slice still alive; true when none is left.
    fn release(&self, rec: &mut mig_slices::MigRecord) -> bool {
        for entry in rec.entries.iter_mut() {
            let Some(device) = &entry.device else {
                continue;
            };
            match self.gpus.destroy_mig(&device.gpu_uuid, device.gi_id) {
                Ok(()) => entry.device = None,
                Err(e) => tracing::debug!(mig = device.uuid, "MIG release deferred: {e}"),
            }
        }
        rec.entries.iter().all(|e| e.device.is_none())
    }

    /// Releases a finished job's MIG slices, once; true when it holds none any more.
    fn release_job_mig(&self, id: u64) -> bool {
        let Some(mut rec) = self.read::<mig_slices::MigRecord>(id, mig_slices::FILE) else {
            return true;
        };
        if rec.released {
            return true;
        }
        if let Some(dir) = &self.mig_keep {
            let mut kept_rec = rec.clone();
            if self.keep(dir, &mut kept_rec) {
                kept_rec.released = true;
                write_json(&self.job_dir(id), mig_slices::FILE, &kept_rec);
                tracing::info!(job = id, "MIG slices kept for reuse");
                return true;
            }
        }
        rec.released = self.release(&mut rec);
        write_json(&self.job_dir(id), mig_slices::FILE, &rec);
        if rec.released {
            tracing::info!(job = id, "MIG slices destroyed");
            self.update_cdi();
        }
        rec.released
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

    /// `--signal=B:SIG@SECS`: the batch shell alone gets SIG once, SECS before the time
    /// limit at `limit_at_ms` (the steps' tasks, without `B:`, are signalled by their
    /// agents: see `steps::warning`).
    fn warn_batch_shell(
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

    /// Brings job `id`'s usage meter (see [`crate::usage`]) up to `now_ms` with `samples`,
    /// its GPUs shared `replicas` ways, and keeps it in the job directory. A finished job
    /// has its last interval counted up to when its exit was recorded, once. `None` for an
    /// unknown job or one without GPUs on `node`.
    fn meter(
        &self,
        id: u64,
        node: &str,
        replicas: u32,
        samples: &[crate::gpu::GpuSample],
        now_ms: u64,
    ) -> Option<pb::JobUsage> {
        use crate::usage::{holdings, Meter, FILE};
        let job = self.load(id)?;
        let held = holdings(&job, node, replicas);
        if held.is_empty() {
            return None;
        }
        let mut m: Meter = self.read(id, FILE).unwrap_or_else(|| {
            Meter::starting(self.read::<u64>(id, "started_ms").unwrap_or(now_ms))
        });
        if !m.done {
            let ended_ms = fs::metadata(self.job_dir(id).join("exit.json"))
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
            m.advance(ended_ms.unwrap_or(now_ms).min(now_ms), &held, samples);
            m.done = ended_ms.is_some();
            write_json(&self.job_dir(id), FILE, &m);
        }
        Some(m.report(id))
    }

    /// Measured GPU use of every running job with GPUs here, for the heartbeat.
    pub fn running_usage(&self, node: &str, replicas: u32) -> Vec<pb::JobUsage> {
        let samples = self.gpus.samples();
        let now = now_ms();
        self.job_ids()
            .into_iter()
            .filter(|id| !self.job_dir(*id).join("exit.json").exists())
            .filter_map(|id| self.meter(id, node, replicas, &samples, now))
            .collect()
    }

    /// The final measured GPU use of finished job `id`, sent just before its end.
    pub fn final_usage(&self, id: u64, node: &str, replicas: u32) -> Option<pb::JobUsage> {
        self.meter(id, node, replicas, &self.gpus.samples(), now_ms())
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

/// GPU UUID → id of the running job holding it, read from the job directories under
/// `state_dir` (whole GPUs and the parents of MIG slices). For `/metrics`, which runs
/// outside the agent loop and only reads.
pub fn gpu_owners(state_dir: &Path) -> BTreeMap<String, u64> {
    let dir = state_dir.join("jobs");
    let mut owners = BTreeMap::new();
    let entries = fs::read_dir(&dir).into_iter().flatten().flatten();
    for id in entries.filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok()) {
        let job_dir = dir.join(id.to_string());
        if job_dir.join("exit.json").exists() {
            continue;
        }
        let Some(job) = fs::read(job_dir.join("job.pb"))
            .ok()
            .and_then(|b| pb::Job::decode(&b[..]).ok())
        else {
            continue;
        };
        for a in &job.allocations {
            let mig = a.mig_slices.iter().map(|s| &s.gpu_uuid);
            for uuid in a.gpu_uuids.iter().chain(mig) {
                owners.insert(uuid.clone(), id);
            }
        }
    }
    owners
}

/// Every running job under `state_dir` with its last measured usage (see
/// [`crate::usage`]; updated at each heartbeat), for `/metrics`. Jobs not measured yet
/// (no GPUs, or before their first heartbeat) are left out.
pub fn measured_jobs(state_dir: &Path) -> Vec<(pb::Job, crate::usage::Meter)> {
    let dir = state_dir.join("jobs");
    let entries = fs::read_dir(&dir).into_iter().flatten().flatten();
    let mut out: Vec<(pb::Job, crate::usage::Meter)> = entries
        .filter_map(|e| {
            let job_dir = e.path();
            if job_dir.join("exit.json").exists() {
                return None;
            }
            let job = pb::Job::decode(&fs::read(job_dir.join("job.pb")).ok()?[..]).ok()?;
            let text = fs::read(job_dir.join(crate::usage::FILE)).ok()?;
            Some((job, serde_json::from_slice(&text).ok()?))
        })
        .collect();
    out.sort_by_key(|(j, _)| j.id);
    out
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

/// The MIG ownership record of one job (`mig.json`).
mod mig_slices {
    use crate::gpu::MigDevice;
    use berth_proto::v1 as pb;
    use serde::{Deserialize, Serialize};

    pub(super) const FILE: &str = "mig.json";

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(super) struct Entry {
        pub(super) gpu_uuid: String,
        pub(super) profile: String,
        pub(super) start: u32,
        pub(super) size: u32,
        /// Set once created; `None` again once destroyed.
        pub(super) device: Option<MigDevice>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(super) struct MigRecord {
        pub(super) entries: Vec<Entry>,
        /// Every slice destroyed after the job ended.
        pub(super) released: bool,
    }

    impl MigRecord {
        pub(super) fn new(slices: &[pb::MigSlice]) -> MigRecord {
            let entries = slices
                .iter()
                .map(|s| Entry {
                    gpu_uuid: s.gpu_uuid.clone(),
                    profile: s.profile.clone(),
                    start: s.placement_start,
                    size: s.placement_size,
                    device: None,
                })
                .collect();
            MigRecord {
                entries,
                released: false,
            }
        }

        pub(super) fn devices(&self) -> Vec<MigDevice> {
            self.entries
                .iter()
                .filter_map(|e| e.device.clone())
                .collect()
        }

        /// Fills in entries without a device from `existing` by (GPU, placement); true if
        /// any was. Only unreleased records adopt: a released job owns nothing.
        pub(super) fn adopt(&mut self, existing: &[MigDevice]) -> bool {
            if self.released {
                return false;
            }
            let mut changed = false;
            for entry in self.entries.iter_mut().filter(|e| e.device.is_none()) {
                let found = existing.iter().find(|d| {
                    d.gpu_uuid == entry.gpu_uuid && d.start == entry.start && d.size == entry.size
                });
                if let Some(d) = found {
                    entry.device = Some(d.clone());
                    changed = true;
                }
            }
            changed
        }
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
