//! berth-agent: the node side of berth.
//!
//! It discovers the node's GPUs through NVML, registers them with berthd over one
//! bidirectional gRPC stream, and runs the jobs berthd places here: each batch script in its
//! own process group under a small shim, with exactly its granted GPUs visible, its output in
//! the requested files, its time limit enforced, and its end reported until acknowledged.
//!
//! # Layout
//! - [`gpu`]: the [`gpu::GpuBackend`] trait and its NVML implementation (real driver or the
//!   simulated machine, same code).
//! - [`device_plugin`]: the kubelet device plugin (`--device-plugin`): berth's GPUs for pods.
//! - [`agent`]: the connection loop (register, heartbeat, events, commands, reconnect).
//! - [`supervisor`]: job directories on disk, launch, kill, time limits, re-attach.
//! - [`shim`]: the per-job process that waits for the job and records its exit.
//! - [`steps`]: job steps (srun): tasks started here, output streamed to srun.
//! - [`job_env`]: the Slurm and GPU environment variables of a job.
//! - [`machine`]: CPU count and memory of this host.
//! - [`health`]: NVML events (XID, ECC) turned into GPU health reports.
//! - [`metrics`]: the Prometheus `/metrics` endpoint (dcgm-exporter names).
//! - [`mps`]: one MPS control daemon per GPU of an MPS-shared node.
//! - [`mig_keep`]: MIG instances kept after their job for reuse (`--mig-keep-layout`).
//! - [`usage`]: measured GPU use per job (for berthd and `/metrics`).
//! - [`oci`]: the `oci` runtime: images, bundles, CDI, runc.
//! - [`nvml_raw`]: the audited raw NVML calls nvml-wrapper does not wrap (MIG).

pub mod agent;
pub mod device_plugin;
pub mod gpu;
pub mod health;
pub mod job_env;
pub mod launch_identity;
pub mod machine;
pub mod metrics;
pub mod mig_keep;
pub mod mps;
pub mod nvml_raw;
pub mod oci;
pub mod shim;
pub mod steps;
pub mod supervisor;
pub mod usage;
