//! Preemption: which running jobs to stop so that a blocked job can start.
//!
//! Two causes:
//! - **priority**: the blocked job's class has a higher priority than the victim's, and the
//!   victim's class is preemptible;
//! - **reclaim**: the blocked job's account is within its guaranteed quota and siblings
//!   borrow it ([`crate::quota`]); victims are the borrowers' jobs, whatever their class
//!   priority, but still only preemptible classes.
//!
//! In both, a victim must have run its class's min-guaranteed runtime, must not be being
//! preempted already, and must not be a job the preemptor was itself preempted for (nor any
//! job up that chain: [`crate::PendingJob::preempted_for`]), so preemption never loops.
//! Victims are taken lowest class priority first, then the most recently started (least
//! work lost), then highest id; taken greedily until the job fits, then every victim that
//! is not needed after all is given back (in reverse order), so no job is stopped for
//! nothing.

use crate::backfill::View;
use crate::fairshare::AccountTree;
use crate::pipeline::Pipeline;
use crate::priority::QosClass;
use crate::quota::{Demand, Ledger};
use crate::snapshot::{PendingJob, RunningJob};
use std::collections::HashMap;

/// Why a victim was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreemptCause {
    /// The preemptor's class outranks the victim's.
    Priority,
    /// The preemptor's account reclaims its guaranteed quota from a borrower.
    Reclaim,
}

/// Stop `victim` (and requeue it, per its job's setting) so that `preemptor` can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    /// The job to stop.
    pub victim: u64,
    /// The job it makes room for.
    pub preemptor: u64,
    /// Why.
    pub cause: PreemptCause,
}

/// Whether `victim` may be stopped for `job` at all (class preemptible, min runtime
/// served, not already going, not up the preemptor's own preemption chain).
pub fn eligible(
    victim: &RunningJob,
    class: Option<&QosClass>,
    job: &PendingJob,
    now_ms: u64,
) -> bool {
    let Some(class) = class else { return false };
    class.preemptible
        && !victim.preempting
        && !victim.pinned
        && victim.start_ms.saturating_add(class.min_runtime_s * 1000) <= now_ms
        && !job.preempted_for.contains(&victim.id)
}

/// Quota context of a reclaim: the tree, the ledger, the job's leaf and demand, and GPU
/// types by uuid.
pub type QuotaCheck<'a> = (
    &'a AccountTree,
    &'a Ledger,
    usize,
    &'a Demand,
    &'a HashMap<&'a str, &'a str>,
);

/// Inputs of one victim search.
pub struct Search<'a> {
    /// The placement pipeline.
    pub pipeline: &'a Pipeline,
    /// Free resources now.
    pub working: &'a View,
    /// Every running job.
    pub running: &'a [RunningJob],
    /// Candidate victims (indexes into `running`), best victim first.
    pub candidates: Vec<usize>,
    /// With quotas: the ledger, the job's leaf and demand must pass once victims are gone.
    pub quota: Option<QuotaCheck<'a>>,
}

impl Search<'_> {
    /// Victims (indexes into `running`) that make `job` fit, or `None` if even all
    /// candidates would not. Jobs already being preempted count as gone.
    pub fn victims(&self, job: &PendingJob) -> Option<Vec<usize>> {
        let mut chosen: Vec<usize> = Vec::new();
        if self.fits(job, &chosen) {
            return Some(chosen); // waiting for victims already going is enough
        }
        for &c in &self.candidates {
            chosen.push(c);
            if self.fits(job, &chosen) {
                // Give back any victim not needed (newest choice kept, older ones tried).
                let mut i = chosen.len() - 1;
                while i > 0 {
                    i -= 1;
                    let v = chosen.remove(i);
                    if !self.fits(job, &chosen) {
                        chosen.insert(i, v);
                    }
                }
                return Some(chosen);
            }
        }
        None
    }

    fn fits(&self, job: &PendingJob, victims: &[usize]) -> bool {
        let going = self
            .running
            .iter()
            .enumerate()
            .filter(|(i, r)| r.preempting || victims.contains(i));
        if let Some((tree, ledger, leaf, demand, types)) = &self.quota {
            let mut l = (*ledger).clone();
            for (_, r) in going.clone() {
                if let Some(vleaf) = tree.index(&r.account) {
                    l.remove(tree, vleaf, &crate::quota::grants_demand(&r.grants, types));
                }
            }
            if l.check(tree, *leaf, demand).is_err() {
                return false;
            }
        }
        let mut v = self.working.clone();
        for (_, r) in going {
            v.give(&r.grants);
        }
        v.may_fit(job) && v.select(self.pipeline, job).is_ok()
    }
}

/// Orders candidate victims: lowest class priority, then latest start, then highest id.
pub fn order_victims(running: &[RunningJob], idx: &mut [usize], prio: impl Fn(&RunningJob) -> u32) {
    idx.sort_by(|&a, &b| {
        let (ra, rb) = (&running[a], &running[b]);
        prio(ra)
            .cmp(&prio(rb))
            .then(rb.start_ms.cmp(&ra.start_ms))
            .then(rb.id.cmp(&ra.id))
    });
}
