//! The kube-scheduler extender protocol (`k8s.io/kube-scheduler/extender/v1`): filter and
//! prioritize answered from berth's own view of its GPU nodes.
//!
//! The upstream Go types carry no json tags, so the wire keys are the Go field names in
//! PascalCase (`Pod`, `NodeNames`, `FailedNodes`, …); they are emitted exactly so, and
//! accepted in lower/camel case too, as Go's case-insensitive decoder would. Pods and
//! nodes are k8s-openapi's types. With `nodeCacheCapable: false` kube-scheduler sends full
//! Node objects and uses the ones the extender returns, so those are kept as raw JSON and
//! echoed unchanged rather than round-tripped through a partial struct.
//!
//! What a pod asks of berth ([`crate::pod_gpus`]): whole GPUs (`nvidia.com/gpu`), MIG
//! slices of one profile (`nvidia.com/mig-<profile>`) or time-slice shares
//! (`nvidia.com/gpu.shared`); how that fits each node is [`crate::pod_fit`]'s.
//!
//! # Layout
//! - [`wire`]: the request and answer types of every verb, exactly as on the wire.
//! - [`pod_job`]: what a pod asks for, and the berth job it stands for.
//! - [`bind`]: where a bind puts a pod (and its pod group's other members).
//! - this module: the verbs `filter`, `prioritize` and `preempt` over berth's state.

mod bind;
mod pod_job;
#[cfg(test)]
mod tests;
mod wire;

pub use bind::plan_bind;
use bind::whole_gpu_group;
use pod_job::pod_sum;
pub use pod_job::{pod_gpus, pod_group_name, pod_job_spec, quantity, POD_GROUP_LABEL};
pub use wire::*;

use crate::pod_fit::{self, Misfit};
pub use crate::pod_fit::{allocation_on, SCORE_MAX};
pub use crate::pod_gpus::{PodGpus, GPU_RESOURCE};
use crate::state_machine::StateMachine;
use berth_proto::v1 as pb;
use std::collections::BTreeMap;

/// Answers `/preempt`: keeps a candidate node only if evicting its victims frees enough of
/// berth's GPUs (or shares, or MIG placements) for the pod. kube-scheduler only sees pods,
/// not the batch jobs that hold GPUs too, so without this it would evict pods from a node
/// whose GPUs stay taken. Victims are kept as proposed; a node berth rejects is left out
/// (kube-scheduler's veto).
///
/// # Errors
/// [`ExtenderError::Resource`] when the pod's GPU request cannot be read.
pub fn preempt(
    sm: &StateMachine,
    args: &ExtenderPreemptionArgs,
) -> Result<ExtenderPreemptionResult, ExtenderError> {
    let pod = args.pod.as_ref().expect("parse_preemption_args checked");
    let want = pod_gpus(pod)?;
    let mut candidates: BTreeMap<String, MetaVictims> =
        args.node_name_to_meta_victims.clone().unwrap_or_default();
    for (node, v) in args.node_name_to_victims.iter().flatten() {
        let pods = v
            .pods
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .map(|uid| MetaPod { uid })
            .collect();
        candidates.insert(
            node.clone(),
            MetaVictims {
                pods,
                num_pdb_violations: v.num_pdb_violations,
            },
        );
    }
    let mut out = ExtenderPreemptionResult::default();
    for (node, victims) in candidates {
        if want == PodGpus::None || freed_enough(sm, &node, &victims, &want) {
            out.node_name_to_meta_victims.insert(node, victims);
        }
    }
    Ok(out)
}

/// Whether `node` fits the pod once the victims' pod jobs end.
fn freed_enough(sm: &StateMachine, node: &str, victims: &MetaVictims, want: &PodGpus) -> bool {
    let Some(n) = sm.node(node) else {
        return false;
    };
    let leaving: Vec<u64> = victims
        .pods
        .iter()
        .filter_map(|v| sm.pod_job(&v.uid))
        .filter(|j| j.allocations.first().is_some_and(|a| a.node == node))
        .map(|j| j.id)
        .collect();
    pod_fit::check_node(&pod_fit::without_jobs(n, &leaving), want).is_ok()
}

/// A node's name inside a raw Node object.
fn node_name(node: &serde_json::Value) -> Option<&str> {
    node.get("metadata")?.get("name")?.as_str()
}

/// Whether one node passes: `Err((reason, unresolvable))` when it does not.
type NodeRule<'a> = Box<dyn Fn(&str) -> Result<(), Misfit> + 'a>;

/// Answers `/filter`: the candidates berth can place the pod on now, each other candidate
/// with its reason. Request-level problems go into `Error`, with every node filtered out.
pub fn filter(
    sm: &StateMachine,
    args: &ExtenderArgs,
    group: Option<&pb::PodGroupRef>,
) -> ExtenderFilterResult {
    let pod = args.pod.as_ref().expect("parse_args checked");
    let failed = |error: String| ExtenderFilterResult {
        error,
        ..Default::default()
    };
    let want = match pod_gpus(pod) {
        Ok(g) => g,
        Err(e) => return failed(e.to_string()),
    };
    if let Some(g) = group {
        if let Err(e) = whole_gpu_group(&g.name, &want) {
            return failed(e);
        }
    }
    // CPUs and memory as the pod's job will ask for them (whole cores, MiB).
    let (cpus, mem_mb) = match (pod_sum(pod, "cpu", true), pod_sum(pod, "memory", false)) {
        (Ok(m), Ok(b)) => (m.div_ceil(1000).max(1) as u32, b.div_ceil(1 << 20)),
        (Err(e), _) | (_, Err(e)) => return failed(e.to_string()),
    };
    let gang = group.map(|g| gang_filter(sm, g, want.count(), &candidate_names(args)));
    let mut out = ExtenderFilterResult::default();
    let mut check = |name: &str| match gang.as_ref().map_or_else(
        || pod_fit::check_fit(sm, name, &want, cpus, mem_mb),
        |rule| rule(name),
    ) {
        Ok(()) => true,
        Err((why, true)) => {
            out.failed_and_unresolvable_nodes.insert(name.into(), why);
            false
        }
        Err((why, false)) => {
            out.failed_nodes.insert(name.into(), why);
            false
        }
    };
    if let Some(names) = &args.node_names {
        let kept: Vec<String> = names.iter().filter(|n| check(n)).cloned().collect();
        out.node_names = Some(kept);
    } else if let Some(list) = &args.nodes {
        let kept: Vec<serde_json::Value> = list
            .items
            .iter()
            .filter(|n| check(node_name(n).unwrap_or("")))
            .cloned()
            .collect();
        out.nodes = Some(serde_json::json!({ "metadata": list.metadata, "items": kept }));
    }
    out
}

/// The candidate node names of a request, in either form.
fn candidate_names(args: &ExtenderArgs) -> Vec<String> {
    match (&args.node_names, &args.nodes) {
        (Some(names), _) => names.clone(),
        (None, Some(list)) => list
            .items
            .iter()
            .filter_map(|n| node_name(n).map(str::to_string))
            .collect(),
        (None, None) => vec![],
    }
}

/// The filter rule for a member of pod group `group`: with a reservation, only the nodes
/// where it holds a slot of this size; without one, the usual fit, but only if the
/// candidates can take every member at once (else every node fails, and the pods wait
/// whole).
fn gang_filter<'a>(
    sm: &'a StateMachine,
    group: &'a pb::PodGroupRef,
    gpus: u32,
    candidates: &[String],
) -> NodeRule<'a> {
    if let Some(held) = sm.group_reservation(&group.name) {
        let slots: Vec<(String, usize)> = held
            .allocations
            .iter()
            .map(|a| (a.node.clone(), a.gpu_uuids.len()))
            .collect();
        return Box::new(move |name: &str| {
            if slots.iter().any(|(n, k)| n == name && *k >= gpus as usize) {
                Ok(())
            } else {
                let why = format!("pod group {} holds its GPUs on other nodes", group.name);
                Err((why, false))
            }
        });
    }
    let members: u64 = if gpus == 0 {
        u64::MAX
    } else {
        candidates
            .iter()
            .filter_map(|n| pod_fit::check(sm, n, &PodGpus::Whole(1)).ok())
            .map(|free| u64::from(free / gpus))
            .sum()
    };
    if members >= u64::from(group.min_member) {
        let want = PodGpus::Whole(gpus);
        return Box::new(move |name: &str| pod_fit::check(sm, name, &want).map(|_| ()));
    }
    Box::new(move |_: &str| {
        let why = format!(
            "pod group {}: {members} of its {} members fit now",
            group.name, group.min_member
        );
        Err((why, false))
    })
}

/// Answers `/prioritize`: each candidate's [`pod_fit::score`] (best fit for whole GPUs and
/// shares, the MIG planner's slice score for MIG pods); nodes that do not fit and pods
/// without GPUs score 0 (berth has no preference among them).
///
/// # Errors
/// [`ExtenderError::Resource`] when the pod's GPU request cannot be read.
pub fn prioritize(
    sm: &StateMachine,
    args: &ExtenderArgs,
) -> Result<Vec<HostPriority>, ExtenderError> {
    let pod = args.pod.as_ref().expect("parse_args checked");
    let want = pod_gpus(pod)?;
    let score = |host: &str| HostPriority {
        host: host.to_string(),
        score: pod_fit::score(sm, host, &want),
    };
    Ok(match (&args.node_names, &args.nodes) {
        (Some(names), _) => names.iter().map(|n| score(n)).collect(),
        (None, Some(list)) => list.items.iter().filter_map(node_name).map(score).collect(),
        (None, None) => vec![],
    })
}
