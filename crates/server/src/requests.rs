//! Request ids and the access log: every response carries `X-Request-Id` (the caller's when it
//! sent a usable one, else a fresh one), every log line of a request is inside a span that
//! carries it, and each request ends with one access-log line (method, path, status, latency),
//! its metrics (by route and status) and a `Server-Timing` header with that latency.
//! Nothing of a request's headers, query string or body is logged: secrets and message content
//! never reach the logs.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use std::time::{Duration, Instant};
use tower_http::request_id::{MakeRequestId, RequestId};
use tracing::Span;

pub const HEADER: &str = "x-request-id";

/// The response header that carries the server's time for the request.
pub const SERVER_TIMING: &str = "server-timing";

/// Longest caller-sent id kept; a longer one, or one with other characters than
/// `[A-Za-z0-9._:-]`, is replaced by a fresh id.
const MAX_LEN: usize = 64;

/// Fresh ids: 16 random hex digits.
#[derive(Clone, Copy, Default)]
pub struct Fresh;

impl MakeRequestId for Fresh {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("{:016x}", rand::random::<u64>());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Drops a caller's id that cannot be logged as it is, so that a fresh one takes its place.
pub async fn keep_usable_ids(mut req: Request, next: Next) -> axum::response::Response {
    let usable = |v: &HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
    };
    if req.headers().get(HEADER).is_some_and(|v| !usable(v)) {
        req.headers_mut().remove(HEADER);
    }
    next.run(req).await
}

/// The span every log line of a request is in.
pub fn span<B>(req: &axum::http::Request<B>) -> Span {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    )
}

/// The access-log line and the request metrics, at the end of each request (inside its span).
pub async fn observe(req: Request, next: Next) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let mut res = next.run(req).await;
    let latency = started.elapsed();
    let status = res.status().as_u16();
    // The server's own time (W3C Server Timing): what a client's latency owes to the server
    // rather than to the network or its own decoding; browsers show it, the benchmark reads it.
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={:.3}", latency.as_secs_f64() * 1000.0))
    {
        res.headers_mut().insert(SERVER_TIMING, v);
    }
    tracing::info!(
        target: "imreport::access",
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "access"
    );
    record(&route, status, latency);
    res
}

fn record(route: &str, status: u16, latency: Duration) {
    metrics::counter!("imreport_http_requests_total", "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("imreport_http_request_duration_seconds", "route" => route.to_owned())
        .record(latency.as_secs_f64());
    let reason = match status {
        429 => "rate_limit",
        503 => "overloaded",
        _ => return,
    };
    metrics::counter!("imreport_refusals_total", "reason" => reason).increment(1);
}
