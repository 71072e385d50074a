//! `sacct --json`: the records in the shape of Slurm 22.05's `sacct --json` (data parser
//! v0.0.38): `{"meta", "errors", "jobs": [...]}`, each job with the keys Slurm writes
//! (`job_id`, `name`, `array`, `association`, `state.current`, `time.{submission,
//! eligible,start,end,elapsed,limit}`, `exit_code.{status,return_code}`,
//! `tres.{allocated,requested}` as `{type, name, id, count}` lists, `steps`…), checked
//! key by key against real Slurm's output in the tests. Keys berth has no data for carry
//! Slurm's empty values (null, 0, ""). berth adds one key of its own, `berth`, with the
//! run number and the measured GPU use.
//!
//! One deliberate difference: Slurm 22.05 writes `exit_code` as `SUCCESS`/0 even for a
//! failed job (a bug fixed in 23.02); berth writes the real status and code.

use super::{lines, Request};
use crate::sacct_fields::state_text;
use berth_proto::v1::{self as pb, JobState};
use serde_json::{json, Value};

fn secs(ms: u64) -> u64 {
    ms / 1000
}

fn exit_code(code: i32, signal: i32, state: JobState) -> Value {
    let status = match (state, code, signal) {
        (JobState::Pending | JobState::Running, _, _) => "PENDING",
        (_, _, s) if s != 0 => "SIGNALED",
        (_, 0, _) => "SUCCESS",
        _ => "FAILED",
    };
    if signal != 0 {
        return json!({"status": status, "return_code": code,
            "signal": {"signal_id": signal, "name": signal_name(signal)}});
    }
    json!({"status": status, "return_code": code})
}

fn signal_name(signal: i32) -> Value {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| json!(s.as_str().trim_start_matches("SIG")))
        .unwrap_or(Value::Null)
}

/// TRES as Slurm's JSON lists them: cpu (id 1), mem in MB (2), node (4), billing (5),
/// then the GRES (`gpu` and `gpu:TYPE`; ids are berth's own, Slurm's come from its DB).
fn tres_items(t: Option<&pb::Tres>, billing: bool) -> Value {
    let Some(t) = t.filter(|t| t.cpus > 0 || t.nodes > 0) else {
        return json!([]);
    };
    let item = |ty: &str, name: Option<&str>, id: u32, count: u64| json!({"type": ty, "name": name, "id": id, "count": count});
    let mut items = vec![item("cpu", None, 1, u64::from(t.cpus))];
    if t.mem_mb > 0 {
        items.push(item("mem", None, 2, t.mem_mb));
    }
    items.push(item("node", None, 4, u64::from(t.nodes.max(1))));
    if billing {
        items.push(item("billing", None, 5, u64::from(t.cpus)));
    }
    let (gpus, ty) = if t.mig_slices > 0 {
        (t.mig_slices, t.mig_profile.as_str())
    } else {
        (t.gpus, t.gpu_type.as_str())
    };
    if t.gpu_milli > 0 {
        items.push(item(
            "gres",
            Some("shard"),
            1003,
            u64::from(t.gpu_milli * t.gpus.max(1)),
        ));
    } else if gpus > 0 {
        items.push(item("gres", Some("gpu"), 1001, u64::from(gpus)));
        if !ty.is_empty() {
            items.push(item(
                "gres",
                Some(&format!("gpu:{ty}")),
                1002,
                u64::from(gpus),
            ));
        }
    }
    json!(items)
}

fn cpu_time() -> Value {
    json!({"seconds": 0, "microseconds": 0})
}

fn nodes(list: &[String]) -> Value {
    json!({"list": list, "count": list.len(), "range": crate::hostlist::compress(list)})
}

fn step(rec: &pb::JobRecord, s: &pb::StepRecord, now_ms: u64) -> Value {
    let empty = json!({"max": [], "min": [], "average": [], "total": []});
    let id = s
        .step_id
        .parse::<u32>()
        .map_or_else(|_| json!(s.step_id), |n| json!(n));
    json!({
        "nodes": nodes(&s.nodes),
        "tres": {
            "requested": empty, "consumed": empty,
            "allocated": tres_items(s.alloc.as_ref(), false),
        },
        "time": {
            "elapsed": crate::sacct_fields::elapsed_s(s.start_time_ms, s.end_time_ms, now_ms),
            "end": secs(s.end_time_ms), "start": secs(s.start_time_ms), "suspended": 0,
            "system": cpu_time(), "total": cpu_time(), "user": cpu_time(),
        },
        "exit_code": exit_code(s.exit_code, s.exit_signal, s.state()),
        "tasks": {"count": s.ntasks},
        "pid": Value::Null,
        "CPU": {"requested_frequency": {"min": 0, "max": 0}, "governor": []},
        "kill_request_user": Value::Null,
        "state": state_text(s.state(), false),
        "statistics": {"CPU": {"actual_frequency": 0}, "energy": {"consumed": 0}},
        "step": {"job_id": rec.job_id, "het": {"component": Value::Null}, "id": id, "name": s.name},
        "task": {"distribution": "Unknown"},
    })
}

fn job(rec: &pb::JobRecord, now_ms: u64, with_steps: bool) -> Value {
    let steps: Vec<Value> = if with_steps {
        rec.steps.iter().map(|s| step(rec, s, now_ms)).collect()
    } else {
        vec![]
    };
    let started = rec.start_time_ms > 0;
    // A job cancelled while pending has start = end, as Slurm records it.
    let start = if started {
        rec.start_time_ms
    } else {
        rec.end_time_ms
    };
    let mut flags = vec![];
    if started {
        flags.push("STARTED_ON_SCHEDULE");
    }
    json!({
        "account": rec.account,
        "comment": {"administrator": Value::Null, "job": Value::Null, "system": Value::Null},
        "allocation_nodes": if started { rec.nodes.len() } else { 0 },
        "array": {
            "job_id": if rec.has_array_task { rec.array_job_id } else { 0 },
            "limits": {"max": {"running": {"tasks": 0}}},
            "task": Value::Null,
            "task_id": if rec.has_array_task { json!(rec.array_task_id) } else { Value::Null },
        },
        "association": {"account": rec.account, "cluster": "berth", "partition": Value::Null, "user": rec.user},
        "cluster": "berth",
        "constraints": "",
        "container": Value::Null,
        "derived_exit_code": exit_code(rec.exit_code, rec.exit_signal, rec.state()),
        "time": {
            "elapsed": crate::sacct_fields::elapsed_s(rec.start_time_ms, rec.end_time_ms, now_ms),
            "eligible": secs(rec.eligible_time_ms),
            "end": secs(rec.end_time_ms),
            "start": secs(start),
            "submission": secs(rec.submit_time_ms),
            "suspended": 0,
            "system": cpu_time(),
            "limit": if rec.time_limit_secs == 0 { Value::Null } else { json!(rec.time_limit_secs / 60) },
            "total": cpu_time(),
            "user": cpu_time(),
        },
        "exit_code": exit_code(rec.exit_code, rec.exit_signal, rec.state()),
        "flags": flags,
        "group": crate::squeue::group_name(rec.gid),
        "het": {"job_id": 0, "job_offset": Value::Null},
        "job_id": rec.job_id,
        "name": rec.name,
        "mcs": {"label": ""},
        "nodes": if rec.nodes.is_empty() { "None assigned".to_string() } else { crate::hostlist::compress(&rec.nodes) },
        "partition": rec.partition,
        "priority": Value::Null,
        "qos": rec.qos,
        "required": {"CPUs": rec.req.as_ref().map_or(0, |t| t.cpus), "memory": rec.req.as_ref().map_or(0, |t| t.mem_mb)},
        "kill_request_user": Value::Null,
        "reservation": {"id": 0, "name": 0},
        "state": {"current": state_text(rec.state(), rec.requeued), "reason": if rec.reason.is_empty() { "None" } else { rec.reason.as_str() }},
        "steps": steps,
        "tres": {"allocated": tres_items(rec.alloc.as_ref(), true), "requested": tres_items(rec.req.as_ref(), true)},
        "user": rec.user,
        "wckey": {"wckey": "", "flags": []},
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
        "meta": {
            "plugin": {"type": "openapi/dbv0.0.38", "name": "berth"},
            "Slurm": {"version": {"major": 22, "micro": 0, "minor": 5}, "release": concat!("berth ", env!("CARGO_PKG_VERSION"))},
        },
        "errors": [],
        "jobs": jobs,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
