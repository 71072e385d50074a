//! GPU discovery through NVML (nvml-wrapper), behind one trait.
//!
//! The same [`NvmlBackend`] code reads a real driver's `libnvidia-ml.so.1` and the
//! simulated-machine library (`berth-simnvml`): only the library path differs. That is
//! the point of the simulator: tests exercise this exact code path.

use berth_proto::v1 as pb;
use nvml_wrapper::Nvml;
use std::path::PathBuf;

/// Why GPUs could not be discovered.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML failed (library missing, init failed, a query failed).
    #[error("NVML ({lib}): {source}")]
    Nvml {
        /// Library path used, or the default name.
        lib: String,
        /// nvml-wrapper's error.
        source: nvml_wrapper::error::NvmlError,
    },
}

/// What a backend found on this machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuInventory {
    /// GPUs in NVML index order.
    pub gpus: Vec<pb::Gpu>,
    /// Driver version, e.g. "580.65.06".
    pub driver_version: String,
    /// NVML library version.
    pub nvml_version: String,
}

/// A source of GPU facts.
pub trait GpuBackend: Send + Sync {
    /// Lists the GPUs now.
    ///
    /// # Errors
    /// [`GpuError`] when the backend cannot answer.
    fn inventory(&self) -> Result<GpuInventory, GpuError>;
}

/// NVML through nvml-wrapper, from the driver (`lib = None`) or a given library file.
pub struct NvmlBackend {
    /// Path of libnvidia-ml (or of the simulated machine's copy); `None` for the default.
    pub lib: Option<PathBuf>,
}

impl NvmlBackend {
    fn init(&self) -> Result<Nvml, GpuError> {
        let res = match &self.lib {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        };
        res.map_err(|source| self.err(source))
    }

    fn err(&self, source: nvml_wrapper::error::NvmlError) -> GpuError {
        let lib = self
            .lib
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "libnvidia-ml.so.1".into());
        GpuError::Nvml { lib, source }
    }
}

impl GpuBackend for NvmlBackend {
    fn inventory(&self) -> Result<GpuInventory, GpuError> {
        let nvml = self.init()?;
        let count = nvml.device_count().map_err(|e| self.err(e))?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let d = nvml.device_by_index(index).map_err(|e| self.err(e))?;
            let model = d.name().map_err(|e| self.err(e))?;
            gpus.push(pb::Gpu {
                uuid: d.uuid().map_err(|e| self.err(e))?,
                index,
                gres_type: gres_type(&model),
                model,
                memory_mb: d.memory_info().map_err(|e| self.err(e))?.total >> 20,
                pci_bus_id: d.pci_info().map_err(|e| self.err(e))?.bus_id,
                minor: d.minor_number().map_err(|e| self.err(e))?,
                job_id: 0,
            });
        }
        Ok(GpuInventory {
            gpus,
            driver_version: nvml.sys_driver_version().unwrap_or_default(),
            nvml_version: nvml.sys_nvml_version().unwrap_or_default(),
        })
    }
}

/// The GRES type Slurm users write for a model: `NVIDIA H100 80GB HBM3` → `h100`,
/// `NVIDIA A100-PCIE-40GB` → `a100`, `Tesla V100-SXM2-16GB` → `v100`.
pub fn gres_type(model: &str) -> String {
    let rest = model
        .trim()
        .trim_start_matches("NVIDIA")
        .trim_start_matches("Tesla")
        .trim();
    rest.split([' ', '-'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gres_types() {
        let cases = [
            ("NVIDIA H100 80GB HBM3", "h100"),
            ("NVIDIA A100-PCIE-40GB", "a100"),
            ("NVIDIA A100-SXM4-80GB", "a100"),
            ("Tesla V100-SXM2-16GB", "v100"),
            ("NVIDIA L40S", "l40s"),
            ("", ""),
        ];
        for (i, (model, want)) in cases.iter().enumerate() {
            let got = gres_type(model);
            if got != *want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let b = NvmlBackend {
            lib: Some("/nonexistent/libnvidia-ml.so.1".into()),
        };
        let err = b.inventory().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/libnvidia-ml.so.1"), "{err}");
    }
}
