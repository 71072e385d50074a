//! `AgentService`, the node agents' stream (register, heartbeats, job and step events,
//! usage, GPU health), and `NodeService`, the nodes as users list them.

use super::*;

#[tonic::async_trait]
impl pb::node_service_server::NodeService for Api {
    async fn list(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let sm = self.0.raft.state();
        let nodes = sm.nodes().cloned().collect();
        let default_partition = sm
            .default_partition()
            .map_or_else(|| self.0.default_partition.clone(), str::to_string);
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            default_partition,
        }))
    }
}

/// How long a new agent stream may stay silent before its `Register`.
const REGISTER_WAIT: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Api {
    type AttachStream = BoxStream<pb::ServerMessage>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let caller = Caller::of(&req);
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(REGISTER_WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register within 10s"))??;
        let Some(pb::AgentMessage {
            msg: Some(agent_message::Msg::Register(reg)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message on an agent stream must be Register",
            ));
        };
        let inv = reg
            .inventory
            .clone()
            .ok_or_else(|| Status::invalid_argument("Register without inventory"))?;
        validate_inventory(&inv).map_err(Status::invalid_argument)?;
        if let crate::security::Peer::Node(cert_node) = &caller.peer {
            if *cert_node != inv.name {
                tracing::warn!(
                    cert = cert_node,
                    claimed = inv.name,
                    "agent claimed another node"
                );
                return Err(Status::permission_denied(format!(
                    "Access/permission denied: this agent's certificate is for node {cert_node:?}, \
                     it may not register as {:?}",
                    inv.name
                )));
            }
        }
        for ev in &reg.jobs {
            validate_event(ev).map_err(Status::invalid_argument)?;
        }
        let steps = (reg.steps_running.clone(), reg.steps_ended.clone());
        if !self.0.raft.is_leader() {
            // Redirect: the agent reconnects to the address in `berth-leader`.
            let mut status = Status::unavailable("this berthd replica is not the leader");
            if let Some(url) = self.leader_url().ok().flatten() {
                if let Ok(value) = url.parse() {
                    status.metadata_mut().insert(LEADER_HEADER, value);
                }
            }
            return Err(status);
        }
        match self
            .propose(Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inv.clone()),
            }))
            .await?
        {
            Outcome::Done => {}
            other => {
                return Err(Status::invalid_argument(format!(
                    "registration refused: {other:?}"
                )))
            }
        }
        let node = inv.name;
        let (tx, rx) = mpsc::channel(1024);
        let conn = self.0.agents.attach(&node, tx.clone());
        tracing::info!(
            node,
            gpus = inv.gpus.len(),
            jobs = reg.jobs.len(),
            "agent attached"
        );
        let api = self.clone();
        tokio::spawn(async move {
            api.after_register(&node, &tx, reg.jobs).await;
            api.after_register_steps(&node, &tx, steps).await;
            api.serve_agent(&node, &tx, inbound).await;
            api.0.agents.detach(&node, conn);
            tracing::info!(node, "agent detached");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn validate_event(ev: &pb::JobEvent) -> Result<(), String> {
    if ev.job_id == 0 {
        return Err("job event for job 0".into());
    }
    match &ev.event {
        Some(job_event::Event::Started(_)) => Ok(()),
        Some(job_event::Event::Finished(f)) if crate::state_machine::is_final(f.state()) => Ok(()),
        Some(job_event::Event::Finished(f)) => Err(format!(
            "job {} finished in non-final state {:?}",
            ev.job_id,
            f.state()
        )),
        None => Err(format!("job event for job {} without an event", ev.job_id)),
    }
}

/// A usage report the state machine could never take: checked before it reaches the log.
fn validate_usage(r: &pb::JobUsageReport) -> Result<(), String> {
    for u in &r.jobs {
        if u.job_id == 0 {
            return Err("job usage for job 0".into());
        }
        let values = [u.gpu_seconds, u.gpu_busy_seconds, u.gpu_util_percent];
        if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!(
                "job usage of job {}: values must be finite and ≥ 0, got {values:?}",
                u.job_id
            ));
        }
    }
    Ok(())
}

impl Api {
    async fn after_register(&self, node: &str, tx: &AgentSender, jobs: Vec<pb::JobEvent>) {
        let term = self.0.raft.term();
        let _ = tx
            .send(Ok(pb::ServerMessage {
                term,
                msg: Some(Msg::Registered(pb::Registered { node: node.into() })),
            }))
            .await;
        let msgs = reconcile(&self.0.raft.state(), node, &jobs);
        for msg in msgs {
            let _ = tx
                .send(Ok(pb::ServerMessage {
                    term,
                    msg: Some(msg),
                }))
                .await;
        }
        for ev in jobs {
            if let Some(job_event::Event::Finished(f)) = ev.event {
                self.job_finished(node, ev.job_id, f, tx).await;
            }
        }
    }

    /// Records the step ends the agent reported (and fails the steps it lost), and stops
    /// steps it runs that berthd no longer does.
    async fn after_register_steps(
        &self,
        node: &str,
        tx: &AgentSender,
        (running, ended): (Vec<pb::StepRef>, Vec<pb::StepEnd>),
    ) {
        let (ends, kills) = step_reconcile(&self.0.raft.state(), node, &running, &ended);
        let term = self.0.raft.term();
        for msg in kills {
            let _ = tx
                .send(Ok(pb::ServerMessage {
                    term,
                    msg: Some(msg),
                }))
                .await;
        }
        for end in ends {
            self.step_end(end).await;
        }
    }

    async fn step_end(&self, ended: pb::StepEnded) {
        let node = ended.node.clone();
        match self.propose(Cmd::StepEnded(ended)).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!(node, "step end refused: {other:?}"),
            Err(e) => tracing::warn!(node, "step end not recorded: {e}"),
        }
    }

    async fn serve_agent(
        &self,
        node: &str,
        tx: &AgentSender,
        mut inbound: Streaming<pb::AgentMessage>,
    ) {
        loop {
            // A hung agent keeps its TCP connection but stops heartbeating: treat silence as
            // death, so the liveness loop can start counting toward NodeDown.
            let msg = match tokio::time::timeout(self.0.agent_silence_max, inbound.next()).await {
                Err(_) => {
                    tracing::warn!(
                        node,
                        "agent silent for {:?}; closing its stream",
                        self.0.agent_silence_max
                    );
                    return;
                }
                Ok(None) => return,
                Ok(Some(Err(status))) => {
                    tracing::warn!(node, "agent stream error: {status}");
                    return;
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg.msg {
                Some(agent_message::Msg::Heartbeat(_)) => {}
                Some(agent_message::Msg::JobEvent(ev)) => {
                    if let Err(why) = validate_event(&ev) {
                        let _ = tx.send(Err(Status::invalid_argument(why))).await;
                        return;
                    }
                    match ev.event {
                        Some(job_event::Event::Finished(f)) => {
                            self.job_finished(node, ev.job_id, f, tx).await
                        }
                        Some(job_event::Event::Started(s)) => {
                            tracing::debug!(node, job = ev.job_id, pid = s.pid, "started")
                        }
                        None => {}
                    }
                }
                Some(agent_message::Msg::GpuHealth(h)) => self.gpu_unhealthy(node, h).await,
                Some(agent_message::Msg::StepEnd(end)) => {
                    self.step_end(pb::StepEnded {
                        node: node.to_string(),
                        end: Some(end),
                    })
                    .await
                }
                Some(agent_message::Msg::GpuHealthResent(h)) => {
                    if self.cleared_by_admin(node, &h) {
                        tracing::info!(
                            node,
                            gpu = h.uuid,
                            "re-sent health report ignored: an admin cleared {:?}",
                            h.reason
                        );
                    } else {
                        self.gpu_unhealthy(node, h).await
                    }
                }
                Some(agent_message::Msg::JobUsage(r)) => {
                    if let Err(why) = validate_usage(&r) {
                        let _ = tx.send(Err(Status::invalid_argument(why))).await;
                        return;
                    }
                    self.job_usage(node, r).await
                }
                Some(agent_message::Msg::Register(_)) | None => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "unexpected message: Register only opens a stream",
                        )))
                        .await;
                    return;
                }
            }
        }
    }

    /// Whether an admin cleared exactly this report's reason on this GPU: then a report the
    /// agent re-sends after reconnecting is old news, not a new failure.
    fn cleared_by_admin(&self, node: &str, h: &pb::GpuHealth) -> bool {
        let sm = self.0.raft.state();
        sm.node(node)
            .and_then(|n| n.inventory.as_ref())
            .and_then(|i| i.gpus.iter().find(|g| g.uuid == h.uuid))
            .is_some_and(|g| g.unhealthy_reason.is_empty() && g.healthy_cleared_reason == h.reason)
    }

    /// Records an agent's measured job usage through the log. A refusal (a job berthd
    /// no longer allocates there, e.g. after a requeue) is logged, not fatal to the stream.
    async fn job_usage(&self, node: &str, r: pb::JobUsageReport) {
        if r.jobs.is_empty() {
            return;
        }
        let cmd = Cmd::JobUsage(pb::JobUsageRecord {
            node: node.to_string(),
            jobs: r.jobs,
        });
        match self.propose(cmd).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!(node, "job usage refused: {other:?}"),
            Err(e) => tracing::warn!(node, "job usage not recorded: {e}"),
        }
    }

    /// Records an agent's report of a bad GPU through the log, so every replica stops
    /// placing on it. A refusal (unknown GPU) is logged, not fatal to the stream.
    async fn gpu_unhealthy(&self, node: &str, h: pb::GpuHealth) {
        tracing::warn!(node, gpu = h.uuid, "GPU unhealthy: {}", h.reason);
        let cmd = Cmd::MarkGpuUnhealthy(pb::MarkGpuUnhealthy {
            node: node.to_string(),
            gpu_uuid: h.uuid,
            reason: h.reason,
        });
        match self.propose(cmd).await {
            Ok(Outcome::Done) => {}
            Ok(other) => tracing::warn!(node, "GPU health refused: {other:?}"),
            Err(e) => tracing::warn!(node, "GPU health not recorded: {e}"),
        }
    }

    async fn job_finished(
        &self,
        node: &str,
        job_id: u64,
        finished: pb::JobFinished,
        tx: &AgentSender,
    ) {
        if self.0.raft.state().job(job_id).is_none() {
            // Never a berth job: tell the agent to forget it, and keep it out of the log.
            tracing::warn!(node, job_id, "agent reported an unknown job");
            let ack = Msg::Ack(pb::AckJob { job_id });
            let _ = tx
                .send(Ok(pb::ServerMessage {
                    term: self.0.raft.term(),
                    msg: Some(ack),
                }))
                .await;
            return;
        }
        let ended = pb::JobEnded {
            job_id,
            node: node.to_string(),
            finished: Some(finished),
        };
        match self.propose(Cmd::JobEnded(ended)).await {
            Ok(Outcome::Done) => {} // the Ack goes out through the dispatch loop
            Ok(other) => tracing::warn!(node, job_id, "job end refused: {other:?}"),
            Err(e) => tracing::warn!(node, job_id, "job end not recorded: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reports_berthd_could_never_record_are_refused() {
        let usage = |job_id: u64, held: f64, util: f64| pb::JobUsage {
            job_id,
            gpu_seconds: held,
            gpu_util_percent: util,
            ..Default::default()
        };
        let report = |jobs| pb::JobUsageReport { jobs };
        assert_eq!(validate_usage(&report(vec![usage(1, 2.5, 40.0)])), Ok(()));
        assert_eq!(validate_usage(&report(vec![])), Ok(()));
        let bad = [
            (usage(0, 1.0, 0.0), "job 0"),
            (usage(1, -1.0, 0.0), "finite and ≥ 0"),
            (usage(1, f64::INFINITY, 0.0), "finite and ≥ 0"),
            (usage(1, 1.0, f64::NAN), "finite and ≥ 0"),
        ];
        for (i, (u, want)) in bad.into_iter().enumerate() {
            match validate_usage(&report(vec![usage(2, 1.0, 1.0), u])) {
                Err(e) if e.contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
    }
}
