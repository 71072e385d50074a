//! Usage over a time window, summed per group (account, user, partition, GPU type, or
//! account and user), with its cost: what `sreport` and `berth report usage` print.
//!
//! A run counts with the part of it inside the window `[start, end)`: CPU-seconds are its
//! CPUs × seconds inside, GPU-seconds its GPU-equivalents × seconds inside, and its
//! measured busy GPU-seconds in the same proportion (the agents report a cumulative
//! integral, not a time series, so busy time is assumed spread evenly over the run).
//! A run still going counts up to `now`.

use crate::accounts::charge::{ChargeMode, PriceTable};
use berth_proto::v1 as pb;
use std::collections::BTreeMap;

/// GPU-equivalents a record holds (see `JobRecord.gpu_equivalents`).
pub fn gpu_parts_of(r: &pb::JobRecord) -> f64 {
    r.gpu_equivalents
}

/// The group of `r` for `by`.
///
/// # Errors
/// A message naming an unknown grouping.
pub fn group_key(r: &pb::JobRecord, by: &str) -> Result<String, String> {
    let alloc = r.alloc.clone().unwrap_or_default();
    Ok(match by {
        "account" => r.account.clone(),
        "user" => r.user.clone(),
        "partition" => r.partition.clone(),
        "gpu-type" => match (alloc.gpu_type.as_str(), alloc.mig_profile.as_str()) {
            (_, p) if !p.is_empty() && !alloc.gpu_type.is_empty() => {
                format!("{}:{p}", alloc.gpu_type)
            }
            (_, p) if !p.is_empty() => p.to_string(),
            ("", _) if alloc.gpus == 0 => "(none)".into(),
            ("", _) => "(any)".into(),
            (t, _) => t.to_string(),
        },
        "account-user" => format!("{}/{}", r.account, r.user),
        other => {
            return Err(format!(
                "invalid --by {other:?}: expected account, user, partition or gpu-type"
            ))
        }
    })
}

/// Seconds of `[start_ms, end_ms)` that fall inside `[from_ms, to_ms)`; a run not ended
/// yet ends at `now_ms`.
pub fn overlap_s(r: &pb::JobRecord, from_ms: u64, to_ms: u64, now_ms: u64) -> f64 {
    if r.start_time_ms == 0 {
        return 0.0;
    }
    let end = if r.end_time_ms == 0 {
        now_ms
    } else {
        r.end_time_ms
    };
    let lo = r.start_time_ms.max(from_ms);
    let hi = end.min(to_ms);
    hi.saturating_sub(lo) as f64 / 1000.0
}

/// Sums `records` per group over `[q.start_ms, q.end_ms)`, priced by `prices` with GPUs
/// charged per `charge`. Rows come sorted by key; records outside the window add nothing.
///
/// # Errors
/// A message for an unknown `q.by`.
pub fn summarize(
    records: &[pb::JobRecord],
    q: &pb::UsageQuery,
    prices: &PriceTable,
    charge: ChargeMode,
    now_ms: u64,
) -> Result<Vec<pb::UsageRow>, String> {
    let mut rows: BTreeMap<String, pb::UsageRow> = BTreeMap::new();
    for r in records {
        let inside = overlap_s(r, q.start_ms, q.end_ms, now_ms);
        if inside <= 0.0 {
            continue;
        }
        let key = group_key(r, &q.by)?;
        let alloc = r.alloc.clone().unwrap_or_default();
        let run_end = if r.end_time_ms == 0 {
            now_ms
        } else {
            r.end_time_ms
        };
        let run_s = run_end.saturating_sub(r.start_time_ms) as f64 / 1000.0;
        let share = if run_s > 0.0 { inside / run_s } else { 0.0 };
        let mig_parts = f64::from(alloc.mig_memory_slices) / 8.0;
        let whole_parts = (r.gpu_equivalents - mig_parts).max(0.0);
        let factor = charge.gpu_factor(&r.usage, alloc.mig_slices > 0);
        let cpu_s = f64::from(alloc.cpus) * inside;
        let mig_s = f64::from(alloc.mig_slices) * inside;
        let slice_size = alloc
            .mig_memory_slices
            .checked_div(alloc.mig_slices)
            .unwrap_or(0);
        let cost = (whole_parts * inside * factor * prices.gpu(&alloc.gpu_type)
            + mig_s * prices.mig(&alloc.mig_profile, &alloc.gpu_type, slice_size)
            + cpu_s * prices.cpu_hour)
            / 3600.0;
        let row = rows.entry(key.clone()).or_insert_with(|| pb::UsageRow {
            key,
            user: if q.by == "user" || q.by == "account-user" {
                r.user.clone()
            } else {
                String::new()
            },
            account: if q.by == "account" || q.by == "account-user" {
                r.account.clone()
            } else {
                String::new()
            },
            ..Default::default()
        });
        row.cpu_seconds += cpu_s;
        row.gpu_seconds += r.gpu_equivalents * inside;
        row.gpu_busy_seconds += r.gpu_busy_seconds * share;
        row.mig_slice_seconds += mig_s;
        row.jobs += 1;
        row.cost += cost;
    }
    Ok(rows.into_values().collect())
}

/// CPU- and GPU-seconds that eligible jobs waited for inside `[from_ms, to_ms)`, at their
/// requested size (Slurm's Planned): each run's wait runs from eligible to its start,
/// or to its end when it never started, or to `now_ms` while it still waits.
pub fn planned(records: &[pb::JobRecord], from_ms: u64, to_ms: u64, now_ms: u64) -> (f64, f64) {
    let (mut cpu, mut gpu) = (0.0, 0.0);
    for r in records {
        if r.eligible_time_ms == 0 || r.held && r.start_time_ms == 0 {
            continue;
        }
        let until = match (r.start_time_ms, r.end_time_ms) {
            (0, 0) => now_ms,
            (0, end) => end,
            (start, _) => start,
        };
        let lo = r.eligible_time_ms.max(from_ms);
        let hi = until.min(to_ms);
        let s = hi.saturating_sub(lo) as f64 / 1000.0;
        let req = r.req.clone().unwrap_or_default();
        cpu += f64::from(req.cpus) * s;
        let gpus = if req.gpu_milli > 0 {
            f64::from(req.gpus) * f64::from(req.gpu_milli) / 1000.0
        } else {
            f64::from(req.gpus) + f64::from(req.mig_slices)
        };
        gpu += gpus * s;
    }
    (cpu, gpu)
}

/// The account tree for reports, parents first: `tree`'s accounts, then any account a
/// record names that the tree lacks (an account since removed), under root.
pub fn account_list(
    tree: &berth_policies::AccountTree,
    records: &[pb::JobRecord],
) -> Vec<pb::UsageAccount> {
    let all = tree.accounts();
    let mut out: Vec<pb::UsageAccount> = Vec::with_capacity(all.len());
    // Depth-first from root, children in name order (the tree keeps them so).
    let mut stack = vec![0usize];
    while let Some(i) = stack.pop() {
        let a = &all[i];
        out.push(pb::UsageAccount {
            name: a.name.clone(),
            parent: a.parent.map(|p| all[p].name.clone()).unwrap_or_default(),
        });
        stack.extend(a.children.iter().rev());
    }
    let known: std::collections::HashSet<String> = out.iter().map(|a| a.name.clone()).collect();
    let mut extra: Vec<String> = records
        .iter()
        .map(|r| r.account.clone())
        .filter(|a| !a.is_empty() && !known.contains(a))
        .collect();
    extra.sort();
    extra.dedup();
    out.extend(extra.into_iter().map(|name| pb::UsageAccount {
        name,
        parent: berth_policies::fairshare::ROOT.into(),
    }));
    out
}

/// Seconds of node capacity and of it down over `[from_ms, to_ms)`: every node berthd
/// knows counts for the whole window, minus nothing; its down events add to the down
/// part. Returns `(cpu_capacity, gpu_capacity, cpu_down, gpu_down)` in unit-seconds.
pub fn capacity(
    nodes: &[pb::Node],
    events: &[pb::NodeEvent],
    from_ms: u64,
    to_ms: u64,
    now_ms: u64,
) -> (f64, f64, f64, f64) {
    let window_s = to_ms.min(now_ms).saturating_sub(from_ms) as f64 / 1000.0;
    let (mut cpu, mut gpu) = (0.0, 0.0);
    for n in nodes {
        let inv = n.inventory.clone().unwrap_or_default();
        cpu += f64::from(inv.cpus) * window_s;
        gpu += inv.gpus.len() as f64 * window_s;
    }
    let (mut cpu_down, mut gpu_down) = (0.0, 0.0);
    for e in events {
        let end = if e.end_time_ms == 0 {
            now_ms
        } else {
            e.end_time_ms
        };
        let s = end.min(to_ms).saturating_sub(e.start_time_ms.max(from_ms)) as f64 / 1000.0;
        cpu_down += f64::from(e.cpus) * s;
        gpu_down += f64::from(e.gpus) * s;
    }
    (cpu, gpu, cpu_down.min(cpu), gpu_down.min(gpu))
}
