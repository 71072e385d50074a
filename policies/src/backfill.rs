//! EASY backfill: the highest-priority blocked jobs get reservations (a start time and
//! the exact resources they will get then); lower jobs start now only if they cannot delay
//! any reservation.
//!
//! A reservation for job `B` is found on a timeline of the running jobs' expected ends
//! (start + time limit): free now, plus everything released up to time `t`, minus the
//! resources of earlier reservations. Resources only grow along the timeline, so the
//! earliest `t` at which the pipeline places `B` is found by binary search. A job with no
//! time limit never ends on the timeline; a job blocked behind only such jobs gets no
//! reservation (its expected start is unknown), as in Slurm with `UNLIMITED` limits.
//!
//! A candidate that would still run at the start of some reservation (its own end is later)
//! is placed on the *guarded* view: the reserved GPUs are taken, and on reserved nodes only
//! the CPUs and memory the reservation leaves spare (`slack`) are offered. A candidate that
//! ends before every reservation starts uses the plain working view. Either way the
//! reserved job still fits at its start: the property test checks exactly that.

use crate::pipeline::Pipeline;
use crate::snapshot::{ClusterSnapshot, Decision, NodeGrant, PendingJob};
use crate::topology::NodePlace;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A blocked job's promised start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The job.
    pub job_id: u64,
    /// When it is expected to start, ms.
    pub start_ms: u64,
    /// The resources it will get then.
    pub decision: Decision,
}

/// A snapshot plus incremental indexes of free capacity, kept up to date by every
/// [`View::take`] and [`View::give`]:
/// - per partition, a count of up nodes by free GPUs, so a job needing `n` nodes with `g`
///   GPUs each is rejected in O(1) when fewer than `n` nodes have `g` free (the common case
///   with 100k pending jobs on a busy cluster);
/// - per partition, the up nodes bucketed by their number of free GPUs, so placement walks
///   only nodes with enough free GPUs, tightest first (best fit), never the whole cluster.
#[derive(Debug, Clone)]
pub struct View {
    /// The resources as this view offers them.
    pub snap: ClusterSnapshot,
    pos: HashMap<String, usize>,
    /// partition → `nodes_with_at_least[g]` for g in 0..=max GPUs per node.
    fit: HashMap<String, Vec<u32>>,
    /// partition → `nodes_with_exactly[g]`: positions of up nodes with `g` free GPUs.
    buckets: HashMap<String, Vec<BTreeSet<usize>>>,
    /// Free GPUs per node (0 for down nodes), by position.
    free: Vec<u32>,
    /// Each node's place in the topology, by position (looked up by name once per view).
    places: Arc<[Option<Arc<NodePlace>>]>,
}

impl View {
    /// Indexes `snap`.
    pub fn new(snap: ClusterSnapshot) -> View {
        let pos = snap
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let free = vec![0; snap.nodes.len()];
        let places = snap
            .nodes
            .iter()
            .map(|n| snap.topology.place_arc(&n.name))
            .collect();
        let mut v = View {
            snap,
            pos,
            fit: HashMap::new(),
            buckets: HashMap::new(),
            free,
            places,
        };
        for i in 0..v.snap.nodes.len() {
            v.count(i, 1);
        }
        v
    }

    fn count(&mut self, i: usize, sign: i32) {
        let n = &self.snap.nodes[i];
        if !n.up {
            return;
        }
        let free = n.gpus.iter().filter(|g| g.free).count();
        let gpus = n.gpus.len();
        self.free[i] = if sign > 0 { free as u32 } else { 0 };
        // A node in several partitions (overlapping partitions) counts in each.
        let partitions = n.partition.clone();
        for partition in partitions
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            self.count_in(partition, i, free, gpus, sign);
        }
    }

    fn count_in(&mut self, partition: &str, i: usize, free: usize, gpus: usize, sign: i32) {
        if !self.fit.contains_key(partition) {
            self.fit.insert(partition.to_string(), Vec::new());
            self.buckets.insert(partition.to_string(), Vec::new());
        }
        let counts = self.fit.get_mut(partition).expect("inserted above");
        if counts.len() < gpus + 1 {
            counts.resize(gpus + 1, 0);
        }
        for c in counts.iter_mut().take(free + 1) {
            *c = c.wrapping_add_signed(sign);
        }
        let buckets = self.buckets.get_mut(partition).expect("inserted above");
        if buckets.len() < gpus + 1 {
            buckets.resize(gpus + 1, BTreeSet::new());
        }
        if sign > 0 {
            buckets[free].insert(i);
        } else {
            buckets[free].remove(&i);
        }
    }

    /// False when no `job.nodes` nodes of its partition have `job.gpus_per_node` free GPUs
    /// (a necessary condition only: type, CPUs and memory are the pipeline's business). A
    /// fraction job may fit a GPU that offers no plain share, so only up nodes count for it.
    pub fn may_fit(&self, job: &PendingJob) -> bool {
        let g = if job.gpu_milli > 0 {
            0
        } else {
            job.gpus_per_node as usize
        };
        self.fit
            .get(&job.partition)
            .is_some_and(|c| c.get(g).is_some_and(|&n| n >= job.nodes.max(1)))
    }

    /// Places `job` through `pipeline`, looking only at the up nodes of its partition with
    /// enough free GPUs, those with the fewest free first (the others would fail a filter,
    /// and best fit prefers the tightest) — or the most free first when the partition
    /// spreads: a placement costs the nodes it looks at, not the cluster. A fraction job
    /// looks at every up node (its share may be on a GPU with no plain share left).
    ///
    /// # Errors
    /// The pipeline's [`crate::Unplaceable`], computed over the candidate nodes only.
    pub fn select(
        &self,
        pipeline: &Pipeline,
        job: &PendingJob,
    ) -> Result<Decision, crate::Unplaceable> {
        let g = if job.gpu_milli > 0 {
            0
        } else {
            job.gpus_per_node as usize
        };
        let buckets = self
            .buckets
            .get(&job.partition)
            .map(|b| b.as_slice())
            .unwrap_or(&[]);
        let place = |&i: &usize| (&self.snap.nodes[i], self.places[i].as_deref());
        let enough = buckets.iter().skip(g);
        if pipeline.packing(&job.partition) == crate::packing::Packing::Spread {
            let nodes = enough.rev().flat_map(|b| b.iter().rev()).map(place);
            pipeline.select_among(&self.snap.topology, nodes, job)
        } else {
            let nodes = enough.flatten().map(place);
            pipeline.select_among(&self.snap.topology, nodes, job)
        }
    }

    /// Position of node `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.pos.get(name).copied()
    }

    /// Takes `grants` (GPUs, CPUs, memory); GPUs already taken stay taken (a guarded view
    /// may see a short job take a GPU it already hides).
    pub fn take(&mut self, grants: &[NodeGrant]) {
        for g in grants {
            let Some(i) = self.position(&g.node) else {
                continue;
            };
            self.count(i, -1);
            let n = &mut self.snap.nodes[i];
            n.cpus_free = n.cpus_free.saturating_sub(g.cpus);
            n.memory_free_mb = n.memory_free_mb.saturating_sub(g.mem_mb);
            set_gpus(n, g, false);
            crate::mig::take_lenient(n, &g.mig_slices);
            self.count(i, 1);
        }
    }

    /// Gives `grants` back.
    pub fn give(&mut self, grants: &[NodeGrant]) {
        for g in grants {
            let Some(i) = self.position(&g.node) else {
                continue;
            };
            self.count(i, -1);
            // In place: ClusterSnapshot::release finds nodes by name, too slow here.
            let n = &mut self.snap.nodes[i];
            n.cpus_free = (n.cpus_free + g.cpus).min(n.cpus_total);
            n.memory_free_mb = (n.memory_free_mb + g.mem_mb).min(n.memory_total_mb);
            set_gpus(n, g, true);
            crate::mig::give(n, &g.mig_slices);
            self.count(i, 1);
        }
    }
}

/// Marks the GPUs of grant `g` free or held on `n`: by NVML index when the node lists
/// its GPUs at their index (the usual case, one string compare), else by uuid.
fn set_gpus(n: &mut crate::NodeView, g: &NodeGrant, free: bool) {
    for (k, uuid) in g.gpu_uuids.iter().enumerate() {
        let at = g.gpu_indices.get(k).map(|&i| i as usize);
        match at
            .and_then(|i| n.gpus.get_mut(i))
            .filter(|x| &x.uuid == uuid)
        {
            Some(gpu) => set_gpu(gpu, g.gpu_milli, free),
            None => {
                if let Some(gpu) = n.gpus.iter_mut().find(|x| &x.uuid == uuid) {
                    set_gpu(gpu, g.gpu_milli, free);
                }
            }
        }
    }
}

/// Holds or gives back one GPU of a grant: a whole GPU, or a share of a time-sliced one.
fn set_gpu(gpu: &mut crate::GpuView, gpu_milli: u32, free: bool) {
    if free {
        gpu.unhold(gpu_milli);
    } else {
        gpu.hold(gpu_milli);
    }
}

/// The running (and just started) jobs' grants in order of expected end. Running jobs'
/// grants are borrowed from the snapshot (a pass over a busy cluster would otherwise copy
/// thousands of grants it mostly never reads); jobs started in the pass own theirs.
#[derive(Debug, Clone, Default)]
pub struct Timeline<'a> {
    ends: Vec<(u64, Cow<'a, [NodeGrant]>)>,
    /// Entries pushed since the last sort (sorted lazily: a pass pushes every start but
    /// reserves only a few times).
    unsorted: bool,
}

impl<'a> Timeline<'a> {
    /// Adds a job ending at `end_ms` (`u64::MAX`: never) holding `grants`.
    pub fn push(&mut self, end_ms: u64, grants: Vec<NodeGrant>) {
        self.ends.push((end_ms, Cow::Owned(grants)));
        self.unsorted = true;
    }

    /// Sorts by end (stable, so equal ends keep their push order).
    fn sort(&mut self) {
        if self.unsorted {
            self.ends.sort_by_key(|(e, _)| *e);
            self.unsorted = false;
        }
    }

    /// Builds from `(end, grants)` pairs in any order, borrowing the grants.
    pub fn from_ends(ends: impl IntoIterator<Item = (u64, &'a [NodeGrant])>) -> Timeline<'a> {
        let mut ends: Vec<_> = ends
            .into_iter()
            .map(|(e, g)| (e, Cow::Borrowed(g)))
            .collect();
        ends.sort_by_key(|(e, _)| *e);
        Timeline {
            ends,
            unsorted: false,
        }
    }

    /// The earliest time `job` can be placed given `now` (free now) and the `held`
    /// reservations, with the placement then; `None` when it needs jobs that never end.
    pub fn reserve(
        &mut self,
        pipeline: &Pipeline,
        now: &View,
        held: &[Reservation],
        job: &PendingJob,
        now_ms: u64,
    ) -> Option<Reservation> {
        self.sort();
        let finite = self.ends.partition_point(|(e, _)| *e != u64::MAX);
        let at = |k: usize| -> Option<Decision> {
            let mut v = now.clone();
            for (_, grants) in &self.ends[..k] {
                v.give(grants);
            }
            for r in held {
                v.take(&r.decision.nodes);
            }
            if !v.may_fit(job) {
                return None;
            }
            v.select(pipeline, job).ok()
        };
        // Held reservations only take resources away, so the first k at which the job
        // passes the O(1) GPU-count check without them is a lower bound: walk there with
        // one copy, then binary-search the exact k in [bound, finite] (monotone: resources
        // only grow along the timeline). Usually the bound fits and two probes suffice.
        let mut walk = now.clone();
        let mut bound = 0;
        while bound < finite && !walk.may_fit(job) {
            walk.give(&self.ends[bound].1);
            bound += 1;
        }
        drop(walk);
        let (mut lo, mut hi) = (bound, finite);
        if let Some(decision) = at(bound) {
            return Some(self.reservation(job, bound, now_ms, decision));
        }
        at(finite)?;
        while lo < hi {
            let mid = (lo + hi) / 2;
            if at(mid).is_some() {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let decision = at(lo).expect("fits at the bound found");
        Some(self.reservation(job, lo, now_ms, decision))
    }

    /// The reservation of `job` once the first `k` ends have happened.
    fn reservation(
        &self,
        job: &PendingJob,
        k: usize,
        now_ms: u64,
        decision: Decision,
    ) -> Reservation {
        let start_ms = if k == 0 {
            now_ms
        } else {
            self.ends[k - 1].0.max(now_ms)
        };
        Reservation {
            job_id: job.id,
            start_ms,
            decision,
        }
    }
}

/// The guarded view kept beside the working one: reserved GPUs hidden, reserved MIG slices
/// held, reserved nodes' CPUs and memory capped by what the reservations leave spare.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The view long jobs are placed on.
    pub view: View,
    reserved: HashSet<String>,
    /// Reserved MIG slices by GPU uuid: held on the guarded view, so a long job cannot
    /// take a slice a waiting MIG job will get (nor one that overlaps it).
    reserved_slices: HashMap<String, Vec<crate::mig::MigHeld>>,
    slack: HashMap<usize, (u32, u64)>,
    /// Earliest reservation start (jobs ending by then may use the working view).
    pub first_start_ms: u64,
}

impl Guard {
    /// A guard with no reservations over `working`.
    pub fn new(working: &View) -> Guard {
        Guard {
            view: working.clone(),
            reserved: HashSet::new(),
            reserved_slices: HashMap::new(),
            slack: HashMap::new(),
            first_start_ms: u64::MAX,
        }
    }

    /// Adds reservation `r`, computed with `held` earlier ones, against `working` and the
    /// timeline (`at_start`: the state at `r.start_ms`, to size the slack).
    pub fn add(&mut self, r: &Reservation, working: &View, at_start: &View) {
        self.first_start_ms = self.first_start_ms.min(r.start_ms);
        for g in &r.decision.nodes {
            let Some(i) = working.position(&g.node) else {
                continue;
            };
            let n = &at_start.snap.nodes[i];
            let spare = (
                n.cpus_free.saturating_sub(g.cpus),
                n.memory_free_mb.saturating_sub(g.mem_mb),
            );
            let e = self.slack.entry(i).or_insert(spare);
            *e = (e.0.min(spare.0), e.1.min(spare.1));
            self.reserved.extend(g.gpu_uuids.iter().cloned());
            for m in &g.mig_slices {
                self.reserved_slices
                    .entry(m.gpu_uuid.clone())
                    .or_default()
                    .push(crate::mig::MigHeld {
                        profile: m.profile.clone(),
                        start: m.start,
                        size: m.size,
                    });
            }
            self.refresh(i, working);
        }
    }

    /// Re-derives node `i` of the guarded view from the working one.
    pub fn refresh(&mut self, i: usize, working: &View) {
        self.view.count(i, -1);
        let w = &working.snap.nodes[i];
        let n = &mut self.view.snap.nodes[i];
        let (c, m) = self.slack.get(&i).copied().unwrap_or((u32::MAX, u64::MAX));
        n.cpus_free = w.cpus_free.min(c);
        n.memory_free_mb = w.memory_free_mb.min(m);
        for (gv, gw) in n.gpus.iter_mut().zip(&w.gpus) {
            let reserved = self.reserved.contains(&gw.uuid);
            gv.free = gw.free && !reserved;
            // A reserved shared GPU offers no share at all (reservations hold whole GPUs).
            gv.shares = if reserved { None } else { gw.shares };
            // The working view's slices plus the reserved ones. A reserved slice may
            // overlap one still held now (it is free by the reservation's start); both
            // stay listed, which only makes more placements look taken: the planner
            // treats any overlap as taken and counts instances per entry.
            let reserved = self.reserved_slices.get(&gw.uuid);
            let want = gw.mig_held.len() + reserved.map_or(0, Vec::len);
            if gv.mig_held.len() != want || gv.mig_held[..gw.mig_held.len()] != gw.mig_held[..] {
                gv.mig_held.clone_from(&gw.mig_held);
                gv.mig_held.extend(reserved.into_iter().flatten().cloned());
            }
        }
        self.view.count(i, 1);
    }

    /// A job that runs past a reservation start took `grants`: the slack shrinks.
    pub fn charge_long(&mut self, grants: &[NodeGrant], working: &View) {
        for g in grants {
            let Some(i) = working.position(&g.node) else {
                continue;
            };
            if let Some(s) = self.slack.get_mut(&i) {
                s.0 = s.0.saturating_sub(g.cpus);
                s.1 = s.1.saturating_sub(g.mem_mb);
            }
            self.refresh(i, working);
        }
    }

    /// Refreshes the nodes of `grants` after a short job took them in the working view.
    pub fn sync(&mut self, grants: &[NodeGrant], working: &View) {
        for g in grants {
            if let Some(i) = working.position(&g.node) {
                self.refresh(i, working);
            }
        }
    }

    /// Whether any reservation exists.
    pub fn active(&self) -> bool {
        self.first_start_ms != u64::MAX
    }
}

/// State at `start_ms` for sizing slack: `now` plus releases up to `start_ms`, minus `held`.
pub fn state_at(timeline: &mut Timeline, now: &View, held: &[Reservation], start_ms: u64) -> View {
    let mut v = now.clone();
    timeline.sort();
    for (_, grants) in timeline.ends.iter().take_while(|(e, _)| *e <= start_ms) {
        v.give(grants);
    }
    for r in held {
        v.take(&r.decision.nodes);
    }
    v
}
