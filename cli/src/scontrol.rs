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

use berth_proto::v1::{Job, JobState, Node, NodeState};

use crate::duration::format_hms;
use crate::hostlist;
use crate::sinfo;
use crate::squeue::{self, or_null, spec};

/// `scontrol update NodeName=N Gpu=G State=RESUME`: the node and the GPU (UUID or index)
/// to mark healthy again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuResume {
    /// Node name.
    pub node: String,
    /// GPU UUID or NVML index on that node.
    pub gpu: String,
}

/// Parses the words after `scontrol update`. Keys are case-insensitive, as in Slurm
/// (`NodeName=` or `Node=`, `Gpu=`, `State=`); berth updates only a GPU's health.
///
/// # Errors
/// A message naming the word that is missing, repeated, unknown or unsupported.
pub fn parse_gpu_resume(words: &[&str]) -> Result<GpuResume, String> {
    let (mut node, mut gpu, mut state) = (None, None, None);
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("invalid update word {w:?} (want Key=Value)"));
        };
        if v.is_empty() {
            return Err(format!("{k}= needs a value"));
        }
        let slot = match k.to_ascii_lowercase().as_str() {
            "nodename" | "node" => &mut node,
            "gpu" => &mut gpu,
            "state" => &mut state,
            _ => {
                return Err(format!(
                    "update key {k:?} is not supported by berth (NodeName=, Gpu=, State=RESUME)"
                ))
            }
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(format!("{k}= given twice"));
        }
    }
    let node = node.ok_or("update needs NodeName=")?;
    if node.contains(',') || node.contains('[') {
        return Err(format!("NodeName={node}: name one node"));
    }
    let gpu = gpu.ok_or("berth updates GPUs only: add Gpu=UUID|INDEX")?;
    match state.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("resume") => Ok(GpuResume { node, gpu }),
        Some(other) => Err(format!(
            "State={other}: only State=RESUME is supported for a GPU"
        )),
        None => Err("update needs State=RESUME".into()),
    }
}

/// Indentation of every line after the first, as Slurm prints it.
const INDENT: &str = "   ";

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

/// `scontrol show topology`: one line per switch as Slurm prints it (`SwitchName=leaf0
/// Level=0 LinkSpeed=1 Nodes=node[1-4]`, upper switches with every node below them and
/// `Switches=`), then one line per multi-node NVLink domain (`BlockName=`).
pub fn show_topology(t: &berth_proto::v1::TopologyResponse) -> String {
    use crate::hostlist::compress;
    if t.switches.is_empty() && t.blocks.is_empty() {
        return "No topology information available\n".to_string();
    }
    let mut out = String::new();
    for s in &t.switches {
        out += &format!(
            "SwitchName={} Level={} LinkSpeed={} Nodes={}",
            s.name,
            s.level,
            s.link_speed.max(1),
            compress(&s.nodes)
        );
        if !s.switches.is_empty() {
            out += &format!(" Switches={}", compress(&s.switches));
        }
        out.push('\n');
    }
    for b in &t.blocks {
        out += &format!("BlockName={} Nodes={}\n", b.name, compress(&b.nodes));
    }
    out
}

/// `scontrol show partition`: one record per partition — every partition a node is in,
/// and every one the accounts configuration names — with its nodes, totals, and berth's
/// `Packing=` (how placement packs jobs there: bestfit, spread, fgd or berth). `only`
/// limits the output to those names (empty: all).
pub fn show_partitions(
    nodes: &[Node],
    policy: &berth_policies::PolicyConfig,
    only: &[&str],
) -> String {
    let mut names: Vec<String> = policy.packing.keys().cloned().collect();
    for n in nodes {
        names.extend(sinfo::partitions(n));
    }
    names.sort();
    names.dedup();
    let mut records = Vec::new();
    for name in names
        .iter()
        .filter(|n| only.is_empty() || only.contains(&n.as_str()))
    {
        let members: Vec<&Node> = nodes
            .iter()
            .filter(|n| sinfo::partitions(n).contains(name))
            .collect();
        let hosts: Vec<String> = members
            .iter()
            .filter_map(|n| n.inventory.as_ref().map(|i| i.name.clone()))
            .collect();
        let inv = || members.iter().filter_map(|n| n.inventory.as_ref());
        let cpus: u64 = inv().map(|i| u64::from(i.cpus)).sum();
        let gpus: usize = inv().map(|i| i.gpus.len()).sum();
        let up = members.iter().any(|n| n.state() == NodeState::Up);
        let packing = policy.packing_for(name);
        let configured = if policy.packing.contains_key(name) {
            ""
        } else {
            " (default)"
        };
        records.push(format!(
            "PartitionName={name}\n   Nodes={} TotalNodes={} TotalCPUs={cpus} TotalGPUs={gpus}\n   State={}\n   Packing={}{configured}\n",
            or_null(&hostlist::compress(&hosts)),
            hosts.len(),
            if up { "UP" } else { "DOWN" },
            packing.as_str(),
        ));
    }
    records.join("\n")
}

/// One node as `scontrol show node` prints it, ending with `\n`.
pub fn show_node(node: &Node) -> String {
    let inv = sinfo::inventory(node);
    let state = sinfo::node_use(node).long().to_uppercase();
    let gpus_used = inv.gpus.iter().filter(|g| g.job_id != 0).count();
    let mut lines = vec![
        format!("NodeName={}", inv.name),
        format!("CPUAlloc={} CPUTot={}", node.cpus_alloc, inv.cpus),
        format!("Gres={}", sinfo::gres([node])),
        format!("GresUsed={}", sinfo::gres_used([node], true)),
        format!(
            "RealMemory={} AllocMem={}",
            inv.memory_mb, node.memory_alloc_mb
        ),
        format!("State={state}"),
        format!("Partitions={}", sinfo::partitions(node).join(",")),
        format!(
            "RegisterTime={}",
            squeue::format_timestamp(node.registered_time_ms).unwrap_or_else(|| "None".into())
        ),
        format!(
            "CfgTRES={}",
            node_tres(u64::from(inv.cpus), inv.memory_mb, inv.gpus.len() as u64)
        ),
        format!(
            "AllocTRES={}",
            node_tres(
                u64::from(node.cpus_alloc),
                node.memory_alloc_mb,
                gpus_used as u64
            )
        ),
        format!(
            "DriverVersion={} NvmlVersion={} AgentVersion={}",
            or_null(&inv.driver_version),
            or_null(&inv.nvml_version),
            or_null(&inv.agent_version)
        ),
    ];
    if node.state() == NodeState::Down || !node.reason.is_empty() {
        lines.insert(6, format!("Reason={}", squeue::or_null(&node.reason)));
    }
    for gpu in &inv.gpus {
        let job = if gpu.job_id == 0 {
            "(null)".to_string()
        } else {
            gpu.job_id.to_string()
        };
        // Model last: it contains spaces, and a key after it would be hard to split off.
        lines.push(format!(
            "Gpu={} Uuid={} Type={} Memory={}M PciBusId={} Job={job} Model={}",
            gpu.index,
            gpu.uuid,
            or_null(&gpu.gres_type),
            gpu.memory_mb,
            or_null(&gpu.pci_bus_id),
            gpu.model
        ));
        lines.extend(gpu_details(gpu));
    }
    lines.extend(node_details(inv));
    let mut out = lines.join(&format!("\n{INDENT}"));
    out.push('\n');
    out
}

/// The NVML facts of one GPU beyond its `Gpu=` line: NUMA node, compute capability, ECC,
/// MIG, NVLink, then MIG profiles with their legal placements, then why it is unhealthy
/// (last: the reason has spaces). Nothing for an inventory from an agent that does not
/// report them.
fn gpu_details(gpu: &berth_proto::v1::Gpu) -> Vec<String> {
    let mut lines = Vec::new();
    if !gpu.compute_capability.is_empty() {
        let mig = match (gpu.mig_capable, gpu.mig_enabled) {
            (false, _) => "unsupported",
            (true, false) => "disabled",
            (true, true) => "enabled",
        };
        let peers: Vec<String> = gpu
            .nvlink_peers
            .iter()
            .map(|p| format!("{}x{}", p.uuid, p.links))
            .collect();
        lines.push(format!(
            "Gpu={} Numa={} ComputeCap={} Ecc={} Mig={mig} NvSwitchLinks={} NvLinkPeers={}",
            gpu.index,
            gpu.numa_node,
            gpu.compute_capability,
            if gpu.ecc_enabled { "on" } else { "off" },
            gpu.nvswitch_links,
            or_null(&peers.join(",")),
        ));
    }
    if gpu.replicas > 1 {
        // Each share with its size in GPU milli (a plain share is 1000 / replicas).
        let plain = 1000 / gpu.replicas;
        let sizes = |k: usize| gpu.share_milli.get(k).copied().unwrap_or(plain);
        let jobs: Vec<String> = gpu
            .share_job_ids
            .iter()
            .enumerate()
            .map(|(k, id)| format!("{id}:{}", sizes(k)))
            .collect();
        let held: u32 = (0..gpu.share_job_ids.len()).map(sizes).sum();
        lines.push(format!(
            "Gpu={} Replicas={} ShareJobs={} ShareMilli={held}/1000",
            gpu.index,
            gpu.replicas,
            or_null(&jobs.join(","))
        ));
    }
    if !gpu.mig_profiles.is_empty() {
        let profiles: Vec<String> = gpu
            .mig_profiles
            .iter()
            .map(|p| {
                let starts: Vec<String> =
                    p.placements.iter().map(|pl| pl.start.to_string()).collect();
                let size = p.placements.first().map_or(0, |pl| pl.size);
                let at = if starts.is_empty() {
                    String::new()
                } else {
                    format!("@{}:{size}", starts.join("/"))
                };
                format!(
                    "{}(id={},max={}{at})",
                    or_null(&p.name),
                    p.id,
                    p.instance_count
                )
            })
            .collect();
        lines.push(format!(
            "Gpu={} MigProfiles={}",
            gpu.index,
            profiles.join(",")
        ));
    }
    if gpu.mig_enabled {
        lines.push(mig_layout(gpu));
    }
    if !gpu.unhealthy_reason.is_empty() {
        lines.push(format!(
            "Gpu={} Health=UNHEALTHY Reason={}",
            gpu.index, gpu.unhealthy_reason
        ));
    }
    lines
}

/// The MIG slices a MIG-mode GPU holds now, and a map of its 8 memory slices: `.` free,
/// then one letter per held slice in the order listed (`aaaabbbb`: two 4-slice halves).
fn mig_layout(gpu: &berth_proto::v1::Gpu) -> String {
    let mut map = [b'.'; 8];
    let mut held = Vec::new();
    for (k, s) in gpu.mig_held.iter().enumerate() {
        let letter = b'a' + (k % 26) as u8;
        let end = (s.placement_start + s.placement_size).min(8);
        for slot in map
            .iter_mut()
            .take(end as usize)
            .skip(s.placement_start as usize)
        {
            *slot = letter;
        }
        held.push(format!(
            "{}@{}:{}(JobId={})",
            s.profile, s.placement_start, s.placement_size, s.job_id
        ));
    }
    format!(
        "Gpu={} MigSlices={} MigMap={}",
        gpu.index,
        or_null(&held.join(",")),
        String::from_utf8_lossy(&map)
    )
}

/// CUDA version, metrics endpoint and the GPU-pair topology (`0-1:NV18,...`).
fn node_details(inv: &berth_proto::v1::NodeInventory) -> Vec<String> {
    let mut lines = Vec::new();
    if !inv.cuda_version.is_empty() || !inv.metrics_url.is_empty() {
        lines.push(format!(
            "CudaVersion={} MetricsUrl={} GpuSharing={}",
            or_null(&inv.cuda_version),
            or_null(&inv.metrics_url),
            or_null(&inv.gpu_sharing)
        ));
    }
    if !inv.topology.is_empty() {
        let pairs: Vec<String> = inv
            .topology
            .iter()
            .map(|t| format!("{}-{}:{}", t.gpu_a, t.gpu_b, t.level))
            .collect();
        lines.push(format!("GpuTopology={}", pairs.join(",")));
    }
    lines
}

/// A node's TRES (`cpu=64,mem=512000M,billing=64,gres/gpu=8`); empty when nothing is counted.
fn node_tres(cpus: u64, mem_mb: u64, gpus: u64) -> String {
    let mut parts = Vec::new();
    if cpus > 0 {
        parts.push(format!("cpu={cpus}"));
    }
    if mem_mb > 0 {
        parts.push(format!("mem={mem_mb}M"));
    }
    if cpus > 0 {
        parts.push(format!("billing={cpus}"));
    }
    if gpus > 0 {
        parts.push(format!("gres/gpu={gpus}"));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{Allocation, Gpu, JobSpec, NodeInventory};

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
    fn show_topology_prints_switches_and_blocks() {
        use berth_proto::v1 as pb;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = pb::TopologyResponse {
            switches: vec![
                pb::TopologySwitch {
                    name: "leaf0".into(),
                    level: 0,
                    link_speed: 0,
                    nodes: names(&["n1", "n2"]),
                    switches: vec![],
                },
                pb::TopologySwitch {
                    name: "leaf1".into(),
                    level: 0,
                    link_speed: 400,
                    nodes: names(&["n3"]),
                    switches: vec![],
                },
                pb::TopologySwitch {
                    name: "spine".into(),
                    level: 1,
                    link_speed: 0,
                    nodes: names(&["n1", "n2", "n3"]),
                    switches: names(&["leaf0", "leaf1"]),
                },
            ],
            blocks: vec![pb::TopologyBlock {
                name: "nvl0".into(),
                nodes: names(&["n2", "n3"]),
            }],
            conf: String::new(),
        };
        assert_eq!(
            show_topology(&t),
            "SwitchName=leaf0 Level=0 LinkSpeed=1 Nodes=n[1-2]\n\
             SwitchName=leaf1 Level=0 LinkSpeed=400 Nodes=n3\n\
             SwitchName=spine Level=1 LinkSpeed=1 Nodes=n[1-3] Switches=leaf[0-1]\n\
             BlockName=nvl0 Nodes=n[2-3]\n"
        );
        assert_eq!(
            show_topology(&pb::TopologyResponse::default()),
            "No topology information available\n"
        );
    }

    #[test]
    fn show_node_lists_gpus() {
        let gpus = (0..4)
            .map(|i| Gpu {
                uuid: format!("GPU-{i}"),
                index: i,
                model: "NVIDIA H100 80GB HBM3".to_string(),
                gres_type: "h100".to_string(),
                memory_mb: 81_559,
                job_id: if i < 3 { 42 } else { 0 },
                ..Gpu::default()
            })
            .collect();
        let inventory = NodeInventory {
            name: "dgx01".into(),
            partition: "gpu".into(),
            cpus: 64,
            memory_mb: 512_000,
            gpus,
            ..Default::default()
        };
        let mut node = Node {
            inventory: Some(inventory),
            cpus_alloc: 12,
            memory_alloc_mb: 3000,
            ..Node::default()
        };
        node.set_state(NodeState::Up);
        let mut down = node.clone();
        down.set_state(NodeState::Down);
        down.reason = "Not responding".to_string();
        let cases: Vec<(Node, Vec<&str>)> = vec![
            (
                node,
                vec![
                    "NodeName=dgx01\n   CPUAlloc=12 CPUTot=64\n   Gres=gpu:h100:4\n   GresUsed=gpu:h100:3(IDX:0-2)\n",
                    "\n   RealMemory=512000 AllocMem=3000\n   State=MIXED\n   Partitions=gpu\n",
                    "\n   CfgTRES=cpu=64,mem=512000M,billing=64,gres/gpu=4\n",
                    "\n   Gpu=0 Uuid=GPU-0 Type=h100 Memory=81559M PciBusId=(null) Job=42 Model=NVIDIA H100 80GB HBM3\n",
                    "\n   Gpu=3 Uuid=GPU-3 Type=h100 Memory=81559M PciBusId=(null) Job=(null) Model=",
                ],
            ),
            (down, vec!["\n   State=DOWN\n   Reason=Not responding\n   Partitions=gpu\n"]),
        ];
        for (i, (node, wants)) in cases.iter().enumerate() {
            let got = show_node(node);
            for want in wants {
                if !got.contains(want) {
                    panic!("#{i}: want {want:?} in\n{got}");
                }
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

    #[test]
    fn gpu_resume_parses_and_refuses_bad_input() {
        let ok = parse_gpu_resume(&["NodeName=node1", "Gpu=3", "State=RESUME"]);
        assert_eq!(
            ok,
            Ok(GpuResume {
                node: "node1".into(),
                gpu: "3".into()
            })
        );
        let ok = parse_gpu_resume(&["node=n2", "state=resume", "gpu=GPU-abc"]);
        assert_eq!(ok.map(|r| r.gpu), Ok("GPU-abc".to_string()));
        let bad: [(&[&str], &str); 8] = [
            (&["Gpu=3", "State=RESUME"], "NodeName="),
            (&["NodeName=n1", "State=RESUME"], "Gpu="),
            (&["NodeName=n1", "Gpu=3"], "State=RESUME"),
            (
                &["NodeName=n1", "Gpu=3", "State=DRAIN"],
                "only State=RESUME",
            ),
            (
                &["NodeName=n1", "Gpu=3", "State=RESUME", "Reason=x"],
                "not supported",
            ),
            (
                &["NodeName=n1", "NodeName=n2", "Gpu=3", "State=RESUME"],
                "twice",
            ),
            (&["NodeName=n[1-2]", "Gpu=3", "State=RESUME"], "one node"),
            (&["NodeName=n1", "Gpu=", "State=RESUME"], "needs a value"),
        ];
        for (i, (words, want)) in bad.iter().enumerate() {
            match parse_gpu_resume(words) {
                Err(e) if e.contains(want) => {}
                got => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
        assert!(parse_gpu_resume(&["resume"]).is_err());
    }

    #[test]
    fn show_partition_names_each_partitions_packing() {
        let node = |name: &str, partition: &str| {
            let mut n = Node {
                inventory: Some(NodeInventory {
                    name: name.into(),
                    partition: partition.into(),
                    cpus: 8,
                    gpus: vec![Gpu::default(), Gpu::default()],
                    ..Default::default()
                }),
                ..Node::default()
            };
            n.set_state(NodeState::Up);
            n
        };
        let nodes = vec![node("n1", "a"), node("n2", "b"), node("n3", "a")];
        let cfg = berth_scheduler::accounts::parse(
            "packing = \"spread\"\n[[partition]]\nname = \"a\"\npacking = \"fgd\"\n\
             [[partition]]\nname = \"empty\"\npacking = \"berth\"\n[[account]]\nname = \"default\"\n",
        )
        .expect("config");
        assert_eq!(
            show_partitions(&nodes, &cfg.policy, &[]),
            "PartitionName=a\n   Nodes=n[1,3] TotalNodes=2 TotalCPUs=16 TotalGPUs=4\n   State=UP\n   Packing=fgd\n\n\
             PartitionName=b\n   Nodes=n2 TotalNodes=1 TotalCPUs=8 TotalGPUs=2\n   State=UP\n   Packing=spread (default)\n\n\
             PartitionName=empty\n   Nodes=(null) TotalNodes=0 TotalCPUs=0 TotalGPUs=0\n   State=DOWN\n   Packing=berth\n"
        );
        assert_eq!(show_partitions(&nodes, &cfg.policy, &["zz"]), "");
    }

    #[test]
    fn show_node_gpu_details_mig_topology_and_health() {
        let gpu = Gpu {
            index: 2,
            uuid: "GPU-2".into(),
            numa_node: 1,
            compute_capability: "8.0".into(),
            ecc_enabled: true,
            mig_capable: true,
            mig_enabled: true,
            nvswitch_links: 12,
            mig_profiles: vec![berth_proto::v1::MigProfile {
                id: 9,
                name: "3g.20gb".into(),
                instance_count: 2,
                placements: vec![
                    berth_proto::v1::MigPlacement { start: 0, size: 4 },
                    berth_proto::v1::MigPlacement { start: 4, size: 4 },
                ],
                ..Default::default()
            }],
            unhealthy_reason: "XID 79: GPU has fallen off the bus".into(),
            ..Default::default()
        };
        let node = Node {
            inventory: Some(NodeInventory {
                name: "n".into(),
                gpus: vec![gpu],
                cuda_version: "13.0".into(),
                topology: vec![berth_proto::v1::GpuPairLink {
                    gpu_a: 0,
                    gpu_b: 2,
                    level: "NV12".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = show_node(&node);
        let wants = [
            "Gpu=2 Numa=1 ComputeCap=8.0 Ecc=on Mig=enabled NvSwitchLinks=12 NvLinkPeers=(null)\n",
            "Gpu=2 MigProfiles=3g.20gb(id=9,max=2@0/4:4)\n",
            "Gpu=2 Health=UNHEALTHY Reason=XID 79: GPU has fallen off the bus\n",
            "CudaVersion=13.0 MetricsUrl=(null) GpuSharing=(null)\n",
            "GpuTopology=0-2:NV12\n",
        ];
        for (i, want) in wants.iter().enumerate() {
            if !got.contains(want) {
                panic!("#{i}: want {want:?} in\n{got}");
            }
        }
    }
}

/// `scontrol show hostnames [LIST]` (one name a line, in the list's order) and `show
/// hostlist [NAMES]` (the names compressed, sorted); with no argument, the list in
/// `SLURM_JOB_NODELIST` (`env`), as in Slurm.
///
/// # Errors
/// No list at all, more than one argument, or a list that does not parse.
pub fn show_hosts(what: &str, args: &[&str], env: Option<&str>) -> anyhow::Result<String> {
    let list = match args {
        [one] => one.to_string(),
        [] => env
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow::anyhow!("host list is empty"))?
            .to_string(),
        _ => anyhow::bail!("show {what} takes one host list, got {}", args.len()),
    };
    let names = berth_policies::topology::hostlist::expand(&list)
        .map_err(|why| anyhow::anyhow!("Invalid hostlist: {list}: {why}"))?;
    if names.is_empty() {
        anyhow::bail!("host list is empty");
    }
    Ok(if what == "hostnames" {
        names.iter().map(|n| format!("{n}\n")).collect()
    } else {
        format!("{}\n", crate::hostlist::compress(&names))
    })
}

#[cfg(test)]
mod host_tests {
    use super::show_hosts;

    #[test]
    fn hostnames_expand_in_order_and_hostlist_compresses() {
        assert_eq!(
            show_hosts("hostnames", &["n[1-3],gpu01"], None).unwrap(),
            "n1\nn2\nn3\ngpu01\n"
        );
        assert_eq!(
            show_hosts("hostnames", &[], Some("x[01-02]")).unwrap(),
            "x01\nx02\n",
            "SLURM_JOB_NODELIST when no list is given"
        );
        assert_eq!(
            show_hosts("hostlist", &["n3,n1,n2,gpu01"], None).unwrap(),
            "gpu01,n[1-3]\n"
        );
    }

    #[test]
    fn bad_host_lists_are_refused() {
        let table: [(&[&str], Option<&str>, &str); 4] = [
            (&["n[3-1]"], None, "Invalid hostlist: n[3-1]"),
            (&[], None, "host list is empty"),
            (&[], Some(""), "host list is empty"),
            (&["a", "b"], None, "takes one host list"),
        ];
        for (i, (args, env, want)) in table.into_iter().enumerate() {
            match show_hosts("hostnames", args, env) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }
}
