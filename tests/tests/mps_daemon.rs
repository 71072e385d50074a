//! MPS control daemons started by the agent (issue 7 item 4), through `berth dev` on a
//! simulated 4-GPU node shared through MPS.
//!
//! The real `nvidia-cuda-mps-control` needs a GPU and its driver, so a small shell script
//! stands in for it here. It checks berth's side only: the arguments (`-d` to start,
//! `quit` on stdin to stop), the environment of each daemon (its GPU, pipe and log
//! directories), one daemon per GPU, jobs pointed at their GPU's pipe directory, and every
//! daemon stopped when berth shuts down. It says nothing about MPS itself.

use berth_tests::{berth_dev, bin, free_port, poll, sbatch};
use std::path::Path;

/// The stand-in: `-d` records the start and leaves a background process as "the daemon"
/// (and the `control` pipe the real one creates); `quit` on stdin records and kills it.
const STAND_IN: &str = r#"#!/bin/sh
rec="$(dirname "$0")/record"
if [ "$1" = "-d" ]; then
  echo "start $CUDA_VISIBLE_DEVICES $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$rec"
  mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"
  sleep 600 >/dev/null 2>&1 &
  echo $! > "$CUDA_MPS_PIPE_DIRECTORY/daemon.pid"
  exit 0
fi
read -r cmd
echo "$cmd $CUDA_VISIBLE_DEVICES $CUDA_MPS_PIPE_DIRECTORY" >> "$rec"
if [ "$cmd" = quit ]; then
  kill "$(cat "$CUDA_MPS_PIPE_DIRECTORY/daemon.pid")"
  rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
fi
"#;

fn stand_in(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("mps-control");
    std::fs::write(&path, STAND_IN).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Alive and not a zombie (the stand-in's daemons are re-parented when it exits).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn one_mps_daemon_per_gpu_jobs_use_its_pipe_and_shutdown_stops_them() {
    let t = tempfile::tempdir().unwrap();
    let control = stand_in(t.path());
    let record = t.path().join("record");
    let state = t.path().join("state");
    let port = free_port();
    let (mut dev, _) = berth_dev(
        &state,
        port,
        &[
            "--nodes",
            "1",
            "--machine",
            "pcie-l40s-4",
            "--gpu-replicas",
            "2",
            "--gpu-sharing",
            "mps",
            "--mps-control",
            control.to_str().unwrap(),
        ],
    );
    let mps_root = state.join("nodes/node1/mps");
    let starts: Vec<Vec<String>> = std::fs::read_to_string(&record)
        .expect("the agent started daemons before it was ready")
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect();
    assert_eq!(starts.len(), 4, "one per GPU: {starts:?}");
    let mut uuids = Vec::new();
    for s in &starts {
        let uuid = &s[1];
        assert!(s[0] == "start" && uuid.starts_with("GPU-"), "{s:?}");
        let root = mps_root.join(uuid);
        assert_eq!(s[2], root.join("pipe").display().to_string(), "{s:?}");
        assert_eq!(s[3], root.join("log").display().to_string(), "{s:?}");
        uuids.push(uuid.clone());
    }
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 4, "each daemon sees its own GPU: {starts:?}");
    let pids: Vec<String> = uuids
        .iter()
        .map(|u| std::fs::read_to_string(mps_root.join(u).join("pipe/daemon.pid")).unwrap())
        .map(|p| p.trim().to_string())
        .collect();
    assert!(pids.iter().all(|p| alive(p)), "daemons running: {pids:?}");

    let server = format!("http://127.0.0.1:{port}");
    let id = sbatch(
        t.path(),
        &server,
        &[
            "--gres=gpu:1",
            "--wrap",
            "echo $CUDA_VISIBLE_DEVICES $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY",
        ],
    );
    let out = t.path().join(format!("slurm-{id}.out"));
    let text = poll("job output", 60, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| !t.trim().is_empty())
    });
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{text}");
    let root = mps_root.join(fields[0]);
    assert_eq!(
        fields[1..],
        [
            root.join("pipe").display().to_string(),
            root.join("log").display().to_string()
        ],
        "the job talks to its own GPU's daemon"
    );

    // Step tasks run under MPS too: each task of an srun with one GPU per task talks to
    // its own GPU's daemon, with the job's share of the SMs.
    let srun = berth_tests::tool(t.path(), "srun");
    let wrap = format!(
        "{} -n 2 --gpus-per-task=1 -l bash -c 'echo $CUDA_VISIBLE_DEVICES $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE'",
        srun.display()
    );
    let id = sbatch(
        t.path(),
        &server,
        &["--gres=gpu:2", "-n", "2", "--wrap", &wrap],
    );
    let out = t.path().join(format!("slurm-{id}.out"));
    let text = poll("step output", 60, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.lines().count() >= 2)
    });
    for task in ["0:", "1:"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(task))
            .unwrap_or_else(|| panic!("no line of task {task}:\n{text}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{text}");
        let pipe = mps_root.join(f[1]).join("pipe").display().to_string();
        assert_eq!((f[2], f[3]), (pipe.as_str(), "50"), "{text}");
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    poll("berth dev exits on SIGTERM", 60, || {
        dev.0.try_wait().unwrap()
    });
    let calls = std::fs::read_to_string(&record).unwrap();
    let mut quits: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("quit "))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    quits.sort();
    assert_eq!(quits, uuids, "every daemon told to quit:\n{calls}");
    poll("stand-in daemons gone", 10, || {
        pids.iter().all(|p| !alive(p)).then_some(())
    });
}

#[test]
fn a_missing_mps_daemon_binary_stops_the_node_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("berth"))
        .args(["dev", "--nodes", "1", "--machine", "pcie-l40s-4"])
        .args(["--gpu-replicas", "2", "--gpu-sharing", "mps"])
        .args(["--mps-control", "/nonexistent/nvidia-cuda-mps-control"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--http-listen", "off", "--state-dir"])
        .arg(t.path().join("state"))
        .env("KUBECONFIG", "/nonexistent/berth-test-kubeconfig")
        .output()
        .expect("run berth dev");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without its MPS daemon: {err}"
    );
    assert!(
        err.contains("/nonexistent/nvidia-cuda-mps-control") && err.contains("not found"),
        "{err}"
    );
}
