//! The separate daemons: `berthd` and `berth-agent` as their own processes (the agent on a
//! simulated A100 machine through its NVML library), the CLI against them, the Watch
//! stream, oversized requests, kill -9 of berthd while the agent keeps its job running,
//! and clients stuck half-way that must not stall the others.

use berth_proto::v1 as pb;
use berth_tests::{bin, free_port, poll, simnvml, Proc, TestCa};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A secure berthd with replica 1's certificate from the CA of `state`'s parent.
fn berthd(state: &Path, port: u16) -> Proc {
    let ca = TestCa::of(state.parent().unwrap());
    ca.trust(&format!("127.0.0.1:{port}"));
    Proc(
        Command::new(bin("berthd"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(state)
            .arg("--security-dir")
            .arg(ca.replica_dir(1))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn berth(dir: &Path, port: u16, args: &[&str]) -> Output {
    berth_tests::berth(dir, &format!("127.0.0.1:{port}"), args)
}

fn job_state(dir: &Path, port: u16, id: u64) -> String {
    let out = berth(
        dir,
        port,
        &["squeue", "-h", "-j", &id.to_string(), "-o", "%T"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn berthd_and_agent_as_separate_processes_survive_berthd_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let nvml = dir.join("nvml");
    std::fs::create_dir_all(&nvml).unwrap();
    std::fs::copy(simnvml(), nvml.join("libnvidia-ml.so.1")).unwrap();
    let machines = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../node-agent/simnvml/machines/a100-pcie-4.json");
    std::fs::copy(machines, nvml.join("machine.json")).unwrap();

    let mut daemon = berthd(&dir.join("berthd"), port);
    let _agent = Proc(
        Command::new(bin("berth-agent"))
            .args([
                "--server",
                &format!("http://127.0.0.1:{port}"),
                "--node-name",
                "gpu01",
                "--state-dir",
            ])
            .arg(dir.join("agent"))
            .arg("--nvml-lib")
            .arg(nvml.join("libnvidia-ml.so.1"))
            .args(["--kill-wait-secs", "2"])
            .args(TestCa::of(dir).agent_args("gpu01"))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    poll("agent registered", 30, || {
        let out = berth(dir, port, &["sinfo", "-h", "-N", "-o", "%N %t %G"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("gpu01 idle gpu:a100:4")
            .then_some(())
    });

    let marker = dir.join("go");
    let script = format!(
        "echo $CUDA_VISIBLE_DEVICES; while [ ! -e {} ]; do sleep 0.1; done; echo done",
        marker.display()
    );
    let out = berth(
        dir,
        port,
        &[
            "sbatch",
            "--parsable",
            "--gpus=4",
            "-o",
            "job.out",
            "--wrap",
            &script,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    poll("job running", 30, || {
        (job_state(dir, port, id) == "RUNNING").then_some(())
    });

    // kill -9 berthd: the job keeps running under the agent, which reconnects to the new
    // berthd and reports it; the job is still RUNNING there, then completes normally.
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    daemon = berthd(&dir.join("berthd"), port);
    poll("job still running after restart", 30, || {
        (job_state(dir, port, id) == "RUNNING").then_some(())
    });
    std::fs::write(&marker, "").unwrap();
    poll("job completed", 30, || {
        let out = berth(
            dir,
            port,
            &[
                "squeue",
                "-h",
                "-t",
                "all",
                "-j",
                &id.to_string(),
                "-o",
                "%T",
            ],
        );
        (String::from_utf8_lossy(&out.stdout).trim() == "COMPLETED").then_some(())
    });
    let out = std::fs::read_to_string(dir.join("job.out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0]
            .split(',')
            .filter(|u| u.starts_with("GPU-"))
            .count(),
        4,
        "{out}"
    );
    assert_eq!(lines[1], "done");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_and_oversized_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _daemon = berthd(&tmp.path().join("berthd"), port);
    let url = format!("https://127.0.0.1:{port}");
    let mut client = poll("berthd up", 30, || {
        let url = url.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(berth_tests::connect(&url))
                .ok()
                .map(pb::job_service_client::JobServiceClient::new)
        })
    });
    let spec = |script: String| pb::JobSpec {
        name: "big".into(),
        script,
        work_dir: "/tmp".into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        ..Default::default()
    };
    // Larger than the gRPC limit: refused by the transport.
    let huge = format!("#!/bin/sh\n{}", "#".repeat(9 << 20));
    let err = client
        .submit(pb::SubmitRequest {
            spec: Some(spec(huge)),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("too large") || err.code() == tonic::Code::OutOfRange,
        "{err:?}"
    );
    // Under the transport limit but over the 4 MiB script limit: refused by berthd.
    let big = format!("#!/bin/sh\n{}", "#".repeat(5 << 20));
    let err = client
        .submit(pb::SubmitRequest {
            spec: Some(spec(big)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("batch script is"), "{err:?}");
    // No node has registered: a job can never run here, so it is refused (Slurm's message).
    let err = client
        .submit(pb::SubmitRequest {
            spec: Some(spec("#!/bin/sh\n".into())),
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("Requested node configuration is not available"),
        "{err:?}"
    );

    let mut watch = client
        .watch(pb::WatchRequest { job_ids: vec![] })
        .await
        .unwrap()
        .into_inner();
    let list = client
        .list(pb::ListJobsRequest {
            include_finished: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        list.into_inner().jobs.is_empty(),
        "refused submits left no job"
    );

    // A hand-driven agent (the real protocol, no berth-agent) registers one GPU, with the
    // certificate of its node.
    let node = TestCa::of(tmp.path()).node_dir("fake1");
    let mut agents = pb::agent_service_client::AgentServiceClient::new(
        berth_tests::connect_with_cert(&url, &node).await.unwrap(),
    );
    let (up, up_rx) = tokio::sync::mpsc::channel(8);
    let inv = pb::NodeInventory {
        name: "fake1".into(),
        partition: "gpu".into(),
        cpus: 4,
        memory_mb: 1024,
        gpus: vec![pb::Gpu {
            uuid: "GPU-fake-0".into(),
            gres_type: "h100".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let register = pb::Register {
        inventory: Some(inv),
        jobs: vec![],
        ..Default::default()
    };
    up.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(register)),
    })
    .await
    .unwrap();
    let mut down = agents
        .attach(tokio_stream::wrappers::ReceiverStream::new(up_rx))
        .await
        .unwrap()
        .into_inner();
    let first = down.message().await.unwrap().unwrap();
    assert!(
        matches!(first.msg, Some(pb::server_message::Msg::Registered(_))),
        "{first:?}"
    );

    let mut ok = spec("#!/bin/sh\ntrue\n".into());
    ok.gpus_per_node = 1;
    let id = client
        .submit(pb::SubmitRequest { spec: Some(ok) })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut seen = Vec::new();
    while !seen.contains(&pb::JobState::Running) {
        let job = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        assert_eq!(job.id, id);
        seen.push(job.state());
    }
    assert_eq!(seen, vec![pb::JobState::Pending, pb::JobState::Running]);
    let launch = tokio::time::timeout(Duration::from_secs(10), down.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match launch.msg {
        Some(pb::server_message::Msg::Launch(l)) => {
            let job = l.job.unwrap();
            assert_eq!(job.allocations[0].gpu_uuids, vec!["GPU-fake-0".to_string()]);
            assert!(launch.term >= 1, "commands carry the leader's term");
        }
        other => panic!("want Launch, got {other:?}"),
    }
    drop(up);
}

/// Clients that stop half-way (a TCP connection that never speaks, a TLS handshake cut
/// off, a Submit whose body never ends, a Watch never read while hundreds of jobs change)
/// hold up no one else: a fresh client's 300 submits, `squeue` and `sbatch` all answer,
/// and berthd drops the stalled handshakes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_clients_stall_no_one_else() {
    use std::io::{Read as _, Write as _};
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _daemon = berthd(&tmp.path().join("berthd"), port);
    let servers = format!("127.0.0.1:{port}");
    let url = format!("https://{servers}");
    let _agent = berth_tests::cpu_agent(tmp.path(), &servers);
    let held = |i: usize| pb::JobSpec {
        name: format!("h{i}"),
        script: "#!/bin/sh\ntrue\n".into(),
        work_dir: "/tmp".into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        hold: true,
        ..Default::default()
    };
    // Up once a held job is taken (the agent's node has registered).
    poll("berthd and its node up", 60, || {
        let url = url.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let mut c = pb::job_service_client::JobServiceClient::new(
                    berth_tests::connect(&url).await.ok()?,
                );
                c.submit(pb::SubmitRequest {
                    spec: Some(held(0)),
                })
                .await
                .ok()
            })
        })
    });

    // 1. Connections that never start their TLS handshake, and ones that stop inside it
    // (a ClientHello record header announcing 200 bytes, then 2 of them).
    let silent: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(&servers).unwrap())
        .collect();
    let cut: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&servers).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
                .unwrap();
            s
        })
        .collect();
    // 2. Proven clients whose Submit request body never ends.
    let profile = TestCa::of(tmp.path()).profile();
    for _ in 0..4 {
        let ch = berth_tests::connect(&url).await.unwrap();
        tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(ch);
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<pb::SubmitRequest, pb::SubmitResponse>::default();
            let path = http::uri::PathAndQuery::from_static("/berth.v1.JobService/Submit");
            let never = tokio_stream::pending::<pb::SubmitRequest>();
            let _ = grpc
                .client_streaming(tonic::Request::new(never), path, codec)
                .await;
        });
    }
    // 3. A Watch whose reader never reads, on a connection with 1 KiB flow-control
    // windows: after a few jobs berthd can send it nothing more.
    let ep = berth_auth::channel::endpoint(&url, &profile)
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024));
    let stuck = berth_auth::channel::AuthChannel::new(
        ep.connect().await.unwrap(),
        berth_auth::channel::Proof::of(&profile),
    );
    let _unread = pb::job_service_client::JobServiceClient::new(stuck)
        .watch(pb::WatchRequest { job_ids: vec![] })
        .await
        .unwrap();

    // Everyone else: 300 submits from 10 concurrent clients, each answered in time.
    let mut tasks = Vec::new();
    for c in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client =
                pb::job_service_client::JobServiceClient::new(berth_tests::connect(&url).await?);
            for i in 0..30 {
                let call = client.submit(pb::SubmitRequest {
                    spec: Some(held(1 + c * 30 + i)),
                });
                tokio::time::timeout(Duration::from_secs(30), call)
                    .await
                    .map_err(|_| format!("client {c}'s submit {i} stalled"))?
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let dir = tmp.path().to_path_buf();
    let (s, d) = (servers.clone(), dir.clone());
    let listed = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            berth_tests::berth(&d, &s, &["squeue", "-h", "-o", "%i"])
        }),
    )
    .await
    .expect("squeue stalled")
    .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 301);
    let (s, d) = (servers.clone(), dir.clone());
    let id = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || berth_tests::sbatch(&d, &s, &["-H", "--wrap", "true"])),
    )
    .await
    .expect("sbatch stalled")
    .unwrap();
    assert!(id > 301, "{id}");

    // berthd drops a handshake that does not finish within its 10 s limit: each stalled
    // connection is closed from its side (read sees the end, or a reset).
    for mut s in silent.into_iter().take(4).chain(cut) {
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a stalled handshake was not dropped: {other:?}"),
        }
    }
}
