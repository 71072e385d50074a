//! Accounting: the durable job history behind `sacct`, `sreport` and `berth report
//! usage`, kept for a retention period independent of the state machine.
//!
//! Every replica computes the same records from the Raft log ([`recorder`]) and writes
//! them idempotently to its store: the embedded sled store in its state directory (no
//! setup; the default) or a PostgreSQL database shared by the replicas. Queries
//! ([`service`]) merge the store with the jobs berthd still holds, so pending and running
//! jobs show too.
//!
//! # Layout
//! - [`record`]: records of a job's runs, built from the state.
//! - [`store`]: the [`store::RecordStore`] trait and the selection rules.
//! - [`sled_store`], [`postgres_store`]: the two stores.
//! - [`recorder`]: apply hook → durable outbox → store, with retries and retention.
//! - [`usage`]: usage per account/user/partition/GPU type over a window, and its cost.
//! - [`service`]: the gRPC `AccountingService`.
//! - [`metrics`]: per-account and per-user Prometheus metrics.

pub mod metrics;
pub mod postgres_store;
pub mod record;
pub mod recorder;
pub mod service;
pub mod sled_store;
pub mod store;
pub mod usage;

pub use metrics::AccountingMetrics;

use std::path::Path;
use std::sync::Arc;
use store::{RecordStore, StoreError};

/// Where records go and how long they stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingConfig {
    /// `None`: the embedded sled store; else a PostgreSQL URL.
    pub postgres_url: Option<String>,
    /// Records are purged this long after their run ended (default 365 days).
    pub retention_ms: u64,
}

/// One year: records are kept this long unless configured otherwise.
pub const RETENTION_DEFAULT_MS: u64 = 365 * 24 * 3_600_000;

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            postgres_url: None,
            retention_ms: RETENTION_DEFAULT_MS,
        }
    }
}

/// Parses a retention period as slurmdbd's `PurgeJobAfter` writes it: a number followed by
/// `months`, `days` or `hours` (a month is 30 days; a bare number is months, as there).
///
/// # Errors
/// A message naming the value for an empty, zero, non-numeric or unknown-unit period.
pub fn parse_retention(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    let unit = t[digits.len()..].trim();
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid retention {text:?}: expected e.g. 12months, 365days, 720hours")
    })?;
    let hour = 3_600_000u64;
    let unit_ms = match unit {
        "" | "month" | "months" => 30 * 24 * hour,
        "day" | "days" => 24 * hour,
        "hour" | "hours" => hour,
        _ => {
            return Err(format!(
                "invalid retention {text:?}: unknown unit {unit:?} (months, days, hours)"
            ))
        }
    };
    if n == 0 {
        return Err(format!("invalid retention {text:?}: must be at least 1"));
    }
    Ok(n.saturating_mul(unit_ms))
}

/// The accounting side of one replica: its recorder (outbox and store).
pub struct Accounting {
    /// The apply hook and writer.
    pub recorder: Arc<recorder::Recorder>,
    /// Metrics for `/metrics`.
    pub metrics: AccountingMetrics,
    _db: sled::Db,
}

impl Accounting {
    /// Opens the outbox (and the embedded store, when no PostgreSQL URL is given) in
    /// `dir` (created if missing).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when sled cannot open `dir`; [`StoreError::Config`] for a
    /// PostgreSQL URL that does not parse. A database that is down is not an error here.
    pub fn open(dir: &Path, cfg: &AccountingConfig) -> Result<Accounting, StoreError> {
        let location = dir.display().to_string();
        let db = sled::open(dir).map_err(|e| StoreError::Corrupt {
            location: location.clone(),
            detail: e.to_string(),
        })?;
        let store: Arc<dyn RecordStore> = match &cfg.postgres_url {
            Some(url) => Arc::new(postgres_store::PostgresStore::new(url)?),
            None => Arc::new(sled_store::SledStore::open(&db, &location)?),
        };
        let metrics = AccountingMetrics::new();
        let recorder = recorder::Recorder::new(&db, store, cfg.retention_ms, metrics.clone())?;
        Ok(Accounting {
            recorder: Arc::new(recorder),
            metrics,
            _db: db,
        })
    }
}

#[cfg(test)]
mod tests;
