//! Fixtures shared by the scheduler's unit tests: a command at a time, a one-node job, an
//! H100 node's inventory. One place, so that a field every job or node must carry is
//! added once, not in each test module.

use berth_proto::v1::{self as pb, command::Cmd};

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
