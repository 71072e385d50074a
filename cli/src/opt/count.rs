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
