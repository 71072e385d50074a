//! Container jobs may bind-mount only what their user may read: every directory on the
//! way to a mount's source must be searchable by the user, and the source itself
//! readable (and searchable, for a directory); a read-write mount must also be writable.
//! The check reads mode bits and ownership (user, primary and supplementary groups);
//! ACLs are not consulted, so a path opened to the user only through an ACL is refused
//! (fail closed). Root jobs are not checked.

use super::mounts::BindMount;
use super::OciError;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// The user a check is made for.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// User id.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub gids: &'a [u32],
}

/// Whether `who` has the `want` bits (4 read, 2 write, 1 search/execute) on `meta`.
fn allowed(meta: &std::fs::Metadata, who: Who<'_>, want: u32) -> bool {
    let mode = meta.mode();
    let bits = if meta.uid() == who.uid {
        (mode >> 6) & 7
    } else if meta.gid() == who.gid || who.gids.contains(&meta.gid()) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

/// Refuses the first mount `who` may not read (or write, for a read-write mount).
///
/// # Errors
/// [`OciError::Mount`] naming the path and what is missing.
pub fn check(mounts: &[BindMount], who: Who<'_>) -> Result<(), OciError> {
    if who.uid == 0 {
        return Ok(());
    }
    for m in mounts {
        // The real path: the user's rights are checked where the mount actually lands.
        let real = std::fs::canonicalize(&m.source)
            .map_err(|e| OciError::Mount(format!("source {}: {e}", m.source.display())))?;
        for dir in real.ancestors().skip(1) {
            check_one(dir, who, 1, "search", &m.source)?;
        }
        let meta = std::fs::metadata(&real)
            .map_err(|e| OciError::Mount(format!("source {}: {e}", m.source.display())))?;
        let read = if meta.is_dir() { 4 | 1 } else { 4 };
        check_one(&real, who, read, "read", &m.source)?;
        if !m.options.iter().any(|o| o == "ro") {
            check_one(&real, who, 2, "write (mount it :ro)", &m.source)?;
        }
    }
    Ok(())
}

fn check_one(
    path: &Path,
    who: Who<'_>,
    want: u32,
    what: &str,
    asked: &Path,
) -> Result<(), OciError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| OciError::Mount(format!("source {}: {e}", asked.display())))?;
    if allowed(&meta, who, want) {
        return Ok(());
    }
    Err(OciError::Mount(format!(
        "--container-mounts {}: uid {} may not {what} {} (a job may only mount what its user may read)",
        asked.display(),
        who.uid,
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn bind(src: &Path, ro: bool) -> BindMount {
        BindMount {
            source: src.to_path_buf(),
            destination: "/mnt".into(),
            options: vec!["rbind".into(), if ro { "ro" } else { "rw" }.into()],
        }
    }

    #[test]
    fn only_what_the_user_may_read_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        let closed = dir.path().join("closed");
        std::fs::create_dir(&open).unwrap();
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let owner = std::fs::metadata(&open).unwrap().uid();
        // Someone who is neither the owner nor in its group.
        let other = Who {
            uid: owner + 12345,
            gid: 54321,
            gids: &[],
        };
        assert!(check(&[bind(&open, true)], other).is_ok());
        let e = check(&[bind(&closed, true)], other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not read"), "{e}");
        let e = check(&[bind(&open, false)], other).unwrap_err().to_string();
        assert!(e.contains("may not write"), "{e}");
        let inside = closed.join("x");
        std::fs::create_dir(&inside).unwrap();
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check(&[bind(&inside, true)], other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not search"), "{e}");
        let me = Who {
            uid: owner,
            gid: 0,
            gids: &[],
        };
        assert!(check(&[bind(&closed, false)], me).is_ok());
    }
}
