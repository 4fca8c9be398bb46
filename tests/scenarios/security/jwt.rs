//! Callers with JWTs: an `McpGatewayConfig` trusts an issuer whose keys a
//! local JWKS server publishes (keys made here, tokens signed here). Valid
//! tokens get in as their `sub`, policies name callers by claims, expired
//! tokens and tokens for another audience get 401 saying why, and a key
//! the issuer rotates in is picked up when a token names it.

use std::{net::SocketAddr, sync::Arc};

use axum::{Json, Router, routing::get};
use base64::Engine;
use e2e::{
    EVENTUALLY, Switchboard, call, connect_with_headers, demo_server_yaml, eventually, tool_names,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::RwLock;
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use serde_json::{Value, json};

const ISSUER: &str = "https://login.e2e.test/";

/// An ES256 signing key and its public JWK.
struct SigningKey {
    kid: &'static str,
    jwk: Value,
    encoding: EncodingKey,
}

impl SigningKey {
    fn new(kid: &'static str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("a P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("the key parses");
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self {
            kid,
            jwk: json!({ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                         "x": b64(&point[1..33]), "y": b64(&point[33..65]) }),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }

    /// A token for `sub` with `extra` claims over sensible defaults.
    fn token(&self, sub: &str, extra: Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let mut claims = json!({ "iss": ISSUER, "aud": "switchboard", "sub": sub,
                                 "iat": now, "exp": now + 300 });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("signed")
    }
}

/// Serves the keys in `keys` as a JWKS at `/jwks`.
async fn jwks_server(keys: Arc<RwLock<Vec<Value>>>) -> SocketAddr {
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let keys = keys.read().clone();
            async move { Json(json!({ "keys": keys })) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the JWKS server");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `initialize` with `token` as bearer: the status and `WWW-Authenticate`.
async fn initialize_as(url: &str, token: Option<&str>) -> (u16, String) {
    let http = reqwest::Client::new();
    let mut request = e2e::initialize_post(&http, url, json!(0));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("initialize");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), challenge)
}

#[tokio::test]
async fn jwts_from_a_trusted_issuer_are_callers_and_policies_name_them_by_claims() {
    let first = SigningKey::new("first");
    let served = Arc::new(RwLock::new(vec![first.jwk.clone()]));
    let jwks = jwks_server(served.clone()).await;
    let marker = format!("jwt-{}", std::process::id());
    let gateway_config = format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpGatewayConfig\nmetadata: {{name: default}}\nspec:\n  jwt:\n    - issuer: '{ISSUER}'\n      audiences: [switchboard]\n      jwksUri: 'http://{jwks}/jwks'\n      leeway: 5s\n---\napiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {{name: payments-no-sleep}}\nspec:\n  subjects: {{claims: {{team: payments}}}}\n  deny: {{tools: [d.sleep]}}\n"
    );
    let sb = Switchboard::start(&[
        ("d.yaml", &demo_server_yaml("d", &marker, &[])),
        ("gateway.yaml", &gateway_config),
    ])
    .await;
    sb.wait_server_state("d", "ready").await;
    let url = sb.mcp_url();

    // An issuer is declared: nobody gets in without a token, loopback too.
    let (status, challenge) = initialize_as(&url, None).await;
    assert_eq!(status, 401, "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    let metadata: Value = reqwest::get(format!(
        "http://{}/.well-known/oauth-protected-resource",
        sb.gateway_addr
    ))
    .await
    .expect("metadata")
    .json()
    .await
    .expect("JSON");
    assert_eq!(metadata["authorization_servers"], json!([ISSUER]));

    // A valid token: its `sub` is the caller; its claims put it under the
    // policy, which hides and refuses d.sleep.
    let token = first.token("alice", json!({ "team": "payments" }));
    let bearer = format!("Bearer {token}");
    let alice = connect_with_headers(&url, &[("authorization", &bearer)])
        .await
        .expect("alice connects with her JWT");
    let names = tool_names(&alice).await.expect("tools/list");
    assert!(names.contains(&"d.echo".to_owned()), "{names:?}");
    assert!(!names.contains(&"d.sleep".to_owned()), "{names:?}");
    call(&alice, "d.echo", json!({ "text": "as alice" }))
        .await
        .expect("alice calls");
    sb.wait_traces("caller=alice&tool=d.echo").await;
    // Another team's caller is not under the policy.
    let bob = connect_with_headers(
        &url,
        &[(
            "authorization",
            &format!("Bearer {}", first.token("bob", json!({ "team": "search" }))),
        )],
    )
    .await
    .expect("bob connects");
    let names = tool_names(&bob).await.expect("tools/list");
    assert!(names.contains(&"d.sleep".to_owned()), "{names:?}");

    // Refusals say why, in the header OAuth clients read.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    for (token, why) in [
        (first.token("alice", json!({ "exp": now - 600 })), "expired"),
        (
            first.token("alice", json!({ "aud": "another-service" })),
            "audience",
        ),
        (
            SigningKey::new("first").token("mallory", json!({})),
            "signature",
        ),
    ] {
        let (status, challenge) = initialize_as(&url, Some(&token)).await;
        assert_eq!(status, 401, "{why}");
        assert!(
            challenge.contains(r#"error="invalid_token""#) && challenge.contains(why),
            "{why}: {challenge}"
        );
    }
    let rejections = e2e::metric(
        &sb.gateway_metrics().await,
        "switchboard_jwt_rejections_total",
        &[("reason", "expired")],
    );
    assert_eq!(rejections, Some(1.0));

    // The issuer rotates to a new key: a token signed with it gets in once
    // the gateway has fetched the keys again (at most every few seconds).
    let second = SigningKey::new("second");
    *served.write() = vec![second.jwk.clone()];
    let rotated = second.token("carol", json!({}));
    eventually("the rotated key is accepted", EVENTUALLY, || async {
        let (status, challenge) = initialize_as(&url, Some(&rotated)).await;
        (status == 200).then_some(()).ok_or(challenge)
    })
    .await;
    let (status, _) = initialize_as(&url, Some(&first.token("alice", json!({})))).await;
    assert_eq!(status, 401, "the retired key signs nothing any more");
    alice.cancel().await.expect("close");
    bob.cancel().await.expect("close");
}
