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

/// Where `import` and `mirror` store what they read: a running server, or a store opened
/// directly (the server must then be stopped).
#[derive(Debug, Clone, clap::Args)]
pub struct DestArgs {
    /// The app the events are stored for
    #[arg(long)]
    pub app_key: String,
    /// A running server to store through, e.g. http://127.0.0.1:8080 (with --master-secret);
    /// without it, the store the settings name is opened directly (the server must be stopped)
    #[arg(long)]
    pub url: Option<String>,
    /// The app's master secret on that server
    #[arg(long)]
    pub master_secret: Option<String>,
    #[command(flatten)]
    pub settings: crate::settings::SettingsArgs,
}

/// An open destination: batches of validated events go in with every ingest rule.
pub enum Destination {
    Server(IngestClient),
    Store(
        std::sync::Arc<dyn imreport_store::Store>,
        imreport_domain::app::App,
    ),
}

impl Destination {
    pub async fn open(d: &DestArgs) -> Result<Destination> {
        Ok(match &d.url {
            Some(url) => {
                let secret = d
                    .master_secret
                    .as_deref()
                    .context("--master-secret is required with --url")?;
                Destination::Server(IngestClient::new(url, &d.app_key, secret))
            }
            None => {
                let s = d.settings.clone().resolve()?;
                let stores = crate::launch::open_store(&s, &imreport_domain::Clock::System)
                    .await
                    .context(
                        "cannot open the store (a running server holds it: go through it with --url)",
                    )?;
                let app = stores
                    .store
                    .app(&d.app_key)
                    .await?
                    .with_context(|| format!("no app has key {:?} in this store", d.app_key))?;
                Destination::Store(stores.store, app)
            }
        })
    }

    /// Stores one batch; returns once it is durable.
    pub async fn send(
        &self,
        app_key: &str,
        events: Vec<imreport_domain::event::Event>,
    ) -> Result<IngestOutcome> {
        match self {
            Destination::Server(client) => {
                let mut body = Vec::with_capacity(events.len() * 512);
                for e in &events {
                    e.write_ingest_json(app_key, &mut body);
                    body.push(b'\n');
                }
                client.post(body.into()).await
            }
            Destination::Store(store, app) => Ok(store.ingest(app, events).await?),
        }
    }
}
