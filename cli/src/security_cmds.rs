//! Security commands: `berth admin ca init|issue` (the cluster CA), `berth token` (a JWT
//! from berthd, as Slurm's `scontrol token`), `berth admin audit` (the audit log), and
//! `berth credd` (the credential daemon of a login host).

use crate::client;
use berth_auth::ca::{self, Subject};
use berth_proto::v1::{self as pb, admin_service_client::AdminServiceClient};
use clap::Parser;
use std::path::PathBuf;

/// `berth admin ca …`: needs no server.
///
/// # Errors
/// Bad arguments or files.
pub fn ca_cmd(words: &[&str]) -> anyhow::Result<i32> {
    #[derive(Parser)]
    #[command(name = "berth admin ca", about = "the cluster CA")]
    enum Ca {
        /// Create a CA (ca.pem, ca.key), the cluster key and berthd's JWT key in DIR.
        Init {
            dir: PathBuf,
            /// A name for the cluster (in the CA's common name).
            #[arg(long, default_value = "berth")]
            name: String,
            #[arg(long, default_value_t = 3650)]
            days: u32,
        },
        /// Issue a certificate into --out (a directory ready to copy to that host).
        Issue {
            /// The CA directory (from `ca init`).
            #[arg(long)]
            ca: PathBuf,
            /// An agent's node.
            #[arg(long, conflicts_with_all = ["replica", "user", "service"])]
            node: Option<String>,
            /// A berthd replica's Raft id.
            #[arg(long, conflicts_with_all = ["user", "service"])]
            replica: Option<u64>,
            /// A user.
            #[arg(long, conflicts_with = "service")]
            user: Option<String>,
            /// A service (e.g. kube-scheduler calling the extender).
            #[arg(long)]
            service: Option<String>,
            /// Host names or IP addresses the holder serves on (replicas), comma-separated.
            #[arg(long, value_delimiter = ',')]
            host: Vec<String>,
            #[arg(long)]
            out: PathBuf,
            #[arg(long, default_value_t = 365)]
            days: u32,
        },
    }
    let parsed = Ca::try_parse_from(std::iter::once("berth admin ca").chain(words.iter().copied()));
    let cmd = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cmd {
        Ca::Init { dir, name, days } => {
            ca::init(&dir, &name, days)?;
            println!("CA created in {}: ca.pem (give to every host), ca.key (keep here), cluster.key (daemons only), jwt.key (berthd only)", dir.display());
        }
        Ca::Issue {
            ca: ca_dir,
            node,
            replica,
            user,
            service,
            host,
            out,
            days,
        } => {
            let subject = match (node, replica, user, service) {
                (Some(n), None, None, None) => Subject::Node(n),
                (None, Some(r), None, None) => Subject::Replica(r),
                (None, None, Some(u), None) => Subject::User(u),
                (None, None, None, Some(s)) => Subject::Service(s),
                _ => anyhow::bail!("give exactly one of --node, --replica, --user, --service"),
            };
            let mut hosts = host;
            if matches!(subject, Subject::Replica(_)) && hosts.is_empty() {
                hosts = vec!["localhost".into(), "127.0.0.1".into()];
            }
            let files = ca::issue(&ca_dir, &subject, &hosts, &out, days)?;
            println!("issued {} into {}:", subject.uri(), out.display());
            for f in files {
                println!("  {}", f.display());
            }
        }
    }
    Ok(0)
}

/// `berth token [--user U] [--lifespan S]`.
///
/// # Errors
/// Bad arguments, or berthd's refusal.
pub async fn token(args: Vec<String>) -> anyhow::Result<i32> {
    #[derive(Parser)]
    #[command(
        name = "berth token",
        about = "a JWT for BERTH_TOKEN (as scontrol token)"
    )]
    struct Token {
        /// The user (default: you; another user needs the admin role).
        #[arg(long)]
        user: Option<String>,
        /// Seconds the token is valid (default 1800).
        #[arg(long, default_value_t = 1800)]
        lifespan: u64,
    }
    let t = match Token::try_parse_from(std::iter::once("berth token".to_string()).chain(args)) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let channel = client::connect(&client::servers(None)).await?;
    let r = AdminServiceClient::new(channel)
        .issue_token(pb::TokenRequest {
            user: t.user.unwrap_or_default(),
            lifespan_secs: t.lifespan,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    // scontrol token's output form, ready for `export`.
    println!("BERTH_TOKEN={}", r.token);
    Ok(0)
}

/// `berth admin audit [--since TIME] [--until TIME] [--user U] [--method M] [--failed]
/// [--local] [--limit N]`.
///
/// # Errors
/// Bad arguments, or berthd's refusal.
pub async fn audit(
    words: &[&str],
    c: &mut AdminServiceClient<client::Channel>,
) -> anyhow::Result<i32> {
    #[derive(Parser)]
    #[command(
        name = "berth admin audit",
        about = "the audit log: every replica's records, merged by time"
    )]
    struct Audit {
        /// Start: YYYY-MM-DDTHH:MM:SS (UTC), or now-SECONDS (e.g. now-3600).
        #[arg(long)]
        since: Option<String>,
        /// End (exclusive), in the same forms as --since.
        #[arg(long)]
        until: Option<String>,
        /// Only this user's calls.
        #[arg(long)]
        user: Option<String>,
        /// Only methods whose name contains this (e.g. Cancel, SetAccounts, /bind).
        #[arg(long)]
        method: Option<String>,
        /// Only refused or failed calls.
        #[arg(long)]
        failed: bool,
        /// Only the replica reached (not its peers).
        #[arg(long)]
        local: bool,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    }
    let a = match Audit::try_parse_from(
        std::iter::once("berth admin audit").chain(words.iter().copied()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let since_ms = match &a.since {
        None => 0,
        Some(s) => parse_since(s, crate::now_ms()).map_err(anyhow::Error::msg)?,
    };
    let until_ms = match &a.until {
        None => 0,
        Some(s) => parse_since(s, crate::now_ms())
            .map_err(|e| anyhow::anyhow!("{}", e.replace("--since", "--until")))?,
    };
    if until_ms != 0 && until_ms <= since_ms {
        anyhow::bail!("--until must be after --since");
    }
    let got = c
        .query_audit(pb::AuditQuery {
            since_ms,
            until_ms,
            user: a.user.unwrap_or_default(),
            method: a.method.unwrap_or_default(),
            failed_only: a.failed,
            local_only: a.local,
            limit: a.limit,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    for r in &got.records {
        println!("{}", audit_line(r));
    }
    // Records of a replica that is down are not lost, only out of reach until it is back.
    for u in &got.unreachable {
        eprintln!("berth admin audit: records not read from {u}");
    }
    Ok(if got.unreachable.is_empty() { 0 } else { 1 })
}

/// One audit record as printed: time, user, how proven, from, method, what, result.
pub fn audit_line(r: &pb::AuditRecord) -> String {
    let t = chrono::DateTime::from_timestamp_millis(r.time_ms as i64)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let user = if r.user.is_empty() { "-" } else { &r.user };
    let method = r.method.strip_prefix("/berth.v1.").unwrap_or(&r.method);
    let what = if r.what.is_empty() { "-" } else { &r.what };
    format!(
        "{t} replica={} user={user} auth={} from={} {method} {what} => {}",
        r.replica, r.auth, r.from, r.result
    )
}

/// `--since`: `YYYY-MM-DDTHH:MM:SS` (UTC) or `now-SECONDS`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Some(secs) = s.strip_prefix("now-") {
        let secs: u64 = secs
            .parse()
            .map_err(|_| format!("--since {s:?}: now-SECONDS"))?;
        return Ok(now_ms.saturating_sub(secs * 1000));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .map(|t| t.and_utc().timestamp_millis().max(0) as u64)
        .map_err(|_| format!("--since {s:?}: want YYYY-MM-DDTHH:MM:SS (UTC) or now-SECONDS"))
}

/// `berth credd --security-dir DIR [--socket PATH]`: the credential daemon of a login host.
///
/// # Errors
/// Bad arguments, an unreadable key, or a socket that cannot be bound.
pub async fn credd(args: Vec<String>) -> anyhow::Result<i32> {
    #[derive(Parser)]
    #[command(
        name = "berth credd",
        about = "prove local users' uids to berthd (login hosts)"
    )]
    struct Credd {
        /// Directory holding cluster.key.
        #[arg(long, default_value = "/etc/berth")]
        security_dir: PathBuf,
        #[arg(long, default_value = berth_auth::credd::SOCKET_DEFAULT)]
        socket: PathBuf,
    }
    let c = match Credd::try_parse_from(std::iter::once("berth credd".to_string()).chain(args)) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let key = berth_auth::key::ClusterKey::load(&c.security_dir.join(ca::CLUSTER_KEY))?;
    let sock = berth_auth::credd::bind(&c.socket)?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    eprintln!("berth credd: serving credentials on {}", c.socket.display());
    let serve = tokio::spawn(berth_auth::credd::serve(
        sock,
        std::sync::Arc::new(key),
        stop,
    ));
    crate::dev::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = serve.await;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_two_forms_and_refuses_others() {
        assert_eq!(parse_since("now-10", 100_000), Ok(90_000));
        assert_eq!(parse_since("1970-01-01T00:00:01", 0), Ok(1000));
        for bad in ["yesterday", "now-x", "2024-01-01"] {
            assert!(parse_since(bad, 0).is_err(), "{bad}");
        }
    }
}
