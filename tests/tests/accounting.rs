//! Accounting end to end with the real binaries: jobs run under `berth dev` show in
//! `sacct` (submitit's form and Slurm's others), `sreport` and `berth report usage`; and
//! with three replicas, every replica — a replaced leader and a replica added empty
//! after the jobs ended, catching up from a snapshot — answers with every record.

use berth_tests::{berth, berth_dev, cpu_agent, free_port, poll, replica, sbatch, Proc};
use std::path::Path;
use std::process::{Command, Output};

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
}

/// `sacct -a -X -n -P -o JobID,State -S now-1days [extra]` through `server`: (id, state)
/// pairs.
fn states_with(dir: &Path, server: &str, extra: &[&str]) -> Option<Vec<(u64, String)>> {
    let mut args = vec![
        "sacct",
        "-a",
        "-X",
        "-n",
        "-P",
        "-o",
        "JobID,State",
        "-S",
        "now-1days",
    ];
    args.extend_from_slice(extra);
    let out = berth(dir, server, &args);
    if !out.status.success() {
        return None;
    }
    Some(
        text(&out)
            .lines()
            .filter_map(|l| {
                let (id, state) = l.split_once('|')?;
                Some((id.parse().ok()?, state.to_string()))
            })
            .collect(),
    )
}

fn states(dir: &Path, server: &str) -> Option<Vec<(u64, String)>> {
    states_with(dir, server, &[])
}

#[test]
fn sacct_sreport_and_report_usage_show_the_jobs_berth_dev_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let (_dev, _) = berth_dev(
        &dir.join("state"),
        port,
        &[
            "--machine",
            "dgx-h100",
            "--nodes",
            "1",
            "--kill-wait-secs",
            "2",
        ],
    );
    let server = format!("http://127.0.0.1:{port}");
    let gpu = sbatch(
        dir,
        &server,
        &[
            "-J",
            "train",
            "--gres=gpu:2",
            "-c",
            "4",
            "--wrap",
            "sleep 1",
        ],
    );
    let failed = sbatch(dir, &server, &["-J", "oops", "--wrap", "exit 3"]);
    let held = sbatch(dir, &server, &["-H", "-J", "never", "--wrap", "true"]);
    ok(
        berth(dir, &server, &["scancel", &held.to_string()]),
        "scancel",
    );
    // A job never eligible (held) shows only when named (Slurm: `time_eligible != 0` in a
    // window query).
    let done = |id: u64, state: &str| {
        states_with(dir, &server, &["-j", &id.to_string()])?
            .iter()
            .any(|(i, s)| *i == id && s.starts_with(state))
            .then_some(())
    };
    poll("the GPU job completes", 60, || done(gpu, "COMPLETED"));
    poll("the failing job fails", 60, || done(failed, "FAILED"));
    poll("the held job shows cancelled", 60, || {
        done(held, "CANCELLED")
    });

    // submitit's call: the job and its batch step, on the node it ran on.
    let out = ok(
        berth(
            dir,
            &server,
            &[
                "sacct",
                "-o",
                "JobID,State,NodeList",
                "--parsable2",
                "-j",
                &gpu.to_string(),
            ],
        ),
        "sacct -j",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "JobID|State|NodeList");
    assert!(lines[1].starts_with(&format!("{gpu}|COMPLETED|")), "{out}");
    assert!(
        lines[2].starts_with(&format!("{gpu}.batch|COMPLETED|")),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");

    // Slurm's columns: ExitCode, AllocTRES with the GPU type, a never-started job.
    let out = ok(
        berth(
            dir,
            &server,
            &[
                "sacct",
                "-X",
                "-P",
                "-n",
                "-o",
                "JobID,ExitCode,AllocTRES,NodeList,State",
                "-j",
                &format!("{gpu},{failed},{held}"),
            ],
        ),
        "sacct -o",
    );
    let row = |id: u64| {
        out.lines()
            .find(|l| l.starts_with(&format!("{id}|")))
            .unwrap_or_else(|| panic!("{id} in {out}"))
            .to_string()
    };
    assert!(row(gpu).contains("gres/gpu:h100=2,gres/gpu=2"), "{out}");
    assert!(row(gpu).contains("cpu=4"), "{out}");
    assert!(row(failed).starts_with(&format!("{failed}|3:0|")), "{out}");
    assert!(row(held).contains("|None assigned|CANCELLED by"), "{out}");

    // Selection: -u, -A, -s, -S/-E windows; output: -p, %N widths.
    let ids = |extra: &[&str]| -> Vec<u64> {
        let mut args = vec!["sacct", "-X", "-n", "-P", "-o", "JobID"];
        args.extend_from_slice(extra);
        ok(berth(dir, &server, &args), "sacct selection")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let me = text(&Command::new("id").arg("-un").output().unwrap())
        .trim()
        .to_string();
    let day = ["-S", "now-1days"];
    // With -s, -E defaults to -S (Slurm's rule), so state queries name both.
    let day_states = ["-S", "now-1days", "-E", "now"];
    let mine = ids(&[&["-u", &me][..], &day[..]].concat());
    assert!(
        mine.contains(&gpu) && mine.contains(&failed),
        "-u {me}: {mine:?}"
    );
    assert!(!mine.contains(&held), "never eligible, not named: {mine:?}");
    assert!(ids(&[&["-u", "nosuchuser"][..], &day[..]].concat()).is_empty());
    let account = ok(
        berth(
            dir,
            &server,
            &[
                "sacct",
                "-X",
                "-n",
                "-P",
                "-o",
                "Account",
                "-j",
                &gpu.to_string(),
            ],
        ),
        "sacct Account",
    )
    .trim()
    .to_string();
    assert!(!account.is_empty());
    assert!(ids(&[&["-A", &account][..], &day[..]].concat()).contains(&gpu));
    assert!(ids(&[&["-A", "nosuchaccount"][..], &day[..]].concat()).is_empty());
    assert_eq!(
        ids(&[&["-s", "FAILED"][..], &day_states[..]].concat()),
        vec![failed]
    );
    let completed = ids(&[&["-s", "CD"][..], &day_states[..]].concat());
    assert!(
        completed.contains(&gpu) && !completed.contains(&failed),
        "{completed:?}"
    );
    // A window after the jobs ended, and one before they were submitted: nothing.
    assert!(ids(&["-a", "-S", "now+1hours", "-E", "now+2hours"]).is_empty());
    assert!(ids(&["-a", "-S", "now-3days", "-E", "now-2days"]).is_empty());
    // -p ends every line with the delimiter; -P does not.
    let out = ok(
        berth(
            dir,
            &server,
            &[
                "sacct",
                "-X",
                "-p",
                "-o",
                "JobID,State",
                "-j",
                &gpu.to_string(),
            ],
        ),
        "sacct -p",
    );
    assert_eq!(out.lines().next(), Some("JobID|State|"), "{out}");
    assert!(out.lines().nth(1).unwrap().ends_with("COMPLETED|"), "{out}");
    // %N: a column N wide, right-aligned; %-N left-aligned; header and its dashes as wide.
    let out = ok(
        berth(
            dir,
            &server,
            &[
                "sacct",
                "-X",
                "-o",
                "JobID%12,State%-14",
                "-j",
                &gpu.to_string(),
            ],
        ),
        "sacct %N",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("{:>12} {:<14} ", "JobID", "State"),
        "{out}"
    );
    assert_eq!(
        lines[1],
        format!("{} {} ", "-".repeat(12), "-".repeat(14)),
        "{out}"
    );
    assert_eq!(
        lines[2],
        format!("{:>12} {:<14} ", gpu, "COMPLETED"),
        "{out}"
    );

    // Bad input: Slurm's messages, exit 1.
    for (args, want) in [
        (
            vec!["sacct", "-o", "JobID,Bogus"],
            "sacct: error: Invalid field requested: \"Bogus\"",
        ),
        (
            vec!["sacct", "-S", "2026-13-01"],
            "Invalid time specification (pos=5): 2026-13-01",
        ),
        (
            vec!["sacct", "-j", "x1"],
            "sacct: fatal: Bad job/step specified: x1",
        ),
        (
            vec!["sacct", "-S", "now", "-E", "now-1days"],
            "requested is after end time",
        ),
        (vec!["sacct", "-s", "BOGUS"], "BOGUS"),
        (
            vec!["sreport", "cluster", "Bogus"],
            "Not valid report Bogus",
        ),
        (
            vec!["report", "usage", "--by", "team"],
            "invalid --by \"team\"",
        ),
    ] {
        let out = berth(dir, &server, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }

    // --json: Slurm's shape.
    let json: serde_json::Value = serde_json::from_str(&ok(
        berth(dir, &server, &["sacct", "--json", "-j", &gpu.to_string()]),
        "sacct --json",
    ))
    .expect("sacct --json is JSON");
    assert_eq!(json["jobs"][0]["job_id"], gpu);
    assert_eq!(json["jobs"][0]["state"]["current"], "COMPLETED");
    assert_eq!(json["jobs"][0]["steps"][0]["step"]["id"], "batch");

    // berth report usage: 2 GPUs for about a second, allocated; nothing priced.
    let usage: serde_json::Value = serde_json::from_str(&ok(
        berth(
            dir,
            &server,
            &[
                "report",
                "usage",
                "--by",
                "gpu-type",
                "--since",
                "now-1hours",
                "--json",
            ],
        ),
        "report usage",
    ))
    .expect("report usage --json is JSON");
    let h100 = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "h100")
        .unwrap_or_else(|| panic!("{usage}"));
    let gpu_hours = h100["gpu_hours"].as_f64().unwrap();
    assert!(
        gpu_hours > 0.0 && gpu_hours < 2.0 * 60.0 / 3600.0,
        "{usage}"
    );
    assert_eq!(h100["jobs"], 1);
    let csv = ok(
        berth(dir, &server, &["report", "usage", "--by", "user", "--csv"]),
        "report --csv",
    );
    assert!(csv.starts_with("key,jobs,gpu_hours,"), "{csv}");

    // sreport answers with Slurm's title block (its hour-rounded windows make the rows
    // depend on the clock; their numbers are checked against Slurm in the CLI tests).
    let out = ok(
        berth(
            dir,
            &server,
            &[
                "sreport",
                "cluster",
                "Utilization",
                "start=now-2hours",
                "-t",
                "hours",
            ],
        ),
        "sreport",
    );
    assert!(
        out.contains("Cluster Utilization ") && out.contains("Usage reported in CPU Hours"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("berth ")),
        "a row for the cluster: {out}"
    );
}

fn leader(ports: &[u16], live: &[usize]) -> Option<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let views: Vec<u64> = live
        .iter()
        .map(|i| {
            rt.block_on(async {
                let url = format!("http://127.0.0.1:{}", ports[*i]);
                let channel = berth_tests::connect(&url).await.ok()?;
                let mut c = berth_proto::v1::admin_service_client::AdminServiceClient::new(channel);
                let s = c
                    .get_replica_status(berth_proto::v1::ReplicaStatusRequest {})
                    .await
                    .ok()?;
                Some(s.into_inner().leader_id)
            })
            .unwrap_or(0)
        })
        .collect();
    (views[0] != 0 && views.iter().all(|v| *v == views[0])).then_some(views[0])
}

#[test]
fn a_new_leader_and_a_replica_added_later_lose_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    // Small snapshots: the replica added later catches up from one, not from the log.
    let small = ["--snapshot-entries", "8"];
    let mut procs: Vec<Option<Proc>> = (1..=3)
        .map(|id| Some(replica(dir, id, &ports[..3], &small)))
        .collect();
    poll("a leader", 30, || leader(&ports, &[0, 1, 2]));
    let all: String = ports[..3]
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let _agent = cpu_agent(dir, &all);
    let via = |i: usize| format!("127.0.0.1:{}", ports[i]);
    poll("agent registered", 30, || {
        text(&berth(dir, &via(0), &["sinfo", "-h", "-N", "-o", "%N"]))
            .contains("cpu1")
            .then_some(())
    });
    let ids: Vec<u64> = (0..6)
        .map(|i| sbatch(dir, &via(0), &["-J", &format!("j{i}"), "--wrap", "true"]))
        .collect();
    let complete = |i: usize| {
        let got = states(dir, &via(i))?;
        ids.iter()
            .all(|id| got.iter().any(|(g, s)| g == id && s == "COMPLETED"))
            .then_some(got.len())
    };
    // Every replica recorded every run from its own log.
    for i in 0..3 {
        assert_eq!(
            poll(&format!("replica {} has the records", i + 1), 60, || {
                complete(i)
            }),
            ids.len()
        );
    }
    // A fourth replica joins empty after the jobs ended.
    procs.push(Some(replica(
        dir,
        4,
        &ports,
        &[&["--join"][..], &small[..]].concat(),
    )));
    ok(
        berth(
            dir,
            &via(0),
            &[
                "admin",
                "members",
                "add",
                &format!("4=127.0.0.1:{}", ports[3]),
            ],
        ),
        "members add",
    );
    poll("replica 4 follows", 60, || leader(&ports, &[0, 1, 2, 3]));
    assert_eq!(
        poll("replica 4 has the records", 60, || complete(3)),
        ids.len()
    );
    // kill -9 the leader (now: leadership may have moved since the start): the new one
    // answers with every record.
    let first = poll("a leader of four", 30, || leader(&ports, &[0, 1, 2, 3]));
    procs[first as usize - 1] = None;
    let live: Vec<usize> = (0..4).filter(|i| *i != first as usize - 1).collect();
    // The live replicas name the dead one until their election timeout passes.
    let second = poll("a new leader", 60, || {
        leader(&ports, &live).filter(|l| *l != first)
    });
    assert_eq!(
        poll("the new leader has the records", 30, || complete(
            second as usize - 1
        )),
        ids.len()
    );
    drop(procs);
}
