//! `scontrol show job` / `scontrol show node`: Slurm's `Key=Value` records.
//!
//! Tools scrape these records by key (`JobState=`, `NodeList=`, `StdOut=`, `ExitCode=`), so
//! the keys, their order and their value formats follow Slurm's `slurm_sprint_job_info`:
//! the first line is unindented, the rest are indented three spaces, unset strings are
//! `(null)` and unset times `Unknown`. Keys describing Slurm features berth does not have
//! (dependencies, features, licenses) carry Slurm's own "none" values, so parsers find
//! them. berth adds what a GPU user needs and Slurm hides behind `-d`: the granted GPUs per
//! node (`Nodes=… GRES=gpu:h100:2(IDX:0-1)`), their UUIDs (`GpuUuids=node:uuid,…`) and, for
//! nodes, one `Gpu=` line per GPU.

use std::fmt::Write as _;

use berth_proto::v1::{Job, JobState};

use crate::duration::format_hms;
use crate::hostlist;
use crate::squeue::{self, or_null, spec};

/// Indentation of every line after the first, as Slurm prints it.
pub(super) const INDENT: &str = "   ";

/// `Dependency=`: the job's conditions while it waits on them, marked `(unfulfilled)` or
/// `(failed)` (never satisfiable) as Slurm marks them; `(null)` otherwise (Slurm drops
/// conditions once they are met).
fn dependency(job: &Job, spec: &berth_proto::v1::JobSpec) -> String {
    let mark = match (job.state(), job.reason.as_str()) {
        (JobState::Pending, "Dependency") => "(unfulfilled)",
        (JobState::Pending, "DependencyNeverSatisfied") => "(failed)",
        _ => return "(null)".into(),
    };
    if spec.dependencies.is_empty() {
        return "(null)".into();
    }
    let conds: Vec<String> = spec
        .dependencies
        .iter()
        .map(|d| match (d.kind.as_str(), d.array_task_id) {
            ("singleton", _) => "singleton".to_string(),
            (kind, Some(i)) => format!("{kind}:{}_{i}", d.job_id),
            (kind, None) => format!("{kind}:{}", d.job_id),
        })
        .collect();
    format!("{}{mark}", conds.join(","))
}

/// One job as `scontrol show job` prints it, ending with `\n` (callers separate records
/// with a blank line, as scontrol does). `now_ms` is used for the run time of a running job.
pub fn show_job(job: &Job, now_ms: u64) -> String {
    let mut lines = vec![format!(
        "JobId={}{} JobName={}",
        job.id,
        array_fields(job),
        spec(job).name
    )];
    lines.extend(identity_lines(job));
    lines.extend(time_lines(job, now_ms));
    lines.extend(resource_lines(job));
    lines.extend(file_lines(job));
    lines.extend(gpu_lines(job));
    let mut out = lines.join(&format!("\n{INDENT}"));
    out.push('\n');
    out
}

/// Records as `scontrol show` prints them: a blank line between them, or with `-o`
/// (`--oneliner`) each record on one line (its continuation lines joined by a space).
pub fn records(records: &[String], oneliner: bool) -> String {
    if !oneliner {
        return records.join("\n");
    }
    records
        .iter()
        .map(|r| format!("{}\n", r.trim_end().replace(&format!("\n{INDENT}"), " ")))
        .collect()
}

/// ` ArrayJobId=12 ArrayTaskId=4-15%4 ArrayTaskThrottle=4` for a record of an array
/// (the throttle only when there is one), as Slurm puts them after `JobId=`; empty for a
/// job that is not part of an array.
fn array_fields(job: &Job) -> String {
    let Some(tasks) = crate::array_view::task_text(job) else {
        return String::new();
    };
    let mut out = format!(" ArrayJobId={} ArrayTaskId={tasks}", job.array_job_id);
    match crate::array_view::throttle(job) {
        0 => {}
        n => {
            let _ = write!(out, " ArrayTaskThrottle={n}");
        }
    }
    out
}

/// Who submitted the job, its accounting and state.
fn identity_lines(job: &Job) -> Vec<String> {
    let spec = spec(job);
    let held = job.held || (job.state() == JobState::Pending && spec.hold);
    // berth orders jobs by fair share and sends no priority number; Slurm shows 0 for a
    // held job, so 0 keeps that meaning and 1 says "eligible".
    let priority = if held { 0 } else { 1 };
    vec![
        format!(
            "UserId={}({}) GroupId={}({}) MCS_label=N/A",
            squeue::user(job),
            spec.uid,
            squeue::group_name(spec.gid),
            spec.gid
        ),
        format!(
            "Priority={priority} Nice={} Account={} QOS={}",
            spec.nice,
            or_null(if job.account.is_empty() {
                &spec.account
            } else {
                &job.account
            }),
            or_null(if job.qos.is_empty() {
                &spec.qos
            } else {
                &job.qos
            })
        ),
        format!(
            "JobState={} Reason={} Dependency={}",
            squeue::state_name(job),
            squeue::reason(job),
            dependency(job, spec)
        ),
        format!(
            // Requeue: as asked, else unknown to the CLI (the class decides): shown as 1.
            "Requeue={} Restarts={} BatchFlag={} Reboot=0 ExitCode={}:{}",
            u8::from(spec.requeue.unwrap_or(true)),
            job.restart_count,
            // salloc and interactive srun run no batch script.
            u8::from(!spec.allocation),
            job.exit_code,
            job.exit_signal
        ),
    ]
}

/// Run time, limit and the job's timestamps.
fn time_lines(job: &Job, now_ms: u64) -> Vec<String> {
    let spec = spec(job);
    let limit = match spec.time_limit_secs {
        0 => "UNLIMITED".to_string(),
        secs => format_hms(secs),
    };
    let time = |ms: u64| squeue::format_timestamp(ms).unwrap_or_else(|| "Unknown".to_string());
    let eligible = if job.held {
        0
    } else {
        job.submit_time_ms.max(spec.begin_time_ms)
    };
    let end = squeue::end_time_ms(job).unwrap_or(0);
    vec![
        format!(
            "RunTime={} TimeLimit={limit} TimeMin=N/A",
            format_hms(squeue::elapsed_secs(job, now_ms))
        ),
        format!(
            "SubmitTime={} EligibleTime={}",
            time(job.submit_time_ms),
            time(eligible)
        ),
        format!(
            "StartTime={} EndTime={} Deadline={}",
            time(job.start_time_ms),
            time(end),
            match spec.deadline_ms {
                0 => "N/A".to_string(),
                ms => time(ms),
            }
        ),
    ]
}

/// Where the job runs and what it asked for and holds.
fn resource_lines(job: &Job) -> Vec<String> {
    let spec = spec(job);
    let nodes = squeue::node_names(job);
    let mut lines = vec![
        format!(
            "Partition={} AllocNode:Sid={}:*",
            squeue::partition(job),
            or_null(&spec.submit_host)
        ),
        format!(
            "ReqNodeList={} ExcNodeList={}",
            or_null(&hostlist::compress(&spec.req_nodes)),
            or_null(&hostlist::compress(&spec.exc_nodes))
        ),
        format!(
            "NodeList={}",
            if nodes.is_empty() {
                "(null)".to_string()
            } else {
                hostlist::compress(&nodes)
            }
        ),
    ];
    if let Some(first) = nodes.first() {
        lines.push(format!("BatchHost={first}"));
    }
    // Slurm shows a pending job's node range as MIN-MAX.
    let node_count = match (job.state(), spec.nodes_max) {
        (JobState::Pending, most) if most > spec.nodes.max(1) => {
            format!("{}-{most}", spec.nodes.max(1))
        }
        _ => squeue::node_count(job).to_string(),
    };
    lines.push(format!(
        "NumNodes={node_count} NumCPUs={} NumTasks={} CPUs/Task={} ReqB:S:C:T=0:0:*:*",
        squeue::cpu_count(job),
        spec.ntasks.max(1),
        spec.cpus_per_task.max(1)
    ));
    lines.push(format!("ReqTRES={}", requested_tres(job)));
    lines.push(format!(
        "AllocTRES={}",
        allocated_tres(job).unwrap_or_else(|| "(null)".to_string())
    ));
    lines.push(format!(
        "Socks/Node=* NtasksPerN:B:S:C={}:0:*:* CoreSpec=*",
        spec.ntasks_per_node
    ));
    let mem = if spec.mem_per_cpu_mb > 0 {
        format!("MinMemoryCPU={}M", spec.mem_per_cpu_mb)
    } else if spec.mem_mb == 0 {
        "MinMemoryNode=0".to_string()
    } else {
        format!("MinMemoryNode={}M", spec.mem_mb)
    };
    lines.push(format!(
        "MinCPUsNode={} {mem} MinTmpDiskNode=0",
        spec.min_cpus_node.max(spec.cpus_per_task.max(1))
    ));
    lines.push(format!(
        "Features={} DelayBoot=00:00:00",
        or_null(&spec.constraint)
    ));
    let licenses: Vec<String> = spec
        .licenses
        .iter()
        .map(|l| format!("{}:{}", l.name, l.count))
        .collect();
    lines.push(format!(
        "OverSubscribe={} Contiguous=0 Licenses={} Network=(null)",
        if spec.oversubscribe.is_empty() {
            "OK"
        } else {
            &spec.oversubscribe
        },
        or_null(&licenses.join(","))
    ));
    if !spec.reservation.is_empty() {
        lines.push(format!("Reservation={}", spec.reservation));
    }
    if !spec.comment.is_empty() {
        lines.push(format!("Comment={}", spec.comment));
    }
    if !spec.mail_type.is_empty() {
        let user = if spec.mail_user.is_empty() {
            &spec.user
        } else {
            &spec.mail_user
        };
        lines.push(format!("MailUser={user} MailType={}", spec.mail_type));
    }
    if spec.cpus_per_gpu > 0 {
        lines.push(format!("CpusPerTres=gres:gpu:{}", spec.cpus_per_gpu));
    }
    if spec.mem_per_gpu_mb > 0 {
        lines.push(format!("MemPerTres=gres:gpu:{}", spec.mem_per_gpu_mb));
    }
    lines
}

/// Slurm's TRES list from counts; GPUs appear untyped and, when typed, once more by type.
/// GPUs given as milli (`gpu_milli`: 1000 per GPU) so that a fraction shows as `0.5`.
fn tres(cpus: u64, mem_mb: u64, nodes: u64, gpu_milli: u64, gpu_type: &str) -> String {
    let mut out = format!("cpu={cpus}");
    if mem_mb > 0 {
        let _ = write!(out, ",mem={mem_mb}M");
    }
    let _ = write!(out, ",node={nodes},billing={cpus}");
    if gpu_milli > 0 {
        let gpus = match u32::try_from(gpu_milli) {
            Ok(m) if !gpu_milli.is_multiple_of(1000) => squeue::gpu_fraction(m),
            _ => (gpu_milli / 1000).to_string(),
        };
        let _ = write!(out, ",gres/gpu={gpus}");
        if !gpu_type.is_empty() {
            let _ = write!(out, ",gres/gpu:{gpu_type}={gpus}");
        }
    }
    out
}

/// What the job asked for, over all its nodes.
fn requested_tres(job: &Job) -> String {
    let spec = spec(job);
    let nodes = u64::from(spec.nodes.max(1));
    let cpus = u64::from(spec.ntasks.max(1)) * u64::from(spec.cpus_per_task.max(1));
    let per_gpu = if spec.gpu_milli > 0 {
        spec.gpu_milli
    } else {
        1000
    };
    let gpu_milli = u64::from(spec.gpus_per_node) * nodes * u64::from(per_gpu);
    let mut out = tres(
        cpus,
        spec.mem_mb.saturating_mul(nodes),
        nodes,
        gpu_milli,
        &spec.gpu_type,
    );
    if !spec.mig_profile.is_empty() {
        let slices = u64::from(spec.mig_per_node) * nodes;
        let _ = write!(out, ",gres/gpu:{}={slices}", spec.mig_profile);
    }
    out
}

/// What the job holds; `None` before it is placed.
fn allocated_tres(job: &Job) -> Option<String> {
    if job.allocations.is_empty() {
        return None;
    }
    let cpus: u64 = job.allocations.iter().map(|a| u64::from(a.cpus)).sum();
    let mem: u64 = job.allocations.iter().map(|a| a.mem_mb).sum();
    let gpu_milli: u64 = job
        .allocations
        .iter()
        .map(|a| {
            let per = if a.gpu_milli > 0 { a.gpu_milli } else { 1000 };
            a.gpu_uuids.len() as u64 * u64::from(per)
        })
        .sum();
    Some(tres(
        cpus,
        mem,
        job.allocations.len() as u64,
        gpu_milli,
        &spec(job).gpu_type,
    ))
}

/// The script, its directory and its output files.
fn file_lines(job: &Job) -> Vec<String> {
    let spec = spec(job);
    let (stdout, stderr) = output_paths(job);
    let mut lines = vec![
        format!("Command={}", or_null(&spec.command)),
        format!("WorkDir={}", spec.work_dir),
    ];
    // An allocation's output goes to its tool's terminal: Slurm shows no files for it.
    if !spec.allocation {
        lines.extend([
            format!("StdErr={stderr}"),
            "StdIn=/dev/null".to_string(),
            format!("StdOut={stdout}"),
        ]);
    }
    if let Some(tres) = squeue::tres_per_node(job) {
        lines.push(format!("TresPerNode={tres}"));
    }
    // Container jobs only (Slurm's own field name for a job's container).
    if !spec.container_image.is_empty() {
        lines.push(format!("Container={}", spec.container_image));
        if !spec.container_mounts.is_empty() {
            lines.push(format!(
                "ContainerMounts={}",
                spec.container_mounts.join(",")
            ));
        }
    }
    lines
}

/// berth's measured GPU use, per node as the agents reported it:
/// `GpuUsage=node1:held=120.0s,busy=90.5s,util=87%,mem=1024M,maxmem=2048M` (GPU-seconds
/// held and busy since the job started there; utilization and memory at the last measure).
fn usage_line(job: &Job) -> Option<String> {
    if job.usage.is_empty() {
        return None;
    }
    let per_node: Vec<String> = job
        .usage
        .iter()
        .map(|u| {
            format!(
                "{}:held={:.1}s,busy={:.1}s,util={:.0}%,mem={}M,maxmem={}M",
                u.node,
                u.gpu_seconds,
                u.gpu_busy_seconds,
                u.gpu_util_percent,
                u.gpu_memory_mb,
                u.gpu_memory_max_mb
            )
        })
        .collect();
    Some(format!("GpuUsage={}", per_node.join(",")))
}

/// The GPUs granted on each node, as Slurm's `-d` detail lines, then berth's UUID list.
fn gpu_lines(job: &Job) -> Vec<String> {
    let kind = &spec(job).gpu_type;
    let mut lines = Vec::new();
    let mut uuids = Vec::new();
    for alloc in job.allocations.iter().filter(|a| !a.gpu_uuids.is_empty()) {
        let gres = if kind.is_empty() {
            "gpu".to_string()
        } else {
            format!("gpu:{kind}")
        };
        let count = if alloc.gpu_milli > 0 {
            squeue::gpu_fraction(alloc.gpu_milli)
        } else {
            alloc.gpu_uuids.len().to_string()
        };
        lines.push(format!(
            "  Nodes={} CPUs={} Mem={} GRES={gres}:{count}(IDX:{})",
            alloc.node,
            alloc.cpus,
            alloc.mem_mb,
            hostlist::compress_numbers(&alloc.gpu_indices)
        ));
        uuids.extend(
            alloc
                .gpu_uuids
                .iter()
                .map(|uuid| format!("{}:{uuid}", alloc.node)),
        );
    }
    if !uuids.is_empty() {
        lines.push(format!("GpuUuids={}", uuids.join(",")));
    }
    let slices: Vec<String> = job
        .allocations
        .iter()
        .flat_map(|a| {
            a.mig_slices.iter().map(move |s| {
                format!(
                    "{}:{}:{}@{}:{}",
                    a.node, s.gpu_uuid, s.profile, s.placement_start, s.placement_size
                )
            })
        })
        .collect();
    if !slices.is_empty() {
        lines.push(format!("MigSlices={}", slices.join(",")));
    }
    lines.extend(usage_line(job));
    lines
}

/// `StdOut=`/`StdErr=`: the paths the agent resolved, else the patterns with what is known
/// expanded and made absolute against the work directory.
fn output_paths(job: &Job) -> (String, String) {
    let spec = spec(job);
    let stdout_pattern = if spec.stdout.is_empty() {
        "slurm-%j.out"
    } else {
        spec.stdout.as_str()
    };
    // An empty --error means "into the stdout file".
    let stderr_pattern = if spec.stderr.is_empty() {
        stdout_pattern
    } else {
        spec.stderr.as_str()
    };
    let resolve = |resolved: &str, pattern: &str| {
        if !resolved.is_empty() {
            return resolved.to_string();
        }
        let path = expand_pattern(pattern, job);
        if path.starts_with('/') || spec.work_dir.is_empty() {
            path
        } else {
            format!("{}/{path}", spec.work_dir.trim_end_matches('/'))
        }
    };
    let stdout = resolve(&job.stdout_path, stdout_pattern);
    let stderr = if job.stderr_path.is_empty() && spec.stderr.is_empty() {
        stdout.clone()
    } else {
        resolve(&job.stderr_path, stderr_pattern)
    };
    (stdout, stderr)
}

/// Expands Slurm's filename pattern letters that are known from the job record: `%j`
/// (job id, zero-padded to an optional width as in `%5j`), `%A`/`%a` (array id and task
/// index; for a job not in an array, its id and 4294967294 as Slurm writes them), `%x`
/// (name), `%u` (user), `%N` (first node, once placed) and `%%`. Others stay as written,
/// as scontrol shows them; so does `%a` of an array's record of pending tasks.
pub fn expand_pattern(pattern: &str, job: &Job) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let width: usize = after[..digits].parse().unwrap_or(0);
        let letter = after[digits..].chars().next();
        let value = match letter {
            Some('%') if digits == 0 => Some("%".to_string()),
            Some('j') => Some(format!("{:0width$}", job.id)),
            Some('A') => Some(format!(
                "{:0width$}",
                if job.array_job_id == 0 {
                    job.id
                } else {
                    job.array_job_id
                }
            )),
            Some('a') if job.array_job_id == 0 => {
                Some(format!("{:0width$}", berth_scheduler::output_path::NO_TASK))
            }
            Some('a') if job.array_pending.is_empty() => {
                job.array_task_id.map(|i| format!("{i:0width$}"))
            }
            Some('x') => Some(spec(job).name.clone()),
            Some('u') => Some(squeue::user(job)),
            Some('N') => job.allocations.first().map(|a| a.node.clone()),
            _ => None,
        };
        match (value, letter) {
            (Some(value), Some(letter)) => {
                out.push_str(&value);
                rest = &after[digits + letter.len_utf8()..];
            }
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{Allocation, JobSpec};

    const NOW_MS: u64 = 1_700_000_000_000;

    fn finished_job() -> Job {
        let spec = JobSpec {
            name: "train".to_string(),
            command: "/home/alice/train.sh".to_string(),
            work_dir: "/home/alice".to_string(),
            user: "alice".to_string(),
            uid: 1000,
            gid: 1000,
            nodes: 1,
            ntasks: 1,
            cpus_per_task: 4,
            mem_mb: 16_384,
            gpus_per_node: 2,
            gpu_type: "h100".to_string(),
            time_limit_secs: 3600,
            partition: "gpu".to_string(),
            stdout: "logs/%x-%j.out".to_string(),
            ..JobSpec::default()
        };
        let mut job = Job {
            id: 42,
            spec: Some(spec),
            submit_time_ms: NOW_MS - 20_000,
            start_time_ms: NOW_MS - 10_000,
            end_time_ms: NOW_MS - 5_000,
            allocations: vec![Allocation {
                node: "dgx01".to_string(),
                gpu_uuids: vec!["GPU-aaa".to_string(), "GPU-bbb".to_string()],
                gpu_indices: vec![0, 1],
                cpus: 4,
                mem_mb: 16_384,
                ..Default::default()
            }],
            ..Job::default()
        };
        job.set_state(JobState::Completed);
        job
    }

    #[test]
    fn dependency_shows_while_the_job_waits_on_it() {
        let mut job = finished_job();
        let spec = JobSpec {
            dependencies: vec![
                berth_proto::v1::DependencyCondition {
                    kind: "afterok".into(),
                    job_id: 12,
                    ..Default::default()
                },
                berth_proto::v1::DependencyCondition {
                    kind: "afterany".into(),
                    job_id: 13,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        // (state, reason, want)
        let cases = [
            (
                JobState::Pending,
                "Dependency",
                "afterok:12,afterany:13(unfulfilled)",
            ),
            (
                JobState::Pending,
                "DependencyNeverSatisfied",
                "afterok:12,afterany:13(failed)",
            ),
            (JobState::Running, "None", "(null)"),
        ];
        for (i, (state, reason, want)) in cases.into_iter().enumerate() {
            job.set_state(state);
            job.reason = reason.into();
            let got = dependency(&job, &spec);
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
        assert_eq!(dependency(&job, &JobSpec::default()), "(null)");
    }

    #[test]
    fn oneliner_puts_each_record_on_one_line() {
        let a = format!("JobId=1 JobName=a\n{INDENT}UserId=u(1)\n");
        let b = format!("JobId=2 JobName=b\n{INDENT}UserId=v(2)\n");
        let both = [a, b];
        assert_eq!(
            records(&both, true),
            "JobId=1 JobName=a UserId=u(1)\nJobId=2 JobName=b UserId=v(2)\n"
        );
        assert_eq!(records(&both, false), format!("{}\n{}", both[0], both[1]));
        let one = show_job(&finished_job(), NOW_MS);
        let line = records(&[one], true);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains(" JobState=") && line.ends_with('\n'),
            "{line}"
        );
    }

    #[test]
    fn show_job_has_slurm_keys() {
        let got = show_job(&finished_job(), NOW_MS);
        let wants = [
            "JobId=42 JobName=train\n   UserId=alice(1000) GroupId=",
            "\n   JobState=COMPLETED Reason=None Dependency=(null)\n",
            "ExitCode=0:0\n",
            "\n   RunTime=00:00:05 TimeLimit=01:00:00 TimeMin=N/A\n",
            "\n   Partition=gpu ",
            "\n   NodeList=dgx01\n   BatchHost=dgx01\n",
            "\n   NumNodes=1 NumCPUs=4 NumTasks=1 CPUs/Task=4 ",
            "\n   ReqTRES=cpu=4,mem=16384M,node=1,billing=4,gres/gpu=2,gres/gpu:h100=2\n",
            "MinMemoryNode=16384M ",
            "\n   Command=/home/alice/train.sh\n   WorkDir=/home/alice\n",
            "\n   StdErr=/home/alice/logs/train-42.out\n   StdIn=/dev/null\n   StdOut=/home/alice/logs/train-42.out\n",
            "\n   TresPerNode=gres/gpu:h100:2\n",
            "\n     Nodes=dgx01 CPUs=4 Mem=16384 GRES=gpu:h100:2(IDX:0-1)\n",
            "\n   GpuUuids=dgx01:GPU-aaa,dgx01:GPU-bbb\n",
        ];
        for (i, want) in wants.iter().enumerate() {
            if !got.contains(want) {
                panic!("#{i}: want {want:?} in\n{got}");
            }
        }
        assert!(
            got.ends_with('\n') && !got.ends_with("\n\n"),
            "one trailing newline: {got:?}"
        );
    }

    #[test]
    fn show_job_pending_and_running() {
        let mut pending = finished_job();
        pending.set_state(JobState::Pending);
        pending.reason = "Priority".to_string();
        (
            pending.start_time_ms,
            pending.end_time_ms,
            pending.allocations,
        ) = (0, 0, Vec::new());
        if let Some(spec) = pending.spec.as_mut() {
            (spec.time_limit_secs, spec.stdout, spec.stderr) =
                (0, String::new(), "err-%j-%q.txt".into());
        }
        let mut running = finished_job();
        running.set_state(JobState::Running);
        running.end_time_ms = 0;
        running.exit_code = 0;
        running.stdout_path = "/scratch/out.txt".to_string();
        let cases: Vec<(Job, Vec<&str>)> = vec![
            (
                pending,
                vec![
                    "JobState=PENDING Reason=Priority ",
                    "RunTime=00:00:00 TimeLimit=UNLIMITED ",
                    "StartTime=Unknown EndTime=Unknown ",
                    "NodeList=(null)\n",
                    "AllocTRES=(null)\n",
                    "StdErr=/home/alice/err-42-%q.txt\n",
                    "StdOut=/home/alice/slurm-42.out\n",
                ],
            ),
            (
                running,
                vec![
                    "JobState=RUNNING ",
                    "RunTime=00:00:10 ",
                    "StdOut=/scratch/out.txt\n",
                    "StdErr=/scratch/out.txt\n",
                ],
            ),
        ];
        for (i, (job, wants)) in cases.iter().enumerate() {
            let got = show_job(job, NOW_MS);
            assert!(
                !got.contains("BatchHost") || !job.allocations.is_empty(),
                "#{i}: {got}"
            );
            for want in wants {
                if !got.contains(want) {
                    panic!("#{i}: want {want:?} in\n{got}");
                }
            }
        }
    }

    #[test]
    fn expands_output_patterns() {
        let job = finished_job();
        let cases: &[(&str, &str)] = &[
            ("slurm-%j.out", "slurm-42.out"),
            ("%x_%u_%5j", "train_alice_00042"),
            ("%A-%N-%%-%a", "42-dgx01-%-4294967294"),
            ("100%", "100%"),
            ("%", "%"),
        ];
        let mut task = finished_job();
        task.id = 50;
        task.array_job_id = 42;
        task.array_task_id = Some(7);
        let mut pending = task.clone();
        pending.id = 42;
        pending.array_task_id = None;
        pending.array_pending = vec![berth_proto::v1::IndexRange {
            start: 8,
            end: 9,
            step: 1,
        }];
        let array_cases: &[(&str, &str)] = &[("%A_%a-%j.out", "42_7-50.out"), ("%A_%3a", "42_007")];
        let all = cases
            .iter()
            .map(|c| (&job, c))
            .chain(array_cases.iter().map(|c| (&task, c)))
            .chain([(&pending, &("%A_%a", "42_%a"))]);
        for (i, (job, (pattern, want))) in all.enumerate() {
            let got = expand_pattern(pattern, job);
            if got != *want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn show_job_prints_measured_gpu_usage_per_node() {
        let mut job = finished_job();
        assert!(!show_job(&job, 0).contains("GpuUsage="));
        job.usage = vec![berth_proto::v1::JobUsage {
            job_id: job.id,
            node: "node1".into(),
            gpu_seconds: 120.0,
            gpu_busy_seconds: 90.54,
            gpu_memory_max_mb: 2048,
            gpu_util_percent: 87.0,
            gpu_memory_mb: 1024,
            measured_ms: 5,
        }];
        let text = show_job(&job, 0);
        assert!(
            text.contains(
                "   GpuUsage=node1:held=120.0s,busy=90.5s,util=87%,mem=1024M,maxmem=2048M\n"
            ),
            "{text}"
        );
    }
}
