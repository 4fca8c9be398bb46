//! Replica credentials on the gRPC port. With a token configured, every
//! call (the config stream, span exports) must carry it as
//! `authorization: Bearer <token>`; any other caller is refused before it
//! can receive a snapshot (which holds resolved secrets), report health or
//! NACKs that become status, or inject spans. `up` makes a fresh token for
//! its own gateway on every start.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::Counter,
};
pub use proto::auth::ReplicaToken;
use tonic::{Request, Status, service::Interceptor};
use tracing::debug;

/// Checks the token of every gRPC call; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ReplicaAuth {
    token: Option<ReplicaToken>,
    refused: Counter,
}

// === impl ReplicaAuth ===

impl ReplicaAuth {
    /// `None` lets every caller in (loopback only, or when told to).
    pub fn new(token: Option<ReplicaToken>) -> Self {
        Self {
            token,
            refused: Counter::default(),
        }
    }

    pub fn required(&self) -> bool {
        self.token.is_some()
    }
}

impl Interceptor for ReplicaAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(proto::auth::METADATA_KEY)
            .and_then(|value| {
                value
                    .as_bytes()
                    .strip_prefix(proto::auth::BEARER_PREFIX.as_bytes())
            });
        match presented {
            Some(presented) if token.matches(presented) => Ok(request),
            presented => {
                self.refused.inc();
                let peer = request.remote_addr().map(|a| a.to_string());
                debug!(
                    peer = peer.as_deref().unwrap_or("-"),
                    token_sent = presented.is_some(),
                    "refused a gRPC call without the replica token"
                );
                Err(Status::unauthenticated(
                    "this control plane needs the replica token (gateway: --control-plane-token-file or SWITCHBOARD_CONTROL_PLANE_TOKEN)",
                ))
            }
        }
    }
}

impl Collector for ReplicaAuth {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.refused.encode(encoder.encode_descriptor(
            "replica_auth_failures",
            "gRPC calls refused for a missing or wrong replica token",
            None,
            self.refused.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn call(auth: &mut ReplicaAuth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            let value = MetadataValue::try_from(header).expect("ASCII");
            request
                .metadata_mut()
                .insert(proto::auth::METADATA_KEY, value);
        }
        auth.call(request).map(drop).map_err(|status| status.code())
    }

    #[test]
    fn only_the_token_lets_a_call_in() {
        let token = ReplicaToken::new("0123456789abcdef-token").expect("long enough");
        let mut auth = ReplicaAuth::new(Some(token));
        assert_eq!(
            call(&mut auth, Some("Bearer 0123456789abcdef-token")),
            Ok(())
        );
        for refused in [
            None,
            Some("Bearer 0123456789abcdef-tokem"),
            Some("Bearer 0123456789abcdef-token2"),
            Some("0123456789abcdef-token"),
            Some("Basic 0123456789abcdef-token"),
        ] {
            assert_eq!(
                call(&mut auth, refused),
                Err(tonic::Code::Unauthenticated),
                "{refused:?}"
            );
        }
        assert_eq!(auth.refused.get(), 5);
        let mut open = ReplicaAuth::new(None);
        assert_eq!(call(&mut open, None), Ok(()));
    }

    #[test]
    fn tokens_are_long_random_and_never_printed() {
        assert!(ReplicaToken::new("  short \n").is_err());
        let (a, b) = (
            ReplicaToken::generate().expect("random"),
            ReplicaToken::generate().expect("random"),
        );
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert_eq!(format!("{a:?}"), "ReplicaToken(redacted)");
    }
}
