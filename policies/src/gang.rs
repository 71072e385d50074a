//! All-or-nothing placement of a multi-node job (a gang): every member's grant is taken
//! from the view, or none is.
//!
//! [`Tentative`] is an undo log (Volcano's `Statement`): [`Tentative::place`] checks one
//! member's grant against the view and takes it, [`Tentative::commit`] keeps them all, and
//! [`Tentative::discard`] — also what dropping an uncommitted one does — gives them back in
//! reverse order. A pass starts every decision through [`take_whole`], so even a decision
//! that no longer fits (a bug upstream) leaves the view exactly as it was instead of
//! holding part of a gang.

use crate::backfill::View;
use crate::snapshot::{Decision, NodeGrant};

/// Why a member's grant cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GangError {
    /// The grant names a node the view does not have, or one that is down.
    #[error("job {job}: node {node} is unknown or down")]
    Node {
        /// The job.
        job: u64,
        /// The node.
        node: String,
    },
    /// A GPU of the grant is not on the node or not free.
    #[error("job {job}: GPU {uuid} on {node} is not free")]
    Gpu {
        /// The job.
        job: u64,
        /// The node.
        node: String,
        /// The GPU.
        uuid: String,
    },
    /// The node has fewer free CPUs or less free memory than the grant.
    #[error("job {job}: node {node} lacks the CPUs or memory granted")]
    Capacity {
        /// The job.
        job: u64,
        /// The node.
        node: String,
    },
}

/// Grants taken so far for one gang; see the module docs.
pub struct Tentative<'v> {
    view: &'v mut View,
    job: u64,
    taken: Vec<NodeGrant>,
    committed: bool,
}

impl<'v> Tentative<'v> {
    /// Starts an empty undo log for `job` over `view`.
    pub fn new(view: &'v mut View, job: u64) -> Tentative<'v> {
        Tentative {
            view,
            job,
            taken: Vec::new(),
            committed: false,
        }
    }

    /// Takes `grant` from the view if all of it is free.
    ///
    /// # Errors
    /// [`GangError`] naming what is not free; the view is unchanged by this call (earlier
    /// members stay taken until [`Tentative::discard`]).
    pub fn place(&mut self, grant: &NodeGrant) -> Result<(), GangError> {
        let job = self.job;
        let node = |n: &str| n.to_string();
        let i = self
            .view
            .position(&grant.node)
            .filter(|&i| self.view.snap.nodes[i].up)
            .ok_or_else(|| GangError::Node {
                job,
                node: node(&grant.node),
            })?;
        let n = &self.view.snap.nodes[i];
        for uuid in &grant.gpu_uuids {
            if !n
                .gpus
                .iter()
                .any(|g| &g.uuid == uuid && g.can_hold(grant.gpu_milli))
            {
                return Err(GangError::Gpu {
                    job,
                    node: node(&grant.node),
                    uuid: uuid.clone(),
                });
            }
        }
        if n.cpus_free < grant.cpus || n.memory_free_mb < grant.mem_mb {
            return Err(GangError::Capacity {
                job,
                node: node(&grant.node),
            });
        }
        self.view.take(std::slice::from_ref(grant));
        self.taken.push(grant.clone());
        Ok(())
    }

    /// Keeps every grant taken.
    pub fn commit(mut self) {
        self.committed = true;
    }

    /// Gives every grant back, last first.
    pub fn discard(self) {
        // Drop does the work, so an early return cannot leave part of a gang held.
    }
}

impl Drop for Tentative<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        while let Some(g) = self.taken.pop() {
            self.view.give(std::slice::from_ref(&g));
        }
    }
}

/// Takes every grant of `decision` from `view`, or none.
///
/// # Errors
/// The first member that does not fit; the view is then as before the call.
pub fn take_whole(view: &mut View, decision: &Decision) -> Result<(), GangError> {
    let mut t = Tentative::new(view, decision.job_id);
    for grant in &decision.nodes {
        t.place(grant)?;
    }
    t.commit();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ClusterSnapshot, GpuView, NodeView};

    fn view() -> View {
        let node = |name: &str| NodeView {
            name: name.into(),
            partition: "gpu".into(),
            up: true,
            cpus_total: 4,
            cpus_free: 4,
            memory_total_mb: 100,
            memory_free_mb: 100,
            gpus: (0..2)
                .map(|i| GpuView {
                    uuid: format!("{name}-{i}"),
                    index: i,
                    gres_type: "h100".into(),
                    free: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        View::new(ClusterSnapshot {
            nodes: vec![node("a"), node("b")],
            ..Default::default()
        })
    }

    fn grant(node: &str, gpus: &[u32], cpus: u32) -> NodeGrant {
        NodeGrant {
            node: node.into(),
            gpu_uuids: gpus.iter().map(|i| format!("{node}-{i}")).collect(),
            gpu_indices: gpus.to_vec(),
            cpus,
            mem_mb: 10,
            ..Default::default()
        }
    }

    #[test]
    fn a_gang_is_taken_whole_or_not_at_all() {
        let mut v = view();
        let before = v.snap.clone();
        // (second member, want)
        let cases: Vec<(NodeGrant, Option<&str>)> = vec![
            (grant("zz", &[0], 1), Some("unknown or down")),
            (grant("b", &[7], 1), Some("not free")),
            (grant("b", &[0], 9), Some("CPUs or memory")),
            (grant("a", &[0], 1), Some("not free")), // the first member holds a-0
        ];
        for (i, (second, want)) in cases.into_iter().enumerate() {
            let d = Decision {
                job_id: 1,
                nodes: vec![grant("a", &[0, 1], 1), second],
            };
            let got = take_whole(&mut v, &d).map_err(|e| e.to_string());
            match (got, want) {
                (Err(e), Some(w)) => assert!(e.contains(w), "#{i}: want {w:?}, got {e}"),
                (got, want) => panic!("#{i}: want {want:?}, got {got:?}"),
            }
            assert_eq!(
                v.snap, before,
                "#{i}: a refused gang must leave nothing held"
            );
        }
        let d = Decision {
            job_id: 2,
            nodes: vec![grant("a", &[1], 1), grant("b", &[0], 2)],
        };
        take_whole(&mut v, &d).unwrap();
        assert!(!v.snap.nodes[0].gpus[1].free && !v.snap.nodes[1].gpus[0].free);
        assert_eq!(v.snap.nodes[1].cpus_free, 2);
        let mut t = Tentative::new(&mut v, 3);
        t.place(&grant("a", &[0], 1)).unwrap();
        t.discard();
        assert!(
            v.snap.nodes[0].gpus[0].free,
            "discard gives the member back"
        );
    }
}
