//! Counts: `--nodes`, `--ntasks`, `--cpus-per-task` and the like, as Slurm's decimal
//! parsers take them.

use crate::opt::OptError;

/// A positive decimal count (`--nodes`, `--ntasks`, `--cpus-per-task`).
///
/// # Errors
/// Not a decimal number, or zero.
pub fn parse_count(option: &str, value: &str) -> Result<u32, OptError> {
    let invalid = || OptError::InvalidNumber {
        option: option.to_string(),
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match value.parse::<u32>().map_err(|_| invalid())? {
        0 => Err(OptError::ZeroCount {
            option: option.to_string(),
            value: value.to_string(),
        }),
        n => Ok(n),
    }
}

/// `--nodes=N`; Slurm's `min-max` ranges and `N,M` lists are refused unless they pin one
/// count (`2-2`).
///
/// # Errors
/// A bad count, or a range or list berth cannot honour.
pub fn parse_nodes(value: &str) -> Result<u32, OptError> {
    if value.contains(',') {
        return Err(OptError::unsupported(
            "--nodes",
            value,
            "a list of node counts",
        ));
    }
    let Some((min, max)) = value.split_once('-') else {
        return parse_count("--nodes", value);
    };
    let (min, max) = (parse_count("--nodes", min)?, parse_count("--nodes", max)?);
    if min != max {
        return Err(OptError::unsupported(
            "--nodes",
            value,
            "a node count range (give one number)",
        ));
    }
    Ok(min)
}
