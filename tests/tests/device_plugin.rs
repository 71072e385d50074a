//! The kubelet device plugin of the real `berth-agent` (`--device-plugin DIR`) on a
//! simulated 4-GPU A100 node, next to a real `berthd`. The test plays kubelet: it serves
//! `Registration` on `DIR/kubelet.sock`, receives the plugin's Register, reads the GPUs
//! from `ListAndWatch`, binds pod jobs through berthd's `JobService.BindPod` (what the
//! extender's `/bind` does), and checks that `Allocate` answers with berth's GPUs even when
//! kubelet names others, falls back to kubelet's IDs when no pod job waits, refuses bad
//! requests without using up a grant, reports an XID as Unhealthy, and registers again
//! after a kubelet restart.
//!
//! On a simulated `a100-mig` node and on a node whose GPUs are offered as replicas, each
//! MIG profile and the shares register as their own resource on their own socket; a MIG
//! pod's `Allocate` creates the slice berthd chose in the simulated driver and answers its
//! `MIG-…` device (which goes away once the pod's job ends), and a shared pod gets the
//! GPU berthd gave it a share of, whichever replica kubelet named.

use berth_proto::deviceplugin::{
    self as dp, device_plugin_client::DevicePluginClient, registration_server,
};
use berth_proto::v1::{self as pb, job_service_client::JobServiceClient};
use berth_tests::{bin, free_port, simnvml, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// How long any one expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// kubelet's `Registration` service: forwards each request to the test.
struct Kubelet(mpsc::UnboundedSender<dp::RegisterRequest>);

#[tonic::async_trait]
impl registration_server::Registration for Kubelet {
    async fn register(
        &self,
        req: Request<dp::RegisterRequest>,
    ) -> Result<Response<dp::Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(dp::Empty {}))
    }
}

/// Serves `Registration` on `dir/kubelet.sock` until the returned sender is dropped.
fn serve_kubelet(
    dir: &Path,
) -> (
    mpsc::UnboundedReceiver<dp::RegisterRequest>,
    tokio::sync::oneshot::Sender<()>,
) {
    let listener = tokio::net::UnixListener::bind(dir.join("kubelet.sock")).expect("kubelet.sock");
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(registration_server::RegistrationServer::new(Kubelet(tx)))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    (rx, stop_tx)
}

async fn uds(path: PathBuf) -> Channel {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let s = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .expect("connect to the plugin socket")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

async fn expect_register(rx: &mut mpsc::UnboundedReceiver<dp::RegisterRequest>) {
    let reg = within("Register", rx.recv())
        .await
        .expect("kubelet server up");
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.endpoint, "berth-gpu.sock");
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    let opts = reg.options.expect("options");
    assert!(opts.get_preferred_allocation_available && !opts.pre_start_required);
}

/// Opens the plugin's ListAndWatch stream, as kubelet does once per registration.
async fn watch_devices(
    plugin: &mut DevicePluginClient<Channel>,
) -> Streaming<dp::ListAndWatchResponse> {
    plugin
        .list_and_watch(dp::Empty {})
        .await
        .unwrap()
        .into_inner()
}

/// The next ListAndWatch list for which `pick` holds.
async fn next_list(
    stream: &mut Streaming<dp::ListAndWatchResponse>,
    what: &str,
    pick: impl Fn(&[dp::Device]) -> bool,
) -> Vec<dp::Device> {
    within(what, async {
        loop {
            let msg = stream
                .message()
                .await
                .expect("stream ok")
                .expect("stream open");
            if pick(&msg.devices) {
                return msg.devices;
            }
        }
    })
    .await
}

/// Binds a pod job of `gpus` GPUs on gpu01 (retrying while the agent is not registered).
async fn bind_pod(berthd: &str, name: &str, gpus: u32) -> Vec<String> {
    let spec = pb::JobSpec {
        name: name.into(),
        partition: "gpu".into(),
        nodes: 1,
        ntasks: 1,
        cpus_per_task: 1,
        gpus_per_node: gpus,
        pod: Some(pb::PodRef {
            namespace: "ml".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }),
        ..Default::default()
    };
    let req = pb::BindPodRequest {
        spec: Some(spec),
        node: "gpu01".into(),
    };
    within("BindPod", async {
        loop {
            if let Ok(mut c) = JobServiceClient::connect(berthd.to_string()).await {
                match c.bind_pod(req.clone()).await {
                    Ok(job) => return job.into_inner().allocations[0].gpu_uuids.clone(),
                    Err(s) if s.message().contains("not managed by berth") => {}
                    Err(s) => eprintln!("BindPod: {s:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

async fn allocate(
    plugin: &mut DevicePluginClient<Channel>,
    requests: Vec<Vec<String>>,
) -> Result<Vec<dp::ContainerAllocateResponse>, Status> {
    let req = dp::AllocateRequest {
        container_requests: requests
            .into_iter()
            .map(|devices_ids| dp::ContainerAllocateRequest { devices_ids })
            .collect(),
    };
    plugin
        .allocate(req)
        .await
        .map(|r| r.into_inner().container_responses)
}

fn visible(resp: &dp::ContainerAllocateResponse) -> String {
    assert_eq!(
        resp.envs.get("NVIDIA_VISIBLE_DEVICES"),
        resp.envs.get("CUDA_VISIBLE_DEVICES")
    );
    resp.envs["CUDA_VISIBLE_DEVICES"].clone()
}

fn other_than(all: &[String], taken: &[String], n: usize) -> Vec<String> {
    all.iter()
        .filter(|u| !taken.contains(u))
        .take(n)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_hands_a_pod_the_gpus_berth_bound_it_to() {
    let mut node = start_node("a100-pcie-4", &[]);
    let (plugins, nvml, berthd) = (node.plugins.clone(), node.nvml.clone(), node.berthd.clone());

    // Register, then the devices: one per GPU, by UUID, healthy.
    expect_register(&mut node.registered).await;
    let mut plugin = DevicePluginClient::new(uds(plugins.join("berth-gpu.sock")).await);
    let opts = plugin
        .get_device_plugin_options(dp::Empty {})
        .await
        .unwrap();
    assert!(opts.into_inner().get_preferred_allocation_available);
    let mut watch = watch_devices(&mut plugin).await;
    let devices = next_list(&mut watch, "4 devices", |d| d.len() == 4).await;
    assert!(devices
        .iter()
        .all(|d| d.id.starts_with("GPU-") && d.health == "Healthy"));
    let all: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();

    // A pod bound by berth to 2 GPUs; kubelet picks the 2 others: berth's win.
    let berth = bind_pod(&berthd, "train", 2).await;
    assert_eq!(berth.len(), 2);
    let kubelets = other_than(&all, &berth, 2);
    let got = allocate(&mut plugin, vec![kubelets.clone()]).await.unwrap();
    assert_eq!(visible(&got[0]), berth.join(","));
    let cdi: Vec<String> = got[0].cdi_devices.iter().map(|c| c.name.clone()).collect();
    let want: Vec<String> = berth
        .iter()
        .map(|u| format!("nvidia.com/gpu={u}"))
        .collect();
    assert_eq!(cdi, want);

    // That grant is handed out: a second 2-device container gets kubelet's own IDs.
    let got = allocate(&mut plugin, vec![kubelets.clone()]).await.unwrap();
    assert_eq!(visible(&got[0]), kubelets.join(","));

    // Bad requests are refused and do not use up the next pod's grant.
    let second = bind_pod(&berthd, "infer", 1).await;
    for bad in [vec![vec!["GPU-not-here".to_string()]], vec![vec![]], vec![]] {
        let err = allocate(&mut plugin, bad.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
    }
    // kubelet asks for a preference first: berth's GPU for the 1-GPU pod.
    let pref = dp::PreferredAllocationRequest {
        container_requests: vec![dp::ContainerPreferredAllocationRequest {
            available_device_i_ds: all.clone(),
            must_include_device_i_ds: vec![],
            allocation_size: 1,
        }],
    };
    let mut zero = pref.clone();
    zero.container_requests[0].allocation_size = 0;
    let err = plugin.get_preferred_allocation(zero).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let pref = plugin
        .get_preferred_allocation(pref)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pref.container_responses[0].device_i_ds, second);
    let got = allocate(&mut plugin, vec![other_than(&all, &second, 1)])
        .await
        .unwrap();
    assert_eq!(visible(&got[0]), second.join(","));

    // An XID 79 on GPU 1: ListAndWatch re-sends the list with it Unhealthy.
    berth_simnvml::inject(&nvml, "{\"gpu\": 1, \"xid\": 79}\n").unwrap();
    let health = |d: &[dp::Device]| d.iter().map(|d| d.health.clone()).collect::<Vec<_>>();
    let list = next_list(&mut watch, "GPU 1 Unhealthy", |d| {
        d.len() == 4 && d[1].health == "Unhealthy"
    })
    .await;
    assert_eq!(
        health(&list),
        ["Healthy", "Unhealthy", "Healthy", "Healthy"]
    );

    // kubelet restarts: it removes the plugin sockets and makes a new kubelet.sock; the
    // plugin serves again and registers again, with the health it knew.
    drop(watch);
    drop(node.kubelet.take());
    std::fs::remove_file(plugins.join("berth-gpu.sock")).unwrap();
    std::fs::remove_file(plugins.join("kubelet.sock")).unwrap();
    let (registered, kubelet) = serve_kubelet(&plugins);
    (node.registered, node.kubelet) = (registered, Some(kubelet));
    expect_register(&mut node.registered).await;
    let mut plugin = DevicePluginClient::new(uds(plugins.join("berth-gpu.sock")).await);
    let mut watch = watch_devices(&mut plugin).await;
    let list = next_list(&mut watch, "devices after restart", |d| d.len() == 4).await;
    assert_eq!(
        health(&list),
        ["Healthy", "Unhealthy", "Healthy", "Healthy"]
    );

    // An admin declares GPU 1 repaired (`scontrol update ... State=RESUME`, through the
    // log): the plugin follows berthd and advertises it Healthy again.
    let mut admin = pb::admin_service_client::AdminServiceClient::connect(berthd.clone())
        .await
        .unwrap();
    let resumed = admin
        .resume_gpu(pb::GpuHealthyRequest {
            node: "gpu01".into(),
            gpu: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resumed.cleared_reason.contains("XID 79"), "{resumed:?}");
    let list = next_list(&mut watch, "GPU 1 Healthy again", |d| {
        d.len() == 4 && d.iter().all(|d| d.health == "Healthy")
    })
    .await;
    assert_eq!(list[1].id, resumed.gpu_uuid);
}

/// A berthd and a berth-agent with `--device-plugin` on simulated `machine`, and kubelet's
/// registration service.
struct Node {
    _tmp: tempfile::TempDir,
    plugins: PathBuf,
    nvml: PathBuf,
    berthd: String,
    registered: mpsc::UnboundedReceiver<dp::RegisterRequest>,
    /// Dropping it stops the kubelet registration server (a kubelet restart).
    kubelet: Option<tokio::sync::oneshot::Sender<()>>,
    _procs: (Proc, Proc),
}

fn start_node(machine: &str, agent_args: &[&str]) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let plugins = dir.join("dp");
    std::fs::create_dir_all(&plugins).unwrap();
    let nvml = dir.join("nvml");
    std::fs::create_dir_all(&nvml).unwrap();
    std::fs::copy(simnvml(), nvml.join("libnvidia-ml.so.1")).unwrap();
    let json = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../node-agent/simnvml/machines/{machine}.json"));
    std::fs::copy(json, nvml.join("machine.json")).unwrap();
    let (registered, kubelet) = serve_kubelet(&plugins);
    let port = free_port();
    let berthd = format!("http://127.0.0.1:{port}");
    let daemon = Proc(
        Command::new(bin("berthd"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(dir.join("berthd"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let agent = Proc(
        Command::new(bin("berth-agent"))
            .args(["--server", &berthd, "--node-name", "gpu01", "--state-dir"])
            .arg(dir.join("agent"))
            .arg("--nvml-lib")
            .arg(nvml.join("libnvidia-ml.so.1"))
            .arg("--device-plugin")
            .arg(&plugins)
            .args(agent_args)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    Node {
        _tmp: tmp,
        plugins,
        nvml,
        berthd,
        registered,
        kubelet: Some(kubelet),
        _procs: (daemon, agent),
    }
}

impl Node {
    /// Registrations until every resource of `want` was registered; returns them by name.
    async fn registrations(
        &mut self,
        want: &[&str],
    ) -> std::collections::BTreeMap<String, dp::RegisterRequest> {
        let mut got = std::collections::BTreeMap::new();
        while !want.iter().all(|w| got.contains_key(*w)) {
            let reg = within("Register", self.registered.recv())
                .await
                .expect("kubelet server up");
            got.insert(reg.resource_name.clone(), reg);
        }
        got
    }

    async fn plugin(&self, socket: &str) -> DevicePluginClient<Channel> {
        DevicePluginClient::new(uds(self.plugins.join(socket)).await)
    }

    /// Binds pod `name` on gpu01 with `spec`'s GPU request; returns its job.
    async fn bind(&self, name: &str, gpus: pb::JobSpec) -> pb::Job {
        let spec = pb::JobSpec {
            name: name.into(),
            partition: "gpu".into(),
            nodes: 1,
            ntasks: 1,
            cpus_per_task: 1,
            pod: Some(pb::PodRef {
                namespace: "ml".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
            }),
            ..gpus
        };
        let req = pb::BindPodRequest {
            spec: Some(spec),
            node: "gpu01".into(),
        };
        within("BindPod", async {
            loop {
                if let Ok(mut c) = JobServiceClient::connect(self.berthd.clone()).await {
                    match c.bind_pod(req.clone()).await {
                        Ok(job) => return job.into_inner(),
                        Err(s) if s.message().contains("not managed by berth") => {}
                        Err(s) => eprintln!("BindPod: {s:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
    }

    /// MIG device UUIDs the simulated driver holds now.
    fn mig_uuids(&self) -> Vec<String> {
        berth_tests::mig_uuids(&self.nvml.join("libnvidia-ml.so.1"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_pods_get_the_slice_berth_chose_created_and_removed_with_the_job() {
    let mut node = start_node("a100-mig", &[]);
    let regs = node
        .registrations(&[
            "nvidia.com/gpu",
            "nvidia.com/mig-3g.20gb",
            "nvidia.com/mig-1g.5gb",
        ])
        .await;
    assert_eq!(
        regs["nvidia.com/mig-3g.20gb"].endpoint,
        "berth-mig-3g.20gb.sock"
    );
    assert_eq!(regs["nvidia.com/gpu"].endpoint, "berth-gpu.sock");
    let mut plugin = node.plugin("berth-mig-3g.20gb.sock").await;
    let mut watch = watch_devices(&mut plugin).await;
    // 4 cards x the 2 legal 3g.20gb starts (0 and 4).
    let slots = next_list(&mut watch, "8 MIG slots", |d| d.len() == 8).await;
    let all: Vec<String> = slots.iter().map(|d| d.id.clone()).collect();
    assert!(
        all.iter().all(|id| id.starts_with("GPU-")
            && (id.ends_with("::3g.20gb@0") || id.ends_with("::3g.20gb@4"))),
        "{all:?}"
    );
    // No whole GPU on a MIG node.
    let mut whole = node.plugin("berth-gpu.sock").await;
    let mut wwatch = watch_devices(&mut whole).await;
    next_list(&mut wwatch, "no whole GPU", |d| d.is_empty()).await;

    let job = node
        .bind(
            "infer",
            pb::JobSpec {
                mig_profile: "3g.20gb".into(),
                mig_per_node: 1,
                ..Default::default()
            },
        )
        .await;
    let slice = &job.allocations[0].mig_slices[0];
    let slot = format!("{}::3g.20gb@{}", slice.gpu_uuid, slice.placement_start);
    // kubelet asks for a preference: berth's slot.
    let pref = dp::PreferredAllocationRequest {
        container_requests: vec![dp::ContainerPreferredAllocationRequest {
            available_device_i_ds: all.clone(),
            must_include_device_i_ds: vec![],
            allocation_size: 1,
        }],
    };
    let pref = plugin
        .get_preferred_allocation(pref)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pref.container_responses[0].device_i_ds,
        std::slice::from_ref(&slot)
    );
    // kubelet names another slot: berth's slice is created and handed out.
    assert!(node.mig_uuids().is_empty());
    let other = all.iter().find(|id| **id != slot).unwrap().clone();
    let got = allocate(&mut plugin, vec![vec![other.clone()]])
        .await
        .unwrap();
    let mig = visible(&got[0]);
    assert!(mig.starts_with("MIG-"), "{mig}");
    assert_eq!(node.mig_uuids(), [mig]);
    assert_eq!(got[0].annotations["berth.io/job-id"], job.id.to_string());
    // No other MIG pod waits: kubelet's own slot is refused, nothing is created.
    let err = allocate(&mut plugin, vec![vec![other]]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("scheduled through berth"), "{err:?}");
    assert_eq!(node.mig_uuids().len(), 1);
    // The pod's job ends: the plugin destroys its instance.
    let mut c = JobServiceClient::connect(node.berthd.clone())
        .await
        .unwrap();
    c.cancel(pb::CancelRequest {
        job_id: job.id,
        reason: "pod deleted".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    within("the ended pod's MIG instance destroyed", async {
        while !node.mig_uuids().is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pods_get_the_gpu_berth_gave_them_a_share_of() {
    let mut node = start_node("a100-pcie-4", &["--gpu-replicas", "2"]);
    let regs = node
        .registrations(&["nvidia.com/gpu", "nvidia.com/gpu.shared"])
        .await;
    assert_eq!(
        regs["nvidia.com/gpu.shared"].endpoint,
        "berth-gpu-shared.sock"
    );
    let mut plugin = node.plugin("berth-gpu-shared.sock").await;
    let mut watch = watch_devices(&mut plugin).await;
    let replicas = next_list(&mut watch, "8 replicas", |d| d.len() == 8).await;
    let all: Vec<String> = replicas.iter().map(|d| d.id.clone()).collect();
    assert!(
        all.iter()
            .all(|id| id.ends_with("::0") || id.ends_with("::1")),
        "{all:?}"
    );
    let job = node
        .bind(
            "notebook",
            pb::JobSpec {
                gpus_per_node: 1,
                gpu_shared: true,
                ..Default::default()
            },
        )
        .await;
    let gpu = job.allocations[0].gpu_uuids[0].clone();
    let other = all.iter().find(|id| !id.starts_with(&gpu)).unwrap().clone();
    let got = allocate(&mut plugin, vec![vec![other]]).await.unwrap();
    assert_eq!(visible(&got[0]), gpu);
    assert_eq!(got[0].cdi_devices[0].name, format!("nvidia.com/gpu={gpu}"));
    // A replica ID the plugin never listed is refused.
    let err = allocate(&mut plugin, vec![vec![format!("{gpu}::7")]])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}
