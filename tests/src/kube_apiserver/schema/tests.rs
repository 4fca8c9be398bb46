use serde_json::{Value, json};

use super::*;

const CHART_CRD: &str =
    include_str!("../../../../charts/switchboard/crds/mcpservers.switchboard.dev.yaml");

fn chart_schema() -> Value {
    let crd: Value = serde_yaml::from_str(CHART_CRD).expect("the chart CRD parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn messages(admission: &Admission) -> Vec<String> {
    admission.errors.iter().map(ToString::to_string).collect()
}

fn server(spec: Value) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "probe", "namespace": "default" },
        "spec": spec,
    })
}

#[test]
fn tool_probe_arguments_keep_every_key_and_unknown_fields_elsewhere_go() {
    let arguments = json!({
        "text": "ok",
        "meta": { "nested": { "list": [1, { "deep": true }], "empty": {} } },
    });
    let mut object = server(json!({
        "transport": { "stdio": { "command": "c", "argz": ["typo"] } },
        "health": { "probe": "tool", "tool": { "name": "echo", "arguments": arguments } },
    }));
    object["metadata"]["colour"] = json!("blue");
    let admission = admit(&chart_schema(), &mut object, None);
    assert_eq!(messages(&admission), Vec::<String>::new());
    assert_eq!(
        admission.unknown_fields,
        ["metadata.colour", "spec.transport.stdio.argz"]
    );
    assert_eq!(object["spec"]["health"]["tool"]["arguments"], arguments);
    assert!(object["spec"]["transport"]["stdio"].get("argz").is_none());
    assert!(object["metadata"].get("colour").is_none());
    assert_eq!(object["apiVersion"], "switchboard.dev/v1alpha1");
}

#[test]
fn preserved_objects_keep_unknown_fields_but_prune_inside_known_ones() {
    let schema = json!({
        "type": "object",
        "properties": { "spec": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "properties": { "known": { "type": "object", "properties": { "a": { "type": "string" } } } },
        } },
    });
    let mut object = json!({ "spec": {
        "free": { "any": [1, { "thing": null }] },
        "known": { "a": "x", "b": "pruned" },
    } });
    let mut unknown = Vec::new();
    prune(&mut object, Some(&schema), true, "", &mut unknown);
    assert_eq!(unknown, ["spec.known.b"]);
    assert_eq!(
        object,
        json!({ "spec": { "free": { "any": [1, { "thing": null }] }, "known": { "a": "x" } } })
    );
}

#[test]
fn defaults_fill_missing_and_non_nullable_null_fields_and_other_nulls_go() {
    let mut object = server(json!({
        "transport": { "stdio": { "command": "c", "env": [{ "name": "A" }] } },
        "prefixMode": null,
        "separator": null,
        "pool": null,
    }));
    let admission = admit(&chart_schema(), &mut object, None);
    assert_eq!(messages(&admission), Vec::<String>::new());
    let spec = &object["spec"];
    assert_eq!(spec["enabled"], true);
    assert_eq!(
        spec["prefixMode"], "Always",
        "a non-nullable null is defaulted"
    );
    assert_eq!(spec["sessionMode"], "shared");
    assert_eq!(spec["transport"]["stdio"]["env"][0]["value"], "");
    assert_eq!(spec["pool"], Value::Null, "nullable: kept");
    assert_eq!(spec["separator"], Value::Null, "nullable: kept");
}

#[test]
fn refusals_read_like_kube_openapi() {
    let mut object = server(json!({
        "namespace": "has.dots",
        "pool": { "max": 500, "min": "one" },
        "sessionMode": "sometimes",
        "separator": "123456789",
        "transport": { "stdio": { "command": "c", "env": vec![json!({ "name": "A" }); 257] } },
        "health": { "interval": "soon" },
    }));
    let errors = messages(&admit(&chart_schema(), &mut object, None));
    for expected in [
        r#"spec.namespace: Invalid value: "has.dots": spec.namespace in body should match '^[A-Za-z0-9_-]{1,63}$'"#,
        "spec.pool.max: Invalid value: 500: spec.pool.max in body should be less than or equal to 64",
        r#"spec.pool.min: Invalid value: "string": spec.pool.min in body must be of type integer: "string""#,
        r#"spec.sessionMode: Unsupported value: "sometimes": supported values: "shared", "perSession""#,
        "spec.separator: Too long: may not be more than 8 bytes",
        "spec.transport.stdio.env: Too many: 257: must have at most 256 items",
        r#"spec.health.interval: Invalid value: "soon": spec.health.interval in body should match '^[0-9]+(ms|s|m|h)$'"#,
    ] {
        assert!(
            errors.contains(&expected.to_owned()),
            "missing {expected}\nin {errors:#?}"
        );
    }
    let mut nameless = json!({ "metadata": { "name": "Not_A_Name" } });
    let errors = messages(&admit(&chart_schema(), &mut nameless, None));
    assert_eq!(errors[1], "spec: Required value");
    assert!(errors[0].starts_with(
        r#"metadata.name: Invalid value: "Not_A_Name": a lowercase RFC 1123 subdomain"#
    ));
}

#[test]
fn map_lists_refuse_two_items_with_one_key() {
    let ready = json!({ "type": "Ready", "status": "True", "reason": "R", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z" });
    let mut object = server(json!({ "transport": { "stdio": { "command": "c" } } }));
    object["status"] = json!({ "conditions": [ready, ready] });
    let errors = messages(&admit(&chart_schema(), &mut object, None));
    assert_eq!(
        errors,
        [r#"status.conditions[1]: Duplicate value: map[string]interface {}{"type":"Ready"}"#]
    );
}

#[test]
fn the_handshake_is_one_of_three_and_discover_is_not_for_sse() {
    let sse = json!({ "sse": { "url": "http://mcp:8080/sse" } });
    let mut object = server(json!({ "handshake": "discover", "transport": sse }));
    let errors = messages(&admit(&chart_schema(), &mut object, None));
    assert_eq!(
        errors,
        [
            r#"spec: Invalid value: "object": handshake `discover` needs MCP 2026-07-28, which the legacy SSE transport predates"#
        ]
    );
    let mut object = server(json!({ "handshake": "stateless", "transport": sse }));
    let errors = messages(&admit(&chart_schema(), &mut object, None));
    assert!(
        errors.contains(
            &r#"spec.handshake: Unsupported value: "stateless": supported values: "auto", "initialize", "discover""#.to_owned()
        ),
        "{errors:#?}"
    );
    for (handshake, transport) in [
        ("initialize", sse.clone()),
        (
            "discover",
            json!({ "http": { "url": "http://mcp:8080/mcp" } }),
        ),
    ] {
        let mut object = server(json!({ "handshake": handshake, "transport": transport }));
        let admission = admit(&chart_schema(), &mut object, None);
        assert!(admission.errors.is_empty(), "{:?}", messages(&admission));
    }
    let mut defaulted = server(json!({ "transport": sse }));
    admit(&chart_schema(), &mut defaulted, None);
    assert_eq!(defaulted["spec"]["handshake"], "auto");
}
