//! MIG through NVML's C interface: mode, GPU-instance profiles and placements, GPU and
//! compute instances, and the MIG devices (one per compute instance) with their UUIDs.
//! The rules live in `crate::mig`; this file translates handles, structs and return codes
//! and persists every change (see `persist`). MIG mode is reported, never changed:
//! `nvmlDeviceSetMigMode` is deliberately not exported, so a caller that tries gets
//! nvml-wrapper's "function not found" instead of a toggled GPU.

#![allow(non_snake_case)] // NVML's exported names.

use std::ffi::c_uint;

use nvml_wrapper_sys::bindings::{
    nvmlComputeInstanceInfo_t, nvmlComputeInstancePlacement_t, nvmlComputeInstanceProfileInfo_t,
    nvmlComputeInstance_t, nvmlDevice_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t,
    nvmlGpuInstanceProfileInfo_t, nvmlGpuInstanceProfileInfo_v2_t, nvmlGpuInstance_t, nvmlReturn_t,
    NVML_GPU_INSTANCE_PROFILE_COUNT,
};

use super::codes::{
    ARGUMENT_VERSION_MISMATCH, GPU_IS_LOST, INSUFFICIENT_RESOURCES, INSUFFICIENT_SIZE,
    INVALID_ARGUMENT, IN_USE, NOT_FOUND, NOT_SUPPORTED, SUCCESS, UNKNOWN,
};
use super::{fill_c_array, guard, with_live_gpu, with_machine, write_value};
use crate::handle::{self, DeviceRef, MigRef};
use crate::mig::{ci_slices, GiProfile, MigError, MigSku, GPU_INSTANCES_MAX};
use crate::state::SimMachine;

/// `NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2)`.
const GI_PROFILE_INFO_V2_VERSION: u32 =
    (std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as u32) | (2 << 24);

fn code(e: Option<MigError>) -> nvmlReturn_t {
    match e {
        Some(MigError::InvalidArgument) => INVALID_ARGUMENT,
        Some(MigError::InsufficientResources) => INSUFFICIENT_RESOURCES,
        Some(MigError::InUse) => IN_USE,
        None => UNKNOWN,
    }
}

/// Runs `f` on a live, MIG-capable GPU with its card's table; `NOT_SUPPORTED` otherwise.
fn with_mig_gpu(
    device: nvmlDevice_t,
    f: impl FnOnce(&mut SimMachine, usize, MigSku) -> nvmlReturn_t,
) -> nvmlReturn_t {
    with_live_gpu(device, |machine, index| match machine.gpus[index].mig {
        Some(sku) => f(machine, index, sku),
        None => NOT_SUPPORTED,
    })
}

/// Like [`with_mig_gpu`], and MIG mode must be on.
fn with_mig_enabled(
    device: nvmlDevice_t,
    f: impl FnOnce(&mut SimMachine, usize, MigSku) -> nvmlReturn_t,
) -> nvmlReturn_t {
    with_mig_gpu(device, |machine, index, sku| {
        if machine.gpus[index].mig_enabled {
            f(machine, index, sku)
        } else {
            NOT_SUPPORTED
        }
    })
}

/// Runs `f` on an existing GPU instance named by `gi`.
fn with_gi(
    gi: nvmlGpuInstance_t,
    f: impl FnOnce(&mut SimMachine, usize, u32, MigSku) -> nvmlReturn_t,
) -> nvmlReturn_t {
    with_machine(|machine| {
        let Some((index, id)) = handle::resolve_gi(gi) else {
            return INVALID_ARGUMENT;
        };
        let Some(sku) = machine.gpus.get(index).and_then(|g| g.mig) else {
            return INVALID_ARGUMENT;
        };
        if machine.devices[index].lost {
            return GPU_IS_LOST;
        }
        if machine.devices[index].mig.gi(id).is_none() {
            return INVALID_ARGUMENT;
        }
        f(machine, index, id, sku)
    })
}

/// The compute instance `at`, if it exists now.
fn ci_exists(machine: &SimMachine, at: MigRef) -> bool {
    machine
        .devices
        .get(at.gpu)
        .and_then(|d| d.mig.gi(at.gi))
        .is_some_and(|gi| gi.compute_instances.iter().any(|ci| ci.id == at.ci))
}

/// The UUID of MIG device `at` if it exists: `MIG-` and a UUID derived from the parent's
/// UUID and the instance's place, so it is stable across restarts as real ones are.
pub(super) fn mig_uuid(machine: &SimMachine, at: MigRef) -> Option<String> {
    if !ci_exists(machine, at) {
        return None;
    }
    let gi = machine.devices[at.gpu].mig.gi(at.gi)?;
    let seed = format!(
        "{}/gi{}/ci{}/{}",
        machine.gpus[at.gpu].uuid, at.gi, at.ci, gi.start
    );
    let uuid = crate::uuid::derive_gpu_uuid(&seed, 0);
    Some(format!("MIG-{}", uuid.trim_start_matches("GPU-")))
}

/// Stores the MIG mode, current and pending (equal: nothing changes it here).
///
/// # Safety
/// `current` and `pending` must each be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_gpu(device, |machine, index, _| {
            if current.is_null() || pending.is_null() {
                return INVALID_ARGUMENT;
            }
            let mode = c_uint::from(machine.gpus[index].mig_enabled);
            // SAFETY: both non-null, writable by the caller's contract.
            unsafe {
                write_value(current, mode);
                write_value(pending, mode);
            }
            SUCCESS
        })
    })
}

/// The profile at index constant `profile`, or the code NVML gives: `INVALID_ARGUMENT`
/// past the last constant, `NOT_SUPPORTED` for a constant this card lacks.
fn profile_at(sku: MigSku, profile: c_uint) -> Result<&'static GiProfile, nvmlReturn_t> {
    if profile >= NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(INVALID_ARGUMENT);
    }
    sku.by_index(profile).ok_or(NOT_SUPPORTED)
}

fn profile_info(p: &GiProfile) -> nvmlGpuInstanceProfileInfo_t {
    nvmlGpuInstanceProfileInfo_t {
        id: p.id,
        isP2pSupported: 0,
        sliceCount: p.compute_slices,
        instanceCount: p.instances_max,
        multiprocessorCount: p.sms,
        copyEngineCount: p.compute_slices,
        decoderCount: if p.media { p.compute_slices.max(1) } else { 0 },
        encoderCount: 0,
        jpegCount: u32::from(p.media),
        ofaCount: u32::from(p.media),
        memorySizeMB: p.memory_mb,
    }
}

/// Stores the GPU-instance profile at index constant `profile`. Answers with MIG mode off
/// too, as the real H100 does.
///
/// # Safety
/// `info` must be null or valid for writing one `nvmlGpuInstanceProfileInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_gpu(device, |_, _, sku| match profile_at(sku, profile) {
            // SAFETY: forwarded caller contract.
            Ok(p) => unsafe { write_value(info, profile_info(p)) },
            Err(code) => code,
        })
    })
}

/// The v2 profile info, which adds the name (`MIG 3g.40gb`). The caller must set
/// `version` to `NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2)`.
///
/// # Safety
/// `info` must be null or valid for reading and writing one `nvmlGpuInstanceProfileInfo_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfoV(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_v2_t,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_gpu(device, |_, _, sku| {
            if info.is_null() {
                return INVALID_ARGUMENT;
            }
            // SAFETY: non-null and readable by the caller's contract.
            let version = unsafe { std::ptr::addr_of!((*info).version).read_unaligned() };
            if version != GI_PROFILE_INFO_V2_VERSION {
                return ARGUMENT_VERSION_MISMATCH;
            }
            let p = match profile_at(sku, profile) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let v1 = profile_info(p);
            let mut v2 = nvmlGpuInstanceProfileInfo_v2_t {
                version,
                id: v1.id,
                isP2pSupported: v1.isP2pSupported,
                sliceCount: v1.sliceCount,
                instanceCount: v1.instanceCount,
                multiprocessorCount: v1.multiprocessorCount,
                copyEngineCount: v1.copyEngineCount,
                decoderCount: v1.decoderCount,
                encoderCount: v1.encoderCount,
                jpegCount: v1.jpegCount,
                ofaCount: v1.ofaCount,
                memorySizeMB: v1.memorySizeMB,
                name: [0; 96],
            };
            fill_c_array(&mut v2.name, &format!("MIG {}", p.name));
            // SAFETY: forwarded caller contract.
            unsafe { write_value(info, v2) }
        })
    })
}

/// Every legal placement of profile `profile_id` (free or not, as NVML lists them). With
/// `placements` null, only the count is stored. Needs MIG mode on.
///
/// # Safety
/// `count` must be null or valid for reading and writing one `unsigned int`; `placements`
/// null or valid for writing `*count` placements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placements: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_enabled(device, |_, _, sku| {
            let Some(p) = sku.by_id(profile_id) else {
                return INVALID_ARGUMENT;
            };
            if count.is_null() {
                return INVALID_ARGUMENT;
            }
            let n = p.starts.len() as c_uint;
            if placements.is_null() {
                // SAFETY: non-null, writable by the caller's contract.
                return unsafe { write_value(count, n) };
            }
            // SAFETY: non-null, readable by the caller's contract.
            let room = unsafe { count.read_unaligned() };
            // SAFETY: writable by the caller's contract.
            unsafe { count.write_unaligned(n) };
            if room < n {
                return INSUFFICIENT_SIZE;
            }
            for (i, start) in p.starts.iter().enumerate() {
                let value = nvmlGpuInstancePlacement_t {
                    start: *start,
                    size: p.memory_slices,
                };
                // SAFETY: i < n <= room placements are writable by the caller's contract.
                unsafe { placements.add(i).write_unaligned(value) };
            }
            SUCCESS
        })
    })
}

/// Creates a GPU instance of `profile_id` at exactly `placement`: `INVALID_ARGUMENT` for
/// a placement the profile cannot take, `INSUFFICIENT_RESOURCES` if it overlaps an
/// instance or the profile's limit is reached, `NOT_SUPPORTED` with MIG mode off.
///
/// # Safety
/// `placement` must be null or valid for reading one placement; `gi` null or valid for
/// writing one `nvmlGpuInstance_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    gi: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_enabled(device, |machine, index, sku| {
            if placement.is_null() || gi.is_null() {
                return INVALID_ARGUMENT;
            }
            // SAFETY: non-null, readable by the caller's contract.
            let at = unsafe { placement.read_unaligned() };
            let created = machine.mutate(index, |state, _| {
                state.mig.create_gi(sku, profile_id, at.start, at.size)
            });
            match created.map(|id| handle::gi_handle(index, id)) {
                // SAFETY: forwarded caller contract.
                Ok(Some(found)) => unsafe { write_value(gi, found) },
                Ok(None) => UNKNOWN,
                Err(e) => code(e),
            }
        })
    })
}

/// Stores the GPU instances of `profile_id` at `gis` and their number at `count`; the
/// buffer must hold the profile's `instanceCount`, as NVML requires.
///
/// # Safety
/// `gis` must be null or valid for writing `instanceCount` handles; `count` null or valid
/// for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profile_id: c_uint,
    gis: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_enabled(device, |machine, index, sku| {
            if sku.by_id(profile_id).is_none() || gis.is_null() || count.is_null() {
                return INVALID_ARGUMENT;
            }
            let found: Vec<nvmlGpuInstance_t> = machine.devices[index]
                .mig
                .gpu_instances
                .iter()
                .filter(|gi| gi.profile_id == profile_id)
                .filter_map(|gi| handle::gi_handle(index, gi.id))
                .collect();
            for (i, h) in found.iter().enumerate() {
                // SAFETY: at most instanceCount handles, writable by the caller's contract.
                unsafe { gis.add(i).write_unaligned(*h) };
            }
            // SAFETY: forwarded caller contract.
            unsafe { write_value(count, found.len() as c_uint) }
        })
    })
}

/// Stores the handle of GPU instance `id`; `NOT_FOUND` if there is none.
///
/// # Safety
/// `gi` must be null or valid for writing one `nvmlGpuInstance_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    gi: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_enabled(device, |machine, index, _| {
            if id as usize > GPU_INSTANCES_MAX || machine.devices[index].mig.gi(id).is_none() {
                return NOT_FOUND;
            }
            match handle::gi_handle(index, id) {
                // SAFETY: forwarded caller contract.
                Some(found) => unsafe { write_value(gi, found) },
                None => NOT_FOUND,
            }
        })
    })
}

/// Stores the GPU instance's parent device, id, profile id and placement.
///
/// # Safety
/// `info` must be null or valid for writing one `nvmlGpuInstanceInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    gi: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        with_gi(gi, |machine, index, id, _| {
            let (Some(found), Some(device)) =
                (machine.devices[index].mig.gi(id), handle::gpu_handle(index))
            else {
                return UNKNOWN;
            };
            let value = nvmlGpuInstanceInfo_t {
                device,
                id,
                profileId: found.profile_id,
                placement: nvmlGpuInstancePlacement_t {
                    start: found.start,
                    size: found.size,
                },
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(info, value) }
        })
    })
}

/// Destroys the GPU instance; `IN_USE` while it has compute instances.
///
/// # Safety
/// None beyond passing a handle from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceDestroy(gi: nvmlGpuInstance_t) -> nvmlReturn_t {
    guard(|| {
        with_gi(gi, |machine, index, id, _| {
            match machine.mutate(index, |state, _| state.mig.destroy_gi(id)) {
                Ok(()) => SUCCESS,
                Err(e) => code(e),
            }
        })
    })
}

/// Stores compute-instance profile `profile` of this GPU instance (engine profile 0,
/// shared, only); `NOT_SUPPORTED` for profiles larger than the instance.
///
/// # Safety
/// `info` must be null or valid for writing one `nvmlComputeInstanceProfileInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gi: nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        with_gi(gi, |machine, index, id, sku| {
            let Some(p) = machine.devices[index]
                .mig
                .gi(id)
                .and_then(|gi| sku.by_id(gi.profile_id))
            else {
                return UNKNOWN;
            };
            let slices = match ci_slices(profile) {
                Some(s) if s <= p.compute_slices && eng_profile == 0 => s,
                _ => return NOT_SUPPORTED,
            };
            let value = nvmlComputeInstanceProfileInfo_t {
                id: profile,
                sliceCount: slices,
                instanceCount: p.compute_slices / slices,
                multiprocessorCount: p.sms * slices / p.compute_slices,
                sharedCopyEngineCount: p.compute_slices,
                sharedDecoderCount: if p.media { 1 } else { 0 },
                sharedEncoderCount: 0,
                sharedJpegCount: u32::from(p.media),
                sharedOfaCount: u32::from(p.media),
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(info, value) }
        })
    })
}

/// Creates a compute instance of CI profile `profile_id` in the GPU instance.
///
/// # Safety
/// `ci` must be null or valid for writing one `nvmlComputeInstance_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gi: nvmlGpuInstance_t,
    profile_id: c_uint,
    ci: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    guard(|| {
        with_gi(gi, |machine, index, id, sku| {
            if ci.is_null() {
                return INVALID_ARGUMENT;
            }
            let created =
                machine.mutate(index, |state, _| state.mig.create_ci(sku, id, profile_id));
            let at = |ci| MigRef {
                gpu: index,
                gi: id,
                ci,
            };
            match created.map(|c| handle::ci_handle(at(c))) {
                // SAFETY: forwarded caller contract.
                Ok(Some(found)) => unsafe { write_value(ci, found) },
                Ok(None) => UNKNOWN,
                Err(e) => code(e),
            }
        })
    })
}

/// Stores the compute instances of `profile_id` in the GPU instance and their number.
///
/// # Safety
/// `cis` must be null or valid for writing the profile's `instanceCount` handles; `count`
/// null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gi: nvmlGpuInstance_t,
    profile_id: c_uint,
    cis: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_gi(gi, |machine, index, id, _| {
            if cis.is_null() || count.is_null() || ci_slices(profile_id).is_none() {
                return INVALID_ARGUMENT;
            }
            let found: Vec<nvmlComputeInstance_t> = machine.devices[index]
                .mig
                .gi(id)
                .map(|gi| gi.compute_instances.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|ci| ci.profile_id == profile_id)
                .filter_map(|ci| {
                    handle::ci_handle(MigRef {
                        gpu: index,
                        gi: id,
                        ci: ci.id,
                    })
                })
                .collect();
            for (i, h) in found.iter().enumerate() {
                // SAFETY: at most instanceCount handles, writable by the caller's contract.
                unsafe { cis.add(i).write_unaligned(*h) };
            }
            // SAFETY: forwarded caller contract.
            unsafe { write_value(count, found.len() as c_uint) }
        })
    })
}

/// Runs `f` on an existing compute instance named by `ci`.
fn with_ci(
    ci: nvmlComputeInstance_t,
    f: impl FnOnce(&mut SimMachine, MigRef) -> nvmlReturn_t,
) -> nvmlReturn_t {
    with_machine(|machine| match handle::resolve_ci(ci) {
        Some(at) if at.gpu < machine.gpus.len() && machine.devices[at.gpu].lost => GPU_IS_LOST,
        Some(at) if ci_exists(machine, at) => f(machine, at),
        _ => INVALID_ARGUMENT,
    })
}

/// Stores the compute instance's parents, id, profile and placement (in compute slices,
/// after the instances with lower ids).
///
/// # Safety
/// `info` must be null or valid for writing one `nvmlComputeInstanceInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    ci: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        with_ci(ci, |machine, at| {
            let Some(gi) = machine.devices[at.gpu].mig.gi(at.gi) else {
                return UNKNOWN;
            };
            let before: u32 = gi
                .compute_instances
                .iter()
                .filter(|c| c.id < at.ci)
                .map(|c| c.slices)
                .sum();
            let Some(this) = gi.compute_instances.iter().find(|c| c.id == at.ci) else {
                return UNKNOWN;
            };
            let (Some(device), Some(gpu_instance)) =
                (handle::gpu_handle(at.gpu), handle::gi_handle(at.gpu, at.gi))
            else {
                return UNKNOWN;
            };
            let value = nvmlComputeInstanceInfo_t {
                device,
                gpuInstance: gpu_instance,
                id: at.ci,
                profileId: this.profile_id,
                placement: nvmlComputeInstancePlacement_t {
                    start: before,
                    size: this.slices,
                },
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(info, value) }
        })
    })
}

/// Destroys the compute instance (and with it its MIG device).
///
/// # Safety
/// None beyond passing a handle from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlComputeInstanceDestroy(ci: nvmlComputeInstance_t) -> nvmlReturn_t {
    guard(|| {
        with_ci(ci, |machine, at| {
            match machine.mutate(at.gpu, |state, _| state.mig.destroy_ci(at.gi, at.ci)) {
                Ok(()) => SUCCESS,
                Err(e) => code(e),
            }
        })
    })
}

/// Stores how many MIG devices the GPU can have: 7 with MIG mode on, else 0.
///
/// # Safety
/// `count` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            let gpu = &machine.gpus[index];
            let max = if gpu.mig.is_some() && gpu.mig_enabled {
                GPU_INSTANCES_MAX as c_uint
            } else {
                0
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(count, max) }
        })
    })
}

/// Stores the handle of the `index`-th MIG device (compute instances in GPU-instance,
/// then compute-instance id order); `NOT_FOUND` past the last one.
///
/// # Safety
/// `mig` must be null or valid for writing one `nvmlDevice_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_enabled(device, |machine, gpu, _| {
            if index as usize >= GPU_INSTANCES_MAX {
                return INVALID_ARGUMENT;
            }
            let devices = machine.devices[gpu].mig.mig_devices();
            let Some((gi, ci)) = devices.get(index as usize) else {
                return NOT_FOUND;
            };
            let at = MigRef {
                gpu,
                gi: gi.id,
                ci: ci.id,
            };
            match handle::mig_handle(at) {
                // SAFETY: forwarded caller contract.
                Some(found) => unsafe { write_value(mig, found) },
                None => UNKNOWN,
            }
        })
    })
}

/// Runs `f` on the MIG device `device` names, if it exists now.
fn with_mig_device(
    device: nvmlDevice_t,
    f: impl FnOnce(&SimMachine, MigRef) -> nvmlReturn_t,
) -> nvmlReturn_t {
    with_machine(|machine| match handle::resolve(device) {
        Some(DeviceRef::Mig(at)) if ci_exists(machine, at) => f(machine, at),
        _ => INVALID_ARGUMENT,
    })
}

/// Stores 1 for a MIG device handle, 0 for a physical GPU's.
///
/// # Safety
/// `is_mig` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    is_mig: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            let value = match handle::resolve(device) {
                Some(DeviceRef::Gpu(i)) if i < machine.gpus.len() => 0,
                Some(DeviceRef::Mig(at)) if ci_exists(machine, at) => 1,
                _ => return INVALID_ARGUMENT,
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(is_mig, value) }
        })
    })
}

/// Stores the physical GPU a MIG device belongs to.
///
/// # Safety
/// `parent` must be null or valid for writing one `nvmlDevice_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig: nvmlDevice_t,
    parent: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        with_mig_device(mig, |_, at| match handle::gpu_handle(at.gpu) {
            // SAFETY: forwarded caller contract.
            Some(found) => unsafe { write_value(parent, found) },
            None => UNKNOWN,
        })
    })
}

/// Stores the GPU-instance id of a MIG device.
///
/// # Safety
/// `id` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_mig_device(device, |_, at| unsafe { write_value(id, at.gi) }))
}

/// Stores the compute-instance id of a MIG device.
///
/// # Safety
/// `id` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_mig_device(device, |_, at| unsafe { write_value(id, at.ci) }))
}
