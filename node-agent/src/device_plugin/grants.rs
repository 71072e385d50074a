//! Which GPUs a container gets: the pure half of the device plugin. berthd granted each
//! Kubernetes pod it bound exact GPUs (a RUNNING job with `spec.pod` set); kubelet only
//! knows "n devices of nvidia.com/gpu" and picks its own device IDs. These functions match
//! a kubelet request to berth's grant so the container sees berth's GPUs. No IO here: the
//! service fetches the grants from berthd and keeps the hand-out set.
//!
//! Matching order for a request of n devices, among grants of this node not yet handed
//! out and holding exactly n GPUs: first a grant whose GPUs are exactly the requested IDs
//! (kubelet followed `GetPreferredAllocation`), else the oldest (start time, then job id).
//! No such grant: kubelet's own IDs (a pod berth did not place, e.g. a default-scheduler
//! pod).
//!
//! Each resource ([`Kind`]) matches only grants of its kind, by device *key*: a whole or
//! shared GPU's UUID (any replica ID of a GPU stands for a share of it), or a MIG slot ID
//! (`<uuid>::<profile>@<start>`, exactly the placement berthd chose).

use super::resources::{mig_slot_id, Kind};
use super::PluginError;
use berth_proto::v1 as pb;
use std::collections::BTreeSet;

/// What berthd granted to one pod on this node, for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodGrant {
    /// The pod's berth job.
    pub job_id: u64,
    /// `namespace/name` of the pod, for logs.
    pub pod: String,
    /// The granted device keys in berth's order: GPU UUIDs, or MIG slot IDs.
    pub keys: Vec<String>,
    /// The granted MIG slices (GPU + placement), for a MIG resource.
    pub mig_slices: Vec<pb::MigSlice>,
    /// When berth started the job (bind time), ms since the epoch.
    pub start_time_ms: u64,
}

/// The keys of `kind` that allocation `a` of a pod job (`spec`) grants; empty when the
/// job holds nothing of that kind.
fn keys_of(kind: &Kind, spec: &pb::JobSpec, a: &pb::Allocation) -> Vec<String> {
    match kind {
        Kind::Whole if !spec.gpu_shared => a.gpu_uuids.clone(),
        Kind::Shared if spec.gpu_shared => a.gpu_uuids.clone(),
        Kind::Mig(p) if a.mig_slices.iter().all(|s| &s.profile == p) => a
            .mig_slices
            .iter()
            .map(|s| mig_slot_id(&s.gpu_uuid, &s.profile, s.placement_start))
            .collect(),
        _ => Vec::new(),
    }
}

/// The grants of `kind` on `node` among `jobs`: RUNNING pod jobs whose first allocation
/// is on `node` and holds at least one device of that kind, oldest first.
pub fn pod_grants(jobs: &[pb::Job], node: &str, kind: &Kind) -> Vec<PodGrant> {
    let mut grants: Vec<PodGrant> = jobs
        .iter()
        .filter(|j| j.state() == pb::JobState::Running)
        .filter_map(|j| {
            let spec = j.spec.as_ref()?;
            let pod = spec.pod.as_ref()?;
            let alloc = j.allocations.first().filter(|a| a.node == node)?;
            let keys = keys_of(kind, spec, alloc);
            (!keys.is_empty()).then(|| PodGrant {
                job_id: j.id,
                pod: format!("{}/{}", pod.namespace, pod.name),
                keys,
                mig_slices: alloc.mig_slices.clone(),
                start_time_ms: j.start_time_ms,
            })
        })
        .collect();
    grants.sort_by_key(|g| (g.start_time_ms, g.job_id));
    grants
}

/// What one container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// berth's grant of this job.
    Berth {
        /// The pod's berth job (now handed out).
        job_id: u64,
        /// `namespace/name`, for logs.
        pod: String,
        /// berth's device keys: the GPUs the container sees (for MIG, the slots whose
        /// instances it sees).
        uuids: Vec<String>,
    },
    /// No grant matches: kubelet's own devices.
    Kubelet {
        /// The requested devices' keys, in kubelet's order, each once.
        uuids: Vec<String>,
    },
}

impl Choice {
    /// The GPU UUIDs the container sees.
    pub fn uuids(&self) -> &[String] {
        match self {
            Choice::Berth { uuids, .. } | Choice::Kubelet { uuids } => uuids,
        }
    }
}

/// Checks one container request: at least one device, each offered by this plugin
/// (`known`), none twice.
///
/// # Errors
/// [`PluginError::NoDevices`], [`PluginError::UnknownDevice`] or
/// [`PluginError::DuplicateDevice`], naming the container request by `index`.
pub fn check_request(
    index: usize,
    ids: &[String],
    known: &BTreeSet<String>,
) -> Result<(), PluginError> {
    if ids.is_empty() {
        return Err(PluginError::NoDevices { index });
    }
    let mut seen = BTreeSet::new();
    for id in ids {
        if !known.contains(id) {
            return Err(PluginError::UnknownDevice {
                index,
                id: id.clone(),
            });
        }
        if !seen.insert(id) {
            return Err(PluginError::DuplicateDevice {
                index,
                id: id.clone(),
            });
        }
    }
    Ok(())
}

/// The choice for one container asking for the devices whose keys are `requested`,
/// skipping grants in `handed_out`.
pub fn choose(grants: &[PodGrant], handed_out: &BTreeSet<u64>, requested: &[String]) -> Choice {
    let wanted: BTreeSet<&String> = requested.iter().collect();
    let mut fitting = grants
        .iter()
        .filter(|g| !handed_out.contains(&g.job_id) && g.keys.len() == requested.len());
    let exact = fitting
        .clone()
        .find(|g| g.keys.iter().collect::<BTreeSet<_>>() == wanted);
    match exact.or_else(|| fitting.next()) {
        Some(g) => Choice::Berth {
            job_id: g.job_id,
            pod: g.pod.clone(),
            uuids: g.keys.clone(),
        },
        None => {
            let mut uuids: Vec<String> = Vec::with_capacity(requested.len());
            for k in requested {
                if !uuids.contains(k) {
                    uuids.push(k.clone());
                }
            }
            Choice::Kubelet { uuids }
        }
    }
}

/// The choices for every container of one `Allocate` call, in order. Every request is
/// checked before anything is chosen, and a grant chosen for one container is not chosen
/// again for the next. The caller adds the chosen job ids to its hand-out set only when
/// this returns `Ok`.
///
/// # Errors
/// The first bad request's error (see [`check_request`]); nothing is chosen then.
pub fn allocate(
    kind: &Kind,
    grants: &[PodGrant],
    handed_out: &BTreeSet<u64>,
    requests: &[Vec<String>],
    known: &BTreeSet<String>,
) -> Result<Vec<Choice>, PluginError> {
    if requests.is_empty() {
        return Err(PluginError::NoContainers);
    }
    for (index, ids) in requests.iter().enumerate() {
        check_request(index, ids, known)?;
    }
    let mut taken = handed_out.clone();
    let mut choices = Vec::with_capacity(requests.len());
    for ids in requests {
        let keys: Vec<String> = ids.iter().map(|id| kind.key(id).to_string()).collect();
        let choice = choose(grants, &taken, &keys);
        if let Choice::Berth { job_id, .. } = &choice {
            taken.insert(*job_id);
        }
        choices.push(choice);
    }
    Ok(choices)
}

/// kubelet's `GetPreferredAllocation` for one container: `size` devices out of
/// `available`, including `must_include`. Prefers a grant not handed out (and not in
/// `skip`) of exactly `size` devices whose keys all have an available device and that
/// includes every `must_include`; otherwise `must_include` followed by the first other
/// available IDs. Returns the grant's job id too, so the caller can skip it for the next
/// container.
pub fn preferred(
    kind: &Kind,
    grants: &[PodGrant],
    skip: &BTreeSet<u64>,
    available: &[String],
    must_include: &[String],
    size: usize,
) -> (Vec<String>, Option<u64>) {
    for g in grants
        .iter()
        .filter(|g| !skip.contains(&g.job_id) && g.keys.len() == size)
    {
        if !must_include
            .iter()
            .all(|m| g.keys.iter().any(|k| k == kind.key(m)))
        {
            continue;
        }
        // One distinct available device per key, must-include ones first.
        let mut ids: Vec<String> = Vec::with_capacity(size);
        for key in &g.keys {
            let pick = must_include
                .iter()
                .chain(available)
                .find(|id| kind.key(id) == key && !ids.contains(id));
            match pick {
                Some(id) if available.contains(id) => ids.push(id.clone()),
                _ => break,
            }
        }
        if ids.len() == size {
            return (ids, Some(g.job_id));
        }
    }
    let mut out: Vec<String> = Vec::with_capacity(size);
    for id in must_include.iter().chain(available) {
        if out.len() >= size {
            break;
        }
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(job_id: u64, start: u64, uuids: &[&str]) -> PodGrant {
        PodGrant {
            job_id,
            pod: format!("ml/p{job_id}"),
            keys: uuids.iter().map(|s| s.to_string()).collect(),
            mig_slices: vec![],
            start_time_ms: start,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn known() -> BTreeSet<String> {
        ["G0", "G1", "G2", "G3", "G4", "G5"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn job(id: u64, state: pb::JobState, pod: bool, node: &str, gpus: &[&str]) -> pb::Job {
        pb::Job {
            id,
            state: state as i32,
            start_time_ms: 100 - id,
            spec: Some(pb::JobSpec {
                pod: pod.then(|| pb::PodRef {
                    namespace: "ml".into(),
                    name: format!("p{id}"),
                    uid: format!("u{id}"),
                }),
                ..Default::default()
            }),
            allocations: vec![pb::Allocation {
                node: node.into(),
                gpu_uuids: ids(gpus),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_running_pod_jobs_with_gpus_on_this_node_are_grants_oldest_first() {
        let jobs = [
            job(1, pb::JobState::Running, true, "n1", &["G0"]),
            job(2, pb::JobState::Running, false, "n1", &["G1"]), // batch job
            job(3, pb::JobState::Running, true, "n2", &["G2"]),  // other node
            job(4, pb::JobState::Completed, true, "n1", &["G3"]), // ended
            job(5, pb::JobState::Running, true, "n1", &[]),      // CPU-only pod
            job(6, pb::JobState::Running, true, "n1", &["G4", "G5"]),
        ];
        let got: Vec<u64> = pod_grants(&jobs, "n1", &Kind::Whole)
            .iter()
            .map(|g| g.job_id)
            .collect();
        // start_time_ms = 100 - id: job 6 started before job 1.
        assert_eq!(got, [6, 1]);
        assert_eq!(pod_grants(&jobs, "n1", &Kind::Whole)[0].pod, "ml/p6");
        // None of them is a share or a MIG slice.
        assert!(pod_grants(&jobs, "n1", &Kind::Shared).is_empty());
        assert!(pod_grants(&jobs, "n1", &Kind::Mig("1g.10gb".into())).is_empty());
    }

    #[test]
    fn shares_and_mig_slices_are_grants_of_their_own_resource_only() {
        let mut shared = job(1, pb::JobState::Running, true, "n1", &["G0"]);
        shared.spec.as_mut().unwrap().gpu_shared = true;
        let mut mig = job(2, pb::JobState::Running, true, "n1", &[]);
        mig.allocations[0].mig_slices = vec![pb::MigSlice {
            gpu_uuid: "G1".into(),
            profile: "3g.40gb".into(),
            placement_start: 4,
            placement_size: 4,
            job_id: 0,
        }];
        let whole = job(3, pb::JobState::Running, true, "n1", &["G2"]);
        let jobs = [shared, mig, whole];
        let keys = |kind: &Kind| -> Vec<(u64, Vec<String>)> {
            pod_grants(&jobs, "n1", kind)
                .into_iter()
                .map(|g| (g.job_id, g.keys))
                .collect()
        };
        assert_eq!(keys(&Kind::Whole), [(3, ids(&["G2"]))]);
        assert_eq!(keys(&Kind::Shared), [(1, ids(&["G0"]))]);
        assert_eq!(
            keys(&Kind::Mig("3g.40gb".into())),
            [(2, ids(&["G1::3g.40gb@4"]))]
        );
        assert!(keys(&Kind::Mig("1g.10gb".into())).is_empty());
        // kubelet names replicas; any replica of G0 is G0's share.
        let grants = pod_grants(&jobs, "n1", &Kind::Shared);
        let known: BTreeSet<String> = ["G0::0", "G0::1", "G5::0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = allocate(
            &Kind::Shared,
            &grants,
            &BTreeSet::new(),
            &[ids(&["G5::0"])],
            &known,
        )
        .unwrap();
        assert_eq!(got[0].uuids(), ids(&["G0"]));
        let (pref, job) = preferred(
            &Kind::Shared,
            &grants,
            &BTreeSet::new(),
            &ids(&["G5::0", "G0::1"]),
            &[],
            1,
        );
        assert_eq!((pref, job), (ids(&["G0::1"]), Some(1)));
    }

    #[test]
    fn choose_matches_by_size_exact_set_first_then_oldest() {
        let grants = [
            grant(10, 1, &["G0", "G1"]),
            grant(11, 2, &["G2", "G3"]),
            grant(12, 3, &["G4"]),
        ];
        let berth = |job_id: u64, u: &[&str]| Choice::Berth {
            job_id,
            pod: format!("ml/p{job_id}"),
            uuids: ids(u),
        };
        let table: [(&[&str], &[u64], Choice); 6] = [
            // kubelet picked other IDs: the oldest 2-GPU grant wins.
            (&["G4", "G5"], &[], berth(10, &["G0", "G1"])),
            // kubelet followed the preference for the younger pod: exact set wins.
            (&["G3", "G2"], &[], berth(11, &["G2", "G3"])),
            // the oldest is handed out already: the next one.
            (&["G4", "G5"], &[10], berth(11, &["G2", "G3"])),
            // size 1.
            (&["G5"], &[], berth(12, &["G4"])),
            // all 2-GPU grants handed out: kubelet's own IDs.
            (
                &["G4", "G5"],
                &[10, 11],
                Choice::Kubelet {
                    uuids: ids(&["G4", "G5"]),
                },
            ),
            // no grant of 3 GPUs.
            (
                &["G0", "G1", "G2"],
                &[],
                Choice::Kubelet {
                    uuids: ids(&["G0", "G1", "G2"]),
                },
            ),
        ];
        for (i, (req, out, want)) in table.into_iter().enumerate() {
            let handed: BTreeSet<u64> = out.iter().copied().collect();
            let got = choose(&grants, &handed, &ids(req));
            if got != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn allocate_gives_two_containers_of_one_call_different_grants() {
        let grants = [grant(10, 1, &["G0"]), grant(11, 2, &["G1"])];
        let got = allocate(
            &Kind::Whole,
            &grants,
            &BTreeSet::new(),
            &[ids(&["G5"]), ids(&["G4"])],
            &known(),
        )
        .unwrap();
        let jobs: Vec<_> = got.iter().map(|c| c.uuids().to_vec()).collect();
        assert_eq!(jobs, [ids(&["G0"]), ids(&["G1"])]);
    }

    #[test]
    fn bad_requests_are_refused_and_choose_nothing() {
        let grants = [grant(10, 1, &["G0", "G1"])];
        let table: [(Vec<Vec<String>>, &str); 4] = [
            (vec![], "no container requests"),
            (
                vec![ids(&["G0", "G1"]), vec![]],
                "container request 1: no devices",
            ),
            (
                vec![ids(&["G0", "GPU-nope"])],
                "container request 0: unknown device \"GPU-nope\"",
            ),
            (vec![ids(&["G2", "G2"])], "device \"G2\" named twice"),
        ];
        for (i, (reqs, want)) in table.into_iter().enumerate() {
            match allocate(&Kind::Whole, &grants, &BTreeSet::new(), &reqs, &known()) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want error {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn preferred_offers_berths_grant_when_available_else_must_include_first() {
        let grants = [grant(10, 1, &["G2", "G3"]), grant(11, 2, &["G4", "G5"])];
        let all = ids(&["G0", "G1", "G2", "G3", "G4", "G5"]);
        // (handed out, available, must include, size, (want, want job))
        type Row<'a> = (
            &'a [u64],
            Vec<String>,
            &'a [&'a str],
            usize,
            (&'a [&'a str], Option<u64>),
        );
        let table: [Row; 5] = [
            (&[], all.clone(), &[], 2, (&["G2", "G3"], Some(10))),
            (&[10], all.clone(), &[], 2, (&["G4", "G5"], Some(11))),
            // must include G5: only grant 11 has it.
            (&[], all.clone(), &["G5"], 2, (&["G4", "G5"], Some(11))),
            // G3 not available: grant 10 cannot be offered.
            (
                &[11],
                ids(&["G0", "G1", "G2"]),
                &["G1"],
                2,
                (&["G1", "G0"], None),
            ),
            // no grant of size 1.
            (&[], all.clone(), &[], 1, (&["G0"], None)),
        ];
        for (i, (skip, avail, must, size, (want, want_job))) in table.into_iter().enumerate() {
            let skip: BTreeSet<u64> = skip.iter().copied().collect();
            let got = preferred(&Kind::Whole, &grants, &skip, &avail, &ids(must), size);
            if got != (ids(want), want_job) {
                panic!("#{i}: want {want:?} {want_job:?}, got {got:?}");
            }
        }
    }
}
