//! MIG instances kept after their job ended (`berth-agent --mig-keep-layout`), so the next
//! job asking for the same slice (GPU, profile, placement) gets the instance as it is
//! instead of a destroy and a create. Creating GPU instances is the slow part of MIG and
//! churns the CDI spec; a node pool that runs the same shapes all day keeps its layout.
//!
//! Only instances berth made and kept are touched: they are listed in
//! `<state-dir>/mig-kept.json`. A launch whose slice overlaps kept instances on its GPU
//! destroys them first (they are idle by construction: no job owns them). Instances made by
//! anyone else are never reused or destroyed. berthd is not told about kept instances: it
//! plans slices from what jobs hold, and the agent reuses or re-carves at launch.

use crate::gpu::MigDevice;
use berth_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name in the agent's state directory.
pub const FILE: &str = "mig-kept.json";

/// One kept instance and the profile it was made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// Profile name as NVML reports it (`3g.40gb`); placement size alone is ambiguous
    /// (3g.40gb and 4g.40gb both span 4 memory slices).
    pub profile: String,
    /// The instance.
    pub device: MigDevice,
}

/// The kept instances of this node, on disk.
#[derive(Debug)]
pub struct KeptSlices {
    path: PathBuf,
    /// Kept instances, oldest first.
    pub entries: Vec<Kept>,
}

impl KeptSlices {
    /// Loads `state_dir/mig-kept.json` (empty when missing or unreadable: an instance left
    /// out is merely not reused).
    pub fn load(state_dir: &Path) -> KeptSlices {
        let path = state_dir.join(FILE);
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        KeptSlices { path, entries }
    }

    /// Writes the list back (write beside, then rename: never half a file).
    ///
    /// # Errors
    /// The IO error.
    pub fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&self.entries).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Forgets kept instances that no longer exist (destroyed by hand, GPU reset).
    pub fn retain_existing(&mut self, existing: &[MigDevice]) {
        self.entries.retain(|k| existing.contains(&k.device));
    }

    /// Takes the kept instance that is exactly `slice`, if there is one.
    pub fn take_exact(&mut self, slice: &pb::MigSlice) -> Option<MigDevice> {
        let i = self.entries.iter().position(|k| {
            k.profile == slice.profile
                && k.device.gpu_uuid == slice.gpu_uuid
                && k.device.start == slice.placement_start
                && k.device.size == slice.placement_size
        })?;
        Some(self.entries.remove(i).device)
    }

    /// Takes every kept instance on `slice`'s GPU whose memory slices overlap its
    /// placement: they must go before it can be created.
    pub fn take_overlapping(&mut self, slice: &pb::MigSlice) -> Vec<MigDevice> {
        let (start, end) = (
            slice.placement_start,
            slice.placement_start + slice.placement_size,
        );
        let (overlap, keep): (Vec<Kept>, Vec<Kept>) = self.entries.drain(..).partition(|k| {
            k.device.gpu_uuid == slice.gpu_uuid
                && k.device.start < end
                && start < k.device.start + k.device.size
        });
        self.entries = keep;
        overlap.into_iter().map(|k| k.device).collect()
    }

    /// Keeps `device`, made for `profile`.
    pub fn add(&mut self, profile: &str, device: MigDevice) {
        self.entries.push(Kept {
            profile: profile.to_string(),
            device,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(gpu: &str, gi: u32, start: u32, size: u32) -> MigDevice {
        MigDevice {
            gpu_uuid: gpu.into(),
            gi_id: gi,
            ci_id: 0,
            uuid: format!("MIG-{gpu}-{gi}"),
            start,
            size,
        }
    }

    fn slice(gpu: &str, profile: &str, start: u32, size: u32) -> pb::MigSlice {
        pb::MigSlice {
            gpu_uuid: gpu.into(),
            profile: profile.into(),
            placement_start: start,
            placement_size: size,
            ..Default::default()
        }
    }

    #[test]
    fn exact_reuse_overlap_and_persistence() {
        let t = tempfile::tempdir().unwrap();
        let mut k = KeptSlices::load(t.path());
        assert!(k.entries.is_empty(), "no file yet");
        k.add("3g.40gb", device("GPU-a", 1, 0, 4));
        k.add("3g.40gb", device("GPU-a", 2, 4, 4));
        k.add("1g.10gb", device("GPU-b", 3, 6, 1));
        k.save().unwrap();
        let mut k = KeptSlices::load(t.path());
        assert_eq!(k.entries.len(), 3, "read back");
        // Same placement, other profile of the same size: not reused.
        assert_eq!(k.take_exact(&slice("GPU-a", "4g.40gb", 0, 4)), None);
        assert_eq!(
            k.take_exact(&slice("GPU-a", "3g.40gb", 0, 4)),
            Some(device("GPU-a", 1, 0, 4))
        );
        // A 7g over the whole of GPU-a overlaps the other kept half; GPU-b is untouched.
        let gone = k.take_overlapping(&slice("GPU-a", "7g.80gb", 0, 8));
        assert_eq!(gone, vec![device("GPU-a", 2, 4, 4)]);
        assert_eq!(k.take_overlapping(&slice("GPU-b", "1g.10gb", 5, 1)), vec![]);
        assert_eq!(k.entries.len(), 1);
        k.retain_existing(&[]);
        assert!(
            k.entries.is_empty(),
            "destroyed behind berth's back: forgotten"
        );
    }

    #[test]
    fn a_corrupt_file_keeps_nothing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(FILE), "{not json").unwrap();
        assert!(KeptSlices::load(t.path()).entries.is_empty());
    }
}
