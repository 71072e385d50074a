//! What GPUs a Kubernetes pod asks for: whole GPUs (`nvidia.com/gpu`), time-slice shares
//! (`nvidia.com/gpu.shared`) or MIG slices of one profile (`nvidia.com/mig-<profile>`, the
//! names of NVIDIA's device plugin "mixed" strategy), read from the pod's containers.
//!
//! Per container, limits win over requests (for extended resources they must be equal when
//! both are set). Containers add up; init containers run one at a time before them, so the
//! pod needs the larger of the sum and the largest init container, per resource. A pod gets
//! one kind of GPU: berth plans whole GPUs, one MIG profile, or shares, and a pod that mixes
//! them (or two MIG profiles) is refused with the resources it named, rather than placed
//! half.

use berth_policies::mig::is_profile_name;
use berth_proto::v1 as pb;
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::BTreeMap;

/// The extended resource of whole NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The extended resource of time-slice shares of GPUs offered as replicas.
pub const SHARED_RESOURCE: &str = "nvidia.com/gpu.shared";
/// The prefix of MIG resources, followed by the profile (`nvidia.com/mig-1g.10gb`).
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";

/// The GPUs one pod needs on its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PodGpus {
    /// No GPU resource at all.
    #[default]
    None,
    /// Whole GPUs (never time-sliced, never in MIG mode).
    Whole(u32),
    /// One time-slice share on each of this many distinct time-sliced GPUs.
    Shared(u32),
    /// MIG slices of one profile.
    Mig {
        /// Profile as the card names it (`1g.10gb`).
        profile: String,
        /// Slices.
        count: u32,
    },
}

impl PodGpus {
    /// How many GPUs, shares or slices.
    pub fn count(&self) -> u32 {
        match self {
            PodGpus::None => 0,
            PodGpus::Whole(n) | PodGpus::Shared(n) => *n,
            PodGpus::Mig { count, .. } => *count,
        }
    }

    /// The Kubernetes resource name (empty for [`PodGpus::None`]).
    pub fn resource(&self) -> String {
        match self {
            PodGpus::None => String::new(),
            PodGpus::Whole(_) => GPU_RESOURCE.into(),
            PodGpus::Shared(_) => SHARED_RESOURCE.into(),
            PodGpus::Mig { profile, .. } => format!("{MIG_RESOURCE_PREFIX}{profile}"),
        }
    }

    /// Writes the request into a pod job's spec (`gpus_per_node`, `gpu_shared`,
    /// `mig_profile`/`mig_per_node`).
    pub fn apply_to(&self, spec: &mut pb::JobSpec) {
        match self {
            PodGpus::None => {}
            PodGpus::Whole(n) => spec.gpus_per_node = *n,
            PodGpus::Shared(n) => {
                spec.gpus_per_node = *n;
                spec.gpu_shared = true;
            }
            PodGpus::Mig { profile, count } => {
                spec.mig_profile = profile.clone();
                spec.mig_per_node = *count;
            }
        }
    }

    /// The request a pod job's spec carries (the inverse of [`PodGpus::apply_to`]).
    pub fn of_spec(spec: &pb::JobSpec) -> PodGpus {
        if !spec.mig_profile.is_empty() && spec.mig_per_node > 0 {
            PodGpus::Mig {
                profile: spec.mig_profile.clone(),
                count: spec.mig_per_node,
            }
        } else if spec.gpus_per_node == 0 {
            PodGpus::None
        } else if spec.gpu_shared {
            PodGpus::Shared(spec.gpus_per_node)
        } else {
            PodGpus::Whole(spec.gpus_per_node)
        }
    }
}

/// The GPU resources one container asks for, by resource name (quantities > 0 only).
fn container_gpus(c: &Container) -> Result<BTreeMap<String, u32>, String> {
    let mut out = BTreeMap::new();
    let Some(res) = &c.resources else {
        return Ok(out);
    };
    // Limits first: a key there wins over the same key in requests.
    for map in [&res.limits, &res.requests].into_iter().flatten() {
        for (name, q) in map {
            if out.contains_key(name) || !is_gpu_resource(name)? {
                continue;
            }
            let n: u32 = q.0.trim().parse().map_err(|_| {
                format!(
                    "container {}: {name} {:?} is not a whole number",
                    c.name, q.0
                )
            })?;
            out.insert(name.clone(), n);
        }
    }
    out.retain(|_, n| *n > 0);
    Ok(out)
}

/// Whether `name` is one of the GPU resources berth places; a MIG resource whose profile
/// is misspelt is an error, not someone else's resource.
fn is_gpu_resource(name: &str) -> Result<bool, String> {
    if name == GPU_RESOURCE || name == SHARED_RESOURCE {
        return Ok(true);
    }
    let Some(profile) = name.strip_prefix(MIG_RESOURCE_PREFIX) else {
        return Ok(false);
    };
    if is_profile_name(profile) {
        Ok(true)
    } else {
        Err(format!(
            "{name}: {profile:?} is not a MIG profile name (<n>g.<m>gb, e.g. 1g.10gb)"
        ))
    }
}

/// The GPUs `pod` needs (see the module doc for how containers add up).
///
/// # Errors
/// A message naming the container or resources when a quantity is not a whole number,
/// a MIG resource names no profile, or the pod mixes kinds of GPU.
pub fn pod_gpus(pod: &Pod) -> Result<PodGpus, String> {
    let Some(spec) = &pod.spec else {
        return Ok(PodGpus::None);
    };
    let mut need: BTreeMap<String, u32> = BTreeMap::new();
    for c in &spec.containers {
        for (name, n) in container_gpus(c)? {
            let sum = need.entry(name).or_default();
            *sum = sum.saturating_add(n);
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (name, n) in container_gpus(c)? {
            let max = need.entry(name).or_default();
            *max = (*max).max(n);
        }
    }
    let mut kinds = need.into_iter();
    let Some((name, n)) = kinds.next() else {
        return Ok(PodGpus::None);
    };
    let rest: Vec<String> = kinds.map(|(k, _)| k).collect();
    if !rest.is_empty() {
        return Err(format!(
            "asks for {name} and {}: berth gives a pod one kind of GPU (whole GPUs, \
             shares, or slices of one MIG profile)",
            rest.join(" and ")
        ));
    }
    Ok(match name.as_str() {
        GPU_RESOURCE => PodGpus::Whole(n),
        SHARED_RESOURCE => PodGpus::Shared(n),
        mig => PodGpus::Mig {
            profile: mig[MIG_RESOURCE_PREFIX.len()..].to_string(),
            count: n,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &str, init: &str) -> Pod {
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"p"}},"spec":{{"containers":[{containers}],"initContainers":[{init}]}}}}"#
        ))
        .unwrap()
    }

    fn container(name: &str, limits: &str, requests: &str) -> String {
        format!(
            r#"{{"name":"{name}","resources":{{"limits":{{{limits}}},"requests":{{{requests}}}}}}}"#
        )
    }

    #[test]
    fn each_resource_maps_to_its_kind_and_containers_add_up() {
        let mig = |p: &str, n| PodGpus::Mig {
            profile: p.into(),
            count: n,
        };
        let cases: Vec<(Pod, PodGpus)> = vec![
            (pod(&container("a", "", ""), ""), PodGpus::None),
            (
                pod(&container("a", r#""nvidia.com/gpu":"2""#, ""), ""),
                PodGpus::Whole(2),
            ),
            (
                pod(
                    &format!(
                        "{},{}",
                        container("a", r#""nvidia.com/mig-1g.10gb":"2""#, ""),
                        container("b", "", r#""nvidia.com/mig-1g.10gb":"1""#)
                    ),
                    "",
                ),
                mig("1g.10gb", 3),
            ),
            (
                pod(&container("a", r#""nvidia.com/gpu.shared":"1""#, ""), ""),
                PodGpus::Shared(1),
            ),
            // The init container needs more than the app containers together.
            (
                pod(
                    &container("a", r#""nvidia.com/mig-3g.40gb":"1""#, ""),
                    &container("i", r#""nvidia.com/mig-3g.40gb":"2""#, ""),
                ),
                mig("3g.40gb", 2),
            ),
            // Limits win over requests; a zero quantity is no request.
            (
                pod(
                    &container(
                        "a",
                        r#""nvidia.com/gpu":"1""#,
                        r#""nvidia.com/gpu":"4","nvidia.com/gpu.shared":"0""#,
                    ),
                    "",
                ),
                PodGpus::Whole(1),
            ),
            // Other vendors' resources are not berth's.
            (
                pod(&container("a", r#""example.com/fpga":"1""#, ""), ""),
                PodGpus::None,
            ),
        ];
        for (i, (p, want)) in cases.iter().enumerate() {
            let got = pod_gpus(p);
            assert_eq!(got.as_ref(), Ok(want), "#{i}: want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn mixed_kinds_bad_profiles_and_fractions_are_refused() {
        let cases: &[(String, &str)] = &[
            (
                container(
                    "a",
                    r#""nvidia.com/gpu":"1","nvidia.com/mig-1g.10gb":"1""#,
                    "",
                ),
                "asks for nvidia.com/gpu and nvidia.com/mig-1g.10gb",
            ),
            (
                format!(
                    "{},{}",
                    container("a", r#""nvidia.com/mig-1g.10gb":"1""#, ""),
                    container("b", r#""nvidia.com/mig-3g.40gb":"1""#, "")
                ),
                "nvidia.com/mig-1g.10gb and nvidia.com/mig-3g.40gb",
            ),
            (
                container(
                    "a",
                    r#""nvidia.com/gpu.shared":"1","nvidia.com/gpu":"1""#,
                    "",
                ),
                "asks for nvidia.com/gpu and nvidia.com/gpu.shared",
            ),
            (
                container("a", r#""nvidia.com/mig-1g.10":"1""#, ""),
                "not a MIG profile name",
            ),
            (
                container("a", r#""nvidia.com/mig-":"1""#, ""),
                "not a MIG profile name",
            ),
            (
                container("a", r#""nvidia.com/gpu.shared":"500m""#, ""),
                "not a whole number",
            ),
            (
                container("a", r#""nvidia.com/mig-1g.10gb":"-1""#, ""),
                "not a whole number",
            ),
        ];
        for (i, (c, want)) in cases.iter().enumerate() {
            match pod_gpus(&pod(c, "")) {
                Err(e) if e.contains(want) => {}
                other => panic!("#{i}: want an error with {want:?}, got {other:?}"),
            }
        }
        // An init container of another kind mixes kinds too.
        let p = pod(
            &container("a", r#""nvidia.com/gpu":"1""#, ""),
            &container("i", r#""nvidia.com/gpu.shared":"1""#, ""),
        );
        assert!(pod_gpus(&p).is_err());
    }

    #[test]
    fn a_request_round_trips_through_the_job_spec() {
        for want in [
            PodGpus::None,
            PodGpus::Whole(3),
            PodGpus::Shared(2),
            PodGpus::Mig {
                profile: "2g.20gb".into(),
                count: 2,
            },
        ] {
            let mut spec = pb::JobSpec::default();
            want.apply_to(&mut spec);
            assert_eq!(PodGpus::of_spec(&spec), want);
        }
        assert_eq!(
            PodGpus::Mig {
                profile: "1g.10gb".into(),
                count: 1
            }
            .resource(),
            "nvidia.com/mig-1g.10gb"
        );
    }
}
