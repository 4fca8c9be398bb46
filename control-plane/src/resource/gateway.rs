//! `McpGatewayConfig`: the gateway-wide settings of who may call, beside
//! the `McpClient`s: JWT issuers whose tokens the gateways accept (their
//! keys from each issuer's JWKS), and whether callers without a token are
//! let in as anonymous once clients or issuers are declared. One per
//! registry: a second is reported and left out.

use std::time::Duration;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    DURATION_PATTERN, ValidationError, check_dns_label, resilience::parse_duration, validate_url,
};

pub const KIND: &str = "McpGatewayConfig";

/// Issuers one gateway config may trust.
const MAX_ISSUERS: usize = 16;
/// Audiences per issuer.
const MAX_AUDIENCES: usize = 16;
/// The most clock skew an `exp` or `nbf` is forgiven.
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Who may call the gateways, beside McpClients.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "McpGatewayConfig",
    namespaced,
    shortname = "mcpgc",
    category = "switchboard",
    doc = "Gateway-wide settings of who may call: JWT issuers whose tokens gateways accept, and whether callers without a token get in as anonymous. One per registry.",
    printcolumn(name = "Anonymous", type_ = "boolean", json_path = ".spec.allowAnonymous"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfigSpec {
    /// Let requests without a token in as anonymous callers (no access
    /// policy names them) even while clients or issuers are declared. A
    /// token that is sent must still be valid.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// JWT issuers whose tokens the gateways accept as
    /// `Authorization: Bearer <jwt>`.
    #[serde(default)]
    #[schemars(length(max = MAX_ISSUERS))]
    pub jwt: Vec<JwtIssuerSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtIssuerSpec {
    /// The tokens' `iss`, exactly.
    pub issuer: String,
    /// Accepted `aud` values: a token must name one of them.
    #[schemars(length(min = 1, max = MAX_AUDIENCES))]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its signing keys (JWKS). Gateways fetch
    /// it, and again when a token names a key they do not know.
    pub jwks_uri: String,
    /// Clock skew forgiven on `exp` and `nbf` (default 60s, at most 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub leeway: Option<String>,
    /// The claim naming the caller (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_claim: Option<String>,
    /// The claim listing the caller's groups, for access policies (default
    /// `groups`; a list of strings, or one space-separated string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
}

/// The validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidGatewayConfig {
    pub name: String,
    pub allow_anonymous: bool,
    pub issuers: Vec<ValidIssuer>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: String,
    pub leeway: Duration,
    pub name_claim: String,
    pub groups_claim: String,
}

impl McpGatewayConfig {
    pub fn validate(self) -> Result<ValidGatewayConfig, ValidationError> {
        let name = self.metadata.name.unwrap_or_default();
        check_dns_label(&name).map_err(|reason| ValidationError::new("metadata.name", reason))?;
        if self.spec.jwt.len() > MAX_ISSUERS {
            return Err(ValidationError::new(
                "spec.jwt",
                format!("at most {MAX_ISSUERS} issuers"),
            ));
        }
        let mut issuers: Vec<ValidIssuer> = Vec::new();
        for (i, spec) in self.spec.jwt.into_iter().enumerate() {
            let field = |name: &str| format!("spec.jwt[{i}].{name}");
            if spec.issuer.trim().is_empty() {
                return Err(ValidationError::new(field("issuer"), "may not be empty"));
            }
            if issuers.iter().any(|other| other.issuer == spec.issuer) {
                return Err(ValidationError::new(
                    field("issuer"),
                    format!("`{}` is listed twice", spec.issuer),
                ));
            }
            if spec.audiences.is_empty() || spec.audiences.len() > MAX_AUDIENCES {
                return Err(ValidationError::new(
                    field("audiences"),
                    format!(
                        "name 1 to {MAX_AUDIENCES} audiences (a token for any audience is one for another service)"
                    ),
                ));
            }
            if spec.audiences.iter().any(|a| a.trim().is_empty()) {
                return Err(ValidationError::new(
                    field("audiences"),
                    "an audience may not be empty",
                ));
            }
            let jwks_uri = validate_url(&field("jwksUri"), &spec.jwks_uri, false)?;
            // Keys fetched in clear could be swapped for anyone's on the way.
            if !jwks_uri.starts_with("https://") && !proto::auth::loopback_url(&jwks_uri) {
                return Err(ValidationError::new(
                    field("jwksUri"),
                    "must be https:// (keys fetched over plain HTTP could be anyone's); http:// only to loopback",
                ));
            }
            let leeway = match &spec.leeway {
                None => DEFAULT_LEEWAY,
                Some(text) => parse_duration(text)
                    .map_err(|reason| ValidationError::new(field("leeway"), reason))?,
            };
            if leeway > MAX_LEEWAY {
                return Err(ValidationError::new(
                    field("leeway"),
                    format!("at most {}s", MAX_LEEWAY.as_secs()),
                ));
            }
            let claim = |value: Option<String>, default: &str, key: &str| {
                let value = value.unwrap_or_else(|| default.to_owned());
                if value.is_empty() {
                    Err(ValidationError::new(field(key), "may not be empty"))
                } else {
                    Ok(value)
                }
            };
            issuers.push(ValidIssuer {
                issuer: spec.issuer,
                audiences: spec.audiences,
                jwks_uri,
                leeway,
                name_claim: claim(spec.name_claim, "sub", "nameClaim")?,
                groups_claim: claim(spec.groups_claim, "groups", "groupsClaim")?,
            });
        }
        Ok(ValidGatewayConfig {
            name,
            allow_anonymous: self.spec.allow_anonymous,
            issuers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spec: &str) -> Result<ValidGatewayConfig, ValidationError> {
        let yaml = format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpGatewayConfig\nmetadata: {{name: default}}\nspec: {spec}"
        );
        serde_yaml::from_str::<McpGatewayConfig>(&yaml)
            .expect("parses")
            .validate()
    }

    #[test]
    fn issuers_need_audiences_and_a_reachable_jwks() {
        let valid = config(
            "{jwt: [{issuer: 'https://login.example.com/', audiences: [switchboard], jwksUri: 'https://login.example.com/jwks'}]}",
        )
        .expect("valid");
        let issuer = &valid.issuers[0];
        assert_eq!(
            (issuer.leeway, &*issuer.name_claim, &*issuer.groups_claim),
            (DEFAULT_LEEWAY, "sub", "groups")
        );
        assert!(!valid.allow_anonymous);
        let cases = [
            (
                "{jwt: [{issuer: i, audiences: [], jwksUri: 'https://x/jwks'}]}",
                "spec.jwt[0].audiences",
            ),
            (
                "{jwt: [{issuer: i, audiences: [a], jwksUri: 'http://169.254.169.254/jwks'}]}",
                "spec.jwt[0].jwksUri",
            ),
            (
                "{jwt: [{issuer: i, audiences: [a], jwksUri: 'https://x/jwks', leeway: 1h}]}",
                "spec.jwt[0].leeway",
            ),
            (
                "{jwt: [{issuer: i, audiences: [a], jwksUri: 'http://login.example.com/jwks'}]}",
                "spec.jwt[0].jwksUri",
            ),
            (
                "{jwt: [{issuer: i, audiences: [a], jwksUri: 'https://x/j'}, {issuer: i, audiences: [a], jwksUri: 'https://y/j'}]}",
                "spec.jwt[1].issuer",
            ),
        ];
        for (spec, field) in cases {
            let refused = config(spec).expect_err(spec);
            assert_eq!(refused.field, field, "{spec}: {}", refused.reason);
        }
    }
}
