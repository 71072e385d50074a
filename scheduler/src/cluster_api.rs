//! The AdminService calls of the cluster description: read it (with license use and
//! reservations), replace it, change reservations, drain and resume nodes. Writes are
//! checked here first (a bad description never reaches the log), then proposed and
//! answered once applied; a follower forwards them to the leader.

use crate::cluster::ClusterDescription;
use crate::security::Caller;
use crate::server::{forward, Api};
use crate::state_machine::Outcome;
use berth_proto::v1::{self as pb, command::Cmd};
use tonic::{Response, Status};

/// The answer to a cluster write: done, or the state machine's refusal as
/// `INVALID_ARGUMENT` (`NOT_FOUND` when `missing` says the refusal means an unknown name).
fn answer(outcome: Outcome) -> Result<(), Status> {
    match outcome {
        Outcome::Done | Outcome::Submitted(_) => Ok(()),
        Outcome::Rejected(why) => Err(Status::invalid_argument(why)),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

impl Api {
    /// `GetCluster`.
    pub(crate) fn cluster_info(&self) -> pb::ClusterInfo {
        let sm = self.0.raft.state();
        pb::ClusterInfo {
            toml: sm.cluster_toml().to_string(),
            licenses: sm.license_usage(),
            reservations: sm.reservations().cloned().collect(),
            default_partition: sm
                .default_partition()
                .map_or_else(|| self.0.default_partition.clone(), str::to_string),
        }
    }

    /// `SetCluster`.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` with the line and reason; `UNAVAILABLE` without a leader.
    pub(crate) async fn set_cluster_text(
        &self,
        caller: &Caller,
        r: pb::ClusterConfig,
    ) -> Result<Response<pb::ClusterConfig>, Status> {
        if !r.toml.trim().is_empty() {
            ClusterDescription::parse(&r.toml)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if let Some(mut leader) = self.admin_leader().await? {
            return leader.set_cluster(forward(caller, r)).await;
        }
        let cmd = Cmd::SetCluster(pb::SetCluster {
            toml: r.toml.clone(),
        });
        answer(self.propose(cmd).await?)?;
        tracing::info!("cluster description replaced");
        Ok(Response::new(r))
    }

    /// `ChangeReservation`.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` with Slurm's message.
    pub(crate) async fn reservation_change(
        &self,
        caller: &Caller,
        c: pb::ReservationChange,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        if let Some(mut leader) = self.admin_leader().await? {
            return leader.change_reservation(forward(caller, c)).await;
        }
        let op = c.op.clone();
        let asked = c
            .reservation
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let before: Vec<String> = self
            .0
            .raft
            .state()
            .reservations()
            .map(|r| r.name.clone())
            .collect();
        answer(self.propose(Cmd::Reservation(c)).await?)?;
        // A created reservation without a name got one at apply: find it.
        let name = if op == "create" && asked.is_empty() {
            self.0
                .raft
                .state()
                .reservations()
                .map(|r| r.name.clone())
                .find(|n| !before.contains(n))
                .unwrap_or_default()
        } else {
            asked
        };
        Ok(Response::new(pb::ReservationReply { name }))
    }

    /// `DrainNode`.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown node, `INVALID_ARGUMENT` for a drain without a reason.
    pub(crate) async fn node_drain(
        &self,
        caller: &Caller,
        mut c: pb::NodeDrain,
    ) -> Result<Response<pb::NodeDrainReply>, Status> {
        // Who drained it is who proved it (sinfo -R's USER), never a claimed name.
        if !caller.is_unproven() {
            c.user = caller.identity.user.clone();
        }
        if self.0.raft.state().node(&c.node).is_none() {
            return Err(Status::not_found(format!(
                "Invalid node name specified ({})",
                c.node
            )));
        }
        if let Some(mut leader) = self.admin_leader().await? {
            return leader.drain_node(forward(caller, c)).await;
        }
        answer(self.propose(Cmd::NodeDrain(c)).await?)?;
        Ok(Response::new(pb::NodeDrainReply {}))
    }
}
