//! Quotas on the account tree: guaranteed amounts, borrowing and lending limits, per
//! resource (`gpu`, `gpu:<type>`, `cpu`, `mem_mb`).
//!
//! An account with a quota on resource `r` obeys two rules whenever a job is admitted
//! (Kueue's cohort semantics, applied at every level of the tree):
//! 1. **Own limit**: its subtree never uses more than `guaranteed + borrow_limit`.
//! 2. **Pool**: among siblings that have a quota on `r`, what they borrow (use above their
//!    guarantee) never exceeds what they lend (idle guarantee, each capped by its
//!    `lend_limit`) plus the parent's unassigned capacity (the parent's guarantee, or the
//!    cluster's capacity under root, minus the children's guarantees).
//!
//! So a subtree may borrow idle sibling capacity up to its borrowing limit, and when an
//! owner wants its guarantee back, rule 2 fails for the owner while the owner itself is
//! within its guarantee: that is a *reclaim*, and the borrowers' jobs are preempted
//! ([`crate::preempt`]). Accounts without a quota on `r` are not limited on it here.

use crate::fairshare::AccountTree;
use crate::snapshot::{Capacity, ClusterSnapshot, NodeGrant, PendingJob, RunningJob};
use std::collections::{BTreeMap, HashMap};

/// The quota of one account on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Always obtainable (by reclaim if siblings borrowed it).
    pub guaranteed: u64,
    /// Most it may use above `guaranteed`; `None`: no limit but the pool.
    pub borrow_limit: Option<u64>,
    /// Most of its idle guarantee siblings may borrow; `None`: all of it.
    pub lend_limit: Option<u64>,
}

impl Quota {
    /// # Errors
    /// A message when `lend_limit` exceeds `guaranteed`.
    pub fn validate(&self) -> Result<(), String> {
        match self.lend_limit {
            Some(l) if l > self.guaranteed => Err(format!(
                "lend_limit {l} is more than guaranteed {}",
                self.guaranteed
            )),
            _ => Ok(()),
        }
    }
}

/// `gpu`, `gpu:<type>`, `cpu` or `mem_mb`.
///
/// # Errors
/// A message naming the bad key.
pub fn check_resource_key(key: &str) -> Result<(), String> {
    let ok = matches!(key, "gpu" | "cpu" | "mem_mb")
        || key.strip_prefix("gpu:").is_some_and(|t| !t.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unknown quota resource {key:?} (use gpu, gpu:<type>, cpu or mem_mb)"
        ))
    }
}

/// Amounts per resource key.
pub type Demand = BTreeMap<String, u64>;

/// What `job` will hold, before placement: `gpu`, `gpu:<type>` when it names a type,
/// `cpu`, `mem_mb`. A MIG slice counts as one GPU, as Slurm counts it as one `gres/gpu`
/// (and a fraction as one GPU): conservative, so carving never lets a subtree past its
/// GPU quota.
pub fn job_demand(job: &PendingJob) -> Demand {
    let n = u64::from(job.nodes.max(1));
    let mut d = Demand::new();
    d.insert("gpu".into(), job.gres_gpus());
    if !job.gpu_type.is_empty() {
        d.insert(format!("gpu:{}", job.gpu_type), job.gres_gpus());
    }
    d.insert("cpu".into(), n * u64::from(job.cpus_per_node));
    d.insert("mem_mb".into(), n * job.mem_per_node_mb);
    d
}

/// What `grants` hold (a MIG slice as one GPU, as in [`job_demand`]), with `gpu:<type>`
/// from the granted GPUs' types (looked up in `types`: GPU uuid → GRES type).
pub fn grants_demand(grants: &[NodeGrant], types: &HashMap<&str, &str>) -> Demand {
    let mut d = Demand::new();
    for g in grants {
        *d.entry("gpu".into()).or_default() += (g.gpu_uuids.len() + g.mig_slices.len()) as u64;
        let slices = g.mig_slices.iter().map(|s| &s.gpu_uuid);
        for u in g.gpu_uuids.iter().chain(slices) {
            if let Some(t) = types.get(u.as_str()) {
                *d.entry(format!("gpu:{t}")).or_default() += 1;
            }
        }
        *d.entry("cpu".into()).or_default() += u64::from(g.cpus);
        *d.entry("mem_mb".into()).or_default() += g.mem_mb;
    }
    d
}

/// GPU uuid → GRES type over the snapshot.
pub fn gpu_types(snapshot: &ClusterSnapshot) -> HashMap<&str, &str> {
    snapshot
        .nodes
        .iter()
        .flat_map(|n| {
            n.gpus
                .iter()
                .map(|g| (g.uuid.as_str(), g.gres_type.as_str()))
        })
        .collect()
}

/// Why a quota holds a job back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaBlock {
    /// Index of the account whose rule failed.
    pub account: usize,
    /// The resource key.
    pub resource: String,
    /// True when the account is within its guarantee and siblings borrow: reclaim applies.
    pub reclaimable: bool,
}

/// Use per account (subtree sums) per resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Ledger {
    used: Vec<Demand>,
    capacity: Demand,
}

impl Ledger {
    /// An empty ledger for `tree` on a cluster of `cap`.
    pub fn new(tree: &AccountTree, cap: &Capacity) -> Ledger {
        let mut capacity = Demand::from([
            ("gpu".to_string(), cap.gpus),
            ("cpu".to_string(), cap.cpus),
            ("mem_mb".to_string(), cap.memory_mb),
        ]);
        for (t, n) in &cap.gpus_by_type {
            capacity.insert(format!("gpu:{t}"), *n);
        }
        Ledger {
            used: vec![Demand::new(); tree.len()],
            capacity,
        }
    }

    /// A ledger holding every running job of `snapshot`.
    pub fn of_running(tree: &AccountTree, snapshot: &ClusterSnapshot) -> Ledger {
        let mut l = Ledger::new(tree, &snapshot.capacity());
        let types = gpu_types(snapshot);
        for r in &snapshot.running {
            if let Some(leaf) = tree.index(&r.account) {
                l.add(tree, leaf, &grants_demand(&r.grants, &types));
            }
        }
        l
    }

    /// Use of account `idx` (its subtree) on `res`.
    pub fn used(&self, idx: usize, res: &str) -> u64 {
        self.used[idx].get(res).copied().unwrap_or(0)
    }

    /// Adds `d` to `leaf` and its ancestors.
    pub fn add(&mut self, tree: &AccountTree, leaf: usize, d: &Demand) {
        for i in tree.path(leaf) {
            for (k, v) in d {
                *self.used[i].entry(k.clone()).or_default() += v;
            }
        }
    }

    /// Removes `d` from `leaf` and its ancestors (saturating: a release never underflows).
    pub fn remove(&mut self, tree: &AccountTree, leaf: usize, d: &Demand) {
        for i in tree.path(leaf) {
            for (k, v) in d {
                let e = self.used[i].entry(k.clone()).or_default();
                *e = e.saturating_sub(*v);
            }
        }
    }

    /// Whether `leaf` may take `d` now, by both rules at every quota'd ancestor.
    ///
    /// # Errors
    /// The first rule that fails, walking from the leaf up.
    pub fn check(&self, tree: &AccountTree, leaf: usize, d: &Demand) -> Result<(), QuotaBlock> {
        for idx in tree.path(leaf) {
            let acc = &tree.accounts()[idx];
            let Some(parent) = acc.parent else { break };
            for (res, &amount) in d.iter().filter(|(_, &a)| a > 0) {
                let Some(q) = acc.quotas.get(res) else {
                    continue;
                };
                let after = self.used(idx, res) + amount;
                let block = |reclaimable| QuotaBlock {
                    account: idx,
                    resource: res.clone(),
                    reclaimable,
                };
                if q.borrow_limit.is_some_and(|b| after > q.guaranteed + b) {
                    return Err(block(false));
                }
                if !self.pool_ok(tree, parent, res, idx, amount) {
                    return Err(block(after <= q.guaranteed));
                }
            }
        }
        Ok(())
    }

    /// Rule 2 among the quota'd children of `parent` on `res`, with `extra` added to child
    /// `at`.
    fn pool_ok(&self, tree: &AccountTree, parent: usize, res: &str, at: usize, extra: u64) -> bool {
        let p = &tree.accounts()[parent];
        let pool_cap = match (p.quotas.get(res), p.parent) {
            (Some(q), Some(_)) => q.guaranteed + q.borrow_limit.unwrap_or(0),
            (_, None) => self.capacity.get(res).copied().unwrap_or(0),
            (None, Some(_)) => return true, // no quota above: nothing to share
        };
        let (mut borrowed, mut lendable, mut assigned) = (0u64, 0u64, 0u64);
        for &c in &p.children {
            let Some(q) = tree.accounts()[c].quotas.get(res) else {
                continue;
            };
            let u = self.used(c, res) + if c == at { extra } else { 0 };
            assigned += q.guaranteed;
            borrowed += u.saturating_sub(q.guaranteed);
            let idle = q.guaranteed.saturating_sub(u);
            lendable += q.lend_limit.map_or(idle, |l| l.min(idle));
        }
        borrowed <= lendable + pool_cap.saturating_sub(assigned)
    }

    /// Whether account `idx` uses more than its guarantee on `res`.
    pub fn borrowing(&self, tree: &AccountTree, idx: usize, res: &str) -> bool {
        tree.accounts()[idx]
            .quotas
            .get(res)
            .is_some_and(|q| self.used(idx, res) > q.guaranteed)
    }
}

/// Whether running job `r` (charged to a leaf under `tree`) is charged inside the subtree
/// of `ancestor`.
pub fn charged_under(tree: &AccountTree, r: &RunningJob, ancestor: usize) -> bool {
    tree.index(&r.account)
        .is_some_and(|leaf| tree.path(leaf).any(|i| i == ancestor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairshare::AccountSpec;

    fn q(g: u64, borrow: Option<u64>, lend: Option<u64>) -> Quota {
        Quota {
            guaranteed: g,
            borrow_limit: borrow,
            lend_limit: lend,
        }
    }

    fn tree(a: Quota, b: Quota) -> AccountTree {
        let mut sa = AccountSpec::new("a", None, 1);
        sa.quotas.insert("gpu".into(), a);
        let mut sb = AccountSpec::new("b", None, 1);
        sb.quotas.insert("gpu".into(), b);
        AccountTree::new(&[sa, sb]).unwrap()
    }

    fn gpus(n: u64) -> Demand {
        Demand::from([("gpu".to_string(), n)])
    }

    #[test]
    fn borrowing_and_lending_limits() {
        let cap = Capacity {
            gpus: 16,
            ..Default::default()
        };
        // (a's quota, b's quota, a's use, b's use, b asks, expected: Ok or (account, reclaimable))
        type Case = (
            Quota,
            Quota,
            u64,
            u64,
            u64,
            Result<(), (&'static str, bool)>,
        );
        let cases: Vec<Case> = vec![
            // b borrows a's idle 8: fine.
            (q(8, None, None), q(8, None, None), 0, 8, 8, Ok(())),
            // 9 more would need 9 from a's idle 8.
            (
                q(8, None, None),
                q(8, None, None),
                0,
                8,
                9,
                Err(("b", false)),
            ),
            // Borrow limit 4 caps b at 12.
            (
                q(8, None, None),
                q(8, Some(4), None),
                0,
                8,
                5,
                Err(("b", false)),
            ),
            (q(8, None, None), q(8, Some(4), None), 0, 8, 4, Ok(())),
            // a lends at most 2.
            (q(8, None, None), q(8, None, None), 0, 10, 1, Ok(())),
            (
                q(8, None, Some(2)),
                q(8, None, None),
                0,
                10,
                1,
                Err(("b", false)),
            ),
            // Unassigned capacity (16 - 4 - 4 = 8) is borrowable too.
            (q(4, None, None), q(4, None, None), 0, 4, 12, Ok(())),
            (
                q(4, None, None),
                q(4, None, None),
                0,
                4,
                13,
                Err(("b", false)),
            ),
            // b within its guarantee while a borrows b's share: reclaim.
            (
                q(8, None, None),
                q(8, None, None),
                14,
                0,
                4,
                Err(("b", true)),
            ),
        ];
        for (i, (qa, qb, ua, ub, ask, want)) in cases.into_iter().enumerate() {
            let t = tree(qa, qb);
            let mut l = Ledger::new(&t, &cap);
            l.add(&t, 1, &gpus(ua));
            l.add(&t, 2, &gpus(ub));
            let got = l
                .check(&t, 2, &gpus(ask))
                .map_err(|b| (if b.account == 1 { "a" } else { "b" }, b.reclaimable));
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn nested_subtree_never_exceeds_its_parent() {
        // dept has 8 guaranteed, no borrowing; its two projects have none of their own.
        let mut dept = AccountSpec::new("dept", None, 1);
        dept.quotas.insert("gpu".into(), q(8, Some(0), None));
        let t = AccountTree::new(&[
            dept,
            AccountSpec::new("p1", Some("dept"), 1),
            AccountSpec::new("p2", Some("dept"), 1),
        ])
        .unwrap();
        let cap = Capacity {
            gpus: 64,
            ..Default::default()
        };
        let mut l = Ledger::new(&t, &cap);
        let p1 = t.index("p1").unwrap();
        let p2 = t.index("p2").unwrap();
        l.add(&t, p1, &gpus(6));
        assert!(l.check(&t, p2, &gpus(2)).is_ok());
        let err = l.check(&t, p2, &gpus(3)).unwrap_err();
        assert_eq!(
            (err.account, err.resource.as_str()),
            (t.index("dept").unwrap(), "gpu")
        );
    }

    #[test]
    fn resource_keys_and_limits_are_validated() {
        for bad in ["gpus", "gpu:", "memory", ""] {
            assert!(check_resource_key(bad).is_err(), "{bad}");
        }
        for good in ["gpu", "gpu:h100", "cpu", "mem_mb"] {
            assert!(check_resource_key(good).is_ok(), "{good}");
        }
        assert!(q(2, None, Some(3)).validate().is_err());
    }

    #[test]
    fn a_mig_slice_counts_as_one_gpu_waiting_and_held() {
        let job = PendingJob {
            nodes: 2,
            mig_profile: "1g.10gb".into(),
            mig_per_node: 3,
            cpus_per_node: 1,
            ..PendingJob::default()
        };
        assert_eq!(job_demand(&job)["gpu"], 6, "3 slices on each of 2 nodes");
        let slice = |uuid: &str, start: u32| crate::mig::MigGrant {
            gpu_uuid: uuid.into(),
            profile: "1g.10gb".into(),
            start,
            size: 1,
            ..crate::mig::MigGrant::default()
        };
        let grants = [NodeGrant {
            node: "a".into(),
            gpu_uuids: vec!["G0".into()],
            mig_slices: vec![slice("G1", 0), slice("G1", 1)],
            ..NodeGrant::default()
        }];
        let types = HashMap::from([("G0", "a100"), ("G1", "a100")]);
        let held = grants_demand(&grants, &types);
        assert_eq!((held["gpu"], held["gpu:a100"]), (3, 3));
    }
}
