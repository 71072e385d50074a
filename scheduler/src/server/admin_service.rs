//! `AdminService`: fair share and priorities, topology, accounts, GPU health, tokens,
//! the audit log, the cluster description, reservations, drains and Raft membership.

use super::*;

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Api {
    async fn get_shares(
        &self,
        _req: Request<pb::SharesRequest>,
    ) -> Result<Response<pb::SharesResponse>, Status> {
        let sm = self.0.raft.state();
        let cfg = &sm.accounts().policy;
        let usage = berth_policies::priority::usage_now(
            &cfg.accounts,
            &sm.policy_view(),
            cfg.half_life_ms,
            now_ms(),
        );
        let rows = berth_policies::fairshare::fair_tree(&cfg.accounts, &usage)
            .into_iter()
            .map(|r| pb::ShareRow {
                account: r.name,
                depth: r.depth as u32,
                shares: r.shares,
                norm_shares: r.norm_shares,
                raw_usage: r.raw_usage,
                effective_usage: r.effective_usage,
                level_fs: r.level_fs,
                fairshare: r.fairshare.unwrap_or(-1.0),
            })
            .collect();
        Ok(Response::new(pb::SharesResponse { rows }))
    }

    async fn get_priorities(
        &self,
        req: Request<pb::PrioritiesRequest>,
    ) -> Result<Response<pb::PrioritiesResponse>, Status> {
        let ids = req.into_inner().job_ids;
        let sm = self.0.raft.state();
        let cfg = &sm.accounts().policy;
        let snap = sm.policy_view();
        let prio = berth_policies::priority::Prioritizer::new(&snap, cfg, now_ms());
        let jobs = sm
            .pending_jobs()
            .iter()
            .filter(|p| ids.is_empty() || ids.contains(&p.id))
            .map(|p| {
                let f = prio.factors(p);
                let user = sm
                    .job(p.id)
                    .and_then(|j| j.spec.as_ref())
                    .map(|s| s.user.clone())
                    .unwrap_or_default();
                pb::JobPriority {
                    job_id: p.id,
                    user,
                    account: p.account.clone(),
                    qos: p.qos.clone(),
                    priority: f.priority,
                    fairshare: f.fairshare,
                    age: f.age,
                    qos_factor: f.qos,
                    size: f.size,
                    short: f.short,
                    weight_short: cfg.weights.short,
                }
            })
            .collect();
        let w = &cfg.weights;
        Ok(Response::new(pb::PrioritiesResponse {
            jobs,
            weight_fairshare: w.fairshare,
            weight_age: w.age,
            weight_qos: w.qos,
            weight_size: w.size,
        }))
    }

    async fn get_topology(
        &self,
        _req: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyResponse>, Status> {
        let (conf, topo) = {
            let sm = self.0.raft.state();
            (sm.topology_conf().to_string(), sm.topology())
        };
        let switches = topo
            .switch_rows()
            .into_iter()
            .map(|r| pb::TopologySwitch {
                name: r.name,
                level: r.level,
                link_speed: r.link_speed.unwrap_or(0),
                nodes: r.nodes,
                switches: r.switches,
            })
            .collect();
        let blocks = topo
            .conf()
            .blocks
            .iter()
            .map(|b| pb::TopologyBlock {
                name: b.name.clone(),
                nodes: b.nodes.clone(),
            })
            .collect();
        Ok(Response::new(pb::TopologyResponse {
            switches,
            blocks,
            conf,
        }))
    }

    async fn get_accounts(
        &self,
        _req: Request<pb::AccountsRequest>,
    ) -> Result<Response<pb::AccountsConfig>, Status> {
        let sm = self.0.raft.state();
        let toml = match sm.accounts_toml() {
            "" => crate::accounts::DEFAULT_TOML.to_string(),
            t => t.to_string(),
        };
        Ok(Response::new(pb::AccountsConfig { toml }))
    }

    async fn set_accounts(
        &self,
        req: Request<pb::AccountsConfig>,
    ) -> Result<Response<pb::AccountsConfig>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        // Refuse bad text before it reaches the log (apply would refuse it too).
        crate::accounts::parse(&r.toml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(mut leader) = self.admin_leader().await? {
            return leader.set_accounts(forward(&caller, r)).await;
        }
        if caller.role < crate::security::Role::Admin {
            let sm = self.0.raft.state();
            // Only coordinators change anything short of admin: a user coordinating no
            // account is refused even a no-op, so no one else writes to the log here.
            if sm
                .accounts()
                .access
                .coordinated(&caller.identity.user)
                .is_empty()
            {
                return Err(Status::permission_denied(format!(
                    "Access/permission denied: SetAccounts needs role admin or an account \
                     coordinator (you are {:?}, role {})",
                    caller.identity.user,
                    caller.role.name()
                )));
            }
            let current = match sm.accounts_toml() {
                "" => crate::accounts::DEFAULT_TOML,
                text => text,
            };
            crate::account_change::coordinator_may_set(
                current,
                &r.toml,
                &caller.identity.user,
                &sm.accounts().access,
            )
            .map_err(Status::permission_denied)?;
        }
        let outcome = self
            .propose(Cmd::SetAccounts(pb::SetAccounts {
                toml: r.toml.clone(),
            }))
            .await?;
        match outcome {
            Outcome::Done => Ok(Response::new(r)),
            Outcome::Rejected(why) => Err(Status::invalid_argument(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn resume_gpu(
        &self,
        req: Request<pb::GpuHealthyRequest>,
    ) -> Result<Response<pb::GpuHealthyResponse>, Status> {
        let caller = Caller::of(&req);
        crate::security::note(
            &req,
            format!("node {} gpu {}", req.get_ref().node, req.get_ref().gpu),
        );
        let r = req.into_inner();
        if r.node.is_empty() || r.gpu.is_empty() {
            return Err(Status::invalid_argument(
                "resume needs node=NAME and gpu=UUID|INDEX",
            ));
        }
        if let Some(mut leader) = self.admin_leader().await? {
            return leader.resume_gpu(forward(&caller, r)).await;
        }
        let (uuid, reason) = {
            let sm = self.0.raft.state();
            let inv = sm
                .node(&r.node)
                .and_then(|n| n.inventory.as_ref())
                .ok_or_else(|| Status::not_found(format!("Node {} not found", r.node)))?;
            let gpu = inv
                .gpus
                .iter()
                .find(|g| g.uuid == r.gpu || g.index.to_string() == r.gpu)
                .ok_or_else(|| {
                    Status::not_found(format!("node {} has no GPU {}", r.node, r.gpu))
                })?;
            (gpu.uuid.clone(), gpu.unhealthy_reason.clone())
        };
        let cmd = Cmd::GpuHealthy(pb::GpuHealthyMark {
            node: r.node.clone(),
            gpu_uuid: uuid.clone(),
        });
        match self.propose(cmd).await? {
            Outcome::Done => {
                tracing::info!(
                    node = r.node,
                    gpu = uuid,
                    "GPU resumed by an admin (was: {reason})"
                );
                Ok(Response::new(pb::GpuHealthyResponse {
                    gpu_uuid: uuid,
                    cleared_reason: reason,
                }))
            }
            Outcome::Rejected(why) => Err(Status::not_found(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn issue_token(
        &self,
        req: Request<pb::TokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let sec = self.0.security.as_ref().ok_or_else(|| {
            Status::failed_precondition("this berthd runs without security: there are no tokens")
        })?;
        crate::security::tokens::issue(sec, &caller, &r).map(Response::new)
    }

    async fn query_audit(
        &self,
        req: Request<pb::AuditQuery>,
    ) -> Result<Response<pb::AuditRecords>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let audit = self.0.audit.clone();
        let filter = crate::audit::AuditFilter::of(&r);
        let mut records = tokio::task::spawn_blocking(move || audit.query(&filter, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut unreachable = Vec::new();
        if !r.local_only {
            // Each replica keeps the records of the calls it handled: gather the others'
            // (as the caller, whose role each peer checks again), so one query sees the
            // whole group's history across leader changes.
            let me = self.0.raft.id();
            let ask = pb::AuditQuery {
                local_only: true,
                ..r.clone()
            };
            let peers: Vec<(u64, String)> = self
                .0
                .raft
                .peers()
                .into_iter()
                .filter(|(id, _)| *id != me)
                .collect();
            let calls = peers.into_iter().map(|(id, url)| {
                let (caller, ask, sec) = (caller.clone(), ask.clone(), self.0.security.clone());
                async move {
                    let got = async {
                        let profile = sec.map(|s| s.peer_profile.clone()).unwrap_or_default();
                        let channel = berth_auth::channel::endpoint(&url, &profile)?
                            .connect_timeout(std::time::Duration::from_secs(2))
                            .timeout(std::time::Duration::from_secs(5))
                            .connect()
                            .await
                            .map_err(|e| e.to_string())?;
                        pb::admin_service_client::AdminServiceClient::new(channel)
                            .query_audit(forward(&caller, ask))
                            .await
                            .map(|r| r.into_inner().records)
                            .map_err(|s| s.message().to_string())
                    }
                    .await;
                    (id, url, got)
                }
            });
            for (id, url, got) in futures::future::join_all(calls).await {
                match got {
                    Ok(mut more) => records.append(&mut more),
                    Err(e) => unreachable.push(format!("replica {id} ({url}): {e}")),
                }
            }
            records = crate::audit::merge(records, limit);
        }
        Ok(Response::new(pb::AuditRecords {
            records,
            unreachable,
        }))
    }

    async fn get_cluster(
        &self,
        _req: Request<pb::ClusterRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        Ok(Response::new(self.cluster_info()))
    }

    async fn set_cluster(
        &self,
        req: Request<pb::ClusterConfig>,
    ) -> Result<Response<pb::ClusterConfig>, Status> {
        let caller = Caller::of(&req);
        self.set_cluster_text(&caller, req.into_inner()).await
    }

    async fn change_reservation(
        &self,
        req: Request<pb::ReservationChange>,
    ) -> Result<Response<pb::ReservationReply>, Status> {
        let caller = Caller::of(&req);
        self.reservation_change(&caller, req.into_inner()).await
    }

    async fn drain_node(
        &self,
        req: Request<pb::NodeDrain>,
    ) -> Result<Response<pb::NodeDrainReply>, Status> {
        let caller = Caller::of(&req);
        self.node_drain(&caller, req.into_inner()).await
    }

    async fn get_replica_status(
        &self,
        _req: Request<pb::ReplicaStatusRequest>,
    ) -> Result<Response<pb::ReplicaStatus>, Status> {
        let raft = &self.0.raft;
        Ok(Response::new(pb::ReplicaStatus {
            id: raft.id(),
            term: raft.term(),
            leader_id: raft.leader_id(),
            applied_index: raft.state().applied_index(),
        }))
    }
    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::Members>, Status> {
        let caller = Caller::of(&req);
        crate::security::note(
            &req,
            format!(
                "replica {} remove={}",
                req.get_ref().id,
                req.get_ref().remove
            ),
        );
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("replica id 0 is reserved by raft"));
        }
        if !r.remove && r.url.is_empty() {
            return Err(Status::invalid_argument(
                "adding a replica needs its address",
            ));
        }
        if let Some(url) = self.leader_url()? {
            let mut leader = pb::admin_service_client::AdminServiceClient::new(
                self.0
                    .leader_channel
                    .get(&url, self.0.security.as_deref())?,
            );
            return leader.change_membership(forward(&caller, r)).await;
        }
        let voters = self.0.raft.voters();
        if r.remove && !voters.contains(&r.id) {
            return Err(Status::failed_precondition(format!(
                "replica {} is not a member",
                r.id
            )));
        }
        if r.remove && voters.len() == 1 {
            return Err(Status::failed_precondition("cannot remove the last voter"));
        }
        if !r.remove && voters.contains(&r.id) {
            return Err(Status::failed_precondition(format!(
                "replica {} is already a member",
                r.id
            )));
        }
        let url = (!r.remove).then(|| {
            if r.url.contains("://") {
                r.url.clone()
            } else {
                format!("http://{}", r.url)
            }
        });
        let outcome = self
            .0
            .raft
            .change_membership(r.id, url)
            .await
            .map_err(propose_status)?;
        outcome_status(outcome)?;
        let members = self
            .0
            .raft
            .peers()
            .into_iter()
            .map(|(id, url)| pb::Member { id, url })
            .collect();
        Ok(Response::new(pb::Members { members }))
    }
}
