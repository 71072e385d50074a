//! `--switches=N[@max-wait]`: at most N leaf switches for a multi-node job, waited for up
//! to max-wait.

use crate::duration::parse_time_limit;
use crate::opt::count::parse_count;
use crate::opt::OptError;

/// Slurm's default `max_switch_wait` (SchedulerParameters): how long `--switches=N`
/// without `@max-wait` waits.
pub const SWITCH_WAIT_DEFAULT_SECS: u64 = 300;

/// `--switches=N[@max-wait]`: N ≥ 1 leaf switches, max-wait in `--time`'s formats.
///
/// # Errors
/// A bad count or wait.
pub fn parse_switches(value: &str) -> Result<(u32, Option<u64>), OptError> {
    let (count, wait) = match value.split_once('@') {
        Some((c, w)) => (c, Some(w)),
        None => (value, None),
    };
    let count = parse_count("--switches", count)?;
    let wait = match wait {
        None => None,
        Some(w) => Some(parse_time_limit(w).map_err(|reason| {
            OptError::invalid("--switches", value, format!("max-wait {w:?}: {reason}"))
        })?),
    };
    Ok((count, wait))
}
