//! Benchmarks and the trace-driven simulator (DESIGN.md, STYLE.md "bench/ sim").
//!
//! - `bin/submit_load.rs`: submit throughput of one berthd replica at several client
//!   concurrencies (numbers in README, with the command and machine).
//! - `bin/squeue_load.rs`: `squeue` over a large queue (wall time, peak RSS).
//! - [`load_node`]: the fake node both register.
//!
//! - `sim` (`bin/sim.rs`, [`sim`]): the deterministic cluster simulator — berthd's real
//!   replicas under seeded network faults and crashes, checking DESIGN.md's invariants 1–4.

pub mod load_node;
pub mod sim;
