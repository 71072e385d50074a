//! CDI (Container Device Interface) spec 1.1.0: the types (`specs-go/config.go` field
//! names), the agent's spec for its GPUs, loading a spec directory, and applying the edits
//! of requested devices to a runtime spec the way `pkg/cdi/container-edits.go` does.
//!
//! The agent writes one spec, `<cdi-dir>/berth-nvidia-gpu.json` (kind `nvidia.com/gpu`),
//! naming every whole GPU by index and by UUID and every MIG device by `<gpu>:<gi>` and by
//! UUID, and rewrites it whenever it creates or destroys a MIG instance. Device nodes carry
//! explicit type/major/minor (NVIDIA's char major is 195; nvidiactl is 195:255) so nothing
//! has to stat `/dev`: on simulated GPUs the host paths are the simulated machine's.

use super::OciError;
use oci_spec::runtime as rt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The kind of whole GPUs and MIG devices.
pub const NVIDIA_GPU_KIND: &str = "nvidia.com/gpu";
/// The kind of AMD GPUs (ROCm's container toolkit, `amd-ctk cdi generate`).
pub const AMD_GPU_KIND: &str = "amd.com/gpu";
/// File name of the agent's spec on an AMD node.
pub const AMD_SPEC_FILE: &str = "berth-amd-gpu.json";
/// The DRM character-device major (Linux `DRM_MAJOR`): `/dev/dri/card*`, `renderD*`.
const DRM_MAJOR: i64 = 226;
/// The version berth writes: the newest, so every field is allowed.
pub const CDI_VERSION: &str = "1.1.0";
/// The versions a loaded spec may declare.
const KNOWN_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];
/// NVIDIA's character-device major.
const NVIDIA_MAJOR: i64 = 195;
/// File name of the agent's spec.
pub const SPEC_FILE: &str = "berth-nvidia-gpu.json";

/// A CDI spec file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// `cdiVersion`.
    pub cdi_version: String,
    /// `vendor/class`.
    pub kind: String,
    /// Annotations (≥ 0.6.0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The devices.
    pub devices: Vec<Device>,
    /// Edits applied when any device of this spec is requested.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Name, unique in the spec.
    pub name: String,
    /// Annotations (≥ 0.6.0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Its edits.
    pub container_edits: ContainerEdits,
}

/// What requesting a device changes in the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    /// `KEY=VALUE`, appended to the process env.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    /// Network devices (1.1.0); accepted, not applied (berth jobs use the host network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<serde_json::Value>,
    /// OCI hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Intel RDT (≥ 0.7.0); accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<serde_json::Value>,
    /// Extra groups (≥ 0.7.0); note CDI's lower-case `Gids`.
    #[serde(
        default,
        rename = "additionalGids",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub additional_gids: Vec<u32>,
}

impl ContainerEdits {
    fn is_empty(&self) -> bool {
        *self == ContainerEdits::default()
    }
}

/// A device node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Path in the container.
    pub path: String,
    /// Path on the host (≥ 0.5.0), default `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `c`, `b` or `p`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Major number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// Minor number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// File mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// Cgroup access: a subset of `rwm`, or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// Host path.
    pub host_path: String,
    /// Container path.
    pub container_path: String,
    /// Mount options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Filesystem type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// An OCI hook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    /// prestart, createRuntime, createContainer, startContainer, poststart or poststop.
    pub hook_name: String,
    /// Executable.
    pub path: String,
    /// argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

fn version_index(v: &str) -> Option<usize> {
    KNOWN_VERSIONS.iter().position(|k| *k == v)
}

/// The lowest version whose schema has every feature `spec` uses.
pub fn minimum_version(spec: &Spec) -> &'static str {
    let mut min = "0.3.0";
    let mut need = |v: &'static str| {
        if version_index(v) > version_index(min) {
            min = v;
        }
    };
    let all_edits = std::iter::once(&spec.container_edits)
        .chain(spec.devices.iter().map(|d| &d.container_edits));
    for e in all_edits {
        if e.device_nodes.iter().any(|n| n.host_path.is_some()) {
            need("0.5.0");
        }
        if e.intel_rdt.is_some() || !e.additional_gids.is_empty() {
            need("0.7.0");
        }
        if !e.net_devices.is_empty() {
            need("1.1.0");
        }
    }
    if spec
        .devices
        .iter()
        .any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
    {
        need("0.5.0");
    }
    if !spec.annotations.is_empty() || spec.devices.iter().any(|d| !d.annotations.is_empty()) {
        need("0.6.0");
    }
    min
}

fn valid_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let vendor_ok = !vendor.is_empty()
        && vendor.split('.').all(|label| {
            label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && label.ends_with(|c: char| c.is_ascii_alphanumeric())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let class_ok = class.starts_with(|c: char| c.is_ascii_alphanumeric())
        && class.ends_with(|c: char| c.is_ascii_alphanumeric())
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    vendor_ok && class_ok
}

fn valid_device_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// Parses and validates one spec file's JSON.
///
/// # Errors
/// [`OciError::Cdi`] for unknown fields, an unknown or too low `cdiVersion`, a bad kind,
/// bad or duplicate device names, a bad hook name or device-node type.
pub fn parse(text: &[u8]) -> Result<Spec, OciError> {
    let spec: Spec =
        serde_json::from_slice(text).map_err(|e| OciError::Cdi(format!("bad spec: {e}")))?;
    validate(&spec)?;
    Ok(spec)
}

fn validate(spec: &Spec) -> Result<(), OciError> {
    let bad = |m: String| Err(OciError::Cdi(m));
    let Some(declared) = version_index(&spec.cdi_version) else {
        return bad(format!("unknown cdiVersion {:?}", spec.cdi_version));
    };
    let min = minimum_version(spec);
    if declared < version_index(min).unwrap_or(0) {
        return bad(format!(
            "cdiVersion {} is too low for the fields used (needs {min})",
            spec.cdi_version
        ));
    }
    if !valid_kind(&spec.kind) {
        return bad(format!("bad kind {:?} (want vendor/class)", spec.kind));
    }
    if spec.devices.is_empty() {
        return bad(format!("{}: no devices", spec.kind));
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &spec.devices {
        if !valid_device_name(&d.name) {
            return bad(format!("{}: bad device name {:?}", spec.kind, d.name));
        }
        if !seen.insert(&d.name) {
            return bad(format!("{}: device {:?} listed twice", spec.kind, d.name));
        }
    }
    let all_edits = std::iter::once(&spec.container_edits)
        .chain(spec.devices.iter().map(|d| &d.container_edits));
    for e in all_edits {
        for h in &e.hooks {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                return bad(format!("unknown hook name {:?}", h.hook_name));
            }
        }
        for n in &e.device_nodes {
            if !n.path.starts_with('/') {
                return bad(format!("device node path {:?} is not absolute", n.path));
            }
            if let Some(k) = &n.kind {
                if !matches!(k.as_str(), "c" | "b" | "p") {
                    return bad(format!("device node {}: bad type {k:?}", n.path));
                }
            }
            if let Some(p) = &n.permissions {
                if p != "none" && !p.chars().all(|c| "rwm".contains(c)) {
                    return bad(format!("device node {}: bad permissions {p:?}", n.path));
                }
            }
        }
        for env in &e.env {
            if !env.contains('=') {
                return bad(format!("env entry {env:?} is not KEY=VALUE"));
            }
        }
    }
    Ok(())
}

/// A GPU as the CDI spec needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuNode {
    /// NVML (or ROCm SMI) index.
    pub index: u32,
    /// `GPU-…`.
    pub uuid: String,
    /// Minor number of `/dev/nvidia<minor>`; on AMD, of `/dev/dri/renderD<minor>`.
    pub minor: u32,
}

/// A MIG device as the CDI spec needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MigNode {
    /// Parent GPU's NVML index.
    pub gpu_index: u32,
    /// Parent's minor.
    pub gpu_minor: u32,
    /// GPU-instance id.
    pub gi: u32,
    /// Compute-instance id.
    pub ci: u32,
    /// `MIG-…`.
    pub uuid: String,
}

/// Minors of `/dev/nvidia-caps/nvidia-cap<N>` for a MIG device's GPU instance and compute
/// instance. From `/proc/driver/nvidia-caps/mig-minors` when the driver is there
/// (`gpu<M>/gi<G>/access N`, `gpu<M>/gi<G>/ci<C>/access N`); otherwise the driver's own
/// numbering, which that file lists: 2 fixed entries, then per GPU 15 GPU instances of 9
/// entries each (the GI's access, then CI 0–7).
pub fn mig_cap_minors(mig_minors: Option<&str>, gpu_minor: u32, gi: u32, ci: u32) -> (u32, u32) {
    let find = |key: String| -> Option<u32> {
        mig_minors?.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    };
    let gi_key = format!("gpu{gpu_minor}/gi{gi}/access");
    let ci_key = format!("gpu{gpu_minor}/gi{gi}/ci{ci}/access");
    let base = 3 + gpu_minor * 15 * 9 + gi * 9;
    (
        find(gi_key).unwrap_or(base),
        find(ci_key).unwrap_or(base + 1 + ci),
    )
}

fn char_node(container: &str, host: &Path, major: i64, minor: i64) -> DeviceNode {
    DeviceNode {
        path: container.to_string(),
        host_path: Some(host.display().to_string()),
        kind: Some("c".into()),
        major: Some(major),
        minor: Some(minor),
        ..Default::default()
    }
}

/// The agent's spec for `gpus` and `migs`, device nodes on the host under `dev_dir`.
pub fn nvidia_spec(gpus: &[GpuNode], migs: &[MigNode], dev_dir: &Path) -> Spec {
    let mig_minors = std::fs::read_to_string("/proc/driver/nvidia-caps/mig-minors").ok();
    let mut devices = Vec::new();
    for g in gpus {
        let node = format!("/dev/nvidia{}", g.minor);
        let edits = ContainerEdits {
            device_nodes: vec![char_node(
                &node,
                &dev_dir.join(format!("nvidia{}", g.minor)),
                NVIDIA_MAJOR,
                i64::from(g.minor),
            )],
            ..Default::default()
        };
        for name in [g.index.to_string(), g.uuid.clone()] {
            devices.push(Device {
                name,
                annotations: BTreeMap::new(),
                container_edits: edits.clone(),
            });
        }
    }
    for m in migs {
        let (gi_minor, ci_minor) = mig_cap_minors(mig_minors.as_deref(), m.gpu_minor, m.gi, m.ci);
        let caps = dev_dir.join("nvidia-caps");
        let edits = ContainerEdits {
            device_nodes: vec![
                char_node(
                    &format!("/dev/nvidia{}", m.gpu_minor),
                    &dev_dir.join(format!("nvidia{}", m.gpu_minor)),
                    NVIDIA_MAJOR,
                    i64::from(m.gpu_minor),
                ),
                cap_node(&caps, gi_minor),
                cap_node(&caps, ci_minor),
            ],
            ..Default::default()
        };
        for name in [format!("{}:{}", m.gpu_index, m.gi), m.uuid.clone()] {
            devices.push(Device {
                name,
                annotations: BTreeMap::new(),
                container_edits: edits.clone(),
            });
        }
    }
    Spec {
        cdi_version: CDI_VERSION.into(),
        kind: NVIDIA_GPU_KIND.into(),
        annotations: BTreeMap::new(),
        devices,
        container_edits: ContainerEdits {
            device_nodes: vec![char_node(
                "/dev/nvidiactl",
                &dev_dir.join("nvidiactl"),
                NVIDIA_MAJOR,
                255,
            )],
            ..Default::default()
        },
    }
}

/// The agent's `amd.com/gpu` spec, laid out as ROCm's container toolkit writes it
/// (`internal/cdi/cdi.go`): one device per GPU named by index, each with the GPU's DRM
/// render node and `/dev/kfd` (the compute driver every ROCm process opens), and `all` with
/// every GPU's nodes. berth also names each GPU by UUID, which is how grants request it.
/// Card nodes (`/dev/dri/card*`) are left out: compute needs only the render node, and
/// ROCm's own docs run containers with just `/dev/kfd` and `renderD*`.
pub fn amd_spec(gpus: &[GpuNode], dev_dir: &Path) -> Spec {
    let kfd = kfd_node(dev_dir);
    let render = |g: &GpuNode| {
        char_node(
            &format!("/dev/dri/renderD{}", g.minor),
            &dev_dir.join(format!("dri/renderD{}", g.minor)),
            DRM_MAJOR,
            i64::from(g.minor),
        )
    };
    let mut devices = Vec::new();
    for g in gpus {
        let edits = ContainerEdits {
            device_nodes: vec![render(g), kfd.clone()],
            ..Default::default()
        };
        for name in [g.index.to_string(), g.uuid.clone()] {
            devices.push(Device {
                name,
                annotations: BTreeMap::new(),
                container_edits: edits.clone(),
            });
        }
    }
    let mut all: Vec<DeviceNode> = gpus.iter().map(render).collect();
    all.push(kfd);
    devices.push(Device {
        name: "all".into(),
        annotations: BTreeMap::new(),
        container_edits: ContainerEdits {
            device_nodes: all,
            ..Default::default()
        },
    });
    Spec {
        cdi_version: CDI_VERSION.into(),
        kind: AMD_GPU_KIND.into(),
        annotations: BTreeMap::new(),
        devices,
        container_edits: ContainerEdits::default(),
    }
}

/// `/dev/kfd`'s major is dynamic: from `/proc/devices` when amdgpu is loaded, else from the
/// node itself, else left out (applying the spec then reads it from the host node, and
/// fails naming it if there is none).
fn kfd_node(dev_dir: &Path) -> DeviceNode {
    use std::os::unix::fs::MetadataExt;
    let host = dev_dir.join("kfd");
    let major = proc_devices_major("kfd").or_else(|| {
        let m = std::fs::metadata(&host).ok()?;
        Some(nix::sys::stat::major(m.rdev()) as i64)
    });
    match major {
        Some(major) => char_node("/dev/kfd", &host, major, 0),
        None => DeviceNode {
            path: "/dev/kfd".into(),
            host_path: Some(host.display().to_string()),
            ..Default::default()
        },
    }
}

/// The major `/proc/devices` lists for the character driver `name`.
fn proc_devices_major(name: &str) -> Option<i64> {
    let text = std::fs::read_to_string("/proc/devices").ok()?;
    text.lines()
        .take_while(|l| !l.starts_with("Block devices"))
        .find_map(|l| {
            let (n, driver) = l.trim().split_once(' ')?;
            (driver == name).then(|| n.parse::<i64>().ok()).flatten()
        })
}

/// The nvidia-caps major is dynamic: read it from `/proc/devices` when the driver is
/// loaded; without a driver (simulated GPUs) see [`NVIDIA_CAPS_MAJOR_UNLOADED`].
fn cap_node(caps: &Path, minor: u32) -> DeviceNode {
    let major = proc_devices_major("nvidia-caps");
    char_node(
        &format!("/dev/nvidia-caps/nvidia-cap{minor}"),
        &caps.join(format!("nvidia-cap{minor}")),
        major.unwrap_or(NVIDIA_CAPS_MAJOR_UNLOADED),
        i64::from(minor),
    )
}

/// Major of nvidia-caps nodes when no driver registered one (simulated GPUs): a number from
/// Linux's dynamic char-major range (384–511), as the driver's own would be.
const NVIDIA_CAPS_MAJOR_UNLOADED: i64 = 511;

/// Writes `spec` to `dir/name` atomically (readers never see half a spec).
///
/// # Errors
/// [`OciError::Io`] when the directory or file cannot be written.
pub fn write(dir: &Path, name: &str, spec: &Spec) -> Result<(), OciError> {
    std::fs::create_dir_all(dir).map_err(super::io_err(dir))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| OciError::Cdi(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(super::io_err(&tmp))?;
    let dst = dir.join(name);
    std::fs::rename(&tmp, &dst).map_err(super::io_err(&dst))
}

/// Loads every `*.json` spec in `dirs`; a later directory's spec of the same kind and
/// device name wins, as in CDI's registry.
///
/// # Errors
/// [`OciError::Cdi`] naming the file when one is invalid.
pub fn load(dirs: &[PathBuf]) -> Result<Vec<Spec>, OciError> {
    let mut specs = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let text =
                std::fs::read(&f).map_err(|e| OciError::Cdi(format!("{}: {e}", f.display())))?;
            let spec = parse(&text).map_err(|e| OciError::Cdi(format!("{}: {e}", f.display())))?;
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// Applies the edits of the devices `names` (`vendor/class=name`) from `specs` to `oci`:
/// each device's own edits, plus once its spec's edits.
///
/// # Errors
/// [`OciError::Cdi`] for a malformed name or a device no spec has.
pub fn apply(oci: &mut rt::Spec, specs: &[Spec], names: &[String]) -> Result<(), OciError> {
    let mut spec_edits_done: Vec<usize> = Vec::new();
    for qualified in names {
        let (kind, name) = qualified
            .split_once('=')
            .filter(|(k, n)| valid_kind(k) && valid_device_name(n))
            .ok_or_else(|| OciError::Cdi(format!("bad device name {qualified:?}")))?;
        let found = specs.iter().enumerate().rev().find_map(|(i, s)| {
            (s.kind == kind)
                .then(|| s.devices.iter().find(|d| d.name == name).map(|d| (i, d)))
                .flatten()
        });
        let (i, device) = found.ok_or_else(|| {
            OciError::Cdi(format!(
                "unresolvable device {qualified:?} (no spec lists it)"
            ))
        })?;
        if !spec_edits_done.contains(&i) {
            spec_edits_done.push(i);
            apply_edits(oci, &specs[i].container_edits)?;
        }
        apply_edits(oci, &device.container_edits)?;
    }
    sort_mounts(oci);
    Ok(())
}

fn apply_edits(oci: &mut rt::Spec, e: &ContainerEdits) -> Result<(), OciError> {
    let cdi_err = |m: String| OciError::Cdi(m);
    if let Some(p) = oci.process_mut() {
        let mut env = p.env().clone().unwrap_or_default();
        env.extend(e.env.iter().cloned());
        p.set_env(Some(env));
        if !e.additional_gids.is_empty() {
            let mut gids = p.user().additional_gids().clone().unwrap_or_default();
            gids.extend(e.additional_gids.iter().filter(|g| **g != 0));
            let mut user = p.user().clone();
            user.set_additional_gids(Some(gids));
            p.set_user(user);
        }
    }
    for n in &e.device_nodes {
        apply_device_node(oci, n)?;
    }
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    for m in &e.mounts {
        mounts.retain(|x| x.destination() != Path::new(&m.container_path));
        let mut b = rt::MountBuilder::default()
            .source(PathBuf::from(&m.host_path))
            .destination(PathBuf::from(&m.container_path))
            .options(m.options.clone());
        if let Some(t) = &m.kind {
            b = b.typ(t.clone());
        }
        mounts.push(b.build().map_err(|e| cdi_err(e.to_string()))?);
    }
    oci.set_mounts(Some(mounts));
    if !e.hooks.is_empty() {
        let mut hooks = oci.hooks().clone().unwrap_or_default();
        for h in &e.hooks {
            let mut b = rt::HookBuilder::default().path(PathBuf::from(&h.path));
            if !h.args.is_empty() {
                b = b.args(h.args.clone());
            }
            if !h.env.is_empty() {
                b = b.env(h.env.clone());
            }
            if let Some(t) = h.timeout {
                b = b.timeout(t);
            }
            let hook = b.build().map_err(|e| cdi_err(e.to_string()))?;
            let list = match h.hook_name.as_str() {
                "createRuntime" => hooks.create_runtime_mut(),
                "createContainer" => hooks.create_container_mut(),
                "startContainer" => hooks.start_container_mut(),
                "poststart" => hooks.poststart_mut(),
                "poststop" => hooks.poststop_mut(),
                #[allow(deprecated)]
                "prestart" => hooks.prestart_mut(),
                other => return Err(cdi_err(format!("unknown hook name {other:?}"))),
            };
            list.get_or_insert_with(Vec::new).push(hook);
        }
        oci.set_hooks(Some(hooks));
    }
    Ok(())
}

fn apply_device_node(oci: &mut rt::Spec, n: &DeviceNode) -> Result<(), OciError> {
    let mut node = n.clone();
    // Fill what the spec leaves out from the host node, as CDI does.
    if node.kind.is_none() || node.major.is_none() || node.minor.is_none() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let host = node.host_path.clone().unwrap_or_else(|| node.path.clone());
        let meta = std::fs::metadata(&host)
            .map_err(|e| OciError::Cdi(format!("device node {host}: {e}")))?;
        let ft = meta.file_type();
        let kind = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else if ft.is_fifo() {
            "p"
        } else {
            return Err(OciError::Cdi(format!("{host} is not a device node")));
        };
        node.kind.get_or_insert_with(|| kind.into());
        let rdev = meta.rdev();
        node.major.get_or_insert(nix::sys::stat::major(rdev) as i64);
        node.minor.get_or_insert(nix::sys::stat::minor(rdev) as i64);
        node.file_mode.get_or_insert(meta.mode() & 0o777);
    }
    let kind = match node.kind.as_deref() {
        Some("b") => rt::LinuxDeviceType::B,
        Some("p") => rt::LinuxDeviceType::P,
        _ => rt::LinuxDeviceType::C,
    };
    let (major, minor) = (node.major.unwrap_or(0), node.minor.unwrap_or(0));
    let mut b = rt::LinuxDeviceBuilder::default()
        .path(PathBuf::from(&node.path))
        .typ(kind)
        .major(major)
        .minor(minor);
    if let Some(m) = node.file_mode {
        b = b.file_mode(m);
    }
    if let Some(u) = node.uid {
        b = b.uid(u);
    }
    if let Some(g) = node.gid {
        b = b.gid(g);
    }
    let dev = b.build().map_err(|e| OciError::Cdi(e.to_string()))?;
    let linux = oci.linux_mut().get_or_insert_with(rt::Linux::default);
    let devices = linux.devices_mut().get_or_insert_with(Vec::new);
    devices.retain(|d| d.path() != Path::new(&node.path));
    devices.push(dev);
    if matches!(kind, rt::LinuxDeviceType::C | rt::LinuxDeviceType::B) {
        let access = match node.permissions.as_deref() {
            None => "rwm".to_string(),
            Some("none") => String::new(),
            Some(p) => p.to_string(),
        };
        let rule = rt::LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(kind)
            .major(major)
            .minor(minor)
            .access(access)
            .build()
            .map_err(|e| OciError::Cdi(e.to_string()))?;
        let resources = linux.resources_mut().get_or_insert_with(Default::default);
        resources
            .devices_mut()
            .get_or_insert_with(Vec::new)
            .push(rule);
    }
    Ok(())
}

/// Stable sort by the number of components of the destination (parents before children).
fn sort_mounts(oci: &mut rt::Spec) {
    if let Some(m) = oci.mounts_mut() {
        m.sort_by_key(|x| x.destination().components().count());
    }
}

#[cfg(test)]
mod tests;
