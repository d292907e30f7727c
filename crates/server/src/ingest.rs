//! `POST /ingest/v1/events`: NDJSON or a JSON array of events, all-or-nothing.

use crate::error::ApiError;
use crate::{AppState, json_body};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use imreport_domain::app::App;
use imreport_domain::event::decode_batch;

/// How long an ingest request may wait for a slot before it is answered 503.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn ingest(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Bounds the memory held by bodies being read and decoded, whatever the number of clients:
    // a request waits (its body unread) for a slot, and is turned away if none frees up soon.
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::error::CODE_BUSY,
            "the server is busy: too many ingest requests in progress; retry after the Retry-After delay",
        )
    };
    let _slot = tokio::time::timeout(SLOT_WAIT, st.ingest_slots.clone().acquire_owned())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    let limit = st.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            crate::error::CODE_INVALID,
            format!("request body is over {limit} bytes; split the batch into smaller requests"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes =
        match tokio::time::timeout(st.body_read_timeout, axum::body::to_bytes(body, limit)).await {
            Ok(read) => read.map_err(|_| too_large())?,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    crate::error::CODE_INVALID,
                    format!(
                        "the request body was not received within {} s",
                        st.body_read_timeout.as_secs()
                    ),
                ));
            }
        };
    let now = st.clock.now_ms();
    let limits = st.limits;
    let key = app.key.clone();
    // Parsing 16 MiB of JSON takes tens of milliseconds: keep it off the async workers.
    let events = tokio::task::spawn_blocking(move || decode_batch(&bytes, &key, now, &limits))
        .await
        .map_err(ApiError::internal)??;
    let outcome = st.store.ingest(&app, events).await?;
    Ok(json_body(
        serde_json::to_vec(&outcome).expect("serializable"),
    ))
}
