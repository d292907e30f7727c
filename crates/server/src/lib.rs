//! imreport's HTTP layer: the JMessage Report V2 read API, the ingest API, health checks and the
//! admin API, over any [`Store`].

pub mod admin;
pub mod auth;
pub mod conn;
pub mod console;
pub mod error;
pub mod history;
pub mod ingest;
pub mod rate;
pub mod ready;
pub mod requests;
pub mod share;
pub mod stats;

pub use conn::{ConnLimits, Connections};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::ApiError;
use imreport_domain::Clock;
use imreport_domain::cursor::CursorKey;
use imreport_domain::event::IngestLimits;
use imreport_domain::time::ReportTz;
use imreport_store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tz: ReportTz,
    pub cursor_key: CursorKey,
    pub cursor_ttl_ms: i64,
    pub limits: IngestLimits,
    pub clock: Clock,
    /// Per-app request quota, when configured.
    pub rate_limit: Option<Arc<rate::RateLimiter>>,
    /// Ingest requests read, decoded and stored at once, shared fairly between apps.
    pub ingest_slots: Arc<share::FairShare>,
    /// How fast and how soon an ingest body must arrive.
    pub body: BodyLimits,
    /// Where ingest bodies are decoded: threads below the queries' priority.
    pub ingest_pool: imreport_store::priority::IngestPool,
    /// History pages built at once, shared fairly between apps.
    pub page_slots: Arc<share::FairShare>,
    /// Bytes of history pages built and not yet sent, shared fairly between apps.
    pub response_bytes: Arc<share::FairShare>,
    /// How long a request waits for its share of any of the above before it gets 503.
    pub share_wait: Duration,
    pub readiness: Arc<ready::Readiness>,
    /// Seals console sessions (derived from the cursor key, so servers sharing it share them).
    pub session_key: imreport_domain::session::SessionKey,
    /// How long a console session lasts.
    pub session_ttl_ms: i64,
}

/// How an ingest body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The whole body within this time.
    pub read_timeout: Duration,
    /// At least this many bytes a second on average, counted from `grace` after the request
    /// head: a body trickling in slower is cut off before it holds a slot for long.
    pub min_rate: u64,
    pub grace: Duration,
}

/// Capacities of the shared resources (settings).
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub ingest_slots: usize,
    pub page_slots: usize,
    pub response_bytes: u64,
}

impl AppState {
    /// The state of a server on `store`; everything else comes from its settings.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        tz: ReportTz,
        cursor_key: CursorKey,
        cursor_ttl_ms: i64,
        limits: IngestLimits,
        clock: Clock,
        capacity: Capacity,
        body: BodyLimits,
        share_wait: Duration,
        session_ttl: Duration,
        ingest_pool: imreport_store::priority::IngestPool,
    ) -> Self {
        AppState {
            session_key: imreport_domain::session::SessionKey::derive(&cursor_key),
            session_ttl_ms: session_ttl.as_millis().min(i64::MAX as u128) as i64,
            readiness: ready::Readiness::new(store.clone()),
            store,
            tz,
            cursor_key,
            cursor_ttl_ms,
            limits,
            clock,
            rate_limit: None,
            ingest_slots: share::FairShare::new(capacity.ingest_slots as u64),
            body,
            ingest_pool,
            page_slots: share::FairShare::new(capacity.page_slots as u64),
            response_bytes: share::FairShare::new(capacity.response_bytes),
            share_wait,
        }
    }
}

/// Runs `fut` as a task of its own holding `grant`, and waits for it; the grant comes back with
/// the result. If the client goes away the work still finishes before its share is given back,
/// so abandoned requests cannot pile up work (decoding, page building, queued batches) beyond
/// the shares.
pub async fn detached<T: Send + 'static>(
    grant: share::Grant,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<(T, share::Grant), ApiError> {
    tokio::spawn(async move { (fut.await, grant) })
        .await
        .map_err(ApiError::internal)
}

/// A `200` JSON response with the contract's content type.
pub fn json_body(body: Vec<u8>) -> Response {
    json_parts(vec![body.into()], None)
}

/// A JSON response sent as its parts, in order: a page's messages go out as the store wrote
/// them instead of being copied behind their envelope (a page is ~430 KB). `hold` is given back
/// once the body is sent or dropped.
pub fn json_parts(parts: Vec<bytes::Bytes>, hold: Option<share::Grant>) -> Response {
    let mut r = Response::new(Body::new(Parts(parts.into(), hold)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A body of a few buffers with an exact length, so it is sent with `Content-Length`, and what
/// it holds of a shared budget.
struct Parts(
    std::collections::VecDeque<bytes::Bytes>,
    #[allow(dead_code)] Option<share::Grant>,
);

impl hyper::body::Body for Parts {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|b| Ok(hyper::body::Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

async fn healthz() -> Response {
    json_body(br#"{"status":"ok"}"#.to_vec())
}

/// The OpenAPI description of the public API, kept in the repository (docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.readiness.check().await {
        Ok(()) => json_body(br#"{"status":"ready"}"#.to_vec()),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error::CODE_BUSY,
            format!("store not ready: {e}"),
        )
        .into_response(),
    }
}

/// A handler that panicked still answers, with the JSON error of a bug.
fn panicked(payload: Box<dyn std::any::Any + Send>) -> Response {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    ApiError::internal(format!("a request handler panicked: {what}")).into_response()
}

/// The public API's routes.
pub fn router(state: AppState) -> Router {
    let apps = Router::new()
        .route("/v2/messages", get(history::app_messages))
        .route("/v2/users/{username}/messages", get(history::user_messages))
        .route("/v2/groups/{gid}/messages", get(history::group_messages))
        .route(
            "/v2/chatrooms/{chatroomid}/messages",
            get(history::chatroom_messages),
        )
        .route("/v2/statistic/users", get(stats::users))
        .route("/v2/statistic/groups", get(stats::groups))
        .route("/v2/statistic/messages", get(stats::messages))
        .route("/v2/statistic/busiest", get(stats::busiest))
        .route("/ingest/v1/events", post(ingest::ingest))
        .route("/ingest/v1/jmessage", post(ingest::routed))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_app,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .merge(apps)
        .merge(console::router())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn(requests::observe))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(requests::span)
                .on_request(())
                .on_response(())
                .on_failure(()),
        )
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            requests::Fresh,
        ))
        .layer(axum::middleware::from_fn(requests::keep_usable_ids))
        .with_state(state)
}

/// Collapses doubled slashes (`/v2//statistic/users`, as the PHP SDK sends) and drops a trailing
/// slash, before routing.
pub(crate) fn normalize_path(mut req: Request) -> Request {
    let path = req.uri().path();
    if !(path.contains("//") || (path.len() > 1 && path.ends_with('/'))) {
        return req;
    }
    let mut clean = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        clean.push('/');
        clean.push_str(seg);
    }
    if clean.is_empty() {
        clean.push('/');
    }
    if let Some(q) = req.uri().query() {
        clean.push('?');
        clean.push_str(q);
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = clean.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}
