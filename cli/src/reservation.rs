//! `scontrol create|update|delete reservation` words into a `ReservationChange`, and
//! `scontrol show reservation|licenses` records, in Slurm 22.05's spelling.

use crate::duration::{format_hms, parse_time_limit};
use crate::hostlist;
use crate::opt::select::{parse_node_list, parse_when};
use berth_proto::v1 as pb;

/// Parses `KEY=VALUE` words of `scontrol create|update|delete reservation`. `now` is the
/// local time `StartTime=`/`EndTime=` are read against.
///
/// # Errors
/// An unknown key, a bad value, or a delete/update without `ReservationName=`.
pub fn parse_change(
    op: &str,
    words: &[&str],
    now: chrono::NaiveDateTime,
) -> Result<pb::ReservationChange, String> {
    use chrono::TimeZone;
    let mut c = pb::ReservationChange {
        op: op.to_string(),
        reservation: Some(pb::ClusterReservation::default()),
        ..Default::default()
    };
    let r = c.reservation.as_mut().expect("set above");
    let ms = |key: &str, v: &str| -> Result<u64, String> {
        if v.eq_ignore_ascii_case("now") {
            return Ok(0);
        }
        let t = parse_when(key, v, now).map_err(|e| e.to_string())?;
        chrono::Local
            .from_local_datetime(&t)
            .earliest()
            .map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0))
            .ok_or_else(|| format!("{key}={v}: no such local time"))
    };
    let list = |v: &str| {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    for w in words {
        let (key, value) = w
            .split_once('=')
            .ok_or_else(|| format!("invalid reservation option {w:?} (expected KEY=VALUE)"))?;
        let canonical = match key.to_ascii_lowercase().as_str() {
            "reservationname" | "reservation" => {
                r.name = value.to_string();
                continue;
            }
            "starttime" => {
                r.start_ms = ms("StartTime", value)?;
                "StartTime"
            }
            "endtime" => {
                r.end_ms = ms("EndTime", value)?;
                "EndTime"
            }
            "duration" => {
                c.duration_secs = parse_time_limit(value)
                    .map_err(|e| format!("invalid Duration={value}: {e}"))?;
                "Duration"
            }
            "nodes" | "nodelist" => {
                r.nodes = parse_node_list("Nodes", value).map_err(|e| e.to_string())?;
                "Nodes"
            }
            "users" | "user" => {
                r.users = list(value);
                "Users"
            }
            "accounts" | "account" => {
                r.accounts = list(value);
                "Accounts"
            }
            "flags" => {
                r.flags = list(value);
                "Flags"
            }
            _ => return Err(format!("invalid reservation option {key:?}")),
        };
        c.given.push(canonical.to_string());
    }
    if op != "create" && c.reservation.as_ref().is_some_and(|r| r.name.is_empty()) {
        return Err(format!("{op} reservation needs ReservationName="));
    }
    Ok(c)
}

/// `scontrol show reservation` records.
pub fn show_reservations(rs: &[pb::ClusterReservation], now_ms: u64) -> String {
    if rs.is_empty() {
        return "No reservations in the system\n".into();
    }
    let null = |s: String| {
        if s.is_empty() {
            "(null)".to_string()
        } else {
            s
        }
    };
    let time =
        |ms: u64| crate::squeue::format_timestamp(ms).unwrap_or_else(|| "Unknown".to_string());
    rs.iter()
        .map(|r| {
            let state = if r.start_ms <= now_ms && now_ms < r.end_ms {
                "ACTIVE"
            } else {
                "INACTIVE"
            };
            format!(
                "ReservationName={} StartTime={} EndTime={} Duration={}\n   Nodes={} NodeCnt={} Flags={}\n   Users={} Accounts={} State={state}\n",
                r.name,
                time(r.start_ms),
                time(r.end_ms),
                format_hms(r.end_ms.saturating_sub(r.start_ms) / 1000),
                null(hostlist::compress(&r.nodes)),
                r.nodes.len(),
                null(r.flags.join(",")),
                null(r.users.join(",")),
                null(r.accounts.join(",")),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `scontrol show licenses` records.
pub fn show_licenses(ls: &[pb::LicenseUsage]) -> String {
    ls.iter()
        .map(|l| {
            format!(
                "LicenseName={}\n    Total={} Used={} Free={} Reserved=0 Remote=no\n",
                l.name,
                l.total,
                l.used,
                l.total.saturating_sub(l.used)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reservation_words_and_refuses_bad_ones() {
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 7)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap();
        let c = parse_change(
            "create",
            &[
                "ReservationName=maint",
                "StartTime=now",
                "Duration=60",
                "Nodes=gpu[001-002]",
                "Users=alice,bob",
            ],
            now,
        )
        .unwrap();
        let r = c.reservation.unwrap();
        assert_eq!(r.name, "maint");
        assert_eq!(r.nodes, ["gpu001", "gpu002"]);
        assert_eq!(r.users, ["alice", "bob"]);
        assert_eq!(c.duration_secs, 3600);
        assert_eq!(c.given, ["StartTime", "Duration", "Nodes", "Users"]);
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "create",
                &["Colour=red"],
                "invalid reservation option \"Colour\"",
            ),
            ("create", &["Nodes"], "expected KEY=VALUE"),
            ("create", &["Nodes=n[3-1]"], "Invalid node name specified"),
            ("create", &["Duration=soon"], "invalid Duration=soon"),
            ("create", &["StartTime=bogus"], "Invalid time specification"),
            ("delete", &[], "needs ReservationName="),
            ("update", &["Users=a"], "needs ReservationName="),
        ];
        for (i, (op, words, want)) in cases.iter().enumerate() {
            match parse_change(op, words, now) {
                Err(e) if e.contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn shows_licenses_and_reservations() {
        let l = show_licenses(&[pb::LicenseUsage {
            name: "matlab".into(),
            total: 5,
            used: 2,
        }]);
        assert_eq!(
            l,
            "LicenseName=matlab\n    Total=5 Used=2 Free=3 Reserved=0 Remote=no\n"
        );
        assert_eq!(show_reservations(&[], 0), "No reservations in the system\n");
        let r = pb::ClusterReservation {
            name: "maint".into(),
            start_ms: 1000,
            end_ms: 3_601_000,
            nodes: vec!["n1".into(), "n2".into()],
            ..Default::default()
        };
        let s = show_reservations(&[r], 2000);
        assert!(s.contains("ReservationName=maint "), "{s}");
        assert!(s.contains("Duration=01:00:00"), "{s}");
        assert!(s.contains("Nodes=n[1-2] NodeCnt=2 Flags=(null)"), "{s}");
        assert!(s.contains("State=ACTIVE"), "{s}");
    }
}
