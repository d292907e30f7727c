//! Connections that only hold resources: silent and idle sockets, a flood of them past the cap,
//! responses nobody reads, and ingest bodies that trickle in. Each test asserts what the server
//! does (closes, refuses, answers others), with generous bounds on when.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or resets it); `false` if it is still open
/// after `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn healthz_status(s: &TestServer) -> u16 {
    // A fresh connection each time, as a load balancer's probe makes.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_the_cap_keeps_healthz_answering() {
    let s = TestServer::start_with(Backend::Embedded, |s| {
        s.header_read_timeout_secs = 0.5;
        s.idle_timeout_secs = 0.5;
        s.max_connections = 20;
    })
    .await;
    let within = Duration::from_secs(10);

    // Silent from the start, only the HTTP/2 preface, and idle after one keep-alive request.
    let mut silent = TcpStream::connect(s.addr()).await.unwrap();
    let mut preface = TcpStream::connect(s.addr()).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(s.addr()).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    for (name, stream) in [
        ("silent", &mut silent),
        ("HTTP/2 preface only", &mut preface),
        ("idle keep-alive", &mut idle),
    ] {
        assert!(
            closed_by_server(stream, within).await,
            "a {name} connection must be closed"
        );
    }

    // Five times the cap in silent sockets: each new one makes the one idle longest go, so a
    // probe still gets in, and the server never holds more than the cap.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    for _ in 0..5 {
        assert_eq!(healthz_status(&s).await, 200, "/healthz during the flood");
    }
    assert!(s.conns.open() <= 20, "{} connections open", s.conns.open());
    let mut closed = 0;
    for stream in &mut flood {
        closed += usize::from(closed_by_server(stream, within).await);
    }
    assert_eq!(closed, 100, "every silent socket is closed in the end");
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused_with_503() {
    let s = TestServer::start_with(Backend::Embedded, |s| {
        s.max_connections = 4;
        s.body_grace_secs = 60.0;
    })
    .await;
    // Four ingest requests whose bodies are still coming: four requests in progress.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(s.addr()).await.unwrap();
        let head = format!(
            "POST /ingest/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 1000\r\n\r\n[",
            s.app.header()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        busy.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(s.addr()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("899030") && text.contains("Retry-After: 1"),
        "{text}"
    );
    assert_eq!(s.conns.refused(), 1);
    assert_eq!(s.conns.open(), 4);
}

/// A socket whose receive buffer is tiny, so an unread response stays in the server.
async fn reluctant_reader(addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

#[tokio::test]
async fn unread_pages_stay_within_their_budget_and_are_dropped() {
    const BUDGET: u64 = 40 << 20;
    let s = TestServer::start_with(Backend::Embedded, |s| {
        s.response_buffer_mb = BUDGET >> 20;
        s.page_concurrency = 2;
        s.busy_wait_secs = 1.0;
        // Longer than any wait for a share, so only refusals free budget before the drops.
        s.send_timeout_secs = 4.0;
    })
    .await;
    let b = s.create_app().await;
    // 1,000 messages of 16 KiB to one user: a count=1000 page of ~16.5 MB.
    let text = "x".repeat(16_000);
    for half in 0..2u64 {
        let evs: Vec<Value> = (0..500u64)
            .map(|i| {
                let id = half * 500 + i + 1;
                json!({"event": "message", "msgid": id, "msg_ctime": T0 - 10_000 + id as i64,
                       "target_type": "single", "target_id": "big", "from_id": "x",
                       "msg_type": "text", "msg_body": {"text": text}})
            })
            .collect();
        s.ingest_ok(&evs).await;
    }
    s.ingest_as(&b, ndjson(&[text_message(1, T0 - 100, "single", "u", "v")]))
        .await;
    let window = format!(
        "begin_time={}&end_time={}",
        enc(&sh(T0 - 20_000)),
        enc(&sh(T0))
    );

    // Eight requests for the big page whose answers are never read.
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut c = reluctant_reader(s.addr()).await;
        let req = format!(
            "GET /v2/users/big/messages?count=1000&{window} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
            s.app.header()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        readers.push(c);
    }
    // Those beyond the budget are refused once their wait is over; the rest hold their pages.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = s.state.response_bytes.used();
    assert!(
        held > 16 << 20 && held <= BUDGET,
        "pages held: {held} bytes of a {BUDGET}-byte budget"
    );
    // Another app is served meanwhile: its fair share is untouched.
    let (status, page) = s
        .get_as(&b, &format!("/v2/messages?count=10&{window}"))
        .await;
    assert_eq!((status, page["total"].as_u64()), (200, Some(1)), "{page}");

    let mut refused = 0;
    for c in &mut readers {
        let mut head = [0u8; 12];
        c.read_exact(&mut head).await.unwrap();
        refused += usize::from(&head == b"HTTP/1.1 503");
    }
    assert!(refused >= 6, "only {refused} of 8 refused");
    // Pages nobody reads are dropped with their connections, and their memory given back.
    for c in &mut readers {
        assert!(closed_by_server(c, Duration::from_secs(20)).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.state.response_bytes.used() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "pages still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_app_trickling_bodies_cannot_block_another_apps_ingest() {
    let s = TestServer::start_with(Backend::Embedded, |s| {
        s.ingest_concurrency = 4;
        s.min_body_rate = 1024;
        s.body_grace_secs = 0.5;
    })
    .await;
    let b = s.create_app().await;
    // App B takes every ingest slot with bodies that arrive a byte at a time.
    let mut trickles = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(s.addr()).await.unwrap();
        let head = format!(
            "POST /ingest/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 100000\r\n\r\n[",
            b.header()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        trickles.push(tokio::spawn(async move {
            let mut answer = Vec::new();
            for _ in 0..30 {
                if c.write_all(b" ").await.is_err() {
                    break;
                }
                let mut chunk = [0u8; 4096];
                match tokio::time::timeout(Duration::from_millis(300), c.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
                    Err(_) => {}
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // App A's ingest still lands.
    let (status, body) = s
        .ingest(ndjson(&[text_message(1, T0 - 10, "single", "a", "b")]))
        .await;
    assert_eq!(status, 200, "{body}");
    for t in trickles {
        let answer = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("slower than 1024 bytes per second"),
            "{answer}"
        );
    }
}
