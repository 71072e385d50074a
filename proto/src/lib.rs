//! The `berth.v1` wire API: protobuf messages and tonic clients/servers.
//!
//! Everything that crosses a process boundary (CLI ↔ berthd, berth-agent ↔ berthd) is defined
//! in `proto/berth/v1/berth.proto`; this crate only compiles it. Keeping the generated code in
//! one crate means every binary agrees on one version of the API.
//!
//! # Layout
//! - [`v1`]: the generated messages and the `job_service`, `node_service` and `agent_service`
//!   client/server modules.

/// Generated from `proto/berth/v1/berth.proto`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}
