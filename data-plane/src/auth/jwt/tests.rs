//! Tokens signed here with keys made on the spot, checked against a JWKS
//! served over real HTTP on loopback.

use std::net::SocketAddr;

use axum::{Json, Router, routing::get};
use jsonwebtoken::{EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use serde_json::json;

use super::*;

const ISSUER: &str = "https://login.example.test/";

/// An ES256 key: its JWK (public half) and what signs with it.
struct SigningKey {
    kid: String,
    jwk: Value,
    encoding: EncodingKey,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("a P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("the key parses");
        // Uncompressed point: 0x04, then x and y.
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self {
            kid: kid.to_owned(),
            jwk: json!({ "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                         "x": b64(&point[1..33]), "y": b64(&point[33..65]) }),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed")
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": "switchboard", "sub": "alice",
        "exp": now() + 300, "groups": ["dev", "ops"], "team": "payments",
    });
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    claims
}

/// Serves `keys` as a JWKS; the returned handle swaps them.
async fn jwks_server(keys: Vec<Value>) -> (SocketAddr, Arc<RwLock<Vec<Value>>>) {
    let served = Arc::new(RwLock::new(keys));
    let state = served.clone();
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let keys = state.read().clone();
            async move { Json(json!({ "keys": keys })) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, served)
}

async fn issuers_for(addr: SocketAddr) -> Issuers {
    // As the binary does before anything makes an HTTP client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuers = Issuers::default();
    issuers.replace(vec![IssuerConfig {
        issuer: ISSUER.into(),
        audiences: vec!["switchboard".into()],
        jwks_uri: format!("http://{addr}/jwks"),
        leeway: Duration::from_secs(30),
        name_claim: "sub".into(),
        groups_claim: "groups".into(),
    }]);
    // The first fetch runs in the background; tests start after it.
    for _ in 0..200 {
        let fetched = issuers
            .by_iss
            .read()
            .values()
            .all(|issuer| issuer.keys.read().fetched.is_some());
        if fetched {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    issuers
}

#[tokio::test]
async fn a_valid_token_names_its_caller_groups_and_claims() {
    let key = SigningKey::new("k1");
    let (addr, _) = jwks_server(vec![key.jwk.clone()]).await;
    let issuers = issuers_for(addr).await;
    let identity = issuers
        .verify(&key.sign(&claims(json!({}))))
        .await
        .expect("accepted");
    assert_eq!(&*identity.name, "alice");
    assert_eq!(&*identity.groups, ["dev", "ops"]);
    assert!(
        identity
            .claims
            .contains(&("team".to_owned(), "payments".to_owned()))
    );
    assert!(
        identity
            .claims
            .contains(&("groups".to_owned(), "ops".to_owned()))
    );
}

#[tokio::test]
async fn expiry_audience_issuer_and_signature_are_checked() {
    let key = SigningKey::new("k1");
    let (addr, _) = jwks_server(vec![key.jwk.clone()]).await;
    let issuers = issuers_for(addr).await;
    let within_leeway = key.sign(&claims(json!({ "exp": now() - 10 })));
    assert!(issuers.verify(&within_leeway).await.is_ok(), "leeway");
    let cases = [
        (
            key.sign(&claims(json!({ "exp": now() - 120 }))),
            Rejection::Expired,
        ),
        (
            key.sign(&claims(json!({ "nbf": now() + 120 }))),
            Rejection::NotYetValid,
        ),
        (
            key.sign(&claims(json!({ "aud": "another-service" }))),
            Rejection::Audience,
        ),
        (
            key.sign(&claims(json!({ "iss": "https://elsewhere.test/" }))),
            Rejection::UnknownIssuer,
        ),
        (key.sign(&claims(json!({ "sub": 7 }))), Rejection::NoName),
        (
            SigningKey::new("k1").sign(&claims(json!({}))),
            Rejection::Signature,
        ),
        ("not.a-jwt".to_owned(), Rejection::Malformed),
    ];
    for (token, expected) in cases {
        assert_eq!(
            issuers.verify(&token).await.map(|i| i.name),
            Err(expected),
            "{expected:?}"
        );
    }
    let missing_exp = {
        let mut without = claims(json!({}));
        without.as_object_mut().map(|c| c.remove("exp"));
        key.sign(&without)
    };
    assert!(issuers.verify(&missing_exp).await.is_err(), "exp required");
    let refused = issuers
        .rejections
        .get_or_create(&ReasonLabels { reason: "expired" })
        .get();
    assert_eq!(refused, 1);
}

/// A JWKS is public: a token signed with it as an HMAC secret, or not
/// signed at all, proves nothing.
#[tokio::test]
async fn hmac_and_unsigned_tokens_are_refused() {
    let key = SigningKey::new("k1");
    let (addr, _) = jwks_server(vec![key.jwk.clone()]).await;
    let issuers = issuers_for(addr).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let hmac = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &EncodingKey::from_secret(key.jwk.to_string().as_bytes()),
    )
    .expect("signed");
    assert_eq!(
        issuers.verify(&hmac).await.map(|i| i.name),
        Err(Rejection::Algorithm)
    );
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&claims(json!({})))
    );
    assert!(issuers.verify(&unsigned).await.is_err());
}

/// A token signed with a key published after the last fetch is accepted
/// once the keys are fetched again, which a miss does at most every
/// [`MIN_REFETCH`].
#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let old = SigningKey::new("old");
    let (addr, served) = jwks_server(vec![old.jwk.clone()]).await;
    let issuers = issuers_for(addr).await;
    assert!(issuers.verify(&old.sign(&claims(json!({})))).await.is_ok());

    let new = SigningKey::new("new");
    *served.write() = vec![new.jwk.clone()];
    let token = new.sign(&claims(json!({})));
    assert_eq!(
        issuers.verify(&token).await.map(|i| i.name),
        Err(Rejection::UnknownKey),
        "fetched a moment ago: not again yet"
    );
    for issuer in issuers.by_iss.read().values() {
        issuer.keys.write().tried = None;
    }
    let identity = issuers
        .verify(&token)
        .await
        .expect("the new key is fetched");
    assert_eq!(&*identity.name, "alice");
    assert_eq!(
        issuers
            .verify(&old.sign(&claims(json!({}))))
            .await
            .map(|i| i.name),
        Err(Rejection::UnknownKey),
        "the retired key is gone"
    );
    let fetched = issuers
        .fetches
        .get_or_create(&OutcomeLabels { outcome: "ok" })
        .get();
    assert_eq!(fetched, 2);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a caller sends as a bearer token (any text, or three
        /// parts of any JSON-ish bytes), it is refused with a reason,
        /// never accepted and never a panic.
        #[test]
        fn any_bearer_is_refused_without_a_panic(
            text in ".{0,200}",
            header in proptest::collection::vec(any::<u8>(), 0..64),
            payload in proptest::collection::vec(any::<u8>(), 0..128),
            signature in proptest::collection::vec(any::<u8>(), 0..64),
            alg in prop_oneof![Just("ES256"), Just("RS256"), Just("HS256"), Just("none"), Just("EdDSA")],
        ) {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let issuers = Issuers::default();
                issuers.replace(vec![IssuerConfig {
                    issuer: ISSUER.into(),
                    audiences: vec!["switchboard".into()],
                    // Nothing listens there: every fetch fails.
                    jwks_uri: "http://127.0.0.1:9/jwks".into(),
                    leeway: Duration::from_secs(30),
                    name_claim: "sub".into(),
                    groups_claim: "groups".into(),
                }]);
                prop_assert!(issuers.verify(&text).await.is_err());
                let shaped = format!(
                    "{}.{}.{}",
                    b64(&[br#"{"alg":""#.as_slice(), alg.as_bytes(), br#"","kid":"k"}"#.as_slice(), &header].concat()),
                    b64(&[br#"{"iss":""#.as_slice(), ISSUER.as_bytes(), br#"","#.as_slice(), &payload].concat()),
                    b64(&signature),
                );
                prop_assert!(issuers.verify(&shaped).await.is_err());
                Ok(())
            })?;
        }
    }
}
