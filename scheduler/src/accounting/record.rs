//! Accounting records computed from the replicated state: one [`pb::JobRecord`] per run of
//! a job, built the same way on every replica from the same state.
//!
//! A job's current run is described by the job itself; the runs before a requeue are kept
//! in `Job.runs` ([`crate::state_machine::runs::run_of`] makes one just before the state
//! machine resets the job), so the records of every run can be rebuilt from the state
//! alone — by a fresh replica from its snapshot as well as by a replica applying the log.

use crate::state_machine::{is_final, StateMachine};
use berth_proto::v1::{self as pb, JobState};

/// MIG memory slices of a whole A100/H100 (a slice of `size` counts `size / 8` GPU).
const MIG_SLICES_PER_GPU: f64 = 8.0;

/// The records of every ended run of `job`: the earlier runs, and the current one when
/// the job has ended. `index` is the Raft index the state is at (the version of the
/// current run's record).
pub fn ended_records(sm: &StateMachine, job: &pb::Job, index: u64) -> Vec<pb::JobRecord> {
    let first_run = job.restart_count.saturating_sub(job.runs.len() as u32);
    let mut out: Vec<pb::JobRecord> = job
        .runs
        .iter()
        .enumerate()
        .map(|(i, run)| earlier_run(sm, job, run, first_run + i as u32))
        .collect();
    if is_final(job.state()) {
        out.push(current_record(sm, job, index));
    }
    out
}

/// The record of `job`'s current run, whatever its state (pending and running jobs too:
/// sacct shows them from berthd's state).
pub fn current_record(sm: &StateMachine, job: &pb::Job, index: u64) -> pb::JobRecord {
    let view = RunView {
        eligible_ms: job.eligible_time_ms,
        start_ms: job.start_time_ms,
        end_ms: job.end_time_ms,
        state: job.state(),
        exit_code: job.exit_code,
        exit_signal: job.exit_signal,
        reason: &job.reason,
        allocations: &job.allocations,
        usage: &job.usage,
    };
    let mut r = build(sm, job, &view, job.restart_count, index);
    r.held = job.held;
    r
}

fn earlier_run(sm: &StateMachine, job: &pb::Job, run: &pb::JobRun, n: u32) -> pb::JobRecord {
    let view = RunView {
        eligible_ms: run.eligible_time_ms,
        start_ms: run.start_time_ms,
        end_ms: run.end_time_ms,
        state: run.state(),
        exit_code: run.exit_code,
        exit_signal: run.exit_signal,
        reason: &run.reason,
        allocations: &run.allocations,
        usage: &run.usage,
    };
    let mut r = build(sm, job, &view, n, run.ended_index);
    r.requeued = true;
    r
}

/// What differs between runs of one job.
struct RunView<'a> {
    eligible_ms: u64,
    start_ms: u64,
    end_ms: u64,
    state: JobState,
    exit_code: i32,
    exit_signal: i32,
    reason: &'a str,
    allocations: &'a [pb::Allocation],
    usage: &'a [pb::JobUsage],
}

fn build(sm: &StateMachine, job: &pb::Job, run: &RunView, n: u32, index: u64) -> pb::JobRecord {
    let spec = job.spec.clone().unwrap_or_default();
    let alloc = alloc_tres(sm, run.allocations);
    let elapsed_s = elapsed_ms(run.start_ms, run.end_ms) as f64 / 1000.0;
    let parts = gpu_parts(sm, run.allocations);
    let gpu_seconds = parts * elapsed_s;
    let mut r = pb::JobRecord {
        job_id: job.id,
        run: n,
        name: spec.name.clone(),
        user: spec.user.clone(),
        uid: spec.uid,
        gid: spec.gid,
        account: job.account.clone(),
        partition: job.partition.clone(),
        qos: job.qos.clone(),
        submit_time_ms: job.submit_time_ms,
        eligible_time_ms: run.eligible_ms,
        start_time_ms: run.start_ms,
        end_time_ms: run.end_ms,
        state: run.state as i32,
        exit_code: run.exit_code,
        exit_signal: run.exit_signal,
        reason: run.reason.to_string(),
        nodes: run.allocations.iter().map(|a| a.node.clone()).collect(),
        req: Some(req_tres(&spec)),
        alloc: Some(alloc),
        gpu_seconds,
        gpu_equivalents: parts,
        gpu_busy_seconds: run.usage.iter().map(|u| u.gpu_busy_seconds).sum(),
        gpu_memory_max_mb: run
            .usage
            .iter()
            .map(|u| u.gpu_memory_max_mb)
            .max()
            .unwrap_or(0),
        time_limit_secs: spec.time_limit_secs,
        work_dir: spec.work_dir.clone(),
        command: spec.command.clone(),
        recorded_index: index,
        usage: run.usage.to_vec(),
        // An array task is recorded under its index (sacct's `12_3`); the array's own
        // record while it still holds pending tasks has no single index and is recorded
        // under its id alone.
        array_job_id: job.array_job_id,
        array_task_id: job.array_task_id.unwrap_or(0),
        has_array_task: job.array_task_id.is_some() && job.array_pending.is_empty(),
        ..Default::default()
    };
    if spec.pod.is_none() && run.start_ms > 0 {
        r.steps.push(batch_step(&r, run));
    }
    r
}

/// The batch step: the script's shell on the first node, ending with the job. A job that
/// hit its time limit has its batch shell killed, which Slurm records as CANCELLED.
fn batch_step(r: &pb::JobRecord, run: &RunView) -> pb::StepRecord {
    let first = run.allocations.first();
    let state = match run.state {
        JobState::Timeout | JobState::Preempted => JobState::Cancelled,
        s => s,
    };
    pb::StepRecord {
        step_id: "batch".into(),
        name: "batch".into(),
        state: state as i32,
        exit_code: run.exit_code,
        exit_signal: run.exit_signal,
        start_time_ms: run.start_ms,
        end_time_ms: run.end_ms,
        nodes: first.map(|a| vec![a.node.clone()]).unwrap_or_default(),
        alloc: first.map(|a| pb::Tres {
            cpus: a.cpus,
            mem_mb: a.mem_mb,
            nodes: 1,
            gpus: a.gpu_uuids.len() as u32,
            gpu_type: r
                .alloc
                .as_ref()
                .map(|t| t.gpu_type.clone())
                .unwrap_or_default(),
            gpu_milli: a.gpu_milli,
            ..Default::default()
        }),
        ntasks: 1,
    }
}

/// Milliseconds between start and end; 0 for a run that never started or has not ended.
pub fn elapsed_ms(start_ms: u64, end_ms: u64) -> u64 {
    if start_ms == 0 || end_ms == 0 {
        return 0;
    }
    end_ms.saturating_sub(start_ms)
}

fn req_tres(spec: &pb::JobSpec) -> pb::Tres {
    let nodes = spec.nodes.max(1);
    let tasks = spec.ntasks.max(1);
    pb::Tres {
        cpus: tasks * spec.cpus_per_task.max(1),
        mem_mb: spec.mem_mb * u64::from(nodes),
        nodes,
        gpus: spec.gpus_per_node * nodes,
        gpu_type: spec.gpu_type.clone(),
        gpu_milli: spec.gpu_milli,
        mig_profile: spec.mig_profile.clone(),
        mig_slices: spec.mig_per_node * nodes,
        mig_memory_slices: 0,
    }
}

fn alloc_tres(sm: &StateMachine, allocs: &[pb::Allocation]) -> pb::Tres {
    let mut t = pb::Tres {
        nodes: allocs.len() as u32,
        ..Default::default()
    };
    for a in allocs {
        t.cpus += a.cpus;
        t.mem_mb += a.mem_mb;
        t.gpus += a.gpu_uuids.len() as u32;
        t.gpu_milli = t.gpu_milli.max(a.gpu_milli);
        if t.gpu_type.is_empty() {
            let uuid = a
                .gpu_uuids
                .first()
                .or_else(|| a.mig_slices.first().map(|s| &s.gpu_uuid));
            if let Some(g) = uuid.and_then(|u| gpu(sm, &a.node, u)) {
                t.gpu_type = g.gres_type.clone();
            }
        }
        for s in &a.mig_slices {
            t.mig_profile = s.profile.clone();
            t.mig_slices += 1;
            t.mig_memory_slices += s.placement_size;
        }
    }
    t
}

/// The GPU-equivalents a run holds: 1 per whole GPU, milli/1000 per fraction, 1/replicas
/// per plain time-slice share, placement_size/8 per MIG slice (the same parts the agents
/// measure busy time with).
fn gpu_parts(sm: &StateMachine, allocs: &[pb::Allocation]) -> f64 {
    let mut parts = 0.0;
    for a in allocs {
        for uuid in &a.gpu_uuids {
            parts += if a.gpu_milli > 0 {
                f64::from(a.gpu_milli) / 1000.0
            } else {
                match gpu(sm, &a.node, uuid).map(|g| g.replicas) {
                    Some(r) if r > 1 => 1.0 / f64::from(r),
                    _ => 1.0,
                }
            };
        }
        for s in &a.mig_slices {
            parts += f64::from(s.placement_size) / MIG_SLICES_PER_GPU;
        }
    }
    parts
}

fn gpu<'a>(sm: &'a StateMachine, node: &str, uuid: &str) -> Option<&'a pb::Gpu> {
    sm.node(node)?
        .inventory
        .as_ref()?
        .gpus
        .iter()
        .find(|g| g.uuid == uuid)
}
