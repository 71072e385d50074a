//! Fixtures shared by the scheduler's unit tests: a command at a time, a one-node job, an
//! H100 node's inventory. One place, so that a field every job or node must carry is
//! added once, not in each test module.

use berth_proto::v1::{self as pb, command::Cmd, JobState};

/// `c` as the log carries it, applied at `time_ms`.
pub fn cmd(time_ms: u64, c: Cmd) -> pb::Command {
    pb::Command {
        time_ms,
        cmd: Some(c),
    }
}

/// The command submitting `spec`.
pub fn submit(spec: pb::JobSpec) -> Cmd {
    Cmd::Submit(pb::SubmitJob { spec: Some(spec) })
}

/// A one-node, one-task job of user `u` in partition `gpu` with `gpus` GPUs.
pub fn spec(gpus: u32) -> pb::JobSpec {
    pb::JobSpec {
        name: "j".into(),
        script: "#!/bin/sh\n".into(),
        work_dir: "/w".into(),
        partition: "gpu".into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        gpus_per_node: gpus,
        user: "u".into(),
        ..Default::default()
    }
}

/// Node `name` in partition `gpu`: 16 CPUs, 1 GiB, `gpus` H100s `GPU-{name}-{i}`.
pub fn inventory(name: &str, gpus: u32) -> pb::NodeInventory {
    pb::NodeInventory {
        name: name.into(),
        partition: "gpu".into(),
        cpus: 16,
        memory_mb: 1024,
        gpus: (0..gpus)
            .map(|i| pb::Gpu {
                uuid: format!("GPU-{name}-{i}"),
                index: i,
                gres_type: "h100".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The command registering node `inventory`.
pub fn register(inventory: pb::NodeInventory) -> Cmd {
    Cmd::RegisterNode(pb::RegisterNode {
        inventory: Some(inventory),
    })
}

/// The leader placing job `job_id` on `node` with GPUs `uuids` and one CPU.
pub fn alloc(job_id: u64, node: &str, uuids: &[&str]) -> Cmd {
    let a = pb::Allocation {
        node: node.into(),
        gpu_uuids: uuids.iter().map(|s| s.to_string()).collect(),
        cpus: 1,
        ..Default::default()
    };
    Cmd::Allocate(pb::Allocate {
        term: 1,
        placements: vec![pb::Placement {
            job_id,
            allocations: vec![a],
            ..Default::default()
        }],
    })
}

/// Agent `node` reporting job `job_id` ended in `state` with exit `code`.
pub fn ended(job_id: u64, node: &str, state: JobState, code: i32) -> Cmd {
    let finished = pb::JobFinished {
        state: state as i32,
        exit_code: code,
        ..Default::default()
    };
    Cmd::JobEnded(pb::JobEnded {
        job_id,
        node: node.into(),
        finished: Some(finished),
    })
}

/// A state machine after applying `log` (command i at index and time i+1), and the
/// outcome and effects of its last command.
pub fn after(
    log: Vec<Cmd>,
) -> (
    crate::state_machine::StateMachine,
    crate::state_machine::Outcome,
    Vec<crate::state_machine::Effect>,
) {
    let mut sm = crate::state_machine::StateMachine::default();
    let mut last = (crate::state_machine::Outcome::Done, vec![]);
    for (i, c) in log.into_iter().enumerate() {
        last = sm.apply(i as u64 + 1, cmd(i as u64 + 1, c));
    }
    (sm, last.0, last.1)
}
