//! Finding and connecting to berthd: `--server`, else `BERTH_SERVER` (a comma-separated
//! list, tried in order), else `http://127.0.0.1:7700`.

use berth_proto::v1::{
    job_service_client::JobServiceClient, node_service_client::NodeServiceClient,
};
use tonic::transport::{Channel, Endpoint};

/// Default berthd address (the one `berth dev` listens on by default).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";

/// Why no berthd could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every server failed; the message lists each with its error.
    #[error("cannot reach berthd ({0}); is it running? (start one with `berth dev`, or set BERTH_SERVER)")]
    Unreachable(String),
}

/// The server list from `--server` or the environment.
pub fn servers(flag: Option<&str>) -> Vec<String> {
    let raw = flag
        .map(str::to_string)
        .or_else(|| std::env::var("BERTH_SERVER").ok())
        .unwrap_or_else(|| DEFAULT_SERVER.into());
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
        })
        .collect()
}

/// Connects to the first server that answers.
///
/// # Errors
/// [`ConnectError::Unreachable`] when none does.
pub async fn connect(servers: &[String]) -> Result<Channel, ConnectError> {
    let mut errors = Vec::new();
    for s in servers {
        let endpoint = match Endpoint::from_shared(s.clone()) {
            // TCP_NODELAY: a call's small writes must not wait for delayed ACKs (40 ms).
            Ok(e) => e
                .tcp_nodelay(true)
                .connect_timeout(std::time::Duration::from_secs(3)),
            Err(e) => {
                errors.push(format!("{s}: {e}"));
                continue;
            }
        };
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => errors.push(format!("{s}: {e}")),
        }
    }
    Err(ConnectError::Unreachable(errors.join("; ")))
}

/// A job client on `channel`, accepting large replies (a job list with scripts).
pub fn jobs(channel: Channel) -> JobServiceClient<Channel> {
    JobServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(8 << 20)
}

/// A node client on `channel`.
pub fn nodes(channel: Channel) -> NodeServiceClient<Channel> {
    NodeServiceClient::new(channel).max_decoding_message_size(64 << 20)
}
