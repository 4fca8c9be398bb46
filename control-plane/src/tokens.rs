//! The tokens a cluster install runs on, kept in one Secret the control
//! plane makes on its first start (so neither `helm template` nor a plain
//! manifest ever holds one): `replica` (gateways on the gRPC port),
//! `admin` (`/status`, `/traces`, the gateways' detailed `/healthz`) and
//! `client` (the chart's default `McpClient`), `session-keys` (the key set
//! session ids are sealed with, [`crate::session_keys`]); and, when the gRPC port's
//! names are given, its TLS certificate: `ca.crt` (what gateways trust),
//! `tls.crt` and `tls.key` ([`crate::tls`]). A Secret that exists is kept
//! as it is; keys it lacks are added. Control-plane pods starting
//! together race on the create, and the loser reads the winner's. The
//! values are never logged. To rotate: delete the Secret, then restart the
//! control plane and then the gateways (a new session key ends every
//! session; the key set alone rotates without that, see the README).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

use crate::{
    auth::Token,
    tls::{ServerTls, TlsError},
};

/// The keys of the Secret.
pub const REPLICA_KEY: &str = "replica";
pub const ADMIN_KEY: &str = "admin";
pub const CLIENT_KEY: &str = "client";
/// A random token is also one session key in the key set's form
/// ([`crate::session_keys`]).
const KEYS: [&str; 4] = [
    REPLICA_KEY,
    ADMIN_KEY,
    CLIENT_KEY,
    crate::session_keys::SECRET_KEY,
];
pub const CA_KEY: &str = "ca.crt";
const CERT_KEY: &str = "tls.crt";
const PRIVATE_KEY: &str = "tls.key";
const TLS_KEYS: [&str; 3] = [CA_KEY, CERT_KEY, PRIVATE_KEY];
/// The names the kept certificate was made for: other names make a new
/// one (and gateways then need a restart to read the new CA).
const TLS_NAMES_ANNOTATION: &str = "switchboard.dev/grpc-tls-names";

/// Tries before giving up (an API server that is not there yet, races).
const ATTEMPTS: u32 = 10;
const RETRY: Duration = Duration::from_secs(2);

/// What the control plane itself needs of the Secret.
pub struct ClusterTokens {
    pub replica: Token,
    pub admin: Token,
    /// When the gRPC port's names were given.
    pub tls: Option<ServerTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read or write Secret `{namespace}/{name}`: {source}")]
    Api {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    Random(#[from] proto::auth::TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("Secret `{namespace}/{name}` key `{key}` is not a usable token: {reason}")]
    Unusable {
        namespace: String,
        name: String,
        key: &'static str,
        reason: String,
    },
}

/// The tokens in Secret `namespace/name`, made first if need be; with
/// `tls_names`, the gRPC port's certificate for them too.
pub async fn ensure(
    client: Client,
    namespace: &str,
    name: &str,
    tls_names: &[String],
) -> Result<ClusterTokens, TokensError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    // Made once: whichever of them ends up stored, none is ever logged.
    let mut fresh = BTreeMap::new();
    for key in KEYS {
        let token = Token::generate()?;
        fresh.insert(
            key.to_owned(),
            ByteString(token.expose().as_bytes().to_vec()),
        );
    }
    let mut wanted = KEYS.to_vec();
    if !tls_names.is_empty() {
        let made = ServerTls::generate(tls_names)?;
        for (key, pem) in [
            (CA_KEY, made.ca_pem),
            (CERT_KEY, made.cert_pem),
            (PRIVATE_KEY, made.key_pem),
        ] {
            fresh.insert(key.to_owned(), ByteString(pem.into_bytes()));
        }
        wanted.extend(TLS_KEYS);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ensure_once(&secrets, name, &fresh, &wanted, &tls_names.join(",")).await {
            Ok(data) => return tokens(&data, namespace, name, !tls_names.is_empty()),
            Err(err) if attempt < ATTEMPTS && retryable(&err) => {
                warn!(%namespace, secret = name, error = %err, "cannot ensure the tokens Secret yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
            Err(err) => {
                return Err(TokensError::Api {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source: Box::new(err),
                });
            }
        }
    }
}

/// One round: read, create or complete; the Secret's data.
async fn ensure_once(
    secrets: &Api<Secret>,
    name: &str,
    fresh: &BTreeMap<String, ByteString>,
    wanted: &[&str],
    tls_names: &str,
) -> Result<BTreeMap<String, ByteString>, kube::Error> {
    let annotations = || {
        (!tls_names.is_empty())
            .then(|| BTreeMap::from([(TLS_NAMES_ANNOTATION.to_owned(), tls_names.to_owned())]))
    };
    match secrets.get_opt(name).await? {
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "switchboard-control-plane".to_owned(),
                    )])),
                    annotations: annotations(),
                    ..ObjectMeta::default()
                },
                data: Some(
                    wanted
                        .iter()
                        .map(|key| ((*key).to_owned(), fresh[*key].clone()))
                        .collect(),
                ),
                ..Secret::default()
            };
            let created = secrets.create(&PostParams::default(), &secret).await?;
            info!(secret = name, "made the tokens Secret");
            Ok(created.data.unwrap_or_default())
        }
        Some(mut secret) => {
            let made_for = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TLS_NAMES_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            let renamed = !tls_names.is_empty() && made_for != tls_names;
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            if renamed && TLS_KEYS.iter().any(|key| data.contains_key(*key)) {
                warn!(secret = name, was = %made_for, now = %tls_names, "the gRPC port's names changed: making a new certificate and CA (restart the gateways to read it)");
                TLS_KEYS.iter().for_each(|key| {
                    data.remove(*key);
                });
            }
            if renamed {
                secret
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(TLS_NAMES_ANNOTATION.to_owned(), tls_names.to_owned());
            }
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            let mut missing: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|key| !data.contains_key(*key))
                .collect();
            if missing.is_empty() && !renamed {
                return Ok(secret.data.unwrap_or_default());
            }
            // A certificate, its key and its CA only make sense together.
            if missing.iter().any(|key| TLS_KEYS.contains(key)) {
                missing.retain(|key| !TLS_KEYS.contains(key));
                missing.extend(TLS_KEYS);
            }
            for key in &missing {
                data.insert((*key).to_owned(), fresh[*key].clone());
            }
            // The read's resourceVersion makes a racing writer's change a
            // conflict (retried) instead of a lost token.
            let replaced = secrets
                .replace(name, &PostParams::default(), &secret)
                .await?;
            info!(secret = name, added = %missing.join(","), "added tokens to the tokens Secret");
            Ok(replaced.data.unwrap_or_default())
        }
    }
}

/// Worth another try: the create or update raced another pod (409), or
/// the API server is not answering well yet.
fn retryable(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => matches!(status.code, 409 | 429 | 500..),
        _ => true,
    }
}

fn tokens(
    data: &BTreeMap<String, ByteString>,
    namespace: &str,
    name: &str,
    tls: bool,
) -> Result<ClusterTokens, TokensError> {
    let unusable = |key: &'static str, reason: String| TokensError::Unusable {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key,
        reason,
    };
    let text = |key: &'static str| {
        let bytes = data
            .get(key)
            .ok_or_else(|| unusable(key, "missing".into()))?;
        std::str::from_utf8(&bytes.0)
            .map(str::to_owned)
            .map_err(|_| unusable(key, "not UTF-8".into()))
    };
    let token =
        |key: &'static str| Token::new(&text(key)?).map_err(|e| unusable(key, e.to_string()));
    let tls = match tls {
        true => Some(ServerTls {
            ca_pem: text(CA_KEY)?,
            cert_pem: text(CERT_KEY)?,
            key_pem: text(PRIVATE_KEY)?,
        }),
        false => None,
    };
    Ok(ClusterTokens {
        replica: token(REPLICA_KEY)?,
        admin: token(ADMIN_KEY)?,
        tls,
    })
}
