//! The network tree from a Slurm-style `topology.conf`, parsed and checked.
//!
//! One statement per line, `#` starts a comment, keys are case-insensitive as in Slurm:
//!
//! ```text
//! SwitchName=leaf0 Nodes=node[001-032]         # a leaf switch and its nodes
//! SwitchName=spine Switches=leaf[0-3]          # an upper switch and its children
//! SwitchName=leaf9 Nodes=gpu[1-4] LinkSpeed=400 # LinkSpeed is kept and shown, never used
//! BlockName=nvl0 Nodes=node[001-018]           # a multi-node NVLink domain (NVL72), as
//!                                              # Slurm's topology/block plugin names it
//! ```
//!
//! A switch has either `Nodes` (a leaf) or `Switches`. Refused, with the line number and
//! nothing kept: unknown keys or statements, a key twice on a line, empty values, bad host
//! lists, a switch or block defined twice, a child switch never defined or under two
//! parents, a cycle of switches, a node under two leaves or in two blocks.

use super::hostlist;
use petgraph::algo::toposort;
use petgraph::graph::DiGraph;
use std::collections::HashMap;

/// A `topology.conf` that cannot be used; nothing of it is installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A line is malformed (unknown key, missing value…).
    #[error("topology line {line}: {detail}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The statements do not form a tree (unknown child, cycle, node under two leaves…).
    #[error("topology: {0}")]
    Tree(String),
}

/// One `SwitchName=` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSpec {
    /// Switch name.
    pub name: String,
    /// Nodes directly under it (leaf switches only).
    pub nodes: Vec<String>,
    /// Child switches (upper switches only).
    pub switches: Vec<String>,
    /// `LinkSpeed=` as written (Slurm's own unit-less number); shown, not used.
    pub link_speed: Option<u64>,
}

/// One `BlockName=` statement: nodes sharing one multi-node NVLink domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// Domain name.
    pub name: String,
    /// Its nodes.
    pub nodes: Vec<String>,
}

/// A checked network tree: switches in file order, then NVLink domains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConf {
    /// Every switch, in file order.
    pub switches: Vec<SwitchSpec>,
    /// Every NVLink domain, in file order.
    pub blocks: Vec<BlockSpec>,
}

impl NetworkConf {
    /// Parses and checks `text` (see the module docs for the format).
    ///
    /// # Errors
    /// [`TopologyError`] naming the first fault; nothing is returned with it.
    pub fn parse(text: &str) -> Result<NetworkConf, TopologyError> {
        let mut conf = NetworkConf::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |detail: String| TopologyError::Line {
                line: i + 1,
                detail,
            };
            let pairs = split_pairs(line).map_err(err)?;
            conf.statement(&pairs).map_err(err)?;
        }
        conf.check_tree()?;
        Ok(conf)
    }

    fn statement(&mut self, pairs: &[(String, String)]) -> Result<(), String> {
        let (first, name) = &pairs[0];
        let mut nodes = None;
        let mut switches = None;
        let mut link_speed = None;
        for (key, value) in &pairs[1..] {
            match key.as_str() {
                "nodes" => nodes = Some(hostlist::expand(value)?),
                "switches" if first == "switchname" => switches = Some(hostlist::expand(value)?),
                "linkspeed" if first == "switchname" => {
                    link_speed = Some(
                        value
                            .parse()
                            .map_err(|_| format!("LinkSpeed={value} is not a number"))?,
                    )
                }
                // Slurm's block plugin sizes come from the global BlockSizes= line, which
                // berth does not take: every domain is one block.
                _ => return Err(format!("unknown key {key:?} in a {first} statement")),
            }
        }
        match first.as_str() {
            "switchname" => {
                if self.switches.iter().any(|s| &s.name == name) {
                    return Err(format!("switch {name} is defined twice"));
                }
                let (nodes, switches) = match (nodes, switches) {
                    (Some(n), None) => (n, Vec::new()),
                    (None, Some(s)) => (Vec::new(), s),
                    (Some(_), Some(_)) => return Err(format!("switch {name} has both Nodes= and Switches=; a switch has one or the other")),
                    (None, None) => return Err(format!("switch {name} has neither Nodes= nor Switches=")),
                };
                self.switches.push(SwitchSpec {
                    name: name.clone(),
                    nodes,
                    switches,
                    link_speed,
                });
            }
            "blockname" => {
                if self.blocks.iter().any(|b| &b.name == name) {
                    return Err(format!("block {name} is defined twice"));
                }
                let nodes = nodes.ok_or_else(|| format!("block {name} has no Nodes="))?;
                self.blocks.push(BlockSpec {
                    name: name.clone(),
                    nodes,
                });
            }
            _ => unreachable!("split_pairs admits only SwitchName and BlockName first"),
        }
        Ok(())
    }

    /// Children exist and have one parent, no cycles, a node under one leaf and in one block.
    fn check_tree(&self) -> Result<(), TopologyError> {
        let tree = |d: String| TopologyError::Tree(d);
        let ids: HashMap<&str, usize> = self
            .switches
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut g = DiGraph::<usize, ()>::new();
        let v: Vec<_> = (0..self.switches.len()).map(|i| g.add_node(i)).collect();
        let mut parent: HashMap<usize, usize> = HashMap::new();
        for (p, s) in self.switches.iter().enumerate() {
            for child in &s.switches {
                let &c = ids.get(child.as_str()).ok_or_else(|| {
                    tree(format!(
                        "switch {} names child switch {child}, which is not defined",
                        s.name
                    ))
                })?;
                if let Some(&other) = parent.get(&c) {
                    return Err(tree(format!(
                        "switch {child} is under both {} and {}",
                        self.switches[other].name, s.name
                    )));
                }
                parent.insert(c, p);
                g.add_edge(v[p], v[c], ());
            }
        }
        if let Err(cycle) = toposort(&g, None) {
            let name = &self.switches[g[cycle.node_id()]].name;
            return Err(tree(format!("switches form a cycle through {name}")));
        }
        let mut leaf_of: HashMap<&str, &str> = HashMap::new();
        for s in &self.switches {
            for n in &s.nodes {
                if let Some(other) = leaf_of.insert(n, &s.name) {
                    return Err(tree(format!(
                        "node {n} is under two leaf switches, {other} and {}",
                        s.name
                    )));
                }
            }
        }
        let mut block_of: HashMap<&str, &str> = HashMap::new();
        for b in &self.blocks {
            for n in &b.nodes {
                if let Some(other) = block_of.insert(n, &b.name) {
                    return Err(tree(format!(
                        "node {n} is in two NVLink blocks, {other} and {}",
                        b.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `Key=Value` words, keys lower-cased; the first must be `SwitchName` or `BlockName`.
fn split_pairs(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for word in line.split_whitespace() {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not Key=Value"))?;
        let key = k.to_ascii_lowercase();
        if v.is_empty() {
            return Err(format!("{k}= has no value"));
        }
        if pairs.iter().any(|(seen, _)| *seen == key) {
            return Err(format!("{k}= is given twice"));
        }
        pairs.push((key, v.to_string()));
    }
    match pairs.first().map(|(k, _)| k.as_str()) {
        Some("switchname" | "blockname") => Ok(pairs),
        _ => Err(format!(
            "a statement starts with SwitchName= or BlockName=, not {:?}",
            line.split_whitespace().next().unwrap_or("")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# two leaves under a spine\n\
        SwitchName=leaf0 Nodes=n[1-2]\n\
        switchname=leaf1 nodes=n[3-4] LinkSpeed=400   # keys any case\n\
        SwitchName=spine Switches=leaf[0-1]\n\
        BlockName=nvl0 Nodes=n[1-3]\n";

    #[test]
    fn parses_switches_and_blocks() {
        let c = NetworkConf::parse(GOOD).unwrap();
        assert_eq!(c.switches.len(), 3);
        assert_eq!(c.switches[1].nodes, vec!["n3", "n4"]);
        assert_eq!(c.switches[1].link_speed, Some(400));
        assert_eq!(c.switches[2].switches, vec!["leaf0", "leaf1"]);
        assert_eq!(c.blocks[0].nodes, vec!["n1", "n2", "n3"]);
        assert_eq!(
            NetworkConf::parse("\n# nothing\n").unwrap(),
            NetworkConf::default()
        );
    }

    #[test]
    fn refuses_bad_input_naming_the_fault() {
        let cases = [
            ("SwitchName=a Nodes=n1 Color=red", "unknown key"),
            ("Switch=a Nodes=n1", "starts with SwitchName"),
            ("SwitchName=a", "neither"),
            ("SwitchName=a Nodes=n1 Switches=b", "both"),
            ("SwitchName=a Nodes=", "no value"),
            ("SwitchName=a Nodes=n1 Nodes=n2", "twice"),
            ("SwitchName=a Nodes=n[1-", "unbalanced"),
            ("SwitchName=a Nodes=n1 LinkSpeed=fast", "not a number"),
            (
                "SwitchName=a Nodes=n1\nSwitchName=a Nodes=n2",
                "defined twice",
            ),
            ("SwitchName=s Switches=leaf7", "not defined"),
            ("SwitchName=a Switches=b\nSwitchName=b Switches=a", "cycle"),
            ("SwitchName=a Switches=a", "cycle"),
            (
                "SwitchName=l Nodes=n1\nSwitchName=a Switches=l\nSwitchName=b Switches=l",
                "under both",
            ),
            (
                "SwitchName=a Nodes=n[1-2]\nSwitchName=b Nodes=n2",
                "two leaf switches",
            ),
            (
                "BlockName=x Nodes=n1\nBlockName=y Nodes=n1",
                "two NVLink blocks",
            ),
            ("BlockName=x Switches=a", "unknown key"),
            ("BlockName=x", "no Nodes"),
            ("SwitchName=a Nodes=n1 junk", "not Key=Value"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            match NetworkConf::parse(text) {
                Ok(c) => panic!("#{i}: want error {want:?}, got {c:?}"),
                Err(e) => assert!(e.to_string().contains(want), "#{i}: want {want:?}, got {e}"),
            }
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = NetworkConf::parse("SwitchName=a Nodes=n1\n\nSwitchName=b Bogus=1").unwrap_err();
        assert_eq!(
            e,
            TopologyError::Line {
                line: 3,
                detail: "unknown key \"bogus\" in a switchname statement".into()
            }
        );
    }
}
