//! Multifactor job priority (Slurm's `priority/multifactor`): a weighted sum of factors in
//! `[0, 1]`, and the priority classes (QOS) that also decide preemption.
//!
//! `priority = w_fs * fairshare + w_age * age + w_qos * qos + w_size * size`, rounded down,
//! where
//! - `fairshare` is the job's leaf account's Fair Tree factor ([`crate::fairshare`]);
//! - `age = min(1, (now - submit) / age_max)` (Slurm's `PriorityMaxAge`);
//! - `qos = class priority / highest class priority`;
//! - `size = job GPUs / cluster GPUs`, or `1 - that` with `favor_small`
//!   (Slurm's `PriorityFavorSmall`);
//! - `short = 1 - ln(1 + limit_s) / ln(1 + age_max_s)`, clamped to `[0, 1]`, 0 for jobs
//!   without a time limit: favors short time limits (a berth extension, not a Slurm
//!   factor; weight 0 by default), plus `w_short * short`.

use crate::fairshare::{charge_between, dominant_rate_milli, fair_tree, AccountTree};
use crate::snapshot::{ClusterSnapshot, PendingJob};
use crate::PolicyConfig;
use std::collections::HashMap;

/// A priority class (Slurm QOS / Kubernetes PriorityClass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QosClass {
    /// Name given with `--qos`.
    pub name: String,
    /// Higher runs first and may preempt lower preemptible classes.
    pub priority: u32,
    /// Whether jobs of this class may be preempted at all.
    pub preemptible: bool,
    /// A job of this class runs at least this long before it may be preempted.
    pub min_runtime_s: u64,
    /// Whether a preempted job is requeued by default (`--requeue`/`--no-requeue` win).
    pub requeue: bool,
    /// Most GPUs (whole GPUs plus MIG slices) one user's running jobs of this class may
    /// hold together (Slurm's `MaxTRESPerUser=gres/gpu=N`); `None`: no limit.
    pub max_gpus_per_user: Option<u64>,
}

impl QosClass {
    /// A class with these settings.
    pub fn new(name: &str, priority: u32, preemptible: bool, min_runtime_s: u64) -> QosClass {
        QosClass {
            name: name.to_string(),
            priority,
            preemptible,
            min_runtime_s,
            requeue: preemptible,
            max_gpus_per_user: None,
        }
    }
}

/// The default classes: production-inference 1000, critical-agents 900 (neither
/// preemptible), training 500 (preemptible after 10 minutes), research 100 (after 5),
/// development 50 (any time).
pub fn default_classes() -> Vec<QosClass> {
    vec![
        QosClass::new("production-inference", 1000, false, 0),
        QosClass::new("critical-agents", 900, false, 0),
        QosClass::new("training", 500, true, 600),
        QosClass::new("research", 100, true, 300),
        QosClass::new("development", 50, true, 0),
    ]
}

/// Weights of the factors (Slurm's `PriorityWeight*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityWeights {
    /// `PriorityWeightFairshare`.
    pub fairshare: u32,
    /// `PriorityWeightAge`.
    pub age: u32,
    /// `PriorityWeightQOS`.
    pub qos: u32,
    /// `PriorityWeightJobSize`.
    pub size: u32,
    /// `PriorityFavorSmall`: the size factor grows as jobs get smaller.
    pub favor_small: bool,
    /// Weight of the short-time-limit factor (berth extension; 0 = off).
    pub short: u32,
    /// Age at which the age factor reaches 1, ms (`PriorityMaxAge`).
    pub age_max_ms: u64,
}

impl Default for PriorityWeights {
    fn default() -> Self {
        PriorityWeights {
            fairshare: 10_000,
            age: 1_000,
            qos: 10_000,
            size: 0,
            favor_small: false,
            short: 0,
            age_max_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// One job's factors and priority (`berth sprio`).
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    /// Job id.
    pub job_id: u64,
    /// Fair-share factor in `[0, 1]`.
    pub fairshare: f64,
    /// Age factor in `[0, 1]`.
    pub age: f64,
    /// QOS factor in `[0, 1]`.
    pub qos: f64,
    /// Size factor in `[0, 1]`.
    pub size: f64,
    /// Short-time-limit factor in `[0, 1]` (0 when its weight is 0).
    pub short: f64,
    /// The weighted sum.
    pub priority: u64,
}

/// Fair-share factor per leaf account index at `now_ms`: ended jobs' decayed usage plus
/// what running jobs have used so far. Unknown accounts are absent (factor 0).
pub fn fairshare_factors(
    tree: &AccountTree,
    snapshot: &ClusterSnapshot,
    half_life_ms: u64,
    now_ms: u64,
) -> Vec<f64> {
    let usage = usage_now(tree, snapshot, half_life_ms, now_ms);
    let mut out = vec![0.0; tree.len()];
    for row in fair_tree(tree, &usage) {
        if let (Some(f), Some(i)) = (row.fairshare, tree.index(&row.name)) {
            out[i] = f;
        }
    }
    out
}

/// Decayed usage per account index at `now_ms`: ended jobs' usage plus what running jobs
/// have used so far (the input of [`fair_tree`]).
pub fn usage_now(
    tree: &AccountTree,
    snapshot: &ClusterSnapshot,
    half_life_ms: u64,
    now_ms: u64,
) -> Vec<f64> {
    let mut usage = vec![0.0; tree.len()];
    for (i, acc) in tree.accounts().iter().enumerate() {
        usage[i] = snapshot.usage.at(&acc.name, now_ms, half_life_ms);
    }
    let cap = snapshot.capacity();
    for r in &snapshot.running {
        let Some(i) = tree.index(&r.account) else {
            continue;
        };
        let gpu_milli = crate::fairshare::grants_gpu_milli(&r.grants);
        let cpus: u64 = r.grants.iter().map(|g| u64::from(g.cpus)).sum();
        let mem: u64 = r.grants.iter().map(|g| g.mem_mb).sum();
        let slices: Vec<_> = r.grants.iter().flat_map(|g| g.mig_slices.clone()).collect();
        let start = r.start_ms.min(now_ms);
        let rate = dominant_rate_milli(gpu_milli, cpus, mem, &cap);
        usage[i] += charge_between(
            crate::mig::charge_rate(rate, &slices, &cap),
            start,
            now_ms,
            now_ms,
            half_life_ms,
        );
    }
    usage
}

/// Priority context for one pass: per-account fair-share factors and class lookups.
pub struct Prioritizer<'a> {
    cfg: &'a PolicyConfig,
    fairshare: Vec<f64>,
    qos_max: f64,
    classes: HashMap<&'a str, &'a QosClass>,
    gpus_total: f64,
    now_ms: u64,
}

impl<'a> Prioritizer<'a> {
    /// Computes Fair Tree once for the pass.
    pub fn new(snapshot: &ClusterSnapshot, cfg: &'a PolicyConfig, now_ms: u64) -> Prioritizer<'a> {
        let classes: HashMap<&str, &QosClass> =
            cfg.qos.iter().map(|q| (q.name.as_str(), q)).collect();
        let qos_max = cfg.qos.iter().map(|q| q.priority).max().unwrap_or(1).max(1);
        Prioritizer {
            cfg,
            fairshare: fairshare_factors(&cfg.accounts, snapshot, cfg.half_life_ms, now_ms),
            qos_max: f64::from(qos_max),
            classes,
            gpus_total: snapshot.capacity().gpus.max(1) as f64,
            now_ms,
        }
    }

    /// The class of a job (`qos` empty: the default class); `None` for an unknown name.
    pub fn class(&self, qos: &str) -> Option<&'a QosClass> {
        let name = if qos.is_empty() {
            self.cfg.default_qos.as_str()
        } else {
            qos
        };
        // A handful of classes: a scan beats hashing the name.
        if self.classes.len() <= 16 {
            return self.cfg.qos.iter().find(|c| c.name == name);
        }
        self.classes.get(name).copied()
    }

    /// Whether any class has a per-user GPU limit.
    pub fn any_user_limit(&self) -> bool {
        self.cfg.qos.iter().any(|c| c.max_gpus_per_user.is_some())
    }

    /// The job's factors and priority.
    pub fn factors(&self, job: &PendingJob) -> Factors {
        let w = &self.cfg.weights;
        let fairshare = self
            .cfg
            .accounts
            .index(&job.account)
            .map_or(0.0, |i| self.fairshare[i]);
        let age = if w.age_max_ms == 0 {
            0.0
        } else {
            (self.now_ms.saturating_sub(job.submit_ms) as f64 / w.age_max_ms as f64).min(1.0)
        };
        let qos = self
            .class(&job.qos)
            .map_or(0.0, |c| f64::from(c.priority) / self.qos_max);
        let share = (job.gpus_total() as f64 / self.gpus_total).min(1.0);
        let size = if w.favor_small { 1.0 - share } else { share };
        // Not computed at weight 0 (a logarithm per job per pass for nothing).
        let short = if w.short == 0 || job.time_limit_s == 0 || w.age_max_ms == 0 {
            0.0
        } else {
            let max = (1.0 + w.age_max_ms as f64 / 1000.0).ln();
            (1.0 - (1.0 + job.time_limit_s as f64).ln() / max).clamp(0.0, 1.0)
        };
        let priority = f64::from(w.fairshare) * fairshare
            + f64::from(w.age) * age
            + f64::from(w.qos) * qos
            + f64::from(w.size) * size
            + f64::from(w.short) * short;
        Factors {
            job_id: job.id,
            fairshare,
            age,
            qos,
            size,
            short,
            priority: priority.max(0.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairshare::Usage;
    use std::collections::BTreeMap;

    #[test]
    fn short_limits_rank_higher_when_weighted() {
        let cfg = PolicyConfig {
            weights: PriorityWeights {
                fairshare: 0,
                age: 0,
                qos: 0,
                size: 0,
                favor_small: false,
                short: 1000,
                age_max_ms: 86_400_000,
            },
            ..PolicyConfig::default()
        };
        let p = Prioritizer::new(&ClusterSnapshot::default(), &cfg, 0);
        let job = |limit| PendingJob {
            time_limit_s: limit,
            ..PendingJob::default()
        };
        // (limit s, short factor): 1 - ln(1 + limit) / ln(1 + 86400).
        let cases = [
            (0, 0.0),
            (86_400, 0.0),
            (1_000_000, 0.0),
            (59, 1.0 - 60f64.ln() / 86_401f64.ln()),
        ];
        for (i, (limit, want)) in cases.into_iter().enumerate() {
            let f = p.factors(&job(limit));
            if (f.short - want).abs() > 1e-12 || f.priority != (1000.0 * want) as u64 {
                panic!("#{i}: want {want}, got {f:?}");
            }
        }
    }

    #[test]
    fn weighted_sum_of_factors() {
        let mut cfg = PolicyConfig {
            accounts: AccountTree::flat(&[("a", 1), ("b", 1)]).unwrap(),
            ..PolicyConfig::default()
        };
        cfg.weights.size = 1000;
        cfg.weights.age_max_ms = 1000;
        let snap = ClusterSnapshot {
            usage: Usage {
                by_account: BTreeMap::from([("a".to_string(), 100.0)]),
                as_of_ms: 0,
            },
            ..ClusterSnapshot::default()
        };
        let p = Prioritizer::new(&snap, &cfg, 500);
        let job = |account: &str, qos: &str| PendingJob {
            id: 7,
            account: account.into(),
            qos: qos.into(),
            submit_ms: 0,
            nodes: 1,
            ..PendingJob::default()
        };
        // (job, want (fairshare, age, qos, priority))
        let cases = vec![
            // b has no usage: factor 1; age 500/1000; training 500/1000; no GPUs in the
            // cluster, size 0. 10000*1 + 1000*0.5 + 10000*0.5 = 15500.
            (job("b", "training"), (1.0, 0.5, 0.5, 15_500)),
            // a ranks second of two: 0.5 → 5000 + 500 + 10000 = 15500 with production.
            (job("a", "production-inference"), (0.5, 0.5, 1.0, 15_500)),
            // Unknown account and class: only age counts.
            (job("zz", "nope"), (0.0, 0.5, 0.0, 500)),
        ];
        for (i, (j, want)) in cases.into_iter().enumerate() {
            let f = p.factors(&j);
            let got = (f.fairshare, f.age, f.qos, f.priority);
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
}
