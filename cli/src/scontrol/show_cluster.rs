//! `scontrol show node`, `show partition` and `show topology`: the cluster's side of
//! Slurm's `Key=Value` records (node GPUs one `Gpu=` line each, partitions with their
//! packing, the switch tree and blocks).

use berth_proto::v1::{Node, NodeState};

use crate::hostlist;
use crate::sinfo;
use crate::squeue::{self, or_null};

use super::show_job::INDENT;

/// `scontrol show topology`: one line per switch as Slurm prints it (`SwitchName=leaf0
/// Level=0 LinkSpeed=1 Nodes=node[1-4]`, upper switches with every node below them and
/// `Switches=`), then one line per multi-node NVLink domain (`BlockName=`).
pub fn show_topology(t: &berth_proto::v1::TopologyResponse) -> String {
    use crate::hostlist::compress;
    if t.switches.is_empty() && t.blocks.is_empty() {
        return "No topology information available\n".to_string();
    }
    let mut out = String::new();
    for s in &t.switches {
        out += &format!(
            "SwitchName={} Level={} LinkSpeed={} Nodes={}",
            s.name,
            s.level,
            s.link_speed.max(1),
            compress(&s.nodes)
        );
        if !s.switches.is_empty() {
            out += &format!(" Switches={}", compress(&s.switches));
        }
        out.push('\n');
    }
    for b in &t.blocks {
        out += &format!("BlockName={} Nodes={}\n", b.name, compress(&b.nodes));
    }
    out
}

/// `scontrol show partition`: one record per partition — every partition a node is in,
/// and every one the accounts configuration names — with its nodes, totals, and berth's
/// `Packing=` (how placement packs jobs there: bestfit, spread, fgd or berth). `only`
/// limits the output to those names (empty: all).
pub fn show_partitions(
    nodes: &[Node],
    policy: &berth_policies::PolicyConfig,
    only: &[&str],
) -> String {
    let mut names: Vec<String> = policy.packing.keys().cloned().collect();
    for n in nodes {
        names.extend(sinfo::partitions(n));
    }
    names.sort();
    names.dedup();
    let mut records = Vec::new();
    for name in names
        .iter()
        .filter(|n| only.is_empty() || only.contains(&n.as_str()))
    {
        let members: Vec<&Node> = nodes
            .iter()
            .filter(|n| sinfo::partitions(n).contains(name))
            .collect();
        let hosts: Vec<String> = members
            .iter()
            .filter_map(|n| n.inventory.as_ref().map(|i| i.name.clone()))
            .collect();
        let inv = || members.iter().filter_map(|n| n.inventory.as_ref());
        let cpus: u64 = inv().map(|i| u64::from(i.cpus)).sum();
        let gpus: usize = inv().map(|i| i.gpus.len()).sum();
        let up = members.iter().any(|n| n.state() == NodeState::Up);
        let packing = policy.packing_for(name);
        let configured = if policy.packing.contains_key(name) {
            ""
        } else {
            " (default)"
        };
        records.push(format!(
            "PartitionName={name}\n   Nodes={} TotalNodes={} TotalCPUs={cpus} TotalGPUs={gpus}\n   State={}\n   Packing={}{configured}\n",
            or_null(&hostlist::compress(&hosts)),
            hosts.len(),
            if up { "UP" } else { "DOWN" },
            packing.as_str(),
        ));
    }
    records.join("\n")
}

/// One node as `scontrol show node` prints it, ending with `\n`.
pub fn show_node(node: &Node) -> String {
    let inv = sinfo::inventory(node);
    let state = sinfo::node_use(node).long().to_uppercase();
    let gpus_used = inv.gpus.iter().filter(|g| g.job_id != 0).count();
    let mut lines = vec![
        format!("NodeName={}", inv.name),
        format!("CPUAlloc={} CPUTot={}", node.cpus_alloc, inv.cpus),
        format!("Gres={}", sinfo::gres([node])),
        format!("GresUsed={}", sinfo::gres_used([node], true)),
        format!(
            "RealMemory={} AllocMem={}",
            inv.memory_mb, node.memory_alloc_mb
        ),
        format!("State={state}"),
        format!("Partitions={}", sinfo::partitions(node).join(",")),
        format!(
            "RegisterTime={}",
            squeue::format_timestamp(node.registered_time_ms).unwrap_or_else(|| "None".into())
        ),
        format!(
            "CfgTRES={}",
            node_tres(u64::from(inv.cpus), inv.memory_mb, inv.gpus.len() as u64)
        ),
        format!(
            "AllocTRES={}",
            node_tres(
                u64::from(node.cpus_alloc),
                node.memory_alloc_mb,
                gpus_used as u64
            )
        ),
        format!(
            "DriverVersion={} NvmlVersion={} AgentVersion={}",
            or_null(&inv.driver_version),
            or_null(&inv.nvml_version),
            or_null(&inv.agent_version)
        ),
    ];
    if node.state() == NodeState::Down || !node.reason.is_empty() {
        lines.insert(6, format!("Reason={}", squeue::or_null(&node.reason)));
    }
    for gpu in &inv.gpus {
        let job = if gpu.job_id == 0 {
            "(null)".to_string()
        } else {
            gpu.job_id.to_string()
        };
        // Model last: it contains spaces, and a key after it would be hard to split off.
        lines.push(format!(
            "Gpu={} Uuid={} Type={} Memory={}M PciBusId={} Job={job} Model={}",
            gpu.index,
            gpu.uuid,
            or_null(&gpu.gres_type),
            gpu.memory_mb,
            or_null(&gpu.pci_bus_id),
            gpu.model
        ));
        lines.extend(gpu_details(gpu));
    }
    lines.extend(node_details(inv));
    let mut out = lines.join(&format!("\n{INDENT}"));
    out.push('\n');
    out
}

/// The NVML facts of one GPU beyond its `Gpu=` line: NUMA node, compute capability, ECC,
/// MIG, NVLink, then MIG profiles with their legal placements, then why it is unhealthy
/// (last: the reason has spaces). Nothing for an inventory from an agent that does not
/// report them.
fn gpu_details(gpu: &berth_proto::v1::Gpu) -> Vec<String> {
    let mut lines = Vec::new();
    if !gpu.compute_capability.is_empty() {
        let mig = match (gpu.mig_capable, gpu.mig_enabled) {
            (false, _) => "unsupported",
            (true, false) => "disabled",
            (true, true) => "enabled",
        };
        let peers: Vec<String> = gpu
            .nvlink_peers
            .iter()
            .map(|p| format!("{}x{}", p.uuid, p.links))
            .collect();
        lines.push(format!(
            "Gpu={} Numa={} ComputeCap={} Ecc={} Mig={mig} NvSwitchLinks={} NvLinkPeers={}",
            gpu.index,
            gpu.numa_node,
            gpu.compute_capability,
            if gpu.ecc_enabled { "on" } else { "off" },
            gpu.nvswitch_links,
            or_null(&peers.join(",")),
        ));
    }
    if gpu.replicas > 1 {
        // Each share with its size in GPU milli (a plain share is 1000 / replicas).
        let plain = 1000 / gpu.replicas;
        let sizes = |k: usize| gpu.share_milli.get(k).copied().unwrap_or(plain);
        let jobs: Vec<String> = gpu
            .share_job_ids
            .iter()
            .enumerate()
            .map(|(k, id)| format!("{id}:{}", sizes(k)))
            .collect();
        let held: u32 = (0..gpu.share_job_ids.len()).map(sizes).sum();
        lines.push(format!(
            "Gpu={} Replicas={} ShareJobs={} ShareMilli={held}/1000",
            gpu.index,
            gpu.replicas,
            or_null(&jobs.join(","))
        ));
    }
    if !gpu.mig_profiles.is_empty() {
        let profiles: Vec<String> = gpu
            .mig_profiles
            .iter()
            .map(|p| {
                let starts: Vec<String> =
                    p.placements.iter().map(|pl| pl.start.to_string()).collect();
                let size = p.placements.first().map_or(0, |pl| pl.size);
                let at = if starts.is_empty() {
                    String::new()
                } else {
                    format!("@{}:{size}", starts.join("/"))
                };
                format!(
                    "{}(id={},max={}{at})",
                    or_null(&p.name),
                    p.id,
                    p.instance_count
                )
            })
            .collect();
        lines.push(format!(
            "Gpu={} MigProfiles={}",
            gpu.index,
            profiles.join(",")
        ));
    }
    if gpu.mig_enabled {
        lines.push(mig_layout(gpu));
    }
    if !gpu.unhealthy_reason.is_empty() {
        lines.push(format!(
            "Gpu={} Health=UNHEALTHY Reason={}",
            gpu.index, gpu.unhealthy_reason
        ));
    }
    lines
}

/// The MIG slices a MIG-mode GPU holds now, and a map of its 8 memory slices: `.` free,
/// then one letter per held slice in the order listed (`aaaabbbb`: two 4-slice halves).
fn mig_layout(gpu: &berth_proto::v1::Gpu) -> String {
    let mut map = [b'.'; 8];
    let mut held = Vec::new();
    for (k, s) in gpu.mig_held.iter().enumerate() {
        let letter = b'a' + (k % 26) as u8;
        let end = (s.placement_start + s.placement_size).min(8);
        for slot in map
            .iter_mut()
            .take(end as usize)
            .skip(s.placement_start as usize)
        {
            *slot = letter;
        }
        held.push(format!(
            "{}@{}:{}(JobId={})",
            s.profile, s.placement_start, s.placement_size, s.job_id
        ));
    }
    format!(
        "Gpu={} MigSlices={} MigMap={}",
        gpu.index,
        or_null(&held.join(",")),
        String::from_utf8_lossy(&map)
    )
}

/// CUDA version, metrics endpoint and the GPU-pair topology (`0-1:NV18,...`).
fn node_details(inv: &berth_proto::v1::NodeInventory) -> Vec<String> {
    let mut lines = Vec::new();
    if !inv.cuda_version.is_empty() || !inv.metrics_url.is_empty() {
        lines.push(format!(
            "CudaVersion={} MetricsUrl={} GpuSharing={}",
            or_null(&inv.cuda_version),
            or_null(&inv.metrics_url),
            or_null(&inv.gpu_sharing)
        ));
    }
    if !inv.topology.is_empty() {
        let pairs: Vec<String> = inv
            .topology
            .iter()
            .map(|t| format!("{}-{}:{}", t.gpu_a, t.gpu_b, t.level))
            .collect();
        lines.push(format!("GpuTopology={}", pairs.join(",")));
    }
    lines
}

/// A node's TRES (`cpu=64,mem=512000M,billing=64,gres/gpu=8`); empty when nothing is counted.
fn node_tres(cpus: u64, mem_mb: u64, gpus: u64) -> String {
    let mut parts = Vec::new();
    if cpus > 0 {
        parts.push(format!("cpu={cpus}"));
    }
    if mem_mb > 0 {
        parts.push(format!("mem={mem_mb}M"));
    }
    if cpus > 0 {
        parts.push(format!("billing={cpus}"));
    }
    if gpus > 0 {
        parts.push(format!("gres/gpu={gpus}"));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{Gpu, NodeInventory};

    #[test]
    fn show_topology_prints_switches_and_blocks() {
        use berth_proto::v1 as pb;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = pb::TopologyResponse {
            switches: vec![
                pb::TopologySwitch {
                    name: "leaf0".into(),
                    level: 0,
                    link_speed: 0,
                    nodes: names(&["n1", "n2"]),
                    switches: vec![],
                },
                pb::TopologySwitch {
                    name: "leaf1".into(),
                    level: 0,
                    link_speed: 400,
                    nodes: names(&["n3"]),
                    switches: vec![],
                },
                pb::TopologySwitch {
                    name: "spine".into(),
                    level: 1,
                    link_speed: 0,
                    nodes: names(&["n1", "n2", "n3"]),
                    switches: names(&["leaf0", "leaf1"]),
                },
            ],
            blocks: vec![pb::TopologyBlock {
                name: "nvl0".into(),
                nodes: names(&["n2", "n3"]),
            }],
            conf: String::new(),
        };
        assert_eq!(
            show_topology(&t),
            "SwitchName=leaf0 Level=0 LinkSpeed=1 Nodes=n[1-2]\n\
             SwitchName=leaf1 Level=0 LinkSpeed=400 Nodes=n3\n\
             SwitchName=spine Level=1 LinkSpeed=1 Nodes=n[1-3] Switches=leaf[0-1]\n\
             BlockName=nvl0 Nodes=n[2-3]\n"
        );
        assert_eq!(
            show_topology(&pb::TopologyResponse::default()),
            "No topology information available\n"
        );
    }

    #[test]
    fn show_node_lists_gpus() {
        let mut node = crate::sinfo::tests::node("dgx01", "gpu", 4, 3, NodeState::Up);
        node.cpus_alloc = 12;
        let mut down = node.clone();
        down.set_state(NodeState::Down);
        down.reason = "Not responding".to_string();
        let cases: Vec<(Node, Vec<&str>)> = vec![
            (
                node,
                vec![
                    "NodeName=dgx01\n   CPUAlloc=12 CPUTot=64\n   Gres=gpu:h100:4\n   GresUsed=gpu:h100:3(IDX:0-2)\n",
                    "\n   RealMemory=512000 AllocMem=3000\n   State=MIXED\n   Partitions=gpu\n",
                    "\n   CfgTRES=cpu=64,mem=512000M,billing=64,gres/gpu=4\n",
                    "\n   Gpu=0 Uuid=GPU-dgx01-0 Type=h100 Memory=81559M PciBusId=(null) Job=42 Model=NVIDIA H100 80GB HBM3\n",
                    "\n   Gpu=3 Uuid=GPU-dgx01-3 Type=h100 Memory=81559M PciBusId=(null) Job=(null) Model=",
                ],
            ),
            (down, vec!["\n   State=DOWN\n   Reason=Not responding\n   Partitions=gpu\n"]),
        ];
        for (i, (node, wants)) in cases.iter().enumerate() {
            let got = show_node(node);
            for want in wants {
                if !got.contains(want) {
                    panic!("#{i}: want {want:?} in\n{got}");
                }
            }
        }
    }

    #[test]
    fn show_partition_names_each_partitions_packing() {
        let node = |name: &str, partition: &str| {
            let mut n = Node {
                inventory: Some(NodeInventory {
                    name: name.into(),
                    partition: partition.into(),
                    cpus: 8,
                    gpus: vec![Gpu::default(), Gpu::default()],
                    ..Default::default()
                }),
                ..Node::default()
            };
            n.set_state(NodeState::Up);
            n
        };
        let nodes = vec![node("n1", "a"), node("n2", "b"), node("n3", "a")];
        let cfg = berth_scheduler::accounts::parse(
            "packing = \"spread\"\n[[partition]]\nname = \"a\"\npacking = \"fgd\"\n\
             [[partition]]\nname = \"empty\"\npacking = \"berth\"\n[[account]]\nname = \"default\"\n",
        )
        .expect("config");
        assert_eq!(
            show_partitions(&nodes, &cfg.policy, &[]),
            "PartitionName=a\n   Nodes=n[1,3] TotalNodes=2 TotalCPUs=16 TotalGPUs=4\n   State=UP\n   Packing=fgd\n\n\
             PartitionName=b\n   Nodes=n2 TotalNodes=1 TotalCPUs=8 TotalGPUs=2\n   State=UP\n   Packing=spread (default)\n\n\
             PartitionName=empty\n   Nodes=(null) TotalNodes=0 TotalCPUs=0 TotalGPUs=0\n   State=DOWN\n   Packing=berth\n"
        );
        assert_eq!(show_partitions(&nodes, &cfg.policy, &["zz"]), "");
    }

    #[test]
    fn show_node_gpu_details_mig_topology_and_health() {
        let gpu = Gpu {
            index: 2,
            uuid: "GPU-2".into(),
            numa_node: 1,
            compute_capability: "8.0".into(),
            ecc_enabled: true,
            mig_capable: true,
            mig_enabled: true,
            nvswitch_links: 12,
            mig_profiles: vec![berth_proto::v1::MigProfile {
                id: 9,
                name: "3g.20gb".into(),
                instance_count: 2,
                placements: vec![
                    berth_proto::v1::MigPlacement { start: 0, size: 4 },
                    berth_proto::v1::MigPlacement { start: 4, size: 4 },
                ],
                ..Default::default()
            }],
            unhealthy_reason: "XID 79: GPU has fallen off the bus".into(),
            ..Default::default()
        };
        let node = Node {
            inventory: Some(NodeInventory {
                name: "n".into(),
                gpus: vec![gpu],
                cuda_version: "13.0".into(),
                topology: vec![berth_proto::v1::GpuPairLink {
                    gpu_a: 0,
                    gpu_b: 2,
                    level: "NV12".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = show_node(&node);
        let wants = [
            "Gpu=2 Numa=1 ComputeCap=8.0 Ecc=on Mig=enabled NvSwitchLinks=12 NvLinkPeers=(null)\n",
            "Gpu=2 MigProfiles=3g.20gb(id=9,max=2@0/4:4)\n",
            "Gpu=2 Health=UNHEALTHY Reason=XID 79: GPU has fallen off the bus\n",
            "CudaVersion=13.0 MetricsUrl=(null) GpuSharing=(null)\n",
            "GpuTopology=0-2:NV12\n",
        ];
        for (i, want) in wants.iter().enumerate() {
            if !got.contains(want) {
                panic!("#{i}: want {want:?} in\n{got}");
            }
        }
    }
}
