//! imreport's HTTP layer: the JMessage Report V2 read API, the ingest API, health checks and the
//! admin API, over any [`Store`].

pub mod admin;
pub mod auth;
pub mod error;
pub mod history;
pub mod ingest;
pub mod stats;

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
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tz: ReportTz,
    pub cursor_key: CursorKey,
    pub cursor_ttl_ms: i64,
    pub limits: IngestLimits,
    pub clock: Clock,
}

/// A `200` JSON response with the contract's content type.
pub fn json_body(body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

async fn healthz() -> Response {
    json_body(br#"{"status":"ok"}"#.to_vec())
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.store.check_ready().await {
        Ok(()) => json_body(br#"{"status":"ready"}"#.to_vec()),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error::CODE_BUSY,
            format!("store not ready: {e}"),
        )
        .into_response(),
    }
}

/// The public API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
        .route("/ingest/v1/events", post(ingest::ingest))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Collapses doubled slashes (`/v2//statistic/users`, as the PHP SDK sends) and drops a trailing
/// slash, before routing.
fn normalize_path(mut req: Request) -> Request {
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

/// Serves `router` on `listener` until `shutdown` resolves, then finishes requests in flight.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let svc = router.map_request(normalize_path);
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(svc),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Starts the public API on an already-bound listener (port 0 in tests) and returns its task.
pub fn launch_with_tcp_listener(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(serve_router(listener, router(state), shutdown))
}
