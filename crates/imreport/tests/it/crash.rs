//! Crash safety of the real binary: concurrent ingest, SIGKILL at random moments (20 times),
//! restart, and check that every acknowledged batch is whole, no batch is ever found in part,
//! retries never count twice, and statistics equal what the history holds.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PER_BATCH: u64 = 40;

fn start(data: &str) -> (Child, String) {
    spawn_server(data, &["--min-free-disk-mb", "0"])
}

fn batch(b: u64, now: i64) -> Vec<Value> {
    let mut evs: Vec<Value> = (0..PER_BATCH)
        .map(|i| {
            let tt = ["single", "group", "chatroom"][(i % 3) as usize];
            text_message(
                b * 1000 + i + 1,
                now - (i as i64) * 7,
                tt,
                &format!("t{}", i % 5),
                &format!("u{}", b % 7),
            )
        })
        .collect();
    evs.push(json!({"event": "user_registered", "username": format!("batch{b}"), "time": now}));
    evs
}

#[derive(Default)]
struct Ledger {
    acked: HashSet<u64>,
    unknown: BTreeMap<u64, i64>,
    sent_at: BTreeMap<u64, i64>,
}

async fn all_msgids(
    http: &reqwest::Client,
    url: &str,
    creds: &Creds,
    from: i64,
    to: i64,
) -> HashSet<u64> {
    let mut ids = HashSet::new();
    let mut q = format!(
        "{url}/v2/messages?count=1000&begin_time={}&end_time={}",
        enc(&sh(from)),
        enc(&sh(to))
    );
    loop {
        let page: Value = get_json(http, q.as_str(), creds).await;
        for m in page["messages"].as_array().unwrap() {
            assert!(
                ids.insert(m["msgid"].as_u64().unwrap()),
                "a message is repeated"
            );
        }
        match page.get("cursor").and_then(Value::as_str) {
            Some(c) => q = format!("{url}/v2/messages?cursor={c}"),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_sigkill_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_owned();
    let out = Command::new(BIN)
        .args(["app", "create", "--data-dir", &data, "--json"])
        .output()
        .unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    let creds = Arc::new(Creds {
        key: c["app_key"].as_str().unwrap().into(),
        secret: c["master_secret"].as_str().unwrap().into(),
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next_batch = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let mut seed = 0x9e3779b97f4a7c15u64;

    for round in 0..20 {
        let t = std::time::Instant::now();
        let (mut child, url) = start(&data);
        // Retry what was unanswered: each must now be whole, and count once.
        let unknown: Vec<(u64, i64)> = std::mem::take(&mut ledger.lock().unwrap().unknown)
            .into_iter()
            .collect();
        let present = all_msgids(
            &http,
            &url,
            &creds,
            start_ms - 60_000,
            jiff::Timestamp::now().as_millisecond() + 1000,
        )
        .await;
        check_whole(&present, &ledger.lock().unwrap());
        for (b, at) in unknown {
            let was_stored = present.contains(&(b * 1000 + 1));
            let r = http
                .post(format!("{url}/ingest/v1/events"))
                .header("authorization", creds.header())
                .body(ndjson(&batch(b, at)))
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            let accepted = body["accepted"].as_u64().unwrap();
            assert_eq!(
                accepted + body["duplicates"].as_u64().unwrap(),
                PER_BATCH + 1,
                "{body}"
            );
            assert_eq!(
                accepted == 0,
                was_stored,
                "batch {b}: a retry counted twice or a lost batch was not stored: {body}"
            );
            ledger.lock().unwrap().acked.insert(b);
        }

        // Concurrent clients until the kill.
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (http, url, creds, ledger, next) = (
                http.clone(),
                url.clone(),
                creds.clone(),
                ledger.clone(),
                next_batch.clone(),
            );
            clients.push(tokio::spawn(async move {
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let at = jiff::Timestamp::now().as_millisecond();
                    ledger.lock().unwrap().sent_at.insert(b, at);
                    let r = http
                        .post(format!("{url}/ingest/v1/events"))
                        .header("authorization", creds.header())
                        .body(ndjson(&batch(b, at)))
                        .send()
                        .await;
                    let ok = match r {
                        Ok(r) if r.status() == 200 => r.json::<Value>().await.is_ok(),
                        _ => false,
                    };
                    {
                        let mut l = ledger.lock().unwrap();
                        if ok {
                            l.acked.insert(b);
                        } else {
                            l.unknown.insert(b, at);
                            return;
                        }
                    }
                    // Paced, so the data (and each restart's recovery) stays small.
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(50 + seed % 300)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for c in clients {
            c.await.unwrap();
        }
        eprintln!(
            "crash round {round}: {} messages stored, {:?}",
            present.len(),
            t.elapsed()
        );
    }

    // Final check, and statistics against history.
    let (mut child, url) = start(&data);
    let now = jiff::Timestamp::now().as_millisecond();
    let present = all_msgids(&http, &url, &creds, start_ms - 60_000, now + 1000).await;
    let stored_batches = {
        let l = ledger.lock().unwrap();
        check_whole(&present, &l);
        assert!(
            l.acked.len() >= 20,
            "too few acknowledged batches: {}",
            l.acked.len()
        );
        l.sent_at
            .keys()
            .filter(|b| present.contains(&(*b * 1000 + 1)))
            .count() as u64
    };
    let day = sh(now)[..10].to_owned();
    let stats = get_json(
        &http,
        &format!("{url}/v2/statistic/messages?time_unit=DAY&start={day}&duration=1"),
        &creds,
    )
    .await;
    let counted = bucket_total(&stats["send_msg_stat"][0]);
    let in_history = all_msgids(
        &http,
        &url,
        &creds,
        (now + 8 * HOUR).div_euclid(DAY) * DAY - 8 * HOUR,
        now + 1000,
    )
    .await
    .len() as u64;
    assert_eq!(
        counted, in_history,
        "statistics and history disagree after crashes"
    );
    let users = get_json(
        &http,
        &format!("{url}/v2/statistic/users?time_unit=DAY&start={day}&duration=1"),
        &creds,
    )
    .await;
    assert_eq!(
        users[0]["total_users"].as_u64().unwrap(),
        stored_batches,
        "one registration per stored batch"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every batch is whole or absent; acknowledged ones are present.
fn check_whole(present: &HashSet<u64>, l: &Ledger) {
    for b in l.sent_at.keys() {
        let n = (1..=PER_BATCH)
            .filter(|i| present.contains(&(b * 1000 + i)))
            .count() as u64;
        assert!(
            n == 0 || n == PER_BATCH,
            "batch {b} is stored in part: {n} of {PER_BATCH}"
        );
        if l.acked.contains(b) {
            assert_eq!(n, PER_BATCH, "acknowledged batch {b} was lost");
        }
    }
}
