//! GPU use of the agent's jobs: metered while they run and once at their end, and read
//! from the job directories for `/metrics`, which runs outside the agent loop.

use super::*;

impl Supervisor {
    /// Brings job `id`'s usage meter (see [`crate::usage`]) up to `now_ms` with `samples`,
    /// its GPUs shared `replicas` ways, and keeps it in the job directory. A finished job
    /// has its last interval counted up to when its exit was recorded, once. `None` for an
    /// unknown job or one without GPUs on `node`.
    pub(super) fn meter(
        &self,
        id: u64,
        node: &str,
        replicas: u32,
        samples: &[crate::gpu::GpuSample],
        now_ms: u64,
    ) -> Option<pb::JobUsage> {
        use crate::usage::{holdings, Meter, FILE};
        let job = self.load(id)?;
        let held = holdings(&job, node, replicas);
        if held.is_empty() {
            return None;
        }
        let mut m: Meter = self.read(id, FILE).unwrap_or_else(|| {
            Meter::starting(self.read::<u64>(id, "started_ms").unwrap_or(now_ms))
        });
        if !m.done {
            let ended_ms = fs::metadata(self.job_dir(id).join("exit.json"))
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
            m.advance(ended_ms.unwrap_or(now_ms).min(now_ms), &held, samples);
            m.done = ended_ms.is_some();
            write_json(&self.job_dir(id), FILE, &m);
        }
        Some(m.report(id))
    }

    /// Measured GPU use of every running job with GPUs here, for the heartbeat.
    pub fn running_usage(&self, node: &str, replicas: u32) -> Vec<pb::JobUsage> {
        let samples = self.gpus.samples();
        let now = now_ms();
        self.job_ids()
            .into_iter()
            .filter(|id| !self.job_dir(*id).join("exit.json").exists())
            .filter_map(|id| self.meter(id, node, replicas, &samples, now))
            .collect()
    }

    /// The final measured GPU use of finished job `id`, sent just before its end.
    pub fn final_usage(&self, id: u64, node: &str, replicas: u32) -> Option<pb::JobUsage> {
        self.meter(id, node, replicas, &self.gpus.samples(), now_ms())
    }
}

/// GPU UUID → id of the running job holding it, read from the job directories under
/// `state_dir` (whole GPUs and the parents of MIG slices). For `/metrics`, which runs
/// outside the agent loop and only reads.
pub fn gpu_owners(state_dir: &Path) -> BTreeMap<String, u64> {
    let dir = state_dir.join("jobs");
    let mut owners = BTreeMap::new();
    let entries = fs::read_dir(&dir).into_iter().flatten().flatten();
    for id in entries.filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok()) {
        let job_dir = dir.join(id.to_string());
        if job_dir.join("exit.json").exists() {
            continue;
        }
        let Some(job) = fs::read(job_dir.join("job.pb"))
            .ok()
            .and_then(|b| pb::Job::decode(&b[..]).ok())
        else {
            continue;
        };
        for a in &job.allocations {
            let mig = a.mig_slices.iter().map(|s| &s.gpu_uuid);
            for uuid in a.gpu_uuids.iter().chain(mig) {
                owners.insert(uuid.clone(), id);
            }
        }
    }
    owners
}

/// Every running job under `state_dir` with its last measured usage (see
/// [`crate::usage`]; updated at each heartbeat), for `/metrics`. Jobs not measured yet
/// (no GPUs, or before their first heartbeat) are left out.
pub fn measured_jobs(state_dir: &Path) -> Vec<(pb::Job, crate::usage::Meter)> {
    let dir = state_dir.join("jobs");
    let entries = fs::read_dir(&dir).into_iter().flatten().flatten();
    let mut out: Vec<(pb::Job, crate::usage::Meter)> = entries
        .filter_map(|e| {
            let job_dir = e.path();
            if job_dir.join("exit.json").exists() {
                return None;
            }
            let job = pb::Job::decode(&fs::read(job_dir.join("job.pb")).ok()?[..]).ok()?;
            let text = fs::read(job_dir.join(crate::usage::FILE)).ok()?;
            Some((job, serde_json::from_slice(&text).ok()?))
        })
        .collect();
    out.sort_by_key(|(j, _)| j.id);
    out
}
