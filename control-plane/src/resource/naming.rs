//! How a server's tools and prompts are named for clients: the prefix mode
//! and separator, and per list which names are served (include/exclude
//! globs), renames and description overrides. Validated here; applied by
//! the gateways' catalog, which alone sees every server's names and so can
//! resolve collisions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Longest separator accepted, in bytes (the CRD's `maxLength` counts
/// characters, so it refuses less and the rest is refused here).
pub(crate) const MAX_SEPARATOR_LEN: usize = 8;

/// When tool names get the server's prefix.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PrefixMode {
    /// `<prefix><separator><tool>` for every tool (default).
    #[default]
    Always,
    /// Bare tool names. A name another server also serves is reported and
    /// kept by the server whose name sorts first; the others' are prefixed.
    Never,
    /// Bare names, prefixed only where two servers' names collide.
    Conditional,
}

/// Which of a server's tools (or prompts) are served, and as what.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamesSpec {
    /// Globs (`*`, `?`) on the server's names; when set, only matching
    /// ones are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Globs of names not to serve (applied after `include`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// The server's name → the name clients see (before any prefix).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// The server's name → the description clients see.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub descriptions: BTreeMap<String, String>,
}

/// Validated naming, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    pub prefix_mode: PrefixMode,
    pub separator: String,
    pub tools: NamesSpec,
    pub prompts: NamesSpec,
}

impl Default for Naming {
    fn default() -> Self {
        Self {
            prefix_mode: PrefixMode::Always,
            separator: ".".into(),
            tools: NamesSpec::default(),
            prompts: NamesSpec::default(),
        }
    }
}

pub fn validate(
    prefix_mode: PrefixMode,
    separator: Option<&str>,
    tools: Option<&NamesSpec>,
    prompts: Option<&NamesSpec>,
) -> Result<Naming, ValidationError> {
    let separator = separator.unwrap_or(".");
    if separator.is_empty()
        || separator.len() > MAX_SEPARATOR_LEN
        || separator
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ValidationError::new(
            "spec.separator",
            format!("must be 1-{MAX_SEPARATOR_LEN} visible characters, got `{separator}`"),
        ));
    }
    Ok(Naming {
        prefix_mode,
        separator: separator.to_owned(),
        tools: validate_names("spec.tools", tools)?,
        prompts: validate_names("spec.prompts", prompts)?,
    })
}

fn validate_names(field: &str, names: Option<&NamesSpec>) -> Result<NamesSpec, ValidationError> {
    let names = names.cloned().unwrap_or_default();
    for (list, globs) in [("include", &names.include), ("exclude", &names.exclude)] {
        if let Some((i, _)) = globs.iter().enumerate().find(|(_, g)| g.is_empty()) {
            return Err(ValidationError::new(
                format!("{field}.{list}[{i}]"),
                "must not be empty",
            ));
        }
    }
    let mut seen = BTreeMap::new();
    for (from, to) in &names.rename {
        if to.is_empty() || to.chars().any(char::is_whitespace) {
            return Err(ValidationError::new(
                format!("{field}.rename.{from}"),
                format!("`{to}` is not a valid name"),
            ));
        }
        if let Some(other) = seen.insert(to, from) {
            return Err(ValidationError::new(
                format!("{field}.rename.{from}"),
                format!("`{to}` is also the new name of `{other}`"),
            ));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_prefix_always_with_a_dot() {
        assert_eq!(
            validate(PrefixMode::Always, None, None, None),
            Ok(Naming::default())
        );
    }

    #[test]
    fn bad_separators_renames_and_globs_name_their_field() {
        let field = |r: Result<Naming, ValidationError>| r.err().map(|e| e.field);
        assert_eq!(
            field(validate(PrefixMode::Never, Some(" "), None, None)).as_deref(),
            Some("spec.separator")
        );
        let clash = NamesSpec {
            rename: BTreeMap::from([("a".into(), "x".into()), ("b".into(), "x".into())]),
            ..Default::default()
        };
        assert_eq!(
            field(validate(PrefixMode::Always, None, Some(&clash), None)).as_deref(),
            Some("spec.tools.rename.b")
        );
        assert_eq!(
            field(validate(PrefixMode::Always, None, None, Some(&clash))).as_deref(),
            Some("spec.prompts.rename.b")
        );
        let empty = NamesSpec {
            exclude: vec![String::new()],
            ..Default::default()
        };
        assert_eq!(
            field(validate(PrefixMode::Always, None, Some(&empty), None)).as_deref(),
            Some("spec.tools.exclude[0]")
        );
    }
}
