//! Benchmarks and the trace-driven simulator (DESIGN.md, STYLE.md "bench/ sim").
//!
//! Nothing is measured here yet: the end-to-end slice ships no performance claim. The
//! fair-share and placement issues add the Philly/Alibaba trace replays and criterion
//! benchmarks here, and README's benchmark table is filled only from them.
