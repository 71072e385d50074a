//! One container job from the shim's side: image → bundle → create/start → wait → cleanup.
//!
//! Order matters for "nothing left behind": every step that creates something (cache
//! entry, overlay mount, bundle, container, cgroup) is undone by [`cleanup`], which runs on
//! every path out, failures included, and is idempotent so a restarted agent can run it
//! again for a job whose shim died.

use super::{ExitRecord, ShimSpec};
use crate::oci::image::ImageCache;
use crate::oci::runtime::{self, Runtime};
use crate::oci::{bundle, cdi, ContainerJob, OciError};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// File in the job directory naming the cache entry the job uses (kept from eviction).
const IMAGE_KEY: &str = "image_key";

/// Runs the container job described by `spec` in job directory `dir` to its end.
pub fn run(dir: &Path, spec: &ShimSpec, job: &ContainerJob) -> ExitRecord {
    let result = start(dir, spec, job).and_then(|pid| {
        super::write_json(dir, "pid", &pid);
        wait_init(pid)
    });
    // Read before delete: deleting the container removes its cgroup and the counter.
    let oom = runtime::oom_kills(&bundle::cgroup_path(&job.config.cgroup_parent, &job.id)) > 0;
    cleanup(dir, job);
    match result {
        Ok((code, signal)) => ExitRecord {
            code,
            signal,
            error: None,
            oom,
        },
        Err(e) => ExitRecord {
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

/// Waits for the container's init, our child since `create` exited (we are a subreaper):
/// (exit code, signal).
fn wait_init(pid: u32) -> Result<(Option<i32>, Option<i32>), OciError> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok((Some(code), None)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok((None, Some(sig as i32))),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(OciError::Runtime(format!(
                    "wait for the container's init ({pid}): {e}"
                )))
            }
        }
    }
}

/// Prepares the image and bundle, creates and starts the container; returns its init's pid.
fn start(dir: &Path, spec: &ShimSpec, job: &ContainerJob) -> Result<u32, OciError> {
    let runtime = Runtime::locate(&job.config.runtime)?;
    // Before create: the init must be re-parented to this shim when create exits.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| OciError::Runtime(format!("cannot become a child subreaper: {e}")))?;
    let cache = ImageCache::new(&job.config.cache_dir, job.config.cache_max_bytes);
    let prepared = cache.prepare(&job.image, &images_in_use(dir))?;
    if let Some(key) = &prepared.key {
        let _ = fs::write(dir.join(IMAGE_KEY), key);
    }
    let bundle_dir = dir.join("bundle");
    let rootfs = bundle::mount_root(&bundle_dir, &prepared.rootfs)?;
    let (script, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| OciError::Runtime("empty argv".into()))?;
    let env: BTreeMap<String, String> = spec.env.iter().cloned().collect();
    let input = bundle::BundleInput {
        job,
        rootfs: &rootfs,
        defaults: &prepared.defaults,
        env: &env,
        script: Path::new(script),
        args,
    };
    let mut config = bundle::config(&input)?;
    if !job.devices.is_empty() {
        let specs = cdi::load(std::slice::from_ref(&job.config.cdi_dir))?;
        cdi::apply(&mut config, &specs, &job.devices)?;
    }
    bundle::write_config(&bundle_dir, &config)?;
    let owner = (job.uid != 0).then_some((job.uid, job.gid));
    let stdout = super::open_output(&spec.stdout, owner, &spec.groups, spec.append)
        .map_err(OciError::Runtime)?;
    let stderr = if spec.stderr == spec.stdout {
        stdout
            .try_clone()
            .map_err(|e| OciError::Runtime(e.to_string()))?
    } else {
        super::open_output(&spec.stderr, owner, &spec.groups, spec.append)
            .map_err(OciError::Runtime)?
    };
    let pid = runtime.create(&bundle_dir, &job.id, stdout, stderr)?;
    runtime.start(&job.id)?;
    Ok(pid)
}

/// Deletes the container, its cgroup and the bundle (overlay unmounted). Safe to repeat.
pub fn cleanup(dir: &Path, job: &ContainerJob) {
    if let Ok(rt) = Runtime::locate(&job.config.runtime) {
        if let Err(e) = rt.delete(&job.id) {
            tracing::warn!(container = job.id, "{e}");
        }
    }
    runtime::remove_cgroup(&bundle::cgroup_path(&job.config.cgroup_parent, &job.id));
    bundle::remove(&dir.join("bundle"));
}

/// Cache keys used by the other running jobs of this node (siblings of `dir`).
fn images_in_use(dir: &Path) -> BTreeSet<String> {
    let Some(jobs) = dir.parent() else {
        return BTreeSet::new();
    };
    fs::read_dir(jobs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.join("exit.json").exists())
        .filter_map(|p| fs::read_to_string(p.join(IMAGE_KEY)).ok())
        .collect()
}
