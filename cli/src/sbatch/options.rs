//! sbatch's option table: one entry per option (names, short letter, value, where it
//! lands in [`Opts`], its `scontrol show job` field), the real sbatch options berth refuses
//! by name, and the `SBATCH_*` input variables.

use super::opts::Opts;
use crate::duration::parse_time_limit;
use crate::memory::parse_mem;
use crate::opt::array::parse_array;
use crate::opt::container::{
    parse_container_env, parse_container_image, parse_container_mounts, parse_container_workdir,
};
use crate::opt::count::parse_count;
use crate::opt::dependency::parse_dependency;
use crate::opt::export::parse_export;
use crate::opt::gres::{parse_gpu_count, parse_gres};
use crate::opt::name::{non_empty, parse_partition};
use crate::opt::select::{
    parse_choice, parse_constraint, parse_exclusive, parse_licenses, parse_mail_type,
    parse_node_list, parse_node_range, parse_when, DISTRIBUTIONS, GRES_FLAGS, HINTS,
};
use crate::opt::signal::parse_signal;
use crate::opt::switches::parse_switches;
use crate::opt::table::{opt, Arg, OptionSpec, Table};
use crate::opt::OptError;

/// sbatch's options.
pub const SBATCH: Table<Opts> = Table {
    options: SUPPORTED,
    unsupported: UNSUPPORTED,
};

/// A value is required.
const REQ: Arg = Arg::Required;
/// A flag.
const FLAG: Arg = Arg::None;

/// The value of an option that takes one (`""` for a flag).
fn text(value: Option<&str>) -> &str {
    value.unwrap_or_default()
}

/// `--open-mode=append|truncate` (Slurm takes any prefix of either, `a` or `t` at least):
/// whether output files are appended to.
fn parse_open_mode(option: &str, value: &str) -> Result<bool, OptError> {
    let v = value.to_ascii_lowercase();
    match v.chars().next() {
        Some('a') if "append".starts_with(&v) => Ok(true),
        Some('t') if "truncate".starts_with(&v) => Ok(false),
        _ => Err(OptError::InvalidValue {
            option: option.to_string(),
            value: value.to_string(),
            reason: "Invalid --open-mode specification (append or truncate)".into(),
        }),
    }
}

/// Result of a setter.
type Set = Result<(), OptError>;

fn time(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    let v = text(v);
    let secs = parse_time_limit(v).map_err(|reason| OptError::InvalidTime {
        value: v.to_string(),
        reason,
    })?;
    o.time_secs = Some(secs);
    Ok(())
}

fn mem(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    let v = text(v);
    let mib = parse_mem(v).map_err(|reason| OptError::InvalidMem {
        value: v.to_string(),
        reason,
    })?;
    o.mem_mb = Some(mib);
    Ok(())
}

fn signal(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    let v = text(v);
    let sig = parse_signal(v).map_err(|reason| OptError::InvalidSignal {
        value: v.to_string(),
        reason,
    })?;
    o.signal = Some(sig);
    Ok(())
}

fn dependency(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    let v = text(v);
    let deps = parse_dependency(v).map_err(|reason| OptError::InvalidDependency {
        value: v.to_string(),
        reason,
    })?;
    o.dependencies = Some(deps);
    Ok(())
}

/// An optional value.
const OPT: Arg = Arg::Optional;

fn mem_per(o: &mut Opts, long: &str, v: Option<&str>) -> Set {
    let v = text(v);
    let mib = parse_mem(v).map_err(|reason| {
        OptError::invalid(
            &format!("--{long}"),
            v,
            format!("Invalid --{long} specification ({reason})"),
        )
    })?;
    if long == "mem-per-cpu" {
        o.mem_per_cpu_mb = Some(mib);
    } else {
        o.mem_per_gpu_mb = Some(mib);
    }
    Ok(())
}

fn when(long: &str, v: Option<&str>) -> Result<u64, OptError> {
    use chrono::TimeZone;
    let option = format!("--{long}");
    let t = parse_when(&option, text(v), chrono::Local::now().naive_local())?;
    let local = chrono::Local
        .from_local_datetime(&t)
        .earliest()
        .ok_or_else(|| OptError::invalid(&option, text(v), "no such local time"))?;
    Ok(u64::try_from(local.timestamp_millis()).unwrap_or(0))
}

/// A free-text option kept as given.
fn free(long: &str, v: Option<&str>) -> Result<String, OptError> {
    non_empty(long, text(v))
}

fn array(o: &mut Opts, _: &str, v: Option<&str>) -> Set {
    let v = text(v);
    let spec = parse_array(v).map_err(|reason| OptError::InvalidArray {
        value: v.to_string(),
        reason,
    })?;
    o.array = Some(spec);
    Ok(())
}

/// The options berth implements.
pub const SUPPORTED: &[OptionSpec<Opts>] = &[
    opt("begin", Some('b'), REQ, "EligibleTime", |o, l, v| {
        o.begin_ms = Some(when(l, v)?);
        Ok(())
    }),
    opt("comment", None, REQ, "Comment", |o, l, v| {
        o.comment = Some(free(l, v)?);
        Ok(())
    }),
    opt("constraint", Some('C'), REQ, "Features", |o, _, v| {
        o.constraint = Some(parse_constraint(text(v))?);
        Ok(())
    }),
    opt("cpus-per-gpu", None, REQ, "CpusPerTres", |o, _, v| {
        o.cpus_per_gpu = Some(parse_count("--cpus-per-gpu", text(v))?);
        Ok(())
    }),
    opt("deadline", None, REQ, "Deadline", |o, l, v| {
        o.deadline_ms = Some(when(l, v)?);
        Ok(())
    }),
    opt("distribution", Some('m'), REQ, "", |o, _, v| {
        o.distribution = Some(parse_choice("--distribution", text(v), DISTRIBUTIONS)?);
        Ok(())
    }),
    opt("exclude", Some('x'), REQ, "ExcNodeList", |o, _, v| {
        o.exc_nodes = Some(parse_node_list("--exclude", text(v))?);
        Ok(())
    }),
    opt("exclusive", None, OPT, "OverSubscribe", |o, _, v| {
        o.oversubscribe = Some(parse_exclusive(v)?);
        Ok(())
    }),
    opt("gpu-bind", None, REQ, "", |o, l, v| {
        o.gpu_bind = Some(free(l, v)?);
        Ok(())
    }),
    opt("gres-flags", None, REQ, "", |o, _, v| {
        o.gres_flags = Some(parse_choice("--gres-flags", text(v), GRES_FLAGS)?);
        Ok(())
    }),
    opt("hint", None, REQ, "", |o, _, v| {
        o.hint = Some(parse_choice("--hint", text(v), HINTS)?);
        Ok(())
    }),
    opt("licenses", Some('L'), REQ, "Licenses", |o, _, v| {
        o.licenses = Some(parse_licenses(text(v))?);
        Ok(())
    }),
    opt("mail-type", None, REQ, "MailType", |o, _, v| {
        o.mail_type = Some(parse_mail_type(text(v))?);
        Ok(())
    }),
    opt("mail-user", None, REQ, "MailUser", |o, l, v| {
        o.mail_user = Some(free(l, v)?);
        Ok(())
    }),
    opt("mem-per-cpu", None, REQ, "MinMemoryCPU", mem_per),
    opt("mem-per-gpu", None, REQ, "MemPerTres", mem_per),
    opt("mincpus", None, REQ, "MinCPUsNode", |o, _, v| {
        o.min_cpus = Some(parse_count("--mincpus", text(v))?);
        Ok(())
    }),
    opt("nice", None, OPT, "Nice", |o, _, v| {
        // Slurm's default adjustment when --nice has no value.
        let v = v.unwrap_or("100");
        let n = v
            .parse::<i32>()
            .ok()
            .filter(|n| n.unsigned_abs() <= 2_147_483_645)
            .ok_or_else(|| OptError::invalid("--nice", v, "expected a whole number"))?;
        o.nice = Some(n);
        Ok(())
    }),
    opt("no-kill", Some('k'), OPT, "", |o, _, v| {
        o.no_kill = Some(!matches!(v, Some(s) if s.eq_ignore_ascii_case("off")));
        Ok(())
    }),
    opt("nodelist", Some('w'), REQ, "ReqNodeList", |o, _, v| {
        o.req_nodes = Some(parse_node_list("--nodelist", text(v))?);
        Ok(())
    }),
    opt(
        "ntasks-per-node",
        None,
        REQ,
        "NtasksPerN:B:S:C",
        |o, l, v| {
            o.ntasks_per_node = Some(parse_count(&format!("--{l}"), text(v))?);
            Ok(())
        },
    ),
    opt(
        "oversubscribe",
        Some('s'),
        FLAG,
        "OverSubscribe",
        |o, _, _| {
            o.oversubscribe = Some("YES".into());
            Ok(())
        },
    ),
    opt("reservation", None, REQ, "Reservation", |o, l, v| {
        o.reservation = Some(free(l, v)?);
        Ok(())
    }),
    opt("spread-job", None, FLAG, "", |o, _, _| {
        o.spread_job = true;
        Ok(())
    }),
    // Slurm's older name for --ntasks-per-node.
    opt(
        "tasks-per-node",
        None,
        REQ,
        "NtasksPerN:B:S:C",
        |o, l, v| {
            o.ntasks_per_node = Some(parse_count(&format!("--{l}"), text(v))?);
            Ok(())
        },
    ),
    opt("use-min-nodes", None, FLAG, "", |o, _, _| {
        o.use_min_nodes = true;
        Ok(())
    }),
    opt("account", Some('A'), REQ, "Account", |o, l, v| {
        o.account = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("array", Some('a'), REQ, "ArrayTaskId", array),
    opt("chdir", Some('D'), REQ, "WorkDir", |o, l, v| {
        o.chdir = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("container-env", None, REQ, "", |o, _, v| {
        o.container_env = Some(parse_container_env(text(v))?);
        Ok(())
    }),
    opt("container-image", None, REQ, "Container", |o, _, v| {
        o.container_image = Some(parse_container_image(text(v))?);
        Ok(())
    }),
    opt(
        "container-mounts",
        None,
        REQ,
        "ContainerMounts",
        |o, _, v| {
            o.container_mounts = Some(parse_container_mounts(text(v))?);
            Ok(())
        },
    ),
    opt("container-workdir", None, REQ, "", |o, _, v| {
        o.container_workdir = Some(parse_container_workdir(text(v))?);
        Ok(())
    }),
    opt("cpus-per-task", Some('c'), REQ, "CPUs/Task", |o, _, v| {
        o.cpus_per_task = Some(parse_count("--cpus-per-task", text(v))?);
        Ok(())
    }),
    opt("dependency", Some('d'), REQ, "Dependency", dependency),
    opt("error", Some('e'), REQ, "StdErr", |o, l, v| {
        o.error = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("export", None, REQ, "", |o, _, v| {
        o.export = Some(parse_export(text(v))?);
        Ok(())
    }),
    opt("gpus", Some('G'), REQ, "TresPerJob", |o, _, v| {
        o.gpus = Some(parse_gpu_count("--gpus", text(v))?);
        Ok(())
    }),
    opt("gpus-per-node", None, REQ, "TresPerNode", |o, _, v| {
        o.gpus_per_node = Some(parse_gpu_count("--gpus-per-node", text(v))?);
        Ok(())
    }),
    opt("gpus-per-task", None, REQ, "TresPerTask", |o, _, v| {
        o.gpus_per_task = Some(parse_gpu_count("--gpus-per-task", text(v))?);
        Ok(())
    }),
    opt("gres", None, REQ, "TresPerNode", |o, _, v| {
        o.gres = Some(parse_gres(text(v))?);
        Ok(())
    }),
    opt("help", Some('h'), FLAG, "", |_, _, _| {
        Err(OptError::HelpRequested)
    }),
    opt("hold", Some('H'), FLAG, "Reason", |o, _, _| {
        o.hold = true;
        Ok(())
    }),
    opt("job-name", Some('J'), REQ, "JobName", |o, l, v| {
        o.job_name = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("mem", None, REQ, "MinMemoryNode", mem),
    opt("nodes", Some('N'), REQ, "NumNodes", |o, _, v| {
        let (least, most) = parse_node_range(text(v))?;
        o.nodes = Some(least);
        o.nodes_max = Some(most);
        Ok(())
    }),
    opt("ntasks", Some('n'), REQ, "NumTasks", |o, _, v| {
        o.ntasks = Some(parse_count("--ntasks", text(v))?);
        Ok(())
    }),
    opt("wckey", None, REQ, "", |o, l, v| {
        o.wckey = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("open-mode", None, REQ, "", |o, l, v| {
        o.open_append = Some(parse_open_mode(l, text(v))?);
        Ok(())
    }),
    opt("output", Some('o'), REQ, "StdOut", |o, l, v| {
        o.output = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("parsable", None, FLAG, "", |o, _, _| {
        o.parsable = true;
        Ok(())
    }),
    opt("partition", Some('p'), REQ, "Partition", |o, _, v| {
        o.partition = Some(parse_partition(text(v))?);
        Ok(())
    }),
    opt("qos", Some('q'), REQ, "QOS", |o, l, v| {
        o.qos = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("requeue", None, FLAG, "Requeue", |o, _, _| {
        o.requeue = Some(true);
        Ok(())
    }),
    opt("no-requeue", None, FLAG, "Requeue", |o, _, _| {
        o.requeue = Some(false);
        Ok(())
    }),
    opt("signal", None, REQ, "", signal),
    opt("switches", None, REQ, "", |o, _, v| {
        o.switches = Some(parse_switches(text(v))?);
        Ok(())
    }),
    opt("time", Some('t'), REQ, "TimeLimit", time),
    opt("usage", None, FLAG, "", |_, _, _| {
        Err(OptError::HelpRequested)
    }),
    opt("version", Some('V'), FLAG, "", |_, _, _| {
        Err(OptError::VersionRequested)
    }),
    // Slurm's name for --chdir before 17.11; old scripts still carry it.
    opt("workdir", None, REQ, "WorkDir", |o, l, v| {
        o.chdir = Some(non_empty(l, text(v))?);
        Ok(())
    }),
    opt("wrap", None, REQ, "Command", |o, l, v| {
        o.wrap = Some(non_empty(l, text(v))?);
        Ok(())
    }),
];

pub const UNSUPPORTED: &[(&str, Option<char>)] = &[
    ("acctg-freq", None),
    ("batch", None),
    ("bb", None),
    ("bbf", None),
    ("checkpoint", None),
    ("cluster-constraint", None),
    ("clusters", Some('M')),
    ("container", None),
    ("container-id", None),
    ("contiguous", None),
    ("core-spec", Some('S')),
    ("cores-per-socket", None),
    ("cpu-freq", None),
    ("delay-boot", None),
    ("export-file", None),
    ("extra", None),
    ("extra-node-info", Some('B')),
    ("get-user-env", None),
    ("gid", None),
    ("gpu-freq", None),
    ("gpus-per-socket", None),
    ("ignore-pbs", None),
    ("immediate", Some('I')),
    ("input", Some('i')),
    ("kill-on-invalid-dep", None),
    ("mcs-label", None),
    ("mem-bind", None),
    ("mpi", None),
    ("network", None),
    ("nodefile", Some('F')),
    ("ntasks-per-core", None),
    ("ntasks-per-gpu", None),
    ("ntasks-per-socket", None),
    ("oom-kill-step", None),
    ("overcommit", Some('O')),
    ("power", None),
    ("prefer", None),
    ("priority", None),
    ("profile", None),
    ("propagate", None),
    ("quiet", Some('Q')),
    ("reboot", None),
    ("segment", None),
    ("share", None),
    ("sockets-per-node", None),
    ("stepmgr", None),
    ("test-only", None),
    ("thread-spec", None),
    ("threads-per-core", None),
    ("time-min", None),
    ("tmp", None),
    ("tres-bind", None),
    ("tres-per-task", None),
    ("uid", None),
    ("verbose", Some('v')),
    ("wait", Some('W')),
    ("wait-all-nodes", None),
];

/// sbatch's input environment variables (sbatch(1), INPUT ENVIRONMENT VARIABLES) and the
/// long option each stands for. They override the script and yield to the command line.
pub const ENV_OPTIONS: &[(&str, &str)] = &[
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
