//! Ingest over real HTTP: defaults, atomicity, idempotency, expiry, limits, concurrency.

use crate::support::*;
use serde_json::{Value, json};

async fn app_total(s: &TestServer, creds: &Creds) -> u64 {
    let (b, e) = (sh(T0 - 3 * DAY), sh(T0 + 60_000));
    let (status, page) = s
        .get_as(
            creds,
            &format!(
                "/v2/messages?count=1&begin_time={}&end_time={}",
                enc(&b),
                enc(&e)
            ),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["total"].as_u64().unwrap()
}

async fn json_arrays_and_ndjson_are_both_accepted(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let arr = json!([text_message(1, T0 - 5, "single", "a", "b"), {"event": "user_registered", "username": "a"}]);
    let r = s
        .http
        .post(format!("{}/ingest/v1/events", s.url))
        .header("authorization", s.app.header())
        .header("content-type", "application/json")
        .body(arr.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"accepted": 2, "duplicates": 0, "expired": 0})
    );
    let body = s
        .ingest_ok(&[text_message(2, T0 - 5, "single", "a", "b")])
        .await;
    assert_eq!(body, json!({"accepted": 1, "duplicates": 0, "expired": 0}));
    assert_eq!(app_total(&s, &s.app).await, 2);
}

async fn duplicates_are_stored_once_within_and_across_batches(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let m = text_message(42, T0 - 5, "single", "a", "b");
    let body = s.ingest_ok(&[m.clone(), m.clone()]).await;
    assert_eq!(body, json!({"accepted": 1, "duplicates": 1, "expired": 0}));
    // A retry with another msg_ctime is still the same msgid.
    let mut moved = m.clone();
    moved["msg_ctime"] = json!(T0 - DAY);
    let body = s.ingest_ok(&[m, moved]).await;
    assert_eq!(body, json!({"accepted": 0, "duplicates": 2, "expired": 0}));
    assert_eq!(app_total(&s, &s.app).await, 1);
    // The same msgid in another app is another message.
    let other = s.create_app().await;
    let (status, body) = s
        .ingest_as(
            &other,
            ndjson(&[text_message(42, T0 - 5, "single", "a", "b")]),
        )
        .await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)));
}

async fn lifecycle_repeats_change_nothing(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let evs = [
        json!({"event": "user_registered", "username": "alice", "time": T0 - 10}),
        json!({"event": "user_registered", "username": "alice", "time": T0 - 9}),
        json!({"event": "group_created", "gid": 7, "time": T0 - 9}),
        json!({"event": "group_created", "gid": "7", "time": T0 - 8}),
        json!({"event": "group_deleted", "gid": "7", "time": T0 - 7}),
        json!({"event": "group_deleted", "gid": "7", "time": T0 - 6}),
        json!({"event": "user_deleted", "username": "nobody"}),
    ];
    let body = s.ingest_ok(&evs).await;
    assert_eq!(body, json!({"accepted": 3, "duplicates": 4, "expired": 0}));
}

async fn server_assigned_msgids_stop_at_the_largest_a_java_long_holds(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let max = i64::MAX as u64;
    let unnumbered = |t: i64| {
        let mut m = text_message(0, t, "single", "a", "b");
        m.as_object_mut().unwrap().remove("msgid");
        m
    };
    s.ingest_ok(&[unnumbered(T0 - 30)]).await;
    s.ingest_ok(&[text_message(max - 1, T0 - 20, "single", "a", "b")])
        .await;
    // The last msgid there is is still given out...
    s.ingest_ok(&[unnumbered(T0 - 15)]).await;
    // ...and then no more: the whole batch is refused, and nothing of it is stored.
    let batch = [
        text_message(7, T0 - 10, "single", "a", "b"),
        unnumbered(T0 - 10),
    ];
    let (status, body) = s.ingest(ndjson(&batch)).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (400, Some(899003)),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2^63-1"),
        "{body}"
    );
    let (_, msgs) = s
        .walk(&s.app, "/v2/messages", 100, &sh(T0 - 2000), &sh(T0))
        .await;
    let ids: Vec<u64> = msgs.iter().map(|m| m["msgid"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, max - 1, max]);
    // Messages with their own msgids go on being stored, and the largest is a duplicate.
    let body = s
        .ingest_ok(&[
            text_message(7, T0 - 10, "single", "a", "b"),
            text_message(max, T0 - 10, "single", "a", "b"),
        ])
        .await;
    assert_eq!(body, json!({"accepted": 1, "duplicates": 1, "expired": 0}));
}

async fn server_assigned_msgids_are_unique_and_increasing(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let mut evs = Vec::new();
    for i in 0..5 {
        let mut m = text_message(0, T0 - 100 + i, "single", "a", "b");
        m.as_object_mut().unwrap().remove("msgid");
        evs.push(m);
    }
    evs.insert(2, text_message(500, T0 - 100, "single", "a", "b"));
    s.ingest_ok(&evs).await;
    s.ingest_ok(&evs[..1]).await;
    let (_, msgs) = s
        .walk(&s.app, "/v2/messages", 100, &sh(T0 - 2000), &sh(T0))
        .await;
    let mut ids: Vec<u64> = msgs.iter().map(|m| m["msgid"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 7);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "unique");
    // Assigned after 500 was seen means above it.
    let by_arrival: Vec<u64> = msgs
        .iter()
        .filter(|m| m["msg_ctime"] == json!(T0 - 100 + 4))
        .map(|m| m["msgid"].as_u64().unwrap())
        .collect();
    assert!(by_arrival[0] > 500);
}

async fn old_events_are_expired_and_future_ones_refused(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let old = T0 - 61 * DAY;
    let body = s
        .ingest_ok(&[
            text_message(1, old, "single", "a", "b"),
            json!({"event": "user_login", "username": "a", "time": old}),
            json!({"event": "user_registered", "username": "a", "time": old}),
            text_message(2, T0 + 4 * 60_000, "single", "a", "b"),
        ])
        .await;
    assert_eq!(body, json!({"accepted": 2, "duplicates": 0, "expired": 2}));
    let (status, body) = s
        .ingest(ndjson(&[text_message(
            3,
            T0 + 6 * 60_000,
            "single",
            "a",
            "b",
        )]))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("future"),
        "{body}"
    );
}

async fn one_bad_event_rejects_the_batch_and_stores_nothing(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let mut evs: Vec<Value> = (1..=100u64)
        .map(|i| text_message(i, T0 - 10, "group", "g", "u"))
        .collect();
    evs.push(json!({"event": "user_registered", "username": "fresh"}));
    evs[57]["target_type"] = json!("broadcast");
    let (status, body) = s.ingest(ndjson(&evs)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 899003);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("line 58") && msg.contains("target_type"),
        "{msg}"
    );
    assert_eq!(app_total(&s, &s.app).await, 0);
    // The registration in the rejected batch did not happen either: registering now is new.
    let body = s
        .ingest_ok(&[json!({"event": "user_registered", "username": "fresh"})])
        .await;
    assert_eq!(body["accepted"], 1);
}

async fn limits_answer_413_and_400(backend: Backend) {
    let s = TestServer::start_with(backend, |s| {
        s.max_events = 10;
        s.max_body_bytes = 4096;
        s.max_msg_body_bytes = 100;
    })
    .await;
    let evs: Vec<Value> = (1..=11u64)
        .map(|i| json!({"event": "user_login", "username": i}))
        .collect();
    let (status, body) = s.ingest(ndjson(&evs)).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (413, Some(899003)),
        "{body}"
    );
    let (status, body) = s.ingest("x".repeat(5000)).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (413, Some(899003)),
        "{body}"
    );
    let mut m = text_message(1, T0 - 1, "single", "a", "b");
    m["msg_body"] = json!({"text": "y".repeat(200)});
    let (status, body) = s.ingest(ndjson(&[m])).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("msg_body")
    );
    assert_eq!(app_total(&s, &s.app).await, 0);
}

async fn concurrent_batches_all_land_once(backend: Backend) {
    let s = std::sync::Arc::new(TestServer::start_on(backend).await);
    let mut tasks = Vec::new();
    for c in 0..16u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..5u64 {
                // Every client also resends one message of client 0 to race the duplicate check.
                let mut evs: Vec<Value> = (0..50u64)
                    .map(|i| {
                        text_message(
                            c * 1000 + b * 100 + i + 1,
                            T0 - 1000 + i as i64,
                            "group",
                            "g",
                            "u",
                        )
                    })
                    .collect();
                evs.push(text_message(1, T0 - 1000, "group", "g", "u"));
                let (status, body) = s.ingest(ndjson(&evs)).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(app_total(&s, &s.app).await, 16 * 5 * 50);
}

async fn jmessage_message_routing_posts_are_stored_as_sent(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    // The body JMessage's real-time message routing posts (its documentation's example, two
    // messages), with the app's Basic auth.
    let msg = |msgid: u64, ctime: i64, target_type: &str, target: &str| {
        json!({"target_type": target_type, "msg_type": "text", "target_name": "JMessage",
               "target_id": target, "from_id": "10000001", "from_name": "JPush",
               "from_type": "user", "from_platform": "a",
               "msg_body": {"text": "text", "extras": {}}, "create_time": ctime / 1000,
               "version": 1, "msgid": msgid, "msg_level": 0, "msg_ctime": ctime})
    };
    let body = json!({"total": 2, "messages": [
        msg(12345678, T0 - 2000, "single", "10000002"),
        msg(12345679, T0 - 1000, "group", "g1"),
    ]});
    let post = |body: String| {
        s.http
            .post(format!("{}/ingest/v1/jmessage", s.url))
            .header("authorization", s.app.header())
            .header("content-type", "application/json; charset=utf-8")
            .body(body)
            .send()
    };
    let r = post(body.to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"accepted": 2, "duplicates": 0, "expired": 0})
    );
    let (_, msgs) = s
        .walk(&s.app, "/v2/messages", 10, &sh(T0 - 5000), &sh(T0))
        .await;
    assert_eq!(msgs.len(), 2);
    let sent = &body["messages"][1];
    for field in [
        "msgid",
        "msg_ctime",
        "create_time",
        "target_type",
        "target_id",
        "target_name",
        "from_type",
        "from_id",
        "from_name",
        "from_platform",
        "msg_type",
        "msg_body",
        "version",
        "msg_level",
    ] {
        assert_eq!(msgs[1][field], sent[field], "{field}");
    }
    assert_eq!(msgs[1]["target_appkey"], s.app.key.as_str());
    // JMessage retries what it could not deliver: stored once.
    let r = post(body.to_string()).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"accepted": 0, "duplicates": 2, "expired": 0})
    );
    // One bad message refuses the post, naming it; a body that is not the routing's too.
    let mut bad = body.clone();
    bad["messages"][1]["target_type"] = json!("room");
    let r = post(bad.to_string()).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("index 1"),
        "{v}"
    );
    let r = post(json!({"total": 0}).to_string()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .http
        .post(format!("{}/ingest/v1/jmessage", s.url))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the app's Basic auth is required");
}

crate::conformance::on_every_backend! {
    async: json_arrays_and_ndjson_are_both_accepted, jmessage_message_routing_posts_are_stored_as_sent, duplicates_are_stored_once_within_and_across_batches, lifecycle_repeats_change_nothing, server_assigned_msgids_stop_at_the_largest_a_java_long_holds, server_assigned_msgids_are_unique_and_increasing, old_events_are_expired_and_future_ones_refused, one_bad_event_rejects_the_batch_and_stores_nothing, limits_answer_413_and_400, concurrent_batches_all_land_once;
    sync: ;
}
