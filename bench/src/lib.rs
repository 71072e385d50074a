//! Benchmarks and the trace-driven simulator (DESIGN.md, STYLE.md "bench/ sim").
//!
//! - `bin/submit_load.rs`: submit throughput of one berthd replica at several client
//!   concurrencies (numbers in README, with the command and machine).
//!
//! - `sim` (`bin/sim.rs`, [`sim`]): the deterministic cluster simulator — berthd's real
//!   replicas under seeded network faults and crashes, checking DESIGN.md's invariants 1–4.

pub mod sim;
