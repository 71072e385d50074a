//! Shared harness of the end-to-end tests in `tests/tests/`: where the workspace's built
//! binaries are, free loopback ports, and the cluster CA and credential daemon the
//! daemons run with (security is on in every test, as it is by default). The tests run
//! the real binaries, so they need `cargo build --workspace` first (README's test command
//! does it).

pub mod postgres;

use berth_auth::profile::Profile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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
/// `ports[i]`), state in `dir/r<id>`, with `extra` flags; secure, with a certificate from
/// [`TestCa::of`]`(dir)` (the CLI and [`connect`] are set up to reach it).
pub fn replica(dir: &std::path::Path, id: u64, ports: &[u16], extra: &[&str]) -> Proc {
    let ca = TestCa::of(dir);
    let servers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    ca.trust(&servers.join(","));
    let security = ca.replica_dir(id);
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
            .arg("--security-dir")
            .arg(security)
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

/// `berth dev` with two simulated nodes and no HTTP listener, state under `dir/state`:
/// the process (killed when dropped) and its server URL.
pub fn two_node_dev(dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let (dev, _) = berth_dev(
        &dir.join("state"),
        port,
        &["--nodes", "2", "--http-listen", "off"],
    );
    (dev, format!("http://127.0.0.1:{port}"))
}

/// berth's binary as the tool `name` (`srun`, `salloc`…): a symlink in `dir`, its path.
pub fn tool(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::os::unix::fs::symlink(bin("berth"), &path)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
    path
}

/// Runs the CLI `exe` (`berth`, or one of its Slurm-named symlinks) with `args` in `dir`,
/// against the berthd replicas in `servers` (`BERTH_SERVER`).
pub fn cli(
    exe: &std::path::Path,
    dir: &std::path::Path,
    servers: &str,
    args: &[&str],
) -> std::process::Output {
    cli_command(exe, dir, servers, args)
        .output()
        .expect("run the berth CLI")
}

/// The command [`cli`] runs, for a caller that starts it itself (to signal it, or to add
/// variables).
pub fn cli_command(
    exe: &std::path::Path,
    dir: &std::path::Path,
    servers: &str,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .current_dir(dir)
        .env("BERTH_SERVER", servers)
        .env_remove("BERTH_TOKEN");
    if let Some(p) = registered(servers) {
        for (k, v) in [("BERTH_CA", &p.ca), ("BERTH_CRED_SOCKET", &p.cred_socket)] {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
    }
    cmd
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

/// Profiles of the secure servers this test process started, by `host:port`.
fn profiles() -> &'static Mutex<HashMap<String, Profile>> {
    static P: OnceLock<Mutex<HashMap<String, Profile>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

/// The profile registered for the first of `servers` (comma-separated) that has one.
fn registered(servers: &str) -> Option<Profile> {
    let map = profiles().lock().unwrap_or_else(|e| e.into_inner());
    servers
        .split(',')
        .find_map(|s| map.get(berth_auth::channel::host_port(s.trim())).cloned())
}

/// A cluster CA of one test directory (`dir/security/ca`), made with the real `berth admin
/// ca init`, plus a credential daemon served from this test process on
/// `dir/security/cred.sock` (what `berth credd` does on a login host): the CLI run by
/// [`cli`] proves its uid through it.
pub struct TestCa {
    /// The CA directory (ca.pem, ca.key, cluster.key, jwt.key).
    pub ca: PathBuf,
    /// The credential daemon's socket.
    pub cred_socket: PathBuf,
    root: PathBuf,
}

impl TestCa {
    /// The CA of `dir`, made on first use (and its credential daemon started).
    ///
    /// # Panics
    /// When `berth admin ca init` fails.
    pub fn of(dir: &Path) -> TestCa {
        static MADE: OnceLock<Mutex<()>> = OnceLock::new();
        let _one = MADE.get_or_init(Default::default).lock();
        let root = dir.join("security");
        let ca = root.join("ca");
        let cred_socket = root.join("cred.sock");
        if !ca.join("ca.key").exists() {
            let out = std::process::Command::new(bin("berth"))
                .args(["admin", "ca", "init"])
                .arg(&ca)
                .args(["--name", "test"])
                .output()
                .expect("run berth admin ca init");
            assert!(
                out.status.success(),
                "berth admin ca init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serve_credentials(&ca.join("cluster.key"), &cred_socket);
        }
        TestCa {
            ca,
            cred_socket,
            root,
        }
    }

    /// The CA `berth dev` made for its state directory `state` (certificates issued from
    /// it go to `state/security/test`).
    pub fn of_dev(state: &Path) -> TestCa {
        let security = state.join("security");
        TestCa {
            ca: security.join("ca"),
            cred_socket: security.join("cred.sock"),
            root: security.join("test"),
        }
    }

    /// `berth admin ca issue --ca CA ARGS --out dir/security/OUT` (once per `out`).
    ///
    /// # Panics
    /// When it fails.
    pub fn issue(&self, args: &[&str], out: &str) -> PathBuf {
        let dir = self.root.join(out);
        if dir.join("tls.pem").exists() {
            return dir;
        }
        let o = std::process::Command::new(bin("berth"))
            .args(["admin", "ca", "issue", "--ca"])
            .arg(&self.ca)
            .args(args)
            .arg("--out")
            .arg(&dir)
            .output()
            .expect("run berth admin ca issue");
        assert!(
            o.status.success(),
            "berth admin ca issue {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        dir
    }

    /// The security directory of replica `id` (serving on 127.0.0.1 and localhost).
    pub fn replica_dir(&self, id: u64) -> PathBuf {
        self.issue(&["--replica", &id.to_string()], &format!("replica{id}"))
    }

    /// The security directory of node `name`'s agent.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.issue(&["--node", name], &format!("node-{name}"))
    }

    /// What a berth-agent of node `name` needs on its command line: its node's directory,
    /// and no credential daemon of its own (the test's serves the CLI).
    pub fn agent_args(&self, name: &str) -> Vec<std::ffi::OsString> {
        vec![
            "--security-dir".into(),
            self.node_dir(name).into(),
            "--cred-socket".into(),
            "off".into(),
        ]
    }

    /// Seals `spec` for root, as a secure berthd seals a job root submitted: a test
    /// playing berthd (or an attacker holding the cluster key) sends launches an agent
    /// accepts.
    pub fn seal_as_root(&self, spec: &mut berth_proto::v1::JobSpec) {
        let key = berth_auth::key::ClusterKey::load(&self.ca.join("cluster.key")).expect("key");
        let id = berth_proto::v1::Identity {
            user: "root".into(),
            method: "local".into(),
            ..Default::default()
        };
        spec.user = "root".into();
        spec.uid = 0;
        spec.gid = 0;
        spec.launch_seal =
            berth_auth::seal::seal(&key, &id, berth_auth::seal::LaunchParts::batch(spec));
        spec.identity = Some(id);
    }

    /// Server TLS with replica `id`'s certificate, asking clients for one from this CA:
    /// what a test playing berthd serves agents with.
    pub fn server_tls(&self, id: u64) -> tonic::transport::ServerTlsConfig {
        let dir = self.replica_dir(id);
        let read = |f: &str| std::fs::read(dir.join(f)).expect("certificate files");
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                read("tls.pem"),
                read("tls.key"),
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(read("ca.pem")))
    }

    /// Issues kube-scheduler's service certificate and makes [`extender_call`] to
    /// `port` present it; returns its directory.
    pub fn extender_client(&self, port: u16) -> PathBuf {
        let dir = self.issue(&["--service", "kube-scheduler"], "kube-scheduler");
        http_clients()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port, dir.clone());
        dir
    }

    /// How a client reaches this CA's servers: TLS trusting the CA, proof from the
    /// credential daemon.
    pub fn profile(&self) -> Profile {
        Profile {
            ca: Some(self.ca.join("ca.pem")),
            cred_socket: Some(self.cred_socket.clone()),
            ..Default::default()
        }
    }

    /// Makes [`cli`] and [`connect`] reach `servers` (comma-separated) with [`TestCa::profile`].
    pub fn trust(&self, servers: &str) {
        let mut map = profiles().lock().unwrap_or_else(|e| e.into_inner());
        for s in servers.split(',') {
            let hp = berth_auth::channel::host_port(s.trim()).to_string();
            map.insert(hp, self.profile());
        }
    }
}

/// Serves local credentials signed with `key` on `socket` from a thread of this process
/// (it ends with the test process, so no daemon outlives a test).
fn serve_credentials(key: &Path, socket: &Path) {
    let key = std::sync::Arc::new(berth_auth::key::ClusterKey::load(key).expect("cluster key"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = {
        let _guard = rt.enter();
        berth_auth::credd::bind(socket).expect("bind the credential socket")
    };
    std::thread::spawn(move || {
        let (_keep, stop) = tokio::sync::watch::channel(false);
        rt.block_on(berth_auth::credd::serve(listener, key, stop));
    });
}

/// A channel to berthd at `url` as the CLI would open it: with the profile a [`TestCa`]
/// registered for its address, else the one `berth dev` wrote for it.
///
/// # Errors
/// Why it cannot connect.
pub async fn connect(url: &str) -> Result<berth_auth::channel::AuthChannel, String> {
    let profile = registered(url)
        .unwrap_or_else(|| berth_auth::profile::discover(berth_auth::channel::host_port(url)));
    berth_auth::channel::connect(url, Some(&profile)).await
}

/// A channel presenting the certificate in `dir` (`tls.pem`, `tls.key`, trusting its
/// `ca.pem`) and no other proof: how an agent or a replica connects.
///
/// # Errors
/// Why it cannot connect.
pub async fn connect_with_cert(
    url: &str,
    dir: &Path,
) -> Result<berth_auth::channel::AuthChannel, String> {
    let profile = Profile {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join("tls.pem")),
        key: Some(dir.join("tls.key")),
        ..Default::default()
    };
    berth_auth::channel::connect(url, Some(&profile)).await
}

/// Client certificates registered for HTTPS ports (see [`TestCa::extender_client`]).
fn http_clients() -> &'static Mutex<HashMap<u16, PathBuf>> {
    static C: OnceLock<Mutex<HashMap<u16, PathBuf>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// [`https`] to `port` with the certificate [`TestCa::extender_client`] registered for it.
///
/// # Panics
/// When none was registered, or the exchange fails.
pub fn extender_call(port: u16, request: &str) -> String {
    let dir = http_clients()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&port)
        .cloned()
        .unwrap_or_else(|| panic!("no client certificate registered for HTTPS port {port}"));
    https(port, &dir, request).unwrap_or_else(|e| panic!("HTTPS to {port}: {e}"))
}

/// One raw HTTP/1.1 exchange with berthd's HTTPS endpoint on loopback `port`: TLS trusting
/// `dir/ca.pem`, presenting `dir/tls.pem` + `tls.key` when `dir` has them. Returns the raw
/// response (status line, headers, body), or the TLS error.
///
/// # Errors
/// The connection or handshake error as text (a refused client certificate lands here).
pub fn https(port: u16, dir: &Path, request: &str) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let (cert, key) = (dir.join("tls.pem"), dir.join("tls.key"));
    let identity = cert.exists().then_some((cert.as_path(), key.as_path()));
    let cfg = berth_auth::tls::client_config(&dir.join("ca.pem"), identity, &[b"http/1.1"])
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("IP name");
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // A server refusing an oversized body may answer and close before reading it all, so a
    // failed write is not the error: the answer is.
    let _ = tls.write_all(request.as_bytes());
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer closing without close_notify after a full answer is fine here.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// A `POST path` of a JSON `body` (or a `GET` when `method` says so), `Connection: close`.
pub fn http_request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A CPU-only berth-agent named `cpu1` attached to `servers` (comma-separated URLs), with
/// its state under `dir` and a node certificate from `dir`'s test CA.
pub fn cpu_agent(dir: &std::path::Path, servers: &str) -> Proc {
    cpu_agent_named(dir, servers, "cpu1")
}

/// [`cpu_agent`] for node `name` (state under `agent-{name}`, `agent` for cpu1).
pub fn cpu_agent_named(dir: &std::path::Path, servers: &str, name: &str) -> Proc {
    let state = match name {
        "cpu1" => dir.join("agent"),
        other => dir.join(format!("agent-{other}")),
    };
    Proc(
        std::process::Command::new(bin("berth-agent"))
            .args([
                "--server",
                servers,
                "--node-name",
                name,
                "--no-gpus",
                "--state-dir",
            ])
            .arg(state)
            .args(TestCa::of(dir).agent_args(name))
            .env("RUST_LOG", "error")
            .spawn()
            .expect("spawn berth-agent"),
    )
}

/// A venv with `requirement` from PyPI, made once per machine under the temporary
/// directory (`berth-test-{name}-venv`; pip's download is the slow part), checked by
/// running `check` in its python. Returns that python.
///
/// # Errors
/// Why there is none (no python3 venv, PyPI unreachable): the caller prints it and skips.
pub fn pypi_venv(name: &str, requirement: &str, check: &str) -> Result<PathBuf, String> {
    use std::process::Command;
    let venv = std::env::temp_dir().join(format!("berth-test-{name}-venv"));
    let python = venv.join("bin/python");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", check])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--timeout", "20", requirement])
        .output()
        .map_err(|e| format!("pip not runnable: {e}"))?;
    if !pip.status.success() || !has(&python) {
        return Err(format!(
            "pip install {requirement} failed (PyPI unreachable?): {}",
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    Ok(python)
}
