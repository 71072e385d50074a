//! `srun --cpu-bind`: which CPUs each task of a step may run on, on one node.
//!
//! The value is parsed where it is typed (srun), again where the step is made (berthd, so
//! a bad value from any client is refused before anything starts), and turned into one
//! CPU set per task by the agent that starts the tasks ([`task_cpus`]), from its host's
//! CPUs ([`Cpu`]: id, core, socket, NUMA node) and the CPUs other bound steps already hold
//! there. The agent reads the topology and applies the sets; what the sets are is decided
//! here, without IO, so every rule is tested on made-up machines.
//!
//! berth's scheduler counts CPUs per node and does not pick CPU ids, so the automatic
//! kinds (`threads`, `cores`, `sockets`, `ldoms`) take the units no other bound step on
//! the node holds first, and share only when the node has too few. The explicit kinds
//! (`map_cpu`, `mask_cpu`, `rank`, and the `_ldom` ones) name host CPUs or NUMA nodes, as
//! in Slurm on a node allocated whole.

use std::collections::BTreeSet;

/// The most CPUs a set can name (glibc's `CPU_SETSIZE`, what `sched_setaffinity` takes).
pub const MAX_CPUS: u32 = 1024;
/// The longest map or mask list, repeats counted (so `0*999999999` cannot eat memory).
pub const MAX_LIST: usize = 4096;

/// `--cpu-bind=help`: Slurm's text, as its srun prints it.
pub const HELP: &str = "CPU bind options:
    --cpu-bind=         Bind tasks to CPUs
        q[uiet]         quietly bind before task runs (default)
        v[erbose]       verbosely report binding before task runs
        no[ne]          don't bind tasks to CPUs (default)
        rank            bind by task rank
        map_cpu:<list>  specify a CPU ID binding for each task
                        where <list> is <cpuid1>,<cpuid2>,...<cpuidN>
        mask_cpu:<list> specify a CPU ID binding mask for each task
                        where <list> is <mask1>,<mask2>,...<maskN>
        rank_ldom       bind task by rank to CPUs in a NUMA locality domain
        map_ldom:<list> specify a NUMA locality domain ID for each task
                        where <list> is <ldom1>,<ldom2>,...<ldomN>
        mask_ldom:<list>specify a NUMA locality domain ID mask for each task
                        where <list> is <mask1>,<mask2>,...<maskN>
        sockets         auto-generated masks bind to sockets
        cores           auto-generated masks bind to cores
        threads         auto-generated masks bind to threads
        ldoms           auto-generated masks bind to NUMA locality domains
        help            show this help message
";

/// A parsed `--cpu-bind` value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuBind {
    /// `verbose`: each task's binding is reported on its stderr before it runs.
    pub verbose: bool,
    /// How the CPU sets are made.
    pub kind: BindKind,
}

/// How tasks get their CPUs (`L` below is a task's index on its node, `SLURM_LOCALID`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BindKind {
    /// `none`: tasks run wherever the host lets them.
    #[default]
    None,
    /// `rank`: task L on the L-th CPU of the node.
    Rank,
    /// `map_cpu:`: task L on CPU `list[L % len]`.
    MapCpu(Vec<u32>),
    /// `mask_cpu:`: task L on the CPUs of mask `list[L % len]`.
    MaskCpu(Vec<Vec<u32>>),
    /// `rank_ldom`: task L on the CPUs of the L-th NUMA node.
    RankLdom,
    /// `map_ldom:`: task L on the CPUs of NUMA node `list[L % len]`.
    MapLdom(Vec<u32>),
    /// `mask_ldom:`: task L on the CPUs of the NUMA nodes of mask `list[L % len]`.
    MaskLdom(Vec<Vec<u32>>),
    /// `threads`, `cores`, `sockets`, `ldoms`: masks made from the node's units.
    Auto(Unit),
}

/// The unit the automatic kinds hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One hardware thread (a CPU id).
    Threads,
    /// Every thread of a core.
    Cores,
    /// Every CPU of a socket.
    Sockets,
    /// Every CPU of a NUMA node.
    Ldoms,
}

/// One CPU the agent may run tasks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// Its id (what `sched_setaffinity` takes).
    pub id: u32,
    /// Its core, unique within its socket.
    pub core: u32,
    /// Its socket (physical package).
    pub socket: u32,
    /// Its NUMA node (the socket where the host reports none).
    pub ldom: u32,
}

/// Why a `--cpu-bind` value or binding is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuBindError {
    /// A word that is no binding type (Slurm's wording).
    #[error("unrecognized --cpu-bind argument \"{0}\"")]
    Unrecognized(String),
    /// `map_cpu` and the like without their list.
    #[error("missing list for \"--cpu-bind={0}:<list>\"")]
    MissingList(&'static str),
    /// A list element that is no number (Slurm's wording).
    #[error("Failed to validate number: {value}, the offending character is {bad}")]
    BadNumber {
        /// The element.
        value: String,
        /// Its first bad character.
        bad: char,
    },
    /// An id or mask bit at or past [`MAX_CPUS`], or a list longer than [`MAX_LIST`].
    #[error("--cpu-bind list element {0} is out of range (CPU ids are below {MAX_CPUS}, lists at most {MAX_LIST} long)")]
    OutOfRange(String),
    /// `map_cpu` naming a CPU the node cannot run tasks on.
    #[error("--cpu-bind=map_cpu: CPU {cpu} is not one this node can use (it has {have})")]
    NoSuchCpu {
        /// The CPU named.
        cpu: u32,
        /// The node's CPUs, as a list.
        have: String,
    },
    /// A mask, NUMA node or NUMA mask that selects none of the node's CPUs.
    #[error("--cpu-bind={what} selects none of this node's CPUs ({have})")]
    Empty {
        /// The element, as given.
        what: String,
        /// The node's CPUs, as a list.
        have: String,
    },
    /// A host with no CPU to bind to.
    #[error("this node reports no CPU to bind tasks to")]
    NoCpus,
}

/// Parses a `--cpu-bind` value: comma-separated words, the last type and the last of
/// `verbose`/`quiet` winning, as in Slurm; a list after `map_cpu:` and the like runs on
/// through the commas that are followed by a value.
///
/// # Errors
/// An unknown word, a missing or bad list, an id past [`MAX_CPUS`].
pub fn parse(value: &str) -> Result<CpuBind, CpuBindError> {
    let mut out = CpuBind::default();
    for word in words(value) {
        let (name, list) = match word.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (word.as_str(), None),
        };
        let needs = |kind: &'static str| {
            list.filter(|l| !l.is_empty())
                .ok_or(CpuBindError::MissingList(kind))
        };
        out.kind = match name.to_ascii_lowercase().as_str() {
            "q" | "quiet" if list.is_none() => {
                out.verbose = false;
                continue;
            }
            "v" | "verbose" if list.is_none() => {
                out.verbose = true;
                continue;
            }
            "no" | "none" if list.is_none() => BindKind::None,
            "rank" if list.is_none() => BindKind::Rank,
            "rank_ldom" if list.is_none() => BindKind::RankLdom,
            "threads" if list.is_none() => BindKind::Auto(Unit::Threads),
            "cores" if list.is_none() => BindKind::Auto(Unit::Cores),
            "sockets" if list.is_none() => BindKind::Auto(Unit::Sockets),
            "ldoms" if list.is_none() => BindKind::Auto(Unit::Ldoms),
            "map_cpu" => BindKind::MapCpu(ids(needs("map_cpu")?)?),
            "mask_cpu" => BindKind::MaskCpu(masks(needs("mask_cpu")?)?),
            "map_ldom" => BindKind::MapLdom(ids(needs("map_ldom")?)?),
            "mask_ldom" => BindKind::MaskLdom(masks(needs("mask_ldom")?)?),
            _ => return Err(CpuBindError::Unrecognized(word)),
        };
    }
    Ok(out)
}

/// The words of `value`: commas split words, except one followed by a value (a digit,
/// or hex digits up to the next comma), which continues a list (Slurm's `_isvalue`).
fn words(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut rest = value;
    while let Some(i) = rest.find(',') {
        let (head, tail) = (&rest[..i], &rest[i + 1..]);
        let last = out.last_mut().expect("never empty");
        last.push_str(head);
        let next = tail.split(',').next().unwrap_or("");
        let is_value = tail.starts_with(|c: char| c.is_ascii_digit())
            || next.chars().all(|c| c.is_ascii_hexdigit()) && !next.is_empty();
        if is_value {
            last.push(',');
        } else {
            out.push(String::new());
        }
        rest = tail;
    }
    out.last_mut().expect("never empty").push_str(rest);
    out
}

/// The elements of a list, each `VALUE` or `VALUE*COUNT`, repeats expanded.
fn elements(list: &str) -> Result<Vec<&str>, CpuBindError> {
    let mut out = Vec::new();
    for item in list.split(',') {
        let (value, count) = match item.split_once('*') {
            Some((v, c)) => {
                let n: usize = c.parse().map_err(|_| CpuBindError::BadNumber {
                    value: format!("*{c}"),
                    bad: c.chars().find(|ch| !ch.is_ascii_digit()).unwrap_or('*'),
                })?;
                (v, n)
            }
            None => (item, 1),
        };
        if out.len() + count > MAX_LIST {
            return Err(CpuBindError::OutOfRange(item.to_string()));
        }
        out.extend(std::iter::repeat_n(value, count));
    }
    Ok(out)
}

fn bad_number(value: &str, digits: &str) -> CpuBindError {
    CpuBindError::BadNumber {
        value: value.to_string(),
        bad: digits
            .chars()
            .find(|c| !c.is_ascii_hexdigit())
            .unwrap_or(value.chars().next().unwrap_or(' ')),
    }
}

/// A `map_` list: decimal ids, or hex after `0x`.
fn ids(list: &str) -> Result<Vec<u32>, CpuBindError> {
    elements(list)?
        .into_iter()
        .map(|v| {
            let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16).map_err(|_| bad_number(v, hex)),
                None => v.parse::<u32>().map_err(|_| CpuBindError::BadNumber {
                    value: v.to_string(),
                    bad: v.chars().find(|c| !c.is_ascii_digit()).unwrap_or(' '),
                }),
            }?;
            if parsed >= MAX_CPUS {
                return Err(CpuBindError::OutOfRange(v.to_string()));
            }
            Ok(parsed)
        })
        .collect()
}

/// A `mask_` list: hex masks, `0x` optional, each as the ids of its set bits.
fn masks(list: &str) -> Result<Vec<Vec<u32>>, CpuBindError> {
    elements(list)?
        .into_iter()
        .map(|v| {
            let hex = v
                .strip_prefix("0x")
                .or_else(|| v.strip_prefix("0X"))
                .unwrap_or(v);
            if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad_number(v, hex));
            }
            let mut bits = Vec::new();
            for (nibble, c) in hex.chars().rev().enumerate() {
                let d = c.to_digit(16).expect("checked hex");
                for b in 0..4 {
                    if d & (1 << b) != 0 {
                        let id = nibble as u32 * 4 + b;
                        if id >= MAX_CPUS {
                            return Err(CpuBindError::OutOfRange(v.to_string()));
                        }
                        bits.push(id);
                    }
                }
            }
            Ok(bits)
        })
        .collect()
}

/// The CPU ids each of `tasks` tasks on this node runs on (empty: not bound), task L at
/// index L. `cpus` are the CPUs the node can use; `taken` those other bound steps hold.
///
/// # Errors
/// A host with no CPUs; a map or mask naming none of the node's CPUs or NUMA nodes.
pub fn task_cpus(
    bind: &CpuBind,
    cpus: &[Cpu],
    taken: &BTreeSet<u32>,
    tasks: usize,
    cpus_per_task: u32,
) -> Result<Vec<Vec<u32>>, CpuBindError> {
    if bind.kind == BindKind::None {
        return Ok(vec![Vec::new(); tasks]);
    }
    if cpus.is_empty() {
        return Err(CpuBindError::NoCpus);
    }
    if let BindKind::Auto(unit) = bind.kind {
        return Ok(auto(unit, cpus, taken, tasks, cpus_per_task));
    }
    let mut by_id: Vec<Cpu> = cpus.to_vec();
    by_id.sort_by_key(|c| c.id);
    let have = || id_list(&by_id.iter().map(|c| c.id).collect::<Vec<_>>());
    let ldoms: Vec<u32> = by_id
        .iter()
        .map(|c| c.ldom)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let in_ldoms = |wanted: &[u32]| -> Vec<u32> {
        by_id
            .iter()
            .filter(|c| wanted.contains(&c.ldom))
            .map(|c| c.id)
            .collect()
    };
    let nonempty = |set: Vec<u32>, what: String| {
        if set.is_empty() {
            Err(CpuBindError::Empty { what, have: have() })
        } else {
            Ok(set)
        }
    };
    (0..tasks)
        .map(|l| match &bind.kind {
            BindKind::None | BindKind::Auto(_) => Ok(Vec::new()),
            BindKind::Rank => Ok(vec![by_id[l % by_id.len()].id]),
            BindKind::RankLdom => Ok(in_ldoms(&[ldoms[l % ldoms.len()]])),
            BindKind::MapCpu(list) => {
                let cpu = list[l % list.len()];
                if by_id.iter().any(|c| c.id == cpu) {
                    Ok(vec![cpu])
                } else {
                    Err(CpuBindError::NoSuchCpu { cpu, have: have() })
                }
            }
            BindKind::MaskCpu(list) => {
                let mask = &list[l % list.len()];
                let set = by_id
                    .iter()
                    .filter(|c| mask.contains(&c.id))
                    .map(|c| c.id)
                    .collect();
                nonempty(set, format!("mask_cpu:0x{}", mask_hex(mask)))
            }
            BindKind::MapLdom(list) => {
                let ldom = list[l % list.len()];
                nonempty(in_ldoms(&[ldom]), format!("map_ldom:{ldom}"))
            }
            BindKind::MaskLdom(list) => {
                let mask = &list[l % list.len()];
                nonempty(in_ldoms(mask), format!("mask_ldom:0x{}", mask_hex(mask)))
            }
        })
        .collect()
}

/// The automatic kinds: the node's units (threads, cores or sockets in socket, core, id
/// order; NUMA nodes by id), the free ones before those other steps hold; each task in
/// turn takes units until it has `cpus_per_task` CPUs, wrapping when they run out.
fn auto(
    unit: Unit,
    cpus: &[Cpu],
    taken: &BTreeSet<u32>,
    tasks: usize,
    cpus_per_task: u32,
) -> Vec<Vec<u32>> {
    let mut ordered = cpus.to_vec();
    ordered.sort_by_key(|c| (c.socket, c.core, c.id));
    let key = |c: &Cpu| match unit {
        Unit::Threads => (c.socket, c.core, c.id),
        Unit::Cores => (c.socket, c.core, 0),
        Unit::Sockets => (c.socket, 0, 0),
        Unit::Ldoms => (c.ldom, 0, 0),
    };
    let mut units: std::collections::BTreeMap<(u32, u32, u32), Vec<u32>> = Default::default();
    for c in &ordered {
        units.entry(key(c)).or_default().push(c.id);
    }
    let (free, busy): (Vec<_>, Vec<_>) = units
        .into_values()
        .partition(|ids| ids.iter().all(|id| !taken.contains(id)));
    let pool: Vec<Vec<u32>> = free.into_iter().chain(busy).collect();
    let need = cpus_per_task.max(1) as usize;
    let mut next = 0usize;
    (0..tasks)
        .map(|_| {
            let mut set: Vec<u32> = Vec::new();
            for _ in 0..pool.len() {
                set.extend(&pool[next % pool.len()]);
                next += 1;
                if set.len() >= need {
                    break;
                }
            }
            set.sort_unstable();
            set
        })
        .collect()
}

/// A CPU set as Slurm writes masks: hex, no leading zeros, no `0x` (`[0, 1]` → `3`).
pub fn mask_hex(cpus: &[u32]) -> String {
    let top = cpus.iter().copied().max().map_or(0, |m| m / 4 + 1);
    let mut out = String::new();
    for nibble in (0..top.max(1)).rev() {
        let d = (0..4)
            .filter(|b| cpus.contains(&(nibble * 4 + b)))
            .fold(0, |acc, b| acc | (1 << b));
        if out.is_empty() && d == 0 && nibble > 0 {
            continue;
        }
        out.push(char::from_digit(d, 16).expect("a nibble"));
    }
    out
}

/// A CPU set as a list with ranges (`0-3,8`), for messages.
pub fn id_list(ids: &[u32]) -> String {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The line `verbose` prints on a task's stderr before it runs, as Slurm's
/// task/affinity plugin writes it (`cpu-bind-cores=MASK - n1, task  0  0 [4242]: mask
/// 0x3 set`); `cpus` is the task's set, or for `none` the CPUs it may use anyway.
pub fn verbose_line(
    bind: &CpuBind,
    node: &str,
    task: u32,
    local: usize,
    pid: u32,
    cpus: &[u32],
) -> String {
    let units = match bind.kind {
        BindKind::Auto(Unit::Threads) => "-threads",
        BindKind::Auto(Unit::Cores) => "-cores",
        BindKind::Auto(Unit::Sockets) => "-sockets",
        BindKind::Auto(Unit::Ldoms) => "-ldoms",
        _ => "",
    };
    let (kind, action) = match bind.kind {
        BindKind::None => ("NONE", ""),
        BindKind::Rank => ("RANK", " set"),
        BindKind::MapCpu(_) => ("MAP ", " set"),
        BindKind::MaskCpu(_) | BindKind::Auto(_) => ("MASK", " set"),
        BindKind::RankLdom => ("LDRANK", " set"),
        BindKind::MapLdom(_) => ("LDMAP ", " set"),
        BindKind::MaskLdom(_) => ("LDMASK", " set"),
    };
    format!(
        "cpu-bind{units}={kind} - {node}, task {task:2} {local:2} [{pid}]: mask 0x{}{action}\n",
        mask_hex(cpus)
    )
}

/// The informational variables a bound task sees (`SLURM_CPU_BIND`, `_VERBOSE`, `_TYPE`,
/// `_LIST`): `node_sets` are the sets of the node's tasks, whose masks make the list
/// (Slurm turns the automatic kinds into masks the same way).
pub fn env(bind: &CpuBind, node_sets: &[Vec<u32>]) -> Vec<(&'static str, String)> {
    let verbose = if bind.verbose { "verbose" } else { "quiet" };
    let (kind, list) = match &bind.kind {
        BindKind::None => ("none".to_string(), String::new()),
        BindKind::MapCpu(ids) => (
            "map_cpu:".to_string(),
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        ),
        _ => (
            "mask_cpu:".to_string(),
            node_sets
                .iter()
                .map(|s| format!("0x{}", mask_hex(s)))
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    vec![
        ("SLURM_CPU_BIND", format!("{verbose},{kind}{list}")),
        ("SLURM_CPU_BIND_VERBOSE", verbose.to_string()),
        ("SLURM_CPU_BIND_TYPE", kind),
        ("SLURM_CPU_BIND_LIST", list),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sockets of two cores of two threads; thread siblings are id and id + 4, as
    /// Linux numbers them on most x86 hosts; one NUMA node per socket.
    fn host() -> Vec<Cpu> {
        (0..8)
            .map(|id| Cpu {
                id,
                core: id % 2,
                socket: (id % 4) / 2,
                ldom: (id % 4) / 2,
            })
            .collect()
    }

    fn sets(value: &str, taken: &[u32], tasks: usize, cpt: u32) -> Vec<Vec<u32>> {
        let bind = parse(value).expect("parses");
        task_cpus(&bind, &host(), &taken.iter().copied().collect(), tasks, cpt).expect("binds")
    }

    #[test]
    fn values_parse_as_slurm_reads_them() {
        let p = |v: &str| parse(v).expect(v);
        assert_eq!(p("none"), CpuBind::default());
        assert!(!p("v,q").verbose, "the last of verbose/quiet wins");
        assert_eq!(
            p("none,cores").kind,
            BindKind::Auto(Unit::Cores),
            "the last type wins"
        );
        assert_eq!(
            p("verbose,map_cpu:0,3,0x5"),
            CpuBind {
                verbose: true,
                kind: BindKind::MapCpu(vec![0, 3, 5])
            }
        );
        assert_eq!(p("map_cpu:1*3,2").kind, BindKind::MapCpu(vec![1, 1, 1, 2]));
        assert_eq!(
            p("mask_cpu:0x3*2,c,verbose"),
            CpuBind {
                verbose: true,
                kind: BindKind::MaskCpu(vec![vec![0, 1], vec![0, 1], vec![2, 3]])
            }
        );
        assert_eq!(p("map_cpu:0,cores").kind, BindKind::Auto(Unit::Cores));
        assert_eq!(p("rank_ldom").kind, BindKind::RankLdom);
        assert_eq!(p("MASK_LDOM:2").kind, BindKind::MaskLdom(vec![vec![1]]));
    }

    #[test]
    fn bad_values_are_refused_with_slurms_words() {
        let e = |v: &str| parse(v).expect_err(v).to_string();
        assert_eq!(e(""), "unrecognized --cpu-bind argument \"\"");
        assert_eq!(e("boards"), "unrecognized --cpu-bind argument \"boards\"");
        assert_eq!(e("cores:1"), "unrecognized --cpu-bind argument \"cores:1\"");
        assert_eq!(
            e("map_cpu"),
            "missing list for \"--cpu-bind=map_cpu:<list>\""
        );
        assert_eq!(
            e("mask_ldom:"),
            "missing list for \"--cpu-bind=mask_ldom:<list>\""
        );
        assert_eq!(
            e("mask_cpu:zz"),
            "Failed to validate number: zz, the offending character is z"
        );
        assert_eq!(
            e("map_cpu:0*x"),
            "Failed to validate number: *x, the offending character is x"
        );
        assert!(e("map_cpu:1024").contains("out of range"));
        assert!(e(&format!("mask_cpu:1{}", "0".repeat(256))).contains("out of range"));
        assert!(
            e("map_cpu:0*5000").contains("out of range"),
            "a list cannot grow unbounded"
        );
    }

    #[test]
    fn automatic_kinds_hand_out_whole_units_free_ones_first() {
        // Cores: task 0 takes core 0 of socket 0 (threads 0 and 4), task 1 core 1.
        assert_eq!(sets("cores", &[], 2, 1), vec![vec![0, 4], vec![1, 5]]);
        // Threads, two per task: the two threads of one core, in turn.
        assert_eq!(sets("threads", &[], 2, 2), vec![vec![0, 4], vec![1, 5]]);
        assert_eq!(sets("threads", &[], 3, 1), vec![vec![0], vec![4], vec![1]]);
        assert_eq!(
            sets("sockets", &[], 2, 1),
            vec![vec![0, 1, 4, 5], vec![2, 3, 6, 7]]
        );
        assert_eq!(sets("ldoms", &[], 1, 1), vec![vec![0, 1, 4, 5]]);
        // Another step holds socket 0's first core: this one starts on the next.
        assert_eq!(sets("cores", &[0, 4], 1, 1), vec![vec![1, 5]]);
        // More tasks than cores: the units are shared, free ones first.
        let all = sets("cores", &[0], 5, 1);
        assert_eq!(all[0], vec![1, 5]);
        assert_eq!(all[3], vec![0, 4], "the taken core comes last");
        assert_eq!(all[4], vec![1, 5], "then the units wrap");
        // A task wanting more CPUs than the node has gets them all, once each.
        assert_eq!(
            sets("threads", &[], 1, 99),
            vec![(0..8).collect::<Vec<_>>()]
        );
    }

    #[test]
    fn explicit_kinds_name_host_cpus_and_numa_nodes() {
        assert_eq!(sets("rank", &[], 3, 1), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(
            sets("map_cpu:7,2", &[7], 3, 1),
            vec![vec![7], vec![2], vec![7]]
        );
        assert_eq!(
            sets("mask_cpu:0x11,6", &[], 2, 1),
            vec![vec![0, 4], vec![1, 2]]
        );
        assert_eq!(
            sets("rank_ldom", &[], 2, 1),
            vec![vec![0, 1, 4, 5], vec![2, 3, 6, 7]]
        );
        assert_eq!(sets("map_ldom:1", &[], 1, 1), vec![vec![2, 3, 6, 7]]);
        assert_eq!(
            sets("mask_ldom:3", &[], 1, 1),
            vec![(0..8).collect::<Vec<_>>()]
        );
        assert_eq!(sets("none", &[], 2, 1), vec![Vec::<u32>::new(), vec![]]);
    }

    #[test]
    fn bindings_the_node_cannot_give_are_refused() {
        let bind = |v: &str| {
            task_cpus(&parse(v).unwrap(), &host(), &BTreeSet::new(), 2, 1)
                .expect_err(v)
                .to_string()
        };
        assert_eq!(
            bind("map_cpu:0,9"),
            "--cpu-bind=map_cpu: CPU 9 is not one this node can use (it has 0-7)"
        );
        assert_eq!(
            bind("mask_cpu:0x100"),
            "--cpu-bind=mask_cpu:0x100 selects none of this node's CPUs (0-7)"
        );
        assert_eq!(
            bind("map_ldom:4"),
            "--cpu-bind=map_ldom:4 selects none of this node's CPUs (0-7)"
        );
        let none = task_cpus(&parse("cores").unwrap(), &[], &BTreeSet::new(), 1, 1);
        assert_eq!(none, Err(CpuBindError::NoCpus));
    }

    #[test]
    fn masks_lines_and_variables_read_as_slurms() {
        assert_eq!(mask_hex(&[0, 1]), "3");
        assert_eq!(mask_hex(&[4]), "10");
        assert_eq!(mask_hex(&[]), "0");
        assert_eq!(mask_hex(&[63]), "8000000000000000");
        assert_eq!(id_list(&[5, 0, 1, 2, 7]), "0-2,5,7");
        let cores = parse("verbose,cores").unwrap();
        assert_eq!(
            verbose_line(&cores, "n1", 3, 1, 4242, &[1, 5]),
            "cpu-bind-cores=MASK - n1, task  3  1 [4242]: mask 0x22 set\n"
        );
        let none = parse("v").unwrap();
        assert_eq!(
            verbose_line(&none, "n1", 12, 0, 7, &[0, 1]),
            "cpu-bind=NONE - n1, task 12  0 [7]: mask 0x3\n"
        );
        let env: std::collections::BTreeMap<_, _> =
            env(&cores, &[vec![0, 4], vec![1, 5]]).into_iter().collect();
        assert_eq!(env["SLURM_CPU_BIND"], "verbose,mask_cpu:0x11,0x22");
        assert_eq!(env["SLURM_CPU_BIND_TYPE"], "mask_cpu:");
        assert_eq!(env["SLURM_CPU_BIND_LIST"], "0x11,0x22");
        assert_eq!(env["SLURM_CPU_BIND_VERBOSE"], "verbose");
        let map: std::collections::BTreeMap<_, _> = super::env(&parse("map_cpu:0,1").unwrap(), &[])
            .into_iter()
            .collect();
        assert_eq!(map["SLURM_CPU_BIND"], "quiet,map_cpu:0,1");
    }
}
