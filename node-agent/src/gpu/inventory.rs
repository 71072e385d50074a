//! What a GPU reports at registration, read through NVML: identity, memory, PCI, NUMA,
//! compute capability, MIG capability/mode/profiles/placements, NVLinks, ECC, and how
//! every GPU pair is connected. A GPU that has fallen off the bus still registers (its
//! identity survives in the driver) with `unhealthy_reason` set, so berthd never places
//! on it.

use super::gres_type;
use crate::nvml_raw;
use berth_proto::v1 as pb;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{NVML_GPU_INSTANCE_PROFILE_COUNT, NVML_NVLINK_MAX_LINKS};

/// One GPU's inventory. Peers are filled in by [`nvlink_peers`] once every GPU is known.
///
/// # Errors
/// NVML's, except that a lost GPU is reported rather than failing the whole node.
pub(super) fn gpu(nvml: &Nvml, d: &Device<'_>, index: u32) -> Result<pb::Gpu, NvmlError> {
    let model = d.name()?;
    let mut gpu = pb::Gpu {
        uuid: d.uuid()?,
        index,
        gres_type: gres_type(&model),
        model,
        pci_bus_id: d.pci_info()?.bus_id,
        minor: d.minor_number()?,
        ..Default::default()
    };
    match live_facts(nvml, d, &mut gpu) {
        Ok(()) => {}
        Err(NvmlError::GpuLost) => gpu.unhealthy_reason = "GPU lost (fallen off the bus)".into(),
        Err(e) => return Err(e),
    }
    Ok(gpu)
}

/// The facts that need the GPU to answer.
fn live_facts(nvml: &Nvml, d: &Device<'_>, gpu: &mut pb::Gpu) -> Result<(), NvmlError> {
    gpu.memory_mb = d.memory_info()?.total >> 20;
    // Single-socket hosts and some drivers answer NotSupported: that is NUMA node 0.
    gpu.numa_node = optional(d.numa_node_id())?.unwrap_or(0);
    let cc = d.cuda_compute_capability()?;
    gpu.compute_capability = format!("{}.{}", cc.major, cc.minor);
    gpu.ecc_enabled = optional(d.is_ecc_enabled())?.is_some_and(|e| e.currently_enabled);
    if let Some(mode) = optional(d.mig_mode())? {
        gpu.mig_capable = true;
        gpu.mig_enabled = mode.current == 1;
        gpu.mig_profiles = mig_profiles(nvml, d)?;
    }
    for link in 0..NVML_NVLINK_MAX_LINKS {
        let wrapper = d.link_wrapper_for(link);
        match optional(wrapper.is_active())? {
            None => break,
            Some(false) => continue,
            Some(true) => {}
        }
        if nvml_raw::nvlink_remote_is_switch(nvml, d, link)? {
            gpu.nvswitch_links += 1;
        }
    }
    Ok(())
}

/// `Ok(None)` for NVML's "this GPU does not have that" answers.
fn optional<T>(r: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported | NvmlError::InvalidArg | NvmlError::FunctionNotFound) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Every GPU-instance profile NVML reports, by index constant, with its legal placements
/// (empty when NVML will not list them, i.e. with MIG mode off).
fn mig_profiles(nvml: &Nvml, d: &Device<'_>) -> Result<Vec<pb::MigProfile>, NvmlError> {
    let mut out = Vec::new();
    for index in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
        let Some(info) = optional(d.profile_info(index))? else {
            continue;
        };
        let name = optional(nvml_raw::profile_name(nvml, d, index))?.unwrap_or_default();
        let placements = optional(nvml_raw::possible_placements(nvml, d, info.id))?
            .unwrap_or_default()
            .into_iter()
            .map(|(start, size)| pb::MigPlacement { start, size })
            .collect();
        out.push(pb::MigProfile {
            index,
            id: info.id,
            name,
            slice_count: info.slice_count,
            memory_mb: info.memory_size_mb,
            instance_count: info.instance_count,
            placements,
        });
    }
    Ok(out)
}

/// Direct NVLink peers of each GPU, by UUID, from the remote PCI address of each link.
pub(super) fn nvlink_peers(nvml: &Nvml, gpus: &mut [pb::Gpu]) {
    let by_bus: Vec<(String, String)> = gpus
        .iter()
        .map(|g| (g.pci_bus_id.to_ascii_lowercase(), g.uuid.clone()))
        .collect();
    for gpu in gpus.iter_mut().filter(|g| g.unhealthy_reason.is_empty()) {
        let Ok(d) = nvml.device_by_uuid(gpu.uuid.as_str()) else {
            continue;
        };
        let mut peers: Vec<pb::NvLinkPeer> = Vec::new();
        for link in 0..NVML_NVLINK_MAX_LINKS {
            let wrapper = d.link_wrapper_for(link);
            if !matches!(wrapper.is_active(), Ok(true)) {
                continue;
            }
            let Ok(remote) = wrapper.remote_pci_info() else {
                continue;
            };
            let bus = remote.bus_id.to_ascii_lowercase();
            let Some((_, uuid)) = by_bus.iter().find(|(b, _)| *b == bus) else {
                continue; // an NVSwitch, counted in nvswitch_links
            };
            match peers.iter_mut().find(|p| &p.uuid == uuid) {
                Some(peer) => peer.links += 1,
                None => peers.push(pb::NvLinkPeer {
                    uuid: uuid.clone(),
                    links: 1,
                }),
            }
        }
        gpu.nvlink_peers = peers;
    }
}

/// How every GPU pair is connected, named as `nvidia-smi topo -m` does: NVLink first
/// (direct links, or both GPUs on NVSwitches: `NV<links>`), else the PCIe level.
pub(super) fn topology(nvml: &Nvml, gpus: &[pb::Gpu]) -> Vec<pb::GpuPairLink> {
    let mut out = Vec::new();
    for (i, a) in gpus.iter().enumerate() {
        for b in &gpus[i + 1..] {
            out.push(pb::GpuPairLink {
                gpu_a: a.index,
                gpu_b: b.index,
                level: pair_level(nvml, a, b),
            });
        }
    }
    out
}

fn pair_level(nvml: &Nvml, a: &pb::Gpu, b: &pb::Gpu) -> String {
    let direct = a.nvlink_peers.iter().find(|p| p.uuid == b.uuid);
    if let Some(peer) = direct {
        return format!("NV{}", peer.links);
    }
    if a.nvswitch_links > 0 && b.nvswitch_links > 0 {
        return format!("NV{}", a.nvswitch_links.min(b.nvswitch_links));
    }
    let level = nvml
        .device_by_uuid(a.uuid.as_str())
        .and_then(|da| {
            let db = nvml.device_by_uuid(b.uuid.as_str())?;
            da.topology_common_ancestor(db)
        })
        .ok();
    match level {
        Some(TopologyLevel::Internal) => "X",
        Some(TopologyLevel::Single) => "PIX",
        Some(TopologyLevel::Multiple) => "PXB",
        Some(TopologyLevel::HostBridge) => "PHB",
        Some(TopologyLevel::Node) => "NODE",
        Some(TopologyLevel::System) => "SYS",
        None => "UNKNOWN",
    }
    .to_string()
}
