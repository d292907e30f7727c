//! History endpoints over real HTTP: scopes, bounds, order, totals and cursors.

use crate::support::*;
use serde_json::Value;

fn ids(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["msgid"].as_u64().unwrap()).collect()
}

async fn scopes_select_the_contracted_messages(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let t = T0 - HOUR;
    s.ingest_ok(&[
        text_message(1, t, "single", "bob", "alice"),
        text_message(2, t + 1, "single", "alice", "bob"),
        text_message(3, t + 2, "group", "g1", "alice"),
        text_message(4, t + 3, "chatroom", "r1", "carol"),
        text_message(5, t + 4, "single", "carol", "dave"),
        text_message(6, t + 5, "group", "g2", "bob"),
    ])
    .await;
    let (b, e) = (sh(t - 1000), sh(t + 1000));
    let scope = |path: &'static str| {
        let (b, e, s) = (b.clone(), e.clone(), &s);
        async move { ids(&s.walk(&s.app, path, 100, &b, &e).await.1) }
    };
    assert_eq!(scope("/v2/messages").await, vec![1, 2, 3, 4, 5, 6]);
    // alice: what she sent (any target) plus single chats to her; not group g2 traffic.
    assert_eq!(scope("/v2/users/alice/messages").await, vec![1, 2, 3]);
    assert_eq!(scope("/v2/users/bob/messages").await, vec![1, 2, 6]);
    assert_eq!(scope("/v2/users/carol/messages").await, vec![4, 5]);
    assert_eq!(scope("/v2/groups/g1/messages").await, vec![3]);
    assert_eq!(scope("/v2/chatrooms/r1/messages").await, vec![4]);
    // An id nobody used is not an error.
    let (status, body) = s
        .get(&format!(
            "/v2/users/nobody/messages?count=10&begin_time={}&end_time={}",
            enc(&b),
            enc(&e)
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 0);
    assert_eq!(body["count"], 0);
    assert!(body.get("cursor").is_none());
}

async fn bounds_are_inclusive_at_second_granularity(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let sec = (T0 - DAY) / 1000 * 1000;
    s.ingest_ok(&[
        text_message(1, sec - 1, "single", "b", "a"),
        text_message(2, sec, "single", "b", "a"),
        text_message(3, sec + 2999, "single", "b", "a"),
        text_message(4, sec + 3000, "single", "b", "a"),
    ])
    .await;
    let (total, msgs) = s
        .walk(&s.app, "/v2/messages", 10, &sh(sec), &sh(sec + 2000))
        .await;
    assert_eq!(total, 2);
    assert_eq!(ids(&msgs), vec![2, 3]);
    // A one-second window.
    let (total, msgs) = s.walk(&s.app, "/v2/messages", 10, &sh(sec), &sh(sec)).await;
    assert_eq!((total, ids(&msgs)), (1, vec![2]));
}

async fn thousands_in_one_millisecond_page_without_gaps_or_repeats(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let t = T0 - 2 * HOUR;
    // msgids out of order within the same millisecond, in two batches.
    let mut evs: Vec<Value> = (0..3000u64)
        .map(|i| text_message(10_000 - i * 3, t, "group", "g", "u"))
        .collect();
    evs.push(text_message(1, t - 1, "group", "g", "u"));
    s.ingest_ok(&evs[..1500]).await;
    s.ingest_ok(&evs[1500..]).await;
    for count in [1000u16, 7, 999] {
        let (total, msgs) = s
            .walk(
                &s.app,
                "/v2/groups/g/messages",
                count,
                &sh(t - 5000),
                &sh(t + 5000),
            )
            .await;
        assert_eq!(total, 3001);
        let got = ids(&msgs);
        let mut want: Vec<u64> = (0..3000u64).map(|i| 10_000 - i * 3).collect();
        want.sort();
        want.insert(0, 1);
        assert_eq!(got, want, "count={count}");
    }
}

async fn total_spans_days_hours_and_partial_hours(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    // Messages every 7 minutes over 6 days: the window cuts hours and days in the middle.
    let start = T0 - 6 * DAY;
    let evs: Vec<Value> = (0..(6 * 24 * 60 / 7))
        .map(|i| {
            text_message(
                i as u64 + 1,
                start + i * 7 * 60_000 + 123,
                "single",
                "x",
                "y",
            )
        })
        .collect();
    for chunk in evs.chunks(500) {
        s.ingest_ok(chunk).await;
    }
    let ctimes: Vec<i64> = evs
        .iter()
        .map(|e| e["msg_ctime"].as_i64().unwrap())
        .collect();
    for (b, e) in [
        (start + 17 * 60_000 + 1000, start + 5 * DAY + 13 * 60_000),
        (start, start + 6 * DAY),
        (start + 90 * 60_000, start + 100 * 60_000),
        (start + 3 * DAY + 1, start + 3 * DAY + 30_000),
    ] {
        let (b, e) = (b / 1000 * 1000, e / 1000 * 1000);
        let want = ctimes.iter().filter(|&&c| c >= b && c <= e + 999).count() as u64;
        let (status, page) = s
            .get(&format!(
                "/v2/users/y/messages?count=5&begin_time={}&end_time={}",
                enc(&sh(b)),
                enc(&sh(e))
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["total"].as_u64().unwrap(),
            want,
            "{} .. {}",
            sh(b),
            sh(e)
        );
    }
}

async fn messages_carry_every_field(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let ctime = T0 - 1234;
    s.ingest_ok(&[serde_json::json!({
        "event": "message", "msgid": 287090485, "msg_ctime": ctime, "create_time": 1490930940,
        "target_type": "group", "target_id": "10055201", "target_name": "", "target_appkey": "",
        "from_type": "user", "from_id": "ppppp", "from_name": "custom name nnn", "from_platform": "a",
        "msg_type": "text", "msg_body": {"text": "hehe", "extras": {"n": 12345}},
        "version": 1, "msg_level": 0, "set_from_name": 1, "unknown_field": [1, 2]
    })])
    .await;
    let (_, page) = s
        .get(&format!(
            "/v2/groups/10055201/messages?count=1&begin_time={}&end_time={}",
            enc(&sh(ctime - 1000)),
            enc(&sh(ctime))
        ))
        .await;
    let m = &page["messages"][0];
    assert_eq!(m["msgid"], 287090485);
    assert_eq!(m["msg_ctime"], ctime);
    assert_eq!(m["create_time"], 1490930940);
    assert_eq!(m["target_type"], "group");
    assert_eq!(m["target_id"], "10055201");
    assert_eq!(m["target_appkey"], "");
    assert_eq!(m["from_appkey"], s.app.key.as_str());
    assert_eq!(m["from_name"], "custom name nnn");
    assert_eq!(m["from_platform"], "a");
    assert_eq!(m["set_from_name"], 1);
    assert_eq!(m["msg_body"]["text"], "hehe");
    assert_eq!(
        m.as_object().unwrap().len(),
        17,
        "every field, nothing else: {m}"
    );
    assert!(m.get("unknown_field").is_none());
}

async fn big_numbers_in_bodies_come_back_as_sent(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let body = r#"{"event":"message","msgid":9,"msg_ctime":MS,"target_type":"single","target_id":"a","from_id":"b","msg_type":"custom","msg_body":{"n":123456789012345678901234567890,"f":1.5e300}}"#
        .replace("MS", &(T0 - 10).to_string());
    let (status, _) = s.ingest(body).await;
    assert_eq!(status, 200);
    let raw = s
        .http
        .get(format!(
            "{}/v2/messages?count=1&begin_time={}&end_time={}",
            s.url,
            enc(&sh(T0 - 1000)),
            enc(&sh(T0))
        ))
        .header("authorization", s.app.header())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        raw.contains(r#""msg_body":{"n":123456789012345678901234567890,"f":1.5e300}"#),
        "{raw}"
    );
}

async fn a_walk_is_a_snapshot_of_when_it_began(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let t = T0 - HOUR;
    let evs: Vec<Value> = (1..=10u64)
        .map(|i| text_message(i * 10, t + i as i64, "single", "b", "a"))
        .collect();
    s.ingest_ok(&evs).await;
    let (b, e) = (sh(t - 1000), sh(t + 1000));
    let (_, first) = s
        .get(&format!(
            "/v2/messages?count=3&begin_time={}&end_time={}",
            enc(&b),
            enc(&e)
        ))
        .await;
    assert_eq!(first["total"], 10);
    // Arrivals after the walk began, before and after its position, are not part of it.
    s.ingest_ok(&[
        text_message(15, t + 1, "single", "b", "a"),
        text_message(999, t + 500, "single", "b", "a"),
    ])
    .await;
    let mut seen = ids(first["messages"].as_array().unwrap());
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    loop {
        let (status, page) = s.get(&format!("/v2/messages?cursor={cursor}")).await;
        assert_eq!(status, 200);
        assert_eq!(page["total"], 10);
        seen.extend(ids(page["messages"].as_array().unwrap()));
        match page.get("cursor") {
            Some(c) => cursor = c.as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, (1..=10u64).map(|i| i * 10).collect::<Vec<_>>());
    // A new walk sees them.
    assert_eq!(s.walk(&s.app, "/v2/messages", 100, &b, &e).await.0, 12);
}

async fn cursors_expire_after_the_ttl_and_every_page_renews(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let t = T0 - HOUR;
    let evs: Vec<Value> = (1..=5u64)
        .map(|i| text_message(i, t, "single", "b", "a"))
        .collect();
    s.ingest_ok(&evs).await;
    let q = format!(
        "/v2/messages?count=1&begin_time={}&end_time={}",
        enc(&sh(t)),
        enc(&sh(t))
    );
    let (_, p1) = s.get(&q).await;
    s.clock.set(T0 + 100_000);
    let (status, p2) = s
        .get(&format!(
            "/v2/messages?cursor={}",
            p1["cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    // p2's cursor was issued at T0+100s: valid until T0+220s even though p1's expires at T0+120s.
    s.clock.set(T0 + 220_000);
    let (status, p3) = s
        .get(&format!(
            "/v2/messages?cursor={}",
            p2["cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{p3}");
    s.clock.set(T0 + 340_001);
    let (status, err) = s
        .get(&format!(
            "/v2/messages?cursor={}",
            p3["cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], 899003);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

async fn next_pages_ignore_other_parameters_and_doubled_slashes_route(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let t = T0 - HOUR;
    s.ingest_ok(&[
        text_message(1, t, "single", "b", "a"),
        text_message(2, t, "single", "b", "a"),
    ])
    .await;
    let (_, p1) = s
        .get(&format!(
            "/v2//messages?count=1&begin_time={}&end_time={}",
            enc(&sh(t)),
            enc(&sh(t))
        ))
        .await;
    assert_eq!(p1["count"], 1);
    let c = p1["cursor"].as_str().unwrap();
    let (status, p2) = s
        .get(&format!(
            "/v2/messages?cursor={c}&count=abc&begin_time=nonsense"
        ))
        .await;
    assert_eq!(status, 200, "{p2}");
    assert_eq!(ids(p2["messages"].as_array().unwrap()), vec![2]);
    // %20 works as well as +.
    let q = format!(
        "/v2/messages?count=5&begin_time={}&end_time={}",
        sh(t).replace(' ', "%20"),
        sh(t).replace(' ', "%20")
    );
    assert_eq!(s.get(&q).await.1["total"], 2);
}

async fn a_cursor_dies_with_its_app_even_when_the_key_is_reused(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let chosen = |secret: &str| imreport_store::apps::CreateApp {
        app_key: Some("reusedkey000000000000000".into()),
        master_secret: Some(secret.into()),
        name: None,
    };
    let creds = |secret: &str| Creds {
        key: "reusedkey000000000000000".into(),
        secret: secret.into(),
    };
    imreport_store::apps::create_app(s.store.as_ref(), chosen("first-secret"))
        .await
        .unwrap();
    let old = creds("first-secret");
    let evs: Vec<Value> = (1..=3)
        .map(|i| text_message(i, T0 - 100, "single", "u", "v"))
        .collect();
    s.ingest_as(&old, ndjson(&evs)).await;
    let q = format!(
        "/v2/messages?count=1&begin_time={}&end_time={}",
        enc(&sh(T0 - 1000)),
        enc(&sh(T0))
    );
    let (status, page) = s.get_as(&old, &q).await;
    assert_eq!(status, 200, "{page}");
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    // Longer on PostgreSQL by the transactions in flight then (other tests', too).
    assert!(
        (imreport_domain::cursor::CURSOR_LEN..=imreport_domain::cursor::MAX_CURSOR_LEN)
            .contains(&cursor.len()),
        "{cursor}"
    );

    s.store
        .delete_app("reusedkey000000000000000")
        .await
        .unwrap();
    imreport_store::apps::create_app(s.store.as_ref(), chosen("second-secret"))
        .await
        .unwrap();
    let (status, err) = s
        .get_as(
            &creds("second-secret"),
            &format!("/v2/messages?cursor={cursor}"),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another app"),
        "{err}"
    );
}

crate::conformance::on_every_backend! {
    async: scopes_select_the_contracted_messages, bounds_are_inclusive_at_second_granularity, thousands_in_one_millisecond_page_without_gaps_or_repeats, total_spans_days_hours_and_partial_hours, messages_carry_every_field, big_numbers_in_bodies_come_back_as_sent, a_walk_is_a_snapshot_of_when_it_began, cursors_expire_after_the_ttl_and_every_page_renews, next_pages_ignore_other_parameters_and_doubled_slashes_route, a_cursor_dies_with_its_app_even_when_the_key_is_reused;
    sync: ;
}
