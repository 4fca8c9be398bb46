//! Streamable-HTTP connections to remote servers. A downstream session the
//! server expired (404) is re-initialised by rmcp and the request retried
//! once; a connection that breaks is restarted by the supervisor with
//! backoff, like a crashed process.

use std::{collections::HashMap, time::Duration};

use http::{HeaderName, HeaderValue};
use rmcp::{
    service::{Peer, RoleClient, serve_client_with_lifecycle_and_ct},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use tokio_util::sync::CancellationToken;

use super::{DownstreamClient, Error, with_causes};
use crate::spec::HttpSpec;

/// Requests in flight per connection; rmcp's default (16) is low for a
/// gateway multiplexing many sessions.
const MAX_CONCURRENT_REQUESTS: usize = 256;
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Redirects followed within a server's origin.
const MAX_REDIRECTS: usize = 5;
/// Bound on the extra request that explains a failed connection.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpConnection {
    peer: Peer<RoleClient>,
    cancel: CancellationToken,
    service: super::ServiceTask,
}

// === impl HttpConnection ===

impl HttpConnection {
    /// Connects and runs the MCP handshake within `timeout`.
    pub async fn start(
        spec: &HttpSpec,
        client: DownstreamClient,
        timeout: Duration,
        discover: bool,
    ) -> Result<Self, Error> {
        let mut headers = HashMap::new();
        for (name, value) in &spec.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| Error::Protocol(format!("header `{name}`: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| Error::Protocol(format!("header `{name}`: {e}")))?;
            headers.insert(name, value);
        }
        let config = StreamableHttpClientTransportConfig::with_uri(spec.url.clone())
            .custom_headers(headers)
            .reinit_on_expired_session(true)
            .max_concurrent_requests(MAX_CONCURRENT_REQUESTS);
        let transport = client
            .relay
            .sequenced(StreamableHttpClientTransport::with_client(
                http_client()?,
                config,
            ));
        let cancel = CancellationToken::new();
        let handshake = serve_client_with_lifecycle_and_ct(
            client,
            transport,
            super::lifecycle(discover),
            cancel.clone(),
        );
        let service = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(service)) => service,
            Ok(Err(err)) if let Some(refusal) = super::refused(&err, discover, &spec.url) => {
                return Err(refusal);
            }
            Ok(Err(err)) => {
                let mut reason = format!("{}: {}", spec.url, with_causes(&err));
                if let Some(cause) = connection_failure(&spec.url).await {
                    reason = format!("{reason} ({cause})");
                }
                return Err(Error::Initialize(reason));
            }
            Err(_) => {
                return Err(Error::Initialize(format!(
                    "no initialize response from {} within {timeout:?}",
                    spec.url
                )));
            }
        };
        Ok(Self {
            peer: service.peer().clone(),
            cancel,
            service: tokio::spawn(service.waiting()),
        })
    }

    pub fn peer(&self) -> &Peer<RoleClient> {
        &self.peer
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&mut self) -> String {
        super::service_ended(&mut self.service, "connection").await
    }

    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut self.service).await;
        self.service.abort();
    }
}

/// The HTTP client for remote servers. It follows a redirect only within
/// the server's origin: a server's configured headers (API keys, tokens)
/// must not reach another host that a redirect names. (reqwest drops only
/// `Authorization` and cookies on such a hop, not custom headers.)
pub fn http_client() -> Result<reqwest::Client, Error> {
    http_client_builder()
        .build()
        .map_err(|e| Error::Protocol(format!("building the HTTP client: {e}")))
}

fn http_client_builder() -> reqwest::ClientBuilder {
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let origin = attempt.previous().first().map(reqwest::Url::origin);
        match origin {
            Some(origin) if origin != attempt.url().origin() => {
                let refused = format!(
                    "refused a redirect to another origin ({}): the server's headers would go there",
                    attempt.url().origin().ascii_serialization()
                );
                attempt.error(refused)
            }
            _ if attempt.previous().len() > MAX_REDIRECTS => attempt.stop(),
            _ => attempt.follow(),
        }
    });
    reqwest::Client::builder().redirect(same_origin)
}

/// Why the URL cannot be reached at all (DNS, TCP, TLS, a refused
/// redirect), if that is the problem: rmcp's transport error drops the
/// cause, which for a TLS failure is the only useful part ("invalid peer
/// certificate: …").
async fn connection_failure(url: &str) -> Option<String> {
    let client = http_client_builder()
        .timeout(DIAGNOSE_TIMEOUT)
        .build()
        .ok()?;
    match client.head(url).send().await {
        Ok(_) => None,
        Err(err) => Some(with_causes(&err)),
    }
}
