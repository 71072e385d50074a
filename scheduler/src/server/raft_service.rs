//! `RaftService`: Raft messages from the other replicas, handed to the Raft thread.

use super::*;

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for Api {
    async fn step(&self, req: Request<pb::RaftBatch>) -> Result<Response<pb::RaftAck>, Status> {
        use protobuf::Message as _;
        for bytes in req.into_inner().messages {
            let msg = raft::eraftpb::Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            self.0.raft.step(msg);
        }
        Ok(Response::new(pb::RaftAck {}))
    }
}
