//! MIG as the hardware does it, without any C: the GPU-instance profiles of each supported
//! card and the rules for creating and destroying GPU and compute instances. The exported
//! functions in `ffi::mig` only translate between this and NVML's structs and handles, so
//! every rule here is unit-tested in Rust.
//!
//! Facts (from `shared/reference/interfaces.md`, itself from `nvidia-smi mig -lgip/-lgipp`
//! on real cards): A100 and H100 have 7 compute slices and 8 memory slices; placements are
//! counted in memory slices; a profile may only start at its listed slots; two GPU instances
//! may not share a memory slice; each profile has a per-GPU instance limit; the same name
//! is a different profile id on different cards. Engine counts (copy, decoder, JPEG, OFA)
//! are not in that source: they are given plausible values and nothing in berth reads them.

use serde::{Deserialize, Serialize};

/// GPU instances one GPU can hold at most (7 × 1g), and so the GPU-instance ids `[1, 8)`.
pub(crate) const GPU_INSTANCES_MAX: usize = 7;
/// Compute instances one GPU instance can hold at most (a 7g split into 1c each).
pub(crate) const COMPUTE_INSTANCES_MAX: usize = 8;

/// The MIG-capable cards the simulator knows, by their profile table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigSku {
    /// A100 40GB (SXM4 or PCIe).
    #[serde(rename = "a100-40gb")]
    A100_40gb,
    /// A100 80GB.
    #[serde(rename = "a100-80gb")]
    A100_80gb,
    /// H100 80GB (SXM5 HBM3).
    #[serde(rename = "h100-80gb")]
    H100_80gb,
}

/// One GPU-instance profile of one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GiProfile {
    /// NVML's profile *index* constant (`NVML_GPU_INSTANCE_PROFILE_*`), the argument of
    /// `nvmlDeviceGetGpuInstanceProfileInfo`.
    pub(crate) index: u32,
    /// NVML's profile *id* (`info.id`), the argument of create and placement calls.
    pub(crate) id: u32,
    /// Compute slices (the `Ng` of the name).
    pub(crate) compute_slices: u32,
    /// Memory slices: the placement size.
    pub(crate) memory_slices: u32,
    /// Most instances of this profile on one GPU.
    pub(crate) instances_max: u32,
    /// Legal placement starts, in memory slices.
    pub(crate) starts: &'static [u32],
    /// Name without NVML's `MIG ` prefix, e.g. `3g.40gb`.
    pub(crate) name: &'static str,
    /// Memory of one instance, MiB.
    pub(crate) memory_mb: u64,
    /// Streaming multiprocessors of one instance.
    pub(crate) sms: u32,
    /// Whether it has the media engines (`+me` profiles and 7g).
    pub(crate) media: bool,
}

const ONE: &[u32] = &[0, 1, 2, 3, 4, 5, 6];
const TWO: &[u32] = &[0, 2, 4, 6];
const TWO_G: &[u32] = &[0, 2, 4];
const FOUR: &[u32] = &[0, 4];
const ZERO: &[u32] = &[0];

#[rustfmt::skip] // One profile per line reads as the reference table it copies.
const fn table(names: [&'static str; 7], mb: [u64; 7], sms: [u32; 7]) -> [GiProfile; 7] {
    [
        GiProfile { index: 0, id: 19, compute_slices: 1, memory_slices: 1, instances_max: 7, starts: ONE, name: names[0], memory_mb: mb[0], sms: sms[0], media: false },
        GiProfile { index: 7, id: 20, compute_slices: 1, memory_slices: 1, instances_max: 1, starts: ONE, name: names[1], memory_mb: mb[1], sms: sms[1], media: true },
        GiProfile { index: 9, id: 15, compute_slices: 1, memory_slices: 2, instances_max: 4, starts: TWO, name: names[2], memory_mb: mb[2], sms: sms[2], media: false },
        GiProfile { index: 1, id: 14, compute_slices: 2, memory_slices: 2, instances_max: 3, starts: TWO_G, name: names[3], memory_mb: mb[3], sms: sms[3], media: false },
        GiProfile { index: 2, id: 9, compute_slices: 3, memory_slices: 4, instances_max: 2, starts: FOUR, name: names[4], memory_mb: mb[4], sms: sms[4], media: false },
        GiProfile { index: 3, id: 5, compute_slices: 4, memory_slices: 4, instances_max: 1, starts: ZERO, name: names[5], memory_mb: mb[5], sms: sms[5], media: false },
        GiProfile { index: 4, id: 0, compute_slices: 7, memory_slices: 8, instances_max: 1, starts: ZERO, name: names[6], memory_mb: mb[6], sms: sms[6], media: true },
    ]
}

// MiB = GiB from `nvidia-smi mig -lgip` × 1024 (19.62 GiB is 19.625 rounded for display).
static A100_40GB: [GiProfile; 7] = table(
    [
        "1g.5gb",
        "1g.5gb+me",
        "1g.10gb",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb",
    ],
    [4864, 4864, 9984, 9984, 20096, 20096, 40448],
    [14, 14, 14, 28, 42, 56, 98],
);
static A100_80GB: [GiProfile; 7] = table(
    [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ],
    [9728, 9728, 19968, 19968, 40192, 40192, 80896],
    [14, 14, 14, 28, 42, 56, 98],
);
static H100_80GB: [GiProfile; 7] = table(
    [
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ],
    [9984, 9984, 20096, 20096, 40448, 40448, 81152],
    [16, 16, 26, 32, 60, 64, 132],
);

impl MigSku {
    /// Every profile of this card.
    pub(crate) fn profiles(self) -> &'static [GiProfile] {
        match self {
            MigSku::A100_40gb => &A100_40GB,
            MigSku::A100_80gb => &A100_80GB,
            MigSku::H100_80gb => &H100_80GB,
        }
    }

    /// The profile at NVML index constant `index`, if this card has it.
    pub(crate) fn by_index(self, index: u32) -> Option<&'static GiProfile> {
        self.profiles().iter().find(|p| p.index == index)
    }

    /// The profile with NVML id `id`, if this card has it.
    pub(crate) fn by_id(self, id: u32) -> Option<&'static GiProfile> {
        self.profiles().iter().find(|p| p.id == id)
    }
}

/// Compute-instance profile index constants (`NVML_COMPUTE_INSTANCE_PROFILE_<N>_SLICE`) and
/// their compute-slice counts; the ids equal the indexes on real drivers.
pub(crate) const CI_PROFILES: &[(u32, u32)] = &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 7)];

/// A compute instance: `slices` of its GPU instance's compute slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ComputeInstance {
    pub(crate) id: u32,
    pub(crate) profile_id: u32,
    pub(crate) slices: u32,
}

/// A GPU instance at memory slices `[start, start + size)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GpuInstance {
    pub(crate) id: u32,
    pub(crate) profile_id: u32,
    pub(crate) start: u32,
    pub(crate) size: u32,
    pub(crate) compute_instances: Vec<ComputeInstance>,
}

/// Why a MIG operation was refused; each maps to the NVML code a real driver returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MigError {
    /// Unknown profile, placement not legal for the profile, unknown instance id.
    InvalidArgument,
    /// The placement overlaps an instance, or the profile's instance limit is reached.
    InsufficientResources,
    /// A GPU instance still holds compute instances.
    InUse,
}

/// The MIG instances of one GPU. Ids are the lowest free ones, as the driver's are
/// reused after destroy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MigLayout {
    pub(crate) gpu_instances: Vec<GpuInstance>,
}

impl MigLayout {
    /// Creates a GPU instance of `profile_id` at `start` (size must be the profile's).
    ///
    /// # Errors
    /// See [`MigError`]; nothing changes on error.
    pub(crate) fn create_gi(
        &mut self,
        sku: MigSku,
        profile_id: u32,
        start: u32,
        size: u32,
    ) -> Result<u32, MigError> {
        let profile = sku.by_id(profile_id).ok_or(MigError::InvalidArgument)?;
        if size != profile.memory_slices || !profile.starts.contains(&start) {
            return Err(MigError::InvalidArgument);
        }
        let same = self
            .gpu_instances
            .iter()
            .filter(|gi| gi.profile_id == profile_id)
            .count();
        let overlaps = self
            .gpu_instances
            .iter()
            .any(|gi| start < gi.start + gi.size && gi.start < start + size);
        if overlaps || same >= profile.instances_max as usize {
            return Err(MigError::InsufficientResources);
        }
        // Media engines exist once per GPU: one `+me` or 7g holds them all.
        let media_taken = self
            .gpu_instances
            .iter()
            .any(|gi| sku.by_id(gi.profile_id).is_some_and(|p| p.media));
        if profile.media && media_taken {
            return Err(MigError::InsufficientResources);
        }
        let id = lowest_free((1..=GPU_INSTANCES_MAX as u32).collect(), |id| {
            self.gpu_instances.iter().any(|gi| gi.id == id)
        })
        .ok_or(MigError::InsufficientResources)?;
        self.gpu_instances.push(GpuInstance {
            id,
            profile_id,
            start,
            size,
            compute_instances: Vec::new(),
        });
        self.gpu_instances.sort_by_key(|gi| gi.id);
        Ok(id)
    }

    /// Destroys GPU instance `gi_id`.
    ///
    /// # Errors
    /// `InvalidArgument` if there is none; `InUse` while it holds compute instances.
    pub(crate) fn destroy_gi(&mut self, gi_id: u32) -> Result<(), MigError> {
        let at = self.position(gi_id)?;
        if !self.gpu_instances[at].compute_instances.is_empty() {
            return Err(MigError::InUse);
        }
        self.gpu_instances.remove(at);
        Ok(())
    }

    /// Creates a compute instance of CI profile `ci_profile` in GPU instance `gi_id`.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown instance or profile, or a profile larger than the
    /// GPU instance; `InsufficientResources` when its free compute slices are too few.
    pub(crate) fn create_ci(
        &mut self,
        sku: MigSku,
        gi_id: u32,
        ci_profile: u32,
    ) -> Result<u32, MigError> {
        let at = self.position(gi_id)?;
        let gi = &mut self.gpu_instances[at];
        let gi_slices = sku
            .by_id(gi.profile_id)
            .map_or(0, |profile| profile.compute_slices);
        let slices = ci_slices(ci_profile).ok_or(MigError::InvalidArgument)?;
        if slices > gi_slices {
            return Err(MigError::InvalidArgument);
        }
        let used: u32 = gi.compute_instances.iter().map(|ci| ci.slices).sum();
        if used + slices > gi_slices {
            return Err(MigError::InsufficientResources);
        }
        let id = lowest_free((0..COMPUTE_INSTANCES_MAX as u32).collect(), |id| {
            gi.compute_instances.iter().any(|ci| ci.id == id)
        })
        .ok_or(MigError::InsufficientResources)?;
        gi.compute_instances.push(ComputeInstance {
            id,
            profile_id: ci_profile,
            slices,
        });
        gi.compute_instances.sort_by_key(|ci| ci.id);
        Ok(id)
    }

    /// Destroys compute instance `ci_id` of GPU instance `gi_id`.
    ///
    /// # Errors
    /// `InvalidArgument` if either does not exist.
    pub(crate) fn destroy_ci(&mut self, gi_id: u32, ci_id: u32) -> Result<(), MigError> {
        let at = self.position(gi_id)?;
        let cis = &mut self.gpu_instances[at].compute_instances;
        let ci = cis
            .iter()
            .position(|ci| ci.id == ci_id)
            .ok_or(MigError::InvalidArgument)?;
        cis.remove(ci);
        Ok(())
    }

    /// The GPU instance `gi_id`, if it exists.
    pub(crate) fn gi(&self, gi_id: u32) -> Option<&GpuInstance> {
        self.gpu_instances.iter().find(|gi| gi.id == gi_id)
    }

    /// Every (GPU instance, compute instance) pair: the MIG devices, in NVML's index order.
    pub(crate) fn mig_devices(&self) -> Vec<(&GpuInstance, &ComputeInstance)> {
        self.gpu_instances
            .iter()
            .flat_map(|gi| gi.compute_instances.iter().map(move |ci| (gi, ci)))
            .collect()
    }

    fn position(&self, gi_id: u32) -> Result<usize, MigError> {
        self.gpu_instances
            .iter()
            .position(|gi| gi.id == gi_id)
            .ok_or(MigError::InvalidArgument)
    }
}

/// Compute slices of CI profile index `profile`; `None` for unknown ones.
pub(crate) fn ci_slices(profile: u32) -> Option<u32> {
    CI_PROFILES
        .iter()
        .find(|(index, _)| *index == profile)
        .map(|(_, slices)| *slices)
}

fn lowest_free(candidates: Vec<u32>, taken: impl Fn(u32) -> bool) -> Option<u32> {
    candidates.into_iter().find(|&id| !taken(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: MigSku = MigSku::H100_80gb;
    /// Memory slices of every supported card: placements live in `[0, 8)`.
    const MEMORY_SLICES: u32 = 8;

    #[test]
    fn profile_ids_differ_by_card_for_the_same_name() {
        let find =
            |sku: MigSku, name: &str| sku.profiles().iter().find(|p| p.name == name).map(|p| p.id);
        assert_eq!(find(MigSku::A100_40gb, "1g.10gb"), Some(15));
        assert_eq!(find(MigSku::A100_80gb, "1g.10gb"), Some(19));
        assert_eq!(find(MigSku::H100_80gb, "1g.10gb"), Some(19));
        assert_eq!(find(MigSku::H100_80gb, "3g.40gb"), Some(9));
        // The real H100's instance counts (interfaces.md): 7, 1, 4, 3, 2, 1, 1.
        let counts: Vec<u32> = H100.profiles().iter().map(|p| p.instances_max).collect();
        assert_eq!(counts, [7, 1, 4, 3, 2, 1, 1]);
    }

    #[test]
    fn every_legal_placement_fits_in_eight_memory_slices() {
        for sku in [MigSku::A100_40gb, MigSku::A100_80gb, MigSku::H100_80gb] {
            for p in sku.profiles() {
                for start in p.starts {
                    assert!(
                        start + p.memory_slices <= MEMORY_SLICES,
                        "{sku:?} {}",
                        p.name
                    );
                }
            }
        }
    }

    /// A step of a MIG sequence and what it must give.
    enum Step {
        Gi(u32, u32, u32, Result<u32, MigError>),
        DestroyGi(u32, Result<(), MigError>),
        Ci(u32, u32, Result<u32, MigError>),
        DestroyCi(u32, u32, Result<(), MigError>),
    }
    use MigError::*;
    use Step::*;

    fn run(i: usize, steps: &[Step]) {
        let mut layout = MigLayout::default();
        for (s, step) in steps.iter().enumerate() {
            let before = layout.clone();
            let failed = match step {
                Gi(profile, start, size, want) => {
                    let got = layout.create_gi(H100, *profile, *start, *size);
                    assert_eq!(got, *want, "#{i} step {s}: create_gi");
                    got.is_err()
                }
                DestroyGi(gi, want) => {
                    let got = layout.destroy_gi(*gi);
                    assert_eq!(got, *want, "#{i} step {s}: destroy_gi");
                    got.is_err()
                }
                Ci(gi, profile, want) => {
                    let got = layout.create_ci(H100, *gi, *profile);
                    assert_eq!(got, *want, "#{i} step {s}: create_ci");
                    got.is_err()
                }
                DestroyCi(gi, ci, want) => {
                    let got = layout.destroy_ci(*gi, *ci);
                    assert_eq!(got, *want, "#{i} step {s}: destroy_ci");
                    got.is_err()
                }
            };
            if failed {
                assert_eq!(
                    layout, before,
                    "#{i} step {s}: a refusal changed the layout"
                );
            }
        }
    }

    #[test]
    fn legal_and_illegal_sequences() {
        // H100 ids: 1g.10gb 19, +me 20, 1g.20gb 15, 2g 14, 3g 9, 4g 5, 7g 0.
        let table: Vec<Vec<Step>> = vec![
            // 4g + 3g fills the card; nothing else fits.
            vec![
                Gi(5, 0, 4, Ok(1)),
                Gi(9, 4, 4, Ok(2)),
                Gi(19, 6, 1, Err(InsufficientResources)),
            ],
            // 3g may not start at 2 (only 0 or 4), and its size is 4, not 3.
            vec![
                Gi(9, 2, 4, Err(InvalidArgument)),
                Gi(9, 0, 3, Err(InvalidArgument)),
            ],
            // Overlap: 2g at 2 collides with 3g at 0..4.
            vec![
                Gi(9, 0, 4, Ok(1)),
                Gi(14, 2, 2, Err(InsufficientResources)),
                Gi(14, 4, 2, Ok(2)),
            ],
            // Seven 1g.10gb, then an eighth has no legal start left.
            vec![
                Gi(19, 0, 1, Ok(1)),
                Gi(19, 1, 1, Ok(2)),
                Gi(19, 2, 1, Ok(3)),
                Gi(19, 3, 1, Ok(4)),
                Gi(19, 4, 1, Ok(5)),
                Gi(19, 5, 1, Ok(6)),
                Gi(19, 6, 1, Ok(7)),
                Gi(15, 6, 2, Err(InsufficientResources)),
            ],
            // Only one +me, and 7g holds the media engines too.
            vec![
                Gi(20, 0, 1, Ok(1)),
                Gi(20, 1, 1, Err(InsufficientResources)),
            ],
            // Unknown profile id (A100-40GB-only ids do not exist on H100? 19 does; 99 never).
            vec![Gi(99, 0, 1, Err(InvalidArgument))],
            // A GPU instance with a compute instance is in use; ids are reused after destroy.
            vec![
                Gi(9, 4, 4, Ok(1)),
                Ci(1, 2, Ok(0)),
                DestroyGi(1, Err(InUse)),
                DestroyCi(1, 0, Ok(())),
                DestroyGi(1, Ok(())),
                DestroyGi(1, Err(InvalidArgument)),
                Gi(0, 0, 8, Ok(1)),
            ],
            // Compute instances share the GPU instance's slices: 3g = 2c + 1c, no more.
            vec![
                Gi(9, 0, 4, Ok(1)),
                Ci(1, 3, Err(InvalidArgument)),
                Ci(1, 1, Ok(0)),
                Ci(1, 0, Ok(1)),
                Ci(1, 0, Err(InsufficientResources)),
                Ci(7, 0, Err(InvalidArgument)),
                DestroyCi(1, 5, Err(InvalidArgument)),
            ],
        ];
        for (i, steps) in table.iter().enumerate() {
            run(i, steps);
        }
    }

    #[test]
    fn mig_devices_list_every_compute_instance_in_order() {
        let mut layout = MigLayout::default();
        let a = layout.create_gi(H100, 14, 0, 2).expect("2g at 0");
        let b = layout.create_gi(H100, 14, 2, 2).expect("2g at 2");
        layout.create_ci(H100, b, 1).expect("ci");
        layout.create_ci(H100, a, 0).expect("ci");
        layout.create_ci(H100, a, 0).expect("ci");
        let got: Vec<(u32, u32)> = layout
            .mig_devices()
            .iter()
            .map(|(gi, ci)| (gi.id, ci.id))
            .collect();
        assert_eq!(got, [(1, 0), (1, 1), (2, 0)]);
    }
}
