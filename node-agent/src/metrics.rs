//! The agent's Prometheus endpoint: per-GPU utilisation, framebuffer, power and
//! temperature under the names and labels of NVIDIA's dcgm-exporter, so existing Grafana
//! dashboards work unchanged: `DCGM_FI_DEV_GPU_UTIL` (%), `DCGM_FI_DEV_FB_USED` and
//! `DCGM_FI_DEV_FB_FREE` (MiB), `DCGM_FI_DEV_POWER_USAGE` (W), `DCGM_FI_DEV_GPU_TEMP`
//! (°C), labelled `gpu` (NVML index), `UUID`, `modelName`, `Hostname` and `hpc_job` (the
//! berth job holding the GPU, empty when free; dcgm-exporter's label for HPC jobs).
//! Every scrape reads NVML afresh into a new registry, so a GPU that disappears (lost)
//! disappears from the output instead of showing its last value forever.
//!
//! Per running job, labelled `job`, `account` and `Hostname`, berth's own gauges from the
//! job's measured usage (see [`crate::usage`], updated at each heartbeat):
//! `berth_job_gpu_util_percent`, `berth_job_gpu_memory_used_mib`,
//! `berth_job_gpu_memory_max_mib`, `berth_job_gpu_held_seconds` and
//! `berth_job_gpu_busy_seconds` (GPU-seconds held, and held × utilization, since start).

use crate::gpu::{GpuBackend, GpuSample};
use crate::usage::Meter;
use berth_proto::v1 as pb;
use prometheus::{Encoder as _, GaugeVec, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// (name, help) of each exported gauge, in output order.
const GAUGES: [(&str, &str); 5] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
];
const LABELS: [&str; 5] = ["gpu", "UUID", "modelName", "Hostname", "hpc_job"];

/// (name, help) of each per-job gauge, in output order.
const JOB_GAUGES: [(&str, &str); 5] = [
    (
        "berth_job_gpu_util_percent",
        "Mean utilization of the job's GPUs at the last measure (in %).",
    ),
    (
        "berth_job_gpu_memory_used_mib",
        "GPU memory used by the job at the last measure (in MiB).",
    ),
    (
        "berth_job_gpu_memory_max_mib",
        "Peak GPU memory used by the job (in MiB).",
    ),
    (
        "berth_job_gpu_held_seconds",
        "GPU-seconds held by the job since it started (shares and MIG slices count their part).",
    ),
    (
        "berth_job_gpu_busy_seconds",
        "GPU-seconds held by the job times utilization, since it started.",
    ),
];
const JOB_LABELS: [&str; 3] = ["job", "account", "Hostname"];

/// What the endpoint reads: the GPUs, and the job directories that say who holds them.
#[derive(Clone)]
pub struct MetricsSource {
    /// GPU readings.
    pub gpus: Arc<dyn GpuBackend>,
    /// The agent's state directory (job directories under `jobs/`).
    pub state_dir: PathBuf,
    /// This node's name, for the `Hostname` label.
    pub node: String,
}

/// The exposition text for `samples`, with `owners` mapping GPU UUID → job id, and the
/// per-job gauges of `jobs` (each running job with its measured usage).
pub fn render(
    samples: &[GpuSample],
    owners: &BTreeMap<String, u64>,
    jobs: &[(pb::Job, Meter)],
    node: &str,
) -> String {
    let registry = Registry::new();
    let gauges: Vec<GaugeVec> = GAUGES
        .iter()
        .map(|(name, help)| {
            let gauge = GaugeVec::new(Opts::new(*name, *help), &LABELS)
                .expect("static metric names and labels are valid");
            registry
                .register(Box::new(gauge.clone()))
                .expect("each name is registered once");
            gauge
        })
        .collect();
    for s in samples {
        let index = s.index.to_string();
        let job = owners.get(&s.uuid).map(u64::to_string).unwrap_or_default();
        let labels = [index.as_str(), &s.uuid, &s.model, node, &job];
        let values = [
            f64::from(s.util_percent),
            s.fb_used_mb as f64,
            s.fb_free_mb as f64,
            s.power_w,
            f64::from(s.temperature_c),
        ];
        for (gauge, value) in gauges.iter().zip(values) {
            gauge.with_label_values(&labels).set(value);
        }
    }
    render_jobs(&registry, jobs, node);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding of gauges cannot fail");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn render_jobs(registry: &Registry, jobs: &[(pb::Job, Meter)], node: &str) {
    if jobs.is_empty() {
        return;
    }
    let gauges: Vec<GaugeVec> = JOB_GAUGES
        .iter()
        .map(|(name, help)| {
            let gauge = GaugeVec::new(Opts::new(*name, *help), &JOB_LABELS)
                .expect("static metric names and labels are valid");
            registry
                .register(Box::new(gauge.clone()))
                .expect("each name is registered once");
            gauge
        })
        .collect();
    for (job, m) in jobs {
        let id = job.id.to_string();
        // The account charged (resolved at submit); the requested one for older jobs.
        let account = match job.account.as_str() {
            "" => job
                .spec
                .as_ref()
                .map(|s| s.account.clone())
                .unwrap_or_default(),
            a => a.to_string(),
        };
        let labels = [id.as_str(), &account, node];
        let values = [
            m.gpu_util_percent,
            m.gpu_memory_mb as f64,
            m.gpu_memory_max_mb as f64,
            m.gpu_seconds,
            m.gpu_busy_seconds,
        ];
        for (gauge, value) in gauges.iter().zip(values) {
            gauge.with_label_values(&labels).set(value);
        }
    }
}

async fn scrape(axum::extract::State(src): axum::extract::State<MetricsSource>) -> String {
    // NVML calls block; keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let owners = crate::supervisor::gpu_owners(&src.state_dir);
        let jobs = crate::supervisor::measured_jobs(&src.state_dir);
        render(&src.gpus.samples(), &owners, &jobs, &src.node)
    })
    .await
    .unwrap_or_default()
}

/// Serves `GET /metrics` on `listener` until `shutdown` becomes true.
///
/// # Errors
/// The server's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    src: MetricsSource,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(src);
    // TCP_NODELAY: a scrape's reply must not wait for the scraper's delayed ACK.
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a metrics connection: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// Binds `addr` (port 0 for any free port), serves `/metrics` there in a task until
/// `shutdown`, and returns the endpoint's URL.
///
/// # Errors
/// The bind error (address in use, bad address).
pub async fn spawn(
    addr: &str,
    src: MetricsSource,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = serve(listener, src, shutdown).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcgm_names_labels_and_values() {
        let sample = GpuSample {
            index: 3,
            uuid: "GPU-x".into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            util_percent: 87,
            fb_used_mb: 1024,
            fb_free_mb: 80535,
            power_w: 612.5,
            temperature_c: 71,
        };
        let owners = BTreeMap::from([("GPU-x".to_string(), 42)]);
        let job = pb::Job {
            id: 42,
            account: "physics".into(),
            ..Default::default()
        };
        let meter = Meter {
            gpu_seconds: 120.0,
            gpu_busy_seconds: 90.5,
            gpu_memory_max_mb: 2048,
            gpu_util_percent: 87.0,
            gpu_memory_mb: 1024,
            measured_ms: 1,
            done: false,
        };
        let text = render(&[sample], &owners, &[(job, meter)], "node1");
        let job_labels = r#"{Hostname="node1",account="physics",job="42"}"#;
        for want in [
            format!("berth_job_gpu_util_percent{job_labels} 87"),
            format!("berth_job_gpu_memory_used_mib{job_labels} 1024"),
            format!("berth_job_gpu_memory_max_mib{job_labels} 2048"),
            format!("berth_job_gpu_held_seconds{job_labels} 120"),
            format!("berth_job_gpu_busy_seconds{job_labels} 90.5"),
        ] {
            assert!(text.contains(&want), "missing {want:?} in:\n{text}");
        }
        let labels = r#"{Hostname="node1",UUID="GPU-x",gpu="3",hpc_job="42",modelName="NVIDIA H100 80GB HBM3"}"#;
        for want in [
            format!("DCGM_FI_DEV_GPU_UTIL{labels} 87"),
            format!("DCGM_FI_DEV_FB_USED{labels} 1024"),
            format!("DCGM_FI_DEV_FB_FREE{labels} 80535"),
            format!("DCGM_FI_DEV_POWER_USAGE{labels} 612.5"),
            format!("DCGM_FI_DEV_GPU_TEMP{labels} 71"),
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge".to_string(),
        ] {
            assert!(text.contains(&want), "missing {want:?} in:\n{text}");
        }
    }
}
