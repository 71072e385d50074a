//! The per-job shim: a tiny process between the agent and the job, so the job outlives an
//! agent restart and its exit status is never lost.
//!
//! The agent starts `<its own executable> __berth-shim <job dir>` in a process group of its
//! own. The shim opens the output files, starts the batch script in a new process group (the
//! job's pgid is its pid, which is what cancel and time limits signal), writes the job's pid,
//! waits, and writes `exit.json` atomically. A restarted agent finds running jobs by their
//! pid files and finished ones by `exit.json` (the conmon/containerd-shim pattern).

pub mod container;

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// argv[1] that turns the agent's executable into a shim.
pub const SHIM_ARG: &str = "__berth-shim";

/// What the shim runs (written by the agent as `shim.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimSpec {
    /// Program and arguments (the batch script first).
    pub argv: Vec<String>,
    /// The job's whole environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Output files (equal paths share one file).
    pub stdout: PathBuf,
    /// Error output file.
    pub stderr: PathBuf,
    /// Run as this user and group (when the agent runs as root).
    pub uid_gid: Option<(u32, u32)>,
    /// Supplementary groups of that user (from the proven identity).
    #[serde(default)]
    pub groups: Vec<u32>,
    /// Set for the `oci` runtime: run `argv` in this container instead of as a process.
    #[serde(default)]
    pub container: Option<crate::oci::ContainerJob>,
    /// `--open-mode=append`: open the output files for appending instead of truncating.
    #[serde(default)]
    pub append: bool,
}

/// How the job ended, as the shim saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// Exit code when it exited.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
    /// Why it could not be started at all.
    pub error: Option<String>,
    /// The kernel's OOM killer killed a process of the job (its cgroup's `oom_kill`).
    #[serde(default)]
    pub oom: bool,
}

/// Runs the shim and exits if this process was started as one; returns otherwise. Call it
/// first in `main` of every binary that embeds the agent.
pub fn run_if_shim() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == SHIM_ARG {
        std::process::exit(run(Path::new(&args[2])));
    }
}

fn run(dir: &Path) -> i32 {
    let spec: ShimSpec = match fs::read(dir.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            write_json(
                dir,
                "exit.json",
                &ExitRecord {
                    error: Some(format!("bad shim spec: {e}")),
                    ..Default::default()
                },
            );
            return 1;
        }
    };
    if let Some(container) = &spec.container {
        let record = container::run(dir, &spec, container);
        if let Some(e) = &record.error {
            let owner = (container.uid != 0).then_some((container.uid, container.gid));
            tell_user(&spec.stderr, e, owner, &spec.groups);
        }
        write_json(dir, "exit.json", &record);
        return 0;
    }
    let record = match spawn(&spec) {
        Ok(mut child) => {
            write_json(dir, "pid", &child.id());
            match child.wait() {
                Ok(st) => ExitRecord {
                    code: st.code(),
                    signal: st.signal(),
                    ..Default::default()
                },
                Err(e) => ExitRecord {
                    error: Some(format!("wait failed: {e}")),
                    ..Default::default()
                },
            }
        }
        Err(e) => {
            tell_user(&spec.stderr, &e, spec.uid_gid, &spec.groups);
            ExitRecord {
                error: Some(e),
                ..Default::default()
            }
        }
    };
    write_json(dir, "exit.json", &record);
    0
}

/// Tells the user why the job could not run, in their own error file, as slurmstepd does
/// (opened with the user's permissions, like the output files).
fn tell_user(stderr: &Path, error: &str, owner: Option<(u32, u32)>, groups: &[u32]) {
    let open = || OpenOptions::new().create(true).append(true).open(stderr);
    if let Ok(Ok(mut f)) = as_user(owner, groups, open) {
        use std::io::Write as _;
        let _ = writeln!(f, "berth: error: {error}");
    }
}

/// Runs `f` with the effective ids of `owner` (and its `groups`) when given, then switches
/// back to root. The shim is the only thing running in its process, so nothing else sees
/// the switch; glibc applies each call to every thread of the process.
///
/// # Errors
/// When the ids cannot be switched (nothing is opened then).
pub(crate) fn as_user<T>(
    owner: Option<(u32, u32)>,
    groups: &[u32],
    f: impl FnOnce() -> T,
) -> Result<T, String> {
    use nix::unistd::{getegid, getgroups, setegid, seteuid, setgroups, Gid, Uid};
    let Some((uid, gid)) = owner else {
        return Ok(f());
    };
    let saved_groups = getgroups().map_err(|e| format!("getgroups: {e}"))?;
    let saved_gid = getegid();
    let mut user_groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    user_groups.push(Gid::from_raw(gid));
    setgroups(&user_groups).map_err(|e| format!("setgroups: {e}"))?;
    let switched = setegid(Gid::from_raw(gid)).and_then(|_| seteuid(Uid::from_raw(uid)));
    let out = switched.is_ok().then(f);
    // Back to root in the reverse order; failing here would leave the shim half-dropped.
    seteuid(Uid::from_raw(0)).expect("seteuid(0) after opening as the user");
    setegid(saved_gid).expect("setegid back after opening as the user");
    setgroups(&saved_groups).expect("setgroups back after opening as the user");
    switched.map_err(|e| format!("cannot switch to uid {uid} gid {gid}: {e}"))?;
    Ok(out.expect("f ran"))
}

/// Opens an output file, truncated or (`append`, sbatch `--open-mode=append`) appended
/// to, with the permissions of `owner` when given: the file is created by that user, where
/// that user may create it, never by root on the user's behalf (an `--output=/etc/shadow`
/// fails as it would for the user).
///
/// # Errors
/// The message to report when it cannot be opened.
pub(crate) fn open_output(
    path: &Path,
    owner: Option<(u32, u32)>,
    groups: &[u32],
    append: bool,
) -> Result<File, String> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .mode(0o644)
            .open(path)
    };
    as_user(owner, groups, open)?
        .map_err(|e| format!("cannot open output file {}: {e}", path.display()))
}

fn spawn(spec: &ShimSpec) -> Result<std::process::Child, String> {
    let stdout = open_output(&spec.stdout, spec.uid_gid, &spec.groups, spec.append)?;
    let stderr = if spec.stderr == spec.stdout {
        stdout.try_clone().map_err(|e| e.to_string())?
    } else {
        open_output(&spec.stderr, spec.uid_gid, &spec.groups, spec.append)?
    };
    let (prog, args) = spec.argv.split_first().ok_or("empty argv")?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    match spec.uid_gid {
        Some((uid, gid)) => drop_to_user(&mut cmd, uid, gid, &spec.groups, &spec.cwd)?,
        None => {
            cmd.current_dir(&spec.cwd);
        }
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {prog} in {}: {e}", spec.cwd.display()))
}

/// Makes `cmd`'s child become the user before it does anything: supplementary groups,
/// group, user, and only then the working directory (entered with the user's rights).
/// std's `uid()` would drop the supplementary groups; this keeps the user's own.
fn drop_to_user(
    cmd: &mut Command,
    uid: u32,
    gid: u32,
    groups: &[u32],
    cwd: &Path,
) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt as _;
    let cwd_c = std::ffi::CString::new(cwd.as_os_str().as_bytes())
        .map_err(|_| format!("working directory {} contains NUL", cwd.display()))?;
    let mut gids: Vec<libc::gid_t> = groups.to_vec();
    gids.push(gid);
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(gids.len(), gids.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::chdir(cwd_c.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Writes `value` as JSON to `dir/name` atomically (temp file + rename), so a reader never
/// sees half a record.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let ok = serde_json::to_vec(value)
        .ok()
        .and_then(|bytes| fs::write(&tmp, bytes).ok())
        .and_then(|_| fs::rename(&tmp, dir.join(name)).ok());
    if ok.is_none() {
        eprintln!("berth shim: cannot write {}/{name}", dir.display());
    }
}
