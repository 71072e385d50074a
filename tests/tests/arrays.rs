//! Job arrays end to end: the real `berth dev` (berthd, agents on simulated H100 nodes)
//! driven through sbatch/squeue/scancel/scontrol as a Slurm user drives them: `--array`
//! forms and `%N`, the tasks' environment and output paths, squeue's folded and unfolded
//! views, ids `12_3` and `12_[1-4]` in every tool, hold/release/update on arrays and
//! tasks, dependencies on arrays and tasks, and bad input changing nothing. Every wait
//! polls with a deadline.

use berth_tests::{berth, berth_dev, free_port, sbatch, Proc};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

struct Dev {
    _proc: Proc,
    dir: PathBuf,
    port: u16,
}

impl Dev {
    /// Two simulated 8-GPU nodes, with `extra` options for `berth dev`.
    fn start(dir: &Path, extra: &[&str]) -> Dev {
        let mut args = vec![
            "--machine",
            "dgx-h100",
            "--nodes",
            "2",
            "--kill-wait-secs",
            "2",
        ];
        args.extend_from_slice(extra);
        let port = free_port();
        let (proc, _) = berth_dev(&dir.join("state"), port, &args);
        Dev {
            _proc: proc,
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn server(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn berth(&self, args: &[&str]) -> Output {
        berth(&self.dir, &self.server(), args)
    }

    /// Runs a tool that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a tool that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn submit(&self, args: &[&str]) -> u64 {
        sbatch(&self.dir, &self.server(), args)
    }

    /// `squeue -h -o FORMAT` with `more` options, one entry per line.
    fn squeue(&self, format: &str, more: &[&str]) -> Vec<String> {
        let mut args = vec!["squeue", "-h", "-o", format];
        args.extend_from_slice(more);
        self.ok(&args).lines().map(str::to_string).collect()
    }

    /// Polls `squeue -h -o FORMAT more` until `done` holds for its lines.
    fn wait_squeue(
        &self,
        format: &str,
        more: &[&str],
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = self.squeue(format, more);
            if done(&lines) {
                return lines;
            }
            assert!(Instant::now() < deadline, "never {what}: {lines:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn set(lines: &[String]) -> BTreeSet<String> {
    lines.iter().cloned().collect()
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn array_tasks_run_with_their_index_environment_and_output_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), &[]);
    let env = "echo $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT \
               $SLURM_ARRAY_TASK_MIN $SLURM_ARRAY_TASK_MAX $SLURM_ARRAY_TASK_STEP";
    let listed = dev.submit(&["--array=1,3,5-6", "-o", "list-%A_%a.out", "--wrap", env]);
    let strided = dev.submit(&["-a", "0-99:40", "-o", "step-%A_%a.out", "--wrap", env]);
    let all = format!("{listed},{strided}");
    dev.wait_squeue(
        "%i %T",
        &["-t", "all", "-r", "-j", &all],
        "all COMPLETED",
        |l| l.len() == 7 && l.iter().all(|s| s.ends_with(" COMPLETED")),
    );
    for task in [1, 3, 5, 6] {
        let path = tmp.path().join(format!("list-{listed}_{task}.out"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(text, format!("{listed} {task} 4 1 6 1\n"));
    }
    for task in [0, 40, 80] {
        let path = tmp.path().join(format!("step-{strided}_{task}.out"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(text, format!("{strided} {task} 3 0 80 40\n"));
    }
    // scontrol shows every record of the array, each with its task.
    let shown = dev.ok(&["scontrol", "show", "job", &listed.to_string()]);
    let tasks: BTreeSet<&str> = shown
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ArrayTaskId="))
        })
        .collect();
    assert_eq!(tasks, BTreeSet::from(["1", "3", "5", "6"]), "{shown}");
    assert!(shown.contains(&format!("ArrayJobId={listed} ")), "{shown}");
    let one = dev.ok(&["scontrol", "show", "job", &format!("{listed}_5")]);
    assert_eq!(
        one.matches("JobId=").count(),
        2,
        "one record (JobId= and ArrayJobId=): {one}"
    );
    assert!(
        one.contains("ArrayTaskId=5 ") && one.contains("JobState=COMPLETED "),
        "{one}"
    );
    assert!(
        one.contains(&format!(
            "StdOut={}/list-{listed}_5.out",
            tmp.path().display()
        )),
        "{one}"
    );
}

#[test]
fn squeue_folds_pending_tasks_and_every_tool_takes_task_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), &[]);
    let a = dev.submit(&[
        "--array=0-15%4",
        "--gres=gpu:1",
        "-J",
        "sweep",
        "--wrap",
        "sleep 300",
    ]);
    let id = |task: &str| format!("{a}_{task}");
    // The throttle's reason is the pass's after the one that started the 4 (as Slurm's
    // reasons are its next scheduling cycle's): wait for both.
    let lines = dev.wait_squeue(
        "%i %t %r",
        &[],
        "4 tasks running, the rest throttled",
        |l| {
            l.iter().filter(|s| s.contains(" R ")).count() == 4
                && l.iter().any(|s| s.ends_with("JobArrayTaskLimit"))
        },
    );
    // Pending tasks fold into one line with the throttle; running ones stand alone.
    let want: Vec<String> = ["0", "1", "2", "3"]
        .iter()
        .map(|t| format!("{} R None", id(t)))
        .chain([format!("{a}_[4-15%4] PD JobArrayTaskLimit")])
        .collect();
    assert_eq!(set(&lines), set(&want), "{lines:#?}");
    // -r unfolds: 16 lines, one per task.
    let unfolded = dev.squeue("%i", &["-r"]);
    let every: BTreeSet<String> = (0..16).map(|t| id(&t.to_string())).collect();
    assert_eq!(set(&unfolded), every);
    assert_eq!(
        dev.squeue("%i|%A|%F|%K", &["-j", &id("7")]),
        [format!("{}|{a}|{a}|7", id("7"))]
    );
    assert_eq!(dev.squeue("%i", &["-j", &format!("{a}_[2-5]")]).len(), 4);
    assert!(dev.squeue("%i", &["-j", &id("99")]).is_empty());
    let shown = dev.ok(&["scontrol", "show", "job", &id("7")]);
    assert!(
        shown.starts_with(&format!(
            "JobId={a} ArrayJobId={a} ArrayTaskId=7 ArrayTaskThrottle=4 JobName=sweep"
        )),
        "{shown}"
    );

    // A bigger throttle lets two more start.
    dev.ok(&[
        "scontrol",
        "update",
        &format!("JobId={a}"),
        "ArrayTaskThrottle=6",
    ]);
    dev.wait_squeue("%i", &["-t", "R"], "6 running", |l| l.len() == 6);
    // Cancel some pending tasks and one running one.
    dev.ok(&["scancel", &format!("{a}_[8-11]"), &id("0")]);
    dev.wait_squeue("%i %t", &[], "task 0 gone and 6 started", |l| {
        !l.contains(&format!("{} R", id("0"))) && l.contains(&format!("{} R", id("6")))
    });
    let folded = dev.squeue("%i", &["-t", "PD"]);
    assert_eq!(folded, [format!("{a}_[7,12-15%6]")]);
    // Hold one pending task: it gets a line of its own, held.
    dev.ok(&["scontrol", "hold", &id("12")]);
    let pending = dev.squeue("%i %r", &["-t", "PD"]);
    assert_eq!(
        set(&pending),
        strings(&[
            &format!("{a}_[7,13-15%6] JobArrayTaskLimit"),
            &format!("{} JobHeldUser", id("12"))
        ]),
        "{pending:#?}"
    );
    // A time limit on one pending task; the others keep theirs.
    dev.ok(&[
        "scontrol",
        "update",
        &format!("JobId={}", id("13")),
        "TimeLimit=5",
    ]);
    let limits = dev.squeue("%i %l", &["-t", "PD", "-r"]);
    assert!(
        limits.contains(&format!("{} 5:00", id("13"))),
        "{limits:#?}"
    );
    assert!(
        limits.contains(&format!("{} UNLIMITED", id("14"))),
        "{limits:#?}"
    );
    // Hold and release the whole array.
    dev.ok(&["scontrol", "hold", &a.to_string()]);
    let held = dev.squeue("%r", &["-t", "PD", "-r"]);
    assert!(
        held.len() == 5 && held.iter().all(|r| r == "JobHeldUser"),
        "{held:#?}"
    );
    dev.ok(&["scontrol", "release", &a.to_string()]);
    let released = dev.squeue("%r", &["-t", "PD", "-r"]);
    assert!(released.iter().all(|r| r != "JobHeldUser"), "{released:#?}");
    // Cancel the whole array: nothing of it is left in the queue.
    dev.ok(&["scancel", &a.to_string()]);
    dev.wait_squeue("%i", &[], "the queue empty", |l| l.is_empty());
    let ended = dev.squeue("%i %T", &["-t", "all", "-j", &id("15")]);
    assert_eq!(ended, [format!("{} CANCELLED", id("15"))]);
}

#[test]
fn dependencies_on_arrays_tasks_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), &[]);
    // Task 0 succeeds, tasks 1 and 2 fail; each waits for a file to end, so the
    // dependents are submitted while it runs.
    let a = dev.submit(&[
        "--array=0-2",
        "--wrap",
        "while [ ! -e go ]; do sleep 0.1; done; exit $SLURM_ARRAY_TASK_ID",
    ]);
    let on_all = dev.submit(&["-d", &format!("afterok:{a}"), "--wrap", "true"]);
    let on_task = dev.submit(&["-d", &format!("afterok:{a}_0"), "--wrap", "true"]);
    let on_any = dev.submit(&["-d", &format!("afterany:{a}"), "--wrap", "true"]);
    let corr = dev.submit(&[
        "--array=0-2",
        "-d",
        &format!("aftercorr:{a}"),
        "--wrap",
        "true",
    ]);
    let solo1 = dev.submit(&[
        "-J",
        "solo",
        "-d",
        "singleton",
        "--wrap",
        "while [ ! -e go ]; do sleep 0.1; done",
    ]);
    let solo2 = dev.submit(&["-J", "solo", "-d", "singleton", "--wrap", "true"]);
    dev.wait_squeue(
        "%i %r",
        &["-j", &format!("{on_task},{solo2}")],
        "dependents waiting",
        |l| l.len() == 2 && l.iter().all(|s| s.ends_with(" Dependency")),
    );
    std::fs::write(tmp.path().join("go"), "").unwrap();
    let ids = format!("{a},{on_all},{on_task},{on_any},{corr},{solo1},{solo2}");
    let want = strings(&[
        &format!("{a}_0 COMPLETED"),
        &format!("{a}_1 FAILED NonZeroExitCode"),
        &format!("{a}_2 FAILED NonZeroExitCode"),
        &format!("{on_all} PENDING DependencyNeverSatisfied"),
        &format!("{on_task} COMPLETED"),
        &format!("{on_any} COMPLETED"),
        &format!("{corr}_0 COMPLETED"),
        &format!("{corr}_[1-2] PENDING DependencyNeverSatisfied"),
        &format!("{solo1} COMPLETED"),
        &format!("{solo2} COMPLETED"),
    ]);
    let got = dev.wait_squeue(
        "%i %T %r",
        &["-t", "all", "-j", &ids],
        "dependencies judged",
        |l| {
            let got: BTreeSet<String> = l
                .iter()
                .map(|s| s.strip_suffix(" None").unwrap_or(s).to_string())
                .collect();
            got == want
        },
    );
    assert_eq!(got.len(), want.len());
    // A condition on a task that does not exist is refused at submit.
    let err = dev.fails(&["sbatch", "-d", &format!("afterok:{a}_7"), "--wrap", "true"]);
    assert!(err.contains(&format!("job {a}_7 does not exist")), "{err}");
}

#[test]
fn bad_array_input_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let accounts = tmp.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        "max_array_size = 50\n[[account]]\nname = \"default\"\n",
    )
    .unwrap();
    let dev = Dev::start(tmp.path(), &["--accounts", accounts.to_str().unwrap()]);
    let a = dev.submit(&["--array=0-9", "-H", "--wrap", "true"]);
    let before = dev.ok(&["squeue", "-t", "all", "-r", "-o", "%i %T %r %l"]);
    let bad: Vec<(Vec<String>, String)> = [
        (
            vec!["sbatch", "--array=0-", "--wrap", "true"],
            "Invalid job array specification '0-'",
        ),
        (
            vec!["sbatch", "--array=5-1", "--wrap", "true"],
            "5-1: 1 is below 5",
        ),
        (
            vec!["sbatch", "--array=1-%2", "--wrap", "true"],
            "Invalid job array specification '1-%2'",
        ),
        (
            vec!["sbatch", "--array=", "--wrap", "true"],
            "no task indexes",
        ),
        (
            vec!["sbatch", "--array=0-50", "--wrap", "true"],
            "task index 50 is not below MaxArraySize=50",
        ),
        (vec!["scancel", "12_x"], "Invalid job id 12_x"),
        (vec!["scancel", "12_[3-1]"], "Invalid job id 12_[3-1]"),
        (vec!["scancel", "999_1"], "Kill job error on job id 999_1"),
        (vec!["scontrol", "hold", "12_["], "Invalid job id 12_["),
        (
            vec!["scontrol", "update", "JobId=1", "ArrayTaskThrottle=x"],
            "Invalid ArrayTaskThrottle value: x",
        ),
        (
            vec!["scontrol", "update", "JobId=1", "Partition=x"],
            "update of Partition= is not supported",
        ),
        (vec!["squeue", "-j", "1_[", ""], "Invalid job id 1_["),
        (
            vec!["sbatch", "-d", "afterok:1_x", "--wrap", "true"],
            "the task must be one index",
        ),
    ]
    .into_iter()
    .map(|(args, want)| {
        (
            args.iter().map(|s| s.to_string()).collect(),
            want.to_string(),
        )
    })
    .collect();
    for (i, (args, want)) in bad.iter().enumerate() {
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        let err = dev.fails(&args);
        assert!(err.contains(want), "#{i} {args:?}: want {want:?} in {err}");
    }
    let missing = dev.fails(&["scontrol", "show", "job", &format!("{a}_10")]);
    assert!(
        missing.contains(&format!("Job {a}_10 not found")),
        "{missing}"
    );
    let after = dev.ok(&["squeue", "-t", "all", "-r", "-o", "%i %T %r %l"]);
    assert_eq!(before, after, "bad input changed the queue");
    assert_eq!(dev.squeue("%i", &["-t", "all"]), [format!("{a}_[0-9]")]);
}

/// `scontrol requeue`: a running job is killed and runs again under its id with
/// `SLURM_RESTART_COUNT` counting up (its output appended with `--open-mode=append`); a
/// finished array task is queued again by its `12_3` id; a `--no-requeue` job and a
/// pending one are refused with Slurm's words and stay as they were.
#[test]
fn scontrol_requeue_runs_a_job_again_under_its_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), &[]);
    let out = tmp.path().join("requeued.txt");
    let out_s = out.to_str().unwrap();
    let id = dev.submit(&[
        "--open-mode=append",
        "-o",
        out_s,
        "--wrap",
        "echo run $SLURM_JOB_ID restart $SLURM_RESTART_COUNT; sleep 60",
    ]);
    let read = |what: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = std::fs::read_to_string(&out).unwrap_or_default();
            if t.contains(want) {
                return t;
            }
            assert!(Instant::now() < deadline, "never {what}: {t:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    read("the first run", &format!("run {id} restart 0\n"));
    dev.ok(&["scontrol", "requeue", &id.to_string()]);
    let text = read("the second run", &format!("run {id} restart 1\n"));
    assert_eq!(text, format!("run {id} restart 0\nrun {id} restart 1\n"));
    let shown = dev.ok(&["scontrol", "show", "job", &id.to_string()]);
    assert!(
        shown.contains("JobState=RUNNING") && shown.contains("Restarts=1 "),
        "{shown}"
    );
    dev.ok(&["scancel", &id.to_string()]);

    // A finished array task, by its task id.
    let task_out = tmp.path().join("task-%a.txt");
    let array = dev.submit(&[
        "--array=0-1",
        "--open-mode=append",
        "-o",
        task_out.to_str().unwrap(),
        "--wrap",
        "echo task $SLURM_ARRAY_TASK_ID restart $SLURM_RESTART_COUNT",
    ]);
    let task1 = tmp.path().join("task-1.txt");
    let wait_file = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = std::fs::read_to_string(&task1).unwrap_or_default();
            if t.contains(want) {
                return t;
            }
            assert!(Instant::now() < deadline, "never {want:?}: {t:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_file("task 1 restart 0\n");
    dev.wait_squeue(
        "%i %T",
        &["-j", &array.to_string()],
        "the array finished",
        |l| l.len() == 2 && l.iter().all(|l| l.ends_with(" COMPLETED")),
    );
    dev.ok(&["scontrol", "requeue", &format!("{array}_1")]);
    let text = wait_file("task 1 restart 1\n");
    assert_eq!(text, "task 1 restart 0\ntask 1 restart 1\n");

    // Refusals change nothing.
    let no = dev.submit(&["--no-requeue", "--wrap", "sleep 60"]);
    dev.wait_squeue(
        "%i %t",
        &["-j", &no.to_string()],
        "the --no-requeue job runs",
        |l| l.iter().any(|l| l.ends_with(" R")),
    );
    let err = dev.fails(&["scontrol", "requeue", &no.to_string()]);
    assert!(
        err.contains("Requested operation is presently disabled"),
        "{err}"
    );
    let held = dev.submit(&["-H", "--wrap", "true"]);
    let err = dev.fails(&["scontrol", "requeue", &held.to_string()]);
    assert!(err.contains("Job is pending execution"), "{err}");
    let shown = dev.ok(&["scontrol", "show", "job", &no.to_string()]);
    assert!(
        shown.contains("JobState=RUNNING") && shown.contains("Restarts=0 "),
        "{shown}"
    );
    dev.ok(&["scancel", &no.to_string(), &held.to_string()]);
}
