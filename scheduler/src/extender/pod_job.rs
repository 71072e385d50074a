//! What a pod asks of berth, and the berth job a pod stands for (namespace = account and
//! user, `priorityClassName` = QOS, CPUs rounded up to cores, memory in MiB, GPUs).

use super::wire::ExtenderError;
use crate::pod_gpus::PodGpus;
use berth_proto::v1 as pb;
use k8s_openapi::api::core::v1::Pod;

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
pub(super) fn pod_sum(pod: &Pod, resource: &str, milli: bool) -> Result<u64, ExtenderError> {
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

/// The label naming a pod's group (scheduler-plugins' coscheduling).
pub const POD_GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";

/// The group a pod's label names, as `namespace/name`.
pub fn pod_group_name(pod: &Pod) -> Option<String> {
    let name = pod.metadata.labels.as_ref()?.get(POD_GROUP_LABEL)?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{ns}/{name}"))
}
