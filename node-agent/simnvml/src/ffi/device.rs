//! Device enumeration (count, handle by index / UUID / PCI bus id) and the per-device
//! queries the agent's inventory reads: index, name, UUID, memory, PCI info, minor number
//! and compute capability. Handles are validated on every call (see `handle`).

#![allow(non_snake_case)] // NVML's exported names.

use std::ffi::{c_char, c_int, c_uint, CStr};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlMemory_t, nvmlMemory_v2_t, nvmlPciInfo_t, nvmlReturn_t,
};

use super::codes::{ARGUMENT_VERSION_MISMATCH, INVALID_ARGUMENT, NOT_FOUND, SUCCESS, UNKNOWN};
use super::{
    fill_c_array, guard, with_gpu, with_live_gpu, with_machine, write_c_string, write_value,
};
use crate::handle::{self, DeviceRef};
use crate::pci::PciAddress;
use crate::state::SimMachine;

/// `NVML_STRUCT_VERSION(Memory, 2)` from nvml.h: the size in the low bits, 2 in the top
/// byte. Callers set it; a different value means they were built against another layout.
const MEMORY_V2_VERSION: u32 = (std::mem::size_of::<nvmlMemory_v2_t>() as u32) | (2 << 24);

/// Stores the number of GPUs in the description at `count`.
///
/// # Safety
/// `count` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            let gpus = machine.gpus.len() as c_uint; // at most MAX_GPUS
                                                     // SAFETY: forwarded caller contract.
            unsafe { write_value(count, gpus) }
        })
    })
}

/// The pre-v2 name; identical here (no inaccessible devices to hide).
///
/// # Safety
/// As `nvmlDeviceGetCount_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: same contract.
    unsafe { nvmlDeviceGetCount_v2(count) }
}

/// Stores the handle of GPU `index` at `device`; `NVML_ERROR_INVALID_ARGUMENT` if there
/// is no such GPU.
///
/// # Safety
/// `device` must be null or valid for writing one `nvmlDevice_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            let Ok(index) = usize::try_from(index) else {
                return INVALID_ARGUMENT;
            };
            if index >= machine.gpus.len() {
                return INVALID_ARGUMENT;
            }
            let Some(found) = handle::gpu_handle(index) else {
                return INVALID_ARGUMENT;
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(device, found) }
        })
    })
}

/// The pre-v2 name; identical here.
///
/// # Safety
/// As `nvmlDeviceGetHandleByIndex_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    // SAFETY: same contract.
    unsafe { nvmlDeviceGetHandleByIndex_v2(index, device) }
}

/// Stores the handle of the GPU whose UUID is exactly `uuid`; `NVML_ERROR_NOT_FOUND` if
/// none, `NVML_ERROR_INVALID_ARGUMENT` for a null pointer or text that is not UTF-8.
///
/// # Safety
/// `uuid` must be null or a NUL-terminated string; `device` null or valid for writing one
/// `nvmlDevice_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            // SAFETY: forwarded caller contract.
            let Some(uuid) = (unsafe { read_c_str(uuid) }) else {
                return INVALID_ARGUMENT;
            };
            let found = machine.gpus.iter().position(|gpu| gpu.uuid == uuid);
            // SAFETY: forwarded caller contract.
            unsafe { write_found(machine, found, device) }
        })
    })
}

/// Stores the handle of the GPU at PCI address `bus_id`, in any of the forms
/// `PciAddress::parse` accepts; `NVML_ERROR_NOT_FOUND` if none, `INVALID_ARGUMENT` if the
/// text is not a bus id.
///
/// # Safety
/// `bus_id` must be null or a NUL-terminated string; `device` null or valid for writing
/// one `nvmlDevice_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            // SAFETY: forwarded caller contract.
            let text = unsafe { read_c_str(bus_id) };
            let Some(Ok(address)) = text.map(PciAddress::parse) else {
                return INVALID_ARGUMENT;
            };
            let found = machine.gpus.iter().position(|gpu| gpu.pci == address);
            // SAFETY: forwarded caller contract.
            unsafe { write_found(machine, found, device) }
        })
    })
}

/// The text at `text`, or `None` if it is null or not UTF-8.
///
/// # Safety
/// `text` must be null or a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn read_c_str<'a>(text: *const c_char) -> Option<&'a str> {
    if text.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(text) }.to_str().ok()
}

/// Writes the handle of GPU `found`, or answers `NVML_ERROR_NOT_FOUND`.
///
/// # Safety
/// `device` must be null or valid for writing one `nvmlDevice_t`.
unsafe fn write_found(
    machine: &SimMachine,
    found: Option<usize>,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    if device.is_null() {
        return INVALID_ARGUMENT;
    }
    match found
        .filter(|&i| i < machine.gpus.len())
        .and_then(handle::gpu_handle)
    {
        // SAFETY: forwarded caller contract.
        Some(found) => unsafe { write_value(device, found) },
        None => NOT_FOUND,
    }
}

/// Stores the NVML index of `device` at `index`.
///
/// # Safety
/// `index` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(device, |gpu| {
            // SAFETY: forwarded caller contract.
            unsafe { write_value(index, gpu.index) }
        })
    })
}

/// Copies the GPU's name into `name` (`length` bytes).
///
/// # Safety
/// `name` must be null or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(device, |gpu| {
            // SAFETY: forwarded caller contract.
            unsafe { write_c_string(name, length, &gpu.name) }
        })
    })
}

/// Copies the GPU's UUID into `uuid` (`length` bytes).
///
/// # Safety
/// `uuid` must be null or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            let text = match handle::resolve(device) {
                Some(DeviceRef::Gpu(index)) => machine.gpus.get(index).map(|g| g.uuid.clone()),
                Some(DeviceRef::Mig(at)) => super::mig::mig_uuid(machine, at),
                None => None,
            };
            let Some(text) = text else {
                return INVALID_ARGUMENT;
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_c_string(uuid, length, &text) }
        })
    })
}

/// (total, used) framebuffer bytes of GPU `index`: used from `telemetry.json`, capped at
/// the total; `None` if that file is malformed.
fn memory_use(machine: &SimMachine, index: usize) -> Option<(u64, u64)> {
    let total = machine.gpus[index].memory_bytes;
    match crate::events::telemetry(machine.dir.as_deref(), index) {
        Ok(t) => Some((total, (t.memory_used_mb.unwrap_or(0) << 20).min(total))),
        Err(e) => {
            super::log(&e);
            None
        }
    }
}

/// Stores total, free and used framebuffer bytes (v1 layout); used comes from
/// `telemetry.json` (see `events`), else 0.
///
/// # Safety
/// `memory` must be null or valid for writing one `nvmlMemory_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            let Some((total, used)) = memory_use(machine, index) else {
                return UNKNOWN;
            };
            let info = nvmlMemory_t {
                total,
                free: total - used,
                used,
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(memory, info) }
        })
    })
}

/// Stores total, reserved, free and used framebuffer bytes (v2 layout, which nvml-wrapper
/// 0.13 calls). The caller must set `version` to `NVML_STRUCT_VERSION(Memory, 2)`, else
/// `NVML_ERROR_ARGUMENT_VERSION_MISMATCH` and nothing is written.
///
/// # Safety
/// `memory` must be null or valid for reading and writing one `nvmlMemory_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            if memory.is_null() {
                return INVALID_ARGUMENT;
            }
            // SAFETY: non-null and readable by the caller's contract.
            let version = unsafe { std::ptr::addr_of!((*memory).version).read_unaligned() };
            if version != MEMORY_V2_VERSION {
                return ARGUMENT_VERSION_MISMATCH;
            }
            let Some((total, used)) = memory_use(machine, index) else {
                return UNKNOWN;
            };
            let info = nvmlMemory_v2_t {
                version,
                total,
                reserved: 0,
                free: total - used,
                used,
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(memory, info) }
        })
    })
}

/// Stores the GPU's PCI address and ids. `pciSubSystemId` is 0: descriptions do not
/// carry it, and the agent identifies GPUs by UUID and bus id.
///
/// # Safety
/// `pci` must be null or valid for writing one `nvmlPciInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(device, |gpu| {
            let mut info = nvmlPciInfo_t {
                busIdLegacy: [0; 16],
                domain: gpu.pci.domain,
                bus: gpu.pci.bus.into(),
                device: gpu.pci.device.into(),
                pciDeviceId: gpu.pci_device_id,
                pciSubSystemId: 0,
                busId: [0; 32],
            };
            fill_c_array(&mut info.busIdLegacy, &gpu.pci.bus_id_legacy());
            fill_c_array(&mut info.busId, &gpu.pci.bus_id());
            // SAFETY: forwarded caller contract.
            unsafe { write_value(pci, info) }
        })
    })
}

/// Stores N of the GPU's `/dev/nvidiaN`.
///
/// # Safety
/// `minor_number` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: nvmlDevice_t,
    minor_number: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(device, |gpu| {
            // SAFETY: forwarded caller contract.
            unsafe { write_value(minor_number, gpu.minor_number) }
        })
    })
}

/// Stores the CUDA compute capability; writes neither if either pointer is null.
///
/// # Safety
/// `major` and `minor` must each be null or valid for writing one `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    guard(|| {
        with_gpu(device, |gpu| {
            if major.is_null() || minor.is_null() {
                return INVALID_ARGUMENT;
            }
            let (major_value, minor_value) = gpu.compute_capability;
            // SAFETY: both non-null and writable by the caller's contract.
            unsafe {
                write_value(major, major_value);
                write_value(minor, minor_value);
            }
            SUCCESS
        })
    })
}
