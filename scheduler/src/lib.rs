//! berthd: the replicated scheduler.
//!
//! One replica keeps the cluster's whole state — jobs, nodes, allocations — in a raft-rs
//! log stored in sled, applied by a deterministic state machine. The leader runs the
//! scheduling loop (which calls the pure `berth-policies`), proposes its decisions through
//! the log, and after they are applied dispatches launches to node agents over their gRPC
//! streams. Nothing is acted on before it is durable in the log.
//!
//! # Layout
//! - [`accounts`]: the accounts/QOS TOML configuration.
//! - [`account_access`]: per-account submit rights and coordinators.
//! - [`account_change`]: which accounts changes a coordinator may make.
//! - [`security`]: proving callers (certificates, local credentials, JWTs), roles, limits.
//! - [`audit`]: the durable, queryable audit log of state-changing calls.
//! - [`accounting`]: job history (records from the log, sled or PostgreSQL store), sacct
//!   and report queries, prices and measured charging, per-account metrics.
//! - [`cluster`]: the cluster description (node groups, overlapping partitions, licenses).
//! - [`cluster_api`]: AdminService calls that read and change it, reservations, drains.
//! - [`storage`]: `raft::Storage` over sled (log, hard state, snapshots).
//! - [`mem_storage`]: the same contract in memory, with crash semantics, for the simulator.
//! - [`raft_loop`]: the ready-loop thread and the [`raft_loop::RaftHandle`] to propose/read.
//! - [`raft_log`]: raft-rs's slog records into tracing.
//! - [`state_machine`]: `apply(Command)` over jobs and nodes; outcomes and effects.
//! - [`command`]: a command stamped with the proposer's clock, as every proposer sends it.
//! - [`job_list`]: which jobs a listing matches, brief replies, pages of a large queue.
//! - [`output_path`]: `%j %x %u %N` expansion of output file patterns.
//! - [`scheduling`]: the leader's loop: state → `policies::schedule` → `Allocate` command.
//! - [`agents`]: the registry of connected agents and the dispatch of effects to them.
//! - [`transport`]: Raft messages to peer replicas over gRPC.
//! - [`wire`]: accepted connections get `TCP_NODELAY`; connections and calls are counted.
//! - [`server`]: gRPC `JobService`, `NodeService`, `AgentService`.
//! - [`extender`]: kube-scheduler extender filter/prioritize over berth's node view.
//! - [`pod_gpus`]: what GPUs a pod asks for (whole, MIG slices of one profile, shares).
//! - [`pod_fit`]: how a pod's GPUs fit one berth node: filter, score, and the allocation
//!   at bind through the placement pipeline.
//! - [`rate_limit`]: per-client request rate limits.
//! - [`http`]: the HTTP endpoint (`--http-listen`): extender verbs and `/metrics`.
//! - [`kube_api`]: the Kubernetes API: read, annotate and bind pods; end finished pods' jobs.
//! - [`daemon`]: wiring it all together with one shutdown signal (used by `berthd` and
//!   `berth dev`).
#![deny(missing_docs)]

pub mod account_access;
pub mod account_change;
pub mod accounting;
pub mod accounts;
pub mod agents;
pub mod audit;
pub mod cluster;
pub mod cluster_api;
pub mod command;
pub mod daemon;
pub mod extender;
pub mod http;
pub mod job_list;
pub mod kube_api;
pub mod mem_storage;
pub mod output_path;
pub mod pod_fit;
pub mod pod_gpus;
pub mod raft_log;
pub mod raft_loop;
pub mod rate_limit;
pub mod scheduling;
pub mod security;
pub mod server;
pub mod state_machine;
pub mod storage;
#[cfg(test)]
mod test_fixtures;
pub mod transport;
pub mod wire;
