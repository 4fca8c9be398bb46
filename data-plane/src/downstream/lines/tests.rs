use rmcp::model::{ClientNotification, ClientRequest, JsonObject, PingRequest};
use tokio::io::{AsyncBufReadExt, BufReader, duplex};

use super::*;

const PING_RESPONSE: &str = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;

fn transport() -> (
    LineTransport<tokio::io::DuplexStream>,
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
) {
    let (stdout, server_out) = duplex(1 << 20);
    let (stdin, server_in) = duplex(1 << 20);
    (LineTransport::new(stdout, stdin), server_out, server_in)
}

fn is_ping_response(message: &ServerJsonRpcMessage) -> bool {
    matches!(message, ServerJsonRpcMessage::Response(r) if r.id == rmcp::model::NumberOrString::Number(7))
}

#[tokio::test]
async fn messages_come_whole_however_the_pipe_splits_them_and_noise_is_skipped() {
    let (mut transport, mut server_out, _server_in) = transport();
    let big = "x".repeat(200_000);
    let big_line = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","data":"{big}"}}}}"#
    );
    let stream = format!(
        "starting up...\n\n\u{feff}{PING_RESPONSE}\r\n{PING_RESPONSE}\n{{\"not\":\"a message\"}}\n{big_line}\n{PING_RESPONSE}"
    );
    let writer = tokio::spawn(async move {
        for chunk in stream.as_bytes().chunks(1000) {
            server_out.write_all(chunk).await.expect("write");
        }
        server_out.write_all(b"\n").await.expect("write");
        server_out
    });
    for n in 0..2 {
        let message = transport.receive().await.expect("a message");
        assert!(is_ping_response(&message), "message {n}: {message:?}");
    }
    let message = transport.receive().await.expect("the large message");
    assert!(
        matches!(message, ServerJsonRpcMessage::Notification(_)),
        "{message:?}"
    );
    assert!(is_ping_response(
        &transport.receive().await.expect("the last message")
    ));
    drop(writer.await.expect("writer"));
    assert!(transport.receive().await.is_none(), "EOF ends the stream");
}

#[tokio::test]
async fn json_that_is_not_mcp_is_counted_and_skipped() {
    let (mut transport, mut server_out, _server_in) = transport();
    let log_line = r#"{"level":30,"msg":"listening"}"#.to_owned() + "\n";
    let stream = log_line.repeat(5) + PING_RESPONSE + "\n";
    server_out
        .write_all(stream.as_bytes())
        .await
        .expect("write");
    let message = transport.receive().await.expect("the message after them");
    assert!(is_ping_response(&message), "{message:?}");
    assert_eq!(transport.not_mcp, 5);
}

#[tokio::test]
async fn a_line_over_the_limit_is_dropped_and_the_next_one_read() {
    let (mut transport, mut server_out, _server_in) = transport();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_LINE >> 20) + 1 {
            server_out.write_all(&chunk).await.expect("write");
        }
        server_out.write_all(b"\n").await.expect("write");
        server_out
            .write_all(PING_RESPONSE.as_bytes())
            .await
            .expect("write");
        server_out.write_all(b"\n").await.expect("write");
        server_out
    });
    let message = transport.receive().await.expect("the message after it");
    assert!(is_ping_response(&message), "{message:?}");
    assert!(transport.buf.capacity() < 2 * MAX_LINE);
    drop(writer.await.expect("writer"));
}

#[tokio::test]
async fn concurrent_sends_arrive_as_lines_and_close_ends_stdin() {
    let (mut transport, _server_out, server_in) = transport();
    let sends: Vec<_> = (0..50)
        .map(|n| {
            let message = if n % 2 == 0 {
                ClientJsonRpcMessage::request(
                    ClientRequest::PingRequest(PingRequest::default()),
                    rmcp::model::NumberOrString::Number(n),
                )
            } else {
                ClientJsonRpcMessage::notification(ClientNotification::InitializedNotification(
                    Default::default(),
                ))
            };
            transport.send(message)
        })
        .collect();
    for sent in futures::future::join_all(sends).await {
        sent.expect("written");
    }
    transport.close().await.expect("closed");
    let mut lines = BufReader::new(server_in).lines();
    let mut count = 0;
    while let Some(line) = lines.next_line().await.expect("read") {
        let value: serde_json::Value =
            serde_json::from_str(&line).expect("one JSON message per line");
        assert_eq!(value["jsonrpc"], "2.0");
        count += 1;
    }
    assert_eq!(count, 50, "every message, then EOF");
    let refused = transport.send(ClientJsonRpcMessage::notification(
        ClientNotification::InitializedNotification(Default::default()),
    ));
    assert_eq!(
        refused.await.expect_err("closed").kind(),
        io::ErrorKind::NotConnected
    );
}

#[tokio::test]
async fn a_server_that_stopped_reading_fails_the_send() {
    let (mut transport, _server_out, server_in) = transport();
    drop(server_in);
    let failed = transport
        .send(ClientJsonRpcMessage::notification(
            ClientNotification::InitializedNotification(Default::default()),
        ))
        .await;
    assert!(failed.is_err(), "{failed:?}");
}

fn echo_params() -> JsonObject {
    let mut params = JsonObject::new();
    params.insert("name".into(), "echo".into());
    params
}

#[tokio::test]
async fn direct_answers_are_taken_by_id_and_the_rest_goes_to_rmcp() {
    let (mut transport, mut server_out, server_in) = transport();
    let mut call = transport.direct().start();
    call.send("tools/call", &echo_params(), 0)
        .await
        .expect("written");
    let mut lines = BufReader::new(server_in).lines();
    let sent: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.expect("read").expect("a line"))
            .expect("JSON");
    assert_eq!(sent["id"], "sb:1");
    assert_eq!(sent["method"], "tools/call");
    assert_eq!(sent["params"]["name"], "echo");
    // Our id inside another message's text is not an answer; an answer
    // may put its id anywhere.
    let mention = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"\"sb:1\""}}"#;
    let answer = r#"{"result":{"content":[],"isError":true},"jsonrpc":"2.0","id":"sb:1"}"#;
    let stream = format!("{answer}\n{mention}\n");
    server_out
        .write_all(stream.as_bytes())
        .await
        .expect("write");
    let (message, answered) = tokio::join!(transport.receive(), call.answer());
    assert!(
        matches!(message, Some(ServerJsonRpcMessage::Notification(_))),
        "{message:?}"
    );
    match answered.expect("answered") {
        Answer::Result(result) => {
            assert_eq!(&result[..], br#"{"content":[],"isError":true}"#)
        }
        Answer::Error(error) => panic!("{error:?}"),
    }
}

#[tokio::test]
async fn an_abandoned_direct_call_is_cancelled_and_its_late_answer_dropped() {
    let (mut transport, mut server_out, server_in) = transport();
    let call = transport.direct().start();
    call.send("tools/call", &echo_params(), 0)
        .await
        .expect("written");
    drop(call);
    let mut lines = BufReader::new(server_in).lines();
    let _request = lines.next_line().await.expect("read");
    let cancelled: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.expect("read").expect("a line"))
            .expect("JSON");
    assert_eq!(cancelled["method"], "notifications/cancelled");
    assert_eq!(cancelled["params"]["requestId"], "sb:1");
    // The answer comes anyway: rmcp never sees it.
    let late = r#"{"jsonrpc":"2.0","id":"sb:1","result":{"content":[]}}"#;
    let stream = format!("{late}\n{PING_RESPONSE}\n");
    server_out
        .write_all(stream.as_bytes())
        .await
        .expect("write");
    let message = transport.receive().await.expect("a message");
    assert!(is_ping_response(&message), "{message:?}");
}

#[tokio::test]
async fn a_direct_call_fails_when_the_server_goes() {
    let (mut transport, server_out, _server_in) = transport();
    let mut call = transport.direct().start();
    call.send("tools/call", &echo_params(), 0)
        .await
        .expect("written");
    drop(server_out);
    let (message, answered) = tokio::join!(transport.receive(), call.answer());
    assert!(message.is_none(), "EOF");
    assert_eq!(
        answered.expect_err("no answer").kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[tokio::test]
async fn an_error_with_a_null_id_fails_the_request_written_last() {
    let (mut transport, mut server_out, server_in) = transport();
    let mut lines = BufReader::new(server_in).lines();
    let unreadable =
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#;

    // A direct call written last gets the server's error at once.
    let mut call = transport.direct().start();
    call.send("tools/call", &echo_params(), 0)
        .await
        .expect("written");
    let _request = lines.next_line().await.expect("read");
    let stream = format!("{unreadable}\n{PING_RESPONSE}\n");
    server_out
        .write_all(stream.as_bytes())
        .await
        .expect("write");
    let (message, answered) = tokio::join!(transport.receive(), call.answer());
    assert!(is_ping_response(&message.expect("the ping")));
    match answered.expect("answered") {
        Answer::Error(error) => assert_eq!(error.code.0, -32700),
        Answer::Result(result) => panic!("{result:?}"),
    }

    // One of rmcp's: the error comes back to it with the request's id.
    let ping = ClientJsonRpcMessage::request(
        ClientRequest::PingRequest(PingRequest::default()),
        NumberOrString::Number(9),
    );
    transport.send(ping).await.expect("written");
    let _request = lines.next_line().await.expect("read");
    let stream = format!("{unreadable}\n{unreadable}\n{PING_RESPONSE}\n");
    server_out
        .write_all(stream.as_bytes())
        .await
        .expect("write");
    match transport.receive().await.expect("the error") {
        ServerJsonRpcMessage::Error(error) => {
            assert_eq!(error.id, Some(NumberOrString::Number(9)));
            assert_eq!(error.error.code.0, -32700);
        }
        other => panic!("{other:?}"),
    }
    // A second null-id error has no request left to fail: it is passed on
    // as it came, for rmcp to log.
    match transport.receive().await.expect("the second error") {
        ServerJsonRpcMessage::Error(error) => assert_eq!(error.id, None),
        other => panic!("{other:?}"),
    }
    assert!(is_ping_response(
        &transport.receive().await.expect("the ping")
    ));
}
