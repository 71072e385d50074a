//! The daemon's side of its TCP connections: every accepted connection gets `TCP_NODELAY`,
//! and the daemon counts the connections it accepts and the calls it serves.
//!
//! Why `TCP_NODELAY`: a gRPC reply leaves as several small writes (headers, data,
//! trailers). With Nagle's algorithm the later writes wait for the ACK of the first, and
//! the client's delayed-ACK timer holds that ACK for up to 40 ms on Linux: a call that
//! costs 4 ms of CPU took 48 ms of wall time. tonic's `Server::tcp_nodelay` only applies to
//! listeners tonic binds itself; berthd is handed a bound listener (so port 0 works and the
//! caller knows the address), so the option is set here, on each accepted stream, for the
//! gRPC server and the HTTP endpoint alike.
//!
//! Why counting: "one connection per CLI process, one call per command" is a design rule;
//! [`WireStats`] lets a test (and an operator) see what a command really sent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_stream::{Stream, StreamExt as _};
use tonic::codegen::http;

/// Connections accepted and calls served by one daemon, since it started.
#[derive(Debug, Default)]
pub struct WireStats {
    connections: AtomicU64,
    calls: Mutex<BTreeMap<String, u64>>,
}

impl WireStats {
    /// TCP connections accepted by the gRPC server.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Calls served, by gRPC path (`/berth.v1.JobService/Submit`).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count_call(&self, path: &str) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        // Paths come from clients: only the daemon's own services are kept by name, so a
        // client cannot grow the map without bound.
        let key = if path.starts_with("/berth.v1.") && path.len() <= 64 {
            path
        } else {
            "other"
        };
        *calls.entry(key.to_string()).or_default() += 1;
    }
}

/// The accepted connections of `listener`, each with `TCP_NODELAY` set, counted in
/// `stats`. For tonic's `serve_with_incoming*`.
pub fn incoming(
    listener: tokio::net::TcpListener,
    stats: Arc<WireStats>,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    counted(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        stats,
    )
}

/// `conns` (plain or TLS streams, already `TCP_NODELAY`), each accepted one counted in
/// `stats`.
pub fn counted<T>(
    conns: impl Stream<Item = std::io::Result<T>>,
    stats: Arc<WireStats>,
) -> impl Stream<Item = std::io::Result<T>> {
    conns.map(move |accepted| {
        if accepted.is_ok() {
            stats.connections.fetch_add(1, Ordering::Relaxed);
        }
        accepted
    })
}

/// A tower layer for tonic's server that counts every call in `stats` by path.
pub fn count_calls<B>(
    stats: Arc<WireStats>,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<B>) -> http::Request<B> + Clone + Send + Sync + 'static,
> {
    tower::util::MapRequestLayer::new(move |req: http::Request<B>| {
        stats.count_call(req.uri().path());
        req
    })
}

/// `listener` for `axum::serve`, with `TCP_NODELAY` on every accepted connection.
pub fn http_listener(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(set_nodelay)
}

fn set_nodelay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!("cannot set TCP_NODELAY on an HTTP connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_outside_berth_services_share_one_counter() {
        let stats = WireStats::default();
        stats.count_call("/berth.v1.JobService/Submit");
        stats.count_call("/berth.v1.JobService/Submit");
        stats.count_call("/x.Y/Z");
        stats.count_call(&format!("/berth.v1.{}", "A".repeat(100)));
        let want: BTreeMap<String, u64> = [
            ("/berth.v1.JobService/Submit".to_string(), 2),
            ("other".to_string(), 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(stats.calls(), want);
    }
}
