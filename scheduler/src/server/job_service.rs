//! `JobService`: submit, cancel, hold, requeue, array updates, steps, and the job reads
//! (get, list, paged list, watch), each checked for the caller's rights before it is
//! proposed or answered.

use super::*;

#[tonic::async_trait]
impl pb::job_service_server::JobService for Api {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.submit(forward(&caller, req.into_inner())).await;
        }
        let note = req
            .extensions()
            .get::<crate::security::layer::AuditNote>()
            .cloned();
        let mut spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("submit without a job spec"))?;
        if spec.partition.is_empty() {
            // The description's default partition, else berthd's.
            let described = self.0.raft.state().default_partition().map(str::to_string);
            spec.partition = described.unwrap_or_else(|| self.0.default_partition.clone());
        }
        crate::security::check_env(&spec)?;
        if let Some(sec) = &self.0.security {
            let sm = self.0.raft.state();
            let enforced = !sm.accounts_toml().is_empty();
            crate::security::stamp_submit(sec, &caller, sm.accounts(), enforced, &mut spec)?;
        }
        match self
            .propose(Cmd::Submit(pb::SubmitJob { spec: Some(spec) }))
            .await?
        {
            Outcome::Submitted(job_id) => {
                if let Some(n) = note {
                    *n.0.lock().unwrap_or_else(|e| e.into_inner()) = format!("job {job_id}");
                }
                Ok(Response::new(pb::SubmitResponse { job_id }))
            }
            Outcome::Rejected(why) => Err(Status::invalid_argument(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn bind_pod(
        &self,
        req: Request<pb::BindPodRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.bind_pod(forward(&caller, req.into_inner())).await;
        }
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("bind without a job spec"))?;
        crate::state_machine::pods::validate_pod_spec(&spec).map_err(Status::invalid_argument)?;
        let uid = spec.pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
        let _one_at_a_time = self.0.bind_lock.lock().await;
        // The leader picks the GPUs from its own applied state; the command re-checks them
        // when it applies, so a race with the scheduling loop cannot double-grant. When the
        // loop's allocation took them first, pick again from the newer state.
        for attempt in 1..=BIND_ATTEMPTS {
            let (allocation, reservation) = {
                let sm = self.0.raft.state();
                if let Some(job) = sm.pod_job(&uid) {
                    return Ok(Response::new(self.view(job)));
                }
                crate::extender::plan_bind(&sm, &r.node, &spec)
                    .map_err(Status::failed_precondition)?
            };
            let bind = pb::BindPod {
                term: self.0.raft.term(),
                spec: Some(spec.clone()),
                allocation: Some(allocation),
                reservation,
            };
            match self.propose(Cmd::BindPod(bind)).await? {
                Outcome::Submitted(id) => {
                    let sm = self.0.raft.state();
                    let job = sm
                        .job(id)
                        .ok_or_else(|| Status::internal(format!("bound job {id} not in state")))?;
                    return Ok(Response::new(self.view(job)));
                }
                Outcome::Rejected(why) if attempt == BIND_ATTEMPTS => {
                    return Err(Status::failed_precondition(why))
                }
                Outcome::Rejected(why) => tracing::debug!(attempt, "bind refused, retrying: {why}"),
                other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.cancel(forward(&caller, req.into_inner())).await;
        }
        let what = match &req.get_ref().release {
            Some(r) => format!("job {} release exit={}", req.get_ref().job_id, r.exit_code),
            None => format!("job {}", req.get_ref().job_id),
        };
        crate::security::note(&req, what);
        self.authorize_job(&caller, req.get_ref().job_id, "cancel")?;
        let pb::CancelRequest {
            job_id,
            reason,
            array_tasks,
            release,
        } = req.into_inner();
        outcome_status(
            self.propose(Cmd::Cancel(pb::CancelJob {
                job_id,
                reason,
                end_state: 0,
                array_tasks,
                release,
            }))
            .await?,
        )?;
        Ok(Response::new(pb::CancelResponse {}))
    }

    async fn hold(
        &self,
        req: Request<pb::HoldRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.hold(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(
            &req,
            format!("job {} hold={}", req.get_ref().job_id, req.get_ref().hold),
        );
        let verb = if req.get_ref().hold {
            "hold"
        } else {
            "release"
        };
        self.authorize_job(&caller, req.get_ref().job_id, verb)?;
        let r = req.into_inner();
        outcome_status(
            self.propose(Cmd::Hold(pb::HoldJob {
                job_id: r.job_id,
                hold: r.hold,
                array_tasks: r.array_tasks,
            }))
            .await?,
        )?;
        Ok(Response::new(pb::HoldResponse {}))
    }

    async fn requeue(
        &self,
        req: Request<pb::RequeueRequest>,
    ) -> Result<Response<pb::RequeueResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.requeue(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(&req, format!("job {}", req.get_ref().job_id));
        self.authorize_job(&caller, req.get_ref().job_id, "requeue")?;
        let job_id = req.into_inner().job_id;
        outcome_status(
            self.propose(Cmd::Requeue(pb::RequeueJob { job_id }))
                .await?,
        )?;
        Ok(Response::new(pb::RequeueResponse {}))
    }

    async fn update_array(
        &self,
        req: Request<pb::UpdateArrayRequest>,
    ) -> Result<Response<pb::UpdateArrayResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader
                .update_array(forward(&caller, req.into_inner()))
                .await;
        }
        crate::security::note(&req, format!("job {}", req.get_ref().job_id));
        self.authorize_job(&caller, req.get_ref().job_id, "update")?;
        let r = req.into_inner();
        let cmd = Cmd::ArrayUpdate(pb::ArrayUpdate {
            job_id: r.job_id,
            array_tasks: r.array_tasks,
            max_running: r.max_running,
            time_limit_secs: r.time_limit_secs,
        });
        outcome_status(self.propose(cmd).await?)?;
        Ok(Response::new(pb::UpdateArrayResponse {}))
    }

    async fn create_step(
        &self,
        req: Request<pb::CreateStepRequest>,
    ) -> Result<Response<pb::Step>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.create_step(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(&req, format!("job {}", req.get_ref().job_id));
        // A step runs as the job's (sealed) identity: only who may act on the job starts one.
        self.authorize_job(&caller, req.get_ref().job_id, "srun")?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("step without a spec"))?;
        validate_step_spec(&spec).map_err(Status::invalid_argument)?;
        let cmd = Cmd::StepCreate(pb::StepCreate {
            job_id: r.job_id,
            spec: Some(spec),
        });
        match self.propose(cmd).await? {
            Outcome::StepCreated(step_id) => {
                let sm = self.0.raft.state();
                // Read under the same state the command left: a step whose tasks all ended
                // at once is already gone, so answer from the launch's copy then.
                let step = sm
                    .job(r.job_id)
                    .and_then(|j| j.steps.iter().find(|s| s.step_id == step_id))
                    .cloned()
                    .ok_or_else(|| {
                        Status::aborted(format!("step {}.{step_id} ended at once", r.job_id))
                    })?;
                Ok(Response::new(step))
            }
            Outcome::NoSuchJob(_) => Err(Status::not_found("Invalid job id specified")),
            Outcome::Rejected(why) => Err(Status::failed_precondition(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn cancel_step(
        &self,
        req: Request<pb::CancelStepRequest>,
    ) -> Result<Response<pb::CancelStepResponse>, Status> {
        let caller = Caller::of(&req);
        if let Some(mut leader) = self.leader().await? {
            return leader.cancel_step(forward(&caller, req.into_inner())).await;
        }
        crate::security::note(
            &req,
            format!("step {}.{}", req.get_ref().job_id, req.get_ref().step_id),
        );
        self.authorize_job(&caller, req.get_ref().job_id, "cancel")?;
        let r = req.into_inner();
        let cmd = Cmd::StepCancel(pb::StepCancel {
            job_id: r.job_id,
            step_id: r.step_id,
            reason: r.reason,
        });
        outcome_status(self.propose(cmd).await?)?;
        Ok(Response::new(pb::CancelStepResponse {}))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&req);
        let id = req.into_inner().job_id;
        // `scontrol show job` right after a submit must see it, on any replica.
        self.0.raft.read_index().await.map_err(propose_status)?;
        let sm = self.0.raft.state();
        sm.job(id)
            .and_then(|job| self.visible_view(&caller, job, sm.accounts()))
            .map(Response::new)
            .ok_or_else(|| Status::not_found("Invalid job id specified"))
    }

    async fn list(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let sm = self.0.raft.state();
        let jobs = sm
            .jobs()
            .filter(|j| crate::job_list::matches(&r, j))
            .filter_map(|j| self.visible_view(&caller, j, sm.accounts()))
            .map(|mut shown| {
                if r.brief {
                    crate::job_list::make_brief(&mut shown);
                }
                shown
            })
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    type ListPagesStream = BoxStream<pb::ListJobsResponse>;

    async fn list_pages(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<Self::ListPagesStream>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        // Two pages in flight at most: a slow reader holds that much, never the queue.
        let (tx, rx) = mpsc::channel(2);
        let api = self.clone();
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let (jobs, next) = {
                    let sm = api.0.raft.state();
                    crate::job_list::page(&sm, &r, after, |j| {
                        api.visible_view(&caller, j, sm.accounts())
                    })
                };
                let last = next.is_none();
                if (!jobs.is_empty() || last)
                    && tx.send(Ok(pb::ListJobsResponse { jobs })).await.is_err()
                {
                    return;
                }
                match next {
                    Some(n) => after = n,
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchStream = BoxStream<pb::Job>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req);
        let ids = req.into_inner().job_ids;
        let wanted = move |id: u64| ids.is_empty() || ids.contains(&id);
        // Subscribe before reading the current state, so no change falls between the two.
        let mut effects = self.0.raft.subscribe();
        let current: Vec<pb::Job> = {
            let sm = self.0.raft.state();
            sm.jobs()
                .filter(|j| wanted(j.id))
                .filter_map(|j| self.visible_view(&caller, j, sm.accounts()))
                .collect()
        };
        let (tx, rx) = mpsc::channel(256);
        let api = self.clone();
        tokio::spawn(async move {
            for job in current {
                if tx.send(Ok(job)).await.is_err() {
                    return;
                }
            }
            while let Ok(applied) = effects.recv().await {
                for e in &applied.effects {
                    let Effect::JobChanged(job) = e else { continue };
                    if !wanted(job.id) {
                        continue;
                    }
                    // The guard is dropped before the send waits.
                    let view = {
                        let sm = api.0.raft.state();
                        api.visible_view(&caller, job, sm.accounts())
                    };
                    let Some(view) = view else { continue };
                    if tx.send(Ok(view)).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx
                .send(Err(Status::data_loss("watch fell behind; watch again")))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Bounds on what one step may carry into the log.
const STEP_TASKS_MAX: u32 = 65_536;

/// A step request berthd could never take: checked before it reaches the log.
fn validate_step_spec(s: &pb::StepSpec) -> Result<(), String> {
    if s.argv.is_empty() || s.argv[0].is_empty() {
        return Err("step without a program to run".into());
    }
    if s.ntasks > STEP_TASKS_MAX || s.ntasks_per_node > STEP_TASKS_MAX {
        return Err(format!("at most {STEP_TASKS_MAX} tasks per step"));
    }
    if s.io_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("step I/O address {:?} is not host:port", s.io_addr));
    }
    Ok(())
}
