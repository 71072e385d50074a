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
//! With `--compare-auth`, the same levels run three times in one process: against an
//! insecure replica (plain TCP, nobody proven), a secure one with local credentials (TLS,
//! a fresh single-use credential from an in-process credential daemon per call, as the
//! CLI on a cluster host), and a secure one with a `berth token` JWT (TLS, HS256 per
//! call). The secure replicas' per-client rate limit is off (`requests_per_sec = 0`): all
//! clients are one user, and the limit is a policy, not the cost measured.
//!
//! `--mode insecure|local|token` runs one of the three alone (so that `perf` sees one
//! mode per process).
//!
//! `cargo run --release -p berth-bench --bin submit_load -- [JOBS_PER_LEVEL] [C1,C2,...]
//! [--replicas N] [--via-follower] [--compare-auth | --mode M]`

use berth_auth::channel::AuthChannel;
use berth_auth::profile::Profile;
use berth_proto::v1 as pb;
use berth_scheduler::daemon::{Daemon, DaemonConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

async fn connect(url: &str, profile: &Profile) -> anyhow::Result<AuthChannel> {
    berth_auth::channel::connect(url, Some(profile))
        .await
        .map_err(anyhow::Error::msg)
}

async fn level(
    url: &str,
    profile: &Profile,
    clients: usize,
    jobs: usize,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let per = jobs / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, profile) = (url.to_string(), profile.clone());
        tasks.push(tokio::spawn(async move {
            let mut client =
                pb::job_service_client::JobServiceClient::new(connect(&url, &profile).await?);
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
    ca: Option<&Path>,
) -> anyhow::Result<(Vec<Daemon>, Vec<String>, tokio::sync::watch::Sender<bool>)> {
    let mut listeners = Vec::new();
    for _ in 0..replicas {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| {
            let scheme = if ca.is_some() { "https" } else { "http" };
            Ok(format!("{scheme}://{}", l.local_addr()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut daemons = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut cfg = DaemonConfig::new(root.join(format!("r{id}")));
        cfg.raft.id = id;
        if let Some(ca) = ca {
            cfg.security = Some(Arc::new(secure_replica(ca, root, id)?));
        }
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

/// Replica `id`'s security directory, issued from `ca`, with the rate limit off.
fn secure_replica(
    ca: &Path,
    root: &Path,
    id: u64,
) -> anyhow::Result<berth_scheduler::security::SecurityConfig> {
    use berth_auth::ca::{issue, Subject};
    let dir = root.join(format!("security-r{id}"));
    issue(ca, &Subject::Replica(id), &["127.0.0.1".into()], &dir, 1)?;
    std::fs::write(dir.join("auth.toml"), "requests_per_sec = 0\n")?;
    Ok(berth_scheduler::security::SecurityConfig::load(&dir)?)
}

/// How the clients and the node of one run connect.
struct Mode {
    /// What `--mode` calls it.
    key: &'static str,
    name: &'static str,
    ca: Option<PathBuf>,
    clients: Profile,
    node: Profile,
}

/// The three modes of `--compare-auth` (or just the insecure one): a CA, a credential
/// daemon and a token made under `root`.
async fn modes(root: &Path, compare: bool) -> anyhow::Result<Vec<Mode>> {
    let insecure = Mode {
        key: "insecure",
        name: "insecure (plain TCP, nobody proven)",
        ca: None,
        clients: Profile::default(),
        node: Profile::default(),
    };
    if !compare {
        return Ok(vec![insecure]);
    }
    use berth_auth::ca::{self, Subject};
    let ca_dir = root.join("ca");
    ca::init(&ca_dir, "bench", 1)?;
    let node_dir = root.join("node-big");
    ca::issue(&ca_dir, &Subject::Node("big".into()), &[], &node_dir, 1)?;
    let node = Profile {
        ca: Some(ca_dir.join(ca::CA_CERT)),
        cert: Some(node_dir.join(ca::CERT)),
        key: Some(node_dir.join(ca::KEY)),
        ..Default::default()
    };
    let socket = root.join("cred.sock");
    let key = Arc::new(berth_auth::key::ClusterKey::load(
        &ca_dir.join(ca::CLUSTER_KEY),
    )?);
    let listener = berth_auth::credd::bind(&socket)?;
    let (keep, stop) = tokio::sync::watch::channel(false);
    std::mem::forget(keep); // the daemon serves until the process ends
    tokio::spawn(berth_auth::credd::serve(listener, key, stop));
    let jwt = berth_auth::key::read_secret(&ca_dir.join(ca::JWT_KEY))?;
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())?
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into());
    let token = berth_auth::jwt::issue_hs256(&jwt, &user, 3600, berth_auth::now_ms() / 1000)?;
    let tls = |cred: Option<PathBuf>, token: Option<String>| Profile {
        ca: Some(ca_dir.join(ca::CA_CERT)),
        cred_socket: cred,
        token,
        ..Default::default()
    };
    Ok(vec![
        insecure,
        Mode {
            key: "local",
            name: "secure, local credential per call (TLS, SO_PEERCRED daemon, HMAC, replay cache)",
            ca: Some(ca_dir.clone()),
            clients: tls(Some(socket), None),
            node: node.clone(),
        },
        Mode {
            key: "token",
            name: "secure, berth token per call (TLS, HS256 JWT)",
            ca: Some(ca_dir.clone()),
            clients: tls(None, Some(token)),
            node,
        },
    ])
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
    let mut compare_auth = false;
    if let Some(i) = args.iter().position(|a| a == "--compare-auth") {
        compare_auth = true;
        args.remove(i);
    }
    // One mode alone, so a profile or `perf stat` of the process is that mode's.
    let mut only: Option<String> = None;
    if let Some(i) = args.iter().position(|a| a == "--mode") {
        anyhow::ensure!(i + 1 < args.len(), "--mode needs insecure, local or token");
        only = Some(args[i + 1].clone());
        anyhow::ensure!(
            matches!(only.as_deref(), Some("insecure" | "local" | "token")),
            "--mode is insecure, local or token"
        );
        args.drain(i..=i + 1);
        compare_auth = true;
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
    let mut baseline: Vec<f64> = Vec::new();
    for (m, mode) in modes(dir.path(), compare_auth)
        .await?
        .into_iter()
        .enumerate()
        .filter(|(_, mode)| only.as_deref().is_none_or(|k| k == mode.key))
    {
        let root = dir.path().join(format!("run{m}"));
        let (daemons, urls, _stop) = cluster(&root, replicas, mode.ca.as_deref()).await?;
        let leader = daemons
            .iter()
            .position(|d| d.raft().is_leader())
            .expect("a leader");
        let target = if via_follower {
            (leader + 1) % urls.len()
        } else {
            leader
        };
        let _agent = berth_bench::load_node::register(&urls[leader], &mode.node).await?;
        println!(
            "\n{replicas} replica(s), clients talk to the {}; {}",
            if via_follower {
                "a follower (forwarded)"
            } else {
                "leader"
            },
            mode.name
        );
        let cost = if m > 0 && only.is_none() {
            " | vs insecure |\n|---:|---:|---:|---:|---:|"
        } else {
            " |\n|---:|---:|---:|---:|"
        };
        println!("| clients | submits/s | p50 latency | p99 latency{cost}");
        for (i, c) in levels.iter().enumerate() {
            let (rate, p50, p99) =
                level(&urls[target], &mode.clients, (*c).max(1), jobs.max(*c)).await?;
            let vs = match baseline.get(i) {
                Some(b) if m > 0 && only.is_none() => {
                    format!(" {:+.1} % |", (rate / b - 1.0) * 100.0)
                }
                _ => String::new(),
            };
            if m == 0 {
                baseline.push(rate);
            }
            println!(
                "| {c} | {rate:.0} | {:.2} ms | {:.2} ms |{vs}",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
