//! The `berth` command line: Slurm-compatible `sbatch`, `squeue`, `scancel`, `sinfo` and
//! `scontrol` over berthd's gRPC API, and `berth dev`, a whole berth in one process.
//!
//! Parsing and formatting are plain functions over the wire types, kept apart from the
//! gRPC calls, so every parser and every output format is unit-tested without a server.
//!
//! # Layout
//! - [`sbatch`]: sbatch options and `#SBATCH` directives → a `JobSpec`.
//! - [`opt`]: Slurm option tables, getopt, and the value parsers sbatch (and srun, salloc,
//!   `scontrol update`) share.
//! - [`duration`], [`memory`]: Slurm's time-limit and memory formats.
//! - [`format`]: the `%[.][width]X` format-string engine shared by squeue and sinfo.
//! - [`squeue`], [`sinfo`]: Slurm-shaped output; [`scontrol`]: its verbs, show (job, node,
//!   partition, topology, hosts) and update (jobs, nodes), one module each.
//! - [`job_query`]: fetching the jobs a command shows (by reference, or the running ones).
//! - [`array_view`]: job arrays as the tools show and select them (`12_[4-15%4]`, `12_3`).
//! - [`hostlist`]: `node[1-3]` compression and expansion.
//! - [`step_view`]: job steps as `squeue -s` and `scontrol show step` show them.
//! - [`reservation`]: `scontrol create/update/delete/show reservation`, `show licenses`.
//! - [`srun`]: job steps: tasks on the allocation's nodes, output streamed back.
//! - [`salloc`], [`allocation`]: interactive allocations (salloc, srun outside a job).
//! - [`client`]: finding and connecting to berthd.
//! - [`commands`]: the subcommands (arguments, call, output, errors).
//! - [`dev`]: `berth dev`.
//! - [`dev_security`]: `berth dev`'s CA, certificates, credential daemon, client profile.
//! - [`security_cmds`]: `admin ca`, `token`, `admin audit`, `credd`.
//! - [`fairshare`]: `sshare`, `sprio`, `admin accounts`.
//! - [`sacct`] (and its `--json`), [`sacct_fields`]: `sacct` from berthd's accounting records.
//! - [`slurm_time`]: Slurm's date-time formats (`-S/-E`, `start=`).
//! - [`sreport`]: `sreport` cluster/user usage reports.
//! - [`report`]: `berth report usage` (GPU-hours allocated and busy, cost).

pub mod allocation;
pub mod array_view;
pub mod client;
pub mod commands;
pub mod dev;
pub mod dev_security;
pub mod duration;
pub mod fairshare;
pub mod format;
pub mod hostlist;
pub mod job_query;
pub mod memory;
pub mod opt;
pub mod report;
pub mod reservation;
pub mod sacct;
pub mod sacct_fields;
pub mod salloc;
pub mod sbatch;
pub mod scontrol;
pub mod security_cmds;
pub mod sinfo;
pub mod slurm_time;
pub mod squeue;
pub mod sreport;
pub mod srun;
pub mod step_view;

/// Milliseconds since the Unix epoch (for elapsed times in output).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
