//! getopt_long as Slurm's commands use it, over an option [`Table`]: `--opt=v`, `--opt v`,
//! `-Xv`, `-X v`, grouped flags (`-Hv`), unique prefixes of long options, and options
//! ending at the first operand or after `--` (the `+` mode: a script's own arguments are
//! never read as options).

use crate::opt::table::{Arg, OptionSpec, Table};
use crate::opt::OptError;

/// Parses options from `args` into `target` and returns the index of the first operand
/// (`args.len()` when there is none).
///
/// # Errors
/// [`OptError`] naming the first option or value at fault; `target` may then hold the
/// options before it (callers throw it away).
pub fn parse<T>(table: &Table<T>, args: &[String], target: &mut T) -> Result<usize, OptError> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--" {
            return Ok(i + 1);
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            let spec = lookup_long(table, name)?;
            let value = match (spec.arg, inline) {
                (Arg::None, Some(_)) => {
                    return Err(OptError::UnexpectedArgument(format!("--{}", spec.long)))
                }
                (Arg::None | Arg::Optional, None) => None,
                (Arg::Required | Arg::Optional, Some(value)) => Some(value),
                (Arg::Required, None) => {
                    i += 1;
                    let next = args
                        .get(i)
                        .ok_or_else(|| OptError::MissingArgument(format!("--{}", spec.long)))?;
                    Some(next.as_str())
                }
            };
            (spec.set)(target, spec.long, value)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            i = parse_short_cluster(table, args, i, target)?;
        } else {
            return Ok(i);
        }
        i += 1;
    }
    Ok(args.len())
}

/// Parses `-Hv`, `-N2`, `-N 2`: flags may be grouped, and the first option that takes a
/// value takes the rest of the word or, if nothing is left and the value is required, the
/// next argument. Returns the index of the last argument consumed.
fn parse_short_cluster<T>(
    table: &Table<T>,
    args: &[String],
    mut i: usize,
    target: &mut T,
) -> Result<usize, OptError> {
    let word = &args[i][1..];
    for (pos, letter) in word.char_indices() {
        let spec = lookup_short(table, letter)?;
        if spec.arg == Arg::None {
            (spec.set)(target, spec.long, None)?;
            continue;
        }
        let rest = &word[pos + letter.len_utf8()..];
        let value = match (rest.is_empty(), spec.arg) {
            (false, _) => Some(rest),
            (true, Arg::Optional) => None,
            (true, _) => {
                i += 1;
                let next = args
                    .get(i)
                    .ok_or_else(|| OptError::MissingArgument(format!("-{letter}")))?;
                Some(next.as_str())
            }
        };
        (spec.set)(target, spec.long, value)?;
        return Ok(i);
    }
    Ok(i)
}

/// Finds a long option by exact name or unique prefix (as getopt_long does).
///
/// # Errors
/// Unrecognized, ambiguous, or a real Slurm option berth refuses.
pub fn lookup_long<'t, T>(table: &'t Table<T>, name: &str) -> Result<&'t OptionSpec<T>, OptError> {
    if let Some(found) = table.options.iter().find(|o| o.long == name) {
        return Ok(found);
    }
    if table.unsupported.iter().any(|o| o.0 == name) {
        return Err(OptError::UnsupportedOption(format!("--{name}")));
    }
    let supported = table
        .options
        .iter()
        .map(|o| o.long)
        .filter(|long| long.starts_with(name));
    let unsupported = table
        .unsupported
        .iter()
        .map(|o| o.0)
        .filter(|long| long.starts_with(name));
    let mut candidates: Vec<&str> = supported.chain(unsupported).collect();
    candidates.sort_unstable();
    candidates.dedup();
    match candidates.as_slice() {
        _ if name.is_empty() => Err(OptError::UnrecognizedOption(format!("--{name}"))),
        [] => Err(OptError::UnrecognizedOption(format!("--{name}"))),
        [only] => lookup_long(table, only),
        many => Err(OptError::AmbiguousOption {
            option: format!("--{name}"),
            candidates: many
                .iter()
                .map(|c| format!("'--{c}'"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

/// Finds a short option.
///
/// # Errors
/// Unrecognized, or a real Slurm option berth refuses (named `-X/--long`).
pub fn lookup_short<T>(table: &Table<T>, letter: char) -> Result<&OptionSpec<T>, OptError> {
    if let Some(found) = table.options.iter().find(|o| o.short == Some(letter)) {
        return Ok(found);
    }
    match table.unsupported.iter().find(|o| o.1 == Some(letter)) {
        Some((long, _)) => Err(OptError::UnsupportedOption(format!("-{letter}/--{long}"))),
        None => Err(OptError::UnrecognizedOption(format!("-{letter}"))),
    }
}
