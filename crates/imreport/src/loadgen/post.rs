//! Posting generated traffic to a server's ingest API, retrying what it asks to be retried.

use super::*;

#[derive(Default, Debug)]
pub(super) struct Summary {
    pub(super) events: u64,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) accepted: u64,
    pub(super) duplicates: u64,
    pub(super) expired: u64,
}

pub(super) async fn post(
    a: &LoadgenArgs,
    url: &str,
    generator: Generator,
    bar: &ProgressBar,
) -> Result<Summary> {
    let key = a
        .app_key
        .clone()
        .context("--app-key is required with --url")?;
    let secret = a
        .master_secret
        .clone()
        .context("--master-secret is required with --url")?;
    // One thread generates the batches and keeps one ready per client: a client whose answer
    // arrives sends its next batch at once, instead of the clients taking turns to generate
    // while the server, having answered them all, waits for work.
    let clients = a.concurrency.max(1);
    let batch = a.batch.max(1);
    let (ready, batches) = tokio::sync::mpsc::channel::<(bytes::Bytes, u64, u64)>(clients);
    let producer = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let mut events = generator.peekable();
            let mut body = String::with_capacity(batch * 256);
            while events.peek().is_some() {
                body.clear();
                let (mut n, mut msgs) = (0u64, 0u64);
                for e in events.by_ref().take(batch) {
                    e.write_ndjson(&mut body);
                    n += 1;
                    msgs += u64::from(e.is_message());
                }
                let payload = bytes::Bytes::copy_from_slice(body.as_bytes());
                if ready.blocking_send((payload, n, msgs)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the generator thread")?;
    let batches = Arc::new(tokio::sync::Mutex::new(batches));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let client = reqwest::Client::new();
    let endpoint = format!("{}/ingest/v1/events", url.trim_end_matches('/'));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (batches, summary, client, endpoint, bar) = (
            batches.clone(),
            summary.clone(),
            client.clone(),
            endpoint.clone(),
            bar.clone(),
        );
        let (key, secret) = (key.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = batches.lock().await.recv().await;
                let Some((payload, n, msgs)) = next else {
                    return;
                };
                let result = loop {
                    let r = client
                        .post(&endpoint)
                        .basic_auth(&key, Some(&secret))
                        .header("content-type", "application/x-ndjson")
                        .body(payload.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 503 || r.status() == 429 => {
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        }
                        Ok(r) if r.status().is_success() => {
                            break r.json::<serde_json::Value>().await.ok();
                        }
                        Ok(r) => {
                            eprintln!(
                                "loadgen: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                            break None;
                        }
                        Err(e) => {
                            eprintln!("loadgen: {e}");
                            break None;
                        }
                    }
                };
                let mut s = summary.lock().expect("lock");
                s.requests += 1;
                s.events += n;
                match result {
                    Some(v) => {
                        s.accepted += v["accepted"].as_u64().unwrap_or(0);
                        s.duplicates += v["duplicates"].as_u64().unwrap_or(0);
                        s.expired += v["expired"].as_u64().unwrap_or(0);
                    }
                    None => s.errors += 1,
                }
                bar.inc(msgs);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    let s = std::mem::take(&mut *summary.lock().expect("lock"));
    Ok(s)
}
