//! The kubelet device plugin (API `v1beta1`, `--device-plugin[=DIR]`): on a Kubernetes
//! node, berth-agent advertises its GPUs — whole as `nvidia.com/gpu`, time-slice replicas
//! as `nvidia.com/gpu.shared`, MIG slots as `nvidia.com/mig-<profile>` (see [`resources`])
//! — and makes sure a pod's containers see exactly the GPUs, shares or MIG slices berth
//! granted the pod at bind time.
//!
//! Order of things, per resource: serve `DevicePlugin` on its own socket in `DIR`
//! (`berth-gpu.sock`, `berth-gpu-shared.sock`, `berth-mig-<profile>.sock`), then call
//! kubelet's `Registration.Register` on `DIR/kubelet.sock`, then watch both files once a
//! second: a restarted kubelet deletes every plugin socket and makes a new
//! `kubelet.sock`, so either change restarts the server and registers again.
//!
//! `ListAndWatch` sends the resource's devices (health from the inventory and the agent's
//! NVML health events, NUMA node from the inventory) and again on every health change.
//! `Allocate` asks berthd (`JobService.List`) for the RUNNING pod jobs on this node and
//! answers each container with berth's grant of that resource (see [`grants`] for the
//! matching), as `NVIDIA_VISIBLE_DEVICES`/`CUDA_VISIBLE_DEVICES` and CDI names
//! `nvidia.com/gpu=<UUID>`: the GPU UUIDs for whole GPUs and shares; for MIG, the plugin
//! creates the GPU instance at the placement berthd chose (dynamic MIG, through the
//! agent's GPU backend) and answers its `MIG-…` UUID. Instances it created are recorded
//! in `<state dir>/device-plugin-mig` and destroyed once their pod's job no longer runs.
//!
//! Handed-out job ids are kept in `<state dir>/device-plugin-handed-out` (one id a line,
//! rewritten on every change), so a restarted agent does not give a running pod's GPUs to a
//! new pod; ids whose job is no longer running are dropped at the next `Allocate`.

pub mod grants;
pub mod health_sync;
pub mod resources;

use crate::device_plugin::grants::{Choice, PodGrant};
use crate::device_plugin::resources::Kind;
use crate::gpu::GpuBackend;
use berth_proto::deviceplugin::{
    self as dp, device_plugin_server::DevicePlugin, device_plugin_server::DevicePluginServer,
    registration_client::RegistrationClient,
};
use berth_proto::v1::{self as pb, job_service_client::JobServiceClient};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

/// The file (in the agent's state directory) that remembers handed-out pod jobs.
pub const HANDED_OUT_FILE: &str = "device-plugin-handed-out";
/// The file (in the agent's state directory) that remembers MIG instances the plugin
/// created for pods: `job gpu-uuid gi-id` a line.
pub const MIG_MADE_FILE: &str = "device-plugin-mig";
/// How often MIG instances of ended pods are looked for.
const MIG_CLEANUP_PERIOD: Duration = Duration::from_secs(10);
/// How often the socket files are checked for a kubelet restart.
const WATCH_PERIOD: Duration = Duration::from_secs(1);
/// How long one berthd query may take before the next server is tried.
const BERTHD_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the device plugin refused a request or could not run.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// An `Allocate` without container requests.
    #[error("no container requests")]
    NoContainers,
    /// A container request without devices.
    #[error("container request {index}: no devices requested")]
    NoDevices {
        /// Position of the container request.
        index: usize,
    },
    /// A device ID this plugin never advertised.
    #[error("container request {index}: unknown device {id:?} (not a GPU of this node)")]
    UnknownDevice {
        /// Position of the container request.
        index: usize,
        /// The ID as sent.
        id: String,
    },
    /// The same device twice in one container request.
    #[error("container request {index}: device {id:?} named twice")]
    DuplicateDevice {
        /// Position of the container request.
        index: usize,
        /// The repeated ID.
        id: String,
    },
    /// No berthd answered, so berth's grants are unknown.
    #[error("cannot ask berthd for this node's pod jobs: {0}")]
    Berthd(String),
    /// A MIG request that berth did not place, or whose slice could not be created.
    #[error("{0}")]
    Mig(String),
    /// The plugin directory or socket is unusable.
    #[error("device plugin socket {path}: {source}")]
    Socket {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl From<PluginError> for Status {
    fn from(e: PluginError) -> Status {
        match e {
            PluginError::Berthd(_) => Status::unavailable(e.to_string()),
            PluginError::Mig(_) => Status::failed_precondition(e.to_string()),
            PluginError::Socket { .. } => Status::internal(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

/// How the plugin runs.
#[derive(Debug, Clone)]
pub struct DevicePluginConfig {
    /// kubelet's device-plugin directory (holds `kubelet.sock`).
    pub dir: PathBuf,
    /// This node's name, as berthd knows it (the allocations' `node`).
    pub node_name: String,
    /// berthd addresses, tried in turn.
    pub servers: Vec<String>,
    /// The agent's state directory (for [`HANDED_OUT_FILE`]).
    pub state_dir: PathBuf,
    /// TLS and certificate to reach berthd with (the agent's own; default: plain TCP).
    pub profile: berth_auth::profile::Profile,
}

/// Passes the agent's health reports through, marking every device of each reported GPU
/// `Unhealthy` in each resource's `devices` on the way (which re-sends `ListAndWatch`).
/// Returns the receiver the agent reads instead of `rx`; `None` when there is no watcher.
pub fn tee_health(
    rx: Option<mpsc::UnboundedReceiver<pb::GpuHealth>>,
    devices: Vec<watch::Sender<Vec<dp::Device>>>,
) -> Option<mpsc::UnboundedReceiver<pb::GpuHealth>> {
    // `devices` live until the last ListAndWatch reader is gone: a dropped sender would
    // end kubelet's stream, which kubelet takes for a dead plugin.
    let all_closed = |devices: Vec<watch::Sender<Vec<dp::Device>>>| async move {
        for d in &devices {
            d.closed().await;
        }
    };
    let Some(mut rx) = rx else {
        tokio::spawn(all_closed(devices));
        return None;
    };
    let (tx, out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(h) = rx.recv().await {
            for list in &devices {
                list.send_if_modified(|list| mark_unhealthy(list, &h));
            }
            if tx.send(h).is_err() {
                break;
            }
        }
        all_closed(devices).await;
    });
    Some(out)
}

/// Marks the devices of GPU `h.uuid` `Unhealthy`; whether any changed.
fn mark_unhealthy(list: &mut [dp::Device], h: &pb::GpuHealth) -> bool {
    let mut changed = false;
    for d in list
        .iter_mut()
        .filter(|d| resources::on_gpu(&d.id, &h.uuid) && d.health != dp::UNHEALTHY)
    {
        tracing::warn!(
            device = d.id,
            reason = h.reason,
            "device plugin: device now Unhealthy"
        );
        d.health = dp::UNHEALTHY.into();
        changed = true;
    }
    changed
}

/// Job ids already handed to a container, mirrored in a file.
#[derive(Debug)]
struct HandOut {
    path: PathBuf,
    ids: BTreeSet<u64>,
}

impl HandOut {
    /// Reads the file; a missing file is an empty set, an unreadable line is skipped with
    /// a warning (losing it can only mean a grant matched twice, which the exact-set
    /// match still avoids when kubelet followed the preferred allocation).
    fn load(path: PathBuf) -> HandOut {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut ids = BTreeSet::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.trim().parse() {
                Ok(id) => {
                    ids.insert(id);
                }
                Err(_) => {
                    tracing::warn!(file = %path.display(), line, "bad handed-out job id skipped")
                }
            }
        }
        HandOut { path, ids }
    }

    /// Replaces the set and rewrites the file (write to a temp file, then rename).
    fn store(&mut self, ids: BTreeSet<u64>) {
        if ids == self.ids {
            return;
        }
        self.ids = ids;
        let text: String = self.ids.iter().map(|id| format!("{id}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(file = %self.path.display(), "cannot save handed-out pod jobs: {e}");
        }
    }
}

/// MIG instances the plugin created for pods, mirrored in a file.
#[derive(Debug)]
struct MigMade {
    path: PathBuf,
    /// (job id, GPU UUID, GPU-instance id).
    entries: Vec<(u64, String, u32)>,
}

impl MigMade {
    /// Reads the file; a missing file is empty, a bad line is skipped with a warning (its
    /// instance is then left alone, as the agent leaves any instance it does not own).
    fn load(path: PathBuf) -> MigMade {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut entries = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            match (
                f.as_slice(),
                f.first().map(|j| j.parse::<u64>()),
                f.get(2).map(|g| g.parse::<u32>()),
            ) {
                ([_, gpu, _], Some(Ok(job)), Some(Ok(gi))) => {
                    entries.push((job, gpu.to_string(), gi))
                }
                _ => tracing::warn!(file = %path.display(), line, "bad MIG record skipped"),
            }
        }
        MigMade { path, entries }
    }

    fn store(&self) {
        let text: String = self
            .entries
            .iter()
            .map(|(job, gpu, gi)| format!("{job} {gpu} {gi}\n"))
            .collect();
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(file = %self.path.display(), "cannot save pod MIG instances: {e}");
        }
    }
}

/// What every resource's server shares: the hand-out set (job ids are unique across
/// resources), the GPU backend MIG instances are created through, and their record.
#[derive(Clone)]
pub struct PluginShared {
    handed_out: Arc<Mutex<HandOut>>,
    gpus: Option<Arc<dyn GpuBackend>>,
    mig_made: Arc<Mutex<MigMade>>,
}

impl PluginShared {
    /// Loads the hand-out set and the MIG record from `cfg.state_dir`; MIG slices are
    /// created through `gpus` (none: MIG requests are refused).
    pub fn new(cfg: &DevicePluginConfig, gpus: Option<Arc<dyn GpuBackend>>) -> PluginShared {
        PluginShared {
            handed_out: Arc::new(Mutex::new(HandOut::load(
                cfg.state_dir.join(HANDED_OUT_FILE),
            ))),
            gpus,
            mig_made: Arc::new(Mutex::new(MigMade::load(cfg.state_dir.join(MIG_MADE_FILE)))),
        }
    }

    /// Destroys the recorded MIG instances whose job is not in `running`; an instance
    /// NVML will not destroy yet (a process still on it) is tried again next time.
    async fn clean_mig(&self, running: &BTreeSet<u64>) {
        let Some(gpus) = &self.gpus else { return };
        let mut made = self.mig_made.lock().await;
        let before = made.entries.len();
        made.entries.retain(|(job, gpu, gi)| {
            if running.contains(job) {
                return true;
            }
            match gpus.destroy_mig(gpu, *gi) {
                Ok(()) => {
                    tracing::info!(job, gpu, gi, "destroyed the MIG instance of an ended pod");
                    false
                }
                Err(e) => {
                    tracing::warn!(
                        job,
                        gpu,
                        gi,
                        "cannot destroy an ended pod's MIG instance yet: {e}"
                    );
                    true
                }
            }
        });
        if made.entries.len() != before {
            made.store();
        }
    }

    /// The `MIG-…` devices of `grant`'s slices: created at berthd's placements, or the
    /// ones this plugin created for the same job before (a retried `Allocate`).
    ///
    /// # Errors
    /// [`PluginError::Mig`] when there is no MIG backend, the placement holds an instance
    /// the plugin did not make for this job, or NVML refuses; instances made by this call
    /// stay recorded and are destroyed with the job.
    async fn mig_devices(&self, grant: &PodGrant) -> Result<Vec<String>, PluginError> {
        let gpus = self.gpus.as_ref().ok_or_else(|| {
            PluginError::Mig("this node has no GPU backend to create MIG slices".into())
        })?;
        let existing = gpus
            .mig_devices()
            .map_err(|e| PluginError::Mig(format!("cannot list MIG instances: {e}")))?;
        let mut made = self.mig_made.lock().await;
        let mut uuids = Vec::with_capacity(grant.mig_slices.len());
        for s in &grant.mig_slices {
            let there = existing.iter().find(|d| {
                d.gpu_uuid == s.gpu_uuid
                    && d.start == s.placement_start
                    && d.size == s.placement_size
            });
            if let Some(d) = there {
                let ours = made
                    .entries
                    .iter()
                    .any(|(j, g, gi)| *j == grant.job_id && *g == d.gpu_uuid && *gi == d.gi_id);
                if !ours {
                    return Err(PluginError::Mig(format!(
                        "GPU {}: placement {}:{} of pod {} holds a MIG instance berth did not make for it",
                        s.gpu_uuid, s.placement_start, s.placement_size, grant.pod
                    )));
                }
                uuids.push(d.uuid.clone());
                continue;
            }
            let d = gpus
                .create_mig(s)
                .map_err(|e| PluginError::Mig(e.to_string()))?;
            made.entries
                .push((grant.job_id, d.gpu_uuid.clone(), d.gi_id));
            made.store();
            tracing::info!(
                job = grant.job_id,
                pod = grant.pod,
                mig = d.uuid,
                "created the pod's MIG slice"
            );
            uuids.push(d.uuid);
        }
        Ok(uuids)
    }
}

/// The `DevicePlugin` service of one resource.
#[derive(Clone)]
struct Plugin {
    cfg: Arc<DevicePluginConfig>,
    kind: Kind,
    devices: watch::Receiver<Vec<dp::Device>>,
    /// The hand-out set is held across the berthd query, so concurrent `Allocate`s cannot
    /// pick one grant twice.
    shared: PluginShared,
    /// Ends every open `ListAndWatch` stream when this server generation stops.
    stop: watch::Receiver<bool>,
}

/// This node's running pod jobs, from the first berthd that answers.
async fn running_jobs(cfg: &DevicePluginConfig) -> Result<Vec<pb::Job>, PluginError> {
    let mut last = String::from("no berthd server configured");
    for server in &cfg.servers {
        let ask = async {
            let channel = berth_auth::channel::endpoint(server, &cfg.profile)?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut client = JobServiceClient::new(channel);
            let req = pb::ListJobsRequest {
                states: vec![pb::JobState::Running as i32],
                ..Default::default()
            };
            client
                .list(req)
                .await
                .map(|r| r.into_inner().jobs)
                .map_err(|s| s.message().to_string())
        };
        match tokio::time::timeout(BERTHD_TIMEOUT, ask).await {
            Ok(Ok(jobs)) => return Ok(jobs),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Err(_) => last = format!("{server}: no answer within {BERTHD_TIMEOUT:?}"),
        }
    }
    Err(PluginError::Berthd(last))
}

/// Ids of the running pod jobs on `node`, of any resource.
fn pod_jobs_on(jobs: &[pb::Job], node: &str) -> BTreeSet<u64> {
    jobs.iter()
        .filter(|j| j.spec.as_ref().is_some_and(|s| s.pod.is_some()))
        .filter(|j| j.allocations.first().is_some_and(|a| a.node == node))
        .map(|j| j.id)
        .collect()
}

impl Plugin {
    fn known(&self) -> BTreeSet<String> {
        self.devices.borrow().iter().map(|d| d.id.clone()).collect()
    }

    /// This resource's pod grants on this node, and every running pod job there.
    async fn grants(&self) -> Result<(Vec<PodGrant>, BTreeSet<u64>), PluginError> {
        let jobs = running_jobs(&self.cfg).await?;
        let node = &self.cfg.node_name;
        Ok((
            grants::pod_grants(&jobs, node, &self.kind),
            pod_jobs_on(&jobs, node),
        ))
    }
}

/// The container answer for the devices it sees (`uuids`: GPU or `MIG-…` UUIDs): the
/// visible-devices variables, the CDI names and, for berth's grant, its job.
pub fn container_response(uuids: &[String], job_id: Option<u64>) -> dp::ContainerAllocateResponse {
    let list = uuids.join(",");
    let mut resp = dp::ContainerAllocateResponse {
        cdi_devices: uuids
            .iter()
            .map(|u| dp::CdiDevice {
                name: format!("nvidia.com/gpu={u}"),
            })
            .collect(),
        ..Default::default()
    };
    resp.envs
        .insert("NVIDIA_VISIBLE_DEVICES".into(), list.clone());
    resp.envs.insert("CUDA_VISIBLE_DEVICES".into(), list);
    if let Some(job_id) = job_id {
        resp.annotations
            .insert("berth.io/job-id".into(), job_id.to_string());
    }
    resp
}

fn log_choice(requested: &[String], choice: &Choice) {
    match choice {
        Choice::Berth { job_id, pod, uuids } => {
            let same = requested.iter().collect::<BTreeSet<_>>() == uuids.iter().collect();
            if same {
                tracing::info!(
                    job = job_id,
                    pod,
                    devices = uuids.join(","),
                    "Allocate: berth's devices"
                );
            } else {
                tracing::info!(
                    job = job_id,
                    pod,
                    devices = uuids.join(","),
                    kubelet = requested.join(","),
                    "Allocate: berth's devices differ from kubelet's device IDs; berth's win"
                );
            }
        }
        Choice::Kubelet { uuids } => tracing::warn!(
            gpus = uuids.join(","),
            "Allocate: no berth pod job of {} devices waits on this node; using kubelet's device IDs",
            uuids.len()
        ),
    }
}

type DeviceStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _req: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _req: Request<dp::Empty>,
    ) -> Result<Response<DeviceStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut devices = self.devices.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let list = devices.borrow_and_update().clone();
                let msg = dp::ListAndWatchResponse { devices: list };
                if tx.send(Ok(msg)).await.is_err() {
                    return; // kubelet hung up
                }
                tokio::select! {
                    changed = devices.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        let req = req.into_inner();
        let handed = self.shared.handed_out.lock().await;
        let (grants, _) = self.grants().await?;
        let mut skip = handed.ids.clone();
        drop(handed);
        let mut container_responses = Vec::with_capacity(req.container_requests.len());
        for (index, c) in req.container_requests.iter().enumerate() {
            let size = usize::try_from(c.allocation_size)
                .ok()
                .filter(|&n| n > 0)
                .ok_or(PluginError::NoDevices { index })?;
            let (ids, job) = grants::preferred(
                &self.kind,
                &grants,
                &skip,
                &c.available_device_i_ds,
                &c.must_include_device_i_ds,
                size,
            );
            skip.extend(job);
            container_responses.push(dp::ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(dp::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        req: Request<dp::AllocateRequest>,
    ) -> Result<Response<dp::AllocateResponse>, Status> {
        let requests: Vec<Vec<String>> = req
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| c.devices_ids)
            .collect();
        let known = self.known();
        // Bad input is refused before berthd is asked, and changes nothing.
        if requests.is_empty() {
            return Err(PluginError::NoContainers.into());
        }
        for (index, ids) in requests.iter().enumerate() {
            grants::check_request(index, ids, &known)?;
        }
        let mut handed = self.shared.handed_out.lock().await;
        let (grants, running) = self.grants().await?;
        self.shared.clean_mig(&running).await;
        // Jobs no longer running cannot be chosen again: forget them (keeps the set bounded).
        let mut ids: BTreeSet<u64> = handed.ids.intersection(&running).copied().collect();
        let choices = grants::allocate(&self.kind, &grants, &ids, &requests, &known)?;
        let visible = self.visible_devices(&grants, &choices).await?;
        let mut container_responses = Vec::with_capacity(choices.len());
        for ((requested, choice), uuids) in requests.iter().zip(&choices).zip(&visible) {
            log_choice(requested, choice);
            let job = match choice {
                Choice::Berth { job_id, .. } => {
                    ids.insert(*job_id);
                    Some(*job_id)
                }
                Choice::Kubelet { .. } => None,
            };
            container_responses.push(container_response(uuids, job));
        }
        handed.store(ids);
        Ok(Response::new(dp::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _req: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}

impl Plugin {
    /// What each chosen container sees: the chosen GPU UUIDs, or for a MIG resource the
    /// `MIG-…` devices of berth's slices (created now). A MIG request berth did not place
    /// is refused: an instance berthd does not know of could overlap its next slice.
    async fn visible_devices(
        &self,
        grants: &[PodGrant],
        choices: &[Choice],
    ) -> Result<Vec<Vec<String>>, PluginError> {
        let mut out = Vec::with_capacity(choices.len());
        for choice in choices {
            let uuids = match (&self.kind, choice) {
                (Kind::Mig(p), Choice::Kubelet { .. }) => {
                    return Err(PluginError::Mig(format!(
                        "no pod berth placed waits for {} {p} MIG slice(s) on this node: \
                         MIG pods are scheduled through berth's extender",
                        choice.uuids().len()
                    )))
                }
                (Kind::Mig(_), Choice::Berth { job_id, .. }) => {
                    let grant = grants
                        .iter()
                        .find(|g| g.job_id == *job_id)
                        .expect("chosen from these grants");
                    self.shared.mig_devices(grant).await?
                }
                (_, choice) => choice.uuids().to_vec(),
            };
            out.push(uuids);
        }
        Ok(out)
    }
}

/// Destroys, every few seconds until `shutdown`, the MIG instances of pods whose jobs
/// ended (when berthd answers).
pub async fn clean_mig_loop(
    cfg: Arc<DevicePluginConfig>,
    shared: PluginShared,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
            _ = tokio::time::sleep(MIG_CLEANUP_PERIOD) => {}
        }
        if let Ok(jobs) = running_jobs(&cfg).await {
            shared.clean_mig(&pod_jobs_on(&jobs, &cfg.node_name)).await;
        }
    }
}

/// What the plugin tells kubelet: no PreStartContainer, GetPreferredAllocation available.
fn options() -> dp::DevicePluginOptions {
    dp::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// A gRPC channel to the unix socket `path` (the URI is a placeholder tonic needs).
///
/// # Errors
/// tonic's, when the socket cannot be connected.
pub async fn uds_channel(
    path: PathBuf,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
}

/// Calls kubelet's `Register` on `dir/kubelet.sock` for `kind`.
async fn register(dir: &Path, kind: &Kind) -> Result<(), String> {
    let channel = uds_channel(dir.join(dp::KUBELET_SOCKET_NAME))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let req = dp::RegisterRequest {
        version: dp::VERSION.into(),
        endpoint: kind.socket_name(),
        resource_name: kind.resource_name(),
        options: Some(options()),
    };
    RegistrationClient::new(channel)
        .register(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("kubelet refused: {}", s.message()))
}

/// (device, inode, ctime s, ctime ns) of a file: a changed one means the file was
/// replaced (the ctime catches a new file that reuses the old inode number).
type FileId = (u64, u64, i64, i64);

/// The [`FileId`] of `path`, `None` when it does not exist.
fn identity(path: &Path) -> Option<FileId> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Checks that `dir` is a directory the plugin can use, before anything starts.
///
/// # Errors
/// [`PluginError::Socket`] naming `dir`.
pub fn check_dir(dir: &Path) -> Result<(), PluginError> {
    let meta = std::fs::metadata(dir).map_err(|source| PluginError::Socket {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PluginError::Socket {
            path: dir.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    Ok(())
}

/// Why one server generation ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// The agent is stopping.
    Shutdown,
    /// kubelet restarted (or our socket went away): serve and register again.
    Restart,
}

/// Serves the plugin and registers it with kubelet until `shutdown` becomes true; after a
/// kubelet restart, serves again on a fresh socket and registers again. Removes the
/// socket on the way out.
///
/// # Errors
/// [`PluginError::Socket`] when the socket cannot be made.
pub async fn run(
    cfg: Arc<DevicePluginConfig>,
    kind: Kind,
    devices: watch::Receiver<Vec<dp::Device>>,
    shared: PluginShared,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PluginError> {
    let sock = cfg.dir.join(kind.socket_name());
    let resource = kind.resource_name();
    loop {
        let (stop_tx, stop_rx) = watch::channel(false);
        let plugin = Plugin {
            cfg: cfg.clone(),
            kind: kind.clone(),
            devices: devices.clone(),
            shared: shared.clone(),
            stop: stop_rx.clone(),
        };
        let (server, sock_id) = serve(&sock, plugin, stop_rx)?;
        tracing::info!(socket = %sock.display(), "device plugin serving {resource}");
        let exit = register_and_watch(&cfg.dir, &kind, &sock, sock_id, &mut shutdown).await;
        let _ = stop_tx.send(true);
        // Open streams end on `stop`; do not wait forever on a client that keeps a
        // connection open.
        let abort = server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .is_err()
        {
            abort.abort();
        }
        if exit == Exit::Shutdown {
            let _ = std::fs::remove_file(&sock);
            return Ok(());
        }
        tracing::warn!(
            "kubelet restarted or removed {}: serving and registering again",
            sock.display()
        );
    }
}

/// Binds `sock` (replacing a stale file) and serves `plugin` on it until `stop`.
/// Returns the server task and the socket file's identity.
fn serve(
    sock: &Path,
    plugin: Plugin,
    mut stop: watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, Option<FileId>), PluginError> {
    let err = |source| PluginError::Socket {
        path: sock.to_path_buf(),
        source,
    };
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = tokio::net::UnixListener::bind(sock).map_err(err)?;
    let id = identity(sock);
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(plugin))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                let _ = stop.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("device plugin server: {e}");
        }
    });
    Ok((task, id))
}

/// Registers (retrying once a second while kubelet is not there or refuses), then
/// watches the socket files until one of them changes or `shutdown`.
async fn register_and_watch(
    dir: &Path,
    kind: &Kind,
    sock: &Path,
    sock_id: Option<FileId>,
    shutdown: &mut watch::Receiver<bool>,
) -> Exit {
    let kubelet = dir.join(dp::KUBELET_SOCKET_NAME);
    let mut failures = 0u64;
    let mut registered: Option<FileId> = None;
    loop {
        if *shutdown.borrow() {
            return Exit::Shutdown;
        }
        if identity(sock) != sock_id {
            return Exit::Restart;
        }
        match registered {
            Some(id) if identity(&kubelet) != Some(id) => return Exit::Restart,
            Some(_) => {}
            None => {
                if let Some(id) = identity(&kubelet) {
                    match register(dir, kind).await {
                        Ok(()) => {
                            tracing::info!(kubelet = %kubelet.display(), "registered {} with kubelet", kind.resource_name());
                            registered = Some(id);
                        }
                        Err(e) => {
                            // Every 30th failure is logged, so a missing kubelet is not a flood.
                            if failures.is_multiple_of(30) {
                                tracing::warn!(kubelet = %kubelet.display(), "device plugin registration: {e}");
                            }
                            failures += 1;
                        }
                    }
                }
            }
        }
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() { return Exit::Shutdown },
            _ = tokio::time::sleep(WATCH_PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_report_marks_every_device_of_that_gpu() {
        let dev = |id: &str| dp::Device {
            id: id.into(),
            health: dp::HEALTHY.into(),
            topology: None,
        };
        let mut list = vec![dev("GPU-a::0"), dev("GPU-a::1"), dev("GPU-ab::0")];
        let h = pb::GpuHealth {
            uuid: "GPU-a".into(),
            reason: "XID 79".into(),
        };
        assert!(mark_unhealthy(&mut list, &h));
        let health: Vec<&str> = list.iter().map(|d| d.health.as_str()).collect();
        assert_eq!(health, ["Unhealthy", "Unhealthy", "Healthy"]);
        assert!(!mark_unhealthy(&mut list, &h), "nothing left to change");
    }

    #[test]
    fn mig_records_survive_a_reload_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MIG_MADE_FILE);
        let mut m = MigMade::load(path.clone());
        assert!(m.entries.is_empty());
        m.entries.push((4, "GPU-a".into(), 2));
        m.store();
        assert_eq!(
            MigMade::load(path.clone()).entries,
            [(4, "GPU-a".to_string(), 2)]
        );
        std::fs::write(&path, "4 GPU-a 2\nx GPU-b 1\n5 GPU-c\n\n6 GPU-d 3\n").unwrap();
        assert_eq!(
            MigMade::load(path).entries,
            [(4, "GPU-a".to_string(), 2), (6, "GPU-d".to_string(), 3)]
        );
    }

    #[test]
    fn a_berth_choice_sets_both_variables_cdi_names_and_the_job_annotation() {
        let r = container_response(&["GPU-a".into(), "GPU-b".into()], Some(7));
        assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert_eq!(r.envs["CUDA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        let cdi: Vec<&str> = r.cdi_devices.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cdi, ["nvidia.com/gpu=GPU-a", "nvidia.com/gpu=GPU-b"]);
        assert_eq!(r.annotations["berth.io/job-id"], "7");
        let fallback = container_response(&["GPU-c".into()], None);
        assert!(fallback.annotations.is_empty());
        assert_eq!(fallback.envs["CUDA_VISIBLE_DEVICES"], "GPU-c");
    }

    #[test]
    fn handed_out_jobs_survive_a_reload_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HANDED_OUT_FILE);
        let mut h = HandOut::load(path.clone());
        assert!(h.ids.is_empty());
        h.store([3, 9].into_iter().collect());
        assert_eq!(
            HandOut::load(path.clone()).ids,
            [3, 9].into_iter().collect()
        );
        std::fs::write(&path, "4\nnot-a-number\n\n12\n").unwrap();
        assert_eq!(HandOut::load(path).ids, [4, 12].into_iter().collect());
    }

    #[test]
    fn bad_input_maps_to_invalid_argument_and_no_berthd_to_unavailable() {
        let bad: Status = PluginError::NoDevices { index: 0 }.into();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        let down: Status = PluginError::Berthd("x".into()).into();
        assert_eq!(down.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn check_dir_refuses_a_missing_dir_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_dir(dir.path()).is_ok());
        let missing = dir.path().join("nope");
        assert!(check_dir(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope"));
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(check_dir(&file)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }
}
