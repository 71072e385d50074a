//! The extender's wire types (`k8s.io/kube-scheduler/extender/v1`): Go field names as
//! JSON keys, lower/camel case accepted on input, raw Node objects echoed unchanged.

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
