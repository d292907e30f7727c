//! Overload, rate limits, a full disk, slow and oversized requests, and tenant isolation.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_full_ingest_queue_answers_503_with_retry_after() {
    let s =
        std::sync::Arc::new(TestServer::start_with(Backend::Embedded, |s| s.queue_depth = 1).await);
    let release = s.embedded.as_ref().unwrap().stall_writer();
    let mut pending = Vec::new();
    let mut refused = None;
    for i in 0..6u64 {
        let s2 = s.clone();
        let body = ndjson(&[text_message(i + 1, T0 - 10, "single", "a", "b")]);
        let task = tokio::spawn(async move {
            let r = s2
                .http
                .post(format!("{}/ingest/v1/events", s2.url))
                .header("authorization", s2.app.header())
                .body(body)
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if task.is_finished() {
            refused = Some(task.await.unwrap());
            break;
        }
        pending.push(task);
    }
    let (status, retry, body) = refused.expect("a request is refused while the queue is full");
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (503, Some(899030)),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    drop(release);
    for t in pending {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_jmessage_headers() {
    let s = TestServer::start_with(Backend::Embedded, |s| {
        s.rate_limit = 3;
        s.rate_limit_window_secs = 60;
    })
    .await;
    let other = s.create_app().await;
    let q = format!(
        "/v2/messages?count=1&begin_time={}&end_time={}",
        enc(&sh(T0 - 1000)),
        enc(&sh(T0))
    );
    let get = |creds: &Creds| {
        s.http
            .get(format!("{}{q}", s.url))
            .header("authorization", creds.header())
            .send()
    };
    for remaining in [2, 1, 0] {
        let r = get(&s.app).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-rate-limit-limit"], "3");
        assert_eq!(
            r.headers()["x-rate-limit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let r = get(&s.app).await.unwrap();
    assert_eq!(r.status(), 429);
    let reset: u64 = r.headers()["x-rate-limit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset));
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-rate-limit-remaining"], "0");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 899030);
    // Another app has its own quota; a new window restores this one.
    assert_eq!(get(&other).await.unwrap().status(), 200);
    s.clock.set(T0 + 60_000);
    assert_eq!(get(&s.app).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_full_disk_refuses_ingest_and_resumes_by_itself() {
    let s = TestServer::start().await;
    s.ingest_ok(&[text_message(1, T0 - 10, "single", "a", "b")])
        .await;
    s.embedded
        .as_ref()
        .unwrap()
        .set_min_free_disk_bytes(u64::MAX);
    let (status, body) = s
        .ingest(ndjson(&[text_message(2, T0 - 10, "single", "a", "b")]))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (503, Some(899030)),
        "{body}"
    );
    let ready = s
        .http
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // Reads go on.
    let (total, _) = s
        .walk(&s.app, "/v2/messages", 10, &sh(T0 - 1000), &sh(T0))
        .await;
    assert_eq!(total, 1);
    s.embedded.as_ref().unwrap().set_min_free_disk_bytes(0);
    let body = s
        .ingest_ok(&[text_message(2, T0 - 10, "single", "a", "b")])
        .await;
    assert_eq!(body["accepted"], 1);
    assert_eq!(
        s.walk(&s.app, "/v2/messages", 10, &sh(T0 - 1000), &sh(T0))
            .await
            .0,
        2
    );
}

#[tokio::test]
async fn slow_and_oversized_requests_are_cut_off() {
    let s = TestServer::start_with(Backend::Embedded, |s| {
        s.header_read_timeout_secs = 0.3;
        s.body_read_timeout_secs = 0.3;
    })
    .await;
    let addr = s.url.strip_prefix("http://").unwrap().to_owned();

    // Headers that never finish: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server must close a connection whose headers never finish"
    );

    // A body that never finishes: 408 with the JSON error.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /ingest/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 1000\r\n\r\n{{\"event\"",
        s.app.header()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("899003"), "{text}");

    // Oversized headers: 431 (or a closed connection), never a 500.
    let r = s
        .http
        .get(format!("{}/healthz", s.url))
        .header("x-big", "a".repeat(200_000))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 431);
    }
    // Header fields: up to the documented 128 pass, more get 431.
    for (n, want) in [(120, 200), (129, 431)] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let fields: String = (0..n).map(|i| format!("x-h{i}: v\r\n")).collect();
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{fields}Connection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want}")),
            "{n} headers: {text}"
        );
    }
    // The server is fine afterwards.
    assert_eq!(
        s.http
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn no_app_reads_or_counts_another_apps_data() {
    let s = TestServer::start().await;
    let b = s.create_app().await;
    let t = T0 - HOUR;
    let evs: Vec<Value> = vec![
        json!({"event": "user_registered", "username": "alice", "time": t}),
        json!({"event": "group_created", "gid": "g1", "time": t}),
        json!({"event": "user_login", "username": "alice", "time": t}),
        text_message(1, t, "single", "bob", "alice"),
        text_message(2, t, "group", "g1", "alice"),
        text_message(3, t, "chatroom", "r1", "alice"),
        text_message(4, t, "single", "alice", "bob"),
    ];
    s.ingest_ok(&evs).await;
    let (bt, et) = (enc(&sh(t - 1000)), enc(&sh(t + 1000)));
    let day = &sh(t)[..10];
    let hour = &sh(t)[..13];
    let paths = [
        "/v2/messages".to_owned(),
        "/v2/users/alice/messages".into(),
        "/v2/users/bob/messages".into(),
        "/v2/groups/g1/messages".into(),
        "/v2/chatrooms/r1/messages".into(),
    ];
    for p in &paths {
        let q = format!("{p}?count=1&begin_time={bt}&end_time={et}");
        let (_, mine) = s.get(&q).await;
        assert!(mine["total"].as_u64().unwrap() >= 1, "{p}: {mine}");
        let (status, theirs) = s.get_as(&b, &q).await;
        assert_eq!(status, 200);
        assert_eq!(theirs["total"], 0, "{p}: app B sees app A's messages");
        // A's cursor, presented by B, is refused.
        if let Some(c) = mine.get("cursor").and_then(Value::as_str) {
            let (status, err) = s.get_as(&b, &format!("{p}?cursor={c}")).await;
            assert_eq!(status, 400);
            assert!(
                err["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("another app")
            );
        }
    }
    for q in [
        format!("/v2/statistic/users?time_unit=DAY&start={day}&duration=1"),
        format!("/v2/statistic/groups?time_unit=DAY&start={day}&duration=1"),
        format!("/v2/statistic/messages?time_unit=DAY&start={day}&duration=1"),
        format!(
            "/v2/statistic/messages?time_unit=HOUR&start={}&duration=1",
            enc(hour)
        ),
        format!(
            "/v2/statistic/messages?time_unit=MONTH&start={}&duration=1",
            &day[..7]
        ),
        format!("/v2/statistic/busiest?date={day}"),
    ] {
        let (_, mine) = s.get(&q).await;
        let (status, theirs) = s.get_as(&b, &q).await;
        assert_eq!(status, 200);
        assert_ne!(mine, theirs, "{q}");
        let numbers: Vec<i64> = numbers(&theirs);
        assert!(
            numbers.iter().all(|n| *n == 0),
            "{q}: app B counts app A's data: {theirs}"
        );
    }
    // The same msgids are new to app B, and lifecycle state is per app.
    let (status, body) = s.ingest_as(&b, ndjson(&evs)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"accepted": 7, "duplicates": 0, "expired": 0}));
}

fn numbers(v: &Value) -> Vec<i64> {
    match v {
        Value::Number(n) => vec![n.as_i64().unwrap()],
        Value::Array(a) => a.iter().flat_map(numbers).collect(),
        Value::Object(o) => o.values().flat_map(numbers).collect(),
        _ => vec![],
    }
}

#[tokio::test]
async fn readiness_costs_the_writer_nothing() {
    let s =
        std::sync::Arc::new(TestServer::start_with(Backend::Embedded, |s| s.queue_depth = 1).await);
    // With the writer stalled, probes still answer at once, and take no place in its queue.
    let release = s.embedded.as_ref().unwrap().stall_writer();
    let probes: Vec<_> = (0..200)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let r = s
                    .http
                    .get(format!("{}/readyz", s.url))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                r.map(|r| r.status().as_u16()).unwrap_or(0)
            })
        })
        .collect();
    for p in probes {
        assert_eq!(p.await.unwrap(), 200, "/readyz while the writer is busy");
    }
    let s2 = s.clone();
    let ingest = tokio::spawn(async move {
        s2.ingest(ndjson(&[text_message(1, T0 - 10, "single", "a", "b")]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(release);
    let (status, body) = ingest.await.unwrap();
    assert_eq!(
        status, 200,
        "the queue's one place was the ingest's: {body}"
    );
}

/// Delegates to a store, but panics in `stats_hours`.
struct PanicsInStatsHours(std::sync::Arc<dyn imreport_store::Store>);

#[async_trait::async_trait]
impl imreport_store::Store for PanicsInStatsHours {
    async fn create_app(
        &self,
        key: &str,
        name: &str,
        secret: imreport_domain::app::SecretHash,
    ) -> imreport_store::Result<imreport_domain::app::App> {
        self.0.create_app(key, name, secret).await
    }
    async fn list_apps(&self) -> imreport_store::Result<Vec<imreport_domain::app::App>> {
        self.0.list_apps().await
    }
    async fn app(&self, key: &str) -> imreport_store::Result<Option<imreport_domain::app::App>> {
        self.0.app(key).await
    }
    async fn set_secret(
        &self,
        key: &str,
        secret: imreport_domain::app::SecretHash,
    ) -> imreport_store::Result<imreport_domain::app::App> {
        self.0.set_secret(key, secret).await
    }
    async fn delete_app(&self, key: &str) -> imreport_store::Result<()> {
        self.0.delete_app(key).await
    }
    async fn ingest(
        &self,
        app: &imreport_domain::app::App,
        events: Vec<imreport_domain::event::Event>,
    ) -> imreport_store::Result<imreport_store::IngestOutcome> {
        self.0.ingest(app, events).await
    }
    async fn page(
        &self,
        app: &imreport_domain::app::App,
        scope: &imreport_domain::scope::Scope,
        req: imreport_store::PageRequest,
    ) -> imreport_store::Result<imreport_store::Page> {
        self.0.page(app, scope, req).await
    }
    async fn stats_days(
        &self,
        app: &imreport_domain::app::App,
        from: i64,
        to: i64,
    ) -> imreport_store::Result<imreport_store::DaysReport> {
        self.0.stats_days(app, from, to).await
    }
    async fn stats_hours(
        &self,
        _: &imreport_domain::app::App,
        _: i64,
        _: i64,
    ) -> imreport_store::Result<Vec<imreport_domain::rollup::MsgCounts>> {
        panic!("injected fault in stats_hours")
    }
    async fn busiest(
        &self,
        app: &imreport_domain::app::App,
        day: i64,
        n: usize,
    ) -> imreport_store::Result<imreport_domain::rollup::Busiest> {
        self.0.busiest(app, day, n).await
    }
    async fn backup(
        &self,
        out: tokio::sync::mpsc::Sender<imreport_store::archive::BackupItem>,
    ) -> imreport_store::Result<()> {
        self.0.backup(out).await
    }
    fn stats_retained_from(&self) -> i64 {
        self.0.stats_retained_from()
    }
    async fn enforce_retention(&self) -> imreport_store::Result<usize> {
        self.0.enforce_retention().await
    }
    async fn tidy(&self) -> imreport_store::Result<()> {
        self.0.tidy().await
    }
    async fn check_ready(&self) -> imreport_store::Result<()> {
        self.0.check_ready().await
    }
}

#[tokio::test]
async fn a_handler_that_panics_still_answers_500_with_the_json_error() {
    let s = TestServer::start_hooked(
        Backend::Embedded,
        |_| {},
        Some(|store| std::sync::Arc::new(PanicsInStatsHours(store))),
    )
    .await;
    let hour = enc(&sh(T0)[..13]);
    let (status, body) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=HOUR&start={hour}&duration=1"
        ))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (500, Some(899000)),
        "{body}"
    );
    assert!(
        !body.to_string().contains("injected"),
        "details stay in the log"
    );
    // The server goes on serving.
    let (status, _) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=DAY&start={}&duration=1",
            &sh(T0)[..10]
        ))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_admin_api_checks_its_token_before_anything_and_answers_json() {
    let s = TestServer::start().await;
    let token = "admin-test-token-0123456789abcdef";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let limits = imreport::launch::conn_limits(&test_settings(Backend::Embedded, dir.path()));
    tokio::spawn(imreport_server::conn::serve(
        listener,
        imreport_server::admin::router(s.store.clone(), token.into(), None, "Asia/Shanghai"),
        std::future::pending(),
        imreport_server::Connections::new(limits),
    ));
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, auth: bool, body: Vec<u8>| {
        let mut r = http.request(method, format!("{url}{path}")).body(body);
        if auth {
            r = r.bearer_auth(token);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
            let text = r.text().await.unwrap();
            assert!(
                ctype.starts_with("application/json"),
                "{status} {ctype}: {text}"
            );
            let v: Value = serde_json::from_str(&text).unwrap();
            (status, v["error"]["code"].as_u64())
        }
    };
    use reqwest::Method;
    let big = vec![b' '; 3 << 20];
    // (method, path, body, answer without the token, answer with it)
    type Answer = (u16, Option<u64>);
    let cases: Vec<(Method, &str, Vec<u8>, Answer, Answer)> = vec![
        (
            Method::GET,
            "/admin/v1/apps",
            vec![],
            (401, Some(899008)),
            (200, None),
        ),
        (
            Method::PUT,
            "/admin/v1/apps",
            vec![],
            (401, Some(899008)),
            (405, Some(899003)),
        ),
        (
            Method::POST,
            "/admin/v1/apps",
            big.clone(),
            (401, Some(899008)),
            (413, Some(899003)),
        ),
        (
            Method::POST,
            "/admin/v1/apps/%FF/rotate-secret",
            vec![],
            (401, Some(899008)),
            (400, Some(899003)),
        ),
        (
            Method::DELETE,
            "/admin/v1/apps/%FF",
            vec![],
            (401, Some(899008)),
            (400, Some(899003)),
        ),
        (
            Method::GET,
            "/admin/v1/nothing",
            vec![],
            (401, Some(899008)),
            (404, Some(899003)),
        ),
        (
            Method::POST,
            "/admin/v1/apps",
            b"{not json".to_vec(),
            (401, Some(899008)),
            (400, Some(899003)),
        ),
    ];
    for (method, path, body, without, with) in cases {
        assert_eq!(
            send(method.clone(), path, false, body.clone()).await,
            without,
            "{method} {path} without the token"
        );
        assert_eq!(
            send(method.clone(), path, true, body).await,
            with,
            "{method} {path} with the token"
        );
    }
    // The proof needs no token, and only its holder can give it.
    let nonce = "a-fresh-nonce-0123456789";
    let v: Value = http
        .get(format!("{url}/admin/v1/proof?nonce={nonce}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["proof"].as_str().unwrap(),
        imreport_domain::app::admin_proof(token, nonce)
    );
    assert_eq!(
        send(Method::GET, "/admin/v1/proof?nonce=short", false, vec![]).await,
        (400, Some(899003))
    );
}
