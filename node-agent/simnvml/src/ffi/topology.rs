//! Where each GPU sits: its NUMA node and the CPUs near it, its NVLinks (state, remote PCI
//! address, remote device type) and the PCIe common ancestor of two GPUs. All derived from
//! the description (see `machine`): `numa_node`, `pcie_switch` and `nvlinks`.

#![allow(non_snake_case)] // NVML's exported names.

use std::ffi::{c_uint, c_ulong};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlEnableState_t, nvmlGpuTopologyLevel_t, nvmlIntNvLinkDeviceType_t,
    nvmlPciInfo_t, nvmlReturn_t,
};

use super::codes::{INVALID_ARGUMENT, NOT_SUPPORTED, SUCCESS};
use super::{fill_c_array, guard, with_live_gpu, write_value};
use crate::handle::{self, DeviceRef};
use crate::machine::{ResolvedGpu, NVLINKS_MAX};
use crate::pci::PciAddress;
use crate::state::SimMachine;

/// `nvmlGpuTopologyLevel_t` values.
const TOPOLOGY_INTERNAL: u32 = 0;
const TOPOLOGY_SINGLE: u32 = 10;
const TOPOLOGY_NODE: u32 = 40;
const TOPOLOGY_SYSTEM: u32 = 50;
/// `nvmlIntNvLinkDeviceType_t` values.
const NVLINK_DEVICE_GPU: u32 = 0;
const NVLINK_DEVICE_SWITCH: u32 = 2;
/// NVSwitches the links of a GPU spread over, round-robin by link index (a DGX H100 has 4).
const NVSWITCHES: u32 = 4;

/// Stores the GPU's NUMA node.
///
/// # Safety
/// `node` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNumaNodeId(
    device: nvmlDevice_t,
    node: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            // SAFETY: forwarded caller contract.
            unsafe { write_value(node, machine.gpus[index].numa_node) }
        })
    })
}

/// Writes the mask of CPUs on the GPU's NUMA node into `cpu_set` (`size` words, CPU n is
/// bit n % 64 of word n / 64). CPUs are split evenly over NUMA nodes, in order.
///
/// # Safety
/// `cpu_set` must be null or valid for writing `size` `unsigned long`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCpuAffinity(
    device: nvmlDevice_t,
    size: c_uint,
    cpu_set: *mut c_ulong,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            if cpu_set.is_null() || size == 0 {
                return INVALID_ARGUMENT;
            }
            let (first, end) = cpu_range(machine, index);
            let bits = c_ulong::BITS;
            for word in 0..size {
                let mut mask: c_ulong = 0;
                for bit in 0..bits {
                    let cpu = word * bits + bit;
                    if (first..end).contains(&cpu) {
                        mask |= 1 << bit;
                    }
                }
                // SAFETY: word < size, writable by the caller's contract.
                unsafe { cpu_set.add(word as usize).write_unaligned(mask) };
            }
            SUCCESS
        })
    })
}

/// CPUs `[first, end)` of GPU `index`'s NUMA node.
fn cpu_range(machine: &SimMachine, index: usize) -> (u32, u32) {
    let nodes = machine.description.numa_nodes();
    let per_node = machine.description.cpus / nodes;
    let node = machine.gpus[index].numa_node;
    (node * per_node, (node + 1) * per_node)
}

/// The link's remote end, or the NVML code for a bad link or a GPU without NVLink.
fn link(gpu: &ResolvedGpu, link: c_uint) -> Result<Option<u32>, nvmlReturn_t> {
    if gpu.links.is_empty() {
        return Err(NOT_SUPPORTED);
    }
    if link >= NVLINKS_MAX {
        return Err(INVALID_ARGUMENT);
    }
    gpu.links.get(link as usize).copied().ok_or(NOT_SUPPORTED)
}

/// Stores whether NVLink `link` is active: every described link is.
///
/// # Safety
/// `is_active` must be null or valid for writing one `nvmlEnableState_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: nvmlDevice_t,
    link_index: c_uint,
    is_active: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            match link(&machine.gpus[index], link_index) {
                // SAFETY: forwarded caller contract.
                Ok(_) => unsafe { write_value(is_active, 1) },
                Err(code) => code,
            }
        })
    })
}

/// Stores the PCI info of the link's remote end: the peer GPU's, or a simulated
/// NVSwitch's in PCI domain 1 (so it can never equal a GPU's address).
///
/// # Safety
/// `pci` must be null or valid for writing one `nvmlPciInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemotePciInfo_v2(
    device: nvmlDevice_t,
    link_index: c_uint,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            let (address, device_id) = match link(&machine.gpus[index], link_index) {
                Ok(Some(peer)) => {
                    let peer = &machine.gpus[peer as usize];
                    (peer.pci, peer.pci_device_id)
                }
                Ok(None) => (switch_address(link_index), 0x22A3_10DE),
                Err(code) => return code,
            };
            let mut info = nvmlPciInfo_t {
                busIdLegacy: [0; 16],
                domain: address.domain,
                bus: address.bus.into(),
                device: address.device.into(),
                pciDeviceId: device_id,
                pciSubSystemId: 0,
                busId: [0; 32],
            };
            fill_c_array(&mut info.busIdLegacy, &address.bus_id_legacy());
            fill_c_array(&mut info.busId, &address.bus_id());
            // SAFETY: forwarded caller contract.
            unsafe { write_value(pci, info) }
        })
    })
}

fn switch_address(link_index: c_uint) -> PciAddress {
    let text = format!("00000001:{:02x}:00.0", link_index % NVSWITCHES);
    // A fixed, well-formed pattern: parsing cannot fail.
    PciAddress::parse(&text).expect("switch bus id is well formed")
}

/// Stores whether the link goes to a GPU or an NVSwitch.
///
/// # Safety
/// `kind` must be null or valid for writing one `nvmlIntNvLinkDeviceType_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemoteDeviceType(
    device: nvmlDevice_t,
    link_index: c_uint,
    kind: *mut nvmlIntNvLinkDeviceType_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            let value = match link(&machine.gpus[index], link_index) {
                Ok(Some(_)) => NVLINK_DEVICE_GPU,
                Ok(None) => NVLINK_DEVICE_SWITCH,
                Err(code) => return code,
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(kind, value) }
        })
    })
}

/// Stores the PCIe path between two GPUs: INTERNAL for the same GPU, SINGLE behind one
/// PCIe switch, NODE on one NUMA node, SYSTEM across NUMA nodes (NVLink is not PCIe, so it
/// never shows here, as on real NVML).
///
/// # Safety
/// `level` must be null or valid for writing one `nvmlGpuTopologyLevel_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
    device1: nvmlDevice_t,
    device2: nvmlDevice_t,
    level: *mut nvmlGpuTopologyLevel_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device1, |machine, a| {
            let b = match handle::resolve(device2) {
                Some(DeviceRef::Gpu(b)) if b < machine.gpus.len() => b,
                _ => return INVALID_ARGUMENT,
            };
            let (ga, gb) = (&machine.gpus[a], &machine.gpus[b]);
            let value = if a == b {
                TOPOLOGY_INTERNAL
            } else if ga.pcie_switch == gb.pcie_switch {
                TOPOLOGY_SINGLE
            } else if ga.numa_node == gb.numa_node {
                TOPOLOGY_NODE
            } else {
                TOPOLOGY_SYSTEM
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(level, value) }
        })
    })
}
