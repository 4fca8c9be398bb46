//! `McpClient`: a caller the gateways let in, by the SHA-256 of its bearer
//! token (so a registry file holds nothing anyone could use to connect),
//! or, in a cluster, by a token kept in a Secret that only the control
//! plane reads (gateways still get the digest alone). Its name is the
//! caller's identity in logs, spans and metrics; its groups are for access
//! policies.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{RefKind, ValidationError, ValueRef, check_dns_label};

pub const KIND: &str = "McpClient";

/// The name access policies know callers without a token by.
pub const ANONYMOUS: &str = "anonymous";

/// Groups one client may name: a list to match against, not a directory.
const MAX_GROUPS: usize = 64;

/// A caller of the gateways and the token it proves itself with.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "McpClient",
    namespaced,
    shortname = "mcpc",
    category = "switchboard",
    doc = "A caller Switchboard gateways let in: its name is the caller in logs, traces and metrics, its groups are for McpAccessPolicies.",
    printcolumn(name = "Groups", type_ = "string", json_path = ".spec.groups"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label: it is the caller's name")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpClientSpec {
    /// Groups for McpAccessPolicy subjects.
    #[serde(default)]
    #[schemars(length(max = MAX_GROUPS))]
    pub groups: Vec<String>,
    /// The bearer token the client sends: its digest, or a Secret key
    /// holding it.
    pub token: TokenSpec,
}

/// Exactly one of the fields is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.sha256) != has(self.valueFrom)").message("set exactly one of sha256 and valueFrom"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// Hex SHA-256 of the token, e.g. `printf %s "$TOKEN" | sha256sum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
    /// The token itself, from a Secret in the client's namespace
    /// (Kubernetes source only); gateways get only its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<TokenSource>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSource {
    pub secret_key_ref: SecretKey,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKey {
    /// The Secret, in the McpClient's namespace.
    pub name: String,
    pub key: String,
}

/// A validated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidClient {
    pub name: String,
    pub groups: Vec<String>,
    pub token: ClientToken,
}

/// How a client's token is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientToken {
    /// Lowercase hex SHA-256: what gateways compare against.
    Sha256(String),
    /// To be read from a Secret (and then hashed) by the Kubernetes source.
    Secret(ValueRef),
}

impl McpClient {
    pub fn validate(self) -> Result<ValidClient, ValidationError> {
        let name = self.metadata.name.unwrap_or_default();
        check_dns_label(&name).map_err(|reason| ValidationError::new("metadata.name", reason))?;
        if name == ANONYMOUS {
            return Err(ValidationError::new(
                "metadata.name",
                "`anonymous` is what policies call callers without a token",
            ));
        }
        if self.spec.groups.len() > MAX_GROUPS {
            return Err(ValidationError::new(
                "spec.groups",
                format!("at most {MAX_GROUPS} groups"),
            ));
        }
        for (i, group) in self.spec.groups.iter().enumerate() {
            check_dns_label(group)
                .map_err(|reason| ValidationError::new(format!("spec.groups[{i}]"), reason))?;
        }
        let token = match (self.spec.token.sha256, self.spec.token.value_from) {
            (Some(digest), None) => {
                let digest = digest.trim().to_ascii_lowercase();
                if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ValidationError::new(
                        "spec.token.sha256",
                        "must be the 64 hex digits of the token's SHA-256 (printf %s \"$TOKEN\" | sha256sum)",
                    ));
                }
                ClientToken::Sha256(digest)
            }
            (None, Some(TokenSource { secret_key_ref })) => ClientToken::Secret(ValueRef {
                kind: RefKind::Secret,
                name: secret_key_ref.name,
                key: secret_key_ref.key,
                optional: false,
            }),
            _ => {
                return Err(ValidationError::new(
                    "spec.token",
                    "set exactly one of sha256 and valueFrom",
                ));
            }
        };
        Ok(ValidClient {
            name,
            groups: self.spec.groups,
            token,
        })
    }
}

impl ValidClient {
    /// The client with its token read from its Secret: only the digest is
    /// kept.
    pub fn with_token(mut self, token: &str) -> Self {
        let digest = Sha256::digest(token.as_bytes());
        self.token = ClientToken::Sha256(digest.iter().map(|b| format!("{b:02x}")).collect());
        self
    }

    /// The token's digest, once known.
    pub fn token_sha256(&self) -> Option<&str> {
        match &self.token {
            ClientToken::Sha256(digest) => Some(digest),
            ClientToken::Secret(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(spec: &str) -> Result<ValidClient, ValidationError> {
        let yaml = format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpClient\nmetadata: {{name: alice}}\nspec: {spec}"
        );
        serde_yaml::from_str::<McpClient>(&yaml)
            .expect("parses")
            .validate()
    }

    #[test]
    fn the_token_is_a_sha256_and_names_are_dns_labels() {
        let digest = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let valid =
            client(&format!("{{groups: [dev], token: {{sha256: {digest}}}}}")).expect("valid");
        assert_eq!(valid.token_sha256(), Some(&*digest.to_ascii_lowercase()));
        assert_eq!(valid.groups, ["dev"]);
        let short = client("{token: {sha256: abc}}").expect_err("too short");
        assert_eq!(short.field, "spec.token.sha256");
        let group = client(&format!(
            "{{groups: [Dev_Team], token: {{sha256: {digest}}}}}"
        ))
        .expect_err("not a label");
        assert_eq!(group.field, "spec.groups[0]");
        let both = client(&format!(
            "{{token: {{sha256: {digest}, valueFrom: {{secretKeyRef: {{name: s, key: k}}}}}}}}"
        ))
        .expect_err("both");
        assert_eq!(both.field, "spec.token");
    }

    #[test]
    fn a_token_from_a_secret_is_kept_only_as_its_digest() {
        let pending = client("{token: {valueFrom: {secretKeyRef: {name: tokens, key: alice}}}}")
            .expect("valid");
        assert_eq!(pending.token_sha256(), None);
        let ClientToken::Secret(reference) = &pending.token else {
            panic!("a reference: {pending:?}");
        };
        assert_eq!((&*reference.name, &*reference.key), ("tokens", "alice"));
        let resolved = pending.with_token("test");
        assert_eq!(
            resolved.token_sha256(),
            Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        );
    }
}
