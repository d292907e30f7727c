//! `POST /ingest/v1/events`: NDJSON or a JSON array of events, all-or-nothing.

use crate::error::{ApiError, CODE_INVALID};
use crate::{AppState, BodyLimits, detached, json_body};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use imreport_domain::Millis;
use imreport_domain::app::App;
use imreport_domain::event::{Event, IngestLimits, decode_batch, decode_routed};
use std::time::Duration;

/// The refusal of a request that found no share of a resource in time.
pub(crate) fn busy(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        crate::error::CODE_BUSY,
        format!(
            "the server is busy: too many {what} in progress for this app; retry after the Retry-After delay"
        ),
    )
}

/// How a body becomes events.
type Decode = fn(&[u8], &str, Millis, &IngestLimits) -> Result<Vec<Event>, imreport_domain::Error>;

/// `POST /ingest/v1/events`: NDJSON or a JSON array of ingest events.
pub async fn ingest(
    st: State<AppState>,
    app: Extension<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest_with(st, app, headers, body, decode_batch).await
}

/// `POST /ingest/v1/jmessage`: what JMessage's real-time message routing posts,
/// `{"total": N, "messages": [<Report V2 message objects>]}`, so that a JMessage app mirrors its
/// live traffic by pointing its routing URL here. The answer is the callback's `200` with JSON.
pub async fn routed(
    st: State<AppState>,
    app: Extension<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest_with(st, app, headers, body, decode_routed).await
}

async fn ingest_with(
    st: State<AppState>,
    app: Extension<App>,
    headers: HeaderMap,
    body: Body,
    decode: Decode,
) -> Result<Response, ApiError> {
    let answer = store_batch(st, app, headers, body, decode).await;
    let result = match &answer {
        Ok(_) => "stored",
        Err(e) if e.status.is_client_error() => "rejected",
        Err(_) => "refused",
    };
    metrics::counter!("imreport_ingest_batches_total", "result" => result).increment(1);
    answer
}

async fn store_batch(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    headers: HeaderMap,
    body: Body,
    decode: Decode,
) -> Result<Response, ApiError> {
    // Bounds the memory held by bodies being read, decoded and stored, whatever the number of
    // clients, and shares it fairly between apps: a request waits (its body unread) for a slot,
    // and is turned away if none frees up soon.
    let slot = st
        .ingest_slots
        .acquire(app.id, 1, st.share_wait)
        .await
        .ok_or_else(|| busy("ingest requests"))?;
    let limit = st.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let (answer, _slot) = detached(slot, async move {
        let bytes = read_body(body, declared, limit, st.body).await?;
        let now = st.clock.now_ms();
        let limits = st.limits;
        let (store, for_pool) = (st.store.clone(), app.clone());
        // Parsing 16 MiB of JSON takes tens of milliseconds: off the async workers, and below
        // the queries' priority; so does what the store can do ahead of its writer.
        let (batch, bytes) = st
            .ingest_pool
            .run(move || {
                let events = decode(&bytes, &for_pool.key, now, &limits);
                (events.map(|e| store.prepare(&for_pool, e)), bytes)
            })
            .await;
        // The body is freed on a blocking-pool thread: mimalloc keeps what a thread frees in
        // that thread's heap until the thread allocates again or exits, and a pool thread exits
        // once idle for 10 s, giving it back. Freed by a decoding thread or an async worker,
        // which sleep until the next request, 16 MiB bodies stayed resident after a burst
        // (`memory::oversized_ingest_arrays_stay_within_the_documented_bound`).
        drop(tokio::task::spawn_blocking(move || drop(bytes)));
        let outcome = st.store.ingest_prepared(&app, batch?).await?;
        for (result, n) in [
            ("accepted", outcome.accepted),
            ("duplicate", outcome.duplicates),
            ("expired", outcome.expired),
        ] {
            metrics::counter!("imreport_ingest_events_total", "result" => result).increment(n);
        }
        Ok(json_body(
            serde_json::to_vec(&outcome).expect("serializable"),
        ))
    })
    .await?;
    answer
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        crate::error::CODE_INVALID,
        format!("request body is over {limit} bytes; split the batch into smaller requests"),
    )
}

/// Reads a body of at most `limit` bytes that arrives within the read timeout and no slower
/// than the minimum rate (after the grace period).
async fn read_body(
    mut body: Body,
    declared: Option<u64>,
    limit: usize,
    l: BodyLimits,
) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt as _;
    let start = tokio::time::Instant::now();
    let hard = start + l.read_timeout;
    let timeout = |why: String| ApiError::new(StatusCode::REQUEST_TIMEOUT, CODE_INVALID, why);
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    loop {
        let due =
            start + l.grace + Duration::from_secs_f64(buf.len() as f64 / l.min_rate.max(1) as f64);
        let frame = match tokio::time::timeout_at(due.min(hard), body.frame()).await {
            Ok(f) => f,
            Err(_) if due < hard => {
                return Err(timeout(format!(
                    "the request body arrived slower than {} bytes per second; send it faster, or in smaller requests",
                    l.min_rate
                )));
            }
            Err(_) => {
                return Err(timeout(format!(
                    "the request body was not received within {} s",
                    l.read_timeout.as_secs()
                )));
            }
        };
        match frame {
            None => return Ok(buf),
            Some(Err(e)) => {
                return Err(ApiError::invalid(format!(
                    "the request body could not be read: {e}"
                )));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(too_large(limit));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}
