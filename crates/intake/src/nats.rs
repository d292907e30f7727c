//! NATS JetStream as a [`Source`]: one durable pull consumer reads the subjects
//! `PREFIX.<app key>` of a stream (created when missing); a message is acknowledged once its
//! events are durable, handed back with a delay (`NAK`) when the store cannot take it now, and
//! a message that can never be stored is published to `DEAD_PREFIX.<app key>` (kept by a
//! stream of its own) with its error in the `Imreport-Error` header before it is acknowledged.

use crate::{Delivery, Lag, Source, SourceError};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::time::Duration;

/// Where to read and where dead letters go (settings).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NatsConfig {
    pub url: String,
    /// The stream holding `subject_prefix.*`.
    pub stream: String,
    pub subject_prefix: String,
    pub dead_letter_prefix: String,
    /// The durable consumer's name; servers sharing it share the work.
    pub consumer: String,
    /// A message taken and not acknowledged within this time is delivered again (to another
    /// server, or to this one after a crash).
    pub ack_wait: Duration,
}

impl NatsConfig {
    /// The stream that keeps dead letters.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DEAD", self.stream)
    }
}

/// Most bytes taken at once (a NATS message is at most 1 MiB by default, 64 MiB at most).
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How long `next` waits for a first message before it returns empty-handed.
const QUIET: Duration = Duration::from_millis(500);

pub struct NatsSource {
    js: jetstream::Context,
    consumer: PullConsumer,
    messages: Option<jetstream::consumer::pull::Stream>,
    config: NatsConfig,
}

impl NatsSource {
    /// Connects, and creates the streams and the consumer when missing (existing ones are
    /// used as they are, so an operator may create them with other limits).
    pub async fn connect(config: &NatsConfig) -> Result<NatsSource, SourceError> {
        let client = async_nats::ConnectOptions::new()
            .name("imreport")
            .connect(&config.url)
            .await
            .map_err(|e| SourceError(format!("cannot connect to NATS at {}: {e}", config.url)))?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.*", config.subject_prefix)],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| SourceError(format!("stream {}: {e}", config.stream)))?;
        js.get_or_create_stream(jetstream::stream::Config {
            name: config.dead_letter_stream(),
            subjects: vec![format!("{}.*", config.dead_letter_prefix)],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| SourceError(format!("stream {}: {e}", config.dead_letter_stream())))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &config.consumer,
                jetstream::consumer::pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    filter_subject: format!("{}.*", config.subject_prefix),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| SourceError(format!("consumer {}: {e}", config.consumer)))?;
        Ok(NatsSource {
            js,
            consumer,
            messages: None,
            config: config.clone(),
        })
    }
}

#[async_trait::async_trait]
impl Source for NatsSource {
    async fn next(&mut self, max: usize) -> Result<Vec<Box<dyn Delivery>>, SourceError> {
        if self.messages.is_none() {
            self.messages = Some(
                self.consumer
                    .stream()
                    .max_messages_per_batch(max)
                    .max_bytes_per_batch(MAX_BATCH_BYTES)
                    .messages()
                    .await
                    .map_err(SourceError::new)?,
            );
        }
        let stream = self.messages.as_mut().expect("just set");
        let mut out: Vec<Box<dyn Delivery>> = Vec::new();
        let mut take = |m: Option<Result<jetstream::Message, _>>| match m {
            Some(Ok(m)) => {
                out.push(Box::new(NatsDelivery::new(m, &self.js, &self.config)));
                Ok(true)
            }
            Some(Err(e)) => Err(SourceError::new(e)),
            None => Err(SourceError("the NATS message stream ended".into())),
        };
        let first = match tokio::time::timeout(QUIET, stream.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(m) => take(m),
        };
        if let Err(e) = first {
            // Made again on the next call (a lost connection, missed heartbeats).
            self.messages = None;
            return Err(e);
        }
        // Then whatever has arrived already.
        let mut n = 1;
        while n < max {
            match stream.next().now_or_never() {
                Some(m) => {
                    if take(m).is_err() {
                        // Those in hand are handled; the stream is made again next time.
                        self.messages = None;
                        break;
                    }
                    n += 1;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn lag(&mut self) -> Result<Lag, SourceError> {
        let info = self.consumer.info().await.map_err(SourceError::new)?;
        Ok(Lag {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
        })
    }
}

struct NatsDelivery {
    message: jetstream::Message,
    js: jetstream::Context,
    app_key: String,
    dead_subject: String,
    origin: String,
    /// Dead letters of one stream message are stored once (JetStream drops a publication
    /// whose `Nats-Msg-Id` it has seen within its duplicate window, 2 minutes by default).
    dead_id: String,
}

impl NatsDelivery {
    fn new(message: jetstream::Message, js: &jetstream::Context, c: &NatsConfig) -> Self {
        let subject = message.subject.to_string();
        let app_key = subject
            .strip_prefix(&c.subject_prefix)
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or("")
            .to_owned();
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        NatsDelivery {
            dead_subject: format!("{}.{app_key}", c.dead_letter_prefix),
            origin: format!("{}#{seq}", subject),
            dead_id: format!("{}-{seq}", c.stream),
            app_key,
            message,
            js: js.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Delivery for NatsDelivery {
    fn app_key(&self) -> &str {
        &self.app_key
    }

    fn payload(&self) -> Bytes {
        self.message.payload.clone()
    }

    fn origin(&self) -> String {
        self.origin.clone()
    }

    async fn ack(&self) -> Result<(), SourceError> {
        self.message.ack().await.map_err(SourceError::new)
    }

    async fn retry(&self, delay: Duration) -> Result<(), SourceError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(SourceError::new)
    }

    async fn dead_letter(&self, error: &str) -> Result<(), SourceError> {
        let mut headers = async_nats::HeaderMap::new();
        // A header value is one line.
        let error: String = error
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(2000)
            .collect();
        headers.insert("Imreport-Error", error.as_str());
        headers.insert("Imreport-Origin", self.origin.as_str());
        headers.insert("Nats-Msg-Id", self.dead_id.as_str());
        self.js
            .publish_with_headers(
                self.dead_subject.clone(),
                headers,
                self.message.payload.clone(),
            )
            .await
            .map_err(SourceError::new)?
            .await
            .map_err(SourceError::new)?;
        self.ack().await
    }
}
