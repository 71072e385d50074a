//! Benchmarks and the trace-driven simulator (DESIGN.md, STYLE.md "bench/ sim").
//!
//! - `bin/submit_load.rs`: submit throughput of one berthd replica at several client
//!   concurrencies (numbers in README, with the command and machine).
//!
//! The trace replays (Philly, Alibaba) and the deterministic cluster simulator arrive with
//! the fair-share, placement and Raft HA issues.
