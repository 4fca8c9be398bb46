//! The structural-schema rules of k8s.io/apiextensions-apiserver
//! `pkg/apiserver/schema/validation.go` (`ValidateStructural`) and
//! `complete.go`, over a schema as JSON.

use serde_json::Value;

use super::super::{
    field::{FieldError, child, index, key},
    schema,
};
use super::is_zero;

/// Structural-schema levels (`rootLevel`, `itemLevel`, `fieldLevel`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Root,
    Item,
    Field,
}

/// `validateStructuralInvariants`: every node has a type (unless
/// `x-kubernetes-preserve-unknown-fields` or `x-kubernetes-int-or-string`),
/// arrays have items, the root is an object without `additionalProperties`,
/// `metadata` at the root restricts only `name` and `generateName`, and
/// `allOf`/`anyOf`/`oneOf`/`not` hold nothing but value restrictions.
pub(super) fn invariants(node: &Value, level: Level, path: &str, errors: &mut Vec<FieldError>) {
    if !node.is_object() {
        return;
    }
    let kind = node.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "array" && node.get("items").is_none() {
        errors.push(FieldError::required(
            &child(path, "items"),
            "must be specified",
        ));
    }
    if let Some(items) = node.get("items").filter(|i| i.is_object()) {
        invariants(items, Level::Item, &child(path, "items"), errors);
    }
    for (name, property) in schema::properties(node) {
        invariants(
            property,
            Level::Field,
            &key(&child(path, "properties"), name),
            errors,
        );
    }
    if let Some(additional) = node.get("additionalProperties") {
        if level == Level::Root {
            errors.push(FieldError::forbidden(
                &child(path, "additionalProperties"),
                "must not be used at the root",
            ));
        }
        if additional.is_object() {
            invariants(
                additional,
                Level::Field,
                &child(path, "additionalProperties"),
                errors,
            );
        }
    }
    let (int_or_string, preserve, embedded) = (
        schema::flag(node, "x-kubernetes-int-or-string"),
        schema::flag(node, "x-kubernetes-preserve-unknown-fields"),
        schema::flag(node, "x-kubernetes-embedded-resource"),
    );
    let must_be_false = "must be false if x-kubernetes-int-or-string is true";
    if int_or_string && preserve {
        let at = child(path, "x-kubernetes-preserve-unknown-fields");
        errors.push(FieldError::invalid(&at, true, must_be_false));
    }
    if int_or_string && embedded {
        let at = child(path, "x-kubernetes-embedded-resource");
        errors.push(FieldError::invalid(&at, true, must_be_false));
    }
    let skip_any_of = is_int_or_string_any_of(node.get("anyOf"));
    let skip_first_all_of_any_of = node
        .get("allOf")
        .and_then(|a| a.get(0))
        .is_some_and(|first| is_int_or_string_any_of(first.get("anyOf")));
    value_validation(node, skip_any_of, skip_first_all_of_any_of, path, errors);

    let type_path = child(path, "type");
    if embedded && kind != "object" {
        let detail = "must be object if x-kubernetes-embedded-resource is true";
        errors.push(if kind.is_empty() {
            FieldError::required(&type_path, detail)
        } else {
            FieldError::invalid(&type_path, kind, detail)
        });
    } else if kind.is_empty() && !int_or_string && !preserve {
        errors.push(FieldError::required(
            &type_path,
            match level {
                Level::Root => "must not be empty at the root",
                Level::Item => "must not be empty for specified array items",
                Level::Field => "must not be empty for specified object fields",
            },
        ));
    }
    if embedded && node.get("additionalProperties").is_some() {
        errors.push(FieldError::forbidden(
            &child(path, "additionalProperties"),
            "must not be used if x-kubernetes-embedded-resource is set",
        ));
    }
    if level == Level::Root && !kind.is_empty() && kind != "object" {
        errors.push(FieldError::invalid(
            &type_path,
            kind,
            "must be object at the root",
        ));
    }
    let check_metadata = level == Level::Root || embedded;
    let properties_path = child(path, "properties");
    for name in ["kind", "apiVersion"] {
        if let Some(property) = node
            .pointer(&format!("/properties/{name}"))
            .filter(|_| check_metadata)
        {
            let property_type = property.get("type").and_then(Value::as_str).unwrap_or("");
            if property_type != "string" {
                let at = child(&key(&properties_path, name), "type");
                errors.push(FieldError::invalid(&at, property_type, "must be string"));
            }
        }
    }
    if let Some(metadata) = node.pointer("/properties/metadata") {
        metadata_invariants(
            metadata,
            check_metadata,
            level,
            &key(&properties_path, "metadata"),
            errors,
        );
    }
    let no_properties = schema::properties(node).next().is_none();
    if embedded && !preserve && no_properties {
        errors.push(FieldError::required(
            &properties_path,
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
        ));
    }
}

/// `validateStructuralMetadataInvariants`.
fn metadata_invariants(
    metadata: &Value,
    check: bool,
    level: Level,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let kind = metadata.get("type").and_then(Value::as_str).unwrap_or("");
    if check && kind != "object" {
        errors.push(FieldError::invalid(
            &child(path, "type"),
            kind,
            "must be object",
        ));
    }
    if level != Level::Root {
        return;
    }
    let Some(map) = metadata.as_object() else {
        return;
    };
    let only_names = |properties: &Value| {
        properties
            .as_object()
            .is_some_and(|p| !p.is_empty() && p.keys().all(|k| k == "name" || k == "generateName"))
    };
    let specifies_more = map.iter().any(|(keyword, value)| match keyword.as_str() {
        // `type` and `default` are checked elsewhere.
        "type" | "default" => false,
        "properties" => !only_names(value),
        _ => !is_zero(value),
    });
    if specifies_more {
        errors.push(FieldError::forbidden(
            path,
            "must not specify anything other than name and generateName, but metadata is implicitly specified",
        ));
    }
}

/// `anyOf: [{type: integer}, {type: string}]`, the int-or-string exception.
fn is_int_or_string_any_of(any_of: Option<&Value>) -> bool {
    any_of == Some(&serde_json::json!([{ "type": "integer" }, { "type": "string" }]))
}

/// `validateValueValidation`: the junctors of a node, and its pattern.
fn value_validation(
    node: &Value,
    skip_any_of: bool,
    skip_first_all_of_any_of: bool,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let list = |keyword: &str| {
        node.get(keyword)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    if !skip_any_of {
        for (i, nested) in list("anyOf").iter().enumerate() {
            nested_value_validation(nested, false, &index(&child(path, "anyOf"), i), errors);
        }
    }
    for (i, nested) in list("allOf").iter().enumerate() {
        let skip = skip_first_all_of_any_of && i == 0;
        nested_value_validation(nested, skip, &index(&child(path, "allOf"), i), errors);
    }
    for (i, nested) in list("oneOf").iter().enumerate() {
        nested_value_validation(nested, false, &index(&child(path, "oneOf"), i), errors);
    }
    if let Some(not) = node.get("not") {
        nested_value_validation(not, false, &child(path, "not"), errors);
    }
    if let Some(pattern) = node
        .get("pattern")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        && let Err(err) = regex::Regex::new(pattern)
    {
        // Go's regexp words its errors differently from the regex crate.
        let detail = format!("must be a valid regular expression, but isn't: {err}");
        errors.push(FieldError::invalid(
            &child(path, "pattern"),
            pattern,
            &detail,
        ));
    }
}

/// `validateNestedValueValidation`: inside a junctor only restrictions of
/// values are allowed; anything that shapes the structure is not.
fn nested_value_validation(
    node: &Value,
    skip_any_of: bool,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if !node.is_object() {
        return;
    }
    value_validation(node, skip_any_of, false, path, errors);
    if let Some(items) = node.get("items").filter(|i| i.is_object()) {
        nested_value_validation(items, false, &child(path, "items"), errors);
    }
    for (name, property) in schema::properties(node) {
        nested_value_validation(
            property,
            false,
            &key(&child(path, "properties"), name),
            errors,
        );
    }
    let present = |keyword: &str| node.get(keyword).is_some_and(|v| !is_zero(v));
    for (keyword, detail) in [
        ("type", "must be empty to be structural"),
        ("additionalProperties", "must be undefined to be structural"),
        ("default", "must be undefined to be structural"),
        ("title", "must be empty to be structural"),
        ("description", "must be empty to be structural"),
        ("nullable", "must be false to be structural"),
        ("externalDocs", "must be undefined to be structural"),
        (
            "x-kubernetes-preserve-unknown-fields",
            "must be false to be structural",
        ),
        (
            "x-kubernetes-embedded-resource",
            "must be false to be structural",
        ),
        (
            "x-kubernetes-int-or-string",
            "must be false to be structural",
        ),
        (
            "x-kubernetes-list-map-keys",
            "must be empty to be structural",
        ),
        (
            "x-kubernetes-list-type",
            "must be undefined to be structural",
        ),
        (
            "x-kubernetes-map-type",
            "must be undefined to be structural",
        ),
        ("x-kubernetes-validations", "must be empty to be structural"),
    ] {
        // `additionalProperties: false` and `default: null` are still set.
        let set = match keyword {
            "additionalProperties" | "default" => node.get(keyword).is_some(),
            _ => present(keyword),
        };
        if set {
            errors.push(FieldError::forbidden(&child(path, keyword), detail));
        }
    }
    if node.pointer("/properties/metadata").is_some() {
        errors.push(FieldError::forbidden(
            &key(&child(path, "properties"), "metadata"),
            "must not be specified in a nested context",
        ));
    }
}

/// `validateStructuralCompleteness`: what the root's junctors name
/// (properties, items) must also be specified outside them.
pub(super) fn completeness(root: &Value, path: &str, errors: &mut Vec<FieldError>) {
    junctor_completeness(root, Some(root), path, path, errors);
}

fn junctor_completeness(
    validation: &Value,
    structural: Option<&Value>,
    s_path: &str,
    v_path: &str,
    errors: &mut Vec<FieldError>,
) {
    let list = |keyword: &str| {
        validation
            .get(keyword)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    if let Some(not) = validation.get("not") {
        nested_completeness(not, structural, s_path, &child(v_path, "not"), errors);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        for (i, nested) in list(junctor).iter().enumerate() {
            let at = index(&child(v_path, junctor), i);
            nested_completeness(nested, structural, s_path, &at, errors);
        }
    }
}

fn nested_completeness(
    nested: &Value,
    structural: Option<&Value>,
    s_path: &str,
    v_path: &str,
    errors: &mut Vec<FieldError>,
) {
    let Some(structural) = structural else {
        let detail = format!("because it is defined in {v_path}");
        errors.push(FieldError::required(s_path, &detail));
        return;
    };
    junctor_completeness(nested, Some(structural), s_path, v_path, errors);
    if let Some(items) = nested.get("items") {
        let at = (child(s_path, "items"), child(v_path, "items"));
        nested_completeness(items, structural.get("items"), &at.0, &at.1, errors);
    }
    for (name, property) in schema::properties(nested) {
        let s_at = key(&child(s_path, "properties"), name);
        let v_at = key(&child(v_path, "properties"), name);
        match structural.get("properties").and_then(|p| p.get(name)) {
            Some(specified) => nested_completeness(property, Some(specified), &s_at, &v_at, errors),
            None => {
                let detail = format!("because it is defined in {v_at}");
                errors.push(FieldError::required(&s_at, &detail));
            }
        }
    }
}
