//! End-to-end fair share through the real `berth dev` binary with an accounts file: a
//! high-priority job preempts a preemptible one, which gets its `--signal`, is requeued
//! under the same id and runs again; EASY backfill lets a short job run ahead of a
//! reserved one without delaying it; bad accounts files, classes and signals are refused.
//! No sleeps as synchronisation: every wait polls with a deadline.

use berth_tests::{berth, berth_dev, bin, free_port, poll, sbatch, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const ACCOUNTS: &str = r#"
half_life_hours = 24
default_account = "alice"

[[account]]
name = "research"
shares = 1

[[account]]
name = "alice"
parent = "research"

[[account]]
name = "bob"
parent = "research"
"#;

struct Dev {
    _child: Proc,
    dir: PathBuf,
    port: u16,
}

impl Dev {
    /// `berth dev` with one 8-GPU node and `ACCOUNTS`.
    fn start(dir: &Path) -> Dev {
        let accounts = dir.join("accounts.toml");
        std::fs::write(&accounts, ACCOUNTS).unwrap();
        let port = free_port();
        let accounts_arg = accounts.to_string_lossy().into_owned();
        let args = [
            "--nodes",
            "1",
            "--kill-wait-secs",
            "2",
            "--accounts",
            &accounts_arg,
        ];
        let (child, _) = berth_dev(&dir.join("state"), port, &args);
        let dev = Dev {
            _child: child,
            dir: dir.to_path_buf(),
            port,
        };
        // The accounts file is installed through the log once the replica leads.
        poll("accounts installed", 20, || {
            let out = dev.berth(&["admin", "accounts", "show"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("name = \"bob\"")
                .then_some(())
        });
        dev
    }

    fn berth(&self, args: &[&str]) -> Output {
        berth(&self.dir, &format!("http://127.0.0.1:{}", self.port), args)
    }

    fn submit(&self, args: &[&str]) -> u64 {
        sbatch(&self.dir, &format!("http://127.0.0.1:{}", self.port), args)
    }

    fn show(&self, id: u64) -> String {
        let out = self.berth(&["scontrol", "show", "job", &id.to_string()]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait(&self, id: u64, pattern: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.show(id);
            if s.contains(pattern) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id}: no {pattern:?} within {secs}s:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
    p.display().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn high_priority_job_preempts_and_requeues_a_preemptible_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path());
    // First run: trap the preemption signal, note it, and exit; the rerun finishes at once.
    let victim = script(
        tmp.path(),
        "victim.sh",
        "if [ -e ran.txt ]; then echo second run; exit 0; fi\n\
         touch ran.txt\n\
         trap 'echo got USR1 >> sig.txt; exit 0' USR1\n\
         while true; do sleep 0.1; done\n",
    );
    let v = dev.submit(&[
        "-A",
        "bob",
        "--qos",
        "development",
        "--gres=gpu:8",
        "--signal=USR1@5",
        "-o",
        "v-%j.out",
        &victim,
    ]);
    dev.wait(v, "JobState=RUNNING ", 30);
    poll("victim started", 10, || {
        tmp.path().join("ran.txt").exists().then_some(())
    });
    let boss = dev.submit(&[
        "-A",
        "alice",
        "--qos",
        "production-inference",
        "--gres=gpu:8",
        "--wrap",
        "echo boss",
    ]);
    // The victim got its signal, was requeued under the same id, and the boss ran.
    dev.wait(boss, "JobState=COMPLETED ", 30);
    let sig = std::fs::read_to_string(tmp.path().join("sig.txt")).unwrap();
    assert_eq!(sig.trim(), "got USR1");
    // It runs again (restart 1) and completes.
    let done = dev.wait(v, "JobState=COMPLETED ", 30);
    assert!(done.contains("Restarts=1 "), "{done}");
    assert!(done.contains("Account=bob QOS=development"), "{done}");
    let out = std::fs::read_to_string(tmp.path().join(format!("v-{v}.out"))).unwrap();
    assert!(out.contains("second run"), "{out}");
    // bob was charged for the preempted run: sshare shows usage and a lower factor.
    let shares = String::from_utf8_lossy(&dev.berth(&["sshare"]).stdout).into_owned();
    let line = |name: &str| {
        shares
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in\n{shares}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let bob_usage: f64 = line("bob")[3].parse().unwrap();
    assert!(bob_usage > 0.0, "{shares}");

    // Bad input is refused with a reason and changes nothing.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[[account]]\nname = \"x\"\nparent = \"nobody\"\n").unwrap();
    let o = dev.berth(&["admin", "accounts", "set", bad.to_str().unwrap()]);
    assert!(
        !o.status.success() && stderr(&o).contains("unknown parent nobody"),
        "{}",
        stderr(&o)
    );
    let shown =
        String::from_utf8_lossy(&dev.berth(&["admin", "accounts", "show"]).stdout).into_owned();
    assert!(shown.contains("name = \"bob\""), "{shown}");
    let o = dev.berth(&["sbatch", "--qos", "gold", "--wrap", "true"]);
    assert!(
        !o.status.success() && stderr(&o).contains("Invalid qos"),
        "{}",
        stderr(&o)
    );
    let o = dev.berth(&["sbatch", "-A", "research", "--wrap", "true"]);
    assert!(
        !o.status.success() && stderr(&o).contains("sub-accounts"),
        "{}",
        stderr(&o)
    );
    let o = dev.berth(&["sbatch", "--signal=USR9@5", "--wrap", "true"]);
    assert!(
        !o.status.success() && stderr(&o).contains("Invalid --signal"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(bin("berth"))
        .args([
            "dev",
            "--accounts",
            bad.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(tmp.path().join("other"))
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("unknown parent nobody"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn backfill_runs_a_short_job_ahead_without_delaying_the_reserved_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path());
    // L holds 6 of 8 GPUs for up to 10 minutes; R needs all 8 and is reserved for L's end.
    let long = dev.submit(&["--gres=gpu:6", "-t", "10:00", "--wrap", "sleep 600"]);
    dev.wait(long, "JobState=RUNNING ", 30);
    let reserved = dev.submit(&["--gres=gpu:8", "-t", "1:00", "--wrap", "echo R"]);
    // S fits in the 2 free GPUs and ends (limit 5 min) before L's limit: it runs now.
    let short = dev.submit(&["--gres=gpu:2", "-t", "5:00", "--wrap", "echo S"]);
    dev.wait(short, "JobState=COMPLETED ", 30);
    // T fits too, but its 20-minute limit would run past R's reserved start: it waits.
    let late = dev.submit(&["--gres=gpu:2", "-t", "20:00", "--wrap", "echo T"]);
    let why = dev.wait(late, "Reason=Priority ", 30);
    assert!(why.contains("JobState=PENDING "), "{why}");
    // sprio lists both waiting jobs with the account (the default, alice) and class.
    let prio = String::from_utf8_lossy(&dev.berth(&["sprio"]).stdout).into_owned();
    for id in [reserved, late] {
        let line = prio
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("{id} not in sprio:\n{prio}"));
        assert!(
            line.contains("alice") && line.contains("research"),
            "{prio}"
        );
    }
    // squeue --start shows R's expected start (L's start + 10 min), R waits on Resources.
    let start = dev.berth(&["squeue", "--start", "-h", "-o", "%i %S %r"]);
    let text = String::from_utf8_lossy(&start.stdout).into_owned();
    let r_line = text
        .lines()
        .find(|l| l.starts_with(&format!("{reserved} ")))
        .unwrap_or_else(|| panic!("{reserved} not in\n{text}"));
    assert!(
        !r_line.contains("N/A") && r_line.ends_with("Resources"),
        "{text}"
    );
    // When L ends, R starts before T.
    assert!(dev.berth(&["scancel", &long.to_string()]).status.success());
    dev.wait(reserved, "JobState=COMPLETED ", 30);
    dev.wait(late, "JobState=COMPLETED ", 30);
    let start_of = |id: u64| {
        let s = dev.show(id);
        let t = s
            .split("StartTime=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        t
    };
    assert!(
        start_of(reserved) <= start_of(late),
        "R must not start after T"
    );
}

#[test]
fn guaranteed_quota_is_reclaimed_from_a_borrowing_account() {
    let tmp = tempfile::tempdir().unwrap();
    let quotas = r#"
default_account = "alice"
[[account]]
name = "ml"
quota.gpu = { guaranteed = 4 }
[[account]]
name = "alice"
parent = "ml"
[[account]]
name = "bio"
quota.gpu = { guaranteed = 4 }
[[account]]
name = "bob"
parent = "bio"
"#;
    let dev = Dev::start(tmp.path());
    let file = tmp.path().join("quotas.toml");
    std::fs::write(&file, quotas).unwrap();
    let o = dev.berth(&["admin", "accounts", "set", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // bob takes all 8 GPUs: 4 guaranteed, 4 borrowed from ml's idle guarantee.
    let own = dev.submit(&[
        "-A",
        "bob",
        "--qos",
        "development",
        "--gres=gpu:4",
        "--wrap",
        "sleep 600",
    ]);
    let borrowed = dev.submit(&[
        "-A",
        "bob",
        "--qos",
        "development",
        "--gres=gpu:4",
        "--wrap",
        "sleep 600",
    ]);
    dev.wait(own, "JobState=RUNNING ", 30);
    dev.wait(borrowed, "JobState=RUNNING ", 30);
    // A third bob job (same class: no class preemption) would exceed what ml lends: held
    // by the quota, nothing preempted.
    let more = dev.submit(&[
        "-A",
        "bob",
        "--qos",
        "development",
        "--gres=gpu:1",
        "--wrap",
        "true",
    ]);
    dev.wait(more, "Reason=QOSGrpGRES ", 30);
    // alice asks for her guarantee: the newest borrowing job is preempted and requeued.
    let alice = dev.submit(&[
        "-A",
        "alice",
        "--qos",
        "training",
        "--gres=gpu:4",
        "--wrap",
        "echo mine",
    ]);
    dev.wait(alice, "JobState=COMPLETED ", 40);
    let b = dev.wait(borrowed, "Restarts=1 ", 30);
    assert!(
        !b.contains("JobState=CANCELLED") && !b.contains("JobState=FAILED"),
        "{b}"
    );
    let o = dev.show(own);
    assert!(
        o.contains("JobState=RUNNING ") && o.contains("Restarts=0 "),
        "{o}"
    );
    // Stop what still runs (`more` may have completed already).
    for id in [own, borrowed, more] {
        let _ = dev.berth(&["scancel", &id.to_string()]);
    }
}

#[test]
fn a_users_gpu_limit_in_a_class_holds_back_only_their_next_job() {
    let tmp = tempfile::tempdir().unwrap();
    let limited = r#"
default_account = "alice"
default_qos = "research"
[weights]
short = 1000
[[account]]
name = "alice"
[[qos]]
name = "research"
priority = 100
preemptible = true
max_gpus_per_user = 4
[[qos]]
name = "training"
priority = 500
preemptible = false
"#;
    let dev = Dev::start(tmp.path());
    let file = tmp.path().join("limited.toml");
    std::fs::write(&file, limited).unwrap();
    let o = dev.berth(&["admin", "accounts", "set", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = dev.submit(&["--gres=gpu:4", "--wrap", "sleep 600"]);
    dev.wait(first, "JobState=RUNNING ", 30);
    // 4 of 8 GPUs are free, but this user already holds the class's 4.
    let second = dev.submit(&["--gres=gpu:1", "-t", "1:00", "--wrap", "true"]);
    dev.wait(second, "Reason=QOSMaxGRESPerUser ", 30);
    let squeue = dev.berth(&["squeue", "-h", "-o", "%i %r"]);
    let text = String::from_utf8_lossy(&squeue.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l == format!("{second} QOSMaxGRESPerUser")),
        "{text}"
    );
    // The limit is per class: the same user's training job starts.
    let other = dev.submit(&["--qos", "training", "--gres=gpu:4", "--wrap", "true"]);
    dev.wait(other, "JobState=COMPLETED ", 30);
    // sprio shows every term of the priority sum, the short-limit factor included
    // (weight 1000; a 1-minute limit against the 7-day age_max:
    // 1000 * (1 - ln(61) / ln(604801)) = 691).
    let prio = String::from_utf8_lossy(&dev.berth(&["sprio"]).stdout).into_owned();
    assert!(prio.lines().next().unwrap().ends_with("SHORT"), "{prio}");
    let line = prio
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&second.to_string()))
        .unwrap_or_else(|| panic!("{second} not in sprio:\n{prio}"));
    let short: u64 = line.split_whitespace().last().unwrap().parse().unwrap();
    assert_eq!(short, 691, "{prio}");
    // Once the first job ends, the user is under the limit again.
    assert!(dev.berth(&["scancel", &first.to_string()]).status.success());
    dev.wait(second, "JobState=COMPLETED ", 30);
}

#[test]
fn dependent_jobs_wait_for_their_conditions_and_impossible_ones_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path());
    let first = dev.submit(&["--wrap", "sleep 600"]);
    dev.wait(first, "JobState=RUNNING ", 30);
    let dep = |spec: String| dev.submit(&["-d", &spec, "--wrap", "true"]);
    let on_ok = dep(format!("afterok:{first}"));
    let on_fail = dep(format!("afternotok:{first}"));
    let on_any = dep(format!("afterany:{first}"));
    let on_start = dep(format!("after:{first}"));
    // `after` holds once the job started; the others wait, with Slurm's reason.
    dev.wait(on_start, "JobState=COMPLETED ", 30);
    for id in [on_ok, on_fail, on_any] {
        let s = dev.wait(id, "Reason=Dependency ", 30);
        assert!(s.contains("(unfulfilled)"), "{s}");
    }
    // Cancelled is not OK: afterok can never hold, afternotok and afterany now do.
    assert!(dev.berth(&["scancel", &first.to_string()]).status.success());
    dev.wait(on_fail, "JobState=COMPLETED ", 30);
    dev.wait(on_any, "JobState=COMPLETED ", 30);
    let s = dev.wait(on_ok, "Reason=DependencyNeverSatisfied ", 30);
    assert!(
        s.contains(&format!("Dependency=afterok:{first}(failed)")),
        "{s}"
    );
    // A chain on a completed job runs.
    let chained = dep(format!("afterok:{on_fail}:{on_any}"));
    dev.wait(chained, "JobState=COMPLETED ", 30);
    // Bad specifications and unknown jobs are refused and submit nothing.
    let before = dev.berth(&["squeue", "-h", "-t", "all", "-o", "%i"]);
    for (spec, want) in [
        (
            "afterok:999999",
            "Job dependency problem: job 999999 does not exist",
        ),
        ("afterok:x", "Invalid dependency specification 'afterok:x'"),
        ("afterok:1?afterany:1", "not supported"),
    ] {
        let o = dev.berth(&["sbatch", "-d", spec, "--wrap", "true"]);
        assert!(
            !o.status.success() && stderr(&o).contains(want),
            "{spec}: {}",
            stderr(&o)
        );
    }
    let after = dev.berth(&["squeue", "-h", "-t", "all", "-o", "%i"]);
    assert_eq!(before.stdout, after.stdout);
}
