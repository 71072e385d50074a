//! Slurm time limits and elapsed times: parsing `--time` and printing them the way each
//! Slurm command does.
//!
//! Users paste `--time` values from years of Slurm scripts, so every format Slurm accepts must
//! parse to the same number of seconds here. Printing differs per command in Slurm (squeue
//! drops leading zero fields, scontrol always prints `HH:MM:SS`), and scripts parse those
//! columns, so each style gets its own function instead of one "close enough" format.
//!
//! berth keeps limits in seconds (Slurm rounds `--time` up to whole minutes); a limit of 0
//! means UNLIMITED everywhere, as Slurm's `--time=0`.

use thiserror::Error;

/// Why a `--time` value was rejected. The caller wraps it with the option name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    /// The value was empty.
    #[error("empty time limit")]
    Empty,
    /// Slurm's `-1` means unlimited, but berth asks for an explicit `UNLIMITED` or `0`.
    #[error("negative time limit; use UNLIMITED or 0 for no limit")]
    Negative,
    /// The value does not match any accepted layout.
    #[error("expected minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes or days-hours:minutes:seconds")]
    Malformed,
    /// The value parses but does not fit in 64-bit seconds.
    #[error("time limit is too large")]
    Overflow,
}

/// Parses a Slurm `--time` value into seconds; 0 means UNLIMITED.
///
/// Accepts `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S` (fields are unbounded decimal
/// numbers, as in Slurm, so `90` is 90 minutes) and, case-insensitively, `UNLIMITED` and
/// `INFINITE`. `0` also means UNLIMITED.
///
/// # Errors
/// [`DurationError`] for an empty value, a negative number, any other layout (extra fields,
/// signs, spaces, trailing text) and values beyond `u64` seconds.
pub fn parse_time_limit(value: &str) -> Result<u64, DurationError> {
    if value.is_empty() {
        return Err(DurationError::Empty);
    }
    if value.eq_ignore_ascii_case("UNLIMITED") || value.eq_ignore_ascii_case("INFINITE") {
        return Ok(0);
    }
    if value.starts_with('-') {
        return Err(DurationError::Negative);
    }
    // Slurm decides the layout by the presence of '-': days first, then up to three ':' fields.
    let (days, clock) = match value.split_once('-') {
        Some((days, clock)) => (Some(field(days)?), clock),
        None => (None, value),
    };
    let fields: Vec<u64> = clock.split(':').map(field).collect::<Result<_, _>>()?;
    // Weights (in seconds) of each field, by how many fields there are.
    let weights: &[u64] = match (days.is_some(), fields.len()) {
        (false, 1) => &[60],
        (false, 2) => &[60, 1],
        (false, 3) => &[3600, 60, 1],
        (true, 1) => &[3600],
        (true, 2) => &[3600, 60],
        (true, 3) => &[3600, 60, 1],
        _ => return Err(DurationError::Malformed),
    };
    let mut total = days
        .unwrap_or(0)
        .checked_mul(86_400)
        .ok_or(DurationError::Overflow)?;
    for (value, weight) in fields.iter().zip(weights) {
        let secs = value.checked_mul(*weight).ok_or(DurationError::Overflow)?;
        total = total.checked_add(secs).ok_or(DurationError::Overflow)?;
    }
    Ok(total)
}

/// One numeric field: ASCII digits only, so signs, spaces and fractions are rejected.
fn field(text: &str) -> Result<u64, DurationError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DurationError::Malformed);
    }
    text.parse().map_err(|_| DurationError::Overflow)
}

/// Splits seconds into (days, hours, minutes, seconds).
fn split(secs: u64) -> (u64, u64, u64, u64) {
    (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// A time limit as squeue's `%l` and sinfo's TIMELIMIT print it: `UNLIMITED` for 0,
/// otherwise like [`format_elapsed`] (`5:00`, `1:00:00`, `1-00:00:00`).
pub fn format_limit(secs: u64) -> String {
    if secs == 0 {
        return "UNLIMITED".to_string();
    }
    format_elapsed(secs)
}

/// Elapsed time as squeue's `%M` prints it: leading zero fields dropped
/// (`0:00`, `1:05`, `1:02:03`, `2-01:02:03`).
pub fn format_elapsed(secs: u64) -> String {
    let (d, h, m, s) = split(secs);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// A duration as scontrol prints `RunTime=` and `TimeLimit=`: always `HH:MM:SS`, with a
/// `D-` prefix past one day (`00:00:05`, `01:00:00`, `1-00:00:00`). Callers print
/// `UNLIMITED` themselves for a 0 limit, since a 0 run time is a real value.
pub fn format_hms(secs: u64) -> String {
    let (d, h, m, s) = split(secs);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_slurm_layout() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("UNLIMITED", 0),
            ("unlimited", 0),
            ("INFINITE", 0),
            ("Infinite", 0),
            ("5", 300),
            ("90", 5400),
            ("05", 300),
            ("1:30", 90),
            ("0:45", 45),
            ("1:00:00", 3600),
            ("2:03:04", 7384),
            ("1-0", 86_400),
            ("2-3", 2 * 86_400 + 3 * 3600),
            ("1-2:30", 86_400 + 2 * 3600 + 30 * 60),
            ("1-02:03:04", 86_400 + 7384),
            ("0-0:0:1", 1),
            ("0:90", 90),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = parse_time_limit(input);
            if got != Ok(*want) {
                panic!("#{i}: want {want:?}, got {got:?} for {input:?}");
            }
        }
    }

    #[test]
    fn rejects_malformed_values() {
        use DurationError::*;
        let cases: &[(&str, DurationError)] = &[
            ("", Empty),
            ("-1", Negative),
            ("-5:00", Negative),
            ("abc", Malformed),
            ("1:2:3:4", Malformed),
            ("1-2:3:4:5", Malformed),
            ("1-", Malformed),
            ("-", Negative),
            ("1--2", Malformed),
            ("1-2-3", Malformed),
            (":30", Malformed),
            ("30:", Malformed),
            ("1::2", Malformed),
            ("1.5", Malformed),
            ("+5", Malformed),
            (" 5", Malformed),
            ("5 ", Malformed),
            ("5m", Malformed),
            ("1h", Malformed),
            ("unlimitedx", Malformed),
            ("99999999999999999999", Overflow),
            ("999999999999999999", Overflow),
            ("213503982334602-0", Overflow),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = parse_time_limit(input);
            if got.as_ref() != Err(want) {
                panic!("#{i}: want {want:?}, got {got:?} for {input:?}");
            }
        }
    }

    #[test]
    fn formats_like_each_slurm_command() {
        // (secs, format_limit, format_elapsed, format_hms)
        let cases: &[(u64, &str, &str, &str)] = &[
            (0, "UNLIMITED", "0:00", "00:00:00"),
            (5, "0:05", "0:05", "00:00:05"),
            (65, "1:05", "1:05", "00:01:05"),
            (300, "5:00", "5:00", "00:05:00"),
            (3600, "1:00:00", "1:00:00", "01:00:00"),
            (3723, "1:02:03", "1:02:03", "01:02:03"),
            (86_400, "1-00:00:00", "1-00:00:00", "1-00:00:00"),
            (2 * 86_400 + 3723, "2-01:02:03", "2-01:02:03", "2-01:02:03"),
        ];
        for (i, (secs, limit, elapsed, hms)) in cases.iter().enumerate() {
            let got = (
                format_limit(*secs),
                format_elapsed(*secs),
                format_hms(*secs),
            );
            let want = (limit.to_string(), elapsed.to_string(), hms.to_string());
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
}
