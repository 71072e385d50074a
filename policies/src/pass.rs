//! One scheduling pass: order the pending jobs, then for each one in order check its
//! class's per-user GPU limit and the quotas, place it now if that delays no reservation,
//! else try preemption, else give it a reservation (while reservation slots last) or a
//! pending reason.
//!
//! The order is the caller's (by id) for [`PolicyKind::Fifo`] and
//! [`PolicyKind::Backfill`], and multifactor priority (desc), then submit time, then id for
//! [`PolicyKind::Berth`]. Placement always goes through [`Pipeline::select`] on a working
//! view that every start consumes, so one pass never grants anything twice.
//!
//! Resources only shrink during a pass, so a job shape that failed on a view fails again:
//! failures are cached per (view, shape), and [`View::may_fit`] rejects most jobs of a full
//! cluster in O(1). That keeps a pass over 100k pending jobs cheap.

use crate::backfill::{state_at, Guard, Reservation, Timeline, View};
use crate::pipeline::{Pipeline, Unplaceable};
use crate::preempt::{eligible, order_victims, PreemptCause, Preemption, Search};
use crate::priority::Prioritizer;
use crate::quota::{gpu_types, grants_demand, job_demand, Ledger, QuotaBlock};
use crate::snapshot::{ClusterSnapshot, Decision, PendingJob};
use crate::{PolicyConfig, PolicyKind};
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

/// Why a job still waits (Slurm's pending reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingReason {
    /// It would fit, but a higher-priority job's reservation comes first.
    Priority,
    /// Not enough free resources (or it waits for preempted victims to stop).
    Resources,
    /// A multi-node job whose nodes are free but span more leaf switches than its
    /// `--switches` allows; it waits until its max-wait, then takes what is free.
    Switches,
    /// Its user's running jobs of its class already hold the class's per-user GPU limit
    /// (or this job would pass it).
    UserGpus {
        /// The class (QOS) whose limit is reached.
        qos: String,
        /// The limit, GPUs per user.
        limit: u64,
    },
    /// The cluster's licenses it asks for (`-L`) are held by running jobs.
    Licenses,
    /// A quota of an account on its path holds it back (`resource` is the quota key).
    Quota {
        /// Account whose limit is reached.
        account: String,
        /// Resource key (`gpu`, `gpu:<type>`, `cpu`, `mem_mb`).
        resource: String,
    },
}

impl PendingReason {
    /// Slurm's reason name: `Priority`, `Resources`, `QOSMaxGRESPerUser`, `QOSGrpGRES`,
    /// `QOSGrpCpuLimit`, `QOSGrpMemLimit`, `Licenses`; and berth's `Switches` for a
    /// `--switches` wait.
    pub fn slurm_name(&self) -> &'static str {
        match self {
            PendingReason::Priority => "Priority",
            PendingReason::Resources => "Resources",
            PendingReason::Switches => "Switches",
            PendingReason::UserGpus { .. } => "QOSMaxGRESPerUser",
            PendingReason::Licenses => "Licenses",
            PendingReason::Quota { resource, .. } => match resource.as_str() {
                "cpu" => "QOSGrpCpuLimit",
                "mem_mb" => "QOSGrpMemLimit",
                _ => "QOSGrpGRES",
            },
        }
    }
}

/// A job left pending by the pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStatus {
    /// The job.
    pub job_id: u64,
    /// Why it waits.
    pub reason: PendingReason,
    /// When it is expected to start (reserved jobs only), ms.
    pub expected_start_ms: Option<u64>,
    /// The pipeline's account, when the pipeline ran for this very job (not for shapes
    /// answered from the failure cache). Boxed: most of a large pass's statuses have none,
    /// and the pass writes one status per pending job.
    pub why: Option<Box<Unplaceable>>,
}

/// The result of one scheduling pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// Jobs to start, in the order they were placed.
    pub decisions: Vec<Decision>,
    /// Running jobs to stop, with the job each makes room for.
    pub preemptions: Vec<Preemption>,
    /// Jobs left pending, in pass order.
    pub pending: Vec<PendingStatus>,
}

/// Partition, nodes, GPUs, GPU type, CPUs, memory, MIG profile and slices, the
/// leaf-switch limit in force, and the GPU fraction (milli); the strings as per-pass ids
/// ([`Interner`]), so a shape is hashed as ten words without reading any string twice.
type Shape = (u32, u32, u32, u32, u32, u64, u32, u32, u32, u32, u64);

/// A word-at-a-time hasher (FxHash's mixing) for the per-pass shape caches: keys are
/// short and not attacker-chosen, and SipHash dominated profiles of 100k-job passes.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Fx {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.mix(u64::from_le_bytes(last));
    }
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
}

type FxBuild = std::hash::BuildHasherDefault<Fx>;

/// Per-pass ids of the few distinct strings jobs name (partitions, GPU types, MIG
/// profiles). Most jobs repeat the previous job's string, so the last one is checked
/// before the map: profiles showed hashing and comparing these strings inside the shape
/// map's key as a quarter of a 100k-job pass.
#[derive(Default)]
struct Interner<'a> {
    last: Option<(&'a str, u32)>,
    ids: HashMap<&'a str, u32, FxBuild>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, s: &'a str) -> u32 {
        if let Some((l, id)) = self.last {
            // Equal pointers first: every empty string shares one, so the usual empty GPU
            // type and MIG profile never reach a byte compare.
            if l.len() == s.len() && (l.as_ptr() == s.as_ptr() || l == s) {
                return id;
            }
        }
        let next = self.ids.len() as u32;
        let id = *self.ids.entry(s).or_insert(next);
        self.last = Some((s, id));
        id
    }
}

type ShapeIds = HashMap<Shape, usize, FxBuild>;

/// What the pass learned about one job shape: resources only shrink during a pass, so a
/// failure stays a failure; "fits the working view" holds until the next start.
#[derive(Clone, Copy, Default)]
struct ShapeMemo {
    failed_working: bool,
    failed_guarded: bool,
    /// The start count at which it was last seen fitting the working view, plus one.
    fits_working_at: u64,
    /// Its nodes were free but spanned too many leaf switches (`--switches`), so jobs of
    /// this shape answered from the cache get that reason too.
    short_of_switches: bool,
}

/// The shape of `job`: what placement depends on, so equal shapes place alike.
struct ShapeKeys<'a> {
    partitions: Interner<'a>,
    gpu_types: Interner<'a>,
    mig_profiles: Interner<'a>,
}

impl<'a> ShapeKeys<'a> {
    fn shape(&mut self, job: &'a PendingJob, pipeline: &Pipeline) -> Shape {
        (
            self.partitions.id(&job.partition),
            job.nodes,
            job.gpus_per_node,
            self.gpu_types.id(&job.gpu_type),
            job.cpus_per_node,
            job.mem_per_node_mb,
            self.mig_profiles.id(&job.mig_profile),
            job.mig_per_node,
            pipeline.leaves_max(job).map_or(0, |m| m as u32),
            job.gpu_milli,
            // A job placed by more than its counts (features, node lists…) is its own
            // shape: its failures say nothing about other jobs'.
            if job.is_selective() { job.id } else { 0 },
        )
    }
}

struct Pass<'a> {
    cfg: &'a PolicyConfig,
    snapshot: &'a ClusterSnapshot,
    now_ms: u64,
    pipeline: Pipeline,
    prio: Prioritizer<'a>,
    working: View,
    guard: Option<Guard>,
    timeline: Timeline<'a>,
    reservations: Vec<Reservation>,
    backfill_slots: usize,
    ledger: Option<Ledger>,
    types: HashMap<&'a str, &'a str>,
    memo: Vec<ShapeMemo>,
    starts: u64,
    victims_taken: HashSet<usize>,
    /// Ancestors gained during this pass (a victim's descendants inherit its preemptor's
    /// ancestors), so two preemptions of one pass cannot close a cycle either.
    extra_anc: HashMap<u64, HashSet<u64>>,
    pending: &'a [PendingJob],
    /// Highest class priority whose scan found no candidate victim (see
    /// `preempt_by_priority`); 0 before any.
    no_victims_at_or_below: u32,
    searches: usize,
    /// Partitions whose first waiting job blocks the rest ([`PolicyKind::StrictFifo`]).
    blocked: HashSet<&'a str>,
    /// GPUs held per (class, user) in classes with a per-user limit, running jobs and
    /// this pass's starts; `None` when no class has one.
    user_gpus: Option<HashMap<(&'a str, &'a str), u64>>,
    /// Licenses not held, as this pass's starts leave them.
    licenses_free: std::collections::BTreeMap<String, u32>,
    out: Schedule,
}

/// Runs the pass; see the module docs.
pub fn run(
    snapshot: &ClusterSnapshot,
    pending: &[PendingJob],
    cfg: &PolicyConfig,
    now_ms: u64,
) -> Schedule {
    let berth = cfg.kind == PolicyKind::Berth;
    let backfill_slots = match cfg.kind {
        PolicyKind::Fifo | PolicyKind::StrictFifo => 0,
        PolicyKind::Backfill => cfg.backfill_reservations.max(1),
        PolicyKind::Berth => cfg.backfill_reservations,
    };
    let prio = Prioritizer::new(snapshot, cfg, now_ms);
    let pipeline = Pipeline::at(cfg, now_ms).with_workloads(crate::workload::partition_workloads(
        snapshot, pending, cfg, now_ms,
    ));
    let (order, shapes) = order(pending, &prio, &pipeline, berth);
    let user_gpus = if berth {
        user_gpus(snapshot, &prio)
    } else {
        None
    };
    let quotas = berth && cfg.accounts.accounts().iter().any(|a| !a.quotas.is_empty());
    // Placement reads nodes and topology only: the running jobs and usage stay behind.
    let working = View::new(ClusterSnapshot {
        nodes: snapshot.nodes.clone(),
        topology: snapshot.topology.clone(),
        ..ClusterSnapshot::default()
    });
    let mut pass = Pass {
        cfg,
        snapshot,
        now_ms,
        pipeline,
        prio,
        guard: (backfill_slots > 0 || berth).then(|| Guard::new(&working)),
        working,
        timeline: Timeline::from_ends(
            snapshot
                .running
                .iter()
                .map(|r| (r.end_ms, r.grants.as_slice())),
        ),
        reservations: Vec::new(),
        backfill_slots,
        ledger: quotas.then(|| Ledger::of_running(&cfg.accounts, snapshot)),
        types: if quotas {
            gpu_types(snapshot)
        } else {
            HashMap::new()
        },
        memo: vec![ShapeMemo::default(); shapes],
        starts: 0,
        victims_taken: HashSet::new(),
        extra_anc: HashMap::new(),
        pending,
        no_victims_at_or_below: 0,
        searches: 0,
        blocked: HashSet::new(),
        user_gpus,
        licenses_free: snapshot.licenses_free.clone(),
        out: Schedule::default(),
    };
    for k in order {
        pass.consider(&pending[k.index as usize], k.shape as usize);
    }
    pass.out
}

/// GPUs held by running jobs per (class, user), over the classes with a per-user limit;
/// `None` when no class has one (the pass then skips the check).
fn user_gpus<'a>(
    snapshot: &'a ClusterSnapshot,
    prio: &Prioritizer<'a>,
) -> Option<HashMap<(&'a str, &'a str), u64>> {
    if !prio.any_user_limit() {
        return None;
    }
    let mut held = HashMap::new();
    for r in &snapshot.running {
        if let Some(c) = prio.class(&r.qos).filter(|c| c.max_gpus_per_user.is_some()) {
            *held.entry((c.name.as_str(), r.user.as_str())).or_default() += r.gres_gpus();
        }
    }
    Some(held)
}

/// A pending job's place in the pass: sort key first (priority desc, submit time, id; the
/// position last keeps equal keys in input order, as a stable sort would), then its shape.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct OrderKey {
    /// Higher partition priority tiers first (Slurm's `PriorityTier`).
    tier: Reverse<u32>,
    priority: Reverse<u64>,
    submit_ms: u64,
    id: u64,
    index: u32,
    shape: u32,
}

/// The pass order (multifactor priority for Berth, the caller's otherwise) and each job's
/// shape id, with the number of shapes. One sequential walk reads every job's strings
/// (the shape) and factors; the pass itself then reads a job only to place it, and the
/// sort compares plain keys, never the jobs.
fn order(
    pending: &[PendingJob],
    prio: &Prioritizer,
    pipeline: &Pipeline,
    berth: bool,
) -> (Vec<OrderKey>, usize) {
    let mut keys = ShapeKeys {
        partitions: Interner::default(),
        gpu_types: Interner::default(),
        mig_profiles: Interner::default(),
    };
    let mut ids = ShapeIds::default();
    let mut order: Vec<OrderKey> = pending
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let next = ids.len();
            let shape = *ids.entry(keys.shape(j, pipeline)).or_insert(next);
            let priority = if berth {
                nice(prio.factors(j).priority, j.nice)
            } else {
                0
            };
            OrderKey {
                tier: Reverse(j.priority_tier),
                priority: Reverse(priority),
                submit_ms: j.submit_ms,
                id: j.id,
                index: u32::try_from(i).expect("fewer than 2^32 pending jobs"),
                shape: shape as u32,
            }
        })
        .collect();
    if berth {
        order.sort_unstable();
    }
    (order, ids.len())
}

/// `priority` lowered by `--nice` (raised by a negative nice), never below 0.
fn nice(priority: u64, nice: i32) -> u64 {
    if nice >= 0 {
        priority.saturating_sub(nice.unsigned_abs().into())
    } else {
        priority.saturating_add(nice.unsigned_abs().into())
    }
}

impl<'a> Pass<'a> {
    fn consider(&mut self, job: &'a PendingJob, sid: usize) {
        if self.blocked.contains(job.partition.as_str()) {
            return self.out.pending.push(PendingStatus {
                job_id: job.id,
                reason: PendingReason::Priority,
                expected_start_ms: None,
                why: None,
            });
        }
        if !self.licenses_left(job) {
            return self.out.pending.push(PendingStatus {
                job_id: job.id,
                reason: PendingReason::Licenses,
                expected_start_ms: None,
                why: None,
            });
        }
        let user_limit = self.user_limit(job);
        if let Some((qos, limit, held)) = user_limit {
            if held + job.gres_gpus() > limit {
                return self.out.pending.push(PendingStatus {
                    job_id: job.id,
                    reason: PendingReason::UserGpus {
                        qos: qos.to_string(),
                        limit,
                    },
                    expected_start_ms: None,
                    why: None,
                });
            }
        }
        let leaf = self
            .ledger
            .as_ref()
            .and_then(|_| self.cfg.accounts.index(&job.account));
        if let (Some(ledger), Some(leaf)) = (&self.ledger, leaf) {
            if let Err(block) = ledger.check(&self.cfg.accounts, leaf, &job_demand(job)) {
                return self.quota_blocked(job, leaf, block);
            }
        }
        let end_ms = match job.time_limit_s {
            0 => u64::MAX,
            s => self.now_ms.saturating_add(s.saturating_mul(1000)),
        };
        let long = self
            .guard
            .as_ref()
            .is_some_and(|g| g.active() && end_ms > g.first_start_ms);
        let mut why = None;
        let placed = match self.try_place(job, long, sid) {
            Ok(d) => Some(d),
            Err(w) => {
                why = w;
                None
            }
        };
        if let Some(d) = placed {
            if let (Some(ledger), Some(leaf)) = (&mut self.ledger, leaf) {
                // Typed GPU quotas are known only once the GPUs are chosen.
                let held = grants_demand(&d.nodes, &self.types);
                if let Err(block) = ledger.check(&self.cfg.accounts, leaf, &held) {
                    return self.quota_blocked(job, leaf, block);
                }
                ledger.add(&self.cfg.accounts, leaf, &held);
            }
            if let (Some((qos, _, _)), Some(m)) = (user_limit, &mut self.user_gpus) {
                *m.entry((qos, job.user.as_str())).or_default() += job.gres_gpus();
            }
            for (name, count) in &job.licenses {
                if let Some(free) = self.licenses_free.get_mut(name) {
                    *free = free.saturating_sub(*count);
                }
            }
            return self.start(d, end_ms, long);
        }
        if self.cfg.kind == PolicyKind::Berth && self.preempt_by_priority(job) {
            return self.out.pending.push(PendingStatus {
                job_id: job.id,
                reason: PendingReason::Resources,
                expected_start_ms: Some(self.now_ms + self.cfg.preempt_grace_ms),
                why,
            });
        }
        if self.cfg.kind == PolicyKind::StrictFifo {
            self.blocked.insert(job.partition.as_str());
        }
        self.wait(job, long, why, sid);
    }

    /// Whether every license `job` asks for has enough left (a license the cluster does
    /// not have never does: the submit check refuses such jobs).
    fn licenses_left(&self, job: &PendingJob) -> bool {
        job.licenses
            .iter()
            .all(|(name, count)| self.licenses_free.get(name).is_some_and(|f| f >= count))
    }

    /// The per-user GPU limit of `job`'s class, if any and if `job` asks for GPUs: the
    /// class name, the limit, and what the job's user holds in that class now.
    fn user_limit(&self, job: &'a PendingJob) -> Option<(&'a str, u64, u64)> {
        let held = self.user_gpus.as_ref()?;
        if job.gres_gpus() == 0 {
            return None; // a GPU limit does not hold back a job without GPUs (as Slurm)
        }
        let class = self.prio.class(&job.qos)?;
        let limit = class.max_gpus_per_user?;
        let name = class.name.as_str();
        let used = held.get(&(name, job.user.as_str())).copied().unwrap_or(0);
        Some((name, limit, used))
    }

    /// Places `job` (shape `sid`) on the guarded view (`long`) or the working one.
    fn try_place(
        &mut self,
        job: &'a PendingJob,
        long: bool,
        sid: usize,
    ) -> Result<Decision, Option<Box<Unplaceable>>> {
        let memo = &mut self.memo[sid];
        let failed = if long {
            &mut memo.failed_guarded
        } else {
            &mut memo.failed_working
        };
        if *failed {
            return Err(None);
        }
        let view = match (&self.guard, long) {
            (Some(g), true) => &g.view,
            _ => &self.working,
        };
        if !view.may_fit(job) {
            *failed = true;
            return Err(None);
        }
        view.select(&self.pipeline, job).map_err(|why| {
            *failed = true;
            memo.short_of_switches |= why.metrics.switches_short.is_some();
            Some(Box::new(why))
        })
    }

    fn start(&mut self, d: Decision, end_ms: u64, long: bool) {
        // Decisions come from this working view (or the guarded one, a subset of it), so
        // every member fits; take_whole makes "whole or nothing" hold even if not.
        if let Err(e) = crate::gang::take_whole(&mut self.working, &d) {
            panic!(
                "pass placed job {} on resources it does not have: {e}",
                d.job_id
            );
        }
        self.starts += 1;
        if let Some(g) = &mut self.guard {
            if long {
                g.charge_long(&d.nodes, &self.working);
            } else {
                g.sync(&d.nodes, &self.working);
            }
        }
        self.timeline.push(end_ms, d.nodes.clone());
        self.out.decisions.push(d);
    }

    /// No start now: a reservation if a slot is left, else Priority (it would fit but for
    /// reservations) or Resources.
    fn wait(&mut self, job: &'a PendingJob, long: bool, why: Option<Box<Unplaceable>>, sid: usize) {
        let switches = match &why {
            Some(w) => w.metrics.switches_short.is_some(),
            None => self.memo[sid].short_of_switches,
        };
        let mut status = PendingStatus {
            job_id: job.id,
            reason: if switches {
                PendingReason::Switches
            } else {
                PendingReason::Resources
            },
            expected_start_ms: None,
            why,
        };
        if self.reservations.len() < self.backfill_slots {
            if let Some(r) = self.timeline.reserve(
                &self.pipeline,
                &self.working,
                &self.reservations,
                job,
                self.now_ms,
            ) {
                let at = state_at(
                    &mut self.timeline,
                    &self.working,
                    &self.reservations,
                    r.start_ms,
                );
                if let Some(g) = &mut self.guard {
                    g.add(&r, &self.working, &at);
                }
                status.expected_start_ms = Some(r.start_ms);
                self.reservations.push(r);
                self.out.pending.push(status);
                return;
            }
        }
        // Only the reason depends on this, so a shape that fits now is remembered until
        // the next start changes the working view.
        if long {
            let seen = self.memo[sid].fits_working_at == self.starts + 1;
            if seen || self.try_place(job, false, sid).is_ok() {
                self.memo[sid].fits_working_at = self.starts + 1;
                status.reason = PendingReason::Priority;
            }
        }
        self.out.pending.push(status);
    }

    fn quota_blocked(&mut self, job: &'a PendingJob, leaf: usize, block: QuotaBlock) {
        let reclaiming = block.reclaimable && self.reclaim(job, leaf, &block);
        self.out.pending.push(PendingStatus {
            job_id: job.id,
            reason: PendingReason::Quota {
                account: self.cfg.accounts.accounts()[block.account].name.clone(),
                resource: block.resource,
            },
            expected_start_ms: reclaiming.then_some(self.now_ms + self.cfg.preempt_grace_ms),
            why: None,
        });
    }

    /// Preempts borrowers' jobs so that `job`'s account gets its guarantee back.
    /// True when victims were chosen (or are already going).
    fn reclaim(&mut self, job: &'a PendingJob, leaf: usize, block: &QuotaBlock) -> bool {
        if !self.cfg.preemption || self.searches >= self.cfg.preempt_searches_max {
            return false;
        }
        let tree = &self.cfg.accounts;
        let Some(ledger) = &self.ledger else {
            return false;
        };
        let parent = tree.accounts()[block.account].parent.unwrap_or(0);
        // Borrowing siblings of the blocked level, on the blocked resource.
        let borrowers: Vec<usize> = tree.accounts()[parent]
            .children
            .iter()
            .copied()
            .filter(|&c| c != block.account && ledger.borrowing(tree, c, &block.resource))
            .collect();
        let snapshot = self.snapshot;
        let mut cands: Vec<usize> = (0..snapshot.running.len())
            .filter(|i| !self.victims_taken.contains(i))
            .filter(|&i| {
                let r = &snapshot.running[i];
                borrowers
                    .iter()
                    .any(|&b| crate::quota::charged_under(tree, r, b))
                    && eligible(r, self.prio.class(&r.qos), job, self.now_ms)
                    && !self.descends_from(job.id, r.id)
            })
            .collect();
        self.search(job, &mut cands, Some(leaf), PreemptCause::Reclaim)
    }

    /// Preempts lower, preemptible classes for `job`. True when `job` now waits on victims.
    fn preempt_by_priority(&mut self, job: &'a PendingJob) -> bool {
        if !self.cfg.preemption || self.searches >= self.cfg.preempt_searches_max {
            return false;
        }
        let Some(class) = self.prio.class(&job.qos) else {
            return false;
        };
        // A class at or below one whose scan found no candidate victim cannot find one
        // either in this pass (victims only get fewer): skip the scan of running jobs.
        if class.priority <= self.no_victims_at_or_below && job.preempted_for.is_empty() {
            return false;
        }
        let snapshot = self.snapshot;
        let mut cands: Vec<usize> = (0..snapshot.running.len())
            .filter(|i| !self.victims_taken.contains(i))
            .filter(|&i| {
                let r = &snapshot.running[i];
                let vc = self.prio.class(&r.qos);
                vc.is_some_and(|c| c.priority < class.priority)
                    && eligible(r, vc, job, self.now_ms)
                    && !self.descends_from(job.id, r.id)
            })
            .collect();
        if cands.is_empty() && job.preempted_for.is_empty() {
            self.no_victims_at_or_below = self.no_victims_at_or_below.max(class.priority);
        }
        if cands.is_empty() {
            return false;
        }
        self.search(job, &mut cands, None, PreemptCause::Priority)
    }

    /// Whether `victim` became an ancestor of `job` earlier in this pass.
    fn descends_from(&self, job: u64, victim: u64) -> bool {
        self.extra_anc
            .get(&job)
            .is_some_and(|a| a.contains(&victim))
    }

    /// Records `preemptor` → `victim`: pending descendants of the victim inherit the
    /// preemptor and its ancestors.
    fn note_edge(&mut self, preemptor: &PendingJob, victim: u64) {
        let mut add: HashSet<u64> = preemptor.preempted_for.iter().copied().collect();
        add.extend(
            self.extra_anc
                .get(&preemptor.id)
                .into_iter()
                .flatten()
                .copied(),
        );
        add.insert(preemptor.id);
        for j in self.pending {
            let below = j.preempted_for.contains(&victim) || self.descends_from(j.id, victim);
            if below && j.id != victim {
                self.extra_anc
                    .entry(j.id)
                    .or_default()
                    .extend(add.iter().copied());
            }
        }
    }

    /// Looks for victims among `cands`; on success records the preemptions and holds the
    /// resources `job` will get (a reservation starting after the grace period).
    fn search(
        &mut self,
        job: &'a PendingJob,
        cands: &mut Vec<usize>,
        leaf: Option<usize>,
        cause: PreemptCause,
    ) -> bool {
        self.searches += 1;
        let running = &self.snapshot.running;
        order_victims(running, cands, |r| {
            self.prio.class(&r.qos).map_or(0, |c| c.priority)
        });
        cands.truncate(self.cfg.preempt_candidates_max);
        let demand = job_demand(job);
        let search = Search {
            pipeline: &self.pipeline,
            working: &self.working,
            running,
            candidates: cands.clone(),
            quota: match (&self.ledger, leaf) {
                (Some(l), Some(leaf)) => Some((&self.cfg.accounts, l, leaf, &demand, &self.types)),
                _ => None,
            },
        };
        let Some(victims) = search.victims(job) else {
            return false;
        };
        let mut hyp = self.working.clone();
        for (i, r) in running.iter().enumerate() {
            if r.preempting || victims.contains(&i) {
                hyp.give(&r.grants);
            }
        }
        for &v in &victims {
            self.note_edge(job, running[v].id);
            self.victims_taken.insert(v);
            self.out.preemptions.push(Preemption {
                victim: running[v].id,
                preemptor: job.id,
                cause,
            });
        }
        // Hold what the job will get, so no later job of this pass takes it for longer
        // than the grace period.
        if let (Some(g), Ok(decision)) = (&mut self.guard, self.pipeline.select(&hyp.snap, job)) {
            let r = Reservation {
                job_id: job.id,
                start_ms: self.now_ms + self.cfg.preempt_grace_ms,
                decision,
            };
            g.add(&r, &self.working, &hyp);
            self.reservations.push(r);
            self.backfill_slots += 1; // a preemptor's hold is not a backfill slot
        }
        true
    }
}
