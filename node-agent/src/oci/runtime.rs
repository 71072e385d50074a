//! The OCI runtime's command line (runc; crun takes the same commands and flags used here)
//! and the container's cgroup as the kernel shows it.
//!
//! Commands used, all of which runc and crun share: `create --bundle B --pid-file F ID`
//! (the container's init inherits the caller's stdio: the job's output files), `start ID`,
//! `kill --all ID SIG`, `delete --force ID`, `state ID`. Not `run`: its exit status folds a
//! signal into 128+N, and without runc's `--keep` (crun has none) the container's cgroup,
//! and with it the OOM counter, is gone before anyone can read it. Instead the shim is a
//! child subreaper, so the init becomes its child when `create` exits and the shim waits
//! for it directly (the containerd-shim pattern), then reads the cgroup, then deletes.

use super::OciError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A located runtime binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    path: PathBuf,
}

/// What `state` says about a container.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct State {
    /// creating, created, running, paused or stopped.
    pub status: String,
    /// Init's pid on the host (0 when stopped).
    #[serde(default)]
    pub pid: u32,
}

impl Runtime {
    /// Finds `name_or_path` (a path, or a name searched in `PATH` and the sbin
    /// directories, where Debian installs runc).
    ///
    /// # Errors
    /// [`OciError::Runtime`] naming what was searched when it is not found.
    pub fn locate(name_or_path: &Path) -> Result<Runtime, OciError> {
        let executable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if name_or_path.components().count() > 1 {
            return if executable(name_or_path) {
                Ok(Runtime {
                    path: name_or_path.to_path_buf(),
                })
            } else {
                Err(OciError::Runtime(format!(
                    "{} not found or not executable (install runc, or pass --container-runtime)",
                    name_or_path.display()
                )))
            };
        }
        let path_var = std::env::var("PATH").unwrap_or_default();
        let dirs = path_var.split(':').chain([
            "/usr/local/sbin",
            "/usr/sbin",
            "/sbin",
            "/usr/bin",
            "/bin",
        ]);
        for dir in dirs.filter(|d| !d.is_empty()) {
            let candidate = Path::new(dir).join(name_or_path);
            if executable(&candidate) {
                return Ok(Runtime { path: candidate });
            }
        }
        Err(OciError::Runtime(format!(
            "{} not found in PATH or sbin directories (install runc, or pass --container-runtime)",
            name_or_path.display()
        )))
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates container `id` from `bundle` with the init's stdout/stderr on `stdout` and
    /// `stderr`, and returns the init's host pid (read from `bundle/init.pid`).
    ///
    /// # Errors
    /// [`OciError::Runtime`] when the runtime cannot be started or fails; its own message is
    /// then in `stderr` (the job's error file).
    pub fn create(
        &self,
        bundle: &Path,
        id: &str,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<u32, OciError> {
        use std::os::unix::process::CommandExt as _;
        let pid_file = bundle.join("init.pid");
        let status = Command::new(&self.path)
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir(bundle)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .status()
            .map_err(|e| OciError::Runtime(format!("cannot start {}: {e}", self.path.display())))?;
        if !status.success() {
            return Err(OciError::Runtime(format!(
                "{} create failed ({status}); its message is in the job's error file",
                self.path.display()
            )));
        }
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| OciError::Runtime(format!("no pid in {}", pid_file.display())))
    }

    /// Starts the created container `id` (its init runs the job from here).
    ///
    /// # Errors
    /// [`OciError::Runtime`] when the runtime refuses.
    pub fn start(&self, id: &str) -> Result<(), OciError> {
        self.exec(&["start", id]).map(|_| ())
    }

    fn exec(&self, args: &[&str]) -> Result<Vec<u8>, OciError> {
        let out = Command::new(&self.path)
            .args(args)
            .output()
            .map_err(|e| OciError::Runtime(format!("{}: {e}", self.path.display())))?;
        if !out.status.success() {
            return Err(OciError::Runtime(format!(
                "{} {}: {}",
                self.path.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// Sends `signal` (a name such as `TERM`) to every process of container `id`.
    ///
    /// # Errors
    /// [`OciError::Runtime`] when the runtime refuses (e.g. no such container yet).
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), OciError> {
        self.exec(&["kill", "--all", id, signal]).map(|_| ())
    }

    /// Removes container `id`, killing it if it still runs; Ok if it does not exist.
    ///
    /// # Errors
    /// [`OciError::Runtime`] when the runtime fails otherwise.
    pub fn delete(&self, id: &str) -> Result<(), OciError> {
        match self.exec(&["delete", "--force", id]) {
            Ok(_) => Ok(()),
            Err(_) if self.state(id).is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The container's state, None when the runtime does not know it.
    pub fn state(&self, id: &str) -> Option<State> {
        let out = self.exec(&["state", id]).ok()?;
        serde_json::from_slice(&out).ok()
    }
}

/// The directories of cgroup `path` (as in `linux.cgroupsPath`, absolute from the
/// hierarchy root): one on cgroup v2, one per mounted controller on v1.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .map(|p| p.join(rel))
        .collect()
}

/// How many processes the kernel's OOM killer killed in cgroup `path` (v2
/// `memory.events`, v1 `memory.oom_control`, both `oom_kill N`); 0 if unreadable.
pub fn oom_kills(path: &str) -> u64 {
    let rel = path.trim_start_matches('/');
    let candidates = [
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
    ];
    for file in candidates {
        if let Ok(text) = std::fs::read_to_string(&file) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// Removes what is left of cgroup `path` (the runtime's `delete` normally does it); empty
/// cgroups only, so a live container is never affected. True when none is left.
pub fn remove_cgroup(path: &str) -> bool {
    let mut clean = true;
    for dir in cgroup_dirs(path) {
        if dir.exists() && std::fs::remove_dir(&dir).is_err() {
            clean = false;
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_runtime_is_a_clear_error() {
        for p in ["/nonexistent/runc", "berth-no-such-runtime"] {
            match Runtime::locate(Path::new(p)) {
                Err(OciError::Runtime(m)) => assert!(m.contains("not found"), "{m}"),
                other => panic!("{p}: want Runtime error, got {other:?}"),
            }
        }
        // A file that is not executable is not a runtime either.
        let t = tempfile::NamedTempFile::new().unwrap();
        assert!(Runtime::locate(t.path()).is_err());
        let sh = Runtime::locate(Path::new("sh")).unwrap();
        assert!(sh.path().is_absolute());
    }

    #[test]
    fn a_failing_create_is_an_error_naming_the_runtime() {
        // `false` stands in for a runtime that refuses the bundle: create reports it.
        let r = Runtime::locate(Path::new("false")).unwrap();
        let t = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(t.path().join("out")).unwrap();
        let err = std::fs::File::create(t.path().join("err")).unwrap();
        match r.create(t.path(), "berth-1-x", out, err) {
            Err(OciError::Runtime(m)) => assert!(m.contains("create failed"), "{m}"),
            other => panic!("want a Runtime error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_cgroups_have_no_oom_kills() {
        assert_eq!(oom_kills("/berth/no-such-container"), 0);
        assert!(remove_cgroup("/berth/no-such-container"));
    }
}
