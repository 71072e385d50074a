//! Merged options → `JobSpec`, with Slurm's defaults for what was not given (one node,
//! one task per node, one CPU per task, the whole environment exported), and the checks
//! that need several options at once (GPU options that must agree, tasks below nodes).

use super::opts::Opts;
use super::SbatchError;
use super::SubmitContext;
use crate::opt::export::{exported_env, Export};
use crate::opt::gres::{is_mig, looks_like_mig, GpuRequest};
use crate::opt::switches::SWITCH_WAIT_DEFAULT_SECS;
use crate::opt::OptError;
use berth_proto::v1::JobSpec;
use std::path::{Path, PathBuf};

/// Where the script came from.
pub enum Script {
    /// A file: the path as given and as made absolute.
    File {
        /// As the user wrote it.
        given: String,
        /// Made absolute against the submit directory.
        absolute: String,
    },
    /// `--wrap`.
    Wrap,
    /// Standard input.
    Stdin,
    /// No script: an allocation for salloc or srun, named for the command run in it.
    Allocation {
        /// The command's name (the job name unless `--job-name` says otherwise).
        name: String,
    },
}

/// `path` made absolute against `cwd`, with `.` components dropped (`./a.sh` → `/cwd/a.sh`).
pub fn absolute_path(cwd: &Path, path: &str) -> String {
    cwd.join(path)
        .components()
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
}

/// Checks the MIG side of the GPU options: profile names well formed, at least one slice,
/// and never mixed with a whole-GPU request (typed or not) in the same job.
fn check_mig(opts: &Opts) -> Result<(), SbatchError> {
    let given: Vec<&GpuRequest> = [&opts.gres, &opts.gpus_per_node, &opts.gpus]
        .into_iter()
        .flatten()
        .filter(|r| !(r.count == 0 && r.kind.is_empty()))
        .collect();
    for r in &given {
        if looks_like_mig(&r.kind) {
            return Err(SbatchError::Mig {
                given: r.given.clone(),
                reason: format!(
                    "'{}' is not a MIG profile name (<n>g.<m>gb, e.g. 1g.10gb or 3g.40gb)",
                    r.kind
                ),
            });
        }
        if is_mig(&r.kind) && r.count == 0 {
            return Err(SbatchError::Mig {
                given: r.given.clone(),
                reason: "the slice count must be at least 1".into(),
            });
        }
    }
    if let Some(m) = given.iter().find(|r| is_mig(&r.kind)) {
        if let Some(w) = given.iter().find(|r| !is_mig(&r.kind)) {
            return Err(SbatchError::GpuConflict(format!(
                "{} asks for MIG slices and {} for whole GPUs; a job gets one or the other",
                m.given, w.given
            )));
        }
    }
    Ok(())
}

/// Settles the GPU request: `--gres` and `--gpus-per-node` are per node and must agree;
/// `--gpus` is a total spread evenly over the nodes. Returns (GPUs per node, type), where
/// the type may be a MIG profile (then the count is MIG slices per node).
fn resolve_gpus(opts: &Opts, nodes: u32) -> Result<(u32, String), SbatchError> {
    check_mig(opts)?;
    let compatible = |a: &str, b: &str| a.is_empty() || b.is_empty() || a == b;
    let conflict = |a: &GpuRequest, b: &GpuRequest, why: &str| {
        SbatchError::GpuConflict(format!("{} and {} {why}", a.given, b.given))
    };
    let mut per_node: Option<GpuRequest> = None;
    for request in [&opts.gres, &opts.gpus_per_node].into_iter().flatten() {
        per_node = Some(match per_node {
            None => request.clone(),
            Some(prev) if prev.count != request.count => {
                return Err(conflict(
                    &prev,
                    request,
                    "ask for different GPU counts per node",
                ))
            }
            Some(prev) if !compatible(&prev.kind, &request.kind) => {
                return Err(conflict(&prev, request, "ask for different GPU types"))
            }
            Some(prev) => GpuRequest {
                kind: if prev.kind.is_empty() {
                    request.kind.clone()
                } else {
                    prev.kind
                },
                ..prev
            },
        });
    }
    let Some(total) = &opts.gpus else {
        return Ok(per_node.map_or((0, String::new()), |r| (r.count, r.kind)));
    };
    match per_node {
        Some(p) if !compatible(&p.kind, &total.kind) => {
            Err(conflict(&p, total, "ask for different GPU types"))
        }
        Some(p) if u64::from(p.count) * u64::from(nodes) != u64::from(total.count) => {
            Err(SbatchError::GpuConflict(format!(
                "{} asks for {} GPUs in total but {} on {nodes} node(s) is {}",
                total.given,
                total.count,
                p.given,
                u64::from(p.count) * u64::from(nodes)
            )))
        }
        Some(p) => Ok((
            p.count,
            if p.kind.is_empty() {
                total.kind.clone()
            } else {
                p.kind
            },
        )),
        None if total.count % nodes != 0 => Err(SbatchError::GpusNotDivisible {
            gpus: total.count,
            nodes,
        }),
        None => Ok((total.count / nodes, total.kind.clone())),
    }
}

/// The GPU fraction asked for, in milli (0: none). A fraction is of one GPU on one node:
/// every GPU option given must ask for the same fraction (and compatible types), and it
/// cannot be combined with a MIG profile, `--gpus-per-task`, or more than one node.
fn resolve_fraction(opts: &Opts, nodes: u32) -> Result<u32, SbatchError> {
    let given: Vec<&GpuRequest> = [
        &opts.gres,
        &opts.gpus_per_node,
        &opts.gpus,
        &opts.gpus_per_task,
    ]
    .into_iter()
    .flatten()
    .filter(|r| !(r.count == 0 && r.kind.is_empty()))
    .collect();
    let Some(f) = given.iter().find(|r| r.milli > 0) else {
        return Ok(0);
    };
    let bad = |reason: String| -> SbatchError {
        OptError::Fraction {
            given: f.given.clone(),
            reason,
        }
        .into()
    };
    if is_mig(&f.kind) || looks_like_mig(&f.kind) {
        return Err(bad(format!(
            "'{}' is a MIG profile: MIG slices are counted in whole slices, a fraction              shares a time-sliced GPU",
            f.kind
        )));
    }
    if opts.gpus_per_task.as_ref().is_some_and(|t| t.milli > 0) {
        return Err(bad("--gpus-per-task takes whole GPUs".into()));
    }
    if nodes != 1 {
        return Err(bad(format!(
            "a fraction is of one GPU on one node, not on {nodes} nodes"
        )));
    }
    for r in &given {
        let same_type = r.kind.is_empty() || f.kind.is_empty() || r.kind == f.kind;
        if r.milli != f.milli || !same_type {
            return Err(SbatchError::GpuConflict(format!(
                "{} and {} ask for different GPUs; give the fraction once",
                f.given, r.given
            )));
        }
    }
    Ok(f.milli)
}

/// Builds the spec from the merged options, with Slurm's defaults for what was not given.
///
/// # Errors
/// Options that do not hold together.
pub fn build_spec(
    opts: Opts,
    script: &Script,
    text: String,
    args: Vec<String>,
    ctx: &SubmitContext,
) -> Result<JobSpec, SbatchError> {
    let shape = node_shape(&opts)?;
    let (nodes, ntasks) = (shape.nodes, shape.ntasks);
    let gpu_milli = resolve_fraction(&opts, nodes)?;
    let (gpus_per_node, gpu_type) = match &opts.gpus_per_task {
        None => resolve_gpus(&opts, nodes)?,
        Some(per_task) => gpus_from_tasks(&opts, per_task, nodes, ntasks)?,
    };
    // A MIG profile asks for slices, not GPUs: berthd chooses the GPU and placement.
    let (gpus_per_node, gpu_type, mig_per_node, mig_profile) = if is_mig(&gpu_type) {
        (0, String::new(), gpus_per_node, gpu_type)
    } else {
        (gpus_per_node, gpu_type, 0, String::new())
    };
    let mem = memory(
        &opts,
        gpus_per_node + mig_per_node + u32::from(gpu_milli > 0),
    )?;
    let (switches, switches_wait_secs) = match opts.switches {
        None | Some((0, _)) => (0, 0),
        Some((n, wait)) => (n, wait.unwrap_or(SWITCH_WAIT_DEFAULT_SECS)),
    };
    let (env, export_all) = exported_env(
        opts.export.as_ref().unwrap_or(&Export::All(Vec::new())),
        &ctx.env,
    );
    let (default_name, command) = match script {
        Script::File { given, absolute } => {
            let base = Path::new(given)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            (base.unwrap_or_else(|| given.clone()), absolute.clone())
        }
        Script::Wrap => ("wrap".to_string(), "(wrap)".to_string()),
        Script::Stdin => ("sbatch".to_string(), String::new()),
        Script::Allocation { name } => (name.clone(), String::new()),
    };
    let cwd = ctx.cwd.to_string_lossy().into_owned();
    let container_image = opts
        .container_image
        .map(|image| absolute_path(&ctx.cwd, &image))
        .unwrap_or_default();
    if container_image.is_empty()
        && (opts.container_mounts.is_some()
            || opts.container_workdir.is_some()
            || opts.container_env.is_some())
    {
        return Err(OptError::invalid(
            "--container-image",
            "",
            "--container-mounts, --container-workdir and --container-env need \
             --container-image",
        )
        .into());
    }
    Ok(JobSpec {
        constraint: opts.constraint.unwrap_or_default(),
        req_nodes: opts.req_nodes.unwrap_or_default(),
        exc_nodes: opts.exc_nodes.unwrap_or_default(),
        nodes_max: shape.nodes_max,
        use_min_nodes: shape.fewest_first,
        ntasks_per_node: opts.ntasks_per_node.unwrap_or(0),
        min_cpus_node: opts.min_cpus.unwrap_or(0),
        mem_per_cpu_mb: mem.per_cpu_mb,
        mem_per_gpu_mb: mem.per_gpu_mb,
        mem_whole_node: mem.whole_node,
        cpus_per_gpu: opts.cpus_per_gpu.unwrap_or(0),
        oversubscribe: opts.oversubscribe.unwrap_or_default(),
        licenses: opts.licenses.unwrap_or_default(),
        reservation: opts.reservation.unwrap_or_default(),
        mail_type: opts.mail_type.unwrap_or_default(),
        mail_user: opts.mail_user.unwrap_or_default(),
        begin_time_ms: opts.begin_ms.unwrap_or(0),
        deadline_ms: opts.deadline_ms.unwrap_or(0),
        nice: opts.nice.unwrap_or(0),
        comment: opts.comment.unwrap_or_default(),
        gpu_bind: opts.gpu_bind.unwrap_or_default(),
        gres_flags: opts.gres_flags.unwrap_or_default(),
        hint: opts.hint.unwrap_or_default(),
        distribution: opts.distribution.unwrap_or_default(),
        spread_job: opts.spread_job,
        no_kill: opts.no_kill.unwrap_or(false),
        time_limit_set: opts.time_secs.is_some(),
        name: opts.job_name.unwrap_or(default_name),
        script: text,
        args,
        command,
        work_dir: opts
            .chdir
            .map_or_else(|| cwd.clone(), |dir| absolute_path(&ctx.cwd, &dir)),
        submit_dir: cwd,
        stdout: opts.output.unwrap_or_default(),
        stderr: opts.error.unwrap_or_default(),
        time_limit_secs: opts.time_secs.unwrap_or(0),
        nodes,
        ntasks,
        cpus_per_task: opts.cpus_per_task.unwrap_or(1),
        mem_mb: mem.per_node_mb,
        gpus_per_node,
        gpu_type,
        mig_profile,
        mig_per_node,
        gpu_milli,
        partition: opts.partition.unwrap_or_default(),
        account: opts.account.unwrap_or_default(),
        qos: opts.qos.unwrap_or_default(),
        requeue: opts.requeue,
        signal: opts.signal.map_or(0, |s| s.number),
        signal_secs: opts.signal.map_or(0, |s| s.secs),
        signal_batch_only: opts.signal.is_some_and(|s| s.batch_only),
        env,
        user: ctx.user.clone(),
        uid: ctx.uid,
        gid: ctx.gid,
        hold: opts.hold,
        submit_host: ctx.host.clone(),
        export_all,
        pod: None,
        pod_group: None,
        gpu_shared: false,
        container_image,
        container_mounts: opts.container_mounts.unwrap_or_default(),
        container_workdir: opts.container_workdir.unwrap_or_default(),
        container_env: opts.container_env.unwrap_or_default(),
        switches,
        switches_wait_secs,
        dependencies: opts.dependencies.unwrap_or_default(),
        array: opts.array,
        open_append: opts.open_append.unwrap_or(false),
        wckey: opts.wckey.unwrap_or_default(),
        ..Default::default()
    })
}

/// `--gpus-per-task`: the tasks spread evenly over the nodes, so each node gets
/// `gpus-per-task × ntasks / nodes` GPUs. Refused with other GPU options (they would have to
/// agree) and when the tasks do not divide evenly over the nodes.
fn gpus_from_tasks(
    opts: &Opts,
    per_task: &GpuRequest,
    nodes: u32,
    ntasks: u32,
) -> Result<(u32, String), SbatchError> {
    let other = [&opts.gpus, &opts.gres, &opts.gpus_per_node]
        .into_iter()
        .flatten()
        .next();
    if let Some(o) = other {
        return Err(SbatchError::GpuConflict(format!(
            "{} and {} cannot be combined; use one",
            per_task.given, o.given
        )));
    }
    if !ntasks.is_multiple_of(nodes) {
        return Err(SbatchError::GpuConflict(format!(
            "{} needs the tasks spread evenly, but --ntasks={ntasks} does not divide over {nodes} node(s)",
            per_task.given
        )));
    }
    let per_node = u64::from(per_task.count) * u64::from(ntasks / nodes);
    let per_node = u32::try_from(per_node).map_err(|_| {
        SbatchError::GpuConflict(format!(
            "{} asks for too many GPUs per node",
            per_task.given
        ))
    })?;
    Ok((per_node, per_task.kind.clone()))
}

/// How many nodes and tasks: Slurm's rules for `-N` (a count or a range), `-n`,
/// `--ntasks-per-node` and `-w`.
struct NodeShape {
    nodes: u32,
    nodes_max: u32,
    ntasks: u32,
    fewest_first: bool,
}

/// Settles nodes and tasks. Without `-N`, `-w` sets the node count to the nodes it names,
/// `--ntasks-per-node` with `-n` to as many nodes as the tasks need, and `-n` alone lets
/// the tasks spread over 1 to `ntasks` nodes, fewest first (whole jobs of CPUs; GPU jobs
/// stay on the nodes they name, as their GPU counts are per node).
fn node_shape(opts: &Opts) -> Result<NodeShape, SbatchError> {
    let listed = opts.req_nodes.as_ref().map_or(0, |l| l.len() as u32);
    let per_node = opts.ntasks_per_node.unwrap_or(0);
    let gpus = [
        &opts.gpus,
        &opts.gres,
        &opts.gpus_per_node,
        &opts.gpus_per_task,
    ]
    .into_iter()
    .flatten()
    .any(|g| g.count > 0 || g.milli > 0);
    let (mut nodes, mut nodes_max, mut fewest_first) = (
        opts.nodes.unwrap_or(1),
        opts.nodes_max.unwrap_or(0),
        opts.use_min_nodes,
    );
    if let Some(n) = opts.nodes {
        let most = if nodes_max > 0 { nodes_max } else { n };
        if listed > most {
            return Err(OptError::invalid(
                "--nodes",
                &n.to_string(),
                format!("invalid number of nodes (-N {listed}-{most})"),
            )
            .into());
        }
        nodes = nodes.max(listed);
    } else if listed > 0 {
        nodes = listed;
    } else if let (Some(ntasks), true) = (opts.ntasks, per_node > 0) {
        nodes = ntasks.div_ceil(per_node);
    } else if let (Some(ntasks), false) = (opts.ntasks, gpus) {
        if ntasks > 1 {
            nodes_max = ntasks;
            fewest_first = true;
        }
    }
    let ntasks = match opts.ntasks {
        Some(ntasks) if ntasks < nodes => {
            return Err(SbatchError::TasksBelowNodes { ntasks, nodes })
        }
        Some(ntasks) => ntasks,
        None if per_node > 0 => nodes.saturating_mul(per_node),
        None => nodes,
    };
    if nodes_max > 0 && nodes_max < nodes {
        nodes_max = nodes;
    }
    Ok(NodeShape {
        nodes,
        nodes_max,
        ntasks,
        fewest_first,
    })
}

/// Memory as asked: per node (`--mem`), per CPU or per GPU, or all of each node
/// (`--mem=0`, `--mem-per-cpu=0`).
struct Memory {
    per_node_mb: u64,
    per_cpu_mb: u64,
    per_gpu_mb: u64,
    whole_node: bool,
}

/// Settles memory. Slurm refuses more than one of the three options, even from different
/// sources (a script's `--mem-per-cpu` and a command line's `--mem`), and `--mem-per-gpu`
/// without GPUs.
fn memory(opts: &Opts, gpus_per_node: u32) -> Result<Memory, SbatchError> {
    let given = [
        opts.mem_mb.is_some(),
        opts.mem_per_cpu_mb.is_some(),
        opts.mem_per_gpu_mb.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(OptError::invalid(
            "--mem",
            "",
            "--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive.",
        )
        .into());
    }
    if let (Some(mib), 0) = (opts.mem_per_gpu_mb, gpus_per_node) {
        return Err(OptError::invalid(
            "--mem-per-gpu",
            &format!("{mib}M"),
            format!("Requested mem_per_tres=gres:gpu:{mib} but did not request any GPU."),
        )
        .into());
    }
    Ok(Memory {
        per_node_mb: opts.mem_mb.unwrap_or(0),
        per_cpu_mb: opts.mem_per_cpu_mb.unwrap_or(0),
        per_gpu_mb: opts.mem_per_gpu_mb.unwrap_or(0),
        whole_node: opts.mem_mb == Some(0) || opts.mem_per_cpu_mb == Some(0),
    })
}
