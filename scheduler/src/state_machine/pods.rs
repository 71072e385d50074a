//! Pods placed through the kube-scheduler extender (`BindPod`).
//!
//! A pod becomes a job that is created running, with its allocation, in one command, so a
//! pod never waits in berth's queue half-placed and the scheduling loop never sees it. The
//! allocation is checked exactly as an `Allocate` is (node up, CPUs, healthy free GPUs), so
//! pods and batch jobs never share a GPU. Kubernetes retries a bind that timed out, so a
//! second `BindPod` for a pod uid that already runs answers with that job and changes
//! nothing.

use super::{changed, Applied, Outcome, StateMachine};
use berth_proto::v1::{self as pb, JobState};

/// Longest namespace/name Kubernetes allows (DNS subdomain).
const POD_NAME_BYTES_MAX: usize = 253;

/// Checks what a pod job must carry.
///
/// # Errors
/// A message naming the first problem.
pub fn validate_pod_spec(spec: &pb::JobSpec) -> Result<(), String> {
    let pod = spec.pod.as_ref().ok_or("bind without a pod reference")?;
    if pod.uid.is_empty() || pod.name.is_empty() || pod.namespace.is_empty() {
        return Err("a pod needs a namespace, a name and a uid".into());
    }
    if pod.name.len() > POD_NAME_BYTES_MAX || pod.namespace.len() > POD_NAME_BYTES_MAX {
        return Err("pod name or namespace longer than 253 bytes".into());
    }
    if spec.partition.is_empty() {
        return Err("a pod job needs the node's partition".into());
    }
    if spec.nodes != 1 || spec.ntasks != 1 || spec.cpus_per_task == 0 {
        return Err("a pod job runs on 1 node as 1 task with at least 1 CPU".into());
    }
    Ok(())
}

impl StateMachine {
    /// The running job of pod `uid`, if there is one.
    pub fn pod_job(&self, uid: &str) -> Option<&pb::Job> {
        self.jobs().find(|j| {
            j.state() == JobState::Running
                && j.spec
                    .as_ref()
                    .and_then(|s| s.pod.as_ref())
                    .is_some_and(|p| p.uid == uid)
        })
    }

    pub(super) fn bind_pod(&mut self, bind: pb::BindPod, now: u64) -> Applied {
        let spec = bind.spec.unwrap_or_default();
        if let Err(why) = validate_pod_spec(&spec) {
            return (Outcome::Rejected(why), vec![]);
        }
        let uid = &spec.pod.as_ref().expect("validated").uid;
        if let Some(job) = self.pod_job(uid) {
            return (Outcome::Submitted(job.id), vec![]);
        }
        let Some(allocation) = bind.allocation else {
            return (
                Outcome::Rejected("bind without an allocation".into()),
                vec![],
            );
        };
        let id = self.state.next_job_id.max(1);
        let placement = pb::Placement {
            job_id: id,
            allocations: vec![allocation],
        };
        // The job must exist for the placement check; it is removed again if that fails,
        // so a refused bind leaves the state as it was.
        self.state.jobs.insert(
            id,
            pb::Job {
                id,
                partition: spec.partition.clone(),
                spec: Some(spec),
                state: JobState::Pending as i32,
                submit_time_ms: now,
                ..Default::default()
            },
        );
        if let Err(why) = self.check_placement(&placement) {
            self.state.jobs.remove(&id);
            return (Outcome::Rejected(why), vec![]);
        }
        self.state.next_job_id = id + 1;
        self.place(&placement, bind.term, now);
        (Outcome::Submitted(id), vec![changed(id)])
    }
}
