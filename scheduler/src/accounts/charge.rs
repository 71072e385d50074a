//! What a run costs and how much of its GPUs fair share charges, both from the accounts
//! file (replicated through the Raft log, so every replica prices and charges alike):
//!
//! ```toml
//! charge = "allocated"        # or "measured", or "max(measured, 0.25)"
//!
//! [prices]
//! currency = "USD"
//! cpu_hour = 0.02
//! gpu_hour = { h100 = 2.50, a100 = 1.10, default = 1.00 }   # by GRES type
//! mig_hour = { "3g.40gb" = 1.20, "1g.10gb" = 0.35 }          # by MIG profile
//! ```
//!
//! `allocated` (the default, as Slurm) charges every GPU held for the whole run.
//! `measured` charges the GPUs by the busy fraction the agents measured (busy
//! GPU-seconds / held GPU-seconds), so an idle reserved GPU costs nothing; `max(measured,
//! F)` charges at least the fraction F of what was held. CPU and memory are always charged
//! as allocated, and so are MIG slices (NVML measures no per-slice utilization) and runs
//! nothing was measured for. A MIG profile without a price is priced as its share of the
//! GPU's price (memory slices / 8).

use berth_proto::v1 as pb;
use serde::Deserialize;
use std::collections::BTreeMap;

/// How fair share (and cost) counts GPU use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ChargeMode {
    /// Every GPU held for the whole run (Slurm's way).
    #[default]
    Allocated,
    /// The measured busy fraction of the GPUs held.
    Measured,
    /// The measured busy fraction, but at least this fraction in [0, 1].
    MaxMeasured(f64),
}

/// Parses `charge = …`.
///
/// # Errors
/// A message naming the value and the accepted forms.
pub fn parse_charge(text: &str) -> Result<ChargeMode, String> {
    let t: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let bad = || {
        format!("charge = {text:?}: expected \"allocated\", \"measured\" or \"max(measured, F)\" with F in [0, 1]")
    };
    match t.as_str() {
        "allocated" | "allocation" => Ok(ChargeMode::Allocated),
        "measured" => Ok(ChargeMode::Measured),
        _ => {
            let inner = t
                .strip_prefix("max(")
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(bad)?;
            let (a, b) = inner.split_once(',').ok_or_else(bad)?;
            let f = match (a, b) {
                ("measured", "allocated") | ("allocated", "measured") => 1.0,
                ("measured", f) | (f, "measured") => f.parse::<f64>().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            if !(0.0..=1.0).contains(&f) {
                return Err(bad());
            }
            Ok(ChargeMode::MaxMeasured(f))
        }
    }
}

impl ChargeMode {
    /// The fraction of held GPU time charged for a run with measured `usage`: 1 when
    /// allocated, or for MIG runs and runs nothing was measured for.
    pub fn gpu_factor(&self, usage: &[pb::JobUsage], has_mig: bool) -> f64 {
        let held: f64 = usage.iter().map(|u| u.gpu_seconds).sum();
        if matches!(self, ChargeMode::Allocated) || has_mig || held <= 0.0 {
            return 1.0;
        }
        let busy: f64 = usage.iter().map(|u| u.gpu_busy_seconds).sum();
        let measured = (busy / held).clamp(0.0, 1.0);
        match self {
            ChargeMode::MaxMeasured(floor) => measured.max(*floor),
            _ => measured,
        }
    }
}

/// Prices per hour of each resource.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PriceTable {
    /// Shown beside costs ("USD" when not given).
    pub currency: String,
    /// Per GPU-hour by GRES type; `default` for types not listed.
    pub gpu_hour: BTreeMap<String, f64>,
    /// Per MIG slice-hour by profile; `default` for profiles not listed.
    pub mig_hour: BTreeMap<String, f64>,
    /// Per CPU-hour.
    pub cpu_hour: f64,
}

/// The `[prices]` table as written in the accounts file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesEntry {
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    gpu_hour: BTreeMap<String, f64>,
    #[serde(default)]
    mig_hour: BTreeMap<String, f64>,
    #[serde(default)]
    cpu_hour: Option<f64>,
}

/// Checks and converts `[prices]` (absent: no prices, every cost 0).
///
/// # Errors
/// A message naming a price that is negative or not finite.
pub fn prices(entry: Option<PricesEntry>) -> Result<PriceTable, String> {
    let Some(e) = entry else {
        return Ok(PriceTable {
            currency: "USD".into(),
            ..Default::default()
        });
    };
    let check = |what: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("prices.{what} = {v}: a price must be a number ≥ 0"))
        }
    };
    for (k, v) in &e.gpu_hour {
        check(&format!("gpu_hour.{k}"), *v)?;
    }
    for (k, v) in &e.mig_hour {
        check(&format!("mig_hour.{k}"), *v)?;
    }
    Ok(PriceTable {
        currency: e.currency.unwrap_or_else(|| "USD".into()),
        gpu_hour: e.gpu_hour,
        mig_hour: e.mig_hour,
        cpu_hour: check("cpu_hour", e.cpu_hour.unwrap_or(0.0))?,
    })
}

impl PriceTable {
    /// Price of one GPU-hour of `gpu_type`.
    pub fn gpu(&self, gpu_type: &str) -> f64 {
        self.gpu_hour
            .get(gpu_type)
            .or_else(|| self.gpu_hour.get("default"))
            .copied()
            .unwrap_or(0.0)
    }

    /// Price of one slice-hour of MIG `profile` on a `gpu_type` GPU, a slice being
    /// `memory_slices` of the card's 8.
    pub fn mig(&self, profile: &str, gpu_type: &str, memory_slices: u32) -> f64 {
        match self
            .mig_hour
            .get(profile)
            .or_else(|| self.mig_hour.get("default"))
        {
            Some(p) => *p,
            None => self.gpu(gpu_type) * f64::from(memory_slices) / 8.0,
        }
    }
}
