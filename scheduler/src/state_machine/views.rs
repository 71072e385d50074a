//! What the scheduling pass and the extender read: snapshots of capacity, nodes and pending
//! jobs, and the GPU sharing arithmetic they share with apply.

use super::*;

impl StateMachine {
    /// Totals of the up nodes (the denominators of dominant shares), without building
    /// the placement view.
    pub(super) fn capacity(&self) -> policies::Capacity {
        let mut c = policies::Capacity::default();
        for n in self
            .state
            .nodes
            .values()
            .filter(|n| n.state() == NodeState::Up)
        {
            let Some(inv) = n.inventory.as_ref() else {
                continue;
            };
            c.gpus += inv.gpus.len() as u64;
            c.cpus += u64::from(inv.cpus);
            c.memory_mb += inv.memory_mb;
            for g in &inv.gpus {
                *c.gpus_by_type.entry(g.gres_type.clone()).or_default() += 1;
            }
        }
        c
    }

    /// The cluster as placement sees it: nodes sorted by name, free resources now.
    pub fn cluster_view(&self) -> policies::ClusterSnapshot {
        let mut mig_tables = std::collections::BTreeMap::new();
        let nodes = self
            .state
            .nodes
            .values()
            .filter_map(|n| node_view_shared(n, &mut mig_tables))
            .collect();
        policies::ClusterSnapshot {
            nodes,
            topology: self.topology(),
            ..Default::default()
        }
    }

    /// One node of [`StateMachine::cluster_view`], without building the others (the
    /// extender judges one named node at a time).
    pub fn node_view(&self, name: &str) -> Option<policies::NodeView> {
        node_view(self.state.nodes.get(name)?)
    }

    /// [`StateMachine::cluster_view`] plus what the policies need beyond placement:
    /// running jobs (expected ends, preemption marks) and decayed usage.
    pub fn policy_view(&self) -> policies::ClusterSnapshot {
        let mut snap = self.cluster_view();
        snap.licenses_free = self.licenses_free();
        let grace_ms = self.accounts.policy.preempt_grace_ms;
        snap.running = self
            .state
            .jobs
            .values()
            .filter(|j| j.state() == JobState::Running)
            .map(|j| {
                let limit_s = j.spec.as_ref().map_or(0, |s| s.time_limit_secs);
                let end_ms = if j.preempting {
                    let secs = j.spec.as_ref().map_or(0, |s| u64::from(s.signal_secs));
                    j.kill_time_ms + grace_ms.max(secs * 1000)
                } else if limit_s == 0 {
                    u64::MAX
                } else {
                    j.start_time_ms + limit_s * 1000
                };
                policies::RunningJob {
                    id: j.id,
                    user: j.spec.as_ref().map(|s| s.user.clone()).unwrap_or_default(),
                    account: j.account.clone(),
                    qos: j.qos.clone(),
                    start_ms: j.start_time_ms,
                    end_ms,
                    preempting: j.preempting || j.kill_requested,
                    pinned: pods::is_kubernetes(j),
                    grants: j
                        .allocations
                        .iter()
                        .map(|a| policies::NodeGrant {
                            node: a.node.clone(),
                            gpu_uuids: a.gpu_uuids.clone(),
                            gpu_indices: a.gpu_indices.clone(),
                            cpus: a.cpus,
                            mem_mb: a.mem_mb,
                            gpu_milli: a.gpu_milli,
                            mig_slices: a
                                .mig_slices
                                .iter()
                                .map(|s| policies::mig::MigGrant {
                                    gpu_uuid: s.gpu_uuid.clone(),
                                    gpu_index: gpu_index(self, &a.node, &s.gpu_uuid),
                                    profile: s.profile.clone(),
                                    start: s.placement_start,
                                    size: s.placement_size,
                                })
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        snap.usage = policies::Usage {
            by_account: self
                .state
                .usage
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            as_of_ms: self.state.usage_as_of_ms,
        };
        snap
    }
}

/// Whether one more job may hold `gpu` with `gpu_milli` (a fraction; 0: whole or a plain
/// share): it is free, or it is shared (time-slicing/MPS) with a share left and room for
/// the share's milli (never over 1000 in all).
pub fn has_room(gpu: &pb::Gpu, gpu_milli: u32) -> bool {
    if !gpu.mig_held.is_empty() {
        return false; // carved: slices only
    }
    if gpu.replicas > 1 {
        gpu.share_job_ids.len() < gpu.replicas as usize
            && milli_held(gpu) + share_need(gpu, gpu_milli) <= GPU_MILLI
    } else {
        gpu.job_id == 0
    }
}

/// The milli a share of `gpu` takes: the fraction asked, or `1000 / replicas` for a
/// plain share.
pub(super) fn share_need(gpu: &pb::Gpu, gpu_milli: u32) -> u32 {
    if gpu_milli > 0 {
        gpu_milli
    } else {
        GPU_MILLI / gpu.replicas.max(1)
    }
}

/// Milli held by the shares of `gpu`; a share without a recorded size (state written
/// before shares were sized) counts as a plain share.
pub(super) fn milli_held(gpu: &pb::Gpu) -> u32 {
    let plain = share_need(gpu, 0);
    (0..gpu.share_job_ids.len())
        .map(|k| gpu.share_milli.get(k).copied().unwrap_or(plain))
        .sum()
}

/// Drops job `id`'s shares of `gpu` (and their sizes, kept parallel).
pub(crate) fn release_shares(gpu: &mut pb::Gpu, id: u64) {
    let plain = share_need(gpu, 0);
    let kept: Vec<(u64, u32)> = gpu
        .share_job_ids
        .iter()
        .enumerate()
        .filter(|&(_, &j)| j != id)
        .map(|(k, &j)| (j, gpu.share_milli.get(k).copied().unwrap_or(plain)))
        .collect();
    (gpu.share_job_ids, gpu.share_milli) = kept.into_iter().unzip();
}

/// What placement may take of a time-sliced GPU: `None` unless it is shared, healthy and
/// not in MIG mode.
pub(super) fn offered_shares(g: &pb::Gpu) -> Option<policies::GpuShares> {
    let offered = g.replicas > 1 && g.unhealthy_reason.is_empty() && !g.mig_enabled;
    offered.then(|| policies::GpuShares {
        free: g.replicas.saturating_sub(g.share_job_ids.len() as u32),
        milli_free: GPU_MILLI.saturating_sub(milli_held(g)),
        replicas: g.replicas,
    })
}

/// NVML index of GPU `uuid` on `node` (0 when unknown: only a lookup hint for placement).
pub(super) fn gpu_index(sm: &StateMachine, node: &str, uuid: &str) -> u32 {
    sm.node(node)
        .and_then(|n| n.inventory.as_ref())
        .and_then(|i| i.gpus.iter().find(|g| g.uuid == uuid))
        .map_or(0, |g| g.index)
}

pub(super) fn held_by(node: &pb::Node, uuid: &str) -> Option<u64> {
    node.inventory
        .as_ref()?
        .gpus
        .iter()
        .find(|g| g.uuid == uuid)
        .map(|g| g.job_id)
}

/// A node as placement sees it (`None` before its inventory arrives): one node of
/// [`StateMachine::cluster_view`], also for a node record that is not in the state (the
/// extender's "what if these pods left").
pub fn node_view(n: &pb::Node) -> Option<policies::NodeView> {
    node_view_shared(n, &mut std::collections::BTreeMap::new())
}

/// [`node_view`] with MIG profile tables shared per card model through `mig_tables`.
pub(super) fn node_view_shared(
    n: &pb::Node,
    mig_tables: &mut std::collections::BTreeMap<
        String,
        std::sync::Arc<Vec<policies::mig::MigProfile>>,
    >,
) -> Option<policies::NodeView> {
    let inv = n.inventory.as_ref()?;
    Some(policies::NodeView {
        name: inv.name.clone(),
        partition: inv.partition.clone(),
        // A drained node takes no new jobs.
        up: n.state() == NodeState::Up && !n.drain,
        features: n
            .described
            .as_ref()
            .map(|d| d.features.clone().into())
            .unwrap_or_default(),
        weight: n.described.as_ref().map_or(0, |d| d.weight),
        cpus_total: inv.cpus,
        cpus_free: inv.cpus.saturating_sub(n.cpus_alloc),
        memory_total_mb: inv.memory_mb,
        memory_free_mb: inv.memory_mb.saturating_sub(n.memory_alloc_mb),
        gpus: inv
            .gpus
            .iter()
            .map(|g| {
                let (mig_enabled, mig_profiles, mig_held) = mig::view_fields(g, mig_tables);
                policies::GpuView {
                    uuid: g.uuid.clone(),
                    index: g.index,
                    gres_type: g.gres_type.clone(),
                    // An unhealthy GPU is never offered: that is how placement stops
                    // using it without a policy change. A MIG-mode GPU is offered as
                    // slices only.
                    free: has_room(g, 0) && g.unhealthy_reason.is_empty() && !g.mig_enabled,
                    shares: offered_shares(g),
                    mig_enabled,
                    mig_profiles,
                    mig_held,
                }
            })
            .collect(),
    })
}

/// One node's share of a job, as placement needs it, with the options that select
/// nodes (features, node lists, exclusivity, per-node tasks and memory, licenses).
pub fn pending_view(id: u64, spec: &pb::JobSpec) -> policies::PendingJob {
    let nodes = spec.nodes.max(1);
    let tasks = policies::TaskSpread {
        nodes_max: spec.nodes_max,
        fewest_first: spec.use_min_nodes,
        ntasks: spec.ntasks.max(1),
        per_node: spec.ntasks_per_node,
        cpus_per_task: spec.cpus_per_task.max(1),
        cpus_per_gpu: spec.cpus_per_gpu,
        min_cpus: spec.min_cpus_node,
        mem_per_cpu_mb: spec.mem_per_cpu_mb,
        mem_per_gpu_mb: spec.mem_per_gpu_mb,
    };
    let cpus_per_node = tasks.cpus_per_node(nodes, spec.gpus_per_node);
    let mem_per_node_mb = tasks.mem_per_node_mb(cpus_per_node, spec.gpus_per_node, spec.mem_mb);
    policies::PendingJob {
        id,
        partition: spec.partition.clone(),
        nodes,
        gpus_per_node: spec.gpus_per_node,
        gpu_type: spec.gpu_type.clone(),
        cpus_per_node,
        mem_per_node_mb,
        time_limit_s: spec.time_limit_secs,
        mig_profile: spec.mig_profile.clone(),
        mig_per_node: spec.mig_per_node,
        switches_max: spec.switches,
        switches_wait_ms: spec.switches_wait_secs.saturating_mul(1000),
        gpu_milli: spec.gpu_milli,
        // Checked at submit; a text that no longer parses places as if unconstrained
        // would be wrong, so it places nowhere (an impossible feature).
        constraint: (!spec.constraint.is_empty()).then(|| {
            std::sync::Arc::new(
                policies::constraint::Constraint::parse(&spec.constraint).unwrap_or_else(|_| {
                    policies::constraint::Constraint::parse("(unparsable)")
                        .expect("a plain name parses")
                }),
            )
        }),
        req_nodes: spec.req_nodes.clone(),
        exc_nodes: spec.exc_nodes.clone(),
        exclusive: matches!(spec.oversubscribe.as_str(), "NO" | "USER" | "MCS"),
        mem_whole_node: spec.mem_whole_node,
        tasks,
        licenses: spec
            .licenses
            .iter()
            .map(|l| (l.name.clone(), l.count))
            .collect(),
        nice: spec.nice,
        ..Default::default()
    }
}
