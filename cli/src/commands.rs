//! The subcommands: argument handling, the gRPC call, and Slurm-shaped output and errors
//! (`sbatch: error: …` on stderr, exit status 1).

use crate::client;
use crate::sbatch::{self, SubmitContext};
use berth_proto::v1::{self as pb, JobState};
use clap::Parser;
use std::collections::BTreeMap;

/// Names under which the binary behaves as that Slurm tool.
pub const TOOLS: &[&str] = &[
    "sbatch", "squeue", "scancel", "sinfo", "scontrol", "sshare", "sprio",
];

const USAGE: &str = "usage: berth [--server URL[,URL...]] <command> [args]

commands:
  dev        run berthd and simulated GPU nodes in this process (try this first)
  sbatch     submit a batch script
  squeue     list pending and running jobs
  scancel    cancel jobs
  sinfo      list partitions and nodes with their GPUs
  scontrol   show job/node/partition/topology, hold, release, update NodeName=N Gpu=G State=RESUME
  sshare     the fair-share tree: shares, decayed usage, fair-share factors
  sprio      priority factors of pending jobs
  admin      status | members add ID=HOST:PORT | members remove ID  (berthd replicas)
             accounts show | accounts set FILE  (accounts and priority classes)

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
        "scontrol" => scontrol(args).await,
        "admin" => admin(args).await,
        "sshare" => crate::fairshare::sshare(args).await,
        "sprio" => crate::fairshare::sprio(args).await,
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

/// The server's message of a failed call (what users should read).
pub fn status_text(s: &tonic::Status) -> String {
    s.message().to_string()
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

fn submit_context() -> anyhow::Result<SubmitContext> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    Ok(SubmitContext {
        cwd: std::env::current_dir()?,
        env: std::env::vars().collect::<BTreeMap<_, _>>(),
        user,
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        host: berth_agent::machine::hostname(),
    })
}

async fn sbatch_cmd(args: Vec<String>) -> anyhow::Result<i32> {
    let ctx = submit_context()?;
    let mut read_stdin = || std::io::read_to_string(std::io::stdin());
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
    let channel = client::connect(&client::servers(None)).await?;
    let jobs = client::jobs(channel);
    // An overloaded berthd refuses before proposing anything: resubmitting is safe.
    let resp = client::with_backoff(std::time::Duration::from_millis(20), || {
        let mut jobs = jobs.clone();
        let req = pb::SubmitRequest {
            spec: Some(submission.spec.clone()),
        };
        async move { jobs.submit(req).await }
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

fn parse_ids(list: &[String]) -> anyhow::Result<Vec<u64>> {
    list.iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("Invalid job id {s}"))
        })
        .collect()
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
    /// Job ids (comma-separated).
    #[arg(short = 'j', long = "jobs", value_delimiter = ',')]
    jobs: Vec<String>,
    /// Users (comma-separated).
    #[arg(short = 'u', long = "user", value_delimiter = ',')]
    users: Vec<String>,
    /// States (comma-separated, e.g. PD,R or all).
    #[arg(short = 't', long = "states", value_delimiter = ',')]
    states: Vec<String>,
    /// No header line.
    #[arg(short = 'h', long = "noheader")]
    noheader: bool,
    /// Output format (Slurm's %-specifiers).
    #[arg(short = 'o', long = "format")]
    format: Option<String>,
    /// Pending jobs with their expected start time (from the last backfill pass).
    #[arg(long)]
    start: bool,
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

async fn squeue(args: Vec<String>) -> anyhow::Result<i32> {
    let a: SqueueArgs = match parse_tool("squeue", args) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let job_ids = parse_ids(&a.jobs)?;
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
        let text = crate::squeue::render(&page.jobs, &format, now, header)?;
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
    let ids = parse_ids(&args)?;
    let channel = client::connect(&client::servers(None)).await?;
    let mut client = client::jobs(channel);
    let mut code = 0;
    for id in ids {
        if let Err(s) = client
            .cancel(pb::CancelRequest {
                job_id: id,
                reason: String::new(),
            })
            .await
        {
            eprintln!(
                "scancel: error: Kill job error on job id {id}: {}",
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
    /// Print help (-h means --noheader, as in Slurm).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

async fn sinfo(args: Vec<String>) -> anyhow::Result<i32> {
    let a: SinfoArgs = match parse_tool("sinfo", args) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    crate::sinfo::render(&[], a.format.as_deref(), a.node, true)?;
    let channel = client::connect(&client::servers(None)).await?;
    let nodes = client::nodes(channel)
        .list(pb::ListNodesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?;
    print!(
        "{}",
        crate::sinfo::render(
            &nodes.into_inner().nodes,
            a.format.as_deref(),
            a.node,
            !a.noheader
        )?
    );
    Ok(0)
}

async fn scontrol(args: Vec<String>) -> anyhow::Result<i32> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let channel = client::connect(&client::servers(None)).await?;
    match words.as_slice() {
        ["show", "job" | "jobs", rest @ ..] => {
            let ids = parse_ids(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
            let mut c = client::jobs(channel);
            let jobs = if ids.is_empty() {
                let req = pb::ListJobsRequest {
                    include_finished: true,
                    ..Default::default()
                };
                c.list(req)
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                    .into_inner()
                    .jobs
            } else {
                let mut out = Vec::new();
                for id in ids {
                    let job = c.get(pb::GetJobRequest { job_id: id }).await.map_err(|s| {
                        anyhow::anyhow!("slurm_load_jobs error: {}", status_text(&s))
                    })?;
                    out.push(job.into_inner());
                }
                out
            };
            if jobs.is_empty() {
                println!("No jobs in the system");
            }
            let now = crate::now_ms();
            let text: Vec<String> = jobs
                .iter()
                .map(|j| crate::scontrol::show_job(j, now))
                .collect();
            print!("{}", text.join("\n"));
            Ok(0)
        }
        ["show", "topology"] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let t = AdminServiceClient::new(channel)
                .get_topology(pb::TopologyRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner();
            print!("{}", crate::scontrol::show_topology(&t));
            Ok(0)
        }
        ["show", "partition" | "partitions", rest @ ..] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let toml = AdminServiceClient::new(channel.clone())
                .get_accounts(pb::AccountsRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner()
                .toml;
            let cfg = berth_scheduler::accounts::parse(&toml)
                .map_err(|e| anyhow::anyhow!("the server's accounts configuration: {e}"))?;
            let nodes = client::nodes(channel)
                .list(pb::ListNodesRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner()
                .nodes;
            let text = crate::scontrol::show_partitions(&nodes, &cfg.policy, rest);
            if text.is_empty() {
                anyhow::bail!("Partition {} not found", rest.join(","));
            }
            print!("{text}");
            Ok(0)
        }
        ["show", "node" | "nodes", rest @ ..] => {
            let nodes = client::nodes(channel)
                .list(pb::ListNodesRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner()
                .nodes;
            let shown: Vec<_> = nodes
                .iter()
                .filter(|n| {
                    rest.is_empty()
                        || n.inventory
                            .as_ref()
                            .is_some_and(|i| rest.contains(&i.name.as_str()))
                })
                .collect();
            if shown.is_empty() {
                anyhow::bail!("Node {} not found", rest.join(","));
            }
            let text: Vec<String> = shown
                .iter()
                .map(|n| crate::scontrol::show_node(n))
                .collect();
            print!("{}", text.join("\n"));
            Ok(0)
        }
        [verb @ ("hold" | "release" | "uhold"), ids @ ..] if !ids.is_empty() => {
            let ids = parse_ids(&ids.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
            let mut c = client::jobs(channel);
            let mut code = 0;
            for id in ids {
                if let Err(s) = c
                    .hold(pb::HoldRequest {
                        job_id: id,
                        hold: *verb != "release",
                    })
                    .await
                {
                    eprintln!("scontrol: error: {verb} job {id}: {}", status_text(&s));
                    code = 1;
                }
            }
            Ok(code)
        }
        ["update", rest @ ..] => {
            use berth_proto::v1::admin_service_client::AdminServiceClient;
            let r = crate::scontrol::parse_gpu_resume(rest).map_err(anyhow::Error::msg)?;
            let done = AdminServiceClient::new(channel)
                .resume_gpu(pb::GpuHealthyRequest {
                    node: r.node.clone(),
                    gpu: r.gpu,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
                .into_inner();
            if done.cleared_reason.is_empty() {
                println!("GPU {} on {} was already healthy", done.gpu_uuid, r.node);
            } else {
                println!(
                    "GPU {} on {} resumed (was: {})",
                    done.gpu_uuid, r.node, done.cleared_reason
                );
            }
            Ok(0)
        }
        [] => {
            anyhow::bail!(
                "no command given (show job|show node|show partition|show topology|hold|release|update)"
            )
        }
        other => anyhow::bail!(
            "invalid or unsupported scontrol command: {}",
            other.join(" ")
        ),
    }
}

async fn admin(args: Vec<String>) -> anyhow::Result<i32> {
    use berth_proto::v1::admin_service_client::AdminServiceClient;
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let channel = client::connect(&client::servers(None)).await?;
    let mut c = AdminServiceClient::new(channel);
    let err = |s: tonic::Status| anyhow::anyhow!("{}", status_text(&s));
    let change = match words.as_slice() {
        ["accounts", rest @ ..] => return crate::fairshare::accounts(&mut c, rest).await,
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
            "usage: berth admin status | members add ID=HOST:PORT | members remove ID | accounts show | accounts set FILE"
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
