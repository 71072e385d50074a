//! Submit throughput of one berthd replica at several client concurrencies.
//!
//! Runs a real single-voter berthd in-process (raft-rs + sled in a temp dir, gRPC on
//! loopback), registers one large fake node over the agent protocol, then has C concurrent
//! clients submit held jobs (held, so the scheduler does not launch them and only the
//! submit path is measured). Every submit is durable before it is acknowledged: proposals
//! that arrive while one flush is in progress share the next flush, which is why throughput
//! should grow with concurrency.
//!
//! `cargo run --release -p berth-bench --bin submit_load -- [JOBS_PER_LEVEL] [C1,C2,...]`

use berth_proto::v1 as pb;
use berth_scheduler::daemon::{Daemon, DaemonConfig};
use std::time::{Duration, Instant};

fn spec(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        name: format!("load{i}"),
        script: "#!/bin/sh\ntrue\n".into(),
        work_dir: "/tmp".into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        hold: true,
        ..Default::default()
    }
}

async fn register_node(url: String) -> anyhow::Result<tokio::sync::mpsc::Sender<pb::AgentMessage>> {
    let mut client = pb::agent_service_client::AgentServiceClient::connect(url).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let inv = pb::NodeInventory {
        name: "big".into(),
        partition: "gpu".into(),
        cpus: 1 << 20,
        memory_mb: 1 << 30,
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            inventory: Some(inv),
            jobs: vec![],
        })),
    })
    .await?;
    let mut down = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    down.message().await?;
    tokio::spawn(async move { while let Ok(Some(_)) = down.message().await {} });
    Ok(tx)
}

async fn level(
    url: &str,
    clients: usize,
    jobs: usize,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let per = jobs / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::job_service_client::JobServiceClient::connect(url).await?;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                client
                    .submit(pb::SubmitRequest {
                        spec: Some(spec(c * per + i)),
                    })
                    .await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    Ok((
        lat.len() as f64 / secs,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let levels: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').map(|x| x.parse()).collect())
        .transpose()?
        .unwrap_or(vec![1, 8, 64]);
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let daemon = Daemon::start(
        DaemonConfig::new(dir.path().join("berthd")),
        listener,
        stop_rx,
    )?;
    anyhow::ensure!(
        daemon.wait_leader(Duration::from_secs(10)).await,
        "no leader"
    );
    let _agent = register_node(url.clone()).await?;
    println!("| clients | submits/s | p50 latency | p99 latency |");
    println!("|---:|---:|---:|---:|");
    for c in levels {
        let (rate, p50, p99) = level(&url, c.max(1), jobs.max(c)).await?;
        println!(
            "| {c} | {rate:.0} | {:.2} ms | {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
