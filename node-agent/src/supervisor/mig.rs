//! MIG slices of a job: carved before it starts and destroyed after it ends, with
//! ownership written to `mig.json` in the job directory *before* each slice is created, so
//! an agent that crashes at any point finds on restart which instances belong to which
//! job (kept slices are reused by the next job asking for the same profile).

use super::*;

impl Supervisor {
    /// The MIG devices recorded for job `id` (empty when it has none).
    pub fn mig_devices(&self, id: u64) -> Vec<MigDevice> {
        self.read::<mig_slices::MigRecord>(id, mig_slices::FILE)
            .map(|r| r.devices())
            .unwrap_or_default()
    }

    /// After a restart: fills in instances created but not yet recorded (a crash between
    /// create and record) by matching GPU and placement, and logs MIG devices no job owns
    /// (they are not berth's to destroy). Finished jobs' slices are released by `poll`.
    pub fn reconcile_mig(&self) {
        let existing = match self.gpus.mig_devices() {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("cannot list MIG instances to reconcile: {e}");
                return;
            }
        };
        let mut owned = Vec::new();
        for id in self.job_ids() {
            let Some(mut rec) = self.read::<mig_slices::MigRecord>(id, mig_slices::FILE) else {
                continue;
            };
            if rec.adopt(&existing) {
                tracing::info!(
                    job = id,
                    "re-attached MIG instances created before a restart"
                );
                write_json(&self.job_dir(id), mig_slices::FILE, &rec);
            }
            owned.extend(rec.devices().into_iter().map(|d| d.uuid));
        }
        for d in existing.iter().filter(|d| !owned.contains(&d.uuid)) {
            tracing::info!(
                gpu = d.gpu_uuid,
                mig = d.uuid,
                "MIG instance not owned by a berth job; left alone"
            );
        }
    }

    /// Carves the MIG slices `job`'s allocation on `node` names and returns their UUIDs.
    /// On any failure the slices already made are destroyed and the job directory is
    /// removed, so a refused launch leaves nothing behind.
    pub(super) fn carve(
        &self,
        job: &pb::Job,
        node: &str,
        dir: &Path,
    ) -> Result<Vec<String>, LaunchError> {
        let slices: Vec<pb::MigSlice> = job
            .allocations
            .iter()
            .find(|a| a.node == node)
            .map(|a| a.mig_slices.clone())
            .unwrap_or_default();
        if slices.is_empty() {
            return Ok(Vec::new());
        }
        let mut rec = mig_slices::MigRecord::new(&slices);
        for (i, slice) in slices.iter().enumerate() {
            // Intent first: a crash after create still leaves the owner on disk.
            write_json(dir, mig_slices::FILE, &rec);
            if let Some(kept) = self.reuse_kept(slice) {
                tracing::info!(job = job.id, mig = kept.uuid, "kept MIG instance reused");
                rec.entries[i].device = Some(kept);
                continue;
            }
            match self.gpus.create_mig(slice) {
                Ok(device) => rec.entries[i].device = Some(device),
                Err(e) => {
                    self.release(&mut rec);
                    let _ = fs::remove_dir_all(dir);
                    return Err(LaunchError::Mig(job.id, e));
                }
            }
        }
        write_json(dir, mig_slices::FILE, &rec);
        Ok(rec.devices().into_iter().map(|d| d.uuid).collect())
    }

    /// With `--mig-keep-layout`: the kept instance that is exactly `slice`, taken off the
    /// kept list; else destroys the kept instances in its way (a failure is logged, and the
    /// create that follows then says the placement is busy). `None` without the flag.
    fn reuse_kept(&self, slice: &pb::MigSlice) -> Option<MigDevice> {
        let dir = self.mig_keep.as_ref()?;
        let mut kept = crate::mig_keep::KeptSlices::load(dir);
        match self.gpus.mig_devices() {
            Ok(existing) => kept.retain_existing(&existing),
            Err(e) => tracing::warn!("cannot list MIG instances: {e}"),
        }
        let found = kept.take_exact(slice);
        if found.is_none() {
            for d in kept.take_overlapping(slice) {
                match self.gpus.destroy_mig(&d.gpu_uuid, d.gi_id) {
                    Ok(()) => {
                        tracing::info!(mig = d.uuid, "kept MIG instance destroyed for a new layout")
                    }
                    Err(e) => tracing::warn!(mig = d.uuid, "kept MIG instance not destroyed: {e}"),
                }
            }
        }
        if let Err(e) = kept.save() {
            tracing::warn!("{}: {e}", crate::mig_keep::FILE);
        }
        found
    }

    /// Hands a finished job's slices to the kept list instead of destroying them.
    fn keep(&self, dir: &Path, rec: &mut mig_slices::MigRecord) -> bool {
        let mut kept = crate::mig_keep::KeptSlices::load(dir);
        for entry in rec.entries.iter_mut() {
            if let Some(device) = entry.device.take() {
                kept.add(&entry.profile, device);
            }
        }
        match kept.save() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; MIG slices will be destroyed",
                    crate::mig_keep::FILE
                );
                false
            }
        }
    }

    /// Destroys every recorded slice still alive; true when none is left.
    fn release(&self, rec: &mut mig_slices::MigRecord) -> bool {
        for entry in rec.entries.iter_mut() {
            let Some(device) = &entry.device else {
                continue;
            };
            match self.gpus.destroy_mig(&device.gpu_uuid, device.gi_id) {
                Ok(()) => entry.device = None,
                Err(e) => tracing::debug!(mig = device.uuid, "MIG release deferred: {e}"),
            }
        }
        rec.entries.iter().all(|e| e.device.is_none())
    }

    /// Releases a finished job's MIG slices, once; true when it holds none any more.
    pub(super) fn release_job_mig(&self, id: u64) -> bool {
        let Some(mut rec) = self.read::<mig_slices::MigRecord>(id, mig_slices::FILE) else {
            return true;
        };
        if rec.released {
            return true;
        }
        if let Some(dir) = &self.mig_keep {
            let mut kept_rec = rec.clone();
            if self.keep(dir, &mut kept_rec) {
                kept_rec.released = true;
                write_json(&self.job_dir(id), mig_slices::FILE, &kept_rec);
                tracing::info!(job = id, "MIG slices kept for reuse");
                return true;
            }
        }
        rec.released = self.release(&mut rec);
        write_json(&self.job_dir(id), mig_slices::FILE, &rec);
        if rec.released {
            tracing::info!(job = id, "MIG slices destroyed");
            self.update_cdi();
        }
        rec.released
    }
}

/// The MIG ownership record of one job (`mig.json`).
mod mig_slices {
    use crate::gpu::MigDevice;
    use berth_proto::v1 as pb;
    use serde::{Deserialize, Serialize};

    pub(super) const FILE: &str = "mig.json";

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(super) struct Entry {
        pub(super) gpu_uuid: String,
        pub(super) profile: String,
        pub(super) start: u32,
        pub(super) size: u32,
        /// Set once created; `None` again once destroyed.
        pub(super) device: Option<MigDevice>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(super) struct MigRecord {
        pub(super) entries: Vec<Entry>,
        /// Every slice destroyed after the job ended.
        pub(super) released: bool,
    }

    impl MigRecord {
        pub(super) fn new(slices: &[pb::MigSlice]) -> MigRecord {
            let entries = slices
                .iter()
                .map(|s| Entry {
                    gpu_uuid: s.gpu_uuid.clone(),
                    profile: s.profile.clone(),
                    start: s.placement_start,
                    size: s.placement_size,
                    device: None,
                })
                .collect();
            MigRecord {
                entries,
                released: false,
            }
        }

        pub(super) fn devices(&self) -> Vec<MigDevice> {
            self.entries
                .iter()
                .filter_map(|e| e.device.clone())
                .collect()
        }

        /// Fills in entries without a device from `existing` by (GPU, placement); true if
        /// any was. Only unreleased records adopt: a released job owns nothing.
        pub(super) fn adopt(&mut self, existing: &[MigDevice]) -> bool {
            if self.released {
                return false;
            }
            let mut changed = false;
            for entry in self.entries.iter_mut().filter(|e| e.device.is_none()) {
                let found = existing.iter().find(|d| {
                    d.gpu_uuid == entry.gpu_uuid && d.start == entry.start && d.size == entry.size
                });
                if let Some(d) = found {
                    entry.device = Some(d.clone());
                    changed = true;
                }
            }
            changed
        }
    }
}
