//! berthd's side of the Kubernetes API (kube-rs): read the pod being bound, annotate it
//! with the devices berth granted, post its `Binding`, and, on the leader, end the jobs of
//! pods that finished or were deleted.
//!
//! Order of a bind, so nothing is lost or granted twice: the job is committed to the Raft
//! log first (that is the grant), then the pod is labelled and annotated, then bound. If
//! Kubernetes refuses either step the job is cancelled again, which releases its GPUs, and
//! kube-scheduler sees the error and retries the pod.

use crate::command::command;
use crate::raft_loop::RaftHandle;
use berth_proto::v1 as pb;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use std::collections::BTreeMap;
use std::time::Duration;

/// Label (and annotation) with the berth job id of a bound pod.
pub const JOB_ID_KEY: &str = "berth.io/job-id";
/// Annotation with the UUIDs of the GPUs berth granted the pod (whole, or the GPUs it has
/// a time-slice share of).
pub const GPUS_KEY: &str = "berth.io/gpus";
/// Annotation with the MIG slices berth granted the pod, `GPU-UUID:profile@start:size`
/// comma-separated (the placement the GPU instance is created at).
pub const MIG_SLICES_KEY: &str = "berth.io/mig-slices";
/// Annotation `time-slicing` on a pod granted shares of GPUs rather than whole GPUs.
pub const SHARING_KEY: &str = "berth.io/gpu-sharing";

/// The annotations a bound pod gets: its job id, its GPUs, and its MIG slices or the
/// sharing mode when it has them.
pub fn pod_annotations(job: &pb::Job) -> BTreeMap<&'static str, String> {
    let alloc = job.allocations.first().cloned().unwrap_or_default();
    let mut out = BTreeMap::from([
        (JOB_ID_KEY, job.id.to_string()),
        (GPUS_KEY, alloc.gpu_uuids.join(",")),
    ]);
    if !alloc.mig_slices.is_empty() {
        let slices: Vec<String> = alloc
            .mig_slices
            .iter()
            .map(|s| {
                format!(
                    "{}:{}@{}:{}",
                    s.gpu_uuid, s.profile, s.placement_start, s.placement_size
                )
            })
            .collect();
        out.insert(MIG_SLICES_KEY, slices.join(","));
    }
    if job.spec.as_ref().is_some_and(|s| s.gpu_shared) {
        out.insert(SHARING_KEY, "time-slicing".into());
    }
    out
}

/// Why the Kubernetes API did not do what berth asked.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No API server could be configured (no `--kube-api`, kubeconfig or in-cluster
    /// service account).
    #[error("no Kubernetes API configured: {0}")]
    Config(String),
    /// The API answered with an error, or could not be reached.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// A client of one cluster's API server.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
}

impl Kube {
    /// A client of `api_url` (e.g. `kubectl proxy`'s `http://127.0.0.1:8001`), or, without
    /// one, of what `KUBECONFIG`/`~/.kube/config` or the pod's service account name.
    ///
    /// # Errors
    /// [`KubeError::Config`] when none of these gives a usable configuration.
    pub async fn connect(api_url: Option<&str>) -> Result<Kube, KubeError> {
        let config = match api_url {
            Some(url) => {
                let uri: axum::http::Uri = url
                    .parse()
                    .map_err(|e| KubeError::Config(format!("--kube-api {url:?}: {e}")))?;
                kube::Config::new(uri)
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?,
        };
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Kube { client })
    }

    /// The pod `namespace/name`.
    ///
    /// # Errors
    /// [`KubeError::Api`], e.g. when it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Pod, KubeError> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await?)
    }

    /// The pod group `namespace/name` (scheduler-plugins' `PodGroup`,
    /// `scheduling.x-k8s.io/v1alpha1`): its `minMember` and `scheduleTimeoutSeconds`.
    ///
    /// # Errors
    /// [`KubeError::Api`] when it cannot be read, [`KubeError::Config`] when its
    /// `minMember` is missing or not a positive number.
    pub async fn pod_group(&self, group: &str) -> Result<pb::PodGroupRef, KubeError> {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
        let (namespace, name) = group.split_once('/').unwrap_or(("default", group));
        let gvk = GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "podgroups");
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let object = api.get(name).await?;
        let spec = &object.data["spec"];
        let min_member = spec["minMember"]
            .as_u64()
            .filter(|m| (1..=u64::from(u32::MAX)).contains(m))
            .ok_or_else(|| {
                KubeError::Config(format!("PodGroup {group} has no positive spec.minMember"))
            })?;
        let timeout_secs = spec["scheduleTimeoutSeconds"]
            .as_u64()
            .unwrap_or(POD_GROUP_TIMEOUT_SECS_DEFAULT);
        Ok(pb::PodGroupRef {
            name: group.to_string(),
            min_member: min_member as u32,
            timeout_ms: timeout_secs.saturating_mul(1000),
        })
    }

    /// Labels and annotates the pod with its job and GPUs, then binds it to the job's node.
    ///
    /// # Errors
    /// [`KubeError::Api`] when either call fails.
    pub async fn bind(&self, job: &pb::Job) -> Result<(), KubeError> {
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.pod.as_ref())
            .expect("bind is only called for pod jobs");
        let alloc = job.allocations.first().expect("a bound job has a node");
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace);
        let id = job.id.to_string();
        let meta = serde_json::json!({
            "metadata": {
                "labels": { JOB_ID_KEY: id },
                "annotations": pod_annotations(job),
            }
        });
        api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&meta))
            .await?;
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: None,
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(alloc.node.clone()),
                ..Default::default()
            },
        };
        let _: serde_json::Value = api
            .create_subresource("binding", &pod.name, &PostParams::default(), &binding)
            .await?;
        Ok(())
    }

    /// Deletes `pod`, only if it still has the uid berth bound (a pod recreated under the
    /// same name is someone else's). A pod already gone counts as deleted.
    ///
    /// # Errors
    /// [`KubeError::Api`] when the API refuses for another reason.
    pub async fn delete_pod(&self, pod: &pb::PodRef) -> Result<(), KubeError> {
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Phase of every pod berth bound (labelled with [`JOB_ID_KEY`]), by pod uid.
    ///
    /// # Errors
    /// [`KubeError::Api`] when the list fails.
    pub async fn bound_pods(&self) -> Result<BTreeMap<String, String>, KubeError> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().labels(JOB_ID_KEY))
            .await?;
        Ok(pods
            .items
            .into_iter()
            .filter_map(|p| {
                let uid = p.metadata.uid?;
                let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                Some((uid, phase))
            })
            .collect())
    }
}

/// How long a pod group's reservation waits for its members when the PodGroup names no
/// `scheduleTimeoutSeconds`.
pub const POD_GROUP_TIMEOUT_SECS_DEFAULT: u64 = 300;

/// Reservations of pod groups whose members did not all come within the group's timeout:
/// cancelling them frees the slots nobody claimed.
pub fn expired_reservations(running: &[pb::Job], now_ms: u64) -> Vec<u64> {
    running
        .iter()
        .filter(|j| j.spec.as_ref().is_some_and(|s| s.pod.is_none()))
        .filter_map(|j| {
            let group = j.spec.as_ref()?.pod_group.as_ref()?;
            (now_ms >= j.start_time_ms.saturating_add(group.timeout_ms)).then_some(j.id)
        })
        .collect()
}

/// How long after a user cancelled a pod's job the pod watch still deletes the pod: long
/// enough to outlast a leader change or an API outage, short enough that the watch does
/// not walk every job ever cancelled.
const DELETE_WINDOW_MS: u64 = 3_600_000;

/// Pods whose jobs the user cancelled (scancel) but which Kubernetes still runs or holds:
/// deleting them is what cancelling means for a pod. Jobs berth cancelled itself (a refused
/// binding, an expired reservation) name another reason and keep their pods.
pub fn pods_to_delete(
    ended: &[pb::Job],
    phases: &BTreeMap<String, String>,
    now_ms: u64,
) -> Vec<pb::PodRef> {
    ended
        .iter()
        .filter(|j| j.state() == pb::JobState::Cancelled)
        .filter(|j| j.reason == crate::state_machine::CANCELLED_BY_USER)
        .filter(|j| now_ms < j.end_time_ms.saturating_add(DELETE_WINDOW_MS))
        .filter_map(|j| j.spec.as_ref()?.pod.clone())
        .filter(|pod| {
            phases
                .get(&pod.uid)
                .is_some_and(|phase| phase != "Succeeded" && phase != "Failed")
        })
        .collect()
}

/// A pod absent from the API this long after its job started was deleted (the grace
/// covers the moments between the commit of its job and its label landing).
const ABSENT_GRACE_MS: u64 = 30_000;

/// The `JobEnded` commands for pod jobs whose pods are done: `Succeeded` → COMPLETED,
/// `Failed` → FAILED, gone → CANCELLED.
pub fn ended_pods(
    running: &[pb::Job],
    phases: &BTreeMap<String, String>,
    now_ms: u64,
) -> Vec<pb::JobEnded> {
    let mut out = Vec::new();
    for job in running {
        let Some(pod) = job.spec.as_ref().and_then(|s| s.pod.as_ref()) else {
            continue;
        };
        let (state, reason) = match phases.get(&pod.uid).map(String::as_str) {
            Some("Succeeded") => (pb::JobState::Completed, "pod succeeded"),
            Some("Failed") => (pb::JobState::Failed, "pod failed"),
            None if now_ms >= job.start_time_ms + ABSENT_GRACE_MS => {
                (pb::JobState::Cancelled, "pod deleted")
            }
            _ => continue,
        };
        out.push(pb::JobEnded {
            job_id: job.id,
            node: job
                .allocations
                .first()
                .map(|a| a.node.clone())
                .unwrap_or_default(),
            finished: Some(pb::JobFinished {
                state: state as i32,
                reason: reason.into(),
                end_time_ms: now_ms,
                ..Default::default()
            }),
        });
    }
    out
}

/// While leading, every `interval` ends the jobs of pods that finished or were deleted.
pub async fn pod_watch_loop(
    raft: RaftHandle,
    kube: Kube,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !raft.is_leader() {
            continue;
        }
        let now = crate::command::now_ms();
        let (running, cancelled): (Vec<pb::Job>, Vec<pb::Job>) = raft
            .state()
            .jobs()
            .filter(|j| crate::state_machine::pods::is_kubernetes(j))
            .filter(|j| match j.state() {
                pb::JobState::Running => true,
                pb::JobState::Cancelled => now < j.end_time_ms.saturating_add(DELETE_WINDOW_MS),
                _ => false,
            })
            .cloned()
            .partition(|j| j.state() == pb::JobState::Running);
        if running.is_empty() && cancelled.is_empty() {
            continue;
        }
        for job_id in expired_reservations(&running, now) {
            tracing::info!(job_id, "pod group reservation timed out; releasing it");
            let cancel = pb::command::Cmd::Cancel(pb::CancelJob {
                job_id,
                reason: "pod group reservation timed out".into(),
                ..Default::default()
            });
            if let Err(e) = raft.propose(command(cancel)).await {
                tracing::warn!("reservation release not proposed: {e}");
            }
        }
        let phases = match kube.bound_pods().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot list bound pods: {e}");
                continue;
            }
        };
        for pod in pods_to_delete(&cancelled, &phases, now) {
            match kube.delete_pod(&pod).await {
                Ok(()) => tracing::info!(pod = %pod.name, "deleted the pod of a cancelled job"),
                Err(e) => {
                    tracing::warn!(pod = %pod.name, "cannot delete the pod of a cancelled job: {e}")
                }
            }
        }
        for ended in ended_pods(&running, &phases, now) {
            if let Err(e) = raft
                .propose(command(pb::command::Cmd::JobEnded(ended)))
                .await
            {
                tracing::warn!("pod job end not proposed: {e}");
            }
        }
    }
}

/// Connects to the API server (`api_url`, else inferred) and, when that works, starts the
/// leader's pod watch. Without a cluster berthd runs on; `/bind` then answers with the
/// returned reason.
pub async fn start(
    api_url: Option<&str>,
    raft: RaftHandle,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Kube, String> {
    match Kube::connect(api_url).await {
        Ok(kube) => {
            tokio::spawn(pod_watch_loop(
                raft,
                kube.clone(),
                Duration::from_secs(5),
                shutdown,
            ));
            Ok(kube)
        }
        Err(e) => {
            tracing::info!("pods cannot be bound: {e}");
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_job(id: u64, uid: &str, started: u64) -> pb::Job {
        pb::Job {
            id,
            state: pb::JobState::Running as i32,
            start_time_ms: started,
            spec: Some(pb::JobSpec {
                pod: Some(pb::PodRef {
                    namespace: "ml".into(),
                    name: format!("p{id}"),
                    uid: uid.into(),
                }),
                ..Default::default()
            }),
            allocations: vec![pb::Allocation {
                node: "n1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn finished_and_deleted_pods_end_their_jobs() {
        let jobs = [
            pod_job(1, "a", 0),
            pod_job(2, "b", 0),
            pod_job(3, "c", 0),
            pod_job(4, "d", 0),
            pod_job(5, "e", 50_000),
        ];
        let phases: BTreeMap<String, String> =
            [("a", "Succeeded"), ("b", "Failed"), ("c", "Running")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let ended = ended_pods(&jobs, &phases, 60_000);
        let got: Vec<(u64, i32)> = ended
            .iter()
            .map(|e| (e.job_id, e.finished.as_ref().unwrap().state))
            .collect();
        // d is gone for longer than the grace; e started 10 s ago and may not be labelled yet.
        assert_eq!(
            got,
            vec![
                (1, pb::JobState::Completed as i32),
                (2, pb::JobState::Failed as i32),
                (4, pb::JobState::Cancelled as i32),
            ]
        );
        assert!(ended.iter().all(|e| e.node == "n1"));
    }

    #[test]
    fn only_pods_of_user_cancelled_jobs_are_deleted_while_they_still_run() {
        let cancelled = |id: u64, uid: &str, reason: &str, ended: u64| pb::Job {
            state: pb::JobState::Cancelled as i32,
            reason: reason.into(),
            end_time_ms: ended,
            ..pod_job(id, uid, 0)
        };
        let now = DELETE_WINDOW_MS + 10_000;
        let jobs = [
            cancelled(1, "a", "cancelled", now - 1_000),
            cancelled(2, "b", "binding refused: conflict", now - 1_000),
            cancelled(3, "c", "cancelled", now - 1_000),
            cancelled(4, "d", "cancelled", now - 1_000),
            cancelled(5, "e", "cancelled", 9_000),
            cancelled(6, "f", "pod deleted", now - 1_000),
        ];
        let phases: BTreeMap<String, String> = [
            ("a", "Running"),
            ("b", "Running"),
            ("c", "Succeeded"),
            ("e", "Pending"),
            ("f", "Running"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let got: Vec<String> = pods_to_delete(&jobs, &phases, now)
            .into_iter()
            .map(|p| p.name)
            .collect();
        // b: berth cancelled it (the pod belongs to whoever bound it); c: already done;
        // d: already gone; e: cancelled longer ago than the window; f: gone by itself.
        assert_eq!(got, vec!["p1".to_string()]);
    }
}
