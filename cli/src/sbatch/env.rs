//! `SBATCH_*` input variables (sbatch(1), INPUT ENVIRONMENT VARIABLES): each stands for a
//! long option; they override the script and yield to the command line.

use super::options::{ENV_OPTIONS, SBATCH};
use super::opts::Opts;
use super::SbatchError;
use crate::duration::parse_time_limit;
use crate::opt::getopt::lookup_long;
use crate::opt::OptError;
use std::collections::BTreeMap;

/// Reads `SBATCH_*` variables as the options they stand for. Empty values of supported
/// options request nothing and are skipped; an unsupported one is an error even when empty,
/// since for flags merely setting the variable turns the option on.
///
/// # Errors
/// [`SbatchError::Environment`] naming the variable.
pub fn options_from_env(env: &BTreeMap<String, String>) -> Result<Opts, SbatchError> {
    options_from_prefixed(env, "SBATCH_", &[])
}

/// [`options_from_env`] with the variables named `prefix` + what follows `SBATCH_` (salloc
/// reads `SALLOC_TIMELIMIT` where sbatch reads `SBATCH_TIMELIMIT`), leaving out the
/// options in `skip` (those the other command lacks).
///
/// # Errors
/// As [`options_from_env`].
pub fn options_from_prefixed(
    env: &BTreeMap<String, String>,
    prefix: &str,
    skip: &[&str],
) -> Result<Opts, SbatchError> {
    let mut opts = Opts::default();
    for (sbatch_var, long) in ENV_OPTIONS {
        if skip.contains(long) {
            continue;
        }
        let var = format!("{prefix}{}", &sbatch_var["SBATCH_".len()..]);
        let var = var.as_str();
        let Some(value) = env.get(var) else { continue };
        let wrap = |error: OptError| SbatchError::Environment {
            var: var.to_string(),
            error: Box::new(error.into()),
        };
        let spec = lookup_long(&SBATCH, long).map_err(wrap)?;
        if !value.is_empty() {
            (spec.set)(&mut opts, spec.long, Some(value)).map_err(wrap)?;
        }
    }
    // Slurm's SBATCH_WAIT4SWITCH is the @max-wait half of --switches on its own.
    let wait_var = format!("{prefix}WAIT4SWITCH");
    if let Some(value) = env.get(&wait_var).filter(|v| !v.is_empty()) {
        let secs = parse_time_limit(value).map_err(|reason| SbatchError::Environment {
            var: wait_var.clone(),
            error: Box::new(
                OptError::InvalidTime {
                    value: value.clone(),
                    reason,
                }
                .into(),
            ),
        })?;
        let count = opts.switches.map_or(0, |(n, _)| n);
        opts.switches = Some((count, Some(secs)));
    }
    Ok(opts)
}
