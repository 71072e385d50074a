//! Slurm's date-time formats (`sacct -S/-E`, `sreport start=/end=`, `berth report
//! --since`), parsed as Slurm 22.05's `parse_time` does, and its timestamp output.
//!
//! Accepted, in local time: `HH:MM[:SS][AM|PM]` (today), `MMDD[YY][-HH:MM[:SS]]`,
//! `MM.DD[.YY][-HH:MM[:SS]]`, `MM/DD[/YY][-HH:MM[:SS]]`, `YYYY-MM-DD[THH:MM[:SS]]`,
//! `today`/`midnight` (00:00), `noon`, `fika` (15:00), `teatime` (16:00), `tomorrow`, and
//! `now[{+|-}count[seconds|minutes|hours|days|weeks]]`. A day past the month's end rolls
//! over as C's `mktime` does (`0230` is March 2nd). Errors read like Slurm's: `Invalid time
//! specification (pos=N): TEXT`, N being where parsing stopped.

use chrono::{Datelike, Duration, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

/// A time that does not parse; the message is Slurm's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid time specification (pos={pos}): {text}")]
pub struct TimeError {
    /// Where parsing stopped (0: the form was not recognised).
    pub pos: usize,
    /// The text given.
    pub text: String,
}

fn err(pos: usize, text: &str) -> TimeError {
    TimeError {
        pos,
        text: text.to_string(),
    }
}

/// Parses `text` relative to `now` (local time); returns Unix seconds.
///
/// # Errors
/// [`TimeError`] for anything not in the forms above, or a field out of range.
pub fn parse(text: &str, now: NaiveDateTime) -> Result<i64, TimeError> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let today = now.date();
    let at = |h: u32| Ok(local_secs(today.and_hms_opt(h, 0, 0).expect("valid hour")));
    match lower.as_str() {
        "today" | "midnight" => return at(0),
        "noon" => return at(12),
        "fika" => return at(15),
        "teatime" => return at(16),
        "tomorrow" => {
            return Ok(local_secs(
                today.and_hms_opt(0, 0, 0).expect("valid") + Duration::days(1),
            ))
        }
        _ => {}
    }
    if let Some(rest) = lower.strip_prefix("now") {
        return relative(rest, now, t).map(local_secs);
    }
    if t.len() >= 10 && t.as_bytes()[4] == b'-' {
        return iso(t).map(local_secs);
    }
    if t.contains(':') && !t.contains(['-', '/', '.']) {
        let time = clock(t, 0)?;
        return Ok(local_secs(today.and_time(time)));
    }
    month_day(t, today).map(local_secs)
}

fn local_secs(dt: NaiveDateTime) -> i64 {
    Local
        .from_local_datetime(&dt)
        .earliest()
        .map(|d| d.timestamp())
        .unwrap_or_else(|| dt.and_utc().timestamp())
}

fn relative(rest: &str, now: NaiveDateTime, text: &str) -> Result<NaiveDateTime, TimeError> {
    if rest.is_empty() {
        return Ok(now);
    }
    let sign = match rest.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Err(err(3, text)),
    };
    let digits: String = rest[1..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let count: i64 = digits.parse().map_err(|_| err(4, text))?;
    let unit = &rest[1 + digits.len()..];
    let secs = match unit {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        // Slurm points at the count when the unit is not one it knows.
        _ => return Err(err(4, text)),
    };
    Ok(now + Duration::seconds(sign * count * secs))
}

/// `HH:MM[:SS][AM|PM]` starting at byte `base` of the whole text (for error positions).
fn clock(t: &str, base: usize) -> Result<NaiveTime, TimeError> {
    let lower = t.to_ascii_lowercase();
    let (body, pm) = if let Some(b) = lower.strip_suffix("pm") {
        (b, Some(true))
    } else if let Some(b) = lower.strip_suffix("am") {
        (b, Some(false))
    } else {
        (lower.as_str(), None)
    };
    let parts: Vec<&str> = body.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(err(base, t));
    }
    let mut nums = [0u32; 3];
    let mut pos = base;
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(pos, t));
        }
        nums[i] = p.parse().expect("digits");
        pos += p.len() + 1;
    }
    let mut hour = nums[0];
    if let Some(pm) = pm {
        if hour == 0 || hour > 12 {
            return Err(err(base, t));
        }
        hour = match (hour, pm) {
            (12, false) => 0,
            (12, true) => 12,
            (h, true) => h + 12,
            (h, false) => h,
        };
    }
    if hour > 23 {
        return Err(err(base, t));
    }
    if nums[1] > 59 {
        return Err(err(base + parts[0].len() + 1, t));
    }
    if nums[2] > 59 {
        return Err(err(base + parts[0].len() + parts[1].len() + 2, t));
    }
    Ok(NaiveTime::from_hms_opt(hour, nums[1], nums[2]).expect("checked"))
}

fn num(t: &str, range: std::ops::Range<usize>, min: u32, max: u32) -> Result<u32, TimeError> {
    let s = t.get(range.clone()).ok_or_else(|| err(range.start, t))?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(range.start, t));
    }
    match s.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(err(range.start, t)),
    }
}

/// `YYYY-MM-DD[THH:MM[:SS]]`.
fn iso(t: &str) -> Result<NaiveDateTime, TimeError> {
    let year = num(t, 0..4, 1970, 9999)?;
    if t.as_bytes().get(7) != Some(&b'-') {
        return Err(err(7, t));
    }
    let month = num(t, 5..7, 1, 12)?;
    let day = num(t, 8..10, 1, 31)?;
    let date = roll(year as i32, month, day).ok_or_else(|| err(8, t))?;
    let time = match t.get(10..) {
        None | Some("") => NaiveTime::MIN,
        Some(rest) if rest.starts_with('T') => clock(&t[11..], 11).map_err(|e| err(e.pos, t))?,
        Some(_) => return Err(err(10, t)),
    };
    Ok(date.and_time(time))
}

/// `MMDD[YY]`, `MM.DD[.YY]`, `MM/DD[/YY]`, each with an optional `-HH:MM[:SS]`.
fn month_day(t: &str, today: NaiveDate) -> Result<NaiveDateTime, TimeError> {
    let (date_part, time) = match t.split_once('-') {
        Some((d, c)) => (d, clock(c, d.len() + 1).map_err(|e| err(e.pos, t))?),
        None => (t, NaiveTime::MIN),
    };
    let fields: Vec<&str> = if date_part.contains('.') {
        date_part.split('.').collect()
    } else if date_part.contains('/') {
        date_part.split('/').collect()
    } else if date_part.len() == 4 || date_part.len() == 6 {
        let b = date_part;
        let mut v = vec![&b[0..2], &b[2..4]];
        if b.len() == 6 {
            v.push(&b[4..6]);
        }
        v
    } else {
        return Err(err(0, t));
    };
    if !(2..=3).contains(&fields.len())
        || fields
            .iter()
            .any(|f| f.len() != 2 || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err(0, t));
    }
    let month: u32 = fields[0].parse().expect("digits");
    let day: u32 = fields[1].parse().expect("digits");
    if !(1..=12).contains(&month) {
        return Err(err(0, t));
    }
    if !(1..=31).contains(&day) {
        return Err(err(3, t));
    }
    let year = match fields.get(2) {
        Some(y) => 2000 + y.parse::<i32>().expect("digits"),
        None => today.year(),
    };
    let date = roll(year, month, day).ok_or_else(|| err(0, t))?;
    Ok(date.and_time(time))
}

/// The date `day` days into the month, rolling past its end as `mktime` does.
fn roll(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, 1).map(|d| d + Duration::days(i64::from(day) - 1))
}

/// A Unix time as Slurm prints it (`YYYY-MM-DDTHH:MM:SS`, local time), or with
/// `SLURM_TIME_FORMAT` when set to a strftime format (`standard` is the default form).
pub fn format_ts(secs: i64) -> String {
    let fmt = std::env::var("SLURM_TIME_FORMAT").unwrap_or_default();
    let fmt = match fmt.as_str() {
        "" | "standard" | "relative" => "%Y-%m-%dT%H:%M:%S",
        f => f,
    };
    match Local.timestamp_opt(secs, 0).earliest() {
        Some(t) => t.format(fmt).to_string(),
        None => "Unknown".into(),
    }
}

/// Local now, as `parse` wants it.
pub fn now_local() -> NaiveDateTime {
    Local::now().naive_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, 6)
            .unwrap()
            .and_hms_opt(15, 15, 31)
            .unwrap()
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        local_secs(
            NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, s)
                .unwrap(),
        )
    }

    #[test]
    fn forms_parse_as_slurm_does() {
        // Each expectation was read from Slurm 22.05's `sacct -v -S TEXT` at 2026-12-06
        // 15:15:31 on the dev VM.
        let table: &[(&str, i64)] = &[
            ("10:30", at(2026, 12, 6, 10, 30, 0)),
            ("10:30PM", at(2026, 12, 6, 22, 30, 0)),
            ("0101", at(2026, 1, 1, 0, 0, 0)),
            ("0101-10:00", at(2026, 1, 1, 10, 0, 0)),
            ("01.01.24", at(2024, 1, 1, 0, 0, 0)),
            ("01/15/24-10:00:05", at(2024, 1, 15, 10, 0, 5)),
            ("2024-01-15", at(2024, 1, 15, 0, 0, 0)),
            ("2024-01-15T10:20", at(2024, 1, 15, 10, 20, 0)),
            ("2024-01-15T10:20:30", at(2024, 1, 15, 10, 20, 30)),
            ("today", at(2026, 12, 6, 0, 0, 0)),
            ("midnight", at(2026, 12, 6, 0, 0, 0)),
            ("noon", at(2026, 12, 6, 12, 0, 0)),
            ("fika", at(2026, 12, 6, 15, 0, 0)),
            ("teatime", at(2026, 12, 6, 16, 0, 0)),
            ("tomorrow", at(2026, 12, 7, 0, 0, 0)),
            ("now", at(2026, 12, 6, 15, 15, 31)),
            ("now-2hours", at(2026, 12, 6, 13, 15, 31)),
            ("now+1days", at(2026, 12, 7, 15, 15, 31)),
            ("now-3", at(2026, 12, 6, 15, 15, 28)),
            ("now-2weeks", at(2026, 11, 22, 15, 15, 31)),
            ("0230", at(2026, 3, 2, 0, 0, 0)),
        ];
        for (i, (text, want)) in table.iter().enumerate() {
            let got = parse(text, now());
            assert_eq!(got, Ok(*want), "#{i} {text}: want {want}, got {got:?}");
        }
    }

    #[test]
    fn bad_times_are_refused_with_slurms_position() {
        // Positions as Slurm 22.05 prints them for the same text.
        let table: &[(&str, usize)] = &[
            ("bogus", 0),
            ("2024-13-01", 5),
            ("25:00", 0),
            ("2024-01-15T25:00", 11),
            ("13/01/24", 0),
        ];
        for (i, (text, pos)) in table.iter().enumerate() {
            match parse(text, now()) {
                Err(e) => {
                    assert_eq!(e.pos, *pos, "#{i} {text}: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!("Invalid time specification (pos={pos}): {text}")
                    );
                }
                Ok(v) => panic!("#{i}: want an error for {text}, got {v}"),
            }
        }
    }
}
