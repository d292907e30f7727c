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
    let rate = a.rate.filter(|r| *r > 0.0);
    // Ctrl-C (SIGINT) stops releasing batches: those in flight are answered and the summary is
    // printed (the benchmark reads the rate reached from it); a second one exits at once.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopping.store(true, std::sync::atomic::Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let producer = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let mut events = generator.peekable();
            let mut body = String::with_capacity(batch * 256);
            let (started, mut released) = (Instant::now(), 0u64);
            while events.peek().is_some() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                body.clear();
                let (mut n, mut msgs) = (0u64, 0u64);
                for e in events.by_ref().take(batch) {
                    e.write_ndjson(&mut body);
                    n += 1;
                    msgs += u64::from(e.is_message());
                }
                // Handed over, not copied: the next batch is written into a new buffer.
                let next = String::with_capacity(body.len() + body.len() / 8);
                let payload = bytes::Bytes::from(std::mem::replace(&mut body, next).into_bytes());
                // At --rate, a batch goes once the messages before it have had their time.
                if let Some(rate) = rate {
                    let due = started + std::time::Duration::from_secs_f64(released as f64 / rate);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                released += msgs;
                if ready.blocking_send((payload, n, msgs)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the generator thread")?;
    let batches = Arc::new(tokio::sync::Mutex::new(batches));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let client = crate::client::IngestClient::new(url, &key, &secret);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (batches, summary, client, bar) = (
            batches.clone(),
            summary.clone(),
            client.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let next = batches.lock().await.recv().await;
                let Some((payload, n, msgs)) = next else {
                    return;
                };
                let result = client.post(payload).await;
                let mut s = summary.lock().expect("lock");
                s.requests += 1;
                s.events += n;
                match result {
                    Ok(o) => {
                        s.accepted += o.accepted;
                        s.duplicates += o.duplicates;
                        s.expired += o.expired;
                    }
                    Err(e) => {
                        eprintln!("loadgen: {e:#}");
                        s.errors += 1;
                    }
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
