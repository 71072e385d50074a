//! Slurm's `-o/--format` strings (`"%.18i %.9P %j"`), shared by squeue and sinfo.
//!
//! Both commands read the same mini-language: literal text is copied, and `%[.][width]X`
//! prints field `X` — left-justified by default, right-justified with `.`, padded to `width`
//! and cut to it when longer; without a width the value prints at its natural length. The
//! header line uses the same widths, so columns line up. Scripts depend on these exact
//! widths, which is why this lives in one place instead of per command.

use thiserror::Error;

/// A bad `-o/--format` string. Nothing is printed when it is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// `%` with nothing after it (or only a width).
    #[error("invalid format \"{0}\": '%' at the end needs a field letter")]
    Incomplete(String),
    /// A letter that is not a field of this command.
    #[error("invalid field specifier '%{0}' in format; see the man page for the list")]
    Unknown(char),
    /// A real Slurm field that berth has no data for yet.
    #[error("field specifier '%{0}' is not supported by berth yet")]
    Unsupported(char),
    /// A width too large to be meant.
    #[error("invalid field width {0} in format")]
    Width(String),
}

/// One piece of a parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Text copied as is.
    Literal(String),
    /// A field: its letter, `right` when `.` was given, and `width` when digits were.
    Field {
        /// The field letter, e.g. `i` for the job id.
        letter: char,
        /// Right-justify (`%.8i`).
        right: bool,
        /// Pad and cut to this many characters; `None` (or 0) prints the natural width.
        width: Option<usize>,
    },
}

/// Widths above this are typos (`%.1000000i`), not layouts.
const WIDTH_MAX: usize = 4096;

/// Splits a format string into literals and fields. `%%` is a literal `%`.
///
/// # Errors
/// [`FormatError::Incomplete`] for a trailing `%`, `%.` or `%12`; [`FormatError::Width`]
/// for widths over 4096. Unknown letters are left to the caller, which knows its fields.
pub fn parse(format: &str) -> Result<Vec<Token>, FormatError> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            literal.push('%');
            continue;
        }
        let right = chars.next_if_eq(&'.').is_some();
        let mut digits = String::new();
        while let Some(d) = chars.next_if(|d| d.is_ascii_digit()) {
            digits.push(d);
        }
        let letter = chars
            .next()
            .ok_or_else(|| FormatError::Incomplete(format.to_string()))?;
        let width = match digits.as_str() {
            "" => None,
            text => match text.parse::<usize>() {
                Ok(w) if w <= WIDTH_MAX => Some(w),
                _ => return Err(FormatError::Width(text.to_string())),
            },
        };
        if !literal.is_empty() {
            tokens.push(Token::Literal(std::mem::take(&mut literal)));
        }
        tokens.push(Token::Field {
            letter,
            right,
            width,
        });
    }
    if !literal.is_empty() {
        tokens.push(Token::Literal(literal));
    }
    Ok(tokens)
}

/// Fits `value` to a column as Slurm's `_print_str` does: with a width, cut to it and pad
/// with spaces (on the left when `right`); without one (or 0), print it whole.
pub fn cell(value: &str, width: Option<usize>, right: bool) -> String {
    let Some(width) = width.filter(|w| *w > 0) else {
        return value.to_string();
    };
    let cut: String = value.chars().take(width).collect();
    if right {
        format!("{cut:>width$}")
    } else {
        format!("{cut:<width$}")
    }
}

/// A table: the header line (when `header`) from `title`, then one line per row from
/// `value`, each ending with `\n`. The header is rendered even when hidden, so a bad
/// letter fails with no rows too.
///
/// # Errors
/// A malformed `format`, or whatever `title` or `value` return for a letter.
pub fn render_table<T>(
    format: &str,
    header: bool,
    title: impl Fn(char) -> Result<&'static str, FormatError>,
    rows: impl IntoIterator<Item = T>,
    mut value: impl FnMut(&T, char) -> Result<String, FormatError>,
) -> Result<String, FormatError> {
    let tokens = parse(format)?;
    let head = render_line(&tokens, |l| title(l).map(str::to_string))?;
    let mut out = String::new();
    if header {
        out.push_str(&head);
        out.push('\n');
    }
    for row in rows {
        out.push_str(&render_line(&tokens, |l| value(&row, l))?);
        out.push('\n');
    }
    Ok(out)
}

/// Renders one line: literals as is, each field through `value` and [`cell`].
///
/// # Errors
/// Whatever `value` returns for a letter it does not know.
pub fn render_line(
    tokens: &[Token],
    mut value: impl FnMut(char) -> Result<String, FormatError>,
) -> Result<String, FormatError> {
    let mut line = String::new();
    for token in tokens {
        match token {
            Token::Literal(text) => line.push_str(text),
            Token::Field {
                letter,
                right,
                width,
            } => {
                line.push_str(&cell(&value(*letter)?, *width, *right));
            }
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(letter: char, right: bool, width: Option<usize>) -> Token {
        Token::Field {
            letter,
            right,
            width,
        }
    }

    #[test]
    fn parses_fields_and_literals() {
        let lit = |s: &str| Token::Literal(s.to_string());
        let cases: Vec<(&str, Vec<Token>)> = vec![
            ("%i", vec![field('i', false, None)]),
            ("%.18i", vec![field('i', true, Some(18))]),
            ("%5j|", vec![field('j', false, Some(5)), lit("|")]),
            (
                "id=%i%%",
                vec![lit("id="), field('i', false, None), lit("%")],
            ),
            ("%.i", vec![field('i', true, None)]),
            ("%0i", vec![field('i', false, Some(0))]),
            ("plain", vec![lit("plain")]),
            ("", vec![]),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = parse(input);
            if got.as_ref() != Ok(want) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn rejects_incomplete_fields() {
        let cases: &[(&str, FormatError)] = &[
            ("%", FormatError::Incomplete("%".into())),
            ("%i %.", FormatError::Incomplete("%i %.".into())),
            ("%12", FormatError::Incomplete("%12".into())),
            ("%99999i", FormatError::Width("99999".into())),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = parse(input);
            if got.as_ref() != Err(want) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn cells_pad_and_cut() {
        let cases: &[(&str, Option<usize>, bool, &str)] = &[
            ("abc", None, false, "abc"),
            ("abc", Some(0), true, "abc"),
            ("abc", Some(5), false, "abc  "),
            ("abc", Some(5), true, "  abc"),
            ("abcdef", Some(4), false, "abcd"),
            ("abcdef", Some(4), true, "abcd"),
            ("", Some(2), true, "  "),
        ];
        for (i, (value, width, right, want)) in cases.iter().enumerate() {
            let got = cell(value, *width, *right);
            if got != *want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
}
