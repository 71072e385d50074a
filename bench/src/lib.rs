//! Benchmarks and the trace-driven simulator (DESIGN.md, STYLE.md "bench/ sim").
//!
//! - `bin/submit_load.rs`: submit throughput of one berthd replica at several client
//!   concurrencies (numbers in README, with the command and machine).
//! - `bin/squeue_load.rs`: `squeue` over a large queue (wall time, peak RSS).
//! - [`load_node`]: the fake node both register.
//! - `bin/srun_launch.rs`: `srun` launch latency across N nodes of `berth dev`.
//! - [`berth_cli`]: the `berth` binary the CLI benchmarks run.
//!
//! - `sim` (`bin/sim.rs`, [`sim`]): the deterministic cluster simulator — berthd's real
//!   replicas under seeded network faults and crashes, checking DESIGN.md's invariants 1–4.

pub mod berth_cli;
pub mod load_node;
pub mod sim;
