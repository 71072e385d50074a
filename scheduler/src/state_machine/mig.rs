//! MIG slices in the replicated state: which slices each GPU holds (`Gpu.mig_held`, with
//! the job holding each), the check at apply that a placement's slices are legal for the
//! card and overlap nothing held (invariant 2 at slice level), and the release at job end.
//!
//! The planner (`berth_policies::mig`) chooses slices from the same profile tables this
//! module checks against, built by [`profiles`]: the agent's NVML inventory when it lists
//! placements, else the policies' built-in table for the card.

use super::StateMachine;
use berth_policies::mig::{self as pmig, MigHeld, MigProfile};
use berth_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most MIG slices one job may ask for per node (7 per card, 8 cards).
pub const MIG_PER_NODE_MAX: u32 = 56;

/// The GPU-instance profiles of `gpu` with their legal starts: from the inventory when
/// NVML listed placements (MIG mode on), else [`pmig::builtin_profiles`] for the model,
/// else none. Profiles NVML reports without placements are left out of an inventory table.
pub fn profiles(gpu: &pb::Gpu) -> Vec<MigProfile> {
    let listed: Vec<MigProfile> = gpu
        .mig_profiles
        .iter()
        .filter(|p| !p.placements.is_empty())
        .map(|p| {
            let mut starts: Vec<u32> = p.placements.iter().map(|pl| pl.start).collect();
            starts.sort_unstable();
            starts.dedup();
            MigProfile {
                name: p.name.clone(),
                size: p.placements[0].size,
                instances_max: p.instance_count,
                starts,
            }
        })
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    pmig::builtin_profiles(&gpu.model).unwrap_or_default()
}

/// The slices `gpu` holds, as the planner sees them.
pub fn held(gpu: &pb::Gpu) -> Vec<MigHeld> {
    gpu.mig_held
        .iter()
        .map(|s| MigHeld {
            profile: s.profile.clone(),
            start: s.placement_start,
            size: s.placement_size,
        })
        .collect()
}

/// Whether a whole-GPU job may take `gpu` (besides shares, which `has_room` counts): not
/// in MIG mode, so no slice can be there either.
pub fn whole_gpu_free(gpu: &pb::Gpu) -> bool {
    gpu.unhealthy_reason.is_empty()
        && gpu.job_id == 0
        && gpu.share_job_ids.is_empty()
        && !gpu.mig_enabled
        && gpu.mig_held.is_empty()
}

/// Checks the MIG slices of one allocation against the node's GPUs: each GPU exists, is
/// healthy and in MIG mode, is not also granted whole, and each slice is a legal placement
/// overlapping neither a held slice nor an earlier slice of the same allocation.
///
/// # Errors
/// A message naming the slice and the rule it breaks; the caller changes nothing.
pub fn check_allocation(inv: &pb::NodeInventory, a: &pb::Allocation) -> Result<(), String> {
    let mut tentative: BTreeMap<&str, Vec<MigHeld>> = BTreeMap::new();
    for s in &a.mig_slices {
        let gpu = inv
            .gpus
            .iter()
            .find(|g| g.uuid == s.gpu_uuid)
            .ok_or_else(|| format!("GPU {} is not on node {}", s.gpu_uuid, a.node))?;
        if !gpu.unhealthy_reason.is_empty() {
            return Err(format!(
                "GPU {} is unhealthy: {}",
                gpu.uuid, gpu.unhealthy_reason
            ));
        }
        if !gpu.mig_enabled {
            return Err(format!("GPU {} is not in MIG mode", gpu.uuid));
        }
        if a.gpu_uuids.contains(&gpu.uuid) {
            return Err(format!(
                "GPU {} is granted whole and as a MIG slice",
                gpu.uuid
            ));
        }
        let held = tentative
            .entry(gpu.uuid.as_str())
            .or_insert_with(|| held(gpu));
        pmig::check(
            &profiles(gpu),
            held,
            &s.profile,
            s.placement_start,
            s.placement_size,
        )
        .map_err(|e| format!("GPU {}: {e}", gpu.uuid))?;
        held.push(MigHeld {
            profile: s.profile.clone(),
            start: s.placement_start,
            size: s.placement_size,
        });
    }
    Ok(())
}

/// Checks a job's MIG request: a profile-shaped name and a count, both or neither.
///
/// # Errors
/// What is wrong, for the submitter.
pub fn validate_spec(spec: &pb::JobSpec) -> Result<(), String> {
    match (spec.mig_profile.is_empty(), spec.mig_per_node) {
        (true, 0) => Ok(()),
        (true, _) => Err("MIG slices asked for without a MIG profile".into()),
        (false, 0) => Err(format!(
            "MIG profile {} asked for 0 times",
            spec.mig_profile
        )),
        (false, n) if n > MIG_PER_NODE_MAX => Err(format!(
            "{n} MIG slices per node asked for, at most {MIG_PER_NODE_MAX}"
        )),
        (false, _) if !pmig::is_profile_name(&spec.mig_profile) => Err(format!(
            "{:?} is not a MIG profile name (<n>g.<m>gb, e.g. 3g.40gb)",
            spec.mig_profile
        )),
        (false, _) if !spec.gpu_type.is_empty() => Err(format!(
            "a MIG profile ({}) and a GPU type ({}) cannot be asked for together",
            spec.mig_profile, spec.gpu_type
        )),
        (false, _) => Ok(()),
    }
}

/// The planner's view of `gpu`'s MIG state; profile tables are shared per card model
/// through `cache` (one table per model and inventory listing).
pub fn view_fields(
    gpu: &pb::Gpu,
    cache: &mut BTreeMap<String, Arc<Vec<MigProfile>>>,
) -> (bool, Arc<Vec<MigProfile>>, Vec<MigHeld>) {
    if !gpu.mig_enabled {
        return (false, Arc::default(), Vec::new());
    }
    if !gpu.unhealthy_reason.is_empty() {
        // Still MIG-only (never a whole GPU), but no slice may be placed on it: no profiles.
        return (true, Arc::default(), held(gpu));
    }
    let table = profiles(gpu);
    let key = format!("{}/{table:?}", gpu.model);
    let shared = cache.entry(key).or_insert_with(|| Arc::new(table)).clone();
    (true, shared, held(gpu))
}

impl StateMachine {
    /// Records the slices of allocation `a` of `job_id` as held.
    ///
    /// # Panics
    /// If a slice overlaps a held one (the check at apply rules it out: the assertion guards
    /// invariant 2 at slice level).
    pub(super) fn hold_slices(&mut self, job_id: u64, a: &pb::Allocation) {
        let Some(inv) = self
            .state
            .nodes
            .get_mut(&a.node)
            .and_then(|n| n.inventory.as_mut())
        else {
            return;
        };
        for s in &a.mig_slices {
            let gpu = inv
                .gpus
                .iter_mut()
                .find(|g| g.uuid == s.gpu_uuid)
                .expect("checked at apply");
            let now = held(gpu);
            if let Err(e) = pmig::check(
                &profiles(gpu),
                &now,
                &s.profile,
                s.placement_start,
                s.placement_size,
            ) {
                panic!("MIG slice {s:?} granted to job {job_id} against {now:?}: {e}");
            }
            gpu.mig_held.push(pb::MigSlice {
                job_id,
                ..s.clone()
            });
        }
    }
}

/// Frees every slice job `id` holds on `gpu`.
pub fn release(gpu: &mut pb::Gpu, id: u64) {
    gpu.mig_held.retain(|s| s.job_id != id);
}

#[cfg(test)]
#[path = "mig_tests.rs"]
mod tests;
