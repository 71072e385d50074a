//! The NVML calls nvml-wrapper 0.13 does not wrap, or wraps wrongly, made through its raw
//! bindings (`Nvml::lib()` + `Device::handle()`). This is the agent's only `unsafe` NVML
//! code, kept in one file so it can be audited in one sitting:
//! - `possible_placements`: the wrapper's version never sets the Vec's length and always
//!   returns an empty list (see shared/reference/interfaces.md);
//! - `nvlink_remote_is_switch`: the wrapper's `NvLink::remote_device_type` passes NVML a
//!   pointer to a temporary and always returns `Unknown`;
//! - profile names (`nvmlDeviceGetGpuInstanceProfileInfoV`), GPU- and compute-instance
//!   create/destroy/list, and the GPU/compute-instance ids of MIG devices: not wrapped.
//!
//! Every function checks that the library exports its symbol before calling, because the
//! raw bindings `expect()` the symbol and would panic on a driver that lacks it.
//!
//! # Safety argument (one for the whole file)
//! Handles come from live `Device`s borrowed from a live `Nvml`, or from NVML in the same
//! call sequence; every out-pointer is a local of the right type; every buffer passed with
//! a count holds that many elements. NVML keeps no pointer to caller memory after a call.

use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as sys;

/// `NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2)` from nvml.h.
const GI_PROFILE_INFO_V2: u32 =
    (std::mem::size_of::<sys::nvmlGpuInstanceProfileInfo_v2_t>() as u32) | (2 << 24);
/// Most GPU instances of one profile, and MIG devices of one GPU (7 × 1g).
const INSTANCES_MAX: usize = 7;

/// Fails with `FunctionNotFound` when the loaded library lacks `$sym`.
macro_rules! require {
    ($nvml:expr, $sym:ident) => {
        if $nvml.lib().$sym.as_ref().is_err() {
            return Err(NvmlError::FunctionNotFound);
        }
    };
}

/// One GPU instance as NVML describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuInstanceInfo {
    /// GPU-instance id.
    pub id: u32,
    /// NVML profile id.
    pub profile_id: u32,
    /// Placement start, in memory slices.
    pub start: u32,
    /// Placement size, in memory slices.
    pub size: u32,
}

/// Every legal placement `(start, size)` of GPU-instance profile `profile_id`.
///
/// # Errors
/// NVML's: `NotSupported` with MIG mode off, `InvalidArg` for an unknown profile id.
pub fn possible_placements(
    nvml: &Nvml,
    device: &Device,
    profile_id: u32,
) -> Result<Vec<(u32, u32)>, NvmlError> {
    require!(nvml, nvmlDeviceGetGpuInstancePossiblePlacements_v2);
    let lib = nvml.lib();
    let mut count = 0u32;
    // SAFETY: see the module docs; a null buffer asks for the count only.
    unsafe {
        nvml_try(lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2(
            device.handle(),
            profile_id,
            std::ptr::null_mut(),
            &mut count,
        ))?;
    }
    let mut out = vec![sys::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
    // SAFETY: `out` holds `count` placements.
    unsafe {
        nvml_try(lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2(
            device.handle(),
            profile_id,
            out.as_mut_ptr(),
            &mut count,
        ))?;
    }
    out.truncate(count as usize);
    Ok(out.iter().map(|p| (p.start, p.size)).collect())
}

/// Whether NVLink `link` of `device` ends on an NVSwitch (rather than a GPU).
///
/// # Errors
/// NVML's: `NotSupported` without NVLink, `InvalidArg` past the last link.
pub fn nvlink_remote_is_switch(nvml: &Nvml, device: &Device, link: u32) -> Result<bool, NvmlError> {
    require!(nvml, nvmlDeviceGetNvLinkRemoteDeviceType);
    let mut kind: sys::nvmlIntNvLinkDeviceType_t = 0;
    // SAFETY: see the module docs.
    unsafe {
        nvml_try(
            nvml.lib()
                .nvmlDeviceGetNvLinkRemoteDeviceType(device.handle(), link, &mut kind),
        )?;
    }
    Ok(kind == sys::nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH)
}

/// The name of GPU-instance profile index `profile` without NVML's `MIG ` prefix, e.g.
/// `3g.40gb`.
///
/// # Errors
/// NVML's: `NotSupported` for a profile this card lacks.
pub fn profile_name(nvml: &Nvml, device: &Device, profile: u32) -> Result<String, NvmlError> {
    require!(nvml, nvmlDeviceGetGpuInstanceProfileInfoV);
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut info: sys::nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
    info.version = GI_PROFILE_INFO_V2;
    // SAFETY: see the module docs.
    unsafe {
        nvml_try(nvml.lib().nvmlDeviceGetGpuInstanceProfileInfoV(
            device.handle(),
            profile,
            &mut info,
        ))?;
    }
    let bytes: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let name = String::from_utf8_lossy(&bytes);
    Ok(name.trim_start_matches("MIG ").to_string())
}

/// Creates a GPU instance of `profile_id` at exactly `(start, size)` and one compute
/// instance spanning it (CI profile `ci_profile`, as `nvidia-smi mig -cgi X -C` does).
/// If the compute instance cannot be made, the GPU instance is destroyed again.
/// Returns the GPU-instance id and compute-instance id.
///
/// # Errors
/// NVML's: `NotSupported` with MIG mode off, `InvalidArg` for an illegal placement,
/// `UnexpectedVariant(23)` (INSUFFICIENT_RESOURCES) when it overlaps an instance.
pub fn create_slice(
    nvml: &Nvml,
    device: &Device,
    profile_id: u32,
    (start, size): (u32, u32),
    ci_profile: u32,
) -> Result<(u32, u32), NvmlError> {
    require!(nvml, nvmlDeviceCreateGpuInstanceWithPlacement);
    require!(nvml, nvmlGpuInstanceCreateComputeInstance);
    require!(nvml, nvmlGpuInstanceGetInfo);
    require!(nvml, nvmlComputeInstanceGetInfo_v2);
    require!(nvml, nvmlGpuInstanceDestroy);
    let lib = nvml.lib();
    let placement = sys::nvmlGpuInstancePlacement_t { start, size };
    let mut gi: sys::nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: see the module docs.
    unsafe {
        nvml_try(lib.nvmlDeviceCreateGpuInstanceWithPlacement(
            device.handle(),
            profile_id,
            &placement,
            &mut gi,
        ))?;
    }
    let mut ci: sys::nvmlComputeInstance_t = std::ptr::null_mut();
    // SAFETY: `gi` was just returned by NVML.
    let made =
        unsafe { nvml_try(lib.nvmlGpuInstanceCreateComputeInstance(gi, ci_profile, &mut ci)) };
    if let Err(e) = made {
        // SAFETY: `gi` is live and has no compute instance.
        let _ = unsafe { lib.nvmlGpuInstanceDestroy(gi) };
        return Err(e);
    }
    // SAFETY: all-zero is valid for these plain C structs; handles are live.
    unsafe {
        let mut gi_info: sys::nvmlGpuInstanceInfo_t = std::mem::zeroed();
        nvml_try(lib.nvmlGpuInstanceGetInfo(gi, &mut gi_info))?;
        let mut ci_info: sys::nvmlComputeInstanceInfo_t = std::mem::zeroed();
        nvml_try(lib.nvmlComputeInstanceGetInfo_v2(ci, &mut ci_info))?;
        Ok((gi_info.id, ci_info.id))
    }
}

/// Destroys GPU instance `gi_id` and every compute instance in it (compute instances
/// first, as NVML requires). `Ok` if there is no such instance: destroy is idempotent so
/// a retry after a crash cannot fail.
///
/// # Errors
/// NVML's, e.g. `InUse` while a process still runs on it.
pub fn destroy_slice(nvml: &Nvml, device: &Device, gi_id: u32) -> Result<(), NvmlError> {
    require!(nvml, nvmlDeviceGetGpuInstanceById);
    require!(nvml, nvmlGpuInstanceGetComputeInstances);
    require!(nvml, nvmlComputeInstanceDestroy);
    require!(nvml, nvmlGpuInstanceDestroy);
    let lib = nvml.lib();
    let mut gi: sys::nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: see the module docs.
    match unsafe { nvml_try(lib.nvmlDeviceGetGpuInstanceById(device.handle(), gi_id, &mut gi)) } {
        Err(NvmlError::NotFound) => return Ok(()),
        other => other?,
    }
    for ci_profile in 0..sys::NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        let mut cis = [std::ptr::null_mut(); 8];
        let mut count = 0u32;
        // SAFETY: 8 slots is more than any GPU instance's compute instances.
        let listed = unsafe {
            lib.nvmlGpuInstanceGetComputeInstances(gi, ci_profile, cis.as_mut_ptr(), &mut count)
        };
        if listed != sys::nvmlReturn_enum_NVML_SUCCESS {
            continue; // a profile this GPU instance cannot hold
        }
        for &ci in &cis[..(count as usize).min(cis.len())] {
            // SAFETY: a handle NVML just listed.
            unsafe { nvml_try(lib.nvmlComputeInstanceDestroy(ci))? };
        }
    }
    // SAFETY: `gi` is live and now has no compute instances.
    unsafe { nvml_try(lib.nvmlGpuInstanceDestroy(gi)) }
}

/// Every GPU instance on `device` of the given profile ids (for recovery after a restart).
///
/// # Errors
/// NVML's; `NotSupported` with MIG mode off.
pub fn gpu_instances(
    nvml: &Nvml,
    device: &Device,
    profile_ids: &[u32],
) -> Result<Vec<GpuInstanceInfo>, NvmlError> {
    require!(nvml, nvmlDeviceGetGpuInstances);
    require!(nvml, nvmlGpuInstanceGetInfo);
    let lib = nvml.lib();
    let mut out = Vec::new();
    for &profile_id in profile_ids {
        let mut gis = [std::ptr::null_mut(); INSTANCES_MAX];
        let mut count = 0u32;
        // SAFETY: INSTANCES_MAX is every profile's instanceCount or more.
        unsafe {
            nvml_try(lib.nvmlDeviceGetGpuInstances(
                device.handle(),
                profile_id,
                gis.as_mut_ptr(),
                &mut count,
            ))?;
        }
        for &gi in &gis[..(count as usize).min(INSTANCES_MAX)] {
            // SAFETY: all-zero is valid; `gi` was just listed.
            let mut info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: see the module docs.
            unsafe { nvml_try(lib.nvmlGpuInstanceGetInfo(gi, &mut info))? };
            out.push(GpuInstanceInfo {
                id: info.id,
                profile_id: info.profileId,
                start: info.placement.start,
                size: info.placement.size,
            });
        }
    }
    Ok(out)
}

/// The UUID (`MIG-…`) of the MIG device of compute instance `ci_id` in GPU instance
/// `gi_id`, `None` if there is no such MIG device.
///
/// # Errors
/// NVML's.
pub fn mig_device_uuid(
    nvml: &Nvml,
    device: &Device,
    gi_id: u32,
    ci_id: u32,
) -> Result<Option<String>, NvmlError> {
    require!(nvml, nvmlDeviceGetGpuInstanceId);
    require!(nvml, nvmlDeviceGetComputeInstanceId);
    let lib = nvml.lib();
    for index in 0..device.mig_device_count()? {
        let mig = match device.mig_device_by_index(index) {
            Ok(mig) => mig,
            Err(NvmlError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        let (mut gi, mut ci) = (0u32, 0u32);
        // SAFETY: see the module docs.
        unsafe {
            nvml_try(lib.nvmlDeviceGetGpuInstanceId(mig.handle(), &mut gi))?;
            nvml_try(lib.nvmlDeviceGetComputeInstanceId(mig.handle(), &mut ci))?;
        }
        if (gi, ci) == (gi_id, ci_id) {
            return mig.uuid().map(Some);
        }
    }
    Ok(None)
}
