//! JWT callers: bearer tokens signed by an issuer the registry's
//! `McpGatewayConfig` trusts. Each gateway fetches the issuer's JWKS
//! itself (when the issuer is declared, in the background when the keys
//! are older than [`REFRESH`], and at once when a token names a key it
//! does not know, at most every [`MIN_REFETCH`] so a flood of made-up key
//! ids cannot turn into a flood of fetches). A token is accepted when its
//! signature checks against one of the issuer's asymmetric keys (HMAC and
//! `none` never: a public JWKS is no shared secret), its `iss` is the
//! issuer, its `aud` one of the audiences, and `exp` (required) and `nbf`
//! hold within the leeway. Keys a fetch fails to get are kept from the
//! last fetch that worked.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use base64::Engine;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, Jwk, PublicKeyUse},
};
use parking_lot::RwLock;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::Identity;

/// Keys older than this are fetched again in the background.
const REFRESH: Duration = Duration::from_secs(600);
/// The least time between two fetches of one issuer's keys.
const MIN_REFETCH: Duration = Duration::from_secs(5);
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Biggest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Claim values a token may carry (each value of a list counts); a
/// token with more is refused rather than judged on part of them.
const MAX_CLAIMS: usize = 1024;
/// The longest caller name.
const MAX_NAME_LEN: usize = 256;

/// The signatures accepted: public-key ones only.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One trusted issuer, as the snapshot declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: String,
    pub leeway: Duration,
    pub name_claim: String,
    pub groups_claim: String,
}

/// Why a JWT was refused; its label on `switchboard_jwt_rejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    UnknownIssuer,
    UnknownKey,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Audience,
    NoName,
    MissingClaim,
    TooManyClaims,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The trusted issuers and their keys; cheap to clone.
#[derive(Clone, Default)]
pub struct Issuers {
    by_iss: Arc<RwLock<HashMap<String, Arc<Issuer>>>>,
    /// Made at the first fetch (after the process chose its TLS provider).
    http: Arc<OnceLock<reqwest::Client>>,
    rejections: Family<ReasonLabels, Counter>,
    fetches: Family<OutcomeLabels, Counter>,
}

struct Issuer {
    config: IssuerConfig,
    keys: RwLock<Keys>,
    /// Held while fetching, so concurrent misses wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Keys {
    set: Vec<Jwk>,
    fetched: Option<Instant>,
    tried: Option<Instant>,
}

// === impl Rejection ===

impl Rejection {
    fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey => "unknown_key",
            Self::Algorithm => "algorithm",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::NoName => "no_name",
            Self::MissingClaim => "missing_claim",
            Self::TooManyClaims => "too_many_claims",
        }
    }

    /// What the client is told (the `error_description`).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Malformed => "the token is not a well-formed JWT",
            Self::UnknownIssuer => "the token's issuer is not one this gateway trusts",
            Self::UnknownKey => "the token is signed with a key its issuer does not publish",
            Self::Algorithm => "the token's signature algorithm is not accepted",
            Self::Signature => "the token's signature does not check",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::Audience => "the token is not meant for this gateway (audience)",
            Self::NoName => "the token lacks the claim naming the caller",
            Self::MissingClaim => "the token lacks exp, iss or aud",
            Self::TooManyClaims => "the token carries more claims than this gateway reads",
        }
    }

    fn from_error(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::MissingRequiredClaim(_) => Self::MissingClaim,
            ErrorKind::InvalidIssuer => Self::UnknownIssuer,
            ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => Self::Signature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Self::Algorithm,
            _ => Self::Malformed,
        }
    }
}

// === impl Issuers ===

impl Issuers {
    /// Replaces the trusted issuers; an issuer whose settings did not
    /// change keeps its keys, a new one has them fetched now.
    pub fn replace(&self, configs: Vec<IssuerConfig>) {
        let mut fresh = Vec::new();
        {
            let mut by_iss = self.by_iss.write();
            let mut next = HashMap::new();
            for config in configs {
                let issuer = match by_iss.remove(&config.issuer) {
                    Some(kept) if kept.config == config => kept,
                    _ => {
                        let issuer = Arc::new(Issuer {
                            config: config.clone(),
                            keys: RwLock::default(),
                            fetching: tokio::sync::Mutex::new(()),
                        });
                        fresh.push(issuer.clone());
                        issuer
                    }
                };
                next.insert(config.issuer, issuer);
            }
            *by_iss = next;
        }
        for issuer in fresh {
            let this = self.clone();
            tokio::spawn(async move { this.fetch(&issuer).await });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_iss.read().is_empty()
    }

    /// The trusted issuers, for the protected-resource metadata.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_iss.read().keys().cloned().collect();
        names.sort();
        names
    }

    pub fn count(&self) -> usize {
        self.by_iss.read().len()
    }

    /// The identity a JWT proves, or why it proves none.
    pub async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let verified = self.check(token).await;
        if let Err(rejection) = verified {
            self.rejections
                .get_or_create(&ReasonLabels {
                    reason: rejection.label(),
                })
                .inc();
        }
        verified
    }

    async fn check(&self, token: &str) -> Result<Identity, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(Rejection::Algorithm);
        }
        let iss = unverified_issuer(token).ok_or(Rejection::Malformed)?;
        let issuer = self
            .by_iss
            .read()
            .get(&iss)
            .cloned()
            .ok_or(Rejection::UnknownIssuer)?;
        let jwk = match issuer.key(header.kid.as_deref(), header.alg) {
            Some(jwk) => jwk,
            None => {
                self.refetch(&issuer).await;
                issuer
                    .key(header.kid.as_deref(), header.alg)
                    .ok_or(Rejection::UnknownKey)?
            }
        };
        if issuer.stale() {
            let (this, stale) = (self.clone(), issuer.clone());
            tokio::spawn(async move { this.refetch(&stale).await });
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| Rejection::UnknownKey)?;
        let config = &issuer.config;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| Rejection::from_error(e.kind()))?
            .claims;
        identity(config, &claims)
    }

    /// Fetches an issuer's keys again unless that was tried a moment ago.
    async fn refetch(&self, issuer: &Arc<Issuer>) {
        let _one = issuer.fetching.lock().await;
        let recent = issuer
            .keys
            .read()
            .tried
            .is_some_and(|tried| tried.elapsed() < MIN_REFETCH);
        if !recent {
            self.fetch_locked(issuer).await;
        }
    }

    async fn fetch(&self, issuer: &Arc<Issuer>) {
        let _one = issuer.fetching.lock().await;
        self.fetch_locked(issuer).await;
    }

    async fn fetch_locked(&self, issuer: &Issuer) {
        let config = &issuer.config;
        issuer.keys.write().tried = Some(Instant::now());
        let outcome = match self.download(&config.jwks_uri).await {
            Ok(set) => {
                // Signing keys only: not shared secrets, not encryption keys.
                let usable: Vec<Jwk> = set
                    .into_iter()
                    .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
                    .filter(|jwk| {
                        !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                    })
                    .collect();
                debug!(issuer = %config.issuer, keys = usable.len(), "fetched the issuer's signing keys");
                let mut keys = issuer.keys.write();
                keys.set = usable;
                keys.fetched = Some(Instant::now());
                "ok"
            }
            Err(error) => {
                warn!(issuer = %config.issuer, jwks_uri = %crate::redact::urls(&config.jwks_uri), %error, "cannot fetch the issuer's signing keys; keeping the last ones");
                "error"
            }
        };
        self.fetches.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The keys of the JWKS at `uri`; a key this gateway cannot read (an
    /// algorithm it does not know) is left out, not the whole set.
    async fn download(&self, uri: &str) -> Result<Vec<Jwk>, String> {
        let http = match self.http.get() {
            Some(http) => http,
            None => {
                let built = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
                self.http.get_or_init(|| built)
            }
        };
        // The URL is logged redacted by the caller; errors leave it out.
        let mut response = http
            .get(uri)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("a JWKS over {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        Ok(set
            .keys
            .into_iter()
            .filter_map(|key| serde_json::from_value(key).ok())
            .collect())
    }

    /// `jwt_rejections_total` and `jwks_fetches_total`.
    pub fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        self.rejections.encode(encoder.encode_descriptor(
            "jwt_rejections",
            "Bearer JWTs refused, by reason",
            None,
            self.rejections.metric_type(),
        )?)?;
        self.fetches.encode(encoder.encode_descriptor(
            "jwks_fetches",
            "Fetches of JWT issuers' signing keys, by outcome",
            None,
            self.fetches.metric_type(),
        )?)
    }
}

// === impl Issuer ===

impl Issuer {
    /// The key a token names (by `kid`, or the only one when it names
    /// none), if it may sign with `alg`.
    fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
        let keys = self.keys.read();
        let jwk = match kid {
            Some(kid) => keys
                .set
                .iter()
                .find(|jwk| jwk.common.key_id.as_deref() == Some(kid))?,
            None if keys.set.len() == 1 => &keys.set[0],
            None => return None,
        };
        let declared = jwk.common.key_algorithm.map(|a| a.to_string());
        let fits = declared.is_none_or(|declared| declared == format!("{alg:?}"));
        fits.then(|| jwk.clone())
    }

    fn stale(&self) -> bool {
        let keys = self.keys.read();
        keys.fetched.is_none_or(|at| at.elapsed() > REFRESH)
            && keys.tried.is_none_or(|at| at.elapsed() > MIN_REFETCH)
    }
}

/// The `iss` of a token, read before its signature is checked only to
/// pick whose keys check it.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// The caller a verified token names, its groups, and its claims for
/// policy subjects (strings, numbers and booleans as text, each value of
/// a list on its own).
fn identity(config: &IssuerConfig, claims: &Map<String, Value>) -> Result<Identity, Rejection> {
    let name = claims
        .get(&config.name_claim)
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty() && name.len() <= MAX_NAME_LEN)
        .ok_or(Rejection::NoName)?;
    let groups: Vec<String> = match claims.get(&config.groups_claim) {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let text = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    };
    let mut kept = Vec::new();
    for (key, value) in claims {
        let values: Vec<String> = match value {
            Value::Array(items) => items.iter().filter_map(text).collect(),
            scalar => text(scalar).into_iter().collect(),
        };
        kept.extend(values.into_iter().map(|value| (key.clone(), value)));
        if kept.len() > MAX_CLAIMS {
            return Err(Rejection::TooManyClaims);
        }
    }
    Ok(Identity {
        name: name.into(),
        owner: format!("{}#{name}", config.issuer).into(),
        groups: groups.into(),
        claims: kept.into(),
    })
}

#[cfg(test)]
mod tests;
