//! `sreport`: Slurm's usage reports from berthd's accounting records — `cluster
//! Utilization`, `cluster AccountUtilizationByUser` and `user TopUsage` — with Slurm
//! 22.05's options (`-t`, `-T/--tres`, `-n`, `-p`, `-P`), parameters (`start=`, `end=`,
//! `accounts=`, `users=`, `TopCount=`, `group`), time rounding, title block, column
//! names, widths and number formats (checked against real Slurm's output in the tests).
//!
//! Where Slurm prints an error and carries on with a default (a bad time, an unknown
//! `-t`), berth stops with the same message and exit status 1: a report over a window
//! nobody asked for is worse than none.

use crate::slurm_time;
use berth_proto::v1 as pb;
use std::collections::BTreeMap;

/// How usage is printed (`-t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// Seconds.
    Seconds,
    /// Minutes (the default).
    Minutes,
    /// Hours.
    Hours,
    /// Percentage of the total.
    Percent,
}

impl TimeFormat {
    fn parse(text: &str) -> Result<TimeFormat, String> {
        let t = text.to_ascii_lowercase();
        let is = |full: &str| !t.is_empty() && full.starts_with(&t);
        Ok(match () {
            _ if is("seconds") => TimeFormat::Seconds,
            _ if is("minutes") => TimeFormat::Minutes,
            _ if is("hours") => TimeFormat::Hours,
            _ if is("percent") => TimeFormat::Percent,
            _ => return Err(format!("unknown time format {text}")),
        })
    }

    fn unit(self) -> &'static str {
        match self {
            TimeFormat::Seconds => "Seconds",
            TimeFormat::Minutes => "Minutes",
            TimeFormat::Hours => "Hours",
            TimeFormat::Percent => "Percentage of Total",
        }
    }

    /// `value` seconds as sreport prints them (`%.0lf` of minutes/hours, `%.2lf%%`).
    pub fn format(self, value: f64, total: f64) -> String {
        match self {
            TimeFormat::Seconds => format!("{:.0}", value.floor()),
            TimeFormat::Minutes => format!("{:.0}", value.floor() / 60.0),
            TimeFormat::Hours => format!("{:.0}", value.floor() / 3600.0),
            TimeFormat::Percent => {
                let total = if total > 0.0 { total } else { 1.0 };
                format!("{:.2}%", 100.0 * value.floor() / total)
            }
        }
    }
}

/// A trackable resource a report is about (`--tres`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tres {
    /// `cpu` (the default).
    Cpu,
    /// `gres/gpu`: GPU-equivalents (a MIG slice or a fraction counts its part).
    Gpu,
}

impl Tres {
    fn name(self) -> &'static str {
        match self {
            Tres::Cpu => "cpu",
            Tres::Gpu => "gres/gpu",
        }
    }

    fn used(self, row: &pb::UsageRow) -> f64 {
        match self {
            Tres::Cpu => row.cpu_seconds,
            Tres::Gpu => row.gpu_seconds,
        }
    }
}

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `cluster Utilization`.
    Utilization,
    /// `cluster AccountUtilizationByUser`.
    AccountByUser,
    /// `user TopUsage`.
    TopUsage,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Which report.
    pub report: Report,
    /// `[start, end)` in Unix seconds, rounded to hours as Slurm rounds them.
    pub start: i64,
    /// End of the window (exclusive).
    pub end: i64,
    /// `-t`.
    pub time: TimeFormat,
    /// `--tres`, `None` when not given (Slurm then says "CPU" instead of "TRES").
    pub tres: Option<Vec<Tres>>,
    /// `None`: columns; `Some(trailing)` for `-p` (true) / `-P` (false).
    pub parsable: Option<bool>,
    /// `-n`: no title block and no header.
    pub noheader: bool,
    /// `accounts=`.
    pub accounts: Vec<String>,
    /// `users=`.
    pub users: Vec<String>,
    /// `TopCount=` (default 10).
    pub top_count: usize,
    /// `group`: one TopUsage row per user, accounts joined.
    pub group: bool,
}

/// `sreport --help`.
pub const USAGE: &str = "Usage: sreport [-n] [-p|-P] [-t seconds|minutes|hours|percent] [-T TRES] COMMAND REPORT [PARAMS]
  cluster Utilization              [start=TIME] [end=TIME]
  cluster AccountUtilizationByUser [start=TIME] [end=TIME] [accounts=LIST] [users=LIST]
  user TopUsage                    [start=TIME] [end=TIME] [accounts=LIST] [users=LIST] [TopCount=N] [group]
TRES: cpu (default), gres/gpu. Times: Slurm's formats (sacct -S); the default window is yesterday.";

/// `value` matches `full` as sreport matches words: a case-insensitive prefix at least
/// `min` long.
fn word(value: &str, full: &str, min: usize) -> bool {
    value.len() >= min.min(full.len())
        && value.len() <= full.len()
        && full[..value.len()].eq_ignore_ascii_case(value)
}

/// Takes the options out of `args` (anywhere, as getopt permutes them) into `r`;
/// returns the words left (command, report, parameters).
fn options(args: &[String], r: &mut Request) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if !a.starts_with('-') {
            words.push(a.to_string());
            i += 1;
            continue;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("option {flag} needs a value"))
        };
        match flag {
            "-n" | "--noheader" => r.noheader = true,
            "-p" | "--parsable" => r.parsable = Some(true),
            "-P" | "--parsable2" => r.parsable = Some(false),
            "-t" | "--time" => r.time = TimeFormat::parse(&value()?)?,
            "-T" | "--tres" => r.tres = Some(parse_tres(&value()?)?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("sreport: unrecognized option '{other}'\n{USAGE}")),
        }
        i += 1;
    }
    Ok(words)
}

fn parse_tres(text: &str) -> Result<Vec<Tres>, String> {
    let mut out = Vec::new();
    for t in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match t.to_ascii_lowercase().as_str() {
            "cpu" => out.push(Tres::Cpu),
            "gres/gpu" | "gpu" => out.push(Tres::Gpu),
            _ => {
                return Err(format!(
                    "sreport: fatal: No valid TRES given ({t}: berth reports cpu and gres/gpu)"
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("sreport: fatal: No valid TRES given".into());
    }
    Ok(out)
}

/// Parses `sreport [OPTIONS] COMMAND REPORT [PARAMS]`; `now` is local time.
///
/// # Errors
/// Slurm's messages (an unknown keyword, report, time or TRES), plus a window that ends
/// before it starts, which Slurm silently turns into an hour.
pub fn parse_args(args: &[String], now: chrono::NaiveDateTime) -> Result<Request, String> {
    let mut r = Request {
        report: Report::Utilization,
        start: 0,
        end: 0,
        time: TimeFormat::Minutes,
        tres: None,
        parsable: None,
        noheader: false,
        accounts: vec![],
        users: vec![],
        top_count: 10,
        group: false,
    };
    let args = options(args, &mut r)?;
    let i = 0;
    let (cmd, report) = match (args.get(i), args.get(i + 1)) {
        (Some(c), Some(rep)) => (c.as_str(), rep.as_str()),
        (Some(c), None) => return Err(format!("sreport: no report given after {c}\n{USAGE}")),
        _ => return Err(USAGE.to_string()),
    };
    r.report = if word(cmd, "cluster", 2) {
        if word(report, "Utilization", 2) {
            Report::Utilization
        } else if word(report, "AccountUtilizationByUser", 1) {
            Report::AccountByUser
        } else {
            return Err(format!("Not valid report {report}\nValid cluster reports are, \"AccountUtilizationByUser\", \"Utilization\" (berth has these two)"));
        }
    } else if word(cmd, "user", 1) {
        if word(report, "TopUsage", 1) {
            Report::TopUsage
        } else {
            return Err(format!(
                "Not valid report {report}\nValid user reports are, \"TopUsage\""
            ));
        }
    } else {
        return Err(format!("invalid keyword: {cmd}"));
    };
    let (start, end) = params(&args[i + 2..], &mut r, now)?;
    (r.start, r.end) = window(start, end, now)?;
    Ok(r)
}

fn params(
    args: &[String],
    r: &mut Request,
    now: chrono::NaiveDateTime,
) -> Result<(Option<i64>, Option<i64>), String> {
    let (mut start, mut end) = (None, None);
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    for a in args {
        let (key, value) = a.split_once('=').unwrap_or((a.as_str(), ""));
        let time = |v: &str| slurm_time::parse(v, now).map_err(|e| e.to_string());
        match key {
            k if word(k, "start", 1) => start = Some(time(value)?),
            k if word(k, "end", 1) => end = Some(time(value)?),
            k if word(k, "accounts", 2) || word(k, "acct", 4) => r.accounts = list(value),
            k if word(k, "users", 1) => r.users = list(value),
            k if word(k, "topcount", 1) && r.report == Report::TopUsage => {
                r.top_count = value
                    .parse()
                    .map_err(|_| format!("Invalid value for TopCount ({value})"))?
            }
            k if word(k, "group", 1) && value.is_empty() && r.report == Report::TopUsage => {
                r.group = true
            }
            k if word(k, "clusters", 1) => {
                if !list(value).iter().all(|c| c == "berth") {
                    return Err(format!(
                        "berth has one cluster, \"berth\" (asked for {value})"
                    ));
                }
            }
            _ => return Err(format!(" Unknown condition: {a}")),
        }
    }
    Ok((start, end))
}

/// Slurm's window rules (`slurmdb_report_set_start_end_time`): the default is yesterday;
/// given times round to the nearest minute, then to the hour (30 minutes or more round
/// up); the end never passes now; a window under an hour becomes one hour.
///
/// # Errors
/// A window that ends before it starts.
pub fn window(
    start: Option<i64>,
    end: Option<i64>,
    now: chrono::NaiveDateTime,
) -> Result<(i64, i64), String> {
    let now_s = slurm_time::parse("now", now).map_err(|e| e.to_string())?;
    let midnight = slurm_time::parse("midnight", now).map_err(|e| e.to_string())?;
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(format!(
                "sreport: error: start time ({}) is after end time ({})",
                slurm_time::format_ts(s),
                slurm_time::format_ts(e)
            ));
        }
    }
    let round = |t: i64| {
        let t = t + 30; // seconds round to the minute
        let t = t - t.rem_euclid(60);
        let min = (t.rem_euclid(3600)) / 60;
        let base = t - t.rem_euclid(3600);
        if min >= 30 {
            base + 3600
        } else {
            base
        }
    };
    let end = end.map_or(midnight, |e| round(e.min(now_s)));
    let start = start.map_or(midnight - 86_400, round);
    let end = if end - start < 3600 {
        start + 3600
    } else {
        end
    };
    Ok((start, end))
}

/// One printed column: its name and width (positive: right-justified, as sreport's).
struct Col {
    name: &'static str,
    width: usize,
}

fn col(name: &'static str, width: usize) -> Col {
    Col { name, width }
}

/// sreport's usage column width: 8, one more per decimal digit past 10^8 of the largest
/// usage in seconds (`sreport_set_usage_col_width`).
pub fn usage_width(max_seconds: f64) -> usize {
    let mut width = 8;
    let mut order = 100_000_000f64;
    while max_seconds >= order && width < 26 {
        width += 1;
        order *= 10.0;
    }
    width
}

/// Rows under the header, cut to their widths without a mark, or `|`-separated.
fn table(r: &Request, cols: &[Col], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let line = |cells: &[String]| -> String {
        let mut l = String::new();
        for (i, (c, v)) in cols.iter().zip(cells).enumerate() {
            match r.parsable {
                Some(trailing) => {
                    l.push_str(v);
                    if trailing || i + 1 < cols.len() {
                        l.push('|');
                    }
                }
                None => {
                    let v: String = v.chars().take(c.width).collect();
                    l.push_str(&format!("{v:>w$} ", w = c.width));
                }
            }
        }
        l.push('\n');
        l
    };
    if !r.noheader {
        let names: Vec<String> = cols.iter().map(|c| c.name.to_string()).collect();
        out.push_str(&line(&names));
        if r.parsable.is_none() {
            let dashes: Vec<String> = cols.iter().map(|c| "-".repeat(c.width)).collect();
            out.push_str(&line(&dashes));
        }
    }
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// The title block: a rule, the title, the unit, a rule.
fn title(r: &Request, what: &str, with_secs: bool) -> String {
    if r.noheader {
        return String::new();
    }
    let rule = "-".repeat(80);
    let span = format!(
        "{} - {}",
        slurm_time::format_ts(r.start),
        slurm_time::format_ts(r.end - 1)
    );
    let secs = if with_secs {
        format!(" ({} secs)", r.end - r.start)
    } else {
        String::new()
    };
    let unit = match r.time {
        TimeFormat::Percent => r.time.unit().to_string(),
        t => format!(
            "{} {}",
            if r.tres.is_some() { "TRES" } else { "CPU" },
            t.unit()
        ),
    };
    format!("{rule}\n{what} {span}{secs}\nUsage reported in {unit}\n{rule}\n")
}

fn tres_list(r: &Request) -> Vec<Tres> {
    r.tres.clone().unwrap_or_else(|| vec![Tres::Cpu])
}

/// `cluster Utilization`: per TRES, allocated, down, planned down (berth plans none),
/// idle, planned and reported (the capacity of the nodes berth knows).
pub fn render_utilization(r: &Request, u: &pb::UsageReport) -> String {
    let cpu: f64 = u.rows.iter().map(|x| x.cpu_seconds).sum();
    let gpu: f64 = u.rows.iter().map(|x| x.gpu_seconds).sum();
    let mut rows = Vec::new();
    let mut widest = 0f64;
    for t in tres_list(r) {
        let (cap, down, alloc, plan) = match t {
            Tres::Cpu => (
                u.cpu_capacity_seconds,
                u.cpu_down_seconds,
                cpu,
                u.cpu_planned_seconds,
            ),
            Tres::Gpu => (
                u.gpu_capacity_seconds,
                u.gpu_down_seconds,
                gpu,
                u.gpu_planned_seconds,
            ),
        };
        // Each part is capped by what is left of the capacity, so the parts add up.
        let down = down.min(cap);
        let alloc = alloc.min(cap - down);
        let plan = plan.min(cap - down - alloc);
        let idle = cap - down - alloc - plan;
        widest = widest.max(cap);
        let f = |v: f64| r.time.format(v, cap);
        let mut row = vec![u.cluster.clone()];
        if r.tres.is_some() {
            row.push(t.name().to_string());
        }
        // Reported as a percentage is of the time the nodes existed, which is the
        // whole window for the nodes berth reports.
        row.extend([f(alloc), f(down), f(0.0), f(idle), f(plan), f(cap)]);
        rows.push(row);
    }
    let w = usage_width(widest);
    let mut cols = vec![col("Cluster", 9)];
    if r.tres.is_some() {
        cols.push(col("TRES Name", 14));
    }
    for name in [
        "Allocated",
        "Down",
        "PLND Down",
        "Idle",
        "Planned",
        "Reported",
    ] {
        cols.push(col(name, w));
    }
    let mut out = title(r, "Cluster Utilization", false);
    out.push_str(&table(r, &cols, &rows));
    out
}

/// The first field of a user's GECOS (sreport's Proper Name), empty when unknown.
pub fn proper_name(login: &str) -> String {
    nix::unistd::User::from_name(login)
        .ok()
        .flatten()
        .and_then(|u| u.gecos.to_str().ok().map(str::to_string))
        .map(|g| g.split(',').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Every account's subtree (itself and its descendants), from the parent links.
fn subtrees(accounts: &[pb::UsageAccount]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in accounts {
        // Walk up from `a`, adding it to every ancestor (bounded by the tree's size).
        let mut cur = Some(a.name.clone());
        for _ in 0..=accounts.len() {
            let Some(name) = cur else { break };
            out.entry(name.clone()).or_default().push(a.name.clone());
            cur = accounts
                .iter()
                .find(|x| x.name == name)
                .map(|x| x.parent.clone())
                .filter(|p| !p.is_empty());
        }
    }
    out
}

/// `cluster AccountUtilizationByUser`: each account (its whole subtree's use), then its
/// users, in tree order; accounts nothing ran under are left out, as Slurm leaves out
/// associations without usage.
pub fn render_account_by_user(r: &Request, u: &pb::UsageReport) -> String {
    let trees = subtrees(&u.accounts);
    let tres = tres_list(r);
    let t0 = tres[0];
    let total = match t0 {
        Tres::Cpu => u.cpu_capacity_seconds,
        Tres::Gpu => u.gpu_capacity_seconds,
    };
    let mut lines: Vec<(String, String, Vec<f64>)> = Vec::new();
    for a in &u.accounts {
        if !r.accounts.is_empty() && !r.accounts.iter().any(|x| x.eq_ignore_ascii_case(&a.name)) {
            continue;
        }
        let inside = trees.get(&a.name).cloned().unwrap_or_default();
        let mine: Vec<&pb::UsageRow> = u
            .rows
            .iter()
            .filter(|x| inside.contains(&x.account))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let sum = |t: Tres| mine.iter().map(|x| t.used(x)).sum::<f64>();
        lines.push((
            a.name.clone(),
            String::new(),
            tres.iter().map(|t| sum(*t)).collect(),
        ));
        let mut users: Vec<&pb::UsageRow> = u.rows.iter().filter(|x| x.account == a.name).collect();
        users.sort_by(|x, y| x.user.cmp(&y.user));
        for x in users {
            lines.push((
                a.name.clone(),
                x.user.clone(),
                tres.iter().map(|t| t.used(x)).collect(),
            ));
        }
    }
    let widest = lines.first().map_or(0.0, |l| l.2[0]);
    let w = usage_width(widest);
    let mut cols = vec![
        col("Cluster", 9),
        col("Account", 15),
        col("Login", 9),
        col("Proper Name", 15),
    ];
    let mut rows = Vec::new();
    for (account, user, used) in &lines {
        for (t, v) in tres.iter().zip(used) {
            let mut row = vec![
                u.cluster.clone(),
                account.clone(),
                user.clone(),
                proper_name_of(user),
            ];
            if r.tres.is_some() {
                row.push(t.name().to_string());
            }
            let total_t = if *t == t0 { total } else { capacity_of(u, *t) };
            row.push(r.time.format(*v, total_t));
            if r.tres.is_none() {
                row.push(r.time.format(0.0, 0.0)); // berth measures no energy
            }
            rows.push(row);
        }
    }
    push_usage_cols(r, &mut cols, w);
    let mut out = title(r, "Cluster/Account/User Utilization", true);
    out.push_str(&table(r, &cols, &rows));
    out
}

fn capacity_of(u: &pb::UsageReport, t: Tres) -> f64 {
    match t {
        Tres::Cpu => u.cpu_capacity_seconds,
        Tres::Gpu => u.gpu_capacity_seconds,
    }
}

fn proper_name_of(user: &str) -> String {
    if user.is_empty() {
        String::new()
    } else {
        proper_name(user)
    }
}

fn push_usage_cols(r: &Request, cols: &mut Vec<Col>, w: usize) {
    if r.tres.is_some() {
        cols.push(col("TRES Name", 14));
        cols.push(col("Used", w));
    } else {
        cols.push(col("Used", w));
        cols.push(col("Energy", 8));
    }
}

/// `user TopUsage`: the `TopCount` biggest (user, account) pairs by the first TRES, or
/// per user with `group` (accounts joined by ", ").
pub fn render_top_usage(r: &Request, u: &pb::UsageReport) -> String {
    let tres = tres_list(r);
    let mut pairs: Vec<(String, String, Vec<f64>)> = Vec::new();
    for x in &u.rows {
        if !r.accounts.is_empty()
            && !r
                .accounts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&x.account))
        {
            continue;
        }
        let used: Vec<f64> = tres.iter().map(|t| t.used(x)).collect();
        match pairs.iter_mut().find(|p| r.group && p.0 == x.user) {
            Some(p) => {
                let mut accts: Vec<&str> = p.1.split(", ").chain([x.account.as_str()]).collect();
                accts.sort();
                accts.dedup();
                p.1 = accts.join(", ");
                p.2.iter_mut().zip(&used).for_each(|(a, b)| *a += b);
            }
            None => pairs.push((x.user.clone(), x.account.clone(), used)),
        }
    }
    pairs.sort_by(|a, b| {
        b.2[0]
            .total_cmp(&a.2[0])
            .then(a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
    });
    pairs.truncate(r.top_count);
    let w = usage_width(pairs.first().map_or(0.0, |p| p.2[0]));
    let mut cols = vec![
        col("Cluster", 9),
        col("Login", 9),
        col("Proper Name", 15),
        col("Account", 15),
    ];
    let mut rows = Vec::new();
    for (user, account, used) in &pairs {
        for (t, v) in tres.iter().zip(used) {
            let mut row = vec![
                u.cluster.clone(),
                user.clone(),
                proper_name_of(user),
                account.clone(),
            ];
            if r.tres.is_some() {
                row.push(t.name().to_string());
            }
            row.push(r.time.format(*v, capacity_of(u, *t)));
            if r.tres.is_none() {
                row.push(r.time.format(0.0, 0.0));
            }
            rows.push(row);
        }
    }
    push_usage_cols(r, &mut cols, w);
    let mut out = title(r, &format!("Top {} Users", r.top_count), true);
    out.push_str(&table(r, &cols, &rows));
    out
}

/// The usage query a report needs.
pub fn query(r: &Request) -> pb::UsageQuery {
    pb::UsageQuery {
        start_ms: r.start as u64 * 1000,
        end_ms: r.end as u64 * 1000,
        by: "account-user".into(),
        users: r.users.clone(),
        accounts: vec![],
    }
}

/// The report's text.
pub fn render(r: &Request, u: &pb::UsageReport) -> String {
    match r.report {
        Report::Utilization => render_utilization(r, u),
        Report::AccountByUser => render_account_by_user(r, u),
        Report::TopUsage => render_top_usage(r, u),
    }
}

/// `sreport ARGS`: parse, ask berthd, print.
///
/// # Errors
/// Connection and server errors.
pub async fn run(args: Vec<String>) -> anyhow::Result<i32> {
    let r = match parse_args(&args, slurm_time::now_local()) {
        Ok(r) => r,
        Err(e) if e == USAGE && args.iter().any(|a| a == "-h" || a == "--help") => {
            println!("{e}");
            return Ok(0);
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(1);
        }
    };
    let channel = crate::client::connect(&crate::client::servers(None)).await?;
    let report = crate::client::accounting(channel)
        .usage(query(&r))
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if !report.store_error.is_empty() {
        eprintln!("sreport: error: {}", report.store_error);
        return Ok(1);
    }
    print!("{}", render(&r, &report));
    Ok(0)
}

#[cfg(test)]
#[path = "sreport_tests.rs"]
mod tests;
