use serde_json::{Value, json};

use super::*;

const CHART_CRD: &str =
    include_str!("../../../../charts/switchboard/crds/mcpservers.switchboard.dev.yaml");

fn chart_crd() -> Value {
    serde_yaml::from_str(CHART_CRD).expect("the chart CRD parses")
}

/// A valid CRD around `schema` (no status subresource unless asked).
fn crd_with(schema: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.example.com" },
        "spec": {
            "group": "example.com",
            "names": { "kind": "Widget", "plural": "widgets" },
            "scope": "Namespaced",
            "versions": [{ "name": "v1", "served": true, "storage": true,
                           "schema": { "openAPIV3Schema": schema } }],
        },
    })
}

/// The root schema of a CRD whose `spec` is `spec`.
fn spec_schema(spec: Value) -> Value {
    json!({ "type": "object", "properties": { "spec": spec } })
}

fn messages(crd: &Value) -> Vec<String> {
    review(crd).errors.iter().map(ToString::to_string).collect()
}

const ROOT: &str = "spec.versions[0].schema.openAPIV3Schema";

#[test]
fn the_chart_crd_is_accepted_without_warnings() {
    let review = review(&chart_crd());
    assert!(review.errors.is_empty(), "{:?}", review.refusal("x"));
    assert!(review.warnings.is_empty(), "{:?}", review.warnings);
    let schema = &chart_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert_eq!(unknown_formats(schema), Vec::<String>::new());
}

/// The CRD as shipped before `arguments` had a type: what a real cluster
/// answered `helm install` with.
#[test]
fn a_crd_with_an_untyped_arguments_field_is_refused_as_a_real_server_refuses_it() {
    let mut crd = chart_crd();
    let tool = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/health/properties/tool/properties")
        .expect("health.tool in the chart CRD");
    tool["arguments"] = json!({});
    assert_eq!(
        review(&crd)
            .refusal("mcpservers.switchboard.dev")
            .as_deref(),
        Some(
            r#"CustomResourceDefinition.apiextensions.k8s.io "mcpservers.switchboard.dev" is invalid: spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[health].properties[tool].properties[arguments].type: Required value: must not be empty for specified object fields"#
        )
    );
}

#[test]
fn every_node_needs_a_type_unless_it_preserves_unknown_fields_or_is_int_or_string() {
    let crd = crd_with(json!({
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "list": { "type": "array", "items": {} },
                    "bare": { "type": "array" },
                    "free": { "x-kubernetes-preserve-unknown-fields": true },
                    "port": { "x-kubernetes-int-or-string": true,
                              "anyOf": [{ "type": "integer" }, { "type": "string" }] },
                },
            },
        },
    }));
    assert_eq!(
        messages(&crd),
        [
            format!(
                "{ROOT}.properties[spec].properties[bare].items: Required value: must be specified"
            ),
            format!(
                "{ROOT}.properties[spec].properties[list].items.type: Required value: must not be empty for specified array items"
            ),
            format!("{ROOT}.type: Required value: must not be empty at the root"),
        ]
    );
}

#[test]
fn junctors_may_only_restrict_values() {
    let crd = crd_with(spec_schema(json!({
        "type": "object",
        "properties": { "a": { "type": "string" } },
        "anyOf": [
            { "type": "object", "required": ["a"] },
            { "description": "b", "properties": { "a": { "nullable": true } } },
        ],
        "not": { "additionalProperties": { "type": "string" },
                 "x-kubernetes-validations": [{ "rule": "true" }] },
    })));
    let spec = format!("{ROOT}.properties[spec]");
    assert_eq!(
        messages(&crd),
        [
            format!("{spec}.anyOf[0].type: Forbidden: must be empty to be structural"),
            format!("{spec}.anyOf[1].description: Forbidden: must be empty to be structural"),
            format!(
                "{spec}.anyOf[1].properties[a].nullable: Forbidden: must be false to be structural"
            ),
            format!(
                "{spec}.not.additionalProperties: Forbidden: must be undefined to be structural"
            ),
            format!(
                "{spec}.not.x-kubernetes-validations: Forbidden: must be empty to be structural"
            ),
        ]
    );
}

#[test]
fn what_a_junctor_names_must_be_specified_outside_it() {
    let crd = crd_with(json!({
        "type": "object",
        "properties": { "spec": { "type": "object" } },
        "oneOf": [{ "properties": { "spec": { "required": ["x"] }, "extra": {} } }],
    }));
    assert_eq!(
        messages(&crd),
        [format!(
            "{ROOT}.properties[extra]: Required value: because it is defined in {ROOT}.oneOf[0].properties[extra]"
        )]
    );
}

#[test]
fn properties_and_additional_properties_are_mutually_exclusive() {
    let crd = crd_with(spec_schema(json!({
        "type": "object",
        "properties": { "a": { "type": "string" } },
        "additionalProperties": false,
    })));
    assert_eq!(
        messages(&crd),
        [format!(
            "{ROOT}.properties[spec].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        )]
    );
    let map = crd_with(spec_schema(json!({
        "type": "object", "additionalProperties": { "type": "string" },
    })));
    assert_eq!(messages(&map), Vec::<String>::new());
}

#[test]
fn root_metadata_may_restrict_only_the_name() {
    let restricted = crd_with(json!({
        "type": "object",
        "properties": { "metadata": { "type": "object",
            "properties": { "name": { "type": "string", "maxLength": 63 } } } },
    }));
    assert_eq!(messages(&restricted), Vec::<String>::new());
    let described = crd_with(json!({
        "type": "object",
        "properties": { "metadata": { "type": "object", "description": "m",
            "properties": { "labels": { "type": "object" } } } },
    }));
    assert_eq!(
        messages(&described),
        [format!(
            "{ROOT}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
        )]
    );
}

#[test]
fn the_root_is_an_object_without_additional_properties() {
    let crd = crd_with(json!({ "type": "array", "items": { "type": "string" },
                               "additionalProperties": { "type": "string" } }));
    assert_eq!(
        messages(&crd),
        [
            format!("{ROOT}.additionalProperties: Forbidden: must not be used at the root"),
            format!(r#"{ROOT}.type: Invalid value: "array": must be object at the root"#),
        ]
    );
}

#[test]
fn defaults_must_validate_and_be_pruned() {
    let crd = crd_with(spec_schema(json!({
        "type": "object",
        "properties": {
            "enabled": { "type": "boolean", "default": "yes" },
            "pool": { "type": "object", "properties": { "max": { "type": "integer" } },
                      "default": { "max": 1, "min": 0 } },
        },
    })));
    let spec = format!("{ROOT}.properties[spec].properties");
    assert_eq!(
        messages(&crd),
        [
            format!(
                r#"{spec}[enabled].default: Invalid value: "string":  in body must be of type boolean: "string""#
            ),
            format!(
                r#"{spec}[pool].default: Invalid value: map[string]interface {{}}{{"max":1, "min":0}}: must not have unknown fields"#
            ),
        ]
    );
}

#[test]
fn node_checks_word_their_refusals_as_the_server_does() {
    let crd = crd_with(spec_schema(json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": false,
        "properties": {
            "tags": { "type": "array", "items": { "type": "string" }, "uniqueItems": true },
            "when": { "type": "date" },
            "ref": { "$ref": "#/definitions/x" },
            "rules": { "type": "string", "x-kubernetes-validations": [{ "rule": " " }] },
            "compiled": { "type": "string", "x-kubernetes-validations": [{ "rule": "self ==" }, { "rule": "size(other) > 0" }] },
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": { "type": "object", "properties": { "type": { "type": "string" } } },
            },
        },
    })));
    let spec = format!("{ROOT}.properties[spec]");
    let errors = messages(&crd);
    let compiled = |i: usize| {
        errors
            .iter()
            .find(|e| e.starts_with(&format!("{spec}.properties[compiled].x-kubernetes-validations[{i}].rule: Invalid value: ")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        compiled(0).contains("compilation failed: ERROR: <input>:1:"),
        "{errors:#?}"
    );
    assert!(
        compiled(1).ends_with(
            "compilation failed: ERROR: <input>: undeclared reference to 'other' (in container '')"
        ),
        "{errors:#?}"
    );
    for expected in [
        format!(
            "{spec}.properties[conditions].items.properties[type].default: Required value: this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property"
        ),
        format!("{spec}.properties[ref].$ref: Forbidden: $ref is not supported"),
        format!(
            "{spec}.properties[rules].x-kubernetes-validations[0].rule: Required value: rule is not specified"
        ),
        format!(
            "{spec}.properties[tags].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ),
        format!(
            r#"{spec}.properties[when].type: Unsupported value: "date": supported values: "array", "boolean", "integer", "number", "object", "string""#
        ),
        format!(
            "{spec}.x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined"
        ),
    ] {
        assert!(
            errors.contains(&expected),
            "missing {expected}\nin {errors:#?}"
        );
    }
}

#[test]
fn names_and_versions_are_checked() {
    let mut crd = crd_with(spec_schema(json!({ "type": "object" })));
    crd["metadata"]["name"] = json!("widget.example.com");
    crd["spec"]["scope"] = json!("Global");
    crd["spec"]["versions"][0]["storage"] = json!(false);
    let errors = messages(&crd);
    assert_eq!(
        errors[..2],
        [
            r#"metadata.name: Invalid value: "widget.example.com": must be spec.names.plural+"."+spec.group"#.to_owned(),
            r#"spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced""#.to_owned(),
        ]
    );
    assert!(
        errors[2].ends_with("must have exactly one version marked as storage version"),
        "{errors:?}"
    );
}

#[test]
fn with_a_status_subresource_the_root_holds_only_what_survives_the_split() {
    let mut crd = crd_with(json!({ "type": "object", "nullable": true }));
    crd["spec"]["versions"][0]["subresources"] = json!({ "status": {} });
    let errors = messages(&crd);
    assert!(
        errors[0].ends_with(
            "fields are allowed at the root of the schema if the status subresource is enabled"
        ),
        "{errors:?}"
    );
    assert_eq!(
        errors[1],
        format!("{ROOT}.nullable: Forbidden: nullable cannot be true at the root")
    );
}

#[test]
fn unknown_string_formats_are_warned_about_and_number_formats_left_to_the_lint() {
    let crd = crd_with(spec_schema(json!({
        "type": "object",
        "properties": {
            "at": { "type": "string", "format": "date-time" },
            "id": { "type": "string", "format": "k8s-short-name" },
            "count": { "type": "integer", "format": "uint32", "minimum": 0 },
        },
    })));
    let review = review(&crd);
    assert!(review.errors.is_empty(), "{:?}", review.errors);
    assert_eq!(review.warnings, [r#"unrecognized format "k8s-short-name""#]);
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert_eq!(
        unknown_formats(schema),
        [
            "openAPIV3Schema.properties[spec].properties[count]: format uint32 on type integer",
            "openAPIV3Schema.properties[spec].properties[id]: format k8s-short-name on type string",
        ]
    );
}

#[test]
fn an_update_keeps_the_group_and_plural() {
    let old = crd_with(spec_schema(json!({ "type": "object" })));
    let mut new = old.clone();
    new["spec"]["group"] = json!("example.org");
    new["metadata"]["name"] = json!("widgets.example.org");
    let errors: Vec<String> = review_update(&new, &old)
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [r#"spec.group: Invalid value: "example.org": field is immutable"#]
    );
}
