//! Values of Slurm's node-selection and notification options, parsed as sbatch 22.05
//! parses them: `--nodes=MIN-MAX`, `-w/--nodelist` and `-x/--exclude` (hostlists or a file
//! of them), `-L/--licenses`, `--exclusive[=user|mcs]`, `--mail-type`, `--constraint`,
//! `--begin`/`--deadline` times and the pass-through choices (`--hint`, `--distribution`,
//! `--gres-flags`). Messages are Slurm's where Slurm has one.

use crate::opt::OptError;
use berth_proto::v1::LicenseRequest;
use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};
use std::path::Path;

/// `--nodes=N` or `--nodes=MIN-MAX`: (least, most; 0 when no range).
///
/// # Errors
/// Slurm's messages: a list (`"1,2" is not a valid node count`), a range that goes
/// backwards or is open, a count that is not a number.
pub fn parse_node_range(value: &str) -> Result<(u32, u32), OptError> {
    let bad_count = || {
        OptError::invalid(
            "--nodes",
            value,
            format!("\"{value}\" is not a valid node count"),
        )
    };
    if value.contains(',') {
        return Err(bad_count());
    }
    let Some((lo, hi)) = value.split_once('-') else {
        return crate::opt::count::parse_count("--nodes", value).map(|n| (n, 0));
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(lo) {
        return Err(bad_count());
    }
    let lo: u32 = lo.parse().map_err(|_| bad_count())?;
    if !digits(hi) {
        return Err(OptError::invalid(
            "--nodes",
            value,
            format!("Maximum node count -1 is less than minimum node count {lo}"),
        ));
    }
    let hi: u32 = hi.parse().map_err(|_| bad_count())?;
    if hi < lo {
        return Err(OptError::invalid(
            "--nodes",
            value,
            format!("Maximum node count {hi} is less than minimum node count {lo}"),
        ));
    }
    // Slurm takes 0-N as 1-N: a job has at least one node.
    Ok((lo.max(1), hi))
}

/// `-w/--nodelist`, `-x/--exclude`: a hostlist, or (when it names a file, as Slurm checks
/// with a `/` in the value) the hostlists in that file, one or more per line.
///
/// # Errors
/// An unreadable file, or a bad hostlist (Slurm: "Invalid node name specified").
pub fn parse_node_list(option: &str, value: &str) -> Result<Vec<String>, OptError> {
    let text = if value.contains('/') && Path::new(value).is_file() {
        std::fs::read_to_string(value)
            .map_err(|e| OptError::invalid(option, value, format!("cannot read the file: {e}")))?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(",")
    } else {
        value.to_string()
    };
    if text.trim().is_empty() {
        return Err(OptError::invalid(option, value, "no node names"));
    }
    let mut out = Vec::new();
    for part in text.split_whitespace() {
        let names = berth_policies::topology::hostlist::expand(part).map_err(|why| {
            OptError::invalid(
                option,
                value,
                format!("Invalid node name specified ({why})"),
            )
        })?;
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// `-L/--licenses=NAME[:COUNT][,NAME[:COUNT]...]` (COUNT 1 when left out).
///
/// # Errors
/// An empty name or a count that is not a number (Slurm: "Invalid license specification").
pub fn parse_licenses(value: &str) -> Result<Vec<LicenseRequest>, OptError> {
    let bad = |why: &str| {
        OptError::invalid(
            "--licenses",
            value,
            format!("Invalid license specification ({why})"),
        )
    };
    let mut out: Vec<LicenseRequest> = Vec::new();
    for item in value.split(',') {
        let (name, count) = match item.split_once([':', '=']) {
            None => (item, 1),
            Some((name, count)) => {
                let n = count
                    .parse::<u32>()
                    .ok()
                    .filter(|_| count.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad(&format!("count {count:?} is not a number")))?;
                (name, n)
            }
        };
        if name.is_empty() {
            return Err(bad("empty license name"));
        }
        match out.iter_mut().find(|l| l.name == name) {
            Some(l) => l.count = l.count.saturating_add(count),
            None => out.push(LicenseRequest {
                name: name.to_string(),
                count,
            }),
        }
    }
    Ok(out)
}

/// `--exclusive[=user|mcs]` as `OverSubscribe=` shows it: `NO`, `USER`, `MCS`.
///
/// # Errors
/// Any other value (Slurm: "Invalid --exclusive specification").
pub fn parse_exclusive(value: Option<&str>) -> Result<String, OptError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Ok("NO".into()),
        Some("user") => Ok("USER".into()),
        Some("mcs") => Ok("MCS".into()),
        Some(_) => Err(OptError::invalid(
            "--exclusive",
            value.unwrap_or_default(),
            "Invalid --exclusive specification",
        )),
    }
}

/// Slurm's `--mail-type` names, in the order `scontrol show job` prints them.
const MAIL_TYPES: &[&str] = &[
    "BEGIN",
    "END",
    "FAIL",
    "REQUEUE",
    "STAGE_OUT",
    "TIME_LIMIT",
    "TIME_LIMIT_90",
    "TIME_LIMIT_80",
    "TIME_LIMIT_50",
    "ARRAY_TASKS",
    "INVALID_DEPEND",
];

/// `--mail-type=TYPE[,TYPE...]` in Slurm's canonical order (`NONE` gives "", `ALL` is
/// BEGIN,END,FAIL,REQUEUE,STAGE_OUT). Like Slurm, unknown names beside a known one are
/// dropped; only a value with no known name is refused.
///
/// # Errors
/// A value naming no mail type (Slurm: "Invalid --mail-type specification").
pub fn parse_mail_type(value: &str) -> Result<String, OptError> {
    let mut bits = [false; MAIL_TYPES.len()];
    let mut known = false;
    for word in value.split(',').map(str::to_ascii_uppercase) {
        match word.as_str() {
            "NONE" => known = true,
            "ALL" => {
                known = true;
                for b in bits.iter_mut().take(5) {
                    *b = true;
                }
            }
            w => {
                if let Some(i) = MAIL_TYPES.iter().position(|t| *t == w) {
                    known = true;
                    bits[i] = true;
                }
            }
        }
    }
    if !known {
        return Err(OptError::invalid(
            "--mail-type",
            value,
            "Invalid --mail-type specification",
        ));
    }
    Ok(MAIL_TYPES
        .iter()
        .zip(bits)
        .filter(|(_, on)| *on)
        .map(|(t, _)| *t)
        .collect::<Vec<_>>()
        .join(","))
}

/// `-C/--constraint`: checked with placement's own parser, kept as given.
///
/// # Errors
/// Slurm's "Invalid feature specification" with what is wrong.
pub fn parse_constraint(value: &str) -> Result<String, OptError> {
    berth_policies::constraint::Constraint::parse(value)
        .map(|c| c.text)
        .map_err(|e| OptError::invalid("--constraint", value, e.to_string()))
}

/// A value of one of Slurm's fixed word lists (`--hint`, `--distribution`,
/// `--gres-flags`): each comma- (or, for `--distribution`, colon-) separated word must be
/// one of `allowed`. Kept as given and passed to the job's environment.
///
/// # Errors
/// An unknown word, worded as Slurm words it for the option.
pub fn parse_choice(option: &str, value: &str, allowed: &[&str]) -> Result<String, OptError> {
    let ok = !value.is_empty()
        && value.split([',', ':']).all(|w| {
            allowed.iter().any(|a| {
                a.eq_ignore_ascii_case(w) || w.chars().all(|c| c.is_ascii_digit() || c == '*')
            })
        });
    if ok {
        Ok(value.to_string())
    } else if option == "--hint" {
        Err(OptError::invalid(
            option,
            value,
            format!("unrecognized --hint argument \"{value}\", see --hint=help"),
        ))
    } else {
        Err(OptError::invalid(
            option,
            value,
            format!("Invalid {option} specification"),
        ))
    }
}

/// `--hint` words.
pub const HINTS: &[&str] = &[
    "compute_bound",
    "memory_bound",
    "multithread",
    "nomultithread",
];
/// `--distribution` words (`block:cyclic,pack` …).
pub const DISTRIBUTIONS: &[&str] = &[
    "block",
    "cyclic",
    "plane",
    "arbitrary",
    "fcyclic",
    "pack",
    "nopack",
    "*",
];
/// `--gres-flags` words.
pub const GRES_FLAGS: &[&str] = &["enforce-binding", "disable-binding"];

/// Seconds per unit of a `now+N<unit>` offset (seconds when no unit).
fn unit_secs(unit: &str) -> Option<i64> {
    let u = unit.to_ascii_lowercase();
    let any = |names: &[&str]| names.contains(&u.as_str());
    Some(if any(&["", "s", "sec", "secs", "second", "seconds"]) {
        1
    } else if any(&["m", "min", "mins", "minute", "minutes"]) {
        60
    } else if any(&["h", "hour", "hours"]) {
        3600
    } else if any(&["d", "day", "days"]) {
        86_400
    } else if any(&["w", "week", "weeks"]) {
        604_800
    } else {
        return None;
    })
}

/// A `--begin`/`--deadline` time as Slurm's `parse_time` reads it, relative to `now`
/// (local time): `now[+N[unit]]`, `YYYY-MM-DD[THH:MM[:SS]]`, `HH:MM[:SS]` (today, or
/// tomorrow when past), `today`, `tomorrow`, `midnight`, `noon`, `elevenses`, `fika`,
/// `teatime`.
///
/// # Errors
/// Slurm's "Invalid time specification" for anything else.
pub fn parse_when(
    option: &str,
    value: &str,
    now: NaiveDateTime,
) -> Result<NaiveDateTime, OptError> {
    let bad = || {
        OptError::invalid(
            option,
            value,
            format!("Invalid time specification (pos=0): {value}"),
        )
    };
    let v = value.trim().to_ascii_lowercase();
    let today = now.date();
    let at = |h, m| today.and_time(NaiveTime::from_hms_opt(h, m, 0).expect("valid"));
    let next = |t: NaiveDateTime| if t <= now { t + Duration::days(1) } else { t };
    if let Some(rest) = v.strip_prefix("now") {
        if rest.is_empty() {
            return Ok(now);
        }
        let sign = match rest.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let rest = &rest[1..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: i64 = rest[..end].parse().map_err(|_| bad())?;
        let secs = unit_secs(&rest[end..]).ok_or_else(bad)?;
        return n
            .checked_mul(secs)
            .and_then(|s| now.checked_add_signed(Duration::seconds(sign * s)))
            .ok_or_else(bad);
    }
    match v.as_str() {
        "today" => return Ok(today.and_time(NaiveTime::MIN)),
        "tomorrow" => return Ok(today.and_time(NaiveTime::MIN) + Duration::days(1)),
        "midnight" => return Ok(today.and_time(NaiveTime::MIN) + Duration::days(1)),
        "noon" => return Ok(next(at(12, 0))),
        "elevenses" => return Ok(next(at(11, 0))),
        "fika" => return Ok(next(at(15, 0))),
        "teatime" => return Ok(next(at(16, 0))),
        _ => {}
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&v.to_uppercase(), f) {
            return Ok(t);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(&v, "%Y-%m-%d") {
        return Ok(d.and_time(NaiveTime::MIN));
    }
    for f in ["%H:%M:%S", "%H:%M"] {
        if let Ok(t) = NaiveTime::parse_from_str(&v, f) {
            return Ok(next(today.and_time(t)));
        }
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ranges_as_slurm() {
        type Case<'a> = (&'a str, Result<(u32, u32), &'a str>);
        let cases: &[Case] = &[
            ("2", Ok((2, 0))),
            ("2-8", Ok((2, 8))),
            ("0-2", Ok((1, 2))),
            ("3-3", Ok((3, 3))),
            (
                "8-2",
                Err("Maximum node count 2 is less than minimum node count 8"),
            ),
            (
                "2-",
                Err("Maximum node count -1 is less than minimum node count 2"),
            ),
            ("1,2", Err("\"1,2\" is not a valid node count")),
            ("x", Err("Invalid numeric value")),
            ("-2", Err("is not a valid node count")),
        ];
        for (i, (v, want)) in cases.iter().enumerate() {
            let got = parse_node_range(v).map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(w), Ok(g)) if w == g => {}
                (Err(w), Err(g)) if g.contains(w) => {}
                _ => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn node_lists_and_files() {
        assert_eq!(
            parse_node_list("--nodelist", "gpu[001-002],cpu1").unwrap(),
            ["gpu001", "gpu002", "cpu1"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nodes");
        std::fs::write(&file, "gpu001\ngpu[002-003]\n").unwrap();
        assert_eq!(
            parse_node_list("--exclude", file.to_str().unwrap()).unwrap(),
            ["gpu001", "gpu002", "gpu003"]
        );
        for bad in ["node[3-1]", "node[1-", "", "a,,b"] {
            let e = parse_node_list("--exclude", bad).unwrap_err().to_string();
            assert!(e.contains("--exclude"), "{bad:?}: {e}");
        }
        let e = parse_node_list("--exclude", "node[3-1]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Invalid node name specified"), "{e}");
    }

    #[test]
    fn licenses_as_slurm() {
        let l = parse_licenses("matlab:2,comsol,matlab").unwrap();
        assert_eq!(
            l.iter()
                .map(|l| (l.name.as_str(), l.count))
                .collect::<Vec<_>>(),
            [("matlab", 3), ("comsol", 1)]
        );
        assert_eq!(parse_licenses("matlab:0").unwrap()[0].count, 0);
        for bad in ["matlab:x", ":2", "", "a,,b", "m:-1"] {
            let e = parse_licenses(bad).unwrap_err().to_string();
            assert!(e.contains("Invalid license specification"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn mail_types_canonical_and_lenient_like_slurm() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("END,FAIL", Ok("END,FAIL")),
            ("fail,begin", Ok("BEGIN,FAIL")),
            ("ALL", Ok("BEGIN,END,FAIL,REQUEUE,STAGE_OUT")),
            ("NONE", Ok("")),
            ("TIME_LIMIT_80", Ok("TIME_LIMIT_80")),
            // Slurm 22.05 submits "BEGIN,bogus" (the unknown word is dropped).
            ("BEGIN,bogus", Ok("BEGIN")),
            ("bogus", Err(())),
            ("", Err(())),
        ];
        for (i, (v, want)) in cases.iter().enumerate() {
            let got = parse_mail_type(v).map_err(|_| ());
            if got.as_deref() != want.as_ref().map(|s| *s) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn exclusive_and_choices() {
        assert_eq!(parse_exclusive(None).unwrap(), "NO");
        assert_eq!(parse_exclusive(Some("user")).unwrap(), "USER");
        assert_eq!(parse_exclusive(Some("mcs")).unwrap(), "MCS");
        assert!(parse_exclusive(Some("bogus"))
            .unwrap_err()
            .to_string()
            .contains("Invalid --exclusive specification"));
        assert!(parse_choice("--hint", "nomultithread", HINTS).is_ok());
        assert!(parse_choice("--hint", "bogus", HINTS)
            .unwrap_err()
            .to_string()
            .contains("unrecognized --hint argument"));
        assert!(parse_choice("--distribution", "block:cyclic", DISTRIBUTIONS).is_ok());
        assert!(parse_choice("--distribution", "bogus", DISTRIBUTIONS).is_err());
        assert!(parse_choice("--gres-flags", "enforce-binding", GRES_FLAGS).is_ok());
        assert!(parse_choice("--gres-flags", "bogus", GRES_FLAGS).is_err());
        for bad in ["a&", "&a", "[a|b", "a*x", ""] {
            let e = parse_constraint(bad).unwrap_err().to_string();
            assert!(e.contains("Invalid feature specification"), "{bad:?}: {e}");
        }
        assert_eq!(parse_constraint("h100&ib").unwrap(), "h100&ib");
    }

    #[test]
    fn begin_times() {
        let now = NaiveDate::from_ymd_opt(2026, 12, 7)
            .unwrap()
            .and_hms_opt(10, 30, 0)
            .unwrap();
        let t = |s: &str| parse_when("--begin", s, now).map(|t| t.to_string());
        assert_eq!(t("now").unwrap(), "2026-12-07 10:30:00");
        assert_eq!(t("now+1hour").unwrap(), "2026-12-07 11:30:00");
        assert_eq!(t("now+90").unwrap(), "2026-12-07 10:31:30");
        assert_eq!(t("now+2days").unwrap(), "2026-12-09 10:30:00");
        assert_eq!(t("16:00").unwrap(), "2026-12-07 16:00:00");
        assert_eq!(t("09:00").unwrap(), "2026-12-08 09:00:00");
        assert_eq!(t("2027-01-01T10:00:00").unwrap(), "2027-01-01 10:00:00");
        assert_eq!(t("2027-01-01").unwrap(), "2027-01-01 00:00:00");
        assert_eq!(t("tomorrow").unwrap(), "2026-12-08 00:00:00");
        assert_eq!(t("teatime").unwrap(), "2026-12-07 16:00:00");
        for bad in [
            "bogus",
            "now+",
            "now+1fortnight",
            "now*2",
            "25:00",
            "2027-13-01",
        ] {
            let e = t(bad).unwrap_err().to_string();
            assert!(e.contains("Invalid time specification"), "{bad:?}: {e}");
        }
    }
}
