//! The official JMessage server SDKs' requests, byte for byte as captured on the wire
//! (`shared/reference/sdk-requests.md`), over real sockets: each gets the answer a well-formed
//! request gets, on keep-alive connections that mix them with ingest requests.

use crate::support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive connection, speaking HTTP/1.1 by hand.
struct Raw(BufReader<TcpStream>);

impl Raw {
    async fn open(s: &TestServer) -> Raw {
        Raw(BufReader::new(TcpStream::connect(s.addr()).await.unwrap()))
    }

    /// Sends `request` exactly; returns the status and the JSON body of the answer.
    async fn exchange(&mut self, request: &[u8]) -> (u16, Value) {
        self.0.get_mut().write_all(request).await.unwrap();
        let mut status_line = String::new();
        self.0.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no answer to {}", String::from_utf8_lossy(request)))
            .parse()
            .unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await.unwrap();
        let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, v)
    }
}

/// A captured request with this test's credentials, host and times filled in.
fn request(template: &str, s: &TestServer) -> Vec<u8> {
    let auth = s.app.header();
    let host = s.addr();
    let mut out = String::new();
    for line in template.trim().lines() {
        let line = line
            .replace("Basic <base64 appKey:masterSecret>", &auth)
            .replace("127.0.0.1:18180", host);
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

const JAVA_HEADERS: &str = "User-Agent: JPush-API-Java-Client
Accept-Charset: UTF-8
Charset: UTF-8
Authorization: Basic <base64 appKey:masterSecret>
Content-Type: application/json
Cache-Control: no-cache
Pragma: no-cache
Host: 127.0.0.1:18180
Accept: text/html, image/gif, image/jpeg, */*; q=0.2
Connection: keep-alive";

const PHP_HEADERS: &str = "Host: 127.0.0.1:18180
Authorization: Basic <base64 appKey:masterSecret>
User-Agent: JMessage-Api-PHP-Client
Accept: */*
Content-Type: application/json
Connection: Keep-Alive";

const PYTHON_HEADERS: &str = "Host: 127.0.0.1:18180
User-Agent: python-requests/2.34.2
Accept-Encoding: gzip, deflate
Accept: */*
Connection: keep-alive
Authorization: Basic <base64 appKey:masterSecret>";

const CSHARP_HEADERS: &str = "Accept: application/json
Authorization: Basic <base64 appKey:masterSecret>
Host: 127.0.0.1:18180";

/// A time as the SDKs send it in a query (`+` for the space, `%3A` for colons).
fn sdk_time(ms: i64) -> String {
    sh(ms).replace(' ', "+").replace(':', "%3A")
}

async fn server_with_traffic() -> TestServer {
    let s = TestServer::start().await;
    let mut evs = vec![json!({"event": "user_registered", "username": "alice", "time": T0 - DAY})];
    for i in 0..120u64 {
        let t = T0 - 2 * HOUR + (i as i64) * 60_000;
        let kind = if i % 3 == 0 { "group" } else { "single" };
        evs.push(text_message(
            i + 1,
            t,
            kind,
            if kind == "group" { "g1" } else { "bob" },
            "alice",
        ));
    }
    s.ingest_ok(&evs).await;
    s
}

#[tokio::test]
async fn every_official_sdk_request_gets_the_answer_a_well_formed_one_gets() {
    let s = server_with_traffic().await;
    let (b, e) = (T0 - 3 * HOUR, T0);
    let day = &sh(T0)[..10];
    let hour = &sh(T0 - 2 * HOUR)[..13];
    let first = format!(
        "/v2/messages?count=50&begin_time={}&end_time={}",
        sdk_time(b),
        sdk_time(e)
    );
    let python_first = format!(
        "/v2/messages?begin_time={}&end_time={}&count=50",
        sdk_time(b),
        sdk_time(e)
    );
    let users = format!("/v2/statistic/users?time_unit=DAY&start={day}&duration=3");
    let hour_raw = format!("/v2/statistic/messages?time_unit=HOUR&start={hour}&duration=3");
    let hour_plus = hour_raw.replace(' ', "+");
    // (SDK, headers, its request targets for: first page, statistics, HOUR statistics)
    let sdks = [
        (
            "Java",
            JAVA_HEADERS,
            first.clone(),
            users.clone(),
            hour_raw.clone(),
        ),
        (
            "PHP",
            PHP_HEADERS,
            first.clone(),
            users.replace("/v2/", "/v2//"),
            hour_plus.replace("/v2/", "/v2//"),
        ),
        (
            "Python",
            PYTHON_HEADERS,
            python_first,
            users.clone(),
            hour_plus.clone(),
        ),
        (
            "C#",
            CSHARP_HEADERS,
            first.clone(),
            users.clone(),
            hour_plus.clone(),
        ),
    ];
    // What well-formed requests get.
    let (_, want_first) = s.get(&first).await;
    let (_, want_users) = s.get(&users).await;
    let (status, want_hours) = s.get(&hour_plus).await;
    assert_eq!(status, 200, "{want_hours}");
    assert_eq!(want_first["total"], 120);
    assert_eq!(want_hours["send_msg_stat"].as_array().unwrap().len(), 3);
    let want_second = {
        let c = want_first["cursor"].as_str().unwrap();
        s.get(&format!("/v2/messages?cursor={c}")).await.1
    };
    for (sdk, headers, first_target, users_target, hour_target) in sdks {
        let mut conn = Raw::open(&s).await;
        let req = |target: &str| request(&format!("GET {target} HTTP/1.1\n{headers}"), &s);
        let (status, page) = conn.exchange(&req(&first_target)).await;
        assert_eq!(
            (status, page["total"].clone()),
            (200, want_first["total"].clone()),
            "{sdk}"
        );
        assert_eq!(page["messages"], want_first["messages"], "{sdk}");
        // The cursor as it came, never re-encoded.
        let cursor = page["cursor"].as_str().unwrap();
        let (status, next) = conn
            .exchange(&req(&format!("/v2/messages?cursor={cursor}")))
            .await;
        assert_eq!(status, 200, "{sdk}: {next}");
        assert_eq!(next["messages"], want_second["messages"], "{sdk}");
        let (status, stats) = conn.exchange(&req(&users_target)).await;
        assert_eq!((status, &stats), (200, &want_users), "{sdk}");
        if sdk != "C#" {
            // (The C# SDK's capture has no HOUR request.)
            let (status, hours) = conn.exchange(&req(&hour_target)).await;
            assert_eq!(
                (status, &hours),
                (200, &want_hours),
                "{sdk} HOUR: {hour_target}"
            );
        }
    }
}

#[tokio::test]
async fn raw_spaces_and_ingest_posts_mix_on_one_connection() {
    let s = TestServer::start().await;
    let hour = &sh(T0 - HOUR)[..13];
    let mut conn = Raw::open(&s).await;
    let get = |target: &str| {
        request(
            &format!(
                "GET {target} HTTP/1.1\nHost: 127.0.0.1:18180\nAuthorization: Basic <base64 appKey:masterSecret>"
            ),
            &s,
        )
    };
    // A body that looks like a request line with raw spaces must reach ingest untouched.
    let evs = [
        json!({"event": "message", "msgid": 1, "msg_ctime": T0 - HOUR, "target_type": "single",
               "target_id": "bob", "from_id": "alice", "msg_type": "text",
               "msg_body": {"text": "GET /v2/messages?x=a b HTTP/1.1\r\n\r\n"}}),
        text_message(2, T0 - HOUR + 1, "group", "g 1", "alice"),
    ];
    let body = ndjson(&evs);
    let post = |body: &str| {
        let mut r = request(
            &format!(
                "POST /ingest/v1/events HTTP/1.1\nHost: 127.0.0.1:18180\nAuthorization: Basic <base64 appKey:masterSecret>\nContent-Type: application/x-ndjson\nContent-Length: {}",
                body.len()
            ),
            &s,
        );
        r.extend_from_slice(body.as_bytes());
        r
    };
    let hours = format!("/v2/statistic/messages?time_unit=HOUR&start={hour}&duration=1");
    let (status, before) = conn.exchange(&get(&hours)).await;
    assert_eq!((status, super_total(&before)), (200, 0), "{before}");
    let (status, out) = conn.exchange(&post(&body)).await;
    assert_eq!((status, out["accepted"].as_u64()), (200, Some(2)), "{out}");
    let (status, after) = conn.exchange(&get(&hours)).await;
    assert_eq!((status, super_total(&after)), (200, 2), "{after}");
    // A chunked body, then a history request with raw spaces in both times.
    let chunked = {
        let mut r = request(
            "POST /ingest/v1/events HTTP/1.1\nHost: 127.0.0.1:18180\nAuthorization: Basic <base64 appKey:masterSecret>\nTransfer-Encoding: chunked",
            &s,
        );
        let line = ndjson(&[text_message(3, T0 - HOUR + 2, "single", "bob", "alice")]);
        let (a, b) = line.split_at(10);
        r.extend_from_slice(
            format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len()).as_bytes(),
        );
        r
    };
    let (status, out) = conn.exchange(&chunked).await;
    assert_eq!((status, out["accepted"].as_u64()), (200, Some(1)), "{out}");
    let history = format!(
        "/v2/messages?count=10&begin_time={}&end_time={}",
        sh(T0 - 2 * HOUR),
        sh(T0)
    );
    assert!(history.contains(' '));
    let (status, page) = conn.exchange(&get(&history)).await;
    assert_eq!((status, page["total"].as_u64()), (200, Some(3)), "{page}");
    assert_eq!(
        page["messages"][0]["msg_body"]["text"],
        "GET /v2/messages?x=a b HTTP/1.1\r\n\r\n"
    );
    let (status, group) = conn
        .exchange(&get(&format!(
            "/v2/groups/g%201/messages?count=10&begin_time={}&end_time={}",
            sh(T0 - 2 * HOUR),
            sh(T0)
        )))
        .await;
    assert_eq!((status, group["total"].as_u64()), (200, Some(1)), "{group}");
}

/// single + group + chatroom of a messages answer's only bucket.
fn super_total(v: &Value) -> u64 {
    bucket_total(&v["send_msg_stat"][0])
}

#[tokio::test]
async fn what_the_http_layer_refuses_is_answered_in_json() {
    let s = TestServer::start().await;
    for (request, status) in [
        (
            &b"GET /v2/messages HTTP/1.1\r\nBad Header Line\r\n\r\n"[..],
            400,
        ),
        (
            b"GET /v2/messages HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
            400,
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ] {
        let mut c = TcpStream::connect(s.addr()).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.read_to_end(&mut answer),
        )
        .await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["error"]["code"], 899003, "{text}");
    }
}
