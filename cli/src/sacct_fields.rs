//! sacct's `--format` fields: Slurm 22.05's names and default widths, how a name is
//! matched (case-insensitive prefix, first in table order, as sacct does), and each
//! field's value for a job line or a step line of an accounting record.
//!
//! Fields berth has no data for (disk I/O, RSS, energy, reservations, wckeys…) are
//! accepted and print empty, as Slurm prints fields its plugins did not gather.

use crate::duration::format_hms;
use crate::slurm_time::format_ts;
use berth_proto::v1::{self as pb, JobState};

/// One field: Slurm's name and default width (negative: left-justified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Slurm's spelling (printed in the header).
    pub name: &'static str,
    /// Column width; negative means left-justified.
    pub width: i32,
}

/// Slurm 22.05's fields in `sacct --helpformat` order, with `sacct.c`'s widths.
pub const FIELDS: &[(&str, i32)] = &[
    ("Account", 10),
    ("AdminComment", 15),
    ("AllocCPUS", 10),
    ("AllocNodes", 10),
    ("AllocTRES", 10),
    ("AssocID", 7),
    ("AveCPU", 10),
    ("AveCPUFreq", 10),
    ("AveDiskRead", 14),
    ("AveDiskWrite", 14),
    ("AvePages", 10),
    ("AveRSS", 10),
    ("AveVMSize", 10),
    ("BlockID", 16),
    ("Cluster", 10),
    ("Comment", 14),
    ("Constraints", 19),
    ("ConsumedEnergy", 14),
    ("ConsumedEnergyRaw", 17),
    ("Container", 19),
    ("CPUTime", 10),
    ("CPUTimeRAW", 10),
    ("DBIndex", -21),
    ("DerivedExitCode", 15),
    ("Elapsed", 10),
    ("ElapsedRaw", 10),
    ("Eligible", 19),
    ("End", 19),
    ("ExitCode", 8),
    ("Flags", 19),
    ("GID", 6),
    ("Group", 9),
    ("JobID", -12),
    ("JobIDRaw", -12),
    ("JobName", 10),
    ("Layout", 9),
    ("MaxDiskRead", 12),
    ("MaxDiskReadNode", 15),
    ("MaxDiskReadTask", 15),
    ("MaxDiskWrite", 12),
    ("MaxDiskWriteNode", 16),
    ("MaxDiskWriteTask", 16),
    ("MaxPages", 8),
    ("MaxPagesNode", 12),
    ("MaxPagesTask", 14),
    ("MaxRSS", 10),
    ("MaxRSSNode", 10),
    ("MaxRSSTask", 10),
    ("MaxVMSize", 10),
    ("MaxVMSizeNode", 14),
    ("MaxVMSizeTask", 14),
    ("McsLabel", 12),
    ("MinCPU", 10),
    ("MinCPUNode", 10),
    ("MinCPUTask", 10),
    ("NCPUS", 10),
    ("NNodes", 8),
    ("NodeList", 15),
    ("NTasks", 8),
    ("Partition", 10),
    ("Priority", 10),
    ("QOS", 10),
    ("QOSRAW", 6),
    ("Reason", 22),
    ("ReqCPUFreq", 10),
    ("ReqCPUFreqGov", 13),
    ("ReqCPUFreqMax", 13),
    ("ReqCPUFreqMin", 13),
    ("ReqCPUS", 8),
    ("ReqMem", 10),
    ("ReqNodes", 8),
    ("ReqTRES", 10),
    ("Reservation", 20),
    ("ReservationId", 8),
    ("Reserved", 10),
    ("ResvCPU", 10),
    ("ResvCPURAW", 10),
    ("Start", 19),
    ("State", 10),
    ("Submit", 19),
    ("SubmitLine", 20),
    ("Suspended", 10),
    ("SystemComment", 15),
    ("SystemCPU", 10),
    ("Timelimit", 10),
    ("TimelimitRaw", 10),
    ("TotalCPU", 10),
    ("TRESUsageInAve", 14),
    ("TRESUsageInMax", 14),
    ("TRESUsageInMaxNode", 18),
    ("TRESUsageInMaxTask", 18),
    ("TRESUsageInMin", 14),
    ("TRESUsageInMinNode", 18),
    ("TRESUsageInMinTask", 18),
    ("TRESUsageInTot", 14),
    ("TRESUsageOutAve", 15),
    ("TRESUsageOutMax", 15),
    ("TRESUsageOutMaxNode", 19),
    ("TRESUsageOutMaxTask", 19),
    ("TRESUsageOutMin", 15),
    ("TRESUsageOutMinNode", 19),
    ("TRESUsageOutMinTask", 19),
    ("TRESUsageOutTot", 15),
    ("UID", 6),
    ("User", 9),
    ("UserCPU", 10),
    ("WCKey", 10),
    ("WCKeyID", 10),
    ("WorkDir", 20),
];

/// sacct's default `--format`.
pub const DEFAULT_FIELDS: &str = "jobid,jobname,partition,account,alloccpus,state,exitcode";
/// `-b/--brief`.
pub const BRIEF_FIELDS: &str = "jobid,state,exitcode";
/// `-l/--long` (Slurm 22.05's LONG_FIELDS).
pub const LONG_FIELDS: &str = "jobid,jobidraw,jobname,partition,maxvmsize,maxvmsizenode,\
maxvmsizetask,avevmsize,maxrss,maxrssnode,maxrsstask,averss,maxpages,maxpagesnode,\
maxpagestask,avepages,mincpu,mincpunode,mincputask,avecpu,ntasks,alloccpus,elapsed,state,\
exitcode,avecpufreq,reqcpufreqmin,reqcpufreqmax,reqcpufreqgov,reqmem,consumedenergy,\
maxdiskread,maxdiskreadnode,maxdiskreadtask,avediskread,maxdiskwrite,maxdiskwritenode,\
maxdiskwritetask,avediskwrite,reqtres,alloctres,tresusageinave,tresusageinmax,\
tresusageinmaxn,tresusageinmaxt,tresusageinmin,tresusageinminn,tresusageinmint,\
tresusageintot,tresusageoutmax,tresusageoutmaxn,tresusageoutmaxt,tresusageoutave,\
tresusageouttot";

/// Parses a comma-separated field list (`name[%[-]width]`), as sacct does: each name is
/// the first field it is a case-insensitive prefix of; `ALL` is every field.
///
/// # Errors
/// Slurm's message `Invalid field requested: "NAME"`.
pub fn parse_list(list: &str) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, width) = match item.split_once('%') {
            Some((n, w)) => (n, Some(atoi(w))),
            None => (item, None),
        };
        if name.eq_ignore_ascii_case("all") {
            for (n, w) in FIELDS {
                out.push(Field {
                    name: n,
                    width: width.unwrap_or(*w),
                });
            }
            continue;
        }
        let found = FIELDS.iter().find(|(n, _)| {
            n.len() >= name.len() && n[..name.len()].eq_ignore_ascii_case(name) && !name.is_empty()
        });
        match found {
            Some((n, w)) => out.push(Field {
                name: n,
                width: width.unwrap_or(*w),
            }),
            None => return Err(format!("Invalid field requested: \"{name}\"")),
        }
    }
    Ok(out)
}

/// C's `atoi`: leading sign and digits, anything else stops it (0 when none).
fn atoi(s: &str) -> i32 {
    let s = s.trim_start();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let n: i64 = digits
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .fold(0i64, |a, c| {
            (a * 10 + i64::from(c as u8 - b'0')).min(i64::from(i32::MAX))
        });
    (if neg { -n } else { n }) as i32
}

/// One output line: a job's run, or one of its steps.
pub struct Line<'a> {
    /// The run.
    pub rec: &'a pb::JobRecord,
    /// The step, for a step line.
    pub step: Option<&'a pb::StepRecord>,
}

/// Slurm's state name of a record's run (`REQUEUED` for an earlier run of a requeued job).
pub fn state_text(state: JobState, requeued: bool) -> &'static str {
    if requeued {
        return "REQUEUED";
    }
    match state {
        JobState::Unspecified => "UNKNOWN",
        JobState::Pending => "PENDING",
        JobState::Running => "RUNNING",
        JobState::Completed => "COMPLETED",
        JobState::Failed => "FAILED",
        JobState::Cancelled => "CANCELLED",
        JobState::Timeout => "TIMEOUT",
        JobState::NodeFail => "NODE_FAIL",
        JobState::OutOfMemory => "OUT_OF_MEMORY",
        JobState::Preempted => "PREEMPTED",
    }
}

/// The job id as sacct prints it: `12`, `12_3` for an array task, `12.batch` for a step.
pub fn job_id(rec: &pb::JobRecord, step: Option<&pb::StepRecord>, raw: bool) -> String {
    let base = if rec.has_array_task && !raw {
        format!("{}_{}", rec.array_job_id, rec.array_task_id)
    } else {
        rec.job_id.to_string()
    };
    match step {
        Some(s) => format!("{base}.{}", s.step_id),
        None => base,
    }
}

/// Memory as Slurm's TRES strings print it: `512M`, `16G`, `2T` (exact units only).
pub fn mem_text(mb: u64) -> String {
    let mut v = mb;
    for unit in ["M", "G", "T", "P"] {
        if v < 1024 || !v.is_multiple_of(1024) || unit == "P" {
            return format!("{v}{unit}");
        }
        v /= 1024;
    }
    unreachable!("the loop returns at P")
}

/// A TRES string (`billing=2,cpu=2,gres/gpu:h100=1,gres/gpu=1,mem=8G,node=1`), sorted by
/// name as sacct prints it; empty for a pending job's allocation. Jobs carry `billing`
/// (berth bills a CPU as one unit, Slurm's default weights); steps do not, as in Slurm.
pub fn tres_text(t: &pb::Tres, billing: bool) -> String {
    if t.cpus == 0 && t.nodes == 0 {
        return String::new();
    }
    let mut parts = vec![format!("cpu={}", t.cpus)];
    if billing {
        parts.push(format!("billing={}", t.cpus));
    }
    if t.mig_slices > 0 {
        parts.push(format!("gres/gpu:{}={}", t.mig_profile, t.mig_slices));
        parts.push(format!("gres/gpu={}", t.mig_slices));
    } else if t.gpu_milli > 0 {
        parts.push(format!("gres/shard={}", t.gpu_milli * t.gpus.max(1)));
    } else if t.gpus > 0 {
        if !t.gpu_type.is_empty() {
            parts.push(format!("gres/gpu:{}={}", t.gpu_type, t.gpus));
        }
        parts.push(format!("gres/gpu={}", t.gpus));
    }
    if t.mem_mb > 0 {
        parts.push(format!("mem={}", mem_text(t.mem_mb)));
    }
    parts.push(format!("node={}", t.nodes.max(1)));
    parts.sort();
    parts.join(",")
}

fn ts(ms: u64) -> String {
    if ms == 0 {
        "Unknown".into()
    } else {
        format_ts((ms / 1000) as i64)
    }
}

/// Elapsed seconds of a run or step (to `now_ms` while it runs).
pub fn elapsed_s(start_ms: u64, end_ms: u64, now_ms: u64) -> u64 {
    if start_ms == 0 {
        return 0;
    }
    let end = if end_ms == 0 { now_ms } else { end_ms };
    end.saturating_sub(start_ms) / 1000
}

/// Measured GPU use as Slurm 23's gpu TRES usage names it: memory peak and mean
/// utilization (busy / held GPU-seconds).
fn gpu_usage_text(rec: &pb::JobRecord) -> String {
    let held: f64 = rec.usage.iter().map(|u| u.gpu_seconds).sum();
    if held <= 0.0 {
        return String::new();
    }
    let util = 100.0 * rec.gpu_busy_seconds / held;
    format!(
        "gres/gpumem={},gres/gpuutil={:.0}",
        mem_text(rec.gpu_memory_max_mb),
        util
    )
}

/// The value of `field` on `line` (empty: no data), `now_ms` timing running jobs.
pub fn value(field: &str, line: &Line, now_ms: u64) -> String {
    let r = line.rec;
    let step = line.step;
    let alloc = match step {
        Some(s) => s.alloc.clone().unwrap_or_default(),
        None => r.alloc.clone().unwrap_or_default(),
    };
    let (start, end) = match step {
        Some(s) => (s.start_time_ms, s.end_time_ms),
        None => (r.start_time_ms, r.end_time_ms),
    };
    let elapsed = elapsed_s(start, end, now_ms);
    let ncpus = if r.start_time_ms == 0 {
        r.req.as_ref().map_or(0, |t| t.cpus)
    } else {
        alloc.cpus
    };
    match field {
        "Account" => r.account.clone(),
        "AllocCPUS" | "NCPUS" => ncpus.to_string(),
        "AllocNodes" => {
            if r.start_time_ms == 0 {
                "0".into()
            } else {
                alloc.nodes.to_string()
            }
        }
        "AllocTRES" => tres_text(&alloc, step.is_none()),
        "Cluster" => "berth".into(),
        "Container" => String::new(),
        "CPUTime" => format_hms(elapsed * u64::from(alloc.cpus)),
        "CPUTimeRAW" => (elapsed * u64::from(alloc.cpus)).to_string(),
        "DerivedExitCode" if step.is_none() => format!("{}:{}", r.exit_code, r.exit_signal),
        "Elapsed" => format_hms(elapsed),
        "ElapsedRaw" => elapsed.to_string(),
        "Eligible" => ts(r.eligible_time_ms),
        "End" => ts(end),
        "ExitCode" => match step {
            Some(s) => format!("{}:{}", s.exit_code, s.exit_signal),
            None => format!("{}:{}", r.exit_code, r.exit_signal),
        },
        "GID" => r.gid.to_string(),
        "Group" => crate::squeue::group_name(r.gid),
        "JobID" => job_id(r, step, false),
        "JobIDRaw" => job_id(r, step, true),
        "JobName" => step.map_or_else(|| r.name.clone(), |s| s.name.clone()),
        "NNodes" => {
            if r.start_time_ms == 0 {
                r.req.as_ref().map_or(1, |t| t.nodes).to_string()
            } else {
                alloc.nodes.to_string()
            }
        }
        "NodeList" => node_list(r, step),
        "NTasks" => step.map(|s| s.ntasks.to_string()).unwrap_or_default(),
        "Partition" if step.is_none() => r.partition.clone(),
        "QOS" if step.is_none() => r.qos.clone(),
        "Reason" if step.is_none() => {
            if r.reason.is_empty() {
                "None".into()
            } else {
                r.reason.clone()
            }
        }
        "ReqCPUS" => r.req.as_ref().map_or(0, |t| t.cpus).to_string(),
        "ReqMem" => r
            .req
            .as_ref()
            .map_or_else(String::new, |t| mem_text(t.mem_mb)),
        "ReqNodes" => r.req.as_ref().map_or(1, |t| t.nodes).to_string(),
        "ReqTRES" if step.is_none() => r
            .req
            .as_ref()
            .map(|t| tres_text(t, true))
            .unwrap_or_default(),
        "Reserved" if step.is_none() => format_hms(reserved_s(r, now_ms)),
        // Slurm records a job cancelled while pending as starting when it ended.
        "Start" if start == 0 && step.is_none() && end > 0 => ts(end),
        "Start" => ts(start),
        "State" => match step {
            Some(s) => state_text(s.state(), false).to_string(),
            None if r.state() == JobState::Cancelled && !r.requeued => {
                format!("CANCELLED by {}", cancelled_by(r))
            }
            None => state_text(r.state(), r.requeued).to_string(),
        },
        "Submit" => ts(r.submit_time_ms),
        "SubmitLine" if step.is_none() => r.command.clone(),
        "Suspended" => "00:00:00".into(),
        "Timelimit" if step.is_none() => limit_text(r.time_limit_secs),
        "TimelimitRaw" if step.is_none() => {
            if r.time_limit_secs == 0 {
                "UNLIMITED".into()
            } else {
                (r.time_limit_secs / 60).to_string()
            }
        }
        "TRESUsageInAve" | "TRESUsageInMax" | "TRESUsageInTot" if step.is_none() => {
            gpu_usage_text(r)
        }
        "UID" if step.is_none() => r.uid.to_string(),
        "User" if step.is_none() => r.user.clone(),
        "WorkDir" if step.is_none() => r.work_dir.clone(),
        _ => String::new(),
    }
}

/// Who cancelled a job, as Slurm's `CANCELLED by UID`: berth's own cancellations (a
/// reason other than the user's) are root's; a user's scancel is charged to the job's
/// owner, since the log does not record the caller's uid.
fn cancelled_by(r: &pb::JobRecord) -> u32 {
    match r.reason.as_str() {
        "" | "None" | "cancelled" => r.uid,
        _ => 0,
    }
}

fn reserved_s(r: &pb::JobRecord, now_ms: u64) -> u64 {
    if r.eligible_time_ms == 0 {
        return 0;
    }
    let until = if r.start_time_ms > 0 {
        r.start_time_ms
    } else if r.end_time_ms > 0 {
        r.end_time_ms
    } else {
        now_ms
    };
    until.saturating_sub(r.eligible_time_ms) / 1000
}

fn node_list(r: &pb::JobRecord, step: Option<&pb::StepRecord>) -> String {
    let nodes = step.map_or(&r.nodes, |s| &s.nodes);
    if nodes.is_empty() {
        return "None assigned".into();
    }
    crate::hostlist::compress(nodes)
}

fn limit_text(secs: u64) -> String {
    if secs == 0 {
        "UNLIMITED".into()
    } else {
        format_hms(secs)
    }
}

/// One cell as sacct prints it: cut to the width with a `+` marking the cut, padded
/// right- (positive width) or left-justified (negative), then a space.
pub fn cell(value: &str, width: i32) -> String {
    let w = width.unsigned_abs() as usize;
    let mut v: String = value.chars().take(w).collect();
    if value.chars().count() > w && w > 0 {
        v.pop();
        v.push('+');
    }
    if width < 0 {
        format!("{v:<w$} ")
    } else {
        format!("{v:>w$} ")
    }
}
