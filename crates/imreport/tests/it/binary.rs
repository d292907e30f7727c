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
    assert_eq!(
        ingest_at(&http, &url, &creds, &evs).await,
        json!({"accepted": 5, "duplicates": 0, "expired": 0})
    );
    ingest_runs_below_the_queries(child.id());

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

/// Accepts connections on a loopback port and answers every request with an invented app, as
/// whatever process took a dead server's admin port might; returns its URL and everything it
/// was sent.
async fn impostor() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let n = tokio::time::timeout(std::time::Duration::from_secs(2), c.read(&mut buf))
                    .await
                    .map_or(0, |r| r.unwrap_or(0));
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                let body =
                    r#"{"app_key":"invented","master_secret":"invented","name":"x","proof":"0"}"#;
                let answer = format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, heard)
}

#[tokio::test]
async fn a_stale_admin_json_is_never_trusted_with_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, _, err) = imreport(&["app", "list", "--data-dir", data]);
    assert!(ok, "{err}");
    // A server killed with SIGKILL left admin.json; another process now has its port.
    let (url, heard) = impostor().await;
    let token = "token-of-a-server-that-died-0123";
    let admin = dir.path().join("data").join("admin.json");
    std::fs::write(&admin, json!({"url": url, "token": token}).to_string()).unwrap();

    let secret = "chosen-secret-nobody-else-sees";
    let data_arg = data.to_owned();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        imreport(&[
            "app",
            "create",
            "--data-dir",
            &data_arg,
            "--app-key",
            "realapp",
            "--master-secret",
            secret,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        field(&out, "app_key"),
        "realapp",
        "created for real, not invented"
    );
    assert!(err.contains("stale"), "{err}");
    let heard = String::from_utf8_lossy(&heard.lock().unwrap()).into_owned();
    assert!(
        !heard.contains(secret) && !heard.contains(token),
        "the impostor was sent: {heard}"
    );
    assert!(!admin.exists(), "the stale file is removed");
    let (ok, out, _) = imreport(&["app", "list", "--data-dir", data]);
    assert!(ok && out.contains("realapp"), "{out}");
}

/// Every path under `dir` whose mode gives group or others any access.
fn shared_paths(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
    if mode(dir) & 0o077 != 0 {
        found.push(format!("{} {:o}", dir.display(), mode(dir)));
    }
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if mode(&p) & 0o077 != 0 {
                found.push(format!("{} {:o}", p.display(), mode(&p)));
            }
            if p.is_dir() {
                pending.push(p);
            }
        }
    }
    found
}

#[tokio::test]
async fn the_data_dir_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Started under a permissive umask, as a service manager might.
    let data = dir.path().join("data");
    let run = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask 022; exec {BIN} {args}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&format!("app create --data-dir {}", data.display()));
    let (mut child, url) = spawn_server(data.to_str().unwrap(), &[]);
    let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(std::fs::read_dir(data.join("db")).unwrap().count() > 0);
    assert_eq!(shared_paths(&data), Vec::<String>::new());

    // A data dir an earlier version left readable by everyone is made private when opened.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = data.join("cursor.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!shared_paths(&data).is_empty());
    run(&format!("app list --data-dir {}", data.display()));
    assert_eq!(shared_paths(&data), Vec::<String>::new());
}

#[test]
fn the_api_docs_match_the_binary() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md")).unwrap();
    let (len, max) = (
        imreport_domain::cursor::CURSOR_LEN,
        imreport_domain::cursor::MAX_CURSOR_LEN,
    );
    assert!(
        docs.contains(&format!("no padding, {len} to {max} characters")),
        "docs/API.md must give the cursor length, {len} to {max}"
    );
    // Every setting has its row: flag, environment variable, and the declared default.
    for (name, _) in imreport::settings::SETTINGS {
        let row = format!(
            "| `--{}` | `IMREPORT_{}` | ",
            name.replace('_', "-"),
            name.to_uppercase()
        );
        let line = docs
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("docs/API.md has no row {row}"));
        let documented = line[row.len()..].split(" |").next().unwrap().trim();
        match imreport::settings::default_toml(name) {
            None => assert_eq!(documented, "unset", "{name}"),
            // As TOML writes it, less the quotes of a string and the `.0` of a whole float.
            Some(v) => assert_eq!(
                documented.trim_matches('`'),
                v.trim_matches('"').trim_end_matches(".0"),
                "{name}"
            ),
        }
    }
    // The flags `imreport serve` takes are the settings (and --config, --demo).
    let (ok, help, _) = imreport(&["serve", "--help"]);
    assert!(ok);
    for (name, _) in imreport::settings::SETTINGS {
        assert!(
            help.contains(&format!("--{}", name.replace('_', "-"))),
            "{name}"
        );
    }
}

/// Exports a whole window of a server's app to a file with the real binary.
fn export_to(url: &str, creds: &Creds, begin: &str, end: &str, out: &std::path::Path) {
    let (ok, _, err) = imreport(&[
        "export",
        "--url",
        url,
        "--app-key",
        &creds.key,
        "--master-secret",
        &creds.secret,
        "--begin",
        begin,
        "--end",
        end,
        "--count",
        "7",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn an_export_imports_into_an_empty_store_and_exports_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds {
        key: "importtestkey00000000000".into(),
        secret: "importtestsecret00000000".into(),
    };
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    create_app_at(&a_dir, &creds);
    create_app_at(&b_dir, &creds);
    let (a, url_a) = spawn_server(a_dir.to_str().unwrap(), &[]);
    let a = Reaped(a);
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now().as_millisecond();
    let mut evs = Vec::new();
    for i in 0..40u64 {
        let t = now - 3_600_000 + i as i64 * 1000;
        evs.push(match i % 4 {
            0 => text_message(i + 1, t, "single", "bob", "alice"),
            1 => json!({"event": "message", "msgid": i + 1, "msg_ctime": t, "target_type": "group",
                        "target_id": "g\"1", "from_id": "zoë", "from_type": "admin", "msg_type": "image",
                        "msg_body": {"media_id": "qiniu/image/j/1", "width": 640, "fsize": 1.5e3, "t": "é\n\"x\""}}),
            2 => json!({"event": "message", "msgid": i + 1, "msg_ctime": t, "target_type": "chatroom",
                        "target_id": 10055201, "from_id": "carol", "msg_type": "custom", "from_platform": "i",
                        "target_name": "room", "msg_body": {"a": [1, {"b": null}]}, "set_from_name": 1}),
            _ => text_message(i + 1, t - 1, "single", "alice", "bob"),
        });
    }
    ingest_at(&http, &url_a, &creds, &evs).await;
    let (begin, end) = (sh(now - 2 * 3_600_000), sh(now));
    let first = dir.path().join("first.ndjson");
    export_to(&url_a, &creds, &begin, &end, &first);
    drop(a);
    // Gzipped, into the stopped server's data dir, straight into its store.
    let gz = dir.path().join("first.ndjson.gz");
    {
        use std::io::Write;
        let mut w = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        w.write_all(&std::fs::read(&first).unwrap()).unwrap();
        w.finish().unwrap();
    }
    let (ok, _, err) = imreport(&[
        "import",
        gz.to_str().unwrap(),
        "--app-key",
        &creds.key,
        "--data-dir",
        b_dir.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok && err.contains("40 accepted"), "{err}");
    let (b, url_b) = spawn_server(b_dir.to_str().unwrap(), &[]);
    let _b = Reaped(b);
    let second = dir.path().join("second.ndjson");
    export_to(&url_b, &creds, &begin, &end, &second);
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        std::fs::read_to_string(&second).unwrap(),
        "an export, imported and exported again, is the same"
    );
    // Again, through the running server: nothing twice.
    let through_b = |file: &std::path::Path| {
        imreport(&[
            "import",
            file.to_str().unwrap(),
            "--app-key",
            &creds.key,
            "--url",
            &url_b,
            "--master-secret",
            &creds.secret,
            "--quiet",
        ])
    };
    let (ok, _, err) = through_b(&first);
    assert!(ok && err.contains("0 accepted, 40 duplicates"), "{err}");
    // A bad line is reported by number and skipped; the others go in.
    let mixed = dir.path().join("mixed.ndjson");
    let extra = [
        text_message(100, now - 1000, "single", "bob", "alice").to_string(),
        "{\"event\":\"message\",\"msgid\":101}".to_owned(),
        "not json".to_owned(),
        json!({"event": "user_registered", "username": "newbie", "time": now - 500}).to_string(),
    ];
    std::fs::write(&mixed, extra.join("\n")).unwrap();
    let (ok, _, err) = through_b(&mixed);
    assert!(!ok, "bad lines make the import fail: {err}");
    assert!(
        err.contains("line 2: field \"target_type\"") && err.contains("line 3:"),
        "{err}"
    );
    assert!(
        err.contains("2 accepted") && err.contains("2 bad lines"),
        "{err}"
    );
}

#[test]
fn the_binary_names_its_commit_documents_itself_and_its_unit_verifies() {
    // `--version` names the commit it was built from.
    let (ok, out, _) = imreport(&["--version"]);
    assert!(ok);
    let built = out
        .trim()
        .strip_prefix("imreport ")
        .and_then(|v| v.split_once(" ("))
        .and_then(|(_, c)| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success());
    match head {
        Some(h) => assert!(
            built.starts_with(String::from_utf8_lossy(&h.stdout).trim()),
            "{built}"
        ),
        None => assert_eq!(built, "unknown"),
    }
    // Completions and the man page come from the CLI definition itself.
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = imreport(&["completions", shell]);
        assert!(
            ok && out.contains("mirror") && out.contains("nats-url"),
            "{shell}: {err}"
        );
    }
    let (ok, man, _) = imreport(&["man"]);
    assert!(ok && man.contains(".TH imreport 1"));
    for sub in ["serve", "app", "mirror", "import", "export"] {
        assert!(man.contains(&format!(".TH imreport-{sub} 1")), "{sub}");
    }
    // The systemd unit in the repository passes systemd's own check (with ExecStart pointing at
    // this binary, since verify checks that it exists).
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/imreport.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/imreport", BIN);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imreport.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian: systemd; .ci/run installs it)");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// The server's ingest threads (decoding, the writer, fjall's worker) run `ingest_nice` (10)
/// steps below its main thread and as batch threads; the async workers that serve queries do
/// not (docs/API.md, "Queries before ingest").
#[cfg(target_os = "linux")]
fn ingest_runs_below_the_queries(pid: u32) {
    // (name, nice, policy) of each thread: fields 19 and 41 of its stat.
    let threads: Vec<(String, i32, i32)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            Some((
                name,
                fields.get(16)?.parse().ok()?,
                fields.get(38)?.parse().ok()?,
            ))
        })
        .collect();
    let main = threads
        .iter()
        .find(|t| t.0 == "imreport")
        .expect("the main thread");
    // SCHED_BATCH at the default ingest_nice; decoders further below the writer.
    use imreport_store::priority::{DEFAULT_INGEST_NICE, decode_nice};
    let lowered = |by: i32| ((main.1 + by).min(19), 3);
    for (name, by) in [
        ("imreport-decode", decode_nice(DEFAULT_INGEST_NICE)),
        ("imreport-writer", DEFAULT_INGEST_NICE),
        ("fjall:worker", DEFAULT_INGEST_NICE),
    ] {
        let of: Vec<_> = threads.iter().filter(|t| t.0.starts_with(name)).collect();
        assert!(!of.is_empty(), "no {name} thread in {threads:?}");
        assert!(
            of.iter().all(|t| (t.1, t.2) == lowered(by)),
            "{name}: {of:?}"
        );
    }
    let workers: Vec<_> = threads
        .iter()
        .filter(|t| t.0 == "tokio-rt-worker")
        .collect();
    assert!(!workers.is_empty());
    assert!(
        workers.iter().all(|t| (t.1, t.2) == (main.1, 0)),
        "{workers:?}"
    );
}

#[cfg(not(target_os = "linux"))]
fn ingest_runs_below_the_queries(_pid: u32) {}
