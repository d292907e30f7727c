//! The real `imreport` binary, run as a user would: create an app offline, serve, ingest, page,
//! manage apps while it runs, and stop it with SIGTERM.

use crate::support::*;
use serde_json::{Value, json};
use std::process::Command;

#[tokio::test]
async fn the_binary_serves_what_a_user_expects() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, out, err) = imreport(&[
        "app",
        "create",
        "--data-dir",
        data,
        "--app-key",
        "4f7aef34fb361292c566a1cd",
        "--master-secret",
        "0123456789abcdefABCDEF01",
        "--name",
        "demo",
    ]);
    assert!(ok, "{err}");
    assert_eq!(field(&out, "app_key"), "4f7aef34fb361292c566a1cd");
    let (ok, out, _) = imreport(&["app", "list", "--data-dir", data]);
    assert!(
        ok && out.contains("4f7aef34fb361292c566a1cd\tdemo"),
        "{out}"
    );

    let (mut child, url) = spawn_server(data, &[]);

    // A second server on the same data dir refuses to start.
    let (ok, _, err) = imreport(&["serve", "--data-dir", data, "--listen", "127.0.0.1:0"]);
    assert!(!ok && err.contains("in use"), "{err}");

    let http = reqwest::Client::new();
    let creds = Creds {
        key: "4f7aef34fb361292c566a1cd".into(),
        secret: "0123456789abcdefABCDEF01".into(),
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let evs: Vec<Value> = (1..=5u64)
        .map(|i| text_message(i, now - 60_000 + i as i64, "single", "bob", "alice"))
        .collect();
    let r = http
        .post(format!("{url}/ingest/v1/events"))
        .header("authorization", creds.header())
        .body(ndjson(&evs))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"accepted": 5, "duplicates": 0, "expired": 0})
    );

    let q = format!(
        "{url}/v2/users/bob/messages?count=2&begin_time={}&end_time={}",
        enc(&sh(now - 120_000)),
        enc(&sh(now))
    );
    let mut page: Value = get_json(&http, q.as_str(), &creds).await;
    let mut got = Vec::new();
    loop {
        assert_eq!(page["total"], 5);
        got.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["msgid"].as_u64().unwrap()),
        );
        let Some(c) = page.get("cursor").and_then(Value::as_str) else {
            break;
        };
        page = get_json(
            &http,
            &format!("{url}/v2/users/bob/messages?cursor={c}"),
            &creds,
        )
        .await;
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);

    // Apps managed while the server runs take effect at once.
    let (ok, out, err) = imreport(&["app", "create", "--data-dir", data, "--name", "live"]);
    assert!(ok, "{err}");
    let live = Creds {
        key: field(&out, "app_key"),
        secret: field(&out, "master_secret"),
    };
    assert_eq!(live.key.len(), 24);
    let r = http
        .get(format!(
            "{url}/v2/messages?count=1&begin_time=2026-01-01+00:00:00&end_time=2026-01-01+00:00:01"
        ))
        .header("authorization", live.header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (ok, out, _) = imreport(&[
        "app",
        "rotate-secret",
        "--data-dir",
        data,
        "--app-key",
        &live.key,
    ]);
    assert!(ok);
    let rotated = Creds {
        key: live.key.clone(),
        secret: field(&out, "master_secret"),
    };
    let probe = |c: &Creds| {
        http.get(format!(
            "{url}/v2/messages?count=1&begin_time=2026-01-01+00:00:00&end_time=2026-01-01+00:00:01"
        ))
        .header("authorization", c.header())
        .send()
    };
    assert_eq!(probe(&live).await.unwrap().status(), 401);
    assert_eq!(probe(&rotated).await.unwrap().status(), 200);
    let (ok, _, _) = imreport(&["app", "delete", "--data-dir", data, "--app-key", &live.key]);
    assert!(ok);
    assert_eq!(probe(&rotated).await.unwrap().status(), 401);

    // SIGTERM: graceful stop, exit 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // The data is durable across the restart (offline app list still works too).
    let (ok, out, _) = imreport(&["app", "list", "--data-dir", data]);
    assert!(ok && out.contains("demo") && !out.contains("live"), "{out}");
}

#[test]
fn config_example_is_printed() {
    let (ok, out, _) = imreport(&["config", "example"]);
    assert!(ok && out.contains("retention_days = 60") && out.contains("report_tz"));
}

/// `imreport export` against a Report V2 server that orders a page's fields otherwise than
/// imreport (messages before the cursor, no cursor on the last page): the same messages, in
/// order; and a page that is not JSON fails the export instead of being skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_walks_pages_whatever_their_field_order() {
    use axum::extract::RawQuery;
    let page = |q: Option<String>| async move {
        let msg = |id: u64| json!({"msgid": id, "msg_body": {"text": format!("m{id}")}});
        let body = match q.as_deref().unwrap_or("") {
            q if q.contains("cursor=c1") => format!(
                r#"{{"count":2,"messages":[{},{}],"total":5,"cursor":"c2"}}"#,
                msg(3),
                msg(4)
            ),
            q if q.contains("cursor=c2") => {
                format!(r#"{{"messages":[{}],"total":5,"count":1}}"#, msg(5))
            }
            q if q.contains("cursor=bad") => "not json".to_owned(),
            q if q.contains("begin_time=2026-01-01") => {
                format!(r#"{{"total":9,"cursor":"bad","messages":[{}]}}"#, msg(9))
            }
            _ => format!(
                r#"{{"total" : 5, "messages":[{},{}], "cursor":"c1","count":2}}"#,
                msg(1),
                msg(2)
            ),
        };
        ([("content-type", "application/json")], body)
    };
    let app = axum::Router::new().route(
        "/v2/messages",
        axum::routing::get(move |RawQuery(q): RawQuery| page(q)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let export = |begin: &'static str, out: std::path::PathBuf, url: String| {
        tokio::task::spawn_blocking(move || {
            imreport(&[
                "export",
                "--url",
                &url,
                "--app-key",
                "k",
                "--master-secret",
                "s",
                "--begin",
                begin,
                "--end",
                "2026-11-02 00:00:00",
                "--out",
                out.to_str().unwrap(),
            ])
        })
    };
    let (ok, _, err) = export("2026-11-01 00:00:00", out.clone(), url.clone())
        .await
        .unwrap();
    assert!(ok, "{err}");
    let ids: Vec<u64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["msgid"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5], "{err}");
    assert!(err.contains(r#""pages":3"#), "{err}");

    let (ok, _, err) = export("2026-01-01 00:00:00", dir.path().join("bad.ndjson"), url)
        .await
        .unwrap();
    assert!(!ok, "a page that is not JSON must fail the export");
    assert!(err.contains("not a history page"), "{err}");
}
