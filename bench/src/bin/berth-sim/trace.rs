//! The Philly trace (`philly-multigpu/jobs.json`): parsing, and the deterministic mapping
//! of each job to a shape, a time limit and an account.

use anyhow::{bail, Context as _};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct RawJob {
    id: String,
    num_gpus: u32,
    /// Minutes.
    runtime: f64,
    submitted_time: String,
}

/// One job as the simulator replays it.
#[derive(Debug, Clone)]
pub struct TraceJob {
    /// 1-based, in submit order (ties: trace order).
    pub id: u64,
    /// Submit time, ms since the trace's first submit.
    pub submit_ms: u64,
    /// Actual runtime, ms (at least one second).
    pub runtime_ms: u64,
    /// Nodes and GPUs per node: `n <= 8` GPUs is one node with `n`; larger jobs take
    /// `ceil(n/8)` nodes with `ceil(n/nodes)` GPUs each.
    pub nodes: u32,
    /// GPUs on each node.
    pub gpus_per_node: u32,
    /// Account: FNV-1a of the Philly application id, modulo the number of accounts.
    pub account: String,
}

/// The trace's default place: `shared/traces` next to the workspace (`../shared/traces`
/// from the workspace root), found from the build's manifest dir or the current directory.
pub fn default_path() -> PathBuf {
    shared_path("shared/traces/philly-multigpu/jobs.json")
}

/// `rel` (a path under `shared/`) next to the workspace: the first of the places it may be
/// that exists, else the first (so the error names where it was looked for).
pub fn shared_path(rel: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join("../..").join(rel),
        PathBuf::from("..").join(rel),
        PathBuf::from("../..").join(rel),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

/// 64-bit FNV-1a.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) → seconds since 1970.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    let bad = || format!("bad time {s:?} (want YYYY-MM-DD HH:MM:SS)");
    let (date, time) = s.split_once(' ').with_context(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(bad)?;
    let t: Vec<i64> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(bad)?;
    if d.len() != 3 || t.len() != 3 || !(1..=12).contains(&d[1]) || !(1..=31).contains(&d[2]) {
        bail!(bad());
    }
    // Howard Hinnant's days_from_civil.
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
}

/// Reads the trace and maps it (see [`TraceJob`]).
pub fn load(path: &Path, accounts: u64, gpus_per_node_max: u32) -> anyhow::Result<Vec<TraceJob>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read trace {} (use --trace PATH)", path.display()))?;
    let raw: Vec<RawJob> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Philly jobs.json", path.display()))?;
    let mut timed = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let t = parse_time(&r.submitted_time).with_context(|| format!("job {}", r.id))?;
        if r.num_gpus == 0 || !r.runtime.is_finite() || r.runtime < 0.0 {
            bail!(
                "job {}: num_gpus {} runtime {}",
                r.id,
                r.num_gpus,
                r.runtime
            );
        }
        timed.push((t, i));
    }
    timed.sort();
    let t0 = timed.first().map_or(0, |x| x.0);
    let g = gpus_per_node_max.max(1);
    Ok(timed
        .iter()
        .enumerate()
        .map(|(k, &(t, i))| {
            let r = &raw[i];
            let nodes = r.num_gpus.div_ceil(g);
            TraceJob {
                id: k as u64 + 1,
                submit_ms: ((t - t0) as u64) * 1000,
                runtime_ms: ((r.runtime * 60_000.0).round() as u64).max(1000),
                nodes,
                gpus_per_node: r.num_gpus.div_ceil(nodes),
                account: format!("team{}", fnv1a(&r.id) % accounts.max(1)),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_bad_ones_fail() {
        assert_eq!(parse_time("1970-01-01 00:00:00").unwrap(), 0);
        assert_eq!(parse_time("2017-10-07 01:11:39").unwrap(), 1_507_338_699);
        for bad in ["2017-10-07", "2017-13-01 00:00:00", "x-y-z a:b:c", ""] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
