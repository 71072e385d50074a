//! Dynamic MIG end to end with the real `berth-agent` process on a simulated A100 node
//! with MIG mode on, driven by a hand-written berthd stand-in (the real agent protocol):
//! the scheduler cannot decide MIG slices yet (placement issue), so this test plays the
//! leader and sends launches whose allocation names slices. It checks that the job sees
//! its MIG device, that a busy placement fails the job with a clear reason, and that after
//! a kill -9 of the agent the restarted agent still owns the slice and destroys it when
//! the job ends.

use berth_proto::v1::{self as pb, agent_message::Msg as Up, server_message::Msg as Down};
use berth_tests::{bin, free_port, mig_uuids, poll, Proc, TestCa};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

/// One attached agent: what it sends, and a way to send it commands.
struct Session {
    up: mpsc::UnboundedReceiver<pb::AgentMessage>,
    down: mpsc::Sender<Result<pb::ServerMessage, Status>>,
}

struct FakeLeader {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for FakeLeader {
    type AttachStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = req.into_inner();
        let (up_tx, up) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if up_tx.send(msg).is_err() {
                    return;
                }
            }
        });
        let (down, rx) = mpsc::channel(16);
        let _ = self.sessions.send(Session { up, down });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn agent(port: u16, state: &Path, lib: &Path) -> Proc {
    Proc(
        Command::new(bin("berth-agent"))
            .args([
                "--server",
                &format!("http://127.0.0.1:{port}"),
                "--node-name",
                "n1",
            ])
            .arg("--state-dir")
            .arg(state)
            .arg("--nvml-lib")
            .arg(lib)
            .args(["--kill-wait-secs", "1"])
            .args(TestCa::of(state.parent().expect("dir")).agent_args("n1"))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn berth-agent"),
    )
}

/// A launch sealed with the cluster key, as berthd sends it.
fn launch(id: u64, gpu: &str, start: u32, script: &str, out: &Path) -> Down {
    let dir = out.parent().expect("dir");
    let mut spec = pb::JobSpec {
        name: "mig".into(),
        script: format!("#!/bin/sh\n{script}\n"),
        work_dir: dir.display().to_string(),
        ..Default::default()
    };
    TestCa::of(dir).seal_as_root(&mut spec);
    let job = pb::Job {
        id,
        spec: Some(spec),
        stdout_path: out.display().to_string(),
        stderr_path: out.display().to_string(),
        state: pb::JobState::Running as i32,
        allocations: vec![pb::Allocation {
            node: "n1".into(),
            cpus: 1,
            mig_slices: vec![pb::MigSlice {
                gpu_uuid: gpu.into(),
                profile: "3g.20gb".into(),
                placement_start: start,
                placement_size: 4,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Down::Launch(pb::LaunchJob { job: Some(job) })
}

async fn send(s: &Session, msg: Down) {
    let m = pb::ServerMessage {
        term: 1,
        msg: Some(msg),
    };
    s.down.send(Ok(m)).await.expect("agent stream open");
}

/// The next message from the agent that `pick` accepts (heartbeats etc. skipped).
async fn next<T>(s: &mut Session, what: &str, pick: impl Fn(pb::AgentMessage) -> Option<T>) -> T {
    let wait = async {
        loop {
            let msg = s.up.recv().await.expect("agent stream ended");
            if let Some(v) = pick(msg) {
                return v;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 30s"))
}

fn finished(id: u64) -> impl Fn(pb::AgentMessage) -> Option<pb::JobFinished> {
    move |m| match m.msg {
        Some(Up::JobEvent(pb::JobEvent {
            job_id,
            event: Some(pb::job_event::Event::Finished(f)),
        })) if job_id == id => Some(f),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_slices_are_carved_refused_and_survive_an_agent_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let machine = berth_simnvml::builtin("a100-mig").expect("shipped");
    let lib: PathBuf =
        berth_simnvml::install_node(&dir.join("nvml"), &berth_tests::simnvml(), &machine, "n1")
            .expect("install");
    // install_node seeds UUIDs with the node name.
    let mut seeded = machine.clone();
    seeded.uuid_seed = Some("n1".into());
    let gpu0 = seeded.gpu_uuid(0).expect("gpu 0");

    let port = free_port();
    let (sessions_tx, mut sessions) = mpsc::unbounded_channel();
    let service = pb::agent_service_server::AgentServiceServer::new(FakeLeader {
        sessions: sessions_tx,
    });
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(TestCa::of(dir).server_tls(1))
            .expect("TLS")
            .add_service(service)
            .serve(addr),
    );

    let mut first = agent(port, &dir.join("agent"), &lib);
    let mut s = tokio::time::timeout(Duration::from_secs(30), sessions.recv())
        .await
        .expect("agent attached")
        .expect("session");
    let marker = dir.join("go");
    let script = format!(
        "echo $CUDA_VISIBLE_DEVICES; while [ ! -e {} ]; do sleep 0.1; done",
        marker.display()
    );
    send(&s, launch(1, &gpu0, 4, &script, &dir.join("1.out"))).await;
    // The same placement again: busy. The job fails with the reason, nothing is carved.
    send(&s, launch(2, &gpu0, 4, "true", &dir.join("2.out"))).await;
    let refused = next(&mut s, "job 2 refused", finished(2)).await;
    assert_eq!(refused.state, pb::JobState::Failed as i32, "{refused:?}");
    assert!(refused.reason.contains("busy"), "{}", refused.reason);
    let out1 = dir.join("1.out");
    let seen = poll("job 1 printed its devices", 30, || {
        let text = std::fs::read_to_string(&out1).ok()?;
        (!text.trim().is_empty()).then(|| text.trim().to_string())
    });
    assert!(seen.starts_with("MIG-"), "{seen}");
    assert_eq!(
        mig_uuids(&lib),
        vec![seen.clone()],
        "exactly job 1's slice exists"
    );

    // kill -9 the agent while job 1 runs; a new agent re-attaches and still owns the slice.
    first.0.kill().expect("kill -9");
    first.0.wait().expect("reap");
    let _second = agent(port, &dir.join("agent"), &lib);
    let mut s = tokio::time::timeout(Duration::from_secs(30), sessions.recv())
        .await
        .expect("agent re-attached")
        .expect("session");
    let known = next(&mut s, "re-registration", |m| match m.msg {
        Some(Up::Register(r)) => Some(r.jobs),
        _ => None,
    })
    .await;
    assert!(
        known.iter().any(|e| e.job_id == 1),
        "job 1 re-attached: {known:?}"
    );
    assert_eq!(
        mig_uuids(&lib),
        vec![seen.clone()],
        "the slice survived the agent"
    );
    std::fs::write(&marker, "").expect("let job 1 end");
    let done = next(&mut s, "job 1 ends", finished(1)).await;
    assert_eq!(done.state, pb::JobState::Completed as i32, "{done:?}");
    poll("slice destroyed after the job", 30, || {
        mig_uuids(&lib).is_empty().then_some(())
    });
}
