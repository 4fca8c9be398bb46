//! Replicas that prove themselves with a projected ServiceAccount token, as
//! the chart's gateways do: the kubelet mints each pod a token for this
//! control plane's audience, bound to that pod, and rotates it; the
//! Kubernetes API says, through a `TokenReview`, whose it is. A token is
//! admitted only when it is for this audience, of one of the gateways'
//! ServiceAccounts, and bound to a pod: that pod's name is the only replica
//! id its holder may use, so one replica cannot speak for another, and a
//! deleted pod's token stops working.
//!
//! Verdicts are cached by the token's SHA-256 (a minute when admitted, a
//! few seconds when refused), so a reconnecting replica or a stream of
//! span exports costs one review, and a process guessing tokens cannot
//! turn each guess into an API request.

use std::{collections::HashMap, fmt, str::FromStr, sync::Arc, time::Duration};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use parking_lot::Mutex;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family},
};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long an admitted token's verdict is reused.
const ADMITTED_FOR: Duration = Duration::from_secs(60);
/// How long a refused token's verdict is reused.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Verdicts kept at most; past this, expired ones go, then all.
const MAX_CACHED: usize = 1024;
/// How long one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// What the API server says of a token bound to a pod.
const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";

/// A ServiceAccount whose pods' tokens are replicas' (`namespace/name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

/// What a review concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A gateway's token, bound to this pod.
    Pod(String),
    /// Not a replica's token, and why (safe to tell the caller).
    Refused(String),
}

/// Reviews replicas' tokens; cheap to clone.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audience: Arc<str>,
    /// `system:serviceaccount:<namespace>:<name>` of each accepted account.
    usernames: Arc<[String]>,
    cache: Arc<Mutex<HashMap<[u8; 32], Cached>>>,
    reviews: Family<OutcomeLabels, Counter>,
}

struct Cached {
    until: Instant,
    verdict: Verdict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("a ServiceAccount is named `<namespace>/<name>`, not `{0}`")]
pub struct ServiceAccountRefError(String);

// === impl ServiceAccountRef ===

impl FromStr for ServiceAccountRef {
    type Err = ServiceAccountRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let label = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        match text.split_once('/') {
            Some((namespace, name)) if label(namespace) && label(name) => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(ServiceAccountRefError(text.to_owned())),
        }
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl TokenReviewer ===

impl TokenReviewer {
    pub fn new(client: Client, audience: &str, accounts: &[ServiceAccountRef]) -> Self {
        Self {
            client,
            audience: audience.into(),
            usernames: accounts
                .iter()
                .map(|a| format!("system:serviceaccount:{}:{}", a.namespace, a.name))
                .collect(),
            cache: Arc::default(),
            reviews: Family::default(),
        }
    }

    /// Whose `token` is; an error when the API could not say.
    pub async fn review(&self, token: &str) -> Result<Verdict, kube::Error> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.cache.lock().get(&key)
            && cached.until > Instant::now()
        {
            self.count("cached");
            return Ok(cached.verdict.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(vec![self.audience.to_string()]),
                token: Some(token.to_owned()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await;
        let reviewed = match reviewed {
            Ok(Ok(reviewed)) => reviewed,
            Ok(Err(error)) => {
                self.count("error");
                warn!(%error, "cannot review a replica's token");
                return Err(error);
            }
            Err(_) => {
                self.count("error");
                warn!(timeout = ?REVIEW_TIMEOUT, "a token review took too long");
                return Err(kube::Error::Service(
                    format!("no TokenReview answer within {REVIEW_TIMEOUT:?}").into(),
                ));
            }
        };
        let verdict = self.judge(reviewed);
        let lasts = match &verdict {
            Verdict::Pod(pod) => {
                self.count("admitted");
                debug!(%pod, "a replica's token admitted");
                ADMITTED_FOR
            }
            Verdict::Refused(why) => {
                self.count("refused");
                debug!(%why, "a token refused");
                REFUSED_FOR
            }
        };
        self.remember(key, verdict.clone(), lasts);
        Ok(verdict)
    }

    /// The verdict on what the API server said.
    fn judge(&self, reviewed: TokenReview) -> Verdict {
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            // The API server's own words say what is wrong with the token
            // without repeating it.
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Verdict::Refused(format!("the Kubernetes API refused the token: {why}"));
        }
        // An authenticator that ignores audiences answers none: a token
        // for another service must not pass as one for this.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| **a == *self.audience) {
            return Verdict::Refused(format!(
                "the token is not for this control plane's audience `{}`",
                self.audience
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if !self.usernames.contains(&username) {
            return Verdict::Refused(format!("`{username}` is not a gateway's ServiceAccount"));
        }
        let pod = user
            .extra
            .unwrap_or_default()
            .remove(POD_NAME_KEY)
            .and_then(|names| names.into_iter().next());
        match pod {
            Some(pod) if !pod.is_empty() => Verdict::Pod(pod),
            _ => Verdict::Refused(
                "the token is bound to no pod: mount a projected ServiceAccount token".into(),
            ),
        }
    }

    fn remember(&self, key: [u8; 32], verdict: Verdict, lasts: Duration) {
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, cached| cached.until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                until: Instant::now() + lasts,
                verdict,
            },
        );
    }

    fn count(&self, outcome: &'static str) {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.reviews.encode(encoder.encode_descriptor(
            "replica_token_reviews",
            "Replicas' ServiceAccount tokens checked, by outcome (admitted, refused, cached, error)",
            None,
            self.reviews.metric_type(),
        )?)
    }
}

impl fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .field("usernames", &self.usernames)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::*;

    fn reviewer() -> TokenReviewer {
        // Never contacted: `judge` only reads what a review answered.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = Client::try_from(config).expect("a client");
        let account = "switchboard/gateway".parse().expect("an account");
        TokenReviewer::new(client, "switchboard", &[account])
    }

    fn answered(
        authenticated: bool,
        audiences: &[&str],
        username: &str,
        pod: Option<&str>,
    ) -> TokenReview {
        let extra =
            pod.map(|pod| BTreeMap::from([(POD_NAME_KEY.to_owned(), vec![pod.to_owned()])]));
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
                error: (!authenticated).then(|| "invalid bearer token".to_owned()),
                user: Some(UserInfo {
                    username: Some(username.to_owned()),
                    extra,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn only_a_gateways_pod_bound_token_for_this_audience_is_admitted() {
        let reviewer = reviewer();
        let gateway = "system:serviceaccount:switchboard:gateway";
        assert_eq!(
            reviewer.judge(answered(true, &["switchboard"], gateway, Some("gw-1"))),
            Verdict::Pod("gw-1".into())
        );
        for (review, says) in [
            (
                answered(false, &[], "", None),
                "refused the token: invalid bearer token",
            ),
            (
                answered(
                    true,
                    &["https://kubernetes.default.svc"],
                    gateway,
                    Some("gw-1"),
                ),
                "not for this control plane's audience",
            ),
            (answered(true, &[], gateway, Some("gw-1")), "audience"),
            (
                answered(
                    true,
                    &["switchboard"],
                    "system:serviceaccount:other:gateway",
                    Some("gw-1"),
                ),
                "is not a gateway's ServiceAccount",
            ),
            (
                answered(true, &["switchboard"], gateway, None),
                "bound to no pod",
            ),
        ] {
            match reviewer.judge(review) {
                Verdict::Refused(why) => assert!(why.contains(says), "{why}"),
                admitted => panic!("admitted: {admitted:?}"),
            }
        }
    }

    #[test]
    fn service_accounts_are_namespace_slash_name() {
        let account: ServiceAccountRef = "team-a/switchboard-gateway".parse().expect("valid");
        assert_eq!(account.to_string(), "team-a/switchboard-gateway");
        for bad in [
            "gateway",
            "/gateway",
            "ns/",
            "ns/Gateway",
            "a/b/c",
            "ns/gate way",
        ] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let reviewer = reviewer();
        for n in 0..(MAX_CACHED as u32 + 10) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_le_bytes());
            reviewer.remember(key, Verdict::Pod("p".into()), ADMITTED_FOR);
        }
        assert!(reviewer.cache.lock().len() <= MAX_CACHED);
    }
}
