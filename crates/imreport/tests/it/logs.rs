//! Request ids and logs, on the real binary: every response carries `X-Request-Id` (and
//! `Server-Timing`), every log
//! line of a request carries it, one access-log line a request; and no secret, Authorization
//! header or message body reaches the logs, even at the most verbose level.

use crate::support::*;
use base64::Engine;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_never_secrets_headers_or_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, secret) = ("logtestkey00000000000000", "logtestSECRETvalue000000");
    create_app_at(
        &data,
        &Creds {
            key: key.into(),
            secret: secret.into(),
        },
    );
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut server, lines) = spawn_server_printing(
        &data,
        &["--log-format", "json"],
        "trace",
        log.into(),
        "imreport listening on ",
    );
    let url = printed(&lines, "imreport listening on ");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let id_of = |r: &reqwest::Response| {
        // Every answer also carries the server's time for it (`Server-Timing: app;dur=<ms>`).
        let timing = r.headers()["server-timing"].to_str().unwrap();
        let ms: f64 = timing.strip_prefix("app;dur=").unwrap().parse().unwrap();
        assert!((0.0..60_000.0).contains(&ms), "{timing}");
        r.headers()["x-request-id"].to_str().unwrap().to_owned()
    };
    let fresh = |id: &str| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());

    // An ingest with the caller's id, a body worth hiding and the app's credentials.
    let body_marker = "BODY-MARKER-do-not-log-7f3a";
    let now = jiff::Timestamp::now().as_millisecond();
    let mut m = text_message(1, now - 1000, "single", "bob", "alice");
    m["msg_body"]["text"] = body_marker.into();
    let r = http
        .post(format!("{url}/ingest/v1/events"))
        .basic_auth(key, Some(secret))
        .header("x-request-id", "caller-id.42:a")
        .body(ndjson(&[m]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(id_of(&r), "caller-id.42:a", "the caller's id comes back");
    // A wrong secret, a refused request: a fresh id.
    let wrong = "WRONGsecretWRONGsecret00";
    let r = http
        .get(format!(
            "{url}/v2/messages?count=1&begin_time=2026-01-01+00:00:00&end_time=2026-01-01+00:00:01"
        ))
        .basic_auth(key, Some(wrong))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(fresh(&id_of(&r)));
    // An id that cannot be logged as sent is replaced.
    for bad in ["x".repeat(65), "has space".into(), "semi;colon".into()] {
        let r = http
            .get(format!("{url}/healthz"))
            .header("x-request-id", bad.as_str())
            .send()
            .await
            .unwrap();
        assert!(fresh(&id_of(&r)), "{bad}");
    }
    // The console's sign-in form carries the secret in its body; a route nobody serves too.
    let form = format!("app_key={key}&master_secret={secret}");
    let r = http
        .post(format!("{url}/console/login"))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(fresh(&id_of(&r)));
    let r = http.get(format!("{url}/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(fresh(&id_of(&r)));

    // Stopped, so that every line is written.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.0.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(server.0.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for secret_thing in [
        secret.to_owned(),
        wrong.to_owned(),
        b64(&format!("{key}:{secret}")),
        b64(&format!("{key}:{wrong}")),
        body_marker.to_owned(),
    ] {
        assert!(!log.contains(&secret_thing), "{secret_thing} is in the log");
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "imreport::access")
        .collect();
    assert_eq!(access.len(), 7, "one access line a request: {access:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "TRACE" || l["level"] == "DEBUG"),
        "the log was written at its most verbose"
    );
    let ingest = access
        .iter()
        .find(|l| l["span"]["request_id"] == "caller-id.42:a")
        .expect("the ingest's access line carries its id");
    assert_eq!(ingest["fields"]["status"], 200);
    assert_eq!(ingest["span"]["path"], "/ingest/v1/events");
    assert!(ingest["fields"]["latency_ms"].as_f64().is_some());
    for l in &access {
        assert!(!l["span"]["request_id"].as_str().unwrap().is_empty(), "{l}");
    }
}
