//! GPU discovery through NVML (nvml-wrapper), behind one trait.
//!
//! The same [`NvmlBackend`] code reads a real driver's `libnvidia-ml.so.1` and the
//! simulated-machine library (`berth-simnvml`): only the library path differs. That is
//! the point of the simulator: tests exercise this exact code path. `inventory` reads
//! what a node registers with; `mig` carves MIG slices (through `crate::nvml_raw` where
//! nvml-wrapper has no safe call). `rocm` is the AMD backend (cargo feature `rocm`).

mod inventory;
mod mig;
pub mod rocm;

use crate::nvml_raw;
use berth_proto::v1 as pb;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use std::path::PathBuf;

/// Why a GPU operation failed.
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
    /// A MIG request this node cannot carry out; the text says why and names the GPU.
    #[error("MIG: {0}")]
    Mig(String),
    /// A backend other than NVML is unavailable or failed (built without it, library
    /// missing, a call failed); the text says which and why.
    #[error("GPU backend {backend}: {reason}")]
    Backend {
        /// `rocm`.
        backend: &'static str,
        /// What went wrong, naming the library or the call.
        reason: String,
    },
}

/// Whose GPUs a backend drives: decides the CDI kind and the visible-devices variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    /// NVML: `nvidia.com/gpu`, `CUDA_VISIBLE_DEVICES`.
    #[default]
    Nvidia,
    /// ROCm SMI: `amd.com/gpu`, `ROCR_VISIBLE_DEVICES`.
    Amd,
}

/// The backend `--gpu-backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// NVML (real driver or the simulated machine).
    Nvml,
    /// ROCm SMI (needs the `rocm` feature).
    Rocm,
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<BackendKind, String> {
        match s {
            "nvml" => Ok(BackendKind::Nvml),
            "rocm" => Ok(BackendKind::Rocm),
            other => Err(format!("--gpu-backend must be nvml or rocm, got {other:?}")),
        }
    }
}

/// Opens the ROCm SMI backend from `lib` (a path, or a name the loader searches).
///
/// # Errors
/// [`GpuError::Backend`] when this agent was built without the `rocm` feature, the library
/// is missing, or ROCm SMI cannot initialise.
pub fn open_rocm(lib: &str) -> Result<std::sync::Arc<dyn GpuBackend>, GpuError> {
    #[cfg(feature = "rocm")]
    {
        Ok(std::sync::Arc::new(rocm::RocmBackend::open(lib)?))
    }
    #[cfg(not(feature = "rocm"))]
    {
        Err(GpuError::Backend {
            backend: "rocm",
            reason: format!(
                "this berth-agent was built without the rocm feature, so it cannot load \
                 {lib}; rebuild with `cargo build -p berth-agent --features rocm` (needs \
                 `apt-get install librocm-smi-dev libclang-dev`)"
            ),
        })
    }
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
    /// CUDA driver API version, e.g. "13.0".
    pub cuda_version: String,
    /// How each GPU pair is connected (a < b).
    pub topology: Vec<pb::GpuPairLink>,
}

/// A MIG device the agent made (or found) for a job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigDevice {
    /// Parent GPU.
    pub gpu_uuid: String,
    /// GPU-instance id on that GPU.
    pub gi_id: u32,
    /// Compute-instance id in that GPU instance.
    pub ci_id: u32,
    /// `MIG-…`, what the job sees.
    pub uuid: String,
    /// Placement start, memory slices.
    pub start: u32,
    /// Placement size, memory slices.
    pub size: u32,
}

/// One reading of one GPU, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSample {
    /// NVML index.
    pub index: u32,
    /// GPU UUID.
    pub uuid: String,
    /// NVML name.
    pub model: String,
    /// GPU utilisation, percent.
    pub util_percent: u32,
    /// Framebuffer used, MiB.
    pub fb_used_mb: u64,
    /// Framebuffer free, MiB.
    pub fb_free_mb: u64,
    /// Power draw, watts.
    pub power_w: f64,
    /// Core temperature, °C.
    pub temperature_c: u32,
}

/// A source of GPU facts and the place MIG slices are carved. The default methods are
/// what a node without MIG or telemetry answers.
pub trait GpuBackend: Send + Sync {
    /// Lists the GPUs now.
    ///
    /// # Errors
    /// [`GpuError`] when the backend cannot answer.
    fn inventory(&self) -> Result<GpuInventory, GpuError>;

    /// Creates the GPU instance `slice` names, at exactly its placement, plus one compute
    /// instance spanning it. Never changes MIG mode.
    ///
    /// # Errors
    /// [`GpuError::Mig`] naming the GPU and the reason (MIG mode off, placement busy or
    /// illegal, unknown profile); nothing is left behind then.
    fn create_mig(&self, slice: &pb::MigSlice) -> Result<MigDevice, GpuError> {
        Err(GpuError::Mig(format!(
            "GPU {}: this node has no MIG-capable backend",
            slice.gpu_uuid
        )))
    }

    /// Destroys GPU instance `gi_id` of `gpu_uuid` and its compute instances; `Ok` if it
    /// is already gone.
    ///
    /// # Errors
    /// [`GpuError`] when NVML refuses (e.g. a process still runs on it).
    fn destroy_mig(&self, gpu_uuid: &str, gi_id: u32) -> Result<(), GpuError> {
        Err(GpuError::Mig(format!(
            "GPU {gpu_uuid}: no MIG backend to destroy instance {gi_id}"
        )))
    }

    /// Every MIG device that exists now (after a restart: what to reconcile).
    ///
    /// # Errors
    /// [`GpuError`] when NVML cannot list them.
    fn mig_devices(&self) -> Result<Vec<MigDevice>, GpuError> {
        Ok(Vec::new())
    }

    /// Current readings of every GPU that answers; lost GPUs are left out.
    fn samples(&self) -> Vec<GpuSample> {
        Vec::new()
    }

    /// Whose GPUs these are.
    fn vendor(&self) -> GpuVendor {
        GpuVendor::Nvidia
    }
}

/// A node without GPUs (`--no-gpus`).
pub struct NoGpus;

impl GpuBackend for NoGpus {
    fn inventory(&self) -> Result<GpuInventory, GpuError> {
        Ok(GpuInventory::default())
    }
}

/// NVML through nvml-wrapper, from the driver (`lib = None`) or a given library file. One
/// `Nvml` is kept for the backend's life: init can take a while on a real driver.
pub struct NvmlBackend {
    lib: Option<PathBuf>,
    nvml: Nvml,
}

impl NvmlBackend {
    /// Loads and initialises NVML from `lib` (the driver's library if `None`).
    ///
    /// # Errors
    /// [`GpuError::Nvml`] naming the library when it is missing or init fails.
    pub fn open(lib: Option<PathBuf>) -> Result<NvmlBackend, GpuError> {
        let res = match &lib {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        };
        let nvml = res.map_err(|source| GpuError::Nvml {
            lib: lib_name(lib.as_deref()),
            source,
        })?;
        Ok(NvmlBackend { lib, nvml })
    }

    /// The library path given to [`NvmlBackend::open`].
    pub fn lib(&self) -> Option<&std::path::Path> {
        self.lib.as_deref()
    }

    fn err(&self, source: NvmlError) -> GpuError {
        GpuError::Nvml {
            lib: lib_name(self.lib.as_deref()),
            source,
        }
    }

    fn device_by_uuid(&self, uuid: &str) -> Result<Device<'_>, GpuError> {
        self.nvml.device_by_uuid(uuid).map_err(|e| match e {
            NvmlError::NotFound => GpuError::Mig(format!("GPU {uuid} is not on this node")),
            e => self.err(e),
        })
    }
}

fn lib_name(lib: Option<&std::path::Path>) -> String {
    lib.map(|p| p.display().to_string())
        .unwrap_or_else(|| "libnvidia-ml.so.1".into())
}

impl GpuBackend for NvmlBackend {
    fn inventory(&self) -> Result<GpuInventory, GpuError> {
        let count = self.nvml.device_count().map_err(|e| self.err(e))?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let d = self.nvml.device_by_index(index).map_err(|e| self.err(e))?;
            gpus.push(inventory::gpu(&self.nvml, &d, index).map_err(|e| self.err(e))?);
        }
        inventory::nvlink_peers(&self.nvml, &mut gpus);
        let topology = inventory::topology(&self.nvml, &gpus);
        let cuda = self.nvml.sys_cuda_driver_version().unwrap_or(0);
        Ok(GpuInventory {
            gpus,
            driver_version: self.nvml.sys_driver_version().unwrap_or_default(),
            nvml_version: self.nvml.sys_nvml_version().unwrap_or_default(),
            cuda_version: format!("{}.{}", cuda / 1000, (cuda % 1000) / 10),
            topology,
        })
    }

    fn create_mig(&self, slice: &pb::MigSlice) -> Result<MigDevice, GpuError> {
        mig::create(self, slice)
    }

    fn destroy_mig(&self, gpu_uuid: &str, gi_id: u32) -> Result<(), GpuError> {
        let device = self.device_by_uuid(gpu_uuid)?;
        nvml_raw::destroy_slice(&self.nvml, &device, gi_id).map_err(|e| self.err(e))
    }

    fn mig_devices(&self) -> Result<Vec<MigDevice>, GpuError> {
        mig::list(self)
    }

    fn samples(&self) -> Vec<GpuSample> {
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| sample(&self.nvml.device_by_index(i).ok()?, i).ok())
            .collect()
    }
}

fn sample(d: &Device<'_>, index: u32) -> Result<GpuSample, NvmlError> {
    let memory = d.memory_info()?;
    Ok(GpuSample {
        index,
        uuid: d.uuid()?,
        model: d.name()?,
        util_percent: d.utilization_rates()?.gpu,
        fb_used_mb: memory.used >> 20,
        fb_free_mb: memory.free >> 20,
        power_w: f64::from(d.power_usage()?) / 1000.0,
        temperature_c: d.temperature(TemperatureSensor::Gpu)?,
    })
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
    fn backend_names_are_checked() {
        assert_eq!("nvml".parse(), Ok(BackendKind::Nvml));
        assert_eq!("rocm".parse(), Ok(BackendKind::Rocm));
        let err = "cuda".parse::<BackendKind>().expect_err("unknown backend");
        assert!(
            err.contains("nvml or rocm") && err.contains("cuda"),
            "{err}"
        );
    }

    #[test]
    fn rocm_backend_says_what_is_missing() {
        let err = match open_rocm("/nonexistent/librocm_smi64.so.1") {
            Ok(_) => panic!("opened a library that does not exist"),
            Err(e) => e.to_string(),
        };
        if cfg!(feature = "rocm") {
            assert!(err.contains("/nonexistent/librocm_smi64.so.1"), "{err}");
        } else {
            assert!(err.contains("without the rocm feature"), "{err}");
        }
    }

    /// With the feature, the real rocm_smi_lib (Debian's `librocm-smi64-1`) is opened: on a
    /// host without amdgpu, init fails or finds no GPU, and either way says so plainly.
    #[cfg(feature = "rocm")]
    #[test]
    fn rocm_smi_library_opens_or_says_why() {
        match open_rocm("librocm_smi64.so.1") {
            Ok(b) => {
                let inv = b.inventory().expect("inventory after a successful init");
                println!("rocm_smi_lib: {} AMD GPU(s)", inv.gpus.len());
                assert_eq!(b.vendor(), GpuVendor::Amd);
                for g in &inv.gpus {
                    assert!(!g.uuid.is_empty() && !g.pci_bus_id.is_empty(), "{g:?}");
                }
            }
            Err(e) => {
                let e = e.to_string();
                println!("rocm_smi_lib did not open here: {e}");
                assert!(e.contains("rocm"), "{e}");
            }
        }
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let b = NvmlBackend::open(Some("/nonexistent/libnvidia-ml.so.1".into()));
        let err = b.err().expect("no such library").to_string();
        assert!(err.contains("/nonexistent/libnvidia-ml.so.1"), "{err}");
    }
}
