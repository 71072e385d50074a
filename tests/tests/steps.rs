//! Job steps end to end: `berth dev` with two simulated nodes, a `-N 2 -n 4` batch job
//! whose script runs `srun` (berth's binary under that name): the four tasks run two per
//! node with their `SLURM_*` step variables, `-l` labels their output, which streams back
//! into the batch script's output, and srun exits with the worst task's code, naming the
//! node and task that failed; `squeue -s` and `scontrol show step` list a running step,
//! and an operator drains a node and resumes it.

use berth_tests::{berth, berth_dev, bin, free_port, poll, sbatch};

#[test]
fn srun_runs_tasks_on_every_allocated_node_and_returns_the_worst_exit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let srun = dir.join("srun");
    std::os::unix::fs::symlink(bin("berth"), &srun).expect("srun symlink");
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let (_dev, _) = berth_dev(
        &dir.join("state"),
        port,
        &["--nodes", "2", "--http-listen", "off"],
    );
    let out = dir.join("out.txt");
    let script = dir.join("job.sh");
    let srun = srun.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n\
             {srun} -l bash -c 'echo task $SLURM_PROCID/$SLURM_NTASKS on $SLURMD_NODENAME local $SLURM_LOCALID node $SLURM_NODEID step $SLURM_STEP_ID of $SLURM_STEP_NODELIST'\n\
             echo rc=$?\n\
             {srun} -n 3 bash -c 'exit $SLURM_PROCID'\n\
             echo rc=$?\n\
             {srun} -n 2 sleep 60\n"
        ),
    )
    .expect("script");
    let id = sbatch(
        dir,
        &server,
        &[
            "-N",
            "2",
            "-n",
            "4",
            "-o",
            out.to_str().expect("utf-8"),
            script.to_str().expect("utf-8"),
        ],
    );
    let text = poll(&format!("job {id}'s steps done"), 60, || {
        let t = std::fs::read_to_string(&out).ok()?;
        (t.matches("rc=").count() == 2).then_some(t)
    });
    for want in [
        "0: task 0/4 on node1 local 0 node 0 step 0 of node1,node2\n",
        "1: task 1/4 on node1 local 1 node 0 step 0 of node1,node2\n",
        "2: task 2/4 on node2 local 0 node 1 step 0 of node1,node2\n",
        "3: task 3/4 on node2 local 1 node 1 step 0 of node1,node2\n",
        "rc=0\n",
        // -n 3 over 2 nodes: tasks 0-1 on node1, 2 on node2; the worst code is 2.
        "srun: error: node1: task 1: Exited with exit code 1\n",
        "srun: error: node2: task 2: Exited with exit code 2\n",
        "rc=2\n",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
    // The third step runs: squeue -s and scontrol show step list it, as Slurm does.
    let out = |args: &[&str]| {
        let o = berth(dir, &server, args);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let step = format!("{id}.2");
    let listed = poll("squeue -s lists the running step", 30, || {
        let (ok, text) = out(&["squeue", "-s", "-h"]);
        (ok && text.contains(&step)).then_some(text)
    });
    let line = listed
        .lines()
        .find(|l| l.contains(&step))
        .unwrap_or_default();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.first(), Some(&step.as_str()), "{listed}");
    assert_eq!(cols.get(1), Some(&"sleep"), "{listed}");
    assert_eq!(cols.last(), Some(&"node[1-2]"), "{listed}");
    let (ok, header) = out(&["squeue", "-s", "-j", &id.to_string()]);
    assert!(ok, "{header}");
    assert!(
        header.starts_with("         STEPID     NAME PARTITION     USER      TIME NODELIST\n"),
        "{header}"
    );
    let (ok, shown) = out(&["scontrol", "show", "step", &step]);
    assert!(ok, "{shown}");
    assert!(
        shown.starts_with(&format!("StepId={step} UserId=")),
        "{shown}"
    );
    assert!(
        shown.contains("   Nodes=2 CPUs=2 Tasks=2 Name=sleep "),
        "{shown}"
    );
    let (ok, missing) = out(&["scontrol", "show", "step", &format!("{id}.9")]);
    assert!(
        !ok && missing.contains(&format!("Job step {id}.9 not found")),
        "{missing}"
    );

    // An operator drains a node with a reason and resumes it (berth dev's user is admin).
    let bad = berth(
        dir,
        &server,
        &["scontrol", "update", "NodeName=node2", "State=DRAIN"],
    );
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr)
                .contains("You must specify a reason when DOWNING or DRAINING a node"),
        "{bad:?}"
    );
    let drained = berth(
        dir,
        &server,
        &[
            "scontrol",
            "update",
            "NodeName=node2",
            "State=DRAIN",
            "Reason=fan check",
        ],
    );
    assert!(drained.status.success(), "{drained:?}");
    let (_, reasons) = out(&["sinfo", "-R", "-h"]);
    assert!(
        reasons.contains("fan check") && reasons.contains("node2"),
        "{reasons}"
    );
    let resumed = berth(
        dir,
        &server,
        &["scontrol", "update", "NodeName=node2", "State=RESUME"],
    );
    assert!(resumed.status.success(), "{resumed:?}");
    let (_, reasons) = out(&["sinfo", "-R", "-h"]);
    assert!(!reasons.contains("node2"), "{reasons}");
    let unknown = berth(
        dir,
        &server,
        &["scontrol", "update", "NodeName=nosuch", "State=RESUME"],
    );
    assert!(
        !unknown.status.success()
            && String::from_utf8_lossy(&unknown.stderr).contains("Invalid node name specified"),
        "{unknown:?}"
    );
    let _ = berth(dir, &server, &["scancel", &id.to_string()]);
}
