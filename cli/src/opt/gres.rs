//! GPU requests as `--gres`, `--gpus`, `--gpus-per-node` and `--gpus-per-task` write them:
//! `gpu[:type][:count]`, `[type:]count`, MIG profiles as the type (`3g.40gb`), and
//! fractions of one time-sliced GPU (`0.5`).

use crate::opt::OptError;

/// A GPU request as one option gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRequest {
    /// GRES type (`h100`) or MIG profile (`3g.40gb`, see [`is_mig`]); empty for any.
    pub kind: String,
    /// GPUs (or MIG slices) asked for.
    pub count: u32,
    /// A fraction of one GPU in milli (`0.25` is 250; then `count` is 1); 0: whole GPUs.
    pub milli: u32,
    /// The option as written, for conflict messages (`--gres=gpu:2`).
    pub given: String,
}

/// Whether `kind` is a plausible GRES type name (`h100`, `a100_80g`, `l40s`).
pub fn valid_gpu_type(kind: &str) -> bool {
    is_mig(kind) // `1g.5gb+me` has a `+`
        || !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether a GPU request's type names a MIG profile (`<n>g.<m>gb[+me]`, e.g. `1g.10gb`)
/// rather than a GRES type like `h100`.
pub fn is_mig(kind: &str) -> bool {
    berth_policies::mig::is_profile_name(kind)
}

/// Whether `kind` starts like a MIG profile (`<digits>g.`) without being one: a typo
/// such as `1g.10` or `3g.40GB` that must not silently become a GRES type.
pub fn looks_like_mig(kind: &str) -> bool {
    let digits = kind.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && kind[digits..].starts_with("g.") && !is_mig(kind)
}

/// `--gpus` / `--gpus-per-node` / `--gpus-per-task`: `[type:]N`.
///
/// # Errors
/// Not a count, a bad type, or several types.
pub fn parse_gpu_count(option: &str, value: &str) -> Result<GpuRequest, OptError> {
    if value.contains(',') {
        return Err(OptError::unsupported(
            option,
            value,
            "more than one GPU type per job",
        ));
    }
    let (kind, count) = value.rsplit_once(':').unwrap_or(("", value));
    if value.contains(':') && !valid_gpu_type(kind) {
        return Err(OptError::invalid(
            option,
            value,
            "expected [type:]count, e.g. h100:2",
        ));
    }
    let given = format!("{option}={value}");
    if count.contains('.') {
        let milli = parse_fraction(&given, count)?;
        return Ok(GpuRequest {
            kind: kind.to_string(),
            count: 1,
            milli,
            given,
        });
    }
    let not_number = || OptError::InvalidNumber {
        option: option.to_string(),
        value: value.to_string(),
    };
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_number());
    }
    let count = count.parse().map_err(|_| not_number())?;
    Ok(GpuRequest {
        kind: kind.to_string(),
        count,
        milli: 0,
        given,
    })
}

/// A decimal fraction of one GPU, `0.001` to `0.999` (at most 3 decimals: 1000 milli is
/// one GPU, the unit of the Alibaba trace's `gpu_milli` and of berth's shares), in milli.
///
/// # Errors
/// [`OptError::Fraction`] naming `given` (the option as written).
pub fn parse_fraction(given: &str, text: &str) -> Result<u32, OptError> {
    let bad = |reason: &str| OptError::Fraction {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) || (whole.is_empty() && frac.is_empty()) {
        return Err(bad("expected a decimal number of GPUs such as 0.5"));
    }
    if frac.len() > 3 {
        return Err(bad("at most 3 decimals (a GPU is 1000 milli)"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("number too large"))?
    };
    let frac: u64 = format!("{frac:0<3}").parse().unwrap_or(0);
    let milli = whole.saturating_mul(1000).saturating_add(frac);
    match milli {
        0 => Err(bad("a fraction must be above 0")),
        1000.. if milli.is_multiple_of(1000) => Err(bad(&format!(
            "{} is whole GPUs: write it without a decimal point",
            milli / 1000
        ))),
        1000.. => Err(bad(
            "a fraction is of one GPU (below 1); ask for whole GPUs above that",
        )),
        m => Ok(m as u32),
    }
}

/// `--gres=gpu[:type][:N]` (N defaults to 1) or `none`. Only GPUs are generic resources in
/// berth, and one entry per job.
///
/// # Errors
/// A malformed entry, another GRES than `gpu`, or several entries.
pub fn parse_gres(value: &str) -> Result<GpuRequest, OptError> {
    let given = format!("--gres={value}");
    if value.eq_ignore_ascii_case("none") {
        return Ok(GpuRequest {
            kind: String::new(),
            count: 0,
            milli: 0,
            given,
        });
    }
    let invalid = |reason: &str| OptError::invalid("--gres", value, reason);
    let entries: Vec<&str> = value.split(',').collect();
    if entries.len() > 1 {
        return Err(OptError::unsupported(
            "--gres",
            value,
            "more than one GRES entry",
        ));
    }
    let mut parts = entries[0].split(':');
    match parts.next() {
        Some("gpu") => {}
        Some("") | None => return Err(invalid("expected gpu[:type][:count]")),
        Some(name) => {
            return Err(OptError::unsupported(
                "--gres",
                value,
                format!("GRES '{name}' (only gpu)"),
            ))
        }
    }
    let is_count = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_fraction =
        |s: &str| s.contains('.') && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let (kind, count) = match parts.collect::<Vec<_>>().as_slice() {
        [] => ("", "1"),
        [count] if is_count(count) || is_fraction(count) => ("", *count),
        [kind] => (*kind, "1"),
        [kind, count] => (*kind, *count),
        _ => return Err(invalid("expected gpu[:type][:count]")),
    };
    if (kind.is_empty() || valid_gpu_type(kind)) && count.contains('.') {
        let milli = parse_fraction(&given, count)?;
        return Ok(GpuRequest {
            kind: kind.to_string(),
            count: 1,
            milli,
            given,
        });
    }
    if (!kind.is_empty() && !valid_gpu_type(kind)) || !is_count(count) {
        return Err(invalid("expected gpu[:type][:count]"));
    }
    let count = count.parse().map_err(|_| invalid("GPU count too large"))?;
    Ok(GpuRequest {
        kind: kind.to_string(),
        count,
        milli: 0,
        given,
    })
}
