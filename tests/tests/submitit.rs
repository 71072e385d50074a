//! submitit (Meta's launcher), installed unmodified from PyPI into a venv, drives
//! `berth dev` through berth's own binary symlinked as `sbatch`, `squeue`, `scancel`,
//! `sacct` and `scontrol`: `SlurmExecutor.map_array` submits one array (`--array=0-5%3`,
//! `%A_%a` paths, `--open-mode=append`, `--wckey`, `--signal`), each task runs submitit's
//! runner, which reads `SLURM_ARRAY_*`, and the results come back through sacct's
//! `-o JobID,State,NodeList --parsable2` answers. Skipped with a printed reason when
//! python3's venv or PyPI cannot be reached.

use berth_tests::{berth_dev, bin, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A venv with submitit 1.5, made once per machine (pip's download is the slow part);
/// `Err` says why there is none.
fn submitit_python() -> Result<PathBuf, String> {
    let venv = std::env::temp_dir().join("berth-test-submitit-venv");
    let python = venv.join("bin/python");
    let has = |py: &Path| {
        Command::new(py)
            .args([
                "-c",
                "import submitit; assert submitit.__version__.startswith('1.5')",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--timeout", "20", "submitit>=1.5,<1.6"])
        .output()
        .map_err(|e| format!("pip not runnable: {e}"))?;
    if !pip.status.success() || !has(&python) {
        return Err(format!(
            "pip install submitit failed (PyPI unreachable?): {}",
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    Ok(python)
}

const SCRIPT: &str = r#"
import os, sys, submitit

def square(x):
    env = submitit.JobEnvironment()
    return (x * x, os.environ["SLURM_ARRAY_TASK_ID"], env.array_task_id, env.job_id)

ex = submitit.SlurmExecutor(folder=sys.argv[1], max_num_timeout=0)
ex.update_parameters(time=5, use_srun=False, array_parallelism=3)
jobs = ex.map_array(square, list(range(6)))
print("IDS", " ".join(j.job_id for j in jobs), flush=True)
for j in jobs:
    got = j.result()
    # submitit's watcher asks sacct at most every 10 minutes unless forced.
    state = j.get_info(mode="force").get("State")
    print("RESULT", j.job_id, got[0], got[1], got[2], got[3], state, flush=True)
"#;

#[test]
fn submitit_map_array_runs_on_berth() {
    let python = match submitit_python() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED submitit_map_array_runs_on_berth: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("bin");
    std::fs::create_dir(&tools).unwrap();
    for name in ["sbatch", "squeue", "scancel", "sacct", "scontrol"] {
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
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&python)
        .arg(tmp.path().join("run.py"))
        .arg(tmp.path().join("logs"))
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
    let want: Vec<String> = (0..6).map(|i| format!("{array}_{i}")).collect();
    assert_eq!(ids, want, "one array, one task per item");
    let results: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .collect();
    let want: Vec<String> = (0..6)
        .map(|i| format!("{array}_{i} {} {i} {i} {array}_{i} COMPLETED", i * i))
        .collect();
    assert_eq!(results, want, "{stdout}\n{stderr}");
    // The tasks' output files follow submitit's %A_%a pattern.
    for i in 0..6 {
        let log = tmp.path().join(format!("logs/{array}_{i}_0_log.out"));
        assert!(log.exists(), "{log:?} missing");
    }
}
