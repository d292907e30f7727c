//! NATS JetStream intake, end to end: the real binary consuming from the machine's nats-server
//! (127.0.0.1:4222) while a publisher sends events with duplicates and bad messages and the
//! server is killed with SIGKILL again and again. Every valid event must be stored exactly once,
//! the statistics must equal the history, and every bad message must be on the dead-letter
//! subject with its error.

use crate::support::*;
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Deletes a test's streams when it ends, however it ends.
struct Streams(Vec<String>);

impl Drop for Streams {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            runtime().block_on(async {
                if let Ok(c) = async_nats::connect(NATS_URL).await {
                    let js = jetstream::new(c);
                    for n in names {
                        let _ = js.delete_stream(&n).await;
                    }
                }
            })
        })
        .join();
    }
}

/// What the publisher sent, and what must come of it.
#[derive(Default)]
struct Sent {
    /// msgids of messages in valid NATS messages (some sent more than once).
    valid: BTreeSet<u64>,
    /// Payloads that must be dead-lettered.
    bad: HashSet<Vec<u8>>,
}

fn message(msgid: u64, t: i64, i: u64) -> Value {
    match i % 3 {
        0 => text_message(
            msgid,
            t,
            "single",
            &format!("u{}", i % 17),
            &format!("u{}", i % 13),
        ),
        1 => text_message(
            msgid,
            t,
            "group",
            &format!("g{}", i % 5),
            &format!("u{}", i % 11),
        ),
        _ => text_message(msgid, t, "chatroom", "10055", &format!("u{}", i % 7)),
    }
}

/// NATS message `i`: a batch of events; every 7th repeats an earlier batch, every 11th is bad in
/// some way, every 29th is for an app that does not exist.
fn nats_message(i: u64, key: &str, prefix: &str, now: i64, sent: &mut Sent) -> (String, Vec<u8>) {
    let subject = format!("{prefix}.{key}");
    let t = now - 3_600_000 + (i as i64 * 997) % 3_000_000;
    let batch = |i: u64| -> Vec<Value> {
        let n = 1 + i % 6;
        (0..n)
            .map(|j| message(i * 10 + j + 1, t + j as i64, i + j))
            .collect()
    };
    if i % 29 == 28 {
        let body = ndjson(&batch(i)).into_bytes();
        sent.bad.insert(body.clone());
        return (format!("{prefix}.nosuchapp000000000000000"), body);
    }
    if i % 11 == 10 {
        let mut events = batch(i);
        let body = match i % 3 {
            0 => format!("{{\"event\": \"message\", \"msgid\": {i}, broken").into_bytes(),
            // A message without msgid: refused over a stream.
            1 => {
                events[0].as_object_mut().unwrap().remove("msgid");
                ndjson(&events).into_bytes()
            }
            // One bad event refuses the whole NATS message.
            _ => {
                events.push(serde_json::json!({"event": "message", "msgid": i * 10 + 9, "target_type": "nowhere"}));
                ndjson(&events).into_bytes()
            }
        };
        sent.bad.insert(body.clone());
        return (subject, body);
    }
    let source = if i % 7 == 6 { i - 5 } else { i };
    let events = batch(source);
    for e in &events {
        sent.valid.insert(e["msgid"].as_u64().unwrap());
    }
    // Lifecycle events ride along now and then.
    let mut body = ndjson(&events);
    if i.is_multiple_of(5) {
        body.push_str(&format!(
            "\n{{\"event\":\"user_login\",\"username\":\"u{}\",\"time\":{t}}}",
            i % 13
        ));
    }
    (subject, body.into_bytes())
}

async fn admin_get(data: &std::path::Path, path: &str) -> Value {
    let a: Value =
        serde_json::from_slice(&std::fs::read(data.join("admin.json")).unwrap()).unwrap();
    reqwest::Client::new()
        .get(format!("{}{path}", a["url"].as_str().unwrap()))
        .bearer_auth(a["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_events_are_stored_once_through_sigkills_and_bad_ones_dead_lettered() {
    let client = async_nats::connect(NATS_URL).await.unwrap_or_else(|e| {
        panic!(
            "the NATS tests need nats-server with JetStream at {NATS_URL} (start it: \
             start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
             -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server): {e}"
        )
    });
    let js = jetstream::new(client);
    let tag = format!(
        "{}x{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond() % 1_000_000_007
    );
    let (stream, prefix, dead) = (
        format!("IMT{tag}"),
        format!("imt{tag}.in"),
        format!("imt{tag}.dead"),
    );
    let _cleanup = Streams(vec![stream.clone(), format!("{stream}_DEAD")]);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let creds = Creds {
        key: "natstestkey0000000000000".into(),
        secret: "natstestsecret0000000000".into(),
    };
    create_app_at(&data, &creds);
    let flags = [
        "--nats-url",
        NATS_URL,
        "--nats-stream",
        &stream,
        "--nats-subject-prefix",
        &prefix,
        "--nats-dead-letter-prefix",
        &dead,
        "--nats-batch",
        "16",
        "--nats-ack-wait-secs",
        "1",
    ];
    let (child, mut url) = spawn_server(data.to_str().unwrap(), &flags);
    let mut server = Reaped(child);
    // The server creates the streams.
    for _ in 0..200 {
        if js.get_stream(&stream).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let now = jiff::Timestamp::now().as_millisecond();
    const N: u64 = 600;
    let publisher = {
        let (js, key, prefix) = (js.clone(), creds.key.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut sent = Sent::default();
            for i in 0..N {
                let (subject, body) = nats_message(i, &key, &prefix, now, &mut sent);
                js.publish(subject, body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            sent
        })
    };
    // SIGKILL mid-stream, three times.
    for k in 0..3 {
        tokio::time::sleep(Duration::from_millis(400 + 150 * k)).await;
        drop(server);
        let (child, u) = spawn_server(data.to_str().unwrap(), &flags);
        (server, url) = (Reaped(child), u);
    }
    let sent = publisher.await.unwrap();
    assert!(sent.bad.len() >= 60 && sent.valid.len() >= 1000);

    // Until the consumer has nothing left.
    let mut status = Value::Null;
    for _ in 0..600 {
        status = admin_get(&data, "/admin/v1/intake").await;
        let lag = &status["lag"];
        if lag["pending"] == 0
            && lag["ack_pending"] == 0
            && status["messages"]["acked"].as_u64() > Some(0)
        {
            let info = js
                .get_stream(format!("{stream}_DEAD"))
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages;
            if info as usize >= sent.bad.len() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["connected"], true, "{status}");

    // Every valid message once.
    let http = reqwest::Client::new();
    let day = |ms: i64| sh(ms)[..10].to_owned();
    let (first, last) = (day(now - 3_600_000), day(now + 600_000));
    let (b, e) = (format!("{first} 00:00:00"), format!("{last} 23:59:59"));
    let mut msgids = Vec::new();
    let mut page = get_json(
        &http,
        &format!(
            "{url}/v2/messages?count=500&begin_time={}&end_time={}",
            enc(&b),
            enc(&e)
        ),
        &creds,
    )
    .await;
    let total = page["total"].as_u64().unwrap();
    loop {
        msgids.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["msgid"].as_u64().unwrap()),
        );
        match page["cursor"].as_str() {
            Some(c) => {
                page = get_json(&http, &format!("{url}/v2/messages?cursor={c}"), &creds).await
            }
            None => break,
        }
    }
    assert_eq!(msgids.len() as u64, total);
    let stored: BTreeSet<u64> = msgids.iter().copied().collect();
    assert_eq!(stored.len(), msgids.len(), "no message stored twice");
    assert!(
        stored == sent.valid,
        "every valid message stored, nothing of a bad one; differing msgids: {:?}",
        stored.symmetric_difference(&sent.valid).collect::<Vec<_>>()
    );

    // The statistics agree with the history.
    let days = if first == last { 1 } else { 2 };
    let stats = get_json(
        &http,
        &format!("{url}/v2/statistic/messages?time_unit=DAY&start={first}&duration={days}"),
        &creds,
    )
    .await;
    let counted: u64 = stats["send_msg_stat"]
        .as_array()
        .unwrap()
        .iter()
        .map(bucket_total)
        .sum();
    assert_eq!(counted, total, "{stats}");

    // Every bad message on the dead-letter subject, once, with its error.
    let dead_stream = js.get_stream(format!("{stream}_DEAD")).await.unwrap();
    let reader = dead_stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut letters = reader
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(Ok(m)) = letters.next().await {
        let h = m.headers.as_ref().expect("headers");
        assert!(!h.get("Imreport-Error").unwrap().as_str().is_empty());
        assert!(m.subject.starts_with(&dead));
        got.push(m.payload.to_vec());
    }
    assert_eq!(got.len(), sent.bad.len(), "each bad message once");
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), sent.bad);
    drop(server);
}
