//! `squeue` over a large queue: wall time and peak memory of the real `berth squeue`
//! process against a berthd holding N queued jobs.
//!
//! Starts one berthd in this process (raft-rs + sled in a temp dir, insecure, gRPC on
//! loopback), registers one large fake node, submits N held jobs through the gRPC submit
//! path with 64 concurrent clients (held, so nothing starts and every job stays in the
//! queue), then runs `berth squeue -h` (the binary next to this one, or `--berth PATH`)
//! R times and reports the lines printed, the wall time of each run (median and worst)
//! and the largest peak RSS of the squeue process, read by GNU time (`/usr/bin/time`,
//! Debian package `time`): getrusage of this process's children would count the image a
//! child has between fork and exec, which is this whole process with its berthd.
//!
//! `cargo build --release --workspace && target/release/squeue_load [JOBS] [RUNS]
//! [--berth PATH]`

use berth_proto::v1 as pb;
use berth_scheduler::daemon::{Daemon, DaemonConfig};
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;

fn spec(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        name: format!("q{i}"),
        // A script of a realistic size: squeue must not carry it.
        script: format!("#!/bin/sh\n{}\ntrue\n", "# padding".repeat(100)),
        work_dir: "/tmp".into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        hold: true,
        user: "bench".into(),
        ..Default::default()
    }
}

async fn fill(url: &str, jobs: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let per = jobs.div_ceil(CLIENTS);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)?
                .connect()
                .await?;
            let mut client = pb::job_service_client::JobServiceClient::new(channel)
                .max_encoding_message_size(8 << 20);
            for i in (c * per)..((c + 1) * per).min(jobs) {
                client
                    .submit(pb::SubmitRequest {
                        spec: Some(spec(i)),
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

const GNU_TIME: &str = "/usr/bin/time";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<usize> = args
        .iter()
        .take_while(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("JOBS and RUNS are numbers: {e}"))?;
    let jobs = numbers.first().copied().unwrap_or(100_000);
    let runs = numbers.get(1).copied().unwrap_or(5).max(1);
    let berth = berth_bench::berth_cli::berth_binary(&args)?;

    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut cfg = DaemonConfig::new(dir.path().join("r1"));
    // Held jobs never start: passes would only add noise.
    cfg.schedule_interval = Duration::from_secs(3600);
    let daemon = Daemon::start(cfg, listener, stop_rx)?;
    anyhow::ensure!(
        daemon.wait_leader(Duration::from_secs(10)).await,
        "no leader within 10 s"
    );
    let _node = berth_bench::load_node::register(&url, &Default::default()).await?;
    eprintln!("submitting {jobs} held jobs with {CLIENTS} clients…");
    let secs = fill(&url, jobs).await?;
    eprintln!(
        "queued in {secs:.1} s ({:.0} submits/s)",
        jobs as f64 / secs
    );

    let mut times = Vec::new();
    let mut lines = 0;
    let mut rss_kib: Option<u64> = None;
    let rss_file = dir.path().join("maxrss");
    let timed = std::path::Path::new(GNU_TIME).exists();
    for _ in 0..runs {
        let mut cmd = if timed {
            let mut c = tokio::process::Command::new(GNU_TIME);
            c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(&berth);
            c
        } else {
            tokio::process::Command::new(&berth)
        };
        let t = Instant::now();
        let out = cmd
            .args(["squeue", "-h"])
            .env("BERTH_SERVER", &url)
            .output()
            .await?;
        times.push(t.elapsed());
        if let Some(kib) = std::fs::read_to_string(&rss_file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            rss_kib = Some(rss_kib.unwrap_or(0).max(kib));
        }
        anyhow::ensure!(
            out.status.success(),
            "squeue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines = out.stdout.iter().filter(|b| **b == b'\n').count();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| jobs queued | squeue lines | runs | median wall | worst wall | peak RSS of squeue |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let rss = rss_kib.map_or_else(
        || format!("n/a (no {GNU_TIME})"),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    );
    println!(
        "| {jobs} | {lines} | {runs} | {:.0} ms | {:.0} ms | {rss} |",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
    );
    anyhow::ensure!(
        lines == jobs,
        "squeue printed {lines} lines for {jobs} jobs"
    );
    Ok(())
}
