//! The OCI runtime bundle of a container job: `config.json` (runtime-spec, through
//! oci-spec's types) and its writable root.
//!
//! The root is an overlay: the cached image rootfs as the read-only lower layer and a
//! per-job upper directory, so a job can write anywhere (pyxis's default) without touching
//! the shared cache or a user's rootfs directory. The batch script is bind-mounted read-only
//! at [`SCRIPT_PATH`] and run as the container's process.
//!
//! Starting from oci-spec's default (runc's `runc spec`: pid/ipc/uts/mount namespaces,
//! /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys, masked paths, default capabilities),
//! berth drops the network namespace (jobs use the host's network, as under Slurm), sets
//! the user, env, cwd, hostname, rlimits, the cgroup path and the memory and CPU limits.

use super::image::ImageDefaults;
use super::{io_err, ContainerJob, OciError};
use oci_spec::runtime as rt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the batch script appears in the container.
pub const SCRIPT_PATH: &str = "/.berth/batch-script";

/// CFS period used for the CPU limit (µs), the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;

/// Variables the job's own value always sets, whatever the image says: the image cannot
/// know which job, node or GPUs it runs on.
fn job_owned(name: &str) -> bool {
    name.starts_with("SLURM")
        || name.starts_with("CUDA_MPS_")
        || matches!(
            name,
            "CUDA_VISIBLE_DEVICES"
                | "NVIDIA_VISIBLE_DEVICES"
                | "GPU_DEVICE_ORDINAL"
                | "ENVIRONMENT"
        )
}

/// The container's environment, pyxis's rule: the image's variables win over the
/// submitted ones, except those named by `--container-env` and the job's own (Slurm and
/// GPU selection) variables.
pub fn merge_env(image: &[String], job: &BTreeMap<String, String>, keep: &[String]) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in job {
        env.insert(k.clone(), v.clone());
    }
    for kv in image {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        let submitted_wins = keep.iter().any(|x| x == k) || job_owned(k);
        if !(submitted_wins && job.contains_key(k)) {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The cgroup of container `id`: `/<parent>/<id>`.
pub fn cgroup_path(parent: &str, id: &str) -> String {
    format!("/{}/{id}", parent.trim_matches('/'))
}

/// What the bundle's config is made from.
pub struct BundleInput<'a> {
    /// The container request.
    pub job: &'a ContainerJob,
    /// The mounted overlay root.
    pub rootfs: &'a Path,
    /// The image's env and working directory.
    pub defaults: &'a ImageDefaults,
    /// The job's environment (Slurm and GPU variables, the exported submit env).
    pub env: &'a BTreeMap<String, String>,
    /// The batch script on the host.
    pub script: &'a Path,
    /// The script's arguments.
    pub args: &'a [String],
}

/// Builds `config.json` for `input` (CDI edits not applied yet).
///
/// # Errors
/// [`OciError::Runtime`] if oci-spec refuses a value (it validates while building).
pub fn config(input: &BundleInput<'_>) -> Result<rt::Spec, OciError> {
    let job = input.job;
    let mut spec = rt::Spec::default();
    let process = process(input, spec.process().clone().unwrap_or_default())?;
    spec.set_process(Some(process));
    spec.set_hostname(Some(job.hostname.clone()));
    let root = rt::RootBuilder::default()
        .path(input.rootfs.to_path_buf())
        .readonly(false)
        .build()
        .map_err(built)?;
    spec.set_root(Some(root));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(bind(
        Path::new(SCRIPT_PATH),
        input.script,
        &["rbind", "ro"],
    )?);
    for m in &job.mounts {
        let options: Vec<&str> = m.options.iter().map(String::as_str).collect();
        mounts.push(bind(&m.destination, &m.source, &options)?);
    }
    spec.set_mounts(Some(mounts));
    let linux = linux(job, spec.linux().clone().unwrap_or_default())?;
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn built(e: oci_spec::OciSpecError) -> OciError {
    OciError::Runtime(format!("bundle config: {e}"))
}

fn bind(destination: &Path, source: &Path, options: &[&str]) -> Result<rt::Mount, OciError> {
    rt::MountBuilder::default()
        .destination(destination.to_path_buf())
        .typ("bind")
        .source(source.to_path_buf())
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(built)
}

/// The process: the script, env, cwd, user and rlimits on top of the default's.
fn process(input: &BundleInput<'_>, mut process: rt::Process) -> Result<rt::Process, OciError> {
    let job = input.job;
    let mut args = vec![SCRIPT_PATH.to_string()];
    args.extend(input.args.iter().cloned());
    let cwd = if !job.workdir.is_empty() {
        job.workdir.clone()
    } else if !input.defaults.workdir.is_empty() {
        input.defaults.workdir.clone()
    } else {
        "/".into()
    };
    let user = rt::UserBuilder::default()
        .uid(job.uid)
        .gid(job.gid)
        .build()
        .map_err(built)?;
    // Open files: the agent's own hard limit for both (raising a hard limit needs
    // CAP_SYS_RESOURCE, which a sandboxed agent may lack; runc then fails the start).
    let (_, nofile) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1024, 1024));
    let rlimits = vec![rt::PosixRlimitBuilder::default()
        .typ(rt::PosixRlimitType::RlimitNofile)
        .hard(nofile)
        .soft(nofile)
        .build()
        .map_err(built)?];
    process.set_terminal(Some(false));
    process.set_args(Some(args));
    process.set_env(Some(merge_env(
        &input.defaults.env,
        input.env,
        &job.env_keep,
    )));
    process.set_cwd(PathBuf::from(cwd));
    process.set_user(user);
    process.set_rlimits(Some(rlimits));
    Ok(process)
}

/// Namespaces (the host's network), the cgroup path and the memory and CPU limits.
fn linux(job: &ContainerJob, mut linux: rt::Linux) -> Result<rt::Linux, OciError> {
    if let Some(ns) = linux.namespaces_mut() {
        ns.retain(|n| n.typ() != rt::LinuxNamespaceType::Network);
    }
    linux.set_cgroups_path(Some(PathBuf::from(cgroup_path(
        &job.config.cgroup_parent,
        &job.id,
    ))));
    let mut resources = linux.resources().clone().unwrap_or_default();
    if job.mem_mb > 0 {
        let bytes = (job.mem_mb * 1024 * 1024) as i64;
        // swap = limit: no swap beyond the limit, so the OOM killer acts at --mem (Slurm's
        // ConstrainRAMSpace + ConstrainSwapSpace).
        let memory = rt::LinuxMemoryBuilder::default()
            .limit(bytes)
            .swap(bytes)
            .build()
            .map_err(built)?;
        resources.set_memory(Some(memory));
    }
    if job.cpus > 0 {
        let cpu = rt::LinuxCpuBuilder::default()
            .quota(i64::from(job.cpus) * CPU_PERIOD_US as i64)
            .period(CPU_PERIOD_US)
            .build()
            .map_err(built)?;
        resources.set_cpu(Some(cpu));
    }
    linux.set_resources(Some(resources));
    Ok(linux)
}

/// Mounts the job's overlay root at `bundle/rootfs`: `lower` read-only, writes in
/// `bundle/upper`.
///
/// # Errors
/// [`OciError::Io`] when a directory cannot be made or the overlay mount fails (needs root).
pub fn mount_root(bundle: &Path, lower: &Path) -> Result<PathBuf, OciError> {
    let (upper, work, rootfs) = (
        bundle.join("upper"),
        bundle.join("work"),
        bundle.join("rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| OciError::Io {
        path: rootfs.clone(),
        source: std::io::Error::from(e),
    })?;
    Ok(rootfs)
}

/// Unmounts the overlay root (if mounted) and removes the bundle directory.
pub fn remove(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    // Detach: a process that still holds it (it should not) cannot keep the bundle alive.
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    if let Err(e) = std::fs::remove_dir_all(bundle) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove bundle {}: {e}", bundle.display());
        }
    }
}

/// Writes `spec` as `bundle/config.json`.
///
/// # Errors
/// [`OciError::Io`] when it cannot be written.
pub fn write_config(bundle: &Path, spec: &rt::Spec) -> Result<(), OciError> {
    let path = bundle.join("config.json");
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| OciError::Runtime(e.to_string()))?;
    std::fs::write(&path, bytes).map_err(io_err(&path))
}

#[cfg(test)]
mod tests;
