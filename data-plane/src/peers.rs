//! The other replicas of this control plane, and where each takes a
//! client's answer. A server's question to a client goes out on the call's
//! response stream of the replica running the call, under an id that names
//! that replica (`sb:<n>@<replica>`); a balancer may send the client's
//! answer to any replica. One that does not hold the question hands the
//! answer, as the client sent it (its session id and credentials
//! included), to the replica the id names, at the address the control
//! plane gave for it: never one a client chose.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use http::HeaderMap;
use rmcp::model::RequestId;
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

/// How long a handed-on answer may take to be taken.
const HAND_ON_TIMEOUT: Duration = Duration::from_secs(10);
/// The request headers an answer is handed on with.
const KEPT_HEADERS: [&str; 4] = [
    "authorization",
    "mcp-session-id",
    "mcp-protocol-version",
    "host",
];

/// This replica, and the others' addresses; cheap to clone.
#[derive(Clone)]
pub struct Peers {
    me: Arc<str>,
    by_id: Arc<ArcSwap<HashMap<String, String>>>,
    /// Made on first use: after the TLS provider is installed.
    http: Arc<OnceLock<reqwest::Client>>,
}

impl Peers {
    pub fn new(me: &str) -> Self {
        Self {
            me: me.into(),
            by_id: Arc::default(),
            http: Arc::default(),
        }
    }

    /// This replica's id, which the ids of its questions carry.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The replicas the control plane says are connected, by id.
    pub fn replace(&self, peers: HashMap<String, String>) {
        self.by_id.store(Arc::new(peers));
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
        let Some((_, asker)) = text
            .strip_prefix("sb:")
            .and_then(|rest| rest.split_once('@'))
        else {
            return false;
        };
        if asker == &*self.me {
            return false;
        }
        let Some(url) = self.by_id.load().get(asker).cloned() else {
            debug!(
                replica = asker,
                "an answer for a replica this one does not know"
            );
            return false;
        };
        let id = serde_json::to_string(id).unwrap_or_default();
        let body = match answer {
            Ok(result) => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#, result.get()),
            Err(error) => format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{}}}"#, error.get()),
        };
        let http = self.http.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(HAND_ON_TIMEOUT)
                // An address from the control plane, never a redirect.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        });
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        for name in KEPT_HEADERS {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value);
            }
        }
        let asker = asker.to_owned();
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    info!(replica = %asker, "handed a client's answer to the replica that asked");
                }
                Ok(response) => {
                    warn!(replica = %asker, status = %response.status(), "the replica that asked refused the client's answer");
                }
                Err(error) => {
                    warn!(replica = %asker, error = %crate::downstream::with_causes(&error), "could not hand a client's answer to the replica that asked");
                }
            }
        });
        true
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peers({} known)", self.by_id.load().len())
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
        assert!(!hand_on(RequestId::String("sb:7@r0".into())), "its own");
        assert!(!hand_on(RequestId::String("sb:7@r9".into())), "unknown");
        assert!(
            !hand_on(RequestId::String("sb:7".into())),
            "names no replica"
        );
        assert!(!hand_on(RequestId::String("7@r1".into())), "not a question");
        assert!(!hand_on(RequestId::Number(7)));
    }
}
