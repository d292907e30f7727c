//! The intake loop, for any [`Source`]: takes what is ready, stores each app's messages in one
//! batch, and settles every message by what became of it.

use crate::{Delivery, Source, Status};
use imreport_domain::Clock;
use imreport_domain::event::{Event, IngestLimits, decode_batch};
use imreport_store::{Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// First pause after the store or the stream failed; it doubles up to [`MAX_PAUSE`].
const MIN_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(15);
/// How often the lag is asked of the stream.
const LAG_EVERY: Duration = Duration::from_secs(2);

pub struct Engine {
    pub store: Arc<dyn Store>,
    pub limits: IngestLimits,
    pub clock: Clock,
    pub status: Arc<Status>,
    /// Most messages taken at once.
    pub batch: usize,
    /// Where payloads are decoded: threads below the queries' priority.
    pub pool: imreport_store::priority::IngestPool,
}

/// What became of a group of messages.
#[derive(PartialEq)]
enum Settled {
    Done,
    /// The store could not take them now: slow down.
    Later,
}

type Ds = Vec<Box<dyn Delivery>>;

impl Engine {
    /// Consumes until `stop` resolves; the messages in hand when it does are settled first.
    pub async fn run(&self, mut source: impl Source, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut pause = MIN_PAUSE;
        let mut lag_at: Option<Instant> = None;
        loop {
            if lag_at.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
                lag_at = Some(Instant::now());
                match source.lag().await {
                    Ok(l) => {
                        self.status.pending.store(l.pending, Relaxed);
                        self.status.ack_pending.store(l.ack_pending, Relaxed);
                    }
                    Err(e) => self.status.error(format_args!("lag: {e}")),
                }
            }
            let got = tokio::select! {
                _ = &mut stop => return,
                got = source.next(self.batch) => got,
            };
            let settled = match got {
                Ok(ds) if ds.is_empty() => Settled::Done,
                Ok(ds) => {
                    self.status.connected.store(true, Relaxed);
                    self.handle(ds).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream intake: the stream failed; retrying");
                    self.status.connected.store(false, Relaxed);
                    self.status.error(&e);
                    Settled::Later
                }
            };
            if settled == Settled::Later {
                self.status.paused.store(true, Relaxed);
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
            } else {
                self.status.paused.store(false, Relaxed);
                pause = MIN_PAUSE;
            }
        }
    }

    /// Stores the messages of each app in one batch (in the order the stream gave them).
    async fn handle(&self, ds: Ds) -> Settled {
        let mut groups: Vec<(String, Ds)> = Vec::new();
        for d in ds {
            match groups.iter_mut().find(|(k, _)| k == d.app_key()) {
                Some((_, g)) => g.push(d),
                None => groups.push((d.app_key().to_owned(), vec![d])),
            }
        }
        let mut settled = Settled::Done;
        for (key, group) in groups {
            if self.app_group(&key, group).await == Settled::Later {
                settled = Settled::Later;
            }
        }
        settled
    }

    async fn app_group(&self, key: &str, group: Ds) -> Settled {
        let app = match self.store.app(key).await {
            Ok(Some(app)) => app,
            Ok(None) => {
                for d in &group {
                    self.dead(d.as_ref(), &format!("no app has key {key:?}"))
                        .await;
                }
                return Settled::Done;
            }
            Err(e) => return self.later(&group, &e).await,
        };
        let payloads: Vec<_> = group.iter().map(|d| d.payload()).collect();
        let (now, limits, k) = (self.clock.now_ms(), self.limits, key.to_owned());
        // Decoding megabytes of JSON is kept off the async workers, below the queries' priority.
        let decoded = self
            .pool
            .run(move || {
                payloads
                    .iter()
                    .map(|p| decode(p, &k, now, &limits))
                    .collect::<Vec<_>>()
            })
            .await;
        let mut good: Ds = Vec::new();
        let mut events = Vec::new();
        for (d, r) in group.into_iter().zip(decoded) {
            match r {
                Ok(ev) => {
                    events.push(ev);
                    good.push(d);
                }
                Err(why) => self.dead(d.as_ref(), &why).await,
            }
        }
        if good.is_empty() {
            return Settled::Done;
        }
        let all: Vec<Event> = events.into_iter().flatten().collect();
        match self.store.ingest(&app, all).await {
            Ok(outcome) => {
                self.count(&outcome);
                for d in &good {
                    self.ack(d.as_ref()).await;
                }
                Settled::Done
            }
            // One message's events refused by the store: find it by storing each alone (rare:
            // the store refuses only what decoding cannot see, so decoding again is cheap).
            Err(StoreError::Invalid(_)) if good.len() > 1 => {
                let mut settled = Settled::Done;
                for d in &good {
                    let ev = match decode(&d.payload(), key, now, &self.limits) {
                        Ok(ev) => ev,
                        Err(why) => {
                            self.dead(d.as_ref(), &why).await;
                            continue;
                        }
                    };
                    match self.store.ingest(&app, ev).await {
                        Ok(outcome) => {
                            self.count(&outcome);
                            self.ack(d.as_ref()).await;
                        }
                        Err(StoreError::Invalid(e)) => self.dead(d.as_ref(), &e.to_string()).await,
                        Err(e) => {
                            settled = self.later(std::slice::from_ref(d), &e).await;
                        }
                    }
                }
                settled
            }
            Err(StoreError::Invalid(e)) => {
                self.dead(good[0].as_ref(), &e.to_string()).await;
                Settled::Done
            }
            Err(e) => self.later(&good, &e).await,
        }
    }

    fn count(&self, o: &imreport_store::IngestOutcome) {
        self.status.accepted.fetch_add(o.accepted, Relaxed);
        self.status.duplicates.fetch_add(o.duplicates, Relaxed);
        self.status.expired.fetch_add(o.expired, Relaxed);
    }

    async fn ack(&self, d: &dyn Delivery) {
        match d.ack().await {
            Ok(()) => {
                self.status.acked.fetch_add(1, Relaxed);
            }
            // It comes back and is a duplicate then.
            Err(e) => {
                tracing::warn!(origin = %d.origin(), error = %e, "stream intake: an ack failed")
            }
        }
    }

    async fn dead(&self, d: &dyn Delivery, why: &str) {
        tracing::warn!(origin = %d.origin(), error = why, "stream intake: a message cannot be stored; dead-lettered");
        match d.dead_letter(why).await {
            Ok(()) => {
                self.status.dead_lettered.fetch_add(1, Relaxed);
            }
            Err(e) => {
                tracing::warn!(origin = %d.origin(), error = %e, "stream intake: dead-lettering failed; it comes back");
                let _ = d.retry(MIN_PAUSE).await;
            }
        }
    }

    /// The store cannot take writes now: the messages come back later.
    async fn later(&self, ds: &[Box<dyn Delivery>], e: &StoreError) -> Settled {
        tracing::warn!(error = %e, "stream intake: the store cannot take writes now; pausing");
        self.status.error(e);
        for d in ds {
            if d.retry(Duration::from_secs(1)).await.is_ok() {
                self.status.retried.fetch_add(1, Relaxed);
            }
        }
        Settled::Later
    }
}

/// A stream message's events, as `POST /ingest/v1/events` takes them, with one more rule:
/// every message carries its `msgid`, since a message the server numbers would be stored again
/// when the stream delivers it again.
fn decode(
    payload: &[u8],
    key: &str,
    now: imreport_domain::Millis,
    limits: &IngestLimits,
) -> Result<Vec<Event>, String> {
    if payload.len() > limits.max_body_bytes {
        return Err(format!(
            "the message is {} bytes, over max_body_bytes ({})",
            payload.len(),
            limits.max_body_bytes
        ));
    }
    let events = decode_batch(payload, key, now, limits).map_err(|e| e.to_string())?;
    if let Some(i) = events
        .iter()
        .position(|e| matches!(e, Event::Message(m) if m.msgid == 0))
    {
        return Err(format!(
            "event {} is a message without msgid: over a stream every message needs one, since a message delivered again would otherwise be stored again",
            i + 1
        ));
    }
    if events.is_empty() {
        return Err("no events".into());
    }
    Ok(events)
}
