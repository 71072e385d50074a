//! Job steps (`srun` inside an allocation): creating a step lays its tasks out over the
//! running job's nodes and launches them through each node's agent; each node reports the
//! end of its tasks; the step is gone once every node has. A step holds nothing of its own:
//! it runs inside the job's allocation, so it changes no GPU, CPU or memory count, and a job
//! that ends (or is cancelled, or loses a node) takes its steps with it.
//!
//! Layout is Slurm's block distribution: consecutive task ids per node, the first nodes
//! taking one more when the tasks do not divide evenly; `--ntasks-per-node` fixes the count
//! per node. Each task sees `--gpus-per-task` of its node's allocated GPUs, in task order,
//! or all of them when the option is not given.

use super::{changed, Applied, Effect, Outcome, StateMachine};
use berth_proto::v1::{self as pb, JobState};

/// Refusal worded as Slurm's `srun: error: Unable to create step for job N: ...`.
const NODES_UNAVAILABLE: &str = "Requested node configuration is not available";
/// Slurm's reason for a step asking for more CPUs than its allocation holds.
const TOO_MANY_CPUS: &str = "More processors requested than permitted";

/// Most steps running at once in one job (a bound on state size).
pub const STEPS_RUNNING_MAX: usize = 512;

impl StateMachine {
    /// Creates step `next_step_id` of a running job and launches its tasks.
    pub(super) fn step_create(&mut self, c: pb::StepCreate, now: u64) -> Applied {
        let Some(job) = self.state.jobs.get(&c.job_id) else {
            return (Outcome::NoSuchJob(c.job_id), vec![]);
        };
        if job.state() != JobState::Running || job.kill_requested {
            return (
                Outcome::Rejected(format!(
                    "Unable to create step for job {}: Job/step already completing or completed",
                    c.job_id
                )),
                vec![],
            );
        }
        if job.steps.len() >= STEPS_RUNNING_MAX {
            return (
                Outcome::Rejected(format!(
                    "Unable to create step for job {}: more than {STEPS_RUNNING_MAX} steps running",
                    c.job_id
                )),
                vec![],
            );
        }
        let mut spec = c.spec.unwrap_or_default();
        let nodes = match layout(job, &mut spec) {
            Ok(n) => n,
            Err(why) => {
                return (
                    Outcome::Rejected(format!("Unable to create step for job {}: {why}", c.job_id)),
                    vec![],
                )
            }
        };
        let job = self.state.jobs.get_mut(&c.job_id).expect("checked");
        let step = pb::Step {
            job_id: c.job_id,
            step_id: job.next_step_id,
            spec: Some(spec),
            nodes,
            start_time_ms: now,
            ..Default::default()
        };
        job.next_step_id += 1;
        job.steps.push(step.clone());
        let snapshot = Box::new(job.clone());
        let mut effects: Vec<Effect> = step
            .nodes
            .iter()
            .map(|n| Effect::LaunchStep {
                node: n.node.clone(),
                job: snapshot.clone(),
                step: Box::new(step.clone()),
            })
            .collect();
        effects.push(changed(c.job_id));
        (Outcome::StepCreated(step.step_id), effects)
    }

    /// Records that one node's tasks of a step ended; the step is removed once every node
    /// has reported. A bad exit under `--kill-on-bad-exit` stops the other nodes' tasks.
    /// A report for a step or node that is not running (a repeat) changes nothing.
    pub(super) fn step_ended(&mut self, c: pb::StepEnded) -> Applied {
        let end = c.end.unwrap_or_default();
        let Some(job) = self.state.jobs.get_mut(&end.job_id) else {
            return (Outcome::Done, vec![]);
        };
        let Some(pos) = job.steps.iter().position(|s| s.step_id == end.step_id) else {
            return (Outcome::Done, vec![]);
        };
        let step = &mut job.steps[pos];
        let of_step = step.nodes.iter().any(|n| n.node == c.node);
        if !of_step || step.nodes_done.contains(&c.node) {
            return (Outcome::Done, vec![]);
        }
        step.nodes_done.push(c.node.clone());
        let bad = end.exit_code != 0 || end.signal != 0 || !end.reason.is_empty();
        if severity(end.exit_code, end.signal) > severity(step.exit_code, step.exit_signal) {
            step.exit_code = end.exit_code;
            step.exit_signal = end.signal;
        }
        if !end.reason.is_empty() && step.reason.is_empty() {
            step.reason = format!("{}: {}", c.node, end.reason);
        }
        let mut effects = Vec::new();
        let kill_on_bad = step.spec.as_ref().is_some_and(|s| s.kill_on_bad_exit);
        if bad && (kill_on_bad || !end.reason.is_empty()) && !step.kill_requested {
            step.kill_requested = true;
            if step.reason.is_empty() {
                step.reason = format!("a task on {} exited with code {}", c.node, end.exit_code);
            }
            effects.extend(kill_rest(step));
        }
        if step.nodes_done.len() == step.nodes.len() {
            job.steps.remove(pos);
        }
        effects.push(changed(end.job_id));
        (Outcome::Done, effects)
    }

    /// Stops a running step on every node (`scancel JOB.STEP`, srun's double Ctrl-C).
    pub(super) fn step_cancel(&mut self, c: pb::StepCancel) -> Applied {
        let Some(job) = self.state.jobs.get_mut(&c.job_id) else {
            return (Outcome::NoSuchJob(c.job_id), vec![]);
        };
        let Some(step) = job.steps.iter_mut().find(|s| s.step_id == c.step_id) else {
            return (
                Outcome::Rejected(format!(
                    "Invalid job id specified: step {}.{} is not running",
                    c.job_id, c.step_id
                )),
                vec![],
            );
        };
        if step.kill_requested {
            return (Outcome::Done, vec![]);
        }
        step.kill_requested = true;
        step.reason = if c.reason.is_empty() {
            super::CANCELLED_BY_USER.into()
        } else {
            c.reason
        };
        let mut effects = kill_rest(step);
        effects.push(changed(c.job_id));
        (Outcome::Done, effects)
    }

    /// The kills that stop every step of job `id` on every node still running one, and,
    /// when `forget`, the steps dropped from the state (the job ended: nothing of it may
    /// keep running, and no step end is waited for).
    pub(super) fn stop_steps(&mut self, id: u64, forget: bool) -> Vec<Effect> {
        let Some(job) = self.state.jobs.get_mut(&id) else {
            return vec![];
        };
        let mut nodes: Vec<String> = Vec::new();
        for step in &mut job.steps {
            step.kill_requested = true;
            for n in &step.nodes {
                if !step.nodes_done.contains(&n.node) && !nodes.contains(&n.node) {
                    nodes.push(n.node.clone());
                }
            }
        }
        if forget {
            job.steps.clear();
        }
        nodes
            .into_iter()
            .map(|node| Effect::KillStep {
                node,
                job_id: id,
                step_id: None,
            })
            .collect()
    }
}

/// Kills for the nodes of `step` whose tasks have not ended yet.
fn kill_rest(step: &pb::Step) -> Vec<Effect> {
    step.nodes
        .iter()
        .filter(|n| !step.nodes_done.contains(&n.node))
        .map(|n| Effect::KillStep {
            node: n.node.clone(),
            job_id: step.job_id,
            step_id: Some(step.step_id),
        })
        .collect()
}

/// How bad an exit is, as srun ranks them for its own exit status: a signal counts as
/// 128 + its number (what a shell reports), else the exit code.
pub fn severity(exit_code: i32, signal: i32) -> i32 {
    if signal != 0 {
        128 + signal
    } else {
        exit_code
    }
}

/// Lays the tasks of `spec` out over `job`'s allocation, filling in the counts left at 0.
///
/// # Errors
/// Slurm's reason when the step cannot fit the allocation: nodes not in it, more nodes or
/// tasks per node than it offers, more CPUs or GPUs than it holds on a node.
pub fn layout(job: &pb::Job, spec: &mut pb::StepSpec) -> Result<Vec<pb::StepNode>, String> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err("no program to run".into());
    }
    if !spec.cpu_bind.is_empty() {
        berth_policies::cpu_bind::parse(&spec.cpu_bind)
            .map_err(|e| format!("Invalid --cpu-bind specification: {e}"))?;
    }
    let alloc = &job.allocations;
    for name in &spec.nodelist {
        if !alloc.iter().any(|a| &a.node == name) {
            return Err(format!(
                "{NODES_UNAVAILABLE} (node {name} is not in the allocation)"
            ));
        }
    }
    // Nodes named with -w first, then the rest of the allocation, in allocation order.
    let named = |a: &&pb::Allocation| spec.nodelist.contains(&a.node);
    let order: Vec<&pb::Allocation> = alloc
        .iter()
        .filter(named)
        .chain(alloc.iter().filter(|a| !named(a)))
        .collect();
    let per_node = spec.ntasks_per_node;
    let mut nnodes = match (spec.nodes, spec.nodelist.len(), spec.ntasks, per_node) {
        (n, _, _, _) if n > 0 => n as usize,
        (_, w, _, _) if w > 0 => w,
        (_, _, t, p) if t > 0 && p > 0 => (t as usize).div_ceil(p as usize),
        (_, _, t, _) if t > 0 => (t as usize).min(alloc.len()),
        _ => alloc.len(),
    };
    if nnodes > alloc.len() || nnodes < spec.nodelist.len() {
        return Err(format!(
            "{NODES_UNAVAILABLE} ({nnodes} nodes asked, {} named, the allocation has {})",
            spec.nodelist.len(),
            alloc.len()
        ));
    }
    let ntasks = match spec.ntasks {
        0 if per_node > 0 => nnodes * per_node as usize,
        0 => nnodes,
        t => t as usize,
    };
    // Fewer tasks than nodes: Slurm warns and uses as many nodes as tasks.
    nnodes = nnodes.min(ntasks);
    if per_node > 0 && ntasks > nnodes * per_node as usize {
        return Err(format!(
            "{NODES_UNAVAILABLE} ({ntasks} tasks do not fit {nnodes} nodes × {per_node} tasks per node)"
        ));
    }
    let cpus_per_task = spec.cpus_per_task.max(1);
    let mut nodes = Vec::with_capacity(nnodes);
    let mut next_task = 0u32;
    for (index, a) in order.iter().take(nnodes).enumerate() {
        let count = if per_node > 0 {
            (per_node as usize).min(ntasks - next_task as usize)
        } else {
            ntasks / nnodes + usize::from(index < ntasks % nnodes)
        };
        if a.cpus > 0 && count as u64 * u64::from(cpus_per_task) > u64::from(a.cpus) {
            return Err(format!(
                "{TOO_MANY_CPUS} ({count} tasks × {cpus_per_task} CPUs on {}, which holds {})",
                a.node, a.cpus
            ));
        }
        let gpus = step_gpus(a, count, spec.gpus_per_task)?;
        let task_ids = (next_task..next_task + count as u32).collect();
        next_task += count as u32;
        nodes.push(pb::StepNode {
            node: a.node.clone(),
            task_ids,
            node_index: index as u32,
            gpu_uuids: gpus,
        });
    }
    spec.ntasks = ntasks as u32;
    spec.nodes = nnodes as u32;
    spec.cpus_per_task = cpus_per_task;
    Ok(nodes)
}

/// The GPUs of allocation `a` that `count` tasks see: `per_task` each, in order, or all of
/// them (shared) when `per_task` is 0.
fn step_gpus(a: &pb::Allocation, count: usize, per_task: u32) -> Result<Vec<String>, String> {
    if per_task == 0 {
        return Ok(a.gpu_uuids.clone());
    }
    let need = count * per_task as usize;
    if need > a.gpu_uuids.len() {
        return Err(format!(
            "Invalid generic resource (gres) specification ({count} tasks × {per_task} GPUs on {}, which holds {})",
            a.node,
            a.gpu_uuids.len()
        ));
    }
    Ok(a.gpu_uuids[..need].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(nodes: &[(&str, u32, u32)]) -> pb::Job {
        pb::Job {
            id: 7,
            state: JobState::Running as i32,
            allocations: nodes
                .iter()
                .map(|(n, cpus, gpus)| pb::Allocation {
                    node: n.to_string(),
                    cpus: *cpus,
                    gpu_uuids: (0..*gpus).map(|g| format!("GPU-{n}-{g}")).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn spec(n: u32, nn: u32, per: u32, w: &[&str], gpt: u32, cpt: u32) -> pb::StepSpec {
        pb::StepSpec {
            ntasks: n,
            nodes: nn,
            ntasks_per_node: per,
            nodelist: w.iter().map(|s| s.to_string()).collect(),
            gpus_per_task: gpt,
            cpus_per_task: cpt,
            argv: vec!["hostname".into()],
            ..Default::default()
        }
    }

    /// Node name → task ids, as laid out.
    type Layout = Vec<(String, Vec<u32>)>;

    fn tasks(nodes: &[pb::StepNode]) -> Layout {
        nodes
            .iter()
            .map(|n| (n.node.clone(), n.task_ids.clone()))
            .collect()
    }

    #[test]
    fn tasks_are_laid_out_in_blocks() {
        let j = job(&[("n1", 4, 4), ("n2", 4, 4), ("n3", 4, 4)]);
        let t = |n: &str, ids: &[u32]| (n.to_string(), ids.to_vec());
        let table: Vec<(pb::StepSpec, Layout)> = vec![
            // No counts: one task on every node.
            (
                spec(0, 0, 0, &[], 0, 0),
                vec![t("n1", &[0]), t("n2", &[1]), t("n3", &[2])],
            ),
            // -n 4: the first node takes the extra task.
            (
                spec(4, 0, 0, &[], 0, 0),
                vec![t("n1", &[0, 1]), t("n2", &[2]), t("n3", &[3])],
            ),
            // -n 2: only as many nodes as tasks.
            (spec(2, 0, 0, &[], 0, 0), vec![t("n1", &[0]), t("n2", &[1])]),
            // -N 2 -n 3.
            (
                spec(3, 2, 0, &[], 0, 0),
                vec![t("n1", &[0, 1]), t("n2", &[2])],
            ),
            // --ntasks-per-node=2 -N 2.
            (
                spec(0, 2, 2, &[], 0, 0),
                vec![t("n1", &[0, 1]), t("n2", &[2, 3])],
            ),
            // mpirun's form: -n 2 --ntasks-per-node=1.
            (spec(2, 0, 1, &[], 0, 0), vec![t("n1", &[0]), t("n2", &[1])]),
            // -w n3 -N 1: the named node.
            (spec(0, 1, 0, &["n3"], 0, 0), vec![t("n3", &[0])]),
            // -w n3 -N 2: named first, then the allocation's order.
            (
                spec(2, 2, 0, &["n3"], 0, 0),
                vec![t("n3", &[0]), t("n1", &[1])],
            ),
        ];
        for (i, (mut s, want)) in table.into_iter().enumerate() {
            let got = layout(&j, &mut s).map(|n| tasks(&n));
            match got {
                Ok(g) if g == want => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn each_task_gets_its_share_of_the_gpus() {
        let j = job(&[("n1", 8, 4)]);
        let mut s = spec(2, 0, 0, &[], 2, 0);
        let nodes = layout(&j, &mut s).unwrap();
        assert_eq!(
            nodes[0].gpu_uuids,
            ["GPU-n1-0", "GPU-n1-1", "GPU-n1-2", "GPU-n1-3"]
        );
        let mut s = spec(1, 0, 0, &[], 0, 0);
        let nodes = layout(&j, &mut s).unwrap();
        assert_eq!(
            nodes[0].gpu_uuids.len(),
            4,
            "no --gpus-per-task: all of them"
        );
    }

    #[test]
    fn steps_larger_than_the_allocation_are_refused() {
        let j = job(&[("n1", 2, 2), ("n2", 2, 2)]);
        let table = [
            (
                spec(0, 3, 0, &[], 0, 0),
                "Requested node configuration is not available",
            ),
            (
                spec(0, 0, 0, &["n9"], 0, 0),
                "node n9 is not in the allocation",
            ),
            (
                spec(5, 0, 0, &[], 0, 0),
                "More processors requested than permitted",
            ),
            (
                spec(2, 1, 0, &[], 0, 2),
                "More processors requested than permitted",
            ),
            (
                spec(5, 2, 2, &[], 0, 0),
                "do not fit 2 nodes × 2 tasks per node",
            ),
            (spec(2, 1, 0, &[], 2, 0), "Invalid generic resource"),
            (spec(1, 1, 0, &["n1", "n2"], 0, 0), "2 named"),
        ];
        for (i, (mut s, want)) in table.into_iter().enumerate() {
            match layout(&j, &mut s) {
                Err(e) if e.contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
        let mut no_program = spec(1, 0, 0, &[], 0, 0);
        no_program.argv.clear();
        assert!(layout(&j, &mut no_program).is_err());
        // A --cpu-bind no agent could apply, from any client, makes no step.
        let mut bad_bind = spec(1, 0, 0, &[], 0, 0);
        bad_bind.cpu_bind = "map_cpu:x".into();
        let err = layout(&j, &mut bad_bind).unwrap_err();
        assert!(err.starts_with("Invalid --cpu-bind specification"), "{err}");
    }

    #[test]
    fn signals_rank_above_exit_codes() {
        assert!(severity(0, 9) > severity(1, 0));
        assert_eq!(severity(3, 0), 3);
        assert_eq!(severity(0, 15), 143);
    }
}
