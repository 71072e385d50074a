//! What a simulated GPU remembers across processes, in `sim-state.json` beside
//! `machine.json`: its MIG instances (the real driver keeps them until they are destroyed
//! or the machine reboots, so an agent restart must find them), its ECC counters and
//! whether it fell off the bus. The file is replaced by rename on every change, so a crash
//! leaves either the old or the new state. A file that does not fit the machine (other GPU
//! count, an instance no card could hold) fails `nvmlInit` with a message naming it, and
//! is left untouched for a person to look at.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::machine::ResolvedGpu;
use crate::mig::MigLayout;
use crate::Error;

/// Name of the state file in the node directory.
pub const STATE_FILE_NAME: &str = "sim-state.json";

/// The changing state of one GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceState {
    #[serde(default)]
    pub(crate) mig: MigLayout,
    /// Corrected (single-bit) ECC errors since boot.
    #[serde(default)]
    pub(crate) ecc_corrected: u64,
    /// Uncorrected (double-bit) ECC errors since boot.
    #[serde(default)]
    pub(crate) ecc_uncorrected: u64,
    /// The GPU fell off the bus: every query answers `NVML_ERROR_GPU_IS_LOST`.
    #[serde(default)]
    pub(crate) lost: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    gpus: Vec<DeviceState>,
}

/// The saved state in `dir`, `None` if there is no file yet.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::InFile`] wrapping [`Error::Json`] or
/// [`Error::Invalid`] if it is malformed or does not fit `gpus`.
pub(crate) fn load(dir: &Path, gpus: &[ResolvedGpu]) -> Result<Option<Vec<DeviceState>>, Error> {
    let path = dir.join(STATE_FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let in_file = |source: Error| Error::InFile {
        path: path.clone(),
        source: Box::new(source),
    };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| in_file(e.into()))?;
    check(&file.gpus, gpus).map_err(|e| in_file(Error::Invalid(e)))?;
    Ok(Some(file.gpus))
}

/// Replays every saved instance onto an empty layout with the real rules, so a file that
/// passes holds only layouts the hardware could have.
fn check(saved: &[DeviceState], gpus: &[ResolvedGpu]) -> Result<(), String> {
    if saved.len() != gpus.len() {
        return Err(format!(
            "state for {} GPUs, machine has {}",
            saved.len(),
            gpus.len()
        ));
    }
    for (index, (state, gpu)) in saved.iter().zip(gpus).enumerate() {
        let instances = &state.mig.gpu_instances;
        if instances.is_empty() {
            continue;
        }
        let Some(sku) = gpu.mig.filter(|_| gpu.mig_enabled) else {
            return Err(format!(
                "gpus[{index}] has MIG instances but MIG mode is off"
            ));
        };
        let mut replay = MigLayout::default();
        for gi in instances {
            let bad = |what: &str| format!("gpus[{index}]: GPU instance {}: {what}", gi.id);
            replay
                .create_gi(sku, gi.profile_id, gi.start, gi.size)
                .map_err(|e| bad(&format!("not creatable ({e:?})")))?;
            let cap = sku.by_id(gi.profile_id).map_or(0, |p| p.compute_slices);
            let mut used = 0;
            for (n, ci) in gi.compute_instances.iter().enumerate() {
                let ok = crate::mig::ci_slices(ci.profile_id) == Some(ci.slices)
                    && gi.compute_instances[..n].iter().all(|c| c.id != ci.id);
                used += ci.slices;
                if !ok || used > cap {
                    return Err(bad("compute instances do not fit"));
                }
            }
        }
        let mut ids: Vec<u32> = instances.iter().map(|gi| gi.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != instances.len() || ids.iter().any(|&id| id == 0 || id > 7) {
            return Err(format!(
                "gpus[{index}]: GPU instance ids must be unique, in 1..=7"
            ));
        }
    }
    Ok(())
}

/// Writes the state of every GPU to `dir`, replacing the file by rename.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub(crate) fn save(dir: &Path, devices: &[DeviceState]) -> Result<(), Error> {
    let path = dir.join(STATE_FILE_NAME);
    let tmp = dir.join(format!("{STATE_FILE_NAME}.tmp"));
    let file = StateFile {
        gpus: devices.to_vec(),
    };
    // Plain structs of integers and vectors: serialising cannot fail.
    let text = serde_json::to_string_pretty(&file).expect("device state always serialises");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}
