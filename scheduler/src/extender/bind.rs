//! Where a bind puts a pod: its own slot on the node kube-scheduler chose and, for the
//! first member of a pod group, every other member's slot in the same log command.

use crate::pod_fit::{self, allocation_on};
use crate::pod_gpus::{PodGpus, GPU_RESOURCE};
use crate::state_machine::StateMachine;
use berth_proto::v1 as pb;

/// What a pod's bind commits: its own slot and, for the first member of a pod group, the
/// other members' slots. A later member takes GPUs its group's reservation holds on
/// `node`; a first member's other slots go where they fit, `node` first, then the nodes
/// with most free GPUs (name order on ties).
///
/// # Errors
/// Why the pod (or its whole group) cannot be placed now.
pub fn plan_bind(
    sm: &StateMachine,
    node: &str,
    spec: &pb::JobSpec,
) -> Result<(pb::Allocation, Vec<pb::Allocation>), String> {
    let Some(group) = &spec.pod_group else {
        return Ok((allocation_on(sm, node, spec)?, vec![]));
    };
    whole_gpu_group(&group.name, &PodGpus::of_spec(spec))?;
    if let Some(held) = sm.group_reservation(&group.name) {
        let slot = held
            .allocations
            .iter()
            .find(|a| a.node == node)
            .filter(|a| a.gpu_uuids.len() >= spec.gpus_per_node as usize)
            .ok_or_else(|| format!("pod group {} holds no slot on {node}", group.name))?;
        let take = spec.gpus_per_node as usize;
        return Ok((
            pb::Allocation {
                node: node.to_string(),
                gpu_uuids: slot.gpu_uuids[..take].to_vec(),
                gpu_indices: slot.gpu_indices.iter().take(take).copied().collect(),
                cpus: spec.cpus_per_task.min(slot.cpus),
                mem_mb: spec.mem_mb.min(slot.mem_mb),
                ..Default::default()
            },
            vec![],
        ));
    }
    let mine = allocation_on(sm, node, spec)?;
    let mut taken: Vec<String> = mine.gpu_uuids.clone();
    let mut others = Vec::new();
    let mut nodes: Vec<(u32, &str)> = sm
        .nodes()
        .filter(|n| n.state() == pb::NodeState::Up)
        .filter_map(|n| n.inventory.as_ref())
        .filter(|i| i.partition == spec.partition && i.name != node)
        .map(|i| (free_gpus(i).len() as u32, i.name.as_str()))
        .collect();
    nodes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let order = std::iter::once(node).chain(nodes.iter().map(|(_, n)| *n));
    for name in order {
        let inv = sm
            .node(name)
            .and_then(|n| n.inventory.as_ref())
            .expect("listed");
        loop {
            if others.len() + 1 >= group.min_member as usize {
                return Ok((mine, others));
            }
            let free: Vec<&pb::Gpu> = free_gpus(inv)
                .into_iter()
                .filter(|g| !taken.contains(&g.uuid))
                .take(spec.gpus_per_node as usize)
                .collect();
            if free.len() < spec.gpus_per_node as usize || spec.gpus_per_node == 0 {
                break;
            }
            taken.extend(free.iter().map(|g| g.uuid.clone()));
            others.push(pb::Allocation {
                node: name.to_string(),
                gpu_uuids: free.iter().map(|g| g.uuid.clone()).collect(),
                gpu_indices: free.iter().map(|g| g.index).collect(),
                cpus: spec.cpus_per_task,
                mem_mb: spec.mem_mb,
                ..Default::default()
            });
        }
    }
    if others.len() + 1 >= group.min_member as usize {
        return Ok((mine, others));
    }
    Err(format!(
        "pod group {}: only {} of its {} members fit now",
        group.name,
        others.len() + 1,
        group.min_member
    ))
}

/// Pod groups are reserved in whole GPUs: a member asking for MIG slices or shares is
/// refused rather than reserved wrongly.
pub(super) fn whole_gpu_group(group: &str, want: &PodGpus) -> Result<(), String> {
    match want {
        PodGpus::None | PodGpus::Whole(_) => Ok(()),
        other => Err(format!(
            "pod group {group}: members asking for {} are not placed as a group by berth \
             (pod groups get whole {GPU_RESOURCE} only)",
            other.resource()
        )),
    }
}

/// A node's healthy free whole GPUs, lowest index first.
fn free_gpus(inv: &pb::NodeInventory) -> Vec<&pb::Gpu> {
    let whole = PodGpus::Whole(1);
    let mut free: Vec<&pb::Gpu> = inv
        .gpus
        .iter()
        .filter(|g| pod_fit::gpu_free_for(&whole, g))
        .collect();
    free.sort_by_key(|g| g.index);
    free
}
