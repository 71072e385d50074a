//! End-to-end: the real `berth` binary running `berth dev` (berthd on raft-rs + sled, agents
//! on simulated NVML machines, real gRPC on loopback), driven through the CLI the way a
//! Slurm user would. No sleeps as synchronisation: every wait polls with a deadline.

use berth_proto::v1 as pb;
use berth_tests::{berth, berth_dev, bin, cli, free_port, poll, sbatch, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Dev {
    proc: Proc,
    dir: PathBuf,
    state: PathBuf,
    port: u16,
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        Dev::start_on(dir, &dir.join("state"), free_port())
    }

    fn start_on(dir: &Path, state: &Path, port: u16) -> Dev {
        Dev::start_with(dir, state, port, &["--nodes", "2"])
    }

    /// `berth dev` on dgx-h100 machines with `extra` options.
    fn start_with(dir: &Path, state: &Path, port: u16, extra: &[&str]) -> Dev {
        let mut args = vec!["--machine", "dgx-h100", "--kill-wait-secs", "2"];
        args.extend_from_slice(extra);
        let (proc, _) = berth_dev(state, port, &args);
        Dev {
            proc,
            dir: dir.to_path_buf(),
            state: state.to_path_buf(),
            port,
        }
    }

    fn server(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn berth(&self, args: &[&str]) -> Output {
        berth(&self.dir, &self.server(), args)
    }

    fn run(&self, exe: &Path, args: &[&str]) -> Output {
        cli(exe, &self.dir, &self.server(), args)
    }

    /// Submits and returns the job id (`--parsable`).
    fn submit(&self, args: &[&str]) -> u64 {
        sbatch(&self.dir, &self.server(), args)
    }

    fn show_job(&self, id: u64) -> String {
        let out = self.berth(&["scontrol", "show", "job", &id.to_string()]);
        assert!(
            out.status.success(),
            "scontrol show job {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls until the job's `JobState=` is `state`, or panics after `secs`.
    fn wait_state(&self, id: u64, state: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.show_job(id);
            if text.contains(&format!("JobState={state} ")) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {state} after {secs}s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        self.proc.0.kill().unwrap(); // SIGKILL
        self.proc.0.wait().unwrap();
    }
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let start = text
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in\n{text}"))
        + key.len()
        + 1;
    text[start..].split_whitespace().next().unwrap_or("")
}

/// Whether `pid` runs (a zombie waiting for a reaper counts as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn write_script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn gpu_job_sees_exactly_its_granted_uuids() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path());
    let script = write_script(
        tmp.path(),
        "gpus.sh",
        "#!/bin/sh\n#SBATCH -J gputest\n#SBATCH --gres=gpu:h100:2\n#SBATCH -o out-%j-%x.txt\n\
         echo CUDA=$CUDA_VISIBLE_DEVICES\necho NVIDIA=$NVIDIA_VISIBLE_DEVICES\necho ID=$SLURM_JOB_ID NAME=$SLURM_JOB_NAME\n\
         echo GPUS=$SLURM_JOB_GPUS NODES=$SLURM_JOB_NUM_NODES DIR=$SLURM_SUBMIT_DIR\n",
    );
    let id = dev.submit(&[&script]);
    let shown = dev.wait_state(id, "COMPLETED", 30);
    assert_eq!(field(&shown, "ExitCode"), "0:0");
    let out_path = tmp.path().join(format!("out-{id}-gputest.txt"));
    assert_eq!(field(&shown, "StdOut"), out_path.display().to_string());
    let out = std::fs::read_to_string(&out_path).unwrap();
    let cuda = out.lines().find_map(|l| l.strip_prefix("CUDA=")).unwrap();
    let uuids: Vec<&str> = cuda.split(',').collect();
    assert_eq!(uuids.len(), 2, "{out}");
    assert!(out.contains(&format!("NVIDIA={cuda}")), "{out}");
    assert!(out.contains(&format!("ID={id} NAME=gputest")), "{out}");
    assert!(out.contains("GPUS=0,1 NODES=1"), "{out}");
    // The UUIDs are the simulated machine's, as the agent read them through NVML.
    let node = field(&shown, "BatchHost").to_string();
    let nodes = String::from_utf8_lossy(&dev.berth(&["scontrol", "show", "node", &node]).stdout)
        .into_owned();
    for u in &uuids {
        assert!(
            u.starts_with("GPU-") && nodes.contains(u),
            "{u} not on {node}:\n{nodes}"
        );
    }
}

#[test]
fn exit_codes_cancel_and_time_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path());
    let failed = dev.submit(&["--wrap", "echo about to fail; exit 3"]);
    let sleeper = dev.submit(&[
        "-J",
        "sleeper",
        "--wrap",
        "sleep 300 & echo $! > child.pid; wait",
    ]);
    let slow = dev.submit(&["-t", "0:02", "--wrap", "sleep 300"]);

    let shown = dev.wait_state(failed, "FAILED", 30);
    assert_eq!(field(&shown, "ExitCode"), "3:0");
    let out = std::fs::read_to_string(tmp.path().join(format!("slurm-{failed}.out"))).unwrap();
    assert_eq!(out, "about to fail\n");

    dev.wait_state(sleeper, "RUNNING", 30);
    let pid_file = tmp.path().join("child.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "job never wrote child.pid");
        std::thread::sleep(Duration::from_millis(50));
    }
    let squeue = String::from_utf8_lossy(&dev.berth(&["squeue", "-h", "-o", "%i %t %j"]).stdout)
        .into_owned();
    assert!(squeue.contains(&format!("{sleeper} R sleeper")), "{squeue}");
    let out = dev.berth(&["scancel", &sleeper.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev.wait_state(sleeper, "CANCELLED", 30);
    // Cancel signals the whole process group: the script's background child died too.
    let child: u32 = std::fs::read_to_string(tmp.path().join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !alive(child),
        "background child {child} of a cancelled job still runs"
    );
    // Cancelling a finished job is refused, like Slurm.
    let again = dev.berth(&["scancel", &sleeper.to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already completing or completed"));

    let shown = dev.wait_state(slow, "TIMEOUT", 30);
    assert_eq!(field(&shown, "TimeLimit"), "00:00:02");
}

#[test]
fn impossible_and_malformed_submissions_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path());
    let bad_directive = write_script(
        tmp.path(),
        "bad.sh",
        "#!/bin/sh\n#SBATCH --time=banana\nhostname\n",
    );
    let no_shebang = write_script(tmp.path(), "plain.sh", "hostname\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["sbatch", "--gres=gpu:9", "--wrap", "true"],
            "Requested node configuration is not available",
        ),
        (
            vec!["sbatch", "-p", "nosuch", "--wrap", "true"],
            "Requested node configuration is not available",
        ),
        (
            vec!["sbatch", "--frobnicate", "--wrap", "true"],
            "--frobnicate",
        ),
        (
            vec!["sbatch", "--array=5-1", "--wrap", "true"],
            "Invalid job array specification",
        ),
        (vec!["sbatch", "-t", "1:2:3:4", "--wrap", "true"], "1:2:3:4"),
        (vec!["sbatch", "--mem=12X", "--wrap", "true"], "12X"),
        (vec!["sbatch", "/no/such/script.sh"], "/no/such/script.sh"),
        (vec!["sbatch", &bad_directive], "banana"),
        (vec!["sbatch", &no_shebang], "#!"),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let out = dev.berth(args);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains(want) {
            panic!(
                "#{i}: {args:?}: want failure mentioning {want:?}, got status {} stderr {err}",
                out.status
            );
        }
    }
    let all = dev.berth(&["squeue", "-h", "-t", "all"]);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout),
        "",
        "no job was recorded"
    );
    let missing = dev.berth(&["scontrol", "show", "job", "999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Invalid job id specified"));
}

#[test]
fn slurm_tool_names_work_through_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path());
    for tool in ["sbatch", "squeue", "scancel", "sinfo", "scontrol"] {
        std::os::unix::fs::symlink(bin("berth"), tmp.path().join(tool)).unwrap();
    }
    let out = dev.run(&tmp.path().join("sbatch"), &["-H", "--wrap", "true"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let id: u64 = text
        .trim()
        .strip_prefix("Submitted batch job ")
        .expect("sbatch output")
        .parse()
        .unwrap();
    let q = dev.run(&tmp.path().join("squeue"), &[]);
    let q = String::from_utf8_lossy(&q.stdout);
    assert!(
        q.starts_with(
            "             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)"
        ),
        "{q}"
    );
    assert!(q.contains("(JobHeldUser)"), "{q}");
    let sinfo =
        String::from_utf8_lossy(&dev.run(&tmp.path().join("sinfo"), &[]).stdout).into_owned();
    assert!(
        sinfo.contains("gpu:h100:16") && sinfo.contains("node[1-2]"),
        "{sinfo}"
    );
    assert!(dev
        .run(&tmp.path().join("scontrol"), &["release", &id.to_string()])
        .status
        .success());
    dev.wait_state(id, "COMPLETED", 30);
    assert!(!dev
        .run(&tmp.path().join("scancel"), &[&id.to_string()])
        .status
        .success());
}

#[test]
fn kill_9_and_restart_keeps_every_job() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(tmp.path());
    let done = dev.submit(&["--wrap", "echo finished"]);
    dev.wait_state(done, "COMPLETED", 30);
    let marker = tmp.path().join("go");
    let running = dev.submit(&[
        "-o",
        "running.out",
        "--wrap",
        &format!(
            "echo started; while [ ! -e {} ]; do sleep 0.1; done; echo survived",
            marker.display()
        ),
    ]);
    dev.wait_state(running, "RUNNING", 30);
    let held = dev.submit(&["-H", "--wrap", "true"]);
    let gang = dev.submit(&["--gres=gpu:8", "-N", "2", "--wrap", "sleep 1"]);
    let before: Vec<String> = [done, held].iter().map(|id| dev.show_job(*id)).collect();

    dev.kill9();
    let mut dev = Dev::start_on(tmp.path(), &dev.state.clone(), dev.port);
    // Finished and held jobs are exactly as they were.
    for (id, text) in [done, held].iter().zip(&before) {
        let now = dev.show_job(*id);
        for key in ["JobState", "ExitCode", "SubmitTime", "EndTime", "StdOut"] {
            assert_eq!(
                field(&now, key),
                field(text, key),
                "job {id} {key} changed across restart"
            );
        }
    }
    // The running job kept running under its shim; the restarted agent re-attached to it.
    dev.wait_state(running, "RUNNING", 5);
    std::fs::write(&marker, "").unwrap();
    dev.wait_state(running, "COMPLETED", 30);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("running.out")).unwrap(),
        "started\nsurvived\n"
    );
    dev.wait_state(gang, "COMPLETED", 30);
    dev.kill9();
}

/// GPUs of `node` held by `job`, from `scontrol show node`'s `Gpu=` lines.
fn gpus_held_by(dev: &Dev, node: &str, job: u64) -> usize {
    let out = dev.berth(&["scontrol", "show", "node", node]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter(|l| l.trim_start().starts_with("Gpu="))
        .filter(|l| l.contains(&format!(" Job={job} ")))
        .count()
}

#[test]
fn two_node_gang_starts_whole_under_one_leaf_or_not_at_all() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("topology.conf");
    std::fs::write(
        &conf,
        "SwitchName=leaf0 Nodes=node[1-2]\nSwitchName=leaf1 Nodes=node3\nSwitchName=spine Switches=leaf[0-1]\n",
    )
    .unwrap();
    let dev = Dev::start_with(
        tmp.path(),
        &tmp.path().join("state"),
        free_port(),
        &["--nodes", "3", "--topology", conf.to_str().unwrap()],
    );
    // The tree went through the Raft log and is shown as Slurm shows it.
    let topo = poll("topology installed", 30, || {
        let out = dev.berth(&["scontrol", "show", "topology"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("SwitchName=spine").then_some(text)
    });
    assert_eq!(
        topo,
        "SwitchName=leaf0 Level=0 LinkSpeed=1 Nodes=node[1-2]\n\
         SwitchName=leaf1 Level=0 LinkSpeed=1 Nodes=node3\n\
         SwitchName=spine Level=1 LinkSpeed=1 Nodes=node[1-3] Switches=leaf[0-1]\n"
    );
    // A whole node held until the marker appears: node1 (lowest name among equals).
    let marker = tmp.path().join("go");
    let marker2 = tmp.path().join("go2");
    // Job processes outlive berth dev by design (a restarted agent re-attaches): if an
    // assertion fails, the markers still let them end.
    struct Release(Vec<PathBuf>);
    impl Drop for Release {
        fn drop(&mut self) {
            for m in &self.0 {
                let _ = std::fs::write(m, "");
            }
        }
    }
    let _release = Release(vec![marker.clone(), marker2.clone()]);
    let node_list = |text: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("NodeList="));
        line.unwrap_or_else(|| panic!("no NodeList= line in\n{text}"))
            .trim()["NodeList=".len()..]
            .to_string()
    };
    let blocker = dev.submit(&[
        "--gres=gpu:8",
        "--wrap",
        &format!("while [ ! -e {} ]; do sleep 0.1; done", marker.display()),
    ]);
    let text = dev.wait_state(blocker, "RUNNING", 30);
    assert_eq!(node_list(&text), "node1");
    // node2 and node3 are free but under two leaves: --switches=1 makes the gang wait, and
    // while it waits none of its parts holds anything.
    let gang = dev.submit(&[
        "--gres=gpu:8",
        "-N",
        "2",
        "--switches=1@10:00",
        "--wrap",
        &format!(
            "echo $SLURM_JOB_NODELIST; while [ ! -e {} ]; do sleep 0.1; done",
            marker2.display()
        ),
    ]);
    poll("gang waits for one switch", 30, || {
        let out = dev.berth(&["squeue", "-j", &gang.to_string()]);
        String::from_utf8_lossy(&out.stdout)
            .contains("(Switches)")
            .then_some(())
    });
    for node in ["node1", "node2", "node3"] {
        assert_eq!(
            gpus_held_by(&dev, node, gang),
            0,
            "nothing of a waiting gang is held on {node}"
        );
    }
    assert_eq!(field(&dev.show_job(gang), "JobState"), "PENDING");
    // The blocker ends: both parts start together under leaf0.
    std::fs::write(&marker, "").unwrap();
    let text = dev.wait_state(gang, "RUNNING", 30);
    assert_eq!(node_list(&text), "node[1-2]");
    for node in ["node1", "node2"] {
        assert_eq!(
            gpus_held_by(&dev, node, gang),
            8,
            "the gang holds all of {node}"
        );
    }
    assert_eq!(gpus_held_by(&dev, "node3", gang), 0);
    std::fs::write(&marker2, "").unwrap();
    dev.wait_state(gang, "COMPLETED", 30);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(format!("slurm-{gang}.out"))).unwrap(),
        "node1,node2\n"
    );
}

#[test]
fn corrupt_state_dir_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(state.join("berthd")).unwrap();
    std::fs::write(state.join("berthd/conf"), b"\x00\x01 not sled").unwrap();
    std::fs::write(state.join("berthd/db"), b"garbage garbage garbage").unwrap();
    let out = Command::new(bin("berth"))
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot start berthd") && err.contains("berthd"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(state.join("berthd/db")).unwrap(),
        b"garbage garbage garbage"
    );

    let file_state = tmp.path().join("a-file");
    std::fs::write(&file_state, "x").unwrap();
    let out = Command::new(bin("berth"))
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&file_state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a-file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sending_garbage_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = tokio::task::block_in_place(|| Dev::start(tmp.path()));
    let nodes_before =
        tokio::task::block_in_place(|| dev.berth(&["scontrol", "show", "node"]).stdout);
    // Each message comes from an agent holding the certificate of the node it names (the
    // name check itself is in security.rs): what is refused here is the message.
    let ca = berth_tests::TestCa::of_dev(&dev.state);
    let as_node = |name: &str| {
        let dir = ca.node_dir(name);
        let url = dev.server();
        async move {
            pb::agent_service_client::AgentServiceClient::new(
                berth_tests::connect_with_cert(&url, &dir).await.unwrap(),
            )
        }
    };
    let heartbeat = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat { seq: 1 })),
    };
    let bad_inventory = |inv: pb::NodeInventory| pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            inventory: Some(inv),
            jobs: vec![],
            ..Default::default()
        })),
    };
    let dup_gpus = pb::NodeInventory {
        name: "evil".into(),
        partition: "gpu".into(),
        cpus: 4,
        gpus: vec![
            pb::Gpu {
                uuid: "GPU-x".into(),
                ..Default::default()
            },
            pb::Gpu {
                uuid: "GPU-x".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let bad_name = pb::NodeInventory {
        name: "../../etc".into(),
        partition: "gpu".into(),
        cpus: 4,
        ..Default::default()
    };
    let bad_event = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            inventory: Some(pb::NodeInventory {
                name: "ok".into(),
                partition: "gpu".into(),
                cpus: 1,
                ..Default::default()
            }),
            jobs: vec![pb::JobEvent {
                job_id: 1,
                event: None,
            }],
            ..Default::default()
        })),
    };
    let cases = [
        (
            "evil",
            heartbeat,
            "first message on an agent stream must be Register",
        ),
        ("evil", bad_inventory(dup_gpus), "repeated"),
        ("evil", bad_inventory(bad_name), "invalid node name"),
        ("ok", bad_event, "without an event"),
    ];
    for (i, (node, msg, want)) in cases.into_iter().enumerate() {
        let mut client = as_node(node).await;
        let res = client.attach(tokio_stream::iter(vec![msg])).await;
        match res {
            Err(status)
                if status.code() == tonic::Code::InvalidArgument
                    && status.message().contains(want) => {}
            Err(status) => panic!("#{i}: want InvalidArgument with {want:?}, got {status:?}"),
            Ok(_) => panic!("#{i}: garbage accepted"),
        }
    }
    let nodes_after =
        tokio::task::block_in_place(|| dev.berth(&["scontrol", "show", "node"]).stdout);
    assert_eq!(
        String::from_utf8_lossy(&nodes_before),
        String::from_utf8_lossy(&nodes_after)
    );
}

#[test]
fn scripts_run_byte_for_byte_and_the_4_mib_limit_is_one_clear_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dev = Dev::start(dir);
    // Latin-1, not UTF-8: the job writes exactly the bytes its script holds.
    let out = dir.join("latin.out");
    let mut body = b"#!/bin/sh\n#SBATCH -J latin\n".to_vec();
    body.extend_from_slice(format!("#SBATCH -o {}\n", out.display()).as_bytes());
    body.extend_from_slice(b"printf 'caf\xe9\\n'\n");
    let script = dir.join("latin.sh");
    std::fs::write(&script, &body).unwrap();
    let id = dev.submit(&[script.to_str().unwrap()]);
    dev.wait_state(id, "COMPLETED", 30);
    assert_eq!(std::fs::read(&out).unwrap(), b"caf\xe9\n");
    // `scontrol -o show job` (scripts parse it): the record on one line.
    let one = dev.berth(&["scontrol", "-o", "show", "job", &id.to_string()]);
    let line = String::from_utf8_lossy(&one.stdout).to_string();
    assert!(
        line.lines().count() == 1
            && line.starts_with(&format!("JobId={id} JobName=latin "))
            && line.contains(" JobState=COMPLETED "),
        "{line}"
    );

    // Just under 4 MiB is accepted (and squeue stays brief); one byte over is refused.
    let limit = 4 << 20;
    let big = |size: usize| {
        let mut s = String::from("#!/bin/sh\ntrue\n");
        let pad = size - s.len() - 1;
        s.push_str(&"#".repeat(pad));
        s.push('\n');
        assert_eq!(s.len(), size);
        s
    };
    let at = write_script(dir, "at.sh", &big(limit));
    let id = dev.submit(&[&at]);
    let listed = dev.berth(&["squeue", "-h", "-t", "all", "-o", "%i"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&id.to_string()),
        "{listed:?}"
    );
    let over = write_script(dir, "over.sh", &big(limit + 1));
    let before = dev.berth(&["squeue", "-h", "-t", "all", "-o", "%i"]).stdout;
    let refused = dev.berth(&["sbatch", &over]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains(&format!(
                "batch script is {} bytes, the limit is {limit}",
                limit + 1
            )),
        "{err}"
    );
    assert_eq!(
        dev.berth(&["squeue", "-h", "-t", "all", "-o", "%i"]).stdout,
        before
    );
}

/// The example description in docs/cluster.md, as the page shows it.
fn documented_cluster() -> String {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cluster.md"))
        .expect("docs/cluster.md");
    let start = page
        .find("```toml\n")
        .expect("a toml block in docs/cluster.md")
        + 8;
    let len = page[start..].find("```").expect("the block ends");
    page[start..start + len].to_string()
}

#[test]
fn berth_dev_runs_the_documented_cluster_description() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("berth.toml");
    std::fs::write(&config, documented_cluster()).unwrap();
    let port = free_port();
    let (_dev, printed) = berth_dev(
        &dir.join("state"),
        port,
        &[
            "--config",
            config.to_str().unwrap(),
            "--http-listen",
            "off",
            "--kill-wait-secs",
            "2",
        ],
    );
    assert!(
        printed.iter().any(|l| l.contains("8 simulated node(s)")),
        "{printed:?}"
    );
    let server = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let o = berth(dir, &server, args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    // Overlapping partitions, each with its described nodes, every one up and undrained.
    let parts = run(&["sinfo", "-h", "-o", "%P %D %f"]);
    for want in [
        "gpu* 2 h100,ib,nvlink",
        "gpu* 2 l40s,pcie",
        "h100 2 h100,ib,nvlink",
        "cpu 4 amd,cpu",
        "all 4 amd,cpu",
    ] {
        assert!(
            parts.lines().any(|l| l == want),
            "want {want:?} in:\n{parts}"
        );
    }
    let reasons = run(&["sinfo", "-R", "-h"]);
    assert!(reasons.trim().is_empty(), "no node drained: {reasons}");
    // A CPU job lands in its partition, a feature-constrained GPU job on its nodes.
    let cpu = sbatch(dir, &server, &["-p", "cpu", "--wrap", "true"]);
    let l40s = sbatch(
        dir,
        &server,
        &["-C", "l40s", "--gres=gpu:1", "--wrap", "true"],
    );
    for (id, nodes) in [(cpu, "cpu-0"), (l40s, "l40s-0")] {
        let shown = poll(&format!("job {id} completes"), 30, || {
            let t = run(&["scontrol", "show", "job", &id.to_string()]);
            t.contains("JobState=COMPLETED ").then_some(t)
        });
        assert!(shown.contains(&format!(" NodeList={nodes}")), "{shown}");
    }
}

#[test]
fn berth_dev_refuses_a_bad_description_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases = [
        (
            "[[nodes]]\nnames = \"n[1-2]\"\ncpus = 8\nmemory = \"16G\"\n\n[[partition]]\nname = \"p\"\nnodes = \"n5\"\n",
            "n5",
        ),
        (
            "[[nodes]]\nnames = \"n1\"\ncpus = 8\nmemory = \"16G\"\ngpus = 3\ngpu_type = \"h100\"\n",
            "no simulated machine has 3xh100 GPUs",
        ),
        ("not toml at all [[[\n", "bad cluster description"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let config = dir.join(format!("bad{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let state = dir.join(format!("state{i}"));
        let out = Command::new(bin("berth"))
            .args([
                "dev",
                "--config",
                config.to_str().unwrap(),
                "--http-listen",
                "off",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--state-dir")
            .arg(&state)
            .env("KUBECONFIG", "/nonexistent/berth-test-kubeconfig")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "#{i}: want {want:?} in {err}"
        );
        // Refused before anything started: no replica state was written.
        assert!(!state.join("berthd").exists(), "#{i}: berthd state created");
    }
}
