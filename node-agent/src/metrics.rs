//! The agent's Prometheus endpoint: per-GPU utilisation, framebuffer, power and
//! temperature under the names and labels of NVIDIA's dcgm-exporter, so existing Grafana
//! dashboards work unchanged: `DCGM_FI_DEV_GPU_UTIL` (%), `DCGM_FI_DEV_FB_USED` and
//! `DCGM_FI_DEV_FB_FREE` (MiB), `DCGM_FI_DEV_POWER_USAGE` (W), `DCGM_FI_DEV_GPU_TEMP`
//! (°C), labelled `gpu` (NVML index), `UUID`, `modelName`, `Hostname` and `hpc_job` (the
//! berth job holding the GPU, empty when free; dcgm-exporter's label for HPC jobs).
//! Every scrape reads NVML afresh into a new registry, so a GPU that disappears (lost)
//! disappears from the output instead of showing its last value forever.

use crate::gpu::{GpuBackend, GpuSample};
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

/// The exposition text for `samples`, with `owners` mapping GPU UUID → job id.
pub fn render(samples: &[GpuSample], owners: &BTreeMap<String, u64>, node: &str) -> String {
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
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding of gauges cannot fail");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

async fn scrape(axum::extract::State(src): axum::extract::State<MetricsSource>) -> String {
    // NVML calls block; keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let owners = crate::supervisor::gpu_owners(&src.state_dir);
        render(&src.gpus.samples(), &owners, &src.node)
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
        let text = render(&[sample], &owners, "node1");
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
