//! sreport against real Slurm 22.05's output (`testdata/slurm-22.05/sreport.txt`): a
//! usage report with the oracle's numbers prints the oracle's text, and bad arguments
//! get its messages.

use super::*;
use chrono::NaiveDate;

const ORACLE: &str = include_str!("../testdata/slurm-22.05/sreport.txt");
const W: &str = "start=2026-12-06T19:00 end=2026-12-06T20:00";

fn oracle(args: &str) -> String {
    let head = format!("=== sreport {args}\n");
    let start = ORACLE
        .find(&head)
        .unwrap_or_else(|| panic!("no {head:?} in testdata"))
        + head.len();
    let rest = &ORACLE[start..];
    rest[..rest.find("rc=").expect("rc= ends each capture")].to_string()
}

fn now() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 12, 6)
        .and_then(|d| d.and_hms_opt(20, 1, 0))
        .expect("valid")
}

fn req(args: &str) -> Request {
    let argv: Vec<String> = args.split(' ').map(str::to_string).collect();
    parse_args(&argv, now()).unwrap_or_else(|e| panic!("{args}: {e}"))
}

fn row(account: &str, user: &str, cpu: f64, gpu: f64) -> pb::UsageRow {
    pb::UsageRow {
        key: format!("{account}/{user}"),
        account: account.into(),
        user: user.into(),
        cpu_seconds: cpu,
        gpu_seconds: gpu,
        jobs: 1,
        ..Default::default()
    }
}

fn account(name: &str, parent: &str) -> pb::UsageAccount {
    pb::UsageAccount {
        name: name.into(),
        parent: parent.into(),
    }
}

/// The oracle's hour in seconds: root's own jobs used 65 CPU-seconds and physics' 8; the
/// nodes were up 149,760 CPU-seconds, 2,950 of them down; jobs waited 300 CPU-seconds.
fn oracle_usage() -> pb::UsageReport {
    pb::UsageReport {
        rows: vec![
            row("root", "root", 65.0, 1.0),
            row("physics", "root", 8.0, 4.0),
        ],
        cpu_capacity_seconds: 149_760.0,
        cpu_down_seconds: 2_950.0,
        cpu_planned_seconds: 300.0,
        gpu_capacity_seconds: 14_970.0,
        gpu_down_seconds: 368.0,
        cluster: "oracle".into(),
        accounts: vec![
            account("root", ""),
            account("physics", "root"),
            account("bio", "physics"),
            account("chem", "root"),
        ],
        ..Default::default()
    }
}

/// `sreport ARGS` over [`oracle_usage`] prints what the oracle printed.
fn check(args: &str) {
    let r = req(args);
    assert_eq!(render(&r, &oracle_usage()), oracle(args), "sreport {args}");
}

#[test]
fn cluster_utilization_prints_as_slurm_does() {
    for args in [
        format!("cluster Utilization {W}"),
        format!("cluster Utilization {W} -t hours"),
        format!("cluster Utilization {W} -P"),
        format!("cluster Utilization {W} -p"),
        format!("-n cluster Utilization {W}"),
        format!("cluster Utilization {W} --tres=gres/gpu"),
    ] {
        check(&args);
    }
}

#[test]
fn percentages_match_slurm_except_reported_which_is_of_the_whole_window() {
    let args = format!("cluster Utilization {W} --tres=cpu,gres/gpu -t percent");
    let got = render(&req(&args), &oracle_usage());
    let want = oracle(&args);
    // Everything but the last column (8 wide and a space) of the table lines.
    let cut = |t: &str| -> Vec<String> {
        t.lines()
            .enumerate()
            .map(|(i, l)| {
                if i < 4 {
                    l.to_string()
                } else {
                    l[..l.len() - 9].to_string()
                }
            })
            .collect()
    };
    assert_eq!(cut(&got), cut(&want));
    // Slurm's 13.00% is its cluster's age within the hour; berth's nodes count the hour.
    assert!(got.lines().nth(6).is_some_and(|l| l.ends_with("100.00% ")));
}

#[test]
fn account_utilization_by_user_prints_as_slurm_does() {
    for args in [
        format!("cluster AccountUtilizationByUser {W}"),
        format!("cluster AccountUtilizationByUser {W} -t percent"),
        format!("cluster AccountUtilizationByUser {W} -t seconds"),
        format!("cluster AccountUtilizationByUser {W} -P"),
        format!("cluster AccountUtilizationByUser {W} accounts=physics"),
    ] {
        check(&args);
    }
}

#[test]
fn top_usage_prints_as_slurm_does() {
    for args in [
        format!("user TopUsage {W}"),
        format!("user TopUsage {W} -t percent"),
        format!("user TopUsage {W} -P"),
        format!("user TopUsage {W} TopCount=1"),
        format!("user TopUsage {W} group"),
    ] {
        check(&args);
    }
}

#[test]
fn usage_columns_widen_past_10_to_the_8_seconds() {
    assert_eq!(usage_width(0.0), 8);
    assert_eq!(usage_width(99_999_999.0), 8);
    assert_eq!(usage_width(100_000_000.0), 9);
    assert_eq!(usage_width(1e10), 11);
    let mut u = oracle_usage();
    u.cpu_capacity_seconds = 3e9;
    let text = render(&req(&format!("cluster Utilization {W}")), &u);
    // 3e9 seconds: two digits past 10^8, so 10 wide.
    assert!(
        text.contains("  Cluster  Allocated       Down  PLND Down"),
        "{text}"
    );
}

#[test]
fn windows_round_to_hours_as_slurm_does() {
    let at = |h: u32, m: u32, s: u32| {
        slurm_time::parse(&format!("2026-12-06T{h:02}:{m:02}:{s:02}"), now()).expect("valid")
    };
    // 19:29:29 rounds down, 19:29:30 to 19:30 and so up; an empty window becomes an hour.
    assert_eq!(
        window(Some(at(19, 29, 29)), Some(at(20, 0, 0)), now()),
        Ok((at(19, 0, 0), at(20, 0, 0)))
    );
    assert_eq!(
        window(Some(at(19, 29, 30)), Some(at(20, 0, 0)), now()),
        Ok((at(20, 0, 0), at(21, 0, 0)))
    );
    // The default is yesterday; an end past now stops at now's hour.
    let midnight = at(0, 0, 0);
    assert_eq!(window(None, None, now()), Ok((midnight - 86_400, midnight)));
    assert_eq!(
        window(Some(at(18, 0, 0)), Some(at(23, 0, 0)), now()),
        Ok((at(18, 0, 0), at(20, 0, 0)))
    );
}

#[test]
fn bad_arguments_get_slurms_messages_and_stop() {
    let cases: &[(&str, &str)] = &[
        (
            "cluster Utilization start=bogus",
            "Invalid time specification (pos=0): bogus",
        ),
        ("cluster Bogus", "Not valid report Bogus"),
        ("cluster Utilization -t weeks", "unknown time format weeks"),
        (
            "cluster Utilization start=2026-12-06T19:00 end=2026-12-06T20:00 --tres=foo",
            "sreport: fatal: No valid TRES given",
        ),
        ("bogus Utilization", "invalid keyword: bogus"),
        ("user Bogus", "Not valid report Bogus"),
        ("cluster", "no report given"),
        ("user TopUsage TopCount=x", "Invalid value for TopCount (x)"),
        (
            "cluster Utilization format=Cluster",
            " Unknown condition: format=Cluster",
        ),
        (
            "cluster Utilization clusters=other",
            "berth has one cluster",
        ),
        ("-x cluster Utilization", "unrecognized option '-x'"),
        (
            "cluster Utilization start=2026-12-06T20:00 end=2026-12-06T19:00",
            "start time (2026-12-06T20:00:00) is after end time (2026-12-06T19:00:00)",
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let argv: Vec<String> = args.split(' ').map(str::to_string).collect();
        match parse_args(&argv, now()) {
            Err(e) => assert!(e.contains(want), "#{i} {args}: want {want:?}, got {e:?}"),
            Ok(r) => panic!("#{i} {args}: want an error, got {r:?}"),
        }
    }
    for (args, msg) in [
        (
            "cluster Utilization start=bogus",
            "Invalid time specification (pos=0): bogus",
        ),
        ("cluster Bogus", "Not valid report Bogus"),
        ("bogus Utilization", "invalid keyword: bogus"),
        ("cluster Utilization -t weeks", "unknown time format weeks"),
    ] {
        assert!(oracle(args).contains(msg), "testdata for {args}");
    }
}
