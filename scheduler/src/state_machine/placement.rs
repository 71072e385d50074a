//! The scheduler's decisions applied: an allocation is checked against the state as it is
//! now (the pass saw an older one), then granted.

use super::*;

impl StateMachine {
    pub(super) fn allocate(&mut self, alloc: pb::Allocate, now: u64) -> Applied {
        let mut effects = Vec::new();
        let mut refused = Vec::new();
        let mut rooms = array::Rooms::default();
        for placement in alloc.placements {
            let array = placement.array_task_id.map(|_| placement.job_id);
            let placement = match self.array_placement(placement, &mut rooms, now) {
                Ok(p) => p,
                Err((id, why)) => {
                    refused.push(format!("job {id}: {why}"));
                    continue;
                }
            };
            effects.extend(array.map(changed));
            if let Err(why) = self.check_placement(&placement) {
                refused.push(format!("job {}: {why}", placement.job_id));
                continue;
            }
            self.place(&placement, alloc.term, now);
            let job = &self.state.jobs[&placement.job_id];
            effects.push(Effect::Launch {
                node: placement.allocations[0].node.clone(),
                job: Box::new(job.clone()),
            });
            effects.push(changed(placement.job_id));
        }
        if refused.is_empty() {
            (Outcome::Done, effects)
        } else {
            (Outcome::Rejected(refused.join("; ")), effects)
        }
    }

    /// Everything a placement needs must hold before anything changes (all-or-nothing).
    pub(super) fn check_placement(&self, p: &pb::Placement) -> Result<(), String> {
        let job = self.state.jobs.get(&p.job_id).ok_or("no such job")?;
        if job.state() != JobState::Pending || job.held {
            return Err("not pending".into());
        }
        if p.allocations.is_empty() {
            return Err("no nodes".into());
        }
        for a in &p.allocations {
            let node = self
                .state
                .nodes
                .get(&a.node)
                .ok_or_else(|| format!("unknown node {}", a.node))?;
            if node.state() != NodeState::Up {
                return Err(format!("node {} is down", a.node));
            }
            let inv = node.inventory.as_ref().ok_or("node without inventory")?;
            if node.cpus_alloc + a.cpus > inv.cpus {
                return Err(format!("node {} lacks CPUs", a.node));
            }
            let asked = job.spec.as_ref().map_or(0, |s| s.gpu_milli);
            if a.gpu_milli != asked || (asked > 0 && a.gpu_uuids.len() != 1) {
                return Err(format!(
                    "the job asks for {asked} GPU milli; the grant on {} has {} on {} GPU(s)",
                    a.node,
                    a.gpu_milli,
                    a.gpu_uuids.len()
                ));
            }
            for uuid in &a.gpu_uuids {
                match inv.gpus.iter().find(|g| &g.uuid == uuid) {
                    Some(g) if !g.unhealthy_reason.is_empty() => {
                        return Err(format!("GPU {uuid} is unhealthy: {}", g.unhealthy_reason))
                    }
                    Some(g) if g.mig_enabled => {
                        return Err(format!(
                            "GPU {uuid} is in MIG mode: only MIG slices are granted there"
                        ))
                    }
                    Some(g) if a.gpu_milli > 0 && g.replicas <= 1 => {
                        return Err(format!(
                            "GPU {uuid} is not time-sliced: a fraction needs a shared GPU"
                        ))
                    }
                    Some(g) if has_room(g, a.gpu_milli) => {}
                    Some(g) if g.replicas > 1 => {
                        return Err(format!(
                            "GPU {uuid} has no share with {} milli left ({} of {} shares, {} milli held)",
                            share_need(g, a.gpu_milli),
                            g.share_job_ids.len(),
                            g.replicas,
                            milli_held(g)
                        ))
                    }
                    Some(g) => return Err(format!("GPU {uuid} is held by job {}", g.job_id)),
                    None => return Err(format!("GPU {uuid} is not on node {}", a.node)),
                }
            }
            mig::check_allocation(inv, a)?;
        }
        Ok(())
    }

    pub(super) fn place(&mut self, p: &pb::Placement, term: u64, now: u64) {
        for a in &p.allocations {
            let node = self.state.nodes.get_mut(&a.node).expect("checked");
            node.cpus_alloc += a.cpus;
            node.memory_alloc_mb += a.mem_mb;
            let inv = node.inventory.as_mut().expect("checked");
            for gpu in inv
                .gpus
                .iter_mut()
                .filter(|g| a.gpu_uuids.contains(&g.uuid))
            {
                assert!(
                    has_room(gpu, a.gpu_milli),
                    "GPU {} granted to job {} while held by {} (shares {:?} of {}, milli {:?})",
                    gpu.uuid,
                    p.job_id,
                    gpu.job_id,
                    gpu.share_job_ids,
                    gpu.replicas,
                    gpu.share_milli
                );
                if gpu.replicas > 1 {
                    let need = share_need(gpu, a.gpu_milli);
                    gpu.share_job_ids.push(p.job_id);
                    gpu.share_milli.push(need);
                } else {
                    gpu.job_id = p.job_id;
                }
            }
        }
        for a in &p.allocations {
            self.hold_slices(p.job_id, a);
            self.recount(&a.node);
        }
        let job = self.state.jobs.get_mut(&p.job_id).expect("checked");
        job.state = JobState::Running as i32;
        job.reason = "None".into();
        job.start_time_ms = now;
        job.term = term;
        job.allocations = p.allocations.clone();
        let spec = job.spec.clone().unwrap_or_default();
        let node = &p.allocations[0].node;
        let default = if job.array_job_id != 0 {
            "slurm-%A_%a.out"
        } else {
            "slurm-%j.out"
        };
        job.stdout_path = crate::output_path::resolve_job(job, node, &spec.stdout, default);
        let stderr = if spec.stderr.is_empty() {
            &spec.stdout
        } else {
            &spec.stderr
        };
        job.stderr_path = crate::output_path::resolve_job(job, node, stderr, default);
    }
}
