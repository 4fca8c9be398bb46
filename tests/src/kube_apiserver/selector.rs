//! Label and field selectors of lists and watches, as `labels.Parse` and
//! `fields.ParseSelector` of k8s.io/apimachinery read them.

use axum::http::StatusCode;
use serde_json::Value;

use super::{ApiError, status_error};

/// A parsed selector: every requirement must hold.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug)]
enum Requirement {
    /// A label: `key=v`, `key==v`, `key in (a,b)`.
    In(String, Vec<String>),
    /// A label: `key!=v`, `key notin (a,b)` (also true without the label).
    NotIn(String, Vec<String>),
    /// A label: `key`.
    Exists(String),
    /// A label: `!key`.
    Absent(String),
    /// A field: `metadata.name=x`, `metadata.namespace!=y`.
    Field(String, bool, String),
}

// === impl Selector ===

impl Selector {
    /// Parses `labelSelector` (labels) and `fieldSelector` (fields): a bad
    /// one is a 400, as real.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split(labels.unwrap_or("")) {
            requirements.push(label(&term).ok_or_else(|| {
                bad_request(&format!(
                    "unable to parse requirement: found '{term}', expected: a valid label selector"
                ))
            })?);
        }
        for term in split(fields.unwrap_or("")) {
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(bad_request(&format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            requirements.push(Requirement::Field(
                key.trim().to_owned(),
                equal,
                value.trim().to_owned(),
            ));
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels[key].as_str();
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::In(key, values) => {
                    label(key).is_some_and(|v| values.iter().any(|w| w == v))
                }
                Requirement::NotIn(key, values) => {
                    label(key).is_none_or(|v| values.iter().all(|w| w != v))
                }
                Requirement::Exists(key) => label(key).is_some(),
                Requirement::Absent(key) => label(key).is_none(),
                Requirement::Field(path, equal, value) => {
                    let found = path
                        .split('.')
                        .try_fold(object, |v, key| v.get(key))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    (found == value) == *equal
                }
            })
    }
}

/// Splits on the commas outside parentheses.
fn split(selector: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut term = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut term));
                continue;
            }
            _ => {}
        }
        term.push(c);
    }
    terms.push(term);
    terms
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn label(term: &str) -> Option<Requirement> {
    let set = |rest: &str| -> Option<Vec<String>> {
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some(key) = term.strip_prefix('!') {
        return Some(Requirement::Absent(key.trim().to_owned()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Some(Requirement::NotIn(
            key.trim().to_owned(),
            vec![value.trim().to_owned()],
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Some(Requirement::In(
            key.trim().to_owned(),
            vec![value.trim().to_owned()],
        ));
    }
    if let Some((key, rest)) = term.split_once(" notin ") {
        return Some(Requirement::NotIn(key.trim().to_owned(), set(rest)?));
    }
    if let Some((key, rest)) = term.split_once(" in ") {
        return Some(Requirement::In(key.trim().to_owned(), set(rest)?));
    }
    (!term.contains(' ')).then(|| Requirement::Exists(term.to_owned()))
}

fn bad_request(message: &str) -> ApiError {
    status_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}
