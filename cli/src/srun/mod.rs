//! `srun`: run a job step's tasks inside an allocation and stream their output back.
//!
//! srun parses its options (and the allocation's `SLURM_*` variables), opens its I/O
//! listener, asks berthd to create the step (berthd lays the tasks out over the job's nodes
//! and has each node's agent start its share), then writes the tasks' output as it arrives
//! and exits with the worst task's status. Ctrl-C twice within a second, or SIGTERM,
//! cancels the step.
//!
//! # Layout
//! - [`options`]: the option table, input variables, the step request.
//! - [`io`]: the I/O listener and the output sink.

pub mod io;
pub mod options;
#[cfg(test)]
mod tests;

use crate::client;
use crate::hostlist::compress_numbers;
use anyhow::{anyhow, bail, Context as _};
use berth_proto::v1::{self as pb, JobState};
use options::{Opts, SRUN};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

/// How long srun waits for the last frames once berthd says the step (or job) is over.
const DRAIN_WAIT: Duration = Duration::from_secs(3);

/// Parses `args` (options, then the program and its arguments) against `env`.
///
/// A `--cpu-bind=help` comes back with no program and [`Opts::help`] set.
///
/// # Errors
/// The first bad option or value; no program.
pub fn parse(
    args: &[String],
    env: &BTreeMap<String, String>,
) -> anyhow::Result<(Opts, Vec<String>)> {
    let mut o = Opts::default();
    let first = crate::opt::getopt::parse(&SRUN, args, &mut o)?;
    if o.help.is_some() {
        return Ok((o, Vec::new()));
    }
    options::apply_env(&mut o, env)?;
    let argv = args[first..].to_vec();
    if argv.is_empty() {
        bail!("No command given to execute.");
    }
    Ok((o, argv))
}

/// The allocation srun runs in: `--jobid`, else `SLURM_JOB_ID` (or `SLURM_JOBID`); `None`
/// outside any, where srun makes its own.
///
/// # Errors
/// A set but unparsable `SLURM_JOB_ID`; job-only options (`-p`, `-t`…) inside an
/// allocation, whose resources are fixed.
pub fn allocation(o: &Opts, env: &BTreeMap<String, String>) -> anyhow::Result<Option<u64>> {
    let var = env
        .get("SLURM_JOB_ID")
        .or_else(|| env.get("SLURM_JOBID"))
        .filter(|v| !v.is_empty());
    let id = match (o.jobid, var) {
        (Some(id), _) => id,
        (None, Some(v)) => options::parse_job_id(v).ok_or_else(|| {
            anyhow!("SLURM_JOB_ID={v:?} is not a job id; unset it, or pass --jobid")
        })?,
        (None, None) => return Ok(None),
    };
    if let Some(first) = o.job_only.first() {
        bail!(
            "option --{first} shapes a new allocation; inside job {id} a step runs in the job's \
             resources, and berth takes no step --{first}"
        );
    }
    Ok(Some(id))
}

/// Runs srun with `args`; returns its exit status.
///
/// # Errors
/// Bad options, berthd unreachable, the allocation or the step refused.
pub async fn run(args: Vec<String>) -> anyhow::Result<i32> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (o, argv) = parse(&args, &env)?;
    if let Some(help) = o.help {
        print!("{help}");
        return Ok(0);
    }
    let servers = client::servers(None);
    let channel = client::connect(&servers).await?;
    let mut jobs = client::jobs(channel);
    if let Some(job_id) = allocation(&o, &env)? {
        return run_step(&mut jobs, &servers, &o, &argv, &env, job_id).await;
    }
    // Outside any allocation: one of its own, the step in it, and the allocation given
    // back with the step's exit (Slurm's interactive srun).
    let ctx = crate::sbatch::submit_context("srun")?;
    let name = argv[0].rsplit('/').next().unwrap_or(&argv[0]).to_string();
    let spec = crate::sbatch::allocation_spec(o.job.clone(), &name, &ctx)?;
    let granted = crate::allocation::obtain(&mut jobs, spec, "srun", o.quiet).await?;
    let job_id = granted.job.id;
    let mut env = env;
    env.extend(crate::allocation::variables(&granted.job));
    let result = run_step(&mut jobs, &servers, &o, &argv, &env, job_id).await;
    let exit = pb::AllocationExit {
        exit_code: *result.as_ref().unwrap_or(&1),
        signal: 0,
    };
    if let Err(e) = crate::allocation::release(&mut jobs, job_id, exit).await {
        // Already ending (time limit, scancel): nothing left to give back.
        tracing::debug!(job_id, "release: {e}");
    }
    result
}

/// Runs the step of `argv` in job `job_id` and streams its output; returns the worst
/// task's exit.
async fn run_step(
    jobs: &mut berth_proto::v1::job_service_client::JobServiceClient<client::Channel>,
    servers: &[String],
    o: &Opts,
    argv: &[String],
    env: &BTreeMap<String, String>,
    job_id: u64,
) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir()
        .context("current directory")?
        .display()
        .to_string();
    let mut spec = options::step_spec(o, argv, env, &cwd);
    // The address agents reach srun on: this host's side of its route to berthd.
    let ip = local_ip(servers).await?;
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .with_context(|| format!("I/O listener on {ip}"))?;
    spec.io_addr = listener.local_addr()?.to_string();
    spec.io_key = io_key();
    // Task output is encrypted to this srun: a certificate of its own, pinned by the agents.
    let (io_cert, io_tls) = berth_auth::tls::ephemeral_server(ip)
        .map_err(|e| anyhow!("srun's I/O certificate: {e}"))?;
    spec.io_cert = io_cert;
    let (frames_tx, mut frames) = mpsc::channel(4096);
    let service = io::IoService {
        frames: frames_tx,
        key: spec.io_key.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::step_io_service_server::StepIoServiceServer::new(
                service,
            ))
            .serve_with_incoming(berth_auth::tls::incoming_with(listener, move || {
                io_tls.clone()
            })),
    );
    // Watch before creating, so the step's end cannot fall before the watch starts.
    let mut watch = jobs
        .watch(pb::WatchRequest {
            job_ids: vec![job_id],
        })
        .await
        .map_err(|s| anyhow!("{}", s.message()))?
        .into_inner();
    let step = client::retried(&*jobs, spec, |mut jobs, spec| async move {
        jobs.create_step(pb::CreateStepRequest {
            job_id,
            spec: Some(spec),
        })
        .await
    })
    .await
    .map_err(|s| anyhow!("{}", s.message()))?
    .into_inner();
    let ntasks = step.spec.as_ref().map(|s| s.ntasks).unwrap_or(0) as usize;
    let names = io::Names {
        job_id,
        step_id: step.step_id,
        node_index: step
            .nodes
            .iter()
            .map(|n| (n.node.clone(), n.node_index))
            .collect(),
        array: env
            .get("SLURM_ARRAY_JOB_ID")
            .and_then(|a| a.parse().ok())
            .zip(env.get("SLURM_ARRAY_TASK_ID").and_then(|t| t.parse().ok())),
        append: o.append,
    };
    let mut sink = io::Sink::new(
        o.label,
        o.unbuffered,
        o.output.clone(),
        o.error.clone(),
        names,
    );
    let mut last_step = step.clone();
    let mut over: Option<(tokio::time::Instant, String)> = None;
    let mut seen = false;
    let mut interrupts = Interrupts::new()?;
    while sink.exits.len() < ntasks {
        let drain = async {
            match &over {
                Some((at, _)) => tokio::time::sleep_until(*at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(f) = frames.recv() => sink.take(f).map_err(|e| anyhow!(e))?,
            Some(job) = watch.next() => {
                let Ok(job) = job else { continue };
                let current = job.steps.iter().find(|s| s.step_id == step.step_id);
                if let Some(s) = current {
                    last_step = s.clone();
                    seen = true;
                }
                if over.is_none() {
                    // The job's end says more than the step's (a node down ends both).
                    let why = if job.state() != JobState::Running {
                        Some(format!("job {job_id} ended: {:?} {}", job.state(), job.reason))
                    } else if current.is_none() && seen {
                        // Gone after it was there: it ended (the watch's first view is
                        // from before the step was created, and does not count).
                        Some(last_step.reason.clone())
                    } else {
                        None
                    };
                    over = why.map(|w| (tokio::time::Instant::now() + DRAIN_WAIT, w));
                }
            }
            cancel = interrupts.next(job_id, step.step_id) => {
                // A step already over needs no cancelling.
                if cancel && over.is_none() {
                    let req = pb::CancelStepRequest { job_id, step_id: step.step_id, reason: "cancelled by srun".into() };
                    if let Err(s) = jobs.cancel_step(req).await {
                        eprintln!("srun: error: cancelling StepId={job_id}.{}: {}", step.step_id, s.message());
                    }
                }
            }
            _ = drain => break,
        }
    }
    Ok(report(&step, &sink, over.map(|(_, why)| why)))
}

/// Prints Slurm's per-node summary of failed tasks and returns srun's exit status: the
/// worst task's (a signal counts as 128 + its number); 1 when tasks never reported.
fn report(step: &pb::Step, sink: &io::Sink, why: Option<String>) -> i32 {
    let mut worst = 0;
    // (node, code, signal) → task ids, so each line names a range of tasks as Slurm does.
    let mut groups: BTreeMap<(u32, String, i32, i32), Vec<u32>> = BTreeMap::new();
    for (task, (node, code, signal)) in &sink.exits {
        worst = worst.max(if *signal != 0 { 128 + signal } else { *code });
        if *code != 0 || *signal != 0 {
            let index = step
                .nodes
                .iter()
                .find(|n| &n.node == node)
                .map(|n| n.node_index);
            groups
                .entry((index.unwrap_or(0), node.clone(), *code, *signal))
                .or_default()
                .push(*task);
        }
    }
    for ((_, node, code, signal), tasks) in groups {
        let what = if tasks.len() == 1 { "task" } else { "tasks" };
        let how = if signal != 0 {
            io::signal_words(signal)
        } else {
            format!("Exited with exit code {code}")
        };
        eprintln!(
            "srun: error: {node}: {what} {}: {how}",
            compress_numbers(&tasks)
        );
    }
    let missing: Vec<(String, u32)> = step
        .nodes
        .iter()
        .flat_map(|n| n.task_ids.iter().map(move |t| (n.node.clone(), *t)))
        .filter(|(_, t)| !sink.exits.contains_key(t))
        .collect();
    if !missing.is_empty() {
        let mut by_node: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (node, t) in missing {
            by_node.entry(node).or_default().push(t);
        }
        let why = why
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "no exit reported".into());
        for (node, tasks) in by_node {
            eprintln!(
                "srun: error: {node}: tasks {}: lost: {why}",
                compress_numbers(&tasks)
            );
        }
        worst = worst.max(1);
    }
    worst
}

/// Ctrl-C and SIGTERM: one Ctrl-C prints a notice, a second within a second cancels the
/// step; SIGTERM cancels it at once (mpirun stops its srun so).
struct Interrupts {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    last: Option<tokio::time::Instant>,
}

impl Interrupts {
    fn new() -> anyhow::Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupts {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            last: None,
        })
    }

    /// Waits for the next signal; true when the step must be cancelled.
    async fn next(&mut self, job_id: u64, step_id: u32) -> bool {
        tokio::select! {
            _ = self.term.recv() => true,
            _ = self.int.recv() => {
                let now = tokio::time::Instant::now();
                if self.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                    eprintln!("srun: sending Ctrl-C to StepId={job_id}.{step_id}");
                    true
                } else {
                    self.last = Some(now);
                    eprintln!("srun: interrupt (one more within 1 sec to abort)");
                    false
                }
            }
        }
    }
}

/// This host's address on its route to the first berthd in `servers`.
async fn local_ip(servers: &[String]) -> anyhow::Result<std::net::IpAddr> {
    let mut errors = Vec::new();
    for s in servers {
        let authority = s.split("://").last().unwrap_or(s).trim_end_matches('/');
        match tokio::net::TcpStream::connect(authority).await {
            Ok(conn) => return Ok(conn.local_addr()?.ip()),
            Err(e) => errors.push(format!("{authority}: {e}")),
        }
    }
    bail!(
        "cannot reach berthd to find srun's own address: {}",
        errors.join("; ")
    )
}

/// A key agents must present to stream into this srun (so another user's process on the
/// node cannot inject output): 128 bits from the kernel's random source.
fn io_key() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
