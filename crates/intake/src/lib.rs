//! Stream intake: ingest events consumed from a message stream, with the ingest API's
//! guarantees. A stream message is acknowledged only once its events are durable; it is stored
//! whole or not at all; one that can never be stored goes to a dead-letter place with its
//! error and is acknowledged (no poison loop); while the store cannot take writes (its queue
//! full, its disk full, a database down) messages are handed back for later and consumption
//! pauses.
//!
//! The engine ([`Engine`]) knows nothing of any one stream: a stream is a [`Source`] of
//! [`Delivery`]s. NATS JetStream is the one built in ([`nats`]); docs/API.md says how Kafka
//! maps onto the same two traits.

mod engine;
pub mod nats;

pub use engine::Engine;

use bytes::Bytes;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A failure of the stream itself (not of what a message holds).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        SourceError(e.to_string())
    }
}

/// One message taken from a stream, for one app.
#[async_trait::async_trait]
pub trait Delivery: Send + Sync {
    /// The key of the app it is for.
    fn app_key(&self) -> &str;
    /// Its body: what `POST /ingest/v1/events` takes (one event, a JSON array, or NDJSON).
    fn payload(&self) -> Bytes;
    /// Where it came from, for logs and dead letters.
    fn origin(&self) -> String;
    /// Its events are durable: it is never to be delivered again.
    async fn ack(&self) -> Result<(), SourceError>;
    /// Not now: deliver it again after `delay`.
    async fn retry(&self, delay: Duration) -> Result<(), SourceError>;
    /// It can never be stored: keep it with `error` where operators look, then acknowledge it.
    async fn dead_letter(&self, error: &str) -> Result<(), SourceError>;
}

/// A stream of deliveries.
#[async_trait::async_trait]
pub trait Source: Send {
    /// The next messages, at most `max`, as soon as there is one; none after a short quiet
    /// spell (so that the caller can look at its stop signal).
    async fn next(&mut self, max: usize) -> Result<Vec<Box<dyn Delivery>>, SourceError>;
    /// How far behind the intake is, as the stream counts it.
    async fn lag(&mut self) -> Result<Lag, SourceError>;
}

/// Messages not yet acknowledged.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lag {
    /// In the stream, not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
}

/// What an intake has done, for the admin API (and, later, metrics).
#[derive(Debug, Default)]
pub struct Status {
    /// The source, its address and what it reads (fixed at start).
    pub describe: Mutex<serde_json::Value>,
    pub connected: AtomicBool,
    pub paused: AtomicBool,
    pub acked: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub expired: AtomicU64,
    pub pending: AtomicU64,
    pub ack_pending: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Status {
    pub fn error(&self, e: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// The status as the admin API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Relaxed);
        serde_json::json!({
            "source": *self.describe.lock().unwrap_or_else(|p| p.into_inner()),
            "connected": self.connected.load(Relaxed),
            "paused": self.paused.load(Relaxed),
            "lag": {"pending": n(&self.pending), "ack_pending": n(&self.ack_pending)},
            "messages": {
                "acked": n(&self.acked),
                "dead_lettered": n(&self.dead_lettered),
                "retried": n(&self.retried),
            },
            "events": {
                "accepted": n(&self.accepted),
                "duplicates": n(&self.duplicates),
                "expired": n(&self.expired),
            },
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}
