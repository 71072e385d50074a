//! The credential daemon: on a unix socket any local user may connect to, it reads the
//! caller's uid and gid from the kernel (`SO_PEERCRED`, which the caller cannot lie about),
//! resolves the user's name and groups on this host, and answers one signed
//! [`LocalCredential`] per connection. berth-agent runs one on every compute node and
//! `berth credd` on login nodes; both need the cluster key, so only root runs them.

use crate::credential::{LocalCredential, TTL_MS_DEFAULT};
use crate::key::{hex, random_bytes, ClusterKey};
use crate::{now_ms, AuthError};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

/// Default socket on cluster hosts.
pub const SOCKET_DEFAULT: &str = "/run/berth/cred.sock";

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

/// The credential for a caller with `uid` and `gid`, resolved on this host.
pub fn issue(key: &ClusterKey, uid: u32, gid: u32, ttl_ms: u64, now: u64) -> String {
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
    LocalCredential {
        v: 1,
        uid,
        user: name,
        gid,
        gids,
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        issued_ms: now,
        expires_ms: now + ttl_ms,
        nonce: hex(&random_bytes::<16>()),
    }
    .sign(key)
}

/// Answers connections on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    key: Arc<ClusterKey>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
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
        tokio::spawn(async move {
            let Ok(peer) = stream.peer_cred() else {
                return;
            };
            let text = issue(&key, peer.uid(), peer.gid(), TTL_MS_DEFAULT, now_ms());
            let _ = stream.write_all(text.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Asks the daemon at `path` for a credential of this process.
///
/// # Errors
/// [`AuthError::Credd`] when it cannot be reached within 2 s or answers nothing usable.
pub async fn fetch(path: &Path) -> Result<String, AuthError> {
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
        let mut text = String::new();
        (&mut s)
            .take(crate::credential::TEXT_BYTES_MAX as u64)
            .read_to_string(&mut text)
            .await
            .map_err(|e| err(e.to_string()))?;
        if !text.starts_with(crate::credential::PREFIX) {
            return Err(err("answered something that is not a credential".into()));
        }
        Ok(text)
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .map_err(|_| err("no answer within 2 s".into()))?
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
}
