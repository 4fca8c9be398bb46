//! `McpClient`: a caller the gateways let in, by the SHA-256 of its bearer
//! token (so a registry file holds nothing anyone could use to connect).
//! Its name is the caller's identity in logs, spans and metrics; its groups
//! are for access policies.

use serde::Deserialize;

use super::{ValidationError, check_dns_label};

pub const KIND: &str = "McpClient";

/// As written in a registry file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct McpClient {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ClientSpec,
}

/// The `metadata` of a registry document other than an `McpServer`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    #[serde(default)]
    pub groups: Vec<String>,
    pub token: TokenSpec,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Hex SHA-256 of the token, e.g. `printf %s "$TOKEN" | sha256sum`.
    pub sha256: String,
}

/// A validated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidClient {
    pub name: String,
    pub groups: Vec<String>,
    /// Lowercase hex.
    pub token_sha256: String,
}

impl McpClient {
    pub fn validate(self) -> Result<ValidClient, ValidationError> {
        check_dns_label(&self.metadata.name)
            .map_err(|reason| ValidationError::new("metadata.name", reason))?;
        for (i, group) in self.spec.groups.iter().enumerate() {
            check_dns_label(group)
                .map_err(|reason| ValidationError::new(format!("spec.groups[{i}]"), reason))?;
        }
        let digest = self.spec.token.sha256.trim().to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ValidationError::new(
                "spec.token.sha256",
                "must be the 64 hex digits of the token's SHA-256 (printf %s \"$TOKEN\" | sha256sum)",
            ));
        }
        Ok(ValidClient {
            name: self.metadata.name,
            groups: self.spec.groups,
            token_sha256: digest,
        })
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
        assert_eq!(valid.token_sha256, digest.to_ascii_lowercase());
        assert_eq!(valid.groups, ["dev"]);
        let short = client("{token: {sha256: abc}}").expect_err("too short");
        assert_eq!(short.field, "spec.token.sha256");
        let group = client(&format!(
            "{{groups: [Dev_Team], token: {{sha256: {digest}}}}}"
        ))
        .expect_err("not a label");
        assert_eq!(group.field, "spec.groups[0]");
    }
}
