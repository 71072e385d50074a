//! `sinfo` output: nodes grouped by partition and state, or one line per node (`-N`).
//!
//! Slurm's sinfo prints one line per (partition, state, …) group with a compressed node
//! list; its `-o` letters and headers are followed exactly so scripts keep working. berth's
//! default layout adds what a GPU cluster's users look for first — how many GPUs exist and
//! how many are taken — as `GRES` and `GRES_USED` columns (totals over the line's nodes)
//! before `NODELIST`. Those two columns have no `-o` letter in Slurm, so they appear only in
//! the default layouts.
//!
//! Node states: a node is `down` when berthd marked it so, `idle` when nothing is
//! allocated, `alloc` when all of its GPUs (or, without GPUs, all CPUs) are taken, `mix`
//! otherwise. A GPU is taken when its `job_id` is not 0.

use std::collections::BTreeMap;

use berth_proto::v1::{Node, NodeInventory, NodeState};

use crate::format::{self, FormatError, Token};
use crate::hostlist;

/// How much of a node is in use, as sinfo and scontrol name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeUse {
    /// Up, nothing allocated.
    Idle,
    /// Up, partly allocated.
    Mixed,
    /// Up, every GPU (or every CPU on a GPU-less node) allocated.
    Allocated,
    /// Marked down by berthd.
    Down,
    /// The state was never set.
    Unknown,
}

impl NodeUse {
    /// sinfo's `%t`: `idle`, `mix`, `alloc`, `down`, `unk`.
    pub fn compact(self) -> &'static str {
        match self {
            NodeUse::Idle => "idle",
            NodeUse::Mixed => "mix",
            NodeUse::Allocated => "alloc",
            NodeUse::Down => "down",
            NodeUse::Unknown => "unk",
        }
    }

    /// sinfo's `%T`: `idle`, `mixed`, `allocated`, `down`, `unknown` (scontrol prints it in
    /// capitals).
    pub fn long(self) -> &'static str {
        match self {
            NodeUse::Idle => "idle",
            NodeUse::Mixed => "mixed",
            NodeUse::Allocated => "allocated",
            NodeUse::Down => "down",
            NodeUse::Unknown => "unknown",
        }
    }
}

static EMPTY_INVENTORY: std::sync::LazyLock<NodeInventory> =
    std::sync::LazyLock::new(NodeInventory::default);

/// The node's inventory; an empty one when the message carried none.
pub fn inventory(node: &Node) -> &NodeInventory {
    node.inventory.as_ref().unwrap_or(&EMPTY_INVENTORY)
}

/// The node's state as sinfo reports it (see the module doc for the rules).
pub fn node_use(node: &Node) -> NodeUse {
    let inv = inventory(node);
    match node.state() {
        NodeState::Down => return NodeUse::Down,
        NodeState::Unspecified => return NodeUse::Unknown,
        NodeState::Up => {}
    }
    let gpus_used = inv.gpus.iter().filter(|g| g.job_id != 0).count();
    if gpus_used == 0 && node.cpus_alloc == 0 && node.memory_alloc_mb == 0 {
        return NodeUse::Idle;
    }
    let full = if inv.gpus.is_empty() {
        inv.cpus > 0 && node.cpus_alloc >= inv.cpus
    } else {
        gpus_used == inv.gpus.len()
    };
    if full {
        NodeUse::Allocated
    } else {
        NodeUse::Mixed
    }
}

/// GPU counts per GRES type over `nodes`, types in first-seen order: (type, total, used,
/// indexes in use).
fn gpu_counts<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<(String, u32, u32, Vec<u32>)> {
    let mut counts: Vec<(String, u32, u32, Vec<u32>)> = Vec::new();
    for gpu in nodes.into_iter().flat_map(|n| &inventory(n).gpus) {
        let pos = match counts.iter().position(|c| c.0 == gpu.gres_type) {
            Some(pos) => pos,
            None => {
                counts.push((gpu.gres_type.clone(), 0, 0, Vec::new()));
                counts.len() - 1
            }
        };
        let entry = &mut counts[pos];
        entry.1 += 1;
        // In use: held whole, or some job holds a share or a MIG slice of it.
        if gpu.job_id != 0 || !gpu.share_job_ids.is_empty() || !gpu.mig_held.is_empty() {
            entry.2 += 1;
            entry.3.push(gpu.index);
        }
    }
    counts
}

/// `gpu:h100:8` (or `gpu:8` for an untyped GPU); several types comma-separated.
fn gres_name(kind: &str, count: u32) -> String {
    if kind.is_empty() {
        format!("gpu:{count}")
    } else {
        format!("gpu:{kind}:{count}")
    }
}

/// Total GPUs of `nodes` in Slurm's GRES form (`gpu:h100:8`); `(null)` without GPUs.
pub fn gres<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> String {
    let parts: Vec<String> = gpu_counts(nodes)
        .iter()
        .map(|(kind, total, _, _)| gres_name(kind, *total))
        .collect();
    if parts.is_empty() {
        "(null)".to_string()
    } else {
        parts.join(",")
    }
}

/// GPUs in use on `nodes` (`gpu:h100:3`; a GPU counts once whether a job holds it whole or
/// jobs hold shares or MIG slices of it), with Slurm's `(IDX:0-2)` suffix when
/// `with_indexes` (meaningful for one node only); `(null)` without GPUs.
pub fn gres_used<'a>(nodes: impl IntoIterator<Item = &'a Node>, with_indexes: bool) -> String {
    let parts: Vec<String> = gpu_counts(nodes)
        .iter()
        .map(|(kind, _, used, indexes)| {
            let name = gres_name(kind, *used);
            match (with_indexes, indexes.is_empty()) {
                (false, _) => name,
                (true, true) => format!("{name}(IDX:N/A)"),
                (true, false) => format!("{name}(IDX:{})", hostlist::compress_numbers(indexes)),
            }
        })
        .collect();
    if parts.is_empty() {
        "(null)".to_string()
    } else {
        parts.join(",")
    }
}

/// The partitions a node belongs to (its inventory may list several, comma-separated).
pub fn partitions(node: &Node) -> Vec<String> {
    let names: Vec<String> = inventory(node)
        .partition
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        vec!["(null)".to_string()]
    } else {
        names
    }
}

/// What a column shows: a Slurm `-o` letter or one of berth's GPU total columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Letter(char),
    GresTotal,
    GresUsedTotal,
}

/// How wide a column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    /// `%N`: natural width.
    Natural,
    /// `%10N`: pad and cut.
    Fixed(usize),
    /// As wide as its widest value or header (Slurm's `%#P`).
    Fit,
}

/// One piece of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Literal(String),
    Cell {
        column: Column,
        right: bool,
        width: Width,
    },
}

/// Letters that are sinfo fields in Slurm but have no berth data yet.
const UNSUPPORTED: &str = "BdghHILMoOprsSuUVwXYzZ";

/// The column title Slurm prints, or why the letter is refused.
fn header_of(column: Column) -> Result<&'static str, FormatError> {
    let letter = match column {
        Column::GresTotal => return Ok("GRES"),
        Column::GresUsedTotal => return Ok("GRES_USED"),
        Column::Letter(letter) => letter,
    };
    Ok(match letter {
        'a' => "AVAIL",
        'A' => "NODES(A/I)",
        'b' => "ACTIVE_FEATURES",
        'f' => "AVAIL_FEATURES",
        'c' => "CPUS",
        'C' => "CPUS(A/I/O/T)",
        'D' => "NODES",
        'e' => "FREE_MEM",
        'E' => "REASON",
        'F' => "NODES(A/I/O/T)",
        'G' => "GRES",
        'l' => "TIMELIMIT",
        'm' => "MEMORY",
        'n' => "HOSTNAMES",
        'N' => "NODELIST",
        'P' | 'R' => "PARTITION",
        't' | 'T' => "STATE",
        l if UNSUPPORTED.contains(l) => return Err(FormatError::Unsupported(l)),
        l => return Err(FormatError::Unknown(l)),
    })
}

/// Whether lines are split by this column's value (true) or it summarises the line's nodes.
fn is_key(column: Column) -> bool {
    matches!(
        column,
        Column::Letter('a' | 'b' | 'c' | 'E' | 'f' | 'G' | 'l' | 'm' | 'P' | 'R' | 't' | 'T')
    )
}

/// Slurm's default layouts plus berth's GPU columns.
fn default_layout(node_oriented: bool) -> Vec<Item> {
    let cell = |column, right, width| Item::Cell {
        column,
        right,
        width,
    };
    let gap = || Item::Literal(" ".to_string());
    let letter = Column::Letter;
    let columns = if node_oriented {
        // Slurm: "%#N %.6D %#P %6t"
        vec![
            cell(letter('N'), false, Width::Fit),
            cell(letter('D'), true, Width::Fixed(6)),
            cell(letter('P'), false, Width::Fit),
            cell(letter('t'), false, Width::Fixed(6)),
            cell(Column::GresTotal, false, Width::Fit),
            cell(Column::GresUsedTotal, false, Width::Natural),
        ]
    } else {
        // Slurm: "%#P %.5a %.10l %.6D %.6t %N"
        vec![
            cell(letter('P'), false, Width::Fit),
            cell(letter('a'), true, Width::Fixed(5)),
            cell(letter('l'), true, Width::Fixed(10)),
            cell(letter('D'), true, Width::Fixed(6)),
            cell(letter('t'), true, Width::Fixed(6)),
            cell(Column::GresTotal, false, Width::Fit),
            cell(Column::GresUsedTotal, false, Width::Fit),
            cell(letter('N'), false, Width::Natural),
        ]
    };
    let mut items = Vec::new();
    for (i, column) in columns.into_iter().enumerate() {
        if i > 0 {
            items.push(gap());
        }
        items.push(column);
    }
    items
}

/// A user's `-o` string as a layout.
fn user_layout(format: &str) -> Result<Vec<Item>, FormatError> {
    format::parse(format)?
        .into_iter()
        .map(|token| match token {
            Token::Literal(text) => Ok(Item::Literal(text)),
            Token::Field {
                letter,
                right,
                width,
            } => {
                header_of(Column::Letter(letter))?;
                let width = width
                    .filter(|w| *w > 0)
                    .map_or(Width::Natural, Width::Fixed);
                Ok(Item::Cell {
                    column: Column::Letter(letter),
                    right,
                    width,
                })
            }
        })
        .collect()
}

/// Renders `nodes` as sinfo does: grouped by partition and every printed per-node value
/// (state, GRES, …) by default, one line per node and partition when `node_oriented`
/// (`-N`). `format` is an `-o` string; `None` picks the default layout. Lines end with `\n`;
/// the header comes first when `header`.
///
/// # Errors
/// [`FormatError`] for a malformed format or a letter sinfo does not have (`Unknown`) or
/// berth cannot fill yet (`Unsupported`); nothing is rendered then.
pub fn render(
    nodes: &[Node],
    format: Option<&str>,
    node_oriented: bool,
    header: bool,
) -> Result<String, FormatError> {
    render_in(nodes, format, node_oriented, header, &[], "")
}

/// [`render`] for the lines of partitions `only` (every partition when empty, `sinfo -p`),
/// `%P` marking `default` (the partition of jobs that name none) with `*` as Slurm does.
///
/// # Errors
/// As [`render`].
pub fn render_in(
    nodes: &[Node],
    format: Option<&str>,
    node_oriented: bool,
    header: bool,
    only: &[String],
    default: &str,
) -> Result<String, FormatError> {
    let layout = match format {
        Some(format) => user_layout(format)?,
        None => default_layout(node_oriented),
    };
    let columns: Vec<Column> = layout
        .iter()
        .filter_map(|item| match item {
            Item::Cell { column, .. } => Some(*column),
            Item::Literal(_) => None,
        })
        .collect();
    let mut groups = group_nodes(nodes, &columns, node_oriented);
    if !only.is_empty() {
        groups.retain(|(p, _)| only.contains(p));
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    if header {
        rows.push(
            columns
                .iter()
                .map(|c| header_of(*c).map(str::to_string))
                .collect::<Result<_, _>>()?,
        );
    }
    for (partition, members) in &groups {
        rows.push(
            columns
                .iter()
                .map(|c| match value(*c, partition, members) {
                    v if *c == Column::Letter('P') && partition == default => v + "*",
                    v => v,
                })
                .collect(),
        );
    }
    Ok(print_rows(&layout, &rows))
}

/// `sinfo -O/--Format` (`partition,nodes:.6,statecompact:8`: names, each with an optional
/// `:[.]WIDTH`, 20 wide by default, no separator) as the `-o` format that prints the same.
///
/// # Errors
/// An unknown field name or a width that is not a number, naming it.
pub fn format_from_fields(spec: &str) -> Result<String, String> {
    let mut out = String::new();
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (name, size) = match item.split_once(':') {
            Some((n, s)) => (n, s),
            None => (item, ""),
        };
        let letter = match name.to_ascii_lowercase().as_str() {
            "available" => 'a',
            "cpus" => 'c',
            "cpusstate" => 'C',
            "features" => 'f',
            "featuresact" => 'b',
            "freemem" => 'e',
            "gres" => 'G',
            "memory" => 'm',
            "nodeaiot" => 'F',
            "nodeai" => 'A',
            "nodehost" => 'n',
            "nodelist" => 'N',
            "nodes" => 'D',
            "partition" => 'P',
            "partitionname" => 'R',
            "reason" => 'E',
            "statecompact" => 't',
            "statelong" => 'T',
            "time" => 'l',
            _ => return Err(format!("Invalid node format specification: {name}")),
        };
        let (right, width) = match size.strip_prefix('.') {
            Some(w) => (true, w),
            None => (false, size),
        };
        let width: usize = if width.is_empty() {
            20
        } else {
            width
                .parse()
                .map_err(|_| format!("Invalid node format specification: {item}"))?
        };
        out.push('%');
        if right {
            out.push('.');
        }
        out.push_str(&format!("{width}{letter}"));
    }
    if out.is_empty() {
        return Err("Invalid node format specification: (empty)".into());
    }
    Ok(out)
}

/// Lays out rows of cell values, sizing `Fit` columns to their widest value.
fn print_rows(layout: &[Item], rows: &[Vec<String>]) -> String {
    let mut fit: Vec<usize> = Vec::new();
    for column in 0..rows.first().map_or(0, Vec::len) {
        fit.push(
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0),
        );
    }
    let mut out = String::new();
    for row in rows {
        let mut column = 0;
        for item in layout {
            match item {
                Item::Literal(text) => out.push_str(text),
                Item::Cell { right, width, .. } => {
                    let width = match width {
                        Width::Natural => None,
                        Width::Fixed(w) => Some(*w),
                        Width::Fit => Some(fit[column]),
                    };
                    out.push_str(&format::cell(&row[column], width, *right));
                    column += 1;
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Groups nodes into output lines: (partition, nodes). Nodes are taken in name order;
/// partitions and lines keep the order they first appear in.
fn group_nodes<'a>(
    nodes: &'a [Node],
    columns: &[Column],
    node_oriented: bool,
) -> Vec<(String, Vec<&'a Node>)> {
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by_key(|n| hostlist::natural_key(&inventory(n).name));
    let keys: Vec<Column> = columns.iter().copied().filter(|c| is_key(*c)).collect();
    let mut partition_order: Vec<String> = Vec::new();
    let mut lines: Vec<(String, Vec<String>, Vec<&Node>)> = Vec::new();
    for node in sorted {
        for partition in partitions(node) {
            if !partition_order.contains(&partition) {
                partition_order.push(partition.clone());
            }
            let key: Vec<String> = keys
                .iter()
                .map(|c| value(*c, &partition, &[node]))
                .collect();
            let existing = lines
                .iter_mut()
                .find(|(p, k, _)| !node_oriented && *p == partition && *k == key);
            match existing {
                Some((_, _, members)) => members.push(node),
                None => lines.push((partition, key, vec![node])),
            }
        }
    }
    if !node_oriented {
        // Lines of one partition together, partitions in first-seen order (stable sort).
        let rank: BTreeMap<&String, usize> = partition_order
            .iter()
            .enumerate()
            .map(|(i, p)| (p, i))
            .collect();
        lines.sort_by_key(|(p, _, _)| rank[p]);
    }
    lines
        .into_iter()
        .map(|(p, _, members)| (p, members))
        .collect()
}

/// The value of `column` for a line of `nodes` in `partition`.
fn value(column: Column, partition: &str, nodes: &[&Node]) -> String {
    let first = nodes.first().copied();
    let inv = first.map(inventory);
    let names = || -> Vec<String> { nodes.iter().map(|n| inventory(n).name.clone()).collect() };
    let letter = match column {
        Column::GresTotal => return gres(nodes.iter().copied()),
        Column::GresUsedTotal => return gres_used(nodes.iter().copied(), false),
        Column::Letter(letter) => letter,
    };
    match letter {
        'a' => "up".to_string(),
        'A' => cpu_or_node_counts(nodes, false, true),
        // Features come from the cluster description; berth has no changeable active set,
        // so both columns show the described ones.
        'b' | 'f' => features(first),
        'c' => inv.map_or(0, |i| i.cpus).to_string(),
        'C' => cpu_or_node_counts(nodes, true, false),
        'D' => nodes.len().to_string(),
        'e' => free_memory(nodes),
        'E' => first
            .map_or("none", |n| {
                if n.reason.is_empty() {
                    "none"
                } else {
                    &n.reason
                }
            })
            .to_string(),
        'F' => cpu_or_node_counts(nodes, false, false),
        'G' => first.map_or_else(|| "(null)".to_string(), |n| gres([n])),
        'l' => "infinite".to_string(),
        'm' => inv.map_or(0, |i| i.memory_mb).to_string(),
        'n' | 'N' => hostlist::compress(&names()),
        'P' | 'R' => partition.to_string(),
        't' => first
            .map_or(NodeUse::Unknown, node_use)
            .compact()
            .to_string(),
        'T' => first.map_or(NodeUse::Unknown, node_use).long().to_string(),
        other => unreachable!("letter {other:?} passed header_of but has no value"),
    }
}

/// A node's described features, comma-separated as Slurm prints them; `(null)` when none.
fn features(node: Option<&Node>) -> String {
    let list = node
        .and_then(|n| n.described.as_ref())
        .map(|d| d.features.join(","))
        .unwrap_or_default();
    if list.is_empty() {
        "(null)".to_string()
    } else {
        list
    }
}

/// `%C` (CPUs), `%F` (nodes) as `allocated/idle/other/total`, or `%A` as `allocated/idle`.
fn cpu_or_node_counts(nodes: &[&Node], cpus: bool, short: bool) -> String {
    let (mut alloc, mut idle, mut other, mut total) = (0u64, 0u64, 0u64, 0u64);
    for node in nodes {
        let state = node_use(node);
        if cpus {
            let (cpus, used) = (u64::from(inventory(node).cpus), u64::from(node.cpus_alloc));
            total += cpus;
            match state {
                NodeUse::Down | NodeUse::Unknown => other += cpus,
                _ => {
                    alloc += used.min(cpus);
                    idle += cpus.saturating_sub(used);
                }
            }
        } else {
            total += 1;
            match state {
                NodeUse::Idle => idle += 1,
                NodeUse::Mixed | NodeUse::Allocated => alloc += 1,
                NodeUse::Down | NodeUse::Unknown => other += 1,
            }
        }
    }
    if short {
        format!("{alloc}/{idle}")
    } else {
        format!("{alloc}/{idle}/{other}/{total}")
    }
}

/// `%e`: free memory in MiB, as `min-max` when the line's nodes differ.
fn free_memory(nodes: &[&Node]) -> String {
    let free = nodes
        .iter()
        .map(|n| inventory(n).memory_mb.saturating_sub(n.memory_alloc_mb));
    let (min, max) = free.fold((u64::MAX, 0), |(lo, hi), f| (lo.min(f), hi.max(f)));
    match nodes.len() {
        0 => "0".to_string(),
        _ if min == max => min.to_string(),
        _ => format!("{min}-{max}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_proto::v1::Gpu;

    /// A node with `gpus` H100s of which the first `used` belong to job 42.
    pub(crate) fn node(
        name: &str,
        partition: &str,
        gpus: u32,
        used: u32,
        state: NodeState,
    ) -> Node {
        let gpus = (0..gpus)
            .map(|i| Gpu {
                uuid: format!("GPU-{name}-{i}"),
                index: i,
                model: "NVIDIA H100 80GB HBM3".to_string(),
                gres_type: "h100".to_string(),
                memory_mb: 81_559,
                job_id: if i < used { 42 } else { 0 },
                ..Gpu::default()
            })
            .collect();
        let inventory = NodeInventory {
            name: name.to_string(),
            partition: partition.to_string(),
            cpus: 64,
            memory_mb: 512_000,
            gpus,
            ..NodeInventory::default()
        };
        let mut node = Node {
            inventory: Some(inventory),
            cpus_alloc: used * 8,
            memory_alloc_mb: u64::from(used) * 1000,
            ..Node::default()
        };
        node.set_state(state);
        node
    }

    fn cluster() -> Vec<Node> {
        vec![
            node("dgx02", "gpu", 8, 3, NodeState::Up),
            node("dgx01", "gpu", 8, 0, NodeState::Up),
            node("dgx03", "gpu", 8, 8, NodeState::Up),
            node("dgx04", "gpu", 8, 0, NodeState::Up),
            node("dgx10", "gpu", 8, 2, NodeState::Up),
            node("cpu1", "cpu", 0, 0, NodeState::Down),
        ]
    }

    #[test]
    fn default_groups_by_partition_and_state() {
        let got = render(&cluster(), None, false, true).unwrap();
        let want = "\
PARTITION AVAIL  TIMELIMIT  NODES  STATE GRES        GRES_USED  NODELIST
cpu          up   infinite      1   down (null)      (null)     cpu1
gpu          up   infinite      2   idle gpu:h100:16 gpu:h100:0 dgx[01,04]
gpu          up   infinite      2    mix gpu:h100:16 gpu:h100:5 dgx[02,10]
gpu          up   infinite      1  alloc gpu:h100:8  gpu:h100:8 dgx03
";
        if got != want {
            panic!("want\n{want}got\n{got}");
        }
    }

    #[test]
    fn features_split_lines_and_show_as_described() {
        let mut nodes = cluster()[..3].to_vec();
        for n in &mut nodes[..2] {
            n.described = Some(berth_proto::v1::NodeDescription {
                features: vec!["nvlink".into(), "ib".into()],
                ..Default::default()
            });
        }
        let got = render(&nodes, Some("%10f %N"), false, true).unwrap();
        let want = "\
AVAIL_FEAT NODELIST
nvlink,ib  dgx[01-02]
(null)     dgx03
";
        if got != want {
            panic!("want\n{want}got\n{got}");
        }
    }

    #[test]
    fn format_fields_become_the_same_layout_and_bad_ones_are_named() {
        assert_eq!(
            format_from_fields("partition:10,nodes:.6,StateCompact").unwrap(),
            "%10P%.6D%20t"
        );
        for bad in ["", "bogus", "nodes:x", "nodes:.x"] {
            assert!(format_from_fields(bad).is_err(), "{bad:?}");
        }
        let got = render(&cluster(), Some("%10P%.6D"), false, true).unwrap();
        assert!(got.starts_with("PARTITION  NODES\n"), "{got:?}");
    }

    #[test]
    fn only_the_partitions_asked_for() {
        let got = render_in(
            &cluster(),
            Some("%P %D"),
            false,
            false,
            &["cpu".to_string()],
            "cpu",
        )
        .unwrap();
        assert_eq!(got, "cpu* 1\n");
        // %R is the bare name.
        let got = render_in(
            &cluster(),
            Some("%R"),
            false,
            false,
            &["cpu".to_string()],
            "cpu",
        )
        .unwrap();
        assert_eq!(got, "cpu\n");
    }

    #[test]
    fn node_oriented_lists_each_node() {
        let got = render(&cluster()[..3], None, true, true).unwrap();
        let want = "\
NODELIST  NODES PARTITION STATE  GRES       GRES_USED
dgx01         1 gpu       idle   gpu:h100:8 gpu:h100:0
dgx02         1 gpu       mix    gpu:h100:8 gpu:h100:3
dgx03         1 gpu       alloc  gpu:h100:8 gpu:h100:8
";
        if got != want {
            panic!("want\n{want}got\n{got}");
        }
    }

    #[test]
    fn custom_formats() {
        let nodes = cluster();
        let cases: &[(&str, bool, &str)] = &[
            (
                "%P %D %t",
                false,
                "cpu 1 down\ngpu 2 idle\ngpu 2 mix\ngpu 1 alloc\n",
            ),
            (
                "%N|%T|%G",
                true,
                "cpu1|down|(null)\ndgx01|idle|gpu:h100:8\ndgx02|mixed|gpu:h100:8\n\
dgx03|allocated|gpu:h100:8\ndgx04|idle|gpu:h100:8\ndgx10|mixed|gpu:h100:8\n",
            ),
            // Without a state column, a partition's nodes share one line.
            (
                "%P %C %F",
                false,
                "cpu 0/0/64/64 0/0/1/1\ngpu 104/216/0/320 3/2/0/5\n",
            ),
            (
                "%.4D %c %m %e %l %a",
                false,
                "   1 64 512000 512000 infinite up\n   5 64 512000 504000-512000 infinite up\n",
            ),
        ];
        for (i, (format, node_oriented, want)) in cases.iter().enumerate() {
            let got = render(&nodes, Some(format), *node_oriented, false);
            if got.as_deref() != Ok(*want) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn headers_and_bad_letters() {
        let cases: &[(&str, Result<&str, FormatError>)] = &[
            ("%P %.6t %N", Ok("PARTITION  STATE NODELIST\n")),
            ("%G %C", Ok("GRES CPUS(A/I/O/T)\n")),
            ("%P %Q", Err(FormatError::Unknown('Q'))),
            ("%O", Err(FormatError::Unsupported('O'))),
        ];
        for (i, (format, want)) in cases.iter().enumerate() {
            let got = render(&[], Some(format), false, true);
            let want = want.clone().map(str::to_string);
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn gres_strings() {
        let nodes = cluster();
        let got = (
            gres([&nodes[0]]),
            gres_used([&nodes[0]], true),
            gres_used([&nodes[1]], true),
        );
        let want = (
            "gpu:h100:8".to_string(),
            "gpu:h100:3(IDX:0-2)".to_string(),
            "gpu:h100:0(IDX:N/A)".to_string(),
        );
        if got != want {
            panic!("want {want:?}, got {got:?}");
        }
        // A share of GPU 5 and a MIG slice of GPU 7 make them in use, once each.
        let mut carved = nodes[0].clone();
        let gpus = &mut carved.inventory.as_mut().unwrap().gpus;
        gpus[5].share_job_ids = vec![43, 44];
        gpus[7].mig_held = vec![berth_proto::v1::MigSlice {
            gpu_uuid: gpus[7].uuid.clone(),
            profile: "1g.10gb".into(),
            placement_start: 0,
            placement_size: 1,
            job_id: 45,
        }];
        assert_eq!(gres_used([&carved], true), "gpu:h100:5(IDX:0-2,5,7)");
    }
}

/// `sinfo -R`: nodes that are down or drained with a reason, grouped by (reason, user,
/// time), in Slurm's default `%20E %9u %19H %N` layout.
pub fn render_reasons(nodes: &[Node], header: bool) -> String {
    let mut groups: Vec<((String, String, u64), Vec<String>)> = Vec::new();
    for n in nodes {
        if n.reason.is_empty() || !(n.drain || n.state() == NodeState::Down) {
            continue;
        }
        let name = n
            .inventory
            .as_ref()
            .map_or_else(String::new, |i| i.name.clone());
        let key = (n.reason.clone(), n.reason_user.clone(), n.reason_time_ms);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, names)) => names.push(name),
            None => groups.push((key, vec![name])),
        }
    }
    let mut out = String::new();
    if header {
        out.push_str("REASON               USER      TIMESTAMP           NODELIST\n");
    }
    for ((reason, user, ms), names) in groups {
        let user = if user.is_empty() {
            "root".to_string()
        } else {
            user
        };
        let time = crate::squeue::format_timestamp(ms).unwrap_or_else(|| "Unknown".to_string());
        out.push_str(&format!(
            "{reason:<20.20} {user:<9.9} {time:<19} {}\n",
            hostlist::compress(&names)
        ));
    }
    out
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn lists_drained_nodes_with_their_reason() {
        let node = |name: &str, drain: bool, reason: &str| Node {
            inventory: Some(berth_proto::v1::NodeInventory {
                name: name.into(),
                ..Default::default()
            }),
            drain,
            reason: reason.into(),
            reason_user: "slurm".into(),
            ..Default::default()
        };
        let nodes = [
            node("n1", true, "gres/gpu count reported lower"),
            node("n2", true, "gres/gpu count reported lower"),
            node("n3", false, ""),
            node("n4", true, "maint"),
        ];
        let got = render_reasons(&nodes, true);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 3, "{got}");
        assert!(lines[0].starts_with("REASON "), "{got}");
        assert!(lines[1].starts_with("gres/gpu count repor slurm "), "{got}");
        assert!(lines[1].ends_with(" n[1-2]"), "{got}");
        assert!(lines[2].starts_with("maint "), "{got}");
        assert!(lines[2].ends_with(" n4"), "{got}");
        assert_eq!(render_reasons(&nodes[2..3], false), "");
    }
}
