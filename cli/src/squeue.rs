//! `squeue` output: Slurm's job table, driven by the same `-o/--format` strings.
//!
//! Users and their scripts read squeue columns by position and width (`squeue -h -o %i`,
//! the default `%.18i %.9P …` layout), so the headers, state codes, time formats and the
//! `NODELIST(REASON)` rule here follow Slurm's `squeue/print.c` rather than berth's wire
//! types. The per-job views (`state_name`, `node_names`, …) are public because scontrol
//! and sacct show the same facts.

use std::sync::LazyLock;

use berth_proto::v1::{Job, JobSpec, JobState};

use crate::array_view;
use crate::duration::{format_elapsed, format_limit};
use crate::format::{self, FormatError};
use crate::hostlist;

/// Slurm's default squeue layout.
pub const DEFAULT_FORMAT: &str = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R";

/// `squeue --start`: pending jobs with their expected start (Slurm's layout without
/// SCHEDNODES, which berth does not report).
pub const START_FORMAT: &str = "%.18i %.9P %.8j %.8u %.2t %.19S %.6D %R";

/// Renders `jobs` in the given order (the caller filters and sorts), one line each, after a
/// header line when `header`. Each line ends with `\n`.
///
/// # Errors
/// [`FormatError`] for a malformed format or a letter squeue does not have
/// (`Unknown`) or berth cannot fill yet (`Unsupported`); nothing is rendered then.
pub fn render(
    jobs: &[Job],
    format: &str,
    now_ms: u64,
    header: bool,
) -> Result<String, FormatError> {
    format::render_table(format, header, header_of, jobs, |job, letter| {
        field(job, letter, now_ms)
    })
}

/// Letters that are squeue fields in Slurm but have no berth data yet.
const UNSUPPORTED: &str = "BEfhHIJknOpQsvwWxyYz";

/// The column title Slurm prints for `letter`.
fn header_of(letter: char) -> Result<&'static str, FormatError> {
    Ok(match letter {
        'a' => "ACCOUNT",
        'A' | 'i' => "JOBID",
        'b' => "TRES_PER_NODE",
        'c' => "MIN_CPUS",
        'C' => "CPUS",
        'D' => "NODES",
        'e' => "END_TIME",
        'F' => "ARRAY_JOB_ID",
        'K' => "ARRAY_TASK_ID",
        'g' => "GROUP",
        'G' => "GID",
        'j' => "NAME",
        'l' => "TIME_LIMIT",
        'L' => "TIME_LEFT",
        'm' => "MIN_MEMORY",
        'M' => "TIME",
        'N' => "NODELIST",
        'o' => "COMMAND",
        'P' => "PARTITION",
        'q' => "QOS",
        'r' => "REASON",
        'R' => "NODELIST(REASON)",
        'S' => "START_TIME",
        't' => "ST",
        'T' => "STATE",
        'u' => "USER",
        'U' => "UID",
        'V' => "SUBMIT_TIME",
        'Z' => "WORK_DIR",
        l if UNSUPPORTED.contains(l) => return Err(FormatError::Unsupported(l)),
        l => return Err(FormatError::Unknown(l)),
    })
}

/// The value of field `letter` for one job.
fn field(job: &Job, letter: char, now_ms: u64) -> Result<String, FormatError> {
    let spec = spec(job);
    Ok(match letter {
        // The account/class the job is charged to as resolved at submit, else as asked.
        'a' => or_null(if job.account.is_empty() {
            &spec.account
        } else {
            &job.account
        }),
        // %i is the id users write (`12_3`, `12_[4-15%4]`), %A the record's own.
        'A' => job.id.to_string(),
        'i' => array_view::display_id(job),
        'F' => match job.array_job_id {
            0 => job.id.to_string(),
            a => a.to_string(),
        },
        'K' => array_view::task_text(job).unwrap_or_else(|| "N/A".to_string()),
        'b' => tres_per_node(job).unwrap_or_else(|| "N/A".to_string()),
        'c' => spec.cpus_per_task.max(1).to_string(),
        'C' => cpu_count(job).to_string(),
        'D' => node_count(job).to_string(),
        'e' => end_time_ms(job)
            .and_then(format_timestamp)
            .unwrap_or_else(|| "N/A".to_string()),
        'g' => group_name(spec.gid),
        'G' => spec.gid.to_string(),
        'j' => spec.name.clone(),
        'l' => format_limit(spec.time_limit_secs),
        'L' => time_left(job, now_ms),
        'm' => {
            if spec.mem_mb == 0 {
                "0".to_string()
            } else {
                format!("{}M", spec.mem_mb)
            }
        }
        'M' => format_elapsed(elapsed_secs(job, now_ms)),
        'N' => hostlist::compress(&node_names(job)),
        'o' => or_null(&spec.command),
        'P' => partition(job).to_string(),
        'q' => or_null(if job.qos.is_empty() {
            &spec.qos
        } else {
            &job.qos
        }),
        'r' => reason(job).to_string(),
        'R' => nodelist_reason(job),
        // A pending job's expected start (from the last backfill pass), as Slurm's %S.
        'S' => format_timestamp(if job.state() == JobState::Pending {
            job.expected_start_ms
        } else {
            job.start_time_ms
        })
        .unwrap_or_else(|| "N/A".to_string()),
        't' => state_code(job).to_string(),
        'T' => state_name(job).to_string(),
        'u' => user(job),
        'U' => spec.uid.to_string(),
        'V' => format_timestamp(job.submit_time_ms).unwrap_or_else(|| "N/A".to_string()),
        'Z' => spec.work_dir.clone(),
        other => return header_of(other).map(|_| String::new()),
    })
}

/// `%R`: `(Reason)` while a job waits or after it failed, as Slurm does, else its nodes.
fn nodelist_reason(job: &Job) -> String {
    let shows_reason = state_name(job) != "COMPLETING"
        && matches!(
            job.state(),
            JobState::Pending | JobState::Timeout | JobState::OutOfMemory | JobState::Failed
        );
    if shows_reason {
        format!("({})", reason(job))
    } else {
        hostlist::compress(&node_names(job))
    }
}

/// `%L`: what is left of the limit (the whole limit while pending).
fn time_left(job: &Job, now_ms: u64) -> String {
    let limit = spec(job).time_limit_secs;
    if limit == 0 {
        return "UNLIMITED".to_string();
    }
    format_elapsed(limit.saturating_sub(elapsed_secs(job, now_ms)))
}

static EMPTY_SPEC: LazyLock<JobSpec> = LazyLock::new(JobSpec::default);

/// The job's spec; an empty one when the message carried none, so views never panic.
pub fn spec(job: &Job) -> &JobSpec {
    job.spec.as_ref().unwrap_or(&EMPTY_SPEC)
}

/// Slurm's long state name (`%T`, `JobState=`). A running job whose kill was sent is
/// `COMPLETING` until its agent reports the end.
pub fn state_name(job: &Job) -> &'static str {
    match job.state() {
        JobState::Running if job.kill_requested => "COMPLETING",
        s => s.slurm_name(),
    }
}

/// Slurm's compact state code (`%t`): `PD R CG CD F CA TO NF OOM PR DL`.
pub fn state_code(job: &Job) -> &'static str {
    match job.state() {
        JobState::Running if job.kill_requested => "CG",
        JobState::Pending => "PD",
        JobState::Running => "R",
        JobState::Completed => "CD",
        JobState::Failed => "F",
        JobState::Cancelled => "CA",
        JobState::Timeout => "TO",
        JobState::NodeFail => "NF",
        JobState::OutOfMemory => "OOM",
        JobState::Preempted => "PR",
        JobState::Deadline => "DL",
        JobState::Unspecified => "?",
    }
}

/// The nodes the job holds (or held), in allocation order.
pub fn node_names(job: &Job) -> Vec<String> {
    job.allocations.iter().map(|a| a.node.clone()).collect()
}

/// Seconds the job has run: 0 before it starts, up to `now_ms` while it runs, up to its end
/// once ended.
pub fn elapsed_secs(job: &Job, now_ms: u64) -> u64 {
    if job.start_time_ms == 0 {
        return 0;
    }
    let until = if job.end_time_ms != 0 {
        job.end_time_ms
    } else {
        now_ms
    };
    until.saturating_sub(job.start_time_ms) / 1000
}

/// Nodes held, or requested while none are held.
pub fn node_count(job: &Job) -> u32 {
    match job.allocations.len() {
        0 => spec(job).nodes.max(1),
        n => u32::try_from(n).unwrap_or(u32::MAX),
    }
}

/// CPUs held, or requested (`ntasks × cpus_per_task`) while none are held.
pub fn cpu_count(job: &Job) -> u32 {
    let held: u32 = job.allocations.iter().map(|a| a.cpus).sum();
    if held > 0 {
        return held;
    }
    let spec = spec(job);
    spec.ntasks.max(1).saturating_mul(spec.cpus_per_task.max(1))
}

/// The partition the job runs in, else the one it asked for; `(null)` for neither.
pub fn partition(job: &Job) -> &str {
    match (job.partition.as_str(), spec(job).partition.as_str()) {
        ("", "") => "(null)",
        ("", asked) => asked,
        (placed, _) => placed,
    }
}

/// Slurm's reason text; `None` when berth recorded none.
pub fn reason(job: &Job) -> &str {
    if job.reason.is_empty() {
        "None"
    } else {
        &job.reason
    }
}

/// The submitting user's name, else the uid.
pub fn user(job: &Job) -> String {
    let spec = spec(job);
    if spec.user.is_empty() {
        spec.uid.to_string()
    } else {
        spec.user.clone()
    }
}

/// GPUs per node as Slurm's TRES string (`gres/gpu:h100:2`; MIG slices as
/// `gres/gpu:3g.40gb:1`; a fraction as `gres/gpu:0.5`), `None` without GPUs.
pub fn tres_per_node(job: &Job) -> Option<String> {
    let spec = spec(job);
    if spec.gpu_milli > 0 {
        return Some(match spec.gpu_type.as_str() {
            "" => format!("gres/gpu:{}", gpu_fraction(spec.gpu_milli)),
            kind => format!("gres/gpu:{kind}:{}", gpu_fraction(spec.gpu_milli)),
        });
    }
    if !spec.mig_profile.is_empty() {
        return Some(format!(
            "gres/gpu:{}:{}",
            spec.mig_profile, spec.mig_per_node
        ));
    }
    match (spec.gpus_per_node, spec.gpu_type.as_str()) {
        (0, _) => None,
        (n, "") => Some(format!("gres/gpu:{n}")),
        (n, kind) => Some(format!("gres/gpu:{kind}:{n}")),
    }
}

/// GPU milli as the decimal fraction sbatch takes (`500` → `0.5`, `125` → `0.125`).
pub fn gpu_fraction(milli: u32) -> String {
    let text = format!("{}.{:03}", milli / 1000, milli % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// When the job ended, or will end at its limit while it runs; `None` when unknown.
pub fn end_time_ms(job: &Job) -> Option<u64> {
    if job.end_time_ms != 0 {
        return Some(job.end_time_ms);
    }
    let limit = spec(job).time_limit_secs;
    (job.state() == JobState::Running && job.start_time_ms != 0 && limit != 0)
        .then(|| job.start_time_ms.saturating_add(limit.saturating_mul(1000)))
}

/// A unix-ms timestamp as Slurm prints times (`%Y-%m-%dT%H:%M:%S`, local time); `None` for 0
/// (unset) so each command can print its own placeholder (`N/A`, `Unknown`).
pub fn format_timestamp(ms: u64) -> Option<String> {
    use chrono::TimeZone;
    if ms == 0 {
        return None;
    }
    let ms = i64::try_from(ms).ok()?;
    let time = chrono::Local.timestamp_millis_opt(ms).single()?;
    Some(time.format("%Y-%m-%dT%H:%M:%S").to_string())
}

/// The group's name from the local group database, else the gid (as Slurm falls back).
pub fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => gid.to_string(),
    }
}

/// Slurm prints unset strings as `(null)`.
pub(crate) fn or_null(value: &str) -> String {
    if value.is_empty() {
        "(null)".to_string()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::Allocation;

    const NOW_MS: u64 = 1_700_000_000_000;

    pub(crate) fn job(id: u64, state: JobState, name: &str) -> Job {
        let spec = JobSpec {
            name: name.to_string(),
            user: "alice".to_string(),
            uid: 1000,
            gid: 1000,
            nodes: 1,
            ntasks: 1,
            cpus_per_task: 1,
            partition: "gpu".to_string(),
            time_limit_secs: 3600,
            ..JobSpec::default()
        };
        let mut job = Job {
            id,
            spec: Some(spec),
            submit_time_ms: NOW_MS - 600_000,
            ..Job::default()
        };
        job.set_state(state);
        job
    }

    fn alloc(node: &str, gpus: &[u32]) -> Allocation {
        Allocation {
            node: node.to_string(),
            gpu_uuids: gpus.iter().map(|i| format!("GPU-{i}")).collect(),
            gpu_indices: gpus.to_vec(),
            cpus: 4,
            mem_mb: 1000,
            ..Default::default()
        }
    }

    fn sample_jobs() -> Vec<Job> {
        let mut pending = job(7, JobState::Pending, "train");
        pending.reason = "Resources".to_string();
        let mut running = job(8, JobState::Running, "a-very-long-name");
        running.start_time_ms = NOW_MS - 65_000;
        running.allocations = vec![alloc("dgx01", &[0, 1]), alloc("dgx02", &[0, 1])];
        let mut completing = job(9, JobState::Running, "x");
        completing.kill_requested = true;
        completing.start_time_ms = NOW_MS - 3_723_000;
        completing.allocations = vec![alloc("dgx03", &[2])];
        vec![pending, running, completing]
    }

    #[test]
    fn renders_default_format() {
        let got = render(&sample_jobs(), DEFAULT_FORMAT, NOW_MS, true).unwrap();
        let want = "             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)\n\
                    \x20                7       gpu    train    alice PD       0:00      1 (Resources)\n\
                    \x20                8       gpu a-very-l    alice  R       1:05      2 dgx[01-02]\n\
                    \x20                9       gpu        x    alice CG    1:02:03      1 dgx03\n";
        if got != want {
            panic!("want\n{want}got\n{got}");
        }
    }

    #[test]
    fn renders_custom_formats() {
        let jobs = sample_jobs();
        let mut gpu_job = jobs[1].clone();
        if let Some(spec) = gpu_job.spec.as_mut() {
            spec.gpus_per_node = 2;
            spec.gpu_type = "h100".to_string();
        }
        let cases: Vec<(&str, &Job, bool, &str)> = vec![
            ("%i|%T|%t", &jobs[0], false, "7|PENDING|PD\n"),
            ("%i|%T|%t", &jobs[2], false, "9|COMPLETING|CG\n"),
            ("%i %l %L %D %C", &jobs[1], false, "8 1:00:00 58:55 2 8\n"),
            ("%.5i|%3j|", &jobs[0], false, "    7|tra|\n"),
            (
                "%b %N",
                &gpu_job,
                true,
                "TRES_PER_NODE NODELIST\ngres/gpu:h100:2 dgx[01-02]\n",
            ),
            (
                "%b %r %a %q",
                &jobs[0],
                false,
                "N/A Resources (null) (null)\n",
            ),
            ("%S %e", &jobs[0], false, "N/A N/A\n"),
            ("%u:%U:%G %P %%", &jobs[0], false, "alice:1000:1000 gpu %\n"),
            ("%r", &jobs[1], false, "None\n"),
        ];
        for (i, (format, job, header, want)) in cases.iter().enumerate() {
            let got = render(std::slice::from_ref(*job), format, NOW_MS, *header);
            if got.as_deref() != Ok(*want) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn states_and_codes() {
        let cases: &[(JobState, bool, &str, &str)] = &[
            (JobState::Pending, false, "PENDING", "PD"),
            (JobState::Running, false, "RUNNING", "R"),
            (JobState::Running, true, "COMPLETING", "CG"),
            (JobState::Completed, false, "COMPLETED", "CD"),
            (JobState::Failed, false, "FAILED", "F"),
            (JobState::Cancelled, false, "CANCELLED", "CA"),
            (JobState::Timeout, false, "TIMEOUT", "TO"),
            (JobState::NodeFail, false, "NODE_FAIL", "NF"),
            (JobState::OutOfMemory, false, "OUT_OF_MEMORY", "OOM"),
        ];
        for (i, (state, kill, name, code)) in cases.iter().enumerate() {
            let mut j = job(1, *state, "n");
            j.kill_requested = *kill;
            let got = (state_name(&j), state_code(&j));
            if got != (*name, *code) {
                panic!("#{i}: want {:?}, got {got:?}", (name, code));
            }
        }
    }

    #[test]
    fn failed_jobs_show_their_reason() {
        let mut failed = job(3, JobState::Failed, "f");
        failed.reason = "NonZeroExitCode".to_string();
        failed.allocations = vec![alloc("n1", &[])];
        let mut done = job(4, JobState::Completed, "d");
        done.allocations = vec![alloc("n1", &[])];
        let got = render(&[failed, done], "%R", NOW_MS, false);
        let want = "(NonZeroExitCode)\nn1\n";
        if got.as_deref() != Ok(want) {
            panic!("want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn rejects_bad_specifiers() {
        let cases: &[(&str, FormatError)] = &[
            ("%i %X", FormatError::Unknown('X')),
            ("%E", FormatError::Unsupported('E')),
            ("%.5", FormatError::Incomplete("%.5".into())),
        ];
        for (i, (format, want)) in cases.iter().enumerate() {
            // No jobs: a bad letter must still fail.
            let got = render(&[], format, NOW_MS, false);
            if got.as_ref() != Err(want) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
}
