//! Finding and connecting to berthd: `--server`, else `BERTH_SERVER` (a comma-separated
//! list, tried in order), else `http://127.0.0.1:7700`. TLS and the caller's proof come
//! from the server's profile (see `berth_auth::profile`): with a CA the connection is TLS
//! whatever the URL's scheme, and every call carries a fresh credential or a token.

pub use berth_auth::channel::AuthChannel as Channel;
use berth_proto::v1::{
    accounting_service_client::AccountingServiceClient, job_service_client::JobServiceClient,
    node_service_client::NodeServiceClient,
};

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
        match berth_auth::channel::connect(s, None).await {
            Ok(ch) => return Ok(ch),
            Err(e) => errors.push(e),
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

/// An accounting client on `channel` (sacct answers may be large).
pub fn accounting(channel: Channel) -> AccountingServiceClient<Channel> {
    AccountingServiceClient::new(channel).max_decoding_message_size(256 << 20)
}

/// Attempts of a call that berthd refuses as overloaded, at most.
pub const OVERLOAD_ATTEMPTS_MAX: u32 = 8;

/// Runs `call` until it returns anything but `RESOURCE_EXHAUSTED` (berthd's answer to load
/// beyond capacity), waiting `first_delay` and then twice as long each time (capped at
/// 2 s), at most [`OVERLOAD_ATTEMPTS_MAX`] attempts. Other errors return at once: only
/// an overload refusal is known to have changed nothing.
///
/// # Errors
/// The last refusal once the attempts are spent, or the first other error.
pub async fn with_backoff<T, F, Fut>(
    first_delay: std::time::Duration,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = first_delay;
    for attempt in 1.. {
        match call().await {
            Err(s)
                if s.code() == tonic::Code::ResourceExhausted
                    && attempt < OVERLOAD_ATTEMPTS_MAX =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

/// Sends `req` through `client` with `call`, retried by [`with_backoff`] from 20 ms: how
/// every state-changing command meets an overloaded berthd (the refusal comes before
/// anything was proposed, so the call is safe to repeat). Each attempt gets its own clone
/// of the client and the request, as tonic's calls take them.
///
/// # Errors
/// As [`with_backoff`].
pub async fn retried<C, R, T, F, Fut>(client: &C, req: R, call: F) -> Result<T, tonic::Status>
where
    C: Clone,
    R: Clone,
    F: Fn(C, R) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    with_backoff(std::time::Duration::from_millis(20), || {
        call(client.clone(), req.clone())
    })
    .await
}

/// The server's message of a failed call (what users should read).
pub fn status_text(s: &tonic::Status) -> String {
    s.message().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    #[tokio::test]
    async fn overload_refusals_are_retried_and_other_errors_are_not() {
        let calls = Cell::new(0);
        let got = with_backoff(Duration::from_millis(1), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(tonic::Status::resource_exhausted(
                        "resource exhausted, retry",
                    ))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 3);

        calls.set(0);
        let got: Result<(), _> = with_backoff(Duration::from_millis(1), || {
            calls.set(calls.get() + 1);
            async { Err(tonic::Status::invalid_argument("bad")) }
        })
        .await;
        assert_eq!(got.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(calls.get(), 1);

        calls.set(0);
        let got: Result<(), _> = with_backoff(Duration::from_millis(1), || {
            calls.set(calls.get() + 1);
            async { Err(tonic::Status::resource_exhausted("full")) }
        })
        .await;
        assert_eq!(got.unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert_eq!(calls.get(), OVERLOAD_ATTEMPTS_MAX);
    }
}
