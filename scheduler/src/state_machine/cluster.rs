//! The cluster description in the state machine: `SetCluster` (described nodes exist
//! before their agents connect, an agent whose inventory disagrees is drained), the submit
//! checks a description and the cluster's licenses, reservations and node names make
//! (Slurm's messages), `NodeDrain` (`scontrol update NodeName=… State=DRAIN|RESUME`) and
//! `ReservationChange` (`scontrol create|update|delete reservation`).
//!
//! Without a description everything here is inert: nodes come from agents, partitions
//! from their `--partition`, and a job is judged against the registered nodes as before.

use super::{changed, Applied, Outcome, StateMachine};
use crate::cluster::{ClusterDescription, Partition};
use berth_policies as policies;
use berth_proto::v1::{self as pb, JobState, NodeState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Who drains a node automatically (`sinfo -R`'s USER), as Slurm's slurmctld does.
pub const AUTO_DRAIN_USER: &str = "slurm";

/// The reason a registered node that the description does not name is drained with.
const NOT_DESCRIBED: &str = "node not in the cluster description";

/// Slurm's refusals.
const INVALID_PARTITION: &str = "Invalid partition name specified";
const INVALID_ACCOUNT: &str = "Invalid account or account/partition combination specified";
const INVALID_QOS: &str = "Invalid qos specification";
const INVALID_LICENSE: &str = "Invalid license specification";
const INVALID_FEATURE: &str = "Invalid feature specification";
const INVALID_NODE: &str = "Invalid node name specified";
const INVALID_RESERVATION: &str = "Requested reservation is invalid";
const DENIED_RESERVATION: &str = "Access denied to requested reservation";

/// What the scheduling pass needs beyond the pending jobs themselves.
#[derive(Debug, Default)]
pub struct PassInput {
    /// Jobs to place, annotated with reservations and partition tiers.
    pub pending: Vec<policies::PendingJob>,
    /// Pending jobs that wait before placement, with Slurm's reason (`BeginTime`,
    /// `PartitionTimeLimit`, `PartitionNodeLimit`, `Reservation`).
    pub waits: Vec<(u64, &'static str)>,
    /// Pending jobs that can no longer end before their `--deadline`.
    pub expired: Vec<u64>,
    /// Maps the synthetic ids of array task views in `pending` back to (array, index).
    pub views: super::array::TaskViews,
}

impl StateMachine {
    /// The cluster description in force, if one is installed.
    pub fn cluster(&self) -> Option<&ClusterDescription> {
        self.cluster.as_deref()
    }

    /// The description's text (empty: none).
    pub fn cluster_toml(&self) -> &str {
        &self.state.cluster_toml
    }

    /// Every reservation, by name.
    pub fn reservations(&self) -> impl Iterator<Item = &pb::ClusterReservation> {
        self.state.reservations.values()
    }

    /// The description's default partition, if it has one.
    pub fn default_partition(&self) -> Option<&str> {
        self.cluster()?.default_partition()
    }

    /// Each cluster license with its total and the count running jobs hold.
    pub fn license_usage(&self) -> Vec<pb::LicenseUsage> {
        let held = self.licenses_held();
        self.cluster()
            .map(|c| &c.licenses)
            .into_iter()
            .flatten()
            .map(|(name, total)| pb::LicenseUsage {
                name: name.clone(),
                total: *total,
                used: held.get(name).copied().unwrap_or(0),
            })
            .collect()
    }

    fn licenses_held(&self) -> BTreeMap<String, u32> {
        let mut held = BTreeMap::new();
        let running = self
            .state
            .jobs
            .values()
            .filter(|j| j.state() == JobState::Running);
        for l in running.flat_map(|j| j.spec.iter().flat_map(|s| &s.licenses)) {
            *held.entry(l.name.clone()).or_default() += l.count;
        }
        held
    }

    /// The licenses running jobs leave free (for the pass).
    pub(super) fn licenses_free(&self) -> BTreeMap<String, u32> {
        self.license_usage()
            .into_iter()
            .map(|l| (l.name, l.total.saturating_sub(l.used)))
            .collect()
    }

    /// Installs (or, with empty text, removes) the cluster description.
    pub(super) fn set_cluster(&mut self, toml: String, now: u64) -> Applied {
        let cluster = if toml.trim().is_empty() {
            None
        } else {
            match ClusterDescription::parse(&toml) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => return (Outcome::Rejected(e.to_string()), vec![]),
            }
        };
        self.state.cluster_toml = if cluster.is_some() {
            toml
        } else {
            String::new()
        };
        self.cluster = cluster;
        self.topology = super::TopologyCache::default();
        let mut effects = Vec::new();
        let names: Vec<String> = self.state.nodes.keys().cloned().collect();
        for name in names {
            if self.redescribe(&name, now) {
                effects.push(super::Effect::NodeChanged(name));
            }
        }
        let missing: Vec<(String, pb::NodeDescription)> = self
            .cluster()
            .map(|c| &c.nodes)
            .into_iter()
            .flatten()
            .filter(|(n, _)| !self.state.nodes.contains_key(*n))
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        for (name, desc) in missing {
            self.state
                .nodes
                .insert(name.clone(), described_node(&name, desc));
            self.recount(&name);
            effects.push(super::Effect::NodeChanged(name));
        }
        (Outcome::Done, effects)
    }

    /// Brings node `name` in line with the description in force; whether it changed. A
    /// node that never registered and is no longer described goes (when nothing runs
    /// there).
    fn redescribe(&mut self, name: &str, now: u64) -> bool {
        let desc = self.cluster().and_then(|c| c.nodes.get(name)).cloned();
        let node = self.state.nodes.get(name).expect("listed");
        let registered = node.registered_time_ms > 0;
        if desc.is_none() && !registered && !self.runs_jobs(name) {
            self.state.nodes.remove(name);
            self.recount(name);
            return true;
        }
        let drain = match &desc {
            Some(d) if registered => mismatch(node_inventory(node), d),
            Some(_) => None,
            None if self.cluster.is_some() => Some(NOT_DESCRIBED.to_string()),
            None => None,
        };
        let node = self.state.nodes.get_mut(name).expect("listed");
        if let (Some(d), Some(inv)) = (&desc, node.inventory.as_mut()) {
            inv.partition = d.partitions.join(",");
            if !registered {
                inv.cpus = d.cpus;
                inv.memory_mb = d.memory_mb;
            }
        }
        node.described = desc;
        set_auto_drain(node, drain, now);
        self.recount(name);
        true
    }

    fn runs_jobs(&self, node: &str) -> bool {
        self.state
            .jobs
            .values()
            .any(|j| j.state() == JobState::Running && j.allocations.iter().any(|a| a.node == node))
    }

    /// With a description: refuses an agent the description does not name (Slurm's
    /// "Invalid node name specified"), sets the inventory's partitions to the described
    /// ones, and says why the node must be drained when its hardware disagrees.
    ///
    /// # Errors
    /// The refusal; nothing changes.
    pub(super) fn describe_registration(
        &self,
        inv: &mut pb::NodeInventory,
    ) -> Result<Option<String>, String> {
        let Some(cluster) = self.cluster() else {
            return Ok(None);
        };
        let Some(desc) = cluster.nodes.get(&inv.name) else {
            return Err(format!(
                "{INVALID_NODE}: {} is not in the cluster description",
                inv.name
            ));
        };
        inv.partition = desc.partitions.join(",");
        Ok(mismatch(inv, desc))
    }

    /// After a registration: the node keeps its description and is drained (or freed of
    /// an automatic drain) by what the agent reported.
    pub(super) fn after_registration(&mut self, name: &str, drain: Option<String>, now: u64) {
        let desc = self.cluster().and_then(|c| c.nodes.get(name)).cloned();
        if let Some(node) = self.state.nodes.get_mut(name) {
            node.described = desc;
            set_auto_drain(node, drain, now);
        }
        self.recount(name);
    }

    /// What a submit must pass beyond its own consistency: the partition and its allowed
    /// accounts and QOS, licenses, the reservation, features and node names. Applies the
    /// partition's DefaultTime (or MaxTime) to a job that gave no `--time`.
    ///
    /// # Errors
    /// Slurm's message for the first problem.
    pub(super) fn check_submit(
        &self,
        spec: &mut pb::JobSpec,
        account: &str,
        qos: &str,
    ) -> Result<(), String> {
        if let Some(c) = self.cluster() {
            let p = c
                .partition(&spec.partition)
                .ok_or_else(|| format!("{INVALID_PARTITION} ({})", spec.partition))?;
            check_partition_access(p, account, qos)?;
            if !spec.time_limit_set {
                spec.time_limit_secs = p.default_time_secs.or(p.max_time_secs).unwrap_or(0);
            }
        }
        self.check_licenses(&spec.licenses)?;
        self.check_reservation(spec, account)?;
        if !spec.constraint.is_empty() {
            let c = policies::constraint::Constraint::parse(&spec.constraint)
                .map_err(|e| e.to_string())?;
            let known = self.features_known();
            if let Some(f) = c.features().into_iter().find(|f| !known.contains(*f)) {
                return Err(format!("{INVALID_FEATURE} (no node has feature {f:?})"));
            }
        }
        for n in spec.req_nodes.iter().chain(&spec.exc_nodes) {
            if !self.state.nodes.contains_key(n) {
                return Err(format!("{INVALID_NODE} ({n})"));
            }
        }
        Ok(())
    }

    fn check_licenses(&self, asked: &[pb::LicenseRequest]) -> Result<(), String> {
        let have = self.cluster().map(|c| &c.licenses);
        for l in asked {
            match have.and_then(|h| h.get(&l.name)) {
                Some(total) if l.count <= *total => {}
                Some(total) => {
                    return Err(format!(
                        "{INVALID_LICENSE} ({}:{} asked, the cluster has {total})",
                        l.name, l.count
                    ))
                }
                None => {
                    return Err(format!(
                        "{INVALID_LICENSE} (the cluster has no license {:?})",
                        l.name
                    ))
                }
            }
        }
        Ok(())
    }

    fn check_reservation(&self, spec: &pb::JobSpec, account: &str) -> Result<(), String> {
        if spec.reservation.is_empty() {
            return Ok(());
        }
        let r = self
            .state
            .reservations
            .get(&spec.reservation)
            .ok_or_else(|| format!("{INVALID_RESERVATION} ({})", spec.reservation))?;
        if !may_use(r, &spec.user, account) {
            return Err(format!(
                "{DENIED_RESERVATION} ({} is for users {} accounts {})",
                r.name,
                list_or_none(&r.users),
                list_or_none(&r.accounts)
            ));
        }
        Ok(())
    }

    /// Every feature a node has (described nodes' features).
    fn features_known(&self) -> BTreeSet<&str> {
        self.state
            .nodes
            .values()
            .flat_map(|n| n.described.iter().flat_map(|d| &d.features))
            .map(String::as_str)
            .collect()
    }

    /// The cluster as it could be at best, for the submit-time check: every node up and
    /// idle, with its described shape when it has not registered (or is drained for
    /// reporting less), else what its agent reported.
    pub(super) fn capacity_view(&self) -> policies::ClusterSnapshot {
        let mut snap = self.cluster_view();
        for view in &mut snap.nodes {
            let Some(node) = self.state.nodes.get(&view.name) else {
                continue;
            };
            let Some(d) = &node.described else { continue };
            if node.registered_time_ms == 0 || node.drain {
                *view = described_view(&view.name, d);
            }
        }
        snap
    }

    /// The pending jobs for a pass at `now_ms`, and those that wait before placement.
    pub fn pending_at(&self, now_ms: u64) -> PassInput {
        let (pending, views) = self.pending_with_tasks();
        let mut input = PassInput::default();
        let reserved = ReservedSets::new(self, now_ms);
        for mut p in pending {
            // An array's task views share its record (and so its spec and its verdict).
            let record = views.record(p.id);
            // Several views of one array meet the same verdict: record it once.
            let first_view = record == p.id
                || (!input.expired.contains(&record)
                    && !input.waits.iter().any(|(id, _)| *id == record));
            let job = &self.state.jobs[&record];
            let spec = job.spec.as_ref().expect("jobs have specs");
            if spec.deadline_ms > 0 && cannot_meet(spec, now_ms) {
                if first_view {
                    input.expired.push(record);
                }
                continue;
            }
            if let Some(reason) = self.wait_reason(spec, now_ms) {
                if first_view {
                    input.waits.push((record, reason));
                }
                continue;
            }
            if let Some(part) = self.cluster().and_then(|c| c.partition(&spec.partition)) {
                p.priority_tier = part.priority_tier;
            }
            match self.state.reservations.get(&spec.reservation) {
                Some(r) => p.nodes_only = Some(Arc::new(r.nodes.iter().cloned().collect())),
                None => p.nodes_reserved = reserved.for_job(now_ms, spec.time_limit_secs),
            }
            input.pending.push(p);
        }
        input.views = views;
        input
    }

    /// Why a pending job may not be placed yet, Slurm's reason; `None` when it may.
    fn wait_reason(&self, spec: &pb::JobSpec, now_ms: u64) -> Option<&'static str> {
        if spec.begin_time_ms > now_ms {
            return Some("BeginTime");
        }
        if !spec.reservation.is_empty() {
            let active = self
                .state
                .reservations
                .get(&spec.reservation)
                .is_some_and(|r| r.start_ms <= now_ms && now_ms < r.end_ms);
            if !active {
                return Some("Reservation");
            }
        }
        let p = self.cluster()?.partition(&spec.partition)?;
        let over_time = p
            .max_time_secs
            .is_some_and(|max| spec.time_limit_secs == 0 || spec.time_limit_secs > max);
        if over_time {
            return Some("PartitionTimeLimit");
        }
        let nodes = spec.nodes.max(1);
        if p.max_nodes.is_some_and(|m| nodes > m) || nodes as usize > p.nodes.len() {
            return Some("PartitionNodeLimit");
        }
        None
    }

    /// `scontrol update NodeName=… State=DRAIN Reason=…` or `State=RESUME`.
    pub(super) fn drain_node(&mut self, c: &pb::NodeDrain, now: u64) -> Applied {
        let Some(node) = self.state.nodes.get_mut(&c.node) else {
            return (
                Outcome::Rejected(format!("{INVALID_NODE} ({})", c.node)),
                vec![],
            );
        };
        if c.drain && c.reason.trim().is_empty() {
            return (
                Outcome::Rejected("You must specify a reason when DRAINING a node".into()),
                vec![],
            );
        }
        node.drain = c.drain;
        node.reason = if c.drain {
            c.reason.clone()
        } else {
            String::new()
        };
        node.reason_user = if c.drain {
            c.user.clone()
        } else {
            String::new()
        };
        node.reason_time_ms = if c.drain { now } else { 0 };
        self.recount(&c.node);
        (
            Outcome::Done,
            vec![super::Effect::NodeChanged(c.node.clone())],
        )
    }

    /// `scontrol create|update|delete reservation`.
    pub(super) fn change_reservation(&mut self, c: pb::ReservationChange, now: u64) -> Applied {
        let r = c.reservation.clone().unwrap_or_default();
        let result = match c.op.as_str() {
            "create" => self.create_reservation(r, c.duration_secs, now),
            "update" => self.update_reservation(r, &c.given, c.duration_secs, now),
            "delete" => self.delete_reservation(&r.name),
            other => Err(format!("unknown reservation operation {other:?}")),
        };
        match result {
            Ok(name) => {
                let waiting: Vec<u64> = self
                    .state
                    .jobs
                    .values()
                    .filter(|j| j.spec.as_ref().is_some_and(|s| s.reservation == name))
                    .map(|j| j.id)
                    .collect();
                let effects = waiting.into_iter().map(changed).collect();
                (Outcome::Done, effects)
            }
            Err(why) => (Outcome::Rejected(why), vec![]),
        }
    }

    fn create_reservation(
        &mut self,
        mut r: pb::ClusterReservation,
        duration_secs: u64,
        now: u64,
    ) -> Result<String, String> {
        if r.name.is_empty() {
            let n = self.state.next_reservation_id.max(1);
            self.state.next_reservation_id = n + 1;
            let who = if r.creator.is_empty() {
                "root"
            } else {
                &r.creator
            };
            r.name = format!("{who}_{n}");
        }
        if self.state.reservations.contains_key(&r.name) {
            return Err(format!("Reservation {} already exists", r.name));
        }
        if r.start_ms == 0 {
            r.start_ms = now;
        }
        if duration_secs > 0 {
            r.end_ms = r
                .start_ms
                .saturating_add(duration_secs.saturating_mul(1000));
        }
        self.check_reservation_fields(&r)?;
        let name = r.name.clone();
        self.state.reservations.insert(name.clone(), r);
        Ok(name)
    }

    fn update_reservation(
        &mut self,
        new: pb::ClusterReservation,
        given: &[String],
        duration_secs: u64,
        now: u64,
    ) -> Result<String, String> {
        let mut r = self
            .state
            .reservations
            .get(&new.name)
            .cloned()
            .ok_or_else(|| INVALID_RESERVATION.to_string())?;
        let has = |k: &str| given.iter().any(|g| g.eq_ignore_ascii_case(k));
        if has("StartTime") {
            let length = r.end_ms.saturating_sub(r.start_ms);
            r.start_ms = if new.start_ms == 0 { now } else { new.start_ms };
            r.end_ms = r.start_ms.saturating_add(length);
        }
        if has("EndTime") {
            r.end_ms = new.end_ms;
        }
        if has("Duration") {
            r.end_ms = r
                .start_ms
                .saturating_add(duration_secs.saturating_mul(1000));
        }
        if has("Nodes") {
            r.nodes = new.nodes;
        }
        if has("Users") {
            r.users = new.users;
        }
        if has("Accounts") {
            r.accounts = new.accounts;
        }
        if has("Flags") {
            r.flags = new.flags;
        }
        self.check_reservation_fields(&r)?;
        let name = r.name.clone();
        self.state.reservations.insert(name.clone(), r);
        Ok(name)
    }

    fn delete_reservation(&mut self, name: &str) -> Result<String, String> {
        if !self.state.reservations.contains_key(name) {
            return Err(INVALID_RESERVATION.into());
        }
        let busy = self.state.jobs.values().any(|j| {
            j.state() == JobState::Running && j.spec.as_ref().is_some_and(|s| s.reservation == name)
        });
        if busy {
            return Err("Reservation is busy (a job runs in it)".into());
        }
        self.state.reservations.remove(name);
        Ok(name.to_string())
    }

    /// Slurm's rules for a reservation: users or accounts, nodes that exist, an end after
    /// the start, no node in another reservation at the same time.
    fn check_reservation_fields(&self, r: &pb::ClusterReservation) -> Result<(), String> {
        if r.users.is_empty() && r.accounts.is_empty() {
            return Err("Either Users/Groups and/or Accounts must be specified".into());
        }
        if r.nodes.is_empty() {
            return Err("Nodes must be specified".into());
        }
        if let Some(n) = r.nodes.iter().find(|n| !self.state.nodes.contains_key(*n)) {
            return Err(format!("{INVALID_NODE} ({n})"));
        }
        if r.end_ms <= r.start_ms {
            return Err("Invalid reservation: the end is not after the start".into());
        }
        let overlapping = self.state.reservations.values().find(|o| {
            o.name != r.name
                && o.start_ms < r.end_ms
                && r.start_ms < o.end_ms
                && o.nodes.iter().any(|n| r.nodes.contains(n))
        });
        if let Some(o) = overlapping {
            return Err(format!(
                "Requested nodes are busy (reservation {} holds some of them then)",
                o.name
            ));
        }
        Ok(())
    }
}

/// A job may use reservation `r`: its user or account is listed.
fn may_use(r: &pb::ClusterReservation, user: &str, account: &str) -> bool {
    r.users.iter().any(|u| u == user) || r.accounts.iter().any(|a| a == account)
}

fn list_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "(null)".into()
    } else {
        list.join(",")
    }
}

/// A partition's AllowAccounts and AllowQos.
fn check_partition_access(p: &Partition, account: &str, qos: &str) -> Result<(), String> {
    if let Some(allowed) = &p.allow_accounts {
        if !allowed.iter().any(|a| a == account) {
            return Err(format!(
                "{INVALID_ACCOUNT} (partition {} allows accounts {})",
                p.name,
                allowed.join(",")
            ));
        }
    }
    if let Some(allowed) = &p.allow_qos {
        if !allowed.iter().any(|q| q == qos) {
            return Err(format!(
                "{INVALID_QOS} (partition {} allows QOS {})",
                p.name,
                allowed.join(",")
            ));
        }
    }
    Ok(())
}

/// Whether a pending job can no longer end by its deadline (a job without a time limit
/// only once the deadline has passed).
fn cannot_meet(spec: &pb::JobSpec, now_ms: u64) -> bool {
    let end = now_ms.saturating_add(spec.time_limit_secs.saturating_mul(1000));
    now_ms >= spec.deadline_ms || (spec.time_limit_secs > 0 && end > spec.deadline_ms)
}

/// The nodes reserved for others, per job end: active reservations always, future ones
/// when the job would still run at their start. Jobs share one set per count of future
/// reservations they overlap (at most one set per reservation).
struct ReservedSets {
    active: BTreeSet<String>,
    /// Future reservations by start.
    future: Vec<(u64, Vec<String>)>,
    built: std::cell::RefCell<BTreeMap<usize, Option<Arc<BTreeSet<String>>>>>,
}

impl ReservedSets {
    fn new(sm: &StateMachine, now_ms: u64) -> ReservedSets {
        let mut active = BTreeSet::new();
        let mut future = Vec::new();
        for r in sm.state.reservations.values().filter(|r| r.end_ms > now_ms) {
            if r.start_ms <= now_ms {
                active.extend(r.nodes.iter().cloned());
            } else {
                future.push((r.start_ms, r.nodes.clone()));
            }
        }
        future.sort();
        ReservedSets {
            active,
            future,
            built: Default::default(),
        }
    }

    fn for_job(&self, now_ms: u64, limit_secs: u64) -> Option<Arc<BTreeSet<String>>> {
        let end = match limit_secs {
            0 => u64::MAX,
            s => now_ms.saturating_add(s.saturating_mul(1000)),
        };
        let k = self.future.partition_point(|(start, _)| *start < end);
        self.built
            .borrow_mut()
            .entry(k)
            .or_insert_with(|| {
                let mut set = self.active.clone();
                for (_, nodes) in &self.future[..k] {
                    set.extend(nodes.iter().cloned());
                }
                (!set.is_empty()).then(|| Arc::new(set))
            })
            .clone()
    }
}

/// The reported inventory of a node record (an empty one when it has none).
fn node_inventory(node: &pb::Node) -> &pb::NodeInventory {
    static EMPTY: std::sync::OnceLock<pb::NodeInventory> = std::sync::OnceLock::new();
    node.inventory
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

/// Why an agent's inventory disagrees with its description, in Slurm's words (fewer GPUs,
/// GPUs of another type, fewer CPUs, less memory); `None` when it has at least what is
/// described.
pub fn mismatch(inv: &pb::NodeInventory, d: &pb::NodeDescription) -> Option<String> {
    let mut why = Vec::new();
    if d.gpus > 0 {
        let typed = inv
            .gpus
            .iter()
            .filter(|g| g.gres_type == d.gpu_type)
            .count() as u32;
        let all = inv.gpus.len() as u32;
        if all < d.gpus {
            why.push(format!(
                "gres/gpu count reported lower than configured ({all} < {})",
                d.gpus
            ));
        } else if typed < d.gpus {
            why.push(format!(
                "gres/gpu:{} count reported lower than configured ({typed} < {})",
                d.gpu_type, d.gpus
            ));
        }
    }
    if inv.cpus < d.cpus {
        why.push(format!(
            "Low CPUs (reported:{} < configured:{})",
            inv.cpus, d.cpus
        ));
    }
    if inv.memory_mb < d.memory_mb {
        why.push(format!(
            "Low RealMemory (reported:{} < 100.00% of configured:{})",
            inv.memory_mb, d.memory_mb
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Drains `node` for `reason` (set by berth itself), or lifts a drain berth set when the
/// reason is gone; an admin's drain stays until the admin resumes it.
fn set_auto_drain(node: &mut pb::Node, reason: Option<String>, now: u64) {
    let auto = node.drain && node.reason_user == AUTO_DRAIN_USER;
    match reason {
        Some(r) if !node.drain || auto => {
            if !(auto && node.reason == r) {
                node.reason_time_ms = now;
            }
            node.drain = true;
            node.reason = r;
            node.reason_user = AUTO_DRAIN_USER.into();
        }
        None if auto => {
            node.drain = false;
            node.reason.clear();
            node.reason_user.clear();
            node.reason_time_ms = 0;
        }
        _ => {}
    }
}

/// The record of a described node no agent has registered yet: Slurm's UNKNOWN state.
fn described_node(name: &str, d: pb::NodeDescription) -> pb::Node {
    pb::Node {
        inventory: Some(pb::NodeInventory {
            name: name.to_string(),
            partition: d.partitions.join(","),
            cpus: d.cpus,
            memory_mb: d.memory_mb,
            ..Default::default()
        }),
        state: NodeState::Unspecified as i32,
        described: Some(d),
        ..Default::default()
    }
}

/// A described node as placement would see it idle: its described CPUs, memory, GPUs
/// (placeholders named after the node, never granted: only the submit-time check sees
/// them), features and weight.
pub fn described_view(name: &str, d: &pb::NodeDescription) -> policies::NodeView {
    policies::NodeView {
        name: name.to_string(),
        partition: d.partitions.join(","),
        up: true,
        cpus_total: d.cpus,
        cpus_free: d.cpus,
        memory_total_mb: d.memory_mb,
        memory_free_mb: d.memory_mb,
        gpus: (0..d.gpus)
            .map(|i| policies::GpuView {
                uuid: format!("described:{name}:{i}"),
                index: i,
                gres_type: d.gpu_type.clone(),
                free: true,
                ..Default::default()
            })
            .collect(),
        features: d.features.clone().into(),
        weight: d.weight,
    }
}

impl StateMachine {
    /// The policy configuration a pass runs with: the accounts file's, with the packing of
    /// the description's partitions that name one (the description wins over the
    /// accounts file's `[[partition]]` for the same partition).
    pub fn policy_config(&self) -> std::borrow::Cow<'_, policies::PolicyConfig> {
        let base = &self.accounts.policy;
        let packed: Vec<(&str, policies::packing::Packing)> = self
            .cluster()
            .map(|c| &c.partitions)
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p.name.as_str(), p.packing?)))
            .filter(|(name, k)| base.packing.get(*name) != Some(k))
            .collect();
        if packed.is_empty() {
            return std::borrow::Cow::Borrowed(base);
        }
        let mut cfg = base.clone();
        for (name, k) in packed {
            cfg.packing.insert(name.to_string(), k);
        }
        std::borrow::Cow::Owned(cfg)
    }
}
