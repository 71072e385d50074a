//! `sbatch`: the command line, `SBATCH_*` variables and `#SBATCH` directives → a `JobSpec`.
//!
//! Users bring scripts written for Slurm, so options parse as Slurm's sbatch parses them:
//! getopt rules (`--opt=v`, `--opt v`, `-Xv`, `-X v`, unique prefixes of long options,
//! options end at the script path), `#SBATCH` lines only at the top of the script, and the
//! precedence command line > `SBATCH_*` environment > script. The defaults are Slurm's
//! (one node, one task, one CPU per task, `slurm-%j.out`, the whole environment exported).
//!
//! What berth cannot do yet must never be dropped quietly: a job that silently lost its
//! `--dependency` or `--exclusive` runs wrong and nobody notices. Every real sbatch option
//! berth lacks is therefore an error naming it, and so is a value berth cannot honour.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use berth_proto::v1::{DependencyCondition, JobSpec};
use thiserror::Error;

use crate::duration::{parse_time_limit, DurationError};
use crate::memory::{parse_mem, MemError};

/// Who is submitting, from where: everything sbatch reads from its process.
#[derive(Debug, Clone, Default)]
pub struct SubmitContext {
    /// The directory sbatch runs in: relative paths resolve against it.
    pub cwd: PathBuf,
    /// The submitting environment (`--export` picks from it; `SBATCH_*` are read from it).
    pub env: BTreeMap<String, String>,
    /// The submitting user's name.
    pub user: String,
    /// The submitting user's uid.
    pub uid: u32,
    /// The submitting user's primary gid.
    pub gid: u32,
    /// This host's name (`AllocNode`, `SLURM_SUBMIT_HOST`).
    pub host: String,
}

/// A parsed submission: what to send, and how to report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The job to submit.
    pub spec: JobSpec,
    /// `--parsable`: print only the job id.
    pub parsable: bool,
    /// Things the user should hear about that are not errors (e.g. an `#SBATCH` line after
    /// the first command, which Slurm ignores too). Print each to stderr as `sbatch: warning:`.
    pub warnings: Vec<String>,
}

/// Why a submission was refused. Nothing was submitted; messages follow Slurm's wording
/// where Slurm has one.
#[derive(Debug, Error)]
pub enum SbatchError {
    /// Not an sbatch option at all.
    #[error("unrecognized option '{0}'")]
    UnrecognizedOption(String),
    /// A long-option prefix that matches several options.
    #[error("option '{option}' is ambiguous; possibilities: {candidates}")]
    AmbiguousOption {
        /// What the user wrote.
        option: String,
        /// The matching options.
        candidates: String,
    },
    /// A real sbatch option berth does not implement yet.
    #[error("option {0} is not supported by berth yet")]
    UnsupportedOption(String),
    /// An option that needs a value came last.
    #[error("option '{0}' requires an argument")]
    MissingArgument(String),
    /// `--flag=value` for an option that takes none.
    #[error("option '{0}' doesn't allow an argument")]
    UnexpectedArgument(String),
    /// A bad `--time`.
    #[error("Invalid --time specification: {value} ({reason})")]
    InvalidTime {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: DurationError,
    },
    /// A bad `--mem`.
    #[error("invalid --mem value '{value}': {reason}")]
    InvalidMem {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: MemError,
    },
    /// A bad `--dependency`.
    #[error("Invalid dependency specification '{value}': {reason}")]
    InvalidDependency {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bad `--signal`.
    #[error("Invalid --signal specification '{value}': {reason}")]
    InvalidSignal {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A count that is not a number.
    #[error("Invalid numeric value \"{value}\" for {option}")]
    InvalidNumber {
        /// The option, e.g. `--nodes`.
        option: &'static str,
        /// The value given.
        value: String,
    },
    /// A count of zero where at least one is needed.
    #[error("Invalid {option} value \"{value}\": must be at least 1")]
    ZeroCount {
        /// The option, e.g. `--nodes`.
        option: &'static str,
        /// The value given.
        value: String,
    },
    /// Any other bad value.
    #[error("invalid {option} value '{value}': {reason}")]
    InvalidValue {
        /// The option.
        option: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A valid Slurm value that berth cannot honour yet.
    #[error("{option}={value}: {what} is not supported by berth yet")]
    UnsupportedValue {
        /// The option.
        option: &'static str,
        /// The value given.
        value: String,
        /// The feature the value needs.
        what: String,
    },
    /// GPU options that ask for different things.
    #[error("conflicting GPU requests: {0}")]
    GpuConflict(String),
    /// A MIG request that cannot be honoured as written.
    #[error("invalid MIG request {given}: {reason}")]
    Mig {
        /// The option as written (`--gres=gpu:1g.10gb:0`).
        given: String,
        /// What is wrong.
        reason: String,
    },
    /// A fraction of a GPU (`--gpus=0.5`) that cannot be honoured as written.
    #[error("invalid GPU fraction {given}: {reason}")]
    Fraction {
        /// The option as written (`--gpus=1.5`).
        given: String,
        /// What is wrong.
        reason: String,
    },
    /// `--gpus` (a total) that does not split evenly over the nodes.
    #[error("--gpus={gpus} cannot be split evenly over {nodes} nodes; use --gpus-per-node to ask for GPUs on each node")]
    GpusNotDivisible {
        /// The total asked for.
        gpus: u32,
        /// The node count.
        nodes: u32,
    },
    /// Fewer tasks than nodes: some node would run nothing.
    #[error("--ntasks={ntasks} is less than --nodes={nodes}: every node needs at least one task")]
    TasksBelowNodes {
        /// Tasks asked for.
        ntasks: u32,
        /// Nodes asked for.
        nodes: u32,
    },
    /// The script file could not be read.
    #[error("Unable to open file {path}: {error}")]
    ScriptRead {
        /// The path as given.
        path: String,
        /// Why.
        error: io::Error,
    },
    /// Standard input could not be read.
    #[error("unable to read the batch script from standard input: {0}")]
    StdinRead(io::Error),
    /// An empty script.
    #[error("Batch script is empty!")]
    EmptyScript,
    /// A script without a `#!` line.
    #[error(
        "This does not look like a batch script.  The first line must start with #! followed by the path to an interpreter.\nFor instance: #!/bin/sh"
    )]
    NotBatchScript,
    /// A script saved with Windows line ends, which the interpreter would choke on.
    #[error("Batch script contains DOS line breaks (\\r\\n) instead of expected UNIX line breaks (\\n).")]
    DosLineBreaks,
    /// `--wrap` together with a script path or script arguments.
    #[error("--wrap cannot be combined with a script or script arguments (got '{0}')")]
    WrapWithScript(String),
    /// `--wrap` inside a script.
    #[error("--wrap is only allowed on the command line, not in a #SBATCH directive")]
    WrapInScript,
    /// An `#SBATCH` line that does not parse as options.
    #[error("line {line}: malformed #SBATCH directive ({reason}): {text}")]
    MalformedDirective {
        /// 1-based line number in the script.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// An error in an option given by an `#SBATCH` line.
    #[error("line {line}: #SBATCH directive: {error}")]
    Directive {
        /// 1-based line number in the script.
        line: usize,
        /// The option's error.
        error: Box<SbatchError>,
    },
    /// An error in an option given by an `SBATCH_*` variable.
    #[error("environment variable {var}: {error}")]
    Environment {
        /// The variable.
        var: String,
        /// The option's error.
        error: Box<SbatchError>,
    },
    /// `-h/--help/--usage`: the caller prints [`USAGE`] and exits 0.
    #[error("help requested")]
    HelpRequested,
    /// `-V/--version`: the caller prints its version and exits 0.
    #[error("version requested")]
    VersionRequested,
}

/// What `sbatch --help` prints.
pub const USAGE: &str = "\
Usage: sbatch [OPTIONS(0)...] [ : [OPTIONS(N)...]] script(0) [args(0)...]

Parallel run options (supported by berth):
  -A, --account=name          charge job to specified account
  -c, --cpus-per-task=ncpus   number of cpus required per task
      --container-image=PATH  [pyxis] run the script in a container: an OCI image
                              layout directory or archive, or a rootfs directory
      --container-mounts=SRC:DST[:FLAGS][,SRC:DST...]
                              [pyxis] bind mount[s] inside the container; flags
                              separated with '+', e.g. ro+rprivate
      --container-workdir=PATH
                              [pyxis] working directory inside the container
      --container-env=NAME[,NAME...]
                              [pyxis] variables whose submitted value wins over
                              the image's
  -D, --chdir=directory       set working directory for batch script
  -e, --error=err             file for batch script's standard error
      --export[=names]        specify environment variables to export
  -G, --gpus=n                count of GPUs required for the job (total, split over nodes)
      --gpus-per-node=n       number of GPUs required per allocated node
      --gpus-per-task=n       number of GPUs required per task (tasks spread evenly)
      --gres=list             required generic resources (gpu[:type][:count] only)
  -H, --hold                  submit job in held state
  -J, --job-name=jobname      name of job
      --mem=MB                minimum amount of real memory per node
  -N, --nodes=N               number of nodes on which to run
  -n, --ntasks=ntasks         number of tasks to run
  -o, --output=out            file for batch script's standard output
  -p, --partition=partition   partition requested
      --parsable              outputs only the jobid
  -q, --qos=qos               quality of service
      --switches=max-switches{@max-time-to-wait}
                              Optimum switches and max time to wait for optimum
  -t, --time=minutes          time limit
      --wrap[=command string] wrap command string in a sh script and submit

Help options:
  -h, --help                  show this help message
      --usage                 display brief usage message
  -V, --version               output version information and exit

Other Slurm sbatch options are recognised and refused with an error naming them.
";

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    None,
    Required,
}

/// What a supported option sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    JobName,
    Output,
    Error,
    Time,
    Gpus,
    Gres,
    GpusPerNode,
    GpusPerTask,
    Switches,
    CpusPerTask,
    Mem,
    Nodes,
    Ntasks,
    Partition,
    Account,
    Qos,
    Requeue,
    NoRequeue,
    Signal,
    Dependency,
    Chdir,
    Export,
    ContainerImage,
    ContainerMounts,
    ContainerWorkdir,
    ContainerEnv,
    Parsable,
    Hold,
    Wrap,
    Help,
    Version,
}

/// `--signal=[B:]SIG[@SECS]`: what preemption sends first and how long before SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSpec {
    /// Signal number.
    pub number: i32,
    /// Seconds between the signal and SIGKILL (Slurm's default 60).
    pub secs: u32,
    /// `B:`: the batch shell only.
    pub batch_only: bool,
}

/// Parses `--signal`'s value: `[B:]SIG[@SECS]`, SIG a number (1-64) or a name with or
/// without `SIG` (`USR1`, `SIGTERM`…), SECS 0-65535 (default 60). Slurm's `R:`
/// (reservation) is refused: berth has no reservations.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_signal(value: &str) -> Result<SignalSpec, String> {
    let (batch_only, rest) = match value.split_once(':') {
        Some(("B", rest)) => (true, rest),
        Some(("R" | "RB" | "BR", _)) => return Err("R: (reservation) is not supported".into()),
        Some((flag, _)) => return Err(format!("unknown flag {flag:?} (only B:)")),
        None => (false, value),
    };
    let (sig, secs) = match rest.split_once('@') {
        Some((sig, secs)) => {
            let secs: u32 = secs
                .parse()
                .ok()
                .filter(|s| *s <= 65_535)
                .ok_or_else(|| format!("time {secs:?} is not a number of seconds 0-65535"))?;
            (sig, secs)
        }
        None => (rest, 60),
    };
    let number = match sig.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) => n,
        Ok(n) => return Err(format!("signal number {n} is out of range 1-64")),
        Err(_) => signal_by_name(sig).ok_or_else(|| format!("unknown signal {sig:?}"))?,
    };
    Ok(SignalSpec {
        number,
        secs,
        batch_only,
    })
}

/// Dependency types berth evaluates (Slurm's meanings): `after` (each job started or was
/// cancelled), `afterany` (ended), `afterok` (completed, exit code 0), `afternotok` (ended
/// any other way).
pub const DEPENDENCY_KINDS: [&str; 4] = ["after", "afterany", "afterok", "afternotok"];

/// Most conditions one `--dependency` may carry.
pub const DEPENDENCIES_MAX: usize = 64;

/// Parses `--dependency`'s value: `TYPE:ID[:ID...][,TYPE:ID...]`, every condition
/// required (Slurm's `,`). Slurm's `?` (any of), `+TIME` delays, `singleton`,
/// `aftercorr` and `afterburstbuffer` are refused by name rather than misread.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_dependency(value: &str) -> Result<Vec<DependencyCondition>, String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    if value.contains('?') {
        return Err("'?' (any of the conditions) is not supported; use ',' (all)".into());
    }
    let mut out = Vec::new();
    for part in value.split(',') {
        let Some((kind, ids)) = part.split_once(':') else {
            return match part {
                "singleton" => Err("singleton is not supported by berth yet".into()),
                _ => Err(format!("{part:?} is not TYPE:JOBID[:JOBID...]")),
            };
        };
        if !DEPENDENCY_KINDS.contains(&kind) {
            return Err(format!(
                "dependency type {kind:?} is not supported (use {})",
                DEPENDENCY_KINDS.join(", ")
            ));
        }
        for id in ids.split(':') {
            if id.contains('+') {
                return Err(format!("{id:?}: +TIME delays are not supported"));
            }
            let job_id = id
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{id:?} is not a job id"))?;
            out.push(DependencyCondition {
                kind: kind.to_string(),
                job_id,
            });
        }
    }
    if out.len() > DEPENDENCIES_MAX {
        return Err(format!(
            "{} conditions, at most {DEPENDENCIES_MAX}",
            out.len()
        ));
    }
    Ok(out)
}

fn signal_by_name(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

/// A supported option: long name, short letter, value, effect.
type Supported = (&'static str, Option<char>, Arg, Key);

/// The options berth implements.
const SUPPORTED: &[Supported] = &[
    ("account", Some('A'), Arg::Required, Key::Account),
    ("chdir", Some('D'), Arg::Required, Key::Chdir),
    ("container-env", None, Arg::Required, Key::ContainerEnv),
    ("container-image", None, Arg::Required, Key::ContainerImage),
    (
        "container-mounts",
        None,
        Arg::Required,
        Key::ContainerMounts,
    ),
    (
        "container-workdir",
        None,
        Arg::Required,
        Key::ContainerWorkdir,
    ),
    ("cpus-per-task", Some('c'), Arg::Required, Key::CpusPerTask),
    ("dependency", Some('d'), Arg::Required, Key::Dependency),
    ("error", Some('e'), Arg::Required, Key::Error),
    ("export", None, Arg::Required, Key::Export),
    ("gpus", Some('G'), Arg::Required, Key::Gpus),
    ("gpus-per-node", None, Arg::Required, Key::GpusPerNode),
    ("gpus-per-task", None, Arg::Required, Key::GpusPerTask),
    ("gres", None, Arg::Required, Key::Gres),
    ("help", Some('h'), Arg::None, Key::Help),
    ("hold", Some('H'), Arg::None, Key::Hold),
    ("job-name", Some('J'), Arg::Required, Key::JobName),
    ("mem", None, Arg::Required, Key::Mem),
    ("nodes", Some('N'), Arg::Required, Key::Nodes),
    ("ntasks", Some('n'), Arg::Required, Key::Ntasks),
    ("output", Some('o'), Arg::Required, Key::Output),
    ("parsable", None, Arg::None, Key::Parsable),
    ("partition", Some('p'), Arg::Required, Key::Partition),
    ("qos", Some('q'), Arg::Required, Key::Qos),
    ("requeue", None, Arg::None, Key::Requeue),
    ("no-requeue", None, Arg::None, Key::NoRequeue),
    ("signal", None, Arg::Required, Key::Signal),
    ("switches", None, Arg::Required, Key::Switches),
    ("time", Some('t'), Arg::Required, Key::Time),
    ("usage", None, Arg::None, Key::Help),
    ("version", Some('V'), Arg::None, Key::Version),
    // Slurm's name for --chdir before 17.11; old scripts still carry it.
    ("workdir", None, Arg::Required, Key::Chdir),
    ("wrap", None, Arg::Required, Key::Wrap),
];

/// Real sbatch options (from the sbatch(1) man page) that berth refuses by name.
const UNSUPPORTED: &[(&str, Option<char>)] = &[
    ("acctg-freq", None),
    ("array", Some('a')),
    ("batch", None),
    ("bb", None),
    ("bbf", None),
    ("begin", Some('b')),
    ("checkpoint", None),
    ("cluster-constraint", None),
    ("clusters", Some('M')),
    ("comment", None),
    ("constraint", Some('C')),
    ("container", None),
    ("container-id", None),
    ("contiguous", None),
    ("core-spec", Some('S')),
    ("cores-per-socket", None),
    ("cpu-freq", None),
    ("cpus-per-gpu", None),
    ("deadline", None),
    ("delay-boot", None),
    ("distribution", Some('m')),
    ("exclude", Some('x')),
    ("exclusive", None),
    ("export-file", None),
    ("extra", None),
    ("extra-node-info", Some('B')),
    ("get-user-env", None),
    ("gid", None),
    ("gpu-bind", None),
    ("gpu-freq", None),
    ("gpus-per-socket", None),
    ("gres-flags", None),
    ("hint", None),
    ("ignore-pbs", None),
    ("immediate", Some('I')),
    ("input", Some('i')),
    ("kill-on-invalid-dep", None),
    ("licenses", Some('L')),
    ("mail-type", None),
    ("mail-user", None),
    ("mcs-label", None),
    ("mem-bind", None),
    ("mem-per-cpu", None),
    ("mem-per-gpu", None),
    ("mincpus", None),
    ("mpi", None),
    ("network", None),
    ("nice", None),
    ("no-kill", Some('k')),
    ("nodefile", Some('F')),
    ("nodelist", Some('w')),
    ("ntasks-per-core", None),
    ("ntasks-per-gpu", None),
    ("ntasks-per-node", None),
    ("ntasks-per-socket", None),
    ("oom-kill-step", None),
    ("open-mode", None),
    ("overcommit", Some('O')),
    ("oversubscribe", Some('s')),
    ("power", None),
    ("prefer", None),
    ("priority", None),
    ("profile", None),
    ("propagate", None),
    ("quiet", Some('Q')),
    ("reboot", None),
    ("reservation", None),
    ("segment", None),
    ("share", None),
    ("sockets-per-node", None),
    ("spread-job", None),
    ("stepmgr", None),
    ("tasks-per-node", None),
    ("test-only", None),
    ("thread-spec", None),
    ("threads-per-core", None),
    ("time-min", None),
    ("tmp", None),
    ("tres-bind", None),
    ("tres-per-task", None),
    ("uid", None),
    ("use-min-nodes", None),
    ("verbose", Some('v')),
    ("wait", Some('W')),
    ("wait-all-nodes", None),
    ("wckey", None),
];

/// sbatch's input environment variables (sbatch(1), INPUT ENVIRONMENT VARIABLES) and the
/// long option each stands for. They override the script and yield to the command line.
const ENV_OPTIONS: &[(&str, &str)] = &[
    ("SBATCH_ACCOUNT", "account"),
    ("SBATCH_ACCTG_FREQ", "acctg-freq"),
    ("SBATCH_ARRAY_INX", "array"),
    ("SBATCH_BATCH", "batch"),
    ("SBATCH_CLUSTER_CONSTRAINT", "cluster-constraint"),
    ("SBATCH_CLUSTERS", "clusters"),
    ("SBATCH_CONSTRAINT", "constraint"),
    ("SBATCH_CONTAINER", "container"),
    ("SBATCH_CONTAINER_ID", "container-id"),
    ("SBATCH_CORE_SPEC", "core-spec"),
    ("SBATCH_CPUS_PER_GPU", "cpus-per-gpu"),
    ("SBATCH_DEBUG", "verbose"),
    ("SBATCH_DELAY_BOOT", "delay-boot"),
    ("SBATCH_DISTRIBUTION", "distribution"),
    ("SBATCH_ERROR", "error"),
    ("SBATCH_EXCLUSIVE", "exclusive"),
    ("SBATCH_EXPORT", "export"),
    ("SBATCH_GET_USER_ENV", "get-user-env"),
    ("SBATCH_GPU_BIND", "gpu-bind"),
    ("SBATCH_GPU_FREQ", "gpu-freq"),
    ("SBATCH_GPUS", "gpus"),
    ("SBATCH_GPUS_PER_NODE", "gpus-per-node"),
    ("SBATCH_GPUS_PER_TASK", "gpus-per-task"),
    ("SBATCH_GRES", "gres"),
    ("SBATCH_GRES_FLAGS", "gres-flags"),
    ("SBATCH_HINT", "hint"),
    ("SBATCH_IGNORE_PBS", "ignore-pbs"),
    ("SBATCH_JOB_NAME", "job-name"),
    ("SBATCH_MEM_BIND", "mem-bind"),
    ("SBATCH_MEM_PER_CPU", "mem-per-cpu"),
    ("SBATCH_MEM_PER_GPU", "mem-per-gpu"),
    ("SBATCH_MEM_PER_NODE", "mem"),
    ("SBATCH_NETWORK", "network"),
    ("SBATCH_NO_KILL", "no-kill"),
    ("SBATCH_NO_REQUEUE", "no-requeue"),
    ("SBATCH_OPEN_MODE", "open-mode"),
    ("SBATCH_OUTPUT", "output"),
    ("SBATCH_OVERCOMMIT", "overcommit"),
    ("SBATCH_PARTITION", "partition"),
    ("SBATCH_PROFILE", "profile"),
    ("SBATCH_QOS", "qos"),
    ("SBATCH_REQ_SWITCH", "switches"),
    ("SBATCH_REQUEUE", "requeue"),
    ("SBATCH_RESERVATION", "reservation"),
    ("SBATCH_SIGNAL", "signal"),
    ("SBATCH_SPREAD_JOB", "spread-job"),
    ("SBATCH_THREAD_SPEC", "thread-spec"),
    ("SBATCH_THREADS_PER_CORE", "threads-per-core"),
    ("SBATCH_TIMELIMIT", "time"),
    ("SBATCH_TRES_PER_TASK", "tres-per-task"),
    ("SBATCH_USE_MIN_NODES", "use-min-nodes"),
    ("SBATCH_WAIT", "wait"),
    ("SBATCH_WAIT_ALL_NODES", "wait-all-nodes"),
    ("SBATCH_WCKEY", "wckey"),
];

/// A GPU request as one option gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GpuRequest {
    /// GRES type (`h100`) or MIG profile (`3g.40gb`, see [`is_mig`]); empty for any.
    kind: String,
    count: u32,
    /// A fraction of one GPU in milli (`0.25` is 250; then `count` is 1); 0: whole GPUs.
    milli: u32,
    /// The option as written, for conflict messages (`--gres=gpu:2`).
    given: String,
}

/// `--export`: which variables the job sees.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Export {
    /// The whole environment, plus or overridden by these.
    All(Vec<(String, Option<String>)>),
    /// Only these (values from the environment unless given).
    Only(Vec<(String, Option<String>)>),
    /// Nothing.
    Nothing,
}

/// Options from one source (command line, environment, script). `None` = not given.
#[derive(Debug, Clone, Default)]
struct Opts {
    job_name: Option<String>,
    output: Option<String>,
    error: Option<String>,
    time_secs: Option<u64>,
    gpus: Option<GpuRequest>,
    gres: Option<GpuRequest>,
    gpus_per_node: Option<GpuRequest>,
    gpus_per_task: Option<GpuRequest>,
    /// `--switches=N[@WAIT]`: (N, wait seconds if given).
    switches: Option<(u32, Option<u64>)>,
    cpus_per_task: Option<u32>,
    mem_mb: Option<u64>,
    nodes: Option<u32>,
    ntasks: Option<u32>,
    partition: Option<String>,
    account: Option<String>,
    qos: Option<String>,
    requeue: Option<bool>,
    signal: Option<SignalSpec>,
    dependencies: Option<Vec<DependencyCondition>>,
    chdir: Option<String>,
    export: Option<Export>,
    wrap: Option<String>,
    parsable: bool,
    hold: bool,
    container_image: Option<String>,
    container_mounts: Option<Vec<String>>,
    container_workdir: Option<String>,
    container_env: Option<Vec<String>>,
}

impl Opts {
    /// `self` with every option `top` gives replaced by `top`'s (lists such as `--export`
    /// are replaced whole, not merged).
    fn overlaid_by(self, top: Opts) -> Opts {
        Opts {
            job_name: top.job_name.or(self.job_name),
            output: top.output.or(self.output),
            error: top.error.or(self.error),
            time_secs: top.time_secs.or(self.time_secs),
            gpus: top.gpus.or(self.gpus),
            gres: top.gres.or(self.gres),
            gpus_per_node: top.gpus_per_node.or(self.gpus_per_node),
            gpus_per_task: top.gpus_per_task.or(self.gpus_per_task),
            switches: top.switches.or(self.switches),
            cpus_per_task: top.cpus_per_task.or(self.cpus_per_task),
            mem_mb: top.mem_mb.or(self.mem_mb),
            nodes: top.nodes.or(self.nodes),
            ntasks: top.ntasks.or(self.ntasks),
            partition: top.partition.or(self.partition),
            account: top.account.or(self.account),
            qos: top.qos.or(self.qos),
            requeue: top.requeue.or(self.requeue),
            signal: top.signal.or(self.signal),
            dependencies: top.dependencies.or(self.dependencies),
            chdir: top.chdir.or(self.chdir),
            export: top.export.or(self.export),
            wrap: top.wrap.or(self.wrap),
            parsable: top.parsable || self.parsable,
            hold: top.hold || self.hold,
            container_image: top.container_image.or(self.container_image),
            container_mounts: top.container_mounts.or(self.container_mounts),
            container_workdir: top.container_workdir.or(self.container_workdir),
            container_env: top.container_env.or(self.container_env),
        }
    }
}

/// Where the script came from.
enum Script {
    /// A file: the path as given and as made absolute.
    File { given: String, absolute: String },
    /// `--wrap`.
    Wrap,
    /// Standard input.
    Stdin,
}

/// Parses `sbatch` arguments (everything after the command name) into a submission.
///
/// Options end at the first argument that is not one (the script path) or after `--`; the
/// rest are the script's arguments. Without a script path and without `--wrap`, the script
/// is read with `read_stdin`, as sbatch reads standard input. Precedence: command line, then
/// `SBATCH_*` variables in `ctx.env`, then `#SBATCH` directives.
///
/// # Errors
/// [`SbatchError`] naming the option, value, line or file at fault; `HelpRequested` and
/// `VersionRequested` ask the caller to print [`USAGE`] or its version instead.
pub fn parse_submission(
    args: &[String],
    ctx: &SubmitContext,
    read_stdin: &mut dyn FnMut() -> io::Result<String>,
) -> Result<Submission, SbatchError> {
    let mut cli = Opts::default();
    let operands = &args[parse_options(args, &mut cli)?..];
    let env = options_from_env(&ctx.env)?;
    let (script, text, script_args) = match (&cli.wrap, operands.first()) {
        (Some(_), Some(extra)) => return Err(SbatchError::WrapWithScript(extra.clone())),
        (Some(command), None) => (Script::Wrap, wrap_script(command), Vec::new()),
        (None, Some(path)) => {
            let absolute = absolute_path(&ctx.cwd, path);
            let text =
                std::fs::read_to_string(&absolute).map_err(|error| SbatchError::ScriptRead {
                    path: path.clone(),
                    error,
                })?;
            (
                Script::File {
                    given: path.clone(),
                    absolute,
                },
                text,
                operands[1..].to_vec(),
            )
        }
        (None, None) => (
            Script::Stdin,
            read_stdin().map_err(SbatchError::StdinRead)?,
            Vec::new(),
        ),
    };
    check_script(&text)?;
    let (directives, warnings) = parse_directives(&text)?;
    let opts = directives.overlaid_by(env).overlaid_by(cli);
    let parsable = opts.parsable;
    let spec = build_spec(opts, &script, text, script_args, ctx)?;
    Ok(Submission {
        spec,
        parsable,
        warnings,
    })
}

/// The script sbatch generates for `--wrap` (byte for byte Slurm's).
fn wrap_script(command: &str) -> String {
    format!("#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{command}\n")
}

/// Rejects scripts Slurm rejects: empty, no `#!` interpreter line, DOS line ends.
fn check_script(text: &str) -> Result<(), SbatchError> {
    if text.is_empty() {
        return Err(SbatchError::EmptyScript);
    }
    if !text.starts_with("#!") {
        return Err(SbatchError::NotBatchScript);
    }
    if text.contains("\r\n") {
        return Err(SbatchError::DosLineBreaks);
    }
    Ok(())
}

/// `path` made absolute against `cwd`, with `.` components dropped (`./a.sh` → `/cwd/a.sh`).
fn absolute_path(cwd: &Path, path: &str) -> String {
    cwd.join(path)
        .components()
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
}

/// Parses options from `args` into `opts` and returns the index of the first operand
/// (`args.len()` when there is none), getopt-style with `+` (stop at the first operand).
fn parse_options(args: &[String], opts: &mut Opts) -> Result<usize, SbatchError> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--" {
            return Ok(i + 1);
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            let (long, _, takes, key) = lookup_long(name)?;
            let value = match (takes, inline) {
                (Arg::None, Some(_)) => {
                    return Err(SbatchError::UnexpectedArgument(format!("--{long}")))
                }
                (Arg::None, None) => None,
                (Arg::Required, Some(value)) => Some(value),
                (Arg::Required, None) => {
                    i += 1;
                    let next = args
                        .get(i)
                        .ok_or_else(|| SbatchError::MissingArgument(format!("--{long}")))?;
                    Some(next.as_str())
                }
            };
            apply(opts, key, long, value)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            i = parse_short_cluster(args, i, opts)?;
        } else {
            return Ok(i);
        }
        i += 1;
    }
    Ok(args.len())
}

/// Parses `-Hv`, `-N2`, `-N 2`: flags may be grouped, and the first option that takes a
/// value takes the rest of the word or, if nothing is left, the next argument. Returns the
/// index of the last argument consumed.
fn parse_short_cluster(
    args: &[String],
    mut i: usize,
    opts: &mut Opts,
) -> Result<usize, SbatchError> {
    let word = &args[i][1..];
    for (pos, letter) in word.char_indices() {
        let (long, _, takes, key) = lookup_short(letter)?;
        if takes == Arg::None {
            apply(opts, key, long, None)?;
            continue;
        }
        let rest = &word[pos + letter.len_utf8()..];
        let value = if rest.is_empty() {
            i += 1;
            args.get(i)
                .ok_or_else(|| SbatchError::MissingArgument(format!("-{letter}")))?
                .as_str()
        } else {
            rest
        };
        apply(opts, key, long, Some(value))?;
        return Ok(i);
    }
    Ok(i)
}

/// Finds a long option by exact name or unique prefix (as getopt_long does).
fn lookup_long(name: &str) -> Result<Supported, SbatchError> {
    if let Some(found) = SUPPORTED.iter().find(|o| o.0 == name) {
        return Ok(*found);
    }
    if UNSUPPORTED.iter().any(|o| o.0 == name) {
        return Err(SbatchError::UnsupportedOption(format!("--{name}")));
    }
    let supported = SUPPORTED
        .iter()
        .map(|o| o.0)
        .filter(|long| long.starts_with(name));
    let unsupported = UNSUPPORTED
        .iter()
        .map(|o| o.0)
        .filter(|long| long.starts_with(name));
    let mut candidates: Vec<&str> = supported.chain(unsupported).collect();
    candidates.sort_unstable();
    candidates.dedup();
    match candidates.as_slice() {
        _ if name.is_empty() => Err(SbatchError::UnrecognizedOption(format!("--{name}"))),
        [] => Err(SbatchError::UnrecognizedOption(format!("--{name}"))),
        [only] => lookup_long(only),
        many => Err(SbatchError::AmbiguousOption {
            option: format!("--{name}"),
            candidates: many
                .iter()
                .map(|c| format!("'--{c}'"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

/// Finds a short option.
fn lookup_short(letter: char) -> Result<Supported, SbatchError> {
    if let Some(found) = SUPPORTED.iter().find(|o| o.1 == Some(letter)) {
        return Ok(*found);
    }
    match UNSUPPORTED.iter().find(|o| o.1 == Some(letter)) {
        Some((long, _)) => Err(SbatchError::UnsupportedOption(format!(
            "-{letter}/--{long}"
        ))),
        None => Err(SbatchError::UnrecognizedOption(format!("-{letter}"))),
    }
}

/// Reads `SBATCH_*` variables as the options they stand for. Empty values of supported
/// options request nothing and are skipped; an unsupported one is an error even when empty,
/// since for flags merely setting the variable turns the option on.
fn options_from_env(env: &BTreeMap<String, String>) -> Result<Opts, SbatchError> {
    let mut opts = Opts::default();
    for (var, long) in ENV_OPTIONS {
        let Some(value) = env.get(*var) else { continue };
        let wrap = |error| SbatchError::Environment {
            var: var.to_string(),
            error: Box::new(error),
        };
        let (long, _, _, key) = lookup_long(long).map_err(wrap)?;
        if !value.is_empty() {
            apply(&mut opts, key, long, Some(value)).map_err(wrap)?;
        }
    }
    // Slurm's SBATCH_WAIT4SWITCH is the @max-wait half of --switches on its own.
    if let Some(value) = env.get("SBATCH_WAIT4SWITCH").filter(|v| !v.is_empty()) {
        let secs = parse_time_limit(value).map_err(|reason| SbatchError::Environment {
            var: "SBATCH_WAIT4SWITCH".into(),
            error: Box::new(SbatchError::InvalidTime {
                value: value.clone(),
                reason,
            }),
        })?;
        let count = opts.switches.map_or(0, |(n, _)| n);
        opts.switches = Some((count, Some(secs)));
    }
    Ok(opts)
}

/// Slurm's default `max_switch_wait` (SchedulerParameters): how long `--switches=N`
/// without `@max-wait` waits.
pub const SWITCH_WAIT_DEFAULT_SECS: u64 = 300;

/// `--switches=N[@max-wait]`: N ≥ 1 leaf switches, max-wait in `--time`'s formats.
fn parse_switches(value: &str) -> Result<(u32, Option<u64>), SbatchError> {
    let (count, wait) = match value.split_once('@') {
        Some((c, w)) => (c, Some(w)),
        None => (value, None),
    };
    let count = parse_count("--switches", count)?;
    let wait = match wait {
        None => None,
        Some(w) => Some(
            parse_time_limit(w).map_err(|reason| SbatchError::InvalidValue {
                option: "--switches",
                value: value.to_string(),
                reason: format!("max-wait {w:?}: {reason}"),
            })?,
        ),
    };
    Ok((count, wait))
}

/// Records one option's value in `opts`, validating it. `long` names it in errors.
fn apply(
    opts: &mut Opts,
    key: Key,
    long: &'static str,
    value: Option<&str>,
) -> Result<(), SbatchError> {
    let value = value.unwrap_or_default();
    let text = || non_empty(long, value);
    match key {
        Key::JobName => opts.job_name = Some(text()?),
        Key::Output => opts.output = Some(text()?),
        Key::Error => opts.error = Some(text()?),
        Key::Account => opts.account = Some(text()?),
        Key::Qos => opts.qos = Some(text()?),
        Key::Requeue => opts.requeue = Some(true),
        Key::NoRequeue => opts.requeue = Some(false),
        Key::Signal => {
            let sig = parse_signal(value).map_err(|reason| SbatchError::InvalidSignal {
                value: value.to_string(),
                reason,
            })?;
            opts.signal = Some(sig);
        }
        Key::Dependency => {
            let deps =
                parse_dependency(value).map_err(|reason| SbatchError::InvalidDependency {
                    value: value.to_string(),
                    reason,
                })?;
            opts.dependencies = Some(deps);
        }
        Key::Chdir => opts.chdir = Some(text()?),
        Key::Wrap => opts.wrap = Some(text()?),
        Key::Partition => opts.partition = Some(parse_partition(value)?),
        Key::Time => {
            let secs = parse_time_limit(value).map_err(|reason| SbatchError::InvalidTime {
                value: value.to_string(),
                reason,
            })?;
            opts.time_secs = Some(secs);
        }
        Key::Mem => {
            let mib = parse_mem(value).map_err(|reason| SbatchError::InvalidMem {
                value: value.to_string(),
                reason,
            })?;
            opts.mem_mb = Some(mib);
        }
        Key::Gpus => opts.gpus = Some(parse_gpu_count("--gpus", value)?),
        Key::GpusPerNode => opts.gpus_per_node = Some(parse_gpu_count("--gpus-per-node", value)?),
        Key::GpusPerTask => opts.gpus_per_task = Some(parse_gpu_count("--gpus-per-task", value)?),
        Key::Switches => opts.switches = Some(parse_switches(value)?),
        Key::Gres => opts.gres = Some(parse_gres(value)?),
        Key::CpusPerTask => opts.cpus_per_task = Some(parse_count("--cpus-per-task", value)?),
        Key::Ntasks => opts.ntasks = Some(parse_count("--ntasks", value)?),
        Key::Nodes => opts.nodes = Some(parse_nodes(value)?),
        Key::Export => opts.export = Some(parse_export(value)?),
        Key::ContainerImage => opts.container_image = Some(parse_container_image(value)?),
        Key::ContainerMounts => opts.container_mounts = Some(parse_container_mounts(value)?),
        Key::ContainerWorkdir => opts.container_workdir = Some(parse_container_workdir(value)?),
        Key::ContainerEnv => opts.container_env = Some(parse_container_env(value)?),
        Key::Parsable => opts.parsable = true,
        Key::Hold => opts.hold = true,
        Key::Help => return Err(SbatchError::HelpRequested),
        Key::Version => return Err(SbatchError::VersionRequested),
    }
    Ok(())
}

/// `--container-image`: a local path (made absolute later). Registry references
/// (`nvcr.io#nvidia/pytorch:24.01`, `docker://…`) would need a puller berth does not have.
fn parse_container_image(value: &str) -> Result<String, SbatchError> {
    let invalid = |reason: &str| SbatchError::InvalidValue {
        option: "--container-image",
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.contains('#') || value.contains("://") {
        return Err(invalid(
            "registry images are not supported: give the path of an OCI image layout \
             (e.g. from `skopeo copy docker://IMAGE oci:DIR`), an OCI archive or a rootfs \
             directory",
        ));
    }
    Ok(value.to_string())
}

/// `--container-mounts=SRC:DST[:FLAGS][,…]`, each entry checked by the agent's own parser
/// (the node checks again, against its deny list).
fn parse_container_mounts(value: &str) -> Result<Vec<String>, SbatchError> {
    let entries: Vec<String> = value.split(',').map(str::to_string).collect();
    for e in &entries {
        berth_agent::oci::mounts::parse(e).map_err(|err| SbatchError::InvalidValue {
            option: "--container-mounts",
            value: value.to_string(),
            reason: err.to_string(),
        })?;
    }
    Ok(entries)
}

fn parse_container_workdir(value: &str) -> Result<String, SbatchError> {
    if !value.starts_with('/') {
        return Err(SbatchError::InvalidValue {
            option: "--container-workdir",
            value: value.to_string(),
            reason: "must be an absolute path inside the container".to_string(),
        });
    }
    Ok(value.to_string())
}

fn parse_container_env(value: &str) -> Result<Vec<String>, SbatchError> {
    let names: Vec<String> = value.split(',').map(str::to_string).collect();
    if let Some(bad) = names.iter().find(|n| !valid_var_name(n)) {
        return Err(SbatchError::InvalidValue {
            option: "--container-env",
            value: value.to_string(),
            reason: format!("{bad:?} is not a variable name"),
        });
    }
    Ok(names)
}

/// A string option that must not be empty (`-J ''` would leave the job nameless).
fn non_empty(long: &'static str, value: &str) -> Result<String, SbatchError> {
    if value.is_empty() {
        return Err(SbatchError::InvalidValue {
            option: option_name(long),
            value: String::new(),
            reason: "must not be empty".to_string(),
        });
    }
    Ok(value.to_string())
}

/// `--long` as a static string for error messages (the tables hold every name).
fn option_name(long: &str) -> &'static str {
    const NAMES: &[(&str, &str)] = &[
        ("account", "--account"),
        ("chdir", "--chdir"),
        ("error", "--error"),
        ("job-name", "--job-name"),
        ("output", "--output"),
        ("partition", "--partition"),
        ("qos", "--qos"),
        ("workdir", "--workdir"),
        ("wrap", "--wrap"),
    ];
    NAMES
        .iter()
        .find(|(l, _)| *l == long)
        .map_or("option", |(_, n)| n)
}

/// A positive decimal count (`--nodes`, `--ntasks`, `--cpus-per-task`).
fn parse_count(option: &'static str, value: &str) -> Result<u32, SbatchError> {
    let invalid = || SbatchError::InvalidNumber {
        option,
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match value.parse::<u32>().map_err(|_| invalid())? {
        0 => Err(SbatchError::ZeroCount {
            option,
            value: value.to_string(),
        }),
        n => Ok(n),
    }
}

/// `--nodes=N`; Slurm's `min-max` ranges and `N,M` lists are refused unless they pin one
/// count (`2-2`).
fn parse_nodes(value: &str) -> Result<u32, SbatchError> {
    if value.contains(',') {
        return Err(SbatchError::UnsupportedValue {
            option: "--nodes",
            value: value.to_string(),
            what: "a list of node counts".to_string(),
        });
    }
    let Some((min, max)) = value.split_once('-') else {
        return parse_count("--nodes", value);
    };
    let (min, max) = (parse_count("--nodes", min)?, parse_count("--nodes", max)?);
    if min != max {
        return Err(SbatchError::UnsupportedValue {
            option: "--nodes",
            value: value.to_string(),
            what: "a node count range (give one number)".to_string(),
        });
    }
    Ok(min)
}

/// `--partition`: Slurm allows a comma list (run in whichever starts first); berth takes one.
fn parse_partition(value: &str) -> Result<String, SbatchError> {
    if value.contains(',') {
        return Err(SbatchError::UnsupportedValue {
            option: "--partition",
            value: value.to_string(),
            what: "a list of partitions".to_string(),
        });
    }
    non_empty("partition", value)
}

/// Whether `kind` is a plausible GRES type name (`h100`, `a100_80g`, `l40s`).
fn valid_gpu_type(kind: &str) -> bool {
    is_mig(kind) // `1g.5gb+me` has a `+`
        || !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `--gpus` / `--gpus-per-node`: `[type:]N`.
fn parse_gpu_count(option: &'static str, value: &str) -> Result<GpuRequest, SbatchError> {
    let invalid = |reason: &str| SbatchError::InvalidValue {
        option,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if value.contains(',') {
        return Err(SbatchError::UnsupportedValue {
            option,
            value: value.to_string(),
            what: "more than one GPU type per job".to_string(),
        });
    }
    let (kind, count) = value.rsplit_once(':').unwrap_or(("", value));
    if value.contains(':') && !valid_gpu_type(kind) {
        return Err(invalid("expected [type:]count, e.g. h100:2"));
    }
    let given = format!("{option}={value}");
    if count.contains('.') {
        let milli = parse_fraction(&given, count)?;
        return Ok(GpuRequest {
            kind: kind.to_string(),
            count: 1,
            milli,
            given,
        });
    }
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SbatchError::InvalidNumber {
            option,
            value: value.to_string(),
        });
    }
    let count = count.parse().map_err(|_| SbatchError::InvalidNumber {
        option,
        value: value.to_string(),
    })?;
    Ok(GpuRequest {
        kind: kind.to_string(),
        count,
        milli: 0,
        given,
    })
}

/// A decimal fraction of one GPU, `0.001` to `0.999` (at most 3 decimals: 1000 milli is
/// one GPU, the unit of the Alibaba trace's `gpu_milli` and of berth's shares), in milli.
fn parse_fraction(given: &str, text: &str) -> Result<u32, SbatchError> {
    let bad = |reason: &str| SbatchError::Fraction {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) || (whole.is_empty() && frac.is_empty()) {
        return Err(bad("expected a decimal number of GPUs such as 0.5"));
    }
    if frac.len() > 3 {
        return Err(bad("at most 3 decimals (a GPU is 1000 milli)"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("number too large"))?
    };
    let frac: u64 = format!("{frac:0<3}").parse().unwrap_or(0);
    let milli = whole.saturating_mul(1000).saturating_add(frac);
    match milli {
        0 => Err(bad("a fraction must be above 0")),
        1000.. if milli.is_multiple_of(1000) => Err(bad(&format!(
            "{} is whole GPUs: write it without a decimal point",
            milli / 1000
        ))),
        1000.. => Err(bad(
            "a fraction is of one GPU (below 1); ask for whole GPUs above that",
        )),
        m => Ok(m as u32),
    }
}

/// `--gres=gpu[:type][:N]` (N defaults to 1) or `none`. Only GPUs are generic resources in
/// berth, and one entry per job.
fn parse_gres(value: &str) -> Result<GpuRequest, SbatchError> {
    let given = format!("--gres={value}");
    if value.eq_ignore_ascii_case("none") {
        return Ok(GpuRequest {
            kind: String::new(),
            count: 0,
            milli: 0,
            given,
        });
    }
    let invalid = |reason: &str| SbatchError::InvalidValue {
        option: "--gres",
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let unsupported = |what: String| SbatchError::UnsupportedValue {
        option: "--gres",
        value: value.to_string(),
        what,
    };
    let entries: Vec<&str> = value.split(',').collect();
    if entries.len() > 1 {
        return Err(unsupported("more than one GRES entry".to_string()));
    }
    let mut parts = entries[0].split(':');
    match parts.next() {
        Some("gpu") => {}
        Some("") | None => return Err(invalid("expected gpu[:type][:count]")),
        Some(name) => return Err(unsupported(format!("GRES '{name}' (only gpu)"))),
    }
    let is_count = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_fraction =
        |s: &str| s.contains('.') && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let (kind, count) = match parts.collect::<Vec<_>>().as_slice() {
        [] => ("", "1"),
        [count] if is_count(count) || is_fraction(count) => ("", *count),
        [kind] => (*kind, "1"),
        [kind, count] => (*kind, *count),
        _ => return Err(invalid("expected gpu[:type][:count]")),
    };
    if (kind.is_empty() || valid_gpu_type(kind)) && count.contains('.') {
        let milli = parse_fraction(&given, count)?;
        return Ok(GpuRequest {
            kind: kind.to_string(),
            count: 1,
            milli,
            given,
        });
    }
    if (!kind.is_empty() && !valid_gpu_type(kind)) || !is_count(count) {
        return Err(invalid("expected gpu[:type][:count]"));
    }
    let count = count.parse().map_err(|_| invalid("GPU count too large"))?;
    Ok(GpuRequest {
        kind: kind.to_string(),
        count,
        milli: 0,
        given,
    })
}

/// `--export=ALL|NONE|[ALL,]VAR[=value],...`.
fn parse_export(value: &str) -> Result<Export, SbatchError> {
    let invalid = |reason: String| SbatchError::InvalidValue {
        option: "--export",
        value: value.to_string(),
        reason,
    };
    match value {
        "" => return Err(invalid("must not be empty".to_string())),
        "NONE" => return Ok(Export::Nothing),
        "ALL" => return Ok(Export::All(Vec::new())),
        _ => {}
    }
    let mut all = false;
    let mut vars = Vec::new();
    for item in value.split(',') {
        match item {
            "ALL" => all = true,
            "NONE" => {
                return Err(invalid(
                    "NONE cannot be combined with variables".to_string(),
                ))
            }
            "NIL" => {
                return Err(SbatchError::UnsupportedValue {
                    option: "--export",
                    value: value.to_string(),
                    what: "NIL".to_string(),
                })
            }
            _ => {
                let (name, assigned) = match item.split_once('=') {
                    Some((name, v)) => (name, Some(v.to_string())),
                    None => (item, None),
                };
                if !valid_var_name(name) {
                    return Err(invalid(format!("'{name}' is not a variable name")));
                }
                vars.push((name.to_string(), assigned));
            }
        }
    }
    Ok(if all {
        Export::All(vars)
    } else {
        Export::Only(vars)
    })
}

/// A shell variable name: a letter or `_`, then letters, digits, `_`.
fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads `#SBATCH` lines from the top of the script: they end at the first line that is
/// neither blank nor a comment (Slurm ignores directives after that; berth warns about them).
fn parse_directives(script: &str) -> Result<(Opts, Vec<String>), SbatchError> {
    let mut opts = Opts::default();
    let mut warnings = Vec::new();
    let mut in_header = true;
    for (index, line) in script.lines().enumerate() {
        let number = index + 1;
        let Some(rest) = line.strip_prefix("#SBATCH") else {
            let trimmed = line.trim_start();
            in_header &= trimmed.is_empty() || trimmed.starts_with('#');
            continue;
        };
        if !in_header {
            warnings.push(format!(
                "line {number}: #SBATCH after the first command is ignored (as by Slurm): {line}"
            ));
            continue;
        }
        parse_directive(number, line, rest, &mut opts)?;
    }
    Ok((opts, warnings))
}

/// One `#SBATCH` line: `rest` is what follows the keyword.
fn parse_directive(
    number: usize,
    line: &str,
    rest: &str,
    opts: &mut Opts,
) -> Result<(), SbatchError> {
    let malformed = |reason: String| SbatchError::MalformedDirective {
        line: number,
        text: line.to_string(),
        reason,
    };
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err(malformed("expected a space after #SBATCH".to_string()));
    }
    let words = split_words(rest).map_err(malformed)?;
    if words.is_empty() {
        return Err(malformed("no option given".to_string()));
    }
    let wrapped_before = opts.wrap.is_some();
    let first_operand = parse_options(&words, opts).map_err(|error| SbatchError::Directive {
        line: number,
        error: Box::new(error),
    })?;
    if let Some(word) = words.get(first_operand) {
        return Err(malformed(format!("'{word}' is not an option")));
    }
    if opts.wrap.is_some() && !wrapped_before {
        return Err(SbatchError::Directive {
            line: number,
            error: Box::new(SbatchError::WrapInScript),
        });
    }
    Ok(())
}

/// Splits a directive like a shell would: whitespace separates words, `'…'` and `"…"` quote,
/// `\` escapes outside single quotes, and a `#` at the start of a word begins a comment.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '#' if word.is_none() => break,
            '\'' => loop {
                // Open the word first so that '' is an empty word, not nothing.
                let w = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some('\'') => break,
                    Some(q) => w.push(q),
                    None => return Err("unterminated ' quote".to_string()),
                }
            },
            '"' => loop {
                let w = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => w.push(chars.next().ok_or("unterminated \" quote")?),
                    Some(q) => w.push(q),
                    None => return Err("unterminated \" quote".to_string()),
                }
            },
            '\\' => {
                let escaped = chars.next().ok_or("backslash at end of line")?;
                word.get_or_insert_with(String::new).push(escaped);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Whether a GPU request's type names a MIG profile (`<n>g.<m>gb[+me]`, e.g. `1g.10gb`)
/// rather than a GRES type like `h100`.
fn is_mig(kind: &str) -> bool {
    berth_policies::mig::is_profile_name(kind)
}

/// Whether `kind` starts like a MIG profile (`<digits>g.`) without being one: a typo
/// such as `1g.10` or `3g.40GB` that must not silently become a GRES type.
fn looks_like_mig(kind: &str) -> bool {
    let digits = kind.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && kind[digits..].starts_with("g.") && !is_mig(kind)
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
    let bad = |reason: String| SbatchError::Fraction {
        given: f.given.clone(),
        reason,
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

/// The job's environment and whether it is the whole submit environment.
fn exported_env(
    export: &Export,
    env: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, bool) {
    let pick = |vars: &[(String, Option<String>)], base: &mut BTreeMap<String, String>| {
        for (name, assigned) in vars {
            // A bare name exports the submit value; Slurm skips names that are not set.
            if let Some(value) = assigned.clone().or_else(|| env.get(name).cloned()) {
                base.insert(name.clone(), value);
            }
        }
    };
    match export {
        Export::Nothing => (BTreeMap::new(), false),
        Export::All(vars) => {
            let mut out = env.clone();
            pick(vars, &mut out);
            (out, true)
        }
        Export::Only(vars) => {
            let mut out = BTreeMap::new();
            pick(vars, &mut out);
            (out, false)
        }
    }
}

/// Builds the spec from the merged options, with Slurm's defaults for what was not given.
fn build_spec(
    opts: Opts,
    script: &Script,
    text: String,
    args: Vec<String>,
    ctx: &SubmitContext,
) -> Result<JobSpec, SbatchError> {
    let nodes = opts.nodes.unwrap_or(1);
    let ntasks = match opts.ntasks {
        Some(ntasks) if ntasks < nodes => {
            return Err(SbatchError::TasksBelowNodes { ntasks, nodes })
        }
        Some(ntasks) => ntasks,
        None => nodes,
    };
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
        return Err(SbatchError::InvalidValue {
            option: "--container-image",
            value: String::new(),
            reason: "--container-mounts, --container-workdir and --container-env need \
                     --container-image"
                .to_string(),
        });
    }
    Ok(JobSpec {
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
        mem_mb: opts.mem_mb.unwrap_or(0),
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
        // berthd sets both from the identity it proves.
        identity: None,
        launch_seal: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_specs_parse_and_bad_ones_fail() {
        let c = |kind: &str, job_id| DependencyCondition {
            kind: kind.into(),
            job_id,
        };
        // (value, Ok(conditions) or Err(part of the message))
        let cases: Vec<(&str, Result<Vec<DependencyCondition>, &str>)> = vec![
            ("afterok:12", Ok(vec![c("afterok", 12)])),
            (
                "afterok:12:13,afterany:14",
                Ok(vec![c("afterok", 12), c("afterok", 13), c("afterany", 14)]),
            ),
            (
                "after:1,afternotok:2",
                Ok(vec![c("after", 1), c("afternotok", 2)]),
            ),
            ("", Err("empty")),
            ("afterok", Err("is not TYPE:JOBID")),
            ("afterok:", Err("\"\" is not a job id")),
            ("afterok:0", Err("\"0\" is not a job id")),
            ("afterok:x", Err("\"x\" is not a job id")),
            ("afterok:-3", Err("is not a job id")),
            ("afterok:1+10", Err("+TIME")),
            ("afterok:1?afterany:2", Err("'?'")),
            ("singleton", Err("singleton is not supported")),
            ("afterwards:1", Err("type \"afterwards\" is not supported")),
            ("afterok:1,", Err("is not TYPE:JOBID")),
        ];
        assert_cases(cases, parse_dependency);
        let many = format!("afterok:{}", vec!["1"; 65].join(":"));
        assert!(parse_dependency(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn signal_specs_parse_and_bad_ones_fail() {
        let ok = |n, secs, b| {
            Ok(SignalSpec {
                number: n,
                secs,
                batch_only: b,
            })
        };
        let cases: Vec<(&str, Result<SignalSpec, &str>)> = vec![
            ("USR1@120", ok(libc::SIGUSR1, 120, false)),
            ("B:SIGUSR2@30", ok(libc::SIGUSR2, 30, true)),
            ("10", ok(10, 60, false)),
            ("term", ok(libc::SIGTERM, 60, false)),
            ("R:USR1@10", Err("reservation")),
            ("X:USR1", Err("unknown flag")),
            ("USR3@10", Err("unknown signal")),
            ("99", Err("out of range")),
            ("USR1@-5", Err("not a number")),
            ("USR1@70000", Err("not a number")),
            ("", Err("unknown signal")),
        ];
        assert_cases(cases, parse_signal);
    }
    use std::fs;

    /// A temp dir with scripts in it, and a context rooted there.
    struct Fixture {
        dir: tempfile::TempDir,
        ctx: SubmitContext,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temp dir");
            let env = [("HOME", "/home/alice"), ("PATH", "/usr/bin"), ("LANG", "C")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let ctx = SubmitContext {
                cwd: dir.path().to_path_buf(),
                env,
                user: "alice".to_string(),
                uid: 1000,
                gid: 100,
                host: "login1".to_string(),
            };
            Fixture { dir, ctx }
        }

        fn script(&self, name: &str, body: &str) -> &Self {
            fs::write(self.dir.path().join(name), body).expect("write script");
            self
        }

        fn run(&self, args: &[&str]) -> Result<Submission, SbatchError> {
            self.run_stdin(
                args,
                Err(io::Error::other("stdin not expected in this test")),
            )
        }

        fn run_stdin(
            &self,
            args: &[&str],
            stdin: io::Result<String>,
        ) -> Result<Submission, SbatchError> {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let mut stdin = Some(stdin);
            let mut read = || stdin.take().expect("stdin read once");
            parse_submission(&args, &self.ctx, &mut read)
        }

        /// Each `(args, want)` of `bad`, with `job.sh` appended, is refused with an error
        /// containing `want`.
        fn assert_refused_with_job_sh(&self, bad: &[(&[&str], &str)]) {
            for (i, (args, want)) in bad.iter().enumerate() {
                let mut all = args.to_vec();
                all.push("job.sh");
                let got = self
                    .run(&all)
                    .map(|s| summary(&s.spec))
                    .map_err(|e| e.to_string());
                match &got {
                    Err(msg) if msg.contains(want) => {}
                    _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
                }
            }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).to_string_lossy().into_owned()
        }
    }

    /// Each `(input, want)`: `parse(input)` gives the `Ok` value, or an error containing
    /// the `Err` text.
    fn assert_cases<T: PartialEq + std::fmt::Debug>(
        cases: Vec<(&str, Result<T, &str>)>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) {
        for (i, (v, want)) in cases.into_iter().enumerate() {
            match (parse(v), want) {
                (Ok(got), Ok(w)) if got == w => {}
                (Err(got), Err(w)) if got.contains(w) => {}
                (got, w) => panic!("#{i} {v:?}: want {w:?}, got {got:?}"),
            }
        }
    }

    /// The resource and naming fields of a spec on one line, for table tests.
    fn summary(spec: &JobSpec) -> String {
        format!(
            "name={} N={} n={} c={} t={} mem={} gpu={}:{} p={} A={} q={} H={} o={} e={} args={:?}",
            spec.name,
            spec.nodes,
            spec.ntasks,
            spec.cpus_per_task,
            spec.time_limit_secs,
            spec.mem_mb,
            spec.gpu_type,
            spec.gpus_per_node,
            spec.partition,
            spec.account,
            spec.qos,
            spec.hold,
            spec.stdout,
            spec.stderr,
            spec.args
        )
    }

    const DEFAULTS: &str =
        "name=job.sh N=1 n=1 c=1 t=0 mem=0 gpu=:0 p= A= q= H=false o= e= args=[]";

    #[test]
    fn option_forms() {
        let f = Fixture::new();
        f.script("job.sh", "#!/bin/sh\necho hi\n");
        let d = |over: &[&str]| -> String {
            // DEFAULTS with some `key=value` fields replaced.
            let mut fields: Vec<String> = DEFAULTS.split(' ').map(str::to_string).collect();
            for o in over {
                let key = o.split('=').next().unwrap_or_default();
                let slot = fields
                    .iter_mut()
                    .find(|f| f.starts_with(&format!("{key}=")))
                    .expect("known field");
                *slot = o.to_string();
            }
            fields.join(" ")
        };
        let cases: Vec<(Vec<&str>, String)> = vec![
            (vec!["job.sh"], d(&[])),
            (vec!["-N2", "job.sh"], d(&["N=2", "n=2"])),
            (vec!["-N", "2", "job.sh"], d(&["N=2", "n=2"])),
            (vec!["--nodes=2", "job.sh"], d(&["N=2", "n=2"])),
            (vec!["--nodes", "2", "job.sh"], d(&["N=2", "n=2"])),
            (vec!["--nodes=3-3", "job.sh"], d(&["N=3", "n=3"])),
            (vec!["-N2", "-n8", "job.sh"], d(&["N=2", "n=8"])),
            (vec!["-J", "name", "job.sh"], d(&["name=name"])),
            (vec!["-Jname", "job.sh"], d(&["name=name"])),
            (vec!["--job-name=a b", "job.sh"], d(&["name=a b"])),
            (vec!["--job=x", "job.sh"], d(&["name=x"])),
            (vec!["--part=gpu", "job.sh"], d(&["p=gpu"])),
            (vec!["-t", "1:00:00", "job.sh"], d(&["t=3600"])),
            (vec!["--time=2-0", "job.sh"], d(&["t=172800"])),
            (vec!["-t", "UNLIMITED", "job.sh"], d(&["t=0"])),
            (vec!["--mem=16G", "job.sh"], d(&["mem=16384"])),
            (vec!["-c", "4", "job.sh"], d(&["c=4"])),
            (vec!["--cpus-per-task=4", "job.sh"], d(&["c=4"])),
            (
                vec!["-p", "gpu", "-A", "proj", "-q", "high", "job.sh"],
                d(&["p=gpu", "A=proj", "q=high"]),
            ),
            (vec!["-H", "job.sh"], d(&["H=true"])),
            (vec!["--hold", "job.sh"], d(&["H=true"])),
            (vec!["-Hp", "gpu", "job.sh"], d(&["H=true", "p=gpu"])),
            (
                vec!["-o", "out-%j.txt", "-e", "err-%j.txt", "job.sh"],
                d(&["o=out-%j.txt", "e=err-%j.txt"]),
            ),
            (
                vec!["job.sh", "-N", "2", "--x"],
                d(&["args=[\"-N\", \"2\", \"--x\"]"]),
            ),
            (vec!["--", "job.sh", "a"], d(&["args=[\"a\"]"])),
            (vec!["-N1", "-N", "3", "job.sh"], d(&["N=3", "n=3"])),
        ];
        for (i, (args, want)) in cases.iter().enumerate() {
            let got = f.run(args).map(|s| summary(&s.spec));
            if got.as_ref().ok() != Some(want) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn spec_fields_and_defaults() {
        let f = Fixture::new();
        fs::create_dir(f.dir.path().join("sub")).expect("mkdir");
        f.script("sub/job.sh", "#!/bin/bash\nexit 0\n");
        let sub = f
            .run(&["--parsable", "-D", "work", "./sub/job.sh", "x"])
            .expect("parses");
        let cwd = f.ctx.cwd.to_string_lossy().into_owned();
        let spec = &sub.spec;
        let got = (
            sub.parsable,
            spec.name.as_str(),
            spec.command.clone(),
            spec.work_dir.clone(),
            spec.submit_dir.clone(),
            spec.script.as_str(),
            spec.export_all,
            spec.env.len(),
            (
                spec.user.as_str(),
                spec.uid,
                spec.gid,
                spec.submit_host.as_str(),
            ),
        );
        let want = (
            true,
            "job.sh",
            f.path("sub/job.sh"),
            format!("{cwd}/work"),
            cwd.clone(),
            "#!/bin/bash\nexit 0\n",
            true,
            3,
            ("alice", 1000, 100, "login1"),
        );
        if got != want {
            panic!("want {want:?}, got {got:?}");
        }
        let abs = f.run(&["-D", "/abs/dir", "sub/job.sh"]).expect("parses");
        assert_eq!(abs.spec.work_dir, "/abs/dir");
        assert!(!abs.parsable);
    }

    /// Command lines and the error each must give (a table, so kept out of the test body).
    const OPTION_ERRORS: &[(&[&str], &str)] = &[
        (&["--foo", "job.sh"], "unrecognized option '--foo'"),
        (&["-z", "job.sh"], "unrecognized option '-z'"),
        (
            &["--array=1-3", "job.sh"],
            "option --array is not supported by berth yet",
        ),
        (
            &["-a", "1-3", "job.sh"],
            "option -a/--array is not supported by berth yet",
        ),
        (
            &["--dependency=afterok:1?afterany:2", "job.sh"],
            "Invalid dependency specification 'afterok:1?afterany:2': '?'",
        ),
        (
            &["-d", "aftercorr:1", "job.sh"],
            "dependency type \"aftercorr\" is not supported",
        ),
        (
            &["--mail-type=END", "job.sh"],
            "option --mail-type is not supported",
        ),
        (
            &["--exclusive", "job.sh"],
            "option --exclusive is not supported",
        ),
        (&["-w", "n1", "job.sh"], "-w/--nodelist is not supported"),
        (
            &["--mem-per-cpu=1G", "job.sh"],
            "option --mem-per-cpu is not supported",
        ),
        (
            &["--gpus-per-socket=1", "job.sh"],
            "option --gpus-per-socket is not supported",
        ),
        (
            &["--ntasks-per-node=2", "job.sh"],
            "option --ntasks-per-node is not supported",
        ),
        (&["--reboot", "job.sh"], "option --reboot is not supported"),
        (&["--wait", "job.sh"], "option --wait is not supported"),
        (
            &["--mail", "job.sh"],
            "option '--mail' is ambiguous; possibilities: '--mail-type' '--mail-user'",
        ),
        (&["--gp=1", "job.sh"], "ambiguous"),
        (&["--time"], "option '--time' requires an argument"),
        (&["-t"], "option '-t' requires an argument"),
        (
            &["--hold=yes", "job.sh"],
            "option '--hold' doesn't allow an argument",
        ),
        (
            &["--time=1:2:3:4", "job.sh"],
            "Invalid --time specification: 1:2:3:4",
        ),
        (
            &["-t", "abc", "job.sh"],
            "Invalid --time specification: abc",
        ),
        (&["--mem=12X", "job.sh"], "invalid --mem value '12X'"),
        (&["--mem=0", "job.sh"], "not supported by berth yet"),
        (
            &["--nodes=abc", "job.sh"],
            "Invalid numeric value \"abc\" for --nodes",
        ),
        (
            &["-N", "0", "job.sh"],
            "Invalid --nodes value \"0\": must be at least 1",
        ),
        (
            &["-N", "2-4", "job.sh"],
            "--nodes=2-4: a node count range (give one number) is not supported by berth yet",
        ),
        (&["-N", "-2", "job.sh"], "Invalid numeric value"),
        (&["-n", "0", "job.sh"], "Invalid --ntasks value \"0\""),
        (
            &["-c", "0", "job.sh"],
            "Invalid --cpus-per-task value \"0\"",
        ),
        (
            &["-c", "1.5", "job.sh"],
            "Invalid numeric value \"1.5\" for --cpus-per-task",
        ),
        (
            &["-N", "2", "-n", "1", "job.sh"],
            "--ntasks=1 is less than --nodes=2",
        ),
        (
            &["-p", "a,b", "job.sh"],
            "a list of partitions is not supported",
        ),
        (
            &["-J", "", "job.sh"],
            "invalid --job-name value '': must not be empty",
        ),
        (&["--help"], "help requested"),
        (&["-V"], "version requested"),
        (&["--", "--notascript"], "Unable to open file --notascript"),
    ];

    /// Runs each case and checks that it fails with a message containing the expected text.
    fn expect_errors(f: &Fixture, cases: &[(&[&str], &str)]) {
        for (i, (args, want)) in cases.iter().enumerate() {
            let got = f
                .run(args)
                .map(|s| summary(&s.spec))
                .map_err(|e| e.to_string());
            match &got {
                Err(msg) if msg.contains(want) => {}
                _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn option_errors_name_the_option() {
        let f = Fixture::new();
        f.script("job.sh", "#!/bin/sh\ntrue\n");
        expect_errors(&f, OPTION_ERRORS);
    }

    #[test]
    fn wrap_and_stdin_scripts() {
        let f = Fixture::new();
        let wrap = f.run(&["--wrap", "echo hello"]).expect("wrap parses");
        let want = "#!/bin/sh\n# This script was created by sbatch --wrap.\n\necho hello\n";
        assert_eq!(
            (
                wrap.spec.script.as_str(),
                wrap.spec.name.as_str(),
                wrap.spec.command.as_str()
            ),
            (want, "wrap", "(wrap)")
        );
        let stdin = f
            .run_stdin(
                &["-N", "1"],
                Ok("#!/bin/sh\n#SBATCH -J fromstdin\ntrue\n".into()),
            )
            .expect("stdin");
        assert_eq!(
            (stdin.spec.name.as_str(), stdin.spec.command.as_str()),
            ("fromstdin", "")
        );
        let stdin = f
            .run_stdin(&[], Ok("#!/bin/sh\ntrue\n".into()))
            .expect("stdin");
        assert_eq!(stdin.spec.name, "sbatch");
    }

    #[test]
    fn bad_scripts() {
        let f = Fixture::new();
        f.script("empty.sh", "")
            .script("plain.sh", "echo hi\n")
            .script("dos.sh", "#!/bin/sh\r\necho hi\r\n");
        let cases: Vec<(Vec<&str>, io::Result<String>, &str)> = vec![
            (
                vec!["missing.sh"],
                Ok(String::new()),
                "Unable to open file missing.sh: ",
            ),
            (
                vec!["empty.sh"],
                Ok(String::new()),
                "Batch script is empty!",
            ),
            (
                vec!["plain.sh"],
                Ok(String::new()),
                "This does not look like a batch script.  The first line must start with #!",
            ),
            (vec!["dos.sh"], Ok(String::new()), "DOS line breaks"),
            (vec![], Ok(String::new()), "Batch script is empty!"),
            (
                vec![],
                Ok("echo hi\n".into()),
                "This does not look like a batch script",
            ),
            (
                vec![],
                Err(io::Error::other("closed")),
                "unable to read the batch script from standard input: closed",
            ),
            (
                vec!["--wrap", "true", "plain.sh"],
                Ok(String::new()),
                "--wrap cannot be combined with a script or script arguments (got 'plain.sh')",
            ),
            (
                vec!["--wrap="],
                Ok(String::new()),
                "invalid --wrap value '': must not be empty",
            ),
        ];
        for (i, (args, stdin, want)) in cases.into_iter().enumerate() {
            let got = f
                .run_stdin(&args, stdin)
                .map(|s| summary(&s.spec))
                .map_err(|e| e.to_string());
            match &got {
                Err(msg) if msg.contains(want) => {}
                _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn switches_and_gpus_per_task() {
        let f = Fixture::new();
        // (args, want (gpus per node, type, switches, wait secs) or an error fragment)
        type Want = Result<(u32, &'static str, u32, u64), &'static str>;
        let cases: Vec<(Vec<&str>, Want)> = vec![
            (vec!["-N2", "--switches=1"], Ok((0, "", 1, 300))),
            (vec!["-N2", "--switches=2@5:00"], Ok((0, "", 2, 300))),
            (vec!["-N2", "--switches=1@1"], Ok((0, "", 1, 60))),
            (
                vec!["-N2", "-n8", "--gpus-per-task=h100:2"],
                Ok((8, "h100", 0, 0)),
            ),
            (vec!["-n3", "--gpus-per-task=1"], Ok((3, "", 0, 0))),
            (vec!["--switches=0"], Err("at least 1")),
            (vec!["--switches=x"], Err("Invalid numeric value")),
            (vec!["--switches=1@"], Err("max-wait")),
            (vec!["--switches=1@-3"], Err("max-wait")),
            (vec!["--switches=@5"], Err("Invalid numeric value")),
            (
                vec!["-N2", "-n3", "--gpus-per-task=1"],
                Err("does not divide"),
            ),
            (
                vec!["--gpus-per-task=1", "--gres=gpu:1"],
                Err("cannot be combined"),
            ),
            (vec!["--gpus-per-task=h100:"], Err("Invalid numeric value")),
        ];
        for (i, (args, want)) in cases.into_iter().enumerate() {
            let mut all = vec!["--wrap", "true"];
            all.extend(args.iter());
            let got = f.run(&all).map(|s| {
                let sp = s.spec;
                (
                    sp.gpus_per_node,
                    sp.gpu_type,
                    sp.switches,
                    sp.switches_wait_secs,
                )
            });
            match (&got, want) {
                (Ok((g, t, sw, w)), Ok(want)) if (*g, t.as_str(), *sw, *w) == want => {}
                (Err(e), Err(frag)) if e.to_string().contains(frag) => {}
                _ => panic!("#{i} {args:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn directives() {
        let f = Fixture::new();
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "#!/bin/sh\n#SBATCH -N 2\n#SBATCH --time=10\ntrue\n",
                &[],
                "N=2 n=2 c=1 t=600",
            ),
            // Blank lines and comments keep the header open; the first command ends it.
            (
                "#!/bin/sh\n\n# setup\n#SBATCH -J early\necho\n#SBATCH -J late\n",
                &[],
                "name=early N=1",
            ),
            (
                "#!/bin/sh\n#SBATCH --job-name=\"my job\" --partition 'gpu'\ntrue\n",
                &[],
                "name=my job N=1 n=1 c=1 t=0 mem=0 gpu=:0 p=gpu ",
            ),
            (
                "#!/bin/sh\n#SBATCH -J x # a comment\n#SBATCH -J y#z\n",
                &[],
                "name=y#z N=1",
            ),
            ("#!/bin/sh\n#SBATCH\t-N3\n", &[], "name=s.sh N=3"),
            // Plain comments that look like directives are comments.
            (
                "#!/bin/sh\n# SBATCH -N 9\n##SBATCH -N 9\n #SBATCH -N 9\n",
                &[],
                "name=s.sh N=1",
            ),
            // The command line wins over the script.
            (
                "#!/bin/sh\n#SBATCH -N 2 -J script\n",
                &["-N", "4"],
                "name=script N=4",
            ),
            (
                "#!/bin/sh\n#SBATCH -N 2\n#SBATCH -N 3\n",
                &[],
                "name=s.sh N=3",
            ),
        ];
        for (i, (script, args, want)) in cases.iter().enumerate() {
            f.script("s.sh", script);
            let mut all: Vec<&str> = args.to_vec();
            all.push("s.sh");
            let got = f.run(&all).map(|s| summary(&s.spec));
            match &got {
                Ok(summary) if summary.contains(want) => {}
                _ => panic!("#{i}: want ...{want:?}..., got {got:?}"),
            }
        }
        f.script("s.sh", "#!/bin/sh\ntrue\n#SBATCH -N 2\n");
        let warned = f.run(&["s.sh"]).expect("parses");
        assert_eq!(warned.warnings.len(), 1, "{:?}", warned.warnings);
        assert!(
            warned.warnings[0].starts_with("line 3: #SBATCH after the first command is ignored"),
            "{:?}",
            warned.warnings
        );
    }

    #[test]
    fn malformed_directives_name_the_line() {
        let f = Fixture::new();
        let cases: &[(&str, &str)] = &[
            (
                "#!/bin/sh\n#SBATCH\n",
                "line 2: malformed #SBATCH directive (no option given)",
            ),
            (
                "#!/bin/sh\n#SBATCH   # only a comment\n",
                "line 2: malformed #SBATCH directive (no option given)",
            ),
            (
                "#!/bin/sh\n\n#SBATCH foo\n",
                "line 3: malformed #SBATCH directive ('foo' is not an option): #SBATCH foo",
            ),
            (
                "#!/bin/sh\n#SBATCH -N 2 extra\n",
                "line 2: malformed #SBATCH directive ('extra' is not an option)",
            ),
            (
                "#!/bin/sh\n#SBATCH -J \"open\n",
                "line 2: malformed #SBATCH directive (unterminated \" quote)",
            ),
            ("#!/bin/sh\n#SBATCH -J 'open\n", "unterminated ' quote"),
            (
                "#!/bin/sh\n#SBATCH-N2\n",
                "line 2: malformed #SBATCH directive (expected a space after #SBATCH)",
            ),
            (
                "#!/bin/sh\n#SBATCH --array=1-4\n",
                "line 2: #SBATCH directive: option --array is not supported by berth yet",
            ),
            (
                "#!/bin/sh\n#SBATCH --time\n",
                "line 2: #SBATCH directive: option '--time' requires an argument",
            ),
            (
                "#!/bin/sh\n#SBATCH -t 1:2:3:4\n",
                "line 2: #SBATCH directive: Invalid --time specification: 1:2:3:4",
            ),
            (
                "#!/bin/sh\n#SBATCH --wrap=true\n",
                "line 2: #SBATCH directive: --wrap is only allowed on the command line",
            ),
            (
                "#!/bin/sh\n#SBATCH --bogus\n",
                "line 2: #SBATCH directive: unrecognized option '--bogus'",
            ),
        ];
        for (i, (script, want)) in cases.iter().enumerate() {
            f.script("s.sh", script);
            let got = f
                .run(&["s.sh"])
                .map(|s| summary(&s.spec))
                .map_err(|e| e.to_string());
            match &got {
                Err(msg) if msg.contains(want) => {}
                _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn gpu_options() {
        let f = Fixture::new();
        f.script("job.sh", "#!/bin/sh\ntrue\n");
        let ok: &[(&[&str], (u32, &str))] = &[
            (&["--gres=gpu"], (1, "")),
            (&["--gres=gpu:2"], (2, "")),
            (&["--gres=gpu:h100"], (1, "h100")),
            (&["--gres=gpu:h100:4"], (4, "h100")),
            (&["--gres=none"], (0, "")),
            (&["--gpus-per-node=2"], (2, "")),
            (&["--gpus-per-node=a100:2"], (2, "a100")),
            (&["-G", "4"], (4, "")),
            (&["-G4", "-N", "2"], (2, "")),
            (&["--gpus=h100:8", "-N2"], (4, "h100")),
            (&["--gres=gpu:h100:2", "--gpus-per-node=2"], (2, "h100")),
            (&["--gres=gpu:2", "--gpus-per-node=h100:2"], (2, "h100")),
            (&["--gpus-per-node=2", "--gpus=4", "-N", "2"], (2, "")),
            (&["--gpus=0"], (0, "")),
        ];
        for (i, (args, want)) in ok.iter().enumerate() {
            let mut all = args.to_vec();
            all.push("job.sh");
            let got = f
                .run(&all)
                .map(|s| (s.spec.gpus_per_node, s.spec.gpu_type))
                .map_err(|e| e.to_string());
            if got != Ok((want.0, want.1.to_string())) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
        let bad: &[(&[&str], &str)] = &[
            (&["-G", "3", "-N", "2"], "--gpus=3 cannot be split evenly over 2 nodes; use --gpus-per-node"),
            (&["--gres=gpu:2", "--gpus-per-node=4"], "conflicting GPU requests: --gres=gpu:2 and --gpus-per-node=4 ask for different GPU counts per node"),
            (&["--gres=gpu:a100:2", "--gpus-per-node=h100:2"], "ask for different GPU types"),
            (&["--gpus=h100:2", "--gres=gpu:a100:2"], "ask for different GPU types"),
            (&["--gpus-per-node=2", "--gpus=2", "-N", "2"], "--gpus=2 asks for 2 GPUs in total but --gpus-per-node=2 on 2 node(s) is 4"),
            (&["--gres=mps:100"], "--gres=mps:100: GRES 'mps' (only gpu) is not supported by berth yet"),
            (&["--gres=gpu:1,gpu:a100:1"], "more than one GRES entry is not supported"),
            (&["--gres=gpu:h100:2:x"], "invalid --gres value 'gpu:h100:2:x'"),
            (&["--gres=gpu:h100:-1"], "invalid --gres value"),
            (&["--gres="], "invalid --gres value ''"),
            (&["--gpus=abc"], "Invalid numeric value \"abc\" for --gpus"),
            (&["--gpus=:2"], "invalid --gpus value ':2'"),
            (&["--gpus-per-node=h100:2,a100:1"], "more than one GPU type per job is not supported"),
        ];
        f.assert_refused_with_job_sh(bad);
    }

    #[test]
    fn gpu_fractions() {
        let f = Fixture::new();
        f.script("job.sh", "#!/bin/sh\ntrue\n");
        // (args, (GPUs per node, type, milli))
        type Want = (u32, &'static str, u32);
        let ok: &[(&[&str], Want)] = &[
            (&["--gpus=0.5"], (1, "", 500)),
            (&["--gpus=.25"], (1, "", 250)),
            (&["--gpus=h100:0.125"], (1, "h100", 125)),
            (&["--gpus-per-node=0.3"], (1, "", 300)),
            (&["--gres=gpu:0.5"], (1, "", 500)),
            (&["--gres=gpu:l40s:0.75"], (1, "l40s", 750)),
            (&["--gres=gpu:0.5", "--gpus=0.5"], (1, "", 500)),
            (&["--gres=gpu:h100:0.5", "--gpus=0.5"], (1, "h100", 500)),
            (&["--gpus=0.001"], (1, "", 1)),
            (&["--gpus=1"], (1, "", 0)),
        ];
        for (i, (args, want)) in ok.iter().enumerate() {
            let mut all = args.to_vec();
            all.push("job.sh");
            let got = f
                .run(&all)
                .map(|s| (s.spec.gpus_per_node, s.spec.gpu_type, s.spec.gpu_milli))
                .map_err(|e| e.to_string());
            if got != Ok((want.0, want.1.to_string(), want.2)) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
        let bad: &[(&[&str], &str)] = &[
            (&["--gpus=0.0"], "invalid GPU fraction --gpus=0.0: a fraction must be above 0"),
            (&["--gres=gpu:0.000"], "a fraction must be above 0"),
            (&["--gpus=1.5"], "invalid GPU fraction --gpus=1.5: a fraction is of one GPU (below 1)"),
            (&["--gpus=2.0"], "2 is whole GPUs: write it without a decimal point"),
            (&["--gpus=0.0005"], "at most 3 decimals"),
            (&["--gpus=0.5x"], "expected a decimal number of GPUs"),
            (&["--gpus=."], "expected a decimal number of GPUs"),
            (&["--gpus=0..5"], "expected a decimal number of GPUs"),
            (&["--gres=gpu:h100:0.5.1"], "expected a decimal number of GPUs"),
            (&["--gpus=half"], "Invalid numeric value \"half\" for --gpus"),
            (&["--gpus=1g.10gb:0.5"], "'1g.10gb' is a MIG profile"),
            (&["--gres=gpu:3g.40gb:0.5"], "'3g.40gb' is a MIG profile"),
            (&["--gres=gpu:1g.10gb:1", "--gpus=0.5"], "conflicting GPU requests: --gpus=0.5 and --gres=gpu:1g.10gb:1 ask for different GPUs"),
            (&["--gpus=0.5", "--gres=gpu:0.25"], "ask for different GPUs"),
            (&["--gpus=h100:0.5", "--gres=gpu:a100:0.5"], "ask for different GPUs"),
            (&["--gpus=0.5", "--gpus-per-node=1"], "ask for different GPUs"),
            (&["--gpus=0.5", "-N", "2"], "a fraction is of one GPU on one node, not on 2 nodes"),
            (&["--gpus-per-task=0.5"], "--gpus-per-task takes whole GPUs"),
        ];
        f.assert_refused_with_job_sh(bad);
    }

    #[test]
    fn mig_options() {
        let f = Fixture::new();
        f.script("job.sh", "#!/bin/sh\ntrue\n");
        f.script("mig.sh", "#!/bin/sh\n#SBATCH --gres=gpu:3g.40gb:2\ntrue\n");
        // (args, (whole GPUs per node, GRES type, MIG profile, slices per node))
        type Want = (u32, &'static str, &'static str, u32);
        let ok: &[(&[&str], Want)] = &[
            (&["--gres=gpu:1g.10gb:1", "job.sh"], (0, "", "1g.10gb", 1)),
            (&["--gres=gpu:1g.10gb", "job.sh"], (0, "", "1g.10gb", 1)),
            (&["--gpus=3g.40gb:2", "job.sh"], (0, "", "3g.40gb", 2)),
            (
                &["--gpus=3g.40gb:2", "-N2", "job.sh"],
                (0, "", "3g.40gb", 1),
            ),
            (
                &["--gpus-per-node=2g.20gb:1", "job.sh"],
                (0, "", "2g.20gb", 1),
            ),
            (
                &["--gres=gpu:1g.5gb+me:1", "job.sh"],
                (0, "", "1g.5gb+me", 1),
            ),
            (
                &[
                    "--gres=gpu:2g.20gb:3",
                    "--gpus-per-node=2g.20gb:3",
                    "job.sh",
                ],
                (0, "", "2g.20gb", 3),
            ),
            (&["mig.sh"], (0, "", "3g.40gb", 2)),
            // The command line wins over the script's directive, whole GPUs included.
            (&["--gres=gpu:h100:1", "mig.sh"], (1, "h100", "", 0)),
        ];
        for (i, (args, want)) in ok.iter().enumerate() {
            let got = f
                .run(args)
                .map(|s| {
                    let s = s.spec;
                    (s.gpus_per_node, s.gpu_type, s.mig_profile, s.mig_per_node)
                })
                .map_err(|e| e.to_string());
            let want = (want.0, want.1.to_string(), want.2.to_string(), want.3);
            if got != Ok(want.clone()) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
        let bad: &[(&[&str], &str)] = &[
            (&["--gres=gpu:1g.10:1"], "invalid MIG request --gres=gpu:1g.10:1: '1g.10' is not a MIG profile name"),
            (&["--gpus=3g.40GB:1"], "'3g.40GB' is not a MIG profile name"),
            (&["--gres=gpu:0g.10gb:1"], "not a MIG profile name"),
            (&["--gres=gpu:1g.10gb:0"], "invalid MIG request --gres=gpu:1g.10gb:0: the slice count must be at least 1"),
            (&["--gpus=1g.10gb:0"], "the slice count must be at least 1"),
            (&["--gres=gpu:1g.10gb:1", "--gpus-per-node=h100:1"], "--gres=gpu:1g.10gb:1 asks for MIG slices and --gpus-per-node=h100:1 for whole GPUs"),
            (&["--gres=gpu:1g.10gb:1", "--gpus-per-node=1"], "asks for MIG slices and --gpus-per-node=1 for whole GPUs"),
            (&["--gres=gpu:2", "--gpus=3g.40gb:2"], "--gpus=3g.40gb:2 asks for MIG slices and --gres=gpu:2 for whole GPUs"),
            (&["--gres=gpu:1g.10gb:1", "--gpus-per-node=3g.40gb:1"], "ask for different GPU types"),
            (&["--gpus=3g.40gb:3", "-N2"], "--gpus=3 cannot be split evenly over 2 nodes"),
        ];
        f.assert_refused_with_job_sh(bad);
    }

    #[test]
    fn export_variants() {
        let f = Fixture::new();
        f.script("job.sh", "#!/bin/sh\n#SBATCH --export=NONE\ntrue\n");
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let all = env(&[("HOME", "/home/alice"), ("LANG", "C"), ("PATH", "/usr/bin")]);
        let mut all_plus = all.clone();
        all_plus.insert("FOO".into(), "bar".into());
        all_plus.insert("LANG".into(), "en".into());
        let cases: Vec<(&str, BTreeMap<String, String>, bool)> = vec![
            ("--export=ALL", all.clone(), true),
            ("--export=NONE", env(&[]), false),
            ("--export=ALL,FOO=bar,LANG=en", all_plus.clone(), true),
            ("--export=FOO=bar,LANG=en,ALL", all_plus, true),
            (
                "--export=HOME,FOO=bar,UNSET",
                env(&[("FOO", "bar"), ("HOME", "/home/alice")]),
                false,
            ),
            ("--export=FOO=a=b", env(&[("FOO", "a=b")]), false),
        ];
        for (i, (option, want_env, want_all)) in cases.iter().enumerate() {
            let got = f
                .run(&[option, "job.sh"])
                .map(|s| (s.spec.env, s.spec.export_all))
                .map_err(|e| e.to_string());
            if got != Ok((want_env.clone(), *want_all)) {
                panic!("#{i}: want {:?}, got {got:?}", (want_env, want_all));
            }
        }
        // Without --export on the command line the script's NONE applies.
        let script_only = f.run(&["job.sh"]).expect("parses");
        assert_eq!(
            (script_only.spec.env.len(), script_only.spec.export_all),
            (0, false)
        );
        let bad: &[(&str, &str)] = &[
            ("--export=", "invalid --export value '': must not be empty"),
            (
                "--export=NONE,FOO=1",
                "NONE cannot be combined with variables",
            ),
            ("--export=1BAD=x", "'1BAD' is not a variable name"),
            ("--export=ALL,,X", "'' is not a variable name"),
            (
                "--export=NIL",
                "--export=NIL: NIL is not supported by berth yet",
            ),
        ];
        for (i, (option, want)) in bad.iter().enumerate() {
            let got = f
                .run(&[option, "job.sh"])
                .map(|s| summary(&s.spec))
                .map_err(|e| e.to_string());
            match &got {
                Err(msg) if msg.contains(want) => {}
                _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn environment_variables() {
        let mut f = Fixture::new();
        f.script("job.sh", "#!/bin/sh\n#SBATCH -p script -t 5\ntrue\n");
        f.ctx
            .env
            .insert("SBATCH_PARTITION".into(), "envpart".into());
        f.ctx.env.insert("SBATCH_TIMELIMIT".into(), "".into());
        let got = f
            .run(&["job.sh"])
            .map(|s| summary(&s.spec))
            .expect("parses");
        assert!(
            got.contains("t=300 mem=0 gpu=:0 p=envpart "),
            "env overrides script: {got}"
        );
        let got = f
            .run(&["-p", "cli", "job.sh"])
            .map(|s| summary(&s.spec))
            .expect("parses");
        assert!(got.contains("p=cli "), "command line overrides env: {got}");
        f.ctx.env.insert("SBATCH_EXCLUSIVE".into(), "".into());
        let err = f
            .run(&["job.sh"])
            .map(|s| summary(&s.spec))
            .map_err(|e| e.to_string());
        let want = "environment variable SBATCH_EXCLUSIVE: option --exclusive is not supported by berth yet";
        assert_eq!(err, Err(want.to_string()));
        f.ctx.env.remove("SBATCH_EXCLUSIVE");
        f.ctx.env.insert("SBATCH_TIMELIMIT".into(), "soon".into());
        let err = f
            .run(&["job.sh"])
            .map(|s| summary(&s.spec))
            .map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.starts_with("environment variable SBATCH_TIMELIMIT: Invalid --time specification: soon")),
            "{err:?}"
        );
    }

    #[test]
    fn every_option_table_entry_is_reachable() {
        // Each name resolves to itself (no entry shadows another), and none is in both tables.
        for (long, short, _, _) in SUPPORTED {
            assert!(
                matches!(lookup_long(long), Ok(found) if found.0 == *long),
                "--{long}"
            );
            assert!(
                !UNSUPPORTED.iter().any(|u| u.0 == *long),
                "--{long} in both tables"
            );
            if let Some(letter) = short {
                assert!(
                    matches!(lookup_short(*letter), Ok(found) if found.0 == *long),
                    "-{letter}"
                );
            }
        }
        for (long, short) in UNSUPPORTED {
            assert!(
                matches!(lookup_long(long), Err(SbatchError::UnsupportedOption(_))),
                "--{long}"
            );
            if let Some(letter) = short {
                assert!(
                    matches!(
                        lookup_short(*letter),
                        Err(SbatchError::UnsupportedOption(_))
                    ),
                    "-{letter}"
                );
            }
        }
        for (var, long) in ENV_OPTIONS {
            assert!(
                lookup_long(long).is_ok() || UNSUPPORTED.iter().any(|u| u.0 == *long),
                "{var} -> --{long}"
            );
        }
    }

    #[test]
    fn splits_directive_words() {
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            (" -N 2", Ok(&["-N", "2"])),
            (
                "  --job-name=\"a b\" -p 'x y'",
                Ok(&["--job-name=a b", "-p", "x y"]),
            ),
            (" -J a\\ b", Ok(&["-J", "a b"])),
            (" -J '' -N1", Ok(&["-J", "", "-N1"])),
            (" -J \"say \\\"hi\\\"\"", Ok(&["-J", "say \"hi\""])),
            (" -N 2 # four nodes was too many", Ok(&["-N", "2"])),
            (" -J a#b", Ok(&["-J", "a#b"])),
            (" ", Ok(&[])),
            (" -J 'x", Err("unterminated ' quote")),
            (" -J x\\", Err("backslash at end of line")),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = split_words(input);
            let want = want
                .map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(str::to_string);
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
    #[test]
    fn container_options_as_pyxis_names_them() {
        let f = Fixture::new();
        f.script(
            "c.sh",
            "#!/bin/sh\n#SBATCH --container-image=img\n#SBATCH --container-workdir=/w\ntrue\n",
        );
        let sub = f
            .run(&[
                "--container-mounts=/data:/data:ro+rprivate,/scratch",
                "--container-env=HOME,LANG",
                "c.sh",
            ])
            .expect("parses");
        let s = &sub.spec;
        assert_eq!(
            s.container_image,
            f.path("img"),
            "relative to the submit dir"
        );
        assert_eq!(s.container_workdir, "/w");
        assert_eq!(s.container_mounts, ["/data:/data:ro+rprivate", "/scratch"]);
        assert_eq!(s.container_env, ["HOME", "LANG"]);
        let over = f
            .run(&["--container-image=/abs/img", "c.sh"])
            .expect("parses");
        assert_eq!(
            over.spec.container_image, "/abs/img",
            "the command line wins"
        );
        f.script("plain.sh", "#!/bin/sh\ntrue\n");
        let plain = f.run(&["plain.sh"]).expect("parses");
        assert!(
            plain.spec.container_image.is_empty(),
            "no image: process runtime"
        );
        expect_errors(
            &f,
            &[
                (&["--container-image=", "plain.sh"], "must not be empty"),
                (
                    &["--container-image=nvcr.io#nvidia/pytorch:24.01", "plain.sh"],
                    "registry images are not supported",
                ),
                (
                    &["--container-image=docker://busybox", "plain.sh"],
                    "registry",
                ),
                (
                    &[
                        "--container-image=/i",
                        "--container-mounts=data:/x",
                        "plain.sh",
                    ],
                    "SRC must be an absolute path",
                ),
                (
                    &[
                        "--container-image=/i",
                        "--container-mounts=/a:/b:ro+bogus",
                        "plain.sh",
                    ],
                    "unknown flag",
                ),
                (
                    &[
                        "--container-image=/i",
                        "--container-workdir=rel",
                        "plain.sh",
                    ],
                    "must be an absolute path",
                ),
                (
                    &["--container-image=/i", "--container-env=A-B", "plain.sh"],
                    "not a variable name",
                ),
                (
                    &["--container-mounts=/a:/b", "plain.sh"],
                    "need --container-image",
                ),
            ],
        );
    }
}
