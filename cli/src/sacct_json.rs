//! `sacct --json`: the records in the shape of Slurm 22.05's `sacct --json` (data parser
//! v0.0.38): `{"meta", "errors", "jobs": [...]}` with each job's `job_id`, `name`,
//! `state.current`, `time.{submission,eligible,start,end,elapsed,limit}`,
//! `exit_code.{status,return_code}`, `tres.{allocated,requested}`, `steps`, … Only the
//! keys berth has data for are written; berth's measured GPU use is under
//! `tres.allocated` peers as `berth.gpu_seconds`, `berth.gpu_busy_seconds`.

use crate::sacct::{lines, Request};
use crate::sacct_fields::{state_text, tres_text};
use berth_proto::v1::{self as pb, JobState};
use serde_json::{json, Value};

fn secs(ms: u64) -> u64 {
    ms / 1000
}

fn exit_code(code: i32, signal: i32, state: JobState) -> Value {
    let status = match (state, signal) {
        (JobState::Completed, _) => "SUCCESS",
        (_, s) if s != 0 => "SIGNALED",
        (JobState::Pending | JobState::Running, _) => "PENDING",
        _ => "FAILED",
    };
    json!({"status": status, "return_code": code, "signal": {"signal_id": signal}})
}

fn tres_list(t: Option<&pb::Tres>) -> Value {
    let Some(t) = t else { return json!([]) };
    let text = tres_text(t);
    let items: Vec<Value> = text
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let (ty, name) = k.split_once('/').map_or((k, ""), |(a, b)| (a, b));
            json!({"type": ty, "name": name, "count": v})
        })
        .collect();
    json!(items)
}

fn step(rec: &pb::JobRecord, s: &pb::StepRecord, now_ms: u64) -> Value {
    json!({
        "step": {"job_id": rec.job_id, "name": s.step_id},
        "state": state_text(s.state(), false),
        "exit_code": exit_code(s.exit_code, s.exit_signal, s.state()),
        "nodes": {"count": s.nodes.len(), "range": crate::hostlist::compress(&s.nodes)},
        "tasks": {"count": s.ntasks},
        "time": {
            "start": secs(s.start_time_ms), "end": secs(s.end_time_ms),
            "elapsed": crate::sacct_fields::elapsed_s(s.start_time_ms, s.end_time_ms, now_ms),
        },
        "tres": {"allocated": tres_list(s.alloc.as_ref())},
    })
}

fn job(rec: &pb::JobRecord, now_ms: u64, with_steps: bool) -> Value {
    let steps: Vec<Value> = if with_steps {
        rec.steps.iter().map(|s| step(rec, s, now_ms)).collect()
    } else {
        vec![]
    };
    json!({
        "account": rec.account,
        "allocation_nodes": rec.nodes.len(),
        "array": {
            "job_id": if rec.has_array_task { rec.array_job_id } else { 0 },
            "task_id": if rec.has_array_task { json!(rec.array_task_id) } else { Value::Null },
        },
        "cluster": "berth",
        "derived_exit_code": exit_code(rec.exit_code, rec.exit_signal, rec.state()),
        "exit_code": exit_code(rec.exit_code, rec.exit_signal, rec.state()),
        "group": crate::squeue::group_name(rec.gid),
        "job_id": rec.job_id,
        "name": rec.name,
        "nodes": if rec.nodes.is_empty() { "None assigned".to_string() } else { crate::hostlist::compress(&rec.nodes) },
        "partition": rec.partition,
        "qos": rec.qos,
        "required": {"CPUs": rec.req.as_ref().map_or(0, |t| t.cpus), "memory": rec.req.as_ref().map_or(0, |t| t.mem_mb)},
        "restart_cnt": rec.run,
        "state": {"current": state_text(rec.state(), rec.requeued), "reason": if rec.reason.is_empty() { "None" } else { rec.reason.as_str() }},
        "steps": steps,
        "submit_line": rec.command,
        "time": {
            "elapsed": crate::sacct_fields::elapsed_s(rec.start_time_ms, rec.end_time_ms, now_ms),
            "eligible": secs(rec.eligible_time_ms),
            "end": secs(rec.end_time_ms),
            "start": secs(rec.start_time_ms),
            "submission": secs(rec.submit_time_ms),
            "suspended": 0,
            "limit": if rec.time_limit_secs == 0 { json!("UNLIMITED") } else { json!(rec.time_limit_secs / 60) },
        },
        "tres": {"allocated": tres_list(rec.alloc.as_ref()), "requested": tres_list(rec.req.as_ref())},
        "user": rec.user,
        "working_directory": rec.work_dir,
        "berth": {
            "run": rec.run,
            "gpu_seconds": rec.gpu_seconds,
            "gpu_busy_seconds": rec.gpu_busy_seconds,
            "gpu_memory_max_mb": rec.gpu_memory_max_mb,
        },
    })
}

/// The JSON document for `records` as `req` selects them.
pub fn render(records: &[pb::JobRecord], req: &Request, now_ms: u64) -> String {
    let mut jobs = Vec::new();
    for line in lines(records, req) {
        if line.step.is_none() {
            jobs.push(job(line.rec, now_ms, !req.allocations));
        }
    }
    let doc = json!({
        "meta": {"plugin": {"type": "openapi/dbv0.0.38", "name": "berth"}, "Slurm": {"release": "22.05 (berth)"}},
        "errors": [],
        "jobs": jobs,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
