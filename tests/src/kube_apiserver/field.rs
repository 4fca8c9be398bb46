//! Field errors worded as the API server words them: `field.Error`,
//! `field.Path` and `ErrorList.ToAggregate` of k8s.io/apimachinery
//! (`pkg/util/validation/field/{errors,path}.go`) and `errors.NewInvalid`
//! (`pkg/api/errors/errors.go`), so a refusal from the stand-in reads
//! exactly like one from a real cluster.

use serde_json::{Value, json};

/// `field.ErrorType`; its `String()` starts every error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Forbidden,
    Invalid,
    TypeInvalid,
    NotSupported,
    Duplicate,
    TooLong,
    TooMany,
}

/// One refused field: `<field>: <type>[: <value>][: <detail>]`.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub kind: ErrorType,
    pub field: String,
    /// The bad value; `None` where the real error prints none (`Required`,
    /// `Forbidden`, `TooLong`, an omitted count).
    pub value: Option<Value>,
    pub detail: String,
}

// === impl ErrorType ===

impl ErrorType {
    /// `ErrorType.String()`.
    fn words(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Forbidden => "Forbidden",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Duplicate => "Duplicate value",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
        }
    }

    /// The `StatusCause.type` of a `metav1.Status`.
    fn cause(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Forbidden => "FieldValueForbidden",
            Self::Invalid => "FieldValueInvalid",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Duplicate => "FieldValueDuplicate",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
        }
    }
}

// === impl FieldError ===

impl FieldError {
    pub fn required(field: &str, detail: &str) -> Self {
        Self::new(ErrorType::Required, field, None, detail)
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::new(ErrorType::Forbidden, field, None, detail)
    }

    pub fn invalid(field: &str, value: impl Into<Value>, detail: &str) -> Self {
        Self::new(ErrorType::Invalid, field, Some(value.into()), detail)
    }

    pub fn type_invalid(field: &str, value: impl Into<Value>, detail: &str) -> Self {
        Self::new(ErrorType::TypeInvalid, field, Some(value.into()), detail)
    }

    pub fn duplicate(field: &str, value: Value) -> Self {
        Self::new(ErrorType::Duplicate, field, Some(value), "")
    }

    /// `field.NotSupported`: the detail lists the supported values, quoted.
    pub fn not_supported(field: &str, value: impl Into<Value>, supported: &[&str]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|v| go_quote(v)).collect();
        let detail = if quoted.is_empty() {
            String::new()
        } else {
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(ErrorType::NotSupported, field, Some(value.into()), &detail)
    }

    /// `field.TooLong` as kube-openapi's `maxLength` failures become it
    /// (the 1.32+ wording, which says bytes though it counts characters).
    pub fn too_long(field: &str, max: usize) -> Self {
        let detail = format!("may not be more than {max} bytes");
        Self::new(ErrorType::TooLong, field, None, &detail)
    }

    /// `field.TooMany`: `maxItems` and `maxProperties` failures.
    pub fn too_many(field: &str, actual: usize, max: usize) -> Self {
        let detail = format!("must have at most {max} items");
        Self::new(ErrorType::TooMany, field, Some(actual.into()), &detail)
    }

    fn new(kind: ErrorType, field: &str, value: Option<Value>, detail: &str) -> Self {
        Self {
            kind,
            field: field.to_owned(),
            value,
            detail: detail.to_owned(),
        }
    }

    /// `Error.ErrorBody()`: the message without the field.
    pub fn body(&self) -> String {
        let mut body = self.kind.words().to_owned();
        if let Some(value) = &self.value {
            body.push_str(": ");
            body.push_str(&go_value(value));
        }
        if !self.detail.is_empty() {
            body.push_str(": ");
            body.push_str(&self.detail);
        }
        body
    }

    /// A `StatusCause` for the `details.causes` of a `metav1.Status`.
    pub fn cause(&self) -> Value {
        json!({ "reason": self.kind.cause(), "message": self.body(), "field": self.field })
    }
}

impl std::fmt::Display for FieldError {
    /// `Error.Error()`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// `field.Path.Child`: `a.b`.
pub fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// `field.Path.Key`: `a[b]`.
pub fn key(path: &str, key: &str) -> String {
    format!("{path}[{key}]")
}

/// `field.Path.Index`: `a[0]`.
pub fn index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// `ErrorList.ToAggregate().Error()`: duplicates dropped, one error bare,
/// several in brackets.
pub fn aggregate(errors: &[FieldError]) -> String {
    let mut messages: Vec<String> = Vec::new();
    for error in errors {
        let message = error.to_string();
        if !messages.contains(&message) {
            messages.push(message);
        }
    }
    match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// The message of `errors.NewInvalid`: `<Kind>.<group> "<name>" is invalid: ...`.
pub fn invalid_message(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> String {
    let qualified = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    format!(
        "{qualified} {} is invalid: {}",
        go_quote(name),
        aggregate(errors)
    )
}

/// `validation.IsDNS1123Subdomain` (k8s.io/apimachinery
/// `pkg/util/validation/validation.go`): what is wrong with `name`.
pub fn dns_subdomain_problems(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() > 253 {
        problems.push("must be no more than 253 characters".to_owned());
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label) {
        problems.push(
            r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .to_owned(),
        );
    }
    problems
}

/// `validation.IsDNS1035Label`: what is wrong with `name`.
pub fn dns_label_problems(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() > 63 {
        problems.push("must be no more than 63 characters".to_owned());
    }
    let valid = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-');
    if !valid {
        // The double space is the real message's (an empty example between the two).
        problems.push(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .to_owned(),
        );
    }
    problems
}

/// Go's `%q` for a string.
pub fn go_quote(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// How `ErrorBody` prints a bad value decoded from JSON: `%v` for numbers
/// and booleans, `%q` for strings, `null`, and Go syntax (`%#v`) for
/// `map[string]interface {}` and `[]interface {}`.
fn go_value(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::String(text) => go_quote(text),
        Value::Bool(_) | Value::Number(_) => go_number_or_bool(value),
        Value::Array(_) | Value::Object(_) => go_syntax(value),
    }
}

fn go_number_or_bool(value: &Value) -> String {
    match value.as_f64() {
        // JSON's `5.0` decodes to float64(5), which Go prints as `5`.
        Some(n) if value.is_f64() && n.fract() == 0.0 && n.abs() < 1e21 => format!("{n:.0}"),
        _ => value.to_string(),
    }
}

/// Go's `%#v` of a value decoded from JSON (map keys sorted, as Go prints them).
fn go_syntax(value: &Value) -> String {
    match value {
        Value::Null => "interface {}(nil)".into(),
        Value::String(text) => go_quote(text),
        Value::Bool(_) | Value::Number(_) => go_number_or_bool(value),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(go_syntax).collect();
            format!("[]interface {{}}{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let entries: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", go_quote(k), go_syntax(&map[k])))
                .collect();
            format!("map[string]interface {{}}{{{}}}", entries.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_like_apimachinery() {
        let path = key(
            &child(
                &child("spec.versions[0].schema", "openAPIV3Schema"),
                "properties",
            ),
            "spec",
        );
        assert_eq!(
            path,
            "spec.versions[0].schema.openAPIV3Schema.properties[spec]"
        );
        let required = FieldError::required(&child(&path, "type"), "must not be empty");
        assert_eq!(
            required.to_string(),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty"
        );
        assert_eq!(
            FieldError::not_supported("spec.scope", "Global", &["Cluster", "Namespaced"]).body(),
            r#"Unsupported value: "Global": supported values: "Cluster", "Namespaced""#
        );
        assert_eq!(
            FieldError::too_many("spec.env", 300, 256).body(),
            "Too many: 300: must have at most 256 items"
        );
        assert_eq!(
            FieldError::invalid("x", json!(5.0), "d").body(),
            "Invalid value: 5: d"
        );
        assert_eq!(
            FieldError::duplicate("s[1]", json!({"type": "Ready"})).body(),
            r#"Duplicate value: map[string]interface {}{"type":"Ready"}"#
        );
    }

    #[test]
    fn several_errors_aggregate_in_brackets_without_duplicates() {
        let a = FieldError::required("a", "");
        let b = FieldError::forbidden("b", "no");
        assert_eq!(aggregate(std::slice::from_ref(&a)), "a: Required value");
        assert_eq!(
            invalid_message(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                "x",
                &[a.clone(), b, a]
            ),
            r#"CustomResourceDefinition.apiextensions.k8s.io "x" is invalid: [a: Required value, b: Forbidden: no]"#
        );
    }
}
