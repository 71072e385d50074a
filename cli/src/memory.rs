//! Slurm memory sizes (`--mem=16G`): parsing them into MiB.
//!
//! Slurm reads a whole number with an optional unit (K, M, G or T, any case, optionally
//! followed by B: `16GB`, `16gb`, `16Gb`; default M) and counts in MiB; berth's `JobSpec.mem_mb` uses the same unit so that a
//! script's `--mem` asks for exactly what it asked for under Slurm.

use thiserror::Error;

/// Why a `--mem` value was rejected. The caller wraps it with the option and value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemError {
    /// The value was empty.
    #[error("empty memory size")]
    Empty,
    /// A leading `-`.
    #[error("memory size must not be negative")]
    Negative,
    /// Slurm takes whole numbers only.
    #[error("memory size must be a whole number (use a smaller unit, e.g. 1536M instead of 1.5G)")]
    Fraction,
    /// Anything else: no digits, an unknown unit, trailing text.
    #[error("expected a whole number with an optional unit K, M, G or T (default M)")]
    Malformed,
    /// Does not fit in 64-bit MiB.
    #[error("memory size is too large")]
    Overflow,
}

/// Parses a Slurm memory size into MiB: digits, then an optional unit `K`, `M`, `G` or `T`
/// (case-insensitive; default `M`). Kilobytes round up to whole MiB, since the job must get
/// at least what it asked for.
///
/// # Errors
/// `0` is returned as 0: `--mem=0` is Slurm's "all the memory of each node", and the caller
/// decides what 0 means for its option.
///
/// [`MemError`] for empty input, a sign, a fraction,
/// an unknown unit or trailing text, and sizes beyond `u64` MiB.
pub fn parse_mem(value: &str) -> Result<u64, MemError> {
    if value.is_empty() {
        return Err(MemError::Empty);
    }
    if value.starts_with('-') {
        return Err(MemError::Negative);
    }
    let digits_end = value
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(digits_end);
    if digits.is_empty() {
        return Err(MemError::Malformed);
    }
    if unit.starts_with('.') {
        return Err(MemError::Fraction);
    }
    let number: u64 = digits.parse().map_err(|_| MemError::Overflow)?;
    // Slurm also takes the unit followed by `B` in any case (`16GB`, `16gb`, `16Gb`), but
    // not `B` alone nor `GiB`.
    let unit = unit.to_ascii_uppercase();
    let unit = match unit.strip_suffix('B') {
        Some(u) if !u.is_empty() => u,
        _ => unit.as_str(),
    };
    let mib = match unit {
        "K" => number.div_ceil(1024),
        "" | "M" => number,
        "G" => number.checked_mul(1024).ok_or(MemError::Overflow)?,
        "T" => number.checked_mul(1024 * 1024).ok_or(MemError::Overflow)?,
        _ => return Err(MemError::Malformed),
    };
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let cases: &[(&str, u64)] = &[
            ("1", 1),
            ("1000", 1000),
            ("1000M", 1000),
            ("1000m", 1000),
            ("16G", 16 * 1024),
            ("16g", 16 * 1024),
            ("2T", 2 * 1024 * 1024),
            ("2t", 2 * 1024 * 1024),
            ("1024K", 1),
            ("1025k", 2),
            ("1K", 1),
            ("007", 7),
            ("16GB", 16 * 1024),
            ("16gb", 16 * 1024),
            ("16Gb", 16 * 1024),
            ("16MB", 16),
            ("16Kb", 1),
            ("0", 0),
            ("0G", 0),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = parse_mem(input);
            if got != Ok(*want) {
                panic!("#{i}: want {want:?}, got {got:?} for {input:?}");
            }
        }
    }

    #[test]
    fn rejects_junk() {
        use MemError::*;
        let cases: &[(&str, MemError)] = &[
            ("", Empty),
            ("16B", Malformed),
            ("16GiB", Malformed),
            ("16GBB", Malformed),
            ("16P", Malformed),
            ("-1", Negative),
            ("-1G", Negative),
            ("1.5G", Fraction),
            ("1.", Fraction),
            ("G", Malformed),
            ("12X", Malformed),
            ("12 G", Malformed),
            (" 12", Malformed),
            ("12G ", Malformed),
            ("+12", Malformed),
            ("1e3", Malformed),
            ("99999999999999999999", Overflow),
            ("18014398509481984G", Overflow),
            ("17592186044416T", Overflow),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = parse_mem(input);
            if got.as_ref() != Err(want) {
                panic!("#{i}: want {want:?}, got {got:?} for {input:?}");
            }
        }
    }
}
