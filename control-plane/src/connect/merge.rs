//! Puts a rendered entry into a client's existing config file and
//! changes nothing else: JSON and JSONC through a concrete syntax tree
//! (comments, order and layout of the rest kept), TOML through a
//! format-preserving document. Of an entry already there only the keys
//! the snippet sets are changed (keys the user added stay), and an entry
//! already as wanted leaves the file byte for byte as it was, so a second
//! run changes nothing. A file that
//! does not parse is refused with where it goes wrong.

use jsonc_parser::{
    ParseOptions,
    cst::{CstInputValue, CstObject, CstRootNode},
};
use serde_json::Value;

use super::Client;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("cannot read it as {format}: {reason}; it is left as it was")]
    Unreadable {
        format: &'static str,
        reason: String,
    },
    #[error("`{key}` in it is not an object (table), so the entry has nowhere to go")]
    NotAnObject { key: String },
    #[error("the rendered snippet has no entry `{0}`")]
    NoEntry(String),
    #[error("local server `{0}` is named as the gateway's entry")]
    LocalNamedAsGateway(String),
    #[error("local server `{name}` cannot be written as TOML: {reason}")]
    NotToml { name: String, reason: String },
}

/// `rendered` with servers the client keeps to itself beside the
/// gateway's entry `gateway`: each a name and its entry as that client
/// writes one.
pub fn with_local(
    client: &Client,
    rendered: &str,
    gateway: &str,
    locals: &[(String, Value)],
) -> Result<String, MergeError> {
    let mut text = rendered.to_owned();
    for (name, entry) in locals {
        if name == gateway {
            return Err(MergeError::LocalNamedAsGateway(name.clone()));
        }
        let nested = client.entries.iter().rev().fold(
            serde_json::json!({ name.as_str(): entry }),
            |inner, key| serde_json::json!({ *key: inner }),
        );
        let snippet = match client.format {
            "toml" => to_toml(&nested).map_err(|reason| MergeError::NotToml {
                name: name.clone(),
                reason,
            })?,
            _ => nested.to_string(),
        };
        text = merge(client, &text, &snippet, name)?;
    }
    Ok(text)
}

/// A JSON object as a TOML document.
fn to_toml(value: &Value) -> Result<String, String> {
    fn item(value: &Value) -> Result<toml_edit::Value, String> {
        Ok(match value {
            Value::String(text) => text.as_str().into(),
            Value::Bool(flag) => (*flag).into(),
            Value::Number(number) => match number.as_i64() {
                Some(int) => int.into(),
                None => number.as_f64().unwrap_or_default().into(),
            },
            Value::Array(items) => {
                let mut array = toml_edit::Array::new();
                for value in items {
                    array.push(item(value)?);
                }
                array.into()
            }
            Value::Object(map) => {
                let mut table = toml_edit::InlineTable::new();
                for (key, value) in map {
                    table.insert(key, item(value)?);
                }
                table.into()
            }
            Value::Null => return Err("TOML has no null".into()),
        })
    }
    // Objects as `[a.b]` tables, as people write them; inline only in arrays.
    fn table(map: &serde_json::Map<String, Value>) -> Result<toml_edit::Table, String> {
        let mut table = toml_edit::Table::new();
        table.set_implicit(true);
        for (key, value) in map {
            let entry = match value {
                Value::Object(inner) => toml_edit::Item::Table(table_of(inner)?),
                other => toml_edit::Item::Value(item(other)?),
            };
            table.insert(key, entry);
        }
        Ok(table)
    }
    fn table_of(map: &serde_json::Map<String, Value>) -> Result<toml_edit::Table, String> {
        let mut made = table(map)?;
        made.set_implicit(map.values().all(Value::is_object) && !map.is_empty());
        Ok(made)
    }
    let Value::Object(map) = value else {
        return Err("not an object".into());
    };
    let doc = toml_edit::DocumentMut::from(table(map)?);
    Ok(doc.to_string())
}

/// `existing` (a config file's text, empty for none) with the entry
/// `name` of `snippet` in it.
pub fn merge(
    client: &Client,
    existing: &str,
    snippet: &str,
    name: &str,
) -> Result<String, MergeError> {
    if existing.trim().is_empty() {
        return Ok(snippet.to_owned());
    }
    match client.format {
        "toml" => merge_toml(client.entries, existing, snippet, name),
        _ => merge_json(client.entries, existing, snippet, name),
    }
}

fn merge_json(
    path: &[&str],
    existing: &str,
    snippet: &str,
    name: &str,
) -> Result<String, MergeError> {
    let unreadable = |reason: String| MergeError::Unreadable {
        format: "JSON",
        reason,
    };
    let wanted: Value = serde_json::from_str(snippet).map_err(|e| unreadable(e.to_string()))?;
    let entry = path
        .iter()
        .fold(&wanted, |value, key| &value[*key])
        .get(name)
        .ok_or_else(|| MergeError::NoEntry(name.to_owned()))?;
    // Comments and trailing commas, as JSONC files have them.
    let root = CstRootNode::parse(existing, &ParseOptions::default())
        .map_err(|e| unreadable(e.to_string()))?;
    // The same text read loosely, to see what is there already.
    let current: Option<Value> =
        jsonc_parser::parse_to_serde_value(existing, &ParseOptions::default())
            .ok()
            .flatten();
    let present = current
        .as_ref()
        .map(|current| path.iter().fold(current, |value, key| &value[*key]))
        .and_then(|parent| parent.get(name));
    let covers = |present: &Value| match (present, entry) {
        (Value::Object(present), Value::Object(wanted)) => wanted
            .iter()
            .all(|(key, value)| present.get(key) == Some(value)),
        (present, wanted) => present == wanted,
    };
    if present.is_some_and(covers) {
        return Ok(existing.to_owned());
    }
    let Some(mut object) = root.object_value() else {
        return Err(MergeError::NotAnObject {
            key: "(the file)".into(),
        });
    };
    for key in path {
        object = child_object(&object, key)?;
    }
    match (object.get(name), entry) {
        // Only the snippet's keys: what the user added to the entry stays.
        (Some(prop), Value::Object(wanted)) if prop.object_value().is_some() => {
            let Some(inner) = prop.object_value() else {
                return Ok(existing.to_owned());
            };
            let had = present.and_then(Value::as_object);
            for (key, value) in wanted {
                if had.and_then(|had| had.get(key)) == Some(value) {
                    continue;
                }
                match inner.get(key) {
                    Some(field) => field.set_value(to_input(value)),
                    None => {
                        inner.append(key, to_input(value));
                    }
                }
            }
        }
        (Some(prop), _) => prop.set_value(to_input(entry)),
        (None, _) => {
            object.append(name, to_input(entry));
        }
    }
    Ok(root.to_string())
}

/// The object under `key`, made when missing.
fn child_object(object: &CstObject, key: &str) -> Result<CstObject, MergeError> {
    match object.get(key) {
        None => Ok(object.object_value_or_set(key)),
        Some(prop) => prop.object_value().ok_or_else(|| MergeError::NotAnObject {
            key: key.to_owned(),
        }),
    }
}

fn to_input(value: &Value) -> CstInputValue {
    match value {
        Value::Null => CstInputValue::Null,
        Value::Bool(flag) => CstInputValue::Bool(*flag),
        Value::Number(number) => CstInputValue::Number(number.to_string()),
        Value::String(text) => CstInputValue::String(text.clone()),
        Value::Array(items) => CstInputValue::Array(items.iter().map(to_input).collect()),
        Value::Object(map) => CstInputValue::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), to_input(value)))
                .collect(),
        ),
    }
}

fn merge_toml(
    path: &[&str],
    existing: &str,
    snippet: &str,
    name: &str,
) -> Result<String, MergeError> {
    let unreadable = |reason: String| MergeError::Unreadable {
        format: "TOML",
        reason,
    };
    let wanted: toml_edit::DocumentMut = snippet
        .parse()
        .map_err(|e: toml_edit::TomlError| unreadable(e.to_string()))?;
    let entry = path
        .iter()
        .try_fold(wanted.as_item(), |item, key| item.get(key))
        .and_then(|parent| parent.get(name))
        .ok_or_else(|| MergeError::NoEntry(name.to_owned()))?
        .clone();
    let mut doc: toml_edit::DocumentMut = existing
        .parse()
        .map_err(|e: toml_edit::TomlError| unreadable(e.to_string()))?;
    let mut table = doc.as_table_mut();
    for key in path {
        let item = table.entry(key).or_insert_with(|| {
            let mut parent = toml_edit::Table::new();
            // `[mcp_servers.x]` headers alone, no empty `[mcp_servers]`.
            parent.set_implicit(true);
            toml_edit::Item::Table(parent)
        });
        table = item.as_table_mut().ok_or_else(|| MergeError::NotAnObject {
            key: (*key).to_owned(),
        })?;
    }
    match (
        table
            .get_mut(name)
            .and_then(|item| item.as_table_like_mut()),
        entry.as_table_like(),
    ) {
        // Only the snippet's keys: what the user added to the entry stays.
        (Some(present), Some(wanted)) => {
            let mut changed = false;
            for (key, value) in wanted.iter() {
                let same = present.get(key).map(|v| v.to_string().trim().to_owned())
                    == Some(value.to_string().trim().to_owned());
                if !same {
                    present.insert(key, value.clone());
                    changed = true;
                }
            }
            if !changed {
                return Ok(existing.to_owned());
            }
        }
        _ => {
            table.insert(name, entry);
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{Snippet, client};

    fn snippet(client: &Client, caller: &str) -> String {
        client
            .render(&Snippet {
                endpoint: "http://127.0.0.1:8787/mcp",
                caller,
                name: "switchboard",
                bridge: "switchboard-gateway",
                auth: None,
            })
            .expect("renders")
    }

    #[test]
    fn a_jsonc_file_keeps_its_comments_order_and_other_servers() {
        let cursor = client("cursor").expect("known");
        let existing = "{\n  // my servers\n  \"mcpServers\": {\n    \"zeta\": { \"command\": \"z\" }, // keep me\n    \"alpha\": { \"url\": \"http://a\" },\n  },\n  \"theme\": \"dark\"\n}\n";
        let merged =
            merge(cursor, existing, &snippet(cursor, "me"), "switchboard").expect("merges");
        for kept in [
            "// my servers",
            "// keep me",
            "\"theme\": \"dark\"",
            "\"zeta\": { \"command\": \"z\" }",
        ] {
            assert!(merged.contains(kept), "{kept}: {merged}");
        }
        assert!(
            merged.find("zeta") < merged.find("alpha"),
            "order kept: {merged}"
        );
        assert!(merged.contains("caller=me"), "{merged}");
        let again = merge(cursor, &merged, &snippet(cursor, "me"), "switchboard").expect("merges");
        assert_eq!(again, merged, "a second run changes nothing");
        let moved = merge(cursor, &merged, &snippet(cursor, "you"), "switchboard").expect("merges");
        assert!(
            moved.contains("caller=you") && !moved.contains("caller=me"),
            "{moved}"
        );
        assert!(moved.contains("// keep me"));
    }

    #[test]
    fn a_toml_file_keeps_its_comments_and_tables() {
        let codex = client("codex").expect("known");
        let existing =
            "# my codex\nmodel = \"o4\"\n\n[mcp_servers.git]\ncommand = \"git-mcp\" # local\n";
        let merged = merge(codex, existing, &snippet(codex, "me"), "switchboard").expect("merges");
        assert!(
            merged.starts_with(existing),
            "the rest byte for byte: {merged}"
        );
        assert!(merged.contains("[mcp_servers.switchboard]"), "{merged}");
        assert!(!merged.contains("[mcp_servers]\n"), "{merged}");
        let again = merge(codex, &merged, &snippet(codex, "me"), "switchboard").expect("merges");
        assert_eq!(again, merged);
    }

    #[test]
    fn keys_the_user_added_to_the_entry_stay() {
        let cursor = client("cursor").expect("known");
        let existing = "{\"mcpServers\": {\"switchboard\": {\"url\": \"http://old/mcp\", \"disabled\": false}}}";
        let merged =
            merge(cursor, existing, &snippet(cursor, "me"), "switchboard").expect("merges");
        let read: Value = serde_json::from_str(&merged).expect("JSON");
        assert_eq!(
            read["mcpServers"]["switchboard"]["disabled"], false,
            "{merged}"
        );
        assert!(
            read["mcpServers"]["switchboard"]["url"]
                .as_str()
                .is_some_and(|u| u.contains("caller=me"))
        );
        let codex = client("codex").expect("known");
        let existing =
            "[mcp_servers.switchboard]\nurl = \"http://old/mcp\"\nenabled_tools = [\"a\"] # mine\n";
        let merged = merge(codex, existing, &snippet(codex, "me"), "switchboard").expect("merges");
        assert!(
            merged.contains("enabled_tools = [\"a\"] # mine"),
            "{merged}"
        );
        assert!(merged.contains("caller=me"), "{merged}");
        let again = merge(codex, &merged, &snippet(codex, "me"), "switchboard").expect("merges");
        assert_eq!(again, merged);
    }

    #[test]
    fn unreadable_files_are_refused_with_where() {
        let cursor = client("cursor").expect("known");
        let refused = merge(
            cursor,
            "{\n  \"mcpServers\": {\n    \"a\": \n}",
            &snippet(cursor, "me"),
            "switchboard",
        )
        .expect_err("broken");
        assert!(refused.to_string().contains("line"), "{refused}");
        let codex = client("codex").expect("known");
        let refused =
            merge(codex, "model = \n", &snippet(codex, "me"), "switchboard").expect_err("broken");
        assert!(refused.to_string().contains("line 1"), "{refused}");
        let not_object = merge(
            cursor,
            "{\"mcpServers\": [1]}",
            &snippet(cursor, "me"),
            "switchboard",
        )
        .expect_err("an array");
        assert!(matches!(not_object, MergeError::NotAnObject { .. }));
    }
}
