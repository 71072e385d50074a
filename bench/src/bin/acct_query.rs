//! sacct's common query against a large accounting store: one user's jobs over one month,
//! out of N records (default 1,000,000) spread over a year among U users (default 1,000).
//!
//! Fills the embedded sled store (the default store, under a temp dir) through the same
//! `RecordStore::put` berthd uses, then times the query `sacct -u USER -S START -E END`
//! sends (`RecordQuery { users, window }`), cold (first run) and warm (median of 20).
//!
//! `cargo run --release -p berth-bench --bin acct_query -- [RECORDS] [USERS]`

use berth_proto::v1 as pb;
use berth_scheduler::accounting::{Accounting, AccountingConfig};
use std::time::Instant;

const DAY_MS: u64 = 86_400_000;
const YEAR_START_MS: u64 = 1_764_547_200_000; // 2025-12-01T00:00Z

/// Record `i`: user `i % users`, submitted evenly over the year, ran 1 h after 5 min.
fn record(i: u64, users: u64, records: u64) -> pb::JobRecord {
    let submit = YEAR_START_MS + i * (365 * DAY_MS / records);
    pb::JobRecord {
        job_id: i + 1,
        name: format!("train{}", i % 97),
        user: format!("user{}", i % users),
        uid: 10_000 + (i % users) as u32,
        gid: 10_000,
        account: format!("acct{}", i % 50),
        partition: "gpu".into(),
        qos: "normal".into(),
        submit_time_ms: submit,
        eligible_time_ms: submit,
        start_time_ms: submit + 300_000,
        end_time_ms: submit + 300_000 + 3_600_000,
        state: pb::JobState::Completed as i32,
        nodes: vec![format!("gpu{:03}", i % 128)],
        req: Some(pb::Tres {
            cpus: 16,
            mem_mb: 65_536,
            nodes: 1,
            gpus: 2,
            gpu_type: "h100".into(),
            ..Default::default()
        }),
        alloc: Some(pb::Tres {
            cpus: 16,
            mem_mb: 65_536,
            nodes: 1,
            gpus: 2,
            gpu_type: "h100".into(),
            ..Default::default()
        }),
        gpu_seconds: 7200.0,
        gpu_busy_seconds: 5000.0,
        work_dir: "/home/user/run".into(),
        command: "(wrap)".into(),
        recorded_index: i + 1,
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let users: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let dir = tempfile::tempdir()?;
    let acct = Accounting::open(dir.path(), &AccountingConfig::default())?;
    let store = acct.recorder.store().clone();

    let t = Instant::now();
    let batch = 10_000;
    let mut i = 0;
    while i < records {
        let n = batch.min(records - i);
        let rs: Vec<pb::JobRecord> = (i..i + n).map(|j| record(j, users, records)).collect();
        store.put(&rs)?;
        i += n;
    }
    let fill = t.elapsed();
    println!("filled {records} records ({users} users, one year) in {fill:.1?}");

    // One user, the month of 2026-06.
    let q = pb::RecordQuery {
        users: vec!["user7".into()],
        window_start_ms: YEAR_START_MS + 182 * DAY_MS,
        window_end_ms: YEAR_START_MS + 212 * DAY_MS,
        ..Default::default()
    };
    let t = Instant::now();
    let got = store.query(&q)?;
    let cold = t.elapsed();
    let mut warm = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let n = store.query(&q)?.len();
        warm.push(t.elapsed());
        anyhow::ensure!(n == got.len(), "query answers differ: {n} vs {}", got.len());
    }
    warm.sort();
    let expected = records / users * 30 / 365;
    anyhow::ensure!(
        got.len() as u64 >= expected.saturating_sub(2) && got.len() as u64 <= expected + 2,
        "expected about {expected} records for one user in a month, got {}",
        got.len()
    );
    println!(
        "one user, one month: {} records; cold {cold:.2?}, warm median {:.2?} (max {:.2?})",
        got.len(),
        warm[warm.len() / 2],
        warm[warm.len() - 1]
    );
    Ok(())
}
