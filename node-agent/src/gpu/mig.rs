//! Carving and finding MIG slices with NVML. A slice is named by (GPU, profile name,
//! placement); the profile id is looked up on that very GPU, because the same name is a
//! different id on different cards. MIG mode is read, never changed: a slice on a GPU
//! with MIG off is refused with a message saying so.

use super::{GpuError, MigDevice, NvmlBackend};
use crate::nvml_raw;
use berth_proto::v1 as pb;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings::NVML_GPU_INSTANCE_PROFILE_COUNT;

/// NVML's INSUFFICIENT_RESOURCES, which nvml-wrapper 0.13 has no variant for.
const INSUFFICIENT_RESOURCES: u32 = 23;

/// Compute-instance profile index spanning a GPU instance of `slices` compute slices
/// (`NVML_COMPUTE_INSTANCE_PROFILE_<N>_SLICE`).
fn full_ci_profile(slices: u32) -> Option<u32> {
    match slices {
        1 => Some(0),
        2 => Some(1),
        3 => Some(2),
        4 => Some(3),
        7 => Some(4),
        8 => Some(5),
        6 => Some(6),
        _ => None,
    }
}

/// (profile id, compute slices) of the profile called `name` on `d`.
fn profile_by_name(
    b: &NvmlBackend,
    d: &Device<'_>,
    name: &str,
) -> Result<Option<(u32, u32)>, NvmlError> {
    for index in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
        let info = match d.profile_info(index) {
            Ok(info) => info,
            Err(NvmlError::NotSupported) => continue,
            Err(NvmlError::InvalidArg) => break,
            Err(e) => return Err(e),
        };
        if nvml_raw::profile_name(&b.nvml, d, index)? == name {
            return Ok(Some((info.id, info.slice_count)));
        }
    }
    Ok(None)
}

pub(super) fn create(b: &NvmlBackend, slice: &pb::MigSlice) -> Result<MigDevice, GpuError> {
    let gpu = &slice.gpu_uuid;
    let refuse = |why: String| GpuError::Mig(format!("GPU {gpu}: {why}"));
    let d = b.device_by_uuid(gpu)?;
    match d.mig_mode() {
        Ok(mode) if mode.current == 1 => {}
        Ok(_) => {
            return Err(refuse(
                "MIG mode is off (berth never changes MIG mode)".into(),
            ))
        }
        Err(NvmlError::NotSupported) => return Err(refuse("not MIG capable".into())),
        Err(e) => return Err(b.err(e)),
    }
    let (profile_id, slices) = profile_by_name(b, &d, &slice.profile)
        .map_err(|e| b.err(e))?
        .ok_or_else(|| refuse(format!("no MIG profile {:?} on this card", slice.profile)))?;
    let ci_profile = full_ci_profile(slices)
        .ok_or_else(|| refuse(format!("no compute profile for {slices} slices")))?;
    let placement = (slice.placement_start, slice.placement_size);
    let (gi_id, ci_id) = nvml_raw::create_slice(&b.nvml, &d, profile_id, placement, ci_profile)
        .map_err(|e| match e {
            NvmlError::InvalidArg => refuse(format!(
                "placement {}:{} is not legal for {}",
                placement.0, placement.1, slice.profile
            )),
            NvmlError::UnexpectedVariant(INSUFFICIENT_RESOURCES) => refuse(format!(
                "placement {}:{} is busy (overlaps a MIG instance) or {} is at its limit",
                placement.0, placement.1, slice.profile
            )),
            e => b.err(e),
        })?;
    let uuid = nvml_raw::mig_device_uuid(&b.nvml, &d, gi_id, ci_id)
        .map_err(|e| b.err(e))?
        .ok_or_else(|| refuse(format!("MIG device of instance {gi_id}/{ci_id} not found")))?;
    Ok(MigDevice {
        gpu_uuid: gpu.clone(),
        gi_id,
        ci_id,
        uuid,
        start: placement.0,
        size: placement.1,
    })
}

/// Every MIG device (one per compute instance) on every GPU with MIG mode on.
pub(super) fn list(b: &NvmlBackend) -> Result<Vec<MigDevice>, GpuError> {
    let mut out = Vec::new();
    let count = b.nvml.device_count().map_err(|e| b.err(e))?;
    for index in 0..count {
        let d = b.nvml.device_by_index(index).map_err(|e| b.err(e))?;
        if !matches!(d.mig_mode(), Ok(m) if m.current == 1) {
            continue;
        }
        let gpu_uuid = d.uuid().map_err(|e| b.err(e))?;
        let ids: Vec<u32> = (0..NVML_GPU_INSTANCE_PROFILE_COUNT)
            .filter_map(|i| d.profile_info(i).ok().map(|p| p.id))
            .collect();
        let gis = nvml_raw::gpu_instances(&b.nvml, &d, &ids).map_err(|e| b.err(e))?;
        for gi in gis {
            // Only the compute instance the agent makes (id 0) is looked for; others are
            // not berth's and are left alone.
            let Some(uuid) =
                nvml_raw::mig_device_uuid(&b.nvml, &d, gi.id, 0).map_err(|e| b.err(e))?
            else {
                continue;
            };
            out.push(MigDevice {
                gpu_uuid: gpu_uuid.clone(),
                gi_id: gi.id,
                ci_id: 0,
                uuid,
                start: gi.start,
                size: gi.size,
            });
        }
    }
    Ok(out)
}
