//! What goes over the wire: every server socket of berthd (gRPC, HTTP) and berth-agent
//! (metrics) has TCP_NODELAY set, and each CLI command opens one connection and makes the
//! number of calls its design says (sbatch: one Submit; squeue: one ListPages;
//! `scontrol show job N`: one Get; sinfo: one NodeService List).
//!
//! The daemon runs in this process, so the server's accepted sockets are this process's
//! file descriptors: the test reads TCP_NODELAY on them with getsockopt, the very option
//! the kernel applies (a check that cannot pass unless the server set it — the control
//! case shows an accepted socket that nobody configured reads `false`).

use berth_proto::v1 as pb;
use berth_scheduler::daemon::{Daemon, DaemonConfig};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd as _;
use std::time::Duration;

/// `(local, peer, TCP_NODELAY)` of every connected TCP socket of this process.
fn tcp_sockets() -> Vec<(SocketAddr, SocketAddr, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let entry = entry.expect("fd entry");
        let is_socket = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the fd is open and owned elsewhere; ManuallyDrop never closes it, and only
        // getsockname/getpeername/getsockopt are called on it.
        let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let (Ok(local), Ok(peer), Ok(nodelay)) =
            (stream.local_addr(), stream.peer_addr(), stream.nodelay())
        else {
            continue; // a listener, a Unix socket, or closed meanwhile
        };
        out.push((local, peer, nodelay));
    }
    out
}

/// TCP_NODELAY of every socket this process accepted on `port`; panics when there is none.
fn accepted_on(port: u16) -> Vec<bool> {
    let found: Vec<bool> = tcp_sockets()
        .into_iter()
        .filter(|(local, _, _)| local.port() == port)
        .map(|(_, _, nodelay)| nodelay)
        .collect();
    assert!(!found.is_empty(), "no accepted connection on port {port}");
    found
}

async fn register_node(url: String) -> tokio::sync::mpsc::Sender<pb::AgentMessage> {
    let mut client = pb::agent_service_client::AgentServiceClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let inv = pb::NodeInventory {
        name: "n1".into(),
        partition: "gpu".into(),
        cpus: 64,
        memory_mb: 1 << 20,
        ..Default::default()
    };
    let register = pb::Register {
        inventory: Some(inv),
        jobs: vec![],
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(register)),
    })
    .await
    .unwrap();
    let mut down = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    down.message().await.unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = down.message().await {} });
    tx
}

/// Calls served between two readings, without the ones that did not change.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sockets_set_nodelay_and_each_command_makes_one_call_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let daemon = Daemon::start(
        DaemonConfig::new(dir.path().join("r1")),
        listener,
        stop_rx.clone(),
    )
    .unwrap();
    assert!(daemon.wait_leader(Duration::from_secs(10)).await);
    // The agent's stream stays open: one accepted gRPC socket to inspect.
    let _agent = register_node(url.clone()).await;
    assert!(
        accepted_on(port).iter().all(|&on| on),
        "gRPC server socket without TCP_NODELAY"
    );

    // The HTTP endpoint (extender, /metrics): a keep-alive request leaves the socket open.
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    berth_scheduler::http::spawn(
        http,
        daemon.api().clone(),
        Err("no cluster".into()),
        stop_rx.clone(),
    );
    let http_client = get_keep_alive(http_port).await;
    assert!(
        accepted_on(http_port).iter().all(|&on| on),
        "HTTP socket without TCP_NODELAY"
    );

    // The agent's metrics endpoint.
    let metrics_dir = tempfile::tempdir().unwrap();
    let src = berth_agent::metrics::MetricsSource {
        gpus: std::sync::Arc::new(berth_agent::gpu::NoGpus),
        state_dir: metrics_dir.path().to_path_buf(),
        node: "n1".into(),
    };
    let metrics_url = berth_agent::metrics::spawn("127.0.0.1:0", src, stop_rx.clone())
        .await
        .unwrap();
    let metrics_port: u16 = metrics_url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let metrics_client = get_keep_alive(metrics_port).await;
    assert!(
        accepted_on(metrics_port).iter().all(|&on| on),
        "agent metrics socket without TCP_NODELAY"
    );
    drop((http_client, metrics_client));

    // Control: a socket accepted without configuring it reads false, so the checks above
    // see the servers' setting, not a default.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
    let (_accepted, _) = plain.accept().unwrap();
    assert_eq!(accepted_on(plain.local_addr().unwrap().port()), vec![false]);

    // Each command: one new connection, and exactly the calls its design says.
    std::env::set_var("BERTH_SERVER", &url);
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "sbatch",
            &["-H", "--wrap=true"],
            &["/berth.v1.JobService/Submit"],
        ),
        (
            "squeue",
            &["-h", "-j", "1"],
            &["/berth.v1.JobService/ListPages"],
        ),
        (
            "scontrol",
            &["show", "job", "1"],
            &["/berth.v1.JobService/Get"],
        ),
        ("sinfo", &[], &["/berth.v1.NodeService/List"]),
    ];
    for (cmd, args, want_calls) in cases {
        let stats = daemon.wire_stats();
        let (conns, calls) = (stats.connections(), stats.calls());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        assert_eq!(berth_cli::commands::run(cmd, args).await, 0, "{cmd} failed");
        let want: BTreeMap<String, u64> = want_calls.iter().map(|p| (p.to_string(), 1)).collect();
        assert_eq!(delta(&calls, &stats.calls()), want, "{cmd}: calls");
        assert_eq!(stats.connections() - conns, 1, "{cmd}: connections");
    }
}

/// Sends one keep-alive `GET /metrics` to `port`, reads the reply's head, and returns the
/// still-open connection.
async fn get_keep_alive(port: u16) -> TcpStream {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200", "port {port}");
        s
    })
    .await
    .unwrap()
}
