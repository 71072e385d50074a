//! `--export=ALL|NONE|[ALL,]VAR[=value],...`: which variables a job sees.

use crate::opt::OptError;
use std::collections::BTreeMap;

/// A parsed `--export`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// The whole environment, plus or overridden by these.
    All(Vec<(String, Option<String>)>),
    /// Only these (values from the environment unless given).
    Only(Vec<(String, Option<String>)>),
    /// Nothing.
    Nothing,
}

/// Parses `--export`'s value.
///
/// # Errors
/// Empty, `NONE` with variables, a bad variable name, or `NIL`.
pub fn parse_export(value: &str) -> Result<Export, OptError> {
    let invalid = |reason: String| OptError::invalid("--export", value, reason);
    match value {
        "" => return Err(invalid("must not be empty".to_string())),
        "NONE" => return Ok(Export::Nothing),
        "ALL" => return Ok(Export::All(Vec::new())),
        _ => {}
    }
    let mut all = false;
    let mut vars = Vec::new();
    for item in value.split(',') {
        match item {
            "ALL" => all = true,
            "NONE" => {
                return Err(invalid(
                    "NONE cannot be combined with variables".to_string(),
                ))
            }
            "NIL" => return Err(OptError::unsupported("--export", value, "NIL")),
            _ => {
                let (name, assigned) = match item.split_once('=') {
                    Some((name, v)) => (name, Some(v.to_string())),
                    None => (item, None),
                };
                if !valid_var_name(name) {
                    return Err(invalid(format!("'{name}' is not a variable name")));
                }
                vars.push((name.to_string(), assigned));
            }
        }
    }
    Ok(if all {
        Export::All(vars)
    } else {
        Export::Only(vars)
    })
}

/// A shell variable name: a letter or `_`, then letters, digits, `_`.
pub fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The job's environment under `export`, from the submit environment `env`, and whether it
/// is the whole submit environment.
pub fn exported_env(
    export: &Export,
    env: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, bool) {
    let pick = |vars: &[(String, Option<String>)], base: &mut BTreeMap<String, String>| {
        for (name, assigned) in vars {
            // A bare name exports the submit value; Slurm skips names that are not set.
            if let Some(value) = assigned.clone().or_else(|| env.get(name).cloned()) {
                base.insert(name.clone(), value);
            }
        }
    };
    match export {
        Export::Nothing => (BTreeMap::new(), false),
        Export::All(vars) => {
            let mut out = env.clone();
            pick(vars, &mut out);
            (out, true)
        }
        Export::Only(vars) => {
            let mut out = BTreeMap::new();
            pick(vars, &mut out);
            (out, false)
        }
    }
}
