use serde_json::{Value, json};

use super::{compile, evaluate};

/// A resource schema with a rule at the root, on an object, on list items,
/// on map values and a transition rule.
fn schema() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-validations": [{
            "rule": "self.metadata.name.size() <= 5",
            "message": "name too long",
        }],
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-validations": [
                    { "rule": "[has(self.a), has(self.b)].filter(x, x).size() == 1",
                      "message": "exactly one of a and b" },
                    { "rule": "!has(self.forbidden)", "reason": "FieldValueForbidden",
                      "message": "not here", "fieldPath": ".forbidden" },
                ],
                "properties": {
                    "a": { "type": "string" },
                    "b": { "type": "string" },
                    "forbidden": { "type": "string" },
                    "immutable": { "type": "string",
                                   "x-kubernetes-validations": [{ "rule": "self == oldSelf", "message": "is immutable" }] },
                    "items": { "type": "array", "items": {
                        "type": "integer", "x-kubernetes-validations": [{ "rule": "self > 0" }] } },
                    "labels": { "type": "object", "additionalProperties": {
                        "type": "string", "x-kubernetes-validations": [{ "rule": "self.matches('^[a-z]+$')" }] } },
                    "broken": { "type": "object",
                                "x-kubernetes-validations": [{ "rule": "self.missing == 1" }] },
                },
            },
        },
    })
}

fn object(name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "x/v1", "kind": "X",
            "metadata": { "name": name, "namespace": "default", "uid": "u" }, "spec": spec })
}

fn messages(errors: &[super::FieldError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn a_valid_object_passes_every_rule() {
    let valid = object(
        "ok",
        json!({ "a": "x", "immutable": "v", "items": [1, 2], "labels": { "k": "abc" } }),
    );
    assert_eq!(
        messages(&evaluate(&schema(), &valid, None)),
        Vec::<String>::new()
    );
}

#[test]
fn failed_rules_are_worded_as_the_real_server_words_them() {
    let bad = object(
        "toolong",
        json!({ "a": "x", "b": "y", "forbidden": "z", "items": [1, 0], "labels": { "k": "ABC" } }),
    );
    assert_eq!(
        messages(&evaluate(&schema(), &bad, None)),
        [
            r#"<nil>: Invalid value: "object": name too long"#,
            r#"spec: Invalid value: "object": exactly one of a and b"#,
            "spec.forbidden: Forbidden: not here",
            r#"spec.items[1]: Invalid value: "integer": failed rule: self > 0"#,
            r#"spec.labels[k]: Invalid value: "string": failed rule: self.matches('^[a-z]+$')"#,
        ]
    );
    let neither = object("ok", json!({}));
    assert_eq!(
        messages(&evaluate(&schema(), &neither, None)),
        [r#"spec: Invalid value: "object": exactly one of a and b"#]
    );
}

/// Only `name` and `generateName` of the metadata are visible at the root.
#[test]
fn the_root_sees_only_name_and_generate_name() {
    let schema = json!({ "type": "object",
        "x-kubernetes-validations": [{ "rule": "has(self.metadata.uid)" }] });
    assert_eq!(
        messages(&evaluate(&schema, &object("ok", json!({})), None)),
        [r#"<nil>: Invalid value: "object": failed rule: has(self.metadata.uid)"#]
    );
}

#[test]
fn transition_rules_run_only_where_an_old_value_exists() {
    let first = object("ok", json!({ "a": "x", "immutable": "v1" }));
    assert!(
        evaluate(&schema(), &first, None).is_empty(),
        "create: no oldSelf"
    );
    let changed = object("ok", json!({ "a": "x", "immutable": "v2" }));
    assert_eq!(
        messages(&evaluate(&schema(), &changed, Some(&first))),
        [r#"spec.immutable: Invalid value: "string": is immutable"#]
    );
    assert!(evaluate(&schema(), &first, Some(&first)).is_empty());
    let added = object("ok", json!({ "a": "x" }));
    assert!(
        evaluate(&schema(), &changed, Some(&added)).is_empty(),
        "no old value to compare with"
    );
}

#[test]
fn evaluation_errors_name_the_rule() {
    let broken = object("ok", json!({ "a": "x", "broken": {} }));
    let got = messages(&evaluate(&schema(), &broken, None));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(r#"spec.broken: Invalid value: "object": "#)
            && got[0].ends_with("evaluating rule: self.missing == 1"),
        "{got:?}"
    );
}

#[test]
fn rules_that_do_not_compile_are_refused_with_the_compiler_message() {
    let error = compile("self.a ==").expect_err("a syntax error");
    assert!(error.starts_with("ERROR: <input>:1:"), "{error}");
    let error = compile("other.a == 1").expect_err("an undeclared variable");
    assert_eq!(
        error,
        "ERROR: <input>: undeclared reference to 'other' (in container '')"
    );
    compile("[has(self.a), has(self.b)].filter(x, x).size() == 1")
        .expect("comprehension variables are declared by their macro");
    compile("self == oldSelf").expect("oldSelf is declared");
    for (rule, name) in [
        ("self.all(x, y)", "y"),
        ("self.exists(x, x > 0) && x == 1", "x"),
    ] {
        let error = compile(rule).expect_err(rule);
        assert!(
            error.contains(&format!("undeclared reference to '{name}'")),
            "{rule}: {error}"
        );
    }
}
