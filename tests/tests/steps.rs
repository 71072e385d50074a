//! Job steps end to end: `berth dev` with two simulated nodes, a `-N 2 -n 4` batch job
//! whose script runs `srun` (berth's binary under that name): the four tasks run two per
//! node with their `SLURM_*` step variables, `-l` labels their output, which streams back
//! into the batch script's output, and srun exits with the worst task's code, naming the
//! node and task that failed; `squeue -s` and `scontrol show step` list a running step,
//! and an operator drains a node and resumes it.

use berth_tests::{berth, free_port, poll, sbatch};

#[test]
fn srun_runs_tasks_on_every_allocated_node_and_returns_the_worst_exit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let srun = berth_tests::tool(dir, "srun");
    let (_dev, server) = berth_tests::two_node_dev(dir);
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

/// Interactive allocations: `srun` outside any job makes one, runs its step on both nodes,
/// streams the output and ends the job with the step's exit; `salloc` runs its command
/// here with the allocation's variables, so `srun` inside it launches there, and the job
/// ends COMPLETED or FAILED with the command's exit; `scancel` revokes a running salloc.
#[test]
fn srun_outside_a_job_and_salloc_hold_an_allocation_for_their_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let srun = berth_tests::tool(dir, "srun");
    let salloc = berth_tests::tool(dir, "salloc");
    let (_dev, server) = berth_tests::two_node_dev(dir);
    let text = |o: &std::process::Output| {
        (
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let show = |id: &str| {
        let o = berth(dir, &server, &["scontrol", "show", "job", id]);
        text(&o).0
    };

    // srun alone: a job of its own, named for the command, gone when the step is.
    let o = berth_tests::cli(
        &srun,
        dir,
        &server,
        &[
            "-N",
            "2",
            "-l",
            "-t",
            "5",
            "bash",
            "-c",
            "echo on $SLURMD_NODENAME in $SLURM_JOB_ID; exit $SLURM_NODEID",
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        out.contains("0: on node1 in ") && out.contains("1: on node2 in "),
        "{out}"
    );
    assert!(
        err.contains("srun: error: node2: task 1: Exited with exit code 1"),
        "{err}"
    );
    let id = out
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .expect("a job id")
        .to_string();
    let job = poll("srun's job ends", 30, || {
        let s = show(&id);
        s.contains("JobState=FAILED").then_some(s)
    });
    for want in [
        "JobName=bash\n",
        "BatchFlag=0",
        "ExitCode=1:0",
        "NumNodes=2 ",
        "TimeLimit=00:05:00",
    ] {
        assert!(job.contains(want), "want {want:?} in\n{job}");
    }

    // salloc runs its command here; srun inside it uses the allocation.
    let o = berth_tests::cli(
        &salloc,
        dir,
        &server,
        &[
            "-N",
            "2",
            "bash",
            "-c",
            &format!("echo nodes $SLURM_JOB_NODELIST job $SLURM_JOB_ID; {} hostname >/dev/null && {} -n 2 true; exit 3", srun.display(), srun.display()),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(out.starts_with("nodes node1,node2 job "), "{out}");
    let id = out.trim().rsplit(' ').next().expect("job id").to_string();
    assert!(
        err.contains(&format!("salloc: Granted job allocation {id}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("salloc: Relinquishing job allocation {id}")),
        "{err}"
    );
    let job = poll("salloc's job ends", 30, || {
        let s = show(&id);
        s.contains("JobState=FAILED").then_some(s)
    });
    assert!(job.contains("ExitCode=3:0"), "{job}");
    let o = berth_tests::cli(&salloc, dir, &server, &["true"]);
    assert!(o.status.success(), "{:?}", text(&o));

    // scancel revokes a running salloc: its command is stopped and salloc says so.
    let mut held = berth_tests::Proc(
        berth_tests::cli_command(
            &salloc,
            dir,
            &server,
            &["-J", "held", "-t", "2", "sleep", "300"],
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("salloc"),
    );
    let id = poll("salloc's job runs", 30, || {
        let o = berth(
            dir,
            &server,
            &["squeue", "-h", "-n", "held", "-t", "R", "-o", "%i"],
        );
        let t = text(&o).0.trim().to_string();
        (!t.is_empty()).then_some(t)
    });
    let o = berth(dir, &server, &["scancel", &id]);
    assert!(o.status.success(), "{:?}", text(&o));
    let status = poll("salloc exits", 30, || held.0.try_wait().ok().flatten());
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut held.0.stderr.take().expect("stderr"), &mut err).ok();
    assert!(
        err.contains(&format!("salloc: Job allocation {id} has been revoked.")),
        "{err}"
    );

    // Bad input changes nothing: a batch-only option, and a job option inside a job.
    let o = berth_tests::cli(&salloc, dir, &server, &["--array=1-2", "true"]);
    assert!(
        !o.status.success() && text(&o).1.contains("unrecognized option"),
        "{:?}",
        text(&o)
    );
    let o = berth_tests::cli_command(&srun, dir, &server, &["-p", "gpu", "true"])
        .env("SLURM_JOB_ID", &id)
        .output()
        .expect("srun");
    assert!(
        !o.status.success() && text(&o).1.contains("--partition shapes a new allocation"),
        "{:?}",
        text(&o)
    );
}

/// `--signal=[B:]SIG@SECS` before the time limit: with `B:` the batch shell alone gets it;
/// without, every step's tasks on every node do and the batch shell does not, as Slurm's
/// sbatch(1) says. A one-minute limit with SECS=57 signals about 3 s after the start.
#[test]
fn signal_reaches_the_batch_shell_or_the_steps_before_the_time_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let srun = berth_tests::tool(dir, "srun");
    let (_dev, server) = berth_tests::two_node_dev(dir);
    let batch_out = dir.join("batch.txt");
    let batch = dir.join("batch.sh");
    std::fs::write(
        &batch,
        "#!/bin/bash\ntrap 'echo shell got USR1; exit 0' USR1\nwhile :; do sleep 0.2; done\n",
    )
    .expect("script");
    let b = sbatch(
        dir,
        &server,
        &[
            "-t",
            "1",
            "--signal=B:USR1@57",
            "-o",
            batch_out.to_str().expect("utf-8"),
            batch.to_str().expect("utf-8"),
        ],
    );
    let steps_out = dir.join("steps.txt");
    let steps = dir.join("steps.sh");
    std::fs::write(
        &steps,
        format!(
            "#!/bin/bash\ntrap 'echo shell got USR2' USR2\n\
             {} -l bash -c 'trap \"echo task got USR2 on $SLURMD_NODENAME; exit 0\" USR2; while :; do sleep 0.2; done'\n\
             echo step rc=$?\n",
            srun.display()
        ),
    )
    .expect("script");
    let s = sbatch(
        dir,
        &server,
        &[
            "-N",
            "2",
            "-t",
            "1",
            "--signal=USR2@57",
            "-o",
            steps_out.to_str().expect("utf-8"),
            steps.to_str().expect("utf-8"),
        ],
    );
    let text = poll("the batch shell got USR1", 40, || {
        let t = std::fs::read_to_string(&batch_out).ok()?;
        t.contains("shell got USR1").then_some(t)
    });
    assert_eq!(text, "shell got USR1\n");
    let text = poll("both step tasks got USR2", 40, || {
        let t = std::fs::read_to_string(&steps_out).ok()?;
        t.contains("step rc=").then_some(t)
    });
    for want in [
        "0: task got USR2 on node1\n",
        "1: task got USR2 on node2\n",
        "step rc=0\n",
    ] {
        assert!(text.contains(want), "want {want:?} in\n{text}");
    }
    assert!(!text.contains("shell got USR2"), "{text}");
    for id in [b, s] {
        let _ = berth(dir, &server, &["scancel", &id.to_string()]);
    }
}

/// An agent that dies mid-step: berthd (a real `berthd` with two `berth-agent`s here, so
/// one can be killed) marks its node down after `--node-timeout-secs`, the job ends
/// NODE_FAIL naming the node, the step's task on the live node is killed, and `srun`
/// reports the dead node's tasks as lost.
#[test]
fn an_agent_dying_mid_step_fails_the_step_and_kills_the_rest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let srun = berth_tests::tool(dir, "srun");
    let port = free_port();
    let _berthd = berth_tests::replica(dir, 1, &[port], &["--node-timeout-secs", "2"]);
    let server = format!("http://127.0.0.1:{port}");
    let _cpu1 = berth_tests::cpu_agent_named(dir, &server, "cpu1");
    let cpu2 = berth_tests::cpu_agent_named(dir, &server, "cpu2");
    poll("both agents registered", 60, || {
        let o = berth(dir, &server, &["sinfo", "-h", "-N", "-o", "%N %t"]);
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        (t.contains("cpu1 idle") && t.contains("cpu2 idle")).then_some(())
    });
    // A sleep nothing else on this machine runs, to find the task's process by.
    let marker = "297.125";
    let out = dir.join("out.txt");
    let script = dir.join("job.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n{} -l bash -c 'echo up on $SLURMD_NODENAME; exec sleep {marker}'\necho srun rc=$?\n",
            srun.display()
        ),
    )
    .expect("script");
    let id = sbatch(
        dir,
        &server,
        &[
            "-N",
            "2",
            "-o",
            out.to_str().expect("utf-8"),
            script.to_str().expect("utf-8"),
        ],
    );
    poll("both tasks run", 60, || {
        let t = std::fs::read_to_string(&out).ok()?;
        (t.contains("0: up on cpu1") && t.contains("1: up on cpu2")).then_some(())
    });
    let sleeping = || {
        std::process::Command::new("pgrep")
            .args(["-f", &format!("^sleep {marker}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0)
    };
    assert_eq!(sleeping(), 2, "one task per node");
    // srun keeps streaming a step that outlives its first moments (its watch's first
    // view, from before the step existed, is no end).
    std::thread::sleep(std::time::Duration::from_secs(4));
    let early = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(!early.contains("srun:"), "{early}");
    assert_eq!(sleeping(), 2, "{early}");
    drop(cpu2);
    let shown = poll("the job ends NODE_FAIL", 60, || {
        let o = berth(dir, &server, &["scontrol", "show", "job", &id.to_string()]);
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.contains("JobState=NODE_FAIL").then_some(t)
    });
    assert!(shown.contains("node cpu2 down"), "{shown}");
    poll("the live node's task is killed", 60, || {
        (sleeping() == 0).then_some(())
    });
    let text = poll("srun reports the lost task", 60, || {
        let t = std::fs::read_to_string(&out).ok()?;
        t.contains("cpu2: tasks 1: lost").then_some(t)
    });
    assert!(text.contains("node cpu2 down"), "{text}");
}

/// `--cpu-bind`: the agent really pins each task (the kernel's `Cpus_allowed_list` shows
/// one CPU per task with `threads`, different CPUs where the host has them), `verbose`
/// reports each binding as Slurm's task/affinity plugin words it, the tasks see the
/// `SLURM_CPU_BIND*` variables, and a binding the host cannot give, or a value no type
/// reads as, runs nothing and says why.
#[test]
fn cpu_bind_pins_each_task_and_refuses_what_the_host_cannot_give() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let srun = berth_tests::tool(dir, "srun");
    let (_dev, server) = berth_tests::two_node_dev(dir);
    let run = |args: &[&str]| {
        let o = berth_tests::cli(&srun, dir, &server, args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&[
        "-N1",
        "-n2",
        "-l",
        "-t",
        "5",
        "--cpu-bind=verbose,threads",
        "bash",
        "-c",
        "grep Cpus_allowed_list: /proc/self/status; echo type=$SLURM_CPU_BIND_TYPE",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let allowed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("Cpus_allowed_list:").nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(allowed.len(), 2, "{out}");
    for cpus in &allowed {
        assert!(
            cpus.parse::<u32>().is_ok(),
            "one CPU per task, got {cpus:?}:\n{out}"
        );
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if host_cpus >= 2 {
        assert_ne!(allowed[0], allowed[1], "two tasks, two CPUs:\n{out}");
    }
    assert!(
        out.contains("0: type=mask_cpu:") && out.contains("1: type=mask_cpu:"),
        "{out}"
    );
    for task in ["task  0  0 [", "task  1  1 ["] {
        assert!(
            err.lines()
                .any(|l| l.contains("cpu-bind-threads=MASK - node1, ")
                    && l.contains(task)
                    && l.ends_with(" set")),
            "want the verbose line for {task:?} in:\n{err}"
        );
    }

    // CPU 1023 is on no test host: the node refuses the launch, naming itself.
    let (code, out, err) = run(&["-N1", "-t", "5", "--cpu-bind=map_cpu:1023", "true"]);
    assert_ne!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains(
            "launch refused on node1: --cpu-bind=map_cpu: CPU 1023 is not one this node can use"
        ),
        "{err}"
    );
    // A value no binding type reads as: refused before any job is made.
    let (code, _, err) = run(&["-N1", "--cpu-bind=boards", "true"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("unrecognized --cpu-bind argument \"boards\""),
        "{err}"
    );
    let queue = berth(dir, &server, &["squeue", "-h", "-t", "all"]);
    let listed = String::from_utf8_lossy(&queue.stdout);
    assert_eq!(
        listed.lines().count(),
        2,
        "only the two srun jobs exist:\n{listed}"
    );
}

/// Ctrl-C at srun: one prints Slurm's notice and the tasks run on; a second within a
/// second cancels the step through berthd, which has every node's agent kill its tasks;
/// srun exits non-zero and its allocation ends.
#[test]
fn ctrl_c_twice_cancels_the_step_on_every_node() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let srun = berth_tests::tool(dir, "srun");
    let (_dev, server) = berth_tests::two_node_dev(dir);
    // A sleep no other test runs, to find the tasks by.
    let marker = "61.4242";
    let script = format!("echo started; exec sleep {marker}");
    let mut child = berth_tests::cli_command(
        &srun,
        dir,
        &server,
        &["-N", "2", "-t", "5", "bash", "-c", &script],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("srun starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    for _ in 0..2 {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("both tasks start");
        assert_eq!(line, "started");
    }
    let tasks_alive = || {
        std::process::Command::new("pgrep")
            .args(["-f", &format!("^sleep {marker}$")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0)
    };
    assert_eq!(tasks_alive(), 2, "one task per node");
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).expect("signal srun");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "one Ctrl-C stops nothing"
    );
    assert_eq!(tasks_alive(), 2);
    kill(pid, Signal::SIGINT).expect("signal srun");
    std::thread::sleep(std::time::Duration::from_millis(200));
    kill(pid, Signal::SIGINT).expect("signal srun");
    let status = poll("srun exits after the second Ctrl-C", 30, || {
        child.try_wait().expect("wait")
    });
    assert!(!status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut err).unwrap();
    assert!(
        err.contains("srun: interrupt (one more within 1 sec to abort)"),
        "{err}"
    );
    assert!(err.contains("srun: sending Ctrl-C to StepId="), "{err}");
    poll("every task killed", 30, || {
        (tasks_alive() == 0).then_some(())
    });
    poll("srun's allocation ends", 30, || {
        let o = berth(dir, &server, &["squeue", "-h"]);
        (o.status.success() && o.stdout.is_empty()).then_some(())
    });
}
