//! Submitting a job: the checks a spec must pass (shape, account and QOS, limits, what the
//! cluster could ever run) before it is queued.

use super::*;

impl StateMachine {
    pub(super) fn submit(&mut self, mut spec: pb::JobSpec, now: u64) -> Applied {
        if let Err(why) = validate_spec(&spec) {
            return (Outcome::Rejected(why), vec![]);
        }
        let (account, qos) = match self.resolve_account_qos(&spec) {
            Ok(found) => found,
            Err(why) => return (Outcome::Rejected(why), vec![]),
        };
        if let Err(why) = self.check_submit(&mut spec, &account, &qos) {
            return (Outcome::Rejected(why), vec![]);
        }
        let next_id = self.state.next_job_id.max(1);
        if let Err(why) = dependency::validate(&spec.dependencies, |id| {
            id < next_id && self.state.jobs.contains_key(&id)
        })
        .and_then(|()| self.check_task_dependencies(&spec.dependencies))
        {
            return (Outcome::Rejected(why), vec![]);
        }
        let array = match &spec.array {
            Some(a) => match array::validate(a, self.accounts.max_array_size) {
                Ok(set) => Some(set),
                Err(why) => return (Outcome::Rejected(why), vec![]),
            },
            None => None,
        };
        if let Err(why) = self.feasible(&spec) {
            return (Outcome::Rejected(why), vec![]);
        }
        let id = self.state.next_job_id.max(1);
        self.state.next_job_id = id + 1;
        let held = spec.hold;
        let job = pb::Job {
            id,
            partition: spec.partition.clone(),
            spec: Some(spec),
            state: JobState::Pending as i32,
            reason: if held { "JobHeldUser" } else { "None" }.into(),
            submit_time_ms: now,
            eligible_time_ms: now,
            held,
            account,
            qos,
            array_job_id: if array.is_some() { id } else { 0 },
            array_pending: array.map(|a| a.to_ranges()).unwrap_or_default(),
            ..Default::default()
        };
        self.state.jobs.insert(id, job);
        (Outcome::Submitted(id), vec![changed(id)])
    }

    /// The account and QOS a job is charged and classed as. With no accounts file
    /// installed, an account or QOS the built-in configuration lacks is taken as named
    /// (charged like an unknown account, classed as the default), as Slurm takes any
    /// without accounting enforcement; with one installed it is refused.
    pub(super) fn resolve_account_qos(
        &self,
        spec: &pb::JobSpec,
    ) -> Result<(String, String), String> {
        let enforced = !self.state.accounts_toml.is_empty();
        let account = match self.accounts.resolve_account(&spec.account, &spec.user) {
            Ok(a) => a,
            Err(_) if !enforced && !spec.account.is_empty() => spec.account.clone(),
            Err(why) => return Err(why),
        };
        let qos = match self.accounts.resolve_qos(&spec.qos) {
            Ok(q) => q.name.clone(),
            Err(_) if !enforced && !spec.qos.is_empty() => spec.qos.clone(),
            Err(why) => return Err(why),
        };
        Ok((account, qos))
    }

    /// Whether `spec` could ever run here: on the described cluster when there is a
    /// description (nodes known before their agents), else on the registered nodes, all
    /// idle. A job asking for more nodes than its partition has waits instead
    /// (`PartitionNodeLimit`, as Slurm), so its shape is checked on as many as there are.
    ///
    /// # Errors
    /// Slurm's "Requested node configuration is not available" (or its memory and CPU
    /// variants) with the reason.
    pub(super) fn feasible(&self, spec: &pb::JobSpec) -> Result<(), String> {
        let capacity = self.capacity_view();
        let mut wanted = pending_view(0, spec);
        if let Some(r) = self.state.reservations.get(&spec.reservation) {
            wanted.nodes_only = Some(std::sync::Arc::new(r.nodes.iter().cloned().collect()));
        }
        let members = capacity
            .nodes
            .iter()
            .filter(|n| n.in_partition(&spec.partition))
            .count() as u32;
        if wanted.nodes > members && members > 0 {
            wanted = wanted.with_nodes(members);
            wanted.req_nodes.clear();
        }
        policies::feasible_when_idle(&capacity, &wanted).map_err(|why| {
            let only = |r: &[policies::RejectReason]| {
                let m = &why.metrics.rejects;
                !m.is_empty()
                    && m.keys()
                        .all(|k| r.contains(k) || *k == policies::RejectReason::Partition)
                    && m.keys().any(|k| r.contains(k))
            };
            use policies::RejectReason as R;
            let head = if only(&[R::Memory, R::MemPerCpu, R::MemPerGpu]) {
                "Memory specification can not be satisfied"
            } else if only(&[R::Cpus, R::Tasks]) {
                "CPU count per node can not be satisfied"
            } else {
                "Requested node configuration is not available"
            };
            format!("{head} ({why})")
        })
    }
}

pub(super) fn validate_spec(spec: &pb::JobSpec) -> Result<(), String> {
    // A script that is not UTF-8 travels as bytes (`script` is then a copy for display).
    let script: &[u8] = if spec.script_bytes.is_empty() {
        spec.script.as_bytes()
    } else {
        &spec.script_bytes
    };
    if spec.allocation {
        // salloc and srun hold an allocation with no script: the agent runs its holder.
        if !script.is_empty() || !spec.args.is_empty() {
            return Err("an allocation (salloc, srun) carries no batch script".into());
        }
        if spec.array.is_some() {
            return Err("an allocation (salloc, srun) cannot be a job array".into());
        }
    } else if !script.starts_with(b"#!") {
        return Err(
            "batch script must start with #! followed by the path to an interpreter".into(),
        );
    }
    if script.len() > SCRIPT_BYTES_MAX {
        return Err(format!(
            "batch script is {} bytes, the limit is {SCRIPT_BYTES_MAX}",
            script.len()
        ));
    }
    if spec.name.is_empty() || spec.partition.is_empty() || spec.work_dir.is_empty() {
        return Err("job name, partition and work dir must be set".into());
    }
    if spec.nodes == 0 || spec.ntasks == 0 || spec.cpus_per_task == 0 {
        return Err("nodes, ntasks and cpus-per-task must be at least 1".into());
    }
    validate_fraction(spec)?;
    mig::validate_spec(spec)
}

/// Limits on what one submit may carry; larger requests are refused whole.
const SCRIPT_BYTES_MAX: usize = 4 << 20;

/// A fraction is of one GPU on one node, strictly between 0 and 1000 milli, and not mixed
/// with MIG slices.
pub(super) fn validate_fraction(spec: &pb::JobSpec) -> Result<(), String> {
    let m = spec.gpu_milli;
    if m == 0 {
        return Ok(());
    }
    if m >= GPU_MILLI {
        return Err(format!(
            "a GPU fraction is below 1000 milli (one GPU), not {m}: ask for whole GPUs instead"
        ));
    }
    if spec.gpus_per_node != 1 || spec.nodes != 1 {
        return Err(format!(
            "a GPU fraction ({m} milli) is of one GPU on one node, not {} GPU(s) on {} node(s)",
            spec.gpus_per_node, spec.nodes
        ));
    }
    if !spec.mig_profile.is_empty() {
        return Err("a GPU fraction cannot be combined with MIG slices".into());
    }
    Ok(())
}
