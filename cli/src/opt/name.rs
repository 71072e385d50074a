//! Plain names: job name, output patterns, account, QOS, partition.

use crate::opt::OptError;

/// A string option that must not be empty (`-J ''` would leave the job nameless); `long` is
/// the option's long name as found (`job-name`).
///
/// # Errors
/// An empty value.
pub fn non_empty(long: &str, value: &str) -> Result<String, OptError> {
    if value.is_empty() {
        return Err(OptError::invalid(
            &format!("--{long}"),
            "",
            "must not be empty",
        ));
    }
    Ok(value.to_string())
}

/// `--partition`: Slurm allows a comma list (run in whichever starts first); berth takes one.
///
/// # Errors
/// Empty, or a list.
pub fn parse_partition(value: &str) -> Result<String, OptError> {
    if value.contains(',') {
        return Err(OptError::unsupported(
            "--partition",
            value,
            "a list of partitions",
        ));
    }
    non_empty("partition", value)
}
