//! A scripted control plane for testing a real gateway replica: a real
//! tonic `ConfigDiscovery` server on loopback that hands each accepted
//! stream to the test, which sends snapshots and reads ACK/NACK itself.

use std::{net::SocketAddr, time::Duration};

use proto::config::{
    self as pb,
    config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer},
    replica_message::Kind,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// One replica's stream as the test sees it.
pub struct ReplicaConnection {
    pub hello: pb::Hello,
    tx: mpsc::Sender<Result<pb::ControlMessage, Status>>,
    rx: Streaming<pb::ReplicaMessage>,
}

pub struct FakeControlPlane {
    pub addr: SocketAddr,
    connections: mpsc::Receiver<ReplicaConnection>,
    _server: tokio::task::JoinHandle<()>,
}

struct Service {
    connections: mpsc::Sender<ReplicaConnection>,
}

#[tonic::async_trait]
impl ConfigDiscovery for Service {
    type StreamConfigStream = ReceiverStream<Result<pb::ControlMessage, Status>>;

    async fn stream_config(
        &self,
        request: Request<Streaming<pb::ReplicaMessage>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let mut rx = request.into_inner();
        let Some(pb::ReplicaMessage {
            kind: Some(Kind::Hello(hello)),
        }) = rx.message().await?
        else {
            return Err(Status::invalid_argument("expected Hello"));
        };
        let (tx, out) = mpsc::channel(8);
        self.connections
            .send(ReplicaConnection { hello, tx, rx })
            .await
            .map_err(|_| Status::unavailable("test is gone"))?;
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

impl FakeControlPlane {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake control plane");
        let addr = listener.local_addr().expect("local addr");
        let (connections_tx, connections) = mpsc::channel(4);
        let service = Service {
            connections: connections_tx,
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ConfigDiscoveryServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            addr,
            connections,
            _server: server,
        }
    }

    /// The next replica stream.
    pub async fn accept(&mut self) -> ReplicaConnection {
        tokio::time::timeout(Duration::from_secs(20), self.connections.recv())
            .await
            .expect("a replica connects within 20s")
            .expect("fake control plane running")
    }
}

impl ReplicaConnection {
    pub async fn send(&self, snapshot: pb::Snapshot) {
        let message = pb::ControlMessage {
            kind: Some(pb::control_message::Kind::Snapshot(snapshot)),
        };
        self.tx
            .send(Ok(message))
            .await
            .expect("replica stream open");
    }

    /// The next ACK or NACK, skipping health reports.
    pub async fn reply(&mut self) -> Kind {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.rx.message())
                .await
                .expect("a reply within 20s")
                .expect("stream healthy")
                .expect("stream open");
            match message.kind {
                Some(Kind::Health(_)) => continue,
                Some(kind) => return kind,
                None => panic!("empty replica message"),
            }
        }
    }
}

/// A snapshot resource for the bundled demo server.
pub fn demo_resource(name: &str, namespace: &str) -> pb::Resource {
    stdio_resource(name, namespace, "switchboard-gateway", &["demo-server"])
}

pub fn stdio_resource(name: &str, namespace: &str, command: &str, args: &[&str]) -> pb::Resource {
    pb::Resource {
        kind: Some(pb::resource::Kind::McpServer(pb::McpServer {
            name: name.into(),
            namespace: namespace.into(),
            transport: Some(pb::mcp_server::Transport::Stdio(pb::StdioTransport {
                command: command.into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            })),
            ..Default::default()
        })),
    }
}
