//! The one large fake node the load benchmarks register over the agent protocol: enough
//! CPUs and memory that placement never refuses, no GPUs, its stream kept open.

use berth_auth::profile::Profile;
use berth_proto::v1 as pb;

/// Registers node `big` (partition `gpu`) with the berthd at `url`, connecting with
/// `profile` (the default for an insecure berthd); the returned sender keeps the stream.
///
/// # Errors
/// The connection or the registration failed.
pub async fn register(
    url: &str,
    profile: &Profile,
) -> anyhow::Result<tokio::sync::mpsc::Sender<pb::AgentMessage>> {
    let mut client = pb::agent_service_client::AgentServiceClient::new(
        berth_auth::channel::connect(url, Some(profile))
            .await
            .map_err(anyhow::Error::msg)?,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let inv = pb::NodeInventory {
        name: "big".into(),
        partition: "gpu".into(),
        cpus: 1 << 20,
        memory_mb: 1 << 30,
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            inventory: Some(inv),
            jobs: vec![],
            ..Default::default()
        })),
    })
    .await?;
    let mut down = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    down.message().await?;
    tokio::spawn(async move { while let Ok(Some(_)) = down.message().await {} });
    Ok(tx)
}
