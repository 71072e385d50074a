//! One topology model from GPU to spine, as a petgraph graph, and the placement questions
//! asked of it: which free GPUs of a node are best connected, and which nodes share the
//! lowest switch.
//!
//! Vertices are GPUs, NUMA nodes, nodes, switches and NVLink domains. Inside a node, every
//! GPU pair carries its link as the agent reported it (`nvidia-smi topo -m` levels: `NV<n>`
//! over NVSwitch or direct NVLink with n links, `PIX` one PCIe switch, `PXB` several, `PHB`
//! a host bridge, `NODE` one NUMA node, `SYS` across sockets) and every GPU an edge to its
//! NUMA node. Across nodes, node → leaf switch → … → spine from `topology.conf`
//! ([`NetworkConf`]), and node → NVLink domain (`BlockName=`).
//!
//! Placement runs per job on thousands of nodes, so [`Topology::build`] walks the graph once
//! and keeps per-node answers ([`NodePlace`]: the GPU link matrix, the chain of switches up
//! to the root, the NVLink domain); placement reads those, never the graph.

mod conf;
pub mod hostlist;

pub use conf::{BlockSpec, NetworkConf, SwitchSpec, TopologyError};

use petgraph::graph::{NodeIndex, UnGraph};
use petgraph::visit::EdgeRef;
use std::collections::HashMap;
use std::sync::Arc;

/// How two GPUs of one node are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLink {
    /// Both GPUs on one NVSwitch fabric (`NV<n>` with NVSwitch links on both).
    NvSwitch,
    /// Direct NVLink with this many links.
    NvLink(u32),
    /// One PCIe switch (`PIX`).
    PcieSwitch,
    /// Several PCIe switches, no host bridge (`PXB`).
    PcieMulti,
    /// Through a PCIe host bridge (`PHB`).
    HostBridge,
    /// Within one NUMA node (`NODE`).
    SameNuma,
    /// Across NUMA nodes / sockets (`SYS`), or not known (`UNKNOWN`).
    CrossSocket,
}

impl GpuLink {
    /// Parses an `nvidia-smi topo -m` level; `nvswitch` says both GPUs have NVSwitch links,
    /// which turns `NV<n>` into [`GpuLink::NvSwitch`].
    ///
    /// # Errors
    /// A message naming the level when it is none of `NV<n>` (n ≥ 1), `PIX`, `PXB`, `PHB`,
    /// `NODE`, `SYS`, `UNKNOWN`.
    pub fn parse(level: &str, nvswitch: bool) -> Result<GpuLink, String> {
        Ok(match level {
            "PIX" => GpuLink::PcieSwitch,
            "PXB" => GpuLink::PcieMulti,
            "PHB" => GpuLink::HostBridge,
            "NODE" => GpuLink::SameNuma,
            "SYS" | "UNKNOWN" => GpuLink::CrossSocket,
            nv => match nv.strip_prefix("NV").and_then(|n| n.parse::<u32>().ok()) {
                Some(n) if n >= 1 && nvswitch => GpuLink::NvSwitch,
                Some(n) if n >= 1 => GpuLink::NvLink(n),
                _ => return Err(format!("unknown GPU link level {level:?}")),
            },
        })
    }

    /// Cost of the link, lower is better: NVSwitch 1, NVLink 2 + 12/n (1 link: 14, 12
    /// links: 3), PIX 20, PXB 30, PHB 40, NODE 50, SYS 60.
    pub fn cost(self) -> u8 {
        match self {
            GpuLink::NvSwitch => 1,
            GpuLink::NvLink(n) => 2 + (12 / n.clamp(1, 12)) as u8,
            GpuLink::PcieSwitch => 20,
            GpuLink::PcieMulti => 30,
            GpuLink::HostBridge => 40,
            GpuLink::SameNuma => 50,
            GpuLink::CrossSocket => 60,
        }
    }
}

/// One node's GPUs and links as its agent reported them (input of [`Topology::build`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLinks {
    /// Node name.
    pub name: String,
    /// `(NVML index, NUMA node)` per GPU.
    pub gpus: Vec<(u32, u32)>,
    /// `(index a, index b, link)` per pair; pairs not listed count as [`GpuLink::CrossSocket`].
    pub pairs: Vec<(u32, u32, GpuLink)>,
}

/// The link costs among one node's GPUs, by NVML index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMatrix {
    n: usize,
    cost: Vec<u8>,
    numa: Vec<u32>,
    /// Every pair costs the same and every GPU is on one NUMA node: any set is as good.
    uniform: bool,
}

/// How good a GPU set is; compared field by field, lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SetQuality {
    /// The worst link cost inside the set (0 for one GPU).
    pub worst_link: u8,
    /// NUMA nodes the set spans.
    pub numa_spanned: u8,
    /// Sum of the link costs of every pair.
    pub link_sum: u32,
    /// Free GPUs left behind on the NUMA nodes the set touches: fewer means the set packs
    /// into a partly used island and leaves whole islands for larger jobs.
    pub spill: u32,
}

impl SetQuality {
    /// Maps the quality to a score in `[-1, 1]`: `1 - worst_link / 30 - 0.25 * (numa - 1)`,
    /// clamped, so an NVSwitch set on one NUMA node scores 0.97, a PCIe-switch pair 0.33, a
    /// set across sockets -1.
    pub fn score(self) -> f64 {
        let numa_extra = f64::from(self.numa_spanned.max(1) - 1);
        (1.0 - f64::from(self.worst_link) / 30.0 - 0.25 * numa_extra).clamp(-1.0, 1.0)
    }
}

/// Above this many candidate sets, [`GpuMatrix::best_set`] grows sets greedily instead.
const SETS_EXHAUSTIVE_MAX: u64 = 4096;

impl GpuMatrix {
    fn new(links: &NodeLinks) -> GpuMatrix {
        let n = links
            .gpus
            .iter()
            .map(|&(i, _)| i as usize + 1)
            .max()
            .unwrap_or(0);
        let mut cost = vec![GpuLink::CrossSocket.cost(); n * n];
        let mut numa = vec![0; n];
        for &(i, node) in &links.gpus {
            numa[i as usize] = node;
            cost[i as usize * n + i as usize] = 0;
        }
        for &(a, b, link) in &links.pairs {
            let (a, b) = (a as usize, b as usize);
            if a < n && b < n && a != b {
                cost[a * n + b] = link.cost();
                cost[b * n + a] = link.cost();
            }
        }
        let off: Vec<u8> = (0..n * n)
            .filter(|k| k / n != k % n)
            .map(|k| cost[k])
            .collect();
        let uniform = off.windows(2).all(|w| w[0] == w[1]) && numa.windows(2).all(|w| w[0] == w[1]);
        GpuMatrix {
            n,
            cost,
            numa,
            uniform,
        }
    }

    /// Link cost between GPUs `a` and `b` (NVML indexes); unknown GPUs cost as `SYS`.
    pub fn cost(&self, a: u32, b: u32) -> u8 {
        let (a, b) = (a as usize, b as usize);
        if a < self.n && b < self.n {
            self.cost[a * self.n + b]
        } else {
            GpuLink::CrossSocket.cost()
        }
    }

    fn numa_of(&self, g: u32) -> u32 {
        self.numa.get(g as usize).copied().unwrap_or(u32::MAX)
    }

    /// Quality of `set` given the node's `free` GPUs (both NVML indexes).
    pub fn quality(&self, set: &[u32], free: &[u32]) -> SetQuality {
        let mut q = SetQuality {
            worst_link: 0,
            numa_spanned: 0,
            link_sum: 0,
            spill: 0,
        };
        let mut numas: Vec<u32> = Vec::with_capacity(4);
        for (i, &a) in set.iter().enumerate() {
            for &b in &set[i + 1..] {
                let c = self.cost(a, b);
                q.worst_link = q.worst_link.max(c);
                q.link_sum += u32::from(c);
            }
            let m = self.numa_of(a);
            if !numas.contains(&m) {
                numas.push(m);
            }
        }
        q.numa_spanned = numas.len() as u8;
        q.spill = free
            .iter()
            .filter(|g| !set.contains(g) && numas.contains(&self.numa_of(**g)))
            .count() as u32;
        q
    }

    /// The best `k` of the `free` GPUs (NVML indexes, ascending) by [`SetQuality`], ties to
    /// the lexicographically lowest indexes, and its quality. Exhaustive up to
    /// `SETS_EXHAUSTIVE_MAX` candidate sets, else grown greedily from each seed GPU.
    ///
    /// # Panics
    /// If `k > free.len()`: the caller checks that the node has `k` free GPUs.
    pub fn best_set(&self, free: &[u32], k: usize) -> (Vec<u32>, SetQuality) {
        assert!(k <= free.len(), "asked for {k} GPUs of {} free", free.len());
        if self.uniform || k == free.len() || k == 0 {
            let set = free[..k].to_vec();
            let q = self.quality(&set, free);
            return (set, q);
        }
        if binomial(free.len() as u64, k as u64) <= SETS_EXHAUSTIVE_MAX {
            let mut best: Option<(SetQuality, Vec<u32>)> = None;
            let mut pick: Vec<usize> = (0..k).collect();
            loop {
                let set: Vec<u32> = pick.iter().map(|&i| free[i]).collect();
                let q = self.quality(&set, free);
                if best.as_ref().is_none_or(|(bq, _)| q < *bq) {
                    best = Some((q, set));
                }
                if !next_combination(&mut pick, free.len()) {
                    break;
                }
            }
            let (q, set) = best.expect("at least one combination");
            return (set, q);
        }
        let mut best: Option<(SetQuality, Vec<u32>)> = None;
        for &seed in free {
            let mut set = vec![seed];
            while set.len() < k {
                let next = free
                    .iter()
                    .filter(|g| !set.contains(g))
                    .min_by_key(|&&g| {
                        (
                            set.iter().map(|&s| self.cost(s, g)).max(),
                            u32::from(self.numa_of(g) != self.numa_of(seed)),
                            g,
                        )
                    })
                    .copied()
                    .expect("k <= free");
                set.push(next);
            }
            set.sort_unstable();
            let q = self.quality(&set, free);
            if best.as_ref().is_none_or(|(bq, bs)| (q, &set) < (*bq, bs)) {
                best = Some((q, set));
            }
        }
        let (q, set) = best.expect("free is not empty");
        (set, q)
    }
}

fn binomial(n: u64, k: u64) -> u64 {
    let k = k.min(n - k);
    let mut r: u64 = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
        if r > SETS_EXHAUSTIVE_MAX {
            return r;
        }
    }
    r
}

/// Advances `pick` (ascending positions in `0..n`) to the next combination; false at the end.
fn next_combination(pick: &mut [usize], n: usize) -> bool {
    let k = pick.len();
    for i in (0..k).rev() {
        if pick[i] < n - k + i {
            pick[i] += 1;
            for j in i + 1..k {
                pick[j] = pick[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// Where one node sits: its GPU links, its switches from leaf to root, its NVLink domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlace {
    /// GPU link costs, when the node reported its topology.
    pub gpus: Option<Arc<GpuMatrix>>,
    /// Switch ids from the leaf up to the root (empty: the node is in no switch).
    pub switches: Vec<u32>,
    /// NVLink domain id.
    pub domain: Option<u32>,
}

/// What a vertex of the model stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vertex {
    /// A GPU: node name, NVML index.
    Gpu(String, u32),
    /// A NUMA node: node name, NUMA id.
    Numa(String, u32),
    /// A node.
    Node(String),
    /// A switch (id into [`NetworkConf::switches`]).
    Switch(u32),
    /// A multi-node NVLink domain (id into [`NetworkConf::blocks`]).
    Domain(u32),
}

/// What an edge of the model stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// GPU ↔ GPU.
    Gpu(GpuLink),
    /// GPU ↔ its NUMA node.
    Affinity,
    /// GPU or NUMA node ↔ its node.
    Host,
    /// Node or switch ↔ the switch above it.
    Uplink,
    /// Node ↔ its NVLink domain.
    NvlDomain,
}

/// One switch for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRow {
    /// Switch name.
    pub name: String,
    /// 0 for a leaf, one above its highest child otherwise.
    pub level: u32,
    /// `LinkSpeed=` when given.
    pub link_speed: Option<u64>,
    /// Every node below it, sorted by name.
    pub nodes: Vec<String>,
    /// Child switches.
    pub switches: Vec<String>,
}

/// The whole model plus the per-node answers placement reads.
#[derive(Debug, Default)]
pub struct Topology {
    graph: UnGraph<Vertex, Edge>,
    conf: NetworkConf,
    levels: Vec<u32>,
    places: HashMap<String, Arc<NodePlace>>,
}

impl PartialEq for Topology {
    /// The graph is derived from the configuration and the places, so those decide.
    fn eq(&self, other: &Topology) -> bool {
        self.conf == other.conf && self.places == other.places
    }
}

impl Topology {
    /// Builds the model from the network tree and the nodes' GPU links. Nodes of `conf`
    /// that are not in `nodes` still get their place (they may register later).
    pub fn build(conf: &NetworkConf, nodes: &[NodeLinks]) -> Topology {
        let mut g = UnGraph::<Vertex, Edge>::new_undirected();
        let sw: Vec<NodeIndex> = (0..conf.switches.len() as u32)
            .map(|i| g.add_node(Vertex::Switch(i)))
            .collect();
        let by_name: HashMap<&str, usize> = conf
            .switches
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut node_ix: HashMap<String, NodeIndex> = HashMap::new();
        let mut vertex = |g: &mut UnGraph<Vertex, Edge>, name: &str| {
            *node_ix
                .entry(name.to_string())
                .or_insert_with(|| g.add_node(Vertex::Node(name.to_string())))
        };
        // The parse checked the tree, so every child exists and has one parent.
        let mut parent: Vec<Option<usize>> = vec![None; conf.switches.len()];
        for (p, s) in conf.switches.iter().enumerate() {
            for child in &s.switches {
                let c = by_name[child.as_str()];
                parent[c] = Some(p);
                g.add_edge(sw[c], sw[p], Edge::Uplink);
            }
            for n in &s.nodes {
                let v = vertex(&mut g, n);
                g.add_edge(v, sw[p], Edge::Uplink);
            }
        }
        for (b, block) in conf.blocks.iter().enumerate() {
            let d = g.add_node(Vertex::Domain(b as u32));
            for n in &block.nodes {
                let v = vertex(&mut g, n);
                g.add_edge(v, d, Edge::NvlDomain);
            }
        }
        let mut matrices: HashMap<&str, Arc<GpuMatrix>> = HashMap::new();
        for links in nodes {
            let v = vertex(&mut g, &links.name);
            add_gpus(&mut g, v, links);
            if !links.gpus.is_empty() {
                matrices.insert(&links.name, Arc::new(GpuMatrix::new(links)));
            }
        }
        let levels = switch_levels(conf, &by_name);
        let mut places = HashMap::new();
        for (name, &v) in &node_ix {
            let mut switches = Vec::new();
            let mut domain = None;
            for e in g.edges(v) {
                match (e.weight(), &g[e.target()]) {
                    (Edge::Uplink, Vertex::Switch(s)) => switches.push(*s),
                    (Edge::NvlDomain, Vertex::Domain(d)) => domain = Some(*d),
                    _ => {}
                }
            }
            // Walk up from the leaf; the parse ruled out cycles.
            while let Some(p) = switches.last().and_then(|&s| parent[s as usize]) {
                switches.push(p as u32);
            }
            places.insert(
                name.clone(),
                Arc::new(NodePlace {
                    gpus: matrices.get(name.as_str()).cloned(),
                    switches,
                    domain,
                }),
            );
        }
        Topology {
            graph: g,
            conf: conf.clone(),
            levels,
            places,
        }
    }

    /// Where node `name` sits; `None` for a node neither configured nor reported.
    pub fn place(&self, name: &str) -> Option<&NodePlace> {
        self.places.get(name).map(|p| &**p)
    }

    /// [`Topology::place`], shared.
    pub fn place_arc(&self, name: &str) -> Option<Arc<NodePlace>> {
        self.places.get(name).cloned()
    }

    /// The network tree in force.
    pub fn conf(&self) -> &NetworkConf {
        &self.conf
    }

    /// Whether any switch or NVLink domain is configured (else gangs ignore the network).
    pub fn has_network(&self) -> bool {
        !self.conf.switches.is_empty() || !self.conf.blocks.is_empty()
    }

    /// The model itself, for inspection.
    pub fn graph(&self) -> &UnGraph<Vertex, Edge> {
        &self.graph
    }

    /// Level of switch `id`: 0 for a leaf, one above its highest child otherwise.
    pub fn level(&self, id: u32) -> u32 {
        self.levels[id as usize]
    }

    /// The lowest switch above both nodes, `None` when they share none (or are unknown).
    pub fn common_switch(&self, a: &str, b: &str) -> Option<u32> {
        let (pa, pb) = (self.place(a)?, self.place(b)?);
        pa.switches
            .iter()
            .find(|s| pb.switches.contains(s))
            .copied()
    }

    /// Every switch as `scontrol show topology` prints it, in file order.
    pub fn switch_rows(&self) -> Vec<SwitchRow> {
        self.conf
            .switches
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut nodes: Vec<String> = self
                    .places
                    .iter()
                    .filter(|(_, p)| p.switches.contains(&(i as u32)))
                    .map(|(n, _)| n.clone())
                    .collect();
                nodes.sort();
                SwitchRow {
                    name: s.name.clone(),
                    level: self.levels[i],
                    link_speed: s.link_speed,
                    nodes,
                    switches: s.switches.clone(),
                }
            })
            .collect()
    }
}

/// The nodes a multi-node job takes, as positions into `places` (the feasible candidates in
/// rank order, best first), or the fewest leaf switches any choice needs when that is more
/// than `leaves_max`.
///
/// In order of preference: one NVLink domain; then, level by level from the leaves up, one
/// switch's subtree. Among the subtrees of a level that hold `wanted` candidates the choice
/// is the one needing the fewest leaves, then the one with the fewest candidates (best fit:
/// bigger subtrees stay whole for bigger jobs), then the lowest switch id. Inside the
/// subtree, whole leaves are taken fullest first (fewest leaves), each leaf's candidates in
/// rank order. Candidates with no switch count as a leaf each.
///
/// # Errors
/// The fewest leaves a choice would need, when every choice needs more than `leaves_max`.
pub fn choose_nodes(
    topo: &Topology,
    places: &[Option<&NodePlace>],
    wanted: usize,
    leaves_max: Option<usize>,
) -> Result<Vec<usize>, usize> {
    let leaf = |i: usize| -> u64 {
        match places[i].and_then(|p| p.switches.first()) {
            Some(&s) => u64::from(s),
            None => (1 << 32) + i as u64, // a leaf of its own
        }
    };
    let mut fewest = usize::MAX;
    let mut consider = |groups: HashMap<u64, Vec<usize>>| -> Option<Vec<usize>> {
        let mut best: Option<((usize, usize, u64), Vec<usize>)> = None;
        for (id, members) in groups {
            if members.len() < wanted {
                continue;
            }
            let (pick, leaves) = fewest_leaves(&members, wanted, &leaf);
            fewest = fewest.min(leaves);
            if leaves_max.is_some_and(|m| leaves > m) {
                continue;
            }
            let key = (leaves, members.len(), id);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, pick));
            }
        }
        best.map(|(_, pick)| pick)
    };
    let mut domains: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, p) in places.iter().enumerate() {
        if let Some(d) = p.and_then(|p| p.domain) {
            domains.entry(u64::from(d)).or_default().push(i);
        }
    }
    if let Some(pick) = consider(domains) {
        return Ok(pick);
    }
    let top = topo.levels.iter().copied().max().unwrap_or(0);
    for level in 0..=top {
        let mut groups: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, p) in places.iter().enumerate() {
            let above = p.and_then(|p| {
                p.switches
                    .iter()
                    .find(|&&s| topo.levels[s as usize] >= level)
            });
            if let Some(&s) = above {
                groups.entry(u64::from(s)).or_default().push(i);
            }
        }
        if let Some(pick) = consider(groups) {
            return Ok(pick);
        }
    }
    // No switch holds them all (separate trees, or nodes outside the tree).
    if let Some(pick) = consider(HashMap::from([(u64::MAX, (0..places.len()).collect())])) {
        return Ok(pick);
    }
    Err(fewest)
}

/// `wanted` of `members` (ascending rank) from as few leaves as possible: fullest leaves
/// first (ties to the leaf holding the better-ranked candidate), then back in rank order.
fn fewest_leaves(
    members: &[usize],
    wanted: usize,
    leaf: &impl Fn(usize) -> u64,
) -> (Vec<usize>, usize) {
    let mut by_leaf: Vec<(u64, Vec<usize>)> = Vec::new();
    let mut slot: HashMap<u64, usize> = HashMap::new();
    for &m in members {
        let l = leaf(m);
        let k = *slot.entry(l).or_insert_with(|| {
            by_leaf.push((l, Vec::new()));
            by_leaf.len() - 1
        });
        by_leaf[k].1.push(m);
    }
    // Stable: equal sizes keep first-seen order, i.e. the better-ranked leaf first.
    by_leaf.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut pick = Vec::with_capacity(wanted);
    let mut leaves = 0;
    for (_, v) in &by_leaf {
        if pick.len() == wanted {
            break;
        }
        leaves += 1;
        pick.extend(v.iter().take(wanted - pick.len()));
    }
    pick.sort_unstable();
    (pick, leaves)
}

fn add_gpus(g: &mut UnGraph<Vertex, Edge>, node: NodeIndex, links: &NodeLinks) {
    let mut gpu_ix = HashMap::new();
    let mut numa_ix = HashMap::new();
    for &(i, numa) in &links.gpus {
        let v = g.add_node(Vertex::Gpu(links.name.clone(), i));
        g.add_edge(v, node, Edge::Host);
        let m = *numa_ix.entry(numa).or_insert_with(|| {
            let m = g.add_node(Vertex::Numa(links.name.clone(), numa));
            g.add_edge(m, node, Edge::Host);
            m
        });
        g.add_edge(v, m, Edge::Affinity);
        gpu_ix.insert(i, v);
    }
    for &(a, b, link) in &links.pairs {
        if let (Some(&va), Some(&vb)) = (gpu_ix.get(&a), gpu_ix.get(&b)) {
            g.add_edge(va, vb, Edge::Gpu(link));
        }
    }
}

fn switch_levels(conf: &NetworkConf, by_name: &HashMap<&str, usize>) -> Vec<u32> {
    fn level(
        i: usize,
        conf: &NetworkConf,
        by_name: &HashMap<&str, usize>,
        memo: &mut Vec<Option<u32>>,
    ) -> u32 {
        if let Some(l) = memo[i] {
            return l;
        }
        let l = conf.switches[i]
            .switches
            .iter()
            .map(|c| 1 + level(by_name[c.as_str()], conf, by_name, memo))
            .max()
            .unwrap_or(0);
        memo[i] = Some(l);
        l
    }
    let mut memo = vec![None; conf.switches.len()];
    (0..conf.switches.len())
        .map(|i| level(i, conf, by_name, &mut memo))
        .collect()
}

#[cfg(test)]
mod tests;
