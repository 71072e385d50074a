//! `sacct`: job accounting records from berthd (its store, merged with the jobs it still
//! holds), with Slurm's options, default time window, field names, widths and layouts.
//!
//! Parsing ([`parse_args`] → [`Request`]) and printing ([`render`]) are plain functions;
//! [`run`] makes the one gRPC call between them.

use crate::sacct_fields::{self as fields, Field, Line};
use crate::slurm_time;
use berth_proto::v1::{self as pb, JobState};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "sacct", disable_help_flag = true, disable_version_flag = true)]
struct Args {
    #[arg(short = 'a', long = "allusers")]
    allusers: bool,
    #[arg(short = 'A', long = "accounts", value_delimiter = ',')]
    accounts: Vec<String>,
    #[arg(short = 'b', long = "brief")]
    brief: bool,
    #[arg(long = "delimiter")]
    delimiter: Option<String>,
    #[arg(short = 'D', long = "duplicates")]
    duplicates: bool,
    #[arg(short = 'e', long = "helpformat")]
    helpformat: bool,
    #[arg(short = 'E', long = "endtime")]
    endtime: Option<String>,
    #[arg(short = 'g', long = "gid", alias = "group", value_delimiter = ',')]
    groups: Vec<String>,
    #[arg(short = 'h', long = "help")]
    help: bool,
    #[arg(short = 'j', long = "jobs")]
    jobs: Vec<String>,
    #[arg(long = "json")]
    json: bool,
    #[arg(short = 'l', long = "long")]
    long: bool,
    #[arg(short = 'L', long = "allclusters")]
    allclusters: bool,
    #[arg(long = "name", value_delimiter = ',')]
    names: Vec<String>,
    #[arg(short = 'N', long = "nodelist")]
    nodelist: Option<String>,
    #[arg(short = 'n', long = "noheader")]
    noheader: bool,
    #[arg(long = "noconvert")]
    noconvert: bool,
    #[arg(short = 'o', long = "format")]
    format: Vec<String>,
    #[arg(short = 'p', long = "parsable")]
    parsable: bool,
    #[arg(short = 'P', long = "parsable2")]
    parsable2: bool,
    #[arg(short = 'q', long = "qos", value_delimiter = ',')]
    qos: Vec<String>,
    #[arg(short = 'r', long = "partition", value_delimiter = ',')]
    partitions: Vec<String>,
    #[arg(short = 's', long = "state", value_delimiter = ',')]
    states: Vec<String>,
    #[arg(short = 'S', long = "starttime")]
    starttime: Option<String>,
    #[arg(short = 'T', long = "truncate")]
    truncate: bool,
    #[arg(short = 'u', long = "user", alias = "uid", value_delimiter = ',')]
    users: Vec<String>,
    #[arg(short = 'V', long = "version")]
    version: bool,
    #[arg(short = 'X', long = "allocations")]
    allocations: bool,
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Real sacct options berth does not implement: refused by name rather than ignored.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("-c", "--completion"),
    ("-C", "--constraints"),
    ("-f", "--file"),
    ("-F", "--flags"),
    ("-i", "--nnodes"),
    ("-I", "--ncpus"),
    ("-k", "--timelimit-min"),
    ("-K", "--timelimit-max"),
    ("-R", "--reason"),
    ("-W", "--wckeys"),
    ("-x", "--associations"),
    ("-B", "--batch-script"),
    ("-M", "--clusters"),
    ("", "--env-vars"),
    ("", "--federation"),
    ("", "--local"),
    ("", "--units"),
    ("", "--whole-hetjob"),
    ("", "--yaml"),
    ("", "--use-local-uid"),
];

/// One requested job or step: `12`, `12_3`, `12.batch`, `12_3.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSel {
    /// The job id, or the array's job id with `task`.
    pub id: u64,
    /// An array task index.
    pub task: Option<u32>,
    /// A step id (`batch`, `extern`, `0`…).
    pub step: Option<String>,
}

/// What to ask and how to print it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The selection sent to berthd.
    pub query: pb::RecordQuery,
    /// `-j` entries (to pick array tasks and steps from the answer).
    pub jobs: Vec<JobSel>,
    /// Columns.
    pub fields: Vec<Field>,
    /// `None`: aligned columns; `Some((delimiter, trailing))` for `-p`/`-P`.
    pub parsable: Option<(String, bool)>,
    /// Print the header.
    pub header: bool,
    /// Job lines only (`-X`).
    pub allocations: bool,
    /// `--json`.
    pub json: bool,
    /// `-T`: clip start and end to the window.
    pub truncate: bool,
    /// `-g` (numeric gids, or group names).
    pub groups: Vec<String>,
}

/// What the arguments asked for: a query, or something printed without one.
#[derive(Debug)]
pub enum Parsed {
    /// Query berthd and print.
    Query(Box<Request>),
    /// Print this and exit 0 (`--help`, `--helpformat`, `--version`).
    Print(String),
}

/// Parses sacct's command line. `now` is local time; `me` the caller (user name, uid).
///
/// # Errors
/// Slurm's messages: an unknown option or field, a bad job id, state or time, a start
/// after the end.
pub fn parse_args(
    args: &[String],
    now: chrono::NaiveDateTime,
    me: (&str, u32),
) -> Result<Parsed, String> {
    for a in args {
        let name = a.split('=').next().unwrap_or("");
        if let Some((s, l)) = UNSUPPORTED
            .iter()
            .find(|(s, l)| (!s.is_empty() && name == *s) || name == *l)
        {
            let shown = if s.is_empty() {
                l.to_string()
            } else {
                format!("{s}/{l}")
            };
            return Err(format!("option {shown} is not supported by berth yet"));
        }
    }
    let a = Args::try_parse_from(std::iter::once("sacct".to_string()).chain(args.iter().cloned()))
        .map_err(|e| {
            e.render()
                .to_string()
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ")
                .to_string()
        })?;
    if a.help {
        return Ok(Parsed::Print(USAGE.into()));
    }
    if a.version {
        return Ok(Parsed::Print(format!(
            "berth {}",
            env!("CARGO_PKG_VERSION")
        )));
    }
    if a.helpformat {
        return Ok(Parsed::Print(helpformat()));
    }
    let jobs = parse_jobs(&a.jobs)?;
    let states = parse_states(&a.states)?;
    let (start, end) = window(&a, !jobs.is_empty(), !states.is_empty(), now)?;
    let fields = fields::parse_list(&field_list(&a))?;
    let mut users = a.users.clone();
    let everyone = a.allusers || me.1 == 0 || !jobs.is_empty() || a.nodelist.is_some();
    if users.iter().any(|u| u == "-1") {
        users.clear();
    } else if users.is_empty() && !everyone {
        users.push(me.0.to_string());
    }
    let query = pb::RecordQuery {
        job_ids: jobs.iter().map(|j| j.id).collect(),
        array_job_ids: jobs.iter().map(|j| j.id).collect(),
        users,
        accounts: a.accounts.clone(),
        partitions: a.partitions.clone(),
        states: states.iter().map(|s| *s as i32).collect(),
        qos: a.qos.clone(),
        names: a.names.clone(),
        nodes: a
            .nodelist
            .as_deref()
            .map(berth_policies::topology::hostlist::expand)
            .transpose()?
            .unwrap_or_default(),
        window_start_ms: start as u64 * 1000,
        window_end_ms: end as u64 * 1000,
        duplicates: a.duplicates,
        include_ineligible: !jobs.is_empty(),
        limit: 0,
    };
    let parsable = match (a.parsable, a.parsable2) {
        (false, false) => None,
        (p, _) => Some((
            a.delimiter.clone().unwrap_or_else(|| "|".into()),
            p && !a.parsable2,
        )),
    };
    Ok(Parsed::Query(Box::new(Request {
        query,
        jobs,
        fields,
        parsable,
        header: !a.noheader,
        allocations: a.allocations,
        json: a.json,
        truncate: a.truncate,
        groups: a.groups.clone(),
    })))
}

fn field_list(a: &Args) -> String {
    let mut list: Vec<String> = a.format.clone();
    if a.brief {
        list.push(fields::BRIEF_FIELDS.into());
    }
    if a.long {
        list.push(fields::LONG_FIELDS.into());
    }
    if list.is_empty() {
        list.push(std::env::var("SACCT_FORMAT").unwrap_or_else(|_| fields::DEFAULT_FIELDS.into()));
    }
    list.join(",")
}

/// `-j` entries, each a comma-separated list of `JOB[_TASK][.STEP]`.
///
/// # Errors
/// `Bad job/step specified: X` as sacct says it.
pub fn parse_jobs(list: &[String]) -> Result<Vec<JobSel>, String> {
    let mut out = Vec::new();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        // sacct's three messages: the whole item when the job id is bad, else the job
        // part before the bad step or array index.
        let bad = || format!("Bad job/step specified: {item}");
        let (job, step) = match item.split_once('.') {
            Some((j, s)) if s == "batch" || s == "extern" || s.parse::<u32>().is_ok() => {
                (j, Some(s.to_string()))
            }
            Some((j, _)) => {
                let id = j.split('_').next().unwrap_or(j);
                id.parse::<u64>().ok().filter(|i| *i > 0).ok_or_else(bad)?;
                return Err(format!("Bad step specified: {id}"));
            }
            None => (item, None),
        };
        let (id, task) = match job.split_once('_') {
            Some((i, t)) => {
                i.parse::<u64>().ok().filter(|i| *i > 0).ok_or_else(bad)?;
                let task = t
                    .parse::<u32>()
                    .map_err(|_| format!("Bad job array element specified: {i}"))?;
                (i, Some(task))
            }
            None => (job, None),
        };
        let id = id.parse::<u64>().ok().filter(|i| *i > 0).ok_or_else(bad)?;
        out.push(JobSel { id, task, step });
    }
    Ok(out)
}

/// `-s` states, short or long names, any case.
///
/// # Errors
/// `unrecognized job state value 'X'`.
pub fn parse_states(list: &[String]) -> Result<Vec<JobState>, String> {
    list.iter()
        .map(|s| {
            Ok(match s.to_ascii_uppercase().as_str() {
                "PD" | "PENDING" => JobState::Pending,
                "R" | "RUNNING" => JobState::Running,
                "CD" | "COMPLETED" => JobState::Completed,
                "F" | "FAILED" => JobState::Failed,
                "CA" | "CANCELLED" => JobState::Cancelled,
                "TO" | "TIMEOUT" => JobState::Timeout,
                "NF" | "NODE_FAIL" => JobState::NodeFail,
                "OOM" | "OUT_OF_MEMORY" => JobState::OutOfMemory,
                "PR" | "PREEMPTED" => JobState::Preempted,
                "DL" | "DEADLINE" => JobState::Deadline,
                _ => return Err(format!("unrecognized job state value '{s}'")),
            })
        })
        .collect()
}

/// The time window in Unix seconds, with sacct's defaults (DEFAULT TIME WINDOW in sacct(1)).
fn window(
    a: &Args,
    jobs: bool,
    states: bool,
    now: chrono::NaiveDateTime,
) -> Result<(i64, i64), String> {
    let parse = |t: &str| slurm_time::parse(t, now).map_err(|e| e.to_string());
    let now_s = slurm_time::parse("now", now).map_err(|e| e.to_string())?;
    let start = match &a.starttime {
        Some(t) => parse(t)?,
        None if jobs => 0,
        None if states => now_s,
        None => slurm_time::parse("midnight", now).map_err(|e| e.to_string())?,
    };
    let end = match &a.endtime {
        Some(t) => parse(t)?,
        None if states && a.starttime.is_some() => start,
        None => now_s,
    };
    if start > end {
        return Err(format!(
            "Start time ({}) requested is after end time ({}).",
            slurm_time::format_ts(start),
            slurm_time::format_ts(end)
        ));
    }
    Ok((start, end))
}

fn helpformat() -> String {
    let mut out = String::new();
    for (i, (name, _)) in fields::FIELDS.iter().enumerate() {
        if i % 4 != 0 {
            out.push(' ');
        } else if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{name:<19}"));
    }
    out
}

/// The lines of `records` for `req`: each run, then its steps (unless `-X`), keeping
/// only the array tasks and steps `-j` named.
pub fn lines<'a>(records: &'a [pb::JobRecord], req: &Request) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    // Slurm lists an array's tasks together, by task index, where its job ids (given as
    // tasks start) would scatter them.
    let mut ordered: Vec<&pb::JobRecord> = records.iter().collect();
    ordered.sort_by_key(|r| {
        let id = if r.has_array_task {
            r.array_job_id
        } else {
            r.job_id
        };
        (id, r.has_array_task, r.array_task_id, r.run)
    });
    for rec in ordered {
        let sels: Vec<&JobSel> = req
            .jobs
            .iter()
            .filter(|j| {
                j.id == rec.job_id && j.task.is_none()
                    || rec.has_array_task
                        && j.id == rec.array_job_id
                        && j.task.is_none_or(|t| t == rec.array_task_id)
            })
            .collect();
        if !req.jobs.is_empty() && sels.is_empty() {
            continue;
        }
        if !req.groups.is_empty()
            && !req
                .groups
                .iter()
                .any(|g| *g == rec.gid.to_string() || *g == crate::squeue::group_name(rec.gid))
        {
            continue;
        }
        let only_steps: Vec<&str> = sels.iter().filter_map(|j| j.step.as_deref()).collect();
        let whole = sels.is_empty() || sels.iter().any(|j| j.step.is_none());
        if whole {
            out.push(Line { rec, step: None });
        }
        if req.allocations {
            continue;
        }
        for s in &rec.steps {
            if whole || only_steps.contains(&s.step_id.as_str()) {
                out.push(Line { rec, step: Some(s) });
            }
        }
    }
    out
}

/// The text sacct prints for `records` (columns or `-p/-P`); `now_ms` times running jobs.
pub fn render(records: &[pb::JobRecord], req: &Request, now_ms: u64) -> String {
    let mut out = String::new();
    let n = req.fields.len();
    let row = |values: Vec<String>| -> String {
        let mut line = String::new();
        for (i, (v, f)) in values.iter().zip(&req.fields).enumerate() {
            match &req.parsable {
                Some((d, trailing)) => {
                    line.push_str(v);
                    if i + 1 < n || *trailing {
                        line.push_str(d);
                    }
                }
                None => line.push_str(&fields::cell(v, f.width)),
            }
        }
        line.push('\n');
        line
    };
    if req.header {
        // Names are cut to the width without the `+` values get.
        let names = req.fields.iter().map(|f| match &req.parsable {
            Some(_) => f.name.to_string(),
            None => f
                .name
                .chars()
                .take(f.width.unsigned_abs() as usize)
                .collect(),
        });
        out.push_str(&row(names.collect()));
        if req.parsable.is_none() {
            out.push_str(&row(req
                .fields
                .iter()
                .map(|f| "-".repeat(f.width.unsigned_abs() as usize))
                .collect()));
        }
    }
    for line in lines(records, req) {
        let clipped;
        let line = if req.truncate {
            clipped = clip(line.rec, &req.query, now_ms);
            Line {
                rec: &clipped,
                step: line.step,
            }
        } else {
            line
        };
        out.push_str(&row(req
            .fields
            .iter()
            .map(|f| fields::value(f.name, &line, now_ms))
            .collect()));
    }
    out
}

/// `-T`: the run's start and end clipped to the window.
fn clip(r: &pb::JobRecord, q: &pb::RecordQuery, now_ms: u64) -> pb::JobRecord {
    let mut r = r.clone();
    if r.start_time_ms > 0 && r.start_time_ms < q.window_start_ms {
        r.start_time_ms = q.window_start_ms;
    }
    let end = if r.end_time_ms == 0 {
        now_ms
    } else {
        r.end_time_ms
    };
    if q.window_end_ms > 0 && end > q.window_end_ms && r.start_time_ms > 0 {
        r.end_time_ms = q.window_end_ms;
    }
    r
}

/// sacct --help (berth's subset).
pub const USAGE: &str = "Usage: sacct [OPTIONS]
  -a, --allusers        all users' jobs (default for root, and with -j/-N)
  -A, --accounts=LIST   only these accounts
  -b, --brief           JobID, State, ExitCode
      --delimiter=STR   field separator for -p/-P (default '|')
  -D, --duplicates      every run of a requeued job (earlier ones show REQUEUED)
  -e, --helpformat      list the --format fields
  -E, --endtime=TIME    jobs eligible before TIME (Slurm's time formats)
  -g, --gid=LIST        only these groups
  -j, --jobs=LIST       JOB[_TASK][.STEP] (steps: batch, extern, N)
      --json            JSON (Slurm's job keys)
  -l, --long            the long field list
      --name=LIST       only these job names
  -N, --nodelist=HOSTS  jobs that ran on these nodes
  -n, --noheader        no header
  -o, --format=LIST     fields, each NAME[%[-]WIDTH]
  -p, --parsable        '|' separated, with a trailing '|'
  -P, --parsable2       '|' separated, no trailing '|'
  -q, --qos=LIST        only these QOS
  -r, --partition=LIST  only these partitions
  -s, --state=LIST      jobs in these states during the window (PD,R,CD,F,CA,TO,NF,OOM,PR)
  -S, --starttime=TIME  jobs eligible after TIME (default: midnight; epoch with -j; now with -s)
  -T, --truncate        clip start and end to the window
  -u, --user=LIST       only these users (default: you, unless root)
  -X, --allocations     no step lines";

/// `sacct ARGS`: parse, ask berthd, print. Exit status 1 when the store could not be read
/// and the answer may be missing jobs (every `-j` job found in berthd's memory: 0).
///
/// # Errors
/// Connection and server errors.
pub async fn run(args: Vec<String>) -> anyhow::Result<i32> {
    let me = current_user();
    let parsed = match parse_args(&args, slurm_time::now_local(), (&me.0, me.1)) {
        Ok(p) => p,
        Err(e) if e.starts_with("Invalid time") => {
            eprintln!("{e}");
            return Ok(1);
        }
        Err(e) if e.starts_with("Bad ") || e.starts_with("unrecognized job state") => {
            eprintln!("sacct: fatal: {e}");
            return Ok(1);
        }
        Err(e) => {
            eprintln!("sacct: error: {e}");
            return Ok(1);
        }
    };
    let req = match parsed {
        Parsed::Print(text) => {
            println!("{text}");
            return Ok(0);
        }
        Parsed::Query(r) => r,
    };
    let channel = crate::client::connect(&crate::client::servers(None)).await?;
    let list = crate::client::accounting(channel)
        .query(req.query.clone())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let now = crate::now_ms();
    if req.json {
        println!("{}", json::render(&list.records, &req, now));
    } else {
        print!("{}", render(&list.records, &req, now));
    }
    if list.store_error.is_empty() {
        return Ok(0);
    }
    eprintln!("sacct: error: {}", list.store_error);
    let all_found = !req.jobs.is_empty()
        && req.jobs.iter().all(|j| {
            list.records
                .iter()
                .any(|r| r.job_id == j.id || r.array_job_id == j.id)
        });
    Ok(if all_found { 0 } else { 1 })
}

/// The caller's user name and uid (sacct's default `-u`).
pub fn current_user() -> (String, u32) {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    (name, uid.as_raw())
}

pub mod json;

#[cfg(test)]
#[path = "sacct_tests.rs"]
mod tests;
