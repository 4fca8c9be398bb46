//! `ValidateCustomResourceDefinitionOpenAPISchema` of k8s.io/apiextensions-apiserver
//! `pkg/apis/apiextensions/validation/validation.go`: the checks every
//! schema node gets, junctors included, in the real server's order.

use serde_json::Value;

use super::super::{
    cel,
    field::{FieldError, child, index, key},
    schema,
};
use super::is_zero;

/// `openapiV3Types`, sorted as `sets.List` prints them.
const OPENAPI_TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

/// `specStandardValidatorV3`'s state as the schema walk descends.
#[derive(Clone, Default)]
pub(super) struct Walk {
    /// Why `default` is forbidden here, when it is.
    forbidden_defaults: Option<String>,
    inside_resource_meta: bool,
}

/// `ValidateCustomResourceDefinitionOpenAPISchema`: the per-node checks,
/// everywhere (junctors included), with errors in the real order.
pub(super) fn openapi(
    node: &Value,
    path: &str,
    walk: &Walk,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    let Some(map) = node.as_object() else {
        return;
    };
    standard(node, path, walk, errors);
    if schema::flag(node, "uniqueItems") {
        errors.push(FieldError::forbidden(
            &child(path, "uniqueItems"),
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        ));
    }
    let has_properties = map
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty());
    if let Some(additional) = map.get("additionalProperties") {
        if has_properties && (additional == &Value::Bool(false) || additional.is_object()) {
            errors.push(FieldError::forbidden(
                &child(path, "additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        let mut sub = walk.clone();
        if walk.inside_resource_meta {
            sub.forbidden_defaults =
                Some("inside additionalProperties applying to object metadata".into());
        }
        openapi(
            additional,
            &child(path, "additionalProperties"),
            &sub,
            false,
            errors,
        );
    }
    let embedded = schema::flag(node, "x-kubernetes-embedded-resource");
    for (name, property) in schema::properties(node) {
        let mut sub = walk.clone();
        if (root || embedded) && ["metadata", "kind", "apiVersion"].contains(&name.as_str()) {
            sub.inside_resource_meta = true;
            if root {
                sub.forbidden_defaults = Some(format!("in top-level {name}"));
            }
        }
        openapi(
            property,
            &key(&child(path, "properties"), name),
            &sub,
            false,
            errors,
        );
    }
    if let Some(not) = map.get("not") {
        openapi(not, &child(path, "not"), walk, false, errors);
    }
    for junctor in ["allOf", "oneOf", "anyOf"] {
        for (i, nested) in map
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            openapi(
                nested,
                &index(&child(path, junctor), i),
                walk,
                false,
                errors,
            );
        }
    }
    if let Some(items) = map.get("items").filter(|i| i.is_object()) {
        openapi(items, &child(path, "items"), walk, false, errors);
    }
    extensions(node, path, errors);
}

/// `specStandardValidatorV3.validate`.
fn standard(node: &Value, path: &str, walk: &Walk, errors: &mut Vec<FieldError>) {
    let kind = node.get("type").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && !OPENAPI_TYPES.contains(&kind) {
        errors.push(FieldError::not_supported(
            &child(path, "type"),
            kind,
            OPENAPI_TYPES,
        ));
    }
    if node.get("default").is_some()
        && let Some(reason) = &walk.forbidden_defaults
    {
        let detail = format!("must not be set {reason}");
        errors.push(FieldError::forbidden(&child(path, "default"), &detail));
    }
    let set = |keyword: &str| node.get(keyword).is_some_and(|v| !is_zero(v));
    for (keyword, detail) in [
        ("id", "id is not supported"),
        ("additionalItems", "additionalItems is not supported"),
        ("patternProperties", "patternProperties is not supported"),
        ("definitions", "definitions is not supported"),
        ("dependencies", "dependencies is not supported"),
        ("$ref", "$ref is not supported"),
    ] {
        if set(keyword) || (keyword == "additionalItems" && node.get(keyword).is_some()) {
            errors.push(FieldError::forbidden(&child(path, keyword), detail));
        }
    }
    if kind == "null" {
        errors.push(FieldError::forbidden(
            &child(path, "type"),
            "type cannot be set to null, use nullable as an alternative",
        ));
    }
    if node.get("items").is_some_and(Value::is_array) {
        errors.push(FieldError::forbidden(
            &child(path, "items"),
            "items must be a schema object and not an array",
        ));
    }
    if walk.inside_resource_meta && schema::flag(node, "x-kubernetes-embedded-resource") {
        errors.push(FieldError::forbidden(
            &child(path, "x-kubernetes-embedded-resource"),
            "must not be used inside of resource meta",
        ));
    }
}

/// The `x-kubernetes-*` checks at the end of the per-node walk.
fn extensions(node: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let kind = node.get("type").and_then(Value::as_str).unwrap_or("");
    if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        errors.push(FieldError::invalid(
            &child(path, "x-kubernetes-preserve-unknown-fields"),
            false,
            "must be true or undefined",
        ));
    }
    if let Some(map_type) = node.get("x-kubernetes-map-type").and_then(Value::as_str) {
        type_required(
            kind,
            "object",
            "x-kubernetes-map-type is specified",
            path,
            errors,
        );
        if !["atomic", "granular"].contains(&map_type) {
            let at = child(path, "x-kubernetes-map-type");
            errors.push(FieldError::not_supported(
                &at,
                map_type,
                &["atomic", "granular"],
            ));
        }
    }
    let list_type = node.get("x-kubernetes-list-type").and_then(Value::as_str);
    if let Some(list_type) = list_type {
        if kind != "array" {
            type_required(
                kind,
                "array",
                "x-kubernetes-list-type is specified",
                path,
                errors,
            );
        } else if list_type == "set" {
            set_items_atomic(node, path, errors);
        }
        if !["atomic", "set", "map"].contains(&list_type) {
            let at = child(path, "x-kubernetes-list-type");
            errors.push(FieldError::not_supported(
                &at,
                list_type,
                &["atomic", "set", "map"],
            ));
        }
    }
    list_map_keys(node, list_type, path, errors);
    rules(node, path, errors);
}

/// `must be <want> if <why>`: Required when `type` is empty, else Invalid.
fn type_required(kind: &str, want: &str, why: &str, path: &str, errors: &mut Vec<FieldError>) {
    if kind == want {
        return;
    }
    let at = child(path, "type");
    let detail = format!("must be {want} if {why}");
    errors.push(if kind.is_empty() {
        FieldError::required(&at, &detail)
    } else {
        FieldError::invalid(&at, kind, &detail)
    });
}

/// Items of a `set` list must be atomic.
fn set_items_atomic(node: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(items) = node.get("items").filter(|i| i.is_object()) else {
        return;
    };
    let detail = "must be atomic as item of a list with x-kubernetes-list-type=set";
    let item_list_type = items
        .get("x-kubernetes-list-type")
        .cloned()
        .unwrap_or(Value::Null);
    match items.get("type").and_then(Value::as_str) {
        Some("array") if !item_list_type.is_null() && item_list_type != "atomic" => {
            let at = child(&child(path, "items"), "x-kubernetes-list-type");
            errors.push(FieldError::invalid(&at, item_list_type, detail));
        }
        // The real server reports the item's list type here, not its map type.
        Some("object") if items.get("x-kubernetes-map-type") != Some(&Value::from("atomic")) => {
            let at = child(&child(path, "items"), "x-kubernetes-map-type");
            errors.push(FieldError::invalid(&at, item_list_type, detail));
        }
        _ => {}
    }
}

/// `x-kubernetes-list-map-keys` and `validateMapListKeysMapSet`.
fn list_map_keys(node: &Value, list_type: Option<&str>, path: &str, errors: &mut Vec<FieldError>) {
    let keys: Vec<&str> = node
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let keys_value = node
        .get("x-kubernetes-list-map-keys")
        .cloned()
        .unwrap_or(Value::Null);
    let list_type_path = child(path, "x-kubernetes-list-type");
    let map_if_keys = "must be map if x-kubernetes-list-map-keys is non-empty";
    match list_type {
        _ if keys.is_empty() => {}
        None => errors.push(FieldError::required(&list_type_path, map_if_keys)),
        Some("map") => {}
        Some(other) => errors.push(FieldError::invalid(&list_type_path, other, map_if_keys)),
    }
    let items = node.get("items").filter(|i| i.is_object());
    let items_path = child(path, "items");
    if list_type == Some("map") {
        let keys_path = child(path, "x-kubernetes-list-map-keys");
        if keys.is_empty() {
            errors.push(FieldError::required(
                &keys_path,
                "must not be empty if x-kubernetes-list-type is map",
            ));
        }
        match items {
            None => errors.push(FieldError::required(
                &items_path,
                "must have a schema if x-kubernetes-list-type is map",
            )),
            Some(items) if items.get("type") != Some(&Value::from("object")) => {
                let item_type = items.get("type").and_then(Value::as_str).unwrap_or("");
                errors.push(FieldError::invalid(
                    &child(&items_path, "type"),
                    item_type,
                    "must be object if parent array's x-kubernetes-list-type is map",
                ));
            }
            Some(items) => {
                let mut seen = Vec::new();
                for k in &keys {
                    match items.pointer(&format!("/properties/{k}")) {
                        Some(property) => {
                            let property_type = property.get("type").and_then(Value::as_str);
                            if matches!(property_type, Some("array" | "object")) {
                                let at = child(&key(&child(&items_path, "properties"), k), "type");
                                errors.push(FieldError::invalid(
                                    &at,
                                    "object",
                                    "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                ));
                            }
                        }
                        None => errors.push(FieldError::invalid(
                            &keys_path,
                            keys_value.clone(),
                            "entries must all be names of item properties",
                        )),
                    }
                    if seen.contains(k) {
                        errors.push(FieldError::invalid(
                            &keys_path,
                            keys_value.clone(),
                            "must not contain duplicate entries",
                        ));
                    }
                    seen.push(k);
                }
            }
        }
    }
    let (Some(list_type @ ("map" | "set")), Some(items)) = (list_type, items) else {
        return;
    };
    if schema::flag(items, "nullable") {
        let detail = format!("cannot be nullable when x-kubernetes-list-type is {list_type}");
        errors.push(FieldError::forbidden(
            &child(&items_path, "nullable"),
            &detail,
        ));
    }
    if list_type != "map" {
        return;
    }
    let required: Vec<&str> = items
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for k in keys {
        let Some(property) = items.pointer(&format!("/properties/{k}")) else {
            continue;
        };
        let at = key(&child(&items_path, "properties"), k);
        if !required.contains(&k) && property.get("default").is_none() {
            errors.push(FieldError::required(
                &child(&at, "default"),
                "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
            ));
        }
        if schema::flag(property, "nullable") {
            errors.push(FieldError::forbidden(
                &child(&at, "nullable"),
                "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
            ));
        }
    }
}

/// `x-kubernetes-validations`: the fields, and each rule compiled.
fn rules(node: &Value, path: &str, errors: &mut Vec<FieldError>) {
    const REASONS: &[&str] = &[
        "FieldValueDuplicate",
        "FieldValueForbidden",
        "FieldValueInvalid",
        "FieldValueRequired",
    ];
    let rules = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = index(&child(path, "x-kubernetes-validations"), i);
        let text = |k: &str| rule.get(k).and_then(Value::as_str);
        let (expression, message) = (text("rule").unwrap_or(""), text("message"));
        let has_newline = |s: &str| s.contains(['\n', '\r']);
        let trimmed_message = message.unwrap_or("").trim();
        if expression.trim().is_empty() {
            errors.push(FieldError::required(
                &child(&at, "rule"),
                "rule is not specified",
            ));
        } else if let Some(message) = message.filter(|m| !m.is_empty() && m.trim().is_empty()) {
            errors.push(FieldError::invalid(
                &child(&at, "message"),
                message,
                "message must be non-empty if specified",
            ));
        } else if has_newline(trimmed_message) {
            errors.push(FieldError::invalid(
                &child(&at, "message"),
                message.unwrap_or(""),
                "message must not contain line breaks",
            ));
        } else if has_newline(expression.trim()) && trimmed_message.is_empty() {
            errors.push(FieldError::required(
                &child(&at, "message"),
                "message must be specified if rule contains line breaks",
            ));
        }
        if !expression.trim().is_empty()
            && let Err(error) = cel::compile(expression)
        {
            errors.push(FieldError::invalid(
                &child(&at, "rule"),
                rule.clone(),
                &format!("compilation failed: {error}"),
            ));
        }
        if text("messageExpression").is_some_and(|m| !m.is_empty() && m.trim().is_empty()) {
            errors.push(FieldError::required(
                &child(&at, "messageExpression"),
                "messageExpression must be non-empty if specified",
            ));
        }
        if let Some(reason) = text("reason").filter(|r| !REASONS.contains(r)) {
            errors.push(FieldError::not_supported(
                &child(&at, "reason"),
                reason,
                REASONS,
            ));
        }
        if let Some(field_path) = text("fieldPath") {
            if !field_path.is_empty() && field_path.trim().is_empty() {
                errors.push(FieldError::invalid(
                    &child(&at, "fieldPath"),
                    field_path,
                    "fieldPath must be non-empty if specified",
                ));
            }
            if has_newline(field_path) {
                errors.push(FieldError::invalid(
                    &child(&at, "fieldPath"),
                    field_path,
                    "fieldPath must not contain line breaks",
                ));
            }
        }
    }
}
