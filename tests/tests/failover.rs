//! Raft HA under load, with the real binaries: three `berthd` replicas and two GPU agents
//! (simulated A100 machines) on loopback, a client submitting continuously, kill -9 of the
//! leader, a new leader, and the old one restarted. Checked against what the client saw
//! acknowledged: no acknowledged job lost (invariant 1), no GPU in use by two jobs at once,
//! judged both from the jobs' records and from the job processes themselves (invariant 2),
//! gangs placed whole (invariant 3), and no job started twice.

use berth_proto::v1 as pb;
use berth_tests::{bin, free_port, poll, replica, simnvml, Proc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A berth-agent named `name` on a simulated 4×A100 machine.
fn gpu_agent(dir: &Path, name: &str, servers: &str) -> Proc {
    let nvml = dir.join(format!("nvml-{name}"));
    std::fs::create_dir_all(&nvml).unwrap();
    std::fs::copy(simnvml(), nvml.join("libnvidia-ml.so.1")).unwrap();
    let machine = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../node-agent/simnvml/machines/a100-pcie-4.json");
    // Seeded by node name, as `berth dev` does, so the two nodes' GPU UUIDs differ.
    let mut desc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(machine).unwrap()).unwrap();
    desc["uuid_seed"] = name.into();
    std::fs::write(nvml.join("machine.json"), desc.to_string()).unwrap();
    Proc(
        Command::new(bin("berth-agent"))
            .args(["--server", servers, "--node-name", name, "--state-dir"])
            .arg(dir.join(format!("agent-{name}")))
            .arg("--nvml-lib")
            .arg(nvml.join("libnvidia-ml.so.1"))
            .args(berth_tests::TestCa::of(dir).agent_args(name))
            .env("RUST_LOG", "error")
            .spawn()
            .unwrap(),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One RPC round to replica `port`, given up after a while: a replica that accepts and
/// never answers must fail the poll that waits on it, not hang the test.
fn ask<T>(port: u16, what: &str, f: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    rt().block_on(async {
        match tokio::time::timeout(Duration::from_secs(10), f).await {
            Ok(v) => v,
            Err(_) => {
                eprintln!("replica on port {port} did not answer {what} within 10 s");
                None
            }
        }
    })
}

fn leader_of(port: u16) -> Option<u64> {
    ask(port, "GetReplicaStatus", async {
        let url = format!("http://127.0.0.1:{port}");
        let mut c = berth_tests::connect(&url)
            .await
            .map(pb::admin_service_client::AdminServiceClient::new)
            .ok()?;
        let s = c
            .get_replica_status(pb::ReplicaStatusRequest {})
            .await
            .ok()?;
        Some(s.into_inner().leader_id).filter(|l| *l != 0)
    })
}

/// Every job, finished ones included, as replica `port` has them applied.
fn jobs(port: u16) -> Option<Vec<pb::Job>> {
    ask(port, "List", async {
        let url = format!("http://127.0.0.1:{port}");
        let mut c = berth_tests::connect(&url)
            .await
            .map(pb::job_service_client::JobServiceClient::new)
            .ok()?;
        let req = pb::ListJobsRequest {
            include_finished: true,
            ..Default::default()
        };
        Some(c.list(req).await.ok()?.into_inner().jobs)
    })
}

/// Submits jobs until `stop`, recording each acknowledged id with its name. One in five
/// is a two-node gang.
fn client(dir: PathBuf, servers: String, stop: Arc<AtomicBool>) -> BTreeMap<u64, String> {
    let log = dir.join("events.log");
    let mut acked = BTreeMap::new();
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let name = format!("c{n}");
        let wrap = format!(
            "echo start $SLURM_JOB_ID $(date +%s%N) $CUDA_VISIBLE_DEVICES >> {l}; sleep 0.3; \
             echo end $SLURM_JOB_ID $(date +%s%N) $CUDA_VISIBLE_DEVICES >> {l}",
            l = log.display()
        );
        let shape: &[&str] = if n % 5 == 0 {
            &["-N", "2", "--gpus-per-node=1"]
        } else {
            &["--gpus=1"]
        };
        let mut args = vec!["sbatch", "--parsable", "-J", &name, "-o", "/dev/null"];
        args.extend_from_slice(shape);
        args.extend_from_slice(&["--wrap", &wrap]);
        let out = berth_tests::berth(&dir, &servers, &args);
        if out.status.success() {
            let id = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            acked.insert(id, name);
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    acked
}

#[test]
fn leader_kill_9_under_continuous_submits_loses_and_doubles_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ports = [free_port(), free_port(), free_port()];
    let mut procs: Vec<Option<Proc>> = (1..=3)
        .map(|id| Some(replica(&dir, id, &ports, &[])))
        .collect();
    let servers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let urls: Vec<String> = servers.iter().map(|s| format!("http://{s}")).collect();
    let _agents = [
        gpu_agent(&dir, "gpu01", &urls.join(",")),
        gpu_agent(&dir, "gpu02", &urls.join(",")),
    ];
    let leader = poll("a leader", 30, || leader_of(ports[0]));
    poll("both agents registered", 30, || {
        let out = berth_tests::berth(
            &dir,
            &servers.join(","),
            &["sinfo", "-h", "-N", "-o", "%N %t"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.contains("gpu01 idle") && text.contains("gpu02 idle")).then_some(())
    });

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let worker = {
        let (dir, servers, stop, acked) =
            (dir.clone(), servers.join(","), stop.clone(), acked.clone());
        std::thread::spawn(move || *acked.lock().unwrap() = client(dir, servers, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    procs[leader as usize - 1] = None; // kill -9 the leader under load
    let live: Vec<u16> = (1..=3u64)
        .filter(|id| *id != leader)
        .map(|id| ports[id as usize - 1])
        .collect();
    let new_leader = poll("a new leader", 30, || {
        leader_of(live[0]).filter(|l| *l != leader)
    });
    std::thread::sleep(Duration::from_secs(3));
    procs[leader as usize - 1] = Some(replica(&dir, leader, &ports, &[])); // the old leader returns
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    worker.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "the client got few acks: {acked:?}");
    eprintln!(
        "{} submits acknowledged across the failover (leader {leader} killed, {new_leader} took over)",
        acked.len()
    );

    let new_port = ports[new_leader as usize - 1];
    let all = poll("every acknowledged job completed", 90, || {
        let all = jobs(new_port)?;
        let done = acked.keys().all(|id| {
            all.iter()
                .any(|j| j.id == *id && j.state() == pb::JobState::Completed)
        });
        done.then_some(all)
    });
    check_records(&acked, &all);
    check_processes(&dir.join("events.log"), &acked);
    // The restarted replica caught up: it has applied every acknowledged job too.
    let old_port = ports[leader as usize - 1];
    poll("the old leader caught up", 30, || {
        let mine = jobs(old_port)?;
        acked
            .keys()
            .all(|id| {
                mine.iter()
                    .any(|j| j.id == *id && j.state() == pb::JobState::Completed)
            })
            .then_some(())
    });
}

/// Invariants 1–3 on the jobs' records: every acknowledged submit present under its name,
/// gangs on two distinct nodes, and no GPU held by two jobs over overlapping times.
fn check_records(acked: &BTreeMap<u64, String>, all: &[pb::Job]) {
    let by_id: BTreeMap<u64, &pb::Job> = all.iter().map(|j| (j.id, j)).collect();
    let mut holds: BTreeMap<&str, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for (id, name) in acked {
        let job = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged job {id} lost"));
        assert_eq!(&job.spec.as_ref().unwrap().name, name, "job {id} renamed");
        let want = job.spec.as_ref().unwrap().nodes.max(1) as usize;
        let nodes: BTreeSet<&str> = job.allocations.iter().map(|a| a.node.as_str()).collect();
        assert_eq!(nodes.len(), want, "job {id} not placed whole: {nodes:?}");
    }
    for job in all {
        for uuid in job.allocations.iter().flat_map(|a| &a.gpu_uuids) {
            holds
                .entry(uuid)
                .or_default()
                .push((job.start_time_ms, job.end_time_ms, job.id));
        }
    }
    for (uuid, mut spans) in holds {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "GPU {uuid} held by jobs {} and {} at once: {pair:?}",
                pair[0].2,
                pair[1].2
            );
        }
    }
}

/// From the processes' own log: each acknowledged job started exactly once, and no two
/// processes ran on one GPU at once.
fn check_processes(log: &Path, acked: &BTreeMap<u64, String>) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut starts: BTreeMap<u64, Vec<(u128, String)>> = BTreeMap::new();
    let mut ends: BTreeMap<u64, u128> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (id, at): (u64, u128) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        match f[0] {
            "start" => starts.entry(id).or_default().push((at, f[3].to_string())),
            _ => {
                ends.insert(id, at);
            }
        }
    }
    let mut runs: BTreeMap<String, Vec<(u128, u128, u64)>> = BTreeMap::new();
    for id in acked.keys() {
        let s = starts.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(s.len(), 1, "job {id} started {} times", s.len());
        let end = ends[id];
        for gpu in s[0].1.split(',') {
            runs.entry(gpu.to_string())
                .or_default()
                .push((s[0].0, end, *id));
        }
    }
    for (gpu, mut spans) in runs {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "jobs {} and {} ran on GPU {gpu} at once",
                pair[0].2,
                pair[1].2
            );
        }
    }
}
