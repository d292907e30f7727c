//! The real binary's memory under hostile load, read from `/proc`: it stays within the bounds
//! the docs state, and is given back afterwards.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1024 * 1024;

/// A `VmRSS`/`VmHWM` line of a process's status, in bytes.
fn mem(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse::<u64>().unwrap() * 1024)
        .unwrap()
}

/// A data dir with one app, and its credentials.
fn data_dir_with_app(dir: &std::path::Path) -> (String, Creds) {
    let data = dir.join("data").to_str().unwrap().to_owned();
    let creds = Creds {
        key: "memorytestkey00000000000".into(),
        secret: "memorytestsecret00000000".into(),
    };
    let (ok, _, err) = imreport(&[
        "app",
        "create",
        "--data-dir",
        &data,
        "--app-key",
        &creds.key,
        "--master-secret",
        &creds.secret,
    ]);
    assert!(ok, "{err}");
    (data, creds)
}

/// Waits until the process's resident memory is at most `bound`, or fails saying what it is.
/// Freed ingest bodies come back when the blocking-pool thread that freed them exits, 10 s
/// after its last task (see `ingest::store_batch`): 30 s leaves a loaded machine room.
async fn settles_below(pid: u32, bound: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rss = mem(pid, "VmRSS");
        if rss <= bound {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: RSS {} MiB, above {} MiB",
            rss / MIB,
            bound / MIB
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn oversized_ingest_arrays_stay_within_the_documented_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (data, creds) = data_dir_with_app(dir.path());
    let (mut child, url) = spawn_server(&data, &[]);
    let pid = child.id();
    let base = mem(pid, "VmRSS");
    // 16 MiB of `[1,1,1,…]`: eight at once (every ingest slot), three rounds.
    let mut body = String::with_capacity(16 << 20);
    body.push('[');
    while body.len() < (16 << 20) - 4 {
        body.push_str("1,");
    }
    body.push_str("1]");
    let body = bytes::Bytes::from(body);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let posts: Vec<_> = (0..8)
            .map(|_| {
                let post = http
                    .post(format!("{url}/ingest/v1/events"))
                    .header("authorization", creds.header())
                    .body(body.clone());
                tokio::spawn(async move {
                    let r = post.send().await.unwrap();
                    (r.status(), r.json::<Value>().await.unwrap())
                })
            })
            .collect();
        for p in posts {
            let (status, v) = p.await.unwrap();
            assert_eq!(status, 400, "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("index 0")
            );
        }
    }
    // ingest_concurrency × 3 × max_body_bytes, the bound docs/API.md states.
    let peak = mem(pid, "VmHWM");
    assert!(
        peak <= base + 8 * 3 * 16 * MIB,
        "peak RSS {} MiB from {} MiB",
        peak / MIB,
        base / MIB
    );
    settles_below(pid, base + 64 * MIB, "after the rounds").await;
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn unread_pages_stay_within_the_response_buffer_and_are_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let (data, creds) = data_dir_with_app(dir.path());
    let (mut child, url) = spawn_server(
        &data,
        &[
            "--response-buffer-mb",
            "64",
            "--page-concurrency",
            "2",
            "--send-timeout-secs",
            "3",
        ],
    );
    let pid = child.id();
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now().as_millisecond();
    // 1,000 messages of 16 KiB for one user: each count=1000 page is ~16.5 MB.
    let text = "x".repeat(16_000);
    for half in 0..2i64 {
        let evs: Vec<Value> = (0..500i64)
            .map(|i| {
                let id = half * 500 + i + 1;
                json!({"event": "message", "msgid": id, "msg_ctime": now - 60_000 + id,
                       "target_type": "single", "target_id": "big", "from_id": "x",
                       "msg_type": "text", "msg_body": {"text": text}})
            })
            .collect();
        ingest_at(&http, &url, &creds, &evs).await;
    }
    let q = format!(
        "/v2/users/big/messages?count=1000&begin_time={}&end_time={}",
        enc(&sh(now - 120_000)),
        enc(&sh(now))
    );
    // One page read whole, so the storage engine's caches are as warm as they get.
    let page: Value = get_json(&http, &format!("{url}{q}"), &creds).await;
    assert_eq!(page["count"], 1000);
    drop(page);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = mem(pid, "VmRSS");

    // 100 connections ask for it and read nothing: 1.6 GB if each page were kept.
    let addr = url.strip_prefix("http://").unwrap();
    let mut readers = Vec::new();
    for _ in 0..100 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut c = socket.connect(addr.parse().unwrap()).await.unwrap();
        let req = format!(
            "GET {q} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
            creds.header()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        readers.push(c);
    }
    let mut peak = 0;
    for _ in 0..40 {
        peak = peak.max(mem(pid, "VmRSS"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The response buffer, plus the pages being built (two, each with its growing buffer).
    let bound = base + 64 * MIB + 2 * 64 * MIB;
    assert!(
        peak <= bound && mem(pid, "VmHWM") <= bound,
        "RSS {} MiB (peak {} MiB) from {} MiB",
        mem(pid, "VmRSS") / MIB,
        peak / MIB,
        base / MIB
    );
    // The server is fine meanwhile, and gives the memory back once the pages are dropped.
    let r = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(readers);
    settles_below(pid, base + 32 * MIB, "after the readers left").await;
    child.kill().unwrap();
    let _ = child.wait();
}
