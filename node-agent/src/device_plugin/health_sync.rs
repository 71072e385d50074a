//! berthd's record of this node's GPU health, followed by the device plugin: the agent's
//! own NVML events mark a device `Unhealthy` at once (see `tee_health`), but only berthd
//! knows when an admin has declared a repaired GPU healthy again (`scontrol update
//! NodeName=N Gpu=G State=RESUME`, through the Raft log). Every [`POLL`] the plugin reads
//! this node from berthd and advertises each GPU as berthd has it, so kubelet offers a
//! resumed GPU to pods again.

use berth_proto::deviceplugin as dp;
use berth_proto::v1::{self as pb, node_service_client::NodeServiceClient};
use std::time::Duration;
use tokio::sync::watch;

/// How often berthd is asked.
pub const POLL: Duration = Duration::from_secs(5);

/// Sets each device of `devices` to the health berthd records for its GPU in `gpus` (the
/// GPU itself, a replica or a MIG slot of it; devices on GPUs berthd does not list keep
/// theirs). Returns whether any changed.
pub fn sync(devices: &mut [dp::Device], gpus: &[pb::Gpu]) -> bool {
    let mut changed = false;
    for d in devices.iter_mut() {
        let Some(g) = gpus
            .iter()
            .find(|g| super::resources::on_gpu(&d.id, &g.uuid))
        else {
            continue;
        };
        let want = if g.unhealthy_reason.is_empty() {
            dp::HEALTHY
        } else {
            dp::UNHEALTHY
        };
        if d.health != want {
            tracing::info!(
                gpu = d.id,
                health = want,
                "device plugin: health from berthd"
            );
            d.health = want.into();
            changed = true;
        }
    }
    changed
}

/// Polls `servers` for node `node` until `stop`, applying [`sync`] to each resource's
/// device list (which re-sends its `ListAndWatch` on a change). An unreachable berthd
/// changes nothing.
pub async fn follow(
    servers: Vec<String>,
    profile: berth_auth::profile::Profile,
    node: String,
    devices: Vec<watch::Sender<Vec<dp::Device>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Some(gpus) = node_gpus(&servers, &profile, &node).await {
            for list in &devices {
                list.send_if_modified(|list| sync(list, &gpus));
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn node_gpus(
    servers: &[String],
    profile: &berth_auth::profile::Profile,
    node: &str,
) -> Option<Vec<pb::Gpu>> {
    for server in servers {
        let ask = async {
            let channel = berth_auth::channel::endpoint(server, profile)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut c = NodeServiceClient::new(channel);
            let nodes = c
                .list(pb::ListNodesRequest {})
                .await
                .ok()?
                .into_inner()
                .nodes;
            nodes
                .into_iter()
                .filter_map(|n| n.inventory)
                .find(|i| i.name == node)
                .map(|i| i.gpus)
        };
        if let Ok(Some(gpus)) = tokio::time::timeout(super::BERTHD_TIMEOUT, ask).await {
            return Some(gpus);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_follow_berthds_health_both_ways() {
        let device = |id: &str, health: &str| dp::Device {
            id: id.into(),
            health: health.into(),
            topology: None,
        };
        let mut list = vec![
            device("GPU-resumed", dp::UNHEALTHY),
            device("GPU-bad", dp::HEALTHY),
            device("GPU-ok", dp::HEALTHY),
            device("GPU-unknown", dp::UNHEALTHY),
            device("GPU-bad::1", dp::HEALTHY),
            device("GPU-resumed::1g.10gb@0", dp::UNHEALTHY),
        ];
        let gpus = [
            pb::Gpu {
                uuid: "GPU-resumed".into(),
                healthy_cleared_reason: "XID 79".into(),
                ..Default::default()
            },
            pb::Gpu {
                uuid: "GPU-bad".into(),
                unhealthy_reason: "XID 48".into(),
                ..Default::default()
            },
            pb::Gpu {
                uuid: "GPU-ok".into(),
                ..Default::default()
            },
        ];
        assert!(sync(&mut list, &gpus));
        let got: Vec<(&str, &str)> = list
            .iter()
            .map(|d| (d.id.as_str(), d.health.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("GPU-resumed", "Healthy"),
                ("GPU-bad", "Unhealthy"),
                ("GPU-ok", "Healthy"),
                ("GPU-unknown", "Unhealthy"),
                ("GPU-bad::1", "Unhealthy"),
                ("GPU-resumed::1g.10gb@0", "Healthy")
            ]
        );
        assert!(!sync(&mut list, &gpus), "nothing left to change");
    }
}
