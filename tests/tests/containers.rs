//! Jobs in real OCI containers: `berth dev` + runc, an OCI image layout built here from
//! Debian's busybox-static, GPUs injected through the agent's CDI spec.
//!
//! Needs root (runc, cgroups, overlay mounts); installs runc and busybox-static itself when
//! missing. Without root it prints why and skips.

use berth_tests::{
    berth, berth_dev, ensure_crun_cgroup_layout, ensure_debian_packages, free_port, poll, sbatch,
};
use std::path::{Path, PathBuf};

/// Commands the image links to busybox.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "env", "dd", "sleep", "id", "hostname", "touch", "pwd", "grep",
];

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (runc, cgroups, overlay mounts)".into());
    }
    ensure_debian_packages(&["runc", "busybox-static"]).err()
}

/// An OCI image layout at `dir` whose one layer holds busybox-static and its applets.
fn busybox_image(dir: &Path) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installs /bin/busybox");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "bin/", std::io::empty()).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "/bin/busybox")
            .unwrap();
    }
    let layer = b.into_inner().unwrap();
    let env = ["PATH=/bin".to_string(), "FROM_IMAGE=yes".into()];
    berth_agent::oci::image::write_layout(dir, &[layer], true, &env).unwrap();
}

/// A tar header of `kind` with owner root and a fixed mtime (the numeric fields must be set).
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// One `berth dev` with its state and a work directory.
struct Dev {
    proc: berth_tests::Proc,
    state: PathBuf,
    work: PathBuf,
    port: u16,
    server: String,
    /// The OCI runtime the node uses.
    runtime: String,
}

impl Dev {
    fn start(root: &Path, name: &str, args: &[&str]) -> Dev {
        let state = root.join(name);
        let work = root.join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        Dev::start_on(state, work, free_port(), args)
    }

    fn start_on(state: PathBuf, work: PathBuf, port: u16, args: &[&str]) -> Dev {
        let mut all = vec![
            "--nodes",
            "1",
            "--http-listen",
            "off",
            "--kill-wait-secs",
            "2",
        ];
        all.extend_from_slice(args);
        let (proc, _) = berth_dev(&state, port, &all);
        let runtime = args
            .iter()
            .position(|a| *a == "--container-runtime")
            .map_or("runc", |i| args[i + 1])
            .to_string();
        Dev {
            proc,
            state,
            work,
            port,
            server: format!("http://127.0.0.1:{port}"),
            runtime,
        }
    }

    /// kill -9 of berthd and the agent (one process), then the same node again.
    fn kill9_and_restart(mut self) -> Dev {
        self.proc.0.kill().unwrap();
        self.proc.0.wait().unwrap();
        let (state, work, port) = (self.state.clone(), self.work.clone(), self.port);
        drop(self);
        Dev::start_on(state, work, port, &[])
    }

    fn sbatch(&self, args: &[&str]) -> u64 {
        sbatch(&self.work, &self.server, args)
    }

    fn show(&self, id: u64) -> String {
        let out = berth(
            &self.work,
            &self.server,
            &["scontrol", "show", "job", &id.to_string()],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn field(&self, id: u64, key: &str) -> String {
        let text = self.show(id);
        let start = text
            .find(&format!("{key}="))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            + key.len()
            + 1;
        // Reasons contain spaces; they run to the next " Key=" on the line.
        let rest = &text[start..];
        let end = rest
            .find(" Dependency=")
            .filter(|_| key == "Reason")
            .or_else(|| rest.find([' ', '\n']))
            .unwrap_or(rest.len());
        rest[..end].to_string()
    }

    /// Waits until job `id` has ended, and returns its state.
    fn ended(&self, id: u64) -> String {
        poll(&format!("job {id} ends"), 120, || {
            let st = self.field(id, "JobState");
            (!matches!(
                st.as_str(),
                "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
            ))
            .then_some(st)
        })
    }

    fn output(&self, id: u64) -> String {
        std::fs::read_to_string(self.work.join(format!("slurm-{id}.out"))).unwrap_or_default()
    }

    fn job_dir(&self, id: u64) -> PathBuf {
        self.state.join("nodes/node1/jobs").join(id.to_string())
    }

    /// Nothing of job `id`'s container is left: no runc container, cgroup or bundle.
    fn assert_no_traces(&self, id: u64) {
        let cid = berth_agent::oci::container_id(id, &self.job_dir(id));
        let list = std::process::Command::new(&self.runtime)
            .args(["list", "-q"])
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            !list.lines().any(|l| l == cid),
            "container {cid} left: {list}"
        );
        for dir in berth_agent::oci::runtime::cgroup_dirs(&format!("/berth/{cid}")) {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
        assert!(
            !self.job_dir(id).join("bundle").exists(),
            "bundle of {id} left"
        );
    }

    /// The image cache holds complete entries only (64-hex names), no staging directories.
    fn assert_cache_clean(&self) {
        let cache = self.state.join("nodes/node1/images");
        for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "archives" {
                continue; // OCI archive → manifest memo
            }
            assert!(
                name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
                "unexpected cache entry {name}"
            );
        }
    }
}

#[test]
fn container_jobs_run_with_their_gpus_limits_and_cancel() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED container_jobs_run_with_their_gpus_limits_and_cancel: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("busybox-oci");
    busybox_image(&image);
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("input"), "from the host\n").unwrap();
    let dev = Dev::start(tmp.path(), "dev", &[]);
    let img = format!("--container-image={}", image.display());

    // Output, exit code, mounts, workdir, env and the granted GPUs' device nodes.
    let script = "echo hello from $(hostname); cat /data/input; pwd; \
                  touch /data/new 2>/dev/null && echo WROTE-RO; \
                  echo FROM_IMAGE=$FROM_IMAGE SLURM_JOB_ID=$SLURM_JOB_ID; \
                  echo CUDA=$CUDA_VISIBLE_DEVICES; ls /dev | grep nvidia | sed 's/^/DEV /'; exit 3";
    let mounts = format!("--container-mounts={}:/data:ro", data.display());
    let job = dev.sbatch(&[
        &img,
        &mounts,
        "--container-workdir=/data",
        "--gres=gpu:2",
        "--wrap",
        script,
    ]);
    assert_eq!(dev.ended(job), "FAILED");
    assert_eq!(dev.field(job, "ExitCode"), "3:0");
    assert_eq!(dev.field(job, "Container"), image.display().to_string());
    let out = dev.output(job);
    assert!(out.contains("hello from node1"), "{out}");
    assert!(out.contains("from the host"), "{out}");
    assert!(out.lines().any(|l| l == "/data"), "workdir: {out}");
    assert!(!out.contains("WROTE-RO"), "a ro mount was writable: {out}");
    assert!(
        out.contains(&format!("FROM_IMAGE=yes SLURM_JOB_ID={job}")),
        "{out}"
    );
    // The GPUs berthd granted (GpuUuids=node1:GPU-…,node1:GPU-…) are what the job sees,
    // and their device nodes, as the node's CDI spec names them, are exactly those present.
    let granted: Vec<String> = dev
        .field(job, "GpuUuids")
        .split(',')
        .map(|g| g.trim_start_matches("node1:").to_string())
        .collect();
    assert_eq!(granted.len(), 2);
    assert!(
        out.contains(&format!("CUDA={}", granted.join(","))),
        "{out}"
    );
    let spec_path = dev.state.join("nodes/node1/cdi/berth-nvidia-gpu.json");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    let mut want: Vec<String> = vec!["nvidiactl".into()];
    for d in spec["devices"].as_array().unwrap() {
        if granted.iter().any(|g| d["name"] == g.as_str()) {
            let path = d["containerEdits"]["deviceNodes"][0]["path"]
                .as_str()
                .unwrap();
            want.push(path.trim_start_matches("/dev/").to_string());
        }
    }
    want.sort();
    let mut got: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("DEV "))
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(got, want, "device nodes in the container");
    dev.assert_no_traces(job);

    // Memory limit: more than --mem is OOM-killed and reported as OUT_OF_MEMORY.
    let oom = dev.sbatch(&[
        &img,
        "--mem=32M",
        "--wrap",
        "dd if=/dev/zero of=/dev/null bs=100M count=1; echo dd-exit=$?",
    ]);
    assert_eq!(dev.ended(oom), "OUT_OF_MEMORY");
    assert!(
        dev.output(oom).contains("dd-exit=137"),
        "{}",
        dev.output(oom)
    );
    dev.assert_no_traces(oom);

    // Cancel: runc kill, then the container is deleted with its cgroup and bundle.
    let sleeper = dev.sbatch(&[&img, "--wrap", "echo started; sleep 300"]);
    poll("sleeper starts", 60, || {
        dev.output(sleeper).contains("started").then_some(())
    });
    let out = berth(&dev.work, &dev.server, &["scancel", &sleeper.to_string()]);
    assert!(out.status.success());
    assert_eq!(dev.ended(sleeper), "CANCELLED");
    poll("sleeper's container removed", 60, || {
        let cid = berth_agent::oci::container_id(sleeper, &dev.job_dir(sleeper));
        let list = std::process::Command::new("runc")
            .args(["list", "-q"])
            .output()
            .ok()?;
        (!String::from_utf8_lossy(&list.stdout).contains(&cid)).then_some(())
    });
    dev.assert_no_traces(sleeper);
    dev.assert_cache_clean();

    // Time limit: TIMEOUT, then the container is gone like a cancelled one.
    let slow = dev.sbatch(&[&img, "--time=0:01", "--wrap", "sleep 300"]);
    assert_eq!(dev.ended(slow), "TIMEOUT");
    dev.assert_no_traces(slow);

    // Agent restart: the container keeps running under its shim and is found again.
    // It waits for a file the test creates once the restarted agent is up.
    let gate = tmp.path().join("gate");
    std::fs::create_dir(&gate).unwrap();
    let gate_mount = format!("--container-mounts={}:/gate", gate.display());
    let survivor = dev.sbatch(&[
        &img,
        &gate_mount,
        "--wrap",
        "echo up; while [ ! -e /gate/go ]; do sleep 0.1; done; echo finished",
    ]);
    poll("survivor starts", 60, || {
        dev.output(survivor).contains("up").then_some(())
    });
    let dev = dev.kill9_and_restart();
    let cid = berth_agent::oci::container_id(survivor, &dev.job_dir(survivor));
    assert_eq!(
        berth_agent::oci::runtime::Runtime::locate(Path::new("runc"))
            .unwrap()
            .state(&cid)
            .map(|s| s.status),
        Some("running".to_string()),
        "the container outlives the agent"
    );
    std::fs::write(gate.join("go"), "").unwrap();
    assert_eq!(dev.ended(survivor), "COMPLETED");
    assert!(dev.output(survivor).contains("finished"));
    dev.assert_no_traces(survivor);
}

#[test]
fn bad_container_requests_fail_with_the_reason_and_leave_nothing() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED bad_container_requests_fail_with_the_reason_and_leave_nothing: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    busybox_image(&good);
    // A corrupt image: a layer blob altered after the layout was written.
    let corrupt = tmp.path().join("corrupt");
    busybox_image(&corrupt);
    let blobs = corrupt.join("blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    // A layer escaping the rootfs through a symlink to the host.
    let escape = tmp.path().join("escape");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "esc", &outside).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 1);
    b.append_data(&mut h, "esc/pwned", &b"x"[..]).unwrap();
    berth_agent::oci::image::write_layout(&escape, &[b.into_inner().unwrap()], false, &[]).unwrap();

    let dev = Dev::start(tmp.path(), "dev", &[]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!(
                "--container-image={}",
                tmp.path().join("missing").display()
            )],
            "No such file",
        ),
        (
            vec![format!("--container-image={}", corrupt.display())],
            "corrupt",
        ),
        (
            vec![format!("--container-image={}", escape.display())],
            "refused",
        ),
        (
            vec![
                format!("--container-image={}", good.display()),
                "--container-mounts=/etc:/hostetc".into(),
            ],
            "not allowed",
        ),
        (
            vec![
                format!("--container-image={}", good.display()),
                "--container-mounts=/proc/self:/p".into(),
            ],
            "not allowed",
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--wrap", "echo SHOULD-NOT-RUN"]);
        let id = dev.sbatch(&all);
        assert_eq!(dev.ended(id), "FAILED", "#{i}");
        let reason = dev.field(id, "Reason");
        assert!(
            reason.contains(want),
            "#{i}: want {want:?} in reason {reason:?}"
        );
        assert!(!dev.output(id).contains("SHOULD-NOT-RUN"), "#{i}");
        dev.assert_no_traces(id);
    }
    assert!(
        !outside.join("pwned").exists(),
        "the escaping layer wrote on the host"
    );
    dev.assert_cache_clean();

    // No runtime on the node: the job fails saying so.
    let norunc = Dev::start(
        tmp.path(),
        "norunc",
        &["--container-runtime", "/nonexistent/runc"],
    );
    let img = format!("--container-image={}", good.display());
    let id = norunc.sbatch(&[&img, "--wrap", "echo SHOULD-NOT-RUN"]);
    assert_eq!(norunc.ended(id), "FAILED");
    let reason = norunc.field(id, "Reason");
    assert!(reason.contains("/nonexistent/runc not found"), "{reason}");
    assert!(
        !norunc.job_dir(id).exists(),
        "a refused launch leaves no job directory"
    );
}

#[test]
fn crun_runs_the_same_jobs() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED crun_runs_the_same_jobs: {why}");
        return;
    }
    if let Err(why) = ensure_debian_packages(&["crun"]) {
        println!("SKIPPED crun_runs_the_same_jobs: {why}");
        return;
    }
    if let Err(why) = ensure_crun_cgroup_layout() {
        println!("SKIPPED crun_runs_the_same_jobs: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("busybox-oci");
    busybox_image(&image);
    let dev = Dev::start(tmp.path(), "dev", &["--container-runtime", "crun"]);
    let img = format!("--container-image={}", image.display());
    let job = dev.sbatch(&[
        &img,
        "--gres=gpu:1",
        "--wrap",
        "echo CUDA=$CUDA_VISIBLE_DEVICES; ls /dev | grep nvidia",
    ]);
    let state = dev.ended(job);
    let out = dev.output(job);
    assert_eq!(state, "COMPLETED", "{out}");
    let granted = dev
        .field(job, "GpuUuids")
        .trim_start_matches("node1:")
        .to_string();
    assert!(out.contains(&format!("CUDA={granted}")), "{out}");
    assert!(out.lines().any(|l| l == "nvidiactl"), "{out}");
    let oom = dev.sbatch(&[
        &img,
        "--mem=32M",
        "--wrap",
        "dd if=/dev/zero of=/dev/null bs=100M count=1",
    ]);
    assert_eq!(dev.ended(oom), "OUT_OF_MEMORY");
    dev.assert_no_traces(job);
    dev.assert_no_traces(oom);
}
