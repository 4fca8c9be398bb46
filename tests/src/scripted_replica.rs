//! A scripted gateway replica for testing a real control plane: a tonic
//! `ConfigDiscovery` client that says `Hello` and answers every snapshot
//! with a NACK refusing every `McpServer` in it, as a replica of another
//! build does with a field it cannot apply. Real gateways are used
//! wherever a test needs one that works; this one exists because a real
//! gateway of the same build never refuses what the control plane accepts.

use std::net::SocketAddr;

use proto::{
    auth::{Presenting, Token},
    config::{
        self as pb, config_discovery_client::ConfigDiscoveryClient, control_message,
        replica_message::Kind, resource,
    },
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

/// Connected while it lives; dropping it closes its stream.
pub struct RefusingReplica {
    task: tokio::task::JoinHandle<()>,
}

impl RefusingReplica {
    /// Connects to the control plane at `grpc` as `replica_id` and refuses
    /// every server of every snapshot for `reason`.
    pub async fn connect(grpc: SocketAddr, replica_id: &str, reason: &str) -> Self {
        Self::try_connect(grpc, replica_id, reason, None)
            .await
            .expect("open the config stream")
    }

    /// [`RefusingReplica::connect`], presenting `token` if given; the
    /// control plane's refusal, if it refuses.
    pub async fn try_connect(
        grpc: SocketAddr,
        replica_id: &str,
        reason: &str,
        token: Option<&str>,
    ) -> Result<Self, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .expect("a URL")
            .connect()
            .await
            .expect("connect to the control plane");
        let token = token.map(|t| Token::new(t).expect("a valid token"));
        let mut client = ConfigDiscoveryClient::with_interceptor(channel, Presenting::new(token));
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello {
            replica_id: replica_id.to_owned(),
            build_version: "0.0.1-older".to_owned(),
            applied_version: 0,
            peer_url: String::new(),
            started_at_ms: 0,
        };
        tx.send(pb::ReplicaMessage {
            kind: Some(Kind::Hello(hello)),
        })
        .await
        .expect("queue hello");
        let mut snapshots = client
            .stream_config(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let reason = reason.to_owned();
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = snapshots.next().await {
                let Some(control_message::Kind::Snapshot(snapshot)) = message.kind else {
                    continue;
                };
                let rejected: Vec<pb::RejectedResource> = snapshot
                    .resources
                    .iter()
                    .filter_map(|r| {
                        let Some(resource::Kind::McpServer(server)) = &r.kind else {
                            return None;
                        };
                        Some(pb::RejectedResource {
                            name: server.name.clone(),
                            reason: reason.clone(),
                        })
                    })
                    .collect();
                let nack = pb::Nack {
                    version: snapshot.version,
                    reason: reason.clone(),
                    rejected,
                    traceparent: snapshot.traceparent.clone(),
                };
                let message = pb::ReplicaMessage {
                    kind: Some(Kind::Nack(nack)),
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self { task })
    }
}

impl Drop for RefusingReplica {
    fn drop(&mut self) {
        self.task.abort();
    }
}
