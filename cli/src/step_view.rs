//! Job steps as `squeue -s` and `scontrol show step` show them.
//!
//! A step lives inside its job's record (`Job.steps`, see docs/design.md), so both tools
//! read running jobs and print their steps; nothing on the server is step-specific. The
//! layouts follow Slurm 22.05 (`squeue/print.c`, `slurm_sprint_job_step_info`): step ids
//! `12.0` and `12_3.0`, the default `%.15i %.8j %.9P %.8u %.9M %N`, rows sorted by
//! partition then step id.

use berth_proto::v1::{Job, Step};

use crate::array_view;
use crate::duration::format_elapsed;
use crate::format::{self, FormatError};
use crate::hostlist;
use crate::squeue;

/// Slurm's default `squeue -s` layout.
pub const STEP_FORMAT: &str = "%.15i %.8j %.9P %.8u %.9M %N";

/// A step's id as the tools write it: `12.0`, or `12_3.0` for a step of array task 12_3.
pub fn step_id(job: &Job, step: &Step) -> String {
    format!("{}.{}", array_view::display_id(job), step.step_id)
}

/// Every step of `jobs` with its job, sorted as squeue sorts steps (partition, then id).
pub fn steps_of(jobs: &[Job]) -> Vec<(&Job, &Step)> {
    let mut out: Vec<(&Job, &Step)> = jobs
        .iter()
        .flat_map(|j| j.steps.iter().map(move |s| (j, s)))
        .collect();
    out.sort_by(|(ja, sa), (jb, sb)| {
        (squeue::partition(ja), ja.id, sa.step_id).cmp(&(squeue::partition(jb), jb.id, sb.step_id))
    });
    out
}

/// `squeue -s`: one line per step of `jobs`, after a header when `header`.
///
/// # Errors
/// [`FormatError`] for a malformed format or a letter that is not a step field
/// (Slurm: "Invalid job step format specification").
pub fn render(
    jobs: &[Job],
    format: &str,
    now_ms: u64,
    header: bool,
) -> Result<String, FormatError> {
    format::render_table(
        format,
        header,
        header_of,
        steps_of(jobs),
        |(job, step), l| field(job, step, l, now_ms),
    )
}

fn header_of(letter: char) -> Result<&'static str, FormatError> {
    Ok(match letter {
        'A' => "TASKS",
        'i' => "STEPID",
        'j' => "NAME",
        'l' => "TIME_LIMIT",
        'M' => "TIME",
        'N' => "NODELIST",
        'P' => "PARTITION",
        'S' => "START_TIME",
        'U' => "UID",
        'u' => "USER",
        l => return Err(FormatError::Unknown(l)),
    })
}

fn field(job: &Job, step: &Step, letter: char, now_ms: u64) -> Result<String, FormatError> {
    Ok(match letter {
        'A' => tasks(step).to_string(),
        'i' => step_id(job, step),
        'j' => name(step),
        // Steps carry no limit of their own in berth (srun -t is not taken yet).
        'l' => "UNLIMITED".to_string(),
        'M' => format_elapsed(now_ms.saturating_sub(step.start_time_ms) / 1000),
        'N' => nodelist(step),
        'P' => squeue::partition(job).to_string(),
        'S' => squeue::format_timestamp(step.start_time_ms).unwrap_or_else(|| "N/A".into()),
        'U' => squeue::spec(job).uid.to_string(),
        'u' => squeue::user(job),
        l => return Err(FormatError::Unknown(l)),
    })
}

fn tasks(step: &Step) -> usize {
    step.nodes.iter().map(|n| n.task_ids.len()).sum()
}

fn name(step: &Step) -> String {
    let spec = step.spec.clone().unwrap_or_default();
    if !spec.name.is_empty() {
        return spec.name;
    }
    spec.argv.first().cloned().unwrap_or_default()
}

fn nodelist(step: &Step) -> String {
    let names: Vec<String> = step.nodes.iter().map(|n| n.node.clone()).collect();
    hostlist::compress(&names)
}

/// Which steps `scontrol show step WHAT` names: all, every step of a job (`12`, `12_3`), or
/// one (`12.0`, `12_3.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    /// The job as written (`12` or `12_3`).
    pub job: String,
    /// The step, or every step of the job.
    pub step: Option<u32>,
}

/// Whether `w` names step `step` of `job`.
pub fn names(w: &StepRef, job: &Job, step: &Step) -> bool {
    (array_view::display_id(job) == w.job || job.id.to_string() == w.job)
        && w.step.is_none_or(|id| id == step.step_id)
}

/// Parses `scontrol show step`'s argument.
///
/// # Errors
/// A message naming a malformed id.
pub fn parse_step_ref(text: &str) -> Result<StepRef, String> {
    let bad = || format!("Invalid job step id: {text}");
    let (job, step) = match text.split_once('.') {
        Some((j, s)) => (j, Some(s.parse::<u32>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let (id, task) = match job.split_once('_') {
        Some((i, t)) => (i, Some(t)),
        None => (job, None),
    };
    if id.parse::<u64>().is_err() || task.is_some_and(|t| t.parse::<u32>().is_err()) {
        return Err(bad());
    }
    Ok(StepRef {
        job: job.to_string(),
        step,
    })
}

/// `scontrol show step [WHAT]` over `jobs`: each step's record, a blank line after each,
/// as Slurm prints them; Slurm's messages when nothing matches.
///
/// # Errors
/// "Job step 12.5 not found" (Slurm prints it and exits 1).
pub fn show(jobs: &[Job], what: Option<&StepRef>) -> Result<String, String> {
    let steps: Vec<(&Job, &Step)> = steps_of(jobs)
        .into_iter()
        .filter(|(j, s)| what.is_none_or(|w| names(w, j, s)))
        .collect();
    match (what, steps.is_empty()) {
        (None, true) => return Ok("No job steps in the system\n".into()),
        (Some(w), true) => {
            let step = w.step.map(|s| s.to_string()).unwrap_or_default();
            return Err(format!("Job step {}.{step} not found", w.job));
        }
        _ => {}
    }
    let mut out = String::new();
    for (job, step) in steps {
        out.push_str(&record(job, step));
        out.push('\n');
    }
    Ok(out)
}

fn record(job: &Job, step: &Step) -> String {
    let spec = step.spec.clone().unwrap_or_default();
    let cpus = tasks(step) as u64 * u64::from(spec.cpus_per_task.max(1));
    let gpus: usize = step.nodes.iter().map(|n| n.gpu_uuids.len()).sum();
    let mut tres = format!("cpu={cpus},node={}", step.nodes.len());
    if gpus > 0 {
        tres.push_str(&format!(",gres/gpu={gpus}"));
    }
    let lines = [
        format!(
            "StepId={} UserId={} StartTime={} TimeLimit=UNLIMITED",
            step_id(job, step),
            squeue::spec(job).uid,
            squeue::format_timestamp(step.start_time_ms).unwrap_or_else(|| "Unknown".into()),
        ),
        format!(
            "State={} Partition={} NodeList={}",
            if step.kill_requested {
                "CANCELLED"
            } else {
                "RUNNING"
            },
            squeue::partition(job),
            nodelist(step)
        ),
        format!(
            "Nodes={} CPUs={cpus} Tasks={} Name={} Network=(null)",
            step.nodes.len(),
            tasks(step),
            name(step)
        ),
        format!("TRES={tres}"),
        "ResvPorts=(null)".to_string(),
        // berth lays tasks out in blocks (tasks 0..k on the first node, and so on).
        "CPUFreqReq=Default Dist=Block".to_string(),
    ];
    let mut out = lines.join("\n   ");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1 as pb;

    fn job(id: u64, partition: &str, steps: Vec<Step>) -> Job {
        Job {
            id,
            state: pb::JobState::Running as i32,
            spec: Some(pb::JobSpec {
                user: "alice".into(),
                uid: 1000,
                partition: partition.into(),
                ..Default::default()
            }),
            steps,
            ..Default::default()
        }
    }

    fn step(job_id: u64, step_id: u32, nodes: &[(&str, &[u32])], argv0: &str) -> Step {
        Step {
            job_id,
            step_id,
            start_time_ms: 1_000,
            spec: Some(pb::StepSpec {
                argv: vec![argv0.into()],
                cpus_per_task: 2,
                ..Default::default()
            }),
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, (n, t))| pb::StepNode {
                    node: n.to_string(),
                    task_ids: t.to_vec(),
                    node_index: i as u32,
                    gpu_uuids: vec![],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn squeue_steps_in_slurms_default_layout_sorted_by_partition_then_id() {
        let jobs = vec![
            job(7, "gpu", vec![step(7, 1, &[("n1", &[0])], "python")]),
            job(
                5,
                "gpu",
                vec![
                    step(5, 0, &[("n1", &[0, 1]), ("n2", &[2, 3])], "hostname"),
                    step(5, 1, &[("n2", &[0])], "a_very_long_name"),
                ],
            ),
            job(9, "cpu", vec![step(9, 0, &[("c1", &[0])], "true")]),
        ];
        let got = render(&jobs, STEP_FORMAT, 66_000, true).unwrap();
        let want = "         STEPID     NAME PARTITION     USER      TIME NODELIST\n\
                    \x20           9.0     true       cpu    alice      1:05 c1\n\
                    \x20           5.0 hostname       gpu    alice      1:05 n[1-2]\n\
                    \x20           5.1 a_very_l       gpu    alice      1:05 n2\n\
                    \x20           7.1   python       gpu    alice      1:05 n1\n";
        assert_eq!(got, want);
        assert_eq!(
            render(&jobs, "%i %A", 0, false).unwrap().lines().nth(1),
            Some("5.0 4")
        );
        assert!(matches!(
            render(&jobs, "%i %t", 0, true),
            Err(FormatError::Unknown('t'))
        ));
        assert_eq!(render(&[], STEP_FORMAT, 0, false).unwrap(), "");
    }

    #[test]
    fn array_task_steps_are_named_by_the_task() {
        let mut j = job(40, "gpu", vec![step(40, 0, &[("n1", &[0])], "x")]);
        j.array_job_id = 12;
        j.array_task_id = Some(3);
        assert_eq!(step_id(&j, &j.steps[0]), "12_3.0");
        let r = parse_step_ref("12_3.0").unwrap();
        assert!(show(std::slice::from_ref(&j), Some(&r))
            .unwrap()
            .starts_with("StepId=12_3.0 "));
    }

    #[test]
    fn show_step_prints_slurms_record_and_its_messages() {
        let jobs = vec![job(
            5,
            "gpu",
            vec![step(5, 0, &[("n1", &[0, 1]), ("n2", &[2])], "srun_me")],
        )];
        let text = show(&jobs, Some(&parse_step_ref("5.0").unwrap())).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("StepId=5.0 UserId=1000 StartTime="),
            "{text}"
        );
        assert!(lines[0].ends_with(" TimeLimit=UNLIMITED"), "{text}");
        assert_eq!(lines[1], "   State=RUNNING Partition=gpu NodeList=n[1-2]");
        assert_eq!(
            lines[2],
            "   Nodes=2 CPUs=6 Tasks=3 Name=srun_me Network=(null)"
        );
        assert_eq!(lines[3], "   TRES=cpu=6,node=2");
        assert!(text.ends_with("Dist=Block\n\n"), "{text:?}");
        // Every step of a job, or all of them.
        assert_eq!(
            show(&jobs, Some(&parse_step_ref("5").unwrap())).unwrap(),
            text
        );
        assert_eq!(show(&jobs, None).unwrap(), text);
        assert_eq!(
            show(&jobs, Some(&parse_step_ref("5.3").unwrap())).unwrap_err(),
            "Job step 5.3 not found"
        );
        assert_eq!(show(&[], None).unwrap(), "No job steps in the system\n");
    }

    #[test]
    fn malformed_step_ids_are_refused() {
        for bad in ["", "x", "5.x", "5.", "_3.0", "5_x.0", "5.-1"] {
            assert!(parse_step_ref(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_step_ref("12_3").unwrap(),
            StepRef {
                job: "12_3".into(),
                step: None
            }
        );
    }
}
