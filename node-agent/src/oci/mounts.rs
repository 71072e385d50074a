//! `--container-mounts=SRC:DST[:FLAGS]` entries (pyxis syntax: flags joined by `+`, e.g.
//! `ro+rprivate`) and the deny list of host paths no job may mount.

use super::OciError;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// One bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Mount options for the runtime (`rbind` first, then the flags given).
    pub options: Vec<String>,
}

/// Flags pyxis passes through to the mount, and what berth accepts of them.
const FLAGS: &[&str] = &[
    "ro", "rw", "private", "rprivate", "slave", "rslave", "shared", "rshared", "nosuid", "nodev",
    "noexec", "bind", "rbind",
];

/// Parses one entry. `SRC` alone mounts it at the same path, as pyxis does.
///
/// # Errors
/// [`OciError::Mount`] naming the entry: relative or `..` paths, unknown flags, empty parts.
pub fn parse(entry: &str) -> Result<BindMount, OciError> {
    let bad = |why: &str| OciError::Mount(format!("{entry:?}: {why}"));
    let parts: Vec<&str> = entry.split(':').collect();
    let (src, dst, flags) = match parts.as_slice() {
        [src] => (*src, *src, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, flags] => (*src, *dst, *flags),
        _ => return Err(bad("expected SRC[:DST[:FLAGS]]")),
    };
    let source =
        clean_absolute(src).ok_or_else(|| bad("SRC must be an absolute path without .."))?;
    let destination =
        clean_absolute(dst).ok_or_else(|| bad("DST must be an absolute path without .."))?;
    if destination == Path::new("/") {
        return Err(bad("DST cannot be the container's root"));
    }
    let mut options = vec!["rbind".to_string()];
    for flag in flags.split('+').filter(|f| !f.is_empty()) {
        if !FLAGS.contains(&flag) {
            return Err(bad(&format!(
                "unknown flag {flag:?} (known: {})",
                FLAGS.join(", ")
            )));
        }
        if flag != "bind" && flag != "rbind" && !options.iter().any(|o| o == flag) {
            options.push(flag.to_string());
        }
    }
    if !options.iter().any(|o| o == "ro" || o == "rw") {
        options.push("rw".into());
    }
    Ok(BindMount {
        source,
        destination,
        options,
    })
}

/// `path` if absolute, without `..` components, `.` and repeated slashes removed.
fn clean_absolute(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Refuses a mount whose source is a denied path, lies under one, or contains one (mounting
/// `/` or `/var/run` would expose what the list protects). Symlinks in the source are
/// resolved first, so a link to `/etc` is refused too.
///
/// # Errors
/// [`OciError::Mount`] naming the source and the denied path.
pub fn check_denied(mounts: &[BindMount], deny: &[PathBuf]) -> Result<(), OciError> {
    for m in mounts {
        let real = std::fs::canonicalize(&m.source)
            .map_err(|e| OciError::Mount(format!("source {}: {e}", m.source.display())))?;
        for d in deny {
            for candidate in [&m.source, &real] {
                if candidate.starts_with(d) || d.starts_with(candidate) {
                    return Err(OciError::Mount(format!(
                        "host path {} is not allowed (denied: {}; see --container-mount-deny)",
                        m.source.display(),
                        d.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pyxis_entries() {
        let m = parse("/data:/mnt/data:ro+rprivate").unwrap();
        assert_eq!(m.source, PathBuf::from("/data"));
        assert_eq!(m.destination, PathBuf::from("/mnt/data"));
        assert_eq!(m.options, vec!["rbind", "ro", "rprivate"]);
        let same = parse("/scratch").unwrap();
        assert_eq!(same.destination, PathBuf::from("/scratch"));
        assert_eq!(same.options, vec!["rbind", "rw"]);
        assert_eq!(
            parse("/a//b/./c:/x").unwrap().source,
            PathBuf::from("/a/b/c")
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        let cases = [
            "",
            "data:/x",
            "/data:rel",
            "/data:/x:ro+bogus",
            "/a/../etc:/x",
            "/a:/x:ro:extra",
            "/a:/",
        ];
        for (i, c) in cases.iter().enumerate() {
            if let Ok(m) = parse(c) {
                panic!("#{i}: want an error for {c:?}, got {m:?}");
            }
        }
    }

    #[test]
    fn denied_paths_and_links_to_them_are_refused() {
        let deny: Vec<PathBuf> = crate::oci::DEFAULT_MOUNT_DENY
            .iter()
            .map(PathBuf::from)
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("etc-link");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let refused = [
            "/proc:/p".to_string(),
            "/etc/passwd:/p".into(),
            "/:/host".into(),
            "/var/run/docker.sock:/d".into(),
            format!("{}:/x", link.display()),
            "/does/not/exist:/x".into(),
        ];
        for (i, e) in refused.iter().enumerate() {
            let m = parse(e).unwrap();
            if check_denied(&[m], &deny).is_ok() {
                panic!("#{i}: {e} should be refused");
            }
        }
        let ok = parse(&format!("{}:/data:ro", tmp.path().display())).unwrap();
        check_denied(&[ok], &deny).unwrap();
    }
}
