//! Prometheus metrics of the real binary: a scripted workload moves each counter by exactly what
//! it did, and the scrape passes `promtool check metrics` (Debian's `prometheus` package).

use crate::support::*;
use std::collections::HashMap;

/// The samples of a scrape, by name with labels as written (`name{a="b"}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// One scrape's text.
async fn scrape(http: &reqwest::Client, metrics: &str) -> String {
    http.get(metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The real binary serving `data` with `flags` (which set `--metrics-listen`): the server, its
/// URL and its metrics URL.
fn serve_with_metrics(data: &std::path::Path, flags: &[&str]) -> (Reaped, String, String) {
    let (server, lines) = spawn_server_printing(
        data,
        flags,
        "error",
        std::process::Stdio::null(),
        "metrics: ",
    );
    let url = printed(&lines, "imreport listening on ");
    (server, url, printed(&lines, "metrics: "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_a_workload_did_and_promtool_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let creds = Creds {
        key: "metricstestkey0000000000".into(),
        secret: "metricstestsecret0000000".into(),
    };
    create_app_at(&data, &creds);
    let flags = [
        "--metrics-listen",
        "127.0.0.1:0",
        "--block-cache-mb",
        "3",
        "--rate-limit",
        "8",
        // A window whose edge no test run meets (windows are aligned to the epoch).
        "--rate-limit-window-secs",
        "1000000000",
        "--cursor-ttl-secs",
        "1",
    ];
    let (_server, url, metrics) = serve_with_metrics(&data, &flags);
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now().as_millisecond();
    let msg = |id: u64| text_message(id, now - 60_000 + id as i64, "group", "g1", "alice");

    // Three stored batches: 10 new; 6 new and 4 duplicates; 4 new and 1 too old to keep.
    let post = |body: String| {
        http.post(format!("{url}/ingest/v1/events"))
            .basic_auth(&creds.key, Some(&creds.secret))
            .body(body)
            .send()
    };
    let batches = [
        (1..=10).map(msg).collect::<Vec<_>>(),
        (7..=16).map(msg).collect(),
        {
            let mut b: Vec<_> = (17..=20).map(msg).collect();
            b.push(text_message(
                99,
                now - 90 * 86_400_000,
                "group",
                "g1",
                "alice",
            ));
            b
        },
    ];
    for b in &batches {
        assert_eq!(post(ndjson(b)).await.unwrap().status(), 200);
    }
    // One rejected batch.
    assert_eq!(post("{not json".into()).await.unwrap().status(), 400);
    // A page, and a cursor used after it expired.
    let first = format!(
        "{url}/v2/messages?count=1&begin_time={}&end_time={}",
        enc(&sh(now - 3_600_000)),
        enc(&sh(now))
    );
    let page = get_json(&http, &first, &creds).await;
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = http
        .get(format!("{url}/v2/messages?cursor={cursor}"))
        .basic_auth(&creds.key, Some(&creds.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Six requests so far; the limit is 8 an hour: two more pass, two are refused.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = http
            .get(&first)
            .basic_auth(&creds.key, Some(&creds.secret))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);

    let text = scrape(&http, &metrics).await;
    let s = samples(&text);
    let get = |k: &str| {
        s.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing:\n{text}"))
    };
    for (k, v) in [
        (r#"imreport_ingest_batches_total{result="stored"}"#, 3.0),
        (r#"imreport_ingest_batches_total{result="rejected"}"#, 1.0),
        (r#"imreport_ingest_events_total{result="accepted"}"#, 20.0),
        (r#"imreport_ingest_events_total{result="duplicate"}"#, 4.0),
        (r#"imreport_ingest_events_total{result="expired"}"#, 1.0),
        (r#"imreport_refusals_total{reason="rate_limit"}"#, 2.0),
        ("imreport_cursor_expired_total", 1.0),
        (
            r#"imreport_http_requests_total{route="/ingest/v1/events",status="200"}"#,
            3.0,
        ),
        (
            r#"imreport_http_requests_total{route="/ingest/v1/events",status="400"}"#,
            1.0,
        ),
        (
            r#"imreport_http_requests_total{route="/v2/messages",status="429"}"#,
            2.0,
        ),
        (
            r#"imreport_http_request_duration_seconds_count{route="/v2/messages"}"#,
            6.0,
        ),
        ("imreport_writer_commit_seconds_count", 3.0),
        ("imreport_writer_queue_depth", 0.0),
        ("imreport_store_day_partitions", 1.0),
    ] {
        assert_eq!(get(k), v, "{k}");
    }
    assert!(get("imreport_writer_fsync_seconds_count") >= 1.0);
    assert!(get("imreport_store_disk_bytes") > 0.0);
    // Where the embedded store's memory is: each within its bound.
    let cache = 3.0 * 1024.0 * 1024.0;
    assert_eq!(get("imreport_store_block_cache_capacity_bytes"), cache);
    assert!(get("imreport_store_block_cache_bytes") <= cache);
    assert!(get("imreport_store_memtable_bytes") <= 64.0 * 1024.0 * 1024.0);
    assert!(get("imreport_store_pending_flushes") <= 64.0);

    // Prometheus's own checker accepts the exposition.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian: prometheus; .ci/run installs it)");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// On PostgreSQL: each ingest transaction is timed, and the store's size and day partitions are
/// read from the database at each scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_backend_reports_its_ingest_time_size_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (db, schema) = (test_database_url(), fresh_schema());
    struct Dropped(String);
    impl Drop for Dropped {
        fn drop(&mut self) {
            drop_schema(self.0.clone());
        }
    }
    let _cleanup = Dropped(schema.clone());
    let pg = ["--store", &db, "--pg-schema", &schema];
    let (key, secret) = ("metricspgkey000000000000", "metricspgsecret000000000");
    let mut args = vec!["app", "create", "--data-dir", data.to_str().unwrap()];
    args.extend(pg);
    args.extend(["--app-key", key, "--master-secret", secret]);
    let (ok, _, err) = imreport(&args);
    assert!(ok, "{err}");
    let mut flags = vec!["--metrics-listen", "127.0.0.1:0"];
    flags.extend(pg);
    let (_server, url, metrics) = serve_with_metrics(&data, &flags);
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now().as_millisecond();
    for batch in 0..3u64 {
        let events: Vec<_> = (0..5)
            .map(|i| text_message(batch * 10 + i + 1, now - 1000, "group", "g1", "alice"))
            .collect();
        let r = http
            .post(format!("{url}/ingest/v1/events"))
            .basic_auth(key, Some(secret))
            .body(ndjson(&events))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = scrape(&http, &metrics).await;
    let got = samples(&text);
    let get = |k: &str| *got.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get("imreport_postgres_ingest_seconds_count"), 3.0);
    assert!(get("imreport_store_disk_bytes") > 0.0);
    assert!(get("imreport_store_day_partitions") >= 1.0);
    // The embedded store's memory gauges are not the PostgreSQL backend's.
    assert!(!got.contains_key("imreport_store_memtable_bytes"), "{text}");
}
