//! Checking the light driver's answers: the JSON-RPC response with the
//! request's id, found in a JSON body, an SSE stream or a stdio line, must
//! be a result (not an error), not `isError`, and echo the text sent.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Error, http1::Head};

/// What a correct answer holds.
pub enum Expect<'a> {
    /// Any result (`initialize`).
    Result,
    /// A tool result whose first content block is this text (`echo`).
    Echo(&'a str),
}

/// The parts of a JSON-RPC message the checks read; everything else is
/// skipped unparsed. Strings borrow from the body unless escaped.
#[derive(Deserialize)]
pub struct Reply<'a> {
    /// Numeric: the driver sends numeric ids only.
    pub id: Option<u64>,
    #[serde(borrow)]
    result: Option<ResultFields<'a>>,
    #[serde(borrow)]
    error: Option<RpcError<'a>>,
}

#[derive(Deserialize)]
struct ResultFields<'a> {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
    #[serde(borrow)]
    content: Option<Vec<Content<'a>>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RpcError<'a> {
    code: i64,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

// === impl Reply ===

impl<'a> Reply<'a> {
    pub fn parse(json: &'a [u8]) -> Result<Self, Error> {
        Ok(serde_json::from_slice(json)?)
    }

    pub fn verify(&self, expect: &Expect<'_>) -> Result<(), Error> {
        if let Some(error) = &self.error {
            return Err(Error::JsonRpc {
                code: error.code,
                message: error.message.clone().into_owned(),
            });
        }
        let result = self.result.as_ref().ok_or(Error::NoResult)?;
        let Expect::Echo(text) = expect else {
            return Ok(());
        };
        if result.is_error == Some(true) {
            return Err(Error::ToolFailed);
        }
        let echoed = result
            .content
            .as_deref()
            .and_then(<[Content<'_>]>::first)
            .and_then(|c| c.text.as_deref());
        if echoed != Some(*text) {
            return Err(Error::WrongResult);
        }
        Ok(())
    }
}

/// Checks an HTTP answer to request `id`: status 200, then the response
/// with that id in the JSON body or among the SSE stream's events.
pub fn check_http(head: &Head, body: &[u8], id: u64, expect: &Expect<'_>) -> Result<(), Error> {
    if head.status != 200 {
        return Err(Error::Status(head.status));
    }
    if !head.sse {
        let reply = Reply::parse(body)?;
        if reply.id != Some(id) {
            return Err(Error::NoReply(id));
        }
        return reply.verify(expect);
    }
    let mut found = None;
    for_each_event(body, |data| {
        // Other events (priming, notifications, requests) are not the
        // answer; neither is anything that does not parse.
        match Reply::parse(data) {
            Ok(reply) if reply.id == Some(id) => {
                found = Some(reply.verify(expect));
                false
            }
            _ => true,
        }
    });
    found.unwrap_or(Err(Error::NoReply(id)))
}

/// Calls `f` with the data of each complete event of an SSE stream (data
/// lines joined by `\n`, as the HTML event-stream rules say) until it
/// returns false. An event cut off by the end of the stream is dropped.
fn for_each_event(stream: &[u8], mut f: impl FnMut(&[u8]) -> bool) {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut joined: Vec<u8>;
    for line in stream.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let data: &[u8] = match lines.as_slice() {
                [] => continue,
                [one] => one,
                many => {
                    joined = many.join(&b'\n');
                    &joined
                }
            };
            if !f(data) {
                return;
            }
            lines.clear();
        } else if let Some(data) = line.strip_prefix(b"data:") {
            lines.push(data.strip_prefix(b" ").unwrap_or(data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(sse: bool) -> Head {
        Head {
            status: 200,
            sse,
            session: None,
            closes: false,
        }
    }

    #[test]
    fn sse_reply_among_other_events() {
        let body = b"id: 0\nretry: 3000\ndata:\n\n\
            data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n\
            data: {\"jsonrpc\":\"2.0\",\"id\":10000001,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hello\"}]}}\n\n";
        assert!(check_http(&head(true), body, 10_000_001, &Expect::Echo("hello")).is_ok());
        assert!(matches!(
            check_http(&head(true), body, 10_000_002, &Expect::Echo("hello")),
            Err(Error::NoReply(10_000_002))
        ));
        assert!(matches!(
            check_http(&head(true), body, 10_000_001, &Expect::Echo("bye")),
            Err(Error::WrongResult)
        ));
    }

    #[test]
    fn json_errors_are_errors() {
        let tool_error = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hello"}],"isError":true}}"#;
        assert!(matches!(
            check_http(&head(false), tool_error, 7, &Expect::Echo("hello")),
            Err(Error::ToolFailed)
        ));
        let rpc_error =
            br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"unknown tool"}}"#;
        assert!(matches!(
            check_http(&head(false), rpc_error, 7, &Expect::Result),
            Err(Error::JsonRpc { code: -32602, .. })
        ));
    }
}
