//! `POST /ingest/v1/events`: NDJSON or a JSON array of events, all-or-nothing.

use crate::error::ApiError;
use crate::{AppState, auth, json_body};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use imreport_domain::event::decode_batch;

pub async fn ingest(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let app = auth::authenticate(st.store.as_ref(), &headers).await?;
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
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
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
