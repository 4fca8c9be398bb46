//! Watches (compaction, bookmarks, closing) and paginated lists.

use super::*;

const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const CONFIG_MAPS: &str = "/api/v1/namespaces/default/configmaps";

/// An open watch, read line by line.
struct Watch {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

/// What a watch gave next.
#[derive(Debug, PartialEq)]
enum Next {
    Event(Value),
    /// The server closed the stream.
    Ended,
    /// Nothing within the wait.
    Quiet,
}

impl Watch {
    async fn open(api: &KubeApiServer, path_and_query: &str) -> Self {
        let response = reqwest::get(format!("http://{}{path_and_query}", api.addr))
            .await
            .expect("watch");
        assert_eq!(response.status(), 200);
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    async fn next(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Next::Event(serde_json::from_slice(&line).expect("a JSON line"));
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return Next::Quiet,
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Ok(None)) => return Next::Ended,
                Ok(Err(e)) => panic!("watch failed: {e}"),
            }
        }
    }

    async fn event(&mut self) -> Value {
        match self.next(Duration::from_secs(5)).await {
            Next::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("a resourceVersion")
}

#[tokio::test]
async fn a_watch_resuming_from_before_compaction_is_told_its_version_is_too_old() {
    let api = KubeApiServer::start().await;
    let first = create(&api, SECRETS, &secret("one", "1")).await.json();
    let second = create(&api, SECRETS, &secret("two", "2")).await.json();
    api.compact();
    create(&api, SECRETS, &secret("three", "3")).await;
    let (before, at) = (resource_version(&first), resource_version(&second));

    let mut stale = Watch::open(
        &api,
        &format!("{SECRETS}?watch=true&resourceVersion={before}"),
    )
    .await;
    let error = stale.event().await;
    assert_eq!(error["type"], "ERROR");
    let status = &error["object"];
    assert_eq!(
        (&status["code"], &status["reason"]),
        (&json!(410), &json!("Expired"))
    );
    assert_eq!(
        status["message"],
        format!("too old resource version: {before} ({at})")
    );
    assert_eq!(stale.next(Duration::from_secs(1)).await, Next::Ended);

    // From the compaction point itself, nothing is missing.
    let mut fresh = Watch::open(&api, &format!("{SECRETS}?watch=true&resourceVersion={at}")).await;
    let added = fresh.event().await;
    assert_eq!(
        (&added["type"], &added["object"]["metadata"]["name"]),
        (&json!("ADDED"), &json!("three"))
    );
}

#[tokio::test]
async fn bookmarks_come_only_when_asked_for() {
    let api = KubeApiServer::start().await;
    api.bookmark_every(Duration::from_millis(100));
    let mut plain = Watch::open(&api, &format!("{SECRETS}?watch=true&resourceVersion=1")).await;
    let mut asked = Watch::open(
        &api,
        &format!("{SECRETS}?watch=true&resourceVersion=1&allowWatchBookmarks=true"),
    )
    .await;
    // A change elsewhere moves the bookmark on, though it is not shown.
    let other = create(
        &api,
        CONFIG_MAPS,
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c" }
        }),
    )
    .await
    .json();
    let bookmark = loop {
        let event = asked.event().await;
        if event["object"]["metadata"]["resourceVersion"] == other["metadata"]["resourceVersion"] {
            break event;
        }
    };
    assert_eq!(
        bookmark,
        json!({ "type": "BOOKMARK", "object": {
            "kind": "Secret", "apiVersion": "v1",
            "metadata": { "resourceVersion": other["metadata"]["resourceVersion"] },
        }})
    );
    assert_eq!(plain.next(Duration::from_millis(400)).await, Next::Quiet);
}

#[tokio::test]
async fn ending_watches_closes_them_and_a_resume_misses_nothing() {
    let api = KubeApiServer::start().await;
    let mut watch = Watch::open(&api, &format!("{SECRETS}?watch=true")).await;
    let first = create(&api, SECRETS, &secret("one", "1")).await.json();
    assert_eq!(watch.event().await["object"]["metadata"]["name"], "one");
    api.end_watches();
    assert_eq!(watch.next(Duration::from_secs(2)).await, Next::Ended);
    create(&api, SECRETS, &secret("two", "2")).await;
    let rv = resource_version(&first);
    let mut resumed =
        Watch::open(&api, &format!("{SECRETS}?watch=true&resourceVersion={rv}")).await;
    assert_eq!(resumed.event().await["object"]["metadata"]["name"], "two");
}

#[tokio::test]
async fn lists_are_paginated_from_one_snapshot() {
    let api = KubeApiServer::start().await;
    for name in ["a", "b", "c", "d", "e"] {
        create(
            &api,
            CONFIG_MAPS,
            &json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }
            }),
        )
        .await;
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let first = get(&api, &format!("{CONFIG_MAPS}?limit=2")).await.json();
    assert_eq!(names(&first), ["a", "b"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_owned();

    // Changes after the first page do not show in the rest of the list.
    send(&api, Method::DELETE, &format!("{CONFIG_MAPS}/c"), None).await;
    create(
        &api,
        CONFIG_MAPS,
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "f" }
        }),
    )
    .await;
    let second = get(&api, &format!("{CONFIG_MAPS}?limit=2&continue={token}"))
        .await
        .json();
    assert_eq!(names(&second), ["c", "d"]);
    assert_eq!(
        second["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    let token = second["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_owned();
    let last = get(&api, &format!("{CONFIG_MAPS}?limit=2&continue={token}"))
        .await
        .json();
    assert_eq!(names(&last), ["e"]);
    assert!(last["metadata"].get("continue").is_none(), "{last}");

    // A token from before compaction has expired; one that is not a
    // token is a bad request.
    api.compact();
    let answer = get(&api, &format!("{CONFIG_MAPS}?limit=2&continue={token}")).await;
    assert_eq!(answer.status, 410);
    assert_eq!(answer.json()["reason"], "Expired");
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("The provided continue parameter is too old"),
        "{}",
        answer.text
    );
    let answer = get(&api, &format!("{CONFIG_MAPS}?limit=2&continue=nonsense")).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    let all = get(&api, CONFIG_MAPS).await.json();
    assert_eq!(names(&all), ["a", "b", "d", "e", "f"]);
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let api = KubeApiServer::start().await;
    for (name, team) in [("a", Some("x")), ("b", Some("y")), ("c", None)] {
        let mut map =
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name } });
        if let Some(team) = team {
            map["metadata"]["labels"] = json!({ "team": team });
        }
        create(&api, CONFIG_MAPS, &map).await;
    }
    let names = |query: &str| {
        let api = &api;
        let query = query.to_owned();
        async move {
            let list = get(api, &format!("{CONFIG_MAPS}?{query}")).await.json();
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("labelSelector=team%3Dx").await, ["a"]);
    assert_eq!(names("labelSelector=team%21%3Dx").await, ["b", "c"]);
    assert_eq!(names("labelSelector=team").await, ["a", "b"]);
    assert_eq!(names("labelSelector=%21team").await, ["c"]);
    assert_eq!(names("labelSelector=team%20in%20(x,y)").await, ["a", "b"]);
    assert_eq!(names("fieldSelector=metadata.name%3Db").await, ["b"]);
    assert_eq!(
        names("fieldSelector=metadata.name%21%3Db").await,
        ["a", "c"]
    );
}
