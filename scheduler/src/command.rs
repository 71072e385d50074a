//! A command as it enters the log: the proposer's clock stamped on it.
//!
//! The state machine never reads a clock (replicas must apply the same bytes to the same
//! result), so the time a command happened travels inside it. Every proposer — the gRPC
//! handlers, the scheduling loop, agent dispatch, the Kubernetes watcher — stamps through
//! here, which is why this is its own module rather than a corner of `server`.

use berth_proto::v1::{self as pb, command::Cmd};

/// Milliseconds since the Unix epoch: the leader's clock, stamped into commands.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A command stamped with the leader's clock.
pub fn command(cmd: Cmd) -> pb::Command {
    pb::Command {
        time_ms: now_ms(),
        cmd: Some(cmd),
    }
}
