//! What the API server does to a custom resource it is asked to store, in
//! its order (k8s.io/apiextensions-apiserver `pkg/apiserver/schema/...`):
//! on decoding, drop the nulls of non-nullable fields without a default
//! and apply `default`s (`defaulting/prunenulls.go`, `defaulting/algorithm.go`);
//! prune every field the schema does not specify (`pruning/algorithm.go`),
//! except under `x-kubernetes-preserve-unknown-fields`, with `apiVersion`,
//! `kind` and `metadata` left alone at the root, `metadata` decoded as an
//! `ObjectMeta` instead, which drops what that type lacks
//! (`objectmeta/coerce.go`); then validate with kube-openapi's
//! `SchemaValidator`, worded as `validation.ValidateCustomResource`
//! reports it (`pkg/apiserver/validation/validation.go`), list types
//! (`listtype/validation.go`) and `metadata.name` as a DNS subdomain.
//! CEL rules then run ([`cel`]) unless a blocking error came first.
//! Not modelled: `format` checks on values, validation ratcheting.

use serde_json::{Map, Value};

use super::cel;
use super::field::{self, ErrorType, FieldError};

/// The outcome of admitting an object.
#[derive(Debug, Default)]
pub struct Admission {
    /// Paths of the fields pruning dropped (`spec.foo`, `metadata.bar`),
    /// sorted: what `fieldValidation=Strict` refuses and `Warn` reports.
    pub unknown_fields: Vec<String>,
    pub errors: Vec<FieldError>,
}

/// The fields of `metav1.ObjectMeta`; decoding drops any other.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// TypeMeta and ObjectMeta: never pruned at a resource's root.
const META_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

/// Defaults, prunes and validates `object` (a whole custom resource) against
/// the CRD version's `openAPIV3Schema`, in place.
pub fn admit(schema: &Value, object: &mut Value, old: Option<&Value>) -> Admission {
    prune_nulls(object, Some(schema));
    apply_defaults(object, Some(schema));
    let mut unknown_fields = Vec::new();
    prune(object, Some(schema), true, "", &mut unknown_fields);
    coerce_metadata(object, &mut unknown_fields);
    unknown_fields.sort();
    let mut errors = validate_name(schema, object);
    validate(schema, object, "", "", &mut errors);
    // `hasBlockingErr`: rules are not run over a value of the wrong shape.
    let blocking = errors.iter().any(|e| {
        matches!(
            e.kind,
            ErrorType::NotSupported
                | ErrorType::Required
                | ErrorType::TooLong
                | ErrorType::TooMany
                | ErrorType::TypeInvalid
        )
    });
    if blocking {
        errors.push(FieldError::invalid(
            "<nil>",
            "null",
            "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ));
    } else {
        errors.extend(cel::evaluate(schema, object, old));
    }
    Admission {
        unknown_fields,
        errors,
    }
}

/// `pruning.Prune`: removes what `schema` does not specify; `root` (or
/// `x-kubernetes-embedded-resource`) leaves TypeMeta and ObjectMeta alone.
/// Records the dropped fields' paths in `unknown`.
pub fn prune(
    value: &mut Value,
    schema: Option<&Value>,
    root: bool,
    path: &str,
    unknown: &mut Vec<String>,
) {
    if let Some(schema) = schema.filter(|s| flag(s, "x-kubernetes-preserve-unknown-fields")) {
        skip_prune(value, schema, root, path, unknown);
        return;
    }
    match value {
        Value::Object(map) => {
            let Some(schema) = schema else {
                unknown.extend(map.keys().map(|k| field::child(path, k)));
                map.clear();
                return;
            };
            let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if embedded && META_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                let child = field::child(path, &key);
                match child_schema(schema, &key) {
                    Some(child_schema) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune(v, child_schema, false, &child, unknown);
                        }
                    }
                    None => {
                        if !META_FIELDS.contains(&key.as_str()) || !path.is_empty() {
                            unknown.push(child);
                        }
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.get("items"));
            for (i, item) in items.iter_mut().enumerate() {
                prune(item, item_schema, false, &field::index(path, i), unknown);
            }
        }
        _ => {}
    }
}

/// `skipPrune`: under `x-kubernetes-preserve-unknown-fields` unknown fields
/// stay (with everything below them); the fields the schema does specify
/// are still pruned inside.
fn skip_prune(
    value: &mut Value,
    schema: &Value,
    root: bool,
    path: &str,
    unknown: &mut Vec<String>,
) {
    match value {
        Value::Object(map) => {
            let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
            for (key, v) in map.iter_mut() {
                if embedded && META_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                if let Some(child_schema) = child_schema(schema, key) {
                    prune(v, child_schema, false, &field::child(path, key), unknown);
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else {
                return;
            };
            for (i, item) in items.iter_mut().enumerate() {
                skip_prune(item, item_schema, false, &field::index(path, i), unknown);
            }
        }
        _ => {}
    }
}

/// The schema a field of an object follows: its property, else
/// `additionalProperties`. `Some(None)` is `additionalProperties: <bool>`,
/// which the real server models as a map whose values have no schema.
fn child_schema<'a>(schema: &'a Value, key: &str) -> Option<Option<&'a Value>> {
    if let Some(property) = schema.get("properties").and_then(|p| p.get(key)) {
        return Some(Some(property));
    }
    schema
        .get("additionalProperties")
        .map(|additional| additional.is_object().then_some(additional))
}

/// `PruneNonNullableNullsWithoutDefaults`.
fn prune_nulls(value: &mut Value, schema: Option<&Value>) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = schema.and_then(|s| child_schema(s, &key)).flatten();
                let drop = map.get(&key).is_some_and(Value::is_null)
                    && child.is_some_and(|c| !flag(c, "nullable") && c.get("default").is_none());
                if drop {
                    map.remove(&key);
                } else if let Some(v) = map.get_mut(&key) {
                    prune_nulls(v, child);
                }
            }
        }
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.get("items"));
            for item in items {
                prune_nulls(item, item_schema);
            }
        }
        _ => {}
    }
}

/// `defaulting.Default`: a missing field, or a null one that may not be
/// null, takes its property's `default`.
pub fn apply_defaults(value: &mut Value, schema: Option<&Value>) {
    let Some(schema) = schema else {
        return;
    };
    let non_nullable_null =
        |v: Option<&Value>, s: &Value| v.is_some_and(Value::is_null) && !flag(s, "nullable");
    match value {
        Value::Object(map) => {
            for (key, property) in properties(schema) {
                let Some(default) = property.get("default") else {
                    continue;
                };
                if !map.contains_key(key) || non_nullable_null(map.get(key), property) {
                    map.insert(key.clone(), default.clone());
                }
            }
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, v) in map.iter_mut() {
                if let Some(property) = schema.get("properties").and_then(|p| p.get(key)) {
                    apply_defaults(v, Some(property));
                } else if let Some(additional) = additional {
                    if non_nullable_null(Some(v), additional) {
                        *v = additional.get("default").cloned().unwrap_or(Value::Null);
                    }
                    apply_defaults(v, Some(additional));
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else {
                return;
            };
            for item in items {
                if non_nullable_null(Some(item), item_schema) {
                    *item = item_schema.get("default").cloned().unwrap_or(Value::Null);
                }
                apply_defaults(item, Some(item_schema));
            }
        }
        _ => {}
    }
}

/// ObjectMeta decoding keeps only ObjectMeta's fields.
fn coerce_metadata(object: &mut Value, unknown: &mut Vec<String>) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    metadata.retain(|key, _| {
        let known = OBJECT_META_FIELDS.contains(&key.as_str());
        if !known {
            unknown.push(field::child("metadata", key));
        }
        known
    });
}

/// `metadata.name`: a DNS subdomain (`ValidateObjectMetaAccessor` with
/// `NameIsDNSSubdomain`, as for every custom resource), and whatever the
/// schema's root `metadata.properties.name` restricts
/// (`objectmeta.Validate`).
fn validate_name(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(name) = object["metadata"]["name"].as_str() else {
        return errors;
    };
    for problem in field::dns_subdomain_problems(name) {
        errors.push(FieldError::invalid("metadata.name", name, &problem));
    }
    if let Some(name_schema) = schema.pointer("/properties/metadata/properties/name") {
        validate(
            name_schema,
            &object["metadata"]["name"],
            "",
            "metadata.name",
            &mut errors,
        );
    }
    errors
}

/// kube-openapi's `SchemaValidator`: `value`, found at `name` (relative to
/// what is validated, as the messages' `<name> in body` say it), reported
/// at `prefix` + `name`.
pub fn validate(
    schema: &Value,
    value: &Value,
    prefix: &str,
    name: &str,
    errors: &mut Vec<FieldError>,
) {
    let at = if prefix.is_empty() {
        name.to_owned()
    } else if name.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}.{name}")
    };
    if !check_type(schema, value, &at, name, errors) || value.is_null() {
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed
            .iter()
            .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_owned))
            .collect();
        let supported: Vec<&str> = supported.iter().map(String::as_str).collect();
        errors.push(FieldError::not_supported(&at, value.clone(), &supported));
    }
    match value {
        Value::Object(map) => validate_object(schema, map, prefix, name, &at, errors),
        Value::Array(items) => validate_array(schema, items, prefix, name, &at, errors),
        Value::String(text) => validate_string(schema, text, name, &at, errors),
        Value::Number(number) => validate_number(schema, number, name, &at, errors),
        _ => {}
    }
    validate_junctors(schema, value, prefix, name, &at, errors);
}

/// The type validator: `<name> in body must be of type <type>: "<actual>"`.
fn check_type(
    schema: &Value,
    value: &Value,
    at: &str,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> bool {
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let expected = match schema.get("type").and_then(Value::as_str) {
        _ if int_or_string => "integer,string",
        Some(expected) => expected,
        None => return true,
    };
    if value.is_null() && flag(schema, "nullable") {
        return true;
    }
    let actual = type_name(value);
    let matches = expected.split(',').any(|t| match t {
        "integer" => actual == "integer",
        "number" => actual == "integer" || actual == "number",
        other => other == actual,
    });
    if !matches {
        let detail = format!("{name} in body must be of type {expected}: \"{actual}\"");
        errors.push(FieldError::type_invalid(at, actual, &detail));
    }
    matches
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    prefix: &str,
    name: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let required = required.as_str().unwrap_or("");
        if !map.contains_key(required) {
            errors.push(FieldError::required(&field::child(at, required), ""));
        }
    }
    if let Some(max) = count(schema, "maxProperties").filter(|max| map.len() > *max) {
        errors.push(FieldError::too_many(at, map.len(), max));
    }
    if let Some(min) = count(schema, "minProperties").filter(|min| map.len() < *min) {
        let detail = format!("{name} in body should have at least {min} properties");
        errors.push(FieldError::invalid(at, map.len(), &detail));
    }
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, v) in map {
        // Fields without a schema were pruned, save TypeMeta and ObjectMeta.
        let child = schema.get("properties").and_then(|p| p.get(key));
        if let Some(child) = child.or(additional) {
            validate(child, v, prefix, &field::child(name, key), errors);
        }
    }
}

fn validate_array(
    schema: &Value,
    items: &[Value],
    prefix: &str,
    name: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(max) = count(schema, "maxItems").filter(|max| items.len() > *max) {
        errors.push(FieldError::too_many(at, items.len(), max));
    }
    if let Some(min) = count(schema, "minItems").filter(|min| items.len() < *min) {
        let detail = format!("{name} in body should have at least {min} items");
        errors.push(FieldError::invalid(at, items.len(), &detail));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate(item_schema, item, prefix, &field::index(name, i), errors);
        }
    }
    validate_list_type(schema, items, at, errors);
}

/// `listtype.ValidateListSetsAndMaps`: no two items of a `set` alike, no
/// two of a `map` with the same keys.
fn validate_list_type(schema: &Value, items: &[Value], at: &str, errors: &mut Vec<FieldError>) {
    let identity = |item: &Value| -> Value {
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                let keys = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array);
                let key_values: Map<String, Value> = keys
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|k| Some((k.to_owned(), item.get(k)?.clone())))
                    .collect();
                Value::Object(key_values)
            }
            _ => item.clone(),
        }
    };
    if !matches!(
        schema.get("x-kubernetes-list-type").and_then(Value::as_str),
        Some("map" | "set")
    ) {
        return;
    }
    let mut seen = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let id = identity(item);
        if seen.contains(&id) {
            errors.push(FieldError::duplicate(&field::index(at, i), id));
        } else {
            seen.push(id);
        }
    }
}

fn validate_string(schema: &Value, text: &str, name: &str, at: &str, errors: &mut Vec<FieldError>) {
    let length = text.chars().count();
    if let Some(max) = count(schema, "maxLength").filter(|max| length > *max) {
        errors.push(FieldError::too_long(at, max));
    }
    if let Some(min) = count(schema, "minLength").filter(|min| length < *min) {
        let detail = format!("{name} in body should be at least {min} chars long");
        errors.push(FieldError::invalid(at, text, &detail));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        let matched = regex::Regex::new(pattern).is_ok_and(|re| re.is_match(text));
        if !matched {
            let detail = format!("{name} in body should match '{pattern}'");
            errors.push(FieldError::invalid(at, text, &detail));
        }
    }
}

fn validate_number(
    schema: &Value,
    number: &serde_json::Number,
    name: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    let n = number.as_f64().unwrap_or(0.0);
    let value = Value::Number(number.clone());
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMaximum");
        if n > max || (exclusive && n == max) {
            let than = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            let detail = format!("{name} in body should be {than} {max}");
            errors.push(FieldError::invalid(at, value.clone(), &detail));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMinimum");
        if n < min || (exclusive && n == min) {
            let than = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            let detail = format!("{name} in body should be {than} {min}");
            errors.push(FieldError::invalid(at, value.clone(), &detail));
        }
    }
    if let Some(factor) = schema.get("multipleOf").and_then(Value::as_f64)
        && factor != 0.0
        && (n / factor).fract() != 0.0
    {
        let detail = format!("{name} in body should be a multiple of {factor}");
        errors.push(FieldError::invalid(at, value, &detail));
    }
}

/// `allOf` (every one), `anyOf` (at least one), `oneOf` (exactly one), `not`.
fn validate_junctors(
    schema: &Value,
    value: &Value,
    prefix: &str,
    name: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    let passes = |s: &Value| {
        let mut found = Vec::new();
        validate(s, value, prefix, name, &mut found);
        found.is_empty()
    };
    for s in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        validate(s, value, prefix, name, errors);
    }
    if let Some(any_of) = schema.get("anyOf").and_then(Value::as_array)
        && !any_of.iter().any(passes)
    {
        let detail = format!("{name} in body must validate at least one schema (anyOf)");
        errors.push(FieldError::invalid(at, value.clone(), &detail));
    }
    if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array)
        && one_of.iter().filter(|s| passes(s)).count() != 1
    {
        let detail = format!("{name} in body must validate one and only one schema (oneOf)");
        errors.push(FieldError::invalid(at, value.clone(), &detail));
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        let detail = format!("{name} in body must not validate the schema (not)");
        errors.push(FieldError::invalid(at, value.clone(), &detail));
    }
}

/// A JSON value's type, as kube-openapi names it in messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        // JSON's `5.0` decodes to a float64 that is a JSON integer.
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A schema's `properties`, in order.
pub fn properties(schema: &Value) -> impl Iterator<Item = (&String, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
}

/// A boolean keyword that is `true`.
pub fn flag(schema: &Value, keyword: &str) -> bool {
    schema.get(keyword) == Some(&Value::Bool(true))
}

fn count(schema: &Value, keyword: &str) -> Option<usize> {
    schema
        .get(keyword)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests;
