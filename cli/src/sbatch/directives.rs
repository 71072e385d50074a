//! The script itself: Slurm's checks on it (`#!` line, not empty, no DOS line ends), the
//! script `--wrap` generates, and the `#SBATCH` directives at its top.

use super::opts::Opts;
use super::{parse_options, SbatchError};

/// The script sbatch generates for `--wrap` (byte for byte Slurm's).
pub fn wrap_script(command: &str) -> String {
    format!("#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{command}\n")
}

/// Rejects scripts Slurm rejects: empty, no `#!` interpreter line, DOS line ends.
///
/// # Errors
/// The first of those found.
pub fn check_script(text: &str) -> Result<(), SbatchError> {
    if text.is_empty() {
        return Err(SbatchError::EmptyScript);
    }
    if !text.starts_with("#!") {
        return Err(SbatchError::NotBatchScript);
    }
    if text.contains("\r\n") {
        return Err(SbatchError::DosLineBreaks);
    }
    Ok(())
}

/// Reads `#SBATCH` lines from the top of the script: they end at the first line that is
/// neither blank nor a comment (Slurm ignores directives after that; berth warns about them).
///
/// # Errors
/// A malformed directive, or a bad option in one, naming the line.
pub fn parse_directives(script: &str) -> Result<(Opts, Vec<String>), SbatchError> {
    let mut opts = Opts::default();
    let mut warnings = Vec::new();
    let mut in_header = true;
    for (index, line) in script.lines().enumerate() {
        let number = index + 1;
        let Some(rest) = line.strip_prefix("#SBATCH") else {
            let trimmed = line.trim_start();
            in_header &= trimmed.is_empty() || trimmed.starts_with('#');
            continue;
        };
        if !in_header {
            warnings.push(format!(
                "line {number}: #SBATCH after the first command is ignored (as by Slurm): {line}"
            ));
            continue;
        }
        parse_directive(number, line, rest, &mut opts)?;
    }
    Ok((opts, warnings))
}

/// One `#SBATCH` line: `rest` is what follows the keyword.
fn parse_directive(
    number: usize,
    line: &str,
    rest: &str,
    opts: &mut Opts,
) -> Result<(), SbatchError> {
    let malformed = |reason: String| SbatchError::MalformedDirective {
        line: number,
        text: line.to_string(),
        reason,
    };
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err(malformed("expected a space after #SBATCH".to_string()));
    }
    let words = split_words(rest).map_err(malformed)?;
    if words.is_empty() {
        return Err(malformed("no option given".to_string()));
    }
    let wrapped_before = opts.wrap.is_some();
    let first_operand = parse_options(&words, opts).map_err(|error| SbatchError::Directive {
        line: number,
        error: Box::new(error),
    })?;
    if let Some(word) = words.get(first_operand) {
        return Err(malformed(format!("'{word}' is not an option")));
    }
    if opts.wrap.is_some() && !wrapped_before {
        return Err(SbatchError::Directive {
            line: number,
            error: Box::new(SbatchError::WrapInScript),
        });
    }
    Ok(())
}

/// Splits a directive like a shell would: whitespace separates words, `'…'` and `"…"` quote,
/// `\` escapes outside single quotes, and a `#` at the start of a word begins a comment.
///
/// # Errors
/// An unterminated quote, or a backslash at the end.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '#' if word.is_none() => break,
            '\'' => loop {
                // Open the word first so that '' is an empty word, not nothing.
                let w = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some('\'') => break,
                    Some(q) => w.push(q),
                    None => return Err("unterminated ' quote".to_string()),
                }
            },
            '"' => loop {
                let w = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => w.push(chars.next().ok_or("unterminated \" quote")?),
                    Some(q) => w.push(q),
                    None => return Err("unterminated \" quote".to_string()),
                }
            },
            '\\' => {
                let escaped = chars.next().ok_or("backslash at end of line")?;
                word.get_or_insert_with(String::new).push(escaped);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}
