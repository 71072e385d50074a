//! What a job array costs the state machine and the scheduling pass until its tasks
//! start, against one job of the same shape and against as many separate jobs.
//!
//! `array_load [TASKS] [NODES] [RUNS]` (defaults 100000 64 5): NODES nodes × 8 GPUs, every
//! GPU held by a running 8-GPU job (so a pass can start nothing and only judges what is
//! pending). Three cases, each on a fresh state machine:
//! - `array`: one `--array=0-(TASKS-1)` submit of 1-GPU tasks;
//! - `one job`: one 1-GPU job;
//! - `jobs`: TASKS separate 1-GPU jobs (what a cluster without arrays would hold).
//!
//! For each it prints the submit command's encoded size, the time to apply the submit(s)
//! and the fastest and median time of RUNS scheduling passes (`plan`), then for `array` the
//! pass that starts tasks once one node's GPUs are free. Deterministic inputs.

use berth_proto::v1 as pb;
use berth_proto::v1::command::Cmd;
use berth_scheduler::scheduling::plan;
use berth_scheduler::state_machine::StateMachine;
use prost::Message as _;
use std::time::{Duration, Instant};

/// A state machine with its own log position and clock (one ms per command).
struct Cluster {
    sm: StateMachine,
    index: u64,
}

impl Cluster {
    fn apply(&mut self, c: Cmd) {
        self.index += 1;
        let command = pb::Command {
            time_ms: self.index,
            cmd: Some(c),
        };
        self.sm.apply(self.index, command);
    }

    /// `nodes` nodes of 8 GPUs, each held by one running 8-GPU job; arrays up to `tasks`.
    fn busy(nodes: u32, tasks: u32) -> Cluster {
        let mut c = Cluster {
            sm: StateMachine::default(),
            index: 0,
        };
        c.apply(Cmd::SetAccounts(pb::SetAccounts {
            toml: format!(
                "max_array_size = {}\n[[account]]\nname = \"default\"\n",
                tasks + 1
            ),
        }));
        for n in 0..nodes {
            let inventory = pb::NodeInventory {
                name: format!("n{n:04}"),
                partition: "gpu".into(),
                cpus: 128,
                memory_mb: 1 << 21,
                gpus: (0..8)
                    .map(|i| pb::Gpu {
                        uuid: format!("GPU-{n}-{i}"),
                        index: i,
                        gres_type: "h100".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            c.apply(Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inventory),
            }));
            c.apply(submit(8, None));
        }
        c.pass_applied();
        let running =
            c.sm.jobs()
                .filter(|j| j.state == pb::JobState::Running as i32)
                .count();
        assert_eq!(running, nodes as usize, "every node busy before measuring");
        c
    }

    /// One pass, its allocation applied.
    fn pass_applied(&mut self) {
        if let Some(p) = plan(&self.sm, 1, self.index) {
            if let Some(a) = p.allocate {
                self.apply(Cmd::Allocate(a));
            }
        }
    }

    /// `runs` passes (not applied): fastest and median.
    fn time_passes(&self, runs: usize) -> (Duration, Duration) {
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let p = plan(&self.sm, 1, self.index);
                let d = t.elapsed();
                assert!(
                    p.is_none_or(|p| p.allocate.is_none()),
                    "a busy cluster starts nothing"
                );
                d
            })
            .collect();
        times.sort();
        (times[0], times[times.len() / 2])
    }
}

/// A submit of a `gpus`-GPU job, or of an array of 1-GPU tasks `[0, tasks)`.
fn submit(gpus: u32, tasks: Option<u32>) -> Cmd {
    let spec = pb::JobSpec {
        name: "bench".into(),
        script: "#!/bin/sh\ntrue\n".into(),
        work_dir: "/w".into(),
        partition: "gpu".into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        gpus_per_node: gpus,
        user: "u".into(),
        array: tasks.map(|n| pb::ArraySpec {
            ranges: vec![pb::IndexRange {
                start: 0,
                end: n - 1,
                step: 1,
            }],
            max_running: 0,
        }),
        ..Default::default()
    };
    Cmd::Submit(pb::SubmitJob { spec: Some(spec) })
}

fn report(case: &str, bytes: usize, apply: Duration, passes: (Duration, Duration), jobs: usize) {
    println!(
        "{case:<8} submit {bytes:>9} B  apply {:>10.3} ms  pass min {:>9.3} ms  median {:>9.3} ms  records {jobs}",
        apply.as_secs_f64() * 1e3,
        passes.0.as_secs_f64() * 1e3,
        passes.1.as_secs_f64() * 1e3,
    );
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: TASKS NODES RUNS"))
        .collect();
    let tasks = args.first().copied().unwrap_or(100_000).max(1);
    let nodes = args.get(1).copied().unwrap_or(64).max(1);
    let runs = args.get(2).copied().unwrap_or(5).max(1) as usize;
    println!("array_load tasks={tasks} nodes={nodes} (x8 GPUs, all busy) runs={runs}");

    // One array of `tasks` tasks.
    let mut c = Cluster::busy(nodes, tasks);
    let cmd = submit(1, Some(tasks));
    let bytes = pb::Command {
        time_ms: 0,
        cmd: Some(cmd.clone()),
    }
    .encoded_len();
    let t = Instant::now();
    c.apply(cmd);
    let apply = t.elapsed();
    report(
        "array",
        bytes,
        apply,
        c.time_passes(runs),
        c.sm.jobs().count(),
    );

    // Free one node: the next pass starts 8 tasks (each split off as its own record).
    let first = c.sm.jobs().next().expect("a job").id;
    let node = c.sm.job(first).expect("job").allocations[0].node.clone();
    c.apply(Cmd::JobEnded(pb::JobEnded {
        job_id: first,
        node,
        finished: Some(pb::JobFinished {
            state: pb::JobState::Completed as i32,
            ..Default::default()
        }),
    }));
    let t = Instant::now();
    let p = plan(&c.sm, 1, c.index).expect("a plan");
    let starting = p.allocate.as_ref().map_or(0, |a| a.placements.len());
    let pass = t.elapsed();
    let a = p.allocate.expect("tasks start");
    let t = Instant::now();
    c.apply(Cmd::Allocate(a));
    let applied = t.elapsed();
    println!(
        "array    a node frees: pass {:.3} ms starts {starting} tasks, apply {:.3} ms, records {}",
        pass.as_secs_f64() * 1e3,
        applied.as_secs_f64() * 1e3,
        c.sm.jobs().count()
    );

    // One job of the same shape.
    let mut c = Cluster::busy(nodes, tasks);
    let cmd = submit(1, None);
    let bytes = pb::Command {
        time_ms: 0,
        cmd: Some(cmd.clone()),
    }
    .encoded_len();
    let t = Instant::now();
    c.apply(cmd);
    let apply = t.elapsed();
    report(
        "one job",
        bytes,
        apply,
        c.time_passes(runs),
        c.sm.jobs().count(),
    );

    // As many separate jobs as the array has tasks.
    let mut c = Cluster::busy(nodes, tasks);
    let cmd = submit(1, None);
    let bytes = pb::Command {
        time_ms: 0,
        cmd: Some(cmd.clone()),
    }
    .encoded_len()
        * tasks as usize;
    let t = Instant::now();
    for _ in 0..tasks {
        c.apply(cmd.clone());
    }
    let apply = t.elapsed();
    report(
        "jobs",
        bytes,
        apply,
        c.time_passes(runs),
        c.sm.jobs().count(),
    );
}
