//! The `berth.v1` wire API: protobuf messages and tonic clients/servers.
//!
//! Everything that crosses a process boundary (CLI ↔ berthd, berth-agent ↔ berthd) is defined
//! in `proto/berth/v1/berth.proto`; this crate only compiles it. Keeping the generated code in
//! one crate means every binary agrees on one version of the API.
//!
//! # Layout
//! - [`v1`]: the generated messages and the `job_service`, `node_service` and `agent_service`
//!   client/server modules.
//! - [`deviceplugin`]: the kubelet device plugin API `v1beta1` (vendored upstream `api.proto`):
//!   the `registration` client/server (kubelet side) and `device_plugin` client/server.

/// Generated from `proto/berth/v1/berth.proto`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("berth.v1");

    impl JobState {
        /// Slurm's long name of the state (`COMPLETED`, `NODE_FAIL`…), as squeue `%T`,
        /// `scontrol show job` and sacct print it. One table for every tool.
        pub fn slurm_name(self) -> &'static str {
            match self {
                JobState::Unspecified => "UNKNOWN",
                JobState::Pending => "PENDING",
                JobState::Running => "RUNNING",
                JobState::Completed => "COMPLETED",
                JobState::Failed => "FAILED",
                JobState::Cancelled => "CANCELLED",
                JobState::Timeout => "TIMEOUT",
                JobState::NodeFail => "NODE_FAIL",
                JobState::OutOfMemory => "OUT_OF_MEMORY",
                JobState::Preempted => "PREEMPTED",
                JobState::Deadline => "DEADLINE",
            }
        }
    }
}

/// The encoded `FileDescriptorSet` of everything compiled here (prost-types'
/// `FileDescriptorSet` decodes it): which services and RPCs exist, for tests that must
/// cover each one.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));

/// Generated from `proto/k8s/deviceplugin/v1beta1/api.proto`, the kubelet device plugin API
/// (`k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1`), vendored verbatim from upstream.
#[allow(missing_docs, clippy::all)]
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");

    /// The API version a plugin sends in `RegisterRequest.version`.
    pub const VERSION: &str = "v1beta1";
    /// The directory kubelet watches for plugin sockets (upstream `DevicePluginPath`).
    pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins/";
    /// The file name of kubelet's own `Registration` socket inside [`DEVICE_PLUGIN_PATH`].
    pub const KUBELET_SOCKET_NAME: &str = "kubelet.sock";
    /// `Device.health` of a usable device.
    pub const HEALTHY: &str = "Healthy";
    /// `Device.health` of a device kubelet must not hand out.
    pub const UNHEALTHY: &str = "Unhealthy";
}
