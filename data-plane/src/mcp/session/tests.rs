//! The table with paused time: no test sleeps.

// Roots are deprecated by SEP-2577; a server's roots request is still relayed.
#![allow(deprecated)]

use rmcp::model::{ListRootsRequest, NumberOrString, ServerNotification};

use super::*;
use crate::{
    downstream::Launcher,
    drain::Drain,
    telemetry::{Telemetry, metrics::Metrics},
};

const PARK_AFTER: Duration = Duration::from_secs(30);
const EXPIRE_AFTER: Duration = Duration::from_secs(1800);

fn table(max_sessions: usize) -> Arc<Sessions> {
    let telemetry = Telemetry {
        tracer: Default::default(),
        metrics: Arc::new(Metrics::new()),
        replica_id: "test".into(),
        log_payloads: false,
    };
    let servers = Servers::new(
        CancellationToken::new(),
        Launcher::default(),
        telemetry,
        Drain::default(),
    );
    Sessions::new(
        Some(PARK_AFTER),
        EXPIRE_AFTER,
        max_sessions,
        2,
        servers,
        SessionKeys::local(Duration::from_secs(3600)),
    )
}

fn handshake(client: &str) -> InitializeRequestParams {
    let mut params = InitializeRequestParams::default();
    params.client_info.name = client.to_owned();
    params
}

/// A new session, its opening request done.
fn create(
    sessions: &Arc<Sessions>,
    kind: Kind,
    handshake: Option<InitializeRequestParams>,
    owner: Option<Arc<str>>,
) -> Result<Arc<Session>, Refusal> {
    sessions
        .create(kind, handshake, owner)
        .map(|(session, _open)| session)
}

/// A table holding one initialised session, and its id.
fn table_with_session() -> (Arc<Sessions>, Arc<Session>, String) {
    let sessions = table(16);
    let session =
        create(&sessions, Kind::Streamable, Some(handshake("agent")), None).expect("room");
    let id = session.wire_id.to_string();
    (sessions, session, id)
}

fn id(n: i64) -> RequestId {
    NumberOrString::Number(n)
}

#[tokio::test(start_paused = true)]
async fn only_idle_sessions_with_nothing_open_and_nothing_of_their_own_are_parked() {
    let (sessions, session, id) = table_with_session();
    tokio::time::advance(PARK_AFTER / 2).await;
    assert_eq!(sessions.sweep(), 0, "not idle long enough");

    let (_, open) = sessions.enter(&id, Kind::Streamable, None).expect("live");
    tokio::time::advance(PARK_AFTER * 2).await;
    assert_eq!(sessions.sweep(), 0, "a request is open");
    drop(open);
    assert_eq!(sessions.sweep(), 0, "ending a request is activity");

    tokio::time::advance(PARK_AFTER).await;
    session.pin();
    assert_eq!(sessions.sweep(), 0, "pinned");
    assert_eq!(sessions.counts(), (1, 0));

    let other = create(&sessions, Kind::Streamable, Some(handshake("agent")), None).expect("room");
    tokio::time::advance(PARK_AFTER).await;
    assert_eq!(sessions.sweep(), 1);
    assert_eq!(sessions.counts(), (1, 1));
    assert!(other.ended.is_cancelled(), "its live parts are gone");
    assert_eq!(sessions.parks.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_parked_session_comes_back_once_under_its_id_and_is_told_to_relist() {
    let (sessions, session, id) = table_with_session();
    let _ = session.caller.set("team-a".to_owned());
    drop(session);
    tokio::time::advance(PARK_AFTER).await;
    assert_eq!(sessions.sweep(), 1);

    // Two requests at once: one restores it, both get the same session.
    let (first, _open) = sessions
        .enter(&id, Kind::Streamable, None)
        .expect("restored");
    let (second, _again) = sessions.enter(&id, Kind::Streamable, None).expect("live");
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(sessions.restores.get(), 1);
    assert_eq!(sessions.counts(), (1, 0));
    assert_eq!(first.caller.get().map(String::as_str), Some("team-a"));
    assert_eq!(
        first.handshake().map(|h| h.client_info.name.as_str()),
        Some("agent")
    );

    let mut own = first.own_stream().expect("no stream reads it yet");
    let mut relisted = Vec::new();
    for _ in 0..3 {
        match own.recv().await {
            Some(ToStream::Notification(notification)) => relisted.push(*notification),
            _ => panic!("a list change"),
        }
    }
    assert!(matches!(
        relisted[..],
        [
            ServerNotification::ToolListChangedNotification(_),
            ServerNotification::PromptListChangedNotification(_),
            ServerNotification::ResourceListChangedNotification(_),
        ]
    ));
}

#[tokio::test(start_paused = true)]
async fn rows_idle_past_the_timeout_are_forgotten_and_their_ids_restore_all_but_pinned_ones() {
    let (sessions, session, id) = table_with_session();
    let parked = create(&sessions, Kind::Streamable, Some(handshake("agent")), None)
        .expect("room")
        .wire_id
        .to_string();
    session.pin();
    tokio::time::advance(PARK_AFTER).await;
    assert_eq!(sessions.sweep(), 1);
    tokio::time::advance(EXPIRE_AFTER).await;
    sessions.sweep();
    assert_eq!(sessions.counts(), (0, 0));
    assert!(
        session.ended.is_cancelled(),
        "what it held in memory is gone"
    );
    drop(session);
    sessions.sweep();
    assert!(
        sessions.handshakes.lock().is_empty(),
        "their handshake went with them"
    );
    // The id is the session: within its lifetime it comes back, parked;
    // unless it held state a restored one would lack: then it ended.
    let (restored, _open) = sessions
        .enter(&parked, Kind::Streamable, None)
        .expect("restored");
    assert_eq!(
        restored.handshake().map(|h| h.client_info.name.as_str()),
        Some("agent")
    );
    assert!(
        sessions.enter(&id, Kind::Streamable, None).is_none(),
        "the pinned one ended"
    );
    assert_eq!(sessions.adopted.get(), 1);
}

#[tokio::test]
async fn identical_handshakes_are_kept_once() {
    let sessions = table(16);
    let a = create(&sessions, Kind::Streamable, Some(handshake("agent")), None).expect("room");
    let b = create(&sessions, Kind::Streamable, Some(handshake("agent")), None).expect("room");
    let (a, b) = (a.handshake.get().expect("a"), b.handshake.get().expect("b"));
    assert!(Arc::ptr_eq(a, b));
    assert_eq!(sessions.handshakes.lock().len(), 1);
}

#[tokio::test]
async fn ids_name_sessions_only_in_their_own_spelling_and_kind() {
    let (sessions, _, id) = table_with_session();
    assert!(
        sessions
            .enter(&id.to_uppercase(), Kind::Streamable, None)
            .is_none()
    );
    assert!(sessions.enter(&id, Kind::Legacy, None).is_none());
    assert!(
        sessions
            .enter("no-such-session", Kind::Streamable, None)
            .is_none()
    );
    let legacy = create(&sessions, Kind::Legacy, None, None).expect("room");
    let simple = legacy.id.simple().to_string();
    assert!(sessions.enter(&simple, Kind::Legacy, None).is_some());
    assert!(
        sessions
            .enter(&legacy.id.to_string(), Kind::Streamable, None)
            .is_none()
    );
    assert!(!sessions.end(&simple, Kind::Streamable, None));
    assert!(sessions.end(&simple, Kind::Legacy, None));
}

#[tokio::test]
async fn the_table_refuses_sessions_beyond_its_limit() {
    let sessions = table(2);
    let first = create(&sessions, Kind::Streamable, None, None).expect("room");
    create(&sessions, Kind::Legacy, None, None).expect("room");
    let Err(refused) = create(&sessions, Kind::Streamable, None, None) else {
        panic!("the table is full");
    };
    assert_eq!(refused.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sessions.refused_full.get(), 1);
    assert!(sessions.end(&first.wire_id, Kind::Streamable, None));
    assert!(create(&sessions, Kind::Streamable, None, None).is_ok());
}

#[tokio::test]
async fn a_client_holds_at_most_its_share_of_sessions() {
    let sessions = table(16);
    let alice: Arc<str> = "alice".into();
    let mut held = Vec::new();
    for _ in 0..2 {
        let session = create(&sessions, Kind::Streamable, None, Some(alice.clone()))
            .expect("within the client's limit");
        held.push(session.wire_id.to_string());
    }
    let Err(refused) = create(&sessions, Kind::Legacy, None, Some(alice.clone())) else {
        panic!("alice holds her limit");
    };
    assert_eq!(refused.status, http::StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.message.contains("`alice`"), "{}", refused.message);
    assert_eq!(sessions.refused_client_limit.get(), 1);
    let bob: Arc<str> = "bob".into();
    assert!(
        create(&sessions, Kind::Streamable, None, Some(bob)).is_ok(),
        "others are not held back"
    );
    assert!(sessions.end(&held[0], Kind::Streamable, Some("alice")));
    assert!(create(&sessions, Kind::Streamable, None, Some(alice)).is_ok());
}

#[tokio::test]
async fn a_request_id_in_flight_is_refused_until_its_request_ends() {
    let (_, session, _) = table_with_session();
    let first = session.begin(&id(7)).expect("a new id");
    assert!(session.begin(&id(7)).is_none());
    assert!(session.begin(&id(8)).is_some(), "another id is fine");
    drop(first);
    assert!(session.begin(&id(7)).is_some(), "free again");
}

#[tokio::test]
async fn cancels_reach_their_request_and_the_end_of_a_session_reaches_them_all() {
    let (sessions, session, id_header) = table_with_session();
    let cancelled = session.begin(&id(1)).expect("new");
    let running = session.begin(&id(2)).expect("new");
    session.cancel(&id(1));
    session.cancel(&id(99));
    assert!(cancelled.cancel.is_cancelled());
    assert!(!running.cancel.is_cancelled(), "only the one named");

    assert!(sessions.end(&id_header, Kind::Streamable, None));
    assert!(running.cancel.is_cancelled());
    assert!(session.ended.is_cancelled());
    assert!(session.begin(&id(3)).is_none(), "nothing starts any more");
    assert!(session.open_replay().is_none());
    assert!(!sessions.end(&id_header, Kind::Streamable, None), "gone");
    assert!(sessions.enter(&id_header, Kind::Streamable, None).is_none());
}

#[tokio::test]
async fn a_clients_answer_reaches_the_server_request_it_answers() {
    let (_, session, _) = table_with_session();
    let (answer_to, answer) = oneshot::channel();
    let asked = RequestId::String("sb:1".into());
    let event = session
        .event(ToStream::Request {
            id: asked.clone(),
            request: Box::new(ServerRequest::ListRootsRequest(ListRootsRequest::default())),
            answer_to,
        })
        .expect("asked");
    let event = String::from_utf8_lossy(&event);
    assert!(event.starts_with("event: message\ndata: "), "{event}");
    assert!(event.contains(r#""method":"roots/list""#), "{event}");

    let unknown = RequestId::String("sb:2".into());
    let roots = RawValue::from_string(r#"{"roots":[]}"#.to_owned()).expect("JSON");
    assert!(!session.answered(&unknown, Ok(&roots)));
    assert!(session.answered(&asked, Ok(&roots)));
    assert!(!session.answered(&asked, Ok(&roots)), "answered once");
    match answer.await.expect("answered") {
        Ok(ClientResult::ListRootsResult(result)) => assert!(result.roots.is_empty()),
        other => panic!("{other:?}"),
    }

    // A malformed answer fails the server's request with the reason.
    let (answer_to, answer) = oneshot::channel();
    let asked = RequestId::String("sb:3".into());
    session.event(ToStream::Request {
        id: asked.clone(),
        request: Box::new(ServerRequest::ListRootsRequest(ListRootsRequest::default())),
        answer_to,
    });
    let wrong = RawValue::from_string(r#"{"roots":5}"#.to_owned()).expect("JSON");
    assert!(session.answered(&asked, Ok(&wrong)));
    let error = answer.await.expect("answered").expect_err("malformed");
    assert!(error.message.contains("malformed"), "{error:?}");

    // Withdrawn: the client is told, and a late answer finds nothing.
    let (answer_to, _answer) = oneshot::channel();
    let asked = RequestId::String("sb:4".into());
    session.event(ToStream::Request {
        id: asked.clone(),
        request: Box::new(ServerRequest::ListRootsRequest(ListRootsRequest::default())),
        answer_to,
    });
    let told = session
        .event(ToStream::Withdrawn(asked.clone()))
        .expect("told");
    assert!(String::from_utf8_lossy(&told).contains("notifications/cancelled"));
    assert!(!session.answered(&asked, Ok(&roots)));
}

#[test]
fn stream_items_stay_small() {
    // A stream's buffer is allocated for 32 of its largest item.
    assert!(size_of::<ToStream>() <= 64, "{}", size_of::<ToStream>());
}

#[tokio::test]
async fn one_stream_at_a_time_reads_the_sessions_own_messages() {
    let (_, session, _) = table_with_session();
    let mut own = session.own_stream().expect("free");
    assert!(session.own_stream().is_none(), "taken");
    session
        .client
        .notify(ServerNotification::ToolListChangedNotification(
            ToolListChangedNotification::default(),
        ));
    assert!(matches!(own.recv().await, Some(ToStream::Notification(_))));
    drop(own);
    // What came while no stream read it waits for the next one.
    session
        .client
        .notify(ServerNotification::ToolListChangedNotification(
            ToolListChangedNotification::default(),
        ));
    let mut again = session.own_stream().expect("given back");
    assert!(matches!(
        again.recv().await,
        Some(ToStream::Notification(_))
    ));
}

#[tokio::test]
async fn a_session_answers_only_the_client_that_opened_it() {
    let sessions = table(16);
    let owner: Arc<str> = "team-a".into();
    let session = create(
        &sessions,
        Kind::Streamable,
        Some(handshake("agent")),
        Some(owner),
    )
    .expect("room");
    let id = session.wire_id.to_string();
    assert!(
        sessions
            .enter(&id, Kind::Streamable, Some("team-a"))
            .is_some()
    );
    assert!(
        sessions
            .enter(&id, Kind::Streamable, Some("team-b"))
            .is_none()
    );
    assert!(sessions.enter(&id, Kind::Streamable, None).is_none());
    assert!(
        !sessions.end(&id, Kind::Streamable, Some("team-b")),
        "not theirs to end"
    );
    assert!(sessions.end(&id, Kind::Streamable, Some("team-a")));
}

#[tokio::test(start_paused = true)]
async fn a_session_keeping_a_streamed_answer_is_not_parked_until_it_lets_go() {
    let (sessions, session, _) = table_with_session();
    let replay = session.open_replay().expect("live");
    tokio::time::advance(PARK_AFTER * 2).await;
    assert_eq!(sessions.sweep(), 0, "a resume may still come");
    session.forget_replay(replay.stream());
    assert_eq!(sessions.sweep(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_answer_delivered_whole_does_not_hold_its_session() {
    use futures::StreamExt;
    let (sessions, session, _) = table_with_session();
    let replay = session.open_replay().expect("live");
    replay.push(b"data: {}\n\n");
    replay.finish();
    let follower = replay.clone().follow(0).expect("kept");
    tokio::time::advance(PARK_AFTER * 2).await;
    assert_eq!(sessions.sweep(), 0, "not yet read to its end");
    assert_eq!(follower.count().await, 2, "priming event and answer");
    assert_eq!(sessions.sweep(), 1);
}

#[tokio::test]
async fn ending_a_session_frees_senders_stuck_on_its_full_stream() {
    let (sessions, session, id) = table_with_session();
    let outbox = session.client.outbox.clone();
    while outbox
        .try_send(ToStream::Answer(Bytes::from_static(b"{}")))
        .is_ok()
    {}
    let stuck = tokio::spawn(async move {
        outbox
            .send(ToStream::Answer(Bytes::from_static(b"{}")))
            .await
    });
    tokio::task::yield_now().await;
    assert!(!stuck.is_finished(), "nobody reads the stream");
    assert!(sessions.end(&id, Kind::Streamable, None));
    assert!(
        stuck.await.expect("task").is_err(),
        "the send fails, not hangs"
    );
    assert!(
        session.own_stream().is_none(),
        "no stream opens on an ended session"
    );
}

#[tokio::test(start_paused = true)]
async fn the_request_that_opens_a_session_keeps_it_in_memory_until_done() {
    let sessions = table(16);
    let (_, open) = sessions
        .create(Kind::Streamable, Some(handshake("agent")), None)
        .expect("room");
    tokio::time::advance(PARK_AFTER * 2).await;
    assert_eq!(sessions.sweep(), 0, "its handshake is being answered");
    drop(open);
    tokio::time::advance(PARK_AFTER).await;
    assert_eq!(sessions.sweep(), 1);
}

/// Two replicas of one control plane: the same key set, tables of their own.
fn replicas() -> (Arc<Sessions>, Arc<Sessions>) {
    let (a, b) = (table(16), table(16));
    for replica in [&a, &b] {
        replica.keys.set(&[vec![7; crate::mcp::seal::KEY_LEN]]);
    }
    (a, b)
}

#[tokio::test]
async fn a_session_opened_on_one_replica_is_served_by_another() {
    let (here, there) = replicas();
    let alice: Arc<str> = "alice".into();
    let session = create(
        &here,
        Kind::Streamable,
        Some(handshake("agent")),
        Some(alice.clone()),
    )
    .expect("room");
    let id = session.wire_id.to_string();
    assert!(
        uuid::Uuid::try_parse(&id).is_err(),
        "sealed, not a UUID: {id}"
    );

    // Another client presenting it gets nothing; its owner gets the session.
    assert!(
        there
            .enter(&id, Kind::Streamable, Some("mallory"))
            .is_none()
    );
    let (adopted, open) = there
        .enter(&id, Kind::Streamable, Some("alice"))
        .expect("adopted");
    drop(open);
    assert_eq!(adopted.id, session.id);
    assert_eq!(
        adopted.handshake().map(|h| h.client_info.name.as_str()),
        Some("agent")
    );
    assert_eq!(there.adopted.get(), 1);
    // The UUID alone reaches nothing, here or there.
    let uuid = session.id.to_string();
    assert!(here.enter(&uuid, Kind::Streamable, Some("alice")).is_none());
    assert!(
        there
            .enter(&uuid, Kind::Streamable, Some("alice"))
            .is_none()
    );

    // Ended on one replica, it opens nothing there any more, nor again.
    assert!(there.end(&id, Kind::Streamable, Some("alice")));
    assert!(there.enter(&id, Kind::Streamable, Some("alice")).is_none());
    assert!(!there.end(&id, Kind::Streamable, Some("alice")));
    // A replica that never saw it ends it too, for its owner only.
    let (_, third) = replicas();
    assert!(!third.end(&id, Kind::Streamable, Some("mallory")));
    assert!(third.end(&id, Kind::Streamable, Some("alice")));
    assert!(third.enter(&id, Kind::Streamable, Some("alice")).is_none());

    // A replica with another key set opens nothing of it.
    let foreign = table(16);
    assert!(
        foreign
            .enter(&id, Kind::Streamable, Some("alice"))
            .is_none()
    );
    let refused = &foreign.refused_ids;
    assert_eq!(refused[1].get(), 1, "unknown_key");
}

#[tokio::test]
async fn a_full_table_forgets_a_quiet_parked_row_to_adopt_a_session() {
    let (here, _) = replicas();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            create(&here, Kind::Streamable, Some(handshake("agent")), None)
                .expect("room")
                .wire_id
                .to_string()
        })
        .collect();
    let small = table(2);
    small.keys.set(&[vec![7; crate::mcp::seal::KEY_LEN]]);
    let held: Vec<_> = ids[..2]
        .iter()
        .map(|id| small.enter(id, Kind::Streamable, None).expect("adopted"))
        .collect();
    // Both busy: nothing to forget, so the third is refused for now.
    assert!(small.enter(&ids[2], Kind::Streamable, None).is_none());
    assert_eq!(small.refused_full.get(), 1);
    // Once they are quiet and parked, the quietest makes room.
    drop(held);
    for row in small.rows.lock().values_mut() {
        row.live = None;
    }
    drop(
        small
            .enter(&ids[2], Kind::Streamable, None)
            .expect("adopted"),
    );
    assert_eq!(small.count(), 2);
    assert_eq!(small.adopted.get(), 3);
}
