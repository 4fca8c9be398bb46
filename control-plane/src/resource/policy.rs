//! `McpAccessPolicy`: which tools, prompts and resources its subjects
//! (`McpClient`s by name or group, JWT callers by name, group or claims)
//! may use. A subject that no `allow`
//! matches may use everything not denied; once an `allow` matches it, only
//! what is allowed; `deny` always wins. Names are the client-facing ones
//! (`<namespace>.<tool>`), resources their client-facing URIs or URI
//! templates; `*` in a pattern matches any run of characters.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{ValidationError, check_dns_label};

pub const KIND: &str = "McpAccessPolicy";

/// Longest pattern accepted: a name or URI, not a document.
const MAX_PATTERN_LEN: usize = 512;
/// Patterns or subjects in one list.
const MAX_ITEMS: usize = 256;

/// What some clients may use of the gateways' tools, prompts and resources.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "McpAccessPolicy",
    namespaced,
    shortname = "mcpap",
    category = "switchboard",
    doc = "Which tools, prompts and resources some McpClients (by name or group) may use; deny wins over allow.",
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// The clients the policy applies to.
    pub subjects: Subjects,
    /// Once an allow applies to a client, it may use only what is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Rules>,
    /// Never usable by the subjects, whatever any allow says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Rules>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(deny_unknown_fields)]
pub struct Subjects {
    /// McpClient groups.
    #[serde(default)]
    #[schemars(length(max = MAX_ITEMS))]
    pub groups: Vec<String>,
    /// McpClient names (and JWT callers' names).
    #[serde(default)]
    #[schemars(length(max = MAX_ITEMS))]
    pub clients: Vec<String>,
    /// JWT claims a caller's token must all have (a claim holding a list
    /// has the value when the list does).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// Name patterns as clients see the names (`<namespace>.<tool>`; resource
/// URIs or URI templates); `*` matches any run of characters.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    #[schemars(length(max = MAX_ITEMS))]
    pub tools: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_ITEMS))]
    pub prompts: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_ITEMS))]
    pub resources: Vec<String>,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidPolicy {
    pub name: String,
    pub groups: Vec<String>,
    pub clients: Vec<String>,
    pub claims: BTreeMap<String, String>,
    /// `None`: the policy allows nothing by itself.
    pub allow: Option<Rules>,
    pub deny: Rules,
}

impl McpAccessPolicy {
    pub fn validate(self) -> Result<ValidPolicy, ValidationError> {
        let name = self.metadata.name.unwrap_or_default();
        check_dns_label(&name).map_err(|reason| ValidationError::new("metadata.name", reason))?;
        let Subjects {
            groups,
            clients,
            claims,
        } = self.spec.subjects;
        if groups.is_empty() && clients.is_empty() && claims.is_empty() {
            return Err(ValidationError::new(
                "spec.subjects",
                "name at least one group, client or claim the policy applies to",
            ));
        }
        if claims.len() > MAX_ITEMS {
            return Err(ValidationError::new(
                "spec.subjects.claims",
                format!("at most {MAX_ITEMS} claims"),
            ));
        }
        if let Some(key) = claims.keys().find(|k| k.is_empty()) {
            return Err(ValidationError::new(
                format!("spec.subjects.claims[{key}]"),
                "a claim name may not be empty",
            ));
        }
        for (field, names) in [("groups", &groups), ("clients", &clients)] {
            if names.len() > MAX_ITEMS {
                return Err(ValidationError::new(
                    format!("spec.subjects.{field}"),
                    format!("at most {MAX_ITEMS} names"),
                ));
            }
            // Not DNS labels only: JWT callers' names and groups are
            // e-mail addresses, `auth0|…` ids, `/admins`.
            for (i, name) in names.iter().enumerate() {
                if name.is_empty()
                    || name.len() > MAX_PATTERN_LEN
                    || name.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ValidationError::new(
                        format!("spec.subjects.{field}[{i}]"),
                        format!("`{name}` must be 1-{MAX_PATTERN_LEN} characters without spaces"),
                    ));
                }
            }
        }
        if self.spec.allow.is_none() && self.spec.deny.is_none() {
            return Err(ValidationError::new(
                "spec",
                "a policy needs `allow`, `deny` or both",
            ));
        }
        for (key, rules) in [("allow", &self.spec.allow), ("deny", &self.spec.deny)] {
            if let Some(rules) = rules {
                check_rules(key, rules)?;
            }
        }
        Ok(ValidPolicy {
            name,
            groups,
            clients,
            claims,
            allow: self.spec.allow,
            deny: self.spec.deny.unwrap_or_default(),
        })
    }
}

fn check_rules(key: &str, rules: &Rules) -> Result<(), ValidationError> {
    let lists = [
        ("tools", &rules.tools),
        ("prompts", &rules.prompts),
        ("resources", &rules.resources),
    ];
    for (list, patterns) in lists {
        if patterns.len() > MAX_ITEMS {
            return Err(ValidationError::new(
                format!("spec.{key}.{list}"),
                format!("at most {MAX_ITEMS} patterns"),
            ));
        }
        for (i, pattern) in patterns.iter().enumerate() {
            let field = || format!("spec.{key}.{list}[{i}]");
            if pattern.is_empty() {
                return Err(ValidationError::new(field(), "a pattern may not be empty"));
            }
            if pattern.len() > MAX_PATTERN_LEN {
                return Err(ValidationError::new(
                    field(),
                    format!("a pattern is at most {MAX_PATTERN_LEN} characters"),
                ));
            }
            if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ValidationError::new(
                    field(),
                    "names and URIs have no spaces or control characters",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: &str) -> Result<ValidPolicy, ValidationError> {
        let yaml = format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {{name: dev-policy}}\nspec: {spec}"
        );
        serde_yaml::from_str::<McpAccessPolicy>(&yaml)
            .expect("parses")
            .validate()
    }

    #[test]
    fn a_policy_names_its_subjects_and_what_it_allows_or_denies() {
        let valid =
            policy("{subjects: {groups: [dev]}, deny: {tools: ['utils.*']}}").expect("valid");
        assert_eq!(valid.groups, ["dev"]);
        assert_eq!(valid.allow, None);
        assert_eq!(valid.deny.tools, ["utils.*"]);

        let cases = [
            ("{subjects: {}, deny: {tools: [x]}}", "spec.subjects"),
            (
                "{subjects: {clients: ['alice smith']}, deny: {tools: [x]}}",
                "spec.subjects.clients[0]",
            ),
            ("{subjects: {groups: [dev]}}", "spec"),
            (
                "{subjects: {groups: [dev]}, allow: {prompts: ['']}}",
                "spec.allow.prompts[0]",
            ),
            (
                "{subjects: {groups: [dev]}, deny: {resources: ['a b']}}",
                "spec.deny.resources[0]",
            ),
        ];
        for (spec, field) in cases {
            let refused = policy(spec).expect_err(spec);
            assert_eq!(refused.field, field, "{spec}: {}", refused.reason);
        }
    }

    #[test]
    fn unknown_keys_are_refused_and_claims_are_subjects() {
        let yaml = "apiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {name: p}\nspec: {subjects: {roles: [a]}, deny: {tools: [x]}}";
        assert!(serde_yaml::from_str::<McpAccessPolicy>(yaml).is_err());
        let valid = policy("{subjects: {claims: {team: payments}}, deny: {tools: [x]}}")
            .expect("a claim is a subject");
        assert_eq!(valid.claims["team"], "payments");
    }
}
