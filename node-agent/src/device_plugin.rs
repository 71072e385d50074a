//! The kubelet device plugin (API `v1beta1`, `--device-plugin[=DIR]`): on a Kubernetes
//! node, berth-agent advertises its whole GPUs as `nvidia.com/gpu` and makes sure a pod's
//! containers see exactly the GPUs berth granted the pod at bind time.
//!
//! Order of things: serve `DevicePlugin` on `DIR/berth-gpu.sock`, then call kubelet's
//! `Registration.Register` on `DIR/kubelet.sock`, then watch both files once a second: a
//! restarted kubelet deletes every plugin socket and makes a new `kubelet.sock`, so either
//! change restarts the server and registers again.
//!
//! `ListAndWatch` sends one device per whole GPU (ID = UUID, health from the inventory and
//! the agent's NVML health events, NUMA node from the inventory) and again on every health
//! change. `Allocate` asks berthd (`JobService.List`) for the RUNNING pod jobs on this node
//! and answers each container with berth's GPUs (see [`grants`] for the matching), as
//! `NVIDIA_VISIBLE_DEVICES`/`CUDA_VISIBLE_DEVICES` and CDI names `nvidia.com/gpu=<UUID>`.
//!
//! Handed-out job ids are kept in `<state dir>/device-plugin-handed-out` (one id a line,
//! rewritten on every change), so a restarted agent does not give a running pod's GPUs to a
//! new pod; ids whose job is no longer running are dropped at the next `Allocate`.

pub mod grants;
pub mod health_sync;

use crate::device_plugin::grants::{Choice, PodGrant};
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

/// The extended resource name the plugin registers.
pub const RESOURCE_NAME: &str = "nvidia.com/gpu";
/// The plugin's socket file name inside the device-plugin directory.
pub const SOCKET_NAME: &str = "berth-gpu.sock";
/// The file (in the agent's state directory) that remembers handed-out pod jobs.
pub const HANDED_OUT_FILE: &str = "device-plugin-handed-out";
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
}

/// One advertised device per whole GPU of `gpus`: ID = UUID, `Unhealthy` when the
/// inventory gives a reason, topology = the GPU's NUMA node.
pub fn devices_from_inventory(gpus: &[pb::Gpu]) -> Vec<dp::Device> {
    gpus.iter()
        .map(|g| dp::Device {
            id: g.uuid.clone(),
            health: if g.unhealthy_reason.is_empty() {
                dp::HEALTHY
            } else {
                dp::UNHEALTHY
            }
            .into(),
            topology: Some(dp::TopologyInfo {
                nodes: vec![dp::NumaNode {
                    id: i64::from(g.numa_node),
                }],
            }),
        })
        .collect()
}

/// Passes the agent's health reports through, marking each reported GPU `Unhealthy` in
/// `devices` on the way (which re-sends `ListAndWatch`). Returns the receiver the agent
/// reads instead of `rx`; `None` when there is no watcher.
pub fn tee_health(
    rx: Option<mpsc::UnboundedReceiver<pb::GpuHealth>>,
    devices: watch::Sender<Vec<dp::Device>>,
) -> Option<mpsc::UnboundedReceiver<pb::GpuHealth>> {
    // `devices` lives until the last ListAndWatch reader is gone: a dropped sender would
    // end kubelet's stream, which kubelet takes for a dead plugin.
    let Some(mut rx) = rx else {
        tokio::spawn(async move { devices.closed().await });
        return None;
    };
    let (tx, out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(h) = rx.recv().await {
            devices.send_if_modified(|list| {
                let dev = list.iter_mut().find(|d| d.id == h.uuid);
                match dev {
                    Some(d) if d.health != dp::UNHEALTHY => {
                        tracing::warn!(
                            gpu = h.uuid,
                            reason = h.reason,
                            "device plugin: GPU now Unhealthy"
                        );
                        d.health = dp::UNHEALTHY.into();
                        true
                    }
                    _ => false,
                }
            });
            if tx.send(h).is_err() {
                break;
            }
        }
        devices.closed().await;
    });
    Some(out)
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

/// The `DevicePlugin` service.
#[derive(Clone)]
struct Plugin {
    cfg: Arc<DevicePluginConfig>,
    devices: watch::Receiver<Vec<dp::Device>>,
    /// Held across the berthd query, so concurrent `Allocate`s cannot pick one grant twice.
    handed_out: Arc<Mutex<HandOut>>,
    /// Ends every open `ListAndWatch` stream when this server generation stops.
    stop: watch::Receiver<bool>,
}

impl Plugin {
    fn known(&self) -> BTreeSet<String> {
        self.devices.borrow().iter().map(|d| d.id.clone()).collect()
    }

    /// This node's pod grants, from the first berthd that answers.
    async fn grants(&self) -> Result<Vec<PodGrant>, PluginError> {
        let mut last = String::from("no berthd server configured");
        for server in &self.cfg.servers {
            let ask = async {
                let mut client = JobServiceClient::connect(server.clone())
                    .await
                    .map_err(|e| e.to_string())?;
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
                Ok(Ok(jobs)) => return Ok(grants::pod_grants(&jobs, &self.cfg.node_name)),
                Ok(Err(e)) => last = format!("{server}: {e}"),
                Err(_) => last = format!("{server}: no answer within {BERTHD_TIMEOUT:?}"),
            }
        }
        Err(PluginError::Berthd(last))
    }
}

/// The container answer for `uuids`: the visible-devices variables and the CDI names.
pub fn container_response(choice: &Choice) -> dp::ContainerAllocateResponse {
    let uuids = choice.uuids();
    let list = uuids.join(",");
    let mut resp = dp::ContainerAllocateResponse {
        cdi_devices: uuids
            .iter()
            .map(|u| dp::CdiDevice {
                name: format!("{RESOURCE_NAME}={u}"),
            })
            .collect(),
        ..Default::default()
    };
    resp.envs
        .insert("NVIDIA_VISIBLE_DEVICES".into(), list.clone());
    resp.envs.insert("CUDA_VISIBLE_DEVICES".into(), list);
    if let Choice::Berth { job_id, .. } = choice {
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
                    gpus = uuids.join(","),
                    "Allocate: berth's GPUs"
                );
            } else {
                tracing::info!(
                    job = job_id,
                    pod,
                    gpus = uuids.join(","),
                    kubelet = requested.join(","),
                    "Allocate: berth's GPUs differ from kubelet's device IDs; berth's win"
                );
            }
        }
        Choice::Kubelet { uuids } => tracing::warn!(
            gpus = uuids.join(","),
            "Allocate: no berth pod job of {} GPUs waits on this node; using kubelet's device IDs",
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
        let handed = self.handed_out.lock().await;
        let grants = self.grants().await?;
        let mut skip = handed.ids.clone();
        drop(handed);
        let mut container_responses = Vec::with_capacity(req.container_requests.len());
        for (index, c) in req.container_requests.iter().enumerate() {
            let size = usize::try_from(c.allocation_size)
                .ok()
                .filter(|&n| n > 0)
                .ok_or(PluginError::NoDevices { index })?;
            let (ids, job) = grants::preferred(
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
        let mut handed = self.handed_out.lock().await;
        let grants = self.grants().await?;
        // Jobs no longer running cannot be chosen again: forget them (keeps the set bounded).
        let running: BTreeSet<u64> = grants.iter().map(|g| g.job_id).collect();
        let mut ids: BTreeSet<u64> = handed.ids.intersection(&running).copied().collect();
        let choices = grants::allocate(&grants, &ids, &requests, &known)?;
        let mut container_responses = Vec::with_capacity(choices.len());
        for (requested, choice) in requests.iter().zip(&choices) {
            log_choice(requested, choice);
            if let Choice::Berth { job_id, .. } = choice {
                ids.insert(*job_id);
            }
            container_responses.push(container_response(choice));
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

/// Calls kubelet's `Register` on `dir/kubelet.sock`.
async fn register(dir: &Path) -> Result<(), String> {
    let channel = uds_channel(dir.join(dp::KUBELET_SOCKET_NAME))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let req = dp::RegisterRequest {
        version: dp::VERSION.into(),
        endpoint: SOCKET_NAME.into(),
        resource_name: RESOURCE_NAME.into(),
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
    cfg: DevicePluginConfig,
    devices: watch::Receiver<Vec<dp::Device>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PluginError> {
    let handed_out = HandOut::load(cfg.state_dir.join(HANDED_OUT_FILE));
    let handed_out = Arc::new(Mutex::new(handed_out));
    let cfg = Arc::new(cfg);
    let sock = cfg.dir.join(SOCKET_NAME);
    loop {
        let (stop_tx, stop_rx) = watch::channel(false);
        let plugin = Plugin {
            cfg: cfg.clone(),
            devices: devices.clone(),
            handed_out: handed_out.clone(),
            stop: stop_rx.clone(),
        };
        let (server, sock_id) = serve(&sock, plugin, stop_rx)?;
        tracing::info!(socket = %sock.display(), "device plugin serving {RESOURCE_NAME}");
        let exit = register_and_watch(&cfg.dir, &sock, sock_id, &mut shutdown).await;
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
        tracing::warn!("kubelet restarted or removed {SOCKET_NAME}: serving and registering again");
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
                    match register(dir).await {
                        Ok(()) => {
                            tracing::info!(kubelet = %kubelet.display(), "registered {RESOURCE_NAME} with kubelet");
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
    fn devices_carry_uuid_health_and_numa_node() {
        let gpus = [
            pb::Gpu {
                uuid: "GPU-a".into(),
                numa_node: 1,
                ..Default::default()
            },
            pb::Gpu {
                uuid: "GPU-b".into(),
                unhealthy_reason: "GPU lost".into(),
                ..Default::default()
            },
        ];
        let got: Vec<(String, String, Vec<i64>)> = devices_from_inventory(&gpus)
            .into_iter()
            .map(|d| {
                let numa = d.topology.unwrap().nodes.iter().map(|n| n.id).collect();
                (d.id, d.health, numa)
            })
            .collect();
        let want = [
            ("GPU-a".to_string(), "Healthy".to_string(), vec![1]),
            ("GPU-b".to_string(), "Unhealthy".to_string(), vec![0]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_berth_choice_sets_both_variables_cdi_names_and_the_job_annotation() {
        let choice = Choice::Berth {
            job_id: 7,
            pod: "ml/p".into(),
            uuids: vec!["GPU-a".into(), "GPU-b".into()],
        };
        let r = container_response(&choice);
        assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert_eq!(r.envs["CUDA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        let cdi: Vec<&str> = r.cdi_devices.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cdi, ["nvidia.com/gpu=GPU-a", "nvidia.com/gpu=GPU-b"]);
        assert_eq!(r.annotations["berth.io/job-id"], "7");
        let fallback = container_response(&Choice::Kubelet {
            uuids: vec!["GPU-c".into()],
        });
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
