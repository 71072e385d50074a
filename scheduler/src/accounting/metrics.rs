//! Per-account and per-user metrics on berthd's `/metrics`: GPU-seconds allocated and
//! measured busy (counters, added when a run's record is first made), jobs by state and
//! GPUs held now (gauges, computed from the state at scrape time), queue wait per
//! partition (a histogram, observed when a job starts), the price table, and the
//! recorder's own health.

use crate::state_machine::StateMachine;
use berth_proto::v1::{self as pb, JobState};
use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Every metric name this module exports (the dashboard test resolves queries to these).
pub const NAMES: &[&str] = &[
    "berth_account_gpu_seconds_total",
    "berth_account_gpu_busy_seconds_total",
    "berth_account_jobs_ended_total",
    "berth_account_jobs",
    "berth_account_gpus_allocated",
    "berth_queue_wait_seconds",
    "berth_gpu_price_per_hour",
    "berth_accounting_queued_records",
    "berth_accounting_store_up",
    "berth_accounting_write_errors_total",
];

/// The accounting metrics (cheap to clone: the vectors are shared).
#[derive(Clone)]
pub struct AccountingMetrics {
    gpu_seconds: CounterVec,
    gpu_busy_seconds: CounterVec,
    jobs_ended: IntCounterVec,
    jobs: IntGaugeVec,
    gpus_allocated: GaugeVec,
    queue_wait: HistogramVec,
    prices: GaugeVec,
    /// Records waiting in the outbox.
    pub queued: IntGauge,
    /// 1 while the last write to the store succeeded.
    pub store_up: IntGauge,
    /// Failed writes to the store.
    pub write_errors: IntCounter,
    /// (job, run) whose start was observed, so a start is counted once.
    started: Arc<Mutex<HashSet<(u64, u32)>>>,
}

impl Default for AccountingMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl AccountingMetrics {
    /// Fresh metrics, not yet registered.
    pub fn new() -> AccountingMetrics {
        let au = &["account", "user"];
        AccountingMetrics {
            gpu_seconds: CounterVec::new(
                opts(
                    NAMES[0],
                    "GPU-seconds allocated to ended runs (GPU-equivalents held × seconds)",
                ),
                &["account", "user", "gpu_type"],
            )
            .expect("valid metric"),
            gpu_busy_seconds: CounterVec::new(
                opts(
                    NAMES[1],
                    "GPU-seconds measured busy in ended runs (utilization integral)",
                ),
                &["account", "user", "gpu_type"],
            )
            .expect("valid metric"),
            jobs_ended: IntCounterVec::new(
                opts(
                    NAMES[2],
                    "Runs ended, by end state (requeued runs as REQUEUED)",
                ),
                &["account", "user", "state"],
            )
            .expect("valid metric"),
            jobs: IntGaugeVec::new(
                opts(NAMES[3], "Jobs berthd holds, by state"),
                &["account", "user", "state"],
            )
            .expect("valid metric"),
            gpus_allocated: GaugeVec::new(
                opts(NAMES[4], "GPU-equivalents held by running jobs now"),
                au,
            )
            .expect("valid metric"),
            queue_wait: HistogramVec::new(
                HistogramOpts::new(NAMES[5], "Seconds from eligible to start, per partition")
                    .buckets(vec![
                        1.0,
                        5.0,
                        15.0,
                        60.0,
                        300.0,
                        900.0,
                        3600.0,
                        4.0 * 3600.0,
                        12.0 * 3600.0,
                        86400.0,
                    ]),
                &["partition"],
            )
            .expect("valid metric"),
            prices: GaugeVec::new(
                opts(
                    NAMES[6],
                    "Price of one hour of a resource, from the accounts file's [prices]",
                ),
                &["resource", "gpu_type", "currency"],
            )
            .expect("valid metric"),
            queued: IntGauge::new(NAMES[7], "Accounting records waiting for the store")
                .expect("valid metric"),
            store_up: IntGauge::new(NAMES[8], "1 while the accounting store accepts writes")
                .expect("valid metric"),
            write_errors: IntCounter::new(NAMES[9], "Failed writes to the accounting store")
                .expect("valid metric"),
            started: Arc::default(),
        }
    }

    /// Registers every metric with `registry`.
    ///
    /// # Errors
    /// The registry's error when a name is taken.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.gpu_seconds.clone()))?;
        registry.register(Box::new(self.gpu_busy_seconds.clone()))?;
        registry.register(Box::new(self.jobs_ended.clone()))?;
        registry.register(Box::new(self.jobs.clone()))?;
        registry.register(Box::new(self.gpus_allocated.clone()))?;
        registry.register(Box::new(self.queue_wait.clone()))?;
        registry.register(Box::new(self.prices.clone()))?;
        registry.register(Box::new(self.queued.clone()))?;
        registry.register(Box::new(self.store_up.clone()))?;
        registry.register(Box::new(self.write_errors.clone()))
    }

    /// A run's record was made (`first`: not a new version of one already counted).
    pub fn ended(&self, r: &pb::JobRecord, first: bool) {
        if !first {
            return;
        }
        let gpu_type = r.alloc.as_ref().map(|t| t.gpu_type.as_str()).unwrap_or("");
        let labels = [r.account.as_str(), r.user.as_str(), gpu_type];
        self.gpu_seconds
            .with_label_values(&labels)
            .inc_by(r.gpu_seconds.max(0.0));
        self.gpu_busy_seconds
            .with_label_values(&labels)
            .inc_by(r.gpu_busy_seconds.max(0.0));
        let state = if r.requeued {
            "REQUEUED"
        } else {
            state_name(r.state())
        };
        self.jobs_ended
            .with_label_values(&[r.account.as_str(), r.user.as_str(), state])
            .inc();
    }

    /// A job changed: observe its queue wait once, when it is seen running.
    pub fn job_changed(&self, job: &pb::Job) {
        let key = (job.id, job.restart_count);
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        match job.state() {
            JobState::Running if job.start_time_ms > 0 => {
                if started.insert(key) {
                    let wait_ms = job.start_time_ms.saturating_sub(job.eligible_time_ms);
                    self.queue_wait
                        .with_label_values(&[job.partition.as_str()])
                        .observe(wait_ms as f64 / 1000.0);
                }
            }
            JobState::Pending => {}
            _ => {
                started.remove(&key);
            }
        }
    }

    /// Sets the gauges from the applied state (at scrape time, so they never drift).
    pub fn refresh(&self, sm: &StateMachine) {
        self.jobs.reset();
        self.gpus_allocated.reset();
        for job in sm.jobs() {
            let user = job.spec.as_ref().map(|s| s.user.as_str()).unwrap_or("");
            self.jobs
                .with_label_values(&[job.account.as_str(), user, state_name(job.state())])
                .inc();
            if job.state() == JobState::Running {
                let r = super::record::current_record(sm, job, sm.applied_index());
                let parts = super::usage::gpu_parts_of(&r);
                self.gpus_allocated
                    .with_label_values(&[job.account.as_str(), user])
                    .add(parts);
            }
        }
        self.prices.reset();
        let prices = &sm.accounts().prices;
        for (gpu_type, p) in &prices.gpu_hour {
            self.prices
                .with_label_values(&["gpu", gpu_type.as_str(), prices.currency.as_str()])
                .set(*p);
        }
        for (profile, p) in &prices.mig_hour {
            self.prices
                .with_label_values(&["mig", profile.as_str(), prices.currency.as_str()])
                .set(*p);
        }
        self.prices
            .with_label_values(&["cpu", "", prices.currency.as_str()])
            .set(prices.cpu_hour);
    }
}

/// Slurm's name of a state (`COMPLETED`, `NODE_FAIL`…).
pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Unspecified => "UNKNOWN",
        JobState::Pending => "PENDING",
        JobState::Running => "RUNNING",
        JobState::Completed => "COMPLETED",
        JobState::Failed => "FAILED",
        JobState::Cancelled => "CANCELLED",
        JobState::Timeout => "TIMEOUT",
        JobState::NodeFail => "NODE_FAIL",
        JobState::OutOfMemory => "OUT_OF_MEMORY",
        JobState::Preempted => "PREEMPTED",
    }
}
