//! End-to-end GPU agent behaviour through the real `berth dev` binary on a simulated
//! DGX-H100: the NVML inventory reaches `scontrol show node`, each agent's `/metrics` URL
//! is printed and serves dcgm-exporter metrics, and an injected XID 79 marks the GPU
//! unhealthy in berthd (through the log): the job running on it is killed and requeued,
//! and no job is placed on it again.

use berth_tests::{berth, berth_dev, free_port, poll, Proc};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Output;

struct Dev {
    _proc: Proc,
    dir: tempfile::TempDir,
    server: String,
    metrics_url: String,
}

impl Dev {
    fn start(extra: &[&str]) -> Dev {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut args = vec!["--nodes", "1"];
        args.extend_from_slice(extra);
        let (proc, printed) = berth_dev(&dir.path().join("state"), port, &args);
        let metrics_url = printed
            .iter()
            .find_map(|l| l.strip_prefix("berth dev: agent metrics node1 "))
            .map(|u| u.trim().to_string())
            .unwrap_or_default();
        Dev {
            _proc: proc,
            dir,
            server: format!("http://127.0.0.1:{port}"),
            metrics_url,
        }
    }

    fn berth(&self, args: &[&str]) -> Output {
        berth(self.dir.path(), &self.server, args)
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nvml_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state/nodes/node1/nvml")
    }
}

fn http_get(url: &str) -> String {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn inventory_metrics_and_an_xid_that_takes_a_gpu_out_of_placement() {
    let dev = Dev::start(&["--machine", "dgx-h100"]);
    let node = dev.stdout(&["scontrol", "show", "node", "node1"]);
    for want in [
        "Gres=gpu:h100:8",
        "Gpu=7 Numa=1 ComputeCap=9.0 Ecc=on Mig=disabled NvSwitchLinks=18",
        "Gpu=0 MigProfiles=1g.10gb(id=19,max=7),2g.20gb(id=14,max=3),3g.40gb(id=9,max=2)",
        "GpuTopology=0-1:NV18,",
        "CudaVersion=13.0 MetricsUrl=http://127.0.0.1:",
        "GpuSharing=(null)",
    ] {
        assert!(node.contains(want), "want {want:?} in\n{node}");
    }

    assert!(
        dev.metrics_url.starts_with("http://127.0.0.1:"),
        "printed: {:?}",
        dev.metrics_url
    );
    write(
        &dev.nvml_dir().join(berth_simnvml::TELEMETRY_FILE_NAME),
        r#"{"gpus": [{"index": 5, "utilization_gpu": 64}]}"#,
    );
    let body = http_get(&dev.metrics_url);
    assert!(
        body.contains("DCGM_FI_DEV_GPU_UTIL{")
            && body.contains(",gpu=\"5\",hpc_job=\"\",modelName=\"NVIDIA H100 80GB HBM3\"} 64"),
        "{body}"
    );

    // A job holding every GPU, GPU 0 included, when GPU 0 falls off the bus.
    let victim = dev.stdout(&[
        "sbatch",
        "--parsable",
        "--requeue",
        "--gres=gpu:8",
        "--wrap",
        "sleep 300",
    ]);
    let victim = victim.trim();
    poll("the 8-GPU job runs", 30, || {
        let text = dev.stdout(&["scontrol", "show", "job", victim]);
        text.contains("JobState=RUNNING ").then_some(())
    });
    berth_simnvml::inject(&dev.nvml_dir(), "{\"gpu\": 0, \"xid\": 79}\n").expect("inject");
    let shown = poll("GPU 0 marked unhealthy", 20, || {
        let text = dev.stdout(&["scontrol", "show", "node", "node1"]);
        text.contains("Gpu=0 Health=UNHEALTHY Reason=XID 79: GPU has fallen off the bus")
            .then_some(text)
    });
    assert!(
        !shown.contains("Gpu=1 Health=UNHEALTHY"),
        "only GPU 0:\n{shown}"
    );
    // --requeue: killed, back in the queue with the same id, and it cannot fit any more.
    poll("the job on the bad GPU requeued", 30, || {
        let text = dev.stdout(&["scontrol", "show", "job", victim]);
        (text.contains("JobState=PENDING ") && text.contains("Restarts=1 ")).then_some(())
    });

    let all = dev.stdout(&["sbatch", "--parsable", "--gres=gpu:8", "--wrap", "true"]);
    let seven = dev.stdout(&[
        "sbatch",
        "--parsable",
        "--gres=gpu:7",
        "--wrap",
        "echo $CUDA_VISIBLE_DEVICES",
    ]);
    let seven = seven.trim();
    poll("7-GPU job completes", 30, || {
        let text = dev.stdout(&["scontrol", "show", "job", seven]);
        text.contains("JobState=COMPLETED ").then_some(())
    });
    let out = std::fs::read_to_string(dev.dir.path().join(format!("slurm-{seven}.out")))
        .expect("job output");
    let gpu0 = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("Gpu=0 Uuid="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("GPU 0 uuid");
    assert_eq!(out.trim().split(',').count(), 7, "{out}");
    assert!(!out.contains(gpu0), "the unhealthy GPU was granted: {out}");
    let job = dev.stdout(&["scontrol", "show", "job", all.trim()]);
    assert!(
        job.contains("JobState=PENDING "),
        "8 GPUs can no longer fit:\n{job}"
    );

    // An admin declares GPU 0 repaired (through the log): placement uses it again.
    let bad = dev.berth(&[
        "scontrol",
        "update",
        "NodeName=node1",
        "Gpu=9",
        "State=RESUME",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("no GPU 9"), "{err}");
    let bad = dev.berth(&[
        "scontrol",
        "update",
        "NodeName=node1",
        "Gpu=0",
        "State=DRAIN",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("only State=RESUME"),
        "{err}"
    );
    dev.stdout(&["scancel", victim]);
    let said = dev.stdout(&[
        "scontrol",
        "update",
        "NodeName=node1",
        "Gpu=0",
        "State=RESUME",
    ]);
    assert!(
        said.contains(&format!("GPU {gpu0} on node1 resumed (was: XID 79")),
        "{said}"
    );
    poll("the 8-GPU job runs once GPU 0 is back", 30, || {
        let text = dev.stdout(&["scontrol", "show", "job", all.trim()]);
        text.contains("JobState=COMPLETED ").then_some(())
    });
    let node = dev.stdout(&["scontrol", "show", "node", "node1"]);
    assert!(!node.contains("Health=UNHEALTHY"), "{node}");
    let again = dev.stdout(&[
        "scontrol",
        "update",
        "NodeName=node1",
        "Gpu=0",
        "State=RESUME",
    ]);
    assert!(again.contains("already healthy"), "{again}");
}

#[test]
fn mps_shares_run_three_jobs_per_gpu_with_limits() {
    let dev = Dev::start(&[
        "--machine",
        "a100-pcie-4",
        "--gpu-replicas",
        "3",
        "--gpu-sharing",
        "mps",
    ]);
    let node = dev.stdout(&["scontrol", "show", "node", "node1"]);
    assert!(
        node.contains("Gpu=0 Replicas=3 ShareJobs=(null)") && node.contains("GpuSharing=mps"),
        "{node}"
    );
    let marker = dev.dir.path().join("go");
    let script = format!(
        "echo $CUDA_VISIBLE_DEVICES $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE $CUDA_MPS_PINNED_DEVICE_MEM_LIMIT; while [ ! -e {} ]; do sleep 0.1; done",
        marker.display()
    );
    let ids: Vec<String> = (0..13)
        .map(|_| {
            dev.stdout(&["sbatch", "--parsable", "--gres=gpu:1", "--wrap", &script])
                .trim()
                .to_string()
        })
        .collect();
    let state = |id: &str| {
        let text = dev.stdout(&["scontrol", "show", "job", id]);
        text.split("JobState=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("")
            .to_string()
    };
    poll("12 shares running", 60, || {
        ids[..12]
            .iter()
            .all(|id| state(id) == "RUNNING")
            .then_some(())
    });
    assert_eq!(
        state(&ids[12]),
        "PENDING",
        "4 GPUs x 3 shares: the 13th waits"
    );
    let outputs: Vec<String> = ids[..12]
        .iter()
        .map(|id| {
            let path = dev.dir.path().join(format!("slurm-{id}.out"));
            poll("job output", 30, || {
                std::fs::read_to_string(&path)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            })
        })
        .collect();
    let mut per_gpu = std::collections::BTreeMap::<String, usize>::new();
    for out in &outputs {
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{out}");
        assert!(fields[0].starts_with("GPU-"), "{out}");
        assert_eq!(
            &fields[1..],
            ["33", "0=13653M"],
            "MPS limits of one share of 40 GiB"
        );
        *per_gpu.entry(fields[0].to_string()).or_default() += 1;
    }
    assert_eq!(per_gpu.len(), 4, "{per_gpu:?}");
    assert!(
        per_gpu.values().all(|&n| n == 3),
        "three jobs per GPU: {per_gpu:?}"
    );
    std::fs::write(&marker, "").expect("release the jobs");
    poll("the 13th job runs once a share frees", 60, || {
        (state(&ids[12]) != "PENDING").then_some(())
    });
}

/// Measured use of a running job reaches berthd (`scontrol show job` → `GpuUsage=`) and the
/// agent's `/metrics` (per-job gauges with `job` and `account` labels).
#[test]
fn measured_gpu_use_of_a_job_reaches_berthd_and_metrics() {
    let dev = Dev::start(&["--machine", "pcie-l40s-4"]);
    // Every GPU 60 % busy with 2000 MiB used: whichever two the job gets.
    let gpus: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"index": {i}, "utilization_gpu": 60, "memory_used_mb": 2000}}"#))
        .collect();
    write(
        &dev.nvml_dir().join(berth_simnvml::TELEMETRY_FILE_NAME),
        &format!(r#"{{"gpus": [{}]}}"#, gpus.join(",")),
    );
    let marker = dev.dir.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.1; done", marker.display());
    let id = dev.stdout(&["sbatch", "--parsable", "--gres=gpu:2", "--wrap", &script]);
    let id = id.trim().to_string();
    // Two heartbeats apart, so some time has been held.
    let usage = poll("usage recorded with held time", 60, || {
        let text = dev.stdout(&["scontrol", "show", "job", &id]);
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("GpuUsage=node1:"))?
            .to_string();
        let field = |k: &str| -> Option<f64> {
            line.split(',')
                .find_map(|f| f.strip_prefix(k))?
                .trim_end_matches(['s', '%', 'M'])
                .parse()
                .ok()
        };
        let held = field("held=")?;
        let got = (held, field("busy=")?, field("util=")?, field("mem=")?);
        (held >= 1.0).then_some(got)
    });
    let (held, busy, util, mem) = usage;
    assert_eq!(util, 60.0, "mean utilization of its two GPUs");
    assert_eq!(mem, 4000.0, "2 GPUs × 2000 MiB");
    // Every interval was charged at 60 %: busy = 0.6 × held (one decimal printed).
    assert!((busy - 0.6 * held).abs() <= 0.1, "held {held}, busy {busy}");
    let shown = dev.stdout(&["scontrol", "show", "job", &id]);
    let account = shown
        .split("Account=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("Account= in scontrol show job");
    let body = http_get(&dev.metrics_url);
    let labels = format!(r#"{{Hostname="node1",account="{account}",job="{id}"}}"#);
    for want in [
        format!("berth_job_gpu_util_percent{labels} 60"),
        format!("berth_job_gpu_memory_used_mib{labels} 4000"),
        format!("berth_job_gpu_memory_max_mib{labels} 4000"),
        format!("berth_job_gpu_held_seconds{labels} "),
    ] {
        assert!(body.contains(&want), "missing {want:?} in\n{body}");
    }
    std::fs::write(&marker, "").expect("release the job");
    poll("the job ends with its final usage", 30, || {
        let text = dev.stdout(&["scontrol", "show", "job", &id]);
        (text.contains("JobState=COMPLETED ") && text.contains("GpuUsage=node1:held="))
            .then_some(())
    });
}
