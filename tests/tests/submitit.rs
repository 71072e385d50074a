//! submitit (Meta's launcher), installed unmodified from PyPI into a venv, drives
//! `berth dev` through berth's own binary symlinked as `sbatch`, `squeue`, `scancel`,
//! `sacct`, `scontrol` and `srun`: `SlurmExecutor.map_array` submits one array (`--array=0-5%3`,
//! `%A_%a` paths, `--open-mode=append`, `--wckey`, `--signal`), each task runs submitit's
//! runner, which reads `SLURM_ARRAY_*`, and the results come back through sacct's
//! `-o JobID,State,NodeList --parsable2` answers. Skipped with a printed reason when
//! python3's venv or PyPI cannot be reached.

use berth_tests::{berth_dev, bin, free_port};
use std::path::PathBuf;
use std::process::Command;

/// A venv with submitit 1.5, made once per machine (pip's download is the slow part);
/// `Err` says why there is none.
fn submitit_python() -> Result<PathBuf, String> {
    berth_tests::pypi_venv(
        "submitit",
        "submitit>=1.5,<1.6",
        "import submitit; assert submitit.__version__.startswith('1.5')",
    )
}

const SCRIPT: &str = r#"
import os, sys, time, submitit

def square(x):
    env = submitit.JobEnvironment()
    return (x * x, os.environ["SLURM_ARRAY_TASK_ID"], env.array_task_id, env.job_id)

ex = submitit.SlurmExecutor(folder=sys.argv[1], max_num_timeout=0)
ex.update_parameters(time=5, use_srun=sys.argv[2] == "srun", array_parallelism=3)
jobs = ex.map_array(square, list(range(int(sys.argv[3]))))
print("IDS", " ".join(j.job_id for j in jobs), flush=True)
for j in jobs:
    got = j.result()
    # The result file is written before the task's process ends, so sacct may still say
    # RUNNING (as Slurm's does); submitit's watcher asks sacct at most every 10 minutes
    # unless forced.
    for _ in range(300):
        state = j.get_info(mode="force").get("State")
        if state not in (None, "PENDING", "RUNNING", "COMPLETING"):
            break
        time.sleep(0.1)
    print("RESULT", j.job_id, got[0], got[1], got[2], got[3], state, flush=True)
"#;

#[test]
fn submitit_map_array_runs_on_berth() {
    map_array("submitit_map_array_runs_on_berth", false, 6);
}

/// `use_srun=True` (submitit's default): each task's batch script runs submitit's worker
/// through `srun --unbuffered --output %A_%a_%t_log.out`, a step inside the array task.
#[test]
fn submitit_map_array_through_srun_runs_on_berth() {
    map_array("submitit_map_array_through_srun_runs_on_berth", true, 2);
}

/// Runs [`SCRIPT`] mapping `count` items, through srun when `use_srun`, and checks the
/// results, sacct's states and the log files.
fn map_array(test: &str, use_srun: bool, count: usize) {
    let python = match submitit_python() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("bin");
    std::fs::create_dir(&tools).unwrap();
    // srun too: submitit refuses to start without one on PATH, even with use_srun=False.
    for name in ["sbatch", "squeue", "scancel", "sacct", "scontrol", "srun"] {
        std::os::unix::fs::symlink(bin("berth"), tools.join(name)).unwrap();
    }
    let port = free_port();
    let http = free_port();
    let http_listen = format!("127.0.0.1:{http}");
    let (_dev, _) = berth_dev(
        &tmp.path().join("state"),
        port,
        &[
            "--machine",
            "dgx-h100",
            "--nodes",
            "2",
            "--http-listen",
            &http_listen,
        ],
    );
    std::fs::write(tmp.path().join("run.py"), SCRIPT).unwrap();
    // berth's tools first, and no other Slurm's after them.
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", tools.display());
    let out = Command::new(&python)
        .arg(tmp.path().join("run.py"))
        .arg(tmp.path().join("logs"))
        .arg(if use_srun { "srun" } else { "direct" })
        .arg(count.to_string())
        .current_dir(tmp.path())
        .env("PATH", path)
        .env("BERTH_SERVER", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "submitit failed:\n{stdout}\n{stderr}");
    let ids: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("IDS "))
        .unwrap_or_else(|| panic!("no ids: {stdout}"))
        .split(' ')
        .collect();
    let array = ids[0].split('_').next().unwrap();
    let want: Vec<String> = (0..count).map(|i| format!("{array}_{i}")).collect();
    assert_eq!(ids, want, "one array, one task per item");
    let results: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .collect();
    let want: Vec<String> = (0..count)
        .map(|i| format!("{array}_{i} {} {i} {i} {array}_{i} COMPLETED", i * i))
        .collect();
    assert_eq!(results, want, "{stdout}\n{stderr}");
    // The tasks' output files follow submitit's %A_%a pattern; through srun, the step's
    // task 0 appends to the batch output (submitit's worker logs its start there).
    for i in 0..count {
        let log = tmp.path().join(format!("logs/{array}_{i}_0_log.out"));
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{log:?}: {e}"));
        if use_srun {
            assert!(text.contains("submitit INFO"), "{log:?}:\n{text}");
        }
    }
}
