//! A client of a server's ingest API, shared by the commands that feed one (`loadgen`,
//! `import`, `mirror`): posts NDJSON batches with an app's credentials, and waits and retries
//! when the server asks it to (`429`, `503`, honouring `Retry-After`).

use anyhow::{Context, Result, bail};
use imreport_store::IngestOutcome;
use std::time::Duration;

/// Longest wait between retries, whatever `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct IngestClient {
    http: reqwest::Client,
    endpoint: String,
    app_key: String,
    master_secret: String,
}

impl IngestClient {
    pub fn new(url: &str, app_key: &str, master_secret: &str) -> Self {
        IngestClient {
            http: reqwest::Client::new(),
            endpoint: format!("{}/ingest/v1/events", url.trim_end_matches('/')),
            app_key: app_key.to_owned(),
            master_secret: master_secret.to_owned(),
        }
    }

    /// Posts one NDJSON batch until the server takes it or refuses it for good: `429` and
    /// `503` are retried after their `Retry-After` (or a short pause), as are broken
    /// connections; any other refusal is an error with the server's message.
    pub async fn post(&self, body: bytes::Bytes) -> Result<IngestOutcome> {
        let mut pause = Duration::from_millis(200);
        loop {
            let sent = self
                .http
                .post(&self.endpoint)
                .basic_auth(&self.app_key, Some(&self.master_secret))
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) if e.is_connect() || e.is_request() => {
                    tracing::debug!(error = %e, "ingest request failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_WAIT);
                    continue;
                }
                Err(e) => return Err(e).context("ingest request failed"),
            };
            let status = r.status();
            if status == 429 || status == 503 {
                let wait = retry_after(&r).unwrap_or(pause).min(MAX_RETRY_WAIT);
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_success() {
                return r.json().await.context("unreadable ingest answer");
            }
            let text = r.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("the server refused a batch ({status}): {message}");
        }
    }
}

/// A `Retry-After` of whole seconds.
pub fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}
