//! dask-jobqueue 0.9, installed unmodified from PyPI into a venv, drives `berth dev`
//! through berth's binary symlinked as `sbatch`, `squeue` and `scancel`: `SLURMCluster`
//! writes its worker script (`#SBATCH -J dask-worker -n 1 --cpus-per-task=1 --mem=954M
//! -t 00:10:00 -o/-e …%J…`), `scale(jobs=2)` submits two workers, both connect back to
//! the scheduler in this test's process and compute a map, and closing the cluster
//! cancels them. Skipped with a printed reason when python3's venv or PyPI cannot be
//! reached.

use berth_tests::{berth, bin, poll};

const SCRIPT: &str = r#"
import sys
from dask_jobqueue import SLURMCluster
from distributed import Client
cluster = SLURMCluster(cores=1, memory="1GB", processes=1, walltime="00:10:00",
                       log_directory=sys.argv[1], python=sys.executable)
cluster.scale(jobs=2)
client = Client(cluster)
client.wait_for_workers(2, timeout=90)
futures = client.map(lambda x: x * x, range(10))
print("RESULT", sum(f.result() for f in futures), flush=True)
print("WORKERS", len(client.scheduler_info()["workers"]), flush=True)
client.close()
cluster.close()
print("CLOSED", flush=True)
"#;

#[test]
fn dask_jobqueue_slurm_cluster_runs_its_workers_on_berth() {
    let python = match berth_tests::pypi_venv(
        "dask",
        "dask-jobqueue>=0.9,<0.10",
        "import dask_jobqueue; assert dask_jobqueue.__version__.startswith('0.9')",
    ) {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED dask_jobqueue_slurm_cluster_runs_its_workers_on_berth: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tools = dir.join("bin");
    std::fs::create_dir(&tools).unwrap();
    for name in ["sbatch", "squeue", "scancel"] {
        std::os::unix::fs::symlink(bin("berth"), tools.join(name)).unwrap();
    }
    let (_dev, server) = berth_tests::two_node_dev(dir);
    std::fs::write(dir.join("run.py"), SCRIPT).unwrap();
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", tools.display());
    let mut cmd = berth_tests::cli_command(&python, dir, &server, &[]);
    let out = cmd
        .arg(dir.join("run.py"))
        .arg(dir.join("logs"))
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dask failed:\n{stdout}\n{stderr}");
    for want in ["RESULT 285\n", "WORKERS 2\n", "CLOSED\n"] {
        assert!(
            stdout.contains(want),
            "want {want:?} in:\n{stdout}\n{stderr}"
        );
    }
    // The two workers were berth jobs, and closing the cluster cancelled them (scancel).
    let shown = poll("the workers end", 30, || {
        let o = berth(
            dir,
            &server,
            &[
                "squeue",
                "-h",
                "-t",
                "all",
                "-n",
                "dask-worker",
                "-o",
                "%i %T",
            ],
        );
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        let ended = t
            .lines()
            .all(|l| !l.ends_with("RUNNING") && !l.ends_with("COMPLETING"));
        (t.lines().count() == 2 && ended).then_some(t)
    });
    assert!(shown.lines().all(|l| l.ends_with("CANCELLED")), "{shown}");
}
