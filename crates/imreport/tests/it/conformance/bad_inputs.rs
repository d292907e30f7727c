//! Every bad input gets its status and code from the contract, never a 500, and changes nothing.

use crate::support::*;
use base64::Engine;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    auth: Option<String>,
    body: Option<String>,
    status: u16,
    code: u64,
    /// A fragment the message must contain.
    says: &'static str,
}

/// The same cursor with one character of its body changed.
fn forge(cursor: &str) -> String {
    let mut b = cursor.as_bytes().to_vec();
    b[30] = if b[30] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn case(
    name: &'static str,
    path: impl Into<String>,
    status: u16,
    code: u64,
    says: &'static str,
) -> Case {
    Case {
        name,
        method: "GET",
        path: path.into(),
        auth: None,
        body: None,
        status,
        code,
        says,
    }
}

async fn bad_inputs_get_their_status_and_code(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let other = s.create_app().await;
    let t = T0 - HOUR;
    let evs: Vec<Value> = (1..=3u64)
        .map(|i| text_message(i, t, "single", "u", "v"))
        .collect();
    s.ingest_ok(&evs).await;
    let (b, e) = (enc(&sh(t)), enc(&sh(t)));
    let first = |path: &str| format!("{path}?count=1&begin_time={b}&end_time={e}");
    let cursor_of = |v: Value| v["cursor"].as_str().unwrap().to_owned();
    let user_cursor = cursor_of(s.get(&first("/v2/users/u/messages")).await.1);
    let app_cursor = cursor_of(s.get(&first("/v2/messages")).await.1);
    let b64 = |x: &str| base64::engine::general_purpose::STANDARD.encode(x);
    let q = |extra: &str| format!("/v2/messages?{extra}");
    let ok_b = format!("begin_time={b}");
    let ok_e = format!("end_time={e}");

    let mut cases = vec![
        // Parameters of the first page.
        case(
            "count missing",
            q(&format!("{ok_b}&{ok_e}")),
            400,
            899003,
            "count is required",
        ),
        case(
            "count zero",
            q(&format!("count=0&{ok_b}&{ok_e}")),
            400,
            899003,
            "count=0",
        ),
        case(
            "count too big",
            q(&format!("count=1001&{ok_b}&{ok_e}")),
            400,
            899003,
            "1 to 1000",
        ),
        case(
            "count text",
            q(&format!("count=ten&{ok_b}&{ok_e}")),
            400,
            899003,
            "count",
        ),
        case(
            "count huge",
            q(&format!("count=99999999999999999999999&{ok_b}&{ok_e}")),
            400,
            899003,
            "count",
        ),
        case(
            "begin missing",
            q(&format!("count=1&{ok_e}")),
            400,
            899003,
            "begin_time is required",
        ),
        case(
            "end missing",
            q(&format!("count=1&{ok_b}")),
            400,
            899003,
            "end_time is required",
        ),
        case(
            "begin malformed",
            q(&format!("count=1&begin_time=2024-13-01+00:00:00&{ok_e}")),
            400,
            899003,
            "begin_time",
        ),
        case(
            "end as epoch",
            q(&format!("count=1&{ok_b}&end_time=1700000000")),
            400,
            899003,
            "end_time",
        ),
        case(
            "end before begin",
            q("count=1&begin_time=2024-01-02+00:00:00&end_time=2024-01-01+00:00:00"),
            400,
            899003,
            "before",
        ),
        case(
            "over 7 days",
            q("count=1&begin_time=2024-01-01+00:00:00&end_time=2024-01-08+00:00:01"),
            400,
            899003,
            "7 days",
        ),
        case(
            "bad percent",
            q("count=1&begin_time=%ZZ&end_time=%C3%28"),
            400,
            899003,
            "begin_time",
        ),
        // Statistics past the last date there is.
        case(
            "users past 9999-12-31",
            "/v2/statistic/users?time_unit=DAY&start=9999-12-31&duration=2",
            400,
            899003,
            "9999-12-31",
        ),
        case(
            "groups past 9999-12-31",
            "/v2/statistic/groups?time_unit=DAY&start=9999-12-30&duration=4",
            400,
            899003,
            "9999-12-31",
        ),
        case(
            "months past 9999-12",
            "/v2/statistic/messages?time_unit=MONTH&start=9999-12&duration=2",
            400,
            899003,
            "9999-12-31",
        ),
        // Cursors.
        case(
            "forged cursor",
            q(&format!("cursor={}", forge(&app_cursor))),
            400,
            899003,
            "forged",
        ),
        case(
            "truncated cursor",
            q(&format!("cursor={}", &app_cursor[..40])),
            400,
            899003,
            "truncated",
        ),
        case(
            "garbage cursor",
            q("cursor=%00%01%02"),
            400,
            899003,
            "cursor",
        ),
        case(
            "cross-scope cursor",
            q(&format!("cursor={user_cursor}")),
            400,
            899003,
            "another query",
        ),
        case(
            "cross-user cursor",
            format!("/v2/users/v/messages?cursor={user_cursor}"),
            400,
            899003,
            "another query",
        ),
        case(
            "group cursor on chatroom",
            format!("/v2/chatrooms/u/messages?cursor={user_cursor}"),
            400,
            899003,
            "another query",
        ),
        // Paths.
        case(
            "long user id",
            format!(
                "/v2/users/{}/messages?count=1&{ok_b}&{ok_e}",
                "x".repeat(129)
            ),
            400,
            899003,
            "128",
        ),
        case(
            "invalid utf-8 id",
            format!("/v2/users/%FF%FE/messages?count=1&{ok_b}&{ok_e}"),
            400,
            899003,
            "UTF-8",
        ),
        case(
            "unknown route",
            "/v2/nothing-here",
            404,
            899003,
            "no such endpoint",
        ),
        case("v1 route", "/v1/messages", 404, 899003, "no such endpoint"),
    ];
    let mut cross_app = case(
        "another app's cursor",
        q(&format!("cursor={app_cursor}")),
        400,
        899003,
        "another app",
    );
    cross_app.auth = Some(other.header());
    cases.push(cross_app);

    // Authentication.
    for (name, header, code, says) in [
        ("no auth", None, 899007, "missing"),
        (
            "bearer auth",
            Some("Bearer abc".to_owned()),
            899007,
            "Basic",
        ),
        ("not base64", Some("Basic !!!".to_owned()), 899007, "base64"),
        (
            "no colon",
            Some(format!("Basic {}", b64("justakey"))),
            899007,
            "appKey:masterSecret",
        ),
        (
            "unknown key",
            Some(format!(
                "Basic {}",
                b64("nosuchappkey000000000000:secretsecret")
            )),
            899008,
            "unknown app key or wrong master secret",
        ),
        (
            "wrong secret",
            Some(format!(
                "Basic {}",
                b64(&format!("{}:wrongsecret", s.app.key))
            )),
            899008,
            "unknown app key or wrong master secret",
        ),
    ] {
        let mut c = case(name, first("/v2/messages"), 401, code, says);
        c.auth = Some(header.unwrap_or_default());
        cases.push(c);
    }

    // Methods.
    let mut post_history = case(
        "POST on history",
        first("/v2/messages"),
        405,
        899003,
        "method",
    );
    post_history.method = "POST";
    cases.push(post_history);
    let mut get_ingest = case("GET on ingest", "/ingest/v1/events", 405, 899003, "method");
    get_ingest.method = "GET";
    cases.push(get_ingest);

    // Ingest bodies.
    let msg = |f: &dyn Fn(&mut Value)| {
        let mut m = text_message(77, T0 - 1, "single", "a", "b");
        f(&mut m);
        m.to_string()
    };
    let ingest_cases: Vec<(&'static str, String, u16, &'static str)> = vec![
        ("not json", "hello".into(), 400, "line 1"),
        ("array of junk", "[1, 2]".into(), 400, "index 0"),
        (
            "unterminated array",
            "[{\"event\":\"user_login\",\"username\":\"a\"}".into(),
            400,
            "array",
        ),
        (
            "no event field",
            "{\"username\":\"a\"}".into(),
            400,
            "\"event\"",
        ),
        (
            "unknown event",
            "{\"event\":\"user_exploded\",\"username\":\"a\"}".into(),
            400,
            "\"event\"",
        ),
        (
            "missing target_id",
            msg(&|m| {
                m.as_object_mut().unwrap().remove("target_id");
            }),
            400,
            "target_id",
        ),
        (
            "missing from_id",
            msg(&|m| {
                m.as_object_mut().unwrap().remove("from_id");
            }),
            400,
            "from_id",
        ),
        (
            "missing msg_type",
            msg(&|m| {
                m.as_object_mut().unwrap().remove("msg_type");
            }),
            400,
            "msg_type",
        ),
        (
            "missing msg_body",
            msg(&|m| {
                m.as_object_mut().unwrap().remove("msg_body");
            }),
            400,
            "msg_body",
        ),
        (
            "body not object",
            msg(&|m| m["msg_body"] = json!([1])),
            400,
            "msg_body",
        ),
        (
            "bad target_type",
            msg(&|m| m["target_type"] = json!("room")),
            400,
            "target_type",
        ),
        (
            "bad from_type",
            msg(&|m| m["from_type"] = json!("bot")),
            400,
            "from_type",
        ),
        (
            "id is object",
            msg(&|m| m["target_id"] = json!({"a": 1})),
            400,
            "target_id",
        ),
        (
            "id is float",
            msg(&|m| m["from_id"] = json!(1.5)),
            400,
            "from_id",
        ),
        (
            "empty id",
            msg(&|m| m["from_id"] = json!("")),
            400,
            "from_id",
        ),
        (
            "long id",
            msg(&|m| m["target_id"] = json!("z".repeat(129))),
            400,
            "128",
        ),
        ("msgid zero", msg(&|m| m["msgid"] = json!(0)), 400, "msgid"),
        (
            "msgid huge",
            msg(&|m| m["msgid"] = json!(u64::MAX)),
            400,
            "msgid",
        ),
        (
            "msgid text",
            msg(&|m| m["msgid"] = json!("abc")),
            400,
            "msgid",
        ),
        (
            "ctime text",
            msg(&|m| m["msg_ctime"] = json!("yesterday")),
            400,
            "msg_ctime",
        ),
        (
            "ctime negative",
            msg(&|m| m["msg_ctime"] = json!(-5)),
            400,
            "msg_ctime",
        ),
        (
            "ctime future",
            msg(&|m| m["msg_ctime"] = json!(T0 + 3_600_000)),
            400,
            "future",
        ),
        (
            "msg_level 2",
            msg(&|m| m["msg_level"] = json!(2)),
            400,
            "msg_level",
        ),
        (
            "deep nesting",
            format!(
                "{{\"event\":\"message\",\"msg_body\":{}{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            ),
            400,
            "line 1",
        ),
        (
            "event as an array",
            format!("[[{}]]", vec!["\"message\""; 21].join(",")),
            400,
            "index 0: an event must be a JSON object",
        ),
        (
            "msgid with a sign",
            msg(&|m| m["msgid"] = json!("+5")),
            400,
            "msgid",
        ),
        (
            "msgid with a leading zero",
            msg(&|m| m["msgid"] = json!("007")),
            400,
            "msgid",
        ),
        (
            "no-break space before an event",
            format!("\u{a0}{}", msg(&|_| {})),
            400,
            "line 1",
        ),
        (
            "lone surrogate in msg_body",
            msg(&|m| m["msg_body"] = json!({"text": "LONE"})).replace("LONE", "\\ud800"),
            400,
            "surrogate",
        ),
        (
            "reversed surrogates in msg_body",
            msg(&|m| m["msg_body"] = json!({"text": "LONE"})).replace("LONE", "\\ude00\\ud83d"),
            400,
            "surrogate",
        ),
        (
            "msg_body nested too deep",
            msg(&|m| m["msg_body"] = json!({"a": "DEEP"}))
                .replace("\"DEEP\"", &("[".repeat(64) + &"]".repeat(64))),
            400,
            "64 levels",
        ),
        (
            "invalid utf-8",
            String::from_utf8_lossy(b"{\"event\":\"user_login\",\"username\":\"\xff\"}")
                .into_owned(),
            200,
            "",
        ),
    ];
    for (name, body, status, says) in ingest_cases {
        if status == 200 {
            continue; // lossy conversion made it valid; raw invalid bytes are tested below
        }
        let mut c = case(name, "/ingest/v1/events", status, 899003, says);
        c.method = "POST";
        c.body = Some(body);
        cases.push(c);
    }

    for c in &cases {
        let url = format!("{}{}", s.url, c.path);
        let mut req = match c.method {
            "POST" => s.http.post(&url).body(c.body.clone().unwrap_or_default()),
            _ => s.http.get(&url),
        };
        req = match &c.auth {
            Some(h) if h.is_empty() => req,
            Some(h) => req.header("authorization", h),
            None => req.header("authorization", s.app.header()),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let www = r.headers().get("www-authenticate").cloned();
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: body is not JSON: {text}", c.name));
        assert_eq!(status, c.status, "{}: {v}", c.name);
        assert_eq!(v["error"]["code"].as_u64(), Some(c.code), "{}: {v}", c.name);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(c.says),
            "{}: {message:?} should mention {:?}",
            c.name,
            c.says
        );
        if c.code == 899007 {
            assert_eq!(www.unwrap(), "Basic realm=\"imreport\"", "{}", c.name);
        }
    }

    // Raw invalid UTF-8 in a body.
    let r = s
        .http
        .post(format!("{}/ingest/v1/events", s.url))
        .header("authorization", s.app.header())
        .body(b"{\"event\":\"user_login\",\"username\":\"\xff\"}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // None of it changed anything: still the three messages, and msgid 77 was never stored.
    let (total, msgs) = s
        .walk(
            &s.app,
            "/v2/messages",
            100,
            &sh(T0 - 2 * HOUR),
            &sh(T0 + 1000),
        )
        .await;
    assert_eq!(total, 3);
    assert!(msgs.iter().all(|m| m["msgid"] != 77));
}

async fn health_needs_no_auth(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    for path in ["/healthz", "/readyz"] {
        let r = s.http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

crate::conformance::on_every_backend! {
    async: bad_inputs_get_their_status_and_code, health_needs_no_auth;
    sync: ;
}
