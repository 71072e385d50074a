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

use crate::pod_fit::{self, Misfit};
pub use crate::pod_fit::{allocation_on, SCORE_MAX};
pub use crate::pod_gpus::{PodGpus, GPU_RESOURCE};
use crate::state_machine::StateMachine;
use berth_proto::v1 as pb;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Body of `/filter` and `/prioritize`.
#[derive(Debug, Deserialize)]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    #[serde(rename = "Pod", alias = "pod")]
    pub pod: Option<Pod>,
    /// Candidate nodes as full objects (`nodeCacheCapable: false`).
    #[serde(rename = "Nodes", alias = "nodes")]
    pub nodes: Option<NodeList>,
    /// Candidate node names (`nodeCacheCapable: true`).
    #[serde(rename = "NodeNames", alias = "nodeNames", alias = "nodenames")]
    pub node_names: Option<Vec<String>>,
}

/// A `v1.NodeList` whose items stay raw JSON, so they go back exactly as they came.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct NodeList {
    /// List metadata (kube-scheduler sends it empty).
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// The Node objects.
    #[serde(default)]
    pub items: Vec<serde_json::Value>,
}

/// Answer of `/filter`.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ExtenderFilterResult {
    /// The nodes that fit, as given (when the request had `Nodes`).
    #[serde(rename = "Nodes")]
    pub nodes: Option<serde_json::Value>,
    /// The names of the nodes that fit (when the request had `NodeNames`).
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<String>>,
    /// Nodes that do not fit now but might after preemption, with the reason.
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: BTreeMap<String, String>,
    /// Nodes that cannot fit this pod whatever is preempted, with the reason.
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// A failure of the whole request (empty on success).
    #[serde(rename = "Error")]
    pub error: String,
}

/// One entry of `/prioritize`'s answer (a bare JSON array of these).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HostPriority {
    /// Node name.
    #[serde(rename = "Host")]
    pub host: String,
    /// Score in `[0, 10]`.
    #[serde(rename = "Score")]
    pub score: i64,
}

/// Why a request could not be answered at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtenderError {
    /// The body is not the JSON of `ExtenderArgs`.
    #[error("invalid extender request: {0}")]
    Json(String),
    /// The request names no pod.
    #[error("extender request has no Pod")]
    NoPod,
    /// The request has neither `Nodes` nor `NodeNames`.
    #[error("extender request has neither Nodes nor NodeNames")]
    NoNodes,
    /// The pod asks for a resource quantity berth cannot read or does not place yet.
    #[error("pod {pod}: {detail}")]
    Resource {
        /// `namespace/name`.
        pod: String,
        /// What was wrong.
        detail: String,
    },
}

/// Parses a request body.
///
/// # Errors
/// [`ExtenderError::Json`], [`ExtenderError::NoPod`] or [`ExtenderError::NoNodes`].
pub fn parse_args(body: &[u8]) -> Result<ExtenderArgs, ExtenderError> {
    let args: ExtenderArgs =
        serde_json::from_slice(body).map_err(|e| ExtenderError::Json(e.to_string()))?;
    if args.pod.is_none() {
        return Err(ExtenderError::NoPod);
    }
    if args.nodes.is_none() && args.node_names.is_none() {
        return Err(ExtenderError::NoNodes);
    }
    Ok(args)
}

fn pod_key(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or("")
    )
}

/// The GPUs `pod` asks for ([`crate::pod_gpus::pod_gpus`]).
///
/// # Errors
/// [`ExtenderError::Resource`] for an unreadable quantity, a misspelt MIG resource, or a
/// pod that mixes kinds of GPU.
pub fn pod_gpus(pod: &Pod) -> Result<PodGpus, ExtenderError> {
    crate::pod_gpus::pod_gpus(pod).map_err(|detail| ExtenderError::Resource {
        pod: pod_key(pod),
        detail,
    })
}

/// Body of `/bind`.
#[derive(Debug, Deserialize)]
pub struct ExtenderBindingArgs {
    /// Pod name.
    #[serde(rename = "PodName", alias = "podName", alias = "podname")]
    pub pod_name: String,
    /// Pod namespace.
    #[serde(
        rename = "PodNamespace",
        alias = "podNamespace",
        alias = "podnamespace"
    )]
    pub pod_namespace: String,
    /// Pod UID.
    #[serde(rename = "PodUID", alias = "podUID", alias = "poduid", default)]
    pub pod_uid: String,
    /// The node kube-scheduler chose.
    #[serde(rename = "Node", alias = "node")]
    pub node: String,
}

/// Answer of `/bind`.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ExtenderBindingResult {
    /// Why the bind failed (empty: bound).
    #[serde(rename = "Error")]
    pub error: String,
}

/// Parses a `/bind` body.
///
/// # Errors
/// [`ExtenderError::Json`] for bad JSON or an empty pod name, namespace or node.
pub fn parse_binding_args(body: &[u8]) -> Result<ExtenderBindingArgs, ExtenderError> {
    let args: ExtenderBindingArgs =
        serde_json::from_slice(body).map_err(|e| ExtenderError::Json(e.to_string()))?;
    if args.pod_name.is_empty() || args.pod_namespace.is_empty() || args.node.is_empty() {
        return Err(ExtenderError::Json(
            "PodName, PodNamespace and Node must not be empty".into(),
        ));
    }
    Ok(args)
}

/// A victim pod named by uid (`MetaPod`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct MetaPod {
    /// Pod UID.
    #[serde(rename = "UID", alias = "uid")]
    pub uid: String,
}

/// Victims on one node, by uid (`MetaVictims`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct MetaVictims {
    /// The pods to evict.
    #[serde(rename = "Pods", alias = "pods", default)]
    pub pods: Vec<MetaPod>,
    /// PodDisruptionBudget violations the eviction causes.
    #[serde(rename = "NumPDBViolations", alias = "numPDBViolations", default)]
    pub num_pdb_violations: i64,
}

/// Victims on one node as full pods (`Victims`, when `nodeCacheCapable` is false).
#[derive(Debug, Default, Deserialize)]
pub struct Victims {
    /// The pods to evict.
    #[serde(rename = "Pods", alias = "pods", default)]
    pub pods: Vec<Pod>,
    /// PodDisruptionBudget violations the eviction causes.
    #[serde(rename = "NumPDBViolations", alias = "numPDBViolations", default)]
    pub num_pdb_violations: i64,
}

/// Body of `/preempt`.
#[derive(Debug, Deserialize)]
pub struct ExtenderPreemptionArgs {
    /// The pod that wants room.
    #[serde(rename = "Pod", alias = "pod")]
    pub pod: Option<Pod>,
    /// Candidate nodes and their victims as full pods.
    #[serde(rename = "NodeNameToVictims", alias = "nodeNameToVictims", default)]
    pub node_name_to_victims: Option<BTreeMap<String, Victims>>,
    /// Candidate nodes and their victims by uid.
    #[serde(
        rename = "NodeNameToMetaVictims",
        alias = "nodeNameToMetaVictims",
        default
    )]
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// Answer of `/preempt`: always the by-uid form.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ExtenderPreemptionResult {
    /// The candidates berth agrees with, and their victims.
    #[serde(rename = "NodeNameToMetaVictims")]
    pub node_name_to_meta_victims: BTreeMap<String, MetaVictims>,
}

/// Parses a `/preempt` body.
///
/// # Errors
/// [`ExtenderError::Json`] or [`ExtenderError::NoPod`].
pub fn parse_preemption_args(body: &[u8]) -> Result<ExtenderPreemptionArgs, ExtenderError> {
    let args: ExtenderPreemptionArgs =
        serde_json::from_slice(body).map_err(|e| ExtenderError::Json(e.to_string()))?;
    if args.pod.is_none() {
        return Err(ExtenderError::NoPod);
    }
    Ok(args)
}

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

/// Reads a Kubernetes quantity in `unit`s: CPUs in millicores (`"500m"`, `"2"`, `"1.5"`)
/// with `unit = 1000`, memory in bytes (`"128Mi"`, `"1G"`, `"1e9"`) with `unit = 1`.
///
/// # Errors
/// A message naming the quantity when it does not parse or is negative.
pub fn quantity(text: &str, milli: bool) -> Result<u64, String> {
    let t = text.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(s, f)| t.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((t, 1.0));
    let bad = || format!("quantity {text:?} is not a Kubernetes quantity");
    if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scaled = value * factor * if milli { 1000.0 } else { 1.0 };
    if !scaled.is_finite() || scaled < 0.0 || scaled > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(scaled.ceil() as u64)
}

/// Sum of one resource's requests over the pod's containers (limits where no request).
fn pod_sum(pod: &Pod, resource: &str, milli: bool) -> Result<u64, ExtenderError> {
    let mut sum = 0u64;
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let Some(res) = &c.resources else { continue };
        let q = res
            .requests
            .as_ref()
            .and_then(|r| r.get(resource))
            .or_else(|| res.limits.as_ref().and_then(|l| l.get(resource)));
        if let Some(q) = q {
            sum += quantity(&q.0, milli).map_err(|detail| ExtenderError::Resource {
                pod: pod_key(pod),
                detail: format!("container {}: {resource}: {detail}", c.name),
            })?;
        }
    }
    Ok(sum)
}

/// The berth job a pod stands for: one task on one node of `partition`, its CPUs rounded
/// up to whole cores (at least 1), its memory in MiB, its GPUs; the namespace is the
/// account (one fair-share tree for pods and batch jobs) and the user, and
/// `priorityClassName` the QOS.
///
/// # Errors
/// [`ExtenderError::Resource`] for unreadable requests or resources berth does not place.
pub fn pod_job_spec(
    pod: &Pod,
    partition: &str,
    group: Option<pb::PodGroupRef>,
) -> Result<pb::JobSpec, ExtenderError> {
    let m = &pod.metadata;
    let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
    let millicores = pod_sum(pod, "cpu", true)?;
    let memory_bytes = pod_sum(pod, "memory", false)?;
    let gpus = pod_gpus(pod)?;
    let mut spec = pb::JobSpec {
        name: m.name.clone().unwrap_or_default(),
        pod: Some(pb::PodRef {
            namespace: namespace.clone(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
        }),
        partition: partition.to_string(),
        account: namespace.clone(),
        user: namespace,
        qos: pod
            .spec
            .as_ref()
            .and_then(|s| s.priority_class_name.clone())
            .unwrap_or_default(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: millicores.div_ceil(1000).max(1) as u32,
        mem_mb: memory_bytes.div_ceil(1 << 20),
        work_dir: "/".into(),
        pod_group: group,
        ..Default::default()
    };
    gpus.apply_to(&mut spec);
    Ok(spec)
}

/// A node's name inside a raw Node object.
fn node_name(node: &serde_json::Value) -> Option<&str> {
    node.get("metadata")?.get("name")?.as_str()
}

/// The label naming a pod's group (scheduler-plugins' coscheduling).
pub const POD_GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";

/// The group a pod's label names, as `namespace/name`.
pub fn pod_group_name(pod: &Pod) -> Option<String> {
    let name = pod.metadata.labels.as_ref()?.get(POD_GROUP_LABEL)?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{ns}/{name}"))
}

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
fn whole_gpu_group(group: &str, want: &PodGpus) -> Result<(), String> {
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

/// Whether one node passes: `Err((reason, unresolvable))` when it does not.
type NodeRule<'a> = Box<dyn Fn(&str) -> Result<(), Misfit> + 'a>;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_node(gpus: u32, busy: u32) -> StateMachine {
        state_with_node_cpus(gpus, busy, 1)
    }

    /// Node gpu1 (64 CPUs, 256 GiB) with `gpus` GPUs; a batch job holds `busy` of them and
    /// `cpus_held` CPUs when `busy > 0`.
    fn state_with_node_cpus(gpus: u32, busy: u32, cpus_held: u32) -> StateMachine {
        let mut sm = StateMachine::default();
        let inv = pb::NodeInventory {
            name: "gpu1".into(),
            partition: "gpu".into(),
            cpus: 64,
            memory_mb: 256 << 10,
            gpus: (0..gpus)
                .map(|i| pb::Gpu {
                    uuid: format!("GPU-{i}"),
                    index: i,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let register = pb::Command {
            time_ms: 1,
            cmd: Some(pb::command::Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inv),
            })),
        };
        sm.apply(1, register);
        if busy > 0 {
            let spec = pb::JobSpec {
                name: "busy".into(),
                script: "#!/bin/sh\ntrue\n".into(),
                work_dir: "/tmp".into(),
                partition: "gpu".into(),
                nodes: 1,
                ntasks: 1,
                cpus_per_task: 1,
                gpus_per_node: busy,
                ..Default::default()
            };
            let submit = pb::Command {
                time_ms: 2,
                cmd: Some(pb::command::Cmd::Submit(pb::SubmitJob { spec: Some(spec) })),
            };
            sm.apply(2, submit);
            let alloc = pb::Allocate {
                term: 1,
                placements: vec![pb::Placement {
                    job_id: 1,
                    allocations: vec![pb::Allocation {
                        node: "gpu1".into(),
                        gpu_uuids: (0..busy).map(|i| format!("GPU-{i}")).collect(),
                        cpus: cpus_held,
                        ..Default::default()
                    }],
                }],
            };
            sm.apply(
                3,
                pb::Command {
                    time_ms: 3,
                    cmd: Some(pb::command::Cmd::Allocate(alloc)),
                },
            );
        }
        sm
    }

    fn pod_json(gpus: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"p","namespace":"ml"}},"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"nvidia.com/gpu":"{gpus}"}}}}}}]}}}}"#
        )
    }

    #[test]
    fn filter_with_node_names_keeps_fitting_nodes_and_explains_the_rest() {
        let sm = state_with_node(8, 6);
        let body = format!(
            r#"{{"Pod":{},"Nodes":null,"NodeNames":["gpu1","cpu9"]}}"#,
            pod_json("2")
        );
        let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
        assert_eq!(got.node_names, Some(vec!["gpu1".to_string()]));
        assert!(got.failed_and_unresolvable_nodes["cpu9"].contains("not managed by berth"));
        let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json("3"));
        let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
        assert_eq!(got.node_names, Some(vec![]));
        assert_eq!(
            got.failed_nodes["gpu1"],
            "Insufficient nvidia.com/gpu: 2 free, pod needs 3"
        );
        // The wire form: exact PascalCase keys, an empty list (never null) on success.
        let wire = serde_json::to_string(&got).unwrap();
        assert_eq!(
            wire,
            r#"{"Nodes":null,"NodeNames":[],"FailedNodes":{"gpu1":"Insufficient nvidia.com/gpu: 2 free, pod needs 3"},"FailedAndUnresolvableNodes":{},"Error":""}"#
        );
    }

    #[test]
    fn filter_judges_cpus_and_memory_by_berths_own_accounting() {
        // A batch job kube-scheduler never sees holds 63 of the node's 64 CPUs.
        let sm = state_with_node_cpus(8, 1, 63);
        let pod = |cpu: &str, mem: &str| {
            format!(
                r#"{{"Pod":{{"metadata":{{"name":"p","namespace":"ml"}},"spec":{{"containers":[{{"name":"c","resources":{{"requests":{{"cpu":"{cpu}","memory":"{mem}"}},"limits":{{"nvidia.com/gpu":"1"}}}}}}]}}}},"NodeNames":["gpu1"]}}"#
            )
        };
        let run = |body: String| filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
        let ok = run(pod("500m", "1Gi"));
        assert_eq!(ok.node_names, Some(vec!["gpu1".to_string()]), "{ok:?}");
        let busy = run(pod("2", "1Gi"));
        assert_eq!(
            busy.failed_nodes["gpu1"],
            "Insufficient cpu: 1 of 64 free in berth, pod needs 2"
        );
        let never = run(pod("65", "1Gi"));
        assert!(never.failed_and_unresolvable_nodes["gpu1"].contains("pod needs 65"));
        let mem = run(pod("1", "257Gi"));
        assert_eq!(
            mem.failed_and_unresolvable_nodes["gpu1"],
            "Insufficient memory: 262144 MiB of 262144 free in berth, pod needs 263168"
        );
        let bad = run(pod("lots", "1Gi"));
        assert!(bad.error.contains("lots"), "{bad:?}");
    }

    #[test]
    fn filter_with_full_nodes_echoes_them_unchanged() {
        let sm = state_with_node(8, 0);
        let node = r#"{"metadata":{"name":"gpu1","labels":{"zone":"a"}},"spec":{"taints":[{"key":"k","effect":"NoSchedule"}]},"status":{"allocatable":{"cpu":"8"},"daemonEndpoints":{"kubeletEndpoint":{"Port":10250}}}}"#;
        let body = format!(
            r#"{{"pod":{},"nodes":{{"metadata":{{}},"items":[{node}]}}}}"#,
            pod_json("1")
        );
        let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
        let items = &got.nodes.unwrap()["items"];
        assert_eq!(
            items[0],
            serde_json::from_str::<serde_json::Value>(node).unwrap()
        );
    }

    #[test]
    fn prioritize_prefers_the_fullest_fit() {
        let sm = state_with_node(8, 6);
        let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1","x"]}}"#, pod_json("2"));
        let got = prioritize(&sm, &parse_args(body.as_bytes()).unwrap()).unwrap();
        // 2 free, 2 wanted: the pod fills the node, 10 - 10*0/8 = 10.
        assert_eq!(
            got[0],
            HostPriority {
                host: "gpu1".into(),
                score: 10
            }
        );
        assert_eq!(
            got[1],
            HostPriority {
                host: "x".into(),
                score: 0
            }
        );
        let sm = state_with_node(8, 0);
        let got = prioritize(&sm, &parse_args(body.as_bytes()).unwrap()).unwrap();
        // 8 free, 2 wanted: 10 - 10*6/8 = 10 - 7 = 3 (integer division).
        assert_eq!(got[0].score, 3);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid extender request"),
            ("{", "invalid extender request"),
            ("[]", "invalid extender request"),
            (r#"{"NodeNames":["a"]}"#, "no Pod"),
            (
                r#"{"Pod":{"metadata":{"name":"p"}}}"#,
                "neither Nodes nor NodeNames",
            ),
            (
                r#"{"Pod":{"spec":{"containers":"x"}},"NodeNames":[]}"#,
                "invalid extender request",
            ),
        ];
        for (i, (body, want)) in cases.iter().enumerate() {
            match parse_args(body.as_bytes()) {
                Err(e) if e.to_string().contains(want) => {}
                other => panic!("#{i}: want an error with {want:?}, got {other:?}"),
            }
        }
        let sm = state_with_node(8, 0);
        for (quantity, want) in [("1.5", "not a whole number"), ("two", "not a whole number")] {
            let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json(quantity));
            let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
            assert!(got.error.contains(want), "{quantity}: {got:?}");
            assert_eq!(got.node_names, None, "every node filtered out on error");
        }
        let mixed = r#"{"Pod":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/mig-1g.10gb":"1","nvidia.com/gpu":"1"}}}]}},"NodeNames":["gpu1"]}"#;
        let got = filter(&sm, &parse_args(mixed.as_bytes()).unwrap(), None);
        assert!(
            got.error
                .contains("asks for nvidia.com/gpu and nvidia.com/mig-1g.10gb"),
            "{got:?}"
        );
        assert_eq!(got.node_names, None, "every node filtered out on error");
    }

    #[test]
    fn unhealthy_gpus_are_neither_free_nor_counted() {
        let mut sm = state_with_node(2, 0);
        let mark = pb::MarkGpuUnhealthy {
            node: "gpu1".into(),
            gpu_uuid: "GPU-1".into(),
            reason: "XID 79".into(),
        };
        sm.apply(
            2,
            pb::Command {
                time_ms: 2,
                cmd: Some(pb::command::Cmd::MarkGpuUnhealthy(mark)),
            },
        );
        let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json("2"));
        let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
        assert_eq!(
            got.failed_and_unresolvable_nodes["gpu1"],
            "node has 1 healthy GPUs, pod needs 2"
        );
        let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json("1"));
        let got = prioritize(&sm, &parse_args(body.as_bytes()).unwrap()).unwrap();
        // 1 healthy GPU, 1 wanted: filled, 10.
        assert_eq!(got[0].score, 10);
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        let ok: &[(&str, bool, u64)] = &[
            ("2", true, 2000),
            ("500m", true, 500),
            ("1.5", true, 1500),
            ("0.1", true, 100),
            ("128Mi", false, 128 << 20),
            ("1Gi", false, 1 << 30),
            ("1G", false, 1_000_000_000),
            ("1e9", false, 1_000_000_000),
            ("100", false, 100),
        ];
        for (i, (text, milli, want)) in ok.iter().enumerate() {
            let got = quantity(text, *milli);
            assert_eq!(got, Ok(*want), "#{i}: {text}");
        }
        for (i, text) in ["", "Mi", "-1", "abc", "1.2.3", "12Zi", "1e999"]
            .iter()
            .enumerate()
        {
            assert!(quantity(text, false).is_err(), "#{i}: {text:?} accepted");
        }
    }

    #[test]
    fn a_pod_becomes_a_one_node_job_of_its_namespace() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"train","namespace":"ml","uid":"u-1"},
                "spec":{"priorityClassName":"training","containers":[
                  {"name":"a","resources":{"requests":{"cpu":"1500m","memory":"1Gi"},"limits":{"nvidia.com/gpu":"2"}}},
                  {"name":"b","resources":{"requests":{"cpu":"250m","memory":"512Mi"}}}]}}"#,
        )
        .unwrap();
        let spec = pod_job_spec(&pod, "h100", None).unwrap();
        assert_eq!(spec.pod.as_ref().unwrap().uid, "u-1");
        assert_eq!(
            (spec.account.as_str(), spec.qos.as_str()),
            ("ml", "training")
        );
        // 1.75 cores round up to 2; 1.5 GiB = 1536 MiB.
        assert_eq!(
            (spec.cpus_per_task, spec.mem_mb, spec.gpus_per_node),
            (2, 1536, 2)
        );
        crate::state_machine::pods::validate_pod_spec(&spec).unwrap();
        let bad: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"x"},"spec":{"containers":[{"name":"a","resources":{"requests":{"memory":"lots"}}}]}}"#,
        )
        .unwrap();
        let err = pod_job_spec(&bad, "h100", None).unwrap_err().to_string();
        assert!(err.contains("memory") && err.contains("lots"), "{err}");
    }

    #[test]
    fn binding_args_use_the_go_field_names() {
        let a = parse_binding_args(
            br#"{"PodName":"p","PodNamespace":"ml","PodUID":"u","Node":"gpu1"}"#,
        )
        .unwrap();
        assert_eq!((a.pod_name.as_str(), a.node.as_str()), ("p", "gpu1"));
        for body in [
            &b"{}"[..],
            br#"{"PodName":"","PodNamespace":"ml","Node":"n"}"#,
            b"nope",
        ] {
            assert!(parse_binding_args(body).is_err());
        }
        let wire = serde_json::to_string(&ExtenderBindingResult::default()).unwrap();
        assert_eq!(wire, r#"{"Error":""}"#);
    }

    #[test]
    fn preempt_keeps_only_nodes_where_the_victims_free_enough_gpus() {
        // 8 GPUs, 6 held by batch job 1 (not a pod): evicting pods frees nothing there.
        let sm = state_with_node(8, 6);
        let body = format!(
            r#"{{"Pod":{},"NodeNameToMetaVictims":{{"gpu1":{{"Pods":[{{"UID":"v1"}}],"NumPDBViolations":0}},"ghost":{{"Pods":[{{"UID":"v2"}}]}}}}}}"#,
            pod_json("3")
        );
        let got = preempt(&sm, &parse_preemption_args(body.as_bytes()).unwrap()).unwrap();
        assert!(got.node_name_to_meta_victims.is_empty(), "{got:?}");
        // 2 GPUs: they are free already, so the node is kept with its victims.
        let body = body.replace("\"3\"", "\"2\"");
        let got = preempt(&sm, &parse_preemption_args(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            r#"{"NodeNameToMetaVictims":{"gpu1":{"Pods":[{"UID":"v1"}],"NumPDBViolations":0}}}"#
        );
        assert!(parse_preemption_args(b"{}").is_err());
        assert!(parse_preemption_args(b"{\"Pod\":5}").is_err());
    }

    #[test]
    fn preempting_a_pod_that_holds_the_gpus_is_agreed() {
        let mut sm = state_with_node(4, 0);
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"low","namespace":"ml","uid":"v1"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/gpu":"4"}}}]}}"#,
        )
        .unwrap();
        assert_eq!(bind_pod_on(&mut sm, 2, &pod, "gpu1", None), Ok(1));
        let body = format!(
            r#"{{"Pod":{},"NodeNameToMetaVictims":{{"gpu1":{{"Pods":[{{"UID":"v1"}}]}}}}}}"#,
            pod_json("4")
        );
        let got = preempt(&sm, &parse_preemption_args(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(got.node_name_to_meta_victims.len(), 1);
        // Evicting some other pod frees nothing.
        let other = body.replace("\"v1\"", "\"v9\"");
        let got = preempt(&sm, &parse_preemption_args(other.as_bytes()).unwrap()).unwrap();
        assert!(got.node_name_to_meta_victims.is_empty());
    }

    /// gpu1: 8 GPUs, 4 held by a batch job, 2 by pod `u-pod-on-gpu1`, 2 free; gpu2: 8
    /// free; cpu1 is not berth's.
    fn golden_state() -> StateMachine {
        let mut sm = state_with_node(8, 4);
        let inv = pb::NodeInventory {
            name: "gpu2".into(),
            partition: "gpu".into(),
            cpus: 64,
            memory_mb: 256 << 10,
            gpus: (0..8)
                .map(|i| pb::Gpu {
                    uuid: format!("GPU-B{i}"),
                    index: i,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let cmd = |time_ms, cmd| pb::Command {
            time_ms,
            cmd: Some(cmd),
        };
        sm.apply(
            4,
            cmd(
                4,
                pb::command::Cmd::RegisterNode(pb::RegisterNode {
                    inventory: Some(inv),
                }),
            ),
        );
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"low","namespace":"ml","uid":"u-pod-on-gpu1"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/gpu":"2"}}}]}}"#,
        )
        .unwrap();
        assert_eq!(bind_pod_on(&mut sm, 5, &pod, "gpu1", None), Ok(2));
        add_carved_nodes(&mut sm, 6);
        // One 1g.10gb slice held on mig1 and one share of a ts1 GPU, by pods.
        for (index, name, resource, node) in [
            (8, "slice", "nvidia.com/mig-1g.10gb", "mig1"),
            (9, "share", "nvidia.com/gpu.shared", "ts1"),
        ] {
            let pod: Pod = serde_json::from_str(&format!(
                r#"{{"metadata":{{"name":"{name}","namespace":"ml","uid":"u-{name}"}},"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"{resource}":"1"}}}}}}]}}}}"#
            ))
            .unwrap();
            bind_pod_on(&mut sm, index, &pod, node, None).unwrap();
        }
        sm
    }

    /// Registers mig1 (2 A100 80GB in MIG mode, built-in profile table) and ts1 (2 GPUs
    /// offered as 4 time-slice replicas each) at `index` and `index + 1`.
    fn add_carved_nodes(sm: &mut StateMachine, index: u64) {
        let node = |name: &str, gpus: Vec<pb::Gpu>| pb::NodeInventory {
            name: name.into(),
            partition: "gpu".into(),
            cpus: 16,
            memory_mb: 1 << 20,
            gpus,
            ..Default::default()
        };
        let mig = (0..2)
            .map(|i| pb::Gpu {
                uuid: format!("GPU-M{i}"),
                index: i,
                model: "NVIDIA A100-SXM4-80GB".into(),
                mig_capable: true,
                mig_enabled: true,
                ..Default::default()
            })
            .collect();
        let shared = (0..2)
            .map(|i| pb::Gpu {
                uuid: format!("GPU-T{i}"),
                index: i,
                replicas: 4,
                ..Default::default()
            })
            .collect();
        for (i, inv) in [node("mig1", mig), node("ts1", shared)]
            .into_iter()
            .enumerate()
        {
            let at = index + i as u64;
            let (outcome, _) = sm.apply(
                at,
                pb::Command {
                    time_ms: at,
                    cmd: Some(pb::command::Cmd::RegisterNode(pb::RegisterNode {
                        inventory: Some(inv),
                    })),
                },
            );
            assert!(
                !matches!(outcome, crate::state_machine::Outcome::Rejected(_)),
                "{outcome:?}"
            );
        }
    }

    /// Every `testdata/extender/<case>.request.json` answered as the verb its name starts
    /// with must equal `<case>.response.json` (the wire JSON). `BERTH_BLESS=1` writes
    /// missing answers, to be read and checked by hand before they are committed.
    #[test]
    fn golden_requests_get_their_golden_answers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/extender");
        let sm = golden_state();
        let mut cases = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(case) = name.strip_suffix(".request.json") else {
                continue;
            };
            let body = std::fs::read(&path).unwrap();
            let answer = if case.starts_with("filter") {
                let result = match parse_args(&body) {
                    Ok(args) => filter(&sm, &args, None),
                    Err(e) => ExtenderFilterResult {
                        error: e.to_string(),
                        ..Default::default()
                    },
                };
                serde_json::to_value(result).unwrap()
            } else if case.starts_with("prioritize") {
                let args = parse_args(&body).unwrap();
                serde_json::to_value(prioritize(&sm, &args).unwrap()).unwrap()
            } else if case.starts_with("preempt") {
                let args = parse_preemption_args(&body).unwrap();
                serde_json::to_value(preempt(&sm, &args).unwrap()).unwrap()
            } else {
                panic!("{name}: no verb in the case name");
            };
            let want_path = dir.join(format!("{case}.response.json"));
            if !want_path.exists() && std::env::var_os("BERTH_BLESS").is_some() {
                let text = serde_json::to_string_pretty(&answer).unwrap() + "\n";
                std::fs::write(&want_path, text).unwrap();
            }
            let want: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&want_path)
                    .unwrap_or_else(|e| panic!("{}: {e}", want_path.display())),
            )
            .unwrap();
            assert_eq!(answer, want, "{case}");
            cases += 1;
        }
        assert!(cases >= 8, "only {cases} golden cases found");
    }

    fn gang_pod(name: &str, gpus: u32) -> Pod {
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"ml","uid":"uid-{name}","labels":{{"scheduling.x-k8s.io/pod-group":"g"}}}},
                "spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"nvidia.com/gpu":"{gpus}"}}}}}}]}}}}"#
        ))
        .unwrap()
    }

    /// Plans and applies a pod's bind on `node` (a gang member's with `group`), as the
    /// leader's `BindPod` does.
    fn bind_pod_on(
        sm: &mut StateMachine,
        index: u64,
        pod: &Pod,
        node: &str,
        group: Option<&pb::PodGroupRef>,
    ) -> Result<u64, String> {
        let spec = pod_job_spec(pod, "gpu", group.cloned()).unwrap();
        let (allocation, reservation) = plan_bind(sm, node, &spec)?;
        let bind = pb::BindPod {
            term: 1,
            spec: Some(spec),
            allocation: Some(allocation),
            reservation,
        };
        let cmd = pb::Command {
            time_ms: index,
            cmd: Some(pb::command::Cmd::BindPod(bind)),
        };
        match sm.apply(index, cmd).0 {
            crate::state_machine::Outcome::Submitted(id) => Ok(id),
            other => Err(format!("{other:?}")),
        }
    }

    /// `/filter` of pod group member `pod` over the golden nodes gpu1 and gpu2.
    fn filter_gang_member(
        sm: &StateMachine,
        pod: &Pod,
        group: &pb::PodGroupRef,
    ) -> ExtenderFilterResult {
        let body = format!(
            r#"{{"Pod":{},"NodeNames":["gpu1","gpu2"]}}"#,
            serde_json::to_string(pod).unwrap()
        );
        filter(sm, &parse_args(body.as_bytes()).unwrap(), Some(group))
    }

    fn free_on(sm: &StateMachine, node: &str) -> u32 {
        pod_fit::check(sm, node, &PodGpus::Whole(1)).unwrap_or(0)
    }

    #[test]
    fn a_pod_group_is_reserved_whole_at_its_first_bind_and_claimed_slot_by_slot() {
        // gpu1 has 2 free GPUs, gpu2 8: three 2-GPU members fit (gpu1 + 2 on gpu2).
        let mut sm = golden_state();
        let group = pb::PodGroupRef {
            name: "ml/g".into(),
            min_member: 3,
            timeout_ms: 60_000,
        };
        assert_eq!(pod_group_name(&gang_pod("m0", 2)).as_deref(), Some("ml/g"));
        let first = bind_pod_on(&mut sm, 10, &gang_pod("m0", 2), "gpu1", Some(&group)).unwrap();
        // Every member's GPUs are held from the first bind on: gpu1 full, 4 taken on gpu2.
        assert_eq!((free_on(&sm, "gpu1"), free_on(&sm, "gpu2")), (0, 4));
        let held = sm.group_reservation("ml/g").unwrap().id;
        assert_eq!(held, first + 1);
        // The other members are steered to the reserved node only.
        let got = filter_gang_member(&sm, &gang_pod("m1", 2), &group);
        assert_eq!(got.node_names, Some(vec!["gpu2".to_string()]), "{got:?}");
        assert!(got.failed_nodes["gpu1"].contains("holds its GPUs on other nodes"));
        // A member may not take GPUs its group did not reserve.
        assert!(bind_pod_on(&mut sm, 11, &gang_pod("m1", 2), "gpu1", Some(&group)).is_err());
        bind_pod_on(&mut sm, 12, &gang_pod("m1", 2), "gpu2", Some(&group)).unwrap();
        bind_pod_on(&mut sm, 13, &gang_pod("m2", 2), "gpu2", Some(&group)).unwrap();
        assert!(sm.group_reservation("ml/g").is_none(), "all slots claimed");
        assert_eq!(sm.job(held).unwrap().state(), pb::JobState::Completed);
        assert_eq!((free_on(&sm, "gpu1"), free_on(&sm, "gpu2")), (0, 4));
        let members = sm
            .jobs()
            .filter(|j| j.spec.as_ref().and_then(|s| s.pod.as_ref()).is_some())
            .filter(|j| j.state() == pb::JobState::Running)
            .count();
        assert_eq!(members, 6, "three gang members and the three earlier pods");
    }

    #[test]
    fn a_pod_group_that_cannot_fit_whole_takes_nothing() {
        let mut sm = golden_state();
        let group = pb::PodGroupRef {
            name: "ml/g".into(),
            min_member: 6,
            timeout_ms: 60_000,
        };
        // 2 + 8 free GPUs hold five 2-GPU members, not six.
        let got = filter_gang_member(&sm, &gang_pod("m0", 2), &group);
        assert_eq!(got.node_names, Some(vec![]));
        assert_eq!(
            got.failed_nodes["gpu2"],
            "pod group ml/g: 5 of its 6 members fit now"
        );
        let err = bind_pod_on(&mut sm, 10, &gang_pod("m0", 2), "gpu2", Some(&group)).unwrap_err();
        assert!(err.contains("only 5 of its 6 members fit"), "{err}");
        assert_eq!((free_on(&sm, "gpu1"), free_on(&sm, "gpu2")), (2, 8));
        // A bind that carries too few slots is refused by the log itself.
        let spec = pod_job_spec(&gang_pod("m0", 2), "gpu", Some(group)).unwrap();
        let bind = pb::BindPod {
            term: 1,
            allocation: Some(allocation_on(&sm, "gpu2", &spec).unwrap()),
            spec: Some(spec),
            reservation: vec![],
        };
        let cmd = pb::Command {
            time_ms: 11,
            cmd: Some(pb::command::Cmd::BindPod(bind)),
        };
        let (outcome, _) = sm.apply(11, cmd);
        assert!(
            matches!(outcome, crate::state_machine::Outcome::Rejected(ref w) if w.contains("needs 6 members")),
            "{outcome:?}"
        );
        assert_eq!(free_on(&sm, "gpu2"), 8);
    }

    #[test]
    fn an_expired_reservation_is_released_by_cancel() {
        let mut sm = golden_state();
        let group = pb::PodGroupRef {
            name: "ml/g".into(),
            min_member: 3,
            timeout_ms: 1_000,
        };
        bind_pod_on(&mut sm, 10, &gang_pod("m0", 2), "gpu2", Some(&group)).unwrap();
        assert_eq!(free_on(&sm, "gpu2"), 2);
        let running: Vec<pb::Job> = sm.jobs().cloned().collect();
        assert!(crate::kube_api::expired_reservations(&running, 10 + 999).is_empty());
        let expired = crate::kube_api::expired_reservations(&running, 10 + 1_000);
        assert_eq!(expired.len(), 1);
        let cancel = pb::Command {
            time_ms: 2_000,
            cmd: Some(pb::command::Cmd::Cancel(pb::CancelJob {
                job_id: expired[0],
                reason: "pod group reservation timed out".into(),
                end_state: 0,
            })),
        };
        sm.apply(11, cancel);
        // The first member keeps its 2 GPUs; the 4 reserved for the others are free again.
        assert_eq!(free_on(&sm, "gpu2"), 6);
    }

    #[test]
    fn mig_and_shared_pods_get_slices_and_shares_chosen_by_the_placement() {
        let sm = golden_state();
        // The planner's rule: a lone 1g slice goes to start 6 of the first card.
        let slice = &sm.pod_job("u-slice").unwrap().allocations[0];
        assert!(slice.gpu_uuids.is_empty(), "{slice:?}");
        let got: Vec<(&str, &str, u32, u32)> = slice
            .mig_slices
            .iter()
            .map(|s| {
                (
                    s.gpu_uuid.as_str(),
                    s.profile.as_str(),
                    s.placement_start,
                    s.placement_size,
                )
            })
            .collect();
        assert_eq!(got, [("GPU-M0", "1g.10gb", 6, 1)]);
        let share = sm.pod_job("u-share").unwrap();
        assert_eq!(share.allocations[0].gpu_uuids, ["GPU-T0"]);
        let t0 = &sm.node("ts1").unwrap().inventory.as_ref().unwrap().gpus[0];
        assert_eq!(t0.share_job_ids, [share.id]);
        let ann = crate::kube_api::pod_annotations(sm.pod_job("u-slice").unwrap());
        assert_eq!(ann[crate::kube_api::MIG_SLICES_KEY], "GPU-M0:1g.10gb@6:1");
        let ann = crate::kube_api::pod_annotations(share);
        assert_eq!(
            (
                ann[crate::kube_api::GPUS_KEY].as_str(),
                ann[crate::kube_api::SHARING_KEY].as_str()
            ),
            ("GPU-T0", "time-slicing")
        );
    }

    #[test]
    fn a_pod_allocation_of_the_wrong_kind_is_refused_at_apply() {
        let mut sm = golden_state();
        let pod = |name: &str, resource: &str| -> Pod {
            serde_json::from_str(&format!(
                r#"{{"metadata":{{"name":"{name}","namespace":"ml","uid":"u-{name}"}},"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"{resource}":"1"}}}}}}]}}}}"#
            ))
            .unwrap()
        };
        let whole_on = |node: &str, uuid: &str| pb::Allocation {
            node: node.into(),
            gpu_uuids: vec![uuid.into()],
            cpus: 1,
            ..Default::default()
        };
        let cases = [
            (
                pod("a", "nvidia.com/gpu.shared"),
                whole_on("gpu2", "GPU-B7"),
                "not time-sliced",
            ),
            (
                pod("b", "nvidia.com/gpu"),
                whole_on("ts1", "GPU-T1"),
                "is time-sliced",
            ),
            (
                pod("c", "nvidia.com/mig-1g.10gb"),
                whole_on("gpu2", "GPU-B7"),
                "1 MIG slice(s), the allocation carries 0",
            ),
        ];
        for (i, (pod, allocation, want)) in cases.into_iter().enumerate() {
            let bind = pb::BindPod {
                term: 1,
                spec: Some(pod_job_spec(&pod, "gpu", None).unwrap()),
                allocation: Some(allocation),
                reservation: vec![],
            };
            let before = sm.jobs().count();
            let index = 20 + i as u64;
            let cmd = pb::Command {
                time_ms: index,
                cmd: Some(pb::command::Cmd::BindPod(bind)),
            };
            match sm.apply(index, cmd).0 {
                crate::state_machine::Outcome::Rejected(why) if why.contains(want) => {}
                other => panic!("#{i}: want a refusal with {want:?}, got {other:?}"),
            }
            assert_eq!(
                sm.jobs().count(),
                before,
                "#{i}: a refused bind changes nothing"
            );
        }
        // A pod group of MIG pods is refused by filter, bind planning and the log alike.
        let group = pb::PodGroupRef {
            name: "ml/g".into(),
            min_member: 2,
            timeout_ms: 1_000,
        };
        let p = pod("d", "nvidia.com/mig-1g.10gb");
        let got = filter_gang_member(&sm, &p, &group);
        assert!(got.error.contains("pod groups get whole"), "{got:?}");
        let spec = pod_job_spec(&p, "gpu", Some(group)).unwrap();
        assert!(plan_bind(&sm, "mig1", &spec)
            .unwrap_err()
            .contains("not placed as a group"));
        assert!(crate::state_machine::pods::validate_pod_spec(&spec).is_err());
    }

    #[test]
    fn preempt_judges_mig_pods_by_the_slices_the_victims_free() {
        let sm = golden_state();
        // Four 3g.40gb slices need both mig1 cards empty: the 1g slice of u-slice is in
        // the way, so only evicting that pod makes room.
        let pod = r#"{"metadata":{"name":"big","namespace":"ml"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/mig-3g.40gb":"4"}}}]}}"#;
        let body = |victim: &str| {
            format!(
                r#"{{"Pod":{pod},"NodeNameToMetaVictims":{{"mig1":{{"Pods":[{{"UID":"{victim}"}}]}}}}}}"#
            )
        };
        let kept = |victim: &str| {
            let args = parse_preemption_args(body(victim).as_bytes()).unwrap();
            preempt(&sm, &args).unwrap().node_name_to_meta_victims.len()
        };
        assert_eq!(kept("u-slice"), 1);
        assert_eq!(
            kept("u-share"),
            0,
            "a pod on another node frees nothing here"
        );
    }

    #[test]
    fn pods_without_gpus_pass_everywhere() {
        let sm = state_with_node(8, 8);
        let body = r#"{"Pod":{"metadata":{"name":"web"},"spec":{"containers":[{"name":"c"}]}},"NodeNames":["gpu1","cpu9"]}"#;
        let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
        assert_eq!(got.node_names.unwrap().len(), 2);
    }
}
