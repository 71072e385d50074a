//! gRPC `AccountingService`: records for `sacct`, usage for `sreport` and `berth report`.
//!
//! A query reads the store (on a blocking thread) and the replica's applied state, and
//! merges them by (job id, run), the state winning: pending and running jobs exist only
//! there, and ended runs still queued for a store that is down are answered from it too.
//! When the store cannot be read, the answer carries the jobs berthd holds and says why
//! the rest are missing (`store_error`).

use super::record::{current_record, ended_records};
use super::store::{latest_runs, matches, StoreError};
use super::usage;
use super::Accounting;
use crate::raft_loop::RaftHandle;
use crate::security::{Caller, PrivateData};
use crate::state_machine::{is_final, StateMachine};
use berth_proto::v1::{self as pb};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service over one replica's state and accounting store.
#[derive(Clone)]
pub struct AccountingApi {
    raft: RaftHandle,
    acct: Arc<Accounting>,
    private: PrivateData,
}

impl AccountingApi {
    /// The service answering from `raft`'s state and `acct`'s store.
    pub fn new(raft: RaftHandle, acct: Arc<Accounting>) -> AccountingApi {
        AccountingApi {
            raft,
            acct,
            private: PrivateData::default(),
        }
    }

    /// With Slurm's `PrivateData` (`jobs`: sacct shows a user only their own records and
    /// their coordinated accounts'; `usage`: the same for reports), enforced here, not
    /// by the CLI.
    pub fn private(mut self, private: PrivateData) -> AccountingApi {
        self.private = private;
        self
    }

    /// Drops from `records` what `caller` may not see when `private` is on.
    fn keep_visible(&self, caller: &Caller, private: bool, records: &mut Vec<pb::JobRecord>) {
        if !private {
            return;
        }
        let sm = self.raft.state();
        let accounts = sm.accounts();
        records.retain(|r| PrivateData::shows(true, caller, &r.user, &r.account, accounts));
    }

    async fn stored(&self, q: &pb::RecordQuery) -> Result<Vec<pb::JobRecord>, StoreError> {
        let store = self.acct.recorder.store().clone();
        let mut q = q.clone();
        q.limit = 0;
        tokio::task::spawn_blocking(move || store.query(&q))
            .await
            .unwrap_or_else(|e| Err(StoreError::Config(format!("query panicked: {e}"))))
    }

    /// Store ∪ state for `q`, ordered by job id then run, latest run only unless
    /// `q.duplicates`, what `caller` may see when `private`, at most `q.limit`.
    async fn records(
        &self,
        q: &pb::RecordQuery,
        caller: &Caller,
        private: bool,
    ) -> (Vec<pb::JobRecord>, String) {
        let (stored, error) = match self.stored(q).await {
            Ok(r) => (r, String::new()),
            Err(e) => (vec![], e.to_string()),
        };
        let mut merged: BTreeMap<(u64, u32), pb::JobRecord> =
            stored.into_iter().map(|r| ((r.job_id, r.run), r)).collect();
        {
            let sm = self.raft.state();
            for r in live_records(&sm, q) {
                merged.insert((r.job_id, r.run), r);
            }
        }
        let mut out = latest_runs(merged.into_values().collect(), q.duplicates);
        self.keep_visible(caller, private, &mut out);
        if q.limit > 0 {
            out.truncate(q.limit as usize);
        }
        (out, error)
    }
}

/// The records the state holds that match `q`: every run of the jobs it names (all jobs
/// when it names none), the current run whatever its state.
pub fn live_records(sm: &StateMachine, q: &pb::RecordQuery) -> Vec<pb::JobRecord> {
    let index = sm.applied_index();
    // `-j 12` names array 12: its tasks that split off hold their own job ids, so they
    // are found by `array_job_id`, not by id (a running task would be missing otherwise).
    let jobs: Vec<&pb::Job> = if q.job_ids.is_empty() && q.array_job_ids.is_empty() {
        sm.jobs().collect()
    } else {
        let mut named: Vec<&pb::Job> = q.job_ids.iter().filter_map(|id| sm.job(*id)).collect();
        if !q.array_job_ids.is_empty() {
            named.extend(sm.jobs().filter(|j| {
                j.array_job_id != 0
                    && q.array_job_ids.contains(&j.array_job_id)
                    && !q.job_ids.contains(&j.id)
            }));
        }
        named
    };
    let mut out = Vec::new();
    for job in jobs {
        let mut runs = ended_records(sm, job, index);
        if !is_final(job.state()) {
            runs.push(current_record(sm, job, index));
        }
        out.extend(runs.into_iter().filter(|r| matches(q, r)));
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Refuses a window that ends before it starts (Slurm's wording).
fn check_window(start_ms: u64, end_ms: u64) -> Result<(), Status> {
    if end_ms != 0 && end_ms < start_ms {
        return Err(Status::invalid_argument(format!(
            "start time ({}) is after end time ({})",
            start_ms / 1000,
            end_ms / 1000
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::accounting_service_server::AccountingService for AccountingApi {
    async fn query(
        &self,
        req: Request<pb::RecordQuery>,
    ) -> Result<Response<pb::RecordList>, Status> {
        let caller = Caller::of(&req);
        let q = req.into_inner();
        check_window(q.window_start_ms, q.window_end_ms)?;
        let (records, store_error) = self.records(&q, &caller, self.private.jobs).await;
        Ok(Response::new(pb::RecordList {
            records,
            store_error,
        }))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageQuery>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        let caller = Caller::of(&req);
        let u = req.into_inner();
        check_window(u.start_ms, u.end_ms)?;
        let now = now_ms();
        let end = if u.end_ms == 0 { now } else { u.end_ms };
        let u = pb::UsageQuery { end_ms: end, ..u };
        let q = pb::RecordQuery {
            users: u.users.clone(),
            accounts: u.accounts.clone(),
            window_start_ms: u.start_ms,
            window_end_ms: end,
            duplicates: true,
            include_ineligible: true,
            ..Default::default()
        };
        let (records, mut store_error) = self.records(&q, &caller, self.private.usage).await;
        let store = self.acct.recorder.store().clone();
        let events = tokio::task::spawn_blocking(move || store.node_events(u.start_ms, end))
            .await
            .unwrap_or_else(|e| Err(StoreError::Config(e.to_string())));
        let events = events.unwrap_or_else(|e| {
            store_error = e.to_string();
            vec![]
        });
        let (prices, charge, nodes, accounts) = {
            let sm = self.raft.state();
            let a = sm.accounts();
            (
                a.prices.clone(),
                a.charge,
                sm.nodes().cloned().collect::<Vec<_>>(),
                usage::account_list(&a.policy.accounts, &records),
            )
        };
        let (cpu_planned, gpu_planned) = usage::planned(&records, u.start_ms, end, now);
        let rows = usage::summarize(&records, &u, &prices, charge, now)
            .map_err(Status::invalid_argument)?;
        let (cpu, gpu, cpu_down, gpu_down) = usage::capacity(&nodes, &events, u.start_ms, end, now);
        Ok(Response::new(pb::UsageReport {
            rows,
            cpu_capacity_seconds: cpu,
            gpu_capacity_seconds: gpu,
            cpu_down_seconds: cpu_down,
            gpu_down_seconds: gpu_down,
            currency: prices.currency,
            cluster: "berth".into(),
            store_error,
            cpu_planned_seconds: cpu_planned,
            gpu_planned_seconds: gpu_planned,
            accounts,
        }))
    }
}
