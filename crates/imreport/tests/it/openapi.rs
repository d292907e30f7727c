//! The OpenAPI description (docs/openapi.json) against real answers: the server serves it as
//! kept in the repository, and every answer of a tour of the API (pages, statistics of every
//! unit, ingest, health, and errors of each kind) has a status the description lists for its
//! operation and a body its schema accepts.

use crate::support::*;
use serde_json::{Value, json};

struct Described {
    doc: Value,
}

impl Described {
    fn load() -> Described {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap();
        Described {
            doc: serde_json::from_str(&text).unwrap(),
        }
    }

    /// Checks one answer against the operation `method path` (the path as templated).
    fn check(&self, method: &str, path: &str, status: u16, body: &Value) {
        let errors = self.errors(method, path, status, body);
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:?}\n{body}"
        );
    }

    /// What the description finds wrong with an answer.
    fn errors(&self, method: &str, path: &str, status: u16, body: &Value) -> Vec<String> {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {path} answered {status}, which the description does not list: {body}"
        );
        let Some(schema) = resp["content"]["application/json"]["schema"].as_object() else {
            return Vec::new();
        };
        // The component schemas travel with the one checked, so that its $refs resolve.
        let mut root = json!({"components": self.doc["components"].clone()});
        for (k, v) in schema {
            root[k] = v.clone();
        }
        let validator = jsonschema::validator_for(&root).expect("a valid schema");
        validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }
}

#[tokio::test]
async fn real_answers_match_the_openapi_description() {
    let d = Described::load();
    let s = TestServer::start_with(Backend::Embedded, |st| {
        st.rate_limit = 60;
        st.max_events = 50;
    })
    .await;
    // The description is served as kept.
    let served: Value = s
        .http
        .get(format!("{}/openapi.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, d.doc);
    // The check can fail: answers the description does not allow are caught.
    for wrong in [
        json!({"count": 0, "messages": []}),
        json!({"total": 1, "count": 1, "messages": [{"msgid": 1}]}),
        json!({"total": 0, "count": 0, "messages": [], "cursor": "has spaces"}),
    ] {
        assert!(
            !d.errors("get", "/v2/messages", 200, &wrong).is_empty(),
            "{wrong}"
        );
    }
    assert!(
        !d.errors("get", "/v2/messages", 200, &json!({"error": {"code": 1}}))
            .is_empty()
    );

    let events: Vec<Value> = (1..=30u64)
        .map(|i| match i % 3 {
            0 => text_message(i, T0 - 3_600_000 + i as i64, "single", "bob", "alice"),
            1 => text_message(i, T0 - 3_600_000 + i as i64, "group", "g1", "bob"),
            _ => text_message(i, T0 - 3_600_000 + i as i64, "chatroom", "10055", "carol"),
        })
        .collect();
    let (status, body) = s.ingest(ndjson(&events)).await;
    d.check("post", "/ingest/v1/events", status, &body);
    let routed = json!({"total": 1, "messages": [{"msgid": 100, "msg_ctime": T0 - 1000,
        "target_type": "single", "target_id": "bob", "from_id": "alice", "msg_type": "text",
        "msg_body": {"text": "hi"}}]});
    let r = s
        .http
        .post(format!("{}/ingest/v1/jmessage", s.url))
        .header("authorization", s.app.header())
        .json(&routed)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    d.check(
        "post",
        "/ingest/v1/jmessage",
        status,
        &r.json().await.unwrap(),
    );
    // Bad, oversized and unauthenticated ingest.
    let (status, body) = s.ingest("{\"event\": \"message\"}").await;
    d.check("post", "/ingest/v1/events", status, &body);
    let many: Vec<Value> = (1..=51u64)
        .map(|i| text_message(1000 + i, T0 - 1000, "single", "a", "b"))
        .collect();
    let (status, body) = s.ingest(ndjson(&many)).await;
    assert_eq!(status, 413);
    d.check("post", "/ingest/v1/events", status, &body);

    // Pages of every scope, first and next, and bad queries.
    let (b, e) = (enc(&sh(T0 - 7_200_000)), enc(&sh(T0)));
    for (template, path) in [
        ("/v2/messages", "/v2/messages".to_owned()),
        (
            "/v2/users/{username}/messages",
            "/v2/users/bob/messages".into(),
        ),
        ("/v2/groups/{gid}/messages", "/v2/groups/g1/messages".into()),
        (
            "/v2/chatrooms/{chatroomid}/messages",
            "/v2/chatrooms/10055/messages".into(),
        ),
    ] {
        let (status, page) = s
            .get(&format!("{path}?count=3&begin_time={b}&end_time={e}"))
            .await;
        d.check("get", template, status, &page);
        let c = page["cursor"].as_str().unwrap();
        let (status, next) = s.get(&format!("{path}?cursor={c}")).await;
        d.check("get", template, status, &next);
        for bad in [
            "count=0",
            "cursor=forged",
            "begin_time=x&end_time=y&count=1",
        ] {
            let (status, body) = s.get(&format!("{path}?{bad}")).await;
            assert_eq!(status, 400);
            d.check("get", template, status, &body);
        }
    }
    // Statistics of every unit, and refusals.
    let day = &sh(T0)[..10];
    for (template, q) in [
        (
            "/v2/statistic/users",
            format!("time_unit=DAY&start={day}&duration=7"),
        ),
        (
            "/v2/statistic/groups",
            format!("time_unit=day&start={day}&duration=1"),
        ),
        (
            "/v2/statistic/messages",
            format!("time_unit=DAY&start={day}&duration=3"),
        ),
        (
            "/v2/statistic/messages",
            format!(
                "time_unit=HOUR&start={}&duration=24",
                enc(&format!("{day} 00"))
            ),
        ),
        (
            "/v2/statistic/messages",
            format!("time_unit=MONTH&start={}&duration=2", &day[..7]),
        ),
        (
            "/v2/statistic/messages",
            "time_unit=WEEK&start=2026-11-01&duration=1".into(),
        ),
        (
            "/v2/statistic/users",
            "time_unit=DAY&start=2026-11-01&duration=61".into(),
        ),
        ("/v2/statistic/busiest", format!("date={day}")),
        ("/v2/statistic/busiest", format!("date={day}&count=2")),
        ("/v2/statistic/busiest", "date=2026-13-01".into()),
    ] {
        let (status, body) = s.get(&format!("{template}?{q}")).await;
        d.check("get", template, status, &body);
    }
    // Unauthenticated and wrong credentials.
    let r = s
        .http
        .get(format!("{}/v2/messages?count=1", s.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    d.check("get", "/v2/messages", status, &r.json().await.unwrap());
    let wrong = Creds {
        key: s.app.key.clone(),
        secret: "wrongwrongwrongwrongwron".into(),
    };
    let (status, body) = s
        .get_as(
            &wrong,
            "/v2/statistic/users?time_unit=DAY&start=2026-11-01&duration=1",
        )
        .await;
    assert_eq!(status, 401);
    d.check("get", "/v2/statistic/users", status, &body);
    // Over the rate limit.
    let mut limited = None;
    for _ in 0..80 {
        let (status, body) = s
            .get("/v2/messages?count=1&begin_time=2026-11-01+00:00:00&end_time=2026-11-01+00:00:01")
            .await;
        if status == 429 {
            limited = Some(body);
            break;
        }
    }
    d.check(
        "get",
        "/v2/messages",
        429,
        &limited.expect("the rate limit was reached"),
    );
    // Health.
    for path in ["/healthz", "/readyz"] {
        let r = s.http.get(format!("{}{path}", s.url)).send().await.unwrap();
        let status = r.status().as_u16();
        d.check("get", path, status, &r.json().await.unwrap());
    }
}
