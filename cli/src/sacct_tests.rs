//! sacct against real Slurm 22.05's output (`testdata/slurm-22.05/`): the same jobs as
//! berth records print the same columns, widths, truncation, parsable forms and
//! messages; every bad argument is refused with Slurm's words.

use super::*;
use crate::sacct_fields::LONG_FIELDS;
use chrono::{NaiveDate, TimeZone as _};

const BASIC: &str = include_str!("../testdata/slurm-22.05/sacct-basic.txt");
const ERRORS: &str = include_str!("../testdata/slurm-22.05/sacct-errors.txt");
const HELPFORMAT: &str = include_str!("../testdata/slurm-22.05/sacct-helpformat.txt");
const LONG_HEADER: &str = include_str!("../testdata/slurm-22.05/sacct-long-header.txt");
const JSON: &str = include_str!("../testdata/slurm-22.05/sacct-json-job-with-steps.json");

/// What the oracle printed for `=== sacct ARGS` (without its `rc=` line).
fn oracle(file: &str, args: &str) -> String {
    let head = format!("=== sacct {args}\n");
    let start = file
        .find(&head)
        .unwrap_or_else(|| panic!("no {head:?} in testdata"))
        + head.len();
    let rest = &file[start..];
    let end = rest.find("rc=").expect("each capture ends with rc=");
    rest[..end].to_string()
}

fn now() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 12, 6)
        .and_then(|d| d.and_hms_opt(20, 0, 0))
        .expect("valid")
}

fn req(args: &[&str]) -> Request {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    match parse_args(&args, now(), ("root", 0)) {
        Ok(Parsed::Query(r)) => *r,
        other => panic!("{args:?}: want a query, got {other:?}"),
    }
}

fn err(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    match parse_args(&args, now(), ("root", 0)) {
        Err(e) => e,
        Ok(p) => panic!("{args:?}: want an error, got {p:?}"),
    }
}

fn tres(cpus: u32, mem_mb: u64, gpus: u32, gpu_type: &str) -> pb::Tres {
    pb::Tres {
        cpus,
        mem_mb,
        nodes: 1,
        gpus,
        gpu_type: gpu_type.into(),
        ..Default::default()
    }
}

/// A run on gpu001 that started, with its batch step, like the oracle's jobs.
fn ran(
    id: u64,
    name: &str,
    account: &str,
    state: JobState,
    code: i32,
    t: pb::Tres,
) -> pb::JobRecord {
    let start = 1_796_586_783_000;
    let step = pb::StepRecord {
        step_id: "batch".into(),
        name: "batch".into(),
        state: state as i32,
        exit_code: code,
        start_time_ms: start,
        end_time_ms: start + 2000,
        nodes: vec!["gpu001".into()],
        alloc: Some(t.clone()),
        ntasks: 1,
        ..Default::default()
    };
    pb::JobRecord {
        job_id: id,
        name: name.into(),
        user: "root".into(),
        account: account.into(),
        partition: "gpu".into(),
        qos: "normal".into(),
        submit_time_ms: start - 30_000,
        eligible_time_ms: start - 30_000,
        start_time_ms: start,
        end_time_ms: start + 2000,
        state: state as i32,
        exit_code: code,
        nodes: vec!["gpu001".into()],
        req: Some(t.clone()),
        alloc: Some(t),
        steps: vec![step],
        ..Default::default()
    }
}

/// The oracle's jobs 1 (2 GPUs), 2 (exit 3) and 7 (cancelled while pending).
fn oracle_jobs() -> Vec<pb::JobRecord> {
    let mut cancelled = pb::JobRecord {
        job_id: 7,
        name: "tocancel".into(),
        user: "root".into(),
        account: "root".into(),
        partition: "gpu".into(),
        submit_time_ms: 1_796_586_791_000,
        eligible_time_ms: 1_796_586_791_000,
        end_time_ms: 1_796_586_795_000,
        state: JobState::Cancelled as i32,
        req: Some(tres(1, 512_000, 0, "")),
        alloc: Some(pb::Tres::default()),
        ..Default::default()
    };
    cancelled.reason = "None".into();
    vec![
        ran(
            1,
            "hello",
            "physics",
            JobState::Completed,
            0,
            tres(4, 8192, 2, "h100"),
        ),
        ran(
            2,
            "failer",
            "root",
            JobState::Failed,
            3,
            tres(1, 512_000, 0, ""),
        ),
        cancelled,
    ]
}

fn lines_of(text: &str, ids: &[&str]) -> String {
    text.lines()
        .filter(|l| {
            let id = l.split([' ', '|']).find(|s| !s.is_empty()).unwrap_or("");
            ids.contains(&id) || l.starts_with("JobID") || l.starts_with("---")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn default_columns_print_as_slurm_does() {
    let recs = oracle_jobs();
    let ids = ["1", "1.batch", "2", "2.batch", "7"];
    let got = render(&recs, &req(&[]), 0);
    assert_eq!(got, lines_of(&oracle(BASIC, ""), &ids));
    let got = render(&recs, &req(&["-X"]), 0);
    assert_eq!(got, lines_of(&oracle(BASIC, "-X"), &ids));
    let got = render(&recs, &req(&["-b"]), 0);
    assert_eq!(got, lines_of(&oracle(BASIC, "-b"), &ids));
    let got = render(&recs, &req(&["-n", "-X"]), 0);
    assert_eq!(got, lines_of(&oracle(BASIC, "-n -X"), &ids));
}

#[test]
fn parsable_forms_and_delimiter_print_as_slurm_does() {
    let recs = oracle_jobs();
    let ids = ["1", "1.batch", "2", "2.batch", "7"];
    for args in [
        "-P -o jobid,state,nodelist",
        "-p -o jobid,state",
        "--delimiter=, -P -o jobid,state -X",
    ] {
        let argv: Vec<&str> = args.split(' ').collect();
        let got = render(&recs, &req(&argv), 0);
        let file = if args.starts_with("--delimiter") {
            ERRORS
        } else {
            BASIC
        };
        let want: String = oracle(file, args)
            .lines()
            .filter(|l| {
                let id = l.split(['|', ',']).next().unwrap_or("");
                ids.contains(&id) || id == "JobID"
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(got, want, "sacct {args}");
    }
}

#[test]
fn widths_truncation_and_tres_print_as_slurm_does() {
    let recs = oracle_jobs();
    let args = "-o jobid%20,jobname%-5,state%3,alloctres%40,reqtres%40";
    let argv: Vec<&str> = args.split(' ').collect();
    let got = render(&recs[..1], &req(&argv), 0);
    let want: String = oracle(BASIC, args)
        .lines()
        .take(4)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn helpformat_and_long_header_are_slurms() {
    match parse_args(&["-e".to_string()], now(), ("root", 0)) {
        Ok(Parsed::Print(text)) => assert_eq!(format!("{text}\n"), HELPFORMAT),
        other => panic!("want the field list, got {other:?}"),
    }
    let long = render(&[], &req(&["-l"]), 0);
    assert_eq!(long, LONG_HEADER);
    assert_eq!(req(&["-l"]).fields.len(), LONG_FIELDS.split(',').count());
}

#[test]
fn jobs_array_tasks_and_steps_are_selected_as_slurm_does() {
    let mut recs = oracle_jobs();
    for (id, task) in [(3u64, 3u32), (4, 1), (8, 2)] {
        let mut r = ran(
            id,
            "arr",
            "root",
            JobState::Completed,
            0,
            tres(1, 512_000, 0, ""),
        );
        r.array_job_id = 3;
        r.array_task_id = task;
        r.has_array_task = true;
        recs.push(r);
    }
    let mut five = ran(
        5,
        "steps",
        "root",
        JobState::Completed,
        0,
        tres(2, 512_000, 1, "h100"),
    );
    for (id, name) in [("0", "hostname"), ("1", "sleep")] {
        let mut s = five.steps[0].clone();
        s.step_id = id.into();
        s.name = name.into();
        five.steps.push(s);
    }
    recs.push(five);
    let ids_of = |text: String| -> Vec<String> {
        text.lines()
            .skip(2)
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    };
    for args in ["-j 3", "-j 3_2", "-j 5.0", "-j 5.batch,1"] {
        let argv: Vec<&str> = args.split(' ').collect();
        let r = req(&argv);
        let got = ids_of(render(&recs, &r, 0));
        assert_eq!(got, ids_of(oracle(BASIC, args)), "sacct {args}");
    }
}

#[test]
fn bad_arguments_get_slurms_messages() {
    let cases: &[(&[&str], &str)] = &[
        (&["-o", "foo"], "Invalid field requested: \"foo\""),
        (
            &["-o", "jobid,bogus%3"],
            "Invalid field requested: \"bogus\"",
        ),
        (&["-j", "abc"], "Bad job/step specified: abc"),
        (&["-j", "0"], "Bad job/step specified: 0"),
        (&["-j", "5.x"], "Bad step specified: 5"),
        (&["-j", "3_x"], "Bad job array element specified: 3"),
        (&["-s", "XX"], "unrecognized job state value 'XX'"),
        (
            &["-S", "2026-13-40"],
            "Invalid time specification (pos=5): 2026-13-40",
        ),
        (
            &["-S", "25:00"],
            "Invalid time specification (pos=0): 25:00",
        ),
        (
            &["-S", "now-5xyz"],
            "Invalid time specification (pos=4): now-5xyz",
        ),
        (&["-E", "yesterday-ish"], "Invalid time specification"),
        (
            &["-S", "2026-12-07", "-E", "2026-12-06"],
            "Start time (2026-12-07T00:00:00) requested is after end time (2026-12-06T00:00:00).",
        ),
        (&["--yaml"], "option --yaml is not supported by berth yet"),
        (
            &["-x"],
            "option -x/--associations is not supported by berth yet",
        ),
        (&["--bogus"], "unexpected argument '--bogus'"),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let got = err(args);
        assert!(
            got.contains(want),
            "#{i} {args:?}: want {want:?}, got {got:?}"
        );
    }
    // The oracle's words, for the cases it was asked.
    for (args, msg) in [
        ("-o foo", "Invalid field requested: \"foo\""),
        ("-j 5.x", "Bad step specified: 5"),
        ("-j 3_x", "Bad job array element specified: 3"),
        ("-S 25:00", "Invalid time specification (pos=0): 25:00"),
    ] {
        assert!(oracle(ERRORS, args).contains(msg), "testdata for {args}");
    }
}

#[test]
fn default_window_users_and_filters_follow_sacct() {
    // No -S: since midnight; with -j: all time; with -s and no -S: now.
    let midnight = chrono::Local
        .from_local_datetime(&now().date().and_hms_opt(0, 0, 0).expect("valid"))
        .unwrap()
        .timestamp() as u64
        * 1000;
    assert_eq!(req(&[]).query.window_start_ms, midnight);
    assert_eq!(req(&["-j", "4"]).query.window_start_ms, 0);
    let s = req(&["-s", "CD"]);
    assert_eq!(s.query.window_start_ms, s.query.window_end_ms);
    // Not root: your own jobs unless -a or -u.
    let mine = |args: &[&str]| match parse_args(
        &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        now(),
        ("alice", 1000),
    ) {
        Ok(Parsed::Query(r)) => r.query.users,
        other => panic!("{other:?}"),
    };
    assert_eq!(mine(&[]), vec!["alice".to_string()]);
    assert!(mine(&["-a"]).is_empty());
    assert_eq!(
        mine(&["-u", "bob,carol"]),
        vec!["bob".to_string(), "carol".into()]
    );
    let q = req(&[
        "-A",
        "physics",
        "-r",
        "gpu,cpu",
        "-s",
        "F,CA",
        "-S",
        "2026-12-01",
    ])
    .query;
    assert_eq!(q.accounts, vec!["physics".to_string()]);
    assert_eq!(q.partitions, vec!["gpu".to_string(), "cpu".into()]);
    assert_eq!(
        q.states,
        vec![JobState::Failed as i32, JobState::Cancelled as i32]
    );
    // -s with -S and no -E: the window is the instant -S names, as sacct(1) says.
    assert_eq!(q.window_start_ms, q.window_end_ms);
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn json_has_slurms_keys_for_jobs_and_steps() {
    let slurm: serde_json::Value = serde_json::from_str(JSON).expect("oracle JSON");
    let mut rec = oracle_jobs().remove(0);
    let mut s = rec.steps[0].clone();
    s.step_id = "0".into();
    rec.steps.push(s);
    let ours: serde_json::Value =
        serde_json::from_str(&crate::sacct::json::render(&[rec], &req(&["-j", "1"]), 0))
            .expect("berth JSON parses");
    assert_eq!(keys(&ours), keys(&slurm));
    assert_eq!(keys(&ours["meta"]), keys(&slurm["meta"]));
    let (job, sjob) = (&ours["jobs"][0], &slurm["jobs"][0]);
    let mut want = keys(sjob);
    want.push("berth".into());
    want.sort();
    assert_eq!(keys(job), want);
    for k in ["time", "array", "state", "exit_code", "tres", "association"] {
        assert_eq!(keys(&job[k]), keys(&sjob[k]), "jobs[0].{k}");
    }
    assert_eq!(
        keys(&job["tres"]["allocated"][0]),
        keys(&sjob["tres"]["allocated"][0])
    );
    assert_eq!(keys(&job["steps"][0]), keys(&sjob["steps"][0]));
    assert_eq!(
        keys(&job["steps"][0]["step"]),
        keys(&sjob["steps"][0]["step"])
    );
    // Step ids: "batch" a string, numbered steps numbers, as Slurm writes them.
    assert_eq!(job["steps"][0]["step"]["id"], "batch");
    assert_eq!(job["steps"][1]["step"]["id"], 0);
    assert_eq!(job["tres"]["allocated"][1]["count"], 8192, "mem in MB");
    assert_eq!(job["state"]["current"], "COMPLETED");
}
