//! `imreport backup` and `imreport restore` through the real binary: an archive taken from a
//! running server while clients ingest holds every batch acknowledged before it began and no
//! part of any batch; archives restore into the embedded store and into PostgreSQL, and back,
//! with every walk and every statistic equal to the source's; a restore into a store that holds
//! an app is refused.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const BATCH: u64 = 40;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Three days of varied traffic ending now: every scope and message kind, lifecycle changes
/// (a deletion among them), and a user active by logging in only.
fn base_events(t: i64) -> Vec<Value> {
    let mut ev = Vec::new();
    for i in 0..600u64 {
        let at = t - 3 * DAY + (i as i64) * (3 * DAY - 60_000) / 600;
        let from = format!("u{}", i % 7);
        ev.push(match i % 5 {
            0 | 1 => text_message(i + 1, at, "single", &format!("u{}", (i + 3) % 7), &from),
            2 => text_message(i + 1, at, "group", &format!("g{}", i % 4), &from),
            3 => json!({"event": "message", "msgid": i + 1, "msg_ctime": at, "target_type": "chatroom",
                        "target_id": format!("r{}", i % 3), "from_id": from, "msg_type": "image",
                        "msg_body": {"media_id": format!("qiniu/image/{i}"), "media_crc32": 7, "width": 3, "height": 4, "format": "png", "fsize": 9}}),
            _ => json!({"event": "message", "msgid": i + 1, "msg_ctime": at, "target_type": "group",
                        "target_id": "g1", "from_id": "admin1", "from_type": "admin", "msg_type": "custom",
                        "msg_body": {"k": i, "nested": {"quote": "\"", "zh": "你好"}}}),
        });
        if i % 50 == 0 {
            ev.push(json!({"event": "user_registered", "username": from, "time": at - 5}));
            ev.push(
                json!({"event": "group_created", "gid": format!("g{}", i % 4), "time": at - 5}),
            );
        }
        if i % 9 == 0 {
            ev.push(
                json!({"event": "user_login", "username": format!("lurker{}", i % 4), "time": at}),
            );
        }
    }
    ev.push(json!({"event": "user_deleted", "username": "u3", "time": t - DAY}));
    ev.push(json!({"event": "group_deleted", "gid": "g2", "time": t - DAY}));
    ev
}

/// Everything a client can read of an app: full walks of every scope over the data's window,
/// and every statistic of its days, hours and months.
async fn everything(http: &reqwest::Client, url: &str, creds: &Creds, t: i64) -> Value {
    let (b, e) = (enc(&sh(t - 3 * DAY - HOUR)), enc(&sh(t + 60_000)));
    let mut scopes: Vec<String> = vec!["/v2/messages".into()];
    scopes.extend((0..7).map(|u| format!("/v2/users/u{u}/messages")));
    scopes.extend((0..4).map(|g| format!("/v2/groups/g{g}/messages")));
    scopes.extend((0..3).map(|r| format!("/v2/chatrooms/r{r}/messages")));
    let mut out = serde_json::Map::new();
    for scope in scopes {
        let mut page = get_json(
            http,
            &format!("{url}{scope}?count=97&begin_time={b}&end_time={e}"),
            creds,
        )
        .await;
        let total = page["total"].clone();
        let mut msgs = Vec::new();
        loop {
            msgs.extend(page["messages"].as_array().unwrap().iter().cloned());
            match page["cursor"].as_str() {
                Some(c) => {
                    page = get_json(http, &format!("{url}{scope}?cursor={c}"), creds).await;
                }
                None => break,
            }
        }
        assert_eq!(
            total,
            json!(msgs.len()),
            "{scope}: total is what the walk yields"
        );
        out.insert(scope, json!(msgs));
    }
    let day = |d: i64| sh(t - d * DAY)[..10].to_owned();
    let today = day(0);
    for q in [
        format!("users?time_unit=DAY&start={}&duration=5", day(4)),
        format!("groups?time_unit=DAY&start={}&duration=5", day(4)),
        format!("messages?time_unit=DAY&start={}&duration=5", day(4)),
        format!(
            "messages?time_unit=HOUR&start={}&duration=24",
            enc(&format!("{today} 00"))
        ),
        format!("messages?time_unit=MONTH&start={}&duration=2", &today[..7]),
        format!("busiest?date={}&count=100", day(1)),
        format!("busiest?date={today}&count=100"),
    ] {
        let v = get_json(http, &format!("{url}/v2/statistic/{q}"), creds).await;
        assert!(v.get("error").is_none(), "{q}: {v}");
        out.insert(q, v);
    }
    Value::Object(out)
}

fn run(args: &[&str]) -> String {
    let (ok, _, err) = imreport(args);
    assert!(ok, "imreport {args:?}: {err}");
    err
}

/// Serves a restored store through the real binary; returns it and its URL.
fn serve(data: &std::path::Path, pg_schema: Option<&str>) -> (Reaped, String) {
    let db = test_database_url();
    let extra: Vec<&str> = match pg_schema {
        Some(schema) => vec![
            "--store",
            &db,
            "--pg-schema",
            schema,
            "--admin-listen",
            "127.0.0.1:0",
        ],
        None => vec!["--admin-listen", "127.0.0.1:0"],
    };
    let (child, lines) = spawn_server_printing(
        data,
        &extra,
        "error",
        std::process::Stdio::null(),
        "imreport listening on ",
    );
    (child, printed(&lines, "imreport listening on "))
}

struct Schemas(Vec<String>);

impl Drop for Schemas {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            drop_schema(s);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_during_ingest_restores_into_both_backends_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let p = |name: &str| path(name).to_str().unwrap().to_owned();
    let db = test_database_url();
    let schemas = Schemas(vec![fresh_schema(), fresh_schema()]);
    let creds = Creds {
        key: "bkpsrc0000000000000000a1".into(),
        secret: "backup-secret-0123456789".into(),
    };
    let other = Creds {
        key: "bkpsrc0000000000000000b2".into(),
        secret: "other-secret-0123456789x".into(),
    };
    create_app_at(&path("src"), &creds);
    create_app_at(&path("src"), &other);
    let (_src, url) = serve(&path("src"), None);
    let http = reqwest::Client::new();
    let t = now();
    ingest_at(&http, &url, &creds, &base_events(t)).await;
    ingest_at(&http, &url, &other, &base_events(t)[..50]).await;

    // Clients ingest while the backup runs: batch `c-n` is BATCH messages to group `b<c>-<n>`.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..3u64 {
        let (stop, acked, http, url) = (stop.clone(), acked.clone(), http.clone(), url.clone());
        let creds = Creds {
            key: creds.key.clone(),
            secret: creds.secret.clone(),
        };
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let g = format!("b{c}-{n}");
                let events: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        let id = 1_000_000 + c * 100_000_000 + n * 1000 + i;
                        text_message(id, now() - 1000, "group", &g, &format!("w{c}"))
                    })
                    .collect();
                ingest_at(&http, &url, &creds, &events).await;
                acked.lock().unwrap().insert(g);
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let acked_before: BTreeSet<String> = acked.lock().unwrap().clone();
    let (out, src) = (p("during.gz"), p("src"));
    let said = tokio::task::spawn_blocking(move || {
        run(&["backup", "--quiet", "--data-dir", &src, "--out", &out])
    })
    .await
    .unwrap();
    assert!(said.contains("backup: 2 apps"), "{said}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for c in clients {
        sent += c.await.unwrap();
    }
    assert!(!acked_before.is_empty() && sent as usize > acked_before.len());
    // Owner-only, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path("during.gz"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Into an empty data dir and an empty database: every batch acknowledged before the backup
    // began is there, and no batch in part.
    run(&[
        "restore",
        "--quiet",
        &p("during.gz"),
        "--data-dir",
        &p("emb1"),
    ]);
    let restore_to_pg = |archive: &str, schema: &str, data: &str| {
        run(&[
            "restore",
            "--quiet",
            &p(archive),
            "--store",
            &db,
            "--pg-schema",
            schema,
            "--data-dir",
            &p(data),
        ])
    };
    restore_to_pg("during.gz", &schemas.0[0], "pg1");
    let all: Vec<String> = (0..3u64)
        .flat_map(|c| (0..sent).map(move |n| format!("b{c}-{n}")))
        .collect();
    for (data, schema) in [("emb1", None), ("pg1", Some(schemas.0[0].as_str()))] {
        let (_server, rurl) = serve(&path(data), schema);
        let (b, e) = (enc(&sh(t - HOUR)), enc(&sh(now() + 60_000)));
        let mut held = 0;
        for g in &all {
            let page = get_json(
                &http,
                &format!("{rurl}/v2/groups/{g}/messages?count=1&begin_time={b}&end_time={e}"),
                &creds,
            )
            .await;
            let total = page["total"].as_u64().unwrap();
            assert!(
                total == 0 || total == BATCH,
                "{data}: batch {g} is in part: {total}"
            );
            if acked_before.contains(g) {
                assert_eq!(
                    total, BATCH,
                    "{data}: batch {g} was acknowledged before the backup"
                );
            }
            held += usize::from(total == BATCH);
        }
        assert!(held >= acked_before.len());
        // The other app came along, with its own credentials.
        let page = get_json(
            &http,
            &format!(
                "{rurl}/v2/messages?count=1&begin_time={}&end_time={e}",
                enc(&sh(t - 4 * DAY))
            ),
            &other,
        )
        .await;
        assert!(page["total"].as_u64().unwrap() > 0, "{page}");
    }
    // A second restore into a store that now holds apps is refused, and changes nothing.
    let (ok, _, err) = imreport(&[
        "restore",
        "--quiet",
        &p("during.gz"),
        "--data-dir",
        &p("emb1"),
    ]);
    assert!(!ok && err.contains("already holds 2 app(s)"), "{err}");

    // Quiet now: the source, its archive restored into PostgreSQL, and that database's own
    // archive restored into the embedded store (the way to PostgreSQL and back) all answer
    // every walk and every statistic alike.
    let expected = everything(&http, &url, &creds, t).await;
    run(&[
        "backup",
        "--quiet",
        "--data-dir",
        &p("src"),
        "--out",
        &p("quiet.gz"),
    ]);
    restore_to_pg("quiet.gz", &schemas.0[1], "pg2");
    let said = run(&[
        "backup",
        "--quiet",
        "--store",
        &db,
        "--pg-schema",
        &schemas.0[1],
        "--data-dir",
        &p("pg2"),
        "--out",
        &p("from-pg.gz"),
    ]);
    assert!(said.contains("backup: 2 apps"), "{said}");
    run(&[
        "restore",
        "--quiet",
        &p("from-pg.gz"),
        "--data-dir",
        &p("emb2"),
    ]);
    for (data, schema) in [("pg2", Some(schemas.0[1].as_str())), ("emb2", None)] {
        let (_server, rurl) = serve(&path(data), schema);
        let got = everything(&http, &rurl, &creds, t).await;
        for (k, v) in expected.as_object().unwrap() {
            assert_eq!(&got[k], v, "{data}: {k}");
        }
    }
}

#[test]
fn a_cut_off_or_foreign_archive_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let creds = Creds {
        key: "bkpcut0000000000000000a1".into(),
        secret: "backup-secret-0123456789".into(),
    };
    create_app_at(&src, &creds);
    let whole = dir.path().join("whole.gz");
    run(&[
        "backup",
        "--quiet",
        "--data-dir",
        src.to_str().unwrap(),
        "--out",
        whole.to_str().unwrap(),
    ]);
    // The archive without its end line (decompressed, cut, compressed again).
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&whole).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let cut_at = text.trim_end().rfind('\n').unwrap() + 1;
    let cut = dir.path().join("cut.gz");
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&cut).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(&text.as_bytes()[..cut_at]).unwrap();
        gz.finish().unwrap();
    }
    let foreign = dir.path().join("foreign.gz");
    std::fs::write(&foreign, b"{\"event\":\"user_login\",\"username\":\"x\"}\n").unwrap();
    for (file, says) in [
        (&cut, "without its end line"),
        (&foreign, "not an imreport backup"),
    ] {
        let target = dir.path().join("target");
        let (ok, _, err) = imreport(&[
            "restore",
            "--quiet",
            file.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert!(!ok && err.contains(says), "{err}");
        assert!(!target.exists(), "nothing was created for a bad archive");
    }
    // Writing over an existing file is refused.
    let (ok, _, err) = imreport(&[
        "backup",
        "--quiet",
        "--data-dir",
        src.to_str().unwrap(),
        "--out",
        whole.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
}
