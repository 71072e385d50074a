//! The credential daemon: on a unix socket any local user may connect to, it reads the
//! caller's uid and gid from the kernel (`SO_PEERCRED`, which the caller cannot lie about),
//! resolves the user's name and groups on this host, and answers signed
//! [`LocalCredential`]s. berth-agent runs one on every compute node and `berth credd` on
//! login nodes; both need the cluster key, so only root runs them.
//!
//! The protocol is one line each way and then close: the client writes
//! `berth-cred N\n` (1 ≤ N ≤ [`BATCH_MAX`]) and reads N credentials, one a line, each with
//! a nonce of its own, so each is still single-use. A client that makes many calls (a
//! submit loop, a workflow engine) asks for a few at a time and spends one per call
//! ([`CredentialPool`]): the connection, the kernel's peer check and the user database
//! lookup are paid once per batch instead of once per call.

use crate::credential::{LocalCredential, TTL_MS_DEFAULT};
use crate::key::{hex, random_bytes, ClusterKey};
use crate::{now_ms, AuthError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

/// Default socket on cluster hosts.
pub const SOCKET_DEFAULT: &str = "/run/berth/cred.sock";
/// Most credentials one request may ask for.
pub const BATCH_MAX: usize = 32;
/// How long the daemon waits for a connection's request line.
const REQUEST_WAIT: Duration = Duration::from_secs(1);
/// Longest request line read (`berth-cred 32\n` is 14 bytes).
const REQUEST_BYTES_MAX: u64 = 64;
/// A pooled credential older than this is dropped unused: it keeps at least half of its
/// [`TTL_MS_DEFAULT`] lifetime (and the tolerated clock skew) for the call that spends it.
const POOL_AGE_MS_MAX: u64 = TTL_MS_DEFAULT / 2;

/// Binds the socket at `path` (a stale socket is replaced), world-connectable.
///
/// # Errors
/// [`AuthError::Credd`] when it cannot be bound.
pub fn bind(path: &Path) -> Result<UnixListener, AuthError> {
    let err = |e: std::io::Error| AuthError::Credd {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // Anyone may ask who they are: the answer is about the asker only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// A caller as the kernel reported it, with its name and groups on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    uid: u32,
    gid: u32,
    user: String,
    gids: Vec<u32>,
    host: String,
}

impl Caller {
    /// Resolves `uid`'s name and supplementary groups in this host's user database.
    pub fn resolve(uid: u32, gid: u32, host: String) -> Caller {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let name = user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
        let gids = user
            .as_ref()
            .and_then(|u| {
                let cname = std::ffi::CString::new(u.name.clone()).ok()?;
                nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(gid)).ok()
            })
            .map(|g| {
                g.into_iter()
                    .map(|g| g.as_raw())
                    .filter(|g| *g != gid)
                    .collect()
            })
            .unwrap_or_default();
        Caller {
            uid,
            gid,
            user: name,
            gids,
            host,
        }
    }
}

/// `n` credentials for `caller`, each with a nonce of its own.
pub fn issue_many(
    key: &ClusterKey,
    caller: &Caller,
    n: usize,
    ttl_ms: u64,
    now: u64,
) -> Vec<String> {
    (0..n)
        .map(|_| {
            LocalCredential {
                v: 1,
                uid: caller.uid,
                user: caller.user.clone(),
                gid: caller.gid,
                gids: caller.gids.clone(),
                host: caller.host.clone(),
                issued_ms: now,
                expires_ms: now + ttl_ms,
                nonce: hex(&random_bytes::<16>()),
            }
            .sign(key)
        })
        .collect()
}

/// The count a request line asks for.
///
/// # Errors
/// A message for anything but `berth-cred N` with N in 1..=[`BATCH_MAX`].
pub fn parse_request(line: &str) -> Result<usize, String> {
    let n = line
        .trim_end_matches('\n')
        .strip_prefix("berth-cred ")
        .ok_or_else(|| format!("request {line:?} is not `berth-cred N`"))?;
    match n.parse::<usize>() {
        Ok(n) if (1..=BATCH_MAX).contains(&n) => Ok(n),
        _ => Err(format!("credential count {n:?} must be 1..={BATCH_MAX}")),
    }
}

/// Answers connections on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    key: Arc<ClusterKey>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let host: Arc<str> = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
        .into();
    loop {
        let conn = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            c = listener.accept() => c,
        };
        let (mut stream, _) = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("credential daemon accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let key = key.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let Ok(peer) = stream.peer_cred() else {
                return;
            };
            let (read, mut write) = stream.split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(REQUEST_BYTES_MAX));
            let asked = tokio::time::timeout(REQUEST_WAIT, reader.read_line(&mut line)).await;
            let n = match asked {
                Ok(Ok(_)) => match parse_request(&line) {
                    Ok(n) => n,
                    Err(why) => {
                        tracing::debug!(uid = peer.uid(), "credential request refused: {why}");
                        let _ = write.write_all(format!("error: {why}\n").as_bytes()).await;
                        return;
                    }
                },
                _ => return,
            };
            let caller = Caller::resolve(peer.uid(), peer.gid(), host.to_string());
            let mut text = issue_many(&key, &caller, n, TTL_MS_DEFAULT, now_ms()).join("\n");
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
            let _ = write.shutdown().await;
        });
    }
}

/// Asks the daemon at `path` for one credential of this process.
///
/// # Errors
/// [`AuthError::Credd`] when it cannot be reached within 2 s or answers nothing usable.
pub async fn fetch(path: &Path) -> Result<String, AuthError> {
    Ok(fetch_many(path, 1).await?.remove(0))
}

/// Asks the daemon at `path` for `n` credentials of this process (1..=[`BATCH_MAX`]).
///
/// # Errors
/// [`AuthError::Credd`] when it cannot be reached within 2 s, refuses the request, or
/// answers anything but `n` credentials.
pub async fn fetch_many(path: &Path, n: usize) -> Result<Vec<String>, AuthError> {
    let err = |detail: String| AuthError::Credd {
        path: path.display().to_string(),
        detail,
    };
    let get = async {
        let mut s = UnixStream::connect(path).await.map_err(|e| {
            err(format!(
                "{e} (is berth-agent or `berth credd` running here?)"
            ))
        })?;
        s.write_all(format!("berth-cred {n}\n").as_bytes())
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut text = String::new();
        (&mut s)
            .take(((crate::credential::TEXT_BYTES_MAX + 1) * n.max(1)) as u64)
            .read_to_string(&mut text)
            .await
            .map_err(|e| err(e.to_string()))?;
        if let Some(why) = text.strip_prefix("error: ") {
            return Err(err(format!("refused: {}", why.trim_end())));
        }
        let creds: Vec<String> = text.lines().map(str::to_string).collect();
        if creds.len() != n
            || !creds
                .iter()
                .all(|c| c.starts_with(crate::credential::PREFIX))
        {
            return Err(err("answered something that is not a credential".into()));
        }
        Ok(creds)
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .map_err(|_| err("no answer within 2 s".into()))?
}

/// Credentials fetched ahead for one client, each spent on one call: a process that makes
/// many calls asks the daemon once per batch. The batch grows (2, 4, … [`BATCH_MAX`]) as
/// the pool keeps running dry, so a one-call command asks for two; a credential that has
/// waited longer than half its lifetime is dropped unused.
#[derive(Debug)]
pub struct CredentialPool {
    path: PathBuf,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    /// (fetched at, credential), oldest first.
    ready: std::collections::VecDeque<(u64, String)>,
    next_batch: usize,
}

impl CredentialPool {
    /// A pool filled from the daemon at `path`.
    pub fn new(path: PathBuf) -> CredentialPool {
        CredentialPool {
            path,
            state: Mutex::new(PoolState {
                ready: Default::default(),
                next_batch: 2,
            }),
        }
    }

    /// The daemon's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One unspent credential (from the pool, or from a new batch).
    ///
    /// # Errors
    /// As [`fetch_many`].
    pub async fn take(&self) -> Result<String, AuthError> {
        let now = now_ms();
        let n = {
            let mut st = self.state.lock().expect("credential pool lock");
            while let Some((at, cred)) = st.ready.pop_front() {
                if now.saturating_sub(at) <= POOL_AGE_MS_MAX {
                    return Ok(cred);
                }
            }
            let n = st.next_batch;
            st.next_batch = (n * 2).min(BATCH_MAX);
            n
        };
        let mut creds = fetch_many(&self.path, n).await?.into_iter();
        let first = creds.next().expect("fetch_many returns n ≥ 1");
        let fetched = now_ms();
        let mut st = self.state.lock().expect("credential pool lock");
        st.ready.extend(creds.map(|c| (fetched, c)));
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_daemon_signs_what_the_kernel_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred.sock");
        let key = Arc::new(ClusterKey::from_bytes(&[5; 32]));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(bind(&path).unwrap(), key.clone(), stop));
        let text = fetch(&path).await.unwrap();
        let c = crate::credential::verify(&text, &key, now_ms()).unwrap();
        assert_eq!(c.uid, nix::unistd::getuid().as_raw());
        assert_eq!(c.gid, nix::unistd::getgid().as_raw());
        let _ = stop_tx.send(true);
        assert!(fetch(&dir.path().join("none.sock")).await.is_err());
    }

    /// A daemon on `cred.sock` in a fresh directory, its key, and what keeps it running.
    fn daemon() -> (
        tempfile::TempDir,
        Arc<ClusterKey>,
        tokio::sync::watch::Sender<bool>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(ClusterKey::from_bytes(&[5; 32]));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let listener = bind(&dir.path().join("cred.sock")).unwrap();
        tokio::spawn(serve(listener, key.clone(), stop));
        (dir, key, stop_tx)
    }

    #[tokio::test]
    async fn a_batch_is_single_use_credentials_and_bad_requests_get_none() {
        let (dir, key, _stop) = daemon();
        let path = dir.path().join("cred.sock");
        let creds = fetch_many(&path, BATCH_MAX).await.unwrap();
        let nonces: std::collections::BTreeSet<String> = creds
            .iter()
            .map(|c| crate::credential::verify(c, &key, now_ms()).unwrap().nonce)
            .collect();
        assert_eq!(
            nonces.len(),
            BATCH_MAX,
            "every credential has its own nonce"
        );
        for n in [0, BATCH_MAX + 1] {
            let e = fetch_many(&path, n).await.unwrap_err().to_string();
            assert!(e.contains("must be 1..=32"), "{e}");
        }
        // A request that is not one is answered with the reason and nothing else.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"give me root\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(
            text.starts_with("error: ") && !text.contains(crate::credential::PREFIX),
            "{text}"
        );
        // A client that sends nothing gets nothing (after the request wait).
        let mut s = UnixStream::connect(&path).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "");
        for bad in [
            "",
            "berth-cred",
            "berth-cred x",
            "berth-cred -1",
            "berth-cred 33\n",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_request("berth-cred 4\n"), Ok(4));
    }

    #[tokio::test]
    async fn the_pool_spends_each_credential_once_and_grows_its_batches() {
        let (dir, key, _stop) = daemon();
        let path = dir.path().join("cred.sock");
        let pool = CredentialPool::new(path.clone());
        let cache = crate::credential::ReplayCache::new(1000);
        for _ in 0..100 {
            let c = crate::credential::verify(&pool.take().await.unwrap(), &key, now_ms()).unwrap();
            cache.consume(&c, now_ms()).expect("never spent before");
        }
        assert_eq!(
            pool.state.lock().unwrap().next_batch,
            BATCH_MAX,
            "batches grew to the most"
        );
        // Credentials that waited too long are dropped, not spent.
        pool.state
            .lock()
            .unwrap()
            .ready
            .iter_mut()
            .for_each(|(at, _)| *at = 0);
        let fresh = crate::credential::verify(&pool.take().await.unwrap(), &key, now_ms()).unwrap();
        assert!(now_ms() - fresh.issued_ms < 5_000);
        assert!(pool.state.lock().unwrap().ready.len() < BATCH_MAX);
    }
}
