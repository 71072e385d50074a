//! The subcommands: argument handling, the gRPC call, and Slurm-shaped output and errors
//! (`sbatch: error: …` on stderr, exit status 1).

use crate::client::{self, status_text};
use crate::opt::job_id::parse_job_list;
use crate::sbatch::{self, submit_context};
use berth_proto::v1::{self as pb, JobState};
use clap::Parser;

/// Names under which the binary behaves as that Slurm tool.
pub const TOOLS: &[&str] = &[
    "sbatch", "squeue", "scancel", "sinfo", "scontrol", "sshare", "sprio", "sacct", "sreport",
    "srun", "salloc",
];

const USAGE: &str = "usage: berth [--server URL[,URL...]] <command> [args]

commands:
  dev        run berthd and simulated GPU nodes in this process (try this first)
  sbatch     submit a batch script
  srun       run a job step's tasks on the allocation's nodes (outside a job: in a new one)
  salloc     get an allocation and run a command (default: your shell) in it
  squeue     list pending and running jobs
  scancel    cancel jobs
  sinfo      list partitions and nodes with their GPUs
  scontrol   show job/node/partition/topology, hold, release, requeue, update NodeName=N Gpu=G State=RESUME,
             update JobId=ID[_TASKS] ArrayTaskThrottle=N TimeLimit=T
  sshare     the fair-share tree: shares, decayed usage, fair-share factors
  sprio      priority factors of pending jobs
  sacct      accounting records of jobs (berthd's job history)
  sreport    cluster Utilization | cluster AccountUtilizationByUser | user TopUsage
  report     usage --by account|user|partition|gpu-type --since TIME [--csv|--json]
  admin      status | members add ID=HOST:PORT | members remove ID  (berthd replicas)
             accounts show | accounts set FILE  (accounts and priority classes)
             ca init DIR | ca issue --ca DIR --node N|--replica ID|--user U --out DIR
             audit [--since T] [--user U]  (the audit log)
  token      a JWT for BERTH_TOKEN: token [--user U] [--lifespan SECS]
  credd      the credential daemon of a login host (proves local users' uids)

The server comes from --server, else BERTH_SERVER, else http://127.0.0.1:7700.";

/// Splits `[--server X] <command> args…`; `--server` is exported as `BERTH_SERVER`.
pub fn split_global(mut args: Vec<String>) -> (String, Vec<String>) {
    loop {
        let Some(first) = args.first().cloned() else {
            return ("help".into(), vec![]);
        };
        if let Some(v) = first.strip_prefix("--server=") {
            std::env::set_var("BERTH_SERVER", v);
            args.remove(0);
        } else if first == "--server" && args.len() >= 2 {
            std::env::set_var("BERTH_SERVER", &args[1]);
            args.drain(..2);
        } else {
            args.remove(0);
            return (first, args);
        }
    }
}

/// Runs `cmd` with `args`; returns the process exit status.
pub async fn run(cmd: &str, args: Vec<String>) -> i32 {
    let result = match cmd {
        "dev" => dev(args).await,
        "sbatch" => sbatch_cmd(args).await,
        "squeue" => squeue(args).await,
        "scancel" => scancel(args).await,
        "sinfo" => sinfo(args).await,
        "scontrol" => crate::scontrol::run(args).await,
        "admin" => admin(args).await,
        "token" => crate::security_cmds::token(args).await,
        "credd" => crate::security_cmds::credd(args).await,
        "sshare" => crate::fairshare::sshare(args).await,
        "sprio" => crate::fairshare::sprio(args).await,
        "sacct" => crate::sacct::run(args).await,
        "sreport" => crate::sreport::run(args).await,
        "report" => crate::report::run(args).await,
        "srun" => crate::srun::run(args).await,
        "salloc" => crate::salloc::run(args).await,
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            return 0;
        }
        "--version" | "-V" | "version" => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        other => Err(anyhow::anyhow!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{cmd}: error: {e:#}");
            1
        }
    }
}

async fn dev(args: Vec<String>) -> anyhow::Result<i32> {
    #[derive(Parser)]
    #[command(
        name = "berth dev",
        about = "berthd plus simulated GPU nodes in one process"
    )]
    struct Dev {
        #[command(flatten)]
        args: crate::dev::DevArgs,
    }
    let parsed = match Dev::try_parse_from(std::iter::once("berth dev".to_string()).chain(args)) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn,sled=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    crate::dev::run(parsed.args).await?;
    Ok(0)
}

async fn sbatch_cmd(args: Vec<String>) -> anyhow::Result<i32> {
    let ctx = submit_context("sbatch")?;
    let mut read_stdin = || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    };
    let submission = match sbatch::parse_submission(&args, &ctx, &mut read_stdin) {
        Ok(s) => s,
        Err(e) if e.is_help() => {
            println!("{}", sbatch::USAGE);
            return Ok(0);
        }
        Err(e) if e.is_version() => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    for w in &submission.warnings {
        eprintln!("sbatch: warning: {w}");
    }
    let servers = client::servers(None);
    let mut spec = submission.spec;
    if let Some(first) = servers.first() {
        let profile = berth_auth::profile::discover(berth_auth::channel::host_port(first));
        if profile.cred_socket.is_none() && profile.token.is_some() {
            // A token names the user; this host's user and ids mean nothing to berthd.
            spec.user.clear();
            spec.uid = 0;
            spec.gid = 0;
        }
    }
    let channel = client::connect(&servers).await?;
    let jobs = client::jobs(channel);
    // An overloaded berthd refuses before proposing anything: resubmitting is safe.
    let resp = client::retried(&jobs, spec.clone(), |mut jobs, spec| async move {
        jobs.submit(pb::SubmitRequest { spec: Some(spec) }).await
    })
    .await
    .map_err(|s| anyhow::anyhow!("Batch job submission failed: {}", status_text(&s)))?;
    let id = resp.into_inner().job_id;
    if submission.parsable {
        println!("{id}");
    } else {
        println!("Submitted batch job {id}");
    }
    Ok(0)
}

fn parse_state(s: &str) -> anyhow::Result<Vec<JobState>> {
    let st = match s.to_ascii_uppercase().as_str() {
        "PD" | "PENDING" => JobState::Pending,
        "R" | "RUNNING" | "CG" | "COMPLETING" => JobState::Running,
        "CD" | "COMPLETED" => JobState::Completed,
        "F" | "FAILED" => JobState::Failed,
        "CA" | "CANCELLED" => JobState::Cancelled,
        "TO" | "TIMEOUT" => JobState::Timeout,
        "NF" | "NODE_FAIL" => JobState::NodeFail,
        "OOM" | "OUT_OF_MEMORY" => JobState::OutOfMemory,
        "PR" | "PREEMPTED" => JobState::Preempted,
        "DL" | "DEADLINE" => JobState::Deadline,
        "ALL" => return Ok(vec![]),
        other => anyhow::bail!("Invalid job state specified: {other}"),
    };
    Ok(vec![st])
}

#[derive(Parser)]
#[command(
    name = "squeue",
    disable_help_flag = true,
    about = "view jobs in the berth queue"
)]
struct SqueueArgs {
    /// Job ids (comma-separated; `12_3` and `12_[1-4]` name array tasks).
    #[arg(short = 'j', long = "jobs")]
    jobs: Vec<String>,
    /// One line per array task, pending ones included (they are folded by default).
    #[arg(short = 'r', long = "array")]
    array: bool,
    /// Users (comma-separated).
    #[arg(short = 'u', long = "user", value_delimiter = ',')]
    users: Vec<String>,
    /// States (comma-separated, e.g. PD,R or all).
    #[arg(short = 't', long = "states", value_delimiter = ',')]
    states: Vec<String>,
    /// Job names (comma-separated).
    #[arg(short = 'n', long = "name", value_delimiter = ',')]
    names: Vec<String>,
    /// No header line.
    #[arg(short = 'h', long = "noheader")]
    noheader: bool,
    /// Output format (Slurm's %-specifiers).
    #[arg(short = 'o', long = "format")]
    format: Option<String>,
    /// Pending jobs with their expected start time (from the last backfill pass).
    #[arg(long)]
    start: bool,
    /// Job steps instead of jobs (of the steps listed, e.g. `12.0,13.1`, when given).
    #[arg(short = 's', long = "steps", num_args = 0..=1, default_missing_value = "", require_equals = false)]
    steps: Option<String>,
    /// Print help (-h means --noheader, as in Slurm).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Parses Slurm-tool arguments with clap, printing help/errors the clap way.
fn parse_tool<P: Parser>(name: &str, args: Vec<String>) -> Result<P, i32> {
    P::try_parse_from(std::iter::once(name.to_string()).chain(args)).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            1
        } else {
            0
        }
    })
}

/// `squeue -s [STEPS]`: the steps of running jobs (of `job_ids` when given), or the steps
/// listed (`12.0,13_2.1`).
async fn squeue_steps(a: &SqueueArgs, list: &str, mut job_ids: Vec<u64>) -> anyhow::Result<i32> {
    let wanted: Vec<crate::step_view::StepRef> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(crate::step_view::parse_step_ref)
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let format = a
        .format
        .clone()
        .unwrap_or_else(|| crate::step_view::STEP_FORMAT.to_string());
    // Check the format before asking the server, so a typo fails fast.
    crate::step_view::render(&[], &format, 0, true)?;
    job_ids.extend(
        wanted
            .iter()
            .filter_map(|w| w.job.split('_').next()?.parse::<u64>().ok()),
    );
    let channel = client::connect(&client::servers(None)).await?;
    let mut jobs =
        crate::job_query::running_jobs(client::jobs(channel), job_ids, a.users.clone()).await?;
    if !wanted.is_empty() {
        for job in &mut jobs {
            let keep: Vec<pb::Step> = job
                .steps
                .iter()
                .filter(|s| wanted.iter().any(|w| crate::step_view::names(w, job, s)))
                .cloned()
                .collect();
            job.steps = keep;
        }
    }
    print!(
        "{}",
        crate::step_view::render(&jobs, &format, crate::now_ms(), !a.noheader)?
    );
    Ok(0)
}

async fn squeue(args: Vec<String>) -> anyhow::Result<i32> {
    let a: SqueueArgs = match parse_tool("squeue", args) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let refs = parse_job_list(&a.jobs).map_err(anyhow::Error::msg)?;
    let mut job_ids: Vec<u64> = refs.iter().map(|r| r.job_id).collect();
    job_ids.dedup();
    if let Some(list) = &a.steps {
        return squeue_steps(&a, list, job_ids).await;
    }
    let mut states = Vec::new();
    let mut all_states = false;
    for s in &a.states {
        let parsed = parse_state(s)?;
        all_states |= parsed.is_empty();
        states.extend(parsed.into_iter().map(|s| s as i32));
    }
    if a.start && states.is_empty() {
        states.push(JobState::Pending as i32);
    }
    let include_finished =
        all_states || !job_ids.is_empty() || states.iter().any(|s| *s > JobState::Running as i32);
    let default_format = if a.start {
        crate::squeue::START_FORMAT
    } else {
        crate::squeue::DEFAULT_FORMAT
    };
    let format = a.format.unwrap_or_else(|| default_format.to_string());
    // Check the format before asking the server, so a typo fails fast.
    crate::squeue::render(&[], &format, 0, true)?;
    let channel = client::connect(&client::servers(None)).await?;
    let req = pb::ListJobsRequest {
        job_ids: job_ids.clone(),
        users: a.users,
        states,
        include_finished,
        brief: true,
    };
    // Pages are printed as they arrive: a queue of 100,000 jobs is never held whole.
    let mut pages = client::jobs(channel)
        .list_pages(req)
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
        .into_inner();
    let now = crate::now_ms();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut header = !a.noheader;
    let mut shown = 0;
    while let Some(page) = pages
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
    {
        if page.jobs.is_empty() && !header {
            continue;
        }
        if page.jobs.is_empty() && !job_ids.is_empty() && shown == 0 {
            // The last (empty) page of ids that match nothing: Slurm prints no header.
            continue;
        }
        shown += page.jobs.len();
        // An id naming tasks that are not there prints no line, as Slurm does.
        let mut jobs = crate::array_view::select(&page.jobs, &refs, a.array);
        if !a.names.is_empty() {
            jobs.retain(|j| {
                a.names
                    .iter()
                    .any(|n| j.spec.as_ref().is_some_and(|s| &s.name == n))
            });
        }
        let text = crate::squeue::render(&jobs, &format, now, header)?;
        header = false;
        std::io::Write::write_all(&mut out, text.as_bytes())?;
    }
    if shown == 0 && !job_ids.is_empty() {
        anyhow::bail!("Invalid job id specified");
    }
    std::io::Write::flush(&mut out)?;
    Ok(0)
}

async fn scancel(args: Vec<String>) -> anyhow::Result<i32> {
    if args.is_empty() {
        anyhow::bail!("No job identification provided");
    }
    if let Some(opt) = args.iter().find(|a| a.starts_with('-')) {
        anyhow::bail!("option {opt} is not supported by berth yet (give job ids)");
    }
    let refs = parse_job_list(&args).map_err(anyhow::Error::msg)?;
    let channel = client::connect(&client::servers(None)).await?;
    let jobs = client::jobs(channel);
    let mut code = 0;
    for r in refs {
        let req = pb::CancelRequest {
            job_id: r.job_id,
            reason: String::new(),
            array_tasks: r.task_ranges(),
            release: None,
        };
        let cancelled =
            client::retried(
                &jobs,
                req,
                |mut jobs, req| async move { jobs.cancel(req).await },
            )
            .await;
        if let Err(s) = cancelled {
            eprintln!(
                "scancel: error: Kill job error on job id {r}: {}",
                status_text(&s)
            );
            code = 1;
        }
    }
    Ok(code)
}

#[derive(Parser)]
#[command(
    name = "sinfo",
    disable_help_flag = true,
    about = "view berth partitions and nodes"
)]
struct SinfoArgs {
    /// One line per node.
    #[arg(short = 'N', long = "Node")]
    node: bool,
    /// No header line.
    #[arg(short = 'h', long = "noheader")]
    noheader: bool,
    /// Output format (Slurm's %-specifiers).
    #[arg(short = 'o', long = "format")]
    format: Option<String>,
    /// Output fields by name (`partition,nodes:.6,statecompact`), 20 wide by default.
    #[arg(short = 'O', long = "Format")]
    fields: Option<String>,
    /// Only these partitions (comma-separated).
    #[arg(short = 'p', long = "partition", value_delimiter = ',')]
    partitions: Vec<String>,
    /// Nodes that are down or drained, with the reason.
    #[arg(short = 'R', long = "list-reasons")]
    reasons: bool,
    /// Print help (-h means --noheader, as in Slurm).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

async fn sinfo(args: Vec<String>) -> anyhow::Result<i32> {
    let a: SinfoArgs = match parse_tool("sinfo", args) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let format = match (&a.fields, a.format) {
        (Some(_), Some(_)) => anyhow::bail!("-o/--format and -O/--Format cannot be combined"),
        (Some(f), None) => Some(crate::sinfo::format_from_fields(f).map_err(anyhow::Error::msg)?),
        (None, f) => f,
    };
    crate::sinfo::render(&[], format.as_deref(), a.node, true)?;
    let channel = client::connect(&client::servers(None)).await?;
    let nodes = client::nodes(channel)
        .list(pb::ListNodesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?;
    let nodes = nodes.into_inner();
    if a.reasons {
        print!(
            "{}",
            crate::sinfo::render_reasons(&nodes.nodes, !a.noheader)
        );
        return Ok(0);
    }
    print!(
        "{}",
        crate::sinfo::render_in(
            &nodes.nodes,
            format.as_deref(),
            a.node,
            !a.noheader,
            &a.partitions,
            &nodes.default_partition,
        )?
    );
    Ok(0)
}

async fn admin(args: Vec<String>) -> anyhow::Result<i32> {
    use berth_proto::v1::admin_service_client::AdminServiceClient;
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["ca", rest @ ..] = words.as_slice() {
        return crate::security_cmds::ca_cmd(rest);
    }
    let channel = client::connect(&client::servers(None)).await?;
    let mut c = AdminServiceClient::new(channel);
    let err = |s: tonic::Status| anyhow::anyhow!("{}", status_text(&s));
    let change = match words.as_slice() {
        ["audit", rest @ ..] => return crate::security_cmds::audit(rest, &mut c).await,
        ["accounts", rest @ ..] => return crate::fairshare::accounts(&mut c, rest).await,
        ["config", "show"] => {
            let info = c
                .get_cluster(pb::ClusterRequest {})
                .await
                .map_err(err)?
                .into_inner();
            print!("{}", info.toml);
            return Ok(0);
        }
        ["config", "set", file] => return crate::scontrol::cluster_config_set(&mut c, file).await,
        ["status"] => {
            let s = c
                .get_replica_status(pb::ReplicaStatusRequest {})
                .await
                .map_err(err)?
                .into_inner();
            let leader = if s.leader_id == 0 {
                "unknown".to_string()
            } else {
                s.leader_id.to_string()
            };
            println!(
                "ReplicaId={} Term={} Leader={leader} AppliedIndex={}",
                s.id, s.term, s.applied_index
            );
            return Ok(0);
        }
        ["members", "add", member] => {
            let (id, addr) = member
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("expected ID=HOST:PORT, got {member:?}"))?;
            let id: u64 = id
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid replica id {id:?}"))?;
            pb::ChangeMembershipRequest {
                id,
                url: addr.to_string(),
                remove: false,
            }
        }
        ["members", "remove", id] => {
            let id: u64 = id
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid replica id {id:?}"))?;
            pb::ChangeMembershipRequest {
                id,
                url: String::new(),
                remove: true,
            }
        }
        _ => anyhow::bail!(
            "usage: berth admin status | members add ID=HOST:PORT | members remove ID | accounts show | accounts set FILE | ca init|issue | audit | config show | config set FILE"
        ),
    };
    let members = c
        .change_membership(change)
        .await
        .map_err(err)?
        .into_inner()
        .members;
    for m in members {
        println!("{}={}", m.id, m.url);
    }
    Ok(0)
}
