//! MIG carving as part of placement: pure fit/carve functions over a GPU's profile table
//! and the slices it holds now.
//!
//! berth uses dynamic MIG: a slice (GPU instance) exists only while its job runs, so
//! "re-partitioning" an idle GPU is simply choosing a placement on it; the agent creates
//! the instance at exactly that placement at launch and destroys it at the end. Geometry
//! (see `shared/reference/interfaces.md` §2): a card has 8 memory slices; a profile of size
//! `s` may start only at its legal starts; slices never overlap; each profile has an
//! instance limit. The table comes from the agent's NVML inventory; [`builtin_profiles`]
//! is the documented fallback when the inventory lists no placements.
//!
//! How a slice is chosen ([`choose_slice`]), best first:
//! 1. a GPU that already holds slices, unless the carve cost is 0: starting to carve an
//!    empty GPU costs `carve_cost` (a score penalty, [`crate::PolicyConfig::mig_carve_cost`]),
//!    so work packs onto carved cards and whole cards stay empty for large profiles;
//! 2. the placement that leaves the most room on that GPU: the largest profile size still
//!    placeable, then the number of (profile, start) options still open (so a 1g slice goes
//!    to start 6 rather than 0, keeping the 4g/3g region at 0 whole);
//! 3. the lower GPU index, then the lower start (deterministic).

use crate::filter::{Filter, Reject, RejectReason};
use crate::score::Scorer;
use crate::snapshot::{GpuView, NodeView, PendingJob};

/// Memory slices of an A100/H100/H200 (placements are measured in them).
pub const MEMORY_SLICES: u32 = 8;

/// One GPU-instance profile of a card: name, size in memory slices, legal starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigProfile {
    /// NVML name without `MIG `, e.g. `3g.40gb` (names differ by card: key by card).
    pub name: String,
    /// Placement size in memory slices (1g.20gb is 2, 3g.40gb is 4, 7g is 8).
    pub size: u32,
    /// Most instances of this profile on one card.
    pub instances_max: u32,
    /// Legal placement starts, ascending.
    pub starts: Vec<u32>,
}

/// A slice a job holds now on one GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigHeld {
    /// Profile name.
    pub profile: String,
    /// First memory slice.
    pub start: u32,
    /// Memory slices, `[start, start + size)`.
    pub size: u32,
}

/// A slice granted to a job: which GPU, which placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigGrant {
    /// The GPU carved.
    pub gpu_uuid: String,
    /// Its NVML index.
    pub gpu_index: u32,
    /// Profile name as the card calls it.
    pub profile: String,
    /// First memory slice.
    pub start: u32,
    /// Memory slices.
    pub size: u32,
}

/// Whether `name` has the shape of a MIG profile name: `<n>g.<m>gb`, optionally with a
/// `+me` suffix (`1g.10gb`, `3g.40gb`, `1g.5gb+me`). The CLI uses this to tell a profile
/// from a GRES type such as `h100`.
pub fn is_profile_name(name: &str) -> bool {
    let base = name.strip_suffix("+me").unwrap_or(name);
    let Some((g, rest)) = base.split_once("g.") else {
        return false;
    };
    let Some(mem) = rest.strip_suffix("gb") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    digits(g) && digits(mem) && !g.starts_with('0') && !mem.starts_with('0')
}

/// The profile table of a card model by NVML name, for MIG-mode GPUs whose inventory
/// lists no placements. Only the cards `interfaces.md` §2 records: A100 40GB, A100 80GB,
/// H100 80GB. `None` for any other model (then only the inventory counts).
pub fn builtin_profiles(model: &str) -> Option<Vec<MigProfile>> {
    let m = model.to_ascii_uppercase();
    // (name, size, instances, starts) per profile index, in the order of the table.
    let names: [&str; 7] = if m.contains("A100") && (m.contains("40GB") || m.contains("40 GB")) {
        [
            "1g.5gb",
            "1g.5gb+me",
            "1g.10gb",
            "2g.10gb",
            "3g.20gb",
            "4g.20gb",
            "7g.40gb",
        ]
    } else if (m.contains("A100") || m.contains("H100")) && m.contains("80GB") {
        [
            "1g.10gb",
            "1g.10gb+me",
            "1g.20gb",
            "2g.20gb",
            "3g.40gb",
            "4g.40gb",
            "7g.80gb",
        ]
    } else {
        return None;
    };
    let geometry: [(u32, u32, &[u32]); 7] = [
        (1, 7, &[0, 1, 2, 3, 4, 5, 6]),
        (1, 1, &[0, 1, 2, 3, 4, 5, 6]),
        (2, 4, &[0, 2, 4, 6]),
        (2, 3, &[0, 2, 4]),
        (4, 2, &[0, 4]),
        (4, 1, &[0]),
        (8, 1, &[0]),
    ];
    Some(
        names
            .iter()
            .zip(geometry)
            .map(|(name, (size, instances_max, starts))| MigProfile {
                name: (*name).to_string(),
                size,
                instances_max,
                starts: starts.to_vec(),
            })
            .collect(),
    )
}

/// Why a placement cannot be granted (the state machine's check at apply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigError {
    /// The card has no such profile.
    #[error("GPU has no MIG profile {0}")]
    UnknownProfile(String),
    /// Start or size is not one of the profile's legal placements.
    #[error("{profile} cannot be placed at {start}:{size} (legal starts {starts:?}, size {want})")]
    IllegalPlacement {
        /// Profile.
        profile: String,
        /// Start asked.
        start: u32,
        /// Size asked.
        size: u32,
        /// Legal starts.
        starts: Vec<u32>,
        /// Legal size.
        want: u32,
    },
    /// The placement overlaps a held slice.
    #[error("placement {start}:{size} overlaps the {other} slice at {other_start}:{other_size}")]
    Overlap {
        /// Start asked.
        start: u32,
        /// Size asked.
        size: u32,
        /// Profile held there.
        other: String,
        /// Its start.
        other_start: u32,
        /// Its size.
        other_size: u32,
    },
    /// The profile's instance limit is reached.
    #[error("{profile}: at most {max} instance(s) per GPU")]
    InstanceLimit {
        /// Profile.
        profile: String,
        /// Limit.
        max: u32,
    },
}

/// Checks that `profile` at `start:size` may be added to `held` on a card with `profiles`:
/// a legal placement of a known profile, under its instance limit, overlapping nothing.
///
/// # Errors
/// [`MigError`] naming the first rule broken; the caller changes nothing.
pub fn check(
    profiles: &[MigProfile],
    held: &[MigHeld],
    profile: &str,
    start: u32,
    size: u32,
) -> Result<(), MigError> {
    let p = profiles
        .iter()
        .find(|p| p.name == profile)
        .ok_or_else(|| MigError::UnknownProfile(profile.to_string()))?;
    if size != p.size || !p.starts.contains(&start) || start + size > MEMORY_SLICES {
        return Err(MigError::IllegalPlacement {
            profile: profile.to_string(),
            start,
            size,
            starts: p.starts.clone(),
            want: p.size,
        });
    }
    if let Some(h) = held.iter().find(|h| overlaps(h.start, h.size, start, size)) {
        return Err(MigError::Overlap {
            start,
            size,
            other: h.profile.clone(),
            other_start: h.start,
            other_size: h.size,
        });
    }
    let same = held.iter().filter(|h| h.profile == profile).count();
    if same >= p.instances_max as usize {
        return Err(MigError::InstanceLimit {
            profile: profile.to_string(),
            max: p.instances_max,
        });
    }
    Ok(())
}

fn overlaps(a_start: u32, a_size: u32, b_start: u32, b_size: u32) -> bool {
    a_start < b_start + b_size && b_start < a_start + a_size
}

/// Starts at which `profile` may be placed now next to `held`, ascending.
pub fn free_starts<'a>(
    profile: &'a MigProfile,
    held: &'a [MigHeld],
) -> impl Iterator<Item = u32> + 'a {
    let under_limit =
        held.iter().filter(|h| h.profile == profile.name).count() < profile.instances_max as usize;
    profile.starts.iter().copied().filter(move |&s| {
        under_limit
            && s + profile.size <= MEMORY_SLICES
            && !held
                .iter()
                .any(|h| overlaps(h.start, h.size, s, profile.size))
    })
}

/// Room left on a card holding `held`: (largest placeable profile size, number of
/// (profile, start) options open). Compared lexicographically, larger is better.
pub fn room(profiles: &[MigProfile], held: &[MigHeld]) -> (u32, u32) {
    let mut largest = 0;
    let mut options = 0;
    for p in profiles {
        let n = free_starts(p, held).count() as u32;
        if n > 0 {
            largest = largest.max(p.size);
        }
        options += n;
    }
    (largest, options)
}

/// One candidate slice and how good it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceChoice {
    /// Position of the GPU in the node's `gpus`.
    pub gpu: usize,
    /// First memory slice.
    pub start: u32,
    /// Memory slices.
    pub size: u32,
    /// Score in `[-1, 1]`: `largest_after / 8 - carve_cost` when the GPU held no slice,
    /// `largest_after / 8` otherwise (clamped).
    pub score: f64,
}

/// The best slice of `profile` on `node` (see the module doc for the order), or `None`
/// when no MIG-mode, healthy GPU of the node has a free legal placement for it. `held`
/// overrides the GPUs' own held lists when given (tentative slices of the same job).
pub fn choose_slice(
    gpus: &[GpuView],
    held: &[Vec<MigHeld>],
    profile: &str,
    carve_cost: f64,
) -> Option<SliceChoice> {
    let mut best: Option<(SliceChoice, (u32, u32))> = None;
    for (i, gpu) in gpus.iter().enumerate() {
        if !gpu.mig_enabled {
            continue;
        }
        let Some(p) = gpu.mig_profiles.iter().find(|p| p.name == profile) else {
            continue;
        };
        let now = &held[i];
        let fresh = now.is_empty();
        let mut after = now.clone();
        for start in free_starts(p, now) {
            after.push(MigHeld {
                profile: p.name.clone(),
                start,
                size: p.size,
            });
            let r = room(&gpu.mig_profiles, &after);
            after.pop();
            let penalty = if fresh { carve_cost } else { 0.0 };
            let score = (f64::from(r.0) / f64::from(MEMORY_SLICES) - penalty).clamp(-1.0, 1.0);
            let better = match &best {
                None => true,
                // Strictly better only: earlier GPUs and starts win ties.
                Some((b, br)) => score > b.score || (score == b.score && r > *br),
            };
            if better {
                let choice = SliceChoice {
                    gpu: i,
                    start,
                    size: p.size,
                    score,
                };
                best = Some((choice, r));
            }
        }
    }
    best.map(|(c, _)| c)
}

/// Chooses `count` slices of `profile` on `node`, one at a time, each seeing the ones
/// before it; `None` when fewer than `count` fit. Returns the grants and the mean score.
pub fn choose(
    node: &NodeView,
    profile: &str,
    count: u32,
    carve_cost: f64,
) -> Option<(Vec<MigGrant>, f64)> {
    let mut held: Vec<Vec<MigHeld>> = node.gpus.iter().map(|g| g.mig_held.clone()).collect();
    let mut grants = Vec::with_capacity(count as usize);
    let mut score = 0.0;
    for _ in 0..count {
        let c = choose_slice(&node.gpus, &held, profile, carve_cost)?;
        let gpu = &node.gpus[c.gpu];
        held[c.gpu].push(MigHeld {
            profile: profile.to_string(),
            start: c.start,
            size: c.size,
        });
        score += c.score;
        grants.push(MigGrant {
            gpu_uuid: gpu.uuid.clone(),
            gpu_index: gpu.index,
            profile: profile.to_string(),
            start: c.start,
            size: c.size,
        });
    }
    let mean = if count == 0 {
        0.0
    } else {
        score / f64::from(count)
    };
    Some((grants, mean))
}

/// How many slices of `profile` could still be placed on `node`, capped at `cap`, without
/// scoring: per MIG-mode GPU, its free legal placements of the profile, up to the
/// profile's instance limit.
///
/// This is exact, and [`choose`] places that many in any order: a profile's legal
/// placements are disjoint cells of one aligned grid (size 1 at 0..6, size 2 at
/// 0/2/4(/6), size 4 at 0/4, size 8 at 0), so taking one blocks no other cell of the same
/// profile. The filter uses it because it costs one overlap test per start, where
/// [`choose`] scores every candidate (property-tested against [`choose`]).
pub fn placeable(node: &NodeView, profile: &str, cap: u32) -> u32 {
    let mut n = 0u32;
    for gpu in node.gpus.iter().filter(|g| g.mig_enabled) {
        let Some(p) = gpu.mig_profiles.iter().find(|p| p.name == profile) else {
            continue;
        };
        let same = gpu.mig_held.iter().filter(|h| h.profile == profile).count() as u32;
        let cells = p
            .starts
            .iter()
            .filter(|&&s| {
                s + p.size <= MEMORY_SLICES
                    && !gpu
                        .mig_held
                        .iter()
                        .any(|h| overlaps(h.start, h.size, s, p.size))
            })
            .count() as u32;
        n += cells.min(p.instances_max.saturating_sub(same));
        if n >= cap {
            return cap;
        }
    }
    n
}

/// Adds `grants`' slices to the GPUs of `node` (a decision consumed within a pass).
///
/// # Panics
/// If a slice is illegal or overlaps a held one: decisions come from the same view, so
/// that is a broken invariant (a slice granted twice).
pub fn take(node: &mut NodeView, grants: &[MigGrant]) {
    for g in grants {
        let gpu = gpu_mut(&mut node.gpus, &g.gpu_uuid, g.gpu_index)
            .unwrap_or_else(|| panic!("MIG slice on GPU {} not on node {}", g.gpu_uuid, node.name));
        if let Err(e) = check(
            &gpu.mig_profiles,
            &gpu.mig_held,
            &g.profile,
            g.start,
            g.size,
        ) {
            panic!("MIG slice {g:?} granted twice or illegal: {e}");
        }
        gpu.mig_held.push(MigHeld {
            profile: g.profile.clone(),
            start: g.start,
            size: g.size,
        });
    }
}

/// [`take`] for views of the future (backfill timelines), where a reserved slice may meet
/// a slice that is still held at that point: whatever is held already stays held, as
/// whole GPUs do there. Slices that would overlap are skipped.
pub fn take_lenient(node: &mut NodeView, grants: &[MigGrant]) {
    for g in grants {
        if let Some(gpu) = gpu_mut(&mut node.gpus, &g.gpu_uuid, g.gpu_index) {
            if check(
                &gpu.mig_profiles,
                &gpu.mig_held,
                &g.profile,
                g.start,
                g.size,
            )
            .is_ok()
            {
                gpu.mig_held.push(MigHeld {
                    profile: g.profile.clone(),
                    start: g.start,
                    size: g.size,
                });
            }
        }
    }
}

/// Removes `grants`' slices from the GPUs of `node` (a job ended, or a tentative start
/// is undone). Slices not held are ignored.
pub fn give(node: &mut NodeView, grants: &[MigGrant]) {
    for g in grants {
        if let Some(gpu) = gpu_mut(&mut node.gpus, &g.gpu_uuid, g.gpu_index) {
            gpu.mig_held
                .retain(|h| !(h.start == g.start && h.size == g.size && h.profile == g.profile));
        }
    }
}

/// The GPU `uuid`, looked up at `index` first (nodes list GPUs in index order).
fn gpu_mut<'a>(gpus: &'a mut [GpuView], uuid: &str, index: u32) -> Option<&'a mut GpuView> {
    let at = gpus
        .iter()
        .position(|g| g.uuid == uuid && g.index == index)
        .or_else(|| gpus.iter().position(|g| g.uuid == uuid))?;
    gpus.get_mut(at)
}

/// GPU equivalents of some slices for fair-share charges: memory slices over the card's 8
/// (a 3g.40gb at 4:4 is 0.5 GPU, a 1g.10gb 0.125), since memory is what a slice takes from
/// everyone else.
pub fn gpu_equivalents(slices: &[MigGrant]) -> f64 {
    slices
        .iter()
        .map(|s| f64::from(s.size) / f64::from(MEMORY_SLICES))
        .sum()
}

/// A job's charge rate with its MIG slices counted: `rate` (from whole GPUs, CPUs and
/// memory, [`crate::fairshare::dominant_rate`]) or the slices' GPU equivalents, whichever
/// is larger. For a job holding slices and no whole GPU that is exactly its dominant-share
/// rate, since the rate's unit is one GPU whenever the cluster has GPUs.
pub fn charge_rate(rate: f64, slices: &[MigGrant], cap: &crate::Capacity) -> f64 {
    if cap.gpus == 0 {
        return rate;
    }
    rate.max(gpu_equivalents(slices))
}

/// The slices `job` gets on `node` ([`choose`] at the pipeline's carve cost); empty for
/// jobs that ask for none.
///
/// # Panics
/// If they do not fit: the pipeline calls it only for nodes [`MigFilter`] passed.
pub fn grants(job: &PendingJob, node: &NodeView, carve_cost: f64) -> Vec<MigGrant> {
    if job.mig_profile.is_empty() || job.mig_per_node == 0 {
        return Vec::new();
    }
    match choose(node, &job.mig_profile, job.mig_per_node, carve_cost) {
        Some((g, _)) => g,
        // The filter counted room for them (`placeable` is exact): a broken invariant.
        None => panic!(
            "job {}: {} x {} passed the MIG filter on {} but do not fit",
            job.id, job.mig_per_node, job.mig_profile, node.name
        ),
    }
}

/// Room for the job's MIG slices: a MIG request goes only to MIG-mode GPUs with a free
/// legal placement per slice (whole-GPU requests never see MIG-mode GPUs as free).
pub struct MigFilter;

impl Filter for MigFilter {
    fn name(&self) -> &'static str {
        "mig"
    }
    fn check(&self, job: &PendingJob, node: &NodeView) -> Result<(), Reject> {
        if job.mig_profile.is_empty() || job.mig_per_node == 0 {
            return Ok(());
        }
        let want = job.mig_per_node;
        let p = &job.mig_profile;
        let reject = |detail: String| {
            Err(Reject {
                reason: RejectReason::Mig,
                detail,
            })
        };
        let mig: Vec<&GpuView> = node.gpus.iter().filter(|g| g.mig_enabled).collect();
        if mig.is_empty() {
            return reject(format!("needs {want} {p} MIG slice(s), no GPU in MIG mode"));
        }
        if !mig
            .iter()
            .any(|g| g.mig_profiles.iter().any(|q| &q.name == p))
        {
            return reject(format!(
                "needs {want} {p} MIG slice(s), no GPU here has that profile"
            ));
        }
        let room = placeable(node, p, want);
        if room >= want {
            return Ok(());
        }
        reject(format!(
            "needs {want} {p} MIG slice(s), {room} free placement(s) on {} MIG GPU(s)",
            mig.len()
        ))
    }
}

/// Ranks nodes for MIG jobs by the mean score of the slices the planner would choose
/// there ([`SliceChoice::score`]: room left on the card, minus the carve cost on an empty
/// card). 0 for jobs without MIG slices, so it does not reorder them.
pub struct MigPacking {
    /// [`crate::PolicyConfig::mig_carve_cost`].
    pub carve_cost: f64,
}

impl Scorer for MigPacking {
    fn name(&self) -> &'static str {
        "mig-packing"
    }
    fn score(&self, job: &PendingJob, node: &NodeView, _fit: &crate::score::Fit) -> f64 {
        if job.mig_profile.is_empty() || job.mig_per_node == 0 {
            return 0.0;
        }
        choose(node, &job.mig_profile, job.mig_per_node, self.carve_cost).map_or(-1.0, |(_, s)| s)
    }
}

#[cfg(test)]
#[path = "mig_tests.rs"]
mod tests;
