//! `events.k8s.io/v1` `Event` validation as the API server does it
//! (`ValidateEventCreate` and `ValidateEventUpdate` in
//! k8s.io/kubernetes `pkg/apis/core/validation/events.go`). Validation runs
//! on the internal `core.Event`, so errors name its fields: a too-long
//! `note` is refused as `message`, `regarding` is `involvedObject`, the
//! `deprecated*` fields lose the prefix.

use serde_json::Value;

use super::field::{self, FieldError};

/// `NoteLengthLimit`, in bytes (Go's `len`).
const NOTE_LENGTH_LIMIT: usize = 1024;
/// `ReportingInstanceLengthLimit`, `ActionLengthLimit`, `ReasonLengthLimit`.
const SHORT_LENGTH_LIMIT: usize = 128;
/// `validation.IsQualifiedName`'s name part.
const QUALIFIED_NAME_MAX: usize = 63;
const QUALIFIED_NAME_FORMAT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// What is wrong with a new `event` in `namespace`.
pub fn validate_create(event: &Value, namespace: &str) -> Vec<FieldError> {
    let mut errors = legacy(event, namespace);
    let metadata = &event["metadata"];
    match metadata["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => errors.extend(
            field::dns_subdomain_problems(name)
                .into_iter()
                .map(|problem| FieldError::invalid("metadata.name", name, &problem)),
        ),
        None if metadata["generateName"].is_string() => {}
        None => errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
    }
    errors.extend(series(event));
    if text(event, "eventTime").is_empty() {
        errors.push(FieldError::required("eventTime", ""));
    }
    let kind = text(event, "type");
    if kind != "Normal" && kind != "Warning" {
        errors.push(FieldError::invalid(
            "type",
            "",
            &format!("has invalid value: {kind}"),
        ));
    }
    for (v1, internal) in [
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
    ] {
        if !text(event, v1).is_empty() {
            errors.push(FieldError::invalid(internal, "", "needs to be unset"));
        }
    }
    if event["deprecatedCount"].as_i64().unwrap_or(0) != 0 {
        errors.push(FieldError::invalid("count", "", "needs to be unset"));
    }
    let source = &event["deprecatedSource"];
    if !text(source, "component").is_empty() || !text(source, "host").is_empty() {
        errors.push(FieldError::invalid("source", "", "needs to be unset"));
    }
    errors
}

/// What is wrong with `event` replacing `old`: the legacy rules, the
/// series if it changed, and the fields an event cannot change.
pub fn validate_update(event: &Value, old: &Value, namespace: &str) -> Vec<FieldError> {
    let mut errors = legacy(event, namespace);
    if event["series"] != old["series"] {
        errors.extend(series(event));
    }
    for (v1, internal) in [("reason", "reason"), ("note", "message"), ("type", "type")] {
        if event[v1] != old[v1] {
            errors.push(FieldError::invalid(
                internal,
                text(event, v1),
                "field is immutable",
            ));
        }
    }
    errors
}

/// `legacyValidateEvent` for an event with an `eventTime` (every
/// `events.k8s.io/v1` one; without, only the namespaces are compared).
fn legacy(event: &Value, namespace: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let regarding = text(&event["regarding"], "namespace");
    let mismatch = || {
        FieldError::invalid(
            "involvedObject.namespace",
            regarding,
            "does not match event.namespace",
        )
    };
    if text(event, "eventTime").is_empty() {
        let agrees = if regarding.is_empty() {
            namespace.is_empty() || namespace == "default"
        } else {
            namespace == regarding
        };
        if !agrees {
            errors.push(mismatch());
        }
    } else {
        if regarding.is_empty() && namespace != "default" && namespace != "kube-system" {
            errors.push(mismatch());
        }
        let controller = text(event, "reportingController");
        if controller.is_empty() {
            errors.push(FieldError::required("reportingController", ""));
        }
        errors.extend(
            qualified_name_problems(controller)
                .into_iter()
                .map(|problem| FieldError::invalid("reportingController", controller, &problem)),
        );
        for (v1, internal, limit) in [
            ("reportingInstance", "reportingInstance", SHORT_LENGTH_LIMIT),
            ("action", "action", SHORT_LENGTH_LIMIT),
            ("reason", "reason", SHORT_LENGTH_LIMIT),
            ("note", "message", NOTE_LENGTH_LIMIT),
        ] {
            let value = text(event, v1);
            // The note may be empty; the others are required.
            if value.is_empty() && v1 != "note" {
                errors.push(FieldError::required(internal, ""));
            }
            if value.len() > limit {
                errors.push(FieldError::invalid(
                    internal,
                    "",
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
    }
    errors.extend(
        field::dns_subdomain_problems(namespace)
            .into_iter()
            .map(|problem| FieldError::invalid("namespace", namespace, &problem)),
    );
    errors
}

/// `validateV1EventSeries`.
fn series(event: &Value) -> Vec<FieldError> {
    let series = &event["series"];
    if series.is_null() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    if series["count"].as_i64().unwrap_or(0) < 2 {
        errors.push(FieldError::invalid(
            "series.count",
            "",
            "should be at least 2",
        ));
    }
    if text(series, "lastObservedTime").is_empty() {
        errors.push(FieldError::required("series.lastObservedTime", ""));
    }
    errors
}

/// `validation.IsQualifiedName`: `[prefix/]name`.
fn qualified_name_problems(value: &str) -> Vec<String> {
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return vec!["prefix part must be non-empty".to_owned()];
            }
            let problems = field::dns_subdomain_problems(prefix);
            if !problems.is_empty() {
                return problems
                    .into_iter()
                    .map(|p| format!("prefix part {p}"))
                    .collect();
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX {
        problems.push(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX} bytes"
        ));
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && alphanumeric(name.chars().next())
        && alphanumeric(name.chars().last());
    // An empty name fails the pattern too, as in Go.
    if !valid {
        problems.push(QUALIFIED_NAME_FORMAT.to_owned());
    }
    problems
}

fn text<'a>(object: &'a Value, key: &str) -> &'a str {
    object[key].as_str().unwrap_or("")
}
