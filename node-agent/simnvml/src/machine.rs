//! The machine description: what one simulated node looks like, as JSON. It is the only
//! input of the simulated library, so everything NVML could report must be derivable from
//! it, and a description that would make NVML answer inconsistently (two GPUs with one UUID
//! or bus id, a name that overflows NVML's fixed buffers) is refused here, when it is
//! loaded, rather than discovered later by the agent.

use std::collections::HashMap;
use std::path::Path;

use nvml_wrapper_sys::bindings::{
    NVML_DEVICE_NAME_BUFFER_SIZE, NVML_DEVICE_UUID_BUFFER_SIZE,
    NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE, NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE,
};
use serde::{Deserialize, Serialize};

use crate::mig::MigSku;
use crate::pci::PciAddress;
use crate::uuid::{derive_gpu_uuid, is_gpu_uuid};
use crate::Error;

/// Most GPUs one description may list. Device handles are addresses in a fixed table (see
/// `handle`), so the table needs a bound; 64 is four times the largest real node (DGX-2).
pub const MAX_GPUS: usize = 64;

/// PCI vendor:device id reported when a GPU gives none: NVIDIA's vendor id, device 0.
const PCI_DEVICE_ID_DEFAULT: u32 = 0x0000_10DE;

/// Longest text each NVML buffer holds, NUL excluded. Names use the legacy 64-byte size,
/// not the v2 96, so that older callers with the small buffer can read every name too.
const DRIVER_VERSION_LEN_MAX: usize = NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE as usize - 1;
const NVML_VERSION_LEN_MAX: usize = NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE as usize - 1;
const GPU_NAME_LEN_MAX: usize = NVML_DEVICE_NAME_BUFFER_SIZE as usize - 1;
const UUID_LEN_MAX: usize = NVML_DEVICE_UUID_BUFFER_SIZE as usize - 1;
/// Node names are not NVML strings; the bound only keeps descriptions sane.
const MACHINE_NAME_LEN_MAX: usize = 255;
/// NVLinks per GPU at most: `NVML_NVLINK_MAX_LINKS`.
pub(crate) const NVLINKS_MAX: u32 = nvml_wrapper_sys::bindings::NVML_NVLINK_MAX_LINKS;
/// NUMA nodes at most; far above any real host, it only keeps affinity masks small.
const NUMA_NODES_MAX: u32 = 16;

/// One simulated node. See the crate docs for the JSON schema; unknown fields are errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineDescription {
    /// Model or node name, e.g. `dgx-h100`. Non-empty.
    pub name: String,
    /// `nvmlSystemGetDriverVersion`, e.g. `580.65.06`. Non-empty, under 80 bytes.
    pub driver_version: String,
    /// `nvmlSystemGetNVMLVersion`, e.g. `13.580.65.06`. Non-empty, under 80 bytes.
    pub nvml_version: String,
    /// `nvmlSystemGetCudaDriverVersion[_v2]`: 1000 × major + 10 × minor, e.g. 13000. Positive.
    pub cuda_driver_version: i32,
    /// Logical CPUs of the node, for the agent's inventory. Positive.
    pub cpus: u32,
    /// Host memory in MiB, for the agent's inventory. Positive.
    pub memory_mb: u64,
    /// Seed of the derived GPU UUIDs; absent means `name`. [`crate::install_node`] sets it
    /// to the node name so that nodes of one model get different UUIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid_seed: Option<String>,
    /// NUMA nodes of the host; absent means 1. CPUs are split evenly between them, in
    /// order, for `nvmlDeviceGetCpuAffinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_nodes: Option<u32>,
    /// GPUs in NVML index order, at most [`MAX_GPUS`]. Empty is a CPU-only node.
    pub gpus: Vec<Gpu>,
}

/// A group of NVLinks from one GPU to the same remote end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvLinkGroup {
    /// Links in the group, at least 1; a GPU has at most 18 in all.
    pub links: u32,
    /// The peer GPU's index for a direct link (the peer must list the same count back);
    /// absent means the links go to NVSwitches, which connect every such GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_gpu: Option<u32>,
}

/// One GPU of a [`MachineDescription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// `nvmlDeviceGetName`, e.g. `NVIDIA H100 80GB HBM3`. Non-empty, under 64 bytes.
    pub name: String,
    /// Framebuffer in MiB, as `nvidia-smi` shows it (81559 for an H100 80GB). Positive.
    pub memory_mb: u64,
    /// `DDDDDDDD:BB:DD.F` in hex; unique within the machine.
    pub pci_bus_id: String,
    /// `[major, minor]`, e.g. `[9, 0]` for Hopper. Major in `[1, 100)`, minor in `[0, 10)`.
    pub compute_capability: [u32; 2],
    /// Fixed UUID (`GPU-` + 8-4-4-4-12 lowercase hex); absent means derived from
    /// (`uuid_seed`, index). Unique within the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// `/dev/nvidia<N>` minor; absent means the index. Unique within the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_number: Option<u32>,
    /// `nvmlPciInfo_t.pciDeviceId` as hex text, device id high and vendor low, e.g.
    /// `"0x233010DE"`; absent means `0x000010DE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<String>,
    /// NUMA node the GPU hangs off; absent means 0. Below the machine's `numa_nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// GPUs with the same value sit behind one PCIe switch (topology level SINGLE/PIX);
    /// absent means a switch of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_switch: Option<u32>,
    /// MIG profile table of the card (`"a100-40gb"`, `"a100-80gb"`, `"h100-80gb"`);
    /// absent means not MIG capable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<MigSku>,
    /// MIG mode at boot (current = pending); needs `mig`. The simulator, like berth, never
    /// changes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mig_enabled: bool,
    /// NVLinks, in link-index order; empty means none (PCIe only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvlinks: Vec<NvLinkGroup>,
    /// ECC mode; absent means enabled, as on data-centre cards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_enabled: Option<bool>,
    /// Power draw when idle, watts; absent means 70.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_idle_w: Option<u32>,
}

/// A GPU with every default applied and every text parsed: what the C side reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedGpu {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) uuid: String,
    pub(crate) pci: PciAddress,
    pub(crate) pci_device_id: u32,
    pub(crate) minor_number: u32,
    pub(crate) memory_bytes: u64,
    pub(crate) compute_capability: (i32, i32),
    pub(crate) numa_node: u32,
    /// PCIe switch id; GPUs without one get `u32::MAX - index`, unique.
    pub(crate) pcie_switch: u32,
    pub(crate) mig: Option<MigSku>,
    pub(crate) mig_enabled: bool,
    /// Remote end of each link, by link index: `Some(gpu)` or `None` for an NVSwitch.
    pub(crate) links: Vec<Option<u32>>,
    pub(crate) ecc_enabled: bool,
    pub(crate) power_idle_mw: u32,
}

impl MachineDescription {
    /// Parses and validates a description.
    ///
    /// # Errors
    /// [`Error::Json`] for bad JSON, a missing or unknown field or a wrong type;
    /// [`Error::Invalid`] or [`Error::PciBusId`] when [`Self::validate`] fails.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let description: MachineDescription = serde_json::from_str(text)?;
        description.validate()?;
        Ok(description)
    }

    /// Reads, parses and validates the description in `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::InFile`] naming `path` and
    /// wrapping the [`Self::from_json`] error otherwise.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| Error::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Pretty JSON that [`Self::from_json`] reads back to an equal value, newline-terminated.
    pub fn to_json(&self) -> String {
        // Only strings, integers, arrays and string-keyed objects: serialising cannot fail.
        let mut text = serde_json::to_string_pretty(self)
            .expect("a MachineDescription always serialises: it has no maps or floats");
        text.push('\n');
        text
    }

    /// Checks everything the field docs promise; [`Self::from_json`] and
    /// [`crate::install_node`] call it, so only hand-built values need to.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first bad field (`gpus[i].…` for GPU fields), or
    /// [`Error::PciBusId`] for a malformed bus id.
    pub fn validate(&self) -> Result<(), Error> {
        self.resolve().map(|_| ())
    }

    /// NUMA nodes of the host: `numa_nodes`, else 1.
    pub fn numa_nodes(&self) -> u32 {
        self.numa_nodes.unwrap_or(1)
    }

    /// The seed derived UUIDs use: `uuid_seed`, else `name`.
    pub fn uuid_seed(&self) -> &str {
        self.uuid_seed.as_deref().unwrap_or(&self.name)
    }

    /// The UUID GPU `index` reports: its explicit `uuid`, else one derived from
    /// ([`Self::uuid_seed`], `index`). `None` if there is no GPU `index`.
    pub fn gpu_uuid(&self, index: usize) -> Option<String> {
        let gpu = self.gpus.get(index)?;
        Some(match &gpu.uuid {
            Some(uuid) => uuid.clone(),
            None => derive_gpu_uuid(self.uuid_seed(), index),
        })
    }

    /// Validates and applies defaults; the C side is built from the result.
    pub(crate) fn resolve(&self) -> Result<Vec<ResolvedGpu>, Error> {
        self.check_machine_fields().map_err(Error::Invalid)?;
        let gpus = (0..self.gpus.len())
            .map(|index| self.resolve_gpu(index))
            .collect::<Result<Vec<_>, _>>()?;
        check_unique(&gpus).map_err(Error::Invalid)?;
        check_nvlinks(&self.gpus).map_err(Error::Invalid)?;
        Ok(gpus)
    }

    fn check_machine_fields(&self) -> Result<(), String> {
        check_text("name", &self.name, MACHINE_NAME_LEN_MAX)?;
        check_text(
            "driver_version",
            &self.driver_version,
            DRIVER_VERSION_LEN_MAX,
        )?;
        check_text("nvml_version", &self.nvml_version, NVML_VERSION_LEN_MAX)?;
        if let Some(seed) = &self.uuid_seed {
            check_text("uuid_seed", seed, MACHINE_NAME_LEN_MAX)?;
        }
        if self.cuda_driver_version <= 0 {
            return Err(format!(
                "cuda_driver_version must be positive (1000 × major + 10 × minor), got {}",
                self.cuda_driver_version
            ));
        }
        if self.cpus == 0 || self.memory_mb == 0 {
            return Err(format!(
                "cpus and memory_mb must be positive, got cpus {} and memory_mb {}",
                self.cpus, self.memory_mb
            ));
        }
        let numa_nodes = self.numa_nodes();
        if numa_nodes == 0 || numa_nodes > NUMA_NODES_MAX || numa_nodes > self.cpus {
            return Err(format!(
                "numa_nodes must be in [1, {NUMA_NODES_MAX}] and at most cpus, got {numa_nodes}"
            ));
        }
        if self.gpus.len() > MAX_GPUS {
            return Err(format!(
                "at most {MAX_GPUS} gpus are supported, got {}",
                self.gpus.len()
            ));
        }
        Ok(())
    }

    fn resolve_gpu(&self, index: usize) -> Result<ResolvedGpu, Error> {
        let gpu = &self.gpus[index];
        let context = |reason: String| Error::Invalid(format!("gpus[{index}].{reason}"));
        check_text("name", &gpu.name, GPU_NAME_LEN_MAX).map_err(context)?;
        let memory_bytes = match gpu.memory_mb.checked_mul(1 << 20) {
            Some(bytes) if bytes > 0 => bytes,
            _ => {
                return Err(context(format!(
                    "memory_mb must be positive and below 2^44, got {}",
                    gpu.memory_mb
                )))
            }
        };
        let pci =
            PciAddress::parse(&gpu.pci_bus_id).map_err(|e| context(format!("pci_bus_id: {e}")))?;
        let pci_device_id = match &gpu.pci_device_id {
            None => PCI_DEVICE_ID_DEFAULT,
            Some(text) => parse_hex_u32(text).ok_or_else(|| {
                context(format!(
                    "pci_device_id must be hex like \"0x233010DE\", got {text:?}"
                ))
            })?,
        };
        let [major, minor] = gpu.compute_capability;
        if !(1..100).contains(&major) || minor >= 10 {
            return Err(context(format!(
                "compute_capability must be [1..99, 0..9], got [{major}, {minor}]"
            )));
        }
        if let Some(uuid) = &gpu.uuid {
            if !is_gpu_uuid(uuid) || uuid.len() > UUID_LEN_MAX {
                return Err(context(format!(
                    "uuid must look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (lowercase hex), got {uuid:?}"
                )));
            }
        }
        let numa_node = gpu.numa_node.unwrap_or(0);
        if numa_node >= self.numa_nodes() {
            return Err(context(format!(
                "numa_node must be below numa_nodes ({}), got {numa_node}",
                self.numa_nodes()
            )));
        }
        if gpu.mig_enabled && gpu.mig.is_none() {
            return Err(context(
                "mig_enabled needs mig (the card's MIG profile table)".into(),
            ));
        }
        let links = resolve_links(gpu, index).map_err(context)?;
        Ok(ResolvedGpu {
            // Both bounded by MAX_GPUS, checked before GPUs are resolved.
            index: index as u32,
            name: gpu.name.clone(),
            uuid: self.gpu_uuid(index).unwrap_or_default(),
            pci,
            pci_device_id,
            minor_number: gpu.minor_number.unwrap_or(index as u32),
            memory_bytes,
            compute_capability: (major as i32, minor as i32),
            numa_node,
            pcie_switch: gpu.pcie_switch.unwrap_or(u32::MAX - index as u32),
            mig: gpu.mig,
            mig_enabled: gpu.mig_enabled,
            links,
            ecc_enabled: gpu.ecc_enabled.unwrap_or(true),
            power_idle_mw: gpu.power_idle_w.unwrap_or(70).saturating_mul(1000),
        })
    }
}

/// Non-empty, short enough for its NVML buffer, and free of NUL (which would silently
/// truncate the C string).
fn check_text(field: &str, value: &str, len_max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > len_max {
        return Err(format!(
            "{field} must be at most {len_max} bytes, got {} ({value:?})",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("{field} must not contain NUL, got {value:?}"));
    }
    Ok(())
}

/// Link index → remote end, checking counts; peers are checked in [`check_nvlinks`].
fn resolve_links(gpu: &Gpu, index: usize) -> Result<Vec<Option<u32>>, String> {
    let mut links = Vec::new();
    for (g, group) in gpu.nvlinks.iter().enumerate() {
        if group.links == 0 {
            return Err(format!("nvlinks[{g}].links must be at least 1"));
        }
        if group.peer_gpu == Some(index as u32) {
            return Err(format!("nvlinks[{g}].peer_gpu must not be the GPU itself"));
        }
        links.extend(std::iter::repeat_n(group.peer_gpu, group.links as usize));
        if links.len() > NVLINKS_MAX as usize {
            return Err(format!(
                "nvlinks: at most {NVLINKS_MAX} links per GPU, got {}",
                links.len()
            ));
        }
    }
    Ok(links)
}

/// Direct links exist in pairs: if GPU a lists n links to b, b lists n links to a.
fn check_nvlinks(gpus: &[Gpu]) -> Result<(), String> {
    let count = |from: &Gpu, to: u32| -> u32 {
        from.nvlinks
            .iter()
            .filter(|g| g.peer_gpu == Some(to))
            .map(|g| g.links)
            .sum()
    };
    for (a, gpu) in gpus.iter().enumerate() {
        for peer in gpu.nvlinks.iter().filter_map(|g| g.peer_gpu) {
            let Some(other) = gpus.get(peer as usize) else {
                return Err(format!("gpus[{a}].nvlinks: peer_gpu {peer} does not exist"));
            };
            let (there, back) = (count(gpu, peer), count(other, a as u32));
            if there != back {
                return Err(format!(
                    "gpus[{a}] has {there} nvlinks to gpus[{peer}] but it has {back} back"
                ));
            }
        }
    }
    Ok(())
}

fn parse_hex_u32(text: &str) -> Option<u32> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))?;
    let ok =
        !digits.is_empty() && digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| u32::from_str_radix(digits, 16).ok()).flatten()
}

/// UUIDs, bus ids and minor numbers each name one GPU; a repeat would make NVML lookups
/// by that key ambiguous.
fn check_unique(gpus: &[ResolvedGpu]) -> Result<(), String> {
    let mut uuids = HashMap::new();
    let mut buses = HashMap::new();
    let mut minors = HashMap::new();
    for gpu in gpus {
        let i = gpu.index;
        if let Some(first) = uuids.insert(gpu.uuid.as_str(), i) {
            return Err(format!(
                "gpus[{first}] and gpus[{i}] have the same uuid {}",
                gpu.uuid
            ));
        }
        if let Some(first) = buses.insert(gpu.pci, i) {
            return Err(format!(
                "gpus[{first}] and gpus[{i}] have the same pci_bus_id {}",
                gpu.pci.bus_id()
            ));
        }
        if let Some(first) = minors.insert(gpu.minor_number, i) {
            return Err(format!(
                "gpus[{first}] and gpus[{i}] have the same minor_number {}",
                gpu.minor_number
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "name": "tiny", "driver_version": "580.65.06", "nvml_version": "13.580.65.06",
        "cuda_driver_version": 13000, "cpus": 8, "memory_mb": 32768,
        "gpus": [
            {"name": "NVIDIA L4", "memory_mb": 23034, "pci_bus_id": "0000:01:00.0",
             "compute_capability": [8, 9]},
            {"name": "NVIDIA L4", "memory_mb": 23034, "pci_bus_id": "0000:02:00.0",
             "compute_capability": [8, 9]}
        ]
    }"#;

    fn minimal() -> MachineDescription {
        MachineDescription::from_json(MINIMAL).expect("MINIMAL is valid")
    }

    #[test]
    fn parses_and_applies_defaults() {
        let machine = minimal();
        assert_eq!(machine.uuid_seed(), "tiny", "seed defaults to the name");
        let gpus = machine.resolve().expect("valid");
        assert_eq!(gpus[1].minor_number, 1, "minor defaults to the index");
        assert_eq!(gpus[1].pci.bus_id(), "00000000:02:00.0");
        assert_eq!(gpus[0].memory_bytes, 23034 << 20);
        assert_eq!(gpus[0].pci_device_id, 0x10DE);
        assert_eq!(gpus[0].compute_capability, (8, 9));
    }

    #[test]
    fn json_round_trips() {
        for name in crate::builtin_names() {
            let machine = crate::builtin(name).expect("shipped");
            let again = MachineDescription::from_json(&machine.to_json()).expect("round trip");
            assert_eq!(again, machine, "{name}");
        }
        let mut seeded = minimal();
        seeded.uuid_seed = Some("n7".into());
        seeded.gpus[0].uuid = Some("GPU-00000000-0000-0000-0000-000000000001".into());
        let again = MachineDescription::from_json(&seeded.to_json()).expect("round trip");
        assert_eq!(again, seeded);
    }

    #[test]
    fn cpu_only_node_is_valid() {
        let text = MINIMAL.replace(
            &MINIMAL[MINIMAL.find("\"gpus\"").expect("has gpus")..MINIMAL.rfind('}').expect("}")],
            "\"gpus\": []\n",
        );
        let machine = MachineDescription::from_json(&text).expect("no GPUs is allowed");
        assert!(machine.gpus.is_empty());
        assert_eq!(machine.gpu_uuid(0), None);
    }

    #[test]
    fn bad_json_is_a_json_error() {
        let table = [
            ("not json", "{"),
            (
                "unknown machine field",
                &*MINIMAL.replacen("\"cpus\"", "\"cores\": 1, \"cpus\"", 1),
            ),
            (
                "unknown gpu field",
                &*MINIMAL.replacen(
                    "\"memory_mb\": 23034",
                    "\"memory_mb\": 23034, \"tdp_w\": 72",
                    1,
                ),
            ),
            ("missing field", &*MINIMAL.replacen("\"cpus\": 8,", "", 1)),
            (
                "wrong type",
                &*MINIMAL.replacen("\"cpus\": 8", "\"cpus\": \"8\"", 1),
            ),
            (
                "negative memory",
                &*MINIMAL.replacen("\"memory_mb\": 23034", "\"memory_mb\": -1", 1),
            ),
        ];
        for (i, (what, text)) in table.iter().enumerate() {
            match MachineDescription::from_json(text) {
                Err(Error::Json(_)) => {}
                other => panic!("#{i} {what}: want Error::Json, got {other:?}"),
            }
        }
        let unknown = MachineDescription::from_json(table[1].1).expect_err("unknown field");
        assert!(unknown.to_string().contains("cores"), "{unknown}");
    }

    type Edit = fn(&mut MachineDescription);
    const UUID: &str = "GPU-12345678-9abc-def0-1234-56789abcdef0";

    /// Each row: what it breaks, how (applied to `minimal()`), text the error must contain.
    #[rustfmt::skip] // One row per line reads as the table it is.
    const INVALID: &[(&str, Edit, &str)] = &[
        ("empty machine name", |m| m.name = " ".into(), "name must not be empty"),
        ("empty driver", |m| m.driver_version.clear(), "driver_version"),
        ("long nvml version", |m| m.nvml_version = "1".repeat(80), "nvml_version"),
        ("empty seed", |m| m.uuid_seed = Some(String::new()), "uuid_seed"),
        ("zero cuda", |m| m.cuda_driver_version = 0, "cuda_driver_version"),
        ("zero cpus", |m| m.cpus = 0, "cpus"),
        ("zero host memory", |m| m.memory_mb = 0, "memory_mb"),
        ("too many gpus", |m| m.gpus = vec![m.gpus[0].clone(); MAX_GPUS + 1], "at most 64"),
        ("empty gpu name", |m| m.gpus[1].name.clear(), "gpus[1].name"),
        ("nul in gpu name", |m| m.gpus[0].name = "a\0b".into(), "NUL"),
        ("zero gpu memory", |m| m.gpus[1].memory_mb = 0, "gpus[1].memory_mb"),
        ("huge gpu memory", |m| m.gpus[0].memory_mb = u64::MAX, "gpus[0].memory_mb"),
        ("bad bus id", |m| m.gpus[0].pci_bus_id = "18:00.0".into(), "gpus[0].pci_bus_id"),
        ("bad device id", |m| m.gpus[0].pci_device_id = Some("233010DE".into()), "pci_device_id"),
        ("bad capability", |m| m.gpus[0].compute_capability = [0, 0], "compute_capability"),
        ("malformed uuid", |m| m.gpus[0].uuid = Some("GPU-xyz".into()), "gpus[0].uuid"),
        ("uppercase uuid", |m| m.gpus[0].uuid = Some(UUID.to_uppercase()), "lowercase"),
        ("duplicate uuid", |m| {
            m.gpus[0].uuid = Some(UUID.into());
            m.gpus[1].uuid = Some(UUID.into());
        }, "gpus[0] and gpus[1] have the same uuid"),
        ("uuid equal to a derived one", |m| m.gpus[1].uuid = m.gpu_uuid(0), "same uuid"),
        ("duplicate bus id", |m| m.gpus[1].pci_bus_id = "00000000:01:00.0".into(), "same pci_bus_id"),
        ("duplicate minor", |m| m.gpus[0].minor_number = Some(1), "same minor_number"),
        ("zero numa nodes", |m| m.numa_nodes = Some(0), "numa_nodes"),
        ("numa node out of range", |m| m.gpus[1].numa_node = Some(1), "gpus[1].numa_node"),
        ("mig mode without mig", |m| m.gpus[0].mig_enabled = true, "gpus[0].mig_enabled"),
        ("zero links", |m| m.gpus[0].nvlinks = vec![NvLinkGroup { links: 0, peer_gpu: None }], "links must be at least 1"),
        ("too many links", |m| m.gpus[0].nvlinks = vec![NvLinkGroup { links: 19, peer_gpu: None }], "at most 18"),
        ("link to itself", |m| m.gpus[0].nvlinks = vec![NvLinkGroup { links: 1, peer_gpu: Some(0) }], "itself"),
        ("link to nowhere", |m| m.gpus[0].nvlinks = vec![NvLinkGroup { links: 1, peer_gpu: Some(9) }], "does not exist"),
        ("one-way link", |m| m.gpus[0].nvlinks = vec![NvLinkGroup { links: 2, peer_gpu: Some(1) }], "0 back"),
    ];

    #[test]
    fn impossible_machines_are_refused_with_the_field_named() {
        for (i, (what, edit, want)) in INVALID.iter().enumerate() {
            let mut machine = minimal();
            edit(&mut machine);
            match machine.validate() {
                Ok(()) => panic!("#{i} {what}: want an error containing {want:?}, got Ok"),
                Err(e) if e.to_string().contains(want) => {}
                Err(e) => panic!("#{i} {what}: want an error containing {want:?}, got {e}"),
            }
            // from_json must refuse exactly what validate refuses.
            let err = MachineDescription::from_json(&machine.to_json());
            assert!(err.is_err(), "#{i} {what}: from_json accepted it");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.json");
        let err = MachineDescription::load(&path).expect_err("missing file");
        assert!(matches!(&err, Error::Io { .. }), "{err:?}");
        std::fs::write(&path, "{\"name\": 1}").expect("write");
        let err = MachineDescription::load(&path).expect_err("bad content");
        let text = err.to_string();
        assert!(
            matches!(&err, Error::InFile { .. }) && text.contains("m.json"),
            "{text}"
        );
    }

    #[test]
    fn uuids_follow_the_seed_unless_explicit() {
        let a = minimal();
        let mut b = minimal();
        b.uuid_seed = Some("other".into());
        assert_eq!(a.gpu_uuid(0), minimal().gpu_uuid(0), "same seed, same uuid");
        assert_ne!(
            a.gpu_uuid(0),
            b.gpu_uuid(0),
            "different seed, different uuid"
        );
        assert_ne!(
            a.gpu_uuid(0),
            a.gpu_uuid(1),
            "different index, different uuid"
        );
        let fixed = "GPU-12345678-9abc-def0-1234-56789abcdef0";
        b.gpus[1].uuid = Some(fixed.into());
        assert_eq!(b.gpu_uuid(1).as_deref(), Some(fixed));
        assert_eq!(b.gpu_uuid(2), None);
    }
}
