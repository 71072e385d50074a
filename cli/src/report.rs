//! `berth report usage`: chargeback per tenant — GPU-hours allocated against GPU-hours
//! the agents measured busy, MIG slice-hours, CPU-hours and their cost from the price
//! table in the accounts file, grouped by account, user, partition or GPU type, as a
//! table, CSV or JSON.
//!
//! ```text
//! berth report usage --by account --since 2026-11-01 [--until now] [--csv|--json]
//! ```

use crate::slurm_time;
use berth_proto::v1 as pb;
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "berth report usage",
    about = "GPU-hours allocated and busy, and cost, per group"
)]
struct Args {
    /// Group rows by account, user, partition or gpu-type.
    #[arg(long, default_value = "account")]
    by: String,
    /// Window start, in Slurm's time formats (default: 30 days ago).
    #[arg(long, default_value = "now-30days")]
    since: String,
    /// Window end (default: now).
    #[arg(long, default_value = "now")]
    until: String,
    /// Only these accounts (comma-separated).
    #[arg(short = 'A', long = "accounts", value_delimiter = ',')]
    accounts: Vec<String>,
    /// Only these users (comma-separated).
    #[arg(short = 'u', long = "users", value_delimiter = ',')]
    users: Vec<String>,
    /// Comma-separated values with a header line.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns with a total line.
    Table,
    /// CSV.
    Csv,
    /// JSON.
    Json,
}

/// A parsed `report usage` command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What berthd is asked.
    pub query: pb::UsageQuery,
    /// How to print.
    pub output: Output,
}

const GROUPS: &[&str] = &["account", "user", "partition", "gpu-type"];

/// Parses `report usage ARGS` (`args` after `report`); `now` is local time.
///
/// # Errors
/// A message for an unknown subcommand, grouping or option, a bad time, or a window
/// that ends before it starts.
pub fn parse_args(args: &[String], now: chrono::NaiveDateTime) -> Result<Request, String> {
    match args.first().map(String::as_str) {
        Some("usage") => {}
        Some(other) => return Err(format!("unknown report {other:?}: berth report usage …")),
        None => return Err(
            "berth report usage --by account|user|partition|gpu-type --since TIME [--csv|--json]"
                .into(),
        ),
    }
    let a =
        Args::try_parse_from(std::iter::once("usage".to_string()).chain(args[1..].iter().cloned()))
            .map_err(|e| e.render().to_string().trim_end().to_string())?;
    if !GROUPS.contains(&a.by.as_str()) {
        return Err(format!(
            "invalid --by {:?}: expected account, user, partition or gpu-type",
            a.by
        ));
    }
    let time =
        |what: &str, t: &str| slurm_time::parse(t, now).map_err(|e| format!("--{what}: {e}"));
    let (since, until) = (time("since", &a.since)?, time("until", &a.until)?);
    if until < since {
        return Err(format!(
            "--until {} is before --since {}",
            slurm_time::format_ts(until),
            slurm_time::format_ts(since)
        ));
    }
    Ok(Request {
        query: pb::UsageQuery {
            start_ms: since.max(0) as u64 * 1000,
            end_ms: until.max(0) as u64 * 1000,
            by: a.by,
            users: a.users,
            accounts: a.accounts,
        },
        output: if a.csv {
            Output::Csv
        } else if a.json {
            Output::Json
        } else {
            Output::Table
        },
    })
}

fn hours(s: f64) -> f64 {
    s / 3600.0
}

fn busy_percent(r: &pb::UsageRow) -> f64 {
    if r.gpu_seconds > 0.0 {
        100.0 * r.gpu_busy_seconds / r.gpu_seconds
    } else {
        0.0
    }
}

/// The sum of `rows` (key "TOTAL").
pub fn total(rows: &[pb::UsageRow]) -> pb::UsageRow {
    let mut t = pb::UsageRow {
        key: "TOTAL".into(),
        ..Default::default()
    };
    for r in rows {
        t.cpu_seconds += r.cpu_seconds;
        t.gpu_seconds += r.gpu_seconds;
        t.gpu_busy_seconds += r.gpu_busy_seconds;
        t.mig_slice_seconds += r.mig_slice_seconds;
        t.jobs += r.jobs;
        t.cost += r.cost;
    }
    t
}

fn cells(r: &pb::UsageRow) -> [String; 8] {
    [
        r.key.clone(),
        r.jobs.to_string(),
        format!("{:.2}", hours(r.gpu_seconds)),
        format!("{:.2}", hours(r.gpu_busy_seconds)),
        format!("{:.1}", busy_percent(r)),
        format!("{:.2}", hours(r.mig_slice_seconds)),
        format!("{:.2}", hours(r.cpu_seconds)),
        format!("{:.2}", r.cost),
    ]
}

/// The report as `output` asks.
pub fn render(q: &pb::UsageQuery, u: &pb::UsageReport, output: Output) -> String {
    let head = [
        q.by.to_ascii_uppercase(),
        "JOBS".into(),
        "GPU_HOURS".into(),
        "GPU_BUSY_HOURS".into(),
        "BUSY_%".into(),
        "MIG_SLICE_HOURS".into(),
        "CPU_HOURS".into(),
        format!("COST_{}", u.currency),
    ];
    let t = total(&u.rows);
    match output {
        Output::Csv => {
            let mut out = "key,jobs,gpu_hours,gpu_busy_hours,busy_percent,mig_slice_hours,cpu_hours,cost,currency\n".to_string();
            for r in &u.rows {
                let c = cells(r);
                let key = if c[0].contains([',', '"']) {
                    format!("\"{}\"", c[0].replace('"', "\"\""))
                } else {
                    c[0].clone()
                };
                out.push_str(&format!("{key},{},{}\n", c[1..].join(","), u.currency));
            }
            out
        }
        Output::Json => {
            let row = |r: &pb::UsageRow| {
                json!({
                    "key": r.key, "jobs": r.jobs,
                    "gpu_hours": hours(r.gpu_seconds),
                    "gpu_busy_hours": hours(r.gpu_busy_seconds),
                    "busy_percent": busy_percent(r),
                    "mig_slice_hours": hours(r.mig_slice_seconds),
                    "cpu_hours": hours(r.cpu_seconds),
                    "cost": r.cost,
                })
            };
            let doc = json!({
                "by": q.by,
                "since": slurm_time::format_ts((q.start_ms / 1000) as i64),
                "until": slurm_time::format_ts((q.end_ms / 1000) as i64),
                "currency": u.currency,
                "rows": u.rows.iter().map(row).collect::<Vec<_>>(),
                "total": row(&t),
            });
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
        }
        Output::Table => {
            let mut rows: Vec<[String; 8]> = vec![head];
            rows.extend(u.rows.iter().map(cells));
            rows.push(cells(&t));
            let widths: Vec<usize> = (0..8)
                .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            let mut out = String::new();
            for r in &rows {
                let mut line = format!("{:<w$}", r[0], w = widths[0]);
                for i in 1..8 {
                    line.push_str(&format!("  {:>w$}", r[i], w = widths[i]));
                }
                out.push_str(line.trim_end());
                out.push('\n');
            }
            out
        }
    }
}

/// `berth report ARGS`.
///
/// # Errors
/// Connection and server errors.
pub async fn run(args: Vec<String>) -> anyhow::Result<i32> {
    let r = match parse_args(&args, slurm_time::now_local()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("report: error: {e}");
            return Ok(1);
        }
    };
    let channel = crate::client::connect(&crate::client::servers(None)).await?;
    let u = crate::client::accounting(channel)
        .usage(r.query.clone())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    print!("{}", render(&r.query, &u, r.output));
    if !u.store_error.is_empty() {
        eprintln!(
            "report: error: {} (rows cover only the jobs berthd holds)",
            u.store_error
        );
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 12, 6)
            .and_then(|d| d.and_hms_opt(12, 0, 0))
            .expect("valid")
    }

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("usage --by team", "invalid --by \"team\""),
            (
                "usage --since 2026-13-01",
                "--since: Invalid time specification (pos=5)",
            ),
            ("usage --until soon", "--until: Invalid time specification"),
            (
                "usage --since 2026-12-05 --until 2026-12-01",
                "is before --since",
            ),
            ("usage --csv --json", "cannot be used with"),
            ("usage --bogus", "unexpected argument '--bogus'"),
            ("costs", "unknown report \"costs\""),
        ];
        for (i, (a, want)) in cases.iter().enumerate() {
            match parse_args(&args(a), now()) {
                Err(e) => assert!(e.contains(want), "#{i} {a}: want {want:?}, got {e:?}"),
                Ok(r) => panic!("#{i} {a}: want an error, got {r:?}"),
            }
        }
    }

    #[test]
    fn window_grouping_and_output_follow_the_flags() {
        let r = parse_args(
            &args("usage --by gpu-type --since 2026-12-01 --csv -A a,b"),
            now(),
        )
        .expect("valid");
        assert_eq!(r.query.by, "gpu-type");
        assert_eq!(r.output, Output::Csv);
        assert_eq!(r.query.accounts, vec!["a".to_string(), "b".into()]);
        let start = slurm_time::parse("2026-12-01", now()).expect("valid");
        assert_eq!(r.query.start_ms, start as u64 * 1000);
        assert_eq!(
            r.query.end_ms,
            slurm_time::parse("now", now()).expect("now") as u64 * 1000
        );
    }

    fn report() -> pb::UsageReport {
        pb::UsageReport {
            rows: vec![
                pb::UsageRow {
                    key: "physics".into(),
                    jobs: 3,
                    gpu_seconds: 7200.0,
                    gpu_busy_seconds: 1800.0,
                    cpu_seconds: 36_000.0,
                    cost: 5.5,
                    ..Default::default()
                },
                pb::UsageRow {
                    key: "chem,lab".into(),
                    jobs: 1,
                    mig_slice_seconds: 3600.0,
                    gpu_seconds: 1350.0,
                    cost: 0.35,
                    ..Default::default()
                },
            ],
            currency: "EUR".into(),
            ..Default::default()
        }
    }

    #[test]
    fn table_csv_and_json_carry_the_same_numbers() {
        let q = pb::UsageQuery {
            by: "account".into(),
            ..Default::default()
        };
        let table = render(&q, &report(), Output::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ACCOUNT   JOBS  GPU_HOURS  GPU_BUSY_HOURS  BUSY_%  MIG_SLICE_HOURS  CPU_HOURS  COST_EUR"
        );
        assert_eq!(
            lines[1],
            "physics      3       2.00            0.50    25.0             0.00      10.00      5.50"
        );
        assert!(
            lines[3].starts_with("TOTAL        4       2.38"),
            "{}",
            lines[3]
        );
        let csv = render(&q, &report(), Output::Csv);
        assert_eq!(
            csv.lines().nth(1),
            Some("physics,3,2.00,0.50,25.0,0.00,10.00,5.50,EUR")
        );
        assert_eq!(
            csv.lines().nth(2),
            Some("\"chem,lab\",1,0.38,0.00,0.0,1.00,0.00,0.35,EUR")
        );
        let doc: serde_json::Value =
            serde_json::from_str(&render(&q, &report(), Output::Json)).expect("JSON");
        assert_eq!(doc["rows"][0]["gpu_busy_hours"], 0.5);
        assert_eq!(doc["total"]["jobs"], 4);
        assert_eq!(doc["currency"], "EUR");
    }
}
