//! The cluster description: one TOML file naming every node (in groups of one shape),
//! the partitions over them (which may overlap), the cluster's licenses — what Slurm's
//! slurm.conf says with `NodeName=`, `PartitionName=` and `Licenses=`.
//!
//! Like the accounts file, the text is what the Raft log carries (`SetCluster`) and the
//! state keeps, and every replica parses it again at apply, so all run the same description
//! and a bad file changes nothing. Unknown keys are errors. Every refusal names the line.
//!
//! ```toml
//! name = "hpc"                          # ClusterName (shown by scontrol)
//!
//! [[nodes]]                             # a node group: NodeName=gpu[001-004] ...
//! names = "gpu[001-004]"                # a Slurm hostlist
//! sockets = 2                           # CPUs = sockets x cores x threads unless `cpus`
//! cores_per_socket = 16
//! threads_per_core = 2
//! memory = "500G"                       # RealMemory: MiB as a number, or with a unit
//! gpus = 8                              # Gres=gpu:h100:8
//! gpu_type = "h100"
//! features = ["h100", "ib", "nvlink"]
//! weight = 10                           # the lowest weight is allocated first
//!
//! [[partition]]
//! name = "gpu"
//! nodes = "gpu[001-004],a100-[01-02]"   # a hostlist, or "ALL"
//! features = ["ib"]                     # and every node with all of these features
//! default = true
//! max_time = "2-00:00:00"               # or "UNLIMITED"; minutes as a number
//! default_time = "1:00:00"
//! max_nodes = 4
//! allow_accounts = ["ml", "physics"]    # omitted: ALL
//! allow_qos = ["training"]
//! priority_tier = 2
//! packing = "bestfit"                   # bestfit | spread | fgd | berth
//!
//! [licenses]
//! matlab = 5
//! ```

use berth_policies::constraint::valid_feature_name;
use berth_policies::packing::Packing;
use berth_policies::topology::hostlist;
use berth_proto::v1 as pb;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use toml::Spanned;

/// Why a description was refused: the line (1-based; 0 when the whole file is at fault)
/// and what is wrong. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterError {
    /// Line of the entry at fault.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "cluster description: {}", self.reason),
            n => write!(f, "cluster description line {n}: {}", self.reason),
        }
    }
}

impl std::error::Error for ClusterError {}

/// A parsed, consistent description.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterDescription {
    /// `name =` (empty when not given).
    pub name: String,
    /// Every described node by name, with its group's values and its partitions.
    pub nodes: BTreeMap<String, pb::NodeDescription>,
    /// Partitions in the file's order.
    pub partitions: Vec<Partition>,
    /// Cluster licenses: name → count.
    pub licenses: BTreeMap<String, u32>,
}

/// One partition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partition {
    /// Its name.
    pub name: String,
    /// Its nodes, in hostlist order.
    pub nodes: Vec<String>,
    /// `default = true`: jobs naming no partition go here.
    pub default: bool,
    /// Longest time limit a job may have here (`None`: UNLIMITED).
    pub max_time_secs: Option<u64>,
    /// Time limit of jobs that give none (`None`: `max_time_secs`).
    pub default_time_secs: Option<u64>,
    /// Most nodes one job may take (`None`: UNLIMITED).
    pub max_nodes: Option<u32>,
    /// Accounts allowed (`None`: ALL).
    pub allow_accounts: Option<Vec<String>>,
    /// QOS allowed (`None`: ALL).
    pub allow_qos: Option<Vec<String>>,
    /// Jobs of higher tiers are considered first.
    pub priority_tier: u32,
    /// How placement packs jobs here (`None`: the accounts file's, else best fit).
    pub packing: Option<Packing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    nodes: Vec<Spanned<NodeEntry>>,
    #[serde(default)]
    partition: Vec<Spanned<PartitionEntry>>,
    #[serde(default)]
    licenses: BTreeMap<String, Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    names: String,
    #[serde(default)]
    cpus: Option<u32>,
    #[serde(default)]
    sockets: Option<u32>,
    #[serde(default)]
    cores_per_socket: Option<u32>,
    #[serde(default)]
    threads_per_core: Option<u32>,
    memory: Option<toml::Value>,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    gpu_type: String,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionEntry {
    name: String,
    #[serde(default)]
    nodes: Option<String>,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    max_time: Option<toml::Value>,
    #[serde(default)]
    default_time: Option<toml::Value>,
    #[serde(default)]
    max_nodes: Option<u32>,
    #[serde(default)]
    allow_accounts: Option<Vec<String>>,
    #[serde(default)]
    allow_qos: Option<Vec<String>>,
    #[serde(default)]
    priority_tier: Option<u32>,
    #[serde(default)]
    packing: Option<String>,
}

/// Most nodes a description may name.
pub const NODES_MAX: usize = 100_000;

/// Slurm's default node `Weight`.
const WEIGHT_DEFAULT: u32 = 1;

impl ClusterDescription {
    /// Parses and checks `text`.
    ///
    /// # Errors
    /// [`ClusterError`] with the line and reason of the first problem: not TOML or an
    /// unknown key, a bad hostlist, a node in two groups of different shapes, a node in no
    /// group, an unknown feature, a duplicate partition or license, two default partitions,
    /// bad times or sizes.
    pub fn parse(text: &str) -> Result<ClusterDescription, ClusterError> {
        let file: File = toml::from_str(text).map_err(|e| ClusterError {
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            reason: e.message().to_string(),
        })?;
        let mut d = ClusterDescription {
            name: file.name.unwrap_or_default(),
            ..Default::default()
        };
        let mut group_line: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for entry in &file.nodes {
            let line = line_of(text, entry.span().start);
            let desc =
                node_group(entry.get_ref()).map_err(|reason| ClusterError { line, reason })?;
            let names = expand(&entry.get_ref().names, line)?;
            for name in names {
                if let Some(before) = d.nodes.get(&name) {
                    if !same_shape(before, &desc) {
                        let (l, g) = &group_line[&name];
                        return Err(ClusterError {
                            line,
                            reason: format!(
                                "node {name} is in node groups '{g}' (line {l}) and '{}' with different shapes",
                                desc.group
                            ),
                        });
                    }
                    continue;
                }
                group_line.insert(name.clone(), (line, desc.group.clone()));
                d.nodes.insert(name, desc.clone());
            }
            if d.nodes.len() > NODES_MAX {
                return Err(ClusterError {
                    line,
                    reason: format!("more than {NODES_MAX} nodes"),
                });
            }
        }
        for entry in &file.partition {
            let line = line_of(text, entry.span().start);
            let p = d.partition_entry(entry.get_ref(), line)?;
            if d.partitions.iter().any(|q| q.name == p.name) {
                return Err(ClusterError {
                    line,
                    reason: format!("partition {} is defined twice", p.name),
                });
            }
            if p.default && d.partitions.iter().any(|q| q.default) {
                return Err(ClusterError {
                    line,
                    reason: format!("partition {} is a second default partition", p.name),
                });
            }
            for n in &p.nodes {
                let desc = d.nodes.get_mut(n).expect("checked in partition_entry");
                desc.partitions.push(p.name.clone());
            }
            d.partitions.push(p);
        }
        for (name, count) in &file.licenses {
            if !valid_name(name) {
                return Err(ClusterError {
                    line: line_of(text, count.span().start),
                    reason: format!(
                        "license name {name:?} must be letters, digits, '-', '_' or '.'"
                    ),
                });
            }
            d.licenses.insert(name.clone(), *count.get_ref());
        }
        Ok(d)
    }

    /// The partition jobs naming none go to (`default = true`), if any.
    pub fn default_partition(&self) -> Option<&str> {
        self.partitions
            .iter()
            .find(|p| p.default)
            .map(|p| p.name.as_str())
    }

    /// The partition called `name`.
    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// Every feature some node has.
    pub fn features(&self) -> BTreeSet<&str> {
        self.nodes
            .values()
            .flat_map(|n| n.features.iter().map(String::as_str))
            .collect()
    }

    fn partition_entry(&self, e: &PartitionEntry, line: usize) -> Result<Partition, ClusterError> {
        let err = |reason: String| ClusterError { line, reason };
        if !valid_name(&e.name) {
            return Err(err(format!(
                "partition name {:?} must be letters, digits, '-', '_' or '.'",
                e.name
            )));
        }
        let mut nodes: Vec<String> = match e.nodes.as_deref() {
            None => Vec::new(),
            Some("ALL") => self.nodes.keys().cloned().collect(),
            Some(list) => expand(list, line)?,
        };
        for n in &nodes {
            if !self.nodes.contains_key(n) {
                return Err(err(format!(
                    "partition {}: node {n} is in no node group",
                    e.name
                )));
            }
        }
        let known = self.features();
        if let Some(f) = e.features.iter().find(|f| !known.contains(f.as_str())) {
            return Err(err(format!(
                "partition {}: unknown feature {f:?} (no node group has it)",
                e.name
            )));
        }
        if !e.features.is_empty() {
            for (name, desc) in &self.nodes {
                let all = e.features.iter().all(|f| desc.features.contains(f));
                if all && !nodes.contains(name) {
                    nodes.push(name.clone());
                }
            }
        }
        let mut seen = BTreeSet::new();
        nodes.retain(|n| seen.insert(n.clone()));
        if nodes.is_empty() {
            return Err(err(format!("partition {} has no nodes", e.name)));
        }
        let time = |v: &Option<toml::Value>, key: &str| -> Result<Option<u64>, ClusterError> {
            v.as_ref()
                .map(|v| parse_time(v).map_err(|why| err(format!("{key}: {why}"))))
                .transpose()
                .map(Option::flatten)
        };
        let packing = e
            .packing
            .as_deref()
            .map(|p| Packing::parse(p).map_err(|why| err(format!("packing: {why}"))))
            .transpose()?;
        if e.max_nodes == Some(0) {
            return Err(err("max_nodes must be at least 1".into()));
        }
        Ok(Partition {
            name: e.name.clone(),
            nodes,
            default: e.default,
            max_time_secs: time(&e.max_time, "max_time")?,
            default_time_secs: time(&e.default_time, "default_time")?,
            max_nodes: e.max_nodes,
            allow_accounts: e.allow_accounts.clone(),
            allow_qos: e.allow_qos.clone(),
            priority_tier: e.priority_tier.unwrap_or(1),
            packing,
        })
    }
}

/// One node group's values, checked.
fn node_group(e: &NodeEntry) -> Result<pb::NodeDescription, String> {
    let (s, c, t) = (
        e.sockets.unwrap_or(1),
        e.cores_per_socket.unwrap_or(0),
        e.threads_per_core.unwrap_or(1),
    );
    if s == 0 || t == 0 || e.cores_per_socket == Some(0) || e.cpus == Some(0) {
        return Err(
            "cpus, sockets, cores_per_socket and threads_per_core must be at least 1".into(),
        );
    }
    let topology = s.checked_mul(c).and_then(|x| x.checked_mul(t));
    let cpus = match (e.cpus, e.cores_per_socket) {
        (Some(cpus), None) => cpus,
        (cpus, Some(_)) => {
            let product = topology.ok_or("sockets x cores x threads is too large")?;
            match cpus {
                Some(cpus) if cpus > product => {
                    return Err(format!(
                        "cpus = {cpus} is more than sockets x cores x threads = {product}"
                    ))
                }
                Some(cpus) => cpus,
                None => product,
            }
        }
        (None, None) => {
            return Err("give cpus, or sockets, cores_per_socket and threads_per_core".into())
        }
    };
    let memory_mb = match &e.memory {
        None => {
            return Err("memory is required (RealMemory: MiB, or a size such as \"500G\")".into())
        }
        Some(v) => parse_memory(v)?,
    };
    if e.gpus > 0 && e.gpu_type.is_empty() {
        return Err("gpus needs gpu_type (the GRES type agents report, e.g. \"h100\")".into());
    }
    if let Some(f) = e.features.iter().find(|f| !valid_feature_name(f)) {
        return Err(format!(
            "feature {f:?} must be letters, digits, '-', '_', '.', ':' or '='"
        ));
    }
    let mut features = e.features.clone();
    features.sort();
    features.dedup();
    Ok(pb::NodeDescription {
        group: e.names.clone(),
        cpus,
        sockets: s,
        cores_per_socket: e.cores_per_socket.unwrap_or(cpus / s / t).max(1),
        threads_per_core: t,
        memory_mb,
        gpus: e.gpus,
        gpu_type: e.gpu_type.clone(),
        features,
        weight: e.weight.unwrap_or(WEIGHT_DEFAULT),
        partitions: Vec::new(),
    })
}

/// Whether two groups' values describe the same node (the group's name aside).
fn same_shape(a: &pb::NodeDescription, b: &pb::NodeDescription) -> bool {
    pb::NodeDescription {
        group: String::new(),
        ..a.clone()
    } == pb::NodeDescription {
        group: String::new(),
        ..b.clone()
    }
}

/// A hostlist, every name checked.
fn expand(list: &str, line: usize) -> Result<Vec<String>, ClusterError> {
    let names = hostlist::expand(list).map_err(|reason| ClusterError { line, reason })?;
    if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
        return Err(ClusterError {
            line,
            reason: format!("node name {bad:?} must be letters, digits, '-', '_' or '.'"),
        });
    }
    Ok(names)
}

/// A node, partition or license name: what agents, `-p` and `-L` can name (no commas:
/// a node's partitions are kept comma-separated).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A memory size: MiB as a number, or a string with a unit K, M, G or T (a trailing `B`
/// allowed, as Slurm takes `16GB`).
fn parse_memory(v: &toml::Value) -> Result<u64, String> {
    let bad = || format!("memory {v}: expected MiB as a number or a size such as \"500G\"");
    let mib = match v {
        toml::Value::Integer(n) if *n > 0 => *n as u64,
        toml::Value::String(s) => {
            let upper = s.trim().to_ascii_uppercase();
            let upper = upper
                .strip_suffix('B')
                .filter(|u| u.ends_with(|c: char| c.is_ascii_alphabetic()))
                .unwrap_or(&upper);
            let (digits, unit) = upper.split_at(
                upper
                    .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                    .len(),
            );
            let n: u64 = digits.parse().map_err(|_| bad())?;
            let mul = match unit {
                "" | "M" => 1,
                "G" => 1024,
                "T" => 1024 * 1024,
                "K" => return Ok(n.div_ceil(1024).max(1)),
                _ => return Err(bad()),
            };
            n.checked_mul(mul).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    if mib == 0 {
        return Err(bad());
    }
    Ok(mib)
}

/// A time limit: minutes as a number, Slurm's `[D-]HH:MM:SS` forms as a string, or
/// `UNLIMITED`/`INFINITE` (`None`).
fn parse_time(v: &toml::Value) -> Result<Option<u64>, String> {
    match v {
        toml::Value::Integer(m) if *m >= 0 => Ok(Some(*m as u64 * 60)),
        toml::Value::String(s) => parse_time_text(s).map_err(|why| format!("{s:?}: {why}")),
        _ => Err(format!(
            "{v}: expected minutes or a time such as \"2-00:00:00\""
        )),
    }
}

/// Slurm's time formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
fn parse_time_text(s: &str) -> Result<Option<u64>, String> {
    if s.eq_ignore_ascii_case("UNLIMITED") || s.eq_ignore_ascii_case("INFINITE") {
        return Ok(None);
    }
    let field = |f: &str| -> Result<u64, String> {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) || f.len() > 9 {
            return Err("not a time (D-HH:MM:SS, HH:MM:SS, MM or UNLIMITED)".into());
        }
        f.parse().map_err(|_| "too large".to_string())
    };
    let (days, clock) = match s.split_once('-') {
        Some((d, c)) => (Some(field(d)?), c),
        None => (None, s),
    };
    let parts: Vec<u64> = clock.split(':').map(field).collect::<Result<_, _>>()?;
    let weights: &[u64] = match (days.is_some(), parts.len()) {
        (false, 1) => &[60],
        (false, 2) => &[60, 1],
        (false, 3) | (true, 3) => &[3600, 60, 1],
        (true, 1) => &[3600],
        (true, 2) => &[3600, 60],
        _ => return Err("not a time (D-HH:MM:SS, HH:MM:SS, MM or UNLIMITED)".into()),
    };
    let secs: u64 = parts.iter().zip(weights).map(|(p, w)| p * w).sum();
    Ok(Some(days.unwrap_or(0) * 86_400 + secs))
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
