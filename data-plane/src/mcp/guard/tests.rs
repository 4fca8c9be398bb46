use axum::http::StatusCode;

use super::*;
use crate::mcp::answer::{INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR};

/// The HTTP status and JSON-RPC error code `check` answers with.
fn refusal(body: &str) -> Option<(StatusCode, i64)> {
    let refusal = check(&Bytes::from(body.to_owned())).err()?;
    assert!(!refusal.message.is_empty());
    Some((refusal.status, refusal.code))
}

#[test]
fn well_formed_messages_pass() {
    for ok in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":"a","result":{}}"#,
        r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}"#,
    ] {
        assert!(check(&Bytes::from(ok)).is_ok(), "{ok}");
    }
}

#[test]
fn tool_calls_need_a_name_and_object_arguments() {
    for ok in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":null,"_meta":null}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":[1]},"_meta":{}}}"#,
    ] {
        assert!(check(&Bytes::from(ok)).is_ok(), "{ok}");
    }
    for bad in [
        r#"{"jsonrpc":"2.0","id":"q","method":"tools/call"}"#,
        r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":[]}"#,
        r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":5}}"#,
        r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"a","arguments":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"a","_meta":[]}}"#,
    ] {
        assert_invalid_params_of_q(&Bytes::from(bad));
    }
}

/// Asserts `body`, a request with the id `"q"`, is refused as invalid
/// params answering that id.
fn assert_invalid_params_of_q(body: &Bytes) {
    let text = String::from_utf8_lossy(body);
    let refused = check(body).expect_err(&text);
    assert_eq!(
        (refused.status, refused.code),
        (StatusCode::BAD_REQUEST, INVALID_PARAMS),
        "{text:.200}"
    );
    assert_eq!(refused.id.as_deref().map(RawValue::get), Some(r#""q""#));
}

#[test]
fn an_id_must_be_a_string_or_an_integer() {
    let nested_id = format!(
        r#"{{"jsonrpc":"2.0","id":{}1{},"method":"tools/call","params":{{"name":5}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for bad in [
        nested_id.as_str(),
        r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"a"}}"#,
        r#"{"jsonrpc":"2.0","id":1e999999,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":true,"result":{}}"#,
    ] {
        let refused = check(&Bytes::from(bad.to_owned())).expect_err(bad);
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::BAD_REQUEST, INVALID_REQUEST),
            "{bad}"
        );
        assert!(
            refused.message.contains("`id`"),
            "{bad}: {}",
            refused.message
        );
        assert!(refused.id.is_none(), "an invalid id is not echoed: {bad}");
        let response = refused.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    // What rmcp takes as an integer, and an error that could not read the id.
    for ok in [
        r#"{"jsonrpc":"2.0","id":1e2,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":-7,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#,
    ] {
        assert!(check(&Bytes::from(ok)).is_ok(), "{ok}");
    }
}

/// A tool call with the given arguments, as a request body.
fn call_with(arguments: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{{"name":"a","arguments":{arguments}}}}}"#
    ))
}

/// `depth` objects nested around `1`.
fn nested(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

#[test]
fn arguments_a_server_could_not_parse_are_invalid_params() {
    // serde_json refuses a document nested 128 deep; arguments sit at
    // depth 3 (message, params, arguments).
    let too_deep = nested(126);
    let deepest = nested(125);
    let very_deep = nested(10_000);
    for bad in [
        too_deep.as_str(),
        very_deep.as_str(),
        r#"{"s":"\ud800"}"#,
        r#"{"\udc00":1}"#,
        r#"{"s":"\ud800\u0041"}"#,
        r#"{"n":1e999999}"#,
    ] {
        assert_invalid_params_of_q(&call_with(bad));
        // The same line is what a server reading it into a tree refuses.
        assert!(serde_json::from_slice::<serde_json::Value>(&call_with(bad)).is_err());
    }
    for ok in [
        deepest.as_str(),
        r#"{"s":"\ud83d\ude00 \u00e9 \n"}"#,
        r#"{"n":[1e308,-0.5,18446744073709551615]}"#,
    ] {
        assert!(check(&call_with(ok)).is_ok(), "{ok}");
        assert!(serde_json::from_slice::<serde_json::Value>(&call_with(ok)).is_ok());
    }
}

#[test]
fn other_messages_are_read_as_rmcp_reads_them() {
    // A request whose params rmcp cannot read: invalid params, id echoed.
    // (Object params that do not fit the method rmcp takes as a custom
    // request, and answers itself.)
    let refused = check(&Bytes::from(
        r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":5}"#,
    ))
    .expect_err("params not an object");
    assert_eq!(
        (refused.code, refused.id.as_deref().map(RawValue::get)),
        (INVALID_PARAMS, Some("4"))
    );
    assert!(
        refused.message.contains("resources/read"),
        "{}",
        refused.message
    );
    // A notification or a response has no id to answer with: invalid
    // request (rmcp takes any notification params that are an object).
    for bad in [
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":5}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/x","params":{"a":"\ud800"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}"#,
    ] {
        let refused = check(&Bytes::from(bad)).expect_err(bad);
        assert_eq!(
            (refused.code, refused.id.is_none()),
            (INVALID_REQUEST, true),
            "{bad}"
        );
    }
    // Methods rmcp does not know are still requests (answered as unknown later).
    assert!(
        check(&Bytes::from(
            r#"{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"a":[1]}}"#
        ))
        .is_ok()
    );
}

#[test]
fn malformed_messages_get_the_json_rpc_code() {
    let parse_error = Some((StatusCode::BAD_REQUEST, PARSE_ERROR));
    assert_eq!(refusal(r#"{"jsonrpc":"2.0","#), parse_error);
    assert_eq!(refusal("not json"), parse_error);
    for invalid in [
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        r#""just a string""#,
    ] {
        let invalid_request = Some((StatusCode::BAD_REQUEST, INVALID_REQUEST));
        assert_eq!(refusal(invalid), invalid_request, "{invalid}");
    }
}

mod properties {
    //! The edge against arbitrary input: it never panics, refuses with a
    //! JSON-RPC code, and whatever it admits rmcp can read.

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// JSON values up to a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Messages shaped like JSON-RPC, with any of their parts wrong.
    fn message() -> impl Strategy<Value = Value> {
        let method = prop_oneof![
            Just(json!("tools/call")),
            Just(json!("tools/list")),
            Just(json!("initialize")),
            Just(json!("notifications/cancelled")),
            Just(json!("ping")),
            json_value(),
        ];
        let jsonrpc = prop_oneof![Just(json!("2.0")), json_value()];
        (
            jsonrpc,
            proptest::option::of(json_value()),
            proptest::option::of(method),
            proptest::option::of(json_value()),
            proptest::option::of(json_value()),
        )
            .prop_map(|(jsonrpc, id, method, params, result)| {
                let mut message = json!({ "jsonrpc": jsonrpc });
                for (key, value) in [
                    ("id", id),
                    ("method", method),
                    ("params", params),
                    ("result", result),
                ] {
                    if let Some(value) = value {
                        message[key] = value;
                    }
                }
                message
            })
    }

    fn refusal_is_json_rpc(refusal: &Refusal) {
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE].contains(&refusal.status),
            "{refusal:?}"
        );
        assert!(
            [PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS].contains(&refusal.code),
            "{refusal:?}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_refused_or_readable(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let bytes = Bytes::from(bytes);
            match check(&bytes) {
                Ok(_) => prop_assert!(serde_json::from_slice::<ClientJsonRpcMessage>(&bytes).is_ok()),
                Err(refusal) => refusal_is_json_rpc(&refusal),
            }
        }

        #[test]
        fn admitted_messages_are_what_rmcp_reads(message in message()) {
            let bytes = Bytes::from(message.to_string());
            match check(&bytes) {
                Ok(_) => prop_assert!(
                    serde_json::from_slice::<ClientJsonRpcMessage>(&bytes).is_ok(),
                    "admitted but unreadable: {message}"
                ),
                Err(refusal) => refusal_is_json_rpc(&refusal),
            }
        }
    }
}
