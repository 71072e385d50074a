//! Throughput of berthd as a kube-scheduler extender: per pod, what kube-scheduler does
//! with `nodeCacheCapable: true` — `POST /filter` with the candidate node names,
//! `POST /prioritize` with the survivors, then `POST /bind` on the best — against one
//! in-process berthd replica with N registered 8-GPU nodes.
//!
//! Bind reads the pod from, patches it on and posts its Binding to an in-process stand-in
//! of the Kubernetes API (the four calls berthd makes, answered at once), so the numbers
//! are berthd's own cost: JSON, state lookups, the Raft commit (one sled flush) of each
//! bind, and the HTTP round trips on loopback.
//!
//! `cargo run --release -p berth-bench --bin extender_load -- [--nodes 5000] [--candidates 500]
//! [--pods 2000] [--clients 1,8]`

use anyhow::{bail, Context as _};
use axum::extract::Path;
use axum::routing::{get, post};
use berth_proto::v1 as pb;
use berth_scheduler::daemon::{Daemon, DaemonConfig};
use clap::Parser;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// GPU nodes registered with berthd (8 GPUs each).
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Node names per filter request (kube-scheduler sends those that passed its own
    /// filters, at most 10% of 5,000 nodes by default; `--candidates 5000` for all).
    #[arg(long, default_value_t = 500)]
    candidates: usize,
    /// Pods scheduled per level.
    #[arg(long, default_value_t = 2000)]
    pods: usize,
    /// Concurrent schedulers (each its own keep-alive connection), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<usize>,
}

fn pod_json(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"bench","uid":"uid-{name}"}},"spec":{{"containers":[{{"name":"c","image":"x","resources":{{"limits":{{"nvidia.com/gpu":"1"}}}}}}]}},"status":{{"phase":"Pending"}}}}"#
    )
}

/// The API server calls berthd makes, answered without work.
async fn fake_api() -> anyhow::Result<String> {
    let pod = |Path((_, name)): Path<(String, String)>| async move {
        ([("content-type", "application/json")], pod_json(&name))
    };
    let bound = || async {
        (
            axum::http::StatusCode::CREATED,
            [("content-type", "application/json")],
            r#"{"kind":"Status","apiVersion":"v1","status":"Success","code":201}"#,
        )
    };
    let list = || async {
        (
            [("content-type", "application/json")],
            r#"{"apiVersion":"v1","kind":"PodList","metadata":{},"items":[]}"#,
        )
    };
    let app = axum::Router::new()
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(pod).patch(pod))
        .route("/api/v1/namespaces/{ns}/pods/{name}/binding", post(bound))
        .route("/api/v1/pods", get(list));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// One keep-alive HTTP/1.1 connection, as kube-scheduler's client keeps.
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<String> {
        // One write per request: a head and a body in two small writes would wait on
        // Nagle and delayed ACKs (40 ms a request on loopback).
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: berthd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.0.get_mut().write_all(request.as_bytes()).await?;
        let mut status = String::new();
        self.0.read_line(&mut status).await?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await?;
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut out = vec![0; length];
        self.0.read_exact(&mut out).await?;
        if !status.contains(" 200 ") {
            bail!("{path}: {status}");
        }
        Ok(String::from_utf8(out)?)
    }
}

/// Round-trip times of the last pod's three requests (filter, prioritize, bind).
type VerbTimes = [Duration; 3];

/// What kube-scheduler reads of a filter answer (it decodes into the typed Go struct).
#[derive(serde::Deserialize)]
struct FilterAnswer {
    #[serde(rename = "NodeNames")]
    node_names: Option<Vec<String>>,
    #[serde(rename = "Error")]
    error: String,
}

/// One entry of a prioritize answer.
#[derive(serde::Deserialize)]
struct HostScore {
    #[serde(rename = "Host")]
    host: String,
    #[serde(rename = "Score")]
    score: i64,
}

/// What kube-scheduler reads of a bind answer.
#[derive(serde::Deserialize)]
struct BindAnswer {
    #[serde(rename = "Error")]
    error: String,
}

/// Filter, prioritize and bind one pod; returns the node it went to.
async fn schedule(
    conn: &mut Conn,
    pod: &str,
    candidates: &[String],
    times: &mut VerbTimes,
) -> anyhow::Result<String> {
    let names = serde_json::to_string(candidates)?;
    let args = format!(
        r#"{{"Pod":{},"Nodes":null,"NodeNames":{names}}}"#,
        pod_json(pod)
    );
    let t = Instant::now();
    let answer = conn.post("/filter", &args).await?;
    times[0] = t.elapsed();
    let filtered: FilterAnswer = serde_json::from_str(&answer)?;
    if !filtered.error.is_empty() {
        bail!("filter: {}", filtered.error);
    }
    let kept = serde_json::to_string(&filtered.node_names)?;
    let args = format!(
        r#"{{"Pod":{},"Nodes":null,"NodeNames":{kept}}}"#,
        pod_json(pod)
    );
    let t = Instant::now();
    let answer = conn.post("/prioritize", &args).await?;
    times[1] = t.elapsed();
    let scores: Vec<HostScore> = serde_json::from_str(&answer)?;
    let best = scores
        .into_iter()
        .max_by_key(|h| h.score)
        .map(|h| h.host)
        .context("no node fits")?;
    let args = format!(
        r#"{{"PodName":"{pod}","PodNamespace":"bench","PodUID":"uid-{pod}","Node":"{best}"}}"#
    );
    let t = Instant::now();
    let answer = conn.post("/bind", &args).await?;
    times[2] = t.elapsed();
    let bound: BindAnswer = serde_json::from_str(&answer)?;
    if !bound.error.is_empty() {
        bail!("bind: {}", bound.error);
    }
    Ok(best)
}

async fn register(daemon: &Daemon, nodes: usize) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::with_capacity(nodes);
    let mut pending = Vec::new();
    for n in 0..nodes {
        let name = format!("gpu{n:05}");
        let inv = pb::NodeInventory {
            name: name.clone(),
            partition: "k8s".into(),
            cpus: 128,
            memory_mb: 1 << 20,
            gpus: (0..8)
                .map(|g| pb::Gpu {
                    uuid: format!("GPU-{n:05}-{g}"),
                    index: g,
                    model: "NVIDIA H100 80GB HBM3".into(),
                    gres_type: "h100".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let raft = daemon.raft().clone();
        pending.push(tokio::spawn(async move {
            let cmd = pb::command::Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inv),
            });
            raft.propose(berth_scheduler::command::command(cmd)).await
        }));
        names.push(name);
        if pending.len() == 256 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    Ok(names)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.candidates >= 1 && args.candidates <= args.nodes,
        "--candidates is 1..=--nodes"
    );
    let dir = tempfile::tempdir()?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let daemon = Daemon::start(
        DaemonConfig::new(dir.path().join("berthd")),
        grpc,
        stop_rx.clone(),
    )?;
    anyhow::ensure!(
        daemon.wait_leader(Duration::from_secs(10)).await,
        "no leader"
    );
    let api = fake_api().await?;
    let kube =
        berth_scheduler::kube_api::start(Some(&api), daemon.raft().clone(), stop_rx.clone()).await;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = http.local_addr()?;
    berth_scheduler::http::spawn(http, daemon.api().clone(), kube, stop_rx);
    let t = Instant::now();
    let names = register(&daemon, args.nodes).await?;
    eprintln!(
        "{} nodes registered in {:.1} s",
        names.len(),
        t.elapsed().as_secs_f64()
    );
    println!("| nodes | names per filter | schedulers | pods/s | p50 per pod | p99 per pod | p50 filter / prioritize / bind | rescheduled |");
    println!("|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut next = 0usize;
    for &clients in &args.clients {
        let per = args.pods / clients.max(1);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients.max(1) {
            // Each scheduler offers a different window of candidates, as kube-scheduler
            // rotates where its node search starts.
            let offset = (c * 997) % names.len();
            let window: Vec<String> = names
                .iter()
                .cycle()
                .skip(offset)
                .take(args.candidates)
                .cloned()
                .collect();
            let first = next + c * per;
            tasks.push(tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut conn = Conn(BufReader::new(stream));
                let mut lat = Vec::with_capacity(per);
                let mut retries = 0u64;
                let mut verbs = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    let mut times = VerbTimes::default();
                    // Another scheduler may fill the chosen node between prioritize and
                    // bind; kube-scheduler then requeues the pod, and so do we.
                    while let Err(e) =
                        schedule(&mut conn, &format!("p{}", first + i), &window, &mut times).await
                    {
                        retries += 1;
                        anyhow::ensure!(retries <= 10 * per as u64, "too many failed binds: {e}");
                    }
                    lat.push(t.elapsed());
                    verbs.push(times);
                }
                anyhow::Ok((lat, retries, verbs))
            }));
        }
        let (mut lat, mut retries, mut verbs) = (Vec::new(), 0, Vec::new());
        for t in tasks {
            let (l, r, v) = t.await??;
            lat.extend(l);
            retries += r;
            verbs.extend(v);
        }
        let verb_p50 = |k: usize| {
            let mut d: Vec<Duration> = verbs.iter().map(|v: &VerbTimes| v[k]).collect();
            d.sort();
            d[d.len() / 2].as_secs_f64() * 1e3
        };
        next += per * clients.max(1);
        let secs = start.elapsed().as_secs_f64();
        lat.sort();
        println!(
            "| {} | {} | {clients} | {:.0} | {:.2} ms | {:.2} ms | {:.2} / {:.2} / {:.2} ms | {retries} |",
            args.nodes,
            args.candidates,
            lat.len() as f64 / secs,
            lat[lat.len() / 2].as_secs_f64() * 1e3,
            lat[lat.len() * 99 / 100].as_secs_f64() * 1e3,
            verb_p50(0),
            verb_p50(1),
            verb_p50(2)
        );
    }
    Ok(())
}
