//! The extended resources the plugin advertises, one kubelet registration (and socket)
//! each, as kubelet requires: whole GPUs as `nvidia.com/gpu`, time-slice replicas as
//! `nvidia.com/gpu.shared`, and MIG slices as `nvidia.com/mig-<profile>` per profile (the
//! names NVIDIA's device plugin uses with its "mixed" MIG strategy). A GPU belongs to
//! exactly one of them, as berthd offers it to pods.
//!
//! Device IDs: a whole GPU is its UUID; a replica is `<uuid>::<n>` (as NVIDIA's plugin
//! names time-slice replicas); a MIG slot is `<uuid>::<profile>@<start>`, one per legal
//! placement NVML listed. berth uses dynamic MIG, so a slot is a place a slice may be
//! created, not an existing instance; berthd's extender keeps the real count (slots of
//! different profiles overlap), and the plugin creates the instance berthd chose at
//! `Allocate`.

use berth_proto::deviceplugin as dp;
use berth_proto::v1 as pb;

/// What one registration offers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Whole GPUs (`nvidia.com/gpu`).
    Whole,
    /// Time-slice replicas (`nvidia.com/gpu.shared`).
    Shared,
    /// MIG slices of one profile (`nvidia.com/mig-<profile>`).
    Mig(String),
}

impl Kind {
    /// The extended resource name kubelet knows it by.
    pub fn resource_name(&self) -> String {
        match self {
            Kind::Whole => "nvidia.com/gpu".into(),
            Kind::Shared => "nvidia.com/gpu.shared".into(),
            Kind::Mig(p) => format!("nvidia.com/mig-{p}"),
        }
    }

    /// The plugin's socket file name in kubelet's device-plugin directory.
    pub fn socket_name(&self) -> String {
        match self {
            Kind::Whole => "berth-gpu.sock".into(),
            Kind::Shared => "berth-gpu-shared.sock".into(),
            // Profile names are `<n>g.<m>gb[+me]`: safe in a file name.
            Kind::Mig(p) => format!("berth-mig-{p}.sock"),
        }
    }

    /// What a device ID stands for when matched against berth's grants: the GPU UUID of
    /// a replica (any replica of a GPU is that GPU's share), the ID itself otherwise.
    pub fn key<'a>(&self, id: &'a str) -> &'a str {
        match self {
            Kind::Shared => id.split_once("::").map_or(id, |(uuid, _)| uuid),
            _ => id,
        }
    }
}

/// The MIG slot ID of a slice (`<uuid>::<profile>@<start>`).
pub fn mig_slot_id(gpu_uuid: &str, profile: &str, start: u32) -> String {
    format!("{gpu_uuid}::{profile}@{start}")
}

fn device(id: String, g: &pb::Gpu) -> dp::Device {
    dp::Device {
        id,
        health: if g.unhealthy_reason.is_empty() {
            dp::HEALTHY
        } else {
            dp::UNHEALTHY
        }
        .into(),
        topology: Some(dp::TopologyInfo {
            nodes: vec![dp::NumaNode {
                id: i64::from(g.numa_node),
            }],
        }),
    }
}

/// Every resource of `gpus` with its devices, whole GPUs first (always listed, even
/// empty, so `nvidia.com/gpu` is registered on every node), then shares, then MIG
/// profiles by name. Health from the inventory, topology = the GPU's NUMA node.
pub fn advertised(gpus: &[pb::Gpu]) -> Vec<(Kind, Vec<dp::Device>)> {
    let mut out: std::collections::BTreeMap<Kind, Vec<dp::Device>> =
        std::collections::BTreeMap::from([(Kind::Whole, Vec::new())]);
    for g in gpus {
        if g.mig_enabled {
            for p in &g.mig_profiles {
                let mut starts: Vec<u32> = p.placements.iter().map(|pl| pl.start).collect();
                starts.sort_unstable();
                starts.dedup();
                let list = out.entry(Kind::Mig(p.name.clone())).or_default();
                for s in starts {
                    list.push(device(mig_slot_id(&g.uuid, &p.name, s), g));
                }
            }
        } else if g.replicas > 1 {
            let list = out.entry(Kind::Shared).or_default();
            for n in 0..g.replicas {
                list.push(device(format!("{}::{n}", g.uuid), g));
            }
        } else {
            out.entry(Kind::Whole)
                .or_default()
                .push(device(g.uuid.clone(), g));
        }
    }
    out.retain(|k, list| *k == Kind::Whole || !list.is_empty());
    out.into_iter().collect()
}

/// Whether device `id` is on GPU `uuid` (the GPU itself, a replica or a MIG slot of it).
pub fn on_gpu(id: &str, uuid: &str) -> bool {
    id == uuid
        || id
            .strip_prefix(uuid)
            .is_some_and(|rest| rest.starts_with("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gpu_is_advertised_as_its_one_kind() {
        let placements = |starts: &[u32], size| {
            starts
                .iter()
                .map(|&start| pb::MigPlacement { start, size })
                .collect()
        };
        let gpus = [
            pb::Gpu {
                uuid: "GPU-w".into(),
                ..Default::default()
            },
            pb::Gpu {
                uuid: "GPU-s".into(),
                replicas: 2,
                unhealthy_reason: "XID 79".into(),
                ..Default::default()
            },
            pb::Gpu {
                uuid: "GPU-m".into(),
                mig_enabled: true,
                mig_profiles: vec![
                    pb::MigProfile {
                        name: "3g.40gb".into(),
                        placements: placements(&[4, 0], 4),
                        ..Default::default()
                    },
                    // No placements listed: nothing to advertise.
                    pb::MigProfile {
                        name: "7g.80gb".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ];
        // (resource, socket, [(device id, health)])
        type Row = (String, String, Vec<(String, String)>);
        let got: Vec<Row> = advertised(&gpus)
            .into_iter()
            .map(|(k, devs)| {
                let devs = devs.into_iter().map(|d| (d.id, d.health)).collect();
                (k.resource_name(), k.socket_name(), devs)
            })
            .collect();
        let h = |id: &str, health: &str| (id.to_string(), health.to_string());
        let want = vec![
            (
                "nvidia.com/gpu".to_string(),
                "berth-gpu.sock".to_string(),
                vec![h("GPU-w", "Healthy")],
            ),
            (
                "nvidia.com/gpu.shared".into(),
                "berth-gpu-shared.sock".into(),
                vec![h("GPU-s::0", "Unhealthy"), h("GPU-s::1", "Unhealthy")],
            ),
            (
                "nvidia.com/mig-3g.40gb".into(),
                "berth-mig-3g.40gb.sock".into(),
                vec![
                    h("GPU-m::3g.40gb@0", "Healthy"),
                    h("GPU-m::3g.40gb@4", "Healthy"),
                ],
            ),
        ];
        assert_eq!(got, want);
        assert_eq!(Kind::Shared.key("GPU-s::1"), "GPU-s");
        assert_eq!(Kind::Whole.key("GPU-s::1"), "GPU-s::1");
        assert!(on_gpu("GPU-s::1", "GPU-s") && on_gpu("GPU-s", "GPU-s"));
        assert!(!on_gpu("GPU-s2::1", "GPU-s"));
    }
}
