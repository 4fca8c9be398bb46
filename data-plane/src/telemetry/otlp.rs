//! OTLP trace messages written straight to protobuf, field by field. A
//! recorded span is one growing buffer instead of a tree of owned strings,
//! and the exporter sends the buffers as they are, framed by
//! `proto/otlp_trace.proto`. Field numbers are those of OpenTelemetry's
//! `trace/v1/trace.proto` and `common/v1/common.proto`; fields may come in
//! any order, so a span's end and status are simply appended last.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// `Span` field numbers.
pub mod span {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME_UNIX_NANO: u32 = 7;
    pub const END_TIME_UNIX_NANO: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const STATUS: u32 = 15;
}

/// `Span.SpanKind`, the kinds a gateway makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server = 2,
    Client = 3,
}

/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;

pub fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

pub fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

pub fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// A string `KeyValue` (key 1; `AnyValue` 2, its string_value 1) as
/// field `tag`.
pub fn key_value(buf: &mut Vec<u8>, tag: u32, key: &str, value: &str) {
    let any_len = delimited_len(1, value.len());
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(
        (delimited_len(1, key.len()) + delimited_len(2, any_len)) as u64,
        buf,
    );
    bytes(buf, 1, key.as_bytes());
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(any_len as u64, buf);
    bytes(buf, 1, value.as_bytes());
}

/// An ERROR `Status` (message 2, code 3) as the span's status.
pub fn error_status(buf: &mut Vec<u8>, message: &str) {
    let status_len = delimited_len(2, message.len()) + key_len(3) + 1;
    encode_key(span::STATUS, WireType::LengthDelimited, buf);
    encode_varint(status_len as u64, buf);
    bytes(buf, 2, message.as_bytes());
    varint(buf, 3, STATUS_CODE_ERROR);
}

/// An encoded `Resource` with string attributes.
pub fn resource(attributes: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (key, value) in attributes {
        key_value(&mut buf, 1, key, value);
    }
    buf
}

/// An encoded `InstrumentationScope` (name 1, version 2).
pub fn scope(name: &str, version: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    bytes(&mut buf, 1, name.as_bytes());
    bytes(&mut buf, 2, version.as_bytes());
    buf
}

/// Size of a length-delimited field of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
        resource::v1::Resource,
        trace::v1::{Span, Status, status::StatusCode},
    };
    use prost::Message;

    use super::*;

    fn attribute(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn a_written_span_decodes_as_opentelemetrys_own() {
        let long = "x".repeat(300);
        let mut buf = Vec::new();
        bytes(&mut buf, span::TRACE_ID, &[1; 16]);
        bytes(&mut buf, span::NAME, b"tools/call a.echo");
        varint(&mut buf, span::KIND, SpanKind::Client as u64);
        fixed64(&mut buf, span::START_TIME_UNIX_NANO, 5);
        key_value(&mut buf, span::ATTRIBUTES, "k", "v");
        key_value(&mut buf, span::ATTRIBUTES, "long", &long);
        fixed64(&mut buf, span::END_TIME_UNIX_NANO, u64::MAX);
        error_status(&mut buf, "boom");
        let span = Span::decode(buf.as_slice()).expect("a valid span");
        assert_eq!(
            span,
            Span {
                trace_id: vec![1; 16],
                name: "tools/call a.echo".into(),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: 5,
                end_time_unix_nano: u64::MAX,
                attributes: vec![
                    attribute("k", any_value::Value::StringValue("v".into())),
                    attribute("long", any_value::Value::StringValue(long)),
                ],
                status: Some(Status {
                    message: "boom".into(),
                    code: StatusCode::Error as i32,
                }),
                ..Default::default()
            }
        );
    }

    #[test]
    fn resource_and_scope_decode_as_opentelemetrys_own() {
        let resource = Resource::decode(resource(&[("service.name", "gw")]).as_slice());
        assert_eq!(
            resource.expect("a valid resource").attributes,
            vec![attribute(
                "service.name",
                any_value::Value::StringValue("gw".into())
            )]
        );
        let scope = InstrumentationScope::decode(scope("sb", "1.0").as_slice());
        let scope = scope.expect("a valid scope");
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("sb", "1.0"));
    }
}
