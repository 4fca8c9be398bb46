//! `CustomResourceDefinition`s reviewed as apiextensions.k8s.io/v1 reviews
//! them: the same checks, field paths and messages as a real API server.
//!
//! # Sources
//!
//! In k8s.io/apiextensions-apiserver: `ValidateCustomResourceDefinition` of
//! `pkg/apis/apiextensions/validation/validation.go` (names, versions,
//! printer columns; per schema node, [`openapi`]), the structural-schema
//! rules of `pkg/apiserver/schema/validation.go` and `complete.go`
//! ([`structural`]), defaults checked as `pkg/apiserver/schema/defaulting/validation.go`
//! checks them, and the `unrecognized format` warnings of
//! `pkg/registry/customresourcedefinition/strategy.go` (1.34+).
//!
//! # Differences from the real server
//!
//! CEL rules are compiled as [`super::cel`] compiles them (parsed, and
//! variables declared; not type-checked) but not cost-estimated (a rule
//! over a real cluster's budget passes here),
//! `x-kubernetes-validations[].fieldPath` is not resolved, conversion and selectable fields are not checked, pattern
//! errors carry the regex crate's words instead of Go's, and bad values the
//! real server prints as Go structs (a whole `JSONSchemaProps` or version
//! list) are printed as JSON maps.

mod openapi;
mod structural;

use serde_json::Value;

use super::field::{self, FieldError, child, index, key};
use super::schema;
use openapi::{Walk, openapi};
use structural::{Level, completeness, invariants};

/// What the server says about a CRD: errors refuse it (422), warnings come
/// back in `Warning` headers.
#[derive(Debug, Default)]
pub struct CrdReview {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<String>,
}

/// `printerColumnDatatypes` and `customResourceColumnDefinitionFormats`.
const COLUMN_TYPES: &str = "boolean,date,integer,number,string";
const COLUMN_FORMATS: &str = "byte,date,date-time,double,float,int32,int64,password";

/// Root keys allowed when the status subresource is on
/// (`allowedFieldsAtRootSchema`, as JSON keys), with the Go names the
/// message lists.
const ROOT_KEYS_WITH_STATUS: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "required",
    "items",
    "properties",
    "externalDocs",
    "example",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
];
const ROOT_FIELDS_WITH_STATUS: &str = "[Description Type Format Title Maximum ExclusiveMaximum Minimum ExclusiveMinimum MaxLength MinLength Pattern MaxItems MinItems UniqueItems MultipleOf Required Items Properties ExternalDocs Example XPreserveUnknownFields XValidations]";

/// String formats a CRD may use (`supportedVersionedFormats` of
/// `pkg/apiserver/validation/formats.go`, the set every version since 1.0
/// knows; compared with dashes removed, as go-openapi normalizes names).
/// Any other is dropped from the schema when values are validated, and
/// 1.34+ warns `unrecognized format` on `type: string` nodes.
pub const STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

/// The formats OpenAPI defines for numbers: not checked by the server
/// either, but they describe the range honestly.
const NUMBER_FORMATS: &[(&str, &str)] = &[
    ("integer", "int32"),
    ("integer", "int64"),
    ("number", "float"),
    ("number", "double"),
];

// === impl CrdReview ===

impl CrdReview {
    /// The message of the 422 the real server answers a refused CRD with.
    pub fn refusal(&self, name: &str) -> Option<String> {
        (!self.errors.is_empty()).then(|| {
            field::invalid_message(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                name,
                &self.errors,
            )
        })
    }
}

/// Reviews a CRD about to be created (`ValidateCustomResourceDefinition`
/// after the v1 defaults: `names.singular` and `names.listKind`).
pub fn review(crd: &Value) -> CrdReview {
    let mut review = CrdReview::default();
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let (group, plural, kind) = (
        text(&spec["group"]),
        text(&names["plural"]),
        text(&names["kind"]),
    );

    let name = text(&crd["metadata"]["name"]);
    if name.is_empty() {
        review.error(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let mut problems = field::dns_subdomain_problems(&name);
        if name != format!("{plural}.{group}") {
            problems.push(r#"must be spec.names.plural+"."+spec.group"#.to_owned());
        }
        for problem in problems {
            review.error(FieldError::invalid(
                "metadata.name",
                name.as_str(),
                &problem,
            ));
        }
    }

    if group.is_empty() {
        review.error(FieldError::required("spec.group", ""));
    } else if let problems @ [_, ..] = field::dns_subdomain_problems(&group).as_slice() {
        review.error(FieldError::invalid(
            "spec.group",
            group.as_str(),
            &problems.join(","),
        ));
    } else if !group.contains('.') {
        review.error(FieldError::invalid(
            "spec.group",
            group.as_str(),
            "should be a domain with at least one dot",
        ));
    }
    match spec["scope"].as_str().unwrap_or("") {
        "" => review.error(FieldError::required("spec.scope", "")),
        "Cluster" | "Namespaced" => {}
        other => review.error(FieldError::not_supported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
    }
    review.versions(spec);
    review.names(names, &kind);
    if spec["preserveUnknownFields"] == true {
        review.error(FieldError::invalid(
            "spec.preserveUnknownFields",
            true,
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
        ));
    }
    review
}

/// Reviews a CRD replacing `old` (`ValidateCustomResourceDefinitionUpdate`:
/// the same checks, and the group and plural, which make its name, stay).
pub fn review_update(crd: &Value, old: &Value) -> CrdReview {
    let mut review = review(crd);
    for (path, pointer) in [
        ("spec.group", "/spec/group"),
        ("spec.names.plural", "/spec/names/plural"),
    ] {
        let (new, was) = (crd.pointer(pointer), old.pointer(pointer));
        if new != was {
            let value = new.cloned().unwrap_or(Value::Null);
            review.error(FieldError::invalid(path, value, "field is immutable"));
        }
    }
    review
}

/// Formats on a schema's nodes that say nothing a server checks: string
/// formats outside [`STRING_FORMATS`] and number formats outside OpenAPI's
/// (`uint32`). Stricter than the server, which drops the first kind
/// silently (1.34+ warns) and never looks at the second; a test helper.
pub fn unknown_formats(schema: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    visit(schema, "openAPIV3Schema", &mut |node, path| {
        let (Some(format), kind) = (node.get("format").and_then(Value::as_str), node.get("type"))
        else {
            return;
        };
        let kind = kind.and_then(Value::as_str).unwrap_or("");
        let known = match kind {
            "string" => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
            _ => NUMBER_FORMATS.contains(&(kind, format)),
        };
        if !known {
            unknown.push(format!("{path}: format {format} on type {kind}"));
        }
    });
    unknown
}

impl CrdReview {
    fn error(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// The per-version checks, then those across versions.
    fn versions(&mut self, spec: &Value) {
        let versions = spec["versions"].as_array().map_or(&[][..], Vec::as_slice);
        let mut names: Vec<&str> = Vec::new();
        let mut unique = true;
        for (i, version) in versions.iter().enumerate() {
            let path = index("spec.versions", i);
            let name = version["name"].as_str().unwrap_or("");
            unique &= !names.contains(&name);
            names.push(name);
            let problems = field::dns_label_problems(name);
            if !problems.is_empty() {
                self.error(FieldError::invalid(
                    &child(&path, "name"),
                    name,
                    &problems.join(","),
                ));
            }
            let status = version.pointer("/subresources/status").is_some();
            self.version_schema(&version["schema"], status, &child(&path, "schema"));
            let columns = version["additionalPrinterColumns"].as_array();
            for (j, column) in columns.into_iter().flatten().enumerate() {
                self.column(column, &index(&child(&path, "additionalPrinterColumns"), j));
            }
        }
        // The real server prints the whole version list here (Go syntax).
        let all = spec["versions"].clone();
        if !unique {
            self.error(FieldError::invalid(
                "spec.versions",
                all.clone(),
                "must contain unique version names",
            ));
        }
        if versions.iter().filter(|v| v["storage"] == true).count() != 1 {
            self.error(FieldError::invalid(
                "spec.versions",
                all,
                "must have exactly one version marked as storage version",
            ));
        }
    }

    /// `ValidateCustomResourceColumnDefinition`.
    fn column(&mut self, column: &Value, path: &str) {
        if column["name"].as_str().unwrap_or("").is_empty() {
            self.error(FieldError::required(&child(path, "name"), ""));
        }
        let detail = format!("must be one of {COLUMN_TYPES}");
        match column["type"].as_str().unwrap_or("") {
            "" => self.error(FieldError::required(&child(path, "type"), &detail)),
            t if COLUMN_TYPES.split(',').any(|known| known == t) => {}
            t => self.error(FieldError::invalid(&child(path, "type"), t, &detail)),
        }
        if let Some(format) = column["format"].as_str().filter(|f| !f.is_empty())
            && !COLUMN_FORMATS.split(',').any(|known| known == format)
        {
            let detail = format!("must be one of {COLUMN_FORMATS}");
            self.error(FieldError::invalid(&child(path, "format"), format, &detail));
        }
        // The path really is `JSONPath` (the Go field's name).
        let json_path = column["jsonPath"].as_str().unwrap_or("");
        let json_path_field = child(path, "JSONPath");
        if json_path.is_empty() {
            self.error(FieldError::required(&json_path_field, ""));
        } else if !json_path.starts_with('.') {
            self.error(FieldError::invalid(
                &json_path_field,
                json_path,
                "must be a simple json path starting with .",
            ));
        }
    }

    /// `ValidateCustomResourceDefinitionNames` and the required names.
    fn names(&mut self, names: &Value, kind: &str) {
        let singular = names["singular"]
            .as_str()
            .map_or_else(|| kind.to_lowercase(), str::to_owned);
        let list_kind = names["listKind"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| (!kind.is_empty()).then(|| format!("{kind}List")))
            .unwrap_or_default();
        let plural = names["plural"].as_str().unwrap_or("");
        for (field, value) in [
            ("plural", plural),
            ("singular", singular.as_str()),
            ("kind", kind),
            ("listKind", list_kind.as_str()),
        ] {
            if value.is_empty() {
                self.error(FieldError::required(&child("spec.names", field), ""));
            }
        }
        for (field, value, mixed_case) in [
            ("plural", plural, false),
            ("singular", singular.as_str(), false),
            ("kind", kind, true),
            ("listKind", list_kind.as_str(), true),
        ] {
            let problems = field::dns_label_problems(&value.to_lowercase());
            if value.is_empty() || problems.is_empty() {
                continue;
            }
            let problems = if mixed_case {
                format!(
                    "may have mixed case, but should otherwise match: {}",
                    problems.join(",")
                )
            } else {
                problems.join(",")
            };
            self.error(FieldError::invalid(
                &child("spec.names", field),
                value,
                &problems,
            ));
        }
        for list in ["shortNames", "categories"] {
            for (i, entry) in names[list].as_array().into_iter().flatten().enumerate() {
                let entry = entry.as_str().unwrap_or("");
                let problems = field::dns_label_problems(entry);
                if !problems.is_empty() {
                    let path = index(&child("spec.names", list), i);
                    self.error(FieldError::invalid(&path, entry, &problems.join(",")));
                }
            }
        }
        if !kind.is_empty() && kind == list_kind {
            self.error(FieldError::invalid(
                "spec.names.listKind",
                list_kind.as_str(),
                "kind and listKind may not be the same",
            ));
        }
    }

    /// `validateCustomResourceDefinitionValidation` for one version's
    /// `schema` (at `path`), in the real order: the root's restrictions,
    /// the structural rules (sorted, as `ValidateStructural` sorts them)
    /// or, when they hold, the defaults; then the per-node walk.
    fn version_schema(&mut self, validation: &Value, status: bool, path: &str) {
        let root_path = child(path, "openAPIV3Schema");
        let Some(root) = validation.get("openAPIV3Schema").filter(|r| r.is_object()) else {
            self.error(FieldError::required(&root_path, "schemas are required"));
            return;
        };
        if status {
            self.root_with_status(root, &root_path);
        }
        if schema::flag(root, "nullable") {
            self.error(FieldError::forbidden(
                &child(&root_path, "nullable"),
                "nullable cannot be true at the root",
            ));
        }
        let mut structural = Vec::new();
        invariants(root, Level::Root, &root_path, &mut structural);
        completeness(root, &root_path, &mut structural);
        structural.sort_by_key(ToString::to_string);
        if structural.is_empty() {
            validate_defaults(root, &root_path, true, &mut self.errors);
        }
        self.errors.extend(structural);
        openapi(root, &root_path, &Walk::default(), true, &mut self.errors);
        self.format_warnings(root);
    }

    /// With the status subresource on, the root may hold only what a
    /// `properties[status]` split leaves meaningful.
    fn root_with_status(&mut self, root: &Value, root_path: &str) {
        let Some(map) = root.as_object() else {
            return;
        };
        for (keyword, value) in map {
            if is_zero(value) {
                continue;
            }
            if keyword == "type" {
                if value != "object" {
                    self.error(FieldError::invalid(
                        &child(root_path, "type"),
                        value.clone(),
                        r#"only "object" is allowed as the type at the root of the schema if the status subresource is enabled"#,
                    ));
                    return;
                }
                continue;
            }
            if !ROOT_KEYS_WITH_STATUS.contains(&keyword.as_str()) {
                let detail = format!(
                    "only {ROOT_FIELDS_WITH_STATUS} fields are allowed at the root of the schema if the status subresource is enabled"
                );
                self.error(FieldError::invalid(root_path, root.clone(), &detail));
                return;
            }
        }
    }

    /// `WarningsOnCreate`: `unrecognized format "<format>"` for each format
    /// on a `type: string` node the server does not know.
    fn format_warnings(&mut self, root: &Value) {
        visit(root, "", &mut |node, _| {
            let Some(format) = node.get("format").and_then(Value::as_str) else {
                return;
            };
            let normalized = format.replace('-', "");
            if node.get("type") == Some(&Value::from("string"))
                && !format.is_empty()
                && !STRING_FORMATS.contains(&normalized.as_str())
            {
                let warning = format!("unrecognized format {}", field::go_quote(format));
                if !self.warnings.contains(&warning) {
                    self.warnings.push(warning);
                }
            }
        });
    }
}

/// `ValidateDefaults`: each `default` (not under `additionalProperties`)
/// must survive pruning unchanged and validate against its own schema.
/// Defaults of the root's TypeMeta/ObjectMeta are refused by the walk.
fn validate_defaults(node: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    let embedded = root || schema::flag(node, "x-kubernetes-embedded-resource");
    if let Some(default) = node.get("default").filter(|_| !root) {
        let at = child(path, "default");
        let mut pruned = default.clone();
        schema::prune(&mut pruned, Some(node), embedded, "", &mut Vec::new());
        if &pruned != default {
            errors.push(FieldError::invalid(
                &at,
                default.clone(),
                "must not have unknown fields",
            ));
        }
        schema::validate(node, default, &at, "", errors);
    }
    if let Some(items) = node.get("items").filter(|i| i.is_object()) {
        validate_defaults(items, &child(path, "items"), false, errors);
    }
    for (name, property) in schema::properties(node) {
        if embedded && ["metadata", "apiVersion", "kind"].contains(&name.as_str()) {
            continue;
        }
        validate_defaults(
            property,
            &key(&child(path, "properties"), name),
            false,
            errors,
        );
    }
}

/// Calls `f` on every schema node (`SchemaHas`'s traversal), with its path.
fn visit(node: &Value, path: &str, f: &mut impl FnMut(&Value, &str)) {
    if !node.is_object() {
        return;
    }
    f(node, path);
    if let Some(items) = node.get("items") {
        visit(items, &child(path, "items"), f);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        for (i, nested) in node
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            visit(nested, &index(&child(path, junctor), i), f);
        }
    }
    if let Some(not) = node.get("not") {
        visit(not, &child(path, "not"), f);
    }
    for (name, property) in schema::properties(node) {
        visit(property, &key(&child(path, "properties"), name), f);
    }
    if let Some(additional) = node.get("additionalProperties") {
        visit(additional, &child(path, "additionalProperties"), f);
    }
}

/// Go's zero value, which the real checks treat as unset.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
