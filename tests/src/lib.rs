//! Shared harness of the end-to-end tests in `tests/tests/`: where the workspace's built
//! binaries are, and free loopback ports. The tests run the real binaries, so they need
//! `cargo build --workspace` first (README's test command does it).

pub mod postgres;

use std::path::PathBuf;

/// `target/<profile>`: test binaries live in its `deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A workspace binary (`berth`, `berthd`, `berth-agent`).
///
/// # Panics
/// If it has not been built, naming the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` first (README's test command does)",
        path.display()
    );
    path
}

/// The freshest build of the simulated NVML library (cargo may leave an older uplifted
/// copy next to a newer one in `deps/`).
///
/// # Panics
/// If it has not been built.
pub fn simnvml() -> PathBuf {
    let candidates = [
        target_dir().join("libberth_simnvml.so"),
        target_dir().join("deps/libberth_simnvml.so"),
    ];
    candidates
        .into_iter()
        .filter(|p| p.exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("libberth_simnvml.so not built: run `cargo build --workspace` first")
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves no
/// daemons behind.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Calls `f` every 100 ms until it returns `Some`, or panics naming `what` after `secs`.
pub fn poll<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {secs}s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// berthd replica `id` of a group on loopback `ports` (replica `i + 1` listens on
/// `ports[i]`), state in `dir/r<id>`, with `extra` flags.
pub fn replica(dir: &std::path::Path, id: u64, ports: &[u16], extra: &[&str]) -> Proc {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    Proc(
        std::process::Command::new(bin("berthd"))
            .args(["--id", &id.to_string(), "--peers", &peers.join(",")])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", ports[id as usize - 1]),
                "--state-dir",
            ])
            .arg(dir.join(format!("r{id}")))
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn berthd"),
    )
}

/// Starts `berth dev` with `args` (after `dev`), gRPC on `127.0.0.1:port` and state in
/// `state`, and returns once it prints its ready line, with every line it printed until
/// then (the URLs it announces are among them). It never finds a Kubernetes cluster
/// unless `args` name one (`--kube-api`).
///
/// # Panics
/// When it prints no ready line within 60 s.
pub fn berth_dev(state: &std::path::Path, port: u16, args: &[&str]) -> (Proc, Vec<String>) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(bin("berth"))
        .arg("dev")
        .args(args)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "warn")
        // Tests never reach a real cluster: without `--kube-api`, no Kubernetes API.
        .env("KUBECONFIG", "/nonexistent/berth-test-kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn berth dev");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let proc = Proc(child);
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("berth dev did not print ready within 60s");
        let ready = line.contains("ready");
        printed.push(line);
        if ready {
            return (proc, printed);
        }
    }
}

/// Runs the CLI `exe` (`berth`, or one of its Slurm-named symlinks) with `args` in `dir`,
/// against the berthd replicas in `servers` (`BERTH_SERVER`).
pub fn cli(
    exe: &std::path::Path,
    dir: &std::path::Path,
    servers: &str,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(exe)
        .args(args)
        .current_dir(dir)
        .env("BERTH_SERVER", servers)
        .output()
        .expect("run the berth CLI")
}

/// Runs `berth args` in `dir` against `servers`.
pub fn berth(dir: &std::path::Path, servers: &str, args: &[&str]) -> std::process::Output {
    cli(&bin("berth"), dir, servers, args)
}

/// `berth sbatch --parsable args`: the new job's id.
///
/// # Panics
/// When sbatch fails, with its error.
pub fn sbatch(dir: &std::path::Path, servers: &str, args: &[&str]) -> u64 {
    let mut all = vec!["sbatch", "--parsable"];
    all.extend_from_slice(args);
    let out = berth(dir, servers, &all);
    assert!(
        out.status.success(),
        "sbatch {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("sbatch --parsable prints the job id")
}

/// MIG device UUIDs a simulated driver holds now, read in this process through NVML
/// (nvml-wrapper) from the state the node's copy of the library `lib` persisted.
pub fn mig_uuids(lib: &std::path::Path) -> Vec<String> {
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(lib.as_os_str())
        .init()
        .expect("init");
    let mut out = Vec::new();
    for i in 0..nvml.device_count().expect("count") {
        let d = nvml.device_by_index(i).expect("device");
        for m in 0..d.mig_device_count().expect("max") {
            if let Ok(mig) = d.mig_device_by_index(m) {
                out.push(mig.uuid().expect("uuid"));
            }
        }
    }
    out
}

/// Lets crun run on a hybrid cgroup host (v1 controllers plus a v2 mount at
/// `/sys/fs/cgroup/unified`). crun refuses such a host while the v2 hierarchy still owns a
/// controller ("drop all controllers from cgroupv2", its own advice); on Debian 12 VMs that
/// is typically `hugetlb` alone. Each such controller is bound to a v1 hierarchy mounted at
/// `/sys/fs/cgroup/NAME`, the layout a systemd hybrid host has, which runc reads as well.
/// Nothing is done on a pure v1 or pure v2 host.
///
/// # Errors
/// Why the host cannot be prepared (not root, a controller busy in v2, a mount failed):
/// the caller prints it and skips.
pub fn ensure_crun_cgroup_layout() -> Result<(), String> {
    let unified = std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let Ok(owned) = std::fs::read_to_string(unified) else {
        return Ok(()); // no hybrid v2 mount: crun's hybrid check does not apply
    };
    let owned: Vec<&str> = owned.split_whitespace().collect();
    if owned.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "the hybrid cgroup v2 mount owns {owned:?}, which crun refuses, and only root can move them to v1"
        ));
    }
    for name in owned {
        let dir = format!("/sys/fs/cgroup/{name}");
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "cgroup", "-o", name, "cgroup", &dir])
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "binding cgroup controller {name} to v1 at {dir} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        println!("note: bound cgroup controller {name} to a v1 hierarchy at {dir} so crun accepts this hybrid host");
    }
    Ok(())
}

/// Makes sure the Debian packages `pkgs` are installed (`apt-get install -y`, after an
/// `apt-get update` if the first try fails), so tests install what they need themselves.
///
/// # Errors
/// Why they cannot be had (not root, no apt-get, the install failed): the caller prints it
/// and skips.
pub fn ensure_debian_packages(pkgs: &[&str]) -> Result<(), String> {
    let installed = |p: &str| {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "{missing:?} not installed and not root to install them"
        ));
    }
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("apt-get: {e}"))
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    if apt(&install)?.status.success() {
        return Ok(());
    }
    apt(&["update"])?;
    let out = apt(&install)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apt-get install {missing:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
