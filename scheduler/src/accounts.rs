//! The accounts and priority-class configuration: a TOML file parsed into the policies'
//! [`PolicyConfig`](berth_policies::PolicyConfig).
//!
//! The text itself is what the Raft log carries (`SetAccounts`) and the state keeps, and
//! it is parsed again at apply, so every replica runs the same configuration and a bad
//! file changes nothing. Unknown keys are errors (a misspelt `gaurantee` must not silently
//! mean "no quota").
//!
//! ```toml
//! half_life_hours = 168          # usage decay (Slurm PriorityDecayHalfLife); 0: never
//! default_qos = "research"       # class of jobs without --qos
//! default_account = "default"    # account of jobs without --account (and no user account)
//! mig_carve_cost = 1.0           # score penalty for carving a MIG GPU holding no slice, [0, 2]
//! packing = "bestfit"            # packing of partitions not listed: bestfit|spread|fgd|berth
//! max_array_size = 1001          # Slurm MaxArraySize: array task indexes are below it
//!
//! [[partition]]                  # per-partition packing (the partition need not exist yet)
//! name = "a100-timeslice"
//! packing = "fgd"
//!
//! [weights]                      # Slurm PriorityWeight*
//! fairshare = 10000
//! age = 1000
//! qos = 10000
//! size = 0
//! favor_small = false
//! short = 0                      # berth extension: favor short time limits
//! age_max_hours = 168
//!
//! [[account]]                    # tree: parent omitted = under root
//! name = "ml"
//! shares = 2
//! quota.gpu = { guaranteed = 8, borrow_limit = 8, lend_limit = 4 }
//!
//! [[account]]
//! name = "alice"
//! parent = "ml"
//!
//! [[account]]                    # who may submit here (and below), who coordinates it
//! name = "physics"
//! users = ["bob", "carol"]       # omitted everywhere up the tree: anyone may submit
//! coordinators = ["dana"]        # may act on the account's jobs (Slurm's coordinators)
//!
//! [[qos]]                        # omit every [[qos]] to keep the five defaults
//! name = "training"
//! priority = 500
//! preemptible = true
//! min_runtime_secs = 600
//! requeue = true
//! max_gpus_per_user = 16         # Slurm MaxTRESPerUser=gres/gpu=16 (GPUs + MIG slices)
//! ```
//!
//! `charge = "allocated" | "measured" | "max(measured, F)"` and a `[prices]` table are
//! described in [`charge`].

use berth_policies::{
    packing::Packing, priority::default_classes, AccountSpec, AccountTree, PolicyConfig,
    PolicyError, PriorityWeights, QosClass, Quota,
};
use serde::Deserialize;
use std::collections::BTreeMap;

pub mod charge;

/// Slurm's MaxArraySize default: task indexes are below it.
pub const MAX_ARRAY_SIZE_DEFAULT: u32 = 1001;

/// Slurm's largest MaxArraySize.
pub const MAX_ARRAY_SIZE_MAX: u32 = 4_000_001;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// Not TOML, or keys/types not as documented.
    #[error("accounts config is not valid TOML for berth: {0}")]
    Parse(String),
    /// Well-formed but inconsistent (unknown parent, duplicate name, bad quota…).
    #[error("accounts config: {0}")]
    Invalid(#[from] PolicyError),
    /// Other rule broken (named in the message).
    #[error("accounts config: {0}")]
    Rule(String),
}

/// The built-in configuration: one `default` account and the five default classes.
pub const DEFAULT_TOML: &str = r#"# berth built-in accounts: every job is charged to "default".
half_life_hours = 168
default_qos = "research"
default_account = "default"

[[account]]
name = "default"
shares = 1
"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "half_life_default")]
    half_life_hours: u64,
    #[serde(default = "default_qos_default")]
    default_qos: String,
    #[serde(default = "default_account_default")]
    default_account: String,
    #[serde(default)]
    weights: Option<Weights>,
    #[serde(default)]
    mig_carve_cost: Option<f64>,
    #[serde(default)]
    packing: Option<String>,
    #[serde(default)]
    max_array_size: Option<u32>,
    #[serde(default)]
    partition: Vec<PartitionEntry>,
    #[serde(default)]
    account: Vec<AccountEntry>,
    #[serde(default)]
    qos: Vec<QosEntry>,
    /// How fair share charges GPUs (see [`charge`]).
    #[serde(default)]
    charge: Option<String>,
    /// Prices for cost reports (see [`charge`]).
    #[serde(default)]
    prices: Option<charge::PricesEntry>,
}

fn half_life_default() -> u64 {
    168
}
fn default_qos_default() -> String {
    "research".into()
}
fn default_account_default() -> String {
    "default".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Weights {
    #[serde(default)]
    fairshare: Option<u32>,
    #[serde(default)]
    age: Option<u32>,
    #[serde(default)]
    qos: Option<u32>,
    #[serde(default)]
    size: Option<u32>,
    #[serde(default)]
    favor_small: bool,
    #[serde(default)]
    short: Option<u32>,
    #[serde(default)]
    age_max_hours: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    name: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default = "one")]
    shares: u32,
    #[serde(default)]
    quota: BTreeMap<String, QuotaEntry>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    coordinators: Vec<String>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaEntry {
    guaranteed: u64,
    #[serde(default)]
    borrow_limit: Option<u64>,
    #[serde(default)]
    lend_limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionEntry {
    name: String,
    packing: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QosEntry {
    name: String,
    priority: u32,
    preemptible: bool,
    #[serde(default)]
    min_runtime_secs: u64,
    #[serde(default)]
    requeue: Option<bool>,
    /// Slurm's `MaxTRESPerUser=gres/gpu=N`.
    #[serde(default)]
    max_gpus_per_user: Option<u64>,
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountsConfig {
    /// What the scheduling passes run with (kind [`berth_policies::PolicyKind::Berth`]).
    pub policy: PolicyConfig,
    /// Account of jobs that name none (and whose user is not an account).
    pub default_account: String,
    /// Who may submit to and coordinate each account.
    pub access: crate::account_access::Access,
    /// Job array task indexes are below this (Slurm's MaxArraySize).
    pub max_array_size: u32,
    /// How fair share charges GPU use (`charge = …`; default: as allocated).
    pub charge: charge::ChargeMode,
    /// Prices for cost reports (`[prices]`).
    pub prices: charge::PriceTable,
}

impl AccountsConfig {
    /// The leaf account a job is charged to: `asked` if given, else the user's own account
    /// if it exists, else the default account.
    ///
    /// # Errors
    /// A message for an unknown account or one that is not a leaf (jobs charge users or
    /// projects, not departments).
    pub fn resolve_account(&self, asked: &str, user: &str) -> Result<String, String> {
        let tree = &self.policy.accounts;
        let name = if !asked.is_empty() {
            asked
        } else if tree.index(user).is_some_and(|i| tree.is_leaf(i)) {
            user
        } else {
            &self.default_account
        };
        match tree.index(name) {
            Some(i) if tree.is_leaf(i) && i != 0 => Ok(name.to_string()),
            Some(_) => Err(format!(
                "Invalid account {name:?}: it has sub-accounts; charge a leaf account"
            )),
            None => Err(format!("Invalid account or account/partition combination specified ({name:?} is not an account)")),
        }
    }

    /// The class a job runs in: `asked` if given, else the default class.
    ///
    /// # Errors
    /// A message naming the unknown class and the known ones.
    pub fn resolve_qos(&self, asked: &str) -> Result<&QosClass, String> {
        let name = if asked.is_empty() {
            self.policy.default_qos.as_str()
        } else {
            asked
        };
        self.policy
            .qos
            .iter()
            .find(|q| q.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.policy.qos.iter().map(|q| q.name.as_str()).collect();
                format!(
                    "Invalid qos specification ({name:?}; known: {})",
                    known.join(", ")
                )
            })
    }
}

/// Parses `text` (empty: [`DEFAULT_TOML`]).
///
/// # Errors
/// [`AccountsError`] naming the first problem; nothing is partially applied.
pub fn parse(text: &str) -> Result<AccountsConfig, AccountsError> {
    let text = if text.trim().is_empty() {
        DEFAULT_TOML
    } else {
        text
    };
    let file: File = toml::from_str(text).map_err(|e| AccountsError::Parse(e.to_string()))?;
    let specs: Vec<AccountSpec> = file
        .account
        .iter()
        .map(|a| AccountSpec {
            name: a.name.clone(),
            parent: a.parent.clone(),
            shares: a.shares,
            quotas: a
                .quota
                .iter()
                .map(|(k, q)| {
                    let quota = Quota {
                        guaranteed: q.guaranteed,
                        borrow_limit: q.borrow_limit,
                        lend_limit: q.lend_limit,
                    };
                    (k.clone(), quota)
                })
                .collect(),
        })
        .collect();
    let accounts = AccountTree::new(&specs)?;
    let qos = if file.qos.is_empty() {
        default_classes()
    } else {
        file.qos
            .iter()
            .map(|q| QosClass {
                name: q.name.clone(),
                priority: q.priority,
                preemptible: q.preemptible,
                min_runtime_s: q.min_runtime_secs,
                requeue: q.requeue.unwrap_or(q.preemptible),
                max_gpus_per_user: q.max_gpus_per_user,
            })
            .collect()
    };
    let mut weights = PriorityWeights::default();
    if let Some(w) = &file.weights {
        weights.fairshare = w.fairshare.unwrap_or(weights.fairshare);
        weights.age = w.age.unwrap_or(weights.age);
        weights.qos = w.qos.unwrap_or(weights.qos);
        weights.size = w.size.unwrap_or(weights.size);
        weights.favor_small = w.favor_small;
        weights.short = w.short.unwrap_or(weights.short);
        if let Some(h) = w.age_max_hours {
            weights.age_max_ms = h.saturating_mul(3_600_000);
        }
    }
    let mig_carve_cost = file
        .mig_carve_cost
        .unwrap_or(PolicyConfig::default().mig_carve_cost);
    if !(0.0..=2.0).contains(&mig_carve_cost) {
        return Err(AccountsError::Rule(format!(
            "mig_carve_cost = {mig_carve_cost}: must be within [0, 2]"
        )));
    }
    let (packing_default, packing) = packing(&file)?;
    let policy = PolicyConfig {
        packing_default,
        packing,
        mig_carve_cost,
        accounts,
        qos,
        default_qos: file.default_qos,
        weights,
        half_life_ms: file.half_life_hours.saturating_mul(3_600_000),
        ..PolicyConfig::default()
    };
    policy.validate()?;
    let access = crate::account_access::Access::new(file.account.iter().map(|a| {
        let entry = crate::account_access::AccountAccess {
            parent: a.parent.clone(),
            users: a.users.clone(),
            coordinators: a.coordinators.clone(),
        };
        (a.name.clone(), entry)
    }));
    let max_array_size = file.max_array_size.unwrap_or(MAX_ARRAY_SIZE_DEFAULT);
    let most = MAX_ARRAY_SIZE_MAX;
    if max_array_size == 0 || max_array_size > most {
        return Err(AccountsError::Rule(format!(
            "max_array_size = {max_array_size}: must be within [1, {most}]"
        )));
    }
    let charge = match &file.charge {
        Some(c) => charge::parse_charge(c).map_err(AccountsError::Rule)?,
        None => charge::ChargeMode::Allocated,
    };
    let prices = charge::prices(file.prices).map_err(AccountsError::Rule)?;
    let cfg = AccountsConfig {
        policy,
        default_account: file.default_account,
        access,
        max_array_size,
        charge,
        prices,
    };
    let tree = &cfg.policy.accounts;
    match tree.index(&cfg.default_account) {
        Some(i) if i != 0 && tree.is_leaf(i) => Ok(cfg),
        _ => Err(AccountsError::Rule(format!(
            "default_account {:?} must be a leaf account of the tree",
            cfg.default_account
        ))),
    }
}

/// The default packing and the per-partition ones.
fn packing(file: &File) -> Result<(Packing, BTreeMap<String, Packing>), AccountsError> {
    let choice = |what: &str, text: &str| {
        Packing::parse(text).map_err(|e| AccountsError::Rule(format!("{what}: {e}")))
    };
    let default = match &file.packing {
        Some(text) => choice("packing", text)?,
        None => Packing::default(),
    };
    let mut by_partition = BTreeMap::new();
    for p in &file.partition {
        if p.name.is_empty() || p.name.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err(AccountsError::Rule(format!(
                "partition {:?}: name must be non-empty, without spaces or commas",
                p.name
            )));
        }
        let k = choice(&format!("partition {}", p.name), &p.packing)?;
        if by_partition.insert(p.name.clone(), k).is_some() {
            return Err(AccountsError::Rule(format!(
                "partition {} is defined twice",
                p.name
            )));
        }
    }
    Ok((default, by_partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
half_life_hours = 24
mig_carve_cost = 0.25
default_account = "alice"
packing = "spread"
[[partition]]
name = "a100-timeslice"
packing = "fgd"
[[partition]]
name = "train"
packing = "berth"
[weights]
fairshare = 5000
[[account]]
name = "ml"
shares = 2
quota.gpu = { guaranteed = 8, borrow_limit = 4 }
[[account]]
name = "alice"
parent = "ml"
[[account]]
name = "bob"
"#;

    #[test]
    fn parses_tree_quotas_weights_and_default_classes() {
        let c = parse(GOOD).unwrap();
        let t = &c.policy.accounts;
        let ml = t.index("ml").unwrap();
        assert_eq!(t.accounts()[ml].shares, 2);
        assert_eq!(t.accounts()[ml].quotas["gpu"].borrow_limit, Some(4));
        assert_eq!(t.accounts()[t.index("alice").unwrap()].parent, Some(ml));
        assert_eq!(c.policy.half_life_ms, 24 * 3_600_000);
        assert_eq!(c.policy.mig_carve_cost, 0.25);
        assert_eq!(parse("").unwrap().policy.mig_carve_cost, 1.0);
        assert_eq!(c.policy.packing_for("a100-timeslice"), Packing::Fgd);
        assert_eq!(c.policy.packing_for("train"), Packing::Berth);
        assert_eq!(c.policy.packing_for("other"), Packing::Spread);
        assert_eq!(
            parse("").unwrap().policy.packing_for("gpu"),
            Packing::BestFit
        );
        assert_eq!(c.policy.weights.fairshare, 5000);
        assert_eq!(c.policy.qos.len(), 5);
        assert_eq!(c.resolve_account("", "zed").unwrap(), "alice");
        assert_eq!(c.resolve_account("", "bob").unwrap(), "bob");
        assert!(c
            .resolve_account("ml", "bob")
            .unwrap_err()
            .contains("sub-accounts"));
        assert!(c
            .resolve_account("nope", "bob")
            .unwrap_err()
            .contains("not an account"));
        assert_eq!(c.resolve_qos("").unwrap().name, "research");
        assert!(c.resolve_qos("gold").unwrap_err().contains("Invalid qos"));
        // Empty text is the built-in default.
        assert_eq!(parse("").unwrap().default_account, "default");
    }

    #[test]
    fn a_class_carries_its_per_user_gpu_limit() {
        let text = "default_qos = \"t\"\n[[account]]\nname = \"default\"\n[[qos]]\nname = \"t\"\npriority = 1\npreemptible = false\nmax_gpus_per_user = 4\n[[qos]]\nname = \"u\"\npriority = 2\npreemptible = false";
        let c = parse(text).unwrap();
        let limits: Vec<_> = c.policy.qos.iter().map(|q| q.max_gpus_per_user).collect();
        assert_eq!(limits, [Some(4), None]);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("half_life_hours = \"x\"", "invalid type"),
            ("[[account]]\nname = \"a\"\ngaurantee = 3", "unknown field"),
            ("[[account]]\nname = \"a\"\nparent = \"zz\"", "unknown parent zz"),
            ("[[account]]\nname = \"a\"\n[[account]]\nname = \"a\"", "defined twice"),
            ("[[account]]\nname = \"a\"\nquota.gpus = { guaranteed = 1 }", "unknown quota resource"),
            ("[[account]]\nname = \"a\"\nquota.gpu = { guaranteed = 1, lend_limit = 2 }", "lend_limit"),
            ("default_account = \"zz\"\n[[account]]\nname = \"a\"", "default_account"),
            ("default_qos = \"gold\"\n[[account]]\nname = \"default\"", "default qos is not defined"),
            ("[[qos]]\nname = \"a\"\npriority = 1\npreemptible = true\n[[qos]]\nname = \"a\"\npriority = 2\npreemptible = false", "defined twice"),
            ("this is not toml", "TOML"),
            ("mig_carve_cost = -0.5", "mig_carve_cost = -0.5: must be within [0, 2]"),
            ("mig_carve_cost = 3", "within [0, 2]"),
            ("mig_carve_cost = \"high\"", "invalid type"),
            ("packing = \"binpack\"", "packing: unknown packing \"binpack\"; use one of bestfit, spread, fgd, berth"),
            ("[[partition]]\nname = \"a\"\npacking = \"FGD\"", "partition a: unknown packing \"FGD\""),
            ("[[partition]]\nname = \"a\"", "missing field `packing`"),
            ("[[partition]]\nname = \"a\"\npacking = \"fgd\"\nweight = 2", "unknown field `weight`"),
            ("[[partition]]\nname = \"a\"\npacking = \"fgd\"\n[[partition]]\nname = \"a\"\npacking = \"spread\"", "partition a is defined twice"),
            ("[[partition]]\nname = \"a b\"\npacking = \"fgd\"", "without spaces"),
            ("[[partition]]\nname = \"\"\npacking = \"fgd\"", "non-empty"),
            ("packing = 3", "invalid type"),
            ("[[qos]]\nname = \"a\"\npriority = 1\npreemptible = true\nmax_gpus_per_user = -1", "invalid value"),
            ("[[qos]]\nname = \"a\"\npriority = 1\npreemptible = true\nmax_gpus_per_user = \"8\"", "invalid type"),
            ("[[qos]]\nname = \"a\"\npriority = 1\npreemptible = true\nmax_gpu_per_user = 8", "unknown field"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            match parse(text) {
                Err(e) if e.to_string().contains(want) => {}
                other => panic!("#{i}: want error containing {want:?}, got {other:?}"),
            }
        }
    }
}
