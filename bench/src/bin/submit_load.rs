//! Submit throughput of berthd (one replica, or a Raft group) at several client
//! concurrencies.
//!
//! Runs real berthd replicas in-process (raft-rs + sled in temp dirs, gRPC on loopback; with
//! `--replicas N` a group of N whose leader replicates every entry to a quorum before it is
//! acknowledged), registers one large fake node over the agent protocol, then has C concurrent
//! clients submit held jobs (held, so the scheduler does not launch them and only the
//! submit path is measured). Every submit is durable before it is acknowledged: proposals
//! that arrive while one flush is in progress share the next flush, which is why throughput
//! should grow with concurrency.
//!
//! `cargo run --release -p berth-bench --bin submit_load -- [JOBS_PER_LEVEL] [C1,C2,...]
//! [--replicas N] [--via-follower]`

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
            ..Default::default()
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

/// Starts `replicas` berthd replicas in this process (a single voter when 1) and returns
/// them with their URLs, once one of them leads.
async fn cluster(
    root: &std::path::Path,
    replicas: u64,
) -> anyhow::Result<(Vec<Daemon>, Vec<String>, tokio::sync::watch::Sender<bool>)> {
    let mut listeners = Vec::new();
    for _ in 0..replicas {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| Ok(format!("http://{}", l.local_addr()?)))
        .collect::<anyhow::Result<_>>()?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut daemons = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut cfg = DaemonConfig::new(root.join(format!("r{id}")));
        cfg.raft.id = id;
        if replicas > 1 {
            cfg.raft.peers = (1..).zip(urls.iter().cloned()).collect();
        }
        daemons.push(Daemon::start(cfg, listener, stop_rx.clone())?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemons.iter().any(|d| d.raft().is_leader()) {
        anyhow::ensure!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((daemons, urls, stop))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut replicas = 1u64;
    let mut via_follower = false;
    if let Some(i) = args.iter().position(|a| a == "--replicas") {
        anyhow::ensure!(i + 1 < args.len(), "--replicas needs a number");
        replicas = args[i + 1].parse()?;
        anyhow::ensure!((1..=7).contains(&replicas), "--replicas is 1 to 7");
        args.drain(i..=i + 1);
    }
    if let Some(i) = args.iter().position(|a| a == "--via-follower") {
        via_follower = true;
        args.remove(i);
    }
    let jobs: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let levels: Vec<usize> = args
        .get(1)
        .map(|s| s.split(',').map(|x| x.parse()).collect())
        .transpose()?
        .unwrap_or(vec![1, 8, 64]);
    anyhow::ensure!(
        !via_follower || replicas > 1,
        "--via-follower needs --replicas > 1"
    );
    let dir = tempfile::tempdir()?;
    let (daemons, urls, _stop) = cluster(dir.path(), replicas).await?;
    let leader = daemons
        .iter()
        .position(|d| d.raft().is_leader())
        .expect("a leader");
    let target = if via_follower {
        (leader + 1) % urls.len()
    } else {
        leader
    };
    let _agent = register_node(urls[leader].clone()).await?;
    println!(
        "{replicas} replica(s), clients talk to the {}",
        if via_follower {
            "a follower (forwarded)"
        } else {
            "leader"
        }
    );
    println!("| clients | submits/s | p50 latency | p99 latency |");
    println!("|---:|---:|---:|---:|");
    for c in levels {
        let (rate, p50, p99) = level(&urls[target], c.max(1), jobs.max(c)).await?;
        println!(
            "| {c} | {rate:.0} | {:.2} ms | {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
