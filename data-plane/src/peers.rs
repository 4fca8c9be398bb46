//! The other replicas of this control plane, and what one hands another.
//! A balancer may send any request of a session to any replica, but some
//! of what a session has lives on one replica only. Three things cross,
//! each as the client's own request (its session id and credentials
//! included, so the receiving replica checks it as it checks any client),
//! to the address the control plane gave for a replica, never one a
//! client chose:
//!
//! - a client's answer to a server's question, handed to the replica that
//!   asked it, which its id names (`sb:<n>@<replica>`);
//! - a 2026-07-28 client's retry of a call parked on an input-required
//!   round, handed to the replica holding the call (its `requestState`
//!   names it, `rounds.rs`), whose answer is passed back;
//! - what a session keeps on a replica (resource subscriptions, a log
//!   level) and its end (`DELETE`), repeated to every other replica in
//!   the order they happened, so whichever replica holds the session's
//!   GET stream sends it what it subscribed to, and an ended session opens
//!   nowhere.
//!
//! Whatever a replica hands on is marked ([`SHARED_BY`]) and never handed
//! on again, so no address mix-up can make requests go round in circles;
//! only the headers a replica needs to check and serve it go along.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use axum::{body::Body, response::Response};
use http::{HeaderMap, Method};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family},
};
use rmcp::model::RequestId;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

/// How long a handed-on answer or a repeated request may take.
const HAND_ON_TIMEOUT: Duration = Duration::from_secs(5);
/// How long reaching another replica may take: a replica that is gone
/// must not hold up what waits for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a handed-on retry may take: the longest `maxCall` there is.
const RETRY_TIMEOUT: Duration = proto::defaults::MAX_CALL_TIMEOUT;
/// Session changes waiting to be repeated; beyond, they are dropped.
const SHARE_QUEUE: usize = 1024;
/// Marks a request a replica repeats to the others, naming it.
pub const SHARED_BY: &str = "switchboard-shared-by";
/// The request headers handed on: what the other replica checks (the
/// caller, the session, the revision's headers) and the trace.
const HANDED_HEADERS: [&str; 10] = [
    "authorization",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "host",
    "accept",
    "content-type",
    "traceparent",
    "tracestate",
];
/// A 2026-07-28 request's `x-mcp-header` arguments, checked against its
/// body.
const PARAM_HEADER_PREFIX: &str = "mcp-param-";
/// Answer headers a handed-on retry's answer keeps.
const ANSWER_HEADERS: [http::HeaderName; 3] = [
    http::header::CONTENT_TYPE,
    http::header::RETRY_AFTER,
    http::header::WWW_AUTHENTICATE,
];

/// This replica, the others' addresses, and what it repeats to them;
/// cheap to clone.
#[derive(Clone)]
pub struct Peers {
    link: Arc<Link>,
    /// Made on first use, with the task that sends them in order.
    shares: Arc<OnceLock<mpsc::Sender<Share>>>,
}

/// What sending to another replica takes.
struct Link {
    me: Arc<str>,
    by_id: ArcSwap<HashMap<String, String>>,
    /// Made on first use: after the TLS provider is installed.
    http: OnceLock<reqwest::Client>,
    sent: Family<PeerLabels, Counter>,
    next_id: AtomicU64,
}

/// One session change to repeat to every other replica.
struct Share {
    method: Method,
    body: Option<String>,
    headers: HeaderMap,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    /// `answer`, `retry` or `session`.
    kind: &'static str,
    /// `ok`, `refused` (the other replica answered with an error status),
    /// `failed` (it could not be reached) or `dropped` (too many waiting).
    outcome: &'static str,
}

impl Peers {
    pub fn new(me: &str) -> Self {
        Self {
            link: Arc::new(Link {
                me: me.into(),
                by_id: ArcSwap::default(),
                http: OnceLock::new(),
                sent: Family::default(),
                next_id: AtomicU64::new(1),
            }),
            shares: Arc::default(),
        }
    }

    /// This replica's id, which the ids of its questions and the states of
    /// its rounds carry.
    pub fn me(&self) -> &str {
        &self.link.me
    }

    /// The replicas the control plane says are connected, by id.
    pub fn replace(&self, peers: HashMap<String, String>) {
        self.link.by_id.store(Arc::new(peers));
    }

    /// Another replica's address, if the control plane gave one.
    fn url_of(&self, replica: &str) -> Option<String> {
        if replica == &*self.link.me {
            return None;
        }
        let url = self.link.by_id.load().get(replica).cloned();
        if url.is_none() {
            debug!(replica, "a replica this one does not know");
        }
        url
    }

    /// Hands a client's answer to the question `id` to the replica that
    /// asked it, if another one did and the control plane said where it
    /// is; whether it was sent on.
    pub fn hand_on(
        &self,
        id: &RequestId,
        answer: Result<&RawValue, &RawValue>,
        headers: &HeaderMap,
    ) -> bool {
        let RequestId::String(text) = id else {
            return false;
        };
        if headers.contains_key(SHARED_BY) {
            return false;
        }
        let Some((_, asker)) = text
            .strip_prefix("sb:")
            .and_then(|rest| rest.split_once('@'))
        else {
            return false;
        };
        let Some(url) = self.url_of(asker) else {
            return false;
        };
        let id = serde_json::to_string(id).unwrap_or_default();
        let body = match answer {
            Ok(result) => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#, result.get()),
            Err(error) => format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{}}}"#, error.get()),
        };
        let request = self
            .link
            .request(Method::POST, &url, headers)
            .timeout(HAND_ON_TIMEOUT)
            .body(body);
        let link = self.link.clone();
        let asker = asker.to_owned();
        tokio::spawn(
            async move {
                if link.send("answer", &asker, request).await.is_some() {
                    info!(replica = %asker, "handed a client's answer to the replica that asked");
                }
            }
            .in_current_span(),
        );
        true
    }

    /// Hands a retry (`body`, sent with `headers`) to `replica`, which
    /// holds the call it resumes, and passes its answer back, whatever it
    /// is; why not, if that replica is unknown or cannot be reached.
    pub async fn hand_retry(
        &self,
        replica: &str,
        body: String,
        headers: &HeaderMap,
    ) -> Result<Response, String> {
        if headers.contains_key(SHARED_BY) {
            return Err("it was handed here by another replica already".to_owned());
        }
        let Some(url) = self.url_of(replica) else {
            return Err(format!("replica `{replica}` is not connected"));
        };
        let request = self
            .link
            .request(Method::POST, &url, headers)
            .timeout(RETRY_TIMEOUT)
            .body(body);
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(error) => {
                self.link.count("retry", "failed");
                warn!(replica, error = %crate::downstream::with_causes(&error), "could not hand a retry to the replica holding its call");
                return Err(format!("replica `{replica}` could not be reached"));
            }
        };
        let outcome = if answer.status().is_success() {
            "ok"
        } else {
            "refused"
        };
        self.link.count("retry", outcome);
        let mut response = Response::builder().status(answer.status().as_u16());
        for name in ANSWER_HEADERS {
            if let Some(value) = answer.headers().get(&name) {
                response = response.header(name, value.as_bytes());
            }
        }
        let body = answer
            .bytes()
            .await
            .map_err(|e| format!("replica `{replica}` broke off its answer: {e}"))?;
        debug!(replica, "handed a retry to the replica holding its call");
        response
            .body(Body::from(body))
            .map_err(|e| format!("an answer of replica `{replica}`: {e}"))
    }

    /// Repeats a session's `method` request (its `params`, sent with the
    /// client's `headers`) to every other replica, unless another replica
    /// repeated it here.
    pub fn share_request(&self, headers: &HeaderMap, method: &str, params: serde_json::Value) {
        let n = self.link.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("sb-shared:{n}@{}", self.link.me);
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": method, "params": params,
        });
        self.share(Method::POST, Some(body.to_string()), headers);
    }

    /// Repeats a session's `DELETE` to every other replica, unless
    /// another replica repeated it here.
    pub fn share_delete(&self, headers: &HeaderMap) {
        self.share(Method::DELETE, None, headers);
    }

    fn share(&self, method: Method, body: Option<String>, headers: &HeaderMap) {
        if headers.contains_key(SHARED_BY) || self.link.by_id.load().is_empty() {
            return;
        }
        let queue = self.shares.get_or_init(|| {
            let (queue, shares) = mpsc::channel(SHARE_QUEUE);
            tokio::spawn(self.link.clone().repeat(shares));
            queue
        });
        let share = Share {
            method,
            body,
            headers: headers.clone(),
        };
        if queue.try_send(share).is_err() {
            warn!("too many session changes waiting to reach the other replicas: one is dropped");
            self.link.count("session", "dropped");
        }
    }
}

// === impl Link ===

impl Link {
    fn client(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                // An address from the control plane, never a redirect.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        })
    }

    /// A request to another replica carrying the client's headers it
    /// needs, marked as handed on.
    fn request(&self, method: Method, url: &str, headers: &HeaderMap) -> reqwest::RequestBuilder {
        let mut request = self
            .client()
            .request(method, url)
            .header(SHARED_BY, &*self.me);
        for (name, value) in headers {
            let name = name.as_str();
            if HANDED_HEADERS.contains(&name) || name.starts_with(PARAM_HEADER_PREFIX) {
                request = request.header(name, value);
            }
        }
        request
    }

    /// Sends `request` to `replica`; its response if it took it.
    async fn send(
        &self,
        kind: &'static str,
        replica: &str,
        request: reqwest::RequestBuilder,
    ) -> Option<reqwest::Response> {
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                self.count(kind, "ok");
                Some(response)
            }
            Ok(response) => {
                warn!(replica, kind, status = %response.status(), "another replica refused what this one handed it");
                self.count(kind, "refused");
                None
            }
            Err(error) => {
                warn!(replica, kind, error = %crate::downstream::with_causes(&error), "could not reach another replica");
                self.count(kind, "failed");
                None
            }
        }
    }

    /// Repeats each session change, in order, to every other replica.
    async fn repeat(self: Arc<Self>, mut shares: mpsc::Receiver<Share>) {
        while let Some(share) = shares.recv().await {
            let peers = self.by_id.load_full();
            let sends = peers
                .iter()
                .filter(|(id, _)| **id != *self.me)
                .map(|(id, url)| {
                    let mut request = self
                        .request(share.method.clone(), url, &share.headers)
                        .timeout(HAND_ON_TIMEOUT);
                    if let Some(body) = &share.body {
                        request = request.body(body.clone());
                    }
                    self.send("session", id, request)
                });
            futures::future::join_all(sends).await;
        }
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.sent.get_or_create(&PeerLabels { kind, outcome }).inc();
    }
}

impl Collector for Peers {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let sent = &self.link.sent;
        sent.encode(encoder.encode_descriptor(
            "peer_requests",
            "Requests handed to other replicas, by kind (answer: a client's answer to another replica's question; retry: a 2026-07-28 retry of a call parked on another replica; session: a subscription, log level or end repeated to every replica) and outcome (ok, refused, failed: not reached, dropped: too many waiting)",
            None,
            sent.metric_type(),
        )?)
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peers({} known)", self.link.by_id.load().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_another_known_replicas_questions_are_handed_on() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let peers = Peers::new("r0");
        peers.replace(HashMap::from([(
            "r1".to_owned(),
            "http://127.0.0.1:9/mcp".to_owned(),
        )]));
        let answer = RawValue::from_string("{}".to_owned()).expect("JSON");
        let hand_on = |id: RequestId| peers.hand_on(&id, Ok(&answer), &HeaderMap::new());
        assert!(hand_on(RequestId::String("sb:7@r1".into())));
        let mut handed = HeaderMap::new();
        handed.insert(SHARED_BY, "r2".parse().expect("value"));
        let id = RequestId::String("sb:7@r1".into());
        assert!(!peers.hand_on(&id, Ok(&answer), &handed), "handed on once");
        assert!(!hand_on(RequestId::String("sb:7@r0".into())), "its own");
        assert!(!hand_on(RequestId::String("sb:7@r9".into())), "unknown");
        assert!(
            !hand_on(RequestId::String("sb:7".into())),
            "names no replica"
        );
        assert!(!hand_on(RequestId::String("7@r1".into())), "not a question");
        assert!(!hand_on(RequestId::Number(7)));
    }

    #[test]
    fn only_the_headers_a_replica_needs_go_along_marked() {
        let peers = Peers::new("r0");
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().expect("value"));
        headers.insert("mcp-session-id", "abc".parse().expect("value"));
        headers.insert("content-length", "12".parse().expect("value"));
        headers.insert("connection", "keep-alive".parse().expect("value"));
        headers.insert("cookie", "c=1".parse().expect("value"));
        let request = peers
            .link
            .request(Method::POST, "http://127.0.0.1:9/mcp", &headers)
            .build()
            .expect("request");
        assert_eq!(request.headers()["authorization"], "Bearer t");
        assert_eq!(request.headers()["mcp-session-id"], "abc");
        assert_eq!(request.headers()[SHARED_BY], "r0");
        assert!(request.headers().get("content-length").is_none());
        assert!(request.headers().get("connection").is_none());
        assert!(request.headers().get("cookie").is_none());
    }

    #[tokio::test]
    async fn a_change_another_replica_repeated_is_not_repeated_again() {
        let peers = Peers::new("r0");
        peers.replace(HashMap::from([(
            "r1".to_owned(),
            "http://127.0.0.1:9/mcp".to_owned(),
        )]));
        let mut headers = HeaderMap::new();
        headers.insert(SHARED_BY, "r1".parse().expect("value"));
        peers.share_delete(&headers);
        assert!(peers.shares.get().is_none(), "nothing queued");
        peers.share_delete(&HeaderMap::new());
        assert!(peers.shares.get().is_some(), "queued for r1");
    }
}
