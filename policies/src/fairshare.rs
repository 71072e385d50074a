//! Hierarchical fair share: the account tree, decayed usage, and Slurm's Fair Tree
//! ordering.
//!
//! Usage is charged in GPU-equivalent seconds by dominant share (DRF): a job holding `g`
//! GPUs, `c` CPUs and `m` MiB on a cluster of `G`, `C`, `M` is charged
//! `G * max(g/G, c/C, m/M)` per second, so a GPU job pays its GPU count and a CPU-only job
//! pays the GPUs its CPU (or memory) share is worth. Usage decays exponentially with a
//! half-life (Slurm's `PriorityDecayHalfLife`; 0 disables decay): a charge of `u` made at
//! `t` is worth `u * 2^-(now - t)/half_life` at `now`. Time is always an argument.
//!
//! Fair Tree (Slurm ≥ 19.05): at each level, siblings are ranked by
//! `LevelFS = S / U` where `S` is the account's shares over its siblings' and `U` its usage
//! over its siblings' (zero usage ranks first, as infinity). Walking the tree depth first in
//! that order numbers the leaves (users); the first leaf of `n` gets the fair-share factor
//! `n/n = 1`, the last `1/n`. Siblings with equal LevelFS share a rank. Everything under a
//! better-ranked account comes before everything under a worse one, whatever the users'
//! own usage.

use crate::quota::Quota;
use crate::PolicyError;
use std::collections::BTreeMap;

/// One account as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSpec {
    /// Unique name (leaves are users or projects that jobs name with `--account`).
    pub name: String,
    /// Parent account; `None` hangs it under the implicit `root`.
    pub parent: Option<String>,
    /// Fair-share weight among its siblings (Slurm's `Fairshare=`), at least 1.
    pub shares: u32,
    /// Quotas per resource key (`gpu`, `gpu:<type>`, `cpu`, `mem_mb`).
    pub quotas: BTreeMap<String, Quota>,
}

impl AccountSpec {
    /// An account with `shares` and no quotas.
    pub fn new(name: &str, parent: Option<&str>, shares: u32) -> AccountSpec {
        AccountSpec {
            name: name.to_string(),
            parent: parent.map(str::to_string),
            shares,
            quotas: BTreeMap::new(),
        }
    }
}

/// One node of the built tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// Name.
    pub name: String,
    /// Index of the parent; `None` only for the root (index 0).
    pub parent: Option<usize>,
    /// Fair-share weight among siblings.
    pub shares: u32,
    /// Children, in name order.
    pub children: Vec<usize>,
    /// Quotas per resource key.
    pub quotas: BTreeMap<String, Quota>,
    /// 0 for the root.
    pub depth: usize,
}

/// The account tree (index 0 is the implicit `root`).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountTree {
    accounts: Vec<Account>,
    by_name: BTreeMap<String, usize>,
}

/// Name of the implicit root account.
pub const ROOT: &str = "root";

impl Default for AccountTree {
    fn default() -> Self {
        AccountTree::new(&[]).expect("an empty tree is valid")
    }
}

impl AccountTree {
    /// Builds the tree from `specs` (any order).
    ///
    /// # Errors
    /// [`PolicyError::Account`] for a repeated or reserved name, an unknown parent, zero
    /// shares, a cycle, or a quota whose numbers contradict each other.
    pub fn new(specs: &[AccountSpec]) -> Result<AccountTree, PolicyError> {
        let bad = |name: &str, why: String| PolicyError::Account {
            account: name.to_string(),
            detail: why,
        };
        let mut by_name = BTreeMap::from([(ROOT.to_string(), 0)]);
        for (i, s) in specs.iter().enumerate() {
            if s.name.is_empty() || s.name.len() > 64 || s.name.contains(char::is_whitespace) {
                return Err(bad(
                    &s.name,
                    "name must be 1-64 non-space characters".into(),
                ));
            }
            if by_name.insert(s.name.clone(), i + 1).is_some() {
                return Err(bad(&s.name, "defined twice (or named root)".into()));
            }
            if s.shares == 0 {
                return Err(bad(&s.name, "shares must be at least 1".into()));
            }
            for (res, q) in &s.quotas {
                q.validate()
                    .map_err(|why| bad(&s.name, format!("quota {res}: {why}")))?;
                crate::quota::check_resource_key(res).map_err(|why| bad(&s.name, why))?;
            }
        }
        let mut accounts = vec![Account {
            name: ROOT.into(),
            parent: None,
            shares: 1,
            children: vec![],
            quotas: BTreeMap::new(),
            depth: 0,
        }];
        for s in specs {
            let parent = match &s.parent {
                None => 0,
                Some(p) => *by_name
                    .get(p)
                    .ok_or_else(|| bad(&s.name, format!("unknown parent {p}")))?,
            };
            accounts.push(Account {
                name: s.name.clone(),
                parent: Some(parent),
                shares: s.shares,
                children: vec![],
                quotas: s.quotas.clone(),
                depth: 0,
            });
        }
        // Children lists in name order (by_name iterates sorted), depths by walking up; a
        // walk longer than the tree is a cycle.
        for (_, &i) in by_name.iter() {
            if let Some(p) = accounts[i].parent {
                accounts[p].children.push(i);
            }
        }
        for i in 1..accounts.len() {
            let mut depth = 0;
            let mut at = i;
            while let Some(p) = accounts[at].parent {
                depth += 1;
                at = p;
                if depth > accounts.len() {
                    return Err(bad(&accounts[i].name, "parent chain is a cycle".into()));
                }
            }
            accounts[i].depth = depth;
        }
        Ok(AccountTree { accounts, by_name })
    }

    /// A flat tree: every `(name, shares)` directly under root.
    ///
    /// # Errors
    /// As [`AccountTree::new`].
    pub fn flat(accounts: &[(&str, u32)]) -> Result<AccountTree, PolicyError> {
        let specs: Vec<_> = accounts
            .iter()
            .map(|(n, s)| AccountSpec::new(n, None, *s))
            .collect();
        AccountTree::new(&specs)
    }

    /// Every account, root first, then in definition order.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// Index of `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// `idx` and its ancestors, root last.
    pub fn path(&self, idx: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(idx), move |&i| self.accounts[i].parent)
    }

    /// Whether `idx` has no children (users; jobs are charged to leaves).
    pub fn is_leaf(&self, idx: usize) -> bool {
        self.accounts[idx].children.is_empty()
    }

    /// Number of accounts including root.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Only the root exists.
    pub fn is_empty(&self) -> bool {
        self.accounts.len() == 1
    }
}

/// Usage charged by ended jobs, per account name, decayed to `as_of_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// GPU-equivalent seconds per leaf account, valued at `as_of_ms`.
    pub by_account: BTreeMap<String, f64>,
    /// The time the values hold at.
    pub as_of_ms: u64,
}

/// `2^-(dt/half_life)`; 1 when `half_life_ms` is 0 (no decay).
///
/// Decayed usage is replicated state (every replica charges it when applying a job's end),
/// so it must come out bit-identical on every machine: `libm`'s pure-Rust `exp2` gives the
/// same bits everywhere, where `f64::exp2` calls the platform's C library, whose results
/// may differ in the last bit between versions and architectures.
pub fn decay_factor(dt_ms: u64, half_life_ms: u64) -> f64 {
    if half_life_ms == 0 {
        return 1.0;
    }
    libm::exp2(-(dt_ms as f64) / half_life_ms as f64)
}

/// Value at `at_ms` of running at `rate` (per second) during `[start_ms, end_ms]`, each
/// second decayed from when it was used: `rate * h/ln2 * (2^-(at-end)/h - 2^-(at-start)/h)`
/// with `h` the half-life in seconds; `rate * (end - start)` without decay.
///
/// # Panics
/// If `start_ms > end_ms` or `end_ms > at_ms` (the caller values past intervals only).
pub fn charge_between(rate: f64, start_ms: u64, end_ms: u64, at_ms: u64, half_life_ms: u64) -> f64 {
    assert!(
        start_ms <= end_ms && end_ms <= at_ms,
        "charge interval [{start_ms}, {end_ms}] valued at {at_ms}"
    );
    if half_life_ms == 0 {
        return rate * (end_ms - start_ms) as f64 / 1000.0;
    }
    let h_s = half_life_ms as f64 / 1000.0;
    let recent = decay_factor(at_ms - end_ms, half_life_ms);
    let old = decay_factor(at_ms - start_ms, half_life_ms);
    rate * h_s / std::f64::consts::LN_2 * (recent - old)
}

impl Usage {
    /// Decays every value to `now_ms` (no-op when `now_ms` is not later).
    pub fn advance(&mut self, now_ms: u64, half_life_ms: u64) {
        if now_ms <= self.as_of_ms {
            return;
        }
        let f = decay_factor(now_ms - self.as_of_ms, half_life_ms);
        for v in self.by_account.values_mut() {
            *v *= f;
        }
        self.as_of_ms = now_ms;
    }

    /// Charges `account` for running at `rate` during `[start_ms, end_ms]` (advancing to
    /// `end_ms` first if the values are older).
    pub fn charge(
        &mut self,
        account: &str,
        rate: f64,
        start_ms: u64,
        end_ms: u64,
        half_life_ms: u64,
    ) {
        self.advance(end_ms, half_life_ms);
        let start = start_ms.min(end_ms);
        let amount = charge_between(rate, start, end_ms, self.as_of_ms, half_life_ms);
        *self.by_account.entry(account.to_string()).or_default() += amount;
    }

    /// `account`'s value at `now_ms` (not stored).
    pub fn at(&self, account: &str, now_ms: u64, half_life_ms: u64) -> f64 {
        let v = self.by_account.get(account).copied().unwrap_or(0.0);
        v * decay_factor(now_ms.saturating_sub(self.as_of_ms), half_life_ms)
    }
}

/// Charge rate of a job in GPU-equivalents per second: `G * max(g/G, c/C, m/M)`.
/// On a cluster without GPUs the unit is CPUs (`C * max(c/C, m/M)`).
pub fn dominant_rate(gpus: u64, cpus: u64, mem_mb: u64, cap: &crate::Capacity) -> f64 {
    dominant_rate_milli(gpus.saturating_mul(1000), cpus, mem_mb, cap)
}

/// [`dominant_rate`] with GPUs in milli, so a job holding a fraction of a time-sliced GPU
/// (`--gpus=0.5`: 500) is charged that fraction.
pub fn dominant_rate_milli(gpu_milli: u64, cpus: u64, mem_mb: u64, cap: &crate::Capacity) -> f64 {
    let share = |x: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            x as f64 / total as f64
        }
    };
    let dominant = share(gpu_milli, cap.gpus.saturating_mul(1000))
        .max(share(cpus, cap.cpus))
        .max(share(mem_mb, cap.memory_mb));
    let unit = if cap.gpus > 0 {
        cap.gpus
    } else {
        cap.cpus.max(1)
    };
    dominant * unit as f64
}

/// GPU milli held by `grants`: 1000 per whole GPU (or plain share), the fraction for a
/// fraction grant.
pub fn grants_gpu_milli(grants: &[crate::NodeGrant]) -> u64 {
    grants
        .iter()
        .map(|g| {
            let per = if g.gpu_milli > 0 { g.gpu_milli } else { 1000 };
            g.gpu_uuids.len() as u64 * u64::from(per)
        })
        .sum()
}

/// One account in `berth sshare`'s table.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareRow {
    /// Account name.
    pub name: String,
    /// Depth (0 = root).
    pub depth: usize,
    /// Configured shares.
    pub shares: u32,
    /// Shares over the siblings' total, in `(0, 1]`.
    pub norm_shares: f64,
    /// Decayed usage of the subtree (GPU-equivalent seconds).
    pub raw_usage: f64,
    /// Usage over the siblings' total, in `[0, 1]` (Slurm's EffectvUsage at this level).
    pub effective_usage: f64,
    /// `norm_shares / effective_usage` (infinite at zero usage).
    pub level_fs: f64,
    /// Fair-share factor in `(0, 1]` (leaves only).
    pub fairshare: Option<f64>,
}

/// Runs Fair Tree over `tree` with decayed leaf usage `usage_by_leaf` (by account index;
/// inner accounts' entries are ignored and recomputed as subtree sums). Returns one row per
/// account, in depth-first Fair Tree order (root first).
pub fn fair_tree(tree: &AccountTree, usage_by_leaf: &[f64]) -> Vec<ShareRow> {
    let n = tree.len();
    let mut subtree = vec![0.0; n];
    // Children have larger indexes than nothing in particular, so sum bottom-up by depth.
    let mut by_depth: Vec<usize> = (0..n).collect();
    by_depth.sort_by_key(|&i| std::cmp::Reverse(tree.accounts[i].depth));
    for &i in &by_depth {
        if tree.is_leaf(i) {
            subtree[i] += usage_by_leaf.get(i).copied().unwrap_or(0.0).max(0.0);
        }
        if let Some(p) = tree.accounts[i].parent {
            subtree[p] += subtree[i];
        }
    }
    let leaves = (1..n).filter(|&i| tree.is_leaf(i)).count().max(1);
    let mut walk = Walk {
        tree,
        subtree: &subtree,
        rows: Vec::with_capacity(n),
        leaves_left: leaves,
        leaves,
    };
    walk.rows.push(ShareRow {
        name: ROOT.into(),
        depth: 0,
        shares: 1,
        norm_shares: 1.0,
        raw_usage: subtree[0],
        effective_usage: 1.0,
        level_fs: 1.0,
        fairshare: None,
    });
    walk.children(0);
    walk.rows
}

struct Walk<'a> {
    tree: &'a AccountTree,
    subtree: &'a [f64],
    rows: Vec<ShareRow>,
    leaves_left: usize,
    leaves: usize,
}

impl Walk<'_> {
    /// Ranks the children of `parent` by LevelFS (desc, then name) and descends in order.
    fn children(&mut self, parent: usize) {
        let kids = &self.tree.accounts[parent].children;
        let shares_sum: f64 = kids
            .iter()
            .map(|&k| f64::from(self.tree.accounts[k].shares))
            .sum();
        let usage_sum: f64 = kids.iter().map(|&k| self.subtree[k]).sum();
        let mut ranked: Vec<(f64, f64, f64, usize)> = kids
            .iter()
            .map(|&k| {
                let s = f64::from(self.tree.accounts[k].shares) / shares_sum;
                let u = if usage_sum > 0.0 {
                    self.subtree[k] / usage_sum
                } else {
                    0.0
                };
                let fs = if u > 0.0 { s / u } else { f64::INFINITY };
                (fs, s, u, k)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.3.cmp(&b.3)));
        // Leaves with equal LevelFS among the same siblings share the rank of the first.
        let mut tie: Option<(f64, f64)> = None;
        for (fs, s, u, k) in ranked {
            let acc = &self.tree.accounts[k];
            let leaf = self.tree.is_leaf(k);
            let factor = leaf.then(|| {
                let f = match tie {
                    Some((tfs, tf)) if tfs == fs => tf,
                    _ => self.leaves_left as f64 / self.leaves as f64,
                };
                tie = Some((fs, f));
                self.leaves_left -= 1;
                f
            });
            self.rows.push(ShareRow {
                name: acc.name.clone(),
                depth: acc.depth,
                shares: acc.shares,
                norm_shares: s,
                raw_usage: self.subtree[k],
                effective_usage: u,
                level_fs: fs,
                fairshare: factor,
            });
            if !leaf {
                self.children(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> AccountTree {
        AccountTree::new(&[
            AccountSpec::new("physics", None, 1),
            AccountSpec::new("bio", None, 1),
            AccountSpec::new("alice", Some("physics"), 1),
            AccountSpec::new("bob", Some("physics"), 1),
            AccountSpec::new("carol", Some("bio"), 1),
        ])
        .unwrap()
    }

    fn factors(t: &AccountTree, usage: &[(&str, f64)]) -> Vec<(String, f64)> {
        let mut u = vec![0.0; t.len()];
        for (n, v) in usage {
            u[t.index(n).unwrap()] = *v;
        }
        fair_tree(t, &u)
            .into_iter()
            .filter_map(|r| r.fairshare.map(|f| (r.name, f)))
            .collect()
    }

    #[test]
    fn fair_tree_ranks_level_by_level() {
        let t = tree();
        // (usage, expected leaf order with factors)
        type Named<'a> = Vec<(&'a str, f64)>;
        let cases: Vec<(Named, Named)> = vec![
            // No usage anywhere: all infinite LevelFS, one shared rank per sibling group.
            // Accounts rank bio (index 2) before physics? ties break on index: physics=1.
            (
                vec![],
                vec![("alice", 1.0), ("bob", 1.0), ("carol", 1.0 / 3.0)],
            ),
            // physics used 90, bio 10: bio LevelFS 0.5/0.1=5 > physics 0.5/0.9; carol first
            // even though alice has no usage at all.
            (
                vec![("bob", 90.0), ("carol", 10.0)],
                vec![("carol", 1.0), ("alice", 2.0 / 3.0), ("bob", 1.0 / 3.0)],
            ),
            // Inside physics: alice used more than bob, so bob ranks first.
            (
                vec![("alice", 60.0), ("bob", 30.0), ("carol", 100.0)],
                vec![("bob", 1.0), ("alice", 2.0 / 3.0), ("carol", 1.0 / 3.0)],
            ),
        ];
        for (i, (usage, want)) in cases.iter().enumerate() {
            let got = factors(&t, usage);
            let want: Vec<(String, f64)> = want.iter().map(|(n, f)| (n.to_string(), *f)).collect();
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn shares_weight_level_fs() {
        // a has 3 shares, b 1; both used 50: a's LevelFS 0.75/0.5 = 1.5, b's 0.25/0.5 = 0.5.
        let t = AccountTree::flat(&[("a", 3), ("b", 1)]).unwrap();
        let mut u = vec![0.0; 3];
        u[1] = 50.0;
        u[2] = 50.0;
        let rows = fair_tree(&t, &u);
        assert_eq!(rows[1].name, "a");
        assert!((rows[1].level_fs - 1.5).abs() < 1e-12, "{rows:?}");
        assert!((rows[2].level_fs - 0.5).abs() < 1e-12, "{rows:?}");
        assert_eq!(rows[1].fairshare, Some(1.0));
        assert_eq!(rows[2].fairshare, Some(0.5));
    }

    #[test]
    fn bad_trees_are_refused() {
        let cases: Vec<(Vec<AccountSpec>, &str)> = vec![
            (
                vec![
                    AccountSpec::new("a", None, 1),
                    AccountSpec::new("a", None, 1),
                ],
                "defined twice",
            ),
            (vec![AccountSpec::new("root", None, 1)], "defined twice"),
            (
                vec![AccountSpec::new("a", Some("nope"), 1)],
                "unknown parent nope",
            ),
            (
                vec![AccountSpec::new("a", None, 0)],
                "shares must be at least 1",
            ),
            (vec![AccountSpec::new("a b", None, 1)], "non-space"),
            (
                vec![
                    AccountSpec::new("a", Some("b"), 1),
                    AccountSpec::new("b", Some("a"), 1),
                ],
                "cycle",
            ),
        ];
        for (i, (specs, want)) in cases.iter().enumerate() {
            match AccountTree::new(specs) {
                Err(e) if e.to_string().contains(want) => {}
                other => panic!("#{i}: want error containing {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn charges_decay_continuously() {
        // One GPU for one half-life, valued at its end: h/ln2 * (1 - 1/2) = h/(2 ln2) seconds.
        let h = 3_600_000;
        let got = charge_between(1.0, 0, h, h, h);
        let want = 3600.0 / (2.0 * std::f64::consts::LN_2);
        assert!((got - want).abs() < 1e-9, "want {want}, got {got}");
        // Without decay it is plain GPU-seconds.
        assert_eq!(charge_between(8.0, 1000, 11_000, 50_000, 0), 80.0);
        let mut u = Usage::default();
        u.charge("a", 2.0, 0, 10_000, 0);
        assert_eq!(u.at("a", 99_999, 0), 20.0);
    }

    #[test]
    fn dominant_share_picks_the_scarcest_resource() {
        let cap = crate::Capacity {
            gpus: 16,
            cpus: 64,
            memory_mb: 1024,
            ..Default::default()
        };
        assert_eq!(dominant_rate(2, 1, 0, &cap), 2.0);
        // 32 of 64 CPUs is half the cluster: worth 8 GPUs.
        assert_eq!(dominant_rate(0, 32, 0, &cap), 8.0);
        assert_eq!(dominant_rate(1, 0, 512, &cap), 8.0);
    }

    proptest::proptest! {
        #[test]
        fn decay_halves_usage_after_one_half_life(
            v in 0.0f64..1e12, t0 in 0u64..1u64 << 40, h in 1u64..1u64 << 36
        ) {
            let mut u = Usage { by_account: BTreeMap::from([("a".to_string(), v)]), as_of_ms: t0 };
            u.advance(t0 + h, h);
            let got = u.by_account["a"];
            proptest::prop_assert!((got - v / 2.0).abs() <= v * 1e-12, "{} -> {}", v, got);
            proptest::prop_assert!((u.at("a", t0 + 2 * h, h) - v / 4.0).abs() <= v * 1e-12);
        }
    }
}
