//! The Alibaba openb CSV files: the node list (`sn,cpu_milli,memory_mib,gpu,model`) and
//! the pod lists (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`; columns
//! are found by header name, since the multigpu lists carry only the first five).
//!
//! Every row is checked; a bad one is an error naming its line (1-based, the header is
//! line 1), and nothing is returned.

use anyhow::{bail, Context as _};
use berth_policies::packing::{NodeFree, TaskShape};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One node of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceNode {
    /// `sn`.
    pub name: String,
    /// Idle resources.
    pub idle: NodeFree,
}

/// One pod (task) of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TracePod {
    /// `name`.
    pub name: String,
    /// What it asks for.
    pub shape: TaskShape,
}

/// The directory of the trace: `shared/traces/alibaba-gpu-v2023` next to the workspace.
pub fn default_dir() -> PathBuf {
    crate::trace::shared_path("shared/traces/alibaba-gpu-v2023")
}

/// Reads a whole file, naming it on failure.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} (use --trace-dir DIR)", path.display()))
}

/// Header columns by name, and the data rows with their 1-based line numbers.
struct Table<'a> {
    columns: HashMap<&'a str, usize>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Table<'a> {
    fn parse(text: &'a str, required: &[&str]) -> anyhow::Result<Table<'a>> {
        let mut lines = text.lines().enumerate();
        let header = match lines.next() {
            Some((_, h)) if !h.trim().is_empty() => h,
            _ => bail!("line 1: missing header (want {})", required.join(",")),
        };
        let columns: HashMap<&str, usize> = header
            .trim_end_matches('\r')
            .split(',')
            .enumerate()
            .map(|(i, c)| (c.trim(), i))
            .collect();
        for r in required {
            if !columns.contains_key(r) {
                bail!("line 1: header has no column {r:?} (have {header:?})");
            }
        }
        let width = header.split(',').count();
        let mut rows = Vec::new();
        for (i, line) in lines {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != width {
                bail!("line {}: {} fields, header has {width}", i + 1, cells.len());
            }
            rows.push((i + 1, cells));
        }
        Ok(Table { columns, rows })
    }

    fn cell(&self, row: &[&'a str], name: &str) -> &'a str {
        self.columns.get(name).map_or("", |&i| row[i].trim())
    }

    fn number(&self, line: usize, row: &[&'a str], name: &str) -> anyhow::Result<u64> {
        let v = self.cell(row, name);
        v.parse::<u64>()
            .with_context(|| format!("line {line}: {name} {v:?} is not a non-negative integer"))
    }
}

/// Parses the node list. With `gpu_only`, nodes without GPUs are dropped (the FGD
/// artifact runs on `openb_node_list_gpu_node`, the GPU nodes of the full list).
///
/// # Errors
/// A missing column, a bad number, a GPU count with no model (or a model with no GPUs),
/// more than 64 GPUs, or a duplicate name, each with its line.
pub fn parse_nodes(text: &str, gpu_only: bool) -> anyhow::Result<Vec<TraceNode>> {
    let t = Table::parse(text, &["sn", "cpu_milli", "memory_mib", "gpu", "model"])?;
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (line, row) in &t.rows {
        let name = t.cell(row, "sn");
        let cpu = t.number(*line, row, "cpu_milli")?;
        let mem = t.number(*line, row, "memory_mib")?;
        let gpus = t.number(*line, row, "gpu")?;
        let model = t.cell(row, "model");
        if name.is_empty() {
            bail!("line {line}: empty sn");
        }
        if gpus > 64 {
            bail!("line {line}: {gpus} GPUs on one node (at most 64)");
        }
        if (gpus == 0) != model.is_empty() {
            bail!("line {line}: gpu {gpus} with model {model:?} (a GPU node needs a model and only a GPU node has one)");
        }
        if let Some(first) = seen.insert(name, *line) {
            bail!("line {line}: node {name} already on line {first}");
        }
        if gpu_only && gpus == 0 {
            continue;
        }
        out.push(TraceNode {
            name: name.to_string(),
            idle: NodeFree::idle(cpu, mem, gpus as u32, model),
        });
    }
    if out.is_empty() {
        bail!("no nodes");
    }
    Ok(out)
}

/// Parses a pod list, sorted by name as the artifact's workload list.
///
/// # Errors
/// A missing column, a bad number, a shape berth cannot model (see
/// [`TaskShape::validate`]), more than 64 GPUs, or a duplicate name, each with its line.
pub fn parse_pods(text: &str) -> anyhow::Result<Vec<TracePod>> {
    let t = Table::parse(
        text,
        &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"],
    )?;
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (line, row) in &t.rows {
        let name = t.cell(row, "name");
        if name.is_empty() {
            bail!("line {line}: empty name");
        }
        let gpus = t.number(*line, row, "num_gpu")?;
        if gpus > 64 {
            bail!("line {line}: num_gpu {gpus} (at most 64)");
        }
        let gpu_milli = t.number(*line, row, "gpu_milli")?;
        let shape = TaskShape {
            cpu_milli: t.number(*line, row, "cpu_milli")?,
            memory_mib: t.number(*line, row, "memory_mib")?,
            gpus: gpus as u32,
            gpu_milli: u32::try_from(gpu_milli).unwrap_or(u32::MAX),
            // gpu_spec "A|B" lists allowed models; empty (or absent) means any.
            models: t
                .cell(row, "gpu_spec")
                .split('|')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        };
        shape.validate().with_context(|| format!("line {line}"))?;
        if let Some(first) = seen.insert(name, *line) {
            bail!("line {line}: pod {name} already on line {first}");
        }
        out.push(TracePod {
            name: name.to_string(),
            shape,
        });
    }
    if out.is_empty() {
        bail!("no pods");
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
