//! The `oci` runtime: a job whose spec names a container image runs inside an OCI
//! container started by runc (or crun), with its granted GPUs injected from CDI specs.
//!
//! The agent checks a container request when it launches the job ([`ContainerJob::from_job`]:
//! mounts against the deny list, the runtime binary present) and writes CDI specs for its
//! GPUs ([`cdi`]). The heavy part runs in the job's shim, off the agent loop
//! ([`crate::shim::container`]): unpack the image
//! into the content-addressed cache ([`image`]), generate the bundle's `config.json`
//! ([`bundle`]), apply the CDI edits of the granted devices, then `create`/`start`, wait for
//! the init, read the OOM counter of the container's cgroup and `delete` ([`runtime`]).
//!
//! # Layout
//! - [`image`]: OCI image layouts (directory or tar archive) and plain rootfs directories;
//!   safe layer unpacking with whiteouts; the cache with its size limit and eviction.
//! - [`mounts`]: `--container-mounts` parsing and the deny list of host paths.
//! - [`cdi`]: CDI spec 1.1.0 types, generation from the NVML inventory, loading, applying.
//! - [`bundle`]: the runtime-spec `config.json` of a job.
//! - [`runtime`]: the runc/crun command line (run, kill, delete, state) and cgroup reading.

pub mod bundle;
pub mod cdi;
pub mod image;
pub mod mount_access;
pub mod mounts;
pub mod runtime;

use berth_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a container job could not be prepared or run. Every variant names what was wrong;
/// the text ends up in the job's `Reason` and its error file.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image is missing, unreadable or not a valid OCI layout/rootfs.
    #[error("container image {image}: {reason}")]
    Image {
        /// The image path as given.
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer holds an entry that would land outside the rootfs.
    #[error("container image {image}: layer {layer}: {reason} (refused)")]
    UnsafeLayer {
        /// The image path as given.
        image: String,
        /// The layer digest.
        layer: String,
        /// The entry and why it escapes.
        reason: String,
    },
    /// A `--container-mounts` entry is malformed or names a forbidden host path.
    #[error("--container-mounts: {0}")]
    Mount(String),
    /// A CDI spec is malformed, or a requested device is unknown.
    #[error("CDI: {0}")]
    Cdi(String),
    /// The container runtime is missing or failed.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// A file of the bundle or the cache could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Wraps an IO error with the path it concerns.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Host paths a `--container-mounts` source may not be, nor lie under: the kernel's
/// interfaces, the host's configuration and the container daemons' control sockets.
pub const DEFAULT_MOUNT_DENY: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/boot",
    "/root",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd",
    "/run/containerd",
    "/var/run/cdi",
    "/etc/cdi",
    "/var/lib/berth-agent",
];

/// How this node runs containers (agent flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OciConfig {
    /// runc or crun binary (`--container-runtime`).
    pub runtime: PathBuf,
    /// Unpacked image cache (`--image-cache-dir`; default `<state-dir>/images`).
    pub cache_dir: PathBuf,
    /// Cache size limit in bytes (`--image-cache-max-mb`); least recently used entries
    /// not in use are evicted above it.
    pub cache_max_bytes: u64,
    /// Where CDI specs are written and read (`--cdi-dir`, default `/var/run/cdi`).
    pub cdi_dir: PathBuf,
    /// Directory holding the GPUs' device nodes on the host (`--gpu-dev-dir`, default
    /// `/dev`; the simulated machine's own directory under `berth dev`).
    pub dev_dir: PathBuf,
    /// Host paths jobs may not mount (`--container-mount-deny`).
    pub mount_deny: Vec<PathBuf>,
    /// Parent of every job's cgroup (`--cgroup-parent`, default `berth`).
    pub cgroup_parent: String,
    /// Whose GPUs the node has (the GPU backend's): the CDI kind written and requested.
    /// Absent in a `shim.json` of an older agent: NVIDIA then.
    #[serde(default)]
    pub gpu_vendor: crate::gpu::GpuVendor,
}

impl OciConfig {
    /// The defaults for an agent keeping its state in `state_dir`.
    pub fn new(state_dir: &Path) -> OciConfig {
        OciConfig {
            runtime: PathBuf::from("runc"),
            cache_dir: state_dir.join("images"),
            cache_max_bytes: 20 * 1024 * 1024 * 1024,
            cdi_dir: PathBuf::from("/var/run/cdi"),
            dev_dir: PathBuf::from("/dev"),
            mount_deny: DEFAULT_MOUNT_DENY.iter().map(PathBuf::from).collect(),
            cgroup_parent: "berth".into(),
            gpu_vendor: crate::gpu::GpuVendor::Nvidia,
        }
    }

    /// The CDI kind of this node's GPUs: `nvidia.com/gpu` or `amd.com/gpu`.
    pub fn cdi_kind(&self) -> &'static str {
        match self.gpu_vendor {
            crate::gpu::GpuVendor::Nvidia => cdi::NVIDIA_GPU_KIND,
            crate::gpu::GpuVendor::Amd => cdi::AMD_GPU_KIND,
        }
    }

    /// The file name of the agent's CDI spec for this node's GPUs.
    pub fn cdi_spec_file(&self) -> &'static str {
        match self.gpu_vendor {
            crate::gpu::GpuVendor::Nvidia => cdi::SPEC_FILE,
            crate::gpu::GpuVendor::Amd => cdi::AMD_SPEC_FILE,
        }
    }
}

/// A container job as its shim runs it (part of `shim.json`): everything decided at
/// launch, so the shim needs nothing from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerJob {
    /// The node's container settings.
    pub config: OciConfig,
    /// `--container-image`.
    pub image: String,
    /// Parsed and checked `--container-mounts`.
    pub mounts: Vec<mounts::BindMount>,
    /// `--container-workdir`; empty: the image's working directory, else `/`.
    pub workdir: String,
    /// `--container-env`: variables whose submit-side value wins over the image's.
    pub env_keep: Vec<String>,
    /// CDI qualified names of the granted devices (`nvidia.com/gpu=GPU-…`).
    pub devices: Vec<String>,
    /// runc container id, unique per host (job id + a hash of the job directory).
    pub id: String,
    /// `--mem` in MiB; 0: no limit.
    pub mem_mb: u64,
    /// CPUs granted on this node; 0: no limit.
    pub cpus: u32,
    /// Container hostname (the node's name, as SLURMD_NODENAME).
    pub hostname: String,
    /// User and group the job runs as inside the container.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl ContainerJob {
    /// The container request of `job` on `node` (None when it asks for no image), with its
    /// mounts checked against the deny list and the runtime looked up.
    ///
    /// # Errors
    /// [`OciError::Mount`] for a malformed or forbidden mount, [`OciError::Runtime`] when
    /// the runtime binary cannot be found.
    pub fn from_job(
        job: &pb::Job,
        node: &str,
        job_dir: &Path,
        mig: &[String],
        config: &OciConfig,
    ) -> Result<Option<ContainerJob>, OciError> {
        let Some(spec) = job.spec.as_ref() else {
            return Ok(None);
        };
        if spec.container_image.is_empty() {
            return Ok(None);
        }
        let mut binds = Vec::new();
        for m in &spec.container_mounts {
            binds.push(mounts::parse(m)?);
        }
        mounts::check_denied(&binds, &config.mount_deny)?;
        if nix::unistd::geteuid().is_root() {
            let gids = spec
                .identity
                .as_ref()
                .map(|i| i.gids.clone())
                .unwrap_or_default();
            let who = mount_access::Who {
                uid: spec.uid,
                gid: spec.gid,
                gids: &gids,
            };
            mount_access::check(&binds, who)?;
        }
        for key in &spec.container_env {
            if !valid_env_name(key) {
                return Err(OciError::Mount(format!(
                    "--container-env: {key:?} is not a variable name"
                )));
            }
        }
        if !spec.container_workdir.is_empty() && !spec.container_workdir.starts_with('/') {
            return Err(OciError::Image {
                image: spec.container_image.clone(),
                reason: format!(
                    "--container-workdir {:?} must be an absolute path",
                    spec.container_workdir
                ),
            });
        }
        let runtime = runtime::Runtime::locate(&config.runtime)?;
        let mut config = config.clone();
        config.runtime = runtime.path().to_path_buf();
        let here = job.allocations.iter().find(|a| a.node == node);
        let devices = here
            .map(|a| a.gpu_uuids.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(mig.iter().cloned())
            .map(|uuid| format!("{}={uuid}", config.cdi_kind()))
            .collect();
        let as_root = nix::unistd::geteuid().is_root();
        Ok(Some(ContainerJob {
            config,
            image: spec.container_image.clone(),
            mounts: binds,
            workdir: spec.container_workdir.clone(),
            env_keep: spec.container_env.clone(),
            devices,
            id: container_id(job.id, job_dir),
            mem_mb: spec.mem_mb,
            cpus: here.map(|a| a.cpus).unwrap_or(0),
            hostname: node.to_string(),
            uid: if as_root { spec.uid } else { 0 },
            gid: if as_root { spec.gid } else { 0 },
        }))
    }
}

impl ContainerJob {
    /// Adds the MIG devices carved for the job (their `MIG-…` UUIDs) to its CDI devices.
    pub fn add_mig_devices(&mut self, mig: &[String]) {
        let kind = self.config.cdi_kind();
        self.devices
            .extend(mig.iter().map(|u| format!("{kind}={u}")));
    }
}

/// Sends `signal` (a name or number) to every process of `job`'s container.
///
/// # Errors
/// [`OciError::Runtime`] when the runtime is gone or the container does not exist (yet).
pub fn signal_container(job: &ContainerJob, signal: &str) -> Result<(), OciError> {
    runtime::Runtime::locate(&job.config.runtime)?.kill(&job.id, signal)
}

/// Writes `config.cdi_dir/berth-nvidia-gpu.json` for the GPUs and MIG devices `gpus` has
/// now (`berth-amd-gpu.json`, kind `amd.com/gpu`, on an AMD node); removes it when there
/// are none (a spec without devices is invalid). With
/// `only_if_present`, does nothing unless the file exists (keeps a written spec current).
///
/// # Errors
/// [`OciError::Cdi`] when NVML cannot be read, [`OciError::Io`] when the file cannot be
/// written.
pub fn write_node_cdi(
    config: &OciConfig,
    gpus: &dyn crate::gpu::GpuBackend,
    only_if_present: bool,
) -> Result<(), OciError> {
    let file = config.cdi_spec_file();
    let path = config.cdi_dir.join(file);
    if only_if_present && !path.exists() {
        return Ok(());
    }
    let inv = gpus
        .inventory()
        .map_err(|e| OciError::Cdi(format!("GPU inventory: {e}")))?;
    let migs = gpus
        .mig_devices()
        .map_err(|e| OciError::Cdi(format!("MIG devices: {e}")))?;
    let nodes: Vec<cdi::GpuNode> = inv
        .gpus
        .iter()
        .map(|g| cdi::GpuNode {
            index: g.index,
            uuid: g.uuid.clone(),
            minor: g.minor,
        })
        .collect();
    let mig_nodes: Vec<cdi::MigNode> = migs
        .iter()
        .filter_map(|m| {
            let parent = nodes.iter().find(|g| g.uuid == m.gpu_uuid)?;
            Some(cdi::MigNode {
                gpu_index: parent.index,
                gpu_minor: parent.minor,
                gi: m.gi_id,
                ci: m.ci_id,
                uuid: m.uuid.clone(),
            })
        })
        .collect();
    if nodes.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        };
    }
    let spec = match config.gpu_vendor {
        crate::gpu::GpuVendor::Nvidia => cdi::nvidia_spec(&nodes, &mig_nodes, &config.dev_dir),
        crate::gpu::GpuVendor::Amd => cdi::amd_spec(&nodes, &config.dev_dir),
    };
    cdi::write(&config.cdi_dir, file, &spec)
}

/// Gives a simulated machine its device nodes in `dev_dir`: `nvidia<minor>` per GPU and
/// `nvidiactl`, character devices with NVIDIA's numbers when root (no driver answers them:
/// opening one fails with ENXIO, as a GPU without its driver would), empty files otherwise.
/// These are the host paths the CDI spec names for simulated GPUs.
///
/// # Errors
/// When the directory or a node cannot be made.
pub fn make_sim_device_nodes(dev_dir: &Path, gpus: &[pb::Gpu]) -> std::io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    std::fs::create_dir_all(dev_dir)?;
    let as_root = nix::unistd::geteuid().is_root();
    let nodes = gpus
        .iter()
        .map(|g| (format!("nvidia{}", g.minor), g.minor))
        .chain([("nvidiactl".to_string(), 255)]);
    for (name, minor) in nodes {
        let path = dev_dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        if as_root {
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(195, u64::from(minor)),
            )
            .map_err(std::io::Error::from)?;
        } else {
            std::fs::write(&path, b"")?;
        }
    }
    Ok(())
}

/// `berth-<job>-<8 hex>`: the hash of the job directory keeps two agents on one host (the
/// nodes of `berth dev`, or two test clusters) from colliding in runc's state directory.
pub fn container_id(job_id: u64, job_dir: &Path) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in job_dir.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("berth-{job_id}-{h:08x}")
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_differ_per_job_dir() {
        let a = container_id(7, Path::new("/s1/jobs/7"));
        let b = container_id(7, Path::new("/s2/jobs/7"));
        assert!(a.starts_with("berth-7-") && b.starts_with("berth-7-"));
        assert_ne!(a, b);
        assert_eq!(a, container_id(7, Path::new("/s1/jobs/7")));
    }

    fn job(f: impl FnOnce(&mut pb::JobSpec)) -> pb::Job {
        let mut spec = pb::JobSpec {
            container_image: "/img".into(),
            ..Default::default()
        };
        f(&mut spec);
        pb::Job {
            id: 3,
            spec: Some(spec),
            allocations: vec![pb::Allocation {
                node: "n1".into(),
                gpu_uuids: vec!["GPU-a".into()],
                cpus: 2,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn launch_checks_refuse_bad_requests() {
        let mut cfg = OciConfig::new(Path::new("/state"));
        cfg.runtime = "sh".into(); // any executable: only its presence is checked here
        let dir = Path::new("/state/jobs/3");
        let none =
            ContainerJob::from_job(&job(|s| s.container_image.clear()), "n1", dir, &[], &cfg);
        assert!(matches!(none, Ok(None)), "no image: the process runtime");
        let ok = ContainerJob::from_job(&job(|_| {}), "n1", dir, &["MIG-b".into()], &cfg)
            .unwrap()
            .unwrap();
        assert_eq!(ok.devices, ["nvidia.com/gpu=GPU-a", "nvidia.com/gpu=MIG-b"]);
        assert_eq!(ok.cpus, 2);
        let cases: Vec<(pb::Job, &str)> = vec![
            (
                job(|s| s.container_env = vec!["A-B".into()]),
                "not a variable name",
            ),
            (job(|s| s.container_workdir = "rel".into()), "absolute path"),
            (
                job(|s| s.container_mounts = vec!["/etc:/e".into()]),
                "not allowed",
            ),
            (
                job(|s| s.container_mounts = vec!["rel:/e".into()]),
                "absolute path",
            ),
        ];
        for (i, (j, want)) in cases.iter().enumerate() {
            match ContainerJob::from_job(j, "n1", dir, &[], &cfg) {
                Err(e) if e.to_string().contains(want) => {}
                other => panic!("#{i}: want an error containing {want:?}, got {other:?}"),
            }
        }
        cfg.runtime = "/nonexistent/runc".into();
        match ContainerJob::from_job(&job(|_| {}), "n1", dir, &[], &cfg) {
            Err(OciError::Runtime(m)) => assert!(m.contains("not found"), "{m}"),
            other => panic!("want a Runtime error, got {other:?}"),
        }
    }

    #[test]
    fn env_names() {
        for (i, (name, ok)) in [
            ("A", true),
            ("_x1", true),
            ("1A", false),
            ("A-B", false),
            ("", false),
        ]
        .iter()
        .enumerate()
        {
            if valid_env_name(name) != *ok {
                panic!("#{i}: want {ok} for {name:?}");
            }
        }
    }
}
