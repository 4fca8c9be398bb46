//! Replicas that prove themselves with a projected ServiceAccount token, as
//! the chart's gateways do: the kubelet mints each pod a token for this
//! control plane's audience, bound to that pod, and rotates it; the
//! Kubernetes API says, through a `TokenReview`, whose it is. A token is
//! admitted only when it is for this audience, of one of the gateways'
//! ServiceAccounts, and bound to a pod: that pod's name is the only replica
//! id its holder may use, so one replica cannot speak for another, and a
//! deleted pod's token stops working.
//!
//! Before asking, a token is read for what it says of itself (unverified:
//! a JWT's audience, subject, expiry and pod): what cannot be a gateway's
//! token for this audience is refused without an API request, so random
//! guesses cost the API server nothing, and at most
//! [`MAX_CONCURRENT_REVIEWS`] reviews run at once whatever arrives.
//! Verdicts are cached by the token's SHA-256 (admitted ones for a minute
//! or until the token expires, refused ones for a few seconds, in caches
//! of their own so a flood of refusals never evicts an admitted replica),
//! so a reconnecting replica or a stream of span exports costs one review.
//! Open config streams are reviewed again as they go
//! ([`crate::auth::ReplicaGate::readmit`]): a deleted pod's token stops
//! working within [`ADMITTED_FOR`] and a recheck.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use parking_lot::Mutex;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::{sync::Semaphore, time::Instant};
use tracing::{debug, warn};

/// How long an admitted token's verdict is reused (at most: never past
/// the token's expiry).
pub const ADMITTED_FOR: Duration = Duration::from_secs(60);
/// How long a refused token's verdict is reused.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Verdicts kept at most per cache; past this, expired ones go, then all.
const MAX_CACHED: usize = 1024;
/// Reviews asked of the API server at once; more wait their turn.
const MAX_CONCURRENT_REVIEWS: usize = 4;
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
    admitted: Arc<Mutex<HashMap<[u8; 32], Cached>>>,
    refused: Arc<Mutex<HashMap<[u8; 32], Cached>>>,
    in_flight: Arc<Semaphore>,
    reviews: Family<OutcomeLabels, Counter>,
}

struct Cached {
    until: Instant,
    verdict: Verdict,
}

/// What a ServiceAccount token says of itself, before anyone checked it.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Vec<String>,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: u64,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    pod: Option<PodClaim>,
}

#[derive(Deserialize)]
struct PodClaim {
    name: String,
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
            admitted: Arc::default(),
            refused: Arc::default(),
            in_flight: Arc::new(Semaphore::new(MAX_CONCURRENT_REVIEWS)),
            reviews: Family::default(),
        }
    }

    /// Whose `token` is; an error when the API could not say.
    pub async fn review(&self, token: &str) -> Result<Verdict, kube::Error> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        for cache in [&self.admitted, &self.refused] {
            if let Some(cached) = cache.lock().get(&key)
                && cached.until > Instant::now()
            {
                self.count("cached");
                return Ok(cached.verdict.clone());
            }
        }
        let expires_in = match self.precheck(token) {
            Ok(expires_in) => expires_in,
            Err(why) => {
                self.count("malformed");
                return Ok(Verdict::Refused(why));
            }
        };
        let Ok(Ok(_turn)) =
            tokio::time::timeout(REVIEW_TIMEOUT, self.in_flight.clone().acquire_owned()).await
        else {
            self.count("error");
            warn!("too many token reviews waiting");
            return Err(kube::Error::Service(
                "too many token reviews waiting".into(),
            ));
        };
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
        let (cache, lasts) = match &verdict {
            Verdict::Pod(pod) => {
                self.count("admitted");
                debug!(%pod, "a replica's token admitted");
                (&self.admitted, ADMITTED_FOR.min(expires_in))
            }
            Verdict::Refused(why) => {
                self.count("refused");
                debug!(%why, "a token refused");
                (&self.refused, REFUSED_FOR)
            }
        };
        remember(cache, key, verdict.clone(), lasts);
        Ok(verdict)
    }

    /// What the token says of itself, read without trusting it: refused
    /// when it cannot be a gateway pod's token for this audience; else how
    /// long until it expires.
    fn precheck(&self, token: &str) -> Result<Duration, String> {
        let not_one = || "not a ServiceAccount token (a JWT)".to_owned();
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not_one());
        };
        let payload = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| not_one())?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| not_one())?;
        if !claims.aud.iter().any(|a| **a == *self.audience) {
            return Err(format!(
                "the token is not for this control plane's audience `{}`",
                self.audience
            ));
        }
        if !self.usernames.contains(&claims.sub) {
            return Err(format!(
                "`{}` is not a gateway's ServiceAccount",
                claims.sub
            ));
        }
        if claims
            .kubernetes
            .and_then(|k| k.pod)
            .is_none_or(|p| p.name.is_empty())
        {
            return Err(
                "the token is bound to no pod: mount a projected ServiceAccount token".into(),
            );
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match claims.exp.checked_sub(now) {
            Some(left) if left > 0 => Ok(Duration::from_secs(left)),
            _ => Err("the token has expired".into()),
        }
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

    fn count(&self, outcome: &'static str) {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.reviews.encode(encoder.encode_descriptor(
            "replica_token_reviews",
            "Replicas' ServiceAccount tokens checked, by outcome (admitted, refused, cached, malformed: refused unasked, error)",
            None,
            self.reviews.metric_type(),
        )?)
    }
}

/// Keeps `verdict` in `cache` for `lasts`, within [`MAX_CACHED`].
fn remember(
    cache: &Mutex<HashMap<[u8; 32], Cached>>,
    key: [u8; 32],
    verdict: Verdict,
    lasts: Duration,
) {
    let mut cache = cache.lock();
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
    use serde_json::json;

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
    async fn the_caches_stay_bounded_and_refusals_never_evict_an_admitted_replica() {
        let reviewer = reviewer();
        remember(
            &reviewer.admitted,
            [7; 32],
            Verdict::Pod("p".into()),
            ADMITTED_FOR,
        );
        for n in 0..(MAX_CACHED as u32 + 10) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_le_bytes());
            remember(
                &reviewer.refused,
                key,
                Verdict::Refused("no".into()),
                REFUSED_FOR,
            );
        }
        assert!(reviewer.refused.lock().len() <= MAX_CACHED);
        assert!(reviewer.admitted.lock().contains_key(&[7; 32]));
    }

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    /// What cannot be a gateway pod's token for this audience is refused
    /// before the API server is asked (`review` would fail to reach it).
    #[tokio::test]
    async fn tokens_that_cannot_be_a_gateways_are_refused_unasked() {
        let reviewer = reviewer();
        let later = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 600;
        let good = json!({ "aud": ["switchboard"], "sub": "system:serviceaccount:switchboard:gateway",
            "exp": later, "kubernetes.io": { "pod": { "name": "gw-1" } } });
        let left = reviewer
            .precheck(&jwt(good.clone()))
            .expect("could be a gateway's");
        assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(500));
        let with = |key: &str, value: serde_json::Value| {
            let mut claims = good.clone();
            claims[key] = value;
            jwt(claims)
        };
        for (token, says) in [
            (
                "0123456789abcdef0123".to_owned(),
                "not a ServiceAccount token",
            ),
            ("a.!!!.c".to_owned(), "not a ServiceAccount token"),
            (with("aud", json!(["vault"])), "audience"),
            (
                with("sub", json!("system:serviceaccount:x:y")),
                "not a gateway's",
            ),
            (with("exp", json!(1)), "expired"),
            (with("kubernetes.io", json!({})), "bound to no pod"),
        ] {
            let why = reviewer.precheck(&token).expect_err(says);
            assert!(why.contains(says), "{why}");
            assert_eq!(
                reviewer.review(&token).await.expect("no API call"),
                Verdict::Refused(why)
            );
        }
    }
}
