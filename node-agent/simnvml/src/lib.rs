//! berth-simnvml: simulated GPU machines. This crate builds a C-ABI shared library that
//! exports the NVML functions the berth agent calls and answers them from a JSON machine
//! description, so that the agent's real NVML code path (nvml-wrapper loading
//! `libnvidia-ml.so.1`) runs in tests and in `berth dev` on machines without GPUs. The same
//! crate, as an rlib, gives Rust callers the description type, the shipped machines and
//! [`install_node`], which lays out one simulated node per directory.
//!
//! # Machine description (JSON, unknown fields rejected)
//! ```json
//! {
//!   "name": "dgx-h100",                 // non-empty
//!   "driver_version": "580.65.06",      // nvmlSystemGetDriverVersion
//!   "nvml_version": "13.580.65.06",     // nvmlSystemGetNVMLVersion
//!   "cuda_driver_version": 13000,       // 1000*major + 10*minor, > 0
//!   "cpus": 224,                        // > 0
//!   "memory_mb": 2063937,               // host memory, MiB, > 0
//!   "uuid_seed": "node1",               // optional; default: name
//!   "gpus": [                           // NVML index order; [] = CPU-only node; <= 64
//!     { "name": "NVIDIA H100 80GB HBM3",      // non-empty, < 64 bytes
//!       "memory_mb": 81559,                   // framebuffer MiB, > 0
//!       "pci_bus_id": "00000000:18:00.0",     // unique; 4- or 8-digit domain, any case
//!       "compute_capability": [9, 0],
//!       "uuid": "GPU-…",                      // optional, unique; default derived from
//!                                             //   FNV-1a(uuid_seed, index)
//!       "minor_number": 0,                    // optional, unique; default: index
//!       "pci_device_id": "0x233010DE",        // optional hex; default 0x000010DE
//!       "numa_node": 0,                       // optional, < numa_nodes; default 0
//!       "pcie_switch": 0,                     // optional; same value = same PCIe switch
//!       "mig": "h100-80gb",                   // optional MIG table: a100-40gb|a100-80gb|h100-80gb
//!       "mig_enabled": false,                 // optional; needs mig; never changed
//!       "nvlinks": [{"links": 18}],           // optional; {"links": n, "peer_gpu": i} for
//!                                             //   direct links (must be symmetric), else NVSwitch
//!       "ecc_enabled": true,                  // optional; default true
//!       "power_idle_w": 72 }                  // optional; default 70
//!   ],
//!   "numa_nodes": 2                           // optional; default 1
//! }
//! ```
//!
//! # Files beside `machine.json` while it runs
//! `sim-state.json` (MIG instances, ECC counters, lost GPUs; kept across processes as the
//! driver keeps them), `telemetry.json` (utilisation, memory used, power, temperature) and
//! `inject.jsonl` (XID, ECC and lost-GPU faults); see `persist` and `events`.
//!
//! # How a library copy finds its description
//! At the first `nvmlInit*`: the file named by `$BERTH_SIM_MACHINE` if set, else
//! `machine.json` beside the loaded library file (found with `dladdr`). If it is missing
//! or invalid, init returns `NVML_ERROR_UNKNOWN` (999) and prints one line to stderr naming
//! the file and the reason. One copy of the library is one NVML instance: `dlopen` of the
//! same file returns the same state, so each simulated node needs its own copy
//! ([`install_node`]).
//!
//! # Layout
//! - `machine`: [`MachineDescription`] and [`Gpu`]: schema, defaults, validation.
//! - `uuid`: stable GPU UUIDs derived from (seed, index).
//! - `pci`: [`PciAddress`], parsing and NVML's two bus-id spellings.
//! - `builtin`: the machines in `machines/`, compiled in.
//! - `install`: [`find_library`] and [`install_node`], one node per directory.
//! - `locate`: how a loaded copy finds its description at init.
//! - `state`: the init-counted global state of one library copy.
//! - `handle`: device, GPU/compute-instance and event-set handles as checked addresses in
//!   static tables.
//! - `mig`: the MIG profile tables of A100 40GB/80GB and H100 80GB and the placement rules.
//! - `persist`: the device state file (MIG instances, ECC counters, lost GPUs).
//! - `events`: telemetry and fault injection from files, event sets.
//! - `ffi`: the exported NVML functions, one file per NVML concern.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod builtin;
mod error;
mod events;
mod ffi;
mod handle;
mod install;
mod locate;
mod machine;
mod mig;
mod pci;
mod persist;
mod state;
mod uuid;

pub use builtin::{builtin, builtin_names};
pub use error::Error;
pub use events::{inject, INJECT_FILE_NAME, TELEMETRY_FILE_NAME};
pub use install::{
    find_library, install_node, INSTALLED_LIB_NAME, LIB_ENV, LIB_FILE_NAME, MACHINE_FILE_NAME,
};
pub use locate::MACHINE_ENV;
pub use machine::{Gpu, MachineDescription, NvLinkGroup, MAX_GPUS};
pub use mig::MigSku;
pub use pci::PciAddress;
pub use persist::STATE_FILE_NAME;
