//! Pods placed through the kube-scheduler extender (`BindPod`).
//!
//! A pod becomes a job that is created running, with its allocation, in one command, so a
//! pod never waits in berth's queue half-placed and the scheduling loop never sees it. The
//! allocation is checked exactly as an `Allocate` is (node up, CPUs, healthy free GPUs), so
//! pods and batch jobs never share a GPU. Kubernetes retries a bind that timed out, so a
//! second `BindPod` for a pod uid that already runs answers with that job and changes
//! nothing.
//!
//! Gangs (pod groups): the first member's bind also reserves every other member's slot, in
//! the same command and all-or-nothing, as a *reservation job* (a running job with the
//! group's `pod_group` and no `pod`) that holds those GPUs and CPUs. Each later member's
//! bind moves its slot from the reservation to its own job; when the last slot is claimed
//! the reservation completes. An unclaimed reservation is cancelled after the group's
//! timeout, which frees what is left. So a gang holds every member's resources or none,
//! and never holds them unused for longer than its timeout.

use super::{changed, Applied, Outcome, StateMachine};
use crate::pod_gpus::{PodGpus, SHARED_RESOURCE};
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
    super::mig::validate_spec(spec)?;
    let whole = spec.gpus_per_node > 0;
    if !spec.mig_profile.is_empty() && whole {
        return Err("a pod gets MIG slices or GPUs, not both".into());
    }
    if spec.gpu_shared && !whole {
        return Err("a shared pod asks for a share of at least 1 GPU".into());
    }
    if let Some(g) = &spec.pod_group {
        if g.name.is_empty() || g.min_member == 0 {
            return Err("a pod group needs a name and at least 1 member".into());
        }
        if spec.gpu_shared || !spec.mig_profile.is_empty() {
            return Err("pod group members get whole GPUs only".into());
        }
    }
    Ok(())
}

/// Whether a job is run by kubelet rather than by an agent: a pod, or a pod group's
/// reservation.
pub fn is_kubernetes(job: &pb::Job) -> bool {
    job.spec
        .as_ref()
        .is_some_and(|s| s.pod.is_some() || s.pod_group.is_some())
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

    /// The running reservation of pod group `name` (namespace/name), if there is one.
    pub fn group_reservation(&self, name: &str) -> Option<&pb::Job> {
        self.jobs().find(|j| {
            j.state() == JobState::Running
                && j.spec.as_ref().is_some_and(|s| {
                    s.pod.is_none() && s.pod_group.as_ref().is_some_and(|g| g.name == name)
                })
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
        let Some(group) = spec.pod_group.clone() else {
            return self.bind_members(spec, allocation, vec![], bind.term, now);
        };
        if let Some(reservation) = self.group_reservation(&group.name).map(|j| j.id) {
            return self.claim_slot(reservation, spec, allocation, bind.term, now);
        }
        if bind.reservation.len() + 1 < group.min_member as usize {
            let why = format!(
                "pod group {} needs {} members placed at once, the bind carries {}",
                group.name,
                group.min_member,
                bind.reservation.len() + 1
            );
            return (Outcome::Rejected(why), vec![]);
        }
        self.bind_members(spec, allocation, bind.reservation, bind.term, now)
    }

    /// A pod's job, and with `reserved` slots a reservation job holding them, checked
    /// together (one node may appear in both) and created together, or not at all.
    fn bind_members(
        &mut self,
        spec: pb::JobSpec,
        allocation: pb::Allocation,
        reserved: Vec<pb::Allocation>,
        term: u64,
        now: u64,
    ) -> Applied {
        let member = self.state.next_job_id.max(1);
        let reservation = merge_by_node(reserved);
        let mut all = reservation.clone();
        all.push(allocation.clone());
        let together = pb::Placement {
            job_id: member,
            allocations: merge_by_node(all),
            array_task_id: None,
        };
        let uuids: Vec<&String> = together
            .allocations
            .iter()
            .flat_map(|a| &a.gpu_uuids)
            .collect();
        let distinct: std::collections::BTreeSet<&String> = uuids.iter().copied().collect();
        let group = spec.pod_group.clone();
        let partition = spec.partition.clone();
        let kinds = self.check_kinds(std::slice::from_ref(&allocation), &spec);
        // The job must exist for the placement check; it is removed again if that fails,
        // so a refused bind leaves the state as it was.
        self.insert_pending(member, spec, now);
        let check = if distinct.len() != uuids.len() {
            Err("a GPU appears in two slots".to_string())
        } else {
            kinds.and_then(|()| self.check_placement(&together))
        };
        if let Err(why) = check {
            self.state.jobs.remove(&member);
            return (Outcome::Rejected(why), vec![]);
        }
        self.state.next_job_id = member + 1;
        let mine = pb::Placement {
            job_id: member,
            allocations: vec![allocation],
            array_task_id: None,
        };
        self.place(&mine, term, now);
        let mut effects = vec![changed(member)];
        if let (Some(group), false) = (group, reservation.is_empty()) {
            let holder = member + 1;
            self.state.next_job_id = holder + 1;
            let holder_spec = pb::JobSpec {
                name: format!("podgroup:{}", group.name),
                partition,
                nodes: reservation.len() as u32,
                ntasks: 1,
                cpus_per_task: 1,
                pod_group: Some(group),
                work_dir: "/".into(),
                ..Default::default()
            };
            self.insert_pending(holder, holder_spec, now);
            let held = pb::Placement {
                job_id: holder,
                allocations: reservation,
                array_task_id: None,
            };
            self.place(&held, term, now);
            effects.push(changed(holder));
        }
        (Outcome::Submitted(member), effects)
    }

    /// A later member of a gang takes its slot (`allocation`, which the reservation must
    /// hold) from the reservation job.
    fn claim_slot(
        &mut self,
        reservation: u64,
        spec: pb::JobSpec,
        allocation: pb::Allocation,
        term: u64,
        now: u64,
    ) -> Applied {
        let held = &self.state.jobs[&reservation];
        let Some(slot) = held.allocations.iter().find(|a| a.node == allocation.node) else {
            let why = format!("pod group has no reserved slot on {}", allocation.node);
            return (Outcome::Rejected(why), vec![]);
        };
        if let Some(uuid) = allocation
            .gpu_uuids
            .iter()
            .find(|u| !slot.gpu_uuids.contains(u))
        {
            let why = format!("GPU {uuid} is not reserved for the pod group");
            return (Outcome::Rejected(why), vec![]);
        }
        let member = self.state.next_job_id.max(1);
        self.state.next_job_id = member + 1;
        self.release_slot(reservation, &allocation);
        self.insert_pending(member, spec, now);
        let mine = pb::Placement {
            job_id: member,
            allocations: vec![allocation],
            array_task_id: None,
        };
        self.place(&mine, term, now);
        if self.state.jobs[&reservation].allocations.is_empty() {
            let done = pb::JobFinished {
                state: JobState::Completed as i32,
                reason: "every member of the pod group is bound".into(),
                ..Default::default()
            };
            self.finish(reservation, &done, now);
        }
        (
            Outcome::Submitted(member),
            vec![changed(member), changed(reservation)],
        )
    }

    /// Gives back what `slot` takes from the reservation job: its GPUs and CPUs on that
    /// node, on the node's record and in the reservation's allocations.
    fn release_slot(&mut self, reservation: u64, slot: &pb::Allocation) {
        let node = self.state.nodes.get_mut(&slot.node).expect("reserved node");
        node.cpus_alloc = node.cpus_alloc.saturating_sub(slot.cpus);
        node.memory_alloc_mb = node.memory_alloc_mb.saturating_sub(slot.mem_mb);
        for gpu in node.inventory.iter_mut().flat_map(|i| &mut i.gpus) {
            if !slot.gpu_uuids.contains(&gpu.uuid) {
                continue;
            }
            // The reservation holds a whole GPU, or one share of a time-sliced one.
            if gpu.job_id == reservation {
                gpu.job_id = 0;
            }
            super::release_shares(gpu, reservation);
        }
        self.recount(&slot.node);
        let job = self.state.jobs.get_mut(&reservation).expect("reservation");
        for a in job.allocations.iter_mut().filter(|a| a.node == slot.node) {
            a.gpu_uuids.retain(|u| !slot.gpu_uuids.contains(u));
            a.gpu_indices.retain(|i| !slot.gpu_indices.contains(i));
            a.cpus = a.cpus.saturating_sub(slot.cpus);
            a.mem_mb = a.mem_mb.saturating_sub(slot.mem_mb);
        }
        job.allocations
            .retain(|a| !a.gpu_uuids.is_empty() || a.cpus > 0);
    }

    /// [`check_kind`] of a pod's own allocation on its node.
    fn check_kinds(
        &self,
        allocations: &[pb::Allocation],
        spec: &pb::JobSpec,
    ) -> Result<(), String> {
        for a in allocations {
            if let Some(inv) = self
                .state
                .nodes
                .get(&a.node)
                .and_then(|n| n.inventory.as_ref())
            {
                check_kind(inv, spec, a)?;
            }
        }
        Ok(())
    }

    fn insert_pending(&mut self, id: u64, spec: pb::JobSpec, now: u64) {
        let job = pb::Job {
            id,
            partition: spec.partition.clone(),
            spec: Some(spec),
            state: JobState::Pending as i32,
            submit_time_ms: now,
            ..Default::default()
        };
        self.state.jobs.insert(id, job);
    }
}

/// One allocation per node: slots of several members on one node are summed.
fn merge_by_node(allocations: Vec<pb::Allocation>) -> Vec<pb::Allocation> {
    let mut out: Vec<pb::Allocation> = Vec::new();
    for a in allocations {
        match out.iter_mut().find(|o| o.node == a.node) {
            Some(o) => {
                o.gpu_uuids.extend(a.gpu_uuids);
                o.gpu_indices.extend(a.gpu_indices);
                o.mig_slices.extend(a.mig_slices);
                o.cpus += a.cpus;
                o.mem_mb += a.mem_mb;
            }
            None => out.push(a),
        }
    }
    out
}

/// Checks at apply that a pod job's allocation gives it GPUs of the kind it asked for:
/// shares only of time-sliced GPUs for a shared pod, whole GPUs never time-sliced for any
/// other, and exactly its MIG slices (the general allocation check covers the rest).
///
/// # Errors
/// A message naming the GPU or the count; the caller changes nothing.
fn check_kind(
    inv: &pb::NodeInventory,
    spec: &pb::JobSpec,
    a: &pb::Allocation,
) -> Result<(), String> {
    let want = PodGpus::of_spec(spec);
    for uuid in &a.gpu_uuids {
        let Some(g) = inv.gpus.iter().find(|g| &g.uuid == uuid) else {
            continue; // the allocation check names unknown GPUs
        };
        let shared = g.replicas > 1;
        match (&want, shared) {
            (PodGpus::Shared(_), false) => {
                return Err(format!(
                    "GPU {uuid} is not time-sliced: a shared pod gets shares only"
                ))
            }
            (PodGpus::Whole(_) | PodGpus::None | PodGpus::Mig { .. }, true) => {
                return Err(format!(
                    "GPU {uuid} is time-sliced: only {SHARED_RESOURCE} pods get its shares"
                ))
            }
            _ => {}
        }
    }
    let slices = a.mig_slices.len() as u32;
    let slices_want = match &want {
        PodGpus::Mig { count, .. } => *count,
        _ => 0,
    };
    if slices != slices_want {
        return Err(format!(
            "pod asks for {slices_want} MIG slice(s), the allocation carries {slices}"
        ));
    }
    if let Some(s) = a.mig_slices.iter().find(|s| s.profile != spec.mig_profile) {
        return Err(format!(
            "pod asks for {} slices, the allocation carries a {}",
            spec.mig_profile, s.profile
        ));
    }
    Ok(())
}
