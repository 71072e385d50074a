//! Nodes joining, failing and their GPUs going bad or coming back: registration checks an
//! inventory, a node going down ends what ran there.

use super::*;

impl StateMachine {
    pub(super) fn register_node(&mut self, mut inv: pb::NodeInventory, now: u64) -> Applied {
        if let Err(why) = validate_inventory(&inv) {
            return (Outcome::Rejected(why), vec![]);
        }
        let drain = match self.describe_registration(&mut inv) {
            Ok(drain) => drain,
            Err(why) => return (Outcome::Rejected(why), vec![]),
        };
        let name = inv.name.clone();
        self.topology = TopologyCache::default();
        let old = self.state.nodes.remove(&name);
        // GPUs keep their holder across re-registration: the agent re-attached to its jobs.
        // An unhealthy mark stays too: an XID does not heal when the agent restarts.
        for gpu in &mut inv.gpus {
            gpu.job_id = old
                .as_ref()
                .and_then(|n| held_by(n, &gpu.uuid))
                .unwrap_or(0);
            (gpu.share_job_ids, gpu.share_milli) = old
                .as_ref()
                .and_then(|n| n.inventory.as_ref())
                .and_then(|i| i.gpus.iter().find(|g| g.uuid == gpu.uuid))
                .map(|g| (g.share_job_ids.clone(), g.share_milli.clone()))
                .unwrap_or_default();
            // MIG slices too: the agent re-attached to the instances it created.
            gpu.mig_held = old
                .as_ref()
                .and_then(|n| n.inventory.as_ref())
                .and_then(|i| i.gpus.iter().find(|g| g.uuid == gpu.uuid))
                .map(|g| g.mig_held.clone())
                .unwrap_or_default();
            let before = old
                .as_ref()
                .and_then(|n| n.inventory.as_ref())
                .and_then(|i| i.gpus.iter().find(|g| g.uuid == gpu.uuid));
            if gpu.unhealthy_reason.is_empty() {
                gpu.unhealthy_reason = before
                    .map(|g| g.unhealthy_reason.clone())
                    .unwrap_or_default();
            }
            gpu.healthy_cleared_reason = before
                .map(|g| g.healthy_cleared_reason.clone())
                .unwrap_or_default();
        }
        let (cpus_alloc, memory_alloc_mb) = old
            .as_ref()
            .map(|n| (n.cpus_alloc, n.memory_alloc_mb))
            .unwrap_or((0, 0));
        // An admin's drain outlives the agent's restart; berth's own is judged again below.
        let (drain_flag, reason, reason_user, reason_time_ms) = old
            .as_ref()
            .filter(|n| n.drain)
            .map(|n| {
                (
                    true,
                    n.reason.clone(),
                    n.reason_user.clone(),
                    n.reason_time_ms,
                )
            })
            .unwrap_or_default();
        let node = pb::Node {
            inventory: Some(inv),
            state: NodeState::Up as i32,
            reason,
            registered_time_ms: now,
            cpus_alloc,
            memory_alloc_mb,
            described: None,
            drain: drain_flag,
            reason_time_ms,
            reason_user,
        };
        self.state.nodes.insert(name.clone(), node);
        self.after_registration(&name, drain, now);
        (Outcome::Done, vec![Effect::NodeChanged(name)])
    }

    pub(super) fn node_down(&mut self, name: &str, reason: &str, now: u64) -> Applied {
        let Some(node) = self.state.nodes.get_mut(name) else {
            return (Outcome::Rejected(format!("unknown node {name}")), vec![]);
        };
        node.state = NodeState::Down as i32;
        node.reason = reason.to_string();
        self.recount(name);
        let mut effects = vec![Effect::NodeChanged(name.to_string())];
        let victims: Vec<u64> = self
            .state
            .jobs
            .values()
            .filter(|j| {
                j.state() == JobState::Running && j.allocations.iter().any(|a| a.node == name)
            })
            .map(|j| j.id)
            .collect();
        for id in victims {
            let finished = pb::JobFinished {
                state: JobState::NodeFail as i32,
                reason: format!("node {name} down: {reason}"),
                ..Default::default()
            };
            // The job's other nodes live on: stop its batch script and steps there, so
            // nothing of a failed job keeps running.
            let batch_node = self.state.jobs[&id].allocations[0].node.clone();
            if batch_node != name {
                effects.push(Effect::Kill {
                    node: batch_node,
                    job_id: id,
                    state: JobState::NodeFail,
                    reason: finished.reason.clone(),
                    signal: 0,
                    batch_only: false,
                    grace_secs: 0,
                });
            }
            effects.extend(self.stop_steps(id, true));
            self.finish(id, &finished, now);
            effects.push(changed(id));
        }
        (Outcome::Done, effects)
    }

    /// GPU `uuid` of `node`, or why there is none.
    fn gpu_mut(&mut self, node: &str, uuid: &str) -> Result<&mut pb::Gpu, String> {
        self.state
            .nodes
            .get_mut(node)
            .and_then(|n| n.inventory.as_mut())
            .and_then(|i| i.gpus.iter_mut().find(|g| g.uuid == uuid))
            .ok_or_else(|| format!("no GPU {uuid} on node {node}"))
    }

    /// An admin's word that a repaired GPU is healthy: its unhealthy mark goes (kept as
    /// `healthy_cleared_reason`, see [`pb::Gpu`]) and placement uses it again. Already
    /// healthy: nothing changes.
    pub(super) fn mark_gpu_healthy(&mut self, c: &pb::GpuHealthyMark) -> Applied {
        let gpu = match self.gpu_mut(&c.node, &c.gpu_uuid) {
            Ok(gpu) => gpu,
            Err(why) => return (Outcome::Rejected(why), vec![]),
        };
        if gpu.unhealthy_reason.is_empty() {
            return (Outcome::Done, vec![]);
        }
        gpu.healthy_cleared_reason = std::mem::take(&mut gpu.unhealthy_reason);
        (Outcome::Done, vec![Effect::NodeChanged(c.node.clone())])
    }

    /// Records that a GPU went bad; placement skips it from now on. The first reason is
    /// kept (later events on a dead GPU are noise). Batch jobs on it (whole, a time-slice
    /// share or a MIG slice of it) are killed and, once their agent reports them dead,
    /// requeued per policy or ended NODE_FAIL, as Slurm does for a failed node. Pods are
    /// left to kubelet.
    pub(super) fn mark_gpu_unhealthy(&mut self, c: &pb::MarkGpuUnhealthy, now: u64) -> Applied {
        if c.reason.trim().is_empty() {
            return (
                Outcome::Rejected("unhealthy GPU without a reason".into()),
                vec![],
            );
        }
        let gpu = match self.gpu_mut(&c.node, &c.gpu_uuid) {
            Ok(gpu) => gpu,
            Err(why) => return (Outcome::Rejected(why), vec![]),
        };
        let mut effects = vec![Effect::NodeChanged(c.node.clone())];
        if !gpu.unhealthy_reason.is_empty() {
            return (Outcome::Done, effects);
        }
        gpu.unhealthy_reason = c.reason.clone();
        self.recount(&c.node);
        let victims: Vec<(u64, String)> = self
            .state
            .jobs
            .values()
            .filter(|j| j.state() == JobState::Running && !j.kill_requested)
            .filter(|j| !pods::is_kubernetes(j))
            .filter_map(|j| Some((j.id, self.failed_gpu(j)?)))
            .collect();
        for (id, reason) in victims {
            let job = self.state.jobs.get_mut(&id).expect("listed");
            job.kill_requested = true;
            job.kill_time_ms = now;
            effects.push(Effect::Kill {
                node: job.allocations[0].node.clone(),
                job_id: id,
                state: JobState::NodeFail,
                reason,
                signal: 0,
                batch_only: false,
                grace_secs: 0,
            });
            effects.push(changed(id));
        }
        (Outcome::Done, effects)
    }
}

/// Most time-slicing/MPS shares of one GPU (MPS itself allows 48 clients per GPU).
pub const GPU_REPLICAS_MAX: u32 = 48;

/// A node's GPUs and pair links for the topology model. Levels were checked at
/// registration ([`validate_inventory`]).
pub(super) fn node_links(inv: &pb::NodeInventory) -> policies::topology::NodeLinks {
    let nvswitch = |i: u32| {
        inv.gpus
            .iter()
            .any(|g| g.index == i && g.nvswitch_links > 0)
    };
    policies::topology::NodeLinks {
        name: inv.name.clone(),
        gpus: inv.gpus.iter().map(|g| (g.index, g.numa_node)).collect(),
        pairs: inv
            .topology
            .iter()
            .filter_map(|l| {
                let sw = nvswitch(l.gpu_a) && nvswitch(l.gpu_b);
                let link = policies::topology::GpuLink::parse(&l.level, sw).ok()?;
                Some((l.gpu_a, l.gpu_b, link))
            })
            .collect(),
    }
}

/// Checks an agent's inventory; a bad one is refused before it can touch state.
///
/// # Errors
/// A message naming the first problem found.
pub fn validate_inventory(inv: &pb::NodeInventory) -> Result<(), String> {
    let name_ok = !inv.name.is_empty()
        && inv.name.len() <= 64
        && inv
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !name_ok {
        return Err(format!("invalid node name {:?}", inv.name));
    }
    if inv.partition.is_empty() {
        return Err("node has no partition".into());
    }
    if inv.cpus == 0 {
        return Err("node reports 0 CPUs".into());
    }
    for l in &inv.topology {
        // "X" is a GPU with itself: meaningless for a pair but harmless, so not refused.
        if l.level == "X" {
            continue;
        }
        if let Err(e) = policies::topology::GpuLink::parse(&l.level, false) {
            return Err(format!("GPU pair {}-{}: {e}", l.gpu_a, l.gpu_b));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for g in &inv.gpus {
        if g.uuid.is_empty() || !seen.insert(&g.uuid) {
            return Err(format!("GPU uuid {:?} is empty or repeated", g.uuid));
        }
        if g.job_id != 0
            || !g.share_job_ids.is_empty()
            || !g.share_milli.is_empty()
            || !g.mig_held.is_empty()
        {
            return Err("agents may not assign GPUs to jobs".into());
        }
        if g.replicas > GPU_REPLICAS_MAX {
            return Err(format!(
                "GPU {} offers {} replicas, at most {GPU_REPLICAS_MAX}",
                g.uuid, g.replicas
            ));
        }
    }
    Ok(())
}
