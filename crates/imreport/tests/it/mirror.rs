//! `imreport mirror` (the real binary) from one real imreport server into another, through a
//! proxy that makes the source hard: `429`s, cursors that expire mid-window, slow pages for a
//! `kill -9` to land in. Each mirror must equal its source: every message, walked and compared.

use crate::support::*;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

const DAY: i64 = 86_400_000;
const SOURCE_TTL_SECS: u64 = 5;

/// What the proxy does to the source's traffic, and what it saw.
#[derive(Default)]
struct Faults {
    /// Every n-th request is answered `429` with `Retry-After: 0` (0: never).
    every_429: u64,
    /// Every n-th next-page request arrives after its cursor expired (0: never).
    expire_every: u64,
    /// Added to every request.
    delay: Duration,
    requests: AtomicU64,
    cursor_requests: AtomicU64,
    injected_429: AtomicU64,
    refused_cursors: AtomicU64,
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    clock: imreport_domain::Clock,
    faults: Faults,
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let f = &p.faults;
    let n = f.requests.fetch_add(1, SeqCst) + 1;
    if f.every_429 > 0 && n % f.every_429 == 0 {
        f.injected_429.fetch_add(1, SeqCst);
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            r#"{"error":{"code":899030,"message":"slow down"}}"#,
        )
            .into_response();
    }
    let pq = req.uri().path_and_query().unwrap().to_string();
    let is_cursor = pq.contains("cursor=");
    if is_cursor {
        let c = f.cursor_requests.fetch_add(1, SeqCst) + 1;
        if f.expire_every > 0 && c % f.expire_every == 0 {
            // The source's clock passes the cursor's TTL while the request is on its way.
            p.clock
                .set(p.clock.now_ms() + (SOURCE_TTL_SECS as i64 + 1) * 1000);
        }
    }
    tokio::time::sleep(f.delay).await;
    let mut fwd = p.http.get(format!("{}{pq}", p.upstream));
    if let Some(auth) = req.headers().get("authorization") {
        fwd = fwd.header("authorization", auth.clone());
    }
    let r = fwd.send().await.unwrap();
    let status = r.status();
    if is_cursor && status == 400 {
        f.refused_cursors.fetch_add(1, SeqCst);
    }
    let body = r.bytes().await.unwrap();
    (
        axum::http::StatusCode::from_u16(status.as_u16()).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

async fn start_proxy(source: &TestServer, faults: Faults) -> (String, Arc<Proxy>) {
    let proxy = Arc::new(Proxy {
        upstream: source.url.clone(),
        http: reqwest::Client::new(),
        clock: source.clock.clone(),
        faults,
    });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, proxy)
}

/// Ten days of traffic before T0: every kind of target, bodies with quotes and non-ASCII, and
/// bursts of messages sharing one millisecond.
async fn fill(source: &TestServer) -> (i64, i64) {
    let begin = T0 - 10 * DAY;
    let mut events = Vec::new();
    for i in 0..2400u64 {
        let t = begin + (i as i64 * 10 * DAY / 2400);
        // Three bursts of 60 in one millisecond.
        let t = if i % 800 < 60 {
            begin + (i / 800) as i64 * 3 * DAY + 777
        } else {
            t
        };
        let from = format!("u{}", i % 37);
        events.push(match i % 5 {
            0 => text_message(i + 1, t, "single", &format!("u{}", i % 11), &from),
            1 => text_message(i + 1, t, "group", &format!("g{}", i % 7), &from),
            2 => json!({"event": "message", "msgid": i + 1, "msg_ctime": t, "target_type": "chatroom",
                        "target_id": 10055 + (i % 3), "from_id": from, "msg_type": "custom",
                        "msg_body": {"q": "\"é\"\n<b>", "n": [i, {"x": null}]}}),
            3 => json!({"event": "message", "msgid": i + 1, "msg_ctime": t, "target_type": "group",
                        "target_id": "g1", "from_id": from, "from_type": "admin", "msg_type": "image",
                        "msg_body": {"media_id": format!("qiniu/image/{i}"), "width": 640, "fsize": 1.5e3}}),
            _ => text_message(i + 1, t, "single", &from, "zoë"),
        });
    }
    for chunk in events.chunks(500) {
        source.ingest_ok(chunk).await;
    }
    (begin - 3_600_000, T0)
}

/// Every message of the app from `begin` to `end`, walked in 7-day windows.
async fn everything(server: &TestServer, creds: &Creds, begin: i64, end: i64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut b = begin;
    while b <= end {
        let e = (b + 7 * DAY - 1000).min(end);
        let (total, msgs) = server
            .walk(creds, "/v2/messages", 1000, &sh(b), &sh(e))
            .await;
        assert_eq!(total as usize, msgs.len());
        all.extend(msgs);
        b = e + 1000;
    }
    all
}

fn mirror_cmd(
    source: &str,
    from: &Creds,
    dest: &TestServer,
    state: &std::path::Path,
) -> Vec<String> {
    [
        "mirror",
        "--source",
        source,
        "--source-app-key",
        &from.key,
        "--source-master-secret",
        &from.secret,
        "--url",
        &dest.url,
        "--app-key",
        &dest.app.key,
        "--master-secret",
        &dest.app.secret,
        "--state",
        state.to_str().unwrap(),
        "--quiet",
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn source_server() -> TestServer {
    TestServer::start_with(Backend::Embedded, |s| s.cursor_ttl_secs = SOURCE_TTL_SECS).await
}

async fn run_binary(args: Vec<String>) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imreport"))
        .args(&args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_through_429s_and_expiring_cursors_equals_its_source() {
    let source = source_server().await;
    let dest = TestServer::start().await;
    let (begin, end) = fill(&source).await;
    let faults = Faults {
        every_429: 4,
        expire_every: 6,
        ..Faults::default()
    };
    let (url, proxy) = start_proxy(&source, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut args = mirror_cmd(&url, &source.app, &dest, &state);
    args.extend(["--since", &sh(begin), "--until", &sh(end), "--count", "25"].map(str::to_owned));
    let (ok, err) = run_binary(args.clone()).await;
    assert!(ok, "{err}");
    let f = &proxy.faults;
    assert!(f.injected_429.load(SeqCst) >= 10, "the 429s were injected");
    assert!(
        f.refused_cursors.load(SeqCst) >= 3,
        "cursors expired mid-window"
    );
    assert!(err.contains("2400 stored"), "{err}");
    let want = everything(&source, &source.app, begin, end).await;
    assert_eq!(want.len(), 2400);
    assert_eq!(everything(&dest, &dest.app, begin, end).await, want);
    // The statistics of messages agree too (those of users and groups need their lifecycle,
    // which a history does not carry).
    let stats = format!(
        "/v2/statistic/messages?time_unit=DAY&start={}&duration=12",
        &sh(begin)[..10]
    );
    let stats = stats.as_str();
    assert_eq!(source.get(stats).await, dest.get(stats).await);

    // Run again over the same range: the state says it is done; a new state copies again and
    // stores nothing twice.
    std::fs::remove_file(&state).unwrap();
    let (ok, err) = run_binary(args).await;
    assert!(ok && err.contains(": 0 stored, "), "{err}");
    assert_eq!(everything(&dest, &dest.app, begin, end).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_killed_mid_copy_resumes_where_it_stopped() {
    let source = source_server().await;
    let dest = TestServer::start().await;
    let (begin, end) = fill(&source).await;
    let faults = Faults {
        delay: Duration::from_millis(15),
        ..Faults::default()
    };
    let (url, _proxy) = start_proxy(&source, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut args = mirror_cmd(&url, &source.app, &dest, &state);
    args.extend(["--since", &sh(begin), "--until", &sh(end), "--count", "10"].map(str::to_owned));
    let position = || -> Option<i64> {
        let s: Value = serde_json::from_slice(&std::fs::read(&state).ok()?).ok()?;
        s["next_ms"].as_i64()
    };
    let mut last = None;
    for _ in 0..3 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_imreport"))
            .args(&args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed once it has moved on from where it started.
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = position();
            if now.is_some() && now != last {
                last = now;
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the mirror ended early"
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        child.kill().await.unwrap();
        assert!(position().unwrap() < end, "killed before it finished");
    }
    let (ok, err) = run_binary(args).await;
    assert!(ok && err.contains("mirror: resuming from"), "{err}");
    let read: u64 = err
        .split("mirror: ")
        .find_map(|s| s.split(" messages read").next()?.parse().ok())
        .unwrap();
    assert!(
        read < 2400,
        "the last run went on from where the killed one stopped: {err}"
    );
    let want = everything(&source, &source.app, begin, end).await;
    assert_eq!(everything(&dest, &dest.app, begin, end).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_mirror_picks_up_new_and_late_messages_and_stops_on_sigterm() {
    let source = source_server().await;
    let dest = TestServer::start().await;
    // The source lives in the present for this one: the mirror follows the real clock.
    let now = jiff::Timestamp::now().as_millisecond();
    source.clock.set(now);
    dest.clock.set(now);
    let batch = |first: u64, t: i64| -> Vec<Value> {
        (first..first + 50)
            .map(|i| text_message(i, t + i as i64, "group", "g1", &format!("u{}", i % 5)))
            .collect()
    };
    source.ingest_ok(&batch(1, now - 60_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut args = mirror_cmd(&source.url, &source.app, &dest, &state);
    args.extend(
        [
            "--since",
            &sh(now - 3_600_000),
            "--every",
            "1",
            "--overlap",
            "30",
        ]
        .map(str::to_owned),
    );
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_imreport"))
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (b, e) = (sh(now - 3_600_000), sh(now + 3_600_000));
    let until_dest_has = |n: usize| {
        let (dest, b, e) = (&dest, b.clone(), e.clone());
        async move {
            for _ in 0..300 {
                let (total, _) = dest.walk(&dest.app, "/v2/messages", 1000, &b, &e).await;
                if total as usize >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the mirror did not bring {n} messages over");
        }
    };
    until_dest_has(50).await;
    // New messages, then one stored late: its msg_ctime is already behind the mirror, within
    // the overlap.
    let t = jiff::Timestamp::now().as_millisecond();
    source.clock.set(t);
    source.ingest_ok(&batch(100, t - 1000)).await;
    until_dest_has(100).await;
    source.ingest_ok(&batch(200, t - 20_000)).await;
    until_dest_has(150).await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SIGTERM ends it cleanly: {err}");
    // The summary counts what the destination acknowledged; a batch in flight at the signal
    // may be stored without being counted (the next run reads it again as a duplicate).
    assert!(
        err.contains("mirror: ") && err.contains(" stored, "),
        "{err}"
    );
    let (_, want) = source.walk(&source.app, "/v2/messages", 1000, &b, &e).await;
    let (_, got) = dest.walk(&dest.app, "/v2/messages", 1000, &b, &e).await;
    assert_eq!(got, want);
}
