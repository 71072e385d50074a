//! The agent's GPU code against simulated machines (berth-simnvml loaded through
//! nvml-wrapper, the same path as a real driver): inventory per shipped machine, MIG
//! slices carved for a job and destroyed after it, refusals, reconciliation after a
//! restart, health events and the /metrics endpoint.

use berth_agent::gpu::{GpuBackend, NvmlBackend};
use berth_agent::metrics::{self, MetricsSource};
use berth_agent::supervisor::{LaunchError, Status, Supervisor};
use berth_proto::v1 as pb;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct SimNode {
    dir: tempfile::TempDir,
    lib: PathBuf,
}

impl SimNode {
    fn new(machine: &str) -> SimNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = berth_simnvml::find_library().unwrap_or_else(|e| panic!("{e}"));
        let description = berth_simnvml::builtin(machine).expect("shipped machine");
        let lib = berth_simnvml::install_node(&dir.path().join("nvml"), &built, &description, "n1")
            .expect("install");
        SimNode { dir, lib }
    }

    fn backend(&self) -> Arc<NvmlBackend> {
        Arc::new(NvmlBackend::open(Some(self.lib.clone())).expect("open sim NVML"))
    }

    fn nvml_dir(&self) -> PathBuf {
        self.dir.path().join("nvml")
    }

    fn supervisor(&self, gpus: Arc<dyn GpuBackend>) -> Supervisor {
        Supervisor::new(
            &self.dir.path().join("state"),
            PathBuf::from(env!("CARGO_BIN_EXE_berth-agent")),
            Duration::from_secs(1),
            gpus,
        )
        .expect("supervisor")
    }
}

#[test]
fn inventory_of_every_shipped_machine() {
    // (machine, GPUs, NUMA of last GPU, CC, MIG capable, MIG on, profiles, NVSwitch links,
    //  level of pair 0-1, level of pair 1-2)
    let table = [
        ("dgx-h100", 8, 1, "9.0", true, false, 7, 18, "NV18", "NV18"),
        ("dgx-a100", 8, 1, "8.0", true, false, 7, 12, "NV12", "NV12"),
        ("a100-mig", 4, 1, "8.0", true, true, 7, 12, "NV12", "NV12"),
        ("pcie-l40s-4", 4, 1, "8.9", false, false, 0, 0, "PIX", "SYS"),
        ("a100-pcie-4", 4, 1, "8.0", true, false, 7, 0, "NODE", "SYS"),
    ];
    for (i, row) in table.into_iter().enumerate() {
        let (name, count, numa, cc, capable, on, profiles, switch, l01, l12) = row;
        let node = SimNode::new(name);
        let inv = node.backend().inventory().expect("inventory");
        assert_eq!(inv.gpus.len(), count, "#{i} {name}");
        let last = inv.gpus.last().expect("gpus");
        let got = (
            last.numa_node,
            last.compute_capability.as_str(),
            last.mig_capable,
            last.mig_enabled,
        );
        assert_eq!(got, (numa, cc, capable, on), "#{i} {name}");
        assert_eq!(last.mig_profiles.len(), profiles, "#{i} {name}");
        assert_eq!(last.nvswitch_links, switch, "#{i} {name}");
        assert!(
            last.ecc_enabled && last.unhealthy_reason.is_empty(),
            "#{i} {name}"
        );
        let level = |a, b| {
            inv.topology
                .iter()
                .find(|t| (t.gpu_a, t.gpu_b) == (a, b))
                .map(|t| t.level.clone())
        };
        assert_eq!(level(0, 1).as_deref(), Some(l01), "#{i} {name}");
        assert_eq!(level(1, 2).as_deref(), Some(l12), "#{i} {name}");
        assert_eq!(
            inv.topology.len(),
            count * (count - 1) / 2,
            "#{i} {name}: every pair"
        );
        assert_eq!(inv.cuda_version, "13.0");
    }
}

#[test]
fn mig_profiles_come_from_nvml_with_placements_only_when_mig_is_on() {
    let h100 = SimNode::new("dgx-h100")
        .backend()
        .inventory()
        .expect("inventory");
    let names: Vec<(String, u32)> = h100.gpus[0]
        .mig_profiles
        .iter()
        .map(|p| (p.name.clone(), p.id))
        .collect();
    let want = [
        ("1g.10gb", 19),
        ("2g.20gb", 14),
        ("3g.40gb", 9),
        ("4g.40gb", 5),
        ("7g.80gb", 0),
        ("1g.10gb+me", 20),
        ("1g.20gb", 15),
    ];
    let want: Vec<(String, u32)> = want.iter().map(|(n, i)| (n.to_string(), *i)).collect();
    assert_eq!(names, want, "H100 profiles by index order, ids from NVML");
    assert!(
        h100.gpus[0]
            .mig_profiles
            .iter()
            .all(|p| p.placements.is_empty()),
        "MIG off"
    );

    let a100 = SimNode::new("a100-mig")
        .backend()
        .inventory()
        .expect("inventory");
    let three = a100.gpus[0]
        .mig_profiles
        .iter()
        .find(|p| p.name == "3g.20gb")
        .expect("3g");
    let at: Vec<(u32, u32)> = three.placements.iter().map(|p| (p.start, p.size)).collect();
    assert_eq!((three.id, at), (9, vec![(0, 4), (4, 4)]));
}

fn mig_job(
    id: u64,
    gpu: &str,
    profile: &str,
    start: u32,
    size: u32,
    script: &str,
    out: &Path,
) -> pb::Job {
    pb::Job {
        id,
        spec: Some(pb::JobSpec {
            name: "mig".into(),
            script: format!("#!/bin/sh\n{script}\n"),
            work_dir: out.parent().expect("dir").display().to_string(),
            ..Default::default()
        }),
        stdout_path: out.display().to_string(),
        stderr_path: out.display().to_string(),
        allocations: vec![pb::Allocation {
            node: "n1".into(),
            cpus: 1,
            mig_slices: vec![pb::MigSlice {
                gpu_uuid: gpu.into(),
                profile: profile.into(),
                placement_start: start,
                placement_size: size,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn wait_finished(sup: &Supervisor, id: u64) -> pb::JobFinished {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(Status::Finished(f)) = sup.poll().remove(&id) {
            return f;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("job {id} did not finish");
}

#[test]
fn a_job_gets_its_mig_slice_and_the_slice_is_destroyed_after_it() {
    let node = SimNode::new("a100-mig");
    let gpus = node.backend();
    let gpu0 = gpus.inventory().expect("inventory").gpus[0].uuid.clone();
    let sup = node.supervisor(gpus.clone());
    let out = node.dir.path().join("job1.out");
    let job = mig_job(
        1,
        &gpu0,
        "3g.20gb",
        4,
        4,
        "echo \"$CUDA_VISIBLE_DEVICES\"",
        &out,
    );
    assert!(sup.launch(&job, "n1").expect("launch"), "launched");
    let made = gpus.mig_devices().expect("list");
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(
        (made[0].gpu_uuid.as_str(), made[0].start, made[0].size),
        (gpu0.as_str(), 4, 4)
    );
    assert_eq!(
        sup.mig_devices(1),
        made,
        "ownership recorded in the job dir"
    );
    let f = wait_finished(&sup, 1);
    assert_eq!(f.state, pb::JobState::Completed as i32, "{f:?}");
    let seen = std::fs::read_to_string(&out).expect("output");
    assert_eq!(
        seen.trim(),
        made[0].uuid,
        "the job saw exactly its MIG device"
    );
    assert!(
        gpus.mig_devices().expect("list").is_empty(),
        "destroyed after the job"
    );
    sup.ack(1);
    assert!(sup.job_ids().is_empty());
}

#[test]
fn illegal_or_busy_slices_and_mig_off_are_refused_and_change_nothing() {
    let node = SimNode::new("a100-mig");
    let gpus = node.backend();
    let gpu1 = gpus.inventory().expect("inventory").gpus[1].uuid.clone();
    let sup = node.supervisor(gpus.clone());
    let out = node.dir.path().join("o");
    let holder = mig_job(1, &gpu1, "3g.20gb", 0, 4, "sleep 30", &out);
    assert!(sup.launch(&holder, "n1").expect("launch holder"));
    let before = gpus.mig_devices().expect("list");
    let cases = [
        (2, "2g.10gb", 2, 2, "busy"),           // overlaps the 3g at 0..4
        (3, "3g.20gb", 2, 4, "not legal"),      // 3g starts only at 0 or 4
        (4, "3g.40gb", 4, 4, "no MIG profile"), // an 80GB name on a 40GB card
    ];
    for (id, profile, start, size, want) in cases {
        let job = mig_job(id, &gpu1, profile, start, size, "true", &out);
        match sup.launch(&job, "n1") {
            Err(e @ LaunchError::Mig(..)) => assert!(e.to_string().contains(want), "#{id}: {e}"),
            other => panic!("#{id}: want a MIG refusal containing {want:?}, got {other:?}"),
        }
        assert_eq!(
            gpus.mig_devices().expect("list"),
            before,
            "#{id} changed the layout"
        );
        assert!(!sup.job_ids().contains(&id), "#{id} left a job dir");
    }
    sup.kill(1, pb::JobState::Cancelled, "test");
    wait_finished(&sup, 1);
    assert!(gpus.mig_devices().expect("list").is_empty());

    let h100 = SimNode::new("dgx-h100");
    let hg = h100.backend();
    let gpu = hg.inventory().expect("inventory").gpus[0].uuid.clone();
    let hsup = h100.supervisor(hg.clone());
    let job = mig_job(9, &gpu, "3g.40gb", 0, 4, "true", &out);
    let err = hsup.launch(&job, "n1").expect_err("MIG off");
    assert!(err.to_string().contains("MIG mode is off"), "{err}");
    let mode = hg.inventory().expect("inventory").gpus[0].mig_enabled;
    assert!(!mode, "MIG mode never toggled");
}

#[test]
fn a_restarted_agent_reattaches_mig_slices_to_their_jobs() {
    let node = SimNode::new("a100-mig");
    let gpu2 = node.backend().inventory().expect("inventory").gpus[2]
        .uuid
        .clone();
    let out = node.dir.path().join("o");
    let made = {
        let gpus = node.backend();
        let sup = node.supervisor(gpus.clone());
        let job = mig_job(5, &gpu2, "2g.10gb", 2, 2, "sleep 30", &out);
        assert!(sup.launch(&job, "n1").expect("launch"));
        sup.mig_devices(5)
    };
    assert_eq!(made.len(), 1);
    // A crash between create and record: the job dir holds the intent, not the device.
    let record = node.dir.path().join("state/jobs/5/mig.json");
    let text = std::fs::read_to_string(&record).expect("mig.json");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["entries"][0]["device"] = serde_json::Value::Null;
    std::fs::write(&record, json.to_string()).expect("write");

    let gpus = node.backend(); // a new process's view: the instance is still in the driver
    let sup = node.supervisor(gpus.clone());
    assert_eq!(sup.mig_devices(5), made, "adopted by GPU and placement");
    sup.kill(5, pb::JobState::Cancelled, "test");
    wait_finished(&sup, 5);
    assert!(
        gpus.mig_devices().expect("list").is_empty(),
        "released after the end"
    );
}

#[test]
fn xid_and_ecc_events_become_health_reports() {
    let node = SimNode::new("dgx-h100");
    let uuid2 = node.backend().inventory().expect("inventory").gpus[2]
        .uuid
        .clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut rx = berth_agent::health::watch(Some(node.lib.clone()), stop.clone()).expect("watch");
    let lines =
        "{\"gpu\": 2, \"xid\": 13}\n{\"gpu\": 2, \"xid\": 79}\n{\"gpu\": 5, \"ecc\": \"double\"}\n";
    berth_simnvml::inject(&node.nvml_dir(), lines).expect("inject");
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<pb::GpuHealth>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(h) = rx.try_recv() {
                return h;
            }
            assert!(Instant::now() < deadline, "no health report");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let first = next(&mut rx);
    assert_eq!(
        first.uuid, uuid2,
        "XID 13 (an application fault) is not reported"
    );
    assert!(first.reason.contains("XID 79"), "{}", first.reason);
    let second = next(&mut rx);
    assert!(second.reason.contains("double-bit"), "{}", second.reason);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn a_lost_gpu_registers_as_unhealthy() {
    let node = SimNode::new("dgx-h100");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut rx = berth_agent::health::watch(Some(node.lib.clone()), stop.clone()).expect("watch");
    berth_simnvml::inject(&node.nvml_dir(), "{\"gpu\": 6, \"lost\": true}\n").expect("inject");
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        if let Ok(h) = rx.try_recv() {
            break h;
        }
        assert!(Instant::now() < deadline, "no health report");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(report.reason.contains("XID 79"), "{}", report.reason);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let inv = node
        .backend()
        .inventory()
        .expect("inventory with a lost GPU");
    assert!(
        inv.gpus[6].unhealthy_reason.contains("lost"),
        "{:?}",
        inv.gpus[6]
    );
    assert_eq!(inv.gpus[6].uuid, report.uuid);
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

#[test]
fn metrics_endpoint_serves_dcgm_names_with_job_labels() {
    let node = SimNode::new("dgx-h100");
    let gpus = node.backend();
    let inv = gpus.inventory().expect("inventory");
    std::fs::write(
        node.nvml_dir().join(berth_simnvml::TELEMETRY_FILE_NAME),
        r#"{"gpus": [{"index": 3, "utilization_gpu": 87, "memory_used_mb": 2048, "power_w": 612, "temperature_c": 71}]}"#,
    )
    .expect("telemetry");
    let sup = node.supervisor(gpus.clone());
    let out = node.dir.path().join("o");
    let mut job = mig_job(7, "", "", 0, 0, "sleep 30", &out);
    job.allocations[0].mig_slices.clear();
    job.allocations[0].gpu_uuids = vec![inv.gpus[3].uuid.clone()];
    assert!(sup.launch(&job, "n1").expect("launch"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let src = MetricsSource {
        gpus: gpus.clone(),
        state_dir: node.dir.path().join("state"),
        node: "n1".into(),
    };
    let url = rt
        .block_on(metrics::spawn("127.0.0.1:0", src, stop_rx))
        .expect("serve");
    let body = rt
        .block_on(async { tokio::task::spawn_blocking(move || http_get(&url)).await })
        .expect("get");
    assert!(body.contains(" 200 OK"), "{body}");
    let labels = format!(
        "{{Hostname=\"n1\",UUID=\"{}\",gpu=\"3\",hpc_job=\"7\",modelName=\"NVIDIA H100 80GB HBM3\"}}",
        inv.gpus[3].uuid
    );
    for want in [
        format!("DCGM_FI_DEV_GPU_UTIL{labels} 87"),
        format!("DCGM_FI_DEV_FB_USED{labels} 2048"),
        format!("DCGM_FI_DEV_POWER_USAGE{labels} 612"),
        format!("DCGM_FI_DEV_GPU_TEMP{labels} 71"),
    ] {
        assert!(body.contains(&want), "missing {want} in\n{body}");
    }
    let idle = format!(
        "DCGM_FI_DEV_GPU_UTIL{{Hostname=\"n1\",UUID=\"{}\",gpu=\"0\",hpc_job=\"\"",
        inv.gpus[0].uuid
    );
    assert!(
        body.contains(&idle),
        "free GPUs have an empty job label:\n{body}"
    );
    sup.kill(7, pb::JobState::Cancelled, "test");
    wait_finished(&sup, 7);
}

#[test]
fn a_kept_layout_is_reused_by_the_same_slice_and_recarved_for_another() {
    use std::os::unix::fs::MetadataExt as _;
    let node = SimNode::new("a100-mig");
    let gpus = node.backend();
    let gpu = gpus.inventory().expect("inventory").gpus[0].clone();
    let mut sup = node.supervisor(gpus.clone());
    sup.set_mig_keep(true);
    let run = |id: u64, profile: &str, start: u32, size: u32| {
        let out = node.dir.path().join(format!("job{id}.out"));
        let job = mig_job(
            id,
            &gpu.uuid,
            profile,
            start,
            size,
            "echo \"$CUDA_VISIBLE_DEVICES\"",
            &out,
        );
        assert!(sup.launch(&job, "n1").expect("launch"), "launched");
        let f = wait_finished(&sup, id);
        assert_eq!(f.state, pb::JobState::Completed as i32, "{f:?}");
        sup.ack(id);
        std::fs::read_to_string(&out)
            .expect("output")
            .trim()
            .to_string()
    };
    // The simulator rewrites its state file (by rename) on every MIG create or destroy,
    // and derives instance UUIDs from their ids, so the file's inode tells whether the
    // layout changed, and its instances' profile ids tell which profile is where.
    let state_file = node.nvml_dir().join(berth_simnvml::STATE_FILE_NAME);
    let inode = || std::fs::metadata(&state_file).expect("sim state").ino();
    let layout = || -> Vec<(u32, String)> {
        let text = std::fs::read_to_string(&state_file).expect("sim state");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut l: Vec<(u32, String)> = v["gpus"][0]["mig"]["gpu_instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|gi| {
                let id = gi["profile_id"].as_u64().expect("profile id") as u32;
                let name = gpu
                    .mig_profiles
                    .iter()
                    .find(|p| p.id == id)
                    .expect("known id");
                (
                    gi["start"].as_u64().expect("start") as u32,
                    name.name.clone(),
                )
            })
            .collect();
        l.sort();
        l
    };
    let first = run(1, "3g.20gb", 4, 4);
    assert_eq!(layout(), [(4, "3g.20gb".to_string())], "kept after its job");
    // The same slice again: that very instance, the layout untouched.
    let before = inode();
    assert_eq!(run(2, "3g.20gb", 4, 4), first);
    assert_eq!(inode(), before, "nothing destroyed or created");
    // The other half, then another profile at exactly that placement (3g.20gb and
    // 4g.20gb both span 4 memory slices): not reused; the kept 3g goes, a 4g is made.
    run(3, "3g.20gb", 0, 4);
    assert_eq!(
        layout(),
        [(0, "3g.20gb".to_string()), (4, "3g.20gb".to_string())]
    );
    run(4, "4g.20gb", 0, 4);
    assert_eq!(
        layout(),
        [(0, "4g.20gb".to_string()), (4, "3g.20gb".to_string())]
    );
    // A whole-card slice: both kept halves destroyed first.
    run(5, "7g.40gb", 0, 8);
    assert_eq!(layout(), [(0, "7g.40gb".to_string())]);
    assert_eq!(gpus.mig_devices().expect("list").len(), 1);
}
