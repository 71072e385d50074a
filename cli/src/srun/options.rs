//! srun's option table, its `SLURM_*` input variables, and the step request they build.
//!
//! Inside an allocation the step's defaults come from the allocation's environment, as in
//! Slurm: `SLURM_JOB_ID` names the job, `SLURM_NNODES` and `SLURM_NTASKS` give the node and
//! task counts. berth takes the environment's counts only where the command line gives no
//! count of its own, so `srun -N1 hostname` in a 4-task job runs one task, not four on one
//! node.

use crate::opt::count::parse_count;
use crate::opt::export::{exported_env, parse_export, Export};
use crate::opt::name::non_empty;
use crate::opt::select::parse_node_range;
use crate::opt::table::{opt, Arg, OptionSpec, Table};
use crate::opt::OptError;
use berth_proto::v1 as pb;
use std::collections::BTreeMap;

/// What the command line and the environment asked for.
#[derive(Debug, Default, Clone)]
pub struct Opts {
    /// -n.
    pub ntasks: Option<u32>,
    /// -N.
    pub nodes: Option<u32>,
    /// --ntasks-per-node.
    pub ntasks_per_node: Option<u32>,
    /// -w, expanded.
    pub nodelist: Vec<String>,
    /// --gpus-per-task.
    pub gpus_per_task: Option<u32>,
    /// -c.
    pub cpus_per_task: Option<u32>,
    /// -l: prefix each line with its task id.
    pub label: bool,
    /// --export.
    pub export: Option<Export>,
    /// -o / -e patterns (%t %n %s %j %N %%).
    pub output: Option<String>,
    /// See `output`.
    pub error: Option<String>,
    /// -K.
    pub kill_on_bad_exit: bool,
    /// --cpu-bind, as typed (checked).
    pub cpu_bind: Option<String>,
    /// A `=help` value's text: printed instead of running anything.
    pub help: Option<&'static str>,
    /// --jobid: the allocation to run in (else SLURM_JOB_ID).
    pub jobid: Option<u64>,
    /// -J.
    pub job_name: Option<String>,
    /// -D.
    pub chdir: Option<String>,
    /// -Q.
    pub quiet: bool,
    /// -u: output written as it arrives, not line by line.
    pub unbuffered: bool,
    /// `--open-mode=append`: `-o`/`-e` files are appended to.
    pub append: bool,
    /// The job srun asks for when it runs outside any allocation: the job options
    /// (`-p`, `-A`, `-t`, `--mem`, `--gpus`…) and the counts, read by sbatch's setters.
    pub job: crate::sbatch::opts::Opts,
    /// The job-only options given ([`JOB_OPTIONS`]): refused inside an allocation, whose
    /// resources are already fixed.
    pub job_only: Vec<&'static str>,
}

/// srun options that shape the job srun makes outside an allocation and mean nothing to a
/// step inside one. Each has an entry in [`SUPPORTED`] that hands it to sbatch's setter
/// of the same name (a test checks that sbatch has it, with the same letter and value).
pub const JOB_OPTIONS: &[&str] = &[
    "account",
    "begin",
    "comment",
    "constraint",
    "cpus-per-gpu",
    "deadline",
    "dependency",
    "exclude",
    "exclusive",
    "gpus",
    "gpus-per-node",
    "gres",
    "hold",
    "licenses",
    "mail-type",
    "mail-user",
    "mem",
    "mem-per-cpu",
    "mem-per-gpu",
    "mincpus",
    "nice",
    "no-kill",
    "partition",
    "qos",
    "reservation",
    "signal",
    "spread-job",
    "time",
    "use-min-nodes",
    "wckey",
];

/// A job-only option: parsed by sbatch's setter into [`Opts::job`].
fn job_opt(o: &mut Opts, l: &'static str, v: Option<&str>) -> Set {
    also_job(o, l, v)?;
    if !o.job_only.contains(&l) {
        o.job_only.push(l);
    }
    Ok(())
}

/// An option both the step and the job take (`-N`, `-n`, `-c`…): sbatch's setter reads
/// it for the job too.
fn also_job(o: &mut Opts, l: &'static str, v: Option<&str>) -> Set {
    let spec = crate::opt::getopt::lookup_long(&crate::sbatch::options::SBATCH, l)?;
    (spec.set)(&mut o.job, spec.long, v)
}

/// srun's options.
pub const SRUN: Table<Opts> = Table {
    options: SUPPORTED,
    unsupported: UNSUPPORTED,
};

const REQ: Arg = Arg::Required;
const FLAG: Arg = Arg::None;

fn text(value: Option<&str>) -> &str {
    value.unwrap_or_default()
}

type Set = Result<(), OptError>;

fn nodelist(o: &mut Opts, l: &'static str, v: Option<&str>) -> Set {
    let value = non_empty(l, text(v))?;
    o.nodelist = berth_policies::topology::hostlist::expand(&value)
        .map_err(|why| OptError::invalid("--nodelist", &value, why))?;
    also_job(o, l, v)
}

/// `--cpu-bind`: checked here as Slurm's srun checks it, carried as typed; each node's
/// agent makes its tasks' CPU sets from it. `help` prints Slurm's list of types.
fn cpu_bind(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    let v = text(v);
    if v.eq_ignore_ascii_case("help") {
        o.help = Some(berth_policies::cpu_bind::HELP);
        return Ok(());
    }
    berth_policies::cpu_bind::parse(v)
        .map_err(|why| OptError::invalid("--cpu-bind", v, why.to_string()))?;
    o.cpu_bind = Some(v.to_string());
    Ok(())
}

/// `--mpi`: berth starts no PMI server, so only `none` (what Open MPI's mpirun passes)
/// is taken.
fn mpi(_: &mut Opts, _: &str, v: Option<&str>) -> Set {
    match text(v) {
        "none" => Ok(()),
        other => Err(OptError::unsupported("--mpi", other, "an MPI plugin (PMI)")),
    }
}

fn kill_on_bad_exit(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    o.kill_on_bad_exit = match v {
        None | Some("1") => true,
        Some("0") => false,
        Some(other) => {
            return Err(OptError::invalid(
                "--kill-on-bad-exit",
                other,
                "must be 0 or 1",
            ))
        }
    };
    Ok(())
}

fn jobid(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    let v = text(v);
    o.jobid = Some(parse_job_id(v).ok_or_else(|| OptError::invalid("--jobid", v, "not a job id"))?);
    Ok(())
}

/// A job id as the environment or `--jobid` gives it: a positive decimal.
pub fn parse_job_id(v: &str) -> Option<u64> {
    v.parse::<u64>().ok().filter(|id| *id > 0)
}

/// The options berth implements: the step's, then the job-only ones ([`JOB_OPTIONS`]).
pub const SUPPORTED: &[OptionSpec<Opts>] = &[
    opt("account", Some('A'), REQ, "", job_opt),
    opt("begin", Some('b'), REQ, "", job_opt),
    opt("comment", None, REQ, "", job_opt),
    opt("constraint", Some('C'), REQ, "", job_opt),
    opt("cpus-per-gpu", None, REQ, "", job_opt),
    opt("deadline", None, REQ, "", job_opt),
    opt("dependency", Some('d'), REQ, "", job_opt),
    opt("exclude", Some('x'), REQ, "", job_opt),
    opt("exclusive", None, Arg::Optional, "", job_opt),
    opt("gpus", Some('G'), REQ, "", job_opt),
    opt("gpus-per-node", None, REQ, "", job_opt),
    opt("gres", None, REQ, "", job_opt),
    opt("hold", Some('H'), FLAG, "", job_opt),
    opt("licenses", Some('L'), REQ, "", job_opt),
    opt("mail-type", None, REQ, "", job_opt),
    opt("mail-user", None, REQ, "", job_opt),
    opt("mem", None, REQ, "", job_opt),
    opt("mem-per-cpu", None, REQ, "", job_opt),
    opt("mem-per-gpu", None, REQ, "", job_opt),
    opt("mincpus", None, REQ, "", job_opt),
    opt("nice", None, Arg::Optional, "", job_opt),
    opt("no-kill", Some('k'), Arg::Optional, "", job_opt),
    opt("partition", Some('p'), REQ, "", job_opt),
    opt("qos", Some('q'), REQ, "", job_opt),
    opt("reservation", None, REQ, "", job_opt),
    opt("signal", None, REQ, "", job_opt),
    opt("spread-job", None, FLAG, "", job_opt),
    opt("time", Some('t'), REQ, "", job_opt),
    opt("use-min-nodes", None, FLAG, "", job_opt),
    opt("wckey", None, REQ, "", job_opt),
    opt("chdir", Some('D'), REQ, "", |o, l, v| {
        o.chdir = Some(non_empty(l, text(v))?);
        also_job(o, l, v)
    }),
    opt("cpu-bind", None, REQ, "", cpu_bind),
    opt("cpus-per-task", Some('c'), REQ, "", |o, l, v| {
        o.cpus_per_task = Some(parse_count("--cpus-per-task", text(v))?);
        also_job(o, l, v)
    }),
    opt("error", Some('e'), REQ, "", |o, l, v| {
        o.error = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("export", None, REQ, "", |o, _, v| {
        o.export = Some(parse_export(text(v))?);
        Ok(())
    }),
    opt("gpus-per-task", None, REQ, "", |o, l, v| {
        o.gpus_per_task = Some(parse_count("--gpus-per-task", text(v))?);
        also_job(o, l, v)
    }),
    opt("job-name", Some('J'), REQ, "", |o, l, v| {
        o.job_name = Some(non_empty(l, text(v))?);
        also_job(o, l, v)
    }),
    opt("jobid", None, REQ, "", jobid),
    opt(
        "kill-on-bad-exit",
        Some('K'),
        Arg::Optional,
        "",
        kill_on_bad_exit,
    ),
    opt("label", Some('l'), FLAG, "", |o, _, _| {
        o.label = true;
        Ok(())
    }),
    opt("mpi", None, REQ, "", mpi),
    opt("nodelist", Some('w'), REQ, "", nodelist),
    opt("nodes", Some('N'), REQ, "", |o, l, v| {
        o.nodes = Some(parse_nodes(text(v))?);
        also_job(o, l, v)
    }),
    opt("ntasks", Some('n'), REQ, "", |o, l, v| {
        o.ntasks = Some(parse_count("--ntasks", text(v))?);
        also_job(o, l, v)
    }),
    opt("ntasks-per-node", None, REQ, "", |o, l, v| {
        o.ntasks_per_node = Some(parse_count("--ntasks-per-node", text(v))?);
        also_job(o, l, v)
    }),
    opt("open-mode", None, REQ, "", |o, _, v| {
        o.append = parse_open_mode(text(v))?;
        Ok(())
    }),
    opt("output", Some('o'), REQ, "", |o, l, v| {
        o.output = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    // Steps of one job share its resources in berth (Slurm's --overlap): taken as is.
    opt("overlap", None, FLAG, "", |_, _, _| Ok(())),
    opt("quiet", Some('Q'), FLAG, "", |o, _, _| {
        o.quiet = true;
        Ok(())
    }),
    opt("unbuffered", Some('u'), FLAG, "", |o, _, _| {
        o.unbuffered = true;
        Ok(())
    }),
];

/// Real srun options berth refuses by name.
pub const UNSUPPORTED: &[(&str, Option<char>)] = &[
    ("array", Some('a')),
    ("bcast", None),
    ("distribution", Some('m')),
    ("hint", None),
    ("input", Some('i')),
    ("multi-prog", None),
    ("overcommit", Some('O')),
    ("pty", None),
    ("relative", Some('r')),
];

/// Reads srun's input variables from `env` into `o` where the command line left a value
/// unset (the command line wins, as in Slurm). Counts from the allocation's environment
/// are taken only when the command line gives no count at all.
///
/// # Errors
/// A variable whose value is not what its option takes, named with the variable.
pub fn apply_env(o: &mut Opts, env: &BTreeMap<String, String>) -> Result<(), OptError> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let count = |k: &str, v: &str| parse_count(k, v);
    let counted = o.ntasks.is_some() || o.nodes.is_some() || o.ntasks_per_node.is_some();
    let named = !o.nodelist.is_empty();
    if o.nodes.is_none() && !named {
        let nnodes = get("SLURM_NNODES").or_else(|| get("SLURM_JOB_NUM_NODES"));
        if let Some(v) = nnodes {
            o.nodes = Some(parse_nodes(&v)?);
        }
    }
    if !counted && !named {
        if let Some(v) = get("SLURM_NTASKS").or_else(|| get("SLURM_NPROCS")) {
            o.ntasks = Some(count("SLURM_NTASKS", &v)?);
        }
    }
    if o.gpus_per_task.is_none() {
        if let Some(v) = get("SLURM_GPUS_PER_TASK") {
            o.gpus_per_task = Some(count("SLURM_GPUS_PER_TASK", &v)?);
        }
    }
    if o.cpus_per_task.is_none() {
        if let Some(v) = get("SRUN_CPUS_PER_TASK") {
            o.cpus_per_task = Some(count("SRUN_CPUS_PER_TASK", &v)?);
        }
    }
    if let Some(v) = get("SLURM_OPEN_MODE") {
        o.append |= parse_open_mode(&v)
            .map_err(|_| OptError::invalid("SLURM_OPEN_MODE", &v, "must be append or truncate"))?;
    }
    if o.cpu_bind.is_none() {
        if let Some(v) = get("SLURM_CPU_BIND") {
            berth_policies::cpu_bind::parse(&v)
                .map_err(|why| OptError::invalid("SLURM_CPU_BIND", &v, why.to_string()))?;
            o.cpu_bind = Some(v);
        }
    }
    if get("SLURM_KILL_BAD_EXIT").as_deref() == Some("1") {
        o.kill_on_bad_exit = true;
    }
    if get("SLURM_LABELIO").is_some() {
        o.label = true;
    }
    if o.export.is_none() {
        if let Some(v) = get("SRUN_EXPORT_ENV").or_else(|| get("SLURM_EXPORT_ENV")) {
            o.export = Some(parse_export(&v)?);
        }
    }
    Ok(())
}

/// The step request of `o` running `argv` from `cwd`, with `env` as srun's environment.
pub fn step_spec(
    o: &Opts,
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
) -> pb::StepSpec {
    let export = o.export.clone().unwrap_or(Export::All(Vec::new()));
    let (mut task_env, _) = exported_env(&export, env);
    // The step's own variables are set by the agent for each task; stale copies from the
    // allocation's environment must not shadow them.
    for k in [
        "SLURM_STEP_ID",
        "SLURM_STEPID",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_NODEID",
    ] {
        task_env.remove(k);
    }
    // Nor the batch script's MPS settings: each task's come from its own GPUs (and the
    // agent refuses a job setting them).
    task_env.retain(|k, _| !k.starts_with("CUDA_MPS_"));
    pb::StepSpec {
        ntasks: o.ntasks.unwrap_or(0),
        nodes: o.nodes.unwrap_or(0),
        ntasks_per_node: o.ntasks_per_node.unwrap_or(0),
        nodelist: o.nodelist.clone(),
        gpus_per_task: o.gpus_per_task.unwrap_or(0),
        cpus_per_task: o.cpus_per_task.unwrap_or(0),
        argv: argv.to_vec(),
        env: task_env,
        work_dir: o.chdir.clone().unwrap_or_else(|| cwd.to_string()),
        kill_on_bad_exit: o.kill_on_bad_exit,
        cpu_bind: o.cpu_bind.clone().unwrap_or_default(),
        name: o.job_name.clone().unwrap_or_else(|| {
            argv.first()
                .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
                .unwrap_or_default()
        }),
        ..Default::default()
    }
}

/// `--open-mode=append|truncate` (Slurm takes any prefix, `a` or `t`): true for append.
fn parse_open_mode(v: &str) -> Result<bool, OptError> {
    match v.to_ascii_lowercase().as_str() {
        a if !a.is_empty() && "append".starts_with(a) => Ok(true),
        t if !t.is_empty() && "truncate".starts_with(t) => Ok(false),
        _ => Err(OptError::invalid(
            "--open-mode",
            v,
            "must be append or truncate",
        )),
    }
}

/// `-N N` (or `N-N`): a step uses exactly N of the allocation's nodes; a range with room
/// to choose is refused (steps are laid out on a fixed node count).
fn parse_nodes(value: &str) -> Result<u32, OptError> {
    match parse_node_range(value)? {
        (n, 0) => Ok(n),
        (lo, hi) if lo == hi => Ok(lo),
        _ => Err(OptError::unsupported(
            "--nodes",
            value,
            "a node count range for a step (give one number)",
        )),
    }
}
