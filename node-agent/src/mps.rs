//! MPS control daemons for a node pool shared through MPS (`--gpu-sharing mps`): one
//! `nvidia-cuda-mps-control -d` per GPU, each confined to its GPU (`CUDA_VISIBLE_DEVICES`)
//! with its own pipe and log directories (`<dir>/<uuid>/pipe`, `<dir>/<uuid>/log`), as
//! NVIDIA's MPS documentation sets them for a per-GPU daemon. Jobs are pointed at their
//! GPU's pipe directory; at shutdown each daemon is sent `quit` on its control's stdin,
//! the documented clean stop (`echo quit | nvidia-cuda-mps-control`).
//!
//! The daemon needs a real GPU and driver; on simulated machines the binary can be any
//! program that behaves the same way (`--mps-control`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why the MPS daemons could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    /// The control binary is not there.
    #[error(
        "MPS control daemon {0:?} not found (install the NVIDIA driver's \
         nvidia-cuda-mps-control, or pass --mps-control PATH)"
    )]
    NotFound(PathBuf),
    /// A directory could not be made.
    #[error("MPS: {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon of one GPU did not start; the text holds its exit and output.
    #[error("MPS control daemon for GPU {gpu} did not start: {reason}")]
    Start {
        /// GPU UUID.
        gpu: String,
        /// Exit status and what it printed.
        reason: String,
    },
}

/// Where the daemons come from and where their directories go.
#[derive(Debug, Clone, PartialEq)]
pub struct MpsConfig {
    /// `nvidia-cuda-mps-control`, or a path (`--mps-control`).
    pub control: PathBuf,
    /// Parent of the per-GPU directories (`--mps-dir`, default `<state-dir>/mps`).
    pub dir: PathBuf,
}

/// The pipe and log directories of one GPU's daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpsDirs {
    /// `CUDA_MPS_PIPE_DIRECTORY`.
    pub pipe: PathBuf,
    /// `CUDA_MPS_LOG_DIRECTORY`.
    pub log: PathBuf,
}

/// The running daemons, one per GPU, stopped by [`MpsDaemons::stop`].
#[derive(Debug)]
pub struct MpsDaemons {
    control: PathBuf,
    gpus: BTreeMap<String, MpsDirs>,
    stopped: AtomicBool,
}

/// How long a daemon gets to start (`-d` returns once it has forked) or to quit.
const WAIT: Duration = Duration::from_secs(10);

/// `name` as given if it holds a `/`, else the first executable of that name in PATH.
fn locate(name: &Path) -> Result<PathBuf, MpsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 {
        return match executable(name) {
            true => Ok(name.to_path_buf()),
            false => Err(MpsError::NotFound(name.to_path_buf())),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| executable(p))
        .ok_or_else(|| MpsError::NotFound(name.to_path_buf()))
}

/// Whether a daemon holds the control pipe at `path` open: opening a FIFO for writing
/// without blocking fails (ENXIO) when no process has it open for reading.
fn control_alive(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let is_fifo = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    is_fifo
        && std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .is_ok()
}

/// Waits for `child` at most [`WAIT`]; kills it past that.
fn wait(child: &mut std::process::Child) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {}s, killed", WAIT.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl MpsDaemons {
    /// Starts one daemon per GPU of `gpus` (UUIDs). A GPU whose pipe directory holds a
    /// live `control` pipe keeps the daemon found there: an agent restarted under running
    /// MPS jobs must not cut them off. A stale one (nobody reading it: the daemon died, the
    /// host rebooted) is removed and a daemon started.
    ///
    /// # Errors
    /// [`MpsError::NotFound`] when the binary is missing; [`MpsError::Start`] when a
    /// daemon fails, after stopping those already started.
    pub fn start(cfg: &MpsConfig, gpus: &[String]) -> Result<MpsDaemons, MpsError> {
        let control = locate(&cfg.control)?;
        let mut daemons = MpsDaemons {
            control,
            gpus: BTreeMap::new(),
            stopped: AtomicBool::new(false),
        };
        for uuid in gpus {
            let root = cfg.dir.join(uuid);
            let dirs = MpsDirs {
                pipe: root.join("pipe"),
                log: root.join("log"),
            };
            for d in [&dirs.pipe, &dirs.log] {
                std::fs::create_dir_all(d).map_err(|source| MpsError::Io {
                    path: d.clone(),
                    source,
                })?;
            }
            let control = dirs.pipe.join("control");
            if control_alive(&control) {
                tracing::info!(gpu = uuid, "MPS control daemon already running, kept");
            } else {
                if control.exists() {
                    tracing::info!(gpu = uuid, "stale MPS control pipe removed");
                    let _ = std::fs::remove_file(&control);
                }
                if let Err(reason) = daemons.start_one(uuid, &dirs) {
                    daemons.stop();
                    return Err(MpsError::Start {
                        gpu: uuid.clone(),
                        reason,
                    });
                }
            }
            daemons.gpus.insert(uuid.clone(), dirs);
        }
        Ok(daemons)
    }

    fn command(&self, uuid: &str, dirs: &MpsDirs) -> Command {
        let mut c = Command::new(&self.control);
        c.env("CUDA_VISIBLE_DEVICES", uuid)
            .env("CUDA_MPS_PIPE_DIRECTORY", &dirs.pipe)
            .env("CUDA_MPS_LOG_DIRECTORY", &dirs.log);
        c
    }

    fn start_one(&self, uuid: &str, dirs: &MpsDirs) -> Result<(), String> {
        // Output to a file, not a pipe: the forked daemon may keep inherited descriptors
        // open, and reading a pipe to its end would then wait for the daemon's death.
        let out_path = dirs.log.join("berth-start.log");
        let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = self
            .command(uuid, dirs)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.control.display()))?;
        let status = wait(&mut child)?;
        if status.success() {
            tracing::info!(gpu = uuid, pipe = %dirs.pipe.display(), "MPS control daemon started");
            return Ok(());
        }
        let printed = std::fs::read_to_string(&out_path).unwrap_or_default();
        Err(format!("{status}: {}", printed.trim()))
    }

    /// The directories of `uuid`'s daemon, if this node runs one for it.
    pub fn dirs(&self, uuid: &str) -> Option<&MpsDirs> {
        self.gpus.get(uuid)
    }

    /// Every GPU's directories, by UUID.
    pub fn all(&self) -> &BTreeMap<String, MpsDirs> {
        &self.gpus
    }

    /// Sends `quit` to every daemon and waits for each control command to return; runs
    /// once (later calls do nothing). Failures are logged: shutdown goes on.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for (uuid, dirs) in &self.gpus {
            match self.quit(uuid, dirs) {
                Ok(()) => tracing::info!(gpu = uuid, "MPS control daemon stopped"),
                Err(e) => tracing::warn!(gpu = uuid, "MPS control daemon not stopped: {e}"),
            }
        }
    }

    fn quit(&self, uuid: &str, dirs: &MpsDirs) -> Result<(), String> {
        let mut child = self
            .command(uuid, dirs)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"quit\n").map_err(|e| e.to_string())?;
        }
        let status = wait(&mut child)?;
        match status.success() {
            true => Ok(()),
            false => Err(status.to_string()),
        }
    }
}

impl Drop for MpsDaemons {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_pipe_is_alive_only_while_read() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("control");
        assert!(!control_alive(&fifo), "missing");
        std::fs::write(&fifo, "").unwrap();
        assert!(!control_alive(&fifo), "a regular file");
        std::fs::remove_file(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(!control_alive(&fifo), "nobody reads it: stale");
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert!(control_alive(&fifo), "a daemon reads it");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let t = tempfile::tempdir().unwrap();
        for control in [
            "/nonexistent/nvidia-cuda-mps-control",
            "no-such-mps-control-here",
        ] {
            let cfg = MpsConfig {
                control: control.into(),
                dir: t.path().to_path_buf(),
            };
            match MpsDaemons::start(&cfg, &["GPU-a".into()]) {
                Err(e @ MpsError::NotFound(_)) => {
                    let e = e.to_string();
                    assert!(e.contains(control) && e.contains("--mps-control"), "{e}");
                }
                other => panic!("{control}: want NotFound, got {other:?}"),
            }
        }
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "nothing made"
        );
    }

    #[test]
    fn a_daemon_that_fails_is_reported_and_the_others_stopped() {
        let t = tempfile::tempdir().unwrap();
        let record = t.path().join("record");
        let script = t.path().join("mps-control");
        // Stand-in: starts fine for GPU-a, fails for GPU-b; records every call.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nread -r cmd || cmd=\"$1\"\necho \"$cmd $CUDA_VISIBLE_DEVICES\" >> {}\n\
                 [ \"$CUDA_VISIBLE_DEVICES\" = GPU-b ] && [ \"$1\" = -d ] && {{ echo no GPU >&2; exit 3; }}\nexit 0\n",
                record.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = MpsConfig {
            control: script,
            dir: t.path().join("mps"),
        };
        match MpsDaemons::start(&cfg, &["GPU-a".into(), "GPU-b".into()]) {
            Err(MpsError::Start { gpu, reason }) => {
                assert_eq!(gpu, "GPU-b");
                assert!(
                    reason.contains("no GPU") && reason.contains('3'),
                    "{reason}"
                );
            }
            other => panic!("want a start error, got {other:?}"),
        }
        let calls = std::fs::read_to_string(&record).unwrap();
        assert_eq!(
            calls, "-d GPU-a\n-d GPU-b\nquit GPU-a\n",
            "GPU-a's daemon stopped"
        );
    }
}
