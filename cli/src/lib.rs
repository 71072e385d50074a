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
//! - [`squeue`], [`sinfo`], [`scontrol`]: Slurm-shaped output.
//! - [`hostlist`]: `node[1-3]` compression and expansion.
//! - [`srun`]: job steps: tasks on the allocation's nodes, output streamed back.
//! - [`client`]: finding and connecting to berthd.
//! - [`commands`]: the subcommands (arguments, call, output, errors).
//! - [`dev`]: `berth dev`.
//! - [`fairshare`]: `sshare`, `sprio`, `admin accounts`.

pub mod client;
pub mod commands;
pub mod dev;
pub mod duration;
pub mod fairshare;
pub mod format;
pub mod hostlist;
pub mod memory;
pub mod opt;
pub mod sbatch;
pub mod scontrol;
pub mod sinfo;
pub mod squeue;
pub mod srun;

/// Milliseconds since the Unix epoch (for elapsed times in output).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
